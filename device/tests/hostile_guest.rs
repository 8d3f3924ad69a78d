// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Random guest input (registers, rings, commands, translation entries,
//! control requests) never panics the device or kills its engine: a
//! deterministic stand-in for the fuzz targets, run by `cargo test`.

use odp_rnic::fuzz_harness::Harness;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn random_guest_input_never_panics() {
    let mut seed = 0x0dd0_b0a7_u64;
    for round in 0..60 {
        let h = Harness::new(round % 3 != 0).unwrap();
        // start from a valid setup half of the time so commands run
        let mut input: Vec<u8> = if round % 2 == 0 { vec![3, 4] } else { vec![] };
        for _ in 0..400 {
            let r = xorshift(&mut seed);
            // bias towards ops with small arguments so rings get hit
            input.extend_from_slice(&r.to_le_bytes()[..(r % 8) as usize + 1]);
            if r.is_multiple_of(5) {
                input.push(4);
            }
        }
        h.run(&input);
    }
}

#[test]
fn structured_commands_with_random_arguments() {
    // a valid ring with one three-descriptor chain whose contents are random
    let mut seed = 42u64;
    let h = Harness::new(true).unwrap();
    h.run(&[3, 4]);
    for i in 0..300u16 {
        let mut input = Vec::new();
        // descriptor 0..2 at RAM offset 0, chain 0 -> 1 -> 2
        let descs: [(u64, u32, u16, u16); 3] = [
            (0x1000_8000, 64, 1, 1),
            (0x1000_9000, (xorshift(&mut seed) % 8192) as u32, 1, 2),
            (0x1000_8100, 64, 2, 0),
        ];
        for (i, (a, l, f, n)) in descs.iter().enumerate() {
            let mut d = Vec::new();
            d.extend_from_slice(&a.to_le_bytes());
            d.extend_from_slice(&l.to_le_bytes());
            d.extend_from_slice(&f.to_le_bytes());
            d.extend_from_slice(&n.to_le_bytes());
            input.push(2);
            input.extend_from_slice(&((i * 16) as u32).to_le_bytes());
            input.push(16);
            input.extend_from_slice(&d);
        }
        // random request with a plausible opcode
        let mut req = [0u8; 64];
        for c in req.chunks_mut(8) {
            c.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
        }
        let ops = [0x00u8, 0x01, 0x02, 0x10, 0x11, 0x12, 0x13, 0x14];
        req[0] = ops[(xorshift(&mut seed) % 8) as usize];
        req[1] = 0;
        input.push(2);
        input.extend_from_slice(&0x8000u32.to_le_bytes());
        input.push(64);
        input.extend_from_slice(&req);
        // random table entries
        let mut tbl = Vec::new();
        for _ in 0..16 {
            tbl.extend_from_slice(
                &((0x1000_0000 + (xorshift(&mut seed) % 0x10_0000)) | 3).to_le_bytes(),
            );
        }
        input.push(2);
        input.extend_from_slice(&0x9000u32.to_le_bytes());
        input.push(128);
        input.extend_from_slice(&tbl);
        // publish: avail ring entry 0 = head 0, advance idx by one
        let idx = i + 1;
        input.push(2);
        input.extend_from_slice(&0x1002u32.to_le_bytes());
        input.push(2);
        input.extend_from_slice(&idx.to_le_bytes());
        input.push(4);
        h.run(&input);
    }
    let c = h.dev.shared.counters.snapshot();
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).unwrap();
    assert!(get("commands") > 0, "{c:?}");
    eprintln!("{c:?}");
}

#[test]
fn random_work_requests_never_panic() {
    let mut seed = 7u64;
    let h = Harness::new(true).unwrap();
    h.run(&[3, 4]);
    h.setup_verbs().expect("verbs setup");
    for round in 0..200u32 {
        let mut input = Vec::new();
        for _ in 0..8 {
            let r = xorshift(&mut seed);
            // mostly send WQEs with plausible opcodes, keys and lengths
            let op = [10u8, 10, 10, 11, 11, 12, 13][(r % 7) as usize];
            input.push(op);
            if op >= 12 {
                // doorbell (offset, value) or RESUME (token, status)
                let v = xorshift(&mut seed);
                let v = if op == 12 {
                    v & 0xffff_000c_0000_0fff
                } else {
                    v & 0xff_0000_00ff
                };
                input.extend_from_slice(&v.to_le_bytes());
                continue;
            }
            input.push((r >> 8) as u8);
            input.push((r >> 16) as u8);
            let mut w = [0u8; 128];
            for c in w.chunks_mut(8) {
                c.copy_from_slice(&xorshift(&mut seed).to_le_bytes());
            }
            w[8] %= 8;
            w[9] &= 0x0f;
            w[10] %= 5;
            // keys: the pinned MR (index 0) or the ODP MR (index 1), gen 1
            let keys = [0x001u32, 0x101, 0, 0x201];
            for s in 0..4 {
                let o = 64 + s * 16;
                let k = keys[(xorshift(&mut seed) % 4) as usize];
                w[o + 12..o + 16].copy_from_slice(&k.to_le_bytes());
                let base = if k == 0x101 { 0x100000 } else { 0x10000 };
                let va = base + xorshift(&mut seed) % 0x48000;
                w[o..o + 8].copy_from_slice(&va.to_le_bytes());
                let len = (xorshift(&mut seed) % 9000) as u32;
                w[o + 8..o + 12].copy_from_slice(&len.to_le_bytes());
            }
            let rk = keys[(r % 4) as usize];
            w[24..28].copy_from_slice(&rk.to_le_bytes());
            let base = if rk == 0x101 { 0x100000 } else { 0x10000 };
            let ra = base + xorshift(&mut seed) % 0x48000;
            w[16..24].copy_from_slice(&ra.to_le_bytes());
            input.extend_from_slice(&w);
        }
        h.run(&input);
        if round % 4 == 3 {
            // rings get wedged by random input: start over sometimes
            h.run(&[0, 0x10, 0, 2, 0, 0, 0, 3, 4]);
            h.setup_verbs();
        }
    }
    let c = h.dev.shared.counters.snapshot();
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).unwrap();
    assert!(get("wqes") > 100, "{c:?}");
    eprintln!("{c:?}");
}
