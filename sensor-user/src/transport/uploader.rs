//! Sends sealed batches to the collector over one gRPC `Publish` stream.
//!
//! Batches wait in a bounded queue; up to `max_inflight` of them are on the
//! wire unacknowledged. A batch leaves the sensor's memory only when the
//! collector acks it: after a reconnect every unacked batch is sent again,
//! in sequence order, before newer ones (the collector drops repeats as
//! duplicates, so resending is safe). When the queue overflows while the
//! collector is away, the oldest waiting batch is dropped and counted in the
//! drop counters that travel in the next batches: loss is never silent.
//!
//! A batch the collector refuses as malformed or too large
//! (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) is dropped and counted instead of
//! being resent forever.
//!
//! Acks are cumulative: the stream is ordered, so an ack for sequence N also
//! releases every unacked batch below N. This keeps the window moving even if
//! the collector does not ack a resent batch it had already stored.
//!
//! With a [`Spool`], a batch is queued only once it is on disk, and the
//! spool, not the RAM queue, is the queue: the RAM queue is a read-ahead of
//! at most `queue_capacity` batches and, with the unacked ones,
//! [`SPOOL_RAM_BYTES`] of payload, refilled from the spool in order, so a
//! full spool costs disk, not memory. Nothing is dropped for want of room
//! in RAM; the spool drops its oldest batches when full (and counts them),
//! and what is not acked at shutdown stays on disk for the next start.

use std::{
    collections::{BTreeMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use proto::telemetry::v1::{BatchAck, SensorBatch, telemetry_ingest_client::TelemetryIngestClient};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{CollectorLink, DropTracker, LinkError, Sealed, Spool};
use crate::config::Config;

/// How the uploader connects and how much it buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploaderSettings {
    /// The collector and the TLS files (read at every connection).
    pub link: CollectorLink,
    pub max_inflight: usize,
    pub queue_capacity: usize,
    /// First retry delay after a failed connection; doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A connection with unacked batches and no ack for this long is
    /// considered dead and replaced (a collector that accepts but stalls).
    pub ack_timeout: Duration,
}

impl UploaderSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            link: CollectorLink::from_config(&config.collector),
            max_inflight: config.collector.max_inflight_batches,
            queue_capacity: config.batching.queue_capacity_batches,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploaderError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the uploader must be started inside a tokio runtime")]
    NoRuntime,
}

/// Running totals, for status and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploaderStats {
    pub batches_queued: u64,
    /// Sends on the wire, resends included.
    pub batches_sent: u64,
    /// Sends of a batch that had already been sent on an earlier connection.
    pub batches_resent: u64,
    pub batches_acked: u64,
    /// Dropped for any reason (queue full, refused, shutdown), with events.
    pub batches_dropped: u64,
    pub events_dropped: u64,
    /// Refused by the collector as malformed or over its limits (also in
    /// `batches_dropped`).
    pub batches_refused: u64,
    pub connects: u64,
    pub disconnects: u64,
    pub connected: bool,
    pub queue_len: usize,
    pub inflight: usize,
    /// Batches waiting in the spool (0 without one), and its bytes on disk.
    pub spool_batches: usize,
    pub spool_bytes: u64,
}

/// What `shutdown` could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub batches_acked: u64,
    /// Left queued or unacked at the deadline; counted as dropped.
    pub unsent_batches: u64,
    pub unsent_events: u64,
    /// Left unacked in the spool, for the next start (not a loss).
    pub left_in_spool: u64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Sealed>,
    /// Sent, not yet acked, by sequence.
    inflight: BTreeMap<u64, Sealed>,
    closed: bool,
    spool: Option<Spool>,
    /// Highest sequence moved into RAM (queue or inflight): the spool's
    /// batches above it are read back when the queue runs dry.
    loaded: u64,
    /// Payload bytes in `queue` and `inflight`: with a spool, at most
    /// [`SPOOL_RAM_BYTES`] (and one batch) of it are in memory.
    ram_bytes: usize,
}

/// With a spool, the batches held in memory (read-ahead and unacked) stay
/// under this many payload bytes: a full spool of large batches costs
/// disk, not RSS. A few hundred batches of a normal event mix.
const SPOOL_RAM_BYTES: usize = 4 << 20;

fn payload(s: &Sealed) -> usize {
    s.batch.payload.len()
}

impl State {
    fn is_drained(&self) -> bool {
        self.queue.is_empty()
            && self.inflight.is_empty()
            && !self
                .spool
                .as_ref()
                .is_some_and(|s| s.has_after(self.loaded))
    }

    /// Tops the empty RAM queue up from the spool, in order, within
    /// [`SPOOL_RAM_BYTES`].
    fn refill(&mut self, max: usize) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if !self.queue.is_empty()
            || (self.ram_bytes >= SPOOL_RAM_BYTES && !self.inflight.is_empty())
        {
            return;
        }
        let budget = SPOOL_RAM_BYTES.saturating_sub(self.ram_bytes) as u64;
        let read = spool.read_after(self.loaded, max, budget);
        for spooled in read {
            self.loaded = spooled.batch.sequence;
            self.ram_bytes += spooled.batch.payload.len();
            // The spool keeps the audit files; they go with its ack.
            self.queue.push_back(Sealed {
                batch: spooled.batch,
                audit: Vec::new(),
            });
        }
        if !spool.has_after(self.loaded) {
            self.loaded = self.loaded.max(spool.last_sequence());
        }
    }

    /// The connection is gone: batches the spool holds leave RAM and are
    /// read back from it, in order, after the next connect, so an outage
    /// costs disk, not memory. Kept when any of them is in RAM only (the
    /// disk refused it), so the order holds.
    fn release_to_spool(&mut self) {
        let Some(spool) = self.spool.as_ref() else {
            return;
        };
        let mut in_ram = self.inflight.values().chain(self.queue.iter());
        if !in_ram.all(|s| spool.contains(s.batch.sequence)) {
            return;
        }
        let oldest = self
            .inflight
            .keys()
            .next()
            .copied()
            .or_else(|| self.queue.front().map(|s| s.batch.sequence));
        if let Some(oldest) = oldest {
            self.loaded = oldest.saturating_sub(1);
        }
        self.inflight.clear();
        self.queue.clear();
        self.ram_bytes = 0;
    }

    /// Recounts [`State::ram_bytes`] (after removals of many kinds).
    fn recount(&mut self) {
        self.ram_bytes = self
            .queue
            .iter()
            .chain(self.inflight.values())
            .map(payload)
            .sum();
    }

    /// The spool dropped batches up to `through` (counted there): they
    /// are not sent, nor sent again.
    fn forget_through(&mut self, through: u64) {
        self.queue.retain(|s| s.batch.sequence > through);
        self.inflight = self.inflight.split_off(&through.saturating_add(1));
        self.loaded = self.loaded.max(through);
        self.recount();
    }
}

/// The collector has the batches: their audit record files can go.
fn delete_audit_files(released: impl IntoIterator<Item = Sealed>) {
    for path in released.into_iter().flat_map(|s| s.audit) {
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an acknowledged audit record");
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
    events_dropped: AtomicU64,
    refused: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    connected: AtomicBool,
    spool_errors: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// New batch queued, or closing: wakes the sending task.
    wake: Notify,
    /// An ack arrived: wakes `shutdown`.
    progress: Notify,
    /// Shutdown started: cuts a reconnect backoff short.
    closing: Notify,
    counters: Counters,
    drops: Arc<DropTracker>,
    settings: UploaderSettings,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop uploads: the state stays consistent
        // because every critical section is a few plain field updates.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_dropped(&self, batches: u64, events: u64) {
        self.counters.dropped.fetch_add(batches, Relaxed);
        self.counters.events_dropped.fetch_add(events, Relaxed);
        self.drops.add_batches_dropped(batches, events);
    }
}

/// The producer side: where the batcher puts sealed batches.
#[derive(Clone, Debug)]
pub struct UploadQueue {
    shared: Arc<Shared>,
}

impl UploadQueue {
    /// [`UploadQueue::push_sealed`] for a batch carrying no audit record.
    pub fn push(&self, batch: SensorBatch) -> bool {
        self.push_sealed(Sealed {
            batch,
            audit: Vec::new(),
        })
    }

    /// Queues a batch without waiting (with a spool: once it is on disk).
    /// Without a spool, when the queue is full the OLDEST queued batch is
    /// dropped (and counted), and after `shutdown` started the batch itself
    /// is dropped (and counted). Returns false if anything was dropped.
    pub fn push_sealed(&self, sealed: Sealed) -> bool {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.spool.is_some() {
            return push_spooled(shared, &mut st, sealed);
        }
        let batch = sealed;
        if st.closed {
            drop(st);
            shared.count_dropped(1, u64::from(batch.batch.event_count));
            tracing::warn!(
                sequence = batch.batch.sequence,
                "batch sealed after uploader shutdown: dropped"
            );
            return false;
        }
        let mut lost = None;
        if st.queue.len() >= shared.settings.queue_capacity {
            lost = st.queue.pop_front();
        }
        st.queue.push_back(batch);
        st.recount();
        drop(st);
        shared.counters.queued.fetch_add(1, Relaxed);
        shared.wake.notify_one();
        let Some(lost) = lost else { return true };
        shared.count_dropped(1, u64::from(lost.batch.event_count));
        let total = shared.counters.dropped.load(Relaxed);
        if total.is_power_of_two() || total.is_multiple_of(1000) {
            tracing::warn!(
                sequence = lost.batch.sequence,
                events = lost.batch.event_count,
                dropped_batches_total = total,
                "upload queue full: dropped the oldest batch"
            );
        }
        false
    }
}

/// Appends to the spool, and keeps the batch in RAM too when nothing older
/// waits on disk only (the fast path). A batch the disk refuses is kept in
/// RAM alone if that keeps the order, else dropped and counted.
fn push_spooled(shared: &Shared, st: &mut State, sealed: Sealed) -> bool {
    let Some(spool) = st.spool.as_mut() else {
        return false;
    };
    let caught_up = !spool.has_after(st.loaded) && st.loaded >= spool.last_sequence();
    let sequence = sealed.batch.sequence;
    // While the collector is away the spool alone holds the batches: RAM
    // copies would only wait (the refill reads them back once connected).
    let room = st.queue.len() < shared.settings.queue_capacity
        && st.ram_bytes + payload(&sealed) <= SPOOL_RAM_BYTES
        && !st.closed
        && shared.counters.connected.load(Relaxed);
    match spool.append(&sealed.batch, &sealed.audit) {
        Ok(appended) => {
            if let Some(through) = appended.dropped_through {
                st.forget_through(through);
            }
            shared.counters.queued.fetch_add(1, Relaxed);
            if caught_up && room {
                st.loaded = sequence;
                st.ram_bytes += payload(&sealed);
                st.queue.push_back(Sealed {
                    batch: sealed.batch,
                    audit: Vec::new(),
                });
            }
            shared.wake.notify_one();
            true
        }
        Err(e) => {
            let failures = shared.counters.spool_errors.fetch_add(1, Relaxed) + 1;
            if failures.is_power_of_two() {
                tracing::error!(error = %e, sequence, failures, "cannot write to the spool");
            }
            if caught_up && room {
                // Sent from memory: lost on a crash, but in order.
                st.loaded = sequence;
                st.ram_bytes += payload(&sealed);
                st.queue.push_back(sealed);
                shared.counters.queued.fetch_add(1, Relaxed);
                shared.wake.notify_one();
                true
            } else {
                shared.count_dropped(1, u64::from(sealed.batch.event_count));
                false
            }
        }
    }
}

/// The gRPC uploader task and its queue.
#[derive(Debug)]
pub struct Uploader {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Uploader {
    /// Starts the task; it connects in the background and retries forever.
    pub fn spawn(
        settings: UploaderSettings,
        drops: Arc<DropTracker>,
    ) -> Result<Uploader, UploaderError> {
        Self::spawn_with(settings, drops, None)
    }

    /// [`Uploader::spawn`], with the spool as its queue when given: the
    /// batches waiting in it are sent first, in order.
    pub fn spawn_with(
        settings: UploaderSettings,
        drops: Arc<DropTracker>,
        spool: Option<Spool>,
    ) -> Result<Uploader, UploaderError> {
        // A bad URL fails the start; the TLS files are read at every
        // connection, so missing ones delay telemetry, never the sensor.
        settings.link.check_url()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| UploaderError::NoRuntime)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                spool,
                ..State::default()
            }),
            wake: Notify::new(),
            progress: Notify::new(),
            closing: Notify::new(),
            counters: Counters::default(),
            drops,
            settings,
        });
        let task = runtime.spawn(run(shared.clone()));
        Ok(Uploader { shared, task })
    }

    pub fn queue(&self) -> UploadQueue {
        UploadQueue {
            shared: self.shared.clone(),
        }
    }

    pub fn stats(&self) -> UploaderStats {
        let c = &self.shared.counters;
        let (queue_len, inflight, spool_batches, spool_bytes) = {
            let st = self.shared.lock();
            let (n, bytes) = st.spool.as_ref().map_or((0, 0), |s| (s.len(), s.bytes()));
            (st.queue.len(), st.inflight.len(), n, bytes)
        };
        UploaderStats {
            batches_queued: c.queued.load(Relaxed),
            batches_sent: c.sent.load(Relaxed),
            batches_resent: c.resent.load(Relaxed),
            batches_acked: c.acked.load(Relaxed),
            batches_dropped: c.dropped.load(Relaxed),
            events_dropped: c.events_dropped.load(Relaxed),
            batches_refused: c.refused.load(Relaxed),
            connects: c.connects.load(Relaxed),
            disconnects: c.disconnects.load(Relaxed),
            connected: c.connected.load(Relaxed),
            queue_len,
            inflight,
            spool_batches,
            spool_bytes,
        }
    }

    /// Stops accepting batches, keeps sending until everything is acked or
    /// `deadline` passed, then stops and counts what is left as dropped.
    /// With a spool, what is left stays there (not a loss), and without a
    /// connection to the collector there is no reason to wait at all.
    pub async fn shutdown(self, deadline: Duration) -> UploadReport {
        let until = Instant::now() + deadline;
        let shared = self.shared;
        let wait = {
            let mut st = shared.lock();
            st.closed = true;
            st.spool.is_none() || shared.counters.connected.load(Relaxed)
        };
        shared.wake.notify_one();
        shared.closing.notify_one();
        if wait {
            loop {
                let acked = shared.progress.notified();
                tokio::pin!(acked);
                acked.as_mut().enable();
                if shared.lock().is_drained() {
                    break;
                }
                if tokio::time::timeout_at(until, acked).await.is_err() {
                    break;
                }
            }
        }
        self.task.abort();
        let _ = self.task.await;
        shared.counters.connected.store(false, Relaxed);
        let (unsent_batches, unsent_events, left_in_spool) = {
            let mut st = shared.lock();
            let inflight = std::mem::take(&mut st.inflight);
            let queue = std::mem::take(&mut st.queue);
            // What the spool holds is not lost: the next start sends it.
            let spooled = |s: &Sealed| {
                st.spool
                    .as_ref()
                    .is_some_and(|spool| spool.contains(s.batch.sequence))
            };
            let left: Vec<Sealed> = inflight
                .into_values()
                .chain(queue)
                .filter(|s| !spooled(s))
                .collect();
            let events = left
                .iter()
                .map(|b| u64::from(b.batch.event_count))
                .sum::<u64>();
            let in_spool = st.spool.as_ref().map_or(0, |s| s.len() as u64);
            (left.len() as u64, events, in_spool)
        };
        if unsent_batches > 0 {
            shared.count_dropped(unsent_batches, unsent_events);
            tracing::warn!(
                unsent_batches,
                unsent_events,
                "shutdown deadline passed with batches unacknowledged"
            );
        }
        if left_in_spool > 0 {
            tracing::info!(
                batches = left_in_spool,
                "unacknowledged batches stay in the spool for the next start"
            );
        }
        UploadReport {
            batches_acked: shared.counters.acked.load(Relaxed),
            unsent_batches,
            unsent_events,
            left_in_spool,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("{0}")]
    Link(LinkError),
    #[error("no response to Publish within the connect timeout")]
    OpenTimeout,
    #[error("Publish failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the collector closed the stream")]
    ClosedByPeer,
    #[error("no ack for {0:?}")]
    AckTimeout(Duration),
    #[error("the request stream closed")]
    RequestClosed,
    #[error("everything was delivered and the uploader is closing")]
    Finished,
}

/// Connect, publish, reconnect with backoff, until finished or aborted.
async fn run(shared: Arc<Shared>) {
    let settings = &shared.settings;
    let mut backoff = settings.backoff_initial;
    let mut failures = 0u64;
    loop {
        let mut acked_any = false;
        let end = session(&shared, &mut acked_any).await;
        let was_connected = shared.counters.connected.swap(false, Relaxed);
        if !matches!(end, SessionEnd::Finished) {
            shared.lock().release_to_spool();
        }
        match &end {
            SessionEnd::Finished => return,
            e if was_connected => {
                shared.counters.disconnects.fetch_add(1, Relaxed);
                tracing::warn!(endpoint = %settings.link.endpoint, reason = %e, "disconnected from collector");
            }
            e => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(endpoint = %settings.link.endpoint, reason = %e, attempts = failures, "cannot reach collector; retrying");
                } else {
                    tracing::debug!(endpoint = %settings.link.endpoint, reason = %e, attempts = failures, "cannot reach collector");
                }
            }
        }
        if acked_any {
            backoff = settings.backoff_initial;
            failures = 0;
        }
        // During shutdown every moment counts: retry at the fastest pace.
        if shared.lock().closed {
            backoff = settings.backoff_initial;
        }
        // Jitter (50-100%) so a store's kiosks do not reconnect in lockstep.
        let jitter = RandomState::new().hash_one(failures) % 512;
        let delay = backoff.mul_f64(0.5 + jitter as f64 / 1024.0);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.closing.notified() => {}
        }
        backoff = (backoff * 2).min(settings.backoff_max);
    }
}

/// One connection: resend unacked batches, then stream the queue.
async fn session(shared: &Shared, acked_any: &mut bool) -> SessionEnd {
    let settings = &shared.settings;
    let endpoint = match shared.settings.link.endpoint() {
        Ok(endpoint) => endpoint,
        Err(e) => return SessionEnd::Link(e),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return SessionEnd::Connect(super::link::error_chain(&e)),
    };
    let mut client = TelemetryIngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<SensorBatch>(settings.max_inflight.max(1));
    // Unacked batches first, oldest first, so the collector sees them in order.
    let resend: Vec<SensorBatch> = shared
        .lock()
        .inflight
        .values()
        .map(|s| s.batch.clone())
        .collect();
    for batch in resend {
        if tx.try_send(batch).is_err() {
            return SessionEnd::RequestClosed;
        }
        shared.counters.sent.fetch_add(1, Relaxed);
        shared.counters.resent.fetch_add(1, Relaxed);
    }
    let call = client.publish(ReceiverStream::new(rx));
    tokio::pin!(call);
    let opened_by = Instant::now() + settings.link.connect_timeout;
    let mut acks: Option<Streaming<BatchAck>> = None;
    // Start of the current wait for an ack, while anything is unacked.
    let mut oldest_sent_at = (!shared.lock().inflight.is_empty()).then(Instant::now);
    loop {
        // Fill the window from the queue.
        loop {
            let next = {
                let mut st = shared.lock();
                if st.closed && st.is_drained() {
                    return SessionEnd::Finished;
                }
                if st.inflight.len() >= settings.max_inflight {
                    None
                } else {
                    st.refill(settings.max_inflight);
                    st.queue.pop_front().map(|s| {
                        let batch = s.batch.clone();
                        st.inflight.insert(batch.sequence, s);
                        batch
                    })
                }
            };
            let Some(batch) = next else { break };
            oldest_sent_at.get_or_insert_with(Instant::now);
            if tx.try_send(batch).is_err() {
                return SessionEnd::RequestClosed;
            }
            shared.counters.sent.fetch_add(1, Relaxed);
        }
        let ack_due = oldest_sent_at.map(|t| t + settings.ack_timeout);
        let stalled = async {
            match ack_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            opened = &mut call, if acks.is_none() => match opened {
                Ok(response) => {
                    acks = Some(response.into_inner());
                    shared.counters.connects.fetch_add(1, Relaxed);
                    shared.counters.connected.store(true, Relaxed);
                    tracing::info!(endpoint = %settings.link.endpoint, "connected to collector");
                }
                Err(status) => return SessionEnd::Status(status),
            },
            () = tokio::time::sleep_until(opened_by), if acks.is_none() => return SessionEnd::OpenTimeout,
            ack = next_ack(&mut acks) => match ack {
                Ok(Some(ack)) => {
                    let mut st = shared.lock();
                    let rest = st.inflight.split_off(&(ack.sequence.saturating_add(1)));
                    let released = std::mem::replace(&mut st.inflight, rest);
                    st.recount();
                    if let Some(spool) = st.spool.as_mut()
                        && let Err(e) = spool.ack(ack.sequence)
                    {
                        tracing::error!(error = %e, "spool: cannot record an ack (its batches may be sent again)");
                    }
                    let empty = st.inflight.is_empty();
                    drop(st);
                    let released_n = released.len();
                    delete_audit_files(released.into_values());
                    let released = released_n;
                    if released > 0 {
                        *acked_any = true;
                        shared.counters.acked.fetch_add(released as u64, Relaxed);
                        oldest_sent_at = (!empty).then(Instant::now);
                    }
                    shared.progress.notify_waiters();
                }
                Ok(None) => return SessionEnd::ClosedByPeer,
                Err(status) => {
                    if refuses_batch(&status) {
                        drop_refused_batch(shared, &status);
                        shared.progress.notify_waiters();
                    }
                    return SessionEnd::Status(status);
                }
            },
            () = stalled => return SessionEnd::AckTimeout(settings.ack_timeout),
            () = shared.wake.notified() => {}
        }
    }
}

/// The collector's verdict on the batch itself (malformed, or over its
/// limits): sending it again would be refused again, forever.
fn refuses_batch(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
    )
}

/// The collector handles a stream in order and stops at the batch it
/// refuses, so that batch is the oldest unacked one. Dropping it (counted)
/// keeps one bad batch from blocking every later one.
fn drop_refused_batch(shared: &Shared, status: &tonic::Status) {
    let mut st = shared.lock();
    let Some((sequence, sealed)) = st.inflight.pop_first() else {
        return;
    };
    st.recount();
    // Everything older is acked: the spool may let it go too.
    if let Some(spool) = st.spool.as_mut()
        && let Err(e) = spool.ack(sequence)
    {
        tracing::error!(error = %e, "spool: cannot record a refused batch");
    }
    drop(st);
    let batch = sealed.batch;
    shared.counters.refused.fetch_add(1, Relaxed);
    shared.count_dropped(1, u64::from(batch.event_count));
    tracing::error!(
        sequence,
        events = batch.event_count,
        code = ?status.code(),
        reason = status.message(),
        "collector refused a batch; dropped it"
    );
}

/// The next ack, or never while the stream is not open yet.
async fn next_ack(
    acks: &mut Option<Streaming<BatchAck>>,
) -> Result<Option<BatchAck>, tonic::Status> {
    match acks {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}
