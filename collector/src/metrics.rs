//! The collector's Prometheus metrics (docs/metrics.md): [`render`] writes
//! [`Collector::stats`] and the store's totals in the text format;
//! `rxsentry-collector --metrics-listen` serves them ([`serve`]).

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use rxsentry_metrics::{Kind, Text};

use crate::{Collector, HostStats};

/// A host with no batch for this long counts as silent when there is no
/// store to say so (the store's own default `silent_after`).
const SILENT_WITHOUT_STORE: Duration = Duration::from_secs(90);

/// The page at `now`.
pub fn render(collector: &Collector, now: SystemTime) -> String {
    let stats = collector.stats();
    let mut t = Text::new();
    t.family(
        "rxsentry_collector_info",
        Kind::Gauge,
        "This collector's version (always 1).",
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
    type Field = fn(&HostStats) -> u64;
    let per_host: [(&str, &str, Field); 7] = [
        (
            "rxsentry_collector_batches_received_total",
            "New batches accepted from each host (duplicates not included).",
            |h| h.batches,
        ),
        (
            "rxsentry_collector_events_received_total",
            "Events in those batches, by host.",
            |h| h.events,
        ),
        (
            "rxsentry_collector_bytes_received_total",
            "Compressed payload bytes of every valid batch, duplicates included, by host.",
            |h| h.bytes_received,
        ),
        (
            "rxsentry_collector_duplicate_batches_total",
            "Batches that arrived again and were dropped, by host.",
            |h| h.duplicates,
        ),
        (
            "rxsentry_collector_missing_batches_total",
            "Batches the sequence gaps covered (lost between sensor and collector), by host.",
            |h| h.missing_batches,
        ),
        (
            "rxsentry_collector_sensor_restarts_total",
            "Sensor instance changes seen, by host.",
            |h| h.restarts,
        ),
        (
            "rxsentry_collector_sensor_reported_drops_total",
            "Events the host's current sensor reports lost (kernel ring full, \
             enrichment queue, upload and spool), by host.",
            |h| {
                let d = &h.drops;
                d.kernel_ringbuf_full
                    + d.userspace_queue_full
                    + d.userspace_events_dropped
                    + d.spool_events_dropped
            },
        ),
    ];
    for (name, help, field) in per_host {
        t.family(name, Kind::Counter, help);
        for (host, h) in &stats.hosts {
            t.sample(&[("host", host)], field(h));
        }
    }
    t.single(
        "rxsentry_collector_rejected_batches_total",
        Kind::Counter,
        "Batches refused by the ingest checks (limits, malformed, zstd bombs).",
        stats.rejected_batches,
    );
    t.single(
        "rxsentry_collector_identity_refusals_total",
        Kind::Counter,
        "Calls and messages refused for who sent them (certificate missing, \
         revoked, expired, or naming another host).",
        stats.identity_refusals,
    );
    t.single(
        "rxsentry_collector_publish_streams",
        Kind::Gauge,
        "Open sensor upload streams.",
        stats.publish_streams,
    );
    t.single(
        "rxsentry_collector_subscribers",
        Kind::Gauge,
        "Open subscriptions (rxsentry tail and others).",
        stats.subscribers,
    );
    let (hosts, silent) = match collector.store_counters() {
        Some(c) => (
            c.hosts.load(std::sync::atomic::Ordering::Relaxed),
            c.hosts_silent.load(std::sync::atomic::Ordering::Relaxed),
        ),
        None => {
            let quiet = |h: &&HostStats| {
                h.last_seen.is_none_or(|seen| {
                    now.duration_since(seen).unwrap_or_default() >= SILENT_WITHOUT_STORE
                })
            };
            let silent = stats.hosts.values().filter(quiet).count() as u64;
            (stats.hosts.len() as u64, silent)
        }
    };
    t.family(
        "rxsentry_collector_hosts",
        Kind::Gauge,
        "Hosts by state: live, or silent (no batch for --silent-after).",
    )
    .sample(&[("state", "live")], hosts.saturating_sub(silent))
    .sample(&[("state", "silent")], silent);
    if let Some(c) = collector.store_counters() {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        t.single(
            "rxsentry_collector_store_batches_committed_total",
            Kind::Counter,
            "Batches durably committed to the store (then acked).",
            load(&c.batches),
        );
        t.single(
            "rxsentry_collector_store_commit_failures_total",
            Kind::Counter,
            "Store transactions that failed (their batches refused; sensors resend).",
            load(&c.commit_failures),
        );
        t.family(
            "rxsentry_collector_store_commit_seconds",
            Kind::Summary,
            "Time to commit one transaction of batches.",
        )
        .sample_suffixed("_sum", &[], load(&c.commit_nanos) as f64 / 1e9)
        .sample_suffixed("_count", &[], load(&c.commits));
    }
    t.finish()
}

/// Serves [`render`] on `addr` until the task is aborted (see
/// [`rxsentry_metrics::listen`]: a failure to bind is logged, not fatal).
pub async fn serve(collector: Collector, addr: SocketAddr) -> Option<tokio::task::JoinHandle<()>> {
    rxsentry_metrics::listen(addr, move || render(&collector, SystemTime::now())).await
}
