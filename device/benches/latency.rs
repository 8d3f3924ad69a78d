// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Device-level latency and bandwidth, no VM: `cargo bench --bench latency`.
//! The driver side is the test driver (vfio_user::Client over the socket,
//! one synchronous round trip per register access, unlike QEMU's posted
//! writes), so figures are upper bounds for the device's share.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use odp_rnic::fault_plan::FaultPlan;
use odp_rnic::hw;
use odp_rnic::port::{InjectorPort, RemoteOp, RemoteOpKind, RemoteStatus};

const MR_IOVA: u64 = 0x7f00_0000_0000;

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:<44} n={:<6} median {:>9.1} us   p99 {:>9.1} us",
        v.len(),
        p(0.5).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6
    );
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

    // injected RDMA WRITE into a pinned MR vs memcpy
    let pk = d.create_mr(pd, hw::MR_PINNED, MR_IOVA, 256 * 4096);
    d.map_pages(pk, MR_IOVA, DATA, 256);
    for size in [4096usize, 65536, 1 << 20] {
        let n = (64 << 20) / size;
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
        let dev = t.elapsed();
        let mut dst = vec![0u8; size];
        let t = Instant::now();
        for i in 0..n {
            dst.copy_from_slice(&data);
            std::hint::black_box(&mut dst);
            std::hint::black_box(i);
        }
        let mc = t.elapsed();
        let gbs = |d: Duration| (n * size) as f64 / d.as_secs_f64() / 1e9;
        println!(
            "injected WRITE {:>8} B: {:>7.2} GB/s   memcpy {:>7.2} GB/s",
            size,
            gbs(dev),
            gbs(mc)
        );
    }
}
