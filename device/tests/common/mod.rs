// SPDX-License-Identifier: Apache-2.0 OR MIT
//! A test-side driver written from `docs/hardware.md`: it talks to the
//! device only through vfio-user (the crate's `Client`), a memfd standing
//! in for guest RAM, and the control socket.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odp_rnic::control::Control;
use odp_rnic::device::{Device, DeviceConfig};
use odp_rnic::fault_plan::{FaultPlan, FaultSpec};
use odp_rnic::hw;
use serde_json::{json, Value};
use vfio_user::Client;

pub const RAM_SIZE: usize = 16 << 20;
/// Guest-physical address of the start of RAM.
pub const RAM_GPA: u64 = 0x4000_0000;
pub const CONFIG: u32 = 7;
pub const QSIZE: u16 = 16;

// layout of the driver's own structures in RAM (offsets from RAM_GPA)
pub const CMDQ_DESC: u64 = 0x1000;
pub const CMDQ_AVAIL: u64 = 0x2000;
pub const CMDQ_USED: u64 = 0x3000;
const EQ_DESC: u64 = 0x4000;
const EQ_AVAIL: u64 = 0x5000;
const EQ_USED: u64 = 0x6000;
const CMD_REQ: u64 = 0x8000;
pub const CMD_RESP: u64 = 0x8100;
const CMD_DATA: u64 = 0x9000;
const EVENT_BUFS: u64 = 0xa000;
/// First RAM offset free for test data.
pub const DATA: u64 = 0x10_0000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Guest RAM: a memfd, also mapped into the test.
pub struct Ram {
    pub file: File,
    ptr: *mut u8,
}

// SAFETY: the mapping is owned by Ram and lives as long as it; concurrent
// access with the device is what the tests exercise, through raw copies.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Ram {
    pub fn new() -> Ram {
        // SAFETY: memfd_create with a valid C string; the fd is checked.
        let fd = unsafe { libc::memfd_create(c"odp-rnic-test-ram".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: fd is a fresh, owned descriptor.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(RAM_SIZE as u64).unwrap();
        // SAFETY: maps RAM_SIZE bytes of our own memfd, shared.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Ram {
            file,
            ptr: ptr.cast(),
        }
    }

    pub fn write(&self, off: u64, data: &[u8]) {
        assert!(off as usize + data.len() <= RAM_SIZE);
        // SAFETY: bounds checked above; the mapping is valid for RAM_SIZE.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off as usize), data.len())
        }
    }

    pub fn read(&self, off: u64, len: usize) -> Vec<u8> {
        assert!(off as usize + len <= RAM_SIZE);
        let mut v = vec![0; len];
        // SAFETY: bounds checked above; the mapping is valid for RAM_SIZE.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), v.as_mut_ptr(), len) }
        v
    }

    /// Copies `len` bytes from RAM offset `src` to `dst` (memmove), the
    /// host-side baseline for the device's own copies.
    pub fn copy(&self, src: u64, dst: u64, len: usize) {
        assert!(src as usize + len <= RAM_SIZE && dst as usize + len <= RAM_SIZE);
        // SAFETY: both ranges bounds checked above; the mapping is valid for
        // RAM_SIZE; std::ptr::copy allows overlap.
        unsafe { std::ptr::copy(self.ptr.add(src as usize), self.ptr.add(dst as usize), len) }
    }

    pub fn w16(&self, off: u64, v: u16) {
        self.write(off, &v.to_le_bytes())
    }
    pub fn w32(&self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes())
    }
    pub fn w64(&self, off: u64, v: u64) {
        self.write(off, &v.to_le_bytes())
    }
    pub fn r16(&self, off: u64) -> u16 {
        let b = self.read(off, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
    pub fn r32(&self, off: u64) -> u32 {
        let b = self.read(off, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn r64(&self, off: u64) -> u64 {
        let b = self.read(off, 8);
        u64::from_le_bytes(b.try_into().unwrap())
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), RAM_SIZE) };
    }
}

pub fn eventfd() -> File {
    // SAFETY: eventfd returns a fresh fd or -1 (checked).
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: fd is fresh and owned.
    unsafe { File::from_raw_fd(fd) }
}

/// Reads an eventfd's counter (0 if it was not signalled).
pub fn eventfd_count(f: &File) -> u64 {
    let mut b = [0u8; 8];
    match (&*f).read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// A device running in this process.
pub struct TestDevice {
    pub dev: Arc<Device>,
    pub socket: PathBuf,
    pub control: Control,
}

impl TestDevice {
    pub fn start(odp: bool, plan: FaultPlan) -> TestDevice {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let socket =
            std::env::temp_dir().join(format!("odp-rnic-t{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let dev = Device::new(DeviceConfig { odp }, plan).unwrap();
        let d = dev.clone();
        std::thread::spawn(move || odp_rnic::server::serve(listener, d));
        let control = Control::new(dev.clone());
        TestDevice {
            dev,
            socket,
            control,
        }
    }

    pub fn ctl(&self, req: Value) -> Value {
        self.control.handle_line(&req.to_string())
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.ctl(json!({"op": "counters"}))["counters"][name]
            .as_u64()
            .unwrap()
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A parsed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ty: u16,
    pub seq: u32,
    pub data: [u8; 56],
}

impl Event {
    pub fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.data[o..o + 4].try_into().unwrap())
    }
    pub fn u64(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.data[o..o + 8].try_into().unwrap())
    }
}

/// A command response.
#[derive(Clone, Copy, Debug)]
pub struct Resp {
    pub opcode: u16,
    pub status: u16,
    pub cookie: u32,
    pub out: [u8; 56],
    pub used_len: u32,
}

impl Resp {
    pub fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.out[o..o + 4].try_into().unwrap())
    }
    pub fn u64(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.out[o..o + 8].try_into().unwrap())
    }
}

/// The test-side driver.
pub struct Driver {
    pub client: Client,
    pub ram: Arc<Ram>,
    pub vectors: Vec<File>,
    cookie: u32,
    cmd_avail: u16,
    cmd_used: u16,
    eq_avail: u16,
    eq_used: u16,
}

impl Driver {
    /// Connects, maps RAM, hands over MSI-X eventfds; no queue setup.
    pub fn connect(td: &TestDevice, ram: Arc<Ram>) -> Driver {
        let mut client = Client::new(&td.socket).unwrap();
        client
            .dma_map(0, RAM_GPA, RAM_SIZE as u64, ram.file.as_raw_fd())
            .unwrap();
        let vectors: Vec<File> = (0..hw::NUM_VECTORS).map(|_| eventfd()).collect();
        // QEMU sends one vector per message
        for (i, f) in vectors.iter().enumerate() {
            client
                .set_irqs(
                    2,
                    vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_EVENTFD
                        | vfio_bindings::bindings::vfio::VFIO_IRQ_SET_ACTION_TRIGGER,
                    i as u32,
                    1,
                    &[f.as_raw_fd()],
                )
                .unwrap();
        }
        Driver {
            client,
            ram,
            vectors,
            cookie: 0,
            cmd_avail: 0,
            cmd_used: 0,
            eq_avail: 0,
            eq_used: 0,
        }
    }

    /// Connects and brings the device up: bus master, queues, enable.
    pub fn up(td: &TestDevice) -> Driver {
        let mut d = Driver::connect(td, Arc::new(Ram::new()));
        d.set_bus_master(true);
        d.setup_queues();
        d.enable();
        d
    }

    pub fn rd(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.client.region_read(0, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    pub fn wr(&mut self, off: u64, v: u32) {
        self.client.region_write(0, off, &v.to_le_bytes()).unwrap();
    }

    pub fn wr64(&mut self, off: u64, v: u64) {
        self.wr(off, v as u32);
        self.wr(off + 4, (v >> 32) as u32);
    }

    pub fn cfg_read(&mut self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.client.region_read(CONFIG, off, &mut b).unwrap();
        b
    }

    pub fn cfg_write(&mut self, off: u64, data: &[u8]) {
        self.client.region_write(CONFIG, off, data).unwrap();
    }

    pub fn set_bus_master(&mut self, on: bool) {
        let cmd = self.cfg_read(4, 2);
        let mut c = u16::from_le_bytes([cmd[0], cmd[1]]);
        if on {
            c |= 0x6;
        } else {
            c &= !0x4;
        }
        self.cfg_write(4, &c.to_le_bytes());
    }

    pub fn setup_queues(&mut self) {
        let g = |o: u64| RAM_GPA + o;
        self.ram.write(0, &vec![0u8; 0x10000]);
        self.wr64(hw::REG_CMDQ_DESC, g(CMDQ_DESC));
        self.wr64(hw::REG_CMDQ_AVAIL, g(CMDQ_AVAIL));
        self.wr64(hw::REG_CMDQ_USED, g(CMDQ_USED));
        self.wr(hw::REG_CMDQ_SIZE, u32::from(QSIZE));
        self.wr64(hw::REG_EQ_DESC, g(EQ_DESC));
        self.wr64(hw::REG_EQ_AVAIL, g(EQ_AVAIL));
        self.wr64(hw::REG_EQ_USED, g(EQ_USED));
        self.wr(hw::REG_EQ_SIZE, u32::from(QSIZE));
        // every event buffer posted once: descriptor i -> buffer i
        for i in 0..QSIZE {
            let d = EQ_DESC + u64::from(i) * 16;
            self.ram.w64(d, g(EVENT_BUFS + u64::from(i) * 64));
            self.ram.w32(d + 8, 64);
            self.ram.w16(d + 12, 2); // VRING_DESC_F_WRITE
            self.ram.w16(d + 14, 0);
            self.ram.w16(EQ_AVAIL + 4 + u64::from(i) * 2, i);
        }
        self.eq_avail = QSIZE;
        self.ram.w16(EQ_AVAIL + 2, self.eq_avail);
        self.cmd_avail = 0;
        self.cmd_used = 0;
        self.eq_used = 0;
    }

    pub fn enable(&mut self) {
        self.wr(hw::REG_CONTROL, hw::CONTROL_ENABLE);
        assert_eq!(
            self.rd(hw::REG_STATUS) & (hw::STATUS_READY | hw::STATUS_FATAL),
            hw::STATUS_READY
        );
    }

    /// Writes a descriptor chain of (gpa, len, writable) for the command
    /// queue, puts it on the available ring and notifies.
    pub fn submit_chain(&mut self, bufs: &[(u64, u32, bool)]) {
        for (i, (addr, len, w)) in bufs.iter().enumerate() {
            let d = CMDQ_DESC + i as u64 * 16;
            self.ram.w64(d, *addr);
            self.ram.w32(d + 8, *len);
            let mut flags = if *w { 2 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= 1;
            }
            self.ram.w16(d + 12, flags);
            self.ram.w16(d + 14, (i + 1) as u16);
        }
        self.ram
            .w16(CMDQ_AVAIL + 4 + u64::from(self.cmd_avail % QSIZE) * 2, 0);
        self.cmd_avail = self.cmd_avail.wrapping_add(1);
        self.ram.w16(CMDQ_AVAIL + 2, self.cmd_avail);
        self.wr(hw::REG_CMDQ_NOTIFY, 1);
    }

    /// Waits for the command used ring to advance; returns the used length.
    pub fn wait_cmd(&mut self) -> Option<u32> {
        self.wait_cmd_for(Duration::from_secs(5))
    }

    /// Like `wait_cmd`, with a timeout.
    pub fn wait_cmd_for(&mut self, timeout: Duration) -> Option<u32> {
        let t = Instant::now();
        while self.ram.r16(CMDQ_USED + 2) == self.cmd_used {
            if t.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let e = CMDQ_USED + 4 + u64::from(self.cmd_used % QSIZE) * 8;
        let len = self.ram.r32(e + 4);
        self.cmd_used = self.cmd_used.wrapping_add(1);
        Some(len)
    }

    /// Runs a command with optional data buffer; returns the response.
    pub fn cmd(&mut self, opcode: u16, args: &[u8], data: Option<&[u8]>) -> Resp {
        self.post_cmd(opcode, args, data);
        let used_len = self.wait_cmd().expect("command did not complete");
        self.cmd_resp(opcode, used_len)
    }

    /// Makes a command available without waiting for it; `wait_cmd` and
    /// `cmd_resp` finish it (one command in flight at a time).
    pub fn post_cmd(&mut self, opcode: u16, args: &[u8], data: Option<&[u8]>) {
        self.cookie = self.cookie.wrapping_add(1);
        let mut req = [0u8; 64];
        req[0..2].copy_from_slice(&opcode.to_le_bytes());
        req[4..8].copy_from_slice(&self.cookie.to_le_bytes());
        req[8..8 + args.len()].copy_from_slice(args);
        self.ram.write(CMD_REQ, &req);
        self.ram.write(CMD_RESP, &[0xee; 64]);
        let mut chain = vec![(RAM_GPA + CMD_REQ, 64, false)];
        if let Some(d) = data {
            self.ram.write(CMD_DATA, d);
            chain.push((RAM_GPA + CMD_DATA, d.len() as u32, false));
        }
        chain.push((RAM_GPA + CMD_RESP, 64, true));
        self.submit_chain(&chain);
    }

    /// The response of the command `post_cmd` made available, once the
    /// used ring said it completed with `used_len` bytes.
    pub fn cmd_resp(&mut self, opcode: u16, used_len: u32) -> Resp {
        let r = self.ram.read(CMD_RESP, 64);
        let resp = Resp {
            opcode: u16::from_le_bytes([r[0], r[1]]),
            status: u16::from_le_bytes([r[2], r[3]]),
            cookie: u32::from_le_bytes(r[4..8].try_into().unwrap()),
            out: r[8..].try_into().unwrap(),
            used_len,
        };
        assert_eq!(resp.used_len, 64);
        assert_eq!(resp.opcode, opcode);
        assert_eq!(resp.cookie, self.cookie);
        resp
    }

    /// Takes every event on the used ring and re-posts its buffer.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while self.ram.r16(EQ_USED + 2) != self.eq_used {
            let e = EQ_USED + 4 + u64::from(self.eq_used % QSIZE) * 8;
            let id = self.ram.r32(e) as u16;
            let len = self.ram.r32(e + 4);
            assert_eq!(len, 64);
            let b = self.ram.read(EVENT_BUFS + u64::from(id) * 64, 64);
            out.push(Event {
                ty: u16::from_le_bytes([b[0], b[1]]),
                seq: u32::from_le_bytes(b[4..8].try_into().unwrap()),
                data: b[8..].try_into().unwrap(),
            });
            self.eq_used = self.eq_used.wrapping_add(1);
            self.ram
                .w16(EQ_AVAIL + 4 + u64::from(self.eq_avail % QSIZE) * 2, id);
            self.eq_avail = self.eq_avail.wrapping_add(1);
            self.ram.w16(EQ_AVAIL + 2, self.eq_avail);
        }
        if !out.is_empty() {
            self.wr(hw::REG_EQ_NOTIFY, 1);
        }
        out
    }

    /// Waits for an event of type `ty`; other events are returned too.
    pub fn wait_event(&mut self, ty: u16) -> Vec<Event> {
        let t = Instant::now();
        let mut all = Vec::new();
        loop {
            all.extend(self.events());
            if all.iter().any(|e| e.ty == ty) {
                return all;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no event {ty}: {all:?}"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    // ---- commands ----

    pub fn create_pd(&mut self) -> u32 {
        let r = self.cmd(hw::CMD_CREATE_PD, &[], None);
        assert_eq!(r.status, hw::STATUS_OK);
        r.u32(0)
    }

    pub fn create_mr_raw(
        &mut self,
        pdn: u32,
        access: u32,
        mode: u8,
        iova: u64,
        length: u64,
    ) -> Resp {
        let mut a = [0u8; 32];
        a[0..4].copy_from_slice(&pdn.to_le_bytes());
        a[4..8].copy_from_slice(&access.to_le_bytes());
        a[8] = mode;
        a[9] = 12;
        a[16..24].copy_from_slice(&iova.to_le_bytes());
        a[24..32].copy_from_slice(&length.to_le_bytes());
        self.cmd(hw::CMD_CREATE_MR, &a, None)
    }

    pub fn create_mr(&mut self, pdn: u32, mode: u8, iova: u64, length: u64) -> u32 {
        let access = hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_WRITE | hw::ACCESS_REMOTE_READ;
        let r = self.create_mr_raw(pdn, access, mode, iova, length);
        assert_eq!(r.status, hw::STATUS_OK, "CREATE_MR");
        r.u32(0)
    }

    pub fn map_pages_raw(&mut self, key: u32, flags: u32, iova: u64, entries: &[u64]) -> Resp {
        self.post_map_pages(key, flags, iova, entries);
        let used_len = self.wait_cmd().expect("command did not complete");
        self.cmd_resp(hw::CMD_MAP_PAGES, used_len)
    }

    /// `MAP_PAGES` made available, not waited for (see `post_cmd`).
    pub fn post_map_pages(&mut self, key: u32, flags: u32, iova: u64, entries: &[u64]) {
        let mut a = [0u8; 20];
        a[0..4].copy_from_slice(&key.to_le_bytes());
        a[4..8].copy_from_slice(&flags.to_le_bytes());
        a[8..16].copy_from_slice(&iova.to_le_bytes());
        a[16..20].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        let data: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.post_cmd(hw::CMD_MAP_PAGES, &a, Some(&data));
    }

    /// Maps `pages` pages at `iova` to RAM offset `ram_off` (contiguous), RW.
    pub fn map_pages(&mut self, key: u32, iova: u64, ram_off: u64, pages: u64) {
        let e: Vec<u64> = (0..pages)
            .map(|i| (RAM_GPA + ram_off + i * 4096) | hw::PTE_READ | hw::PTE_WRITE)
            .collect();
        let r = self.map_pages_raw(key, 0, iova, &e);
        assert_eq!(r.status, hw::STATUS_OK, "MAP_PAGES");
    }

    pub fn resume(&mut self, token: u32, status: u32) -> Resp {
        let mut a = [0u8; 8];
        a[0..4].copy_from_slice(&token.to_le_bytes());
        a[4..8].copy_from_slice(&status.to_le_bytes());
        self.cmd(hw::CMD_RESUME, &a, None)
    }

    pub fn key_cmd(&mut self, opcode: u16, key: u32) -> Resp {
        self.cmd(opcode, &key.to_le_bytes(), None)
    }

    /// Rings the invalidation doorbell.
    pub fn invalidate(&mut self, key: u32, start: u64, length: u64, seq: u32) {
        self.wr(hw::REG_INV_KEY, key);
        self.wr64(hw::REG_INV_START, start);
        self.wr64(hw::REG_INV_LENGTH, length);
        self.wr(hw::REG_INV_SEQ, seq);
    }

    /// Polls `INV_ACK` until it reaches `seq`.
    pub fn wait_inv_ack(&mut self, seq: u32, timeout: Duration) -> bool {
        let t = Instant::now();
        while self.rd(hw::REG_INV_ACK) != seq {
            if t.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }
}

/// Runs an injected operation in a thread (the reply waits for faults).
pub fn inject(td: &TestDevice, req: Value) -> std::thread::JoinHandle<Value> {
    let line = req.to_string();
    let dev = td.dev.clone();
    std::thread::spawn(move || Control::new(dev).handle_line(&line))
}

// ---- interface 1.1: CQs, QPs, AHs, doorbells ----

/// A parsed CQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wc {
    pub wr_id: u64,
    pub byte_len: u32,
    pub imm: [u8; 4],
    pub qpn: u32,
    pub src_qp: u32,
    pub status: u8,
    pub opcode: u8,
    pub flags: u8,
}

/// A CQ as the driver sees it.
#[derive(Clone, Copy, Debug)]
pub struct TCq {
    pub cqn: u32,
    pub off: u64,
    pub size: u32,
    pub cons: u32,
    pub db_page: u16,
}

/// A QP as the driver sees it.
#[derive(Clone, Copy, Debug)]
pub struct TQp {
    pub qpn: u32,
    pub off: u64,
    pub sq_size: u32,
    pub rq_size: u32,
    pub sq_prod: u32,
    pub rq_prod: u32,
    pub db_page: u16,
}

/// Bytes of a send WQE.
#[derive(Clone, Debug, Default)]
pub struct SendWr {
    pub wr_id: u64,
    pub opcode: u8,
    pub flags: u8,
    pub imm: [u8; 4],
    pub remote_addr: u64,
    pub rkey: u32,
    pub ah: u32,
    pub compare_add: u64,
    pub swap: u64,
    pub remote_qpn: u32,
    pub remote_qkey: u32,
    /// (addr, length, lkey)
    pub sges: Vec<(u64, u32, u32)>,
    pub inline: Option<Vec<u8>>,
}

impl SendWr {
    pub fn bytes(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..8].copy_from_slice(&self.wr_id.to_le_bytes());
        b[8] = self.opcode;
        b[9] = self.flags;
        b[12..16].copy_from_slice(&self.imm);
        b[16..24].copy_from_slice(&self.remote_addr.to_le_bytes());
        b[24..28].copy_from_slice(&self.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.ah.to_le_bytes());
        b[32..40].copy_from_slice(&self.compare_add.to_le_bytes());
        b[40..48].copy_from_slice(&self.swap.to_le_bytes());
        b[48..52].copy_from_slice(&self.remote_qpn.to_le_bytes());
        b[52..56].copy_from_slice(&self.remote_qkey.to_le_bytes());
        if let Some(d) = &self.inline {
            b[9] |= hw::WQE_F_INLINE;
            b[56..60].copy_from_slice(&(d.len() as u32).to_le_bytes());
            b[64..64 + d.len()].copy_from_slice(d);
        } else {
            b[10] = self.sges.len() as u8;
            for (i, (a, l, k)) in self.sges.iter().enumerate() {
                let o = 64 + i * 16;
                b[o..o + 8].copy_from_slice(&a.to_le_bytes());
                b[o + 8..o + 12].copy_from_slice(&l.to_le_bytes());
                b[o + 12..o + 16].copy_from_slice(&k.to_le_bytes());
            }
        }
        b
    }
}

/// Where ring buffers go in RAM (bump allocation, 1 MiB area).
pub const RING_AREA: u64 = 0x80_0000;

impl Driver {
    fn alloc_ring(&mut self, bytes: u64) -> u64 {
        // the test driver keeps a bump pointer in RAM offset 0xff8
        let mut next = self.ram.r64(0xff8);
        if next == 0 {
            next = RING_AREA;
        }
        let off = next;
        let end = (off + bytes + 0xfff) & !0xfff;
        self.ram.w64(0xff8, end);
        self.ram.write(off, &vec![0u8; bytes as usize]);
        off
    }

    pub fn create_cq_raw(&mut self, buf: u64, size: u32, vector: u16, db_page: u16) -> Resp {
        let mut a = [0u8; 16];
        a[0..8].copy_from_slice(&buf.to_le_bytes());
        a[8..12].copy_from_slice(&size.to_le_bytes());
        a[12..14].copy_from_slice(&vector.to_le_bytes());
        a[14..16].copy_from_slice(&db_page.to_le_bytes());
        self.cmd(hw::CMD_CREATE_CQ, &a, None)
    }

    pub fn create_cq(&mut self, size: u32, vector: u16, db_page: u16) -> TCq {
        let off = self.alloc_ring(4096 + u64::from(size) * 32);
        let r = self.create_cq_raw(RAM_GPA + off, size, vector, db_page);
        assert_eq!(r.status, hw::STATUS_OK, "CREATE_CQ");
        TCq {
            cqn: r.u32(0),
            off,
            size,
            cons: 0,
            db_page,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create_qp_raw(
        &mut self,
        buf: u64,
        pd: u32,
        scq: u32,
        rcq: u32,
        sq: u32,
        rq: u32,
        qtype: u8,
        flags: u8,
        db_page: u16,
    ) -> Resp {
        let mut a = [0u8; 32];
        a[0..8].copy_from_slice(&buf.to_le_bytes());
        a[8..12].copy_from_slice(&pd.to_le_bytes());
        a[12..16].copy_from_slice(&scq.to_le_bytes());
        a[16..20].copy_from_slice(&rcq.to_le_bytes());
        a[20..24].copy_from_slice(&sq.to_le_bytes());
        a[24..28].copy_from_slice(&rq.to_le_bytes());
        a[28] = qtype;
        a[29] = flags;
        a[30..32].copy_from_slice(&db_page.to_le_bytes());
        self.cmd(hw::CMD_CREATE_QP, &a, None)
    }

    pub fn create_qp(
        &mut self,
        pd: u32,
        scq: &TCq,
        rcq: &TCq,
        qtype: u8,
        flags: u8,
        db_page: u16,
    ) -> TQp {
        let (sq, rq) = (16u32, 16u32);
        let off = self.alloc_ring(4096 + u64::from(sq + rq) * 128);
        let r = self.create_qp_raw(
            RAM_GPA + off,
            pd,
            scq.cqn,
            rcq.cqn,
            sq,
            rq,
            qtype,
            flags,
            db_page,
        );
        assert_eq!(r.status, hw::STATUS_OK, "CREATE_QP");
        TQp {
            qpn: r.u32(0),
            off,
            sq_size: sq,
            rq_size: rq,
            sq_prod: 0,
            rq_prod: 0,
            db_page,
        }
    }

    /// MODIFY_QP with the given mask and fields.
    #[allow(clippy::too_many_arguments)]
    pub fn modify_qp(
        &mut self,
        qpn: u32,
        mask: u32,
        state: u8,
        dest_qpn: u32,
        qkey: u32,
        access: u32,
        rnr_retry: u8,
    ) -> Resp {
        let mut a = [0u8; 50];
        a[0..4].copy_from_slice(&qpn.to_le_bytes());
        a[4..8].copy_from_slice(&mask.to_le_bytes());
        a[8] = state;
        a[9] = 5;
        a[10] = 7;
        a[11] = rnr_retry;
        a[12..16].copy_from_slice(&dest_qpn.to_le_bytes());
        a[16..20].copy_from_slice(&qkey.to_le_bytes());
        a[20..24].copy_from_slice(&access.to_le_bytes());
        a[24..28].copy_from_slice(&100u32.to_le_bytes());
        a[28..32].copy_from_slice(&200u32.to_le_bytes());
        a[48] = 12;
        a[49] = 14;
        self.cmd(hw::CMD_MODIFY_QP, &a, None)
    }

    /// RESET → INIT → RTR → RTS for an RC QP connected to `dest`.
    pub fn connect_rc(&mut self, qpn: u32, dest: u32, rnr_retry: u8) {
        let all = hw::ACCESS_REMOTE_WRITE | hw::ACCESS_REMOTE_READ | hw::ACCESS_REMOTE_ATOMIC;
        let s = hw::QP_ATTR_STATE;
        assert_eq!(
            self.modify_qp(qpn, s | hw::QP_ATTR_ACCESS, hw::QPS_INIT, 0, 0, all, 0)
                .status,
            hw::STATUS_OK
        );
        let rtr =
            s | hw::QP_ATTR_PATH | hw::QP_ATTR_MTU | hw::QP_ATTR_DEST_QPN | hw::QP_ATTR_RQ_PSN;
        assert_eq!(
            self.modify_qp(qpn, rtr, hw::QPS_RTR, dest, 0, 0, 0).status,
            hw::STATUS_OK
        );
        let rts = s | hw::QP_ATTR_SQ_PSN | hw::QP_ATTR_RETRY;
        assert_eq!(
            self.modify_qp(qpn, rts, hw::QPS_RTS, 0, 0, 0, rnr_retry)
                .status,
            hw::STATUS_OK
        );
    }

    /// RESET → INIT → RTR → RTS for a UD (or GSI) QP.
    pub fn ready_ud(&mut self, qpn: u32, qkey: u32) {
        let s = hw::QP_ATTR_STATE;
        assert_eq!(
            self.modify_qp(qpn, s | hw::QP_ATTR_QKEY, hw::QPS_INIT, 0, qkey, 0, 0)
                .status,
            hw::STATUS_OK
        );
        assert_eq!(
            self.modify_qp(qpn, s, hw::QPS_RTR, 0, 0, 0, 0).status,
            hw::STATUS_OK
        );
        assert_eq!(
            self.modify_qp(qpn, s | hw::QP_ATTR_SQ_PSN, hw::QPS_RTS, 0, 0, 0, 0)
                .status,
            hw::STATUS_OK
        );
    }

    pub fn db(&mut self, page: u16, reg: u64, v: u32) {
        let off = u64::from(page) * hw::DB_PAGE_SIZE + reg;
        self.client.region_write(4, off, &v.to_le_bytes()).unwrap();
    }

    /// Posts a send WQE and rings the SQ doorbell.
    pub fn post_send(&mut self, qp: &mut TQp, wr: &SendWr) {
        let slot = qp.off + 4096 + u64::from(qp.sq_prod & (qp.sq_size - 1)) * 128;
        self.ram.write(slot, &wr.bytes());
        qp.sq_prod = qp.sq_prod.wrapping_add(1);
        self.ram.w32(qp.off, qp.sq_prod);
        self.db(qp.db_page, hw::DB_SQ, qp.qpn);
    }

    /// Posts a receive WQE and rings the RQ doorbell.
    pub fn post_recv(&mut self, qp: &mut TQp, wr_id: u64, sges: &[(u64, u32, u32)]) {
        let wr = SendWr {
            wr_id,
            sges: sges.to_vec(),
            ..Default::default()
        };
        let slot = qp.off
            + 4096
            + u64::from(qp.sq_size) * 128
            + u64::from(qp.rq_prod & (qp.rq_size - 1)) * 128;
        self.ram.write(slot, &wr.bytes());
        qp.rq_prod = qp.rq_prod.wrapping_add(1);
        self.ram.w32(qp.off + 8, qp.rq_prod);
        self.db(qp.db_page, hw::DB_RQ, qp.qpn);
    }

    /// Takes every new CQE.
    pub fn poll_cq(&mut self, cq: &mut TCq) -> Vec<Wc> {
        let mut out = Vec::new();
        loop {
            let slot = cq.off + 4096 + u64::from(cq.cons & (cq.size - 1)) * 32;
            let b = self.ram.read(slot, 32);
            let want = (((cq.cons / cq.size) & 1) ^ 1) as u8;
            if b[27] != want {
                break;
            }
            out.push(Wc {
                wr_id: u64::from_le_bytes(b[0..8].try_into().unwrap()),
                byte_len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
                imm: b[12..16].try_into().unwrap(),
                qpn: u32::from_le_bytes(b[16..20].try_into().unwrap()),
                src_qp: u32::from_le_bytes(b[20..24].try_into().unwrap()),
                status: b[24],
                opcode: b[25],
                flags: b[26],
            });
            cq.cons = cq.cons.wrapping_add(1);
            self.ram.w32(cq.off, cq.cons);
        }
        out
    }

    /// Waits for `n` CQEs.
    pub fn wait_cq(&mut self, cq: &mut TCq, n: usize) -> Vec<Wc> {
        let t = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.poll_cq(cq));
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{} of {n} CQEs: {out:?}",
                out.len()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        out
    }
}

/// A fault plan of the given specs.
pub fn plan(specs: &[&str]) -> FaultPlan {
    let mut p = FaultPlan::default();
    for s in specs {
        p.add(s.parse::<FaultSpec>().unwrap().rule);
    }
    p
}

/// Sets a fault plan rule through the control socket.
pub fn set_plan(td: &TestDevice, rule: &str) {
    let r = td.ctl(json!({"op": "fault_plan", "set": rule}));
    assert_eq!(r["ok"], true, "{r}");
}

/// Waits (bounded) until the device's counter `name` reaches `n`.
pub fn wait_counter(td: &TestDevice, name: &str, n: u64) -> bool {
    let t = Instant::now();
    while td.counter(name) < n {
        if t.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// An injected 8-byte write of `byte` (300 ms device-side timeout).
pub fn write8(td: &TestDevice, key: u32, va: u64, byte: u8) -> Value {
    inject(
        td,
        json!({"op": "write", "rkey": key, "va": va,
            "pattern": {"byte": byte, "length": 8}, "timeout_ms": 300}),
    )
    .join()
    .unwrap()
}

/// The IOVA of the tests' MRs.
pub const MR_IOVA: u64 = 0x7f00_0000_0000;

/// A device up, a PD and an MR of `mode` (`pages` pages at `MR_IOVA`, or
/// implicit).
pub fn odp_setup(td: &TestDevice, mode: u8, pages: u64) -> (Driver, u32) {
    let mut d = Driver::up(td);
    let pd = d.create_pd();
    let key = if mode == hw::MR_IMPLICIT {
        d.create_mr(pd, mode, 0, 0)
    } else {
        d.create_mr(pd, mode, MR_IOVA, pages * 4096)
    };
    (d, key)
}

/// Breaks the command ring (an available index far beyond its size) and
/// waits, bounded, until the device is fatal (`FATAL_RING`).
pub fn make_fatal(d: &mut Driver) {
    d.ram.w16(CMDQ_AVAIL + 2, 200);
    d.wr(hw::REG_CMDQ_NOTIFY, 1);
    let t = Instant::now();
    while d.rd(hw::REG_STATUS) & hw::STATUS_FATAL == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "not fatal");
        std::thread::sleep(Duration::from_millis(1));
    }
}
