// SPDX-License-Identifier: Apache-2.0 OR MIT
//! A held-back command (fault plan `delay_map_pages`) whose completion is
//! due while bus mastering is off, or the device is fatal, does not make
//! the engine thread spin. Its own test binary: the engine thread is found
//! by name, so no other device may start meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::*;
use odp_rnic::fault_plan::FaultPlan;
use odp_rnic::hw;

/// CPU time (ms) of every engine thread of this process, by thread id.
fn engine_cpu_ms() -> Vec<(u32, u64)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() != "odp-rnic-engine" {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        // fields after the name: state is 3rd overall, utime 14th, stime 15th
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let tid = e.file_name().to_string_lossy().parse().unwrap();
        v.push((tid, ticks * 1000 / hz));
    }
    v
}

static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts a device and finds its engine thread (tests of this file start
/// devices one at a time, so the new engine thread is this device's).
fn start_tracked(p: FaultPlan) -> (TestDevice, u32) {
    let _g = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let before: Vec<u32> = engine_cpu_ms().iter().map(|x| x.0).collect();
    let td = TestDevice::start(true, p);
    // the thread names itself once it runs
    let t = Instant::now();
    let new = loop {
        let new: Vec<u32> = engine_cpu_ms()
            .iter()
            .map(|x| x.0)
            .filter(|t| !before.contains(t))
            .collect();
        if !new.is_empty() || t.elapsed() > Duration::from_secs(2) {
            break new;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(new.len(), 1, "one new engine thread: {new:?}");
    (td, new[0])
}

/// CPU the engine thread `tid` used over `window`, in ms.
fn engine_busy_ms(tid: u32, window: Duration) -> u64 {
    let cpu = || {
        engine_cpu_ms()
            .iter()
            .find(|x| x.0 == tid)
            .map_or(0, |x| x.1)
    };
    let a = cpu();
    std::thread::sleep(window);
    cpu() - a
}

/// When the held-back MAP_PAGES falls due: long enough that the test
/// fences (or breaks) the device before it, even on a busy host.
const DUE_MS: u64 = 3000;

/// A device with a MAP_PAGES held back; the used index before it.
fn held_back_map(td: &TestDevice) -> (Driver, u16) {
    let (mut d, key) = odp_setup(td, hw::MR_ODP, 1);
    let e = [(RAM_GPA + DATA) | hw::PTE_READ | hw::PTE_WRITE];
    d.post_map_pages(key, 0, MR_IOVA, &e);
    assert!(wait_counter(td, "map_pages_delayed", 1));
    let used = d.ram.r16(CMDQ_USED + 2);
    (d, used)
}

/// A held-back completion that falls due while bus mastering is off makes
/// `next_wakeup` return a past instant forever: `finish_delayed` refuses to
/// run while fenced, so the engine loop spins with a zero timeout.
#[test]
fn held_back_completion_due_while_fenced_does_not_spin() {
    let (td, engine) = start_tracked(plan(&[&format!("delay_map_pages={DUE_MS},count=1")]));
    let (mut d, used) = held_back_map(&td);
    d.set_bus_master(false);
    let t = Instant::now();
    assert_eq!(used, d.ram.r16(CMDQ_USED + 2), "fenced before it was due");
    std::thread::sleep(Duration::from_millis(DUE_MS + 200).saturating_sub(t.elapsed()));
    let busy = engine_busy_ms(engine, Duration::from_secs(1));
    eprintln!("engine thread: {busy} ms in 1 s");
    d.set_bus_master(true);
    let len = d.wait_cmd().expect("completes once bus mastering is back");
    assert_eq!(d.cmd_resp(hw::CMD_MAP_PAGES, len).status, hw::STATUS_OK);
    let idle = engine_busy_ms(engine, Duration::from_secs(1));
    eprintln!("engine thread once it completed: {idle} ms in 1 s");
    assert!(
        busy < 50,
        "engine thread used {busy} ms of CPU in 1 s while fenced with a due completion"
    );
}

/// The same while the device is fatal (the guest broke the command ring):
/// the engine spins until someone resets the device, perhaps never.
#[test]
fn held_back_completion_due_while_fatal_does_not_spin() {
    let (td, engine) = start_tracked(plan(&[&format!("delay_map_pages={DUE_MS},count=1")]));
    let (mut d, used) = held_back_map(&td);
    let t = Instant::now();
    make_fatal(&mut d);
    assert_eq!(used, d.ram.r16(CMDQ_USED + 2), "fatal before it was due");
    std::thread::sleep(Duration::from_millis(DUE_MS + 200).saturating_sub(t.elapsed()));
    let busy = engine_busy_ms(engine, Duration::from_secs(1));
    eprintln!("engine thread: {busy} ms in 1 s");
    d.wr(hw::REG_CONTROL, hw::CONTROL_RESET);
    let idle = engine_busy_ms(engine, Duration::from_secs(1));
    eprintln!("engine thread after the reset: {idle} ms in 1 s");
    assert!(
        busy < 50,
        "engine thread used {busy} ms of CPU in 1 s while fatal with a due completion"
    );
}
