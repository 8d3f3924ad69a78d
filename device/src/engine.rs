// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The device's engine: its own thread, which owns the command and event
//! queues, the PD/MR tables, parked accesses and page-fault tokens, the
//! invalidation pipeline and remote operations arriving from ports. The
//! vfio-user message loop only sends it messages ("Queues", "Page faults",
//! "Invalidation doorbell" and "Reset" in `docs/hardware.md`).

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::counters::Counters;
use crate::device::{QueueRegs, Shared};
use crate::dma::{Atomic, DmaError, MrAccess};
use crate::fault_plan::FaultKind;
use crate::hw;
use crate::mr::{AccessError, CreateMr, MrError, Tables, Translation};
use crate::port::{Port, RemoteOp, RemoteOpKind, RemoteResult, RemoteStatus, MAX_INJECT_LEN};
use crate::verbs::Verbs;

/// Tokens of timed-out accesses remembered so their late RESUME succeeds.
const MAX_EXPIRED_TOKENS: usize = 65536;
/// Exit status of the process when fault plan `kill` fires (as SIGKILL's).
pub const KILL_EXIT_STATUS: i32 = 137;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Messages to the engine.
pub enum EngineMsg {
    /// Queues validated at ENABLE.
    Enable {
        /// Epoch of the enable.
        epoch: u64,
        /// Command queue.
        cmdq: Box<Queue>,
        /// Event queue.
        eq: Box<Queue>,
    },
    /// ENABLE cleared.
    Disable {
        /// Epoch of the disable.
        epoch: u64,
    },
    /// `CMDQ_NOTIFY` written.
    CmdNotify,
    /// `EQ_NOTIFY` written.
    EqNotify,
    /// `INV_SEQ` written.
    Invalidate {
        /// Epoch of the submission.
        epoch: u64,
        /// `INV_KEY`.
        key: u32,
        /// `INV_START`.
        start: u64,
        /// `INV_LENGTH`.
        length: u64,
        /// `INV_SEQ`.
        seq: u32,
    },
    /// The device was reset; `epoch` is the new epoch.
    Reset {
        /// New epoch.
        epoch: u64,
    },
    /// Bus Master Enable changed.
    BusMaster(bool),
    /// A remote operation from a port.
    Remote {
        /// The operation.
        op: RemoteOp,
        /// Where to deliver the result.
        port: Arc<dyn Port>,
        /// The port's id for it.
        id: u64,
        /// When the requester stops waiting.
        deadline: Instant,
    },
    /// Control socket `mr` query.
    QueryMr {
        /// Key.
        key: u32,
        /// Reply channel.
        reply: SyncSender<Option<MrInfo>>,
    },
    /// A doorbell page was written (BAR 4).
    Doorbell {
        /// Page number.
        page: u32,
        /// Offset within the page (`DB_SQ`, `DB_RQ`, `DB_CQ_ARM`).
        offset: u64,
        /// Value written.
        value: u32,
    },
    /// A control-socket request to the wire injector peer.
    Peer {
        /// The request.
        req: crate::datapath::PeerRequest,
        /// Reply channel.
        reply: SyncSender<crate::datapath::PeerReply>,
    },
    /// The fault plan changed (wakes the engine).
    Wake,
    /// Stop the thread.
    Shutdown,
}

/// What `QUERY_MR` and the control op `mr` report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MrInfo {
    /// `live` or `revoked`.
    pub state: &'static str,
    /// `pinned`, `odp`, `implicit` or `revocable`.
    pub mode: &'static str,
    /// Page faults raised.
    pub faults: u64,
    /// Invalidations that hit it.
    pub invalidations: u64,
    /// Pages mapped as prefetch.
    pub prefetched_pages: u64,
    /// Present translation entries.
    pub mapped_pages: u64,
}

/// Builds a split queue from the registers; None if the layout is invalid
/// (size, alignment, or rings outside DMA-mapped memory).
pub fn build_queue(regs: &QueueRegs, mem: &GuestMemoryMmap) -> Option<Queue> {
    let size = u16::try_from(regs.size).ok()?;
    if size == 0 || !size.is_power_of_two() || u32::from(size) > hw::QUEUE_MAX_SIZE {
        return None;
    }
    if !regs.desc.is_multiple_of(16)
        || !regs.avail.is_multiple_of(2)
        || !regs.used.is_multiple_of(4)
    {
        return None;
    }
    let mut q = Queue::new(hw::QUEUE_MAX_SIZE as u16).ok()?;
    q.try_set_size(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(regs.desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(regs.avail))
        .ok()?;
    q.try_set_used_ring_address(GuestAddress(regs.used)).ok()?;
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

pub(crate) struct Pending {
    pub(crate) op: RemoteOp,
    port: Arc<dyn Port>,
    id: u64,
    deadline: Instant,
    faults: u32,
}

impl Pending {
    fn finish(self, counters: &Counters, status: RemoteStatus, data: Vec<u8>) {
        if status != RemoteStatus::Success {
            Counters::inc(&counters.injected_op_errors);
        }
        self.port.complete(
            self.id,
            RemoteResult {
                status,
                faults: self.faults,
                data,
            },
        );
    }
}

pub(crate) struct Parked {
    pub(crate) key: u32,
    /// A remote operation from a port.
    pub(crate) access: Option<Pending>,
    /// A work request at the head of a QP: (qpn, the faulting MR is the
    /// responder's).
    pub(crate) wr: Option<(u32, bool)>,
}

/// A popped chain: head index and its descriptors.
type Chain = (u16, Vec<Descriptor>);

/// A command executed but not yet completed on the used ring.
struct Completion {
    head: u16,
    /// Response still to write: guest-physical address and bytes.
    resp: Option<(u64, [u8; 64])>,
    len: u32,
}

/// A command a fault plan (`delay_map_pages`, `delay_destroy_mr`) holds
/// back: its completion is posted at `due`, after the rest of a pending
/// `DESTROY_MR` (`destroy`) is done.
struct Delayed {
    due: Instant,
    cmd: Command,
    destroy: Option<u32>,
    completion: Completion,
}

/// At most this many commands are held back at once (a command queue's
/// worth); beyond it a delay plan does not fire.
const MAX_DELAYED: usize = 64;

/// The engine state, owned by its thread.
pub struct Engine {
    pub(crate) sh: Arc<Shared>,
    rx: Receiver<EngineMsg>,
    pub(crate) epoch: u64,
    cmdq: Option<Box<Queue>>,
    eq: Option<Box<Queue>>,
    pub(crate) fatal: bool,
    pub(crate) fenced: bool,
    backlog: VecDeque<[u8; 64]>,
    event_seq: u32,
    pub(crate) tables: Tables,
    /// CQs, QPs and AHs.
    pub(crate) verbs: Verbs,
    /// The wire injector as a QP peer.
    pub(crate) peer: crate::peer::Peer,
    /// Outstanding page-fault tokens of injector SENDs, by guest QPN.
    pub(crate) peer_faults: BTreeMap<u32, u32>,
    /// Guest QPs whose injector SEND fault was answered with an error.
    pub(crate) peer_failed: std::collections::BTreeSet<u32>,
    /// Requester QPs waiting for a receive buffer (receiver not ready).
    pub(crate) rnr: BTreeMap<u32, crate::datapath::RnrWait>,
    /// Translation entries held by all MRs (kept in step with `tables`).
    mapped_total: u64,
    pub(crate) parked: BTreeMap<u32, Parked>,
    expired: VecDeque<u32>,
    next_token: u32,
    acks: VecDeque<(Instant, u32)>,
    /// Set when fault plan `never_ack` fired: acknowledgements are in
    /// submission order, so a device that cannot finish one invalidation
    /// acknowledges none after it until it is reset.
    acks_stalled: bool,
    /// Set by a command whose data buffer could not be read because bus
    /// mastering was cleared before it changed anything: it is taken again
    /// when bus mastering is back, as one whose request could not be read.
    cmd_fenced: bool,
    /// Commands held back by a delay plan, with their completions.
    delayed: VecDeque<Delayed>,
    /// Set by `execute` when a delay plan fired for the command: when its
    /// completion is due and the key whose destruction is pending.
    delay: Option<(Instant, Option<u32>)>,
    deferred: VecDeque<Pending>,
    /// A command whose completion waits for bus mastering.
    pending_cmd: Option<Completion>,
    /// Interrupts (command, event) owed from while bus mastering was off.
    owed_irq: [bool; 2],
    /// CQEs (CQ, CQE, solicited) of work requests that completed while bus
    /// mastering went off, written in order when it returns.
    pub(crate) owed_cqes: VecDeque<(u32, crate::wqe::Cqe, bool)>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | (u64::from(le32(b, o + 4)) << 32)
}

/// A decoded command: opcode, flags, cookie, and its 56 argument bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// `ODPRNIC_CMD_*`.
    pub opcode: u16,
    /// Per-opcode flags.
    pub flags: u16,
    /// Echoed in the response.
    pub cookie: u32,
    /// Arguments.
    pub args: [u8; 56],
}

impl Command {
    /// Decodes a 64-byte request.
    pub fn parse(raw: &[u8; 64]) -> Command {
        let mut args = [0; 56];
        args.copy_from_slice(&raw[8..]);
        Command {
            opcode: le16(raw, 0),
            flags: le16(raw, 2),
            cookie: le32(raw, 4),
            args,
        }
    }

    /// `u32` argument at `o`.
    pub fn u32(&self, o: usize) -> u32 {
        le32(&self.args, o)
    }

    /// `u64` argument at `o`.
    pub fn u64(&self, o: usize) -> u64 {
        le64(&self.args, o)
    }
}

/// Response bytes being built.
struct Out([u8; 56]);

impl Out {
    fn u32(&mut self, o: usize, v: u32) {
        self.0[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, o: usize, v: u64) {
        self.0[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// Splits a chain into (request, data buffers, response); None if it
/// breaks the command-chain rules.
pub fn split_chain(descs: &[Descriptor]) -> Option<(Descriptor, &[Descriptor], Descriptor)> {
    let (first, rest) = descs.split_first()?;
    let (last, data) = rest.split_last()?;
    let ok = !first.is_write_only()
        && first.len() >= hw::CMD_SIZE
        && last.is_write_only()
        && last.len() >= hw::RESP_SIZE
        && data.iter().all(|d| !d.is_write_only());
    ok.then_some((*first, data, *last))
}

impl Engine {
    /// A stopped engine; `run` starts it.
    pub fn new(sh: Arc<Shared>, rx: Receiver<EngineMsg>) -> Self {
        let epoch = sh.dma.epoch();
        Engine {
            sh,
            rx,
            epoch,
            cmdq: None,
            eq: None,
            fatal: false,
            fenced: true,
            backlog: VecDeque::new(),
            event_seq: 0,
            tables: Tables::default(),
            verbs: Verbs::default(),
            rnr: BTreeMap::new(),
            peer: crate::peer::Peer::default(),
            peer_faults: BTreeMap::new(),
            peer_failed: std::collections::BTreeSet::new(),
            mapped_total: 0,
            parked: BTreeMap::new(),
            expired: VecDeque::new(),
            next_token: 1,
            acks: VecDeque::new(),
            acks_stalled: false,
            cmd_fenced: false,
            delayed: VecDeque::new(),
            delay: None,
            deferred: VecDeque::new(),
            pending_cmd: None,
            owed_irq: [false; 2],
            owed_cqes: VecDeque::new(),
        }
    }

    /// The engine loop; returns at `Shutdown` or when every sender is gone.
    pub fn run(mut self) {
        loop {
            let now = Instant::now();
            let timeout = self
                .next_wakeup()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
            let msg = match self.rx.recv_timeout(timeout) {
                Ok(EngineMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
            };
            // A bug here must not leave a device whose engine is gone while
            // its registers still answer: recover the way hardware would,
            // with a reset the driver sees.
            let r = catch_unwind(AssertUnwindSafe(|| {
                if let Some(m) = msg {
                    self.handle(m);
                }
                self.tick();
            }));
            if r.is_err() {
                Counters::inc(&self.sh.counters.engine_panics);
                log::error!("engine panicked: resetting the device");
                self.spontaneous_reset();
            }
        }
        self.fail_everything(RemoteStatus::Fenced);
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let acks = self.acks.front().map(|a| a.0);
        let parked = self
            .parked
            .values()
            .filter_map(|p| p.access.as_ref().map(|a| a.deadline))
            .min();
        let deferred = self.deferred.iter().map(|p| p.deadline).min();
        // held back until bus mastering returns or a reset: no timer
        let delayed = if self.delayed_blocked() {
            None
        } else {
            self.delayed.iter().map(|d| d.due).min()
        };
        let rnr = self
            .rnr
            .values()
            .filter(|w| w.waiting)
            .map(|w| w.deadline)
            .min();
        [acks, parked, deferred, delayed, rnr]
            .into_iter()
            .flatten()
            .min()
    }

    fn tick(&mut self) {
        let now = Instant::now();
        while self.acks.front().is_some_and(|a| a.0 <= now) {
            if let Some((_, seq)) = self.acks.pop_front() {
                self.ack(seq);
            }
        }
        self.finish_delayed(now);
        let expired: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, p)| p.access.as_ref().is_some_and(|a| a.deadline <= now))
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some(a) = self.parked.get_mut(&t).and_then(|p| p.access.take()) {
                log::debug!("page fault token {t}: requester timed out");
                a.finish(&self.sh.counters, RemoteStatus::Timeout, Vec::new());
            }
            self.expired.push_back(t);
        }
        while self.expired.len() > MAX_EXPIRED_TOKENS {
            if let Some(t) = self.expired.pop_front() {
                self.parked.remove(&t);
            }
        }
        self.rnr_timers(now);
        let (due, keep): (VecDeque<_>, VecDeque<_>) =
            self.deferred.drain(..).partition(|p| p.deadline <= now);
        self.deferred = keep;
        for p in due {
            p.finish(&self.sh.counters, RemoteStatus::Fenced, Vec::new());
        }
    }

    fn handle(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::Enable { epoch, cmdq, eq } if epoch == self.epoch => {
                self.cmdq = Some(cmdq);
                self.eq = Some(eq);
                self.flush_events();
                self.process_cmdq();
            }
            EngineMsg::Disable { epoch } if epoch == self.epoch => {
                self.cmdq = None;
                self.eq = None;
                self.pending_cmd = None;
                self.drop_delayed();
            }
            EngineMsg::CmdNotify => self.process_cmdq(),
            EngineMsg::EqNotify => self.flush_events(),
            EngineMsg::Doorbell {
                page,
                offset,
                value,
            } => self.doorbell(page, offset, value),
            EngineMsg::Invalidate {
                epoch,
                key,
                start,
                length,
                seq,
            } if epoch == self.epoch => {
                // "Invalidation doorbell": commands made available before
                // the doorbell take effect before it (a late MAP_PAGES
                // cannot outlive the invalidation that follows it); the
                // command fault plans wait for a command notification
                self.run_cmdq(false);
                if self.epoch == epoch {
                    self.invalidate(key, start, length, seq);
                }
            }
            EngineMsg::Reset { epoch } => self.local_reset(epoch),
            EngineMsg::BusMaster(on) => {
                self.fenced = !on;
                if on {
                    for (i, v) in [hw::VEC_CMD, hw::VEC_EVENT].into_iter().enumerate() {
                        if std::mem::take(&mut self.owed_irq[i]) {
                            self.signal(v);
                        }
                    }
                    let deferred: Vec<Pending> = self.deferred.drain(..).collect();
                    for p in deferred {
                        self.attempt(p);
                    }
                    self.flush_events();
                    self.process_cmdq();
                    self.flush_owed_completions();
                    self.run_all_sqs();
                }
            }
            EngineMsg::Remote {
                op,
                port,
                id,
                deadline,
            } => {
                Counters::inc(&self.sh.counters.injected_ops);
                self.attempt(Pending {
                    op,
                    port,
                    id,
                    deadline,
                    faults: 0,
                });
            }
            EngineMsg::Peer { req, reply } => {
                let r = self.peer_request(req);
                let _ = reply.try_send(r);
            }
            EngineMsg::QueryMr { key, reply } => {
                let _ = reply.try_send(self.mr_info(key));
            }
            // stale epochs, wake-ups
            _ => {}
        }
    }

    fn mr_info(&self, key: u32) -> Option<MrInfo> {
        let mr = self.tables.get(key)?;
        Some(MrInfo {
            state: if mr.revoked { "revoked" } else { "live" },
            mode: mr.mode.name(),
            faults: mr.faults,
            invalidations: mr.invalidations,
            prefetched_pages: mr.prefetched_pages,
            mapped_pages: mr.mapped_pages(),
        })
    }

    fn fail_everything(&mut self, status: RemoteStatus) {
        for (_, p) in std::mem::take(&mut self.parked) {
            if let Some(a) = p.access {
                a.finish(&self.sh.counters, status, Vec::new());
            }
        }
        self.expired.clear();
        for p in self.deferred.drain(..) {
            p.finish(&self.sh.counters, status, Vec::new());
        }
    }

    fn local_reset(&mut self, epoch: u64) {
        self.fail_everything(RemoteStatus::RemoteAccessError);
        self.tables.clear();
        self.verbs.clear();
        self.rnr.clear();
        self.peer_faults.clear();
        self.peer_failed.clear();
        self.mapped_total = 0;
        self.sh
            .oracle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        self.cmdq = None;
        self.eq = None;
        self.backlog.clear();
        self.event_seq = 0;
        self.acks.clear();
        self.acks_stalled = false;
        self.cmd_fenced = false;
        self.drop_delayed();
        self.pending_cmd = None;
        self.owed_irq = [false; 2];
        self.owed_cqes.clear();
        self.fatal = false;
        self.epoch = epoch;
    }

    fn spontaneous_reset(&mut self) {
        log::warn!("fault plan: spontaneous device reset");
        let epoch = self.sh.hard_reset();
        self.local_reset(epoch);
    }

    fn go_fatal(&mut self, code: u32) {
        if self.fatal {
            return;
        }
        // REG_STATUS and REG_FATAL_CODE say why before the event announces
        // it: a driver that reads them on EVENT_DEVICE_ERROR sees the cause
        self.sh.set_fatal(self.epoch, code);
        if code != hw::FATAL_RING && code != hw::FATAL_EVENT_OVERFLOW {
            if self.backlog.len() < hw::EVENT_BACKLOG as usize {
                let mut d = [0u8; 56];
                d[..4].copy_from_slice(&code.to_le_bytes());
                self.post_event(hw::EVENT_DEVICE_ERROR, &d);
            } else {
                Counters::inc(&self.sh.counters.events_lost);
            }
        }
        self.fatal = true;
    }

    // ---- events -------------------------------------------------------

    pub(crate) fn post_event(&mut self, ty: u16, data: &[u8; 56]) {
        if self.fatal {
            return;
        }
        if self.backlog.len() >= hw::EVENT_BACKLOG as usize {
            Counters::inc(&self.sh.counters.events_lost);
            self.go_fatal(hw::FATAL_EVENT_OVERFLOW);
            return;
        }
        self.event_seq = self.event_seq.wrapping_add(1);
        let mut ev = [0u8; 64];
        ev[0..2].copy_from_slice(&ty.to_le_bytes());
        ev[4..8].copy_from_slice(&self.event_seq.to_le_bytes());
        ev[8..].copy_from_slice(data);
        self.backlog.push_back(ev);
        self.flush_events();
    }

    pub(crate) fn signal(&self, vector: u32) {
        if self.sh.irqs.signal(vector) {
            Counters::inc(&self.sh.counters.interrupts);
        }
    }

    /// Pops one chain: Ok(None) when the ring is empty; Err(Some(code))
    /// when the ring is broken, Err(None) when DMA must wait.
    fn pop(&mut self, which_cmdq: bool) -> Result<Option<Chain>, Option<u32>> {
        let dma = &self.sh.dma;
        let q = if which_cmdq {
            &mut self.cmdq
        } else {
            &mut self.eq
        };
        let Some(q) = q.as_mut() else {
            return Err(None);
        };
        let r = dma.with_mem(self.epoch, |mem| match q.iter(mem) {
            Err(e) => Err(e),
            Ok(mut it) => Ok(it.next().map(|c| (c.head_index(), c.collect::<Vec<_>>()))),
        });
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                log::error!("ring error: {e}");
                Err(Some(hw::FATAL_RING))
            }
            Err(DmaError::Fenced) | Err(DmaError::Stale) => Err(None),
            Err(e) => {
                log::error!("ring not accessible: {e}");
                Err(Some(hw::FATAL_RING))
            }
        }
    }

    fn push_used(&mut self, which_cmdq: bool, head: u16, len: u32) -> Result<(), Option<u32>> {
        let dma = &self.sh.dma;
        let q = if which_cmdq {
            &mut self.cmdq
        } else {
            &mut self.eq
        };
        let Some(q) = q.as_mut() else {
            return Err(None);
        };
        match dma.with_mem(self.epoch, |mem| q.add_used(mem, head, len)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                log::error!("used ring error: {e}");
                Err(Some(hw::FATAL_RING))
            }
            Err(DmaError::Fenced) | Err(DmaError::Stale) => Err(None),
            Err(_) => Err(Some(hw::FATAL_RING)),
        }
    }

    fn flush_events(&mut self) {
        if self.eq.is_none() || self.fenced || self.fatal {
            return;
        }
        let mut posted = 0;
        while let Some(ev) = self.backlog.front().copied() {
            let (head, descs) = match self.pop(false) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(code) => {
                    if let Some(c) = code {
                        self.go_fatal(c);
                    }
                    return;
                }
            };
            let Some(d) = descs
                .first()
                .filter(|d| d.is_write_only() && d.len() >= hw::EVENT_SIZE)
            else {
                log::error!("event buffer {head} is not a writable 64-byte buffer");
                self.go_fatal(hw::FATAL_RING);
                return;
            };
            match self.sh.dma.write(self.epoch, d.addr().0, &ev) {
                Ok(()) => {}
                Err(DmaError::Fenced) => {
                    // the buffer stays the driver's: take it again later
                    self.rewind(false);
                    return;
                }
                Err(DmaError::Stale) => return,
                Err(e) => {
                    log::error!("writing event: {e}");
                    self.go_fatal(hw::FATAL_RING);
                    return;
                }
            }
            match self.push_used(false, head, hw::EVENT_SIZE) {
                Ok(()) => {}
                Err(None) => {
                    self.rewind(false);
                    return;
                }
                Err(Some(c)) => {
                    self.go_fatal(c);
                    return;
                }
            }
            self.backlog.pop_front();
            Counters::inc(&self.sh.counters.events);
            posted += 1;
        }
        if posted > 0 {
            self.notify(hw::VEC_EVENT);
        }
    }

    // ---- commands -----------------------------------------------------

    fn rewind(&mut self, which_cmdq: bool) {
        Counters::inc(&self.sh.counters.fenced_waits);
        let q = if which_cmdq {
            &mut self.cmdq
        } else {
            &mut self.eq
        };
        if let Some(q) = q.as_mut() {
            q.set_next_avail(q.next_avail().wrapping_sub(1));
        }
    }

    /// Signals `vector` unless the driver suppressed interrupts on the
    /// queue; if that cannot be read now (fenced), the interrupt is owed.
    fn notify(&mut self, vector: u32) {
        let q = if vector == hw::VEC_CMD {
            &self.cmdq
        } else {
            &self.eq
        };
        let Some(avail) = q.as_ref().map(|q| q.avail_ring()) else {
            return;
        };
        let mut f = [0u8; 2];
        match self.sh.dma.read(self.epoch, avail, &mut f) {
            Ok(()) if u16::from_le_bytes(f) & VRING_AVAIL_F_NO_INTERRUPT != 0 => {}
            Ok(()) => self.signal(vector),
            Err(DmaError::Fenced) => self.owed_irq[(vector == hw::VEC_EVENT) as usize] = true,
            Err(_) => {}
        }
    }

    fn process_cmdq(&mut self) {
        self.run_cmdq(true);
    }

    /// Executes the available commands; `plans`: give the command fault
    /// plans (`device_error`, `reset`, `kill`) their chance at each.
    fn run_cmdq(&mut self, plans: bool) {
        if self.fatal || self.fenced || self.cmdq.is_none() {
            return;
        }
        let mut done = 0;
        if let Some(c) = self.pending_cmd.take() {
            match self.complete(c) {
                Ok(()) => done += 1,
                Err(code) => return self.stop_on(code),
            }
        }
        loop {
            if plans && self.sh.fire(FaultKind::DeviceError).is_some() {
                log::warn!("fault plan: device error");
                self.go_fatal(hw::FATAL_INJECTED);
                return;
            }
            if plans && self.sh.fire(FaultKind::Reset).is_some() {
                self.spontaneous_reset();
                return;
            }
            if plans {
                self.maybe_kill("command");
            }
            let (head, descs) = match self.pop(true) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(code) => return self.stop_on(code),
            };
            let epoch = self.epoch;
            let completion = match split_chain(&descs) {
                Some((req, data, resp)) => {
                    let mut raw = [0u8; 64];
                    let (cmd, status, out) = match self.sh.dma.read(epoch, req.addr().0, &mut raw) {
                        Ok(()) => {
                            let cmd = Command::parse(&raw);
                            let (status, out) = self.execute(&cmd, data);
                            if std::mem::take(&mut self.cmd_fenced) {
                                self.rewind(true);
                                return;
                            }
                            Counters::inc(&self.sh.counters.commands);
                            (Some(cmd), status, out)
                        }
                        Err(DmaError::Fenced) => {
                            // not started: take it again when bus mastering is back
                            self.rewind(true);
                            return;
                        }
                        Err(DmaError::Stale) => return,
                        Err(_) => {
                            Counters::inc(&self.sh.counters.commands);
                            (None, hw::STATUS_DMA_ERROR, [0; 56])
                        }
                    };
                    if self.epoch != epoch || self.fatal {
                        // the command reset or stopped the device
                        return;
                    }
                    let completion = Completion {
                        head,
                        resp: Some((resp.addr().0, self.response(cmd.as_ref(), status, &out))),
                        len: hw::RESP_SIZE,
                    };
                    if let (Some((due, destroy)), Some(cmd)) = (self.delay.take(), cmd) {
                        self.delayed.push_back(Delayed {
                            due,
                            cmd,
                            destroy,
                            completion,
                        });
                        continue;
                    }
                    completion
                }
                None => {
                    Counters::inc(&self.sh.counters.commands);
                    let resp = descs
                        .last()
                        .filter(|d| d.is_write_only() && d.len() >= hw::RESP_SIZE)
                        .map(|d| {
                            (
                                d.addr().0,
                                self.response(None, hw::STATUS_BAD_CHAIN, &[0; 56]),
                            )
                        });
                    Completion {
                        head,
                        len: if resp.is_some() { hw::RESP_SIZE } else { 0 },
                        resp,
                    }
                }
            };
            match self.complete(completion) {
                Ok(()) => done += 1,
                Err(code) => return self.stop_on(code),
            }
        }
        if done > 0 {
            self.notify(hw::VEC_CMD);
        }
    }

    fn stop_on(&mut self, code: Option<u32>) {
        if let Some(c) = code {
            self.go_fatal(c);
        }
    }

    /// Builds a response.
    fn response(&self, cmd: Option<&Command>, status: u16, out: &[u8; 56]) -> [u8; 64] {
        if status != hw::STATUS_OK {
            Counters::inc(&self.sh.counters.command_errors);
        }
        let mut raw = [0u8; 64];
        if let Some(c) = cmd {
            raw[0..2].copy_from_slice(&c.opcode.to_le_bytes());
            raw[4..8].copy_from_slice(&c.cookie.to_le_bytes());
        }
        raw[2..4].copy_from_slice(&status.to_le_bytes());
        raw[8..].copy_from_slice(out);
        raw
    }

    /// Writes a command's response and puts it on the used ring. If bus
    /// mastering is cleared meanwhile, the rest waits in `pending_cmd`
    /// (the command was executed: it is completed, never run twice).
    fn complete(&mut self, mut c: Completion) -> Result<(), Option<u32>> {
        if let Some((addr, raw)) = c.resp {
            match self.sh.dma.write(self.epoch, addr, &raw) {
                Ok(()) => c.resp = None,
                Err(DmaError::Fenced) => {
                    Counters::inc(&self.sh.counters.fenced_waits);
                    self.pending_cmd = Some(c);
                    return Err(None);
                }
                Err(DmaError::Stale) => return Err(None),
                Err(e) => {
                    log::warn!("writing response: {e}");
                    c.resp = None;
                    c.len = 0;
                }
            }
        }
        match self.push_used(true, c.head, c.len) {
            Ok(()) => Ok(()),
            Err(None) if self.sh.dma.epoch() == self.epoch => {
                Counters::inc(&self.sh.counters.fenced_waits);
                self.pending_cmd = Some(c);
                Err(None)
            }
            Err(code) => Err(code),
        }
    }

    fn execute(&mut self, cmd: &Command, data: &[Descriptor]) -> (u16, [u8; 56]) {
        self.delay = None;
        let mut out = Out([0; 56]);
        let r: Result<(), MrError> = match cmd.opcode {
            hw::CMD_NOP => Ok(()),
            hw::CMD_CREATE_PD => self.tables.create_pd().map(|pdn| out.u32(0, pdn)),
            hw::CMD_DESTROY_PD if self.verbs.uses_pd(cmd.u32(0)) => Err(MrError::Busy),
            hw::CMD_DESTROY_PD => self.tables.destroy_pd(cmd.u32(0)),
            hw::CMD_CREATE_MR => {
                let args = CreateMr {
                    pdn: cmd.u32(0),
                    access: cmd.u32(4),
                    mode: cmd.args[8],
                    page_shift: cmd.args[9],
                    iova: cmd.u64(16),
                    length: cmd.u64(24),
                };
                self.tables.create_mr(args, self.sh.config.odp).map(|key| {
                    log::debug!("CREATE_MR {args:x?} -> key {key:#x}");
                    out.u32(0, key)
                })
            }
            hw::CMD_DESTROY_MR => self.execute_destroy_mr(cmd.u32(0)),
            hw::CMD_MAP_PAGES => {
                let r = self.map_pages(cmd, data);
                if let Some(due) = self.delay_plan(FaultKind::DelayMapPages) {
                    Counters::inc(&self.sh.counters.map_pages_delayed);
                    log::warn!(
                        "fault plan: MAP_PAGES (cookie {}) completes late",
                        cmd.cookie
                    );
                    self.delay = Some((due, None));
                }
                return r;
            }
            hw::CMD_RESUME => return self.resume(cmd.u32(0), cmd.u32(4)),
            hw::CMD_QUERY_MR => match self.tables.get(cmd.u32(0)) {
                Some(mr) => {
                    out.u32(0, u32::from(mr.revoked) * hw::MR_STATE_REVOKED);
                    out.u32(4, u32::from(mr.mode.raw()));
                    out.u64(8, mr.faults);
                    out.u64(16, mr.invalidations);
                    out.u64(24, mr.prefetched_pages);
                    out.u64(32, mr.mapped_pages());
                    Ok(())
                }
                None => Err(MrError::BadHandle),
            },
            hw::CMD_CREATE_CQ
            | hw::CMD_DESTROY_CQ
            | hw::CMD_CREATE_QP
            | hw::CMD_MODIFY_QP
            | hw::CMD_QUERY_QP
            | hw::CMD_DESTROY_QP
            | hw::CMD_CREATE_AH
            | hw::CMD_DESTROY_AH => {
                return match self.verbs_command(cmd, &mut out.0) {
                    Ok(()) => (hw::STATUS_OK, out.0),
                    Err(e) => {
                        log::debug!("command {:#x}: {e}", cmd.opcode);
                        (e.status(), out.0)
                    }
                };
            }
            op => {
                log::debug!("unknown opcode {op:#x}");
                return (hw::STATUS_BAD_OPCODE, out.0);
            }
        };
        match r {
            Ok(()) => (hw::STATUS_OK, out.0),
            Err(e) => {
                log::debug!("command {:#x}: {e}", cmd.opcode);
                (e.status(), out.0)
            }
        }
    }

    /// `DESTROY_MR`, which `delay_destroy_mr` may leave pending. Only the
    /// pending command ends a pending destruction: another `DESTROY_MR`
    /// of the key meanwhile is `BUSY` (the key could otherwise be reused
    /// and the pending one destroy its new MR).
    fn execute_destroy_mr(&mut self, key: u32) -> Result<(), MrError> {
        if self.delayed.iter().any(|d| d.destroy == Some(key)) {
            return Err(MrError::Busy);
        }
        if self.tables.get(key).is_none() {
            return Err(MrError::BadHandle);
        }
        let Some(due) = self.delay_plan(FaultKind::DelayDestroyMr) else {
            return self.destroy_mr(key);
        };
        Counters::inc(&self.sh.counters.destroys_delayed);
        log::warn!("fault plan: DESTROY_MR of key {key:#x} is left pending");
        self.sh
            .oracle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .begin_destroy(key);
        self.delay = Some((due, Some(key)));
        Ok(())
    }

    /// Held-back completions wait: bus mastering is off, the device is
    /// fatal, or a completion already waits for bus mastering.
    fn delayed_blocked(&self) -> bool {
        self.fenced || self.fatal || self.pending_cmd.is_some()
    }

    /// A chance for a delay plan: when the held-back command is due.
    fn delay_plan(&self, kind: FaultKind) -> Option<Instant> {
        if self.delayed.len() >= MAX_DELAYED {
            return None;
        }
        let ms = self.sh.fire(kind)?;
        Some(Instant::now() + Duration::from_millis(ms))
    }

    /// Completes the held-back commands that are due (finishing a pending
    /// `DESTROY_MR` first), unless bus mastering is off: they wait for it.
    fn finish_delayed(&mut self, now: Instant) {
        let mut done = 0;
        while !self.delayed_blocked() {
            let Some(i) = self.delayed.iter().position(|d| d.due <= now) else {
                break;
            };
            let Some(mut d) = self.delayed.remove(i) else {
                break;
            };
            if let Some(key) = d.destroy {
                let status = match self.destroy_mr(key) {
                    Ok(()) => hw::STATUS_OK,
                    Err(e) => e.status(),
                };
                if let Some((_, raw)) = d.completion.resp.as_mut() {
                    *raw = self.response(Some(&d.cmd), status, &[0; 56]);
                }
            }
            if let Err(code) = self.complete(d.completion) {
                self.stop_on(code);
                break;
            }
            done += 1;
        }
        if done > 0 {
            self.notify(hw::VEC_CMD);
        }
    }

    /// The queue went away (disable, reset): held-back commands are
    /// forgotten with it, and pending destructions end now.
    fn drop_delayed(&mut self) {
        for d in std::mem::take(&mut self.delayed) {
            if let Some(key) = d.destroy {
                let _ = self.destroy_mr(key);
            }
        }
    }

    fn destroy_mr(&mut self, key: u32) -> Result<(), MrError> {
        let mr = self.tables.destroy_mr(key)?;
        self.mapped_total = self.mapped_total.saturating_sub(mr.mapped_pages());
        self.fail_parked(key);
        self.sh
            .oracle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(key);
        Ok(())
    }

    fn fail_parked(&mut self, key: u32) {
        let tokens: Vec<u32> = self
            .parked
            .iter()
            .filter(|(_, p)| p.key == key)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            let Some(p) = self.parked.remove(&t) else {
                continue;
            };
            if let Some(a) = p.access {
                a.finish(
                    &self.sh.counters,
                    RemoteStatus::RemoteAccessError,
                    Vec::new(),
                );
            }
            if let Some((qpn, remote)) = p.wr {
                self.fail_head_wr(qpn, remote);
            }
        }
    }

    fn map_pages(&mut self, cmd: &Command, data: &[Descriptor]) -> (u16, [u8; 56]) {
        let out = [0u8; 56];
        let (key, flags, iova, count) = (cmd.u32(0), cmd.u32(4), cmd.u64(8), cmd.u32(16));
        if flags & !hw::MAP_PREFETCH != 0 || count == 0 || count > hw::MAP_MAX {
            return (hw::STATUS_BAD_PARAM, out);
        }
        let bytes = count as usize * 8;
        let Some(buf) = data.first().filter(|d| d.len() as usize >= bytes) else {
            return (hw::STATUS_BAD_PARAM, out);
        };
        if self.sh.fire(FaultKind::FailDma).is_some() {
            Counters::inc(&self.sh.counters.dma_errors);
            return (hw::STATUS_DMA_ERROR, out);
        }
        let mut raw = vec![0u8; bytes];
        match self.sh.dma.read(self.epoch, buf.addr().0, &mut raw) {
            Ok(()) => {}
            Err(DmaError::Fenced) => {
                // nothing changed yet: the command runs again later
                self.cmd_fenced = true;
                return (hw::STATUS_DMA_ERROR, out);
            }
            Err(_) => {
                Counters::inc(&self.sh.counters.dma_errors);
                return (hw::STATUS_DMA_ERROR, out);
            }
        }
        let entries: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        let Some(mr) = self.tables.get_mut(key) else {
            return (hw::STATUS_BAD_HANDLE, out);
        };
        let first = match mr.check_map(iova, &entries) {
            Ok(f) => f,
            Err(e) => return (e.status(), out),
        };
        let adding = mr.new_entries(first, &entries);
        if self.mapped_total.saturating_add(adding) > crate::mr::MAX_TOTAL_PAGES {
            return (hw::STATUS_NO_RESOURCES, out);
        }
        let before = mr.mapped_pages();
        let (mapped, unmapped) = mr.apply_map(first, &entries);
        self.mapped_total = (self.mapped_total + mr.mapped_pages()).saturating_sub(before);
        debug_assert_eq!(self.mapped_total, self.tables.total_mapped());
        let Some(mr) = self.tables.get_mut(key) else {
            return (hw::STATUS_BAD_HANDLE, out);
        };
        if flags & hw::MAP_PREFETCH != 0 {
            mr.prefetched_pages = mr.prefetched_pages.saturating_add(mapped.len() as u64);
        }
        let mut oracle = self.sh.oracle.lock().unwrap_or_else(|e| e.into_inner());
        for (page, gpa) in &mapped {
            oracle.map(key, *page, *gpa);
        }
        for page in unmapped {
            oracle.invalidate(key, page, page, 0);
        }
        (hw::STATUS_OK, out)
    }

    fn resume(&mut self, token: u32, status: u32) -> (u16, [u8; 56]) {
        let out = [0u8; 56];
        let Some(parked) = self.parked.remove(&token) else {
            return (hw::STATUS_BAD_HANDLE, out);
        };
        Counters::inc(&self.sh.counters.resumes);
        self.sh.trace.record(
            "resume",
            serde_json::json!({ "token": token, "status": status }),
        );
        if let Some(qpn) = self
            .peer_faults
            .iter()
            .find(|(_, t)| **t == token)
            .map(|(q, _)| *q)
        {
            self.peer_faults.remove(&qpn);
            if status != 0 {
                Counters::inc(&self.sh.counters.resume_errors);
                self.peer_failed.insert(qpn);
            }
            return (hw::STATUS_OK, out);
        }
        if let Some((qpn, remote)) = parked.wr {
            if self.sh.fire(FaultKind::FailResume).is_some() {
                self.fail_head_wr(qpn, remote);
                return (hw::STATUS_INJECTED, out);
            }
            if status != 0 {
                Counters::inc(&self.sh.counters.resume_errors);
                self.fail_head_wr(qpn, remote);
            } else {
                self.unstall(qpn);
            }
            return (hw::STATUS_OK, out);
        }
        let Some(access) = parked.access else {
            // the requester gave up already; the answer is still accepted
            self.expired.retain(|t| *t != token);
            return (hw::STATUS_OK, out);
        };
        if self.sh.fire(FaultKind::FailResume).is_some() {
            access.finish(
                &self.sh.counters,
                RemoteStatus::RemoteAccessError,
                Vec::new(),
            );
            return (hw::STATUS_INJECTED, out);
        }
        if status != 0 {
            Counters::inc(&self.sh.counters.resume_errors);
            access.finish(
                &self.sh.counters,
                RemoteStatus::RemoteAccessError,
                Vec::new(),
            );
        } else {
            self.attempt(access);
        }
        (hw::STATUS_OK, out)
    }

    // ---- invalidation -------------------------------------------------

    /// Fault plan `kill`: the process ends here, as if killed.
    fn maybe_kill(&self, at: &str) {
        if self.sh.fire(FaultKind::Kill).is_some() {
            log::error!("fault plan: killing the device process at {at}");
            std::process::exit(KILL_EXIT_STATUS);
        }
    }

    fn invalidate(&mut self, key: u32, start: u64, length: u64, seq: u32) {
        self.maybe_kill("invalidation");
        Counters::inc(&self.sh.counters.invalidations);
        self.sh.trace.record(
            "invalidate",
            serde_json::json!({ "key": key, "start": start, "length": length, "seq": seq }),
        );
        let range = self
            .tables
            .get(key)
            .and_then(|mr| mr.clamp_range(start, length));
        match range {
            None => {
                Counters::inc(&self.sh.counters.bad_invalidations);
                log::debug!(
                    "invalidation {seq}: key {key:#x} range {start:#x}+{length:#x} hits nothing"
                );
            }
            Some((first, last)) => {
                let rogue_write = self.sh.fire(FaultKind::RogueWrite).is_some();
                let rogue = rogue_write || self.sh.fire(FaultKind::RogueRecord).is_some();
                let mut revoked = false;
                if let Some(mr) = self.tables.get_mut(key) {
                    mr.invalidations = mr.invalidations.saturating_add(1);
                    let revocable = mr.mode == crate::mr::MrMode::Revocable;
                    let mut oracle = self.sh.oracle.lock().unwrap_or_else(|e| e.into_inner());
                    if rogue {
                        // keep the translations, but the driver did not allow them
                        mr.rogue_write |= rogue_write;
                        Counters::inc(&self.sh.counters.invalidations_ignored);
                        if revocable {
                            oracle.revoke(key, seq);
                        } else {
                            oracle.invalidate(key, first, last, seq);
                        }
                    } else if revocable {
                        if !mr.revoked {
                            mr.revoked = true;
                            revoked = true;
                        }
                        // the whole key goes: every translation with it
                        let before = mr.mapped_pages();
                        mr.drop_all_pages();
                        self.mapped_total = self.mapped_total.saturating_sub(before);
                        oracle.revoke(key, seq);
                    } else {
                        let before = mr.mapped_pages();
                        mr.drop_pages(first, last);
                        self.mapped_total =
                            (self.mapped_total + mr.mapped_pages()).saturating_sub(before);
                        oracle.invalidate(key, first, last, seq);
                    }
                }
                if revoked {
                    Counters::inc(&self.sh.counters.revocations);
                    self.fail_parked(key);
                    let mut d = [0u8; 56];
                    d[..4].copy_from_slice(&key.to_le_bytes());
                    self.post_event(hw::EVENT_MR_REVOKED, &d);
                }
            }
        }
        if !self.acks_stalled && self.sh.fire(FaultKind::NeverAck).is_some() {
            self.acks_stalled = true;
        }
        if self.acks_stalled {
            Counters::inc(&self.sh.counters.inv_acks_withheld);
            log::warn!("fault plan never_ack: invalidation {seq} is not acknowledged (none is until reset)");
            return;
        }
        let now = Instant::now();
        let due = match self.sh.fire(FaultKind::DelayInvAck) {
            Some(ms) => {
                Counters::inc(&self.sh.counters.inv_acks_delayed);
                now + Duration::from_millis(ms)
            }
            None => now,
        };
        // acknowledgements stay in submission order
        let due = self.acks.back().map_or(due, |b| b.0.max(due));
        if due <= now && self.acks.is_empty() {
            self.ack(seq);
        } else {
            self.acks.push_back((due, seq));
        }
    }

    fn ack(&mut self, seq: u32) {
        if !self.sh.set_inv_ack(self.epoch, seq) {
            return;
        }
        Counters::inc(&self.sh.counters.inv_acks);
        self.sh
            .trace
            .record("inv_ack", serde_json::json!({ "seq": seq }));
        let mut d = [0u8; 56];
        d[..4].copy_from_slice(&seq.to_le_bytes());
        self.post_event(hw::EVENT_INV_ACK, &d);
    }

    // ---- remote operations --------------------------------------------

    /// Posts `EVENT_PAGE_FAULT` for a parked access ("Page faults"), as the
    /// fault plans allow: dropped or duplicated on purpose.
    pub(crate) fn post_page_fault(
        &mut self,
        token: u32,
        key: u32,
        qpn: u32,
        iova: u64,
        length: u64,
        write: bool,
    ) {
        self.sh.trace.record(
            "page_fault",
            serde_json::json!({ "token": token, "key": key, "qpn": qpn, "iova": iova,
                "length": length, "write": write }),
        );
        if self.sh.fire(FaultKind::DropFault).is_some() {
            Counters::inc(&self.sh.counters.page_faults_dropped);
            return;
        }
        let mut d = [0u8; 56];
        d[0..4].copy_from_slice(&token.to_le_bytes());
        d[4..8].copy_from_slice(&key.to_le_bytes());
        d[8..12].copy_from_slice(&qpn.to_le_bytes());
        let flags = if write { hw::FAULT_WRITE } else { 0 };
        d[12..16].copy_from_slice(&flags.to_le_bytes());
        d[16..24].copy_from_slice(&iova.to_le_bytes());
        d[24..32].copy_from_slice(&length.to_le_bytes());
        self.post_event(hw::EVENT_PAGE_FAULT, &d);
        if self.sh.fire(FaultKind::DupFault).is_some() {
            Counters::inc(&self.sh.counters.page_faults_duplicated);
            self.post_event(hw::EVENT_PAGE_FAULT, &d);
        }
    }

    pub(crate) fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1).max(1);
            if !self.parked.contains_key(&t) {
                return t;
            }
        }
    }

    fn attempt(&mut self, mut p: Pending) {
        let counters = self.sh.counters.clone();
        if self.fatal {
            return p.finish(&counters, RemoteStatus::Fenced, Vec::new());
        }
        if self.fenced {
            self.deferred.push_back(p);
            return;
        }
        let (len, access, write) = match &p.op.kind {
            RemoteOpKind::Write(d) => (d.len() as u64, hw::ACCESS_REMOTE_WRITE, true),
            RemoteOpKind::Read(n) => (*n, hw::ACCESS_REMOTE_READ, false),
            RemoteOpKind::CmpSwp { .. } | RemoteOpKind::FetchAdd(_) => {
                if !p.op.va.is_multiple_of(8) {
                    return p.finish(&counters, RemoteStatus::RemoteInvalidRequest, Vec::new());
                }
                (8, hw::ACCESS_REMOTE_ATOMIC, true)
            }
        };
        if len > MAX_INJECT_LEN {
            return p.finish(&counters, RemoteStatus::RemoteInvalidRequest, Vec::new());
        }
        if len == 0 {
            return p.finish(&counters, RemoteStatus::Success, Vec::new());
        }
        let (key, va) = (p.op.rkey, p.op.va);
        if let Some(dst) = p.op.dst_qpn {
            if let Err(status) = self.check_responder_qp(dst, p.op.src_qpn, key, access) {
                return p.finish(&counters, status, Vec::new());
            }
        }
        let Some(mr) = self.tables.get_mut(key) else {
            return p.finish(&counters, RemoteStatus::RemoteAccessError, Vec::new());
        };
        let segs = match mr.translate(va, len, access, write) {
            Err(e) => {
                log::debug!("remote op key {key:#x} va {va:#x}+{len:#x}: {e}");
                let _: &AccessError = &e;
                return p.finish(&counters, RemoteStatus::RemoteAccessError, Vec::new());
            }
            Ok(Translation::Fault { iova, length }) => {
                mr.faults = mr.faults.saturating_add(1);
                p.faults = p.faults.saturating_add(1);
                Counters::inc(&counters.page_faults);
                let token = self.alloc_token();
                let qpn = p.op.dst_qpn.unwrap_or(p.op.src_qpn);
                self.parked.insert(
                    token,
                    Parked {
                        key,
                        access: Some(p),
                        wr: None,
                    },
                );
                self.post_page_fault(token, key, qpn, iova, length, write);
                return;
            }
            Ok(Translation::Ready(segs)) => segs,
        };
        let perform_stale = mr.rogue_write;
        if self.sh.fire(FaultKind::FailDma).is_some() {
            Counters::inc(&counters.dma_errors);
            return p.finish(&counters, RemoteStatus::RemoteAccessError, Vec::new());
        }
        let mut read_data = Vec::new();
        let mut off = 0usize;
        for s in &segs {
            let acc = MrAccess {
                key,
                qpn: p.op.src_qpn,
                iova: s.iova,
                mr_offset: s.mr_offset,
                page: s.page,
                gpa: s.gpa,
                perform_stale,
            };
            let n = s.len as usize;
            let r = match &p.op.kind {
                RemoteOpKind::CmpSwp { compare, swap } => self
                    .sh
                    .dma
                    .mr_atomic(
                        self.epoch,
                        &acc,
                        Atomic::CmpSwp {
                            compare: *compare,
                            swap: *swap,
                        },
                    )
                    .map(|v| read_data = v.to_le_bytes().to_vec()),
                RemoteOpKind::FetchAdd(add) => self
                    .sh
                    .dma
                    .mr_atomic(self.epoch, &acc, Atomic::FetchAdd(*add))
                    .map(|v| read_data = v.to_le_bytes().to_vec()),
                RemoteOpKind::Write(d) => self.sh.dma.mr_write(self.epoch, &acc, &d[off..off + n]),
                RemoteOpKind::Read(_) => {
                    let start = read_data.len();
                    read_data.resize(start + n, 0);
                    self.sh
                        .dma
                        .mr_read(self.epoch, &acc, &mut read_data[start..])
                }
            };
            off += n;
            match r {
                Ok(()) | Err(DmaError::Suppressed) => {}
                Err(DmaError::Fenced) => {
                    // BME was cleared under us: retry the whole operation later
                    self.deferred.push_back(p);
                    return;
                }
                Err(e) => {
                    log::warn!("remote op DMA failed: {e}");
                    Counters::inc(&counters.dma_errors);
                    return p.finish(&counters, RemoteStatus::RemoteAccessError, Vec::new());
                }
            }
        }
        p.finish(&counters, RemoteStatus::Success, read_data);
    }
}
