// SPDX-License-Identifier: Apache-2.0 OR MIT
//! A hostile guest driver and control-socket user against the
//! `delay_map_pages` / `delay_destroy_mr` fault plans: what holds. A
//! held-back command is completed once, to the chain it came from, or
//! forgotten with its queue; a pending DESTROY_MR ends with a reset or a
//! disable; the held-back set is bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use odp_rnic::fault_plan::FaultPlan;
use odp_rnic::hw;
use serde_json::json;

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
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=8000,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
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
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
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

/// Two DESTROY_MRs of one key, the first held back: the second is BUSY at
/// once (only the pending one ends the key); a CREATE_MR while the first is
/// pending cannot take the slot, and the MR it made survives; each command
/// completes once, to its own head and response buffer.
#[test]
fn two_pending_destroys_of_one_key() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=5000"]));
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 4096);
    let used = used_idx(&d);
    post_key_cmd(&mut d, 4, DATA + 0x20000, hw::CMD_DESTROY_MR, key);
    post_key_cmd(&mut d, 6, DATA + 0x20100, hw::CMD_DESTROY_MR, key);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    let mut a = [0u8; 32];
    a[0..4].copy_from_slice(&pd.to_le_bytes());
    a[4..8].copy_from_slice(&(hw::ACCESS_LOCAL_WRITE | hw::ACCESS_REMOTE_WRITE).to_le_bytes());
    a[8] = hw::MR_ODP;
    a[9] = 12;
    a[16..24].copy_from_slice(&MR_IOVA.to_le_bytes());
    a[24..32].copy_from_slice(&4096u64.to_le_bytes());
    post_raw(&mut d, 8, DATA + 0x20200, hw::CMD_CREATE_MR, &a);
    assert!(wait_used(&d, used.wrapping_add(2), Duration::from_secs(5)));
    assert_eq!(status_at(&d, DATA + 0x20100), hw::STATUS_BUSY);
    assert_eq!(status_at(&d, DATA + 0x20200), hw::STATUS_OK);
    let k2 = d.ram.r32(DATA + 0x20248);
    assert_ne!(k2 >> 8, key >> 8, "the slot is still taken");
    assert!(wait_used(&d, used.wrapping_add(3), Duration::from_secs(20)));
    assert_eq!(status_at(&d, DATA + 0x20000), hw::STATUS_OK);
    let heads: Vec<u32> = (0..3)
        .map(|i| {
            d.ram
                .r32(CMDQ_USED + 4 + u64::from(used.wrapping_add(i) % QSIZE) * 8)
        })
        .collect();
    assert_eq!(heads, vec![6, 8, 4]);
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
    let td = TestDevice::start(true, plan(&["delay_map_pages=3000,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let used = used_idx(&d);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    d.post_map_pages(key, 0, MR_IOVA, &e); // head 0, held back
    assert!(wait_counter(&td, "map_pages_delayed", 1));
    assert_eq!(d.cmd(hw::CMD_NOP, &[], None).status, hw::STATUS_OK); // head 0 again
    assert_eq!(used_idx(&d), used.wrapping_add(1));
    assert!(wait_used(&d, used.wrapping_add(2), Duration::from_secs(20)));
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
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
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
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
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
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=2000,count=1"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    d.map_pages(key, MR_IOVA, DATA, 1);
    let used = used_idx(&d);
    post_key_cmd(&mut d, 4, DATA + 0x20000, hw::CMD_DESTROY_MR, key);
    assert!(wait_counter(&td, "destroys_delayed", 1));
    d.set_bus_master(false);
    std::thread::sleep(Duration::from_millis(2500));
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
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    make_fatal(&mut d);
    d.invalidate(key, MR_IOVA, 4096, 1);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    assert_eq!(td.counter("engine_panics"), 0);
}

/// Bus mastering off: the device reads no command, so an invalidation
/// rung meanwhile acts before a MAP_PAGES made available before it; that
/// MAP_PAGES runs when bus mastering returns ("Invalidation doorbell":
/// the promise holds while bus mastering is on, and a driver that turns it
/// on again without a reset invalidates again).
#[test]
fn invalidation_while_fenced_is_acknowledged_and_map_runs_later() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    d.set_bus_master(false);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    d.post_map_pages(key, 0, MR_IOVA, &e);
    d.invalidate(key, MR_IOVA, 4096, 1);
    d.set_bus_master(true);
    let len = d.wait_cmd().expect("MAP_PAGES completes");
    assert_eq!(d.cmd_resp(hw::CMD_MAP_PAGES, len).status, hw::STATUS_OK);
    assert!(d.wait_inv_ack(1, Duration::from_secs(5)));
    d.invalidate(key, MR_IOVA, 4096, 2);
    assert!(d.wait_inv_ack(2, Duration::from_secs(5)));
    let r = write8(&td, key, MR_IOVA, 9);
    assert_eq!(r["status"], "timeout", "invalidated again: {r}");
    assert_eq!(td.counter("violations"), 0);
}

/// The command fault plans (`reset` here) wait for a command: the
/// invalidation path, which runs the commands made available before its
/// doorbell, does not give them their chance. The invalidation is
/// acknowledged in its own epoch; the reset comes at the next command and
/// clears `INV_ACK`, and no acknowledgement crosses into the new epoch.
#[test]
fn reset_plan_waits_for_a_command_not_an_invalidation() {
    let td = TestDevice::start(true, FaultPlan::default());
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 1);
    let resets = td.counter("resets");
    set_plan(&td, "reset,count=1");
    d.invalidate(key, MR_IOVA, 4096, 57);
    assert!(d.wait_inv_ack(57, Duration::from_secs(5)));
    assert_eq!(td.counter("resets"), resets, "not at the invalidation");
    d.post_cmd(hw::CMD_NOP, &[], None);
    assert!(wait_counter(&td, "resets", resets + 1));
    assert_eq!(d.rd(hw::REG_INV_ACK), 0, "cleared by the reset");
    d.setup_queues();
    d.enable();
    std::thread::sleep(Duration::from_millis(100));
    let stale: Vec<u32> = d
        .events()
        .iter()
        .filter(|e| e.ty == hw::EVENT_INV_ACK)
        .map(|e| e.u32(0))
        .collect();
    assert!(stale.is_empty(), "old-epoch acknowledgements {stale:?}");
}

/// DESTROY_MR of a key that does not exist uses up `delay_destroy_mr`
/// (the rule's `fired` counts it) without delaying anything: the next real
/// DESTROY_MR is not delayed.
#[test]
fn delay_destroy_plan_is_not_used_up_by_a_bad_key() {
    let td = TestDevice::start(true, plan(&["delay_destroy_mr=500,count=1"]));
    let mut d = Driver::up(&td);
    let pd = d.create_pd();
    let k = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 4096);
    assert_eq!(
        d.key_cmd(hw::CMD_DESTROY_MR, 0x00ab_cd01).status,
        hw::STATUS_BAD_HANDLE
    );
    d.post_cmd(hw::CMD_DESTROY_MR, &k.to_le_bytes(), None);
    let len = d.wait_cmd_for(Duration::from_secs(5)).expect("completes");
    assert_eq!(d.cmd_resp(hw::CMD_DESTROY_MR, len).status, hw::STATUS_OK);
    let p = td.ctl(json!({"op": "fault_plan"}));
    assert_eq!(
        td.counter("destroys_delayed"),
        1,
        "the real DESTROY_MR was not delayed; plan {p}"
    );
}

/// Builds a MAP_PAGES chain at descriptors `head..head + 3` (request,
/// table, response in RAM at `buf`) without making it available.
fn map_pages_chain(d: &Driver, head: u16, buf: u64, key: u32, iova: u64, gpa: u64) {
    let mut req = [0u8; 64];
    req[0..2].copy_from_slice(&hw::CMD_MAP_PAGES.to_le_bytes());
    req[4..8].copy_from_slice(&(0x1000 + u32::from(head)).to_le_bytes());
    req[8..12].copy_from_slice(&key.to_le_bytes());
    req[16..24].copy_from_slice(&iova.to_le_bytes());
    req[24..28].copy_from_slice(&1u32.to_le_bytes());
    d.ram.write(buf, &req);
    d.ram.w64(buf + 0x40, gpa | hw::PTE_READ | hw::PTE_WRITE);
    d.ram.write(buf + 0x80, &[0xee; 64]);
    let bufs = [(buf, 64u32, 0u16), (buf + 0x40, 8, 0), (buf + 0x80, 64, 2)];
    for (i, (a, len, w)) in bufs.iter().enumerate() {
        let desc = CMDQ_DESC + u64::from(head + i as u16) * 16;
        d.ram.w64(desc, RAM_GPA + a);
        d.ram.w32(desc + 8, *len);
        d.ram.w16(desc + 12, w | if i < 2 { 1 } else { 0 });
        d.ram.w16(desc + 14, head + i as u16 + 1);
    }
}

/// `finish_delayed` trusts the engine's `fenced` flag, which lags the DMA
/// fence (set by the vfio-user thread before it sends `BusMaster(false)`).
/// While messages queued before that one are handled, each tick's
/// `finish_delayed` tries a due held-back completion, the DMA write is
/// refused, and `complete` parks it in the one-slot `pending_cmd`: the
/// second such completion overwrites the first, which is never posted.
#[test]
fn held_back_completions_survive_a_fence_behind_queued_messages() {
    let td = TestDevice::start(true, plan(&["delay_map_pages=2000"]));
    let (mut d, key) = odp_setup(&td, hw::MR_ODP, 2);
    let avail = d.ram.r16(CMDQ_AVAIL + 2);
    let used = d.ram.r16(CMDQ_USED + 2);
    map_pages_chain(&d, 0, DATA + 0x10000, key, MR_IOVA, RAM_GPA + DATA);
    map_pages_chain(
        &d,
        3,
        DATA + 0x10100,
        key,
        MR_IOVA + 4096,
        RAM_GPA + DATA + 4096,
    );
    d.ram.w16(CMDQ_AVAIL + 4 + u64::from(avail % QSIZE) * 2, 0);
    d.ram.w16(
        CMDQ_AVAIL + 4 + u64::from(avail.wrapping_add(1) % QSIZE) * 2,
        3,
    );
    d.ram.w16(CMDQ_AVAIL + 2, avail.wrapping_add(2));
    d.wr(hw::REG_CMDQ_NOTIFY, 1);
    assert!(wait_counter(&td, "map_pages_delayed", 2));
    let t = Instant::now();
    // a burst of messages (control-socket wake-ups here; doorbells, remote
    // operations or fault-plan changes alike) is queued when the driver
    // clears bus mastering, just before the held-back completions fall due
    while t.elapsed() < Duration::from_millis(1700) {
        for _ in 0..1000 {
            let _ = td.dev.engine_tx.send(odp_rnic::engine::EngineMsg::Wake);
        }
    }
    d.set_bus_master(false);
    let fenced_at = t.elapsed();
    let early = d.ram.r16(CMDQ_USED + 2).wrapping_sub(used);
    let q0 = Instant::now();
    let _ = td.ctl(json!({"op": "mr", "key": key}));
    let drained = q0.elapsed();
    d.set_bus_master(true);
    let t = Instant::now();
    while d.ram.r16(CMDQ_USED + 2) != used.wrapping_add(2) && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = d.ram.r16(CMDQ_USED + 2).wrapping_sub(used);
    let responses: Vec<u16> = [DATA + 0x10080, DATA + 0x10180]
        .iter()
        .map(|a| d.ram.r16(*a + 2))
        .collect();
    assert_eq!(
        got,
        2,
        "{got} of 2 held-back MAP_PAGES completed ({early} before the fence at \
         {fenced_at:?}, queued messages drained {drained:?} later; fenced_waits \
         {}; response statuses {responses:x?}, 0xeeee = never written)",
        td.counter("fenced_waits")
    );
}
