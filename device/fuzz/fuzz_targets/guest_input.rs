// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Everything a guest controls — registers, config space, ring indices,
//! descriptors, commands, translation tables — plus control requests, fed
//! to one device that lives for the whole run.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use odp_rnic::fuzz_harness::Harness;

static H: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    // a panic on any device thread is a crash
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |i| {
            prev(i);
            std::process::abort();
        }));
    });
    let h = H.get_or_init(|| Harness::new(true).expect("harness"));
    // every input starts from a reset device with valid queues
    let _ = h.dev.reg_write(odp_rnic::hw::REG_CONTROL, &odp_rnic::hw::CONTROL_RESET.to_le_bytes());
    h.run(&[3, 4]);
    // CQs and QPs to drive, most of the time
    if data.first().is_some_and(|b| b & 1 == 0) {
        let _ = h.setup_verbs();
    }
    h.run(data);
});
