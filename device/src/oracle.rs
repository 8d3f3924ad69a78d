// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The DMA oracle ("The DMA oracle" in `docs/hardware.md`): a shadow, kept
//! apart from the translation tables, of what the driver allowed. For each
//! MR page it knows whether the translation is live (mapped by `MAP_PAGES`
//! and not since invalidated, revoked or destroyed). Every DMA the data
//! engine performs through an MR is checked against it first.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::trace::now_ns;

/// How many violation records are kept (all are counted).
pub const MAX_RECORDS: usize = 10_000;
/// Ended translations remembered (for the `inv_seq` of a later violation)
/// before the oldest knowledge is dropped; bounds the shadow's memory.
pub const MAX_DEAD: u64 = 1 << 22;

/// Why an access was a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The page's translation was invalidated and not mapped again.
    Invalidated,
    /// The MR was revoked.
    Revoked,
    /// The page was never mapped, or mapped to another guest-physical page.
    NotLive,
    /// The guest-physical page is not (or no longer) DMA-mapped.
    Unmapped,
}

/// What the device did with the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationAction {
    /// The access was not performed.
    Suppressed,
    /// The access was performed (fault plan `rogue_write`).
    Performed,
}

/// One recorded violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// MR key the access went through.
    pub key: u32,
    /// Queue pair of the access (the injector QPN for injected operations).
    pub qpn: u32,
    /// IOVA of the access's first byte in this page.
    pub iova: u64,
    /// Offset of that byte from the MR's start IOVA.
    pub mr_offset: u64,
    /// Guest-physical address the access would hit.
    pub gpa: u64,
    /// When (ns since the Unix epoch).
    pub time_ns: u64,
    /// The invalidation sequence that ended the translation, if one did.
    pub inv_seq: Option<u32>,
    /// Why it is a violation.
    pub kind: ViolationKind,
    /// What the device did.
    pub action: ViolationAction,
}

#[derive(Clone, Copy, Debug)]
struct Shadow {
    gpa: u64,
    live: bool,
    ended_by: Option<u32>,
    revoked: bool,
}

/// The verdict on one page access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The translation is live.
    Live,
    /// It is not: why, and which invalidation ended it.
    Dead(ViolationKind, Option<u32>),
}

/// The shadow and the violation records.
#[derive(Debug, Default)]
pub struct Oracle {
    pages: HashMap<u32, BTreeMap<u64, Shadow>>,
    records: Vec<Violation>,
    count: u64,
    dead: u64,
    /// Keys whose `DESTROY_MR` began and has not finished.
    destroying: HashSet<u32>,
}

impl Oracle {
    /// Page `page` (index within the MR) of `key` is now live, mapped to `gpa`.
    pub fn map(&mut self, key: u32, page: u64, gpa: u64) {
        self.pages.entry(key).or_default().insert(
            page,
            Shadow {
                gpa,
                live: true,
                ended_by: None,
                revoked: false,
            },
        );
    }

    /// Pages `first..=last` of `key` are no longer live; `seq` ended them.
    pub fn invalidate(&mut self, key: u32, first: u64, last: u64, seq: u32) {
        if let Some(m) = self.pages.get_mut(&key) {
            for (_, s) in m.range_mut(first..=last) {
                if s.live {
                    s.live = false;
                    s.ended_by = Some(seq);
                    self.dead += 1;
                }
            }
        }
        self.bound();
    }

    /// Forgets ended translations when too many are remembered: a later
    /// access through one is then reported as `not_live` without `inv_seq`.
    fn bound(&mut self) {
        if self.dead <= MAX_DEAD {
            return;
        }
        for m in self.pages.values_mut() {
            m.retain(|_, s| s.live);
        }
        self.dead = 0;
    }

    /// Every page of `key` is no longer live: the MR was revoked by `seq`.
    pub fn revoke(&mut self, key: u32, seq: u32) {
        if let Some(m) = self.pages.get_mut(&key) {
            for s in m.values_mut() {
                if s.live {
                    self.dead += 1;
                }
                s.live = false;
                s.revoked = true;
                s.ended_by.get_or_insert(seq);
            }
        }
        self.bound();
    }

    /// The MR was destroyed: forget its pages.
    pub fn forget(&mut self, key: u32) {
        self.pages.remove(&key);
        self.destroying.remove(&key);
    }

    /// `DESTROY_MR` of `key` began; it finishes with `forget`. Its live
    /// translations stay live until then.
    pub fn begin_destroy(&mut self, key: u32) {
        self.destroying.insert(key);
    }

    /// Whether `DESTROY_MR` of `key` began and has not finished.
    pub fn destroying(&self, key: u32) -> bool {
        self.destroying.contains(&key)
    }

    /// Forget every MR (device reset). Violation records stay.
    pub fn reset(&mut self) {
        self.pages.clear();
        self.destroying.clear();
    }

    /// Is the access to page `page` of `key` at `gpa` through a live translation?
    pub fn check(&self, key: u32, page: u64, gpa: u64) -> Verdict {
        let page_gpa = gpa & !0xfff;
        match self.pages.get(&key).and_then(|m| m.get(&page)) {
            Some(s) if s.live && s.gpa == page_gpa => Verdict::Live,
            Some(s) if s.revoked => Verdict::Dead(ViolationKind::Revoked, s.ended_by),
            Some(s) if !s.live => Verdict::Dead(ViolationKind::Invalidated, s.ended_by),
            _ => Verdict::Dead(ViolationKind::NotLive, None),
        }
    }

    /// Number of live pages of `key`.
    pub fn live_pages(&self, key: u32) -> u64 {
        self.pages
            .get(&key)
            .map_or(0, |m| m.values().filter(|s| s.live).count() as u64)
    }

    /// Records a violation (`time_ns` is filled in here).
    pub fn record(&mut self, mut v: Violation) {
        v.time_ns = now_ns();
        self.count = self.count.saturating_add(1);
        if self.records.len() < MAX_RECORDS {
            self.records.push(v);
        }
    }

    /// Violations so far (cumulative across resets).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The kept violation records.
    pub fn records(&self) -> &[Violation] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_invalidate_check() {
        let mut o = Oracle::default();
        o.map(0x100, 0, 0x1000);
        o.map(0x100, 1, 0x5000);
        assert_eq!(o.check(0x100, 0, 0x1010), Verdict::Live);
        assert_eq!(
            o.check(0x100, 0, 0x2000),
            Verdict::Dead(ViolationKind::NotLive, None)
        );
        o.invalidate(0x100, 1, 1, 7);
        assert_eq!(
            o.check(0x100, 1, 0x5000),
            Verdict::Dead(ViolationKind::Invalidated, Some(7))
        );
        assert_eq!(o.live_pages(0x100), 1);
        o.revoke(0x100, 8);
        assert_eq!(
            o.check(0x100, 0, 0x1000),
            Verdict::Dead(ViolationKind::Revoked, Some(8))
        );
        o.forget(0x100);
        assert_eq!(
            o.check(0x100, 0, 0x1000),
            Verdict::Dead(ViolationKind::NotLive, None)
        );
    }
}
