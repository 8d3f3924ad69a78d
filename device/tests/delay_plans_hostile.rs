// SPDX-License-Identifier: Apache-2.0 OR MIT
//! A hostile guest driver and control-socket user against the
//! `delay_map_pages` / `delay_destroy_mr` fault plans: what holds. A
//! held-back command is completed once, to the chain it came from, or
//! forgotten with its queue; a pending DESTROY_MR ends with a reset or a
//! disable; the held-back set is bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use odp_rnic::fault_plan::{FaultPlan, FaultSpec};
use odp_rnic::hw;
use serde_json::{json, Value};

const MR_IOVA: u64 = 0x7f00_0000_0000;
/// The harness's command ring (offsets in RAM).
const CMDQ_DESC: u64 = 0x1000;
const CMDQ_AVAIL: u64 = 0x2000;
const CMDQ_USED: u64 = 0x3000;

fn plan(specs: &[&str]) -> FaultPlan {
    let mut p = FaultPlan::default();
    for s in specs {
        p.add(s.parse::<FaultSpec>().unwrap().rule);
    }
    p
}

fn odp_setup(td: &TestDevice, pages: u64) -> (Driver, u32) {
    let mut d = Driver::up(td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_ODP, MR_IOVA, pages * 4096);
    (d, key)
}

fn wait_counter(td: &TestDevice, name: &str, n: u64) -> bool {
    let t = Instant::now();
    while td.counter(name) < n {
        if t.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn write8(td: &TestDevice, key: u32, va: u64, byte: u8) -> Value {
    inject(
        td,
        json!({"op": "write", "rkey": key, "va": va,
        "pattern": {"byte": byte, "length": 8}, "timeout_ms": 300}),
    )
    .join()
    .unwrap()
}

fn used_idx(d: &Driver) -> u16 {
    d.ram.r16(CMDQ_USED + 2)
}

/// Waits until the command used ring reaches `idx`; false on timeout.
fn wait_used(d: &Driver, idx: u16, timeout: Duration) -> bool {
    let t = Instant::now();
    while used_idx(d) != idx {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// A command chain at descriptors `head`, `head + 1` (request and
/// response in RAM at `buf`, `buf + 0x40`), made available and notified
/// behind the harness's back (its own commands use head 0). The response
/// buffer starts as 0xee bytes.
fn post_raw(d: &mut Driver, head: u16, buf: u64, opcode: u16, args: &[u8]) {
    let mut req = [0u8; 64];
    req[0..2].copy_from_slice(&opcode.to_le_bytes());
    req[4..8].copy_from_slice(&(0x1000 + u32::from(head)).to_le_bytes());
    req[8..8 + args.len()].copy_from_slice(args);
    d.ram.write(buf, &req);
    d.ram.write(buf + 0x40, &[0xee; 64]);
    for (i, (a, w)) in [(buf, 0u16), (buf + 0x40, 2)].iter().enumerate() {
        let desc = CMDQ_DESC + u64::from(head + i as u16) * 16;
        d.ram.w64(desc, RAM_GPA + a);
        d.ram.w32(desc + 8, 64);
        d.ram.w16(desc + 12, w | if i == 0 { 1 } else { 0 });
        d.ram.w16(desc + 14, head + 1);
    }
    let avail = d.ram.r16(CMDQ_AVAIL + 2);
    d.ram
        .w16(CMDQ_AVAIL + 4 + u64::from(avail % QSIZE) * 2, head);
    d.ram.w16(CMDQ_AVAIL + 2, avail.wrapping_add(1));
    d.wr(hw::REG_CMDQ_NOTIFY, 1);
}

/// `post_raw` of a command whose one argument is a key.
fn post_key_cmd(d: &mut Driver, head: u16, buf: u64, opcode: u16, key: u32) {
    post_raw(d, head, buf, opcode, &key.to_le_bytes());
}

/// The status in the response buffer of a `post_raw` at `buf`.
fn status_at(d: &Driver, buf: u64) -> u16 {
    d.ram.r16(buf + 0x42)
}

/// A disable while DESTROY_MR is pending ends the destruction at once (the
/// key is gone, the oracle no longer counts it as being destroyed) and
/// forgets the completion: the re-enabled queue never sees it.
#[test]
fn disable_ends_a_pending_destroy_and_forgets_its_completion() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=1500,count=1"]));
    let (mut d, key) = odp_setup(&td, 1);
    d.map_pages(key, MR_IOVA, DATA, 1);
    d.post_cmd(hw::CMD_DESTROY_MR, &key.to_le_bytes(), None);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    assert_eq!(write8(&td, key, MR_IOVA, 1)["status"], "success");
    assert_eq!(td.counter("accesses_after_destroy"), 1);
    d.wr(hw::REG_CONTROL, 0);
    let r = write8(&td, key, MR_IOVA, 2);
    assert_eq!(r["status"], "remote_access_error", "{r}");
    assert_eq!(td.counter("accesses_after_destroy"), 1);
    assert_eq!(d.ram.read(DATA, 8), vec![1; 8]);
    d.setup_queues();
    d.enable();
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(used_idx(&d), 0, "no completion on the new queue");
    let pd = d.create_pd();
    let k2 = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 4096);
    assert_ne!(k2, key);
    assert_eq!(
        d.key_cmd(hw::CMD_QUERY_MR, key).status,
        hw::STATUS_BAD_HANDLE
    );
    assert_eq!(td.counter("violations"), 0);
    assert_eq!(td.counter("engine_panics"), 0);
}

/// A reset while DESTROY_MR is pending, with bus mastering off when it
/// falls due: nothing of it survives into the new epoch.
#[test]
fn reset_ends_a_pending_destroy_even_when_fenced() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=300,count=1"]));
    let (mut d, key) = odp_setup(&td, 1);
    d.map_pages(key, MR_IOVA, DATA, 1);
    d.post_cmd(hw::CMD_DESTROY_MR, &key.to_le_bytes(), None);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    d.set_bus_master(false);
    std::thread::sleep(Duration::from_millis(500));
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    d.set_bus_master(true);
    d.setup_queues();
    d.enable();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(used_idx(&d), 0, "no completion after the reset");
    let r = write8(&td, key, MR_IOVA, 3);
    assert_eq!(r["status"], "remote_access_error", "{r}");
    assert_eq!(td.counter("accesses_after_destroy"), 0);
    let pd = d.create_pd();
    let k2 = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 4096);
    assert_ne!(k2, key);
    d.map_pages(k2, MR_IOVA, DATA, 1);
    assert_eq!(write8(&td, k2, MR_IOVA, 4)["status"], "success");
    assert_eq!(td.counter("violations"), 0);
    assert_eq!(td.counter("engine_panics"), 0);
}

/// Two DESTROY_MRs of one key, both held back: each completes once, to its
/// own response buffer, the first OK and the second BAD_HANDLE; a
/// CREATE_MR while they are pending cannot take the slot, and the MR it
/// made survives both.
#[test]
fn two_pending_destroys_of_one_key() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=800"]));
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 4096);
    let used = used_idx(&d);
    post_key_cmd(&mut d, 4, DATA + 0x20000, hw::CMD_DESTROY_MR, key);
    post_key_cmd(&mut d, 6, DATA + 0x20100, hw::CMD_DESTROY_MR, key);
    assert!(wait_counter(&td, "destroys_delayed", 2));
    let mut a = [0u8; 32];
    a[0..4].copy_from_slice(&pd.to_le_bytes());
    a[4..8].copy_from_slice(&(hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_WRITE).to_le_bytes());
    a[8] = hw::MR_ODP;
    a[9] = 12;
    a[16..24].copy_from_slice(&MR_IOVA.to_le_bytes());
    a[24..32].copy_from_slice(&4096u64.to_le_bytes());
    post_raw(&mut d, 8, DATA + 0x20200, hw::CMD_CREATE_MR, &a);
    assert!(wait_used(&d, used.wrapping_add(1), Duration::from_secs(5)));
    assert_eq!(status_at(&d, DATA + 0x20200), hw::STATUS_OK);
    let k2 = d.ram.r32(DATA + 0x20248);
    assert_ne!(k2 >> 8, key >> 8, "the slot is still taken");
    assert!(wait_used(&d, used.wrapping_add(3), Duration::from_secs(5)));
    assert_eq!(status_at(&d, DATA + 0x20000), hw::STATUS_OK);
    assert_eq!(status_at(&d, DATA + 0x20100), hw::STATUS_BAD_HANDLE);
    let heads: Vec<u32> = (0..3)
        .map(|i| {
            d.ram
                .r32(CMDQ_USED + 4 + u64::from(used.wrapping_add(i) % QSIZE) * 8)
        })
        .collect();
    assert_eq!(heads, vec![8, 4, 6]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(used_idx(&d), used.wrapping_add(3), "each completes once");
    assert_eq!(
        td.ctl(json!({"op": "mr", "key": k2}))["state"],
        "live",
        "the later MR is untouched"
    );
    assert_eq!(td.counter("engine_panics"), 0);
}

/// A guest makes the same descriptor head available again while its
/// command is held back: the device runs the second availability as a new
/// command and completes each availability once.
#[test]
fn same_head_available_twice_while_held_back() {
    let td = TestDevice::start(true, plan(&["delay_map_pages=500,count=1"]));
    let (mut d, key) = odp_setup(&td, 1);
    let used = used_idx(&d);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    d.post_map_pages(key, 0, MR_IOVA, &e); // head 0, held back
    assert!(wait_counter(&td, "map_pages_delayed", 1));
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK); // head 0 again
    assert_eq!(used_idx(&d), used.wrapping_add(1));
    assert!(wait_used(&d, used.wrapping_add(2), Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(used_idx(&d), used.wrapping_add(2));
    for i in 0..2u16 {
        let e = CMDQ_USED + 4 + u64::from(used.wrapping_add(i) % QSIZE) * 8;
        assert_eq!((d.ram.r32(e), d.ram.r32(e + 4)), (0, 64));
    }
    assert_eq!(d.rd(hw::REG_STATUS) & hw::STATUS_FATAL, 0);
    assert_eq!(td.counter("engine_panics"), 0);
}

/// At most 64 commands are held back; beyond that a delay plan does not
/// fire and commands complete at once. A reset forgets the held ones.
#[test]
fn held_back_commands_are_bounded() {
    let td = TestDevice::start(true, plan(&["delay_map_pages=60000"]));
    let (mut d, key) = odp_setup(&td, 1);
    let used = used_idx(&d);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    for i in 1..=64 {
        // one at a time: more than a ring's worth ahead of the device is
        // a broken ring
        d.post_map_pages(key, 0, MR_IOVA, &e);
        assert!(wait_counter(&td, "map_pages_delayed", i));
    }
    assert_eq!(used_idx(&d), used);
    let r = d.map_pages_raw(key, 0, MR_IOVA, &e);
    assert_eq!(r.status, hw::STATUS_OK);
    assert_eq!(used_idx(&d), used.wrapping_add(1));
    assert_eq!(td.counter("map_pages_delayed"), 64);
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    d.setup_queues();
    d.enable();
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
    assert_eq!(td.counter("engine_panics"), 0);
}

/// A control-socket user gives the largest delay there is: no overflow,
/// the command is simply held until a reset.
#[test]
fn largest_delay_from_the_control_socket() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, 1);
    let r = td.ctl(json!({"op": "fault_plan", "set": format!("delay_map_pages={}", u64::MAX)}));
    assert_eq!(r["ok"], true, "{r}");
    let r =
        td.ctl(json!({"op": "fault_plan", "add": {"kind": "delay_destroy_mr", "ms": u64::MAX}}));
    assert_eq!(r["ok"], true, "{r}");
    let used = used_idx(&d);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    d.post_map_pages(key, 0, MR_IOVA, &e);
    assert!(wait_counter(&td, "map_pages_delayed", 1));
    post_key_cmd(&mut d, 4, DATA + 0x20000, hw::CMD_DESTROY_MR, key);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(used_idx(&d), used);
    assert_eq!(write8(&td, key, MR_IOVA, 5)["status"], "success");
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    d.setup_queues();
    d.enable();
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK);
    assert_eq!(td.counter("engine_panics"), 0);
    assert_eq!(td.counter("violations"), 0);
}

/// Bus mastering off when a held-back completion falls due: it is written
/// once bus mastering is back, once; a pending DESTROY_MR's key stays
/// until then.
#[test]
fn due_while_fenced_completes_once_after() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=200,count=1"]));
    let (mut d, key) = odp_setup(&td, 1);
    d.map_pages(key, MR_IOVA, DATA, 1);
    let used = used_idx(&d);
    post_key_cmd(&mut d, 4, DATA + 0x20000, hw::CMD_DESTROY_MR, key);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    d.set_bus_master(false);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(td.ctl(json!({"op": "mr", "key": key}))["state"], "live");
    assert_eq!(used_idx(&d), used);
    d.set_bus_master(true);
    assert!(wait_used(&d, used.wrapping_add(1), Duration::from_secs(5)));
    assert_eq!(status_at(&d, DATA + 0x20000), hw::STATUS_OK);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(used_idx(&d), used.wrapping_add(1), "once");
    assert_eq!(
        write8(&td, key, MR_IOVA, 6)["status"],
        "remote_access_error"
    );
    assert_eq!(td.counter("violations"), 0);
}

/// `process_cmdq` from the invalidation path while the device is fatal
/// does nothing; the invalidation is still acknowledged.
#[test]
fn invalidation_while_fatal() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, 1);
    d.ram.w16(CMDQ_AVAIL + 2, 200);
    d.wr(hw::REG_CMDQ_NOTIFY, 1);
    let t = Instant::now();
    while d.rd(hw::REG_STATUS) & hw::STATUS_FATAL == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "not fatal");
        std::thread::sleep(Duration::from_millis(1));
    }
    d.invalidate(key, MR_IOVA, 4096, 1);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    assert_eq!(td.counter("engine_panics"), 0);
}
