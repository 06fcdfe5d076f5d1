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
    kernel_exec_ringbuf_full: AtomicU64,
    /// Files left out of the identity map: by the kernel (map full when a
    /// file was created) and by the last scan.
    kernel_file_identity_full: AtomicU64,
    scan_identity_overflow: AtomicU64,
    malformed_kernel_records: AtomicU64,
    userspace_queue_full: AtomicU64,
    userspace_batches_dropped: AtomicU64,
    userspace_events_dropped: AtomicU64,
    /// The spool's persisted loss totals (docs/durability.md), set whole
    /// by the spool whenever they change.
    spool: std::sync::Mutex<SpoolLosses>,
}

/// What the disk spool lost since its directory was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolLosses {
    /// Batches the full spool dropped, oldest first, unacknowledged.
    pub batches_dropped: u64,
    pub events_dropped: u64,
    /// UTC ns when the first / last dropped batch was sealed (0: none).
    pub dropped_first_sealed_unix_ns: u64,
    pub dropped_last_sealed_unix_ns: u64,
    /// Torn or corrupted records skipped, and their bytes.
    pub corrupt_records: u64,
    pub corrupt_bytes: u64,
}

impl SpoolLosses {
    /// Counts one dropped batch sealed at `sealed_unix_ns`.
    pub fn add_dropped(&mut self, events: u64, sealed_unix_ns: u64) {
        self.batches_dropped += 1;
        self.events_dropped += events;
        if self.dropped_first_sealed_unix_ns == 0
            || sealed_unix_ns < self.dropped_first_sealed_unix_ns
        {
            self.dropped_first_sealed_unix_ns = sealed_unix_ns;
        }
        self.dropped_last_sealed_unix_ns = self.dropped_last_sealed_unix_ns.max(sealed_unix_ns);
    }
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

    /// The execs among the process ring's part of
    /// [`Self::set_kernel_ringbuf_full`]'s total.
    pub fn set_kernel_exec_ringbuf_full(&self, total: u64) {
        self.kernel_exec_ringbuf_full.fetch_max(total, Relaxed);
    }

    /// Kernel total of created files the full identity map refused.
    pub fn set_kernel_file_identity_full(&self, total: u64) {
        self.kernel_file_identity_full.fetch_max(total, Relaxed);
    }

    /// Files the last identity scan of the watched trees could not add.
    pub fn set_scan_identity_overflow(&self, files: u64) {
        self.scan_identity_overflow.store(files, Relaxed);
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

    /// The spool's totals, which it persists and so may start above zero.
    pub fn set_spool_losses(&self, losses: SpoolLosses) {
        *self.spool.lock().unwrap_or_else(|p| p.into_inner()) = losses;
    }

    pub fn spool_losses(&self) -> SpoolLosses {
        *self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> DropCounters {
        let spool = self.spool_losses();
        DropCounters {
            spool_batches_dropped: spool.batches_dropped,
            spool_events_dropped: spool.events_dropped,
            spool_dropped_first_sealed_unix_ns: spool.dropped_first_sealed_unix_ns,
            spool_dropped_last_sealed_unix_ns: spool.dropped_last_sealed_unix_ns,
            spool_corrupt_records: spool.corrupt_records,
            spool_corrupt_bytes: spool.corrupt_bytes,
            kernel_ringbuf_full: self.kernel_ringbuf_full.load(Relaxed),
            userspace_queue_full: self.userspace_queue_full.load(Relaxed),
            userspace_batches_dropped: self.userspace_batches_dropped.load(Relaxed),
            userspace_events_dropped: self.userspace_events_dropped.load(Relaxed),
            malformed_kernel_records: self.malformed_kernel_records.load(Relaxed),
            kernel_file_ringbuf_full: self.kernel_file_ringbuf_full.load(Relaxed),
            kernel_net_ringbuf_full: self.kernel_net_ringbuf_full.load(Relaxed),
            kernel_exec_ringbuf_full: self.kernel_exec_ringbuf_full.load(Relaxed),
            file_identity_overflow: self.kernel_file_identity_full.load(Relaxed)
                + self.scan_identity_overflow.load(Relaxed),
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
        d.set_kernel_exec_ringbuf_full(5);
        d.set_kernel_exec_ringbuf_full(2);
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
        assert_eq!(s.kernel_exec_ringbuf_full, 5);
        assert_eq!(s.userspace_queue_full, 4);
        assert_eq!(
            (s.userspace_batches_dropped, s.userspace_events_dropped),
            (2, 40)
        );
    }
}
