// SPDX-License-Identifier: Apache-2.0 OR MIT
//! MSI-X vectors: the eventfds the client handed over with `SET_IRQS`.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use crate::hw;

/// The device's interrupt vectors.
#[derive(Debug, Default)]
pub struct Irqs {
    vectors: Mutex<Vec<Option<File>>>,
}

impl Irqs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<File>>> {
        let mut v = self.vectors.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_empty() {
            v.resize_with(hw::NUM_VECTORS as usize, || None);
        }
        v
    }

    /// Assigns eventfds to vectors `start..start + fds.len()`; false if out
    /// of range.
    pub fn assign(&self, start: u32, fds: Vec<File>) -> bool {
        let mut v = self.lock();
        let Some(end) = (start as usize).checked_add(fds.len()) else {
            return false;
        };
        if end > v.len() {
            return false;
        }
        for (i, f) in fds.into_iter().enumerate() {
            v[start as usize + i] = Some(f);
        }
        true
    }

    /// Removes eventfds from vectors `start..start + count`; false if out
    /// of range.
    pub fn deassign(&self, start: u32, count: u32) -> bool {
        let mut v = self.lock();
        let Some(end) = start.checked_add(count) else {
            return false;
        };
        if end as usize > v.len() {
            return false;
        }
        for slot in &mut v[start as usize..end as usize] {
            *slot = None;
        }
        true
    }

    /// Removes every eventfd (disconnect, index disabled).
    pub fn clear(&self) {
        self.lock().iter_mut().for_each(|s| *s = None);
    }

    /// Signals `vector`; false if it has no eventfd.
    pub fn signal(&self, vector: u32) -> bool {
        let v = self.lock();
        match v.get(vector as usize) {
            Some(Some(f)) => {
                let mut f: &File = f;
                if let Err(e) = f.write_all(&1u64.to_ne_bytes()) {
                    log::warn!("signalling vector {vector}: {e}");
                    return false;
                }
                true
            }
            _ => false,
        }
    }
}
