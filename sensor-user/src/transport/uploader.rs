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

use super::{CollectorLink, DropTracker, LinkError};
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
}

/// What `shutdown` could not deliver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub batches_acked: u64,
    /// Left queued or unacked at the deadline; counted as dropped.
    pub unsent_batches: u64,
    pub unsent_events: u64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<SensorBatch>,
    /// Sent, not yet acked, by sequence.
    inflight: BTreeMap<u64, SensorBatch>,
    closed: bool,
}

impl State {
    fn is_drained(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
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
    /// Queues a batch without waiting. When the queue is full the OLDEST
    /// queued batch is dropped (and counted); after `shutdown` started the
    /// batch itself is dropped (and counted). Returns false if anything was
    /// dropped.
    pub fn push(&self, batch: SensorBatch) -> bool {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.closed {
            drop(st);
            shared.count_dropped(1, u64::from(batch.event_count));
            tracing::warn!(
                sequence = batch.sequence,
                "batch sealed after uploader shutdown: dropped"
            );
            return false;
        }
        let mut lost = None;
        if st.queue.len() >= shared.settings.queue_capacity {
            lost = st.queue.pop_front();
        }
        st.queue.push_back(batch);
        drop(st);
        shared.counters.queued.fetch_add(1, Relaxed);
        shared.wake.notify_one();
        let Some(lost) = lost else { return true };
        shared.count_dropped(1, u64::from(lost.event_count));
        let total = shared.counters.dropped.load(Relaxed);
        if total.is_power_of_two() || total.is_multiple_of(1000) {
            tracing::warn!(
                sequence = lost.sequence,
                events = lost.event_count,
                dropped_batches_total = total,
                "upload queue full: dropped the oldest batch"
            );
        }
        false
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
        // Fail at start on a bad URL or unreadable files; they are read
        // again at every connection.
        settings.link.endpoint()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| UploaderError::NoRuntime)?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
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
        let (queue_len, inflight) = {
            let st = self.shared.lock();
            (st.queue.len(), st.inflight.len())
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
        }
    }

    /// Stops accepting batches, keeps sending until everything is acked or
    /// `deadline` passed, then stops and counts what is left as dropped.
    pub async fn shutdown(self, deadline: Duration) -> UploadReport {
        let until = Instant::now() + deadline;
        let shared = self.shared;
        shared.lock().closed = true;
        shared.wake.notify_one();
        shared.closing.notify_one();
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
        self.task.abort();
        let _ = self.task.await;
        shared.counters.connected.store(false, Relaxed);
        let (unsent_batches, unsent_events) = {
            let mut st = shared.lock();
            let inflight = std::mem::take(&mut st.inflight);
            let queue = std::mem::take(&mut st.queue);
            let left: Vec<SensorBatch> = inflight.into_values().chain(queue).collect();
            let events = left.iter().map(|b| u64::from(b.event_count)).sum::<u64>();
            (left.len() as u64, events)
        };
        if unsent_batches > 0 {
            shared.count_dropped(unsent_batches, unsent_events);
            tracing::warn!(
                unsent_batches,
                unsent_events,
                "shutdown deadline passed with batches unacknowledged"
            );
        }
        UploadReport {
            batches_acked: shared.counters.acked.load(Relaxed),
            unsent_batches,
            unsent_events,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("connect failed: {0}")]
    Connect(#[source] tonic::transport::Error),
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
        Err(e) => return SessionEnd::Connect(e),
    };
    let mut client = TelemetryIngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<SensorBatch>(settings.max_inflight.max(1));
    // Unacked batches first, oldest first, so the collector sees them in order.
    let resend: Vec<SensorBatch> = shared.lock().inflight.values().cloned().collect();
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
                    st.queue.pop_front().inspect(|b| {
                        st.inflight.insert(b.sequence, b.clone());
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
                    let released = std::mem::replace(&mut st.inflight, rest).len();
                    let empty = st.inflight.is_empty();
                    drop(st);
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
    let Some((sequence, batch)) = shared.lock().inflight.pop_first() else {
        return;
    };
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
