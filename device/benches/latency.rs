// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Device-level latency and bandwidth, no VM: `cargo bench --bench latency`.
//! The driver side is the test driver (vfio_user::Client over the socket,
//! one synchronous round trip per register access, unlike QEMU's posted
//! writes), so figures are upper bounds for the device's share.
//!
//! Loopback RDMA WRITE and `memcpy` of the same size alternate, one of
//! each per round, so that whatever else loads the host weighs on both
//! alike; the ratio is the figure to compare between hosts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use odp_rnic::fault_plan::FaultPlan;
use odp_rnic::hw;
use odp_rnic::port::{InjectorPort, RemoteOp, RemoteOpKind, RemoteStatus};

const MR_IOVA: u64 = 0x7f00_0000_0000;

/// (median, p99) of a sample.
fn quantiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    (p(0.5), p(0.99))
}

fn stats(name: &str, v: Vec<Duration>) {
    let n = v.len();
    let (m, p99) = quantiles(v);
    println!(
        "{name:<46} n={n:<6} median {:>9.1} us   p99 {:>9.1} us",
        m.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn gbs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Busy-polls (yielding) until at least `n` CQEs arrived, all successes;
/// returns how many arrived.
fn spin_cq(d: &mut Driver, cq: &mut TCq, n: usize) -> usize {
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        for w in d.poll_cq(cq) {
            assert_eq!(w.status, hw::WC_SUCCESS, "{w:?}");
            got += 1;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{got} of {n} CQEs");
        std::thread::yield_now();
    }
    got
}

const WRITE_VA: u64 = 0x7e00_0000_0000;
/// RAM offsets of the WRITE source and destination (1 MiB each).
const SRC: u64 = DATA + (1 << 20);
const DST: u64 = DATA + (2 << 20);

/// RDMA WRITE from QP a to QP b over the loopback port, against a memcpy
/// of the same bytes between the same RAM ranges.
fn loopback_write_vs_memcpy(d: &mut Driver, pd: u32) {
    let key = d.create_mr(pd, hw::MR_PINNED, WRITE_VA, 512 * 4096);
    d.map_pages(key, WRITE_VA, SRC, 512);
    let mut cq_a = d.create_cq(64, 2, 1);
    let cq_b = d.create_cq(64, 3, 2);
    let mut a = d.create_qp(pd, &cq_a, &cq_a, hw::QPT_RC, 0, 1);
    let b = d.create_qp(pd, &cq_b, &cq_b, hw::QPT_RC, 0, 2);
    d.connect_rc(a.qpn, b.qpn, 7);
    d.connect_rc(b.qpn, a.qpn, 7);
    d.ram.write(SRC, &vec![0x5a; 1 << 20]);
    let wr = |size: usize| SendWr {
        wr_id: size as u64,
        opcode: hw::WR_RDMA_WRITE,
        flags: hw::WQE_F_SIGNALED,
        remote_addr: WRITE_VA + (1 << 20),
        rkey: key,
        sges: vec![(WRITE_VA, size as u32, key)],
        ..Default::default()
    };
    println!(
        "loopback RC RDMA WRITE (post -> CQE) vs memcpy (mean of 256 KiB of copies), alternating:"
    );
    for (size, rounds) in [(4096usize, 2000), (65536, 1000), (1 << 20, 200)] {
        let (mut dev, mut mc) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            d.post_send(&mut a, &wr(size));
            spin_cq(d, &mut cq_a, 1);
            dev.push(t.elapsed());
            // a 4 KiB copy is too short for one clock reading: time
            // enough copies for 256 KiB and take the mean of those
            let reps = ((256 << 10) / size).max(1);
            let t = Instant::now();
            for _ in 0..reps {
                d.ram.copy(SRC, DST, size);
                std::hint::black_box(&d.ram);
            }
            mc.push(t.elapsed() / reps as u32);
        }
        assert_eq!(d.ram.read(DST, size), d.ram.read(SRC, size));
        let ((dm, dp), (mm, mp)) = (quantiles(dev), quantiles(mc));
        println!(
            "  {:>7} B x{rounds:<5} WRITE median {:>8.1} us p99 {:>8.1} us ({:>6.2} GB/s)   \
             memcpy median {:>7.2} us p99 {:>7.2} us ({:>6.2} GB/s)   memcpy/WRITE {:>5.1}x",
            size,
            us(dm),
            us(dp),
            gbs(size, dm),
            us(mm),
            us(mp),
            gbs(size, mm),
            dm.as_secs_f64() / mm.as_secs_f64()
        );
    }
    // streaming: up to 8 WRITEs in flight (16-entry SQ), 64 MiB per size
    println!("loopback RC RDMA WRITE streamed (8 in flight) vs memcpy, 64 MiB each:");
    for size in [4096usize, 65536, 1 << 20] {
        let n = (64 << 20) / size;
        let t = Instant::now();
        let mut inflight = 0;
        for _ in 0..n {
            if inflight == 8 {
                inflight -= spin_cq(d, &mut cq_a, 1);
            }
            d.post_send(&mut a, &wr(size));
            inflight += 1;
        }
        spin_cq(d, &mut cq_a, inflight);
        let dev = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            d.ram.copy(SRC, DST, size);
            std::hint::black_box(&d.ram);
        }
        let mc = t.elapsed();
        println!(
            "  {:>7} B x{n:<5} WRITE {:>6.2} GB/s   memcpy {:>6.2} GB/s   memcpy/WRITE {:>5.1}x",
            size,
            gbs(n * size, dev),
            gbs(n * size, mc),
            dev.as_secs_f64() / mc.as_secs_f64()
        );
    }
}

fn write_op(key: u32, va: u64, data: Vec<u8>) -> RemoteOp {
    RemoteOp {
        src_qpn: hw::QPN_INJECTOR_FIRST,
        dst_qpn: None,
        rkey: key,
        va,
        kind: RemoteOpKind::Write(data),
    }
}

fn main() {
    let td = TestDevice::start(true, FaultPlan::default());
    let mut d = Driver::up(&td);
    let port = Arc::new(InjectorPort::default());
    let tx = td.dev.engine_tx.clone();

    // NOP command round trip
    let v: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            d.cmd(hw::CMD_NOP, &[], None);
            t.elapsed()
        })
        .collect();
    stats("command round trip (NOP)", v);

    // invalidation doorbell -> INV_ACK
    let pd = d.create_pd();
    let key = d.create_mr(pd, hw::MR_ODP, MR_IOVA, 256 * 4096);
    d.map_pages(key, MR_IOVA, DATA, 256);
    let mut seq = 0u32;
    let v: Vec<Duration> = (0..2000)
        .map(|i| {
            seq += 1;
            let t = Instant::now();
            d.invalidate(key, MR_IOVA + (i % 256) * 4096, 4096, seq);
            assert!(d.wait_inv_ack(seq, Duration::from_secs(5)));
            let e = t.elapsed();
            d.events();
            e
        })
        .collect();
    stats("invalidation round trip (doorbell -> INV_ACK)", v);

    // page fault -> event -> MAP_PAGES + RESUME -> access completes
    let mut svc = Vec::new();
    let mut total = Vec::new();
    for i in 0..500u64 {
        let page = i % 256;
        seq += 1;
        d.invalidate(key, MR_IOVA + page * 4096, 4096, seq);
        assert!(d.wait_inv_ack(seq, Duration::from_secs(5)));
        d.events();
        let (p, t2) = (port.clone(), tx.clone());
        let t = Instant::now();
        let h = std::thread::spawn(move || {
            let r = p.submit(
                &t2,
                write_op(key, MR_IOVA + page * 4096, vec![1; 64]),
                Duration::from_secs(5),
            );
            (r, Instant::now())
        });
        let evs = d.wait_event(hw::EVENT_PAGE_FAULT);
        let seen = Instant::now();
        let f = evs.iter().find(|e| e.ty == hw::EVENT_PAGE_FAULT).unwrap();
        d.map_pages(
            key,
            f.u64(16),
            DATA + (f.u64(16) - MR_IOVA),
            f.u64(24) / 4096,
        );
        d.resume(f.u32(0), 0);
        let (r, done) = h.join().unwrap();
        assert_eq!(r.status, RemoteStatus::Success);
        svc.push(done - seen);
        total.push(done - t);
    }
    stats("page fault: resume path (event seen -> done)", svc);
    stats("page fault: whole (inject -> done)", total);

    loopback_write_vs_memcpy(&mut d, pd);

    // injected RDMA WRITE (control-socket port, no QP of the guest's sends)
    let pk = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 256 * 4096);
    d.map_pages(pk, MR_IOVA, DATA, 256);
    println!("injected RDMA WRITE (wire injector -> pinned MR), 16 MiB each:");
    for size in [4096usize, 65536, 1 << 20] {
        let n = (16 << 20) / size;
        let data = vec![0x5au8; size];
        let t = Instant::now();
        for _ in 0..n {
            let r = port.submit(
                &tx,
                write_op(pk, MR_IOVA, data.clone()),
                Duration::from_secs(5),
            );
            assert_eq!(r.status, RemoteStatus::Success);
        }
        println!(
            "  {:>7} B x{n:<5} {:>6.2} GB/s",
            size,
            gbs(n * size, t.elapsed())
        );
    }
}
