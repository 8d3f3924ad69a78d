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
    qsize: std::sync::atomic::AtomicU32,
}

/// RAM offset of the QP buffers `setup_verbs` creates (0x4000 apart).
pub const QP_BUFS: u64 = 0x20000;

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
            qsize: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn ram_write(&self, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let _ = self.ram.write_at(data, off % RAM_SIZE);
    }

    /// Lays out both queues at fixed places, with `size` entries, and
    /// enables the device.
    fn queues(&self, size: u32) {
        self.qsize.store(size, std::sync::atomic::Ordering::Relaxed);
        // a driver starts with empty rings
        for ring in [0x1000u64, 0x2000, 0x4000, 0x5000] {
            self.ram_write(ring, &[0u8; 4]);
        }
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

    fn ram_read(&self, off: u64, len: usize) -> Vec<u8> {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; len];
        let _ = self.ram.read_at(&mut b, off % RAM_SIZE);
        b
    }

    /// Runs one command through the command queue the way a driver would
    /// (descriptors 0..2, request at 0x8000, response at 0x8100, data at
    /// 0x9000); returns (status, out) or None if it did not complete.
    pub fn command(
        &self,
        opcode: u16,
        args: &[u8],
        data: Option<&[u8]>,
    ) -> Option<(u16, [u8; 56])> {
        self.command_within(opcode, args, data, Duration::from_millis(500))
    }

    fn command_within(
        &self,
        opcode: u16,
        args: &[u8],
        data: Option<&[u8]>,
        timeout: Duration,
    ) -> Option<(u16, [u8; 56])> {
        let mut req = [0u8; 64];
        req[0..2].copy_from_slice(&opcode.to_le_bytes());
        let n = args.len().min(56);
        req[8..8 + n].copy_from_slice(&args[..n]);
        self.ram_write(0x8000, &req);
        let mut chain = vec![(RAM_GPA + 0x8000, 64u32, 0u16)];
        if let Some(d) = data {
            self.ram_write(0x9000, d);
            chain.push((RAM_GPA + 0x9000, d.len() as u32, 0));
        }
        chain.push((RAM_GPA + 0x8100, 64, 2));
        for (i, (a, l, f)) in chain.iter().enumerate() {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&a.to_le_bytes());
            d[8..12].copy_from_slice(&l.to_le_bytes());
            let next = if i + 1 < chain.len() { 1 } else { 0 };
            d[12..14].copy_from_slice(&(f | next).to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
            self.ram_write(i as u64 * 16, &d);
        }
        let idx = u16::from_le_bytes(self.ram_read(0x1002, 2).try_into().ok()?);
        let used = u16::from_le_bytes(self.ram_read(0x2002, 2).try_into().ok()?);
        let size = self.qsize.load(std::sync::atomic::Ordering::Relaxed).max(1);
        self.ram_write(0x1004 + u64::from(idx % size as u16) * 2, &[0, 0]);
        self.ram_write(0x1002, &idx.wrapping_add(1).to_le_bytes());
        let _ = self.dev.reg_write(hw::REG_CMDQ_NOTIFY, &[1, 0, 0, 0]);
        let t = std::time::Instant::now();
        while u16::from_le_bytes(self.ram_read(0x2002, 2).try_into().ok()?) == used {
            if t.elapsed() > timeout {
                return None;
            }
            std::thread::yield_now();
        }
        let r = self.ram_read(0x8100, 64);
        let mut out = [0u8; 56];
        out.copy_from_slice(&r[8..]);
        Some((u16::from_le_bytes([r[2], r[3]]), out))
    }

    /// Creates a PD, a pinned MR over RAM 0x40000..0x80000 at IOVA 0x10000,
    /// an ODP MR at IOVA 0x100000, a CQ, two connected RC QPs and a UD QP
    /// (QP buffers at `QP_BUFS`), for inputs to drive the data path.
    pub fn setup_verbs(&self) -> Option<()> {
        self.ram_write(0x10000, &[0u8; 0x1000 + 16 * 32]);
        for i in 0..3u64 {
            self.ram_write(QP_BUFS + i * 0x4000, &[0u8; 0x4000]);
        }
        let (st, out) = self.command(hw::CMD_CREATE_PD, &[], None)?;
        if st != 0 {
            return None;
        }
        let pd = &out[0..4];
        let mr = |mode: u8, iova: u64, len: u64| -> Option<u32> {
            let mut a = [0u8; 32];
            a[0..4].copy_from_slice(pd);
            a[4..8].copy_from_slice(&0xfu32.to_le_bytes());
            a[8] = mode;
            a[9] = 12;
            a[16..24].copy_from_slice(&iova.to_le_bytes());
            a[24..32].copy_from_slice(&len.to_le_bytes());
            let (st, out) = self.command(hw::CMD_CREATE_MR, &a, None)?;
            (st == 0).then(|| u32::from_le_bytes([out[0], out[1], out[2], out[3]]))
        };
        let key = mr(hw::MR_PINNED, 0x10000, 0x40000)?;
        mr(hw::MR_ODP, 0x100000, 0x40000)?;
        let ptes: Vec<u8> = (0..64u64)
            .flat_map(|i| ((RAM_GPA + 0x40000 + i * 4096) | 3).to_le_bytes())
            .collect();
        let mut a = [0u8; 20];
        a[0..4].copy_from_slice(&key.to_le_bytes());
        a[8..16].copy_from_slice(&0x10000u64.to_le_bytes());
        a[16..20].copy_from_slice(&64u32.to_le_bytes());
        self.command(hw::CMD_MAP_PAGES, &a, Some(&ptes))?;
        let mut c = [0u8; 16];
        c[0..8].copy_from_slice(&(RAM_GPA + 0x10000).to_le_bytes());
        c[8..12].copy_from_slice(&16u32.to_le_bytes());
        c[12..14].copy_from_slice(&2u16.to_le_bytes());
        self.command(hw::CMD_CREATE_CQ, &c, None)?;
        for (i, t) in [hw::QPT_RC, hw::QPT_RC, hw::QPT_UD].into_iter().enumerate() {
            let mut q = [0u8; 32];
            q[0..8].copy_from_slice(&(RAM_GPA + QP_BUFS + i as u64 * 0x4000).to_le_bytes());
            q[8..12].copy_from_slice(pd);
            q[20..24].copy_from_slice(&16u32.to_le_bytes());
            q[24..28].copy_from_slice(&16u32.to_le_bytes());
            q[28] = t;
            q[29] = hw::QP_KERNEL;
            self.command(hw::CMD_CREATE_QP, &q, None)?;
        }
        let modify = |qpn: u32, mask: u32, state: u8, dest: u32| {
            let mut m = [0u8; 50];
            m[0..4].copy_from_slice(&qpn.to_le_bytes());
            m[4..8].copy_from_slice(&mask.to_le_bytes());
            m[8] = state;
            m[9] = 5;
            m[11] = 7;
            m[12..16].copy_from_slice(&dest.to_le_bytes());
            m[16..20].copy_from_slice(&0x11u32.to_le_bytes());
            m[20..24].copy_from_slice(&0xeu32.to_le_bytes());
            self.command(hw::CMD_MODIFY_QP, &m, None)
        };
        use hw::*;
        for (q, d) in [(2u32, 3u32), (3, 2)] {
            modify(q, QP_ATTR_STATE | QP_ATTR_ACCESS, QPS_INIT, 0)?;
            modify(
                q,
                QP_ATTR_STATE | QP_ATTR_PATH | QP_ATTR_MTU | QP_ATTR_DEST_QPN | QP_ATTR_RQ_PSN,
                QPS_RTR,
                d,
            )?;
            modify(
                q,
                QP_ATTR_STATE | QP_ATTR_SQ_PSN | QP_ATTR_RETRY,
                QPS_RTS,
                0,
            )?;
        }
        modify(4, QP_ATTR_STATE | QP_ATTR_QKEY, QPS_INIT, 0)?;
        modify(4, QP_ATTR_STATE, QPS_RTR, 0)?;
        modify(4, QP_ATTR_STATE | QP_ATTR_SQ_PSN, QPS_RTS, 0)?;
        Some(())
    }

    /// Takes every CQE of the `setup_verbs` CQ, as a polling driver would.
    fn consume_cqes(&self) {
        let prod = self.ram_read(0x10004, 4);
        self.ram_write(0x10000, &prod);
    }

    /// Runs one input. Panics only if the device panicked or its engine
    /// thread died.
    pub fn run(&self, data: &[u8]) {
        let mut inp = Input(data);
        while let Some(op) = inp.byte() {
            match op % 14 {
                10 => {
                    // a WQE into QP (2..=4)'s send queue, producer bumped, doorbell
                    self.consume_cqes();
                    let q = u64::from(inp.byte().unwrap_or(0) % 3);
                    let slot = u64::from(inp.byte().unwrap_or(0) % 16);
                    let w = inp.bytes(128).to_vec();
                    let base = QP_BUFS + q * 0x4000;
                    self.ram_write(base + 4096 + slot * 128, &w);
                    let prod =
                        u32::from_le_bytes(self.ram_read(base, 4).try_into().unwrap_or([0; 4]));
                    self.ram_write(base, &prod.wrapping_add(1).to_le_bytes());
                    let qpn = (q + 2) as u32;
                    let _ = self.dev.db_write(0, &qpn.to_le_bytes());
                }
                11 => {
                    // a receive WQE
                    self.consume_cqes();
                    let q = u64::from(inp.byte().unwrap_or(0) % 3);
                    let slot = u64::from(inp.byte().unwrap_or(0) % 16);
                    let w = inp.bytes(128).to_vec();
                    let base = QP_BUFS + q * 0x4000;
                    self.ram_write(base + 4096 + 16 * 128 + slot * 128, &w);
                    let prod =
                        u32::from_le_bytes(self.ram_read(base + 8, 4).try_into().unwrap_or([0; 4]));
                    self.ram_write(base + 8, &prod.wrapping_add(1).to_le_bytes());
                    let qpn = (q + 2) as u32;
                    let _ = self.dev.db_write(4, &qpn.to_le_bytes());
                }
                12 => {
                    // any doorbell
                    let off = u64::from(inp.u32()) % (hw::DB_PAGES as u64 * hw::DB_PAGE_SIZE);
                    let v = inp.u32();
                    let _ = self.dev.db_write(off & !3, &v.to_le_bytes());
                }
                13 => {
                    // a RESUME with whatever token and status
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&{
                        let mut b = inp.bytes(8).to_vec();
                        b.resize(8, 0);
                        b
                    });
                    let _ =
                        self.command_within(hw::CMD_RESUME, &a, None, Duration::from_millis(20));
                }
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
                    let mut line = String::from_utf8_lossy(inp.bytes(n)).into_owned();
                    // requests that wait for the guest wait 1 ms here
                    if let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str(&line) {
                        m.insert("timeout_ms".into(), serde_json::json!(1));
                        line = serde_json::Value::Object(m).to_string();
                    }
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
