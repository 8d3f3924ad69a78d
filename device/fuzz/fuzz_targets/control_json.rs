// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Control-socket request lines.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use odp_rnic::control::Control;
use odp_rnic::fuzz_harness::Harness;

static H: OnceLock<(Harness, Control)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (h, c) = H.get_or_init(|| {
        let h = Harness::new(true).expect("harness");
        let c = Control::new(h.dev.clone());
        (h, c)
    });
    let line = String::from_utf8_lossy(data);
    let reply = c.handle_line(&line);
    assert!(reply.get("ok").is_some());
    // keep fault plans from accumulating across inputs
    c.handle_line(r#"{"op":"fault_plan","clear":true}"#);
    let _ = h;
});
