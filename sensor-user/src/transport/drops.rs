//! Every loss the sensor knows about, as running totals since start.
//!
//! Shared (`Arc`) by the ring buffer reader, the pipeline and the uploader;
//! a snapshot goes into every batch so the collector sees losses even when
//! no event survives to tell about them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use proto::telemetry::v1::DropCounters;

#[derive(Debug, Default)]
pub struct DropTracker {
    kernel_ringbuf_full: AtomicU64,
    kernel_file_ringbuf_full: AtomicU64,
    kernel_net_ringbuf_full: AtomicU64,
    malformed_kernel_records: AtomicU64,
    userspace_queue_full: AtomicU64,
    userspace_batches_dropped: AtomicU64,
    userspace_events_dropped: AtomicU64,
}

impl DropTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The kernel keeps this count (per-CPU map); `hooks` sets the sum.
    /// Never moves backwards, so a stale read cannot undo a newer one.
    pub fn set_kernel_ringbuf_full(&self, total: u64) {
        self.kernel_ringbuf_full.fetch_max(total, Relaxed);
    }

    /// The file ring's share of [`Self::set_kernel_ringbuf_full`]'s total.
    pub fn set_kernel_file_ringbuf_full(&self, total: u64) {
        self.kernel_file_ringbuf_full.fetch_max(total, Relaxed);
    }

    /// As [`Self::set_kernel_ringbuf_full`], for the network ring.
    pub fn set_kernel_net_ringbuf_full(&self, total: u64) {
        self.kernel_net_ringbuf_full.fetch_max(total, Relaxed);
    }

    /// A ring buffer record that did not decode.
    pub fn add_malformed_kernel_records(&self, n: u64) {
        self.malformed_kernel_records.fetch_add(n, Relaxed);
    }

    /// Events refused because the enrichment queue was full (or closed).
    pub fn add_userspace_queue_full(&self, n: u64) {
        self.userspace_queue_full.fetch_add(n, Relaxed);
    }

    /// Sealed batches dropped before the collector acknowledged them.
    pub fn add_batches_dropped(&self, batches: u64, events: u64) {
        self.userspace_batches_dropped.fetch_add(batches, Relaxed);
        self.userspace_events_dropped.fetch_add(events, Relaxed);
    }

    pub fn snapshot(&self) -> DropCounters {
        DropCounters {
            kernel_ringbuf_full: self.kernel_ringbuf_full.load(Relaxed),
            userspace_queue_full: self.userspace_queue_full.load(Relaxed),
            userspace_batches_dropped: self.userspace_batches_dropped.load(Relaxed),
            userspace_events_dropped: self.userspace_events_dropped.load(Relaxed),
            malformed_kernel_records: self.malformed_kernel_records.load(Relaxed),
            kernel_file_ringbuf_full: self.kernel_file_ringbuf_full.load(Relaxed),
            kernel_net_ringbuf_full: self.kernel_net_ringbuf_full.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_and_snapshot() {
        let d = DropTracker::new();
        d.set_kernel_ringbuf_full(10);
        d.set_kernel_ringbuf_full(7);
        d.set_kernel_net_ringbuf_full(4);
        d.set_kernel_net_ringbuf_full(3);
        d.add_malformed_kernel_records(2);
        d.add_userspace_queue_full(3);
        d.add_userspace_queue_full(1);
        d.add_batches_dropped(2, 40);
        let s = d.snapshot();
        assert_eq!(
            s.kernel_ringbuf_full, 10,
            "a stale kernel total does not go back"
        );
        assert_eq!(s.malformed_kernel_records, 2);
        assert_eq!(s.kernel_net_ringbuf_full, 4);
        assert_eq!(s.userspace_queue_full, 4);
        assert_eq!(
            (s.userspace_batches_dropped, s.userspace_events_dropped),
            (2, 40)
        );
    }
}
