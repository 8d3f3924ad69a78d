// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Protection domains and memory regions: the tables, keys
//! (`index << 8 | generation`), translation tables, and the access and
//! bounds checks ("Commands" and "Page faults" in `docs/hardware.md`).

use std::collections::BTreeMap;

use crate::hw;

/// Protection domains the device offers (`REG_MAX_PD`).
pub const MAX_PD: u32 = 1024;
/// Memory regions the device offers (`REG_MAX_MR`).
pub const MAX_MR: u32 = 65536;
/// Translation entries all MRs together may hold (16 GiB of 4 KiB pages):
/// a guest cannot make the device allocate without bound.
pub const MAX_TOTAL_PAGES: u64 = 1 << 22;
/// Bytes per page.
pub const PAGE_SIZE: u64 = 1 << hw::PAGE_SHIFT;
const PAGE_MASK: u64 = PAGE_SIZE - 1;
/// Bits of a translation entry that must be zero.
const PTE_RESERVED: u64 = PAGE_MASK & !(hw::PTE_READ | hw::PTE_WRITE);

/// Failures of PD/MR operations; each maps to a command status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MrError {
    /// An argument is out of range.
    #[error("bad parameter: {0}")]
    BadParam(&'static str),
    /// No free slot.
    #[error("table full")]
    NoResources,
    /// No such PD or MR.
    #[error("no such handle")]
    BadHandle,
    /// The capability is absent (ODP with `--odp off`).
    #[error("unsupported")]
    Unsupported,
    /// The PD still has MRs.
    #[error("busy")]
    Busy,
}

impl MrError {
    /// The `ODPRNIC_STATUS_*` for this error.
    pub fn status(&self) -> u16 {
        match self {
            MrError::BadParam(_) => hw::STATUS_BAD_PARAM,
            MrError::NoResources => hw::STATUS_NO_RESOURCES,
            MrError::BadHandle => hw::STATUS_BAD_HANDLE,
            MrError::Unsupported => hw::STATUS_UNSUPPORTED,
            MrError::Busy => hw::STATUS_BUSY,
        }
    }
}

/// Why an access through an MR was refused before any DMA.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    /// The key names no MR.
    #[error("invalid key")]
    BadKey,
    /// The MR was revoked.
    #[error("MR revoked")]
    Revoked,
    /// The MR lacks the access right.
    #[error("access right missing")]
    NoAccess,
    /// The range is not inside the MR.
    #[error("out of bounds")]
    OutOfBounds,
    /// Pages are missing from a non-ODP MR.
    #[error("page not present in a non-ODP MR")]
    NotPresent,
}

/// Registration mode (`ODPRNIC_MR_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MrMode {
    /// Table written at registration; never faults.
    Pinned,
    /// Empty table; faults.
    Odp,
    /// ODP over the whole address space.
    Implicit,
    /// Table written at registration; any invalidation revokes the key.
    Revocable,
}

impl MrMode {
    /// Decodes `ODPRNIC_MR_*`.
    pub fn from_raw(v: u8) -> Option<Self> {
        match v {
            hw::MR_PINNED => Some(MrMode::Pinned),
            hw::MR_ODP => Some(MrMode::Odp),
            hw::MR_IMPLICIT => Some(MrMode::Implicit),
            hw::MR_REVOCABLE => Some(MrMode::Revocable),
            _ => None,
        }
    }

    /// `ODPRNIC_MR_*`.
    pub fn raw(self) -> u8 {
        match self {
            MrMode::Pinned => hw::MR_PINNED,
            MrMode::Odp => hw::MR_ODP,
            MrMode::Implicit => hw::MR_IMPLICIT,
            MrMode::Revocable => hw::MR_REVOCABLE,
        }
    }

    /// Name used by the control protocol.
    pub fn name(self) -> &'static str {
        match self {
            MrMode::Pinned => "pinned",
            MrMode::Odp => "odp",
            MrMode::Implicit => "implicit",
            MrMode::Revocable => "revocable",
        }
    }

    /// Whether a missing page faults instead of failing.
    pub fn faults(self) -> bool {
        matches!(self, MrMode::Odp | MrMode::Implicit)
    }
}

/// Arguments of `CREATE_MR`.
#[derive(Clone, Copy, Debug)]
pub struct CreateMr {
    /// Protection domain.
    pub pdn: u32,
    /// `ODPRNIC_ACCESS_*` bits.
    pub access: u32,
    /// `ODPRNIC_MR_*`.
    pub mode: u8,
    /// Must be `ODPRNIC_PAGE_SHIFT`.
    pub page_shift: u8,
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub length: u64,
}

/// One memory region.
#[derive(Debug)]
pub struct Mr {
    /// Its key.
    pub key: u32,
    /// Its PD.
    pub pdn: u32,
    /// `ODPRNIC_ACCESS_*`.
    pub access: u32,
    /// Mode.
    pub mode: MrMode,
    /// First IOVA (0 for implicit).
    pub iova: u64,
    /// Length (0 for implicit: everything).
    pub length: u64,
    /// Revoked by an invalidation.
    pub revoked: bool,
    /// Page faults raised.
    pub faults: u64,
    /// Invalidations that hit it.
    pub invalidations: u64,
    /// Pages mapped with `MAP_PREFETCH`.
    pub prefetched_pages: u64,
    /// A rogue fault plan kept stale translations and says to perform them.
    pub rogue_write: bool,
    /// Page index (from the page holding `iova`; absolute for implicit) to
    /// translation entry (`gpa | PTE bits`). Sparse, so an idle large MR
    /// costs nothing.
    table: BTreeMap<u64, u64>,
}

/// One page-sized piece of an access, translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// IOVA of the piece's first byte.
    pub iova: u64,
    /// Offset of that byte from the MR's start.
    pub mr_offset: u64,
    /// Page index within the MR.
    pub page: u64,
    /// Guest-physical address of the piece's first byte.
    pub gpa: u64,
    /// Bytes in this piece (within one page).
    pub len: u64,
}

/// Result of translating an access.
#[derive(Debug, PartialEq, Eq)]
pub enum Translation {
    /// Every page is present with the needed rights.
    Ready(Vec<Segment>),
    /// Pages are missing (ODP): the page-aligned range to fault in.
    Fault {
        /// First IOVA of the range (page-aligned).
        iova: u64,
        /// Length (page multiple).
        length: u64,
    },
}

impl Mr {
    fn base_page(&self) -> u64 {
        self.iova >> hw::PAGE_SHIFT
    }

    /// Number of pages the MR spans (None: implicit, unbounded).
    pub fn pages(&self) -> Option<u64> {
        if self.mode == MrMode::Implicit {
            return None;
        }
        let end = self.iova.checked_add(self.length)?;
        let last = (end - 1) >> hw::PAGE_SHIFT;
        Some(last - self.base_page() + 1)
    }

    /// Present translation entries.
    pub fn mapped_pages(&self) -> u64 {
        self.table.len() as u64
    }

    /// Checks `[va, va + len)` lies inside the MR (len > 0).
    fn check_bounds(&self, va: u64, len: u64) -> Result<(), AccessError> {
        let end = va.checked_add(len).ok_or(AccessError::OutOfBounds)?;
        if self.mode == MrMode::Implicit {
            return Ok(());
        }
        let mr_end = self
            .iova
            .checked_add(self.length)
            .ok_or(AccessError::OutOfBounds)?;
        if va < self.iova || end > mr_end {
            return Err(AccessError::OutOfBounds);
        }
        Ok(())
    }

    fn page_index(&self, va: u64) -> u64 {
        if self.mode == MrMode::Implicit {
            va >> hw::PAGE_SHIFT
        } else {
            (va >> hw::PAGE_SHIFT) - self.base_page()
        }
    }

    /// Translates `[va, va + len)` (`len > 0`) for an access that needs
    /// `access` rights (one `ODPRNIC_ACCESS_*` bit) and writes if `write`.
    pub fn translate(
        &self,
        va: u64,
        len: u64,
        access: u32,
        write: bool,
    ) -> Result<Translation, AccessError> {
        if self.revoked {
            return Err(AccessError::Revoked);
        }
        if self.access & access != access {
            return Err(AccessError::NoAccess);
        }
        self.check_bounds(va, len)?;
        let need = if write { hw::PTE_WRITE } else { hw::PTE_READ };
        let mut segs = Vec::new();
        let mut missing: Option<(u64, u64)> = None;
        let mut cur = va;
        // bounds were checked: va + len does not overflow
        let end = va + len;
        while cur < end {
            let page_end = (cur | PAGE_MASK).saturating_add(1).min(end);
            let page = self.page_index(cur);
            match self.table.get(&page) {
                Some(pte) if pte & need != 0 => segs.push(Segment {
                    iova: cur,
                    mr_offset: cur.wrapping_sub(self.iova),
                    page,
                    gpa: (pte & !PAGE_MASK) | (cur & PAGE_MASK),
                    len: page_end - cur,
                }),
                _ => {
                    let p = cur & !PAGE_MASK;
                    missing = Some(match missing {
                        None => (p, p),
                        Some((first, _)) => (first, p),
                    });
                }
            }
            cur = page_end;
        }
        match missing {
            None => Ok(Translation::Ready(segs)),
            Some(_) if !self.mode.faults() => Err(AccessError::NotPresent),
            Some((first, last)) => Ok(Translation::Fault {
                iova: first,
                length: last - first + PAGE_SIZE,
            }),
        }
    }

    /// The pages of `[start, start + length)` clamped to the MR, as page
    /// indices `(first, last)`; None if the range misses the MR.
    pub fn clamp_range(&self, start: u64, length: u64) -> Option<(u64, u64)> {
        if length == 0 {
            return None;
        }
        let end = start.checked_add(length)?;
        let (lo, hi) = if self.mode == MrMode::Implicit {
            (start, end)
        } else {
            let mr_end = self.iova.checked_add(self.length)?;
            (start.max(self.iova), end.min(mr_end))
        };
        if lo >= hi {
            return None;
        }
        Some((self.page_index(lo), self.page_index(hi - 1)))
    }

    /// Drops the translations of pages `first..=last`.
    pub fn drop_pages(&mut self, first: u64, last: u64) {
        let keys: Vec<u64> = self.table.range(first..=last).map(|(k, _)| *k).collect();
        for k in keys {
            self.table.remove(&k);
        }
    }

    /// Drops every translation (revocation).
    pub fn drop_all_pages(&mut self) {
        self.table.clear();
    }

    /// Validates a `MAP_PAGES` run: `iova` page-aligned, inside the MR, and
    /// every entry well-formed. Returns the first page index.
    pub fn check_map(&self, iova: u64, entries: &[u64]) -> Result<u64, MrError> {
        if self.revoked {
            return Err(MrError::BadHandle);
        }
        if iova & PAGE_MASK != 0 {
            return Err(MrError::BadParam("iova not page-aligned"));
        }
        let count = entries.len() as u64;
        let run = count
            .checked_mul(PAGE_SIZE)
            .ok_or(MrError::BadParam("run too long"))?;
        let run_end = iova
            .checked_add(run)
            .ok_or(MrError::BadParam("run wraps"))?;
        if self.mode != MrMode::Implicit {
            let first = self.base_page() << hw::PAGE_SHIFT;
            let pages = self.pages().ok_or(MrError::BadParam("bad MR"))?;
            let mr_end = first + pages * PAGE_SIZE;
            if iova < first || run_end > mr_end {
                return Err(MrError::BadParam("run outside the MR"));
            }
        }
        if entries.iter().any(|e| e & PTE_RESERVED != 0) {
            return Err(MrError::BadParam("reserved PTE bits set"));
        }
        Ok(self.page_index(iova))
    }

    /// How many entries of a validated run would be added (present now,
    /// absent from the table).
    pub fn new_entries(&self, first_page: u64, entries: &[u64]) -> u64 {
        entries
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                *e & (hw::PTE_READ | hw::PTE_WRITE) != 0
                    && !self.table.contains_key(&(first_page + *i as u64))
            })
            .count() as u64
    }

    /// Applies a validated run; returns the pages that became present as
    /// (page index, guest-physical page) and the pages made not present.
    pub fn apply_map(&mut self, first_page: u64, entries: &[u64]) -> (Vec<(u64, u64)>, Vec<u64>) {
        let mut mapped = Vec::new();
        let mut unmapped = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let page = first_page + i as u64;
            if e & (hw::PTE_READ | hw::PTE_WRITE) == 0 {
                self.table.remove(&page);
                unmapped.push(page);
            } else {
                self.table.insert(page, *e);
                mapped.push((page, e & !PAGE_MASK));
            }
        }
        (mapped, unmapped)
    }
}

#[derive(Debug, Default)]
struct Pd {
    mrs: u32,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u8,
    mr: Option<Mr>,
}

/// The PD and MR tables.
#[derive(Debug, Default)]
pub struct Tables {
    pds: Vec<Option<Pd>>,
    slots: Vec<Slot>,
}

impl Tables {
    /// Translation entries held by all MRs together.
    pub fn total_mapped(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.mr.as_ref())
            .map(Mr::mapped_pages)
            .sum()
    }
}

impl Tables {
    /// Creates a PD; returns its number.
    pub fn create_pd(&mut self) -> Result<u32, MrError> {
        if let Some(i) = self.pds.iter().position(Option::is_none) {
            self.pds[i] = Some(Pd::default());
            return Ok(i as u32);
        }
        if self.pds.len() >= MAX_PD as usize {
            return Err(MrError::NoResources);
        }
        self.pds.push(Some(Pd::default()));
        Ok(self.pds.len() as u32 - 1)
    }

    /// Whether PD `pdn` exists.
    pub fn pd_exists(&self, pdn: u32) -> bool {
        matches!(self.pds.get(pdn as usize), Some(Some(_)))
    }

    /// Destroys a PD without MRs.
    pub fn destroy_pd(&mut self, pdn: u32) -> Result<(), MrError> {
        let pd = self.pds.get_mut(pdn as usize).ok_or(MrError::BadHandle)?;
        match pd {
            None => Err(MrError::BadHandle),
            Some(p) if p.mrs > 0 => Err(MrError::Busy),
            Some(_) => {
                *pd = None;
                Ok(())
            }
        }
    }

    /// Creates an MR; `odp` says whether ODP capabilities are on.
    pub fn create_mr(&mut self, args: CreateMr, odp: bool) -> Result<u32, MrError> {
        let pd = self
            .pds
            .get(args.pdn as usize)
            .and_then(Option::as_ref)
            .ok_or(MrError::BadHandle)?;
        let _ = pd;
        let all = hw::ACCESS_LOCAL_WRITE
            | hw::ACCESS_REMOTE_WRITE
            | hw::ACCESS_REMOTE_READ
            | hw::ACCESS_REMOTE_ATOMIC;
        if args.access & !all != 0 {
            return Err(MrError::BadParam("unknown access bits"));
        }
        if args.access & (hw::ACCESS_REMOTE_WRITE | hw::ACCESS_REMOTE_ATOMIC) != 0
            && args.access & hw::ACCESS_LOCAL_WRITE == 0
        {
            return Err(MrError::BadParam("remote write needs local write"));
        }
        let mode = MrMode::from_raw(args.mode).ok_or(MrError::BadParam("unknown mode"))?;
        if u32::from(args.page_shift) != hw::PAGE_SHIFT {
            return Err(MrError::BadParam("page_shift"));
        }
        if mode.faults() && !odp {
            return Err(MrError::Unsupported);
        }
        if mode == MrMode::Implicit {
            if args.iova != 0 || args.length != 0 {
                return Err(MrError::BadParam("implicit MR needs iova 0 and length 0"));
            }
        } else {
            if args.length == 0 {
                return Err(MrError::BadParam("length 0"));
            }
            let end = args
                .iova
                .checked_add(args.length)
                .ok_or(MrError::BadParam("range wraps"))?;
            let pages = ((end - 1) >> hw::PAGE_SHIFT) - (args.iova >> hw::PAGE_SHIFT) + 1;
            if pages > hw::MAX_MR_PAGES {
                return Err(MrError::BadParam("MR too large"));
            }
        }
        let idx = match self.slots.iter().position(|s| s.mr.is_none()) {
            Some(i) => i,
            None if self.slots.len() < MAX_MR as usize => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
            None => return Err(MrError::NoResources),
        };
        let slot = &mut self.slots[idx];
        // generation 0 is never used, so no key is 0
        slot.generation = slot.generation.wrapping_add(1).max(1);
        let key = ((idx as u32) << 8) | u32::from(slot.generation);
        slot.mr = Some(Mr {
            key,
            pdn: args.pdn,
            access: args.access,
            mode,
            iova: args.iova,
            length: args.length,
            revoked: false,
            faults: 0,
            invalidations: 0,
            prefetched_pages: 0,
            rogue_write: false,
            table: BTreeMap::new(),
        });
        if let Some(Some(pd)) = self.pds.get_mut(args.pdn as usize) {
            pd.mrs += 1;
        }
        Ok(key)
    }

    /// The MR named by `key`.
    pub fn get(&self, key: u32) -> Option<&Mr> {
        let slot = self.slots.get((key >> 8) as usize)?;
        slot.mr.as_ref().filter(|m| m.key == key)
    }

    /// The MR named by `key`, mutable.
    pub fn get_mut(&mut self, key: u32) -> Option<&mut Mr> {
        let slot = self.slots.get_mut((key >> 8) as usize)?;
        slot.mr.as_mut().filter(|m| m.key == key)
    }

    /// Destroys an MR.
    pub fn destroy_mr(&mut self, key: u32) -> Result<Mr, MrError> {
        let slot = self
            .slots
            .get_mut((key >> 8) as usize)
            .ok_or(MrError::BadHandle)?;
        if slot.mr.as_ref().map(|m| m.key) != Some(key) {
            return Err(MrError::BadHandle);
        }
        let mr = slot.mr.take().ok_or(MrError::BadHandle)?;
        if let Some(Some(pd)) = self.pds.get_mut(mr.pdn as usize) {
            pd.mrs = pd.mrs.saturating_sub(1);
        }
        Ok(mr)
    }

    /// Forgets every PD and MR (reset); generations survive so stale keys
    /// stay invalid.
    pub fn clear(&mut self) {
        self.pds.clear();
        for s in &mut self.slots {
            s.mr = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mr_args(pdn: u32, mode: u8, iova: u64, length: u64) -> CreateMr {
        CreateMr {
            pdn,
            access: hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_WRITE | hw::ACCESS_REMOTE_READ,
            mode,
            page_shift: 12,
            iova,
            length,
        }
    }

    #[test]
    fn keys_change_generation() {
        let mut t = Tables::default();
        let pd = t.create_pd().unwrap();
        let k1 = t
            .create_mr(mr_args(pd, hw::MR_PINNED, 0, 4096), true)
            .unwrap();
        assert_eq!(t.destroy_pd(pd), Err(MrError::Busy));
        t.destroy_mr(k1).unwrap();
        let k2 = t
            .create_mr(mr_args(pd, hw::MR_PINNED, 0, 4096), true)
            .unwrap();
        assert_eq!(k1 >> 8, k2 >> 8);
        assert_ne!(k1, k2);
        assert!(t.get(k1).is_none());
        assert_eq!(t.destroy_mr(k1).unwrap_err(), MrError::BadHandle);
    }

    #[test]
    fn create_checks() {
        let mut t = Tables::default();
        let pd = t.create_pd().unwrap();
        assert_eq!(
            t.create_mr(mr_args(pd, hw::MR_ODP, 0, 4096), false),
            Err(MrError::Unsupported)
        );
        assert!(t.create_mr(mr_args(pd, 9, 0, 4096), true).is_err());
        assert!(t
            .create_mr(mr_args(pd, hw::MR_PINNED, u64::MAX, 2), true)
            .is_err());
        assert!(t
            .create_mr(mr_args(pd, hw::MR_IMPLICIT, 1, 0), true)
            .is_err());
        assert!(t
            .create_mr(mr_args(pd, hw::MR_PINNED, 0, 1 << 31), true)
            .is_err());
        assert!(t
            .create_mr(mr_args(pd + 5, hw::MR_PINNED, 0, 1), true)
            .is_err());
    }

    #[test]
    fn translate_and_fault_range() {
        let mut t = Tables::default();
        let pd = t.create_pd().unwrap();
        let k = t
            .create_mr(mr_args(pd, hw::MR_ODP, 0x10800, 0x3000), true)
            .unwrap();
        let mr = t.get_mut(k).unwrap();
        assert_eq!(mr.pages(), Some(4));
        let w = hw::ACCESS_REMOTE_WRITE;
        assert_eq!(
            mr.translate(0x10900, 0x2000, w, true).unwrap(),
            Translation::Fault {
                iova: 0x10000,
                length: 0x3000
            }
        );
        let first = mr.check_map(0x10000, &[0x5003, 0x7003, 0x9001]).unwrap();
        mr.apply_map(first, &[0x5003, 0x7003, 0x9001]);
        // third page is read-only: a write still faults on it
        assert_eq!(
            mr.translate(0x10900, 0x2000, w, true).unwrap(),
            Translation::Fault {
                iova: 0x12000,
                length: 0x1000
            }
        );
        match mr.translate(0x10900, 0x1000, w, true).unwrap() {
            Translation::Ready(s) => {
                assert_eq!(s.len(), 2);
                assert_eq!(s[0].gpa, 0x5900);
                assert_eq!(s[0].len, 0x700);
                assert_eq!(s[0].mr_offset, 0x100);
                assert_eq!(s[1].gpa, 0x7000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            mr.translate(0x10000, 0x100, w, true),
            Err(AccessError::OutOfBounds)
        );
        assert_eq!(
            mr.translate(0x10800, 0x100, hw::ACCESS_REMOTE_ATOMIC, true),
            Err(AccessError::NoAccess)
        );
        assert!(mr.check_map(0x14000, &[0x1003]).is_err());
        assert!(mr.check_map(0x10000, &[0x1004]).is_err());
        assert_eq!(mr.clamp_range(0, 0x10900), Some((0, 0)));
        assert_eq!(mr.clamp_range(0x20000, 5), None);
    }
}
