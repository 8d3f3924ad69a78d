// SPDX-License-Identifier: Apache-2.0 OR MIT
//! `--fault-plan` spec strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use odp_rnic::fault_plan::{FaultKind, FaultPlan, FaultSpec};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(spec) = s.parse::<FaultSpec>() {
        let mut p = FaultPlan::default();
        p.seed(spec.seed.unwrap_or(1));
        let kind = spec.rule.kind;
        p.add(spec.rule);
        for _ in 0..4 {
            let _ = p.fire(kind);
        }
        let _ = p.fire(FaultKind::Reset);
    }
});
