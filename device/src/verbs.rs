// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Completion queues, queue pairs and address handles: the objects, their
//! creation checks and the QP state machine ("Completion queues, queue
//! pairs and address handles (interface 1.1)" in `docs/hardware.md`).

use std::collections::BTreeMap;

use crate::hw;

/// Completion queues the device offers (`REG_MAX_CQ`).
pub const MAX_CQ: u32 = 1024;
/// Queue pairs the device offers (`REG_MAX_QP`), QP 0 and the GSI QP included.
pub const MAX_QP: u32 = 1024;
/// Address handles the device offers.
pub const MAX_AH: u32 = 4096;
/// The GSI QP's number.
pub const GSI_QPN: u32 = 1;
/// The well-known Q_Key of the GSI QP.
pub const GSI_QKEY: u32 = 0x8001_0000;

/// Failures of CQ/QP/AH commands; each maps to a command status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerbsError {
    /// An argument is out of range, or a transition is not allowed.
    #[error("bad parameter: {0}")]
    BadParam(&'static str),
    /// No free number.
    #[error("table full")]
    NoResources,
    /// No such CQ, QP, AH or PD.
    #[error("no such handle")]
    BadHandle,
    /// Still in use.
    #[error("busy")]
    Busy,
}

impl VerbsError {
    /// The `ODPRNIC_STATUS_*` for this error.
    pub fn status(&self) -> u16 {
        match self {
            VerbsError::BadParam(_) => hw::STATUS_BAD_PARAM,
            VerbsError::NoResources => hw::STATUS_NO_RESOURCES,
            VerbsError::BadHandle => hw::STATUS_BAD_HANDLE,
            VerbsError::Busy => hw::STATUS_BUSY,
        }
    }
}

/// A completion queue.
#[derive(Clone, Debug)]
pub struct Cq {
    /// Its number.
    pub cqn: u32,
    /// Guest-physical address of its buffer (header page, then CQEs).
    pub buf: u64,
    /// CQEs.
    pub size: u32,
    /// MSI-X vector signalled when armed.
    pub vector: u16,
    /// Doorbell page allowed to arm it.
    pub db_page: u16,
    /// CQEs written (free-running).
    pub prod: u32,
    /// Armed: `Some(solicited_only)`.
    pub armed: Option<bool>,
    /// Overflowed or unwritable: no more CQEs.
    pub error: bool,
    /// QPs using it.
    pub users: u32,
}

impl Cq {
    /// Bytes of its buffer.
    pub fn bytes(&self) -> u64 {
        hw::RING_HDR_SPACE + u64::from(self.size) * hw::CQE_SIZE
    }
}

/// QP transport type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connection.
    Rc,
    /// Unreliable datagram.
    Ud,
    /// The GSI QP (QP1): UD semantics, well-known Q_Key.
    Gsi,
}

impl QpType {
    /// Decodes `ODPRNIC_QPT_*`.
    pub fn from_raw(v: u8) -> Option<Self> {
        match v {
            hw::QPT_RC => Some(QpType::Rc),
            hw::QPT_UD => Some(QpType::Ud),
            hw::QPT_GSI => Some(QpType::Gsi),
            _ => None,
        }
    }

    /// Datagram semantics (UD and GSI).
    pub fn datagram(self) -> bool {
        self != QpType::Rc
    }
}

/// Modifiable QP attributes, at the offsets of `MODIFY_QP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QpAttrs {
    /// IB MTU enum (1 = 256 … 5 = 4096).
    pub path_mtu: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = forever).
    pub rnr_retry: u8,
    /// RC: the connected QP.
    pub dest_qpn: u32,
    /// UD/GSI: Q_Key.
    pub qkey: u32,
    /// `ODPRNIC_ACCESS_REMOTE_*` the QP allows as a responder.
    pub access: u32,
    /// Send PSN.
    pub sq_psn: u32,
    /// Receive PSN.
    pub rq_psn: u32,
    /// Destination GID.
    pub dgid: [u8; 16],
    /// RNR timer.
    pub min_rnr_timer: u8,
    /// Transport timeout.
    pub timeout: u8,
}

/// `MODIFY_QP` arguments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modify {
    /// `ODPRNIC_QP_ATTR_*`.
    pub mask: u32,
    /// New state (with `QP_ATTR_STATE`).
    pub state: u8,
    /// Attributes (each applied if its mask bit is set).
    pub attrs: QpAttrs,
}

/// A queue pair.
#[derive(Clone, Debug)]
pub struct Qp {
    /// Its number.
    pub qpn: u32,
    /// Protection domain.
    pub pdn: u32,
    /// Send CQ.
    pub send_cqn: u32,
    /// Receive CQ.
    pub recv_cqn: u32,
    /// SQ entries.
    pub sq_size: u32,
    /// RQ entries.
    pub rq_size: u32,
    /// Transport.
    pub qtype: QpType,
    /// `ODPRNIC_QP_KERNEL`, `ODPRNIC_QP_SIG_ALL`.
    pub flags: u8,
    /// Doorbell page allowed to ring it.
    pub db_page: u16,
    /// Guest-physical address of its buffer.
    pub buf: u64,
    /// `ODPRNIC_QPS_*`.
    pub state: u8,
    /// Attributes.
    pub attrs: QpAttrs,
    /// SQ WQEs consumed (free-running).
    pub sq_cons: u32,
    /// RQ WQEs consumed (free-running).
    pub rq_cons: u32,
    /// The head WQE waits (page fault or receiver not ready).
    pub stalled: bool,
    /// An atomic already performed for SQ index `.0` with original value
    /// `.1`, whose result has not reached the requester yet: a retry of
    /// that work request (bus mastering went off before its result was
    /// written) uses it instead of performing the atomic again.
    pub atomic_done: Option<(u32, u64)>,
}

impl Qp {
    /// Bytes of its buffer.
    pub fn bytes(&self) -> u64 {
        hw::RING_HDR_SPACE + u64::from(self.sq_size + self.rq_size) * hw::WQE_SIZE
    }

    /// Guest-physical address of SQ slot `i`.
    pub fn sq_wqe(&self, i: u32) -> u64 {
        self.buf + hw::RING_HDR_SPACE + u64::from(i & (self.sq_size - 1)) * hw::WQE_SIZE
    }

    /// Guest-physical address of RQ slot `i`.
    pub fn rq_wqe(&self, i: u32) -> u64 {
        self.buf
            + hw::RING_HDR_SPACE
            + u64::from(self.sq_size) * hw::WQE_SIZE
            + u64::from(i & (self.rq_size - 1)) * hw::WQE_SIZE
    }

    /// Whether it receives (RTR, RTS, SQD, SQE).
    pub fn can_receive(&self) -> bool {
        matches!(
            self.state,
            hw::QPS_RTR | hw::QPS_RTS | hw::QPS_SQD | hw::QPS_SQE
        )
    }
}

/// An address handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ah {
    /// Protection domain.
    pub pdn: u32,
    /// Destination GID.
    pub dgid: [u8; 16],
    /// Destination MAC.
    pub dmac: [u8; 6],
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label.
    pub flow_label: u32,
    /// Source GID.
    pub sgid: [u8; 16],
    /// `ODPRNIC_GID_*`.
    pub gid_type: u8,
}

fn pow2_in(v: u32, max: u32) -> bool {
    v >= 1 && v <= max && v.is_power_of_two()
}

/// Whether `cur → new` is a legal transition for `qtype` with the
/// attributes in `mask` (IBA 10.3.1, as the kernel's `ib_modify_qp_is_ok`
/// tables have it, limited to the attributes this device takes).
pub fn transition_ok(qtype: QpType, cur: u8, new: u8, mask: u32) -> bool {
    use hw::*;
    if new > QPS_ERR || cur > QPS_ERR {
        return false;
    }
    let (req, opt): (u32, u32) = match (cur, new) {
        (_, QPS_RESET) | (_, QPS_ERR) => (0, 0),
        (QPS_RESET, QPS_INIT) => match qtype {
            QpType::Rc => (QP_ATTR_ACCESS, 0),
            QpType::Ud | QpType::Gsi => (QP_ATTR_QKEY, 0),
        },
        (QPS_INIT, QPS_INIT) => match qtype {
            QpType::Rc => (0, QP_ATTR_ACCESS),
            _ => (0, QP_ATTR_QKEY),
        },
        (QPS_INIT, QPS_RTR) => match qtype {
            // min_rnr_timer travels with QP_ATTR_RETRY
            QpType::Rc => (
                QP_ATTR_PATH | QP_ATTR_MTU | QP_ATTR_DEST_QPN | QP_ATTR_RQ_PSN,
                QP_ATTR_ACCESS | QP_ATTR_RETRY,
            ),
            _ => (0, QP_ATTR_QKEY),
        },
        (QPS_RTR, QPS_RTS) => match qtype {
            QpType::Rc => (
                QP_ATTR_SQ_PSN | QP_ATTR_RETRY,
                QP_ATTR_ACCESS | QP_ATTR_PATH,
            ),
            _ => (QP_ATTR_SQ_PSN, QP_ATTR_QKEY),
        },
        (QPS_RTS, QPS_RTS) | (QPS_SQD, QPS_RTS) | (QPS_SQE, QPS_RTS) => match qtype {
            QpType::Rc => (0, QP_ATTR_ACCESS | QP_ATTR_PATH | QP_ATTR_RETRY),
            _ => (0, QP_ATTR_QKEY),
        },
        (QPS_RTS, QPS_SQD) => (0, 0),
        (QPS_SQD, QPS_SQD) => match qtype {
            QpType::Rc => (
                0,
                QP_ATTR_ACCESS | QP_ATTR_PATH | QP_ATTR_RETRY | QP_ATTR_MTU,
            ),
            _ => (0, QP_ATTR_QKEY),
        },
        _ => return false,
    };
    let given = mask & !QP_ATTR_STATE;
    given & req == req && given & !(req | opt) == 0
}

/// The CQ, QP and AH tables.
#[derive(Debug, Default)]
pub struct Verbs {
    /// CQs by number.
    pub cqs: BTreeMap<u32, Cq>,
    /// QPs by number.
    pub qps: BTreeMap<u32, Qp>,
    /// AHs by number.
    pub ahs: BTreeMap<u32, Ah>,
}

fn free_number(used: &BTreeMap<u32, impl Sized>, first: u32, limit: u32) -> Option<u32> {
    (first..limit).find(|n| !used.contains_key(n))
}

/// `CREATE_CQ` arguments.
#[derive(Clone, Copy, Debug)]
pub struct CreateCq {
    /// Buffer.
    pub buf: u64,
    /// CQEs.
    pub size: u32,
    /// MSI-X vector.
    pub vector: u16,
    /// Doorbell page.
    pub db_page: u16,
}

/// `CREATE_QP` arguments.
#[derive(Clone, Copy, Debug)]
pub struct CreateQp {
    /// Buffer.
    pub buf: u64,
    /// Protection domain.
    pub pdn: u32,
    /// Send CQ.
    pub send_cqn: u32,
    /// Receive CQ.
    pub recv_cqn: u32,
    /// SQ entries.
    pub sq_size: u32,
    /// RQ entries.
    pub rq_size: u32,
    /// `ODPRNIC_QPT_*`.
    pub qtype: u8,
    /// `ODPRNIC_QP_*` flags.
    pub flags: u8,
    /// Doorbell page.
    pub db_page: u16,
}

impl Verbs {
    /// Creates a CQ; `mapped(buf, len)` says whether the buffer is
    /// DMA-mapped.
    pub fn create_cq(
        &mut self,
        a: CreateCq,
        mapped: impl Fn(u64, u64) -> bool,
    ) -> Result<u32, VerbsError> {
        if !pow2_in(a.size, hw::MAX_CQE) {
            return Err(VerbsError::BadParam("CQ size"));
        }
        if u32::from(a.vector) >= hw::NUM_VECTORS || u32::from(a.db_page) >= hw::DB_PAGES {
            return Err(VerbsError::BadParam("vector or doorbell page"));
        }
        let cqn = free_number(&self.cqs, 0, MAX_CQ).ok_or(VerbsError::NoResources)?;
        let cq = Cq {
            cqn,
            buf: a.buf,
            size: a.size,
            vector: a.vector,
            db_page: a.db_page,
            prod: 0,
            armed: None,
            error: false,
            users: 0,
        };
        if !a.buf.is_multiple_of(hw::RING_HDR_SPACE)
            || a.buf.checked_add(cq.bytes()).is_none()
            || !mapped(a.buf, cq.bytes())
        {
            return Err(VerbsError::BadParam("CQ buffer"));
        }
        self.cqs.insert(cqn, cq);
        Ok(cqn)
    }

    /// Destroys a CQ no QP uses.
    pub fn destroy_cq(&mut self, cqn: u32) -> Result<(), VerbsError> {
        match self.cqs.get(&cqn) {
            None => Err(VerbsError::BadHandle),
            Some(c) if c.users > 0 => Err(VerbsError::Busy),
            Some(_) => {
                self.cqs.remove(&cqn);
                Ok(())
            }
        }
    }

    /// Creates a QP in RESET.
    pub fn create_qp(
        &mut self,
        a: CreateQp,
        pd_exists: bool,
        mapped: impl Fn(u64, u64) -> bool,
    ) -> Result<u32, VerbsError> {
        if !pd_exists {
            return Err(VerbsError::BadHandle);
        }
        if !self.cqs.contains_key(&a.send_cqn) || !self.cqs.contains_key(&a.recv_cqn) {
            return Err(VerbsError::BadHandle);
        }
        let qtype = QpType::from_raw(a.qtype).ok_or(VerbsError::BadParam("QP type"))?;
        if !pow2_in(a.sq_size, hw::MAX_QP_WR) || !pow2_in(a.rq_size, hw::MAX_QP_WR) {
            return Err(VerbsError::BadParam("queue size"));
        }
        if a.flags & !(hw::QP_KERNEL | hw::QP_SIG_ALL) != 0 || u32::from(a.db_page) >= hw::DB_PAGES
        {
            return Err(VerbsError::BadParam("flags or doorbell page"));
        }
        let qpn = if qtype == QpType::Gsi {
            if self.qps.contains_key(&GSI_QPN) {
                return Err(VerbsError::Busy);
            }
            GSI_QPN
        } else {
            free_number(&self.qps, 2, MAX_QP).ok_or(VerbsError::NoResources)?
        };
        let qp = Qp {
            qpn,
            pdn: a.pdn,
            send_cqn: a.send_cqn,
            recv_cqn: a.recv_cqn,
            sq_size: a.sq_size,
            rq_size: a.rq_size,
            qtype,
            flags: a.flags,
            db_page: a.db_page,
            buf: a.buf,
            state: hw::QPS_RESET,
            attrs: QpAttrs::default(),
            sq_cons: 0,
            rq_cons: 0,
            stalled: false,
            atomic_done: None,
        };
        if !a.buf.is_multiple_of(hw::RING_HDR_SPACE)
            || a.buf.checked_add(qp.bytes()).is_none()
            || !mapped(a.buf, qp.bytes())
        {
            return Err(VerbsError::BadParam("QP buffer"));
        }
        for cqn in [a.send_cqn, a.recv_cqn] {
            if let Some(c) = self.cqs.get_mut(&cqn) {
                c.users += 1;
            }
        }
        self.qps.insert(qpn, qp);
        Ok(qpn)
    }

    /// Applies `MODIFY_QP`; returns the previous state.
    pub fn modify_qp(&mut self, qpn: u32, m: Modify) -> Result<u8, VerbsError> {
        let qp = self.qps.get_mut(&qpn).ok_or(VerbsError::BadHandle)?;
        let all = 0x1ff;
        if m.mask & !all != 0 {
            return Err(VerbsError::BadParam("unknown attribute bits"));
        }
        let new = if m.mask & hw::QP_ATTR_STATE != 0 {
            m.state
        } else {
            qp.state
        };
        if !transition_ok(qp.qtype, qp.state, new, m.mask) {
            return Err(VerbsError::BadParam("transition"));
        }
        let a = &m.attrs;
        if m.mask & hw::QP_ATTR_MTU != 0 && !(1..=5).contains(&a.path_mtu) {
            return Err(VerbsError::BadParam("path_mtu"));
        }
        let remote = hw::ACCESS_REMOTE_WRITE | hw::ACCESS_REMOTE_READ | hw::ACCESS_REMOTE_ATOMIC;
        if m.mask & hw::QP_ATTR_ACCESS != 0 && a.access & !remote != 0 {
            return Err(VerbsError::BadParam("access"));
        }
        if m.mask & hw::QP_ATTR_DEST_QPN != 0 && a.dest_qpn > hw::QPN_INJECTOR_LAST {
            return Err(VerbsError::BadParam("dest_qpn"));
        }
        let t = &mut qp.attrs;
        let set = |bit: u32| m.mask & bit != 0;
        if set(hw::QP_ATTR_ACCESS) {
            t.access = a.access;
        }
        if set(hw::QP_ATTR_PATH) {
            t.dgid = a.dgid;
        }
        if set(hw::QP_ATTR_DEST_QPN) {
            t.dest_qpn = a.dest_qpn;
        }
        if set(hw::QP_ATTR_QKEY) {
            t.qkey = a.qkey;
        }
        if set(hw::QP_ATTR_SQ_PSN) {
            t.sq_psn = a.sq_psn & 0xff_ffff;
        }
        if set(hw::QP_ATTR_RQ_PSN) {
            t.rq_psn = a.rq_psn & 0xff_ffff;
        }
        if set(hw::QP_ATTR_RETRY) {
            t.retry_cnt = a.retry_cnt & 7;
            t.rnr_retry = a.rnr_retry & 7;
            t.min_rnr_timer = a.min_rnr_timer & 31;
            t.timeout = a.timeout & 31;
        }
        if set(hw::QP_ATTR_MTU) {
            t.path_mtu = a.path_mtu;
        }
        let old = qp.state;
        qp.state = new;
        if new == hw::QPS_RESET {
            qp.sq_cons = 0;
            qp.rq_cons = 0;
            qp.stalled = false;
            qp.atomic_done = None;
        }
        Ok(old)
    }

    /// Destroys a QP.
    pub fn destroy_qp(&mut self, qpn: u32) -> Result<Qp, VerbsError> {
        let qp = self.qps.remove(&qpn).ok_or(VerbsError::BadHandle)?;
        for cqn in [qp.send_cqn, qp.recv_cqn] {
            if let Some(c) = self.cqs.get_mut(&cqn) {
                c.users = c.users.saturating_sub(1);
            }
        }
        Ok(qp)
    }

    /// Creates an AH.
    pub fn create_ah(&mut self, ah: Ah, pd_exists: bool) -> Result<u32, VerbsError> {
        if !pd_exists {
            return Err(VerbsError::BadHandle);
        }
        if ah.gid_type > hw::GID_ROCE_V2_IPV6 {
            return Err(VerbsError::BadParam("gid_type"));
        }
        let n = free_number(&self.ahs, 1, MAX_AH).ok_or(VerbsError::NoResources)?;
        self.ahs.insert(n, ah);
        Ok(n)
    }

    /// Destroys an AH.
    pub fn destroy_ah(&mut self, n: u32) -> Result<(), VerbsError> {
        self.ahs.remove(&n).map(|_| ()).ok_or(VerbsError::BadHandle)
    }

    /// Forgets everything (reset).
    pub fn clear(&mut self) {
        self.cqs.clear();
        self.qps.clear();
        self.ahs.clear();
    }

    /// Whether any QP or AH uses PD `pdn`.
    pub fn uses_pd(&self, pdn: u32) -> bool {
        self.qps.values().any(|q| q.pdn == pdn) || self.ahs.values().any(|a| a.pdn == pdn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hw::*;

    #[test]
    fn rc_state_machine() {
        let rc = QpType::Rc;
        assert!(transition_ok(
            rc,
            QPS_RESET,
            QPS_INIT,
            QP_ATTR_STATE | QP_ATTR_ACCESS
        ));
        assert!(
            !transition_ok(rc, QPS_RESET, QPS_INIT, QP_ATTR_STATE),
            "access required"
        );
        assert!(!transition_ok(
            rc,
            QPS_RESET,
            QPS_RTR,
            QP_ATTR_STATE | 0x1ff
        ));
        let rtr = QP_ATTR_STATE | QP_ATTR_PATH | QP_ATTR_MTU | QP_ATTR_DEST_QPN | QP_ATTR_RQ_PSN;
        assert!(transition_ok(rc, QPS_INIT, QPS_RTR, rtr));
        assert!(!transition_ok(rc, QPS_INIT, QPS_RTR, rtr & !QP_ATTR_MTU));
        assert!(
            !transition_ok(rc, QPS_INIT, QPS_RTR, rtr | QP_ATTR_QKEY),
            "qkey is not RC's"
        );
        assert!(transition_ok(
            rc,
            QPS_RTR,
            QPS_RTS,
            QP_ATTR_STATE | QP_ATTR_SQ_PSN | QP_ATTR_RETRY
        ));
        assert!(transition_ok(rc, QPS_RTS, QPS_ERR, QP_ATTR_STATE));
        assert!(transition_ok(rc, QPS_ERR, QPS_RESET, QP_ATTR_STATE));
        assert!(!transition_ok(rc, QPS_ERR, QPS_RTS, QP_ATTR_STATE));
        assert!(transition_ok(rc, QPS_RTS, QPS_SQD, QP_ATTR_STATE));
        assert!(transition_ok(rc, QPS_SQD, QPS_RTS, QP_ATTR_STATE));
        assert!(!transition_ok(rc, QPS_RTS, 7, QP_ATTR_STATE));
    }

    #[test]
    fn rtr_takes_the_rnr_timer() {
        // ibv_modify_qp to RTR carries IB_QP_MIN_RNR_TIMER, which the
        // driver sends as QP_ATTR_RETRY
        let rtr = QP_ATTR_STATE
            | QP_ATTR_PATH
            | QP_ATTR_MTU
            | QP_ATTR_DEST_QPN
            | QP_ATTR_RQ_PSN
            | QP_ATTR_RETRY;
        assert!(transition_ok(QpType::Rc, QPS_INIT, QPS_RTR, rtr));
        assert!(transition_ok(
            QpType::Rc,
            QPS_SQD,
            QPS_SQD,
            QP_ATTR_STATE | QP_ATTR_RETRY
        ));
    }

    #[test]
    fn ud_state_machine() {
        let ud = QpType::Ud;
        assert!(transition_ok(
            ud,
            QPS_RESET,
            QPS_INIT,
            QP_ATTR_STATE | QP_ATTR_QKEY
        ));
        assert!(!transition_ok(
            ud,
            QPS_RESET,
            QPS_INIT,
            QP_ATTR_STATE | QP_ATTR_ACCESS
        ));
        assert!(transition_ok(ud, QPS_INIT, QPS_RTR, QP_ATTR_STATE));
        assert!(transition_ok(
            ud,
            QPS_RTR,
            QPS_RTS,
            QP_ATTR_STATE | QP_ATTR_SQ_PSN
        ));
    }

    #[test]
    fn create_checks() {
        let mut v = Verbs::default();
        let ok = |_: u64, _: u64| true;
        let cq = CreateCq {
            buf: 0x10000,
            size: 16,
            vector: 2,
            db_page: 0,
        };
        let cqn = v.create_cq(cq, ok).unwrap();
        assert!(v.create_cq(CreateCq { size: 3, ..cq }, ok).is_err());
        assert!(v.create_cq(CreateCq { buf: 0x10800, ..cq }, ok).is_err());
        assert!(v.create_cq(CreateCq { vector: 16, ..cq }, ok).is_err());
        assert!(v.create_cq(cq, |_, _| false).is_err());
        let qp = CreateQp {
            buf: 0x20000,
            pdn: 0,
            send_cqn: cqn,
            recv_cqn: cqn,
            sq_size: 8,
            rq_size: 8,
            qtype: QPT_RC,
            flags: 0,
            db_page: 1,
        };
        let qpn = v.create_qp(qp, true, ok).unwrap();
        assert_eq!(qpn, 2);
        assert_eq!(v.destroy_cq(cqn), Err(VerbsError::Busy));
        assert!(v.create_qp(CreateQp { qtype: 3, ..qp }, true, ok).is_err());
        assert!(v
            .create_qp(CreateQp { send_cqn: 99, ..qp }, true, ok)
            .is_err());
        assert!(v.create_qp(qp, false, ok).is_err());
        let gsi = v
            .create_qp(
                CreateQp {
                    qtype: QPT_GSI,
                    ..qp
                },
                true,
                ok,
            )
            .unwrap();
        assert_eq!(gsi, GSI_QPN);
        assert_eq!(
            v.create_qp(
                CreateQp {
                    qtype: QPT_GSI,
                    ..qp
                },
                true,
                ok
            ),
            Err(VerbsError::Busy)
        );
        v.destroy_qp(qpn).unwrap();
        v.destroy_qp(gsi).unwrap();
        v.destroy_cq(cqn).unwrap();
    }
}
