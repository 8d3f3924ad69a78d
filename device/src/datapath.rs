// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The data path of interface 1.1, run by the engine: CQ/QP/AH commands,
//! doorbells, send-queue processing, requester and responder over the
//! loopback port, CQEs, flushes, and page faults that park the work
//! request at the head of its QP ("Completion queues, queue pairs and
//! address handles" in `docs/hardware.md`).
//!
//! A work request is planned before any byte moves: every SGE and the
//! remote range are translated first, so a page fault anywhere parks it
//! with nothing done, and `RESUME` restarts it from its start.

use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemory};

use crate::counters::Counters;
use crate::dma::{Atomic, DmaError, MrAccess};
use crate::engine::{Engine, Parked};
use crate::fault_plan::FaultKind;
use crate::hw;
use crate::mr::Translation;
use crate::verbs::{Ah, CreateCq, CreateQp, Modify, Qp, QpAttrs, QpType, VerbsError};
use crate::wqe::{network_header, Cqe, Sge, Wqe};

/// A contiguous piece of a transfer.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// Through an MR translation (checked by the oracle).
    Mr(MrAccess, u64),
    /// A guest-physical range (`PHYS_LKEY` on a kernel QP).
    Phys(u64, u64),
}

/// Why a work request did not complete now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// Requester-side error: complete with this status, QP to ERR.
    Local(u8),
    /// Responder NAK: complete with this status, both QPs to ERR.
    Remote(u8, u32),
    /// No responder: `WC_RETRY_EXC_ERR`.
    Retry,
    /// Receiver not ready (no receive WQE) at this QP.
    Rnr(u32),
    /// A page is missing: park.
    Fault {
        key: u32,
        iova: u64,
        length: u64,
        write: bool,
        remote: bool,
    },
    /// Bus mastering is off: try again when it is back.
    Fenced,
    /// The device was reset meanwhile.
    Stale,
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | (u64::from(le32(b, o + 4)) << 32)
}

/// The first `len` bytes of an SGE list.
fn trim(sges: &[Sge], mut len: u64) -> Vec<Sge> {
    let mut out = Vec::new();
    for s in sges {
        if len == 0 {
            break;
        }
        let l = u64::from(s.length).min(len);
        out.push(Sge {
            length: l as u32,
            ..*s
        });
        len -= l;
    }
    out
}

/// A requester waiting for a receive buffer at `resp`.
#[derive(Clone, Copy, Debug)]
pub struct RnrWait {
    /// The responder QP.
    pub resp: u32,
    /// When to try again.
    pub deadline: Instant,
    /// Retries left (7: forever).
    pub left: u8,
    /// Still waiting (not yet retried).
    pub waiting: bool,
}

/// The RNR timer values of IBA table 45, in microseconds (index 0 is the
/// longest).
const RNR_TIMER_US: [u64; 32] = [
    655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560, 3_840,
    5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
    245_760, 327_680, 491_520,
];

fn rnr_delay(timer: u8) -> Duration {
    Duration::from_micros(RNR_TIMER_US[usize::from(timer & 31)])
}

/// Largest bounce buffer of a copy.
const BOUNCE: u64 = 64 << 10;

fn piece_len(p: &Piece) -> u64 {
    match p {
        Piece::Mr(_, l) | Piece::Phys(_, l) => *l,
    }
}

/// Splits a piece after `n` bytes (`n` ≤ its length): head and the rest.
fn split(p: Piece, n: u64) -> (Piece, Option<Piece>) {
    match p {
        Piece::Mr(acc, l) => {
            let head = Piece::Mr(acc, n);
            let rest = (n < l).then(|| {
                Piece::Mr(
                    MrAccess {
                        iova: acc.iova + n,
                        mr_offset: acc.mr_offset + n,
                        gpa: acc.gpa + n,
                        ..acc
                    },
                    l - n,
                )
            });
            (head, rest)
        }
        Piece::Phys(g, l) => (
            Piece::Phys(g, n),
            (n < l).then(|| Piece::Phys(g + n, l - n)),
        ),
    }
}

fn total(sges: &[Sge]) -> u64 {
    sges.iter().map(|s| u64::from(s.length)).sum()
}

impl Engine {
    // ---- commands -----------------------------------------------------

    pub(crate) fn verbs_command(
        &mut self,
        cmd: &crate::engine::Command,
        out: &mut [u8; 56],
    ) -> Result<(), VerbsError> {
        let mapped = |dma: &crate::dma::Dma, buf: u64, len: u64| {
            dma.with_mem_unfenced(|m| {
                usize::try_from(len).is_ok_and(|l| {
                    m.check_range(GuestAddress(buf), l, vm_memory::Permissions::ReadWrite)
                })
            })
            .unwrap_or(false)
        };
        let a = &cmd.args;
        let put32 =
            |out: &mut [u8; 56], o: usize, v: u32| out[o..o + 4].copy_from_slice(&v.to_le_bytes());
        match cmd.opcode {
            hw::CMD_CREATE_CQ => {
                let args = CreateCq {
                    buf: cmd.u64(0),
                    size: cmd.u32(8),
                    vector: u16::from_le_bytes([a[12], a[13]]),
                    db_page: u16::from_le_bytes([a[14], a[15]]),
                };
                let dma = &self.sh.dma;
                let cqn = self.verbs.create_cq(args, |b, l| mapped(dma, b, l))?;
                put32(out, 0, cqn);
            }
            hw::CMD_DESTROY_CQ => self.verbs.destroy_cq(cmd.u32(0))?,
            hw::CMD_CREATE_QP => {
                let args = CreateQp {
                    buf: cmd.u64(0),
                    pdn: cmd.u32(8),
                    send_cqn: cmd.u32(12),
                    recv_cqn: cmd.u32(16),
                    sq_size: cmd.u32(20),
                    rq_size: cmd.u32(24),
                    qtype: a[28],
                    flags: a[29],
                    db_page: u16::from_le_bytes([a[30], a[31]]),
                };
                let pd = self.tables.pd_exists(args.pdn);
                let dma = &self.sh.dma;
                let qpn = self.verbs.create_qp(args, pd, |b, l| mapped(dma, b, l))?;
                put32(out, 0, qpn);
            }
            hw::CMD_MODIFY_QP => {
                let qpn = cmd.u32(0);
                let mut dgid = [0u8; 16];
                dgid.copy_from_slice(&a[32..48]);
                let m = Modify {
                    mask: cmd.u32(4),
                    state: a[8],
                    attrs: QpAttrs {
                        path_mtu: a[9],
                        retry_cnt: a[10],
                        rnr_retry: a[11],
                        dest_qpn: cmd.u32(12),
                        qkey: cmd.u32(16),
                        access: cmd.u32(20),
                        sq_psn: cmd.u32(24),
                        rq_psn: cmd.u32(28),
                        dgid,
                        min_rnr_timer: a[48],
                        timeout: a[49],
                    },
                };
                let old = self.verbs.modify_qp(qpn, m)?;
                let new = self.verbs.qps.get(&qpn).map_or(old, |q| q.state);
                self.sh.trace.record(
                    "modify_qp",
                    serde_json::json!({ "qpn": qpn, "from": old, "to": new }),
                );
                match new {
                    hw::QPS_ERR if old != hw::QPS_ERR => {
                        self.drop_waits(qpn);
                        self.flush(qpn);
                    }
                    hw::QPS_RESET => self.drop_waits(qpn),
                    hw::QPS_RTS => self.process_sq(qpn),
                    _ => {}
                }
            }
            hw::CMD_QUERY_QP => {
                let q = self
                    .verbs
                    .qps
                    .get(&cmd.u32(0))
                    .ok_or(VerbsError::BadHandle)?;
                let t = &q.attrs;
                put32(out, 0, q.qpn);
                put32(out, 4, 0x1ff);
                out[8] = q.state;
                out[9] = t.path_mtu;
                out[10] = t.retry_cnt;
                out[11] = t.rnr_retry;
                put32(out, 12, t.dest_qpn);
                put32(out, 16, t.qkey);
                put32(out, 20, t.access);
                put32(out, 24, t.sq_psn);
                put32(out, 28, t.rq_psn);
                out[32..48].copy_from_slice(&t.dgid);
                out[48] = t.min_rnr_timer;
                out[49] = t.timeout;
            }
            hw::CMD_DESTROY_QP => {
                let qpn = cmd.u32(0);
                if !self.verbs.qps.contains_key(&qpn) {
                    return Err(VerbsError::BadHandle);
                }
                self.drop_waits(qpn);
                self.verbs.destroy_qp(qpn)?;
            }
            hw::CMD_CREATE_AH => {
                let mut dgid = [0u8; 16];
                dgid.copy_from_slice(&a[8..24]);
                let mut dmac = [0u8; 6];
                dmac.copy_from_slice(&a[24..30]);
                let mut sgid = [0u8; 16];
                sgid.copy_from_slice(&a[36..52]);
                let ah = Ah {
                    pdn: cmd.u32(0),
                    dgid,
                    dmac,
                    hop_limit: a[30],
                    traffic_class: a[31],
                    flow_label: cmd.u32(32),
                    sgid,
                    gid_type: a[52],
                };
                let pd = self.tables.pd_exists(ah.pdn);
                let n = self.verbs.create_ah(ah, pd)?;
                put32(out, 0, n);
            }
            _ => self.verbs.destroy_ah(cmd.u32(0))?,
        }
        Ok(())
    }

    /// Forgets parked work requests and receiver-not-ready waits of `qpn`.
    fn drop_waits(&mut self, qpn: u32) {
        self.parked
            .retain(|_, p| p.wr.is_none_or(|(q, _)| q != qpn));
        self.rnr.remove(&qpn);
        if let Some(q) = self.verbs.qps.get_mut(&qpn) {
            q.stalled = false;
        }
        // requesters waiting on this QP retry now (and find it gone or in error)
        self.wake_rnr(qpn);
    }

    /// Requesters waiting for a receive buffer at `resp` try again.
    fn wake_rnr(&mut self, resp: u32) {
        let waiting: Vec<u32> = self
            .rnr
            .iter_mut()
            .filter(|(_, w)| w.resp == resp && w.waiting)
            .map(|(q, w)| {
                w.waiting = false;
                *q
            })
            .collect();
        for q in waiting {
            self.unstall(q);
        }
    }

    /// Retries requesters whose receiver-not-ready timer ran out.
    pub(crate) fn rnr_timers(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .rnr
            .iter_mut()
            .filter(|(_, w)| w.waiting && w.deadline <= now)
            .map(|(q, w)| {
                w.waiting = false;
                *q
            })
            .collect();
        for q in due {
            self.unstall(q);
        }
    }

    // ---- doorbells ----------------------------------------------------

    pub(crate) fn doorbell(&mut self, page: u32, offset: u64, value: u32) {
        let bad = |e: &Engine| Counters::inc(&e.sh.counters.bad_doorbells);
        match offset {
            hw::DB_SQ | hw::DB_RQ => {
                let Some(qp) = self.verbs.qps.get(&value) else {
                    return bad(self);
                };
                if u32::from(qp.db_page) != page {
                    return bad(self);
                }
                if qp.state == hw::QPS_ERR {
                    return self.flush(value);
                }
                if offset == hw::DB_SQ {
                    self.process_sq(value);
                } else {
                    self.wake_rnr(value);
                }
            }
            hw::DB_CQ_ARM => {
                let cqn = value & !hw::DB_CQ_ARM_SOLICITED;
                match self.verbs.cqs.get(&cqn) {
                    Some(cq) if u32::from(cq.db_page) == page => {
                        let (buf, prod, vector) = (cq.buf, cq.prod, cq.vector);
                        // The arm is posted and reaches the device after
                        // software's last poll: a CQE written in between
                        // would otherwise never interrupt. Completions that
                        // software has not consumed yet fire at once.
                        if self.read_u32(buf).is_ok_and(|cons| cons != prod) {
                            self.signal(u32::from(vector));
                            Counters::inc(&self.sh.counters.cq_arms_fired_at_once);
                        } else if let Some(cq) = self.verbs.cqs.get_mut(&cqn) {
                            cq.armed = Some(value & hw::DB_CQ_ARM_SOLICITED != 0);
                        }
                    }
                    _ => bad(self),
                }
            }
            _ => bad(self),
        }
    }

    /// Lets a stalled QP go on.
    pub(crate) fn unstall(&mut self, qpn: u32) {
        if let Some(q) = self.verbs.qps.get_mut(&qpn) {
            q.stalled = false;
        }
        self.process_sq(qpn);
    }

    pub(crate) fn run_all_sqs(&mut self) {
        let qpns: Vec<u32> = self.verbs.qps.keys().copied().collect();
        for q in qpns {
            self.process_sq(q);
        }
    }

    // ---- ring access --------------------------------------------------

    fn read_u32(&self, gpa: u64) -> Result<u32, DmaError> {
        let mut b = [0u8; 4];
        self.sh.dma.read(self.epoch, gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write_u32(&self, gpa: u64, v: u32) -> Result<(), DmaError> {
        self.sh.dma.write(self.epoch, gpa, &v.to_le_bytes())
    }

    fn read_wqe(&self, gpa: u64) -> Result<[u8; 128], DmaError> {
        let mut b = [0u8; 128];
        self.sh.dma.read(self.epoch, gpa, &mut b)?;
        Ok(b)
    }

    /// Writes a CQE; false if the CQ is in error (or becomes so). A CQE
    /// that bus mastering stops is kept, with every later one, until it
    /// returns: a work request that completed is never run again, so its
    /// completion must not be lost.
    fn post_cqe(&mut self, cqn: u32, cqe: Cqe, solicited: bool) -> bool {
        if !self.owed_cqes.is_empty() {
            self.owed_cqes.push_back((cqn, cqe, solicited));
            return true;
        }
        let Some(cq) = self.verbs.cqs.get(&cqn).cloned() else {
            return false;
        };
        if cq.error {
            return false;
        }
        let cons = match self.read_u32(cq.buf) {
            Ok(c) => c,
            Err(DmaError::Fenced) => {
                Counters::inc(&self.sh.counters.fenced_waits);
                self.owed_cqes.push_back((cqn, cqe, solicited));
                return true;
            }
            Err(e) => {
                log::warn!("CQ {cqn}: header not readable: {e}");
                return false;
            }
        };
        if cq.prod.wrapping_sub(cons) >= cq.size {
            log::warn!("CQ {cqn} overflow");
            return self.cq_error(cqn);
        }
        let slot = hw::RING_HDR_SPACE + u64::from(cq.prod & (cq.size - 1)) * hw::CQE_SIZE;
        let b = cqe.bytes(cq.prod, cq.size);
        let addr = cq.buf + slot;
        // the owner byte last: once it is written the CQE is posted (the
        // driver may consume it), so only a failure before it owes the CQE
        let r = self
            .sh
            .dma
            .write(self.epoch, addr, &b[..27])
            .and_then(|()| self.sh.dma.write(self.epoch, addr + 28, &b[28..]))
            .and_then(|()| self.sh.dma.write(self.epoch, addr + 27, &b[27..28]));
        if let Err(e) = r {
            if matches!(e, DmaError::Fenced) {
                Counters::inc(&self.sh.counters.fenced_waits);
                self.owed_cqes.push_back((cqn, cqe, solicited));
                return true;
            }
            log::warn!("CQ {cqn}: CQE not writable: {e}");
            if matches!(e, DmaError::Unmapped(..)) {
                return self.cq_error(cqn);
            }
            return false;
        }
        // a fenced producer-index write is redone when bus mastering returns
        let _ = self.write_u32(cq.buf + 4, cq.prod.wrapping_add(1));
        Counters::inc(&self.sh.counters.cqes);
        let mut fire = None;
        if let Some(c) = self.verbs.cqs.get_mut(&cqn) {
            c.prod = c.prod.wrapping_add(1);
            if let Some(sol_only) = c.armed {
                if !sol_only || solicited || cqe.status != hw::WC_SUCCESS {
                    c.armed = None;
                    fire = Some(u32::from(c.vector));
                }
            }
        }
        if let Some(v) = fire {
            self.signal(v);
        }
        true
    }

    /// Bus mastering is back: the CQEs it held up, then the queue
    /// headers' indices (whose writes it may have stopped too).
    pub(crate) fn flush_owed_completions(&mut self) {
        let owed = std::mem::take(&mut self.owed_cqes);
        for (cqn, cqe, solicited) in owed {
            self.post_cqe(cqn, cqe, solicited);
        }
        let heads: Vec<(u64, u32, u32)> = self
            .verbs
            .qps
            .values()
            .map(|q| (q.buf, q.sq_cons, q.rq_cons))
            .collect();
        for (buf, sq, rq) in heads {
            let _ = self.write_u32(buf + 4, sq);
            let _ = self.write_u32(buf + 12, rq);
        }
        let cqs: Vec<(u64, u32)> = self.verbs.cqs.values().map(|c| (c.buf, c.prod)).collect();
        for (buf, prod) in cqs {
            let _ = self.write_u32(buf + 4, prod);
        }
    }

    fn cq_error(&mut self, cqn: u32) -> bool {
        if let Some(c) = self.verbs.cqs.get_mut(&cqn) {
            if c.error {
                return false;
            }
            c.error = true;
        }
        let mut d = [0u8; 56];
        d[..4].copy_from_slice(&cqn.to_le_bytes());
        self.post_event(hw::EVENT_CQ_ERROR, &d);
        let users: Vec<u32> = self
            .verbs
            .qps
            .values()
            .filter(|q| q.send_cqn == cqn || q.recv_cqn == cqn)
            .map(|q| q.qpn)
            .collect();
        for q in users {
            self.qp_error(q, hw::WC_FATAL_ERR);
        }
        false
    }

    /// Moves a QP to ERR because of `syndrome`, tells the driver, flushes.
    fn qp_error(&mut self, qpn: u32, syndrome: u8) {
        let Some(q) = self.verbs.qps.get_mut(&qpn) else {
            return;
        };
        if q.state == hw::QPS_ERR {
            return;
        }
        q.state = hw::QPS_ERR;
        Counters::inc(&self.sh.counters.qp_errors);
        self.sh.trace.record(
            "qp_error",
            serde_json::json!({ "qpn": qpn, "syndrome": syndrome }),
        );
        let mut d = [0u8; 56];
        d[..4].copy_from_slice(&qpn.to_le_bytes());
        d[4..8].copy_from_slice(&u32::from(syndrome).to_le_bytes());
        self.post_event(hw::EVENT_QP_ERROR, &d);
        self.drop_waits(qpn);
        self.flush(qpn);
    }

    /// Completes every outstanding WQE of an ERR QP with `WC_WR_FLUSH_ERR`.
    fn flush(&mut self, qpn: u32) {
        let Some(qp) = self.verbs.qps.get(&qpn).cloned() else {
            return;
        };
        if qp.state != hw::QPS_ERR {
            return;
        }
        for sq in [true, false] {
            let (hdr, cons, size, cqn) = if sq {
                (qp.buf, qp.sq_cons, qp.sq_size, qp.send_cqn)
            } else {
                (qp.buf + 8, qp.rq_cons, qp.rq_size, qp.recv_cqn)
            };
            let Ok(prod) = self.read_u32(hdr) else {
                continue;
            };
            let n = prod.wrapping_sub(cons).min(size);
            for i in 0..n {
                let idx = cons.wrapping_add(i);
                let at = if sq { qp.sq_wqe(idx) } else { qp.rq_wqe(idx) };
                let Ok(raw) = self.read_wqe(at) else {
                    break;
                };
                let cqe = Cqe {
                    wr_id: le64(&raw, 0),
                    qpn,
                    status: hw::WC_WR_FLUSH_ERR,
                    opcode: if sq { cqe_op(raw[8]) } else { hw::CQE_OP_RECV },
                    ..Default::default()
                };
                self.post_cqe(cqn, cqe, false);
            }
            let new = cons.wrapping_add(n);
            let _ = self.write_u32(hdr + 4, new);
            if let Some(q) = self.verbs.qps.get_mut(&qpn) {
                if sq {
                    q.sq_cons = new;
                    q.atomic_done = None;
                } else {
                    q.rq_cons = new;
                }
            }
        }
    }

    // ---- send queue ---------------------------------------------------

    pub(crate) fn process_sq(&mut self, qpn: u32) {
        loop {
            if self.fatal || self.fenced {
                return;
            }
            let Some(qp) = self.verbs.qps.get(&qpn).cloned() else {
                return;
            };
            if qp.stalled {
                return;
            }
            if qp.state == hw::QPS_ERR {
                return self.flush(qpn);
            }
            if qp.state != hw::QPS_RTS {
                return;
            }
            let prod = match self.read_u32(qp.buf) {
                Ok(p) => p,
                Err(DmaError::Fenced) | Err(DmaError::Stale) => return,
                Err(_) => return self.qp_error(qpn, hw::WC_LOC_QP_OP_ERR),
            };
            let pending = prod.wrapping_sub(qp.sq_cons);
            if pending == 0 {
                return;
            }
            if pending > qp.sq_size {
                log::warn!(
                    "QP {qpn}: sq_prod {prod} runs ahead of sq_cons {}",
                    qp.sq_cons
                );
                return self.qp_error(qpn, hw::WC_LOC_QP_OP_ERR);
            }
            let raw = match self.read_wqe(qp.sq_wqe(qp.sq_cons)) {
                Ok(r) => r,
                Err(DmaError::Fenced) | Err(DmaError::Stale) => return,
                Err(_) => return self.qp_error(qpn, hw::WC_LOC_QP_OP_ERR),
            };
            Counters::inc(&self.sh.counters.wqes);
            let wqe = match Wqe::parse(&raw) {
                Ok(w) => w,
                Err(e) => {
                    log::debug!("QP {qpn}: bad WQE: {e}");
                    let w = Wqe::parse(&{
                        let mut r = raw;
                        r[9] = 0;
                        r[10] = 0;
                        r
                    });
                    let wr_id = w.map_or(le64(&raw, 0), |w| w.wr_id);
                    self.complete_sq(qpn, wr_id, raw[8], hw::WC_LOC_QP_OP_ERR, 0, true);
                    return self.qp_error(qpn, hw::WC_LOC_QP_OP_ERR);
                }
            };
            let signaled = wqe.flags & hw::WQE_F_SIGNALED != 0 || qp.flags & hw::QP_SIG_ALL != 0;
            match self.execute_wr(&qp, &wqe) {
                Ok(byte_len) => self.complete_sq(
                    qpn,
                    wqe.wr_id,
                    wqe.opcode,
                    hw::WC_SUCCESS,
                    byte_len,
                    signaled,
                ),
                Err(Fail::Local(wc)) => {
                    self.complete_sq(qpn, wqe.wr_id, wqe.opcode, wc, 0, true);
                    return self.qp_error(qpn, wc);
                }
                Err(Fail::Remote(wc, resp)) => {
                    self.complete_sq(qpn, wqe.wr_id, wqe.opcode, wc, 0, true);
                    self.qp_error(resp, wc);
                    return self.qp_error(qpn, wc);
                }
                Err(Fail::Retry) => {
                    self.complete_sq(qpn, wqe.wr_id, wqe.opcode, hw::WC_RETRY_EXC_ERR, 0, true);
                    return self.qp_error(qpn, hw::WC_RETRY_EXC_ERR);
                }
                Err(Fail::Rnr(resp)) => {
                    // the first NAK leaves rnr_retry retries; 7 is forever
                    let left = match self.rnr.get(&qpn) {
                        None => qp.attrs.rnr_retry,
                        Some(w) if w.left == 7 => 7,
                        Some(w) => w.left.saturating_sub(1),
                    };
                    if left == 0 {
                        self.rnr.remove(&qpn);
                        let wc = hw::WC_RNR_RETRY_EXC_ERR;
                        self.complete_sq(qpn, wqe.wr_id, wqe.opcode, wc, 0, true);
                        return self.qp_error(qpn, wc);
                    }
                    Counters::inc(&self.sh.counters.rnr_waits);
                    let timer = self
                        .verbs
                        .qps
                        .get(&resp)
                        .map_or(0, |r| r.attrs.min_rnr_timer);
                    if let Some(q) = self.verbs.qps.get_mut(&qpn) {
                        q.stalled = true;
                    }
                    self.rnr.insert(
                        qpn,
                        RnrWait {
                            resp,
                            deadline: Instant::now() + rnr_delay(timer),
                            left,
                            waiting: true,
                        },
                    );
                    return;
                }
                Err(Fail::Fault {
                    key,
                    iova,
                    length,
                    write,
                    remote,
                }) => return self.park_wr(qpn, key, iova, length, write, remote),
                Err(Fail::Fenced) | Err(Fail::Stale) => return,
            }
        }
    }

    fn complete_sq(
        &mut self,
        qpn: u32,
        wr_id: u64,
        opcode: u8,
        status: u8,
        byte_len: u32,
        cqe: bool,
    ) {
        let Some(q) = self.verbs.qps.get_mut(&qpn) else {
            return;
        };
        q.sq_cons = q.sq_cons.wrapping_add(1);
        q.atomic_done = None;
        let (buf, cons, cqn) = (q.buf, q.sq_cons, q.send_cqn);
        let _ = self.write_u32(buf + 4, cons);
        if cqe {
            let c = Cqe {
                wr_id,
                byte_len,
                qpn,
                status,
                opcode: cqe_op(opcode),
                ..Default::default()
            };
            self.post_cqe(cqn, c, false);
        }
    }

    /// Completes the head WR of a parked QP with an error (failed RESUME,
    /// destroyed MR) and moves the QP (and its RC peer) to ERR.
    pub(crate) fn fail_head_wr(&mut self, qpn: u32, remote: bool) {
        let Some(qp) = self.verbs.qps.get(&qpn).cloned() else {
            return;
        };
        if let Some(q) = self.verbs.qps.get_mut(&qpn) {
            q.stalled = false;
        }
        let wc = if remote {
            hw::WC_REM_ACCESS_ERR
        } else {
            hw::WC_LOC_PROT_ERR
        };
        if let Ok(raw) = self.read_wqe(qp.sq_wqe(qp.sq_cons)) {
            self.complete_sq(qpn, le64(&raw, 0), raw[8], wc, 0, true);
        }
        if remote && qp.qtype == QpType::Rc {
            self.qp_error(qp.attrs.dest_qpn, wc);
        }
        self.qp_error(qpn, wc);
    }

    /// A receive whose buffers cannot hold the message completes with a
    /// local length error (the sender's fate is the caller's).
    fn recv_too_short(&mut self, qpn: u32, wr_id: u64) {
        let c = Cqe {
            wr_id,
            qpn,
            status: hw::WC_LOC_LEN_ERR,
            opcode: hw::CQE_OP_RECV,
            ..Default::default()
        };
        self.complete_rq(qpn, c, false);
    }

    fn park_wr(&mut self, qpn: u32, key: u32, iova: u64, length: u64, write: bool, remote: bool) {
        if let Some(mr) = self.tables.get_mut(key) {
            mr.faults = mr.faults.saturating_add(1);
        }
        Counters::inc(&self.sh.counters.page_faults);
        if let Some(q) = self.verbs.qps.get_mut(&qpn) {
            q.stalled = true;
        }
        let token = self.alloc_token();
        self.parked.insert(
            token,
            Parked {
                key,
                access: None,
                wr: Some((qpn, remote)),
            },
        );
        self.post_page_fault(token, key, qpn, iova, length, write);
    }

    // ---- planning -----------------------------------------------------

    /// Pieces of local SGEs of `qp` (requester SGEs, or a receiver's
    /// buffers); `remote` says which side a failure belongs to.
    fn local_pieces(
        &self,
        qp: &Qp,
        sges: &[Sge],
        write: bool,
        remote: bool,
    ) -> Result<Vec<Piece>, Fail> {
        let prot = |wc: u8| {
            if remote {
                Fail::Remote(wc, qp.qpn)
            } else {
                Fail::Local(wc)
            }
        };
        let mut out = Vec::new();
        for s in sges {
            let len = u64::from(s.length);
            if len == 0 {
                continue;
            }
            if s.lkey == hw::PHYS_LKEY {
                if qp.flags & hw::QP_KERNEL == 0 || s.addr.checked_add(len).is_none() {
                    return Err(prot(hw::WC_LOC_PROT_ERR));
                }
                out.push(Piece::Phys(s.addr, len));
                continue;
            }
            let mr = self.tables.get(s.lkey).ok_or(prot(hw::WC_LOC_PROT_ERR))?;
            if mr.pdn != qp.pdn {
                return Err(prot(hw::WC_LOC_PROT_ERR));
            }
            let access = if write { hw::ACCESS_LOCAL_WRITE } else { 0 };
            match mr.translate(s.addr, len, access, write) {
                Err(_) => return Err(prot(hw::WC_LOC_PROT_ERR)),
                Ok(Translation::Fault { iova, length }) => {
                    return Err(Fail::Fault {
                        key: s.lkey,
                        iova,
                        length,
                        write,
                        remote,
                    })
                }
                Ok(Translation::Ready(segs)) => out.extend(segs.into_iter().map(|g| {
                    Piece::Mr(
                        MrAccess {
                            key: s.lkey,
                            qpn: qp.qpn,
                            iova: g.iova,
                            mr_offset: g.mr_offset,
                            page: g.page,
                            gpa: g.gpa,
                            perform_stale: mr.rogue_write,
                        },
                        g.len,
                    )
                })),
            }
        }
        Ok(out)
    }

    /// Pieces of a responder's MR named by `rkey`.
    fn remote_pieces(
        &self,
        resp: &Qp,
        rkey: u32,
        va: u64,
        len: u64,
        right: u32,
        write: bool,
    ) -> Result<Vec<Piece>, Fail> {
        let nak = Fail::Remote(hw::WC_REM_ACCESS_ERR, resp.qpn);
        if resp.attrs.access & right == 0 {
            return Err(nak);
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        let mr = self.tables.get(rkey).ok_or(nak)?;
        if mr.pdn != resp.pdn {
            return Err(nak);
        }
        match mr.translate(va, len, right, write) {
            Err(_) => Err(nak),
            Ok(Translation::Fault { iova, length }) => Err(Fail::Fault {
                key: rkey,
                iova,
                length,
                write,
                remote: true,
            }),
            Ok(Translation::Ready(segs)) => Ok(segs
                .into_iter()
                .map(|g| {
                    Piece::Mr(
                        MrAccess {
                            key: rkey,
                            qpn: resp.qpn,
                            iova: g.iova,
                            mr_offset: g.mr_offset,
                            page: g.page,
                            gpa: g.gpa,
                            perform_stale: mr.rogue_write,
                        },
                        g.len,
                    )
                })
                .collect()),
        }
    }

    fn dma_fail(&self, e: DmaError, remote: Option<u32>) -> Fail {
        match e {
            DmaError::Fenced => Fail::Fenced,
            DmaError::Stale => Fail::Stale,
            _ => {
                Counters::inc(&self.sh.counters.dma_errors);
                match remote {
                    Some(q) => Fail::Remote(hw::WC_REM_ACCESS_ERR, q),
                    None => Fail::Local(hw::WC_LOC_PROT_ERR),
                }
            }
        }
    }

    fn gather(&self, pieces: &[Piece], remote: Option<u32>) -> Result<Vec<u8>, Fail> {
        let mut out = Vec::new();
        for p in pieces {
            let start = out.len();
            let r = match p {
                Piece::Mr(acc, len) => {
                    out.resize(start + *len as usize, 0);
                    self.sh.dma.mr_read(self.epoch, acc, &mut out[start..])
                }
                Piece::Phys(gpa, len) => {
                    out.resize(start + *len as usize, 0);
                    self.sh.dma.read(self.epoch, *gpa, &mut out[start..])
                }
            };
            match r {
                Ok(()) | Err(DmaError::Suppressed) => {}
                Err(e) => return Err(self.dma_fail(e, remote)),
            }
        }
        Ok(out)
    }

    fn scatter(&self, pieces: &[Piece], data: &[u8], remote: Option<u32>) -> Result<(), Fail> {
        let mut off = 0usize;
        for p in pieces {
            let (r, n) = match p {
                Piece::Mr(acc, len) => {
                    let n = *len as usize;
                    (
                        self.sh.dma.mr_write(self.epoch, acc, &data[off..off + n]),
                        n,
                    )
                }
                Piece::Phys(gpa, len) => {
                    let n = *len as usize;
                    (self.sh.dma.write(self.epoch, *gpa, &data[off..off + n]), n)
                }
            };
            off += n;
            match r {
                Ok(()) | Err(DmaError::Suppressed) => {}
                Err(e) => return Err(self.dma_fail(e, remote)),
            }
        }
        Ok(())
    }

    /// Copies from `src` to `dst` (same total length) through a bounce
    /// buffer of at most `BOUNCE` bytes, so a large message never makes
    /// the device allocate its size.
    fn copy(
        &self,
        src: &[Piece],
        dst: &[Piece],
        src_remote: Option<u32>,
        dst_remote: Option<u32>,
    ) -> Result<(), Fail> {
        let mut buf = Vec::new();
        let mut si = src.iter().copied().peekable();
        let mut cur: Option<Piece> = None;
        for d in dst {
            let mut need = piece_len(d);
            let mut d_off = 0u64;
            while need > 0 {
                let s = match cur.take().or_else(|| si.next()) {
                    Some(p) => p,
                    None => return Err(Fail::Local(hw::WC_LOC_LEN_ERR)),
                };
                let n = piece_len(&s).min(need).min(BOUNCE);
                let (head, rest) = split(s, n);
                cur = rest;
                buf.resize(n as usize, 0);
                self.gather_into(&head, &mut buf, src_remote)?;
                let (dst_part, _) = split(split(*d, d_off).1.unwrap_or(*d), n);
                self.scatter(&[dst_part], &buf, dst_remote)?;
                d_off += n;
                need -= n;
            }
        }
        Ok(())
    }

    fn gather_into(&self, p: &Piece, out: &mut [u8], remote: Option<u32>) -> Result<(), Fail> {
        let r = match p {
            Piece::Mr(acc, _) => self.sh.dma.mr_read(self.epoch, acc, out),
            Piece::Phys(gpa, _) => self.sh.dma.read(self.epoch, *gpa, out),
        };
        match r {
            Ok(()) | Err(DmaError::Suppressed) => Ok(()),
            Err(e) => Err(self.dma_fail(e, remote)),
        }
    }

    /// The next receive WQE of `qp`, without taking it.
    fn peek_rq(&self, qp: &Qp) -> Result<Option<Wqe>, Fail> {
        let prod = self
            .read_u32(qp.buf + 8)
            .map_err(|e| self.dma_fail(e, Some(qp.qpn)))?;
        let pending = prod.wrapping_sub(qp.rq_cons);
        if pending == 0 {
            return Ok(None);
        }
        if pending > qp.rq_size {
            return Err(Fail::Remote(hw::WC_REM_OP_ERR, qp.qpn));
        }
        let raw = self
            .read_wqe(qp.rq_wqe(qp.rq_cons))
            .map_err(|e| self.dma_fail(e, Some(qp.qpn)))?;
        Wqe::parse(&raw)
            .map(Some)
            .map_err(|_| Fail::Remote(hw::WC_REM_OP_ERR, qp.qpn))
    }

    /// Takes the receive WQE `peek_rq` returned and completes it.
    fn complete_rq(&mut self, qpn: u32, cqe: Cqe, solicited: bool) {
        let Some(q) = self.verbs.qps.get_mut(&qpn) else {
            return;
        };
        q.rq_cons = q.rq_cons.wrapping_add(1);
        let (buf, cons, cqn) = (q.buf, q.rq_cons, q.recv_cqn);
        let _ = self.write_u32(buf + 12, cons);
        self.post_cqe(cqn, cqe, solicited);
    }

    // ---- the wire injector peer ---------------------------------------

    pub(crate) fn peer_request(&mut self, req: PeerRequest) -> PeerReply {
        let data = |r: Result<Vec<u8>, crate::peer::PeerError>| {
            PeerReply::Data(r.map_err(|e| e.to_string()))
        };
        match req {
            PeerRequest::Take(max) => PeerReply::Messages(self.peer.take(max), self.peer.dropped),
            PeerRequest::Read(off, len) => data(self.peer.read(off, len)),
            PeerRequest::Write(off, d) => data(self.peer.write(off, &d).map(|()| Vec::new())),
            PeerRequest::Resize(n) => data(self.peer.resize(n).map(|()| Vec::new())),
            PeerRequest::Send {
                src,
                dst,
                data,
                imm,
                qkey,
            } => PeerReply::Send(self.peer_send(src, dst, &data, imm, qkey)),
        }
    }

    /// Checks that guest QP `dst` may serve an operation from injector QPN
    /// `src` on MR `key` needing `right`; a failure NAKs and moves the QP
    /// to ERR, as a responder does.
    pub(crate) fn check_responder_qp(
        &mut self,
        dst: u32,
        src: u32,
        key: u32,
        right: u32,
    ) -> Result<(), crate::port::RemoteStatus> {
        use crate::port::RemoteStatus;
        let Some(qp) = self.verbs.qps.get(&dst) else {
            return Err(RemoteStatus::RemoteInvalidRequest);
        };
        if qp.qtype != QpType::Rc || !qp.can_receive() || qp.attrs.dest_qpn != src {
            return Err(RemoteStatus::RemoteInvalidRequest);
        }
        let pd_ok = self.tables.get(key).is_some_and(|m| m.pdn == qp.pdn);
        if qp.attrs.access & right == 0 || !pd_ok {
            self.qp_error(dst, hw::WC_REM_ACCESS_ERR);
            return Err(RemoteStatus::RemoteAccessError);
        }
        Ok(())
    }

    fn peer_send(
        &mut self,
        src: u32,
        dst: u32,
        data: &[u8],
        imm: Option<[u8; 4]>,
        qkey: Option<u32>,
    ) -> SendOutcome {
        if self.fenced || self.fatal {
            return SendOutcome::Fenced;
        }
        if self.peer_failed.remove(&dst) {
            self.qp_error(dst, hw::WC_REM_ACCESS_ERR);
            return SendOutcome::AccessError;
        }
        if self
            .peer_faults
            .get(&dst)
            .is_some_and(|t| self.parked.contains_key(t))
        {
            return SendOutcome::Wait;
        }
        let Some(g) = self.verbs.qps.get(&dst).cloned() else {
            return SendOutcome::Invalid;
        };
        let datagram = g.qtype.datagram();
        let accepted = g.can_receive()
            && if datagram {
                qkey.unwrap_or(g.attrs.qkey) == g.attrs.qkey
            } else {
                g.attrs.dest_qpn == src
            };
        if !accepted {
            return if datagram {
                SendOutcome::Dropped
            } else {
                SendOutcome::Invalid
            };
        }
        let rqe = match self.peek_rq(&g) {
            Ok(Some(r)) => r,
            Ok(None) if datagram => return SendOutcome::Dropped,
            Ok(None) => return SendOutcome::Wait,
            Err(Fail::Fenced) => return SendOutcome::Fenced,
            Err(_) => {
                self.qp_error(dst, hw::WC_REM_OP_ERR);
                return SendOutcome::AccessError;
            }
        };
        let grh_len = if datagram { 40 } else { 0 };
        let need = data.len() as u64 + grh_len;
        if total(&rqe.sges) < need {
            let c = Cqe {
                wr_id: rqe.wr_id,
                qpn: dst,
                status: hw::WC_LOC_LEN_ERR,
                opcode: hw::CQE_OP_RECV,
                ..Default::default()
            };
            self.complete_rq(dst, c, false);
            if !datagram {
                self.qp_error(dst, hw::WC_LOC_LEN_ERR);
            }
            return SendOutcome::Invalid;
        }
        let pieces = match self.local_pieces(&g, &trim(&rqe.sges, need), true, true) {
            Ok(p) => p,
            Err(Fail::Fault {
                key, iova, length, ..
            }) => {
                self.peer_fault(dst, key, iova, length);
                return SendOutcome::Wait;
            }
            Err(_) => {
                self.qp_error(dst, hw::WC_LOC_PROT_ERR);
                return SendOutcome::AccessError;
            }
        };
        let mut buf = Vec::with_capacity(need as usize);
        if datagram {
            // from the injector's IPv4-mapped GID, as RoCE v2 over IPv4
            buf.extend_from_slice(&network_header(
                hw::GID_ROCE_V2_IPV4,
                &hw::INJECTOR_GID,
                &g.attrs.dgid,
                0,
                0,
                64,
                data.len() as u16,
            ));
        }
        buf.extend_from_slice(data);
        match self.scatter(&pieces, &buf, Some(dst)) {
            Ok(()) => {}
            Err(Fail::Fenced) | Err(Fail::Stale) => return SendOutcome::Fenced,
            Err(_) => {
                self.qp_error(dst, hw::WC_LOC_PROT_ERR);
                return SendOutcome::AccessError;
            }
        }
        let c = Cqe {
            wr_id: rqe.wr_id,
            byte_len: need as u32,
            imm: imm.unwrap_or([0; 4]),
            qpn: dst,
            src_qp: src,
            status: hw::WC_SUCCESS,
            opcode: hw::CQE_OP_RECV,
            flags: if imm.is_some() { hw::CQE_F_IMM } else { 0 }
                | if datagram { hw::CQE_F_GRH } else { 0 },
        };
        self.complete_rq(dst, c, false);
        SendOutcome::Delivered
    }

    fn peer_fault(&mut self, qpn: u32, key: u32, iova: u64, length: u64) {
        if let Some(mr) = self.tables.get_mut(key) {
            mr.faults = mr.faults.saturating_add(1);
        }
        Counters::inc(&self.sh.counters.page_faults);
        let token = self.alloc_token();
        self.parked.insert(
            token,
            Parked {
                key,
                access: None,
                wr: None,
            },
        );
        self.peer_faults.insert(qpn, token);
        let mut d = [0u8; 56];
        d[0..4].copy_from_slice(&token.to_le_bytes());
        d[4..8].copy_from_slice(&key.to_le_bytes());
        d[8..12].copy_from_slice(&qpn.to_le_bytes());
        d[12..16].copy_from_slice(&hw::FAULT_WRITE.to_le_bytes());
        d[16..24].copy_from_slice(&iova.to_le_bytes());
        d[24..32].copy_from_slice(&length.to_le_bytes());
        self.post_event(hw::EVENT_PAGE_FAULT, &d);
    }

    /// A guest RC QP's work request to an injector QPN: SENDs and WRITEs
    /// are kept, WRITEs, READs and atomics use the peer buffer (at
    /// `remote_addr`, any rkey).
    fn execute_to_peer(&mut self, qp: &Qp, w: &Wqe, len: u64) -> Result<u32, Fail> {
        let dest = qp.attrs.dest_qpn;
        let inline = w.flags & hw::WQE_F_INLINE != 0;
        let oob = Fail::Remote(hw::WC_REM_ACCESS_ERR, dest);
        let outgoing = |e: &Engine| -> Result<Vec<u8>, Fail> {
            if inline {
                Ok(w.inline.clone())
            } else {
                let lp = e.local_pieces(qp, &w.sges, false, false)?;
                e.gather(&lp, None)
            }
        };
        let hex = crate::control::to_hex;
        match w.opcode {
            hw::WR_SEND | hw::WR_SEND_IMM | hw::WR_RDMA_WRITE | hw::WR_RDMA_WRITE_IMM => {
                if len > crate::port::MAX_INJECT_LEN {
                    return Err(Fail::Remote(hw::WC_REM_INV_REQ_ERR, dest));
                }
                let data = outgoing(self)?;
                let write = matches!(w.opcode, hw::WR_RDMA_WRITE | hw::WR_RDMA_WRITE_IMM);
                if write {
                    self.peer.write(w.remote_addr, &data).map_err(|_| oob)?;
                }
                let opcode = match w.opcode {
                    hw::WR_SEND => "send",
                    hw::WR_SEND_IMM => "send_imm",
                    hw::WR_RDMA_WRITE => "write",
                    _ => "write_imm",
                };
                let imm = matches!(w.opcode, hw::WR_SEND_IMM | hw::WR_RDMA_WRITE_IMM);
                self.peer.keep(crate::peer::PeerMessage {
                    src_qpn: qp.qpn,
                    dst_qpn: dest,
                    opcode,
                    data_hex: hex(&data),
                    imm_hex: imm.then(|| hex(&w.imm)),
                    remote_addr: write.then_some(w.remote_addr),
                });
                Ok(len as u32)
            }
            hw::WR_RDMA_READ => {
                let data = self.peer.read(w.remote_addr, len).map_err(|_| oob)?;
                let lp = self.local_pieces(qp, &w.sges, true, false)?;
                self.scatter(&lp, &data, None)?;
                Ok(len as u32)
            }
            hw::WR_ATOMIC_CMP_SWP | hw::WR_ATOMIC_FETCH_ADD => {
                if inline || len != 8 {
                    return Err(Fail::Local(hw::WC_LOC_LEN_ERR));
                }
                if !w.remote_addr.is_multiple_of(8) {
                    return Err(Fail::Remote(hw::WC_REM_INV_REQ_ERR, dest));
                }
                let lp = self.local_pieces(qp, &w.sges, true, false)?;
                let (c, sw) = (w.compare_add, w.swap);
                let old = match self.atomic_already_done(qp) {
                    Some(v) => v,
                    None => {
                        let v = if w.opcode == hw::WR_ATOMIC_CMP_SWP {
                            self.peer
                                .atomic(w.remote_addr, |v| if v == c { sw } else { v })
                        } else {
                            self.peer.atomic(w.remote_addr, |v| v.wrapping_add(c))
                        }
                        .map_err(|_| oob)?;
                        self.atomic_performed(qp, v);
                        v
                    }
                };
                self.scatter(&lp, &old.to_le_bytes(), None)?;
                Ok(8)
            }
            _ => Err(Fail::Local(hw::WC_LOC_QP_OP_ERR)),
        }
    }

    // ---- execution ----------------------------------------------------

    /// The original value of the head work request's atomic if it was
    /// already performed: bus mastering went off before its result reached
    /// the requester's buffer, and the work request is being retried. An
    /// atomic executes once however often its work request is retried.
    fn atomic_already_done(&self, qp: &Qp) -> Option<u64> {
        let q = self.verbs.qps.get(&qp.qpn)?;
        q.atomic_done
            .and_then(|(at, v)| (at == q.sq_cons).then_some(v))
    }

    /// Records that the head work request's atomic was performed, before
    /// anything that can be fenced (the write of its result, the CQE).
    fn atomic_performed(&mut self, qp: &Qp, original: u64) {
        if let Some(q) = self.verbs.qps.get_mut(&qp.qpn) {
            q.atomic_done = Some((q.sq_cons, original));
        }
    }

    /// Runs one send WQE to completion; Ok(byte_len for the CQE).
    fn execute_wr(&mut self, qp: &Qp, w: &Wqe) -> Result<u32, Fail> {
        if self.sh.fire(FaultKind::FailDma).is_some() {
            Counters::inc(&self.sh.counters.dma_errors);
            return Err(Fail::Local(hw::WC_LOC_PROT_ERR));
        }
        let len = w.length().ok_or(Fail::Local(hw::WC_LOC_LEN_ERR))?;
        if qp.qtype.datagram() {
            return self.execute_ud(qp, w, len);
        }
        let dest = qp.attrs.dest_qpn;
        if (hw::QPN_INJECTOR_FIRST..=hw::QPN_INJECTOR_LAST).contains(&dest) {
            return self.execute_to_peer(qp, w, len);
        }
        let resp = match self.verbs.qps.get(&dest) {
            Some(r) if r.qtype == QpType::Rc && r.can_receive() && r.attrs.dest_qpn == qp.qpn => {
                r.clone()
            }
            // no responder on any port (the injector's QP semantics are
            // not served yet): the requester's retries run out
            _ => return Err(Fail::Retry),
        };
        let inline = w.flags & hw::WQE_F_INLINE != 0;
        let solicited = w.flags & hw::WQE_F_SOLICITED != 0;
        match w.opcode {
            hw::WR_SEND | hw::WR_SEND_IMM => {
                let lp = if inline {
                    Vec::new()
                } else {
                    self.local_pieces(qp, &w.sges, false, false)?
                };
                let Some(rqe) = self.peek_rq(&resp)? else {
                    return Err(Fail::Rnr(resp.qpn));
                };
                if total(&rqe.sges) < len {
                    self.recv_too_short(resp.qpn, rqe.wr_id);
                    return Err(Fail::Remote(hw::WC_REM_INV_REQ_ERR, resp.qpn));
                }
                let rp = self
                    .local_pieces(&resp, &trim(&rqe.sges, len), true, true)
                    .map_err(|f| match f {
                        Fail::Remote(_, q) => Fail::Remote(hw::WC_REM_OP_ERR, q),
                        other => other,
                    })?;
                if inline {
                    self.scatter(&rp, &w.inline, Some(resp.qpn))?;
                } else {
                    self.copy(&lp, &rp, None, Some(resp.qpn))?;
                }
                let imm = w.opcode == hw::WR_SEND_IMM;
                let c = Cqe {
                    wr_id: rqe.wr_id,
                    byte_len: len as u32,
                    imm: if imm { w.imm } else { [0; 4] },
                    qpn: resp.qpn,
                    src_qp: qp.qpn,
                    status: hw::WC_SUCCESS,
                    opcode: hw::CQE_OP_RECV,
                    flags: if imm { hw::CQE_F_IMM } else { 0 },
                };
                self.complete_rq(resp.qpn, c, solicited);
                Ok(len as u32)
            }
            hw::WR_RDMA_WRITE | hw::WR_RDMA_WRITE_IMM => {
                let lp = if inline {
                    Vec::new()
                } else {
                    self.local_pieces(qp, &w.sges, false, false)?
                };
                let rp = self.remote_pieces(
                    &resp,
                    w.rkey,
                    w.remote_addr,
                    len,
                    hw::ACCESS_REMOTE_WRITE,
                    true,
                )?;
                let imm = w.opcode == hw::WR_RDMA_WRITE_IMM;
                let rqe = if imm {
                    match self.peek_rq(&resp)? {
                        Some(r) => Some(r),
                        None => return Err(Fail::Rnr(resp.qpn)),
                    }
                } else {
                    None
                };
                if inline {
                    self.scatter(&rp, &w.inline, Some(resp.qpn))?;
                } else {
                    self.copy(&lp, &rp, None, Some(resp.qpn))?;
                }
                if let Some(rqe) = rqe {
                    let c = Cqe {
                        wr_id: rqe.wr_id,
                        byte_len: len as u32,
                        imm: w.imm,
                        qpn: resp.qpn,
                        src_qp: qp.qpn,
                        status: hw::WC_SUCCESS,
                        opcode: hw::CQE_OP_RECV_RDMA_WITH_IMM,
                        flags: hw::CQE_F_IMM,
                    };
                    self.complete_rq(resp.qpn, c, solicited);
                }
                Ok(len as u32)
            }
            hw::WR_RDMA_READ => {
                if inline {
                    return Err(Fail::Local(hw::WC_LOC_QP_OP_ERR));
                }
                let rp = self.remote_pieces(
                    &resp,
                    w.rkey,
                    w.remote_addr,
                    len,
                    hw::ACCESS_REMOTE_READ,
                    false,
                )?;
                let lp = self.local_pieces(qp, &w.sges, true, false)?;
                self.copy(&rp, &lp, Some(resp.qpn), None)?;
                Ok(len as u32)
            }
            hw::WR_ATOMIC_CMP_SWP | hw::WR_ATOMIC_FETCH_ADD => {
                if inline || len != 8 {
                    return Err(Fail::Local(hw::WC_LOC_LEN_ERR));
                }
                if !w.remote_addr.is_multiple_of(8) {
                    return Err(Fail::Remote(hw::WC_REM_INV_REQ_ERR, resp.qpn));
                }
                let rp = self.remote_pieces(
                    &resp,
                    w.rkey,
                    w.remote_addr,
                    8,
                    hw::ACCESS_REMOTE_ATOMIC,
                    true,
                )?;
                let lp = self.local_pieces(qp, &w.sges, true, false)?;
                let op = if w.opcode == hw::WR_ATOMIC_CMP_SWP {
                    Atomic::CmpSwp {
                        compare: w.compare_add,
                        swap: w.swap,
                    }
                } else {
                    Atomic::FetchAdd(w.compare_add)
                };
                let old = match (self.atomic_already_done(qp), rp.first()) {
                    (Some(v), _) => v,
                    (None, Some(Piece::Mr(acc, _))) => {
                        let v = match self.sh.dma.mr_atomic(self.epoch, acc, op) {
                            Ok(v) => v,
                            Err(DmaError::Suppressed) => 0,
                            Err(e) => return Err(self.dma_fail(e, Some(resp.qpn))),
                        };
                        self.atomic_performed(qp, v);
                        v
                    }
                    _ => return Err(Fail::Remote(hw::WC_REM_ACCESS_ERR, resp.qpn)),
                };
                self.scatter(&lp, &old.to_le_bytes(), None)?;
                Ok(8)
            }
            _ => Err(Fail::Local(hw::WC_LOC_QP_OP_ERR)),
        }
    }

    /// UD and GSI: a datagram through an address handle. Delivery failures
    /// at the receiver drop the datagram; the sender completes anyway.
    fn execute_ud(&mut self, qp: &Qp, w: &Wqe, len: u64) -> Result<u32, Fail> {
        if w.opcode != hw::WR_SEND && w.opcode != hw::WR_SEND_IMM {
            return Err(Fail::Local(hw::WC_LOC_QP_OP_ERR));
        }
        let ah = match self.verbs.ahs.get(&w.ah) {
            Some(a) if a.pdn == qp.pdn => a.clone(),
            _ => return Err(Fail::Local(hw::WC_LOC_QP_OP_ERR)),
        };
        if len > 4096 {
            return Err(Fail::Local(hw::WC_LOC_LEN_ERR));
        }
        let lp = if w.flags & hw::WQE_F_INLINE != 0 {
            Vec::new()
        } else {
            self.local_pieces(qp, &w.sges, false, false)?
        };
        let qkey = if w.remote_qkey & 0x8000_0000 != 0 {
            qp.attrs.qkey
        } else {
            w.remote_qkey
        };
        let target = match self.verbs.qps.get(&w.remote_qpn) {
            Some(t) if t.qtype.datagram() && t.can_receive() && t.attrs.qkey == qkey => t.clone(),
            _ => {
                Counters::inc(&self.sh.counters.datagrams_dropped);
                return Ok(len as u32);
            }
        };
        let rqe = match self.peek_rq(&target) {
            Ok(Some(r)) => r,
            _ => {
                Counters::inc(&self.sh.counters.datagrams_dropped);
                return Ok(len as u32);
            }
        };
        let need = len + 40;
        if total(&rqe.sges) < need {
            self.recv_too_short(target.qpn, rqe.wr_id);
            return Ok(len as u32);
        }
        let rp = match self.local_pieces(&target, &trim(&rqe.sges, need), true, true) {
            Ok(p) => p,
            Err(f @ Fail::Fault { .. }) => return Err(f),
            Err(_) => {
                Counters::inc(&self.sh.counters.datagrams_dropped);
                return Ok(len as u32);
            }
        };
        let mut data = network_header(
            ah.gid_type,
            &ah.sgid,
            &ah.dgid,
            ah.traffic_class,
            ah.flow_label,
            ah.hop_limit,
            len as u16,
        )
        .to_vec();
        if w.flags & hw::WQE_F_INLINE != 0 {
            data.extend_from_slice(&w.inline);
        } else {
            data.extend(self.gather(&lp, None)?);
        }
        if let Err(f) = self.scatter(&rp, &data, Some(target.qpn)) {
            if matches!(f, Fail::Fenced | Fail::Stale) {
                return Err(f);
            }
            Counters::inc(&self.sh.counters.datagrams_dropped);
            return Ok(len as u32);
        }
        let imm = w.opcode == hw::WR_SEND_IMM;
        let c = Cqe {
            wr_id: rqe.wr_id,
            byte_len: need as u32,
            imm: if imm { w.imm } else { [0; 4] },
            qpn: target.qpn,
            src_qp: qp.qpn,
            status: hw::WC_SUCCESS,
            opcode: hw::CQE_OP_RECV,
            flags: hw::CQE_F_GRH | if imm { hw::CQE_F_IMM } else { 0 },
        };
        self.complete_rq(target.qpn, c, w.flags & hw::WQE_F_SOLICITED != 0);
        Ok(len as u32)
    }
}

/// A control-socket request to the wire injector peer.
#[derive(Clone, Debug)]
pub enum PeerRequest {
    /// Take up to this many kept messages.
    Take(usize),
    /// Read the peer buffer.
    Read(u64, u64),
    /// Write the peer buffer.
    Write(u64, Vec<u8>),
    /// Resize the peer buffer.
    Resize(usize),
    /// Deliver a SEND from injector QPN `src` to guest QP `dst`.
    Send {
        /// Injector QPN.
        src: u32,
        /// Guest QP.
        dst: u32,
        /// Payload.
        data: Vec<u8>,
        /// Immediate data.
        imm: Option<[u8; 4]>,
        /// UD/GSI: the Q_Key (default: the QP's own).
        qkey: Option<u32>,
    },
}

/// The engine's answer to a `PeerRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerReply {
    /// Kept messages and how many were dropped so far.
    Messages(Vec<crate::peer::PeerMessage>, u64),
    /// Buffer bytes (reads) or nothing (writes, resize), or why not.
    Data(Result<Vec<u8>, String>),
    /// What became of a SEND.
    Send(SendOutcome),
}

/// What became of an injector SEND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Placed in a receive buffer, CQE written.
    Delivered,
    /// A datagram the QP did not accept (Q_Key, state, no buffer).
    Dropped,
    /// No receive buffer yet, or a page fault is being resolved: try again.
    Wait,
    /// The QP is not connected to that injector QPN, or not receiving, or
    /// the receive buffer was too small (the QP went to ERR).
    Invalid,
    /// The receive buffer could not be written (the QP went to ERR).
    AccessError,
    /// Bus mastering is off.
    Fenced,
}

/// The CQE opcode of a send WQE opcode.
fn cqe_op(wr: u8) -> u8 {
    match wr {
        hw::WR_RDMA_WRITE | hw::WR_RDMA_WRITE_IMM => hw::CQE_OP_RDMA_WRITE,
        hw::WR_RDMA_READ => hw::CQE_OP_RDMA_READ,
        hw::WR_ATOMIC_CMP_SWP => hw::CQE_OP_COMP_SWAP,
        hw::WR_ATOMIC_FETCH_ADD => hw::CQE_OP_FETCH_ADD,
        _ => hw::CQE_OP_SEND,
    }
}
