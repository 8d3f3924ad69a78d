// SPDX-License-Identifier: Apache-2.0 OR MIT
//! One command chain with arbitrary request, data buffer and ring
//! index on a device with valid queues: the command parser and executor.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use odp_rnic::fuzz_harness::{Harness, RAM_GPA};
use odp_rnic::hw;

static H: OnceLock<Harness> = OnceLock::new();

fn ram(input: &mut Vec<u8>, off: u32, b: &[u8]) {
    for (i, c) in b.chunks(255).enumerate() {
        input.push(2);
        input.extend_from_slice(&(off + (i * 255) as u32).to_le_bytes());
        input.push(c.len() as u8);
        input.extend_from_slice(c);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 72 {
        return;
    }
    let h = H.get_or_init(|| Harness::new(true).expect("harness"));
    let _ = h.dev.reg_write(hw::REG_CONTROL, &hw::CONTROL_RESET.to_le_bytes());
    let mut input = vec![3, 4];
    let (head, rest) = data.split_at(8);
    let data_len = u32::from(u16::from_le_bytes([head[0], head[1]]));
    let mut descs = Vec::new();
    for (i, (addr, len, flags, next)) in [
        (RAM_GPA + 0x8000, 64u32, 1u16, 1u16),
        (RAM_GPA + 0x9000, data_len, 1, 2),
        (RAM_GPA + 0x8100, 64, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = i;
        descs.extend_from_slice(&addr.to_le_bytes());
        descs.extend_from_slice(&len.to_le_bytes());
        descs.extend_from_slice(&flags.to_le_bytes());
        descs.extend_from_slice(&next.to_le_bytes());
    }
    ram(&mut input, 0, &descs);
    ram(&mut input, 0x8000, &rest[..64]);
    ram(&mut input, 0x9000, &rest[64..]);
    // avail: ring[0] = head[2] % 4, idx = head[3..5]
    ram(&mut input, 0x1004, &[head[2] % 4, 0]);
    ram(&mut input, 0x1002, &head[3..5]);
    input.push(4);
    h.run(&input);
});
