// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Drives a device with arbitrary bytes standing for everything a guest and
//! a control client control: register and config writes, guest memory
//! (rings, descriptors, commands, translation tables) and control requests.
//! Used by the fuzz targets in `fuzz/` and by a deterministic test, so that
//! "no guest-controlled value panics the device" is checked, not assumed.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use crate::device::{Device, DeviceConfig};
use crate::engine::EngineMsg;
use crate::fault_plan::FaultPlan;
use crate::hw;

/// Guest-physical base of the harness's RAM.
pub const RAM_GPA: u64 = 0x1000_0000;
/// Size of the harness's RAM.
pub const RAM_SIZE: u64 = 1 << 20;

/// Errors setting up the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// memfd or mapping failed.
    #[error("guest memory: {0}")]
    Memory(std::io::Error),
    /// The device did not start or its DMA map failed.
    #[error("device: {0}")]
    Device(String),
}

/// A device with 1 MiB of guest RAM at `RAM_GPA` and bus mastering on.
pub struct Harness {
    /// The device.
    pub dev: Arc<Device>,
    control: Control,
    ram: File,
}

fn memfd() -> std::io::Result<File> {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is
    // checked before use.
    let fd = unsafe { libc::memfd_create(c"odp-rnic-fuzz".as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(RAM_SIZE)?;
    Ok(f)
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        b.iter().rev().fold(0, |a, x| (a << 8) | u16::from(*x))
    }
    fn u32(&mut self) -> u32 {
        let b = self.bytes(4);
        b.iter().rev().fold(0, |a, x| (a << 8) | u32::from(*x))
    }
}

impl Harness {
    /// Starts a device (`odp` on or off) with guest RAM.
    pub fn new(odp: bool) -> Result<Harness, HarnessError> {
        let dev = Device::new(DeviceConfig { odp }, FaultPlan::default())
            .map_err(|e| HarnessError::Device(e.to_string()))?;
        let ram = memfd().map_err(HarnessError::Memory)?;
        let f = ram.try_clone().map_err(HarnessError::Memory)?;
        dev.shared
            .dma
            .map(RAM_GPA, RAM_SIZE, f, 0)
            .map_err(|e| HarnessError::Device(e.to_string()))?;
        dev.config_write(4, &[0x06, 0])
            .map_err(|e| HarnessError::Device(e.to_string()))?;
        Ok(Harness {
            control: Control::new(dev.clone()),
            dev,
            ram,
        })
    }

    fn ram_write(&self, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let _ = self.ram.write_at(data, off % RAM_SIZE);
    }

    /// Lays out both queues at fixed places, with `size` entries, and
    /// enables the device.
    fn queues(&self, size: u32) {
        let regs = [
            (hw::REG_CMDQ_DESC, RAM_GPA),
            (hw::REG_CMDQ_AVAIL, RAM_GPA + 0x1000),
            (hw::REG_CMDQ_USED, RAM_GPA + 0x2000),
            (hw::REG_EQ_DESC, RAM_GPA + 0x3000),
            (hw::REG_EQ_AVAIL, RAM_GPA + 0x4000),
            (hw::REG_EQ_USED, RAM_GPA + 0x5000),
        ];
        for (r, v) in regs {
            let _ = self.dev.reg_write(r, &(v as u32).to_le_bytes());
            let _ = self.dev.reg_write(r + 4, &((v >> 32) as u32).to_le_bytes());
        }
        let _ = self.dev.reg_write(hw::REG_CMDQ_SIZE, &size.to_le_bytes());
        let _ = self.dev.reg_write(hw::REG_EQ_SIZE, &size.to_le_bytes());
        let _ = self
            .dev
            .reg_write(hw::REG_CONTROL, &hw::CONTROL_ENABLE.to_le_bytes());
    }

    /// Runs one input. Panics only if the device panicked or its engine
    /// thread died.
    pub fn run(&self, data: &[u8]) {
        let mut inp = Input(data);
        while let Some(op) = inp.byte() {
            match op % 10 {
                0 => {
                    let off = u64::from(inp.u16() & 0x3ff);
                    let v = inp.u32();
                    let _ = self.dev.reg_write(off, &v.to_le_bytes());
                }
                1 => {
                    let off = u64::from(inp.u16());
                    let n = inp.byte().unwrap_or(0) as usize;
                    let b = inp.bytes(n).to_vec();
                    let _ = self.dev.reg_write(off, &b);
                    let mut r = vec![0; n];
                    let _ = self.dev.reg_read(off, &mut r);
                }
                2 => {
                    let off = u64::from(inp.u32()) % RAM_SIZE;
                    let n = inp.byte().unwrap_or(0) as usize;
                    let b = inp.bytes(n).to_vec();
                    self.ram_write(off, &b);
                }
                3 => {
                    let size = 1u32 << (inp.byte().unwrap_or(0) % 10);
                    self.queues(size);
                }
                4 => {
                    let _ = self.dev.reg_write(hw::REG_CMDQ_NOTIFY, &[1, 0, 0, 0]);
                }
                5 => {
                    let _ = self.dev.reg_write(hw::REG_EQ_NOTIFY, &[1, 0, 0, 0]);
                }
                6 => {
                    let n = inp.byte().unwrap_or(0) as usize;
                    let line = String::from_utf8_lossy(inp.bytes(n)).into_owned();
                    let _ = self.control.handle_line(&line);
                    // fault plan `kill` ends the process by design: not a finding
                    self.dev
                        .shared
                        .faults
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .rules
                        .retain(|r| r.kind != crate::fault_plan::FaultKind::Kill);
                }
                7 => {
                    // a remote operation through whatever key the input names
                    let key = inp.u32();
                    let va = u64::from(inp.u32()) << (inp.byte().unwrap_or(0) % 40);
                    let n = inp.byte().unwrap_or(0);
                    let req = match n % 4 {
                        0 => serde_json::json!({"op": "read", "rkey": key, "va": va,
                            "length": n, "timeout_ms": 1}),
                        1 => serde_json::json!({"op": "fetch_add", "rkey": key, "va": va,
                            "add": n, "timeout_ms": 1}),
                        _ => serde_json::json!({"op": "write", "rkey": key, "va": va,
                            "pattern": {"byte": 0xa5, "length": n}, "timeout_ms": 1}),
                    };
                    let _ = self.control.handle_line(&req.to_string());
                }
                8 => {
                    let off = u64::from(inp.u16() & 0xfff);
                    let b = inp.bytes(4).to_vec();
                    let _ = self.dev.config_write(off, &b);
                    let _ = self.dev.config_write(4, &[0x06, 0]);
                }
                _ => {
                    let key = inp.u32();
                    let seq = inp.u32();
                    let _ = self.dev.reg_write(hw::REG_INV_KEY, &key.to_le_bytes());
                    let _ = self.dev.reg_write(hw::REG_INV_SEQ, &seq.to_le_bytes());
                }
            }
        }
        self.check_alive();
    }

    /// Panics if the engine thread is gone or ever panicked.
    pub fn check_alive(&self) {
        let panics = self
            .dev
            .shared
            .counters
            .engine_panics
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(panics, 0, "the engine panicked");
        let (tx, rx) = sync_channel(1);
        let sent = self
            .dev
            .engine_tx
            .send(EngineMsg::QueryMr { key: 0, reply: tx });
        assert!(sent.is_ok(), "engine thread is gone");
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "engine thread does not answer"
        );
    }
}
