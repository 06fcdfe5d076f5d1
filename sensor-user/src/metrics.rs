//! The sensor's Prometheus metrics (docs/metrics.md): what the daemon
//! already counts, gathered in one [`SensorMetrics`] and written in the
//! text format on `[metrics] listen`.
//!
//! Counted live, where they happen: kernel events by kind
//! ([`CountingSink`], before the pipeline) and rule hits ([`RuleHits`],
//! kept by the Sigma rule store and the `[[response]]` detector). The rest
//! (pipeline, spool, drops, isolation, policy) is a snapshot the daemon
//! publishes every 250 ms, so a figure is at most that old.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use proto::control::v1::IsolationStatus;
use rxsentry_metrics::{Kind, Text};

use crate::{
    events::KernelEvent, pipeline::PipelineStats, policy::manager::PolicyState, router::EventSink,
};

/// The kernel event kinds, as the `kind` label spells them.
const KINDS: [&str; 7] = [
    "exec", "fork", "exit", "policy", "file", "network", "tamper",
];

fn kind_index(event: &KernelEvent) -> usize {
    match event {
        KernelEvent::Exec(_) => 0,
        KernelEvent::Fork(_) => 1,
        KernelEvent::Exit(_) => 2,
        KernelEvent::Policy(_) => 3,
        KernelEvent::File(_) => 4,
        KernelEvent::Net(_) => 5,
        KernelEvent::Tamper(_) => 6,
    }
}

/// Hits per rule name, shared by whoever evaluates the rules (a mutex: a
/// hit is an alert or a response, rare next to events).
#[derive(Clone, Debug, Default)]
pub struct RuleHits(Arc<Mutex<BTreeMap<String, u64>>>);

impl RuleHits {
    pub fn hit(&self, rule: &str) {
        let mut hits = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match hits.get_mut(rule) {
            Some(n) => *n += 1,
            None => _ = hits.insert(rule.to_owned(), 1),
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counts each event by kind, then hands it to the pipeline.
pub struct CountingSink<S> {
    inner: S,
    metrics: Arc<SensorMetrics>,
}

impl<S> CountingSink<S> {
    pub fn new(inner: S, metrics: Arc<SensorMetrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: EventSink> EventSink for CountingSink<S> {
    fn deliver(&mut self, event: KernelEvent) {
        self.metrics.events[kind_index(&event)].fetch_add(1, Relaxed);
        self.inner.deliver(event);
    }
}

/// What the daemon publishes on its poll tick.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub pipeline: PipelineStats,
    /// Events the kernel sent with some fields unread (not lost).
    pub kernel_incomplete: u64,
    /// `None`: `[isolation] enabled = false`.
    pub isolation: Option<IsolationStatus>,
}

/// Everything `/metrics` shows. Shared (`Arc`) by the daemon's parts.
#[derive(Debug)]
pub struct SensorMetrics {
    host_id: String,
    started_unix_s: u64,
    events: [AtomicU64; KINDS.len()],
    /// (capability, backend, detail), fixed at start.
    backends: Mutex<Vec<(String, String, String)>>,
    policy: Mutex<Option<PolicyState>>,
    sigma: Mutex<Option<RuleHits>>,
    sequence: Mutex<Option<RuleHits>>,
    snapshot: Mutex<Snapshot>,
}

impl SensorMetrics {
    pub fn new(host_id: &str) -> Arc<Self> {
        Arc::new(Self {
            host_id: host_id.to_owned(),
            started_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            events: Default::default(),
            backends: Mutex::default(),
            policy: Mutex::default(),
            sigma: Mutex::default(),
            sequence: Mutex::default(),
            snapshot: Mutex::default(),
        })
    }

    /// The kernel mechanism chosen for `capability` (an info gauge): its
    /// name, and what the log says in brackets after it (why a preferred
    /// one was not available) as `detail`.
    pub fn set_backend(&self, capability: &str, backend: impl std::fmt::Display) {
        let text = backend.to_string();
        let (name, detail) = match text.split_once(" (") {
            Some((name, rest)) => (name, rest.strip_suffix(')').unwrap_or(rest)),
            None => (text.as_str(), ""),
        };
        let entry = (capability.to_owned(), name.to_owned(), detail.to_owned());
        lock(&self.backends).push(entry);
    }

    /// The allowlist's generation and reload outcomes.
    pub fn set_policy(&self, state: PolicyState) {
        *lock(&self.policy) = Some(state);
    }

    /// The Sigma rule store's hits.
    pub fn set_sigma_hits(&self, hits: RuleHits) {
        *lock(&self.sigma) = Some(hits);
    }

    /// The rule store's completed sequences (`[[response]]` rules are
    /// sequence rules).
    pub fn set_sequence_hits(&self, hits: RuleHits) {
        *lock(&self.sequence) = Some(hits);
    }

    pub fn publish(&self, snapshot: Snapshot) {
        *lock(&self.snapshot) = snapshot;
    }

    /// The page, in the text exposition format.
    pub fn render(&self) -> String {
        let s = lock(&self.snapshot).clone();
        let p = &s.pipeline;
        let d = &p.drops;
        let mut t = Text::new();
        t.family(
            "rxsentry_sensor_info",
            Kind::Gauge,
            "This sensor: version and host id (always 1).",
        )
        .sample(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("host_id", &self.host_id),
            ],
            1u64,
        );
        t.single(
            "rxsentry_sensor_start_time_seconds",
            Kind::Gauge,
            "When the daemon started, Unix seconds.",
            self.started_unix_s,
        );
        t.family(
            "rxsentry_sensor_events_total",
            Kind::Counter,
            "Kernel events read from the ring buffers, by kind.",
        );
        for (kind, n) in KINDS.iter().zip(&self.events) {
            t.sample(&[("kind", kind)], n.load(Relaxed));
        }
        t.single(
            "rxsentry_sensor_tamper_findings_total",
            Kind::Counter,
            "Someone else touched rxsentry's kernel objects (TamperEvents sent), all kinds.",
            crate::tamper::count(),
        );
        t.single(
            "rxsentry_sensor_events_enriched_total",
            Kind::Counter,
            "Events enriched and passed on to batching.",
            p.events_enriched,
        );
        let process_ring = d
            .kernel_ringbuf_full
            .saturating_sub(d.kernel_file_ringbuf_full + d.kernel_net_ringbuf_full);
        t.family(
            "rxsentry_sensor_kernel_drops_total",
            Kind::Counter,
            "Events the kernel lost because a ring buffer was full, by ring.",
        )
        .sample(&[("ring", "process")], process_ring)
        .sample(&[("ring", "file")], d.kernel_file_ringbuf_full)
        .sample(&[("ring", "network")], d.kernel_net_ringbuf_full);
        t.single(
            "rxsentry_sensor_kernel_incomplete_events_total",
            Kind::Counter,
            "Events the kernel sent with some fields it could not read (not lost).",
            s.kernel_incomplete,
        );
        t.family(
            "rxsentry_sensor_dropped_events_total",
            Kind::Counter,
            "Events lost in user space, by where: the enrichment queue, the \
             upload queue (dropped, refused or unsent at exit) or the full spool.",
        )
        .sample(&[("stage", "enrich_queue")], d.userspace_queue_full)
        .sample(&[("stage", "upload")], d.userspace_events_dropped)
        .sample(&[("stage", "spool_full")], d.spool_events_dropped);
        t.family(
            "rxsentry_sensor_dropped_batches_total",
            Kind::Counter,
            "Sealed batches lost before the collector acknowledged them, by where.",
        )
        .sample(&[("stage", "upload")], d.userspace_batches_dropped)
        .sample(&[("stage", "spool_full")], d.spool_batches_dropped);
        t.single(
            "rxsentry_sensor_malformed_kernel_records_total",
            Kind::Counter,
            "Ring buffer records that did not decode.",
            d.malformed_kernel_records,
        );
        t.single(
            "rxsentry_sensor_spool_corrupt_records_total",
            Kind::Counter,
            "Torn or corrupted spool records skipped.",
            d.spool_corrupt_records,
        );
        t.family(
            "rxsentry_sensor_batches_total",
            Kind::Counter,
            "Batches sealed, sent (resends included), resent after a reconnect, and acknowledged by the collector.",
        )
        .sample(&[("stage", "sealed")], p.batches_sealed)
        .sample(&[("stage", "sent")], p.batches_sent)
        .sample(&[("stage", "resent")], p.batches_resent)
        .sample(&[("stage", "acked")], p.batches_acked);
        t.single(
            "rxsentry_sensor_collector_connected",
            Kind::Gauge,
            "1 while the upload stream to the collector is up.",
            p.collector_connected,
        );
        t.single(
            "rxsentry_sensor_upload_queue_batches",
            Kind::Gauge,
            "Sealed batches waiting in memory to be sent.",
            p.upload_queue,
        );
        t.single(
            "rxsentry_sensor_inflight_batches",
            Kind::Gauge,
            "Batches sent and not yet acknowledged.",
            p.inflight,
        );
        t.single(
            "rxsentry_sensor_spool_batches",
            Kind::Gauge,
            "Batches in the disk spool, waiting for the collector's ack.",
            p.spool_batches,
        );
        t.single(
            "rxsentry_sensor_spool_bytes",
            Kind::Gauge,
            "Bytes of the disk spool.",
            p.spool_bytes,
        );
        t.single(
            "rxsentry_sensor_process_table_entries",
            Kind::Gauge,
            "Processes the enrichment table knows.",
            p.process_table_entries,
        );
        t.family(
            "rxsentry_sensor_backend_info",
            Kind::Gauge,
            "The kernel mechanism chosen for each capability at start (always 1).",
        );
        for (capability, backend, detail) in lock(&self.backends).iter() {
            let labels = [
                ("capability", capability.as_str()),
                ("backend", backend),
                ("detail", detail),
            ];
            t.sample(&labels, 1u64);
        }
        let policy = lock(&self.policy).clone();
        t.single(
            "rxsentry_sensor_policy_generation",
            Kind::Gauge,
            "Generation of the allowlist policy in force (0: no policy).",
            policy.as_ref().map_or(0, PolicyState::generation),
        );
        t.single(
            "rxsentry_sensor_policy_reloads_refused_total",
            Kind::Counter,
            "Policy reloads refused (the previous generation stayed in force).",
            policy.as_ref().map_or(0, PolicyState::refused),
        );
        let iso = s.isolation.as_ref();
        t.single(
            "rxsentry_sensor_isolation_enabled",
            Kind::Gauge,
            "1 when [isolation] is enabled on this sensor.",
            iso.is_some(),
        );
        t.single(
            "rxsentry_sensor_isolated",
            Kind::Gauge,
            "1 while this terminal is network-isolated.",
            iso.is_some_and(|i| i.isolated),
        );
        t.single(
            "rxsentry_sensor_isolation_interfaces",
            Kind::Gauge,
            "Interfaces the isolation programs are attached to.",
            iso.map_or(0, |i| i.interfaces.len()),
        );
        t.single(
            "rxsentry_sensor_isolation_changed_time_seconds",
            Kind::Gauge,
            "When the isolation state last changed, Unix seconds (0: never).",
            iso.map_or(0.0, |i| i.changed_at_unix_ms as f64 / 1000.0),
        );
        t.single(
            "rxsentry_sensor_detection_events_total",
            Kind::Counter,
            "Events the Sigma rules looked at.",
            p.detection_events,
        );
        t.single(
            "rxsentry_sensor_alerts_total",
            Kind::Counter,
            "Alerts the detection rules made.",
            p.alerts,
        );
        t.single(
            "rxsentry_sensor_sequences_dropped_total",
            Kind::Counter,
            "Partial sequences not started because their rule's table was full.",
            p.sequences_dropped,
        );
        t.single(
            "rxsentry_sensor_responses_refused_total",
            Kind::Counter,
            "Detection responses not run because the responder's queue was full.",
            p.responses_refused,
        );
        let y = &p.yara;
        for (name, help, value) in [
            ("scans", "Files the YARA rules scanned.", y.scanned),
            (
                "scanned_bytes",
                "Bytes the YARA rules scanned.",
                y.bytes_scanned,
            ),
            (
                "alerts",
                "Alerts the YARA rules made (one per matching rule).",
                y.matches,
            ),
            (
                "dropped",
                "YARA scans dropped: the scan queue was full.",
                y.dropped_queue_full,
            ),
            (
                "too_large",
                "Files not YARA-scanned: larger than detection.yara.max_file_bytes.",
                y.too_large,
            ),
            (
                "errors",
                "Files not YARA-scanned: gone, unreadable, replaced, or the scan failed.",
                y.errors,
            ),
        ] {
            t.single(
                &format!("rxsentry_sensor_yara_{name}_total"),
                Kind::Counter,
                help,
                value,
            );
        }
        t.family(
            "rxsentry_sensor_rule_hits_total",
            Kind::Counter,
            "Detection rule matches, by engine (sigma, sequence) and rule.",
        );
        if let Some(sigma) = lock(&self.sigma).as_ref() {
            for (rule, n) in sigma.snapshot() {
                t.sample(&[("engine", "sigma"), ("rule", &rule)], n);
            }
        }
        if let Some(sequence) = lock(&self.sequence).as_ref() {
            for (rule, n) in sequence.snapshot() {
                t.sample(&[("engine", "sequence"), ("rule", &rule)], n);
            }
        }
        t.finish()
    }

    /// Serves [`Self::render`] on `addr` (see [`rxsentry_metrics::listen`]:
    /// a failure to bind is logged and the sensor runs on without metrics).
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> Option<tokio::task::JoinHandle<()>> {
        let me = self.clone();
        rxsentry_metrics::listen(addr, move || me.render()).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl EventSink for Nothing {
        fn deliver(&mut self, _: KernelEvent) {}
    }

    #[test]
    fn the_page_has_every_family_and_escapes_rule_names() {
        let m = SensorMetrics::new("kiosk \"7\"");
        m.set_backend("exec_allowlist", "lsm");
        m.set_backend("file_open", "tracepoints (fexit unavailable: EPERM (1))");
        let sigma = RuleHits::default();
        sigma.hit("Shell \"spawned\" by\\POS");
        sigma.hit("Shell \"spawned\" by\\POS");
        m.set_sigma_hits(sigma);
        let sequence = RuleHits::default();
        sequence.hit("burst");
        m.set_sequence_hits(sequence);
        let mut sink = CountingSink::new(Nothing, m.clone());
        sink.deliver(KernelEvent::Exit(crate::events::ExitRecord {
            timestamp_ns: 1,
            task: Default::default(),
            status: 0,
            partial: false,
        }));
        m.publish(Snapshot {
            isolation: Some(IsolationStatus {
                isolated: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let page = m.render();
        let s = rxsentry_metrics::parse(&page).unwrap();
        assert_eq!(
            s.get("rxsentry_sensor_info", &[("host_id", "kiosk \"7\"")]),
            Some(1.0)
        );
        assert_eq!(
            s.get("rxsentry_sensor_events_total", &[("kind", "exit")]),
            Some(1.0)
        );
        assert_eq!(s.sum("rxsentry_sensor_events_total"), 1.0);
        assert_eq!(
            s.get(
                "rxsentry_sensor_rule_hits_total",
                &[("engine", "sigma"), ("rule", "Shell \"spawned\" by\\POS")]
            ),
            Some(2.0)
        );
        assert!(
            page.contains(r#"rule="Shell \"spawned\" by\\POS""#),
            "{page}"
        );
        assert_eq!(
            s.get("rxsentry_sensor_rule_hits_total", &[("engine", "sequence")]),
            Some(1.0)
        );
        assert_eq!(s.get("rxsentry_sensor_isolated", &[]), Some(1.0));
        assert_eq!(s.get("rxsentry_sensor_policy_generation", &[]), Some(0.0));
        assert_eq!(
            s.get(
                "rxsentry_sensor_backend_info",
                &[("capability", "exec_allowlist"), ("backend", "lsm")]
            ),
            Some(1.0)
        );
        assert_eq!(
            s.get(
                "rxsentry_sensor_backend_info",
                &[
                    ("backend", "tracepoints"),
                    ("detail", "fexit unavailable: EPERM (1)")
                ]
            ),
            Some(1.0)
        );
    }
}
