// SPDX-License-Identifier: Apache-2.0 OR MIT
//! Device counters: cumulative since the process started (resets do not
//! clear them), read through the control socket op `counters`.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:expr])* $name:ident,)*) => {
        /// Every counter the device keeps; each is a relaxed atomic.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            /// All counters as (name, value), in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    /// Commands taken from the command queue.
    commands,
    /// Commands that completed with a status other than OK.
    command_errors,
    /// Events posted to the event queue.
    events,
    /// Events dropped because the backlog overflowed.
    events_lost,
    /// Page faults raised (one per parked access attempt).
    page_faults,
    /// Page-fault events not posted because a fault plan dropped them.
    page_faults_dropped,
    /// Page-fault events posted twice because a fault plan duplicated them.
    page_faults_duplicated,
    /// RESUME commands answered.
    resumes,
    /// RESUME commands with a non-zero status (the access failed).
    resume_errors,
    /// Invalidation doorbell submissions.
    invalidations,
    /// Invalidations acknowledged.
    inv_acks,
    /// Invalidations a fault plan never acknowledged.
    inv_acks_withheld,
    /// Invalidations a fault plan delayed.
    inv_acks_delayed,
    /// MAP_PAGES completions a fault plan delayed (executed at once).
    map_pages_delayed,
    /// DESTROY_MR commands a fault plan left pending.
    destroys_delayed,
    /// Accesses through a key after its DESTROY_MR began (only a pending
    /// DESTROY_MR leaves such a window).
    accesses_after_destroy,
    /// Invalidations of an unknown key or a range outside the MR.
    bad_invalidations,
    /// Invalidations a rogue fault plan ignored (translations kept).
    invalidations_ignored,
    /// MRs revoked by an invalidation.
    revocations,
    /// DMA oracle violations.
    violations,
    /// Remote operations injected through the control socket.
    injected_ops,
    /// Injected operations that did not complete successfully.
    injected_op_errors,
    /// Bytes the data engine read from guest memory through MRs.
    dma_bytes_read,
    /// Bytes the data engine wrote to guest memory through MRs.
    dma_bytes_written,
    /// DMA accesses that failed (unmapped, fenced, or injected failure).
    dma_errors,
    /// Ring work put back to wait because bus mastering was cleared.
    fenced_waits,
    /// DMA_MAP messages with a file descriptor.
    dma_maps,
    /// DMA_MAP messages without a file descriptor (ignored).
    dma_maps_without_fd,
    /// DMA_UNMAP messages.
    dma_unmaps,
    /// Writes to read-only or unknown registers, or malformed accesses.
    bad_register_writes,
    /// Malformed region reads (bad offset, size or alignment).
    bad_register_reads,
    /// Interrupts signalled.
    interrupts,
    /// Send WQEs taken from send queues.
    wqes,
    /// CQEs written.
    cqes,
    /// QPs moved to ERR by an error.
    qp_errors,
    /// Doorbells through the wrong page, or naming no object.
    bad_doorbells,
    /// CQ arms that signalled at once: completions were waiting unconsumed.
    cq_arms_fired_at_once,
    /// Times a requester waited for a receive buffer (receiver not ready).
    rnr_waits,
    /// UD/GSI datagrams dropped at the receiver.
    datagrams_dropped,
    /// Device resets (register, vfio-user or fault plan).
    resets,
    /// Times the device entered STATUS_FATAL.
    fatal_errors,
    /// Engine panics (a device bug), each recovered by a reset.
    engine_panics,
    /// vfio-user client connections accepted.
    connections,
    /// vfio-user connections that ended with a protocol error or panic.
    connection_errors,
    /// Control socket requests served.
    control_requests,
    /// Control socket requests that got an error reply.
    control_errors,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_and_values() {
        let c = Counters::default();
        Counters::inc(&c.commands);
        Counters::add(&c.dma_bytes_read, 10);
        let s = c.snapshot();
        assert!(s.contains(&("commands", 1)));
        assert!(s.contains(&("dma_bytes_read", 10)));
    }
}
