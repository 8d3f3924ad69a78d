// SPDX-License-Identifier: Apache-2.0 OR MIT
//! PCI configuration space ("PCI identity" and "BARs" in
//! `docs/hardware.md`): a type-0 header with the contract's IDs, BAR 0
//! (registers, 64 KiB, 32-bit memory) and BAR 2 (MSI-X, 4 KiB), a PCI
//! Express endpoint capability and an MSI-X capability. BAR sizing writes
//! behave as on real hardware; the Command register's Bus Master Enable is
//! reported to the caller so it can fence DMA.

use crate::hw;

/// Size of the configuration space (PCI Express).
pub const CONFIG_SIZE: usize = 4096;
/// Offset of the PCI Express capability.
pub const PCIE_CAP_OFFSET: usize = 0x40;
/// Offset of the MSI-X capability.
pub const MSIX_CAP_OFFSET: usize = 0x80;
/// Command register bit: Bus Master Enable.
pub const COMMAND_BUS_MASTER: u16 = 0x4;

/// Size of BAR 4, the doorbell pages.
pub const DB_BAR_SIZE: u64 = hw::DB_PAGES as u64 * hw::DB_PAGE_SIZE;

const COMMAND: usize = 0x04;
const BAR0: usize = 0x10;
const ROM: usize = 0x30;

/// The configuration space.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace").finish_non_exhaustive()
    }
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

/// Size mask of BAR `n` (0 for an unimplemented BAR).
fn bar_size(n: usize) -> u64 {
    match n as u32 {
        hw::BAR_REGS => hw::BAR_REGS_SIZE,
        hw::BAR_MSIX => hw::BAR_MSIX_SIZE,
        hw::BAR_DB => DB_BAR_SIZE,
        _ => 0,
    }
}

impl ConfigSpace {
    /// Power-on state.
    pub fn new() -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
        };
        c.put16(0x00, hw::PCI_VENDOR_ID);
        c.put16(0x02, hw::PCI_DEVICE_ID);
        // status: capability list
        c.put16(0x06, 0x0010);
        c.bytes[0x08] = hw::PCI_REVISION;
        c.bytes[0x09] = (hw::PCI_CLASS & 0xff) as u8;
        c.bytes[0x0a] = ((hw::PCI_CLASS >> 8) & 0xff) as u8;
        c.bytes[0x0b] = ((hw::PCI_CLASS >> 16) & 0xff) as u8;
        c.put16(0x2c, hw::PCI_SUBSYS_VENDOR_ID);
        c.put16(0x2e, hw::PCI_SUBSYS_ID);
        c.bytes[0x34] = PCIE_CAP_OFFSET as u8;
        // command: I/O space, memory space, bus master, SERR, INTx disable
        c.mask16(COMMAND, 0x0547);
        // cache line size, latency timer, interrupt line
        c.wmask[0x0c] = 0xff;
        c.wmask[0x0d] = 0xff;
        c.wmask[0x3c] = 0xff;

        // PCI Express capability v2, endpoint
        let p = PCIE_CAP_OFFSET;
        c.bytes[p] = 0x10;
        c.bytes[p + 1] = MSIX_CAP_OFFSET as u8;
        c.put16(p + 0x02, 0x0002);
        // device capabilities: max payload 128, FLR not offered
        c.put32(p + 0x04, 0);
        // device control: max payload/read request, error reporting enables
        c.mask16(p + 0x08, 0x7fff);
        c.put16(p + 0x08, 0x2810);
        // link capabilities: 2.5 GT/s, x1
        c.put32(p + 0x0c, 0x0000_0011);
        c.mask16(p + 0x10, 0x0003);
        // link status: 2.5 GT/s, x1
        c.put16(p + 0x12, 0x0011);

        // MSI-X capability
        let m = MSIX_CAP_OFFSET;
        c.bytes[m] = 0x11;
        c.bytes[m + 1] = 0;
        c.put16(m + 0x02, (hw::NUM_VECTORS - 1) as u16);
        // enable and function mask are writable
        c.mask16(m + 0x02, 0xc000);
        c.put32(m + 0x04, hw::MSIX_TABLE_OFFSET as u32 | hw::BAR_MSIX);
        c.put32(m + 0x08, hw::MSIX_PBA_OFFSET as u32 | hw::BAR_MSIX);
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn mask16(&mut self, off: usize, v: u16) {
        self.wmask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[COMMAND], self.bytes[COMMAND + 1]])
    }

    /// Bus Master Enable.
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the end read as 0.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes `data` at `offset`, honouring the write masks and BAR sizing.
    /// Returns the new Bus Master Enable if the write changed it.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<bool> {
        let before = self.bus_master();
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .filter(|&o| o < CONFIG_SIZE)
            else {
                break;
            };
            if (BAR0..BAR0 + 24).contains(&o) {
                self.write_bar_byte(o, v);
            } else if (ROM..ROM + 4).contains(&o) {
                // no expansion ROM: the register reads 0 even after sizing
            } else {
                let m = self.wmask[o];
                self.bytes[o] = (self.bytes[o] & !m) | (v & m);
            }
        }
        let after = self.bus_master();
        (before != after).then_some(after)
    }

    fn write_bar_byte(&mut self, o: usize, v: u8) {
        let bar = (o - BAR0) / 4;
        let size = bar_size(bar);
        if size == 0 {
            return;
        }
        // 32-bit memory BAR, not prefetchable: low 4 bits are type flags
        let mask = !(size as u32 - 1);
        let byte = (o - BAR0) % 4;
        let wm = (mask >> (byte * 8)) as u8;
        self.bytes[o] = (self.bytes[o] & !wm) | (v & wm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd32(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_and_caps() {
        let c = ConfigSpace::new();
        assert_eq!(rd32(&c, 0), 0x0db0_1234);
        assert_eq!(rd32(&c, 8) >> 8, hw::PCI_CLASS);
        assert_eq!(c.bytes[0x34], 0x40);
        assert_eq!(c.bytes[0x40], 0x10);
        assert_eq!(c.bytes[0x41], 0x80);
        assert_eq!(c.bytes[0x80], 0x11);
        assert_eq!(rd32(&c, 0x84), 2);
        assert_eq!(rd32(&c, 0x88), 0x802);
    }

    #[test]
    fn bar_sizing() {
        let mut c = ConfigSpace::new();
        c.write(0x10, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd32(&c, 0x10), 0xffff_0000);
        c.write(0x18, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd32(&c, 0x18), 0xffff_f000);
        c.write(0x14, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd32(&c, 0x14), 0);
        c.write(0x20, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd32(&c, 0x20), 0xfff0_0000);
        c.write(0x30, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd32(&c, 0x30), 0);
        c.write(0x10, &0xfebf_0000u32.to_le_bytes());
        assert_eq!(rd32(&c, 0x10), 0xfebf_0000);
    }

    #[test]
    fn bus_master_changes_are_reported() {
        let mut c = ConfigSpace::new();
        assert_eq!(c.write(4, &[0x06, 0]), Some(true));
        assert_eq!(c.write(4, &[0x06, 0]), None);
        assert_eq!(c.write(4, &[0x02, 0]), Some(false));
        // vendor ID is read-only; writes past the end are dropped
        c.write(0, &[0, 0]);
        assert_eq!(rd32(&c, 0) & 0xffff, 0x1234);
        c.write(u64::MAX, &[1, 2, 3]);
        c.write(4094, &[1, 2, 3, 4]);
    }
}
