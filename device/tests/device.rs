// SPDX-License-Identifier: Apache-2.0 OR MIT
//! The device driven through vfio-user with a memfd as guest RAM, by a
//! test-side driver written from `docs/hardware.md`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use odp_rnic::fault_plan::FaultPlan;
use odp_rnic::hw;
use serde_json::{json, Value};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn discovery() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::connect(&td, Arc::new(Ram::new()));
    let c = d.cfg_read(0, 64);
    assert_eq!(u16::from_le_bytes([c[0], c[1]]), hw::PCI_VENDOR_ID);
    assert_eq!(u16::from_le_bytes([c[2], c[3]]), hw::PCI_DEVICE_ID);
    assert_eq!(c[8], hw::PCI_REVISION);
    assert_eq!(u32::from_le_bytes([c[9], c[10], c[11], 0]), hw::PCI_CLASS);
    assert_eq!(
        u16::from_le_bytes([c[0x2c], c[0x2d]]),
        hw::PCI_SUBSYS_VENDOR_ID
    );
    assert_eq!(u16::from_le_bytes([c[0x2e], c[0x2f]]), hw::PCI_SUBSYS_ID);
    // capability list: PCIe then MSI-X
    assert_ne!(c[6] & 0x10, 0);
    let mut p = c[0x34] as u64;
    let mut caps = Vec::new();
    while p != 0 {
        let h = d.cfg_read(p, 12);
        caps.push((h[0], p));
        if h[0] == 0x11 {
            let ctl = u16::from_le_bytes([h[2], h[3]]);
            assert_eq!(u32::from(ctl & 0x7ff) + 1, hw::NUM_VECTORS);
            let table = u32::from_le_bytes(h[4..8].try_into().unwrap());
            let pba = u32::from_le_bytes(h[8..12].try_into().unwrap());
            assert_eq!(table & 7, hw::BAR_MSIX);
            assert_eq!(u64::from(table & !7), hw::MSIX_TABLE_OFFSET);
            assert_eq!(pba & 7, hw::BAR_MSIX);
            assert_eq!(u64::from(pba & !7), hw::MSIX_PBA_OFFSET);
        }
        if h[0] == 0x10 {
            // PCIe v2 endpoint
            assert_eq!(u16::from_le_bytes([h[2], h[3]]) & 0xf0, 0);
        }
        p = h[1] as u64;
    }
    assert_eq!(
        caps.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![0x10, 0x11]
    );
    // BAR sizing as on hardware
    d.cfg_write(0x10, &0xffff_ffffu32.to_le_bytes());
    let b0 = u32::from_le_bytes(d.cfg_read(0x10, 4).try_into().unwrap());
    assert_eq!(u64::from(!(b0 & !0xf)) + 1, hw::BAR_REGS_SIZE);
    d.cfg_write(0x18, &0xffff_ffffu32.to_le_bytes());
    let b2 = u32::from_le_bytes(d.cfg_read(0x18, 4).try_into().unwrap());
    assert_eq!(u64::from(!(b2 & !0xf)) + 1, hw::BAR_MSIX_SIZE);
    // the client sees the regions
    assert_eq!(d.client.region(0).unwrap().size, hw::BAR_REGS_SIZE);
    assert_eq!(d.client.region(2).unwrap().size, hw::BAR_MSIX_SIZE);
    assert_eq!(d.client.get_irq_info(2).unwrap().count, hw::NUM_VECTORS);
    // BAR 0
    assert_eq!(d.rd(hw::REG_MAGIC), hw::MAGIC);
    assert_eq!(
        d.rd(hw::REG_VERSION),
        (hw::VERSION_MAJOR << 16) | hw::VERSION_MINOR
    );
    let caps = d.rd(hw::REG_CAPS);
    assert_eq!(
        caps & (hw::CAP_ODP | hw::CAP_IMPLICIT_ODP | hw::CAP_PREFETCH),
        hw::CAP_ODP | hw::CAP_IMPLICIT_ODP | hw::CAP_PREFETCH
    );
    assert_ne!(caps & hw::CAP_REVOCABLE, 0);
    assert_eq!(
        caps & (hw::CAP_ATOMICS | hw::CAP_UD),
        hw::CAP_ATOMICS | hw::CAP_UD
    );
    // bus mastering is off after power-on
    assert_eq!(d.rd(hw::REG_STATUS), hw::STATUS_FENCED);
    assert!(d.rd(hw::REG_MAX_PD) > 0);
    assert!(d.rd(hw::REG_MAX_MR) > 0);
    assert_eq!(u64::from(d.rd(hw::REG_MAX_MR_PAGES)), hw::MAX_MR_PAGES);
    assert_ne!(d.rd(hw::REG_MAC_LO), 0);
    assert_eq!(d.rd(0x9000), 0, "unknown offsets read 0");
    // up, and a NOP fires the command vector
    d.set_bus_master(true);
    assert_eq!(d.rd(hw::REG_STATUS), 0);
    d.setup_queues();
    d.enable();
    eventfd_count(&d.vectors[hw::VEC_CMD as usize]);
    let r = d.cmd(hw::CMD_NOP, &[], None);
    assert_eq!(r.status, hw::STATUS_OK);
    assert!(eventfd_count(&d.vectors[hw::VEC_CMD as usize]) >= 1);
    assert_eq!(td.counter("commands"), 1);
    let v = td.ctl(json!({"op": "version", "id": 7}));
    assert_eq!(
        v,
        json!({"ok": true, "id": 7, "protocol": 1, "device": "odp-rnic", "interface": "1.1", "odp": true,
               "injector": {"gid": "::ffff:192.0.2.1", "qpn_first": 0xfff000, "qpn_last": 0xffffff}})
    );
}

#[test]
fn commands_good_and_bad() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    assert_eq!(d.cmd(0x7f, &[], None).status, hw::STATUS_BAD_OPCODE);
    let pd = d.create_pd();
    assert_eq!(
        d.key_cmd(hw::CMD_DESTROY_PD, pd + 100).status,
        hw::STATUS_BAD_HANDLE
    );
    let rw = hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_WRITE | hw::ACCESS_REMOTE_READ;
    let bad = |d: &mut Driver, pdn, access, mode, iova, len| {
        d.create_mr_raw(pdn, access, mode, iova, len).status
    };
    assert_eq!(
        bad(&mut d, pd + 1, rw, hw::MR_PINNED, 0, 4096),
        hw::STATUS_BAD_HANDLE
    );
    assert_eq!(bad(&mut d, pd, rw, 9, 0, 4096), hw::STATUS_BAD_PARAM);
    assert_eq!(
        bad(&mut d, pd, 0x100, hw::MR_PINNED, 0, 4096),
        hw::STATUS_BAD_PARAM
    );
    assert_eq!(
        bad(&mut d, pd, hw::ACCESS_REMOTE_WRITE, hw::MR_PINNED, 0, 4096),
        hw::STATUS_BAD_PARAM
    );
    assert_eq!(
        bad(&mut d, pd, rw, hw::MR_PINNED, 0, 0),
        hw::STATUS_BAD_PARAM
    );
    assert_eq!(
        bad(&mut d, pd, rw, hw::MR_PINNED, u64::MAX - 10, 4096),
        hw::STATUS_BAD_PARAM
    );
    assert_eq!(
        bad(
            &mut d,
            pd,
            rw,
            hw::MR_PINNED,
            0,
            (hw::MAX_MR_PAGES + 1) << 12
        ),
        hw::STATUS_BAD_PARAM
    );
    assert_eq!(
        bad(&mut d, pd, rw, hw::MR_IMPLICIT, 4096, 0),
        hw::STATUS_BAD_PARAM
    );
    let mut a = [0u8; 32];
    a[0..4].copy_from_slice(&pd.to_le_bytes());
    a[4..8].copy_from_slice(&rw.to_le_bytes());
    a[9] = 13;
    a[24..32].copy_from_slice(&4096u64.to_le_bytes());
    assert_eq!(
        d.cmd(hw::CMD_CREATE_MR, &a, None).status,
        hw::STATUS_BAD_PARAM,
        "page_shift"
    );

    let key = d.create_mr(pd, hw::MR_ODP, MR_IOVA + 0x800, 0x2000);
    assert_eq!(key & 0xff, 1, "first generation");
    let imp = d.create_mr(pd, hw::MR_IMPLICIT, 0, 0);
    assert_ne!(imp, key);
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_PD, pd).status, hw::STATUS_BUSY);
    // MAP_PAGES
    let pte = (RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE;
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &[]).status,
        hw::STATUS_BAD_PARAM,
        "count 0"
    );
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &vec![pte; 513]).status,
        hw::STATUS_BAD_PARAM,
        "count > MAP_MAX"
    );
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA + 8, &[pte]).status,
        hw::STATUS_BAD_PARAM,
        "unaligned"
    );
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA + 0x3000, &[pte]).status,
        hw::STATUS_BAD_PARAM,
        "outside"
    );
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &[pte; 4]).status,
        hw::STATUS_BAD_PARAM,
        "run too long"
    );
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &[pte | 0x10]).status,
        hw::STATUS_BAD_PARAM,
        "reserved bits"
    );
    assert_eq!(
        d.map_pages_raw(key, 0x8, MR_IOVA, &[pte]).status,
        hw::STATUS_BAD_PARAM,
        "flags"
    );
    assert_eq!(
        d.map_pages_raw(key ^ 0x2, 0, MR_IOVA, &[pte]).status,
        hw::STATUS_BAD_HANDLE,
        "bad key"
    );
    // all or nothing: a bad entry after good ones maps nothing
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &[pte, pte | 0x100]).status,
        hw::STATUS_BAD_PARAM
    );
    assert_eq!(d.key_cmd(hw::CMD_QUERY_MR, key).u64(32), 0);
    let mut a = [0u8; 20];
    a[0..4].copy_from_slice(&key.to_le_bytes());
    a[8..16].copy_from_slice(&MR_IOVA.to_le_bytes());
    a[16..20].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        d.cmd(hw::CMD_MAP_PAGES, &a, None).status,
        hw::STATUS_BAD_PARAM,
        "no data buffer"
    );
    assert_eq!(
        d.map_pages_raw(
            key,
            hw::MAP_PREFETCH,
            MR_IOVA,
            &[pte, pte + 4096, pte + 8192]
        )
        .status,
        hw::STATUS_OK
    );
    let q = d.key_cmd(hw::CMD_QUERY_MR, key);
    assert_eq!(q.status, hw::STATUS_OK);
    assert_eq!(q.u32(0), hw::MR_STATE_LIVE);
    assert_eq!(q.u32(4), u32::from(hw::MR_ODP));
    assert_eq!(q.u64(24), 3, "prefetched");
    assert_eq!(q.u64(32), 3, "mapped");
    // an entry with neither bit unmaps
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA + 0x1000, &[0]).status,
        hw::STATUS_OK
    );
    assert_eq!(d.key_cmd(hw::CMD_QUERY_MR, key).u64(32), 2);
    let m = td.ctl(json!({"op": "mr", "key": key}));
    assert_eq!(m["mode"], "odp");
    assert_eq!(m["state"], "live");
    assert_eq!(m["mapped_pages"], 2);
    assert_eq!(m["prefetched_pages"], 3);
    // RESUME of an unknown token
    assert_eq!(d.resume(12345, 0).status, hw::STATUS_BAD_HANDLE);
    // destroy
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_MR, key).status, hw::STATUS_OK);
    assert_eq!(
        d.key_cmd(hw::CMD_DESTROY_MR, key).status,
        hw::STATUS_BAD_HANDLE
    );
    assert_eq!(
        d.key_cmd(hw::CMD_QUERY_MR, key).status,
        hw::STATUS_BAD_HANDLE
    );
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_MR, imp).status, hw::STATUS_OK);
    // the index is reused with a new generation
    let key2 = d.create_mr(pd, hw::MR_PINNED, 0, 4096);
    assert_eq!(key2 >> 8, key >> 8);
    assert_ne!(key2, key);
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_MR, key2).status, hw::STATUS_OK);
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_PD, pd).status, hw::STATUS_OK);
    assert!(td.ctl(json!({"op": "mr", "key": key}))["ok"] == false);
}

#[test]
fn malformed_chains() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let g = |o: u64| RAM_GPA + o;
    // only a request: no response buffer, returned with length 0
    d.submit_chain(&[(g(0x8000), 64, false)]);
    assert_eq!(d.wait_cmd(), Some(0));
    // request too short, response present: BAD_CHAIN
    d.ram.write(0x8100, &[0xee; 64]);
    d.submit_chain(&[(g(0x8000), 16, false), (g(0x8100), 64, true)]);
    assert_eq!(d.wait_cmd(), Some(64));
    assert_eq!(d.ram.r16(0x8102), hw::STATUS_BAD_CHAIN);
    // request pointing outside guest memory
    d.submit_chain(&[(0x10, 64, false), (g(0x8100), 64, true)]);
    assert_eq!(d.wait_cmd(), Some(64));
    assert_eq!(d.ram.r16(0x8102), hw::STATUS_DMA_ERROR);
    // the device still works
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
    // a ring index jumping past the ring is fatal
    d.ram.w16(0x2002, d.ram.r16(0x2002).wrapping_add(100));
    d.wr(hw::REG_CMDQ_NOTIFY, 1);
    let t = Instant::now();
    while d.rd(hw::REG_STATUS) & hw::STATUS_FATAL == 0 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.rd(hw::REG_FATAL_CODE), hw::FATAL_RING);
    // only a reset leaves FATAL
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    assert_eq!(d.rd(hw::REG_STATUS), 0);
    assert_eq!(d.rd(hw::REG_FATAL_CODE), hw::FATAL_NONE);
    d.setup_queues();
    d.enable();
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
}

#[test]
fn enable_with_bad_queues_is_fatal() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::connect(&td, Arc::new(Ram::new()));
    d.set_bus_master(true);
    d.setup_queues();
    d.wr(hw::REG_CMDQ_SIZE, 3);
    d.wr(hw::REG_CONTROL, hw::CONTROL_ENABLE);
    assert_eq!(d.rd(hw::REG_STATUS), hw::STATUS_FATAL);
    assert_eq!(d.rd(hw::REG_FATAL_CODE), hw::FATAL_BAD_QUEUE);
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    d.setup_queues();
    d.wr64(hw::REG_EQ_USED, 0x1000); // not DMA-mapped
    d.wr(hw::REG_CONTROL, hw::CONTROL_ENABLE);
    assert_eq!(d.rd(hw::REG_FATAL_CODE), hw::FATAL_BAD_QUEUE);
}

/// Answers page faults until the injection `h` returns.
fn serve_faults(
    d: &mut Driver,
    key: u32,
    ram_off: u64,
    h: std::thread::JoinHandle<Value>,
) -> (Value, Vec<Event>) {
    let mut seen = Vec::new();
    let t = Instant::now();
    while !h.is_finished() {
        for e in d.events() {
            if e.ty == hw::EVENT_PAGE_FAULT {
                assert_eq!(e.u32(4), key);
                let (iova, len) = (e.u64(16), e.u64(24));
                assert_eq!(iova % 4096, 0);
                assert_eq!(len % 4096, 0);
                d.map_pages(key, iova, ram_off + (iova - MR_IOVA), len / 4096);
                assert_eq!(d.resume(e.u32(0), 0).status, hw::STATUS_OK);
            }
            seen.push(e);
        }
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_micros(200));
    }
    (h.join().unwrap(), seen)
}

#[test]
fn odp_fault_resume_write_lands() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 4);
    let data = pattern(5000, 3);
    eventfd_count(&d.vectors[hw::VEC_EVENT as usize]);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA + 100, "data_hex": hex(&data)}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    assert!(eventfd_count(&d.vectors[hw::VEC_EVENT as usize]) >= 1);
    let f = evs.iter().find(|e| e.ty == hw::EVENT_PAGE_FAULT).unwrap();
    let token = f.u32(0);
    assert_eq!(f.u32(4), key);
    assert!((hw::QPN_INJECTOR_FIRST..=hw::QPN_INJECTOR_LAST).contains(&f.u32(8)));
    assert_eq!(f.u32(12), hw::FAULT_WRITE);
    assert_eq!(f.u64(16), MR_IOVA);
    assert_eq!(f.u64(24), 0x2000, "both pages the access needs");
    assert_eq!(f.seq, 1);
    assert!(!h.is_finished(), "the access is parked");
    d.map_pages(key, MR_IOVA, DATA, 2);
    assert_eq!(d.resume(token, 0).status, hw::STATUS_OK);
    let r = h.join().unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["status"], "success");
    assert_eq!(r["faults"], 1);
    assert_eq!(d.ram.read(DATA + 100, data.len()), data);
    assert_eq!(d.ram.read(DATA, 100), vec![0; 100]);
    // the token is answered once
    assert_eq!(d.resume(token, 0).status, hw::STATUS_BAD_HANDLE);
    // read back through the MR, no fault now
    let r = inject(
        &td,
        json!({"op": "read", "rkey": key, "va": MR_IOVA + 100, "length": data.len()}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(r["faults"], 0);
    assert_eq!(r["data_hex"], hex(&data));
    let q = d.key_cmd(hw::CMD_QUERY_MR, key);
    assert_eq!(q.u64(8), 1, "faults");
    assert_eq!(q.u64(32), 2, "mapped");
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
    assert_eq!(td.counter("page_faults"), 1);
    assert_eq!(td.counter("resumes"), 1);
    // a read of an unmapped page faults without FAULT_WRITE
    let h = inject(
        &td,
        json!({"op": "read", "rkey": key, "va": MR_IOVA + 0x3000, "length": 8}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    let f = evs.iter().find(|e| e.ty == hw::EVENT_PAGE_FAULT).unwrap();
    assert_eq!(f.u32(12), 0);
    assert_eq!(f.u64(16), MR_IOVA + 0x3000);
    d.map_pages(key, MR_IOVA + 0x3000, DATA + 0x3000, 1);
    d.resume(f.u32(0), 0);
    assert_eq!(h.join().unwrap()["status"], "success");
}

#[test]
fn odp_fault_resume_error_fails_the_access() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 0xab, "length": 16}}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    let token = evs
        .iter()
        .find(|e| e.ty == hw::EVENT_PAGE_FAULT)
        .unwrap()
        .u32(0);
    assert_eq!(d.resume(token, 1).status, hw::STATUS_OK);
    let r = h.join().unwrap();
    assert_eq!(r["status"], "remote_access_error");
    assert_eq!(d.ram.read(DATA, 16), vec![0; 16]);
    assert_eq!(td.counter("resume_errors"), 1);
}

#[test]
fn remote_access_checks() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let ro = d.create_mr_raw(pd, hw::ACCESS_REMOTE_READ, hw::MR_PINNED, MR_IOVA, 4096);
    assert_eq!(ro.status, hw::STATUS_OK);
    let ro = ro.u32(0);
    d.map_pages(ro, MR_IOVA, DATA, 1);
    let w = |td: &TestDevice, key: u32, va: u64, n: usize| {
        inject(
            td,
            json!({"op": "write", "rkey": key, "va": va, "pattern": {"byte": 1, "length": n}}),
        )
        .join()
        .unwrap()["status"]
            .clone()
    };
    assert_eq!(
        w(&td, ro, MR_IOVA, 8),
        "remote_access_error",
        "no REMOTE_WRITE"
    );
    assert_eq!(
        w(&td, ro ^ 0xff, MR_IOVA, 8),
        "remote_access_error",
        "bad key"
    );
    let rw = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 4096);
    d.map_pages(rw, MR_IOVA, DATA, 1);
    assert_eq!(
        w(&td, rw, MR_IOVA + 4090, 8),
        "remote_access_error",
        "out of bounds"
    );
    assert_eq!(
        w(&td, rw, MR_IOVA - 1, 2),
        "remote_access_error",
        "below the MR"
    );
    assert_eq!(w(&td, rw, u64::MAX - 2, 8), "remote_access_error", "wraps");
    assert_eq!(w(&td, rw, MR_IOVA + 4088, 8), "success");
    // a pinned MR with a missing page does not fault
    let holes = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 8192);
    d.map_pages(holes, MR_IOVA, DATA, 1);
    assert_eq!(w(&td, holes, MR_IOVA + 4000, 200), "remote_access_error");
    assert_eq!(td.counter("page_faults"), 0);
    // bad requests are errors, not crashes
    let r = td.ctl(json!({"op": "write", "rkey": rw, "va": MR_IOVA, "data_hex": "abc"}));
    assert_eq!(r["ok"], false);
    let r = td.ctl(json!({"op": "read", "rkey": rw, "va": MR_IOVA, "length": 1u64 << 40}));
    assert_eq!(r["ok"], false);
    let r = td.ctl(json!({"op": "write", "rkey": -1, "va": 0, "data_hex": "00"}));
    assert_eq!(r["ok"], false);
    assert_eq!(td.ctl(json!({"op": "nope"}))["ok"], false);
    assert_eq!(td.control.handle_line("{not json")["ok"], false);
    assert_eq!(td.control.handle_line("[1,2]")["ok"], false);
}

#[test]
fn pinned_mr_write() {
    let td = TestDevice::start(false, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA + 0x10, 3 * 4096);
    // table written at registration: pages scattered in RAM
    let e = [
        (RAM_GPA + DATA + 0x5000) | 3,
        (RAM_GPA + DATA + 0x1000) | 3,
        (RAM_GPA + DATA + 0x9000) | 3,
        (RAM_GPA + DATA + 0x3000) | 3,
    ];
    assert_eq!(d.map_pages_raw(key, 0, MR_IOVA, &e).status, hw::STATUS_OK);
    let data = pattern(3 * 4096, 9);
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA + 0x10, "data_hex": hex(&data)}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(r["faults"], 0);
    assert_eq!(d.ram.read(DATA + 0x5010, 4096 - 0x10), data[..4096 - 0x10]);
    assert_eq!(
        d.ram.read(DATA + 0x1000, 4096),
        data[4096 - 0x10..8192 - 0x10]
    );
    assert_eq!(
        d.ram.read(DATA + 0x9000, 4096),
        data[8192 - 0x10..12288 - 0x10]
    );
    assert_eq!(d.ram.read(DATA + 0x3000, 0x10), data[12288 - 0x10..]);
    assert_eq!(td.counter("dma_bytes_written"), data.len() as u64);
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
}

#[test]
fn invalidation_acks_and_refaults() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 4);
    d.map_pages(key, MR_IOVA, DATA, 4);
    let w = |td: &TestDevice, byte: u8| {
        inject(
            td,
            json!({"op": "write", "rkey": key, "va": MR_IOVA + 0x1000, "pattern": {"byte": byte, "length": 64}}),
        )
    };
    assert_eq!(w(&td, 1).join().unwrap()["faults"], 0);
    d.invalidate(key, MR_IOVA + 0x1000, 0x2000, 1);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    let evs = d.wait_event(hw::EVENT_INV_ACK);
    let ack = evs.iter().find(|e| e.ty == hw::EVENT_INV_ACK).unwrap();
    assert_eq!(ack.u32(0), 1);
    assert_eq!(
        d.key_cmd(hw::CMD_QUERY_MR, key).u64(32),
        2,
        "two pages dropped"
    );
    assert_eq!(d.key_cmd(hw::CMD_QUERY_MR, key).u64(16), 1, "invalidations");
    // the next write faults again
    let (r, evs) = serve_faults(&mut d, key, DATA, w(&td, 2));
    assert_eq!(r["status"], "success");
    assert_eq!(r["faults"], 1);
    assert_eq!(
        evs.iter().filter(|e| e.ty == hw::EVENT_PAGE_FAULT).count(),
        1
    );
    assert_eq!(d.ram.read(DATA + 0x1000, 64), vec![2; 64]);
    // untouched pages stay mapped
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 3, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["faults"], 0);
    // bad invalidations are acknowledged anyway, in order
    d.invalidate(key ^ 0x80, 0, 4096, 2);
    d.invalidate(key, 0, 4096, 3);
    assert!(d.wait_inv_ack(3, Duration::from_secs(5)));
    assert_eq!(td.counter("bad_invalidations"), 2);
    // sequence numbers wrap
    d.invalidate(key, MR_IOVA, 4096, u32::MAX);
    assert!(d.wait_inv_ack(u32::MAX, Duration::from_secs(5)));
    d.invalidate(key, MR_IOVA, 4096, 0);
    assert!(d.wait_inv_ack(0, Duration::from_secs(5)));
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
}

#[test]
fn invalidation_under_concurrent_traffic_has_no_violations() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 8);
    d.map_pages(key, MR_IOVA, DATA, 8);
    let dev = td.dev.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let c = odp_rnic::control::Control::new(dev);
        let mut n = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let off = (n % 8) * 4096;
            let r = c.handle_line(&json!({"op": "write", "rkey": key, "va": MR_IOVA + off, "pattern": {"byte": 7, "length": 4096}, "timeout_ms": 20}).to_string());
            assert!(r["status"] == "success" || r["status"] == "timeout", "{r}");
            n += 1;
        }
        n
    });
    for seq in 1..=50u32 {
        let page = u64::from(seq % 8);
        d.invalidate(key, MR_IOVA + page * 4096, 4096, seq);
        assert!(d.wait_inv_ack(seq, Duration::from_secs(5)));
        d.events();
        d.map_pages(key, MR_IOVA + page * 4096, DATA + page * 4096, 1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = traffic.join().unwrap();
    assert!(n > 0);
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
}

#[test]
fn rogue_record_records_and_suppresses() {
    let td = TestDevice::start(true, plan(&["rogue_record"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 2);
    d.map_pages(key, MR_IOVA, DATA, 2);
    d.invalidate(key, MR_IOVA + 0x1000, 0x1000, 5);
    assert!(d.wait_inv_ack(5, Duration::from_secs(5)));
    let r = inject(&td, json!({"op": "write", "rkey": key, "va": MR_IOVA + 0x1010, "pattern": {"byte": 0x5a, "length": 32}})).join().unwrap();
    // the stale translation was used (no fault) but the access suppressed
    assert_eq!(r["status"], "success");
    assert_eq!(r["faults"], 0);
    assert_eq!(
        d.ram.read(DATA + 0x1010, 32),
        vec![0; 32],
        "memory unchanged"
    );
    let v = td.ctl(json!({"op": "violations"}));
    assert_eq!(v["count"], 1);
    let rec = &v["violations"][0];
    assert_eq!(rec["key"], key);
    assert_eq!(rec["iova"], MR_IOVA + 0x1010);
    assert_eq!(rec["mr_offset"], 0x1010);
    assert_eq!(rec["gpa"], RAM_GPA + DATA + 0x1010);
    assert_eq!(rec["inv_seq"], 5);
    assert_eq!(rec["kind"], "invalidated");
    assert_eq!(rec["action"], "suppressed");
    assert!(rec["qpn"].as_u64().unwrap() >= u64::from(hw::QPN_INJECTOR_FIRST));
    assert!(rec["time_ns"].as_u64().unwrap() > 0);
    assert_eq!(td.counter("invalidations_ignored"), 1);
    // the live page is unaffected
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 4}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(d.ram.read(DATA, 4), vec![1; 4]);
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 1);
}

#[test]
fn rogue_write_performs_and_records() {
    let td = TestDevice::start(true, plan(&["rogue_write,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    d.map_pages(key, MR_IOVA, DATA, 1);
    d.invalidate(key, MR_IOVA, 0x1000, 1);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 0x66, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(d.ram.read(DATA, 8), vec![0x66; 8], "the damage is real");
    let v = td.ctl(json!({"op": "violations"}));
    assert_eq!(v["violations"][0]["action"], "performed");
}

#[test]
fn revocable_mr_is_revoked_by_invalidation() {
    let td = TestDevice::start(false, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_REVOCABLE, MR_IOVA, 2 * 4096);
    d.map_pages(key, MR_IOVA, DATA, 2);
    assert_eq!(d.key_cmd(hw::CMD_QUERY_MR, key).u64(32), 2);
    assert_eq!(td.ctl(json!({"op": "mr", "key": key}))["mapped_pages"], 2);
    let w = |td: &TestDevice| {
        inject(
            td,
            json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 9, "length": 8}}),
        )
        .join()
        .unwrap()
    };
    assert_eq!(w(&td)["status"], "success");
    d.invalidate(key, MR_IOVA + 0x1000, 1, 1);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    let evs = d.wait_event(hw::EVENT_INV_ACK);
    let types: Vec<u16> = evs.iter().map(|e| e.ty).collect();
    assert_eq!(
        types,
        vec![hw::EVENT_MR_REVOKED, hw::EVENT_INV_ACK],
        "revoked before the ack"
    );
    assert_eq!(evs[0].u32(0), key);
    assert_eq!(evs[1].seq, evs[0].seq + 1);
    d.ram.write(DATA, &[0; 8]);
    assert_eq!(w(&td)["status"], "remote_access_error");
    assert_eq!(d.ram.read(DATA, 8), vec![0; 8]);
    assert_eq!(
        d.key_cmd(hw::CMD_QUERY_MR, key).u32(0),
        hw::MR_STATE_REVOKED
    );
    assert_eq!(td.ctl(json!({"op": "mr", "key": key}))["state"], "revoked");
    // the translations went with the key, not only the invalidated page
    assert_eq!(d.key_cmd(hw::CMD_QUERY_MR, key).u64(32), 0);
    let m = td.ctl(json!({"op": "mr", "key": key}));
    assert_eq!(
        (m["mapped_pages"].as_u64(), m["invalidations"].as_u64()),
        (Some(0), Some(1))
    );
    // and a MAP_PAGES cannot bring them back
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &e).status,
        hw::STATUS_BAD_HANDLE
    );
    assert_eq!(d.key_cmd(hw::CMD_QUERY_MR, key).u64(32), 0);
    assert_eq!(td.counter("revocations"), 1);
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_MR, key).status, hw::STATUS_OK);
}

#[test]
fn odp_off_refuses_odp() {
    let td = TestDevice::start(false, FaultPlan::default());
    let mut d = Driver::up(&td);
    let caps = d.rd(hw::REG_CAPS);
    assert_eq!(
        caps & (hw::CAP_ODP | hw::CAP_IMPLICIT_ODP | hw::CAP_PREFETCH),
        0
    );
    let pd = d.create_pd();
    let rw = hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_WRITE;
    assert_eq!(
        d.create_mr_raw(pd, rw, hw::MR_ODP, 0, 4096).status,
        hw::STATUS_UNSUPPORTED
    );
    assert_eq!(
        d.create_mr_raw(pd, rw, hw::MR_IMPLICIT, 0, 0).status,
        hw::STATUS_UNSUPPORTED
    );
    assert_eq!(
        d.create_mr_raw(pd, rw, hw::MR_PINNED, 0, 4096).status,
        hw::STATUS_OK
    );
    assert_eq!(td.ctl(json!({"op": "version"}))["odp"], false);
}

#[test]
fn implicit_odp_covers_everything() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_IMPLICIT, 0);
    let va = 0x5555_0000_1ff0u64;
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": va, "data_hex": "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    let f = evs.iter().find(|e| e.ty == hw::EVENT_PAGE_FAULT).unwrap();
    assert_eq!(f.u64(16), 0x5555_0000_1000);
    assert_eq!(f.u64(24), 0x2000);
    let e = [(RAM_GPA + DATA) | 3, (RAM_GPA + DATA + 0x1000) | 3];
    assert_eq!(
        d.map_pages_raw(key, 0, 0x5555_0000_1000, &e).status,
        hw::STATUS_OK
    );
    d.resume(f.u32(0), 0);
    assert_eq!(h.join().unwrap()["status"], "success");
    assert_eq!(d.ram.read(DATA + 0xff0, 16), (1..=16).collect::<Vec<u8>>());
    assert_eq!(
        d.ram.read(DATA + 0x1000, 16),
        (17..=32).collect::<Vec<u8>>()
    );
}

#[test]
fn destroy_mr_fails_parked_accesses() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    let token = evs[0].u32(0);
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_MR, key).status, hw::STATUS_OK);
    assert_eq!(h.join().unwrap()["status"], "remote_access_error");
    assert_eq!(d.resume(token, 0).status, hw::STATUS_BAD_HANDLE);
}

#[test]
fn fault_timeout_and_late_resume() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}, "timeout_ms": 100}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    assert_eq!(h.join().unwrap()["status"], "timeout");
    // a late RESUME is accepted, and nothing is written
    d.map_pages(key, MR_IOVA, DATA, 1);
    assert_eq!(d.resume(evs[0].u32(0), 0).status, hw::STATUS_OK);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.ram.read(DATA, 8), vec![0; 8]);
}

#[test]
fn bus_master_clear_fences_dma() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 4096);
    d.map_pages(key, MR_IOVA, DATA, 1);
    d.set_bus_master(false);
    assert_ne!(d.rd(hw::REG_STATUS) & hw::STATUS_FENCED, 0);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 4, "length": 8}}),
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!h.is_finished(), "new accesses wait");
    assert_eq!(d.ram.read(DATA, 8), vec![0; 8]);
    d.set_bus_master(true);
    assert_eq!(h.join().unwrap()["status"], "success");
    assert_eq!(d.ram.read(DATA, 8), vec![4; 8]);
    // while fenced and never unfenced: the requester hears "fenced"
    d.set_bus_master(false);
    let r = inject(&td, json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 5, "length": 8}, "timeout_ms": 50})).join().unwrap();
    assert_eq!(r["status"], "fenced");
    assert_eq!(d.ram.read(DATA, 8), vec![4; 8]);
}

#[test]
fn dma_unmap_during_traffic() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 16 * 4096);
    d.map_pages(key, MR_IOVA, DATA, 16);
    let dev = td.dev.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let c = odp_rnic::control::Control::new(dev);
        let mut n = 0u32;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let r = c.handle_line(&json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": (n % 200) + 1, "length": 65536}}).to_string());
            assert_eq!(r["ok"], true);
            assert!(
                r["status"] == "success" || r["status"] == "remote_access_error",
                "{r}"
            );
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    d.client.dma_unmap(RAM_GPA, RAM_SIZE as u64).unwrap();
    // after the reply, the device touches none of it
    let snap = d.ram.read(DATA, 65536);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    assert_eq!(d.ram.read(DATA, 65536), snap);
    let v = td.ctl(json!({"op": "violations"}));
    assert!(v["count"].as_u64().unwrap() > 0);
    assert_eq!(v["violations"][0]["kind"], "unmapped");
    assert_eq!(v["violations"][0]["action"], "suppressed");
    assert_eq!(td.counter("dma_unmaps"), 1);
}

#[test]
fn reset_forgets_everything() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}}),
    );
    d.wait_event(hw::EVENT_PAGE_FAULT);
    d.invalidate(key, MR_IOVA, 4096, 9);
    assert!(d.wait_inv_ack(9, Duration::from_secs(5)));
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    assert_eq!(
        h.join().unwrap()["status"],
        "remote_access_error",
        "parked accesses fail"
    );
    assert_eq!(d.rd(hw::REG_STATUS), 0);
    assert_eq!(d.rd(hw::REG_INV_ACK), 0);
    assert_eq!(d.rd(hw::REG_CONTROL), 0);
    assert_eq!(d.rd(hw::REG_CMDQ_SIZE), 0);
    d.setup_queues();
    d.enable();
    assert_eq!(
        d.key_cmd(hw::CMD_QUERY_MR, key).status,
        hw::STATUS_BAD_HANDLE
    );
    // the event sequence restarts
    d.invalidate(0, 0, 1, 1);
    let evs = d.wait_event(hw::EVENT_INV_ACK);
    assert_eq!(evs[0].seq, 1);
    // vfio-user DEVICE_RESET does the same
    let pd = d.create_pd();
    let k2 = d.create_mr(pd, hw::MR_PINNED, 0, 4096);
    d.client.reset().unwrap();
    assert_eq!(d.rd(hw::REG_STATUS), 0);
    d.setup_queues();
    d.enable();
    assert_eq!(
        d.key_cmd(hw::CMD_QUERY_MR, k2).status,
        hw::STATUS_BAD_HANDLE
    );
    assert_eq!(td.counter("resets"), 2, "counters survive resets");
}

#[test]
fn disconnect_and_reconnect() {
    let td = TestDevice::start(true, FaultPlan::default());
    let ram = Arc::new(Ram::new());
    let mut d = Driver::connect(&td, ram.clone());
    d.set_bus_master(true);
    d.setup_queues();
    d.enable();
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 4096);
    d.map_pages(key, MR_IOVA, DATA, 1);
    drop(d);
    // the client is gone: its DMA maps with it
    let t = Instant::now();
    while td.counter("connections") < 1 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "remote_access_error", "fails, as a violation");
    assert_eq!(ram.read(DATA, 8), vec![0; 8]);
    assert_eq!(
        td.ctl(json!({"op": "violations"}))["violations"][0]["kind"],
        "unmapped"
    );
    // a fresh client: device state was kept
    let mut d = Driver::connect(&td, ram.clone());
    assert_ne!(d.rd(hw::REG_STATUS) & hw::STATUS_READY, 0);
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 2, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(ram.read(DATA, 8), vec![2; 8]);
    assert_eq!(d.rd(hw::REG_MAGIC), hw::MAGIC);
}

fn raw_header(id: u16, cmd: u16, size: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&cmd.to_le_bytes());
    h.extend_from_slice(&size.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn raw_version(s: &mut UnixStream, nul: bool) {
    let caps = br#"{"capabilities":{"max_msg_fds":1,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#;
    let mut m = raw_header(0, 1, (16 + 4 + caps.len() + usize::from(nul)) as u32);
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&1u16.to_le_bytes());
    m.extend_from_slice(caps);
    if nul {
        m.push(0);
    }
    s.write_all(&m).unwrap();
}

/// Sends REGION_READ/WRITE with arbitrary fields; returns the reply header.
fn raw_region(
    s: &mut UnixStream,
    cmd: u16,
    region: u32,
    offset: u64,
    count: u32,
    payload: &[u8],
) -> [u8; 16] {
    let mut m = raw_header(1, cmd, (32 + payload.len()) as u32);
    m.extend_from_slice(&offset.to_le_bytes());
    m.extend_from_slice(&region.to_le_bytes());
    m.extend_from_slice(&count.to_le_bytes());
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; size.saturating_sub(16)];
    s.read_exact(&mut rest).unwrap();
    h
}

fn is_error(h: &[u8; 16]) -> bool {
    u32::from_le_bytes(h[8..12].try_into().unwrap()) & (1 << 5) != 0
}

#[test]
fn hostile_client_never_takes_the_device_down() {
    let td = TestDevice::start(true, FaultPlan::default());
    {
        let mut s = UnixStream::connect(&td.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw_version(&mut s, true);
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let size = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; size - 16];
        s.read_exact(&mut rest).unwrap();
        // out-of-range offsets and counts are refused, not followed
        assert!(is_error(&raw_region(&mut s, 9, 0, u64::MAX - 1, 4, &[])));
        assert!(is_error(&raw_region(&mut s, 9, 0, 0xfffc, 8, &[])));
        assert!(is_error(&raw_region(&mut s, 9, 7, 4095, 2, &[])));
        assert!(is_error(&raw_region(&mut s, 9, 2, u64::MAX, 1, &[])));
        assert!(is_error(&raw_region(&mut s, 9, 5, 0, 4, &[])));
        assert!(is_error(&raw_region(&mut s, 9, 99, 0, 4, &[])));
        assert!(is_error(&raw_region(
            &mut s,
            10,
            0,
            u64::MAX - 3,
            4,
            &[1, 2, 3, 4]
        )));
        assert!(is_error(&raw_region(&mut s, 10, 7, 4094, 4, &[1, 2, 3, 4])));
        // misaligned or odd-sized register accesses: all-ones / ignored
        let h = raw_region(&mut s, 9, 0, 2, 4, &[]);
        assert!(!is_error(&h));
        assert!(!is_error(&raw_region(
            &mut s,
            10,
            0,
            hw::REG_CONTROL,
            2,
            &[2, 0]
        )));
        assert!(!is_error(&raw_region(&mut s, 10, 0, 1, 4, &[1, 2, 3, 4])));
        assert!(!is_error(&raw_region(
            &mut s,
            10,
            0,
            hw::REG_MAGIC,
            4,
            &[1, 2, 3, 4]
        )));
        // then a VERSION without its NUL (the crate panics on it)
        raw_version(&mut s, false);
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    }
    {
        // a message too small for its command
        let mut s = UnixStream::connect(&td.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&raw_header(0, 1, 8)).unwrap();
        let mut b = [0u8; 64];
        let _ = s.read(&mut b);
    }
    // the device is still here, and a real client works
    let mut d = Driver::up(&td);
    assert_eq!(d.rd(hw::REG_MAGIC), hw::MAGIC);
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
    assert!(td.counter("bad_register_writes") >= 3);
    assert!(td.counter("connection_errors") >= 1);
    // two-byte and unaligned reads through the crate's client
    let mut b = [0u8; 2];
    d.client.region_read(0, 0, &mut b).unwrap();
    assert_eq!(b, [0xff, 0xff]);
    let mut b = [0u8; 4];
    d.client.region_read(0, 1, &mut b).unwrap();
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn unmap_all_uses_the_linux_bit() {
    use odp_rnic::server::Backend;
    use std::os::fd::AsRawFd;
    use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};
    let td = TestDevice::start(true, FaultPlan::default());
    let ram = Arc::new(Ram::new());
    let mut d = Driver::connect(&td, ram.clone());
    d.set_bus_master(true);
    d.setup_queues();
    d.enable();
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 4096);
    d.map_pages(key, MR_IOVA, DATA, 1);
    let w = |td: &TestDevice, b: u8| {
        inject(
            td,
            json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": b, "length": 8}}),
        )
        .join()
        .unwrap()
    };
    assert_eq!(w(&td, 1)["status"], "success");
    assert_eq!(ram.read(DATA, 8), vec![1; 8]);
    // the crate's UNMAP_ALL (bit 2) is not the protocol's: bit 1 is
    let mut b = Backend::new(td.dev.clone());
    b.dma_unmap(DmaUnmapFlags::from_bits_retain(1 << 2), 0, 0)
        .unwrap();
    assert_eq!(w(&td, 2)["status"], "success");
    assert_eq!(ram.read(DATA, 8), vec![2; 8], "bit 2 is not UNMAP_ALL");
    b.dma_unmap(DmaUnmapFlags::from_bits_retain(1 << 1), 0, 0)
        .unwrap();
    assert_eq!(w(&td, 3)["status"], "remote_access_error");
    assert_eq!(ram.read(DATA, 8), vec![2; 8], "bit 1 unmapped everything");
    assert_eq!(
        td.ctl(json!({"op": "violations"}))["violations"][0]["kind"],
        "unmapped"
    );
    // a map without fd is accepted and never used
    b.dma_map(DmaMapFlags::READ_WRITE, 0, RAM_GPA, RAM_SIZE as u64, None)
        .unwrap();
    assert_eq!(td.counter("dma_maps_without_fd"), 1);
    let f = ram.file.try_clone().unwrap();
    let _ = f.as_raw_fd();
    b.dma_map(
        DmaMapFlags::READ_WRITE,
        0,
        RAM_GPA,
        RAM_SIZE as u64,
        Some(f),
    )
    .unwrap();
    assert_eq!(w(&td, 4)["status"], "success");
    assert_eq!(ram.read(DATA, 8), vec![4; 8]);
}

#[test]
fn fault_plan_delay_inv_ack() {
    let td = TestDevice::start(true, plan(&["delay_inv_ack=300,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    d.invalidate(key, MR_IOVA, 4096, 1);
    // a second invalidation is not delayed itself but waits behind the first
    d.invalidate(key, MR_IOVA, 4096, 2);
    assert!(d.wait_inv_ack(2, Duration::from_secs(10)));
    // the device's own clock says how late: not the test's, which a busy
    // host may stall
    let tr = td.ctl(json!({"op": "trace", "max": 100}));
    let at = |what: &str, seq: u64| {
        tr["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["what"] == what && e["detail"]["seq"] == seq)
            .and_then(|e| e["time_ns"].as_u64())
            .unwrap_or_else(|| panic!("no {what} {seq} in the trace: {tr}"))
    };
    for seq in [1, 2] {
        let late = at("inv_ack", seq) - at("invalidate", 1);
        assert!(
            late >= 300_000_000,
            "ack {seq} only {late} ns after the doorbell"
        );
    }
    let evs = d.wait_event(hw::EVENT_INV_ACK);
    let acks: Vec<u32> = evs
        .iter()
        .filter(|e| e.ty == hw::EVENT_INV_ACK)
        .map(|e| e.u32(0))
        .collect();
    assert_eq!(acks, vec![1, 2], "in submission order");
    assert_eq!(td.counter("inv_acks_delayed"), 1);
    // the vfio-user message loop was never blocked meanwhile
}

/// `delay_destroy_mr`: the key works until the DESTROY_MR completes, every
/// access meanwhile is counted, and invalidations are still honoured.
#[test]
fn fault_plan_delay_destroy_mr() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=8000,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 2);
    d.map_pages(key, MR_IOVA, DATA, 2);
    d.post_cmd(hw::CMD_DESTROY_MR, &key.to_le_bytes(), None);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    assert_eq!(td.counter("accesses_after_destroy"), 0);
    assert_eq!(write8(&td, key, MR_IOVA, 5)["status"], "success");
    assert_eq!(d.ram.read(DATA, 8), vec![5; 8]);
    assert_eq!(td.counter("accesses_after_destroy"), 1);
    d.invalidate(key, MR_IOVA, 4096, 1);
    assert!(
        d.wait_inv_ack(1, Duration::from_secs(5)),
        "acknowledged while pending"
    );
    let r = write8(&td, key, MR_IOVA, 6);
    assert_eq!(r["status"], "timeout", "{r}");
    assert_eq!(r["faults"], 1, "the invalidated page faults");
    assert_eq!(d.ram.read(DATA, 8), vec![5; 8]);
    assert_eq!(write8(&td, key, MR_IOVA + 4096, 7)["status"], "success");
    let len = d
        .wait_cmd_for(Duration::from_secs(30))
        .expect("DESTROY_MR completes");
    assert_eq!(d.cmd_resp(hw::CMD_DESTROY_MR, len).status, hw::STATUS_OK);
    let r = write8(&td, key, MR_IOVA + 4096, 8);
    assert_eq!(r["status"], "remote_access_error", "{r}");
    assert_eq!(d.ram.read(DATA + 4096, 8), vec![7; 8]);
    assert_eq!(td.counter("accesses_after_destroy"), 2);
    assert_eq!(td.counter("violations"), 0);
    // without the plan, DESTROY_MR completes at once
    let pd = d.create_pd();
    let key2 = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 4096);
    assert_eq!(d.key_cmd(hw::CMD_DESTROY_MR, key2).status, hw::STATUS_OK);
    assert_eq!(td.counter("destroys_delayed"), 1);
}

/// `delay_map_pages`: the translation is installed at once and the
/// completion comes late; an invalidation made after it is not undone by
/// the late completion ("Invalidation doorbell": commands before the
/// doorbell take effect before it).
#[test]
fn fault_plan_delay_map_pages() {
    let td = TestDevice::start(true, plan(&["delay_map_pages=2000,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    d.post_map_pages(key, 0, MR_IOVA, &e);
    assert!(wait_counter(&td, "map_pages_delayed", 1));
    assert_eq!(write8(&td, key, MR_IOVA, 3)["status"], "success");
    assert_eq!(d.ram.read(DATA, 8), vec![3; 8]);
    d.invalidate(key, MR_IOVA, 4096, 1);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    let len = d
        .wait_cmd_for(Duration::from_secs(30))
        .expect("MAP_PAGES completes");
    assert_eq!(d.cmd_resp(hw::CMD_MAP_PAGES, len).status, hw::STATUS_OK);
    let r = write8(&td, key, MR_IOVA, 4);
    assert_eq!(r["status"], "timeout", "no stale translation: {r}");
    assert_eq!(r["faults"], 1);
    assert_eq!(d.ram.read(DATA, 8), vec![3; 8]);
    assert_eq!(td.counter("violations"), 0);
}

#[test]
fn fault_plan_never_ack() {
    let td = TestDevice::start(true, plan(&["never_ack,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    d.invalidate(key, MR_IOVA, 4096, 1);
    assert!(!d.wait_inv_ack(1, Duration::from_millis(200)));
    assert_eq!(td.counter("inv_acks_withheld"), 1);
    // acknowledgements are in order: one after it would cover 1, so the
    // device acknowledges none until it is reset
    d.invalidate(key, MR_IOVA, 4096, 2);
    assert!(!d.wait_inv_ack(2, Duration::from_millis(200)));
    assert_eq!(d.rd(hw::REG_INV_ACK), 0);
    assert_eq!(td.counter("inv_acks_withheld"), 2);
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    d.setup_queues();
    d.enable();
    d.invalidate(0, 0, 1, 1);
    assert!(
        d.wait_inv_ack(1, Duration::from_secs(5)),
        "a reset ends the stall"
    );
}

#[test]
fn fault_plan_drop_and_dup_faults() {
    let td = TestDevice::start(true, plan(&["drop_fault,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let r = inject(&td, json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}, "timeout_ms": 150})).join().unwrap();
    assert_eq!(r["status"], "timeout");
    assert_eq!(r["faults"], 1);
    assert!(d.events().is_empty(), "no event was posted");
    assert_eq!(td.counter("page_faults_dropped"), 1);
    set_plan(&td, "dup_fault,count=1");
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 2, "length": 8}}),
    );
    let t = Instant::now();
    let mut faults = Vec::new();
    while faults.len() < 2 {
        faults.extend(
            d.events()
                .into_iter()
                .filter(|e| e.ty == hw::EVENT_PAGE_FAULT),
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(faults[0].data, faults[1].data, "same token, same range");
    assert_eq!(faults[1].seq, faults[0].seq + 1);
    d.map_pages(key, MR_IOVA, DATA, 1);
    assert_eq!(d.resume(faults[0].u32(0), 0).status, hw::STATUS_OK);
    assert_eq!(d.resume(faults[1].u32(0), 0).status, hw::STATUS_BAD_HANDLE);
    assert_eq!(h.join().unwrap()["status"], "success");
    assert_eq!(d.ram.read(DATA, 8), vec![2; 8]);
}

#[test]
fn fault_plan_fail_resume_and_fail_dma() {
    let td = TestDevice::start(true, plan(&["fail_resume,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let h = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    d.map_pages(key, MR_IOVA, DATA, 1);
    assert_eq!(d.resume(evs[0].u32(0), 0).status, hw::STATUS_INJECTED);
    assert_eq!(h.join().unwrap()["status"], "remote_access_error");
    assert_eq!(d.ram.read(DATA, 8), vec![0; 8]);
    set_plan(&td, "fail_dma,count=2");
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "remote_access_error");
    assert_eq!(d.ram.read(DATA, 8), vec![0; 8]);
    let pte = (RAM_GPA + DATA) | 3;
    assert_eq!(
        d.map_pages_raw(key, 0, MR_IOVA, &[pte]).status,
        hw::STATUS_DMA_ERROR
    );
    // spent: everything works again
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 3, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(td.counter("dma_errors"), 2);
    let plan = td.ctl(json!({"op": "fault_plan"}));
    assert_eq!(plan["plan"]["rules"][0]["fired"], 2);
    assert_eq!(plan["plan"]["rules"][0]["count"], 0);
}

#[test]
fn fault_plan_device_error_and_reset() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    set_plan(&td, "device_error,count=1");
    let rq = |d: &mut Driver| {
        let mut a = [0u8; 64];
        a[0] = hw::CMD_NOP as u8;
        d.ram.write(0x8000, &a);
        d.submit_chain(&[(RAM_GPA + 0x8000, 64, false), (RAM_GPA + 0x8100, 64, true)]);
    };
    rq(&mut d);
    let evs = d.wait_event(hw::EVENT_DEVICE_ERROR);
    assert_eq!(evs[0].u32(0), hw::FATAL_INJECTED);
    assert_eq!(
        d.rd(hw::REG_STATUS) & (hw::STATUS_FATAL | hw::STATUS_READY),
        hw::STATUS_FATAL
    );
    assert_eq!(d.rd(hw::REG_FATAL_CODE), hw::FATAL_INJECTED);
    // stopped: commands are not served
    d.wr(hw::REG_CMDQ_NOTIFY, 1);
    assert_eq!(d.wait_cmd_for(Duration::from_millis(100)), None);
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    d.setup_queues();
    d.enable();
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
    // a spontaneous reset: the device forgets its queues
    set_plan(&td, "reset,count=1");
    rq(&mut d);
    let t = Instant::now();
    while td.counter("resets") < 2 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.rd(hw::REG_STATUS), 0);
    d.setup_queues();
    d.enable();
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
}

#[test]
fn event_backlog_waits_for_buffers() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    // more acknowledgements than event buffers (16): the rest wait in order
    for seq in 1..=40u32 {
        d.invalidate(key, MR_IOVA, 4096, seq);
    }
    assert!(d.wait_inv_ack(40, Duration::from_secs(5)));
    let mut acks = Vec::new();
    let t = Instant::now();
    while acks.len() < 40 {
        acks.extend(
            d.events()
                .iter()
                .filter(|e| e.ty == hw::EVENT_INV_ACK)
                .map(|e| e.u32(0)),
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{acks:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(acks, (1..=40).collect::<Vec<u32>>());
}

/// Starts a thread that writes a changing pattern to `key` until stopped.
fn traffic(
    td: &TestDevice,
    key: u32,
    len: usize,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    let dev = td.dev.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let h = std::thread::spawn(move || {
        let c = odp_rnic::control::Control::new(dev);
        let mut n = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let r = c.handle_line(
                &json!({"op": "write", "rkey": key, "va": MR_IOVA, "timeout_ms": 20,
                    "pattern": {"byte": (n % 250) + 1, "length": len}})
                .to_string(),
            );
            assert_eq!(r["ok"], true, "{r}");
        }
        n
    });
    (stop, h)
}

#[test]
fn bus_master_clear_during_traffic_stops_dma_before_it_returns() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 16 * 4096);
    d.map_pages(key, MR_IOVA, DATA, 16);
    let (stop, h) = traffic(&td, key, 65536);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        d.set_bus_master(false);
        let snap = d.ram.read(DATA, 65536);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            d.ram.read(DATA, 65536),
            snap,
            "DMA after BME clear returned"
        );
        d.set_bus_master(true);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(h.join().unwrap() > 0);
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
}

#[test]
fn reset_during_traffic_stops_dma_before_it_returns() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 16 * 4096);
    d.map_pages(key, MR_IOVA, DATA, 16);
    let (stop, h) = traffic(&td, key, 65536);
    std::thread::sleep(Duration::from_millis(50));
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    let snap = d.ram.read(DATA, 65536);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.ram.read(DATA, 65536), snap, "DMA after reset returned");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(h.join().unwrap() > 0);
    // the key is gone, and the device comes back up
    let r = inject(
        &td,
        json!({"op": "write", "rkey": key, "va": MR_IOVA, "pattern": {"byte": 1, "length": 8}}),
    )
    .join()
    .unwrap();
    assert_eq!(r["status"], "remote_access_error");
    d.setup_queues();
    d.enable();
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
    assert_eq!(td.ctl(json!({"op": "violations"}))["count"], 0);
}

#[test]
fn bus_master_toggling_never_loses_or_repeats_a_command() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let mut pds = std::collections::HashSet::new();
    for i in 0..300u32 {
        // submit CREATE_PD by hand, then fence right behind the doorbell
        let mut req = [0u8; 64];
        req[0..2].copy_from_slice(&hw::CMD_CREATE_PD.to_le_bytes());
        req[4..8].copy_from_slice(&i.to_le_bytes());
        d.ram.write(0x8000, &req);
        d.ram.write(0x8100, &[0xee; 64]);
        d.submit_chain(&[(RAM_GPA + 0x8000, 64, false), (RAM_GPA + 0x8100, 64, true)]);
        if i % 3 != 2 {
            d.set_bus_master(false);
            d.set_bus_master(true);
        }
        assert_eq!(d.wait_cmd(), Some(64), "command {i}");
        let r = d.ram.read(0x8100, 64);
        assert_eq!(u16::from_le_bytes([r[2], r[3]]), hw::STATUS_OK);
        assert_eq!(u32::from_le_bytes(r[4..8].try_into().unwrap()), i);
        let pdn = u32::from_le_bytes(r[8..12].try_into().unwrap());
        assert!(pds.insert(pdn), "PD {pdn} handed out twice");
        // free it so the table never fills
        assert_eq!(d.key_cmd(hw::CMD_DESTROY_PD, pdn).status, hw::STATUS_OK);
        pds.remove(&pdn);
    }
    assert_eq!(td.counter("commands"), 600);
    // events survive toggling too
    for seq in 1..=100u32 {
        d.invalidate(0, 0, 1, seq);
        d.set_bus_master(false);
        d.set_bus_master(true);
    }
    assert!(d.wait_inv_ack(100, Duration::from_secs(5)));
    let mut acks = Vec::new();
    let t = Instant::now();
    while acks.len() < 100 {
        acks.extend(
            d.events()
                .iter()
                .filter(|e| e.ty == hw::EVENT_INV_ACK)
                .map(|e| e.u32(0)),
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{} acks", acks.len());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(acks, (1..=100).collect::<Vec<u32>>());
    eprintln!("fenced_waits {}", td.counter("fenced_waits"));
}

#[test]
fn bus_master_clear_in_the_middle_of_a_command_batch() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_IMPLICIT, 0, 0);
    let g = |o: u64| RAM_GPA + o;
    let mut used = d.ram.r16(0x3002);
    let mut avail = d.ram.r16(0x2002);
    let mut next_iova = 0u64;
    for round in 0..20u64 {
        // five MAP_PAGES of 512 entries each, descriptors 3i..3i+2
        for i in 0..5u64 {
            let req_off = 0x8000 + i * 0x200;
            let resp_off = req_off + 0x100;
            let data_off = 0x20000 + i * 0x1000;
            let mut req = [0u8; 64];
            req[0..2].copy_from_slice(&hw::CMD_MAP_PAGES.to_le_bytes());
            req[4..8].copy_from_slice(&((round * 8 + i) as u32).to_le_bytes());
            req[8..12].copy_from_slice(&key.to_le_bytes());
            req[16..24].copy_from_slice(&next_iova.to_le_bytes());
            req[24..28].copy_from_slice(&512u32.to_le_bytes());
            next_iova += 512 * 4096;
            d.ram.write(req_off, &req);
            d.ram.write(resp_off, &[0xee; 64]);
            let e: Vec<u8> = (0..512u64)
                .flat_map(|p| ((g(DATA) + (p % 16) * 4096) | 3).to_le_bytes())
                .collect();
            d.ram.write(data_off, &e);
            let chain = [
                (g(req_off), 64u32, 0u16),
                (g(data_off), 4096, 0),
                (g(resp_off), 64, 2),
            ];
            for (j, (a, l, w)) in chain.iter().enumerate() {
                let idx = i * 3 + j as u64;
                let dsc = 0x1000 + idx * 16;
                d.ram.w64(dsc, *a);
                d.ram.w32(dsc + 8, *l);
                d.ram.w16(dsc + 12, w | if j < 2 { 1 } else { 0 });
                d.ram.w16(dsc + 14, (idx + 1) as u16);
            }
            d.ram
                .w16(0x2004 + u64::from(avail % QSIZE) * 2, (i * 3) as u16);
            avail = avail.wrapping_add(1);
        }
        d.ram.w16(0x2002, avail);
        d.wr(hw::REG_CMDQ_NOTIFY, 1);
        std::thread::sleep(Duration::from_micros(200 * (round % 5)));
        d.set_bus_master(false);
        std::thread::sleep(Duration::from_millis(2));
        d.set_bus_master(true);
        let t = Instant::now();
        while d.ram.r16(0x3002) != avail {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "round {round}: commands lost"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        for i in 0..5u64 {
            let e = 0x3004 + u64::from(used % QSIZE) * 8;
            assert_eq!(d.ram.r32(e + 4), 64, "round {round}");
            used = used.wrapping_add(1);
            let r = d.ram.read(0x8100 + i * 0x200, 8);
            assert_eq!(
                u16::from_le_bytes([r[2], r[3]]),
                hw::STATUS_OK,
                "round {round} cmd {i}"
            );
        }
    }
    let m = td.ctl(json!({"op": "mr", "key": key}));
    assert_eq!(m["mapped_pages"], 20 * 5 * 512);
    eprintln!("fenced_waits {}", td.counter("fenced_waits"));
}

#[test]
fn injected_atomics() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let pd = d.create_pd();
    let plain = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 4096);
    d.map_pages(plain, MR_IOVA, DATA + 0x1000, 1);
    let atomic = d
        .create_mr_raw(
            pd,
            hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_ATOMIC,
            hw::MR_PINNED,
            MR_IOVA,
            4096,
        )
        .u32(0);
    d.map_pages(atomic, MR_IOVA, DATA + 0x2000, 1);
    d.ram.w64(DATA + 0x2008, 40);
    let op = |td: &TestDevice, v: Value| inject(td, v).join().unwrap();
    let r = op(
        &td,
        json!({"op": "fetch_add", "rkey": atomic, "va": MR_IOVA + 8, "add": 2}),
    );
    assert_eq!(r["status"], "success");
    assert_eq!(r["original"], 40);
    assert_eq!(d.ram.r64(DATA + 0x2008), 42);
    let r = op(
        &td,
        json!({"op": "cmp_swp", "rkey": atomic, "va": MR_IOVA + 8, "compare": 1, "swap": 7}),
    );
    assert_eq!(r["original"], 42);
    assert_eq!(d.ram.r64(DATA + 0x2008), 42, "no swap on mismatch");
    let r = op(
        &td,
        json!({"op": "cmp_swp", "rkey": atomic, "va": MR_IOVA + 8, "compare": 42, "swap": "0xffffffffffffffff"}),
    );
    assert_eq!(r["original"], 42);
    assert_eq!(d.ram.r64(DATA + 0x2008), u64::MAX);
    let r = op(
        &td,
        json!({"op": "fetch_add", "rkey": atomic, "va": MR_IOVA + 8, "add": 1}),
    );
    assert_eq!(r["original"], json!(u64::MAX));
    assert_eq!(d.ram.r64(DATA + 0x2008), 0, "wraps");
    // misaligned: invalid request; no REMOTE_ATOMIC: access error
    let r = op(
        &td,
        json!({"op": "fetch_add", "rkey": atomic, "va": MR_IOVA + 4, "add": 1}),
    );
    assert_eq!(r["status"], "remote_invalid_request");
    assert_eq!(r["original"], Value::Null);
    let r = op(
        &td,
        json!({"op": "fetch_add", "rkey": plain, "va": MR_IOVA, "add": 1}),
    );
    assert_eq!(r["status"], "remote_access_error");
    assert_eq!(
        td.ctl(json!({"op": "fetch_add", "rkey": atomic, "va": MR_IOVA}))["ok"],
        false
    );
    // an ODP MR with REMOTE_ATOMIC faults first
    let odp = d
        .create_mr_raw(
            pd,
            hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_ATOMIC,
            hw::MR_ODP,
            MR_IOVA,
            4096,
        )
        .u32(0);
    let _ = key;
    let h = inject(
        &td,
        json!({"op": "fetch_add", "rkey": odp, "va": MR_IOVA + 16, "add": 5}),
    );
    let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
    let f = evs.iter().find(|e| e.ty == hw::EVENT_PAGE_FAULT).unwrap();
    assert_eq!(f.u32(12), hw::FAULT_WRITE);
    d.map_pages(odp, MR_IOVA, DATA + 0x3000, 1);
    d.resume(f.u32(0), 0);
    let r = h.join().unwrap();
    assert_eq!(r["status"], "success");
    assert_eq!(r["faults"], 1);
    assert_eq!(r["original"], 0);
    assert_eq!(d.ram.r64(DATA + 0x3010), 5);
    // concurrent fetch_adds from many requesters are atomic
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let dev = td.dev.clone();
            std::thread::spawn(move || {
                let c = odp_rnic::control::Control::new(dev);
                for _ in 0..100 {
                    let r = c.handle_line(
                        &json!({"op": "fetch_add", "rkey": atomic, "va": MR_IOVA + 24, "add": 1})
                            .to_string(),
                    );
                    assert_eq!(r["status"], "success");
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(d.ram.r64(DATA + 0x2018), 800);
}
