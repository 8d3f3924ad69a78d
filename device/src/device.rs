// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The device as its bus sees it: state shared between the vfio-user front
//! and the engine thread, and the BAR 0 register file ("Registers (BAR 0)"
//! in `docs/hardware.md`). Register writes never wait for the engine: they
//! forward doorbells over a channel.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::counters::Counters;
use crate::dma::Dma;
use crate::engine::{self, Engine, EngineMsg};
use crate::fault_plan::{FaultKind, FaultPlan};
use crate::hw;
use crate::irq::Irqs;
use crate::mr;
use crate::oracle::Oracle;
use crate::pci::ConfigSpace;
use crate::trace::Trace;

/// Port MAC address (locally administered).
pub const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x0d, 0xb0, 0x01];

/// Device-wide options.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// ODP capabilities on (`--odp on`).
    pub odp: bool,
}

/// Queue registers as the driver wrote them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRegs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Entries.
    pub size: u32,
}

#[derive(Debug, Default)]
struct Regs {
    enable: bool,
    cmdq: QueueRegs,
    eq: QueueRegs,
    inv_key: u32,
    inv_start: u64,
    inv_length: u64,
    inv_seq: u32,
    /// Low halves of 64-bit registers, waiting for their high half.
    pending_lo: Vec<(u64, u32)>,
}

/// State shared by the front and the engine.
pub struct Shared {
    /// Options.
    pub config: DeviceConfig,
    /// Counters.
    pub counters: Arc<Counters>,
    /// Event trace.
    pub trace: Trace,
    /// DMA oracle.
    pub oracle: Arc<Mutex<Oracle>>,
    /// Guest memory.
    pub dma: Dma,
    /// MSI-X eventfds.
    pub irqs: Irqs,
    /// Active fault plan.
    pub faults: Mutex<FaultPlan>,
    regs: Mutex<Regs>,
    status: AtomicU32,
    fatal_code: AtomicU32,
    inv_ack: AtomicU32,
}

impl Shared {
    fn regs(&self) -> MutexGuard<'_, Regs> {
        self.regs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Capability bits.
    pub fn caps(&self) -> u32 {
        let odp = if self.config.odp {
            hw::CAP_ODP | hw::CAP_IMPLICIT_ODP | hw::CAP_PREFETCH
        } else {
            0
        };
        // UD QPs and 8-byte atomics are served by the data path
        // (interface 1.1) whatever the ODP switch says
        odp | hw::CAP_REVOCABLE | hw::CAP_ATOMICS | hw::CAP_UD
    }

    /// `REG_STATUS`.
    pub fn status(&self) -> u32 {
        let fenced = if self.dma.bus_master() {
            0
        } else {
            hw::STATUS_FENCED
        };
        self.status.load(Ordering::SeqCst) | fenced
    }

    /// A chance for fault `kind` to fire.
    pub fn fire(&self, kind: FaultKind) -> Option<u64> {
        let hit = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fire(kind);
        if hit.is_some() {
            self.trace.record(
                "fault_plan",
                serde_json::json!({ "kind": kind.to_string() }),
            );
        }
        hit
    }

    /// Enters `STATUS_FATAL` with `code`, unless a reset started a newer
    /// epoch meanwhile.
    pub fn set_fatal(&self, epoch: u64, code: u32) {
        let _regs = self.regs();
        if self.dma.epoch() != epoch {
            return;
        }
        log::error!("device error, code {code}: the device stops until reset");
        self.status.fetch_and(!hw::STATUS_READY, Ordering::SeqCst);
        self.status.fetch_or(hw::STATUS_FATAL, Ordering::SeqCst);
        self.fatal_code.store(code, Ordering::SeqCst);
        Counters::inc(&self.counters.fatal_errors);
        self.trace
            .record("fatal", serde_json::json!({ "code": code }));
    }

    /// Publishes an invalidation acknowledgement in `REG_INV_ACK`.
    pub fn set_inv_ack(&self, epoch: u64, seq: u32) -> bool {
        let _regs = self.regs();
        if self.dma.epoch() != epoch {
            return false;
        }
        self.inv_ack.store(seq, Ordering::SeqCst);
        true
    }

    /// Resets the register file and starts a new DMA epoch: returns after
    /// every copy in flight has finished. The caller resets the engine.
    pub fn hard_reset(&self) -> u64 {
        let mut regs = self.regs();
        let epoch = self.dma.new_epoch();
        *regs = Regs::default();
        self.status.store(0, Ordering::SeqCst);
        self.fatal_code.store(hw::FATAL_NONE, Ordering::SeqCst);
        self.inv_ack.store(0, Ordering::SeqCst);
        Counters::inc(&self.counters.resets);
        self.trace
            .record("reset", serde_json::json!({ "epoch": epoch }));
        log::info!("device reset (epoch {epoch})");
        epoch
    }
}

/// The device: shared state, config space, MSI-X table and engine thread.
pub struct Device {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Channel to the engine.
    pub engine_tx: Sender<EngineMsg>,
    pci: Mutex<ConfigSpace>,
    msix: Mutex<Vec<u8>>,
    engine: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.engine_tx.send(EngineMsg::Shutdown);
        if let Some(h) = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

fn bad_access() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::InvalidInput)
}

/// Checks `[offset, offset + len)` lies within `size`.
pub fn in_bounds(offset: u64, len: usize, size: u64) -> bool {
    u64::try_from(len)
        .ok()
        .and_then(|l| offset.checked_add(l))
        .is_some_and(|end| end <= size)
}

impl Device {
    /// Creates the device and starts its engine thread.
    pub fn new(config: DeviceConfig, plan: FaultPlan) -> std::io::Result<Arc<Device>> {
        let counters = Arc::new(Counters::default());
        let oracle = Arc::new(Mutex::new(Oracle::default()));
        let shared = Arc::new(Shared {
            config,
            counters: counters.clone(),
            trace: Trace::default(),
            oracle: oracle.clone(),
            dma: Dma::new(oracle, counters),
            irqs: Irqs::default(),
            faults: Mutex::new(plan),
            regs: Mutex::new(Regs::default()),
            status: AtomicU32::new(0),
            fatal_code: AtomicU32::new(0),
            inv_ack: AtomicU32::new(0),
        });
        let (tx, rx) = channel();
        let engine = Engine::new(shared.clone(), rx);
        let handle = std::thread::Builder::new()
            .name("odp-rnic-engine".into())
            .spawn(move || engine.run())?;
        Ok(Arc::new(Device {
            shared,
            engine_tx: tx,
            pci: Mutex::new(ConfigSpace::new()),
            msix: Mutex::new(vec![0; hw::BAR_MSIX_SIZE as usize]),
            engine: Mutex::new(Some(handle)),
        }))
    }

    fn send(&self, msg: EngineMsg) {
        if self.engine_tx.send(msg).is_err() {
            log::error!("engine thread is gone");
        }
    }

    /// Config space read.
    pub fn config_read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), crate::pci::CONFIG_SIZE as u64) {
            return Err(bad_access());
        }
        self.pci
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
        Ok(())
    }

    /// Config space write; clearing Bus Master Enable returns only after
    /// DMA in flight has finished.
    pub fn config_write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), crate::pci::CONFIG_SIZE as u64) {
            return Err(bad_access());
        }
        let mut pci = self.pci.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(on) = pci.write(offset, data) {
            self.shared.dma.set_bus_master(on);
            self.shared
                .trace
                .record("bus_master", serde_json::json!({ "enabled": on }));
            log::info!("bus master {}", if on { "enabled" } else { "disabled" });
            self.send(EngineMsg::BusMaster(on));
        }
        Ok(())
    }

    /// MSI-X BAR read (table as written; PBA reads 0).
    pub fn msix_read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), hw::BAR_MSIX_SIZE) {
            return Err(bad_access());
        }
        let t = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        let o = offset as usize;
        data.copy_from_slice(&t[o..o + data.len()]);
        Ok(())
    }

    /// MSI-X BAR write (table only; the PBA is read-only).
    pub fn msix_write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), hw::BAR_MSIX_SIZE) {
            return Err(bad_access());
        }
        let mut t = self.msix.lock().unwrap_or_else(|e| e.into_inner());
        let table_end = (hw::NUM_VECTORS * 16) as usize;
        for (i, b) in data.iter().enumerate() {
            let o = offset as usize + i;
            if o < table_end {
                t[o] = *b;
            }
        }
        Ok(())
    }

    /// Doorbell BAR read: doorbells are write-only and read 0.
    pub fn db_read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), crate::pci::DB_BAR_SIZE) {
            return Err(bad_access());
        }
        data.fill(0);
        Ok(())
    }

    /// Doorbell BAR write: forwarded to the engine, never waited for.
    pub fn db_write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), crate::pci::DB_BAR_SIZE) {
            Counters::inc(&self.shared.counters.bad_doorbells);
            return Err(bad_access());
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            Counters::inc(&self.shared.counters.bad_doorbells);
            return Ok(());
        }
        let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.send(EngineMsg::Doorbell {
            page: (offset / hw::DB_PAGE_SIZE) as u32,
            offset: offset % hw::DB_PAGE_SIZE,
            value,
        });
        Ok(())
    }

    /// BAR 0 read.
    pub fn reg_read(&self, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), hw::BAR_REGS_SIZE) {
            Counters::inc(&self.shared.counters.bad_register_reads);
            return Err(bad_access());
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            Counters::inc(&self.shared.counters.bad_register_reads);
            data.fill(0xff);
            return Ok(());
        }
        let v = self.reg_read32(offset);
        data.copy_from_slice(&v.to_le_bytes());
        Ok(())
    }

    fn reg_read32(&self, offset: u64) -> u32 {
        let sh = &self.shared;
        let regs = sh.regs();
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match offset {
            hw::REG_MAGIC => hw::MAGIC,
            hw::REG_VERSION => (hw::VERSION_MAJOR << 16) | hw::VERSION_MINOR,
            hw::REG_CAPS => sh.caps(),
            hw::REG_STATUS => sh.status(),
            hw::REG_CONTROL => u32::from(regs.enable) * hw::CONTROL_ENABLE,
            hw::REG_FATAL_CODE => sh.fatal_code.load(Ordering::SeqCst),
            hw::REG_MAX_PD => mr::MAX_PD,
            hw::REG_MAX_MR => mr::MAX_MR,
            hw::REG_MAX_CQ => crate::verbs::MAX_CQ,
            hw::REG_MAX_QP => crate::verbs::MAX_QP,
            hw::REG_MAX_MR_PAGES => hw::MAX_MR_PAGES as u32,
            hw::REG_MAC_LO => u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]),
            hw::REG_MAC_HI => u32::from_le_bytes([MAC[4], MAC[5], 0, 0]),
            hw::REG_CMDQ_DESC => lo(regs.cmdq.desc),
            o if o == hw::REG_CMDQ_DESC + 4 => hi(regs.cmdq.desc),
            hw::REG_CMDQ_AVAIL => lo(regs.cmdq.avail),
            o if o == hw::REG_CMDQ_AVAIL + 4 => hi(regs.cmdq.avail),
            hw::REG_CMDQ_USED => lo(regs.cmdq.used),
            o if o == hw::REG_CMDQ_USED + 4 => hi(regs.cmdq.used),
            hw::REG_CMDQ_SIZE => regs.cmdq.size,
            hw::REG_EQ_DESC => lo(regs.eq.desc),
            o if o == hw::REG_EQ_DESC + 4 => hi(regs.eq.desc),
            hw::REG_EQ_AVAIL => lo(regs.eq.avail),
            o if o == hw::REG_EQ_AVAIL + 4 => hi(regs.eq.avail),
            hw::REG_EQ_USED => lo(regs.eq.used),
            o if o == hw::REG_EQ_USED + 4 => hi(regs.eq.used),
            hw::REG_EQ_SIZE => regs.eq.size,
            hw::REG_INV_KEY => regs.inv_key,
            hw::REG_INV_START => lo(regs.inv_start),
            o if o == hw::REG_INV_START + 4 => hi(regs.inv_start),
            hw::REG_INV_LENGTH => lo(regs.inv_length),
            o if o == hw::REG_INV_LENGTH + 4 => hi(regs.inv_length),
            hw::REG_INV_SEQ => regs.inv_seq,
            hw::REG_INV_ACK => sh.inv_ack.load(Ordering::SeqCst),
            _ => 0,
        }
    }

    /// BAR 0 write.
    pub fn reg_write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if !in_bounds(offset, data.len(), hw::BAR_REGS_SIZE) {
            Counters::inc(&self.shared.counters.bad_register_writes);
            return Err(bad_access());
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            Counters::inc(&self.shared.counters.bad_register_writes);
            return Ok(());
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.reg_write32(offset, v);
        Ok(())
    }

    fn reg_write32(&self, offset: u64, v: u32) {
        let sh = &self.shared;
        if offset == hw::REG_CONTROL {
            return self.control_write(v);
        }
        let mut regs = sh.regs();
        let r64 = [
            hw::REG_CMDQ_DESC,
            hw::REG_CMDQ_AVAIL,
            hw::REG_CMDQ_USED,
            hw::REG_EQ_DESC,
            hw::REG_EQ_AVAIL,
            hw::REG_EQ_USED,
            hw::REG_INV_START,
            hw::REG_INV_LENGTH,
        ];
        if r64.contains(&offset) {
            regs.pending_lo.retain(|(o, _)| *o != offset);
            regs.pending_lo.push((offset, v));
            return;
        }
        if let Some(base) = offset.checked_sub(4).filter(|b| r64.contains(b)) {
            let lo = regs
                .pending_lo
                .iter()
                .position(|(o, _)| *o == base)
                .map(|i| regs.pending_lo.remove(i).1)
                .unwrap_or(0);
            let full = (u64::from(v) << 32) | u64::from(lo);
            match base {
                hw::REG_CMDQ_DESC => regs.cmdq.desc = full,
                hw::REG_CMDQ_AVAIL => regs.cmdq.avail = full,
                hw::REG_CMDQ_USED => regs.cmdq.used = full,
                hw::REG_EQ_DESC => regs.eq.desc = full,
                hw::REG_EQ_AVAIL => regs.eq.avail = full,
                hw::REG_EQ_USED => regs.eq.used = full,
                hw::REG_INV_START => regs.inv_start = full,
                _ => regs.inv_length = full,
            }
            return;
        }
        match offset {
            hw::REG_CMDQ_SIZE => regs.cmdq.size = v,
            hw::REG_EQ_SIZE => regs.eq.size = v,
            hw::REG_CMDQ_NOTIFY => self.send(EngineMsg::CmdNotify),
            hw::REG_EQ_NOTIFY => self.send(EngineMsg::EqNotify),
            hw::REG_INV_KEY => regs.inv_key = v,
            hw::REG_INV_SEQ => {
                regs.inv_seq = v;
                let msg = EngineMsg::Invalidate {
                    epoch: sh.dma.epoch(),
                    key: regs.inv_key,
                    start: regs.inv_start,
                    length: regs.inv_length,
                    seq: v,
                };
                drop(regs);
                self.send(msg);
            }
            _ => {
                Counters::inc(&sh.counters.bad_register_writes);
                log::debug!("write {v:#x} to read-only or unknown register {offset:#x}");
            }
        }
    }

    fn control_write(&self, v: u32) {
        let sh = &self.shared;
        if v & hw::CONTROL_RESET != 0 {
            self.reset();
            return;
        }
        let enable = v & hw::CONTROL_ENABLE != 0;
        let mut regs = sh.regs();
        if enable == regs.enable {
            return;
        }
        regs.enable = enable;
        let epoch = sh.dma.epoch();
        if !enable {
            sh.status.fetch_and(!hw::STATUS_READY, Ordering::SeqCst);
            drop(regs);
            self.send(EngineMsg::Disable { epoch });
            return;
        }
        if sh.status.load(Ordering::SeqCst) & hw::STATUS_FATAL != 0 {
            return;
        }
        let (cq, eq) = (regs.cmdq, regs.eq);
        drop(regs);
        let queues = sh
            .dma
            .with_mem_unfenced(|mem| {
                Some((
                    engine::build_queue(&cq, mem)?,
                    engine::build_queue(&eq, mem)?,
                ))
            })
            .flatten();
        match queues {
            Some((cmdq, evq)) => {
                sh.status.fetch_or(hw::STATUS_READY, Ordering::SeqCst);
                log::info!("enabled: command queue {cq:x?}, event queue {eq:x?}");
                sh.trace.record("enable", serde_json::json!({}));
                self.send(EngineMsg::Enable {
                    epoch,
                    cmdq: Box::new(cmdq),
                    eq: Box::new(evq),
                });
            }
            None => {
                log::error!("ENABLE with invalid queues: command {cq:x?}, event {eq:x?}");
                sh.set_fatal(epoch, hw::FATAL_BAD_QUEUE);
            }
        }
    }

    /// Device reset (`CONTROL_RESET`, vfio-user DEVICE_RESET): stops all
    /// DMA before it returns; the engine forgets its objects in order.
    pub fn reset(&self) {
        let epoch = self.shared.hard_reset();
        self.send(EngineMsg::Reset { epoch });
    }

    /// The vfio-user client went away: drop its DMA maps and eventfds,
    /// keep device state.
    pub fn client_gone(&self) {
        self.shared.dma.unmap_all();
        self.shared.irqs.clear();
        self.shared
            .trace
            .record("disconnect", serde_json::json!({}));
    }
}
