// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The one place guest memory is touched.
//!
//! Guest memory is what the vfio-user client DMA-mapped with a file
//! descriptor, held as an `RwLock<Option<GuestMemoryMmap>>`. Every access
//! takes the read side for the duration of one copy; `DMA_UNMAP`, clearing
//! Bus Master Enable and reset take the write side, so they return only
//! after every copy in flight has finished ("Fencing" in
//! `docs/hardware.md`). Accesses through an MR consult the DMA oracle
//! before they touch memory.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, VolatileMemory,
};

#[cfg(target_endian = "big")]
compile_error!("guest memory is little-endian and atomics operate on it in place");

use crate::counters::Counters;
use crate::oracle::{Oracle, Verdict, Violation, ViolationAction, ViolationKind};

/// DMA failures.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmaError {
    /// Bus Master Enable is clear.
    #[error("bus mastering is disabled")]
    Fenced,
    /// The device was reset since the access was planned.
    #[error("device was reset")]
    Stale,
    /// The range is not (entirely) DMA-mapped.
    #[error("guest-physical range {0:#x}+{1:#x} is not DMA-mapped")]
    Unmapped(u64, u64),
    /// The access was a violation and was not performed.
    #[error("access suppressed by the DMA oracle")]
    Suppressed,
    /// A DMA_MAP could not be turned into memory.
    #[error("cannot map {0:#x}+{1:#x}: {2}")]
    Map(u64, u64, String),
}

struct State {
    regions: Vec<Arc<GuestRegionMmap>>,
    mem: Option<GuestMemoryMmap>,
    bus_master: bool,
    epoch: u64,
}

/// An 8-byte atomic operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atomic {
    /// Compare and swap.
    CmpSwp {
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// Fetch and add.
    FetchAdd(u64),
}

/// Context of an access through an MR, for the oracle.
#[derive(Clone, Copy, Debug)]
pub struct MrAccess {
    /// Key used.
    pub key: u32,
    /// Queue pair (the injector QPN for injected operations).
    pub qpn: u32,
    /// IOVA of the first byte.
    pub iova: u64,
    /// Offset from the MR start.
    pub mr_offset: u64,
    /// Page index within the MR.
    pub page: u64,
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// A rogue fault plan says stale accesses are performed, not suppressed.
    pub perform_stale: bool,
}

/// Guest memory, the bus-master fence and the reset epoch.
pub struct Dma {
    state: RwLock<State>,
    oracle: Arc<Mutex<Oracle>>,
    counters: Arc<Counters>,
}

impl Dma {
    /// No memory, bus mastering off, epoch 0.
    pub fn new(oracle: Arc<Mutex<Oracle>>, counters: Arc<Counters>) -> Self {
        Dma {
            state: RwLock::new(State {
                regions: Vec::new(),
                mem: None,
                bus_master: false,
                epoch: 0,
            }),
            oracle,
            counters,
        }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an fd-backed DMA map at guest-physical `gpa`.
    pub fn map(&self, gpa: u64, size: u64, file: File, offset: u64) -> Result<(), DmaError> {
        let err = |e: String| DmaError::Map(gpa, size, e);
        let len = usize::try_from(size).map_err(|_| err("size".into()))?;
        if size == 0 || gpa.checked_add(size).is_none() {
            return Err(err("empty or wrapping range".into()));
        }
        let region = GuestRegionMmap::from_range(
            GuestAddress(gpa),
            len,
            Some(FileOffset::new(file, offset)),
        )
        .map_err(|e| err(e.to_string()))?;
        let mut st = self.write_state();
        let mut regions = st.regions.clone();
        regions.push(Arc::new(region));
        regions.sort_by_key(|r| r.start_addr());
        let mem =
            GuestMemoryMmap::from_arc_regions(regions.clone()).map_err(|e| err(e.to_string()))?;
        st.regions = regions;
        st.mem = Some(mem);
        Ok(())
    }

    /// Removes every map overlapping `[gpa, gpa + size)`; returns when no
    /// copy is in flight. Returns how many maps were removed.
    pub fn unmap(&self, gpa: u64, size: u64) -> usize {
        let end = gpa.saturating_add(size);
        let mut st = self.write_state();
        let before = st.regions.len();
        st.regions.retain(|r| {
            let rs = r.start_addr().0;
            let re = rs.saturating_add(r.len());
            re <= gpa || rs >= end
        });
        let gone = before - st.regions.len();
        st.mem = if st.regions.is_empty() {
            None
        } else {
            GuestMemoryMmap::from_arc_regions(st.regions.clone()).ok()
        };
        gone
    }

    /// Drops every map (client disconnect, `DMA_UNMAP` with UNMAP_ALL).
    pub fn unmap_all(&self) {
        let mut st = self.write_state();
        st.mem = None;
        st.regions.clear();
    }

    /// Sets or clears Bus Master Enable; clearing returns after every copy
    /// in flight has finished.
    pub fn set_bus_master(&self, on: bool) {
        self.write_state().bus_master = on;
    }

    /// Bus Master Enable.
    pub fn bus_master(&self) -> bool {
        self.read_state().bus_master
    }

    /// Starts a new epoch (reset): returns after every copy in flight has
    /// finished; copies planned under an older epoch fail with `Stale`.
    pub fn new_epoch(&self) -> u64 {
        let mut st = self.write_state();
        st.epoch = st.epoch.wrapping_add(1);
        st.epoch
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.read_state().epoch
    }

    fn guard(&self, epoch: u64) -> Result<RwLockReadGuard<'_, State>, DmaError> {
        let st = self.read_state();
        if st.epoch != epoch {
            return Err(DmaError::Stale);
        }
        if !st.bus_master {
            return Err(DmaError::Fenced);
        }
        Ok(st)
    }

    /// Runs `f` on guest memory (ring accesses through `virtio-queue`) with
    /// the read side held; `f` must be short.
    pub fn with_mem<R>(
        &self,
        epoch: u64,
        f: impl FnOnce(&GuestMemoryMmap) -> R,
    ) -> Result<R, DmaError> {
        let st = self.guard(epoch)?;
        let mem = st.mem.as_ref().ok_or(DmaError::Unmapped(0, 0))?;
        Ok(f(mem))
    }

    /// Like `with_mem`, without the bus-master check (queue validation at
    /// enable, which reads nothing).
    pub fn with_mem_unfenced<R>(&self, f: impl FnOnce(&GuestMemoryMmap) -> R) -> Option<R> {
        let st = self.read_state();
        st.mem.as_ref().map(f)
    }

    /// Reads guest-physical memory (rings, command buffers).
    pub fn read(&self, epoch: u64, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let st = self.guard(epoch)?;
        let mem = st
            .mem
            .as_ref()
            .ok_or(DmaError::Unmapped(gpa, buf.len() as u64))?;
        mem.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| DmaError::Unmapped(gpa, buf.len() as u64))
    }

    /// Writes guest-physical memory (rings, command responses, events).
    pub fn write(&self, epoch: u64, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
        let st = self.guard(epoch)?;
        let mem = st
            .mem
            .as_ref()
            .ok_or(DmaError::Unmapped(gpa, buf.len() as u64))?;
        mem.write_slice(buf, GuestAddress(gpa))
            .map_err(|_| DmaError::Unmapped(gpa, buf.len() as u64))
    }

    /// Checks one MR access (within one page) with the oracle and records
    /// a violation if it is one. Ok: perform it. `Suppressed`: a stale
    /// translation, not performed. `Unmapped`: the memory is not
    /// DMA-mapped; never performed, the access fails.
    fn oracle_check(
        &self,
        mem: Option<&GuestMemoryMmap>,
        acc: &MrAccess,
        len: u64,
    ) -> Result<(), DmaError> {
        let mapped = mem.is_some_and(|m| {
            usize::try_from(len).is_ok_and(|l| {
                m.check_range(GuestAddress(acc.gpa), l, vm_memory::Permissions::ReadWrite)
            })
        });
        let mut oracle = self.oracle.lock().unwrap_or_else(|e| e.into_inner());
        let verdict = if mapped {
            oracle.check(acc.key, acc.page, acc.gpa)
        } else {
            Verdict::Dead(ViolationKind::Unmapped, None)
        };
        if oracle.destroying(acc.key) {
            // legal (the driver has not taken the page back), but the
            // window a driver must not rely on: say so, every time
            Counters::inc(&self.counters.accesses_after_destroy);
            log::warn!(
                "access through key {:#x} after its DESTROY_MR began: qpn {:#x} iova {:#x} gpa {:#x}",
                acc.key,
                acc.qpn,
                acc.iova,
                acc.gpa
            );
        }
        let Verdict::Dead(kind, inv_seq) = verdict else {
            return Ok(());
        };
        let perform = acc.perform_stale && mapped;
        let action = if perform {
            ViolationAction::Performed
        } else {
            ViolationAction::Suppressed
        };
        log::warn!(
            "DMA oracle: {kind:?} access key {:#x} qpn {:#x} iova {:#x} gpa {:#x} ({action:?})",
            acc.key,
            acc.qpn,
            acc.iova,
            acc.gpa
        );
        oracle.record(Violation {
            key: acc.key,
            qpn: acc.qpn,
            iova: acc.iova,
            mr_offset: acc.mr_offset,
            gpa: acc.gpa,
            time_ns: 0,
            inv_seq,
            kind,
            action,
        });
        Counters::inc(&self.counters.violations);
        if !mapped {
            Err(DmaError::Unmapped(acc.gpa, len))
        } else if perform {
            Ok(())
        } else {
            Err(DmaError::Suppressed)
        }
    }

    /// Writes `data` (within one page) through an MR translation.
    pub fn mr_write(&self, epoch: u64, acc: &MrAccess, data: &[u8]) -> Result<(), DmaError> {
        let st = self.guard(epoch)?;
        self.oracle_check(st.mem.as_ref(), acc, data.len() as u64)?;
        let mem = st
            .mem
            .as_ref()
            .ok_or(DmaError::Unmapped(acc.gpa, data.len() as u64))?;
        mem.write_slice(data, GuestAddress(acc.gpa))
            .map_err(|_| DmaError::Unmapped(acc.gpa, data.len() as u64))?;
        Counters::add(&self.counters.dma_bytes_written, data.len() as u64);
        Ok(())
    }

    /// Performs an 8-byte atomic through an MR translation (`acc.gpa`
    /// 8-byte aligned) with a real atomic instruction, so guest CPUs see it
    /// as one; returns the original value.
    pub fn mr_atomic(&self, epoch: u64, acc: &MrAccess, op: Atomic) -> Result<u64, DmaError> {
        let st = self.guard(epoch)?;
        self.oracle_check(st.mem.as_ref(), acc, 8)?;
        let unmapped = DmaError::Unmapped(acc.gpa, 8);
        let mem = st.mem.as_ref().ok_or(unmapped.clone())?;
        let slice = vm_memory::GuestMemoryBackend::get_slice(mem, GuestAddress(acc.gpa), 8)
            .map_err(|_| unmapped.clone())?;
        let cell: &AtomicU64 = slice.get_atomic_ref(0).map_err(|_| unmapped)?;
        // guest memory is little-endian; so is every host this runs on
        let old = match op {
            Atomic::CmpSwp { compare, swap } => {
                match cell.compare_exchange(compare, swap, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(v) | Err(v) => v,
                }
            }
            Atomic::FetchAdd(add) => cell.fetch_add(add, Ordering::SeqCst),
        };
        Counters::add(&self.counters.dma_bytes_read, 8);
        Counters::add(&self.counters.dma_bytes_written, 8);
        Ok(old)
    }

    /// Reads into `buf` (within one page) through an MR translation.
    pub fn mr_read(&self, epoch: u64, acc: &MrAccess, buf: &mut [u8]) -> Result<(), DmaError> {
        let st = self.guard(epoch)?;
        self.oracle_check(st.mem.as_ref(), acc, buf.len() as u64)?;
        let mem = st
            .mem
            .as_ref()
            .ok_or(DmaError::Unmapped(acc.gpa, buf.len() as u64))?;
        mem.read_slice(buf, GuestAddress(acc.gpa))
            .map_err(|_| DmaError::Unmapped(acc.gpa, buf.len() as u64))?;
        Counters::add(&self.counters.dma_bytes_read, buf.len() as u64);
        Ok(())
    }
}
