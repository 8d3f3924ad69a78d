// SPDX-License-Identifier: Apache-2.0 OR MIT
//! A bounded ring of recent device events, read through the control socket
//! op `trace`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many events the trace keeps.
pub const TRACE_CAPACITY: usize = 4096;

/// One traced event.
#[derive(Clone, Debug, Serialize)]
pub struct TraceEvent {
    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Short machine-readable event name, e.g. `page_fault`.
    pub what: &'static str,
    /// Event details.
    pub detail: serde_json::Value,
}

/// The trace ring.
#[derive(Debug, Default)]
pub struct Trace {
    ring: Mutex<VecDeque<TraceEvent>>,
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Trace {
    /// Records an event, dropping the oldest when full.
    pub fn record(&self, what: &'static str, detail: serde_json::Value) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= TRACE_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(TraceEvent {
            time_ns: now_ns(),
            what,
            detail,
        });
    }

    /// The most recent `max` events, oldest first.
    pub fn recent(&self, max: usize) -> Vec<TraceEvent> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let skip = ring.len().saturating_sub(max);
        ring.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let t = Trace::default();
        for i in 0..(TRACE_CAPACITY + 10) {
            t.record("x", serde_json::json!(i));
        }
        let r = t.recent(2);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].detail, serde_json::json!(TRACE_CAPACITY + 9));
        assert_eq!(t.recent(usize::MAX).len(), TRACE_CAPACITY);
    }
}
