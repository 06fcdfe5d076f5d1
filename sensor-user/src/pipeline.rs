//! The userspace pipeline: ring buffer reader -> enrichment -> batcher ->
//! uploader.
//!
//! ```text
//! EventSender::push (never blocks; full = counted drop)
//!   -> bounded queue (pipeline.event_queue_capacity)
//!   -> "rxsentry-enrich" thread: process table, file hashes (blocking I/O),
//!      UTC wall time of each event (`clock`; the offset read per run),
//!      prost encoding (each event once), runs of encoded events
//!   -> batcher task (tokio timers): seal by count or age, zstd
//!   -> upload queue (drop-oldest, counted) -> gRPC uploader task
//! ```
//!
//! Seeding the process table from /proc happens first on the enrichment
//! thread. Attach the kernel hooks before calling [`spawn`] (events wait in
//! the ring buffer meanwhile): then every process is either in the /proc
//! scan or in a later event.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use detect::yara::{YaraStore, worker::StatsReader};
use proto::telemetry::v1::{DropCounters, HostIdentity};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    alerts::Alerter,
    config::Config,
    enrich::Enricher,
    events::KernelEvent,
    transport::{
        Accumulator, DropTracker, EncodedEvents, Sealer, Spool, SpoolError, SpoolSettings,
        UploadQueue, Uploader, UploaderError, UploaderSettings, batcher,
    },
};

/// Runs of events between the enrichment thread and the batcher: up to
/// [`RUN_EVENTS`] * this many events, a few batches, so enrichment rarely
/// waits on sealing.
const ENRICHED_QUEUE: usize = 64;

/// Most events the enrichment thread passes on in one message. It passes on
/// what it has whenever its input is empty, so a run never waits for more
/// events; under load, one message (and one batcher wakeup) per run instead
/// of per event.
const RUN_EVENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Uploader(#[from] UploaderError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot start the enrichment thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start the YARA scan thread: {0}")]
    YaraThread(std::io::Error),
    #[error("the pipeline must be started inside a tokio runtime")]
    NoRuntime,
}

/// Why [`EventSender::push`] did not take an event. Already counted in
/// `userspace_queue_full`; callers need not count it again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventDropped {
    #[error("the enrichment queue is full")]
    QueueFull,
    #[error("the pipeline is shutting down")]
    Closed,
}

/// Running totals, for status and benchmarks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineStats {
    /// Events accepted by [`EventSender::push`].
    pub events_in: u64,
    pub events_enriched: u64,
    pub batches_sealed: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub batches_acked: u64,
    pub collector_connected: bool,
    /// Sealed batches waiting in memory to be sent, and sent but unacked.
    pub upload_queue: usize,
    pub inflight: usize,
    /// Batches waiting in the spool, and its bytes on disk.
    pub spool_batches: usize,
    pub spool_bytes: u64,
    pub hash_cache_hits: u64,
    pub hash_cache_misses: u64,
    pub hash_cache_evictions: u64,
    pub hash_errors: u64,
    pub process_table_entries: u64,
    pub process_table_evictions: u64,
    pub processes_seeded: u64,
    /// Events the detection rules looked at, and the alerts they made.
    pub detection_events: u64,
    pub alerts: u64,
    /// Partial sequences not started (table full) and responses not run
    /// (responder queue full): losses, counted.
    pub sequences_dropped: u64,
    pub responses_refused: u64,
    /// The YARA worker's counters (all 0 when YARA is off).
    pub yara: detect::yara::worker::ScanStats,
    pub drops: DropCounters,
}

/// What [`PipelineHandle::shutdown`] managed to deliver.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShutdownReport {
    pub events_in: u64,
    pub batches_sealed: u64,
    pub batches_acked: u64,
    /// Batches (and their events) neither acked nor sent by the deadline;
    /// counted as dropped.
    pub unsent_batches: u64,
    pub unsent_events: u64,
    /// Unacked batches left in the spool for the next start (not lost).
    pub left_in_spool: u64,
    /// Events still waiting for enrichment at the deadline; counted in
    /// `userspace_queue_full`.
    pub events_abandoned: u64,
    /// Whether the deadline cut anything short.
    pub deadline_exceeded: bool,
    /// Final drop counters.
    pub drops: DropCounters,
}

#[derive(Debug, Default)]
struct Counters {
    events_in: AtomicU64,
    events_enriched: AtomicU64,
    /// Events the enrichment thread finished with (passed on or counted).
    events_done: AtomicU64,
    batches_sealed: AtomicU64,
    hash_hits: AtomicU64,
    hash_misses: AtomicU64,
    hash_evictions: AtomicU64,
    hash_errors: AtomicU64,
    table_entries: AtomicU64,
    table_evictions: AtomicU64,
    seeded: AtomicU64,
    detection_events: AtomicU64,
    alerts: AtomicU64,
    sequences_dropped: AtomicU64,
    responses_refused: AtomicU64,
}

// Nearly every item is an event, and `Stop` is sent once: boxing the event
// would cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
enum Item {
    Event(KernelEvent),
    /// Sent by `shutdown` after the input was closed: drain and stop.
    Stop,
}

#[derive(Debug, Default)]
struct Shared {
    /// Set by shutdown: pushes are refused (and counted).
    closed: AtomicBool,
    /// Set when the shutdown deadline passed while events were still being
    /// enriched: shutdown counted them as dropped, the thread just stops.
    abandon: AtomicBool,
    /// Set by the enrichment thread when it drained its queue (not on panic).
    drained: AtomicBool,
    drops: Arc<DropTracker>,
    counters: Counters,
}

/// The ring buffer reader's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("closed", &self.shared.closed)
            .finish()
    }
}

impl EventSender {
    /// Queues an event for enrichment without waiting. A refused event is
    /// counted in `userspace_queue_full` before this returns.
    pub fn push(&self, event: KernelEvent) -> Result<(), EventDropped> {
        let refused = if self.shared.closed.load(Relaxed) {
            EventDropped::Closed
        } else {
            // Counted before it can be dequeued, so `events_in - events_done`
            // never undercounts what is still queued.
            let events_in = &self.shared.counters.events_in;
            events_in.fetch_add(1, Relaxed);
            match self.tx.try_send(Item::Event(event)) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    events_in.fetch_sub(1, Relaxed);
                    EventDropped::QueueFull
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    events_in.fetch_sub(1, Relaxed);
                    EventDropped::Closed
                }
            }
        };
        self.shared.drops.add_userspace_queue_full(1);
        Err(refused)
    }
}

/// The running pipeline.
#[derive(Debug)]
pub struct PipelineHandle {
    sender: EventSender,
    /// Closes when the enrichment thread ends (its sender is dropped then,
    /// even on panic).
    enrich_done: oneshot::Receiver<()>,
    batcher: JoinHandle<()>,
    stop_batcher: oneshot::Sender<()>,
    uploader: Uploader,
    shared: Arc<Shared>,
    /// Into the batcher, past enrichment: for events made in userspace.
    audit: mpsc::Sender<EncodedEvents>,
    /// Audit record files already carried by spooled batches at start.
    spooled_audit_files: Vec<std::path::PathBuf>,
    yara: Option<StatsReader>,
}

/// Starts the enrichment thread, the batcher and the uploader. Call from
/// inside a tokio runtime, after the kernel hooks are attached.
pub fn spawn(
    config: &Config,
    identity: HostIdentity,
    drops: Arc<DropTracker>,
) -> Result<PipelineHandle, PipelineError> {
    spawn_with_rules(config, identity, drops, None)
}

/// [`spawn`], with `alerter` evaluating the detection rules on every
/// enriched event (see `alerts`).
pub fn spawn_with_rules(
    config: &Config,
    identity: HostIdentity,
    drops: Arc<DropTracker>,
    alerter: Option<Alerter>,
) -> Result<PipelineHandle, PipelineError> {
    spawn_with_detection(config, identity, drops, alerter, None)
}

/// [`spawn_with_rules`], and YARA scans (`yara`: the rules in force) of new
/// executables and written watched files on the `rxsentry-yara` thread.
pub fn spawn_with_detection(
    config: &Config,
    identity: HostIdentity,
    drops: Arc<DropTracker>,
    alerter: Option<Alerter>,
    yara: Option<Arc<YaraStore>>,
) -> Result<PipelineHandle, PipelineError> {
    tokio::runtime::Handle::try_current().map_err(|_| PipelineError::NoRuntime)?;
    let spool = if config.spool.enabled {
        let spool = Spool::open(SpoolSettings::from_config(&config.spool), drops.clone())?;
        let r = spool.recovered();
        tracing::info!(
            dir = %config.spool.dir.display(),
            batches = r.batches,
            events = r.events,
            corrupt_records = r.corrupt_records,
            last_sequence = spool.last_sequence(),
            "spool opened"
        );
        Some(spool)
    } else {
        None
    };
    // A restarted sensor continues the host's sequence after the spool's.
    let last_sequence = spool.as_ref().map_or(0, Spool::last_sequence);
    let spooled_audit_files = spool.as_ref().map_or_else(Vec::new, Spool::audit_files);
    let uploader =
        Uploader::spawn_with(UploaderSettings::from_config(config), drops.clone(), spool)?;
    let shared = Arc::new(Shared {
        drops: drops.clone(),
        ..Shared::default()
    });

    let (event_tx, event_rx) = mpsc::channel(config.pipeline.event_queue_capacity.max(1));
    let (enriched_tx, enriched_rx) = mpsc::channel(ENRICHED_QUEUE);
    let audit = enriched_tx.clone();
    let mut enricher = Enricher::new(config);
    if let Some(alerter) = alerter {
        enricher = enricher.with_alerter(alerter);
    }
    let yara = match yara {
        Some(store) => {
            let (feed, stats) = crate::yara::start(
                store,
                &config.detection.yara,
                enriched_tx.clone(),
                drops.clone(),
            )
            .map_err(PipelineError::YaraThread)?;
            enricher = enricher.with_yara(feed);
            Some(stats)
        }
        None => None,
    };
    let thread_shared = shared.clone();
    let (done_tx, enrich_done) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("rxsentry-enrich".into())
        .spawn(move || {
            let _done = done_tx;
            enrich_loop(enricher, event_rx, enriched_tx, &thread_shared);
        })
        .map_err(PipelineError::Thread)?;

    let (stop_batcher, stop_rx) = oneshot::channel();
    let acc = Accumulator::new(
        config.batching.max_events,
        Duration::from_millis(config.batching.max_delay_ms),
    );
    let sealer = Sealer::new(identity, config.batching.zstd_level, drops.clone())
        .continuing_after(last_sequence);
    let queue: UploadQueue = uploader.queue();
    let batch_shared = shared.clone();
    let batcher = tokio::spawn(batcher::run(
        enriched_rx,
        stop_rx,
        acc,
        sealer,
        Duration::from_millis(config.batching.heartbeat_ms),
        move |sealed| {
            batch_shared.counters.batches_sealed.fetch_add(1, Relaxed);
            queue.push_sealed(sealed);
        },
    ));

    let sender = EventSender {
        tx: event_tx,
        shared: shared.clone(),
    };
    Ok(PipelineHandle {
        sender,
        enrich_done,
        batcher,
        stop_batcher,
        uploader,
        shared,
        audit,
        spooled_audit_files,
        yara,
    })
}

/// The enrichment thread: seed, then enrich until stopped and drained.
fn enrich_loop(
    mut enricher: Enricher,
    mut events: mpsc::Receiver<Item>,
    out: mpsc::Sender<EncodedEvents>,
    shared: &Shared,
) {
    match enricher.seed_from_proc(Path::new("/proc")) {
        Ok(n) => tracing::info!(processes = n, "process table seeded from /proc"),
        Err(e) => tracing::warn!(error = %e, "cannot scan /proc: lineage starts empty"),
    }
    let counters = &shared.counters;
    publish_stats(&enricher, counters);
    let mut run = EncodedEvents::default();
    // Events in `run` are not done yet: shutdown counts them if abandoned.
    let pass_on = |run: &mut EncodedEvents| {
        if run.is_empty() {
            return;
        }
        let n = run.len() as u64;
        // The next run likely is as large: room for it up front.
        let next = EncodedEvents::with_capacity(run.encoded_len());
        if out.blocking_send(std::mem::replace(run, next)).is_err() && !shared.abandon.load(Relaxed)
        {
            // The batcher died without a shutdown (a bug): still count it.
            shared.drops.add_userspace_queue_full(n);
        }
        counters.events_done.fetch_add(n, Relaxed);
    };
    loop {
        let item = match events.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                pass_on(&mut run);
                match events.blocking_recv() {
                    Some(item) => item,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let event = match item {
            Item::Event(event) => event,
            // Refuse further pushes, then drain what is queued.
            Item::Stop => {
                events.close();
                continue;
            }
        };
        if shared.abandon.load(Relaxed) {
            return;
        }
        if run.is_empty() {
            // A new run: the wall-clock offset is read again (NTP steps).
            enricher.refresh_clock();
        }
        enricher.enrich_into(event, &mut run);
        counters.events_enriched.fetch_add(1, Relaxed);
        publish_stats(&enricher, counters);
        if shared.abandon.load(Relaxed) {
            return;
        }
        if run.len() >= RUN_EVENTS {
            pass_on(&mut run);
        }
    }
    pass_on(&mut run);
    shared.drained.store(true, Relaxed);
}

fn publish_stats(enricher: &Enricher, c: &Counters) {
    let h = enricher.hash_stats();
    let t = enricher.table_stats();
    c.hash_hits.store(h.hits, Relaxed);
    c.hash_misses.store(h.misses, Relaxed);
    c.hash_evictions.store(h.evictions, Relaxed);
    c.hash_errors.store(h.errors, Relaxed);
    c.table_entries.store(t.entries as u64, Relaxed);
    c.table_evictions.store(t.evictions, Relaxed);
    c.seeded.store(t.seeded, Relaxed);
    let a = enricher.alert_stats();
    c.detection_events.store(a.events_evaluated, Relaxed);
    c.alerts.store(a.alerts, Relaxed);
    c.sequences_dropped.store(a.sequences_dropped, Relaxed);
    c.responses_refused.store(a.responses_refused, Relaxed);
}

impl PipelineHandle {
    /// A handle for the ring buffer reader (clone it freely).
    pub fn sender(&self) -> EventSender {
        self.sender.clone()
    }

    /// For events the daemon makes itself (isolation audit records): they
    /// need no enrichment and go straight to the batcher.
    pub fn audit_sender(&self) -> mpsc::Sender<EncodedEvents> {
        self.audit.clone()
    }

    /// Audit record files whose events wait in the spool: not to be sent
    /// again (they are deleted when those batches are acked).
    pub fn spooled_audit_files(&self) -> &[std::path::PathBuf] {
        &self.spooled_audit_files
    }

    pub fn drops(&self) -> &Arc<DropTracker> {
        &self.shared.drops
    }

    pub fn stats(&self) -> PipelineStats {
        let c = &self.shared.counters;
        let up = self.uploader.stats();
        PipelineStats {
            events_in: c.events_in.load(Relaxed),
            events_enriched: c.events_enriched.load(Relaxed),
            batches_sealed: c.batches_sealed.load(Relaxed),
            batches_sent: up.batches_sent,
            batches_resent: up.batches_resent,
            batches_acked: up.batches_acked,
            collector_connected: up.connected,
            upload_queue: up.queue_len,
            inflight: up.inflight,
            spool_batches: up.spool_batches,
            spool_bytes: up.spool_bytes,
            hash_cache_hits: c.hash_hits.load(Relaxed),
            hash_cache_misses: c.hash_misses.load(Relaxed),
            hash_cache_evictions: c.hash_evictions.load(Relaxed),
            hash_errors: c.hash_errors.load(Relaxed),
            process_table_entries: c.table_entries.load(Relaxed),
            process_table_evictions: c.table_evictions.load(Relaxed),
            processes_seeded: c.seeded.load(Relaxed),
            detection_events: c.detection_events.load(Relaxed),
            alerts: c.alerts.load(Relaxed),
            sequences_dropped: c.sequences_dropped.load(Relaxed),
            responses_refused: c.responses_refused.load(Relaxed),
            yara: self
                .yara
                .as_ref()
                .map(StatsReader::stats)
                .unwrap_or_default(),
            drops: self.shared.drops.snapshot(),
        }
    }

    /// The SIGTERM path: refuse new events, enrich and seal what is queued,
    /// then give the uploader the rest of `deadline` to get it acked.
    /// Whatever is left at the deadline is counted as dropped and reported.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let until = Instant::now() + deadline;
        let shared = self.shared;
        let c = &shared.counters;
        let mut deadline_exceeded = false;
        shared.closed.store(true, Relaxed);
        let stop_sent = tokio::time::timeout_at(until, self.sender.tx.send(Item::Stop)).await;
        drop(self.sender);
        let mut events_abandoned = 0;
        let in_time = stop_sent.is_ok()
            && tokio::time::timeout_at(until, self.enrich_done)
                .await
                .is_ok();
        deadline_exceeded |= !in_time;
        if !(in_time && shared.drained.load(Relaxed)) {
            // Still enriching (a huge file?) or the thread died: what is
            // queued will not make it. At most the event in hand may be both
            // passed on and counted here: never silently lost.
            shared.abandon.store(true, Relaxed);
            let done = c.events_done.load(Relaxed);
            events_abandoned = c.events_in.load(Relaxed).saturating_sub(done);
            shared.drops.add_userspace_queue_full(events_abandoned);
        }
        let _ = self.stop_batcher.send(());
        let _ = self.batcher.await;
        let remaining = until.saturating_duration_since(Instant::now());
        let upload = self.uploader.shutdown(remaining).await;
        deadline_exceeded |= upload.unsent_batches > 0;
        ShutdownReport {
            events_in: c.events_in.load(Relaxed),
            batches_sealed: c.batches_sealed.load(Relaxed),
            batches_acked: upload.batches_acked,
            unsent_batches: upload.unsent_batches,
            unsent_events: upload.unsent_events,
            left_in_spool: upload.left_in_spool,
            events_abandoned,
            deadline_exceeded,
            drops: shared.drops.snapshot(),
        }
    }
}
