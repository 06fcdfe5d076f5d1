//! tonic wiring: the two gRPC services, the shared state behind them, and
//! the serve loop with graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt};
use proto::telemetry::v1::{
    BatchAck, HostRecord, QueryRequest, QueryResponse, SensorBatch, SubscribeRequest, host_record,
    sequence_record,
    telemetry_ingest_server::{TelemetryIngest, TelemetryIngestServer},
    telemetry_subscribe_server::{TelemetrySubscribe, TelemetrySubscribeServer},
};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::CollectorError;
use crate::config::{CollectorConfig, MAX_SUBSCRIBE_REQUEST_BYTES};
use crate::control::{AnalystService, ControlHub, SensorControlService};
use crate::fanout::{Fanout, FanoutItem, SubscriberStream, SubscriptionFilter};
use crate::hosts::{self, BatchMeta, HostStats, HostTable};
use crate::ingest::{self, IngestLimits};
use crate::sequence::Restart;
use crate::store::{BatchStored, Store, StoreError};
use crate::tls_listener::ReloadingTls;
use crate::trail::{self, OnDrop, Trail};
use crate::trust::{ReloadReport, Trust};
use proto::control::v1::{
    analyst_api_server::AnalystApiServer, sensor_control_server::SensorControlServer,
};

/// Payloads up to this size are decoded inline; larger ones on the blocking
/// pool so that a 16 MiB decompression does not stall other streams.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// HTTP/2 pings on idle connections, and how long a ping may go unanswered.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// How often the deny list's file is checked for changes.
const DENY_LIST_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// How often an open subscription checks that its operator is still in
/// force (removed over the API, or from the file by a reload).
const OPERATOR_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything the collector counts, for tests, tools and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectorStats {
    /// Per host_id, sorted.
    pub hosts: BTreeMap<String, HostStats>,
    /// Batches refused by the ingest checks (each ended its stream).
    pub rejected_batches: u64,
    /// Open `Publish` streams.
    pub publish_streams: u64,
    /// Open `Subscribe` streams.
    pub subscribers: usize,
    /// Calls and messages refused for who sent them (certificate missing,
    /// revoked, expired, or naming another host).
    pub identity_refusals: u64,
    /// Most bytes one publish stream held waiting for commits (bounded by
    /// the per-stream byte budget plus one batch).
    pub pending_bytes_high_water: u64,
    /// Times a publish stream was paused for its byte budget.
    pub publish_throttled: u64,
}

#[derive(Debug)]
struct Shared {
    config: CollectorConfig,
    limits: IngestLimits,
    hosts: Mutex<HostTable>,
    /// Bounds concurrent large decodes (see `max_concurrent_decodes`).
    decode_permits: Semaphore,
    fanout: Fanout,
    rejected_batches: AtomicU64,
    publish_streams: AtomicU64,
    pending_bytes_high_water: AtomicU64,
    publish_throttled: AtomicU64,
    control: Arc<ControlHub>,
    trail: Trail,
    trust: Arc<Trust>,
    /// The durable store; `None`: live fan-out only.
    store: Option<Store>,
    /// Bounds the queries read at once (each may read 200,000 rows), so
    /// queries cannot take every blocking thread or starve the writer.
    query_permits: Semaphore,
}

/// A running or ready-to-run collector. Cheap to clone: clones share state,
/// so a test can keep one to read [`Collector::stats`] while another serves.
#[derive(Debug, Clone)]
pub struct Collector {
    shared: Arc<Shared>,
}

impl Collector {
    /// Checks the configuration, opens the audit log (which must verify)
    /// and sets up empty state.
    pub fn new(config: CollectorConfig) -> Result<Self, CollectorError> {
        config.validate()?;
        let trail = match &config.audit {
            Some(audit) => {
                let log = audit::AuditLog::open(audit)?;
                let (seq, hash) = log.head();
                info!(dir = %audit.dir.display(), last_record = seq,
                    sha256 = %audit::hex(&hash), "audit log verified, continuing its chain");
                Trail::new(Some(log))
            }
            None => Trail::default(),
        };
        let deny = match &config.deny_list {
            Some(path) => pki::DenyList::load(path)?,
            None => pki::DenyList::empty(),
        };
        let server_tls = match &config.tls {
            Some(files) => Some(Arc::new(ReloadingTls::load(files.clone())?)),
            None => None,
        };
        let trust = Arc::new(Trust::new(
            server_tls,
            deny,
            config.operators.clone(),
            config.operators_file.clone(),
        ));
        let fanout = Fanout::new(config.subscriber_buffer);
        let store = match &config.store {
            Some(store) => Some(Store::open(store.clone(), fanout.clone())?),
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                limits: IngestLimits::from(&config),
                fanout,
                store,
                query_permits: Semaphore::new(MAX_CONCURRENT_QUERIES),
                hosts: Mutex::new(HostTable::with_eviction(
                    config.max_hosts,
                    config.host_idle_evict,
                )),
                decode_permits: Semaphore::new(config.max_concurrent_decodes),
                config,
                rejected_batches: AtomicU64::new(0),
                pending_bytes_high_water: AtomicU64::new(0),
                publish_throttled: AtomicU64::new(0),
                publish_streams: AtomicU64::new(0),
                control: Arc::default(),
                trail,
                trust,
            }),
        })
    }

    /// A consistent copy of all counters.
    pub fn stats(&self) -> CollectorStats {
        CollectorStats {
            hosts: self.shared.hosts().snapshot(),
            rejected_batches: self.shared.rejected_batches.load(Ordering::Relaxed),
            publish_streams: self.shared.publish_streams.load(Ordering::Relaxed),
            subscribers: self.shared.fanout.subscribers(),
            identity_refusals: self.shared.trust.refused(),
            pending_bytes_high_water: self.shared.pending_bytes_high_water.load(Ordering::Relaxed),
            publish_throttled: self.shared.publish_throttled.load(Ordering::Relaxed),
        }
    }

    /// The store writer's totals (`None`: no store, live fan-out only).
    pub fn store_counters(&self) -> Option<&crate::store::StoreCounters> {
        self.shared.store.as_ref().map(|s| s.counters())
    }

    /// Re-reads the operators file and the deny list (SIGHUP); a file that
    /// does not parse keeps its last good contents.
    pub fn reload_trust(&self) -> Result<ReloadReport, String> {
        self.shared.trust.reload()
    }

    /// Serves both gRPC services on `listener` until `shutdown` completes,
    /// then ends every open stream and waits up to `shutdown_grace` for
    /// connections to close.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), CollectorError> {
        let addr = listener.local_addr()?;
        let config = self.shared.config.clone();
        let tls = match self.shared.trust.server_tls() {
            Some(tls) => Some(tls),
            None if addr.ip().is_loopback() => None,
            None => return Err(CollectorError::PlaintextOffLoopback(addr)),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let ingest = TelemetryIngestServer::new(IngestService {
            shared: self.shared.clone(),
            stop: stop_rx.clone(),
        })
        .max_decoding_message_size(config.max_grpc_message_bytes());
        let subscribe = TelemetrySubscribeServer::new(SubscribeService {
            shared: self.shared.clone(),
            stop: stop_rx.clone(),
        })
        .max_decoding_message_size(MAX_SUBSCRIBE_REQUEST_BYTES);
        let control = SensorControlServer::new(SensorControlService {
            hub: self.shared.control.clone(),
            max_hosts: config.max_hosts,
            trust: self.shared.trust.clone(),
            trail: self.shared.trail.clone(),
        })
        .max_decoding_message_size(MAX_SUBSCRIBE_REQUEST_BYTES);
        let stats_source = self.shared.clone();
        let silent_source = self.shared.store.clone();
        let analyst = AnalystApiServer::new(AnalystService {
            hub: self.shared.control.clone(),
            trust: self.shared.trust.clone(),
            trail: self.shared.trail.clone(),
            host_stats: Box::new(move || stats_source.hosts().snapshot()),
            silent_hosts: Box::new(move || {
                silent_source
                    .as_ref()
                    .map(Store::silent_hosts)
                    .unwrap_or_default()
            }),
        })
        .max_decoding_message_size(MAX_SUBSCRIBE_REQUEST_BYTES);
        let stats_task = config.stats_log_interval.map(|every| {
            tokio::spawn(log_stats_every(
                self.clone(),
                every,
                stopped(stop_rx.clone()),
            ))
        });

        let deny_task = tokio::spawn(poll_deny_list(
            self.shared.trust.clone(),
            stopped(stop_rx.clone()),
        ));
        info!(%addr, tls = tls.is_some(), max_batch_bytes = config.max_batch_bytes,
            max_decompressed_bytes = config.max_decompressed_bytes, "collector serving");
        let router = tonic::transport::Server::builder()
            // A sensor whose link died is noticed, so its reconnection
            // (same certificate) is not mistaken for a second stream.
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE))
            .add_service(ingest)
            .add_service(subscribe)
            .add_service(control)
            .add_service(analyst);
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match tls {
                Some(tls) => Box::pin(
                    router.serve_with_incoming_shutdown(tls.incoming(listener), stopped(stop_rx)),
                ),
                None => Box::pin(router.serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(stop_rx),
                )),
            };
        tokio::pin!(server);
        let result = tokio::select! {
            result = &mut server => result.map_err(CollectorError::from),
            () = shutdown => {
                info!("shutdown requested, closing streams");
                let _ = stop_tx.send(true);
                match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                    Ok(result) => result.map_err(CollectorError::from),
                    Err(_) => {
                        warn!(grace = ?config.shutdown_grace, "connections still open, stopping anyway");
                        Ok(())
                    }
                }
            }
        };
        if let Some(task) = stats_task {
            task.abort();
        }
        deny_task.abort();
        self.log_stats();
        result
    }

    /// Logs every host's counters at info level.
    pub fn log_stats(&self) {
        let stats = self.stats();
        info!(
            hosts = stats.hosts.len(),
            rejected_batches = stats.rejected_batches,
            publish_streams = stats.publish_streams,
            subscribers = stats.subscribers,
            "collector stats"
        );
        for (host_id, h) in &stats.hosts {
            info!(
                host_id,
                instance = %h.sensor_instance_id,
                batches = h.batches,
                events = h.events,
                bytes_received = h.bytes_received,
                gaps = h.gaps,
                missing_batches = h.missing_batches,
                duplicates = h.duplicates,
                restarts = h.restarts,
                last_sequence = h.last_sequence,
                kernel_ringbuf_full = h.drops.kernel_ringbuf_full,
                userspace_queue_full = h.drops.userspace_queue_full,
                userspace_batches_dropped = h.drops.userspace_batches_dropped,
                userspace_events_dropped = h.drops.userspace_events_dropped,
                malformed_kernel_records = h.drops.malformed_kernel_records,
                "host stats"
            );
        }
    }
}

async fn log_stats_every(
    collector: Collector,
    every: std::time::Duration,
    stop: impl Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => collector.log_stats(),
            () = &mut stop => return,
        }
    }
}

/// Picks up `pki revoke` within [`DENY_LIST_POLL`] without a signal.
async fn poll_deny_list(trust: Arc<Trust>, stop: impl Future<Output = ()>) {
    let mut ticker = tokio::time::interval(DENY_LIST_POLL);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                match trust.reload_deny_list_if_changed() {
                    Ok(true) => info!("deny list reloaded"),
                    Ok(false) => {}
                    Err(e) => warn!("deny list not reloaded, the last good one stays: {e}"),
                }
                if let Err(e) = trust.reload_server_tls_if_changed() {
                    warn!("collector certificate not reloaded, the one in force stays: {e}");
                }
            }
            () = &mut stop => return,
        }
    }
}

/// Completes once shutdown was asked for (or the server state is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

impl Shared {
    /// The host table; a panic elsewhere while it was held leaves counters
    /// that are still usable, so poisoning is ignored.
    fn hosts(&self) -> std::sync::MutexGuard<'_, HostTable> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reject(&self, error: &ingest::IngestError, host_id: &str, sequence: u64) -> Status {
        self.rejected_batches.fetch_add(1, Ordering::Relaxed);
        let status = error.to_status(host_id, sequence);
        warn!(host_id, sequence, code = ?status.code(), "{}", status.message());
        status
    }

    /// Validates, decodes, checks continuity, fans out and acks one batch.
    async fn ingest(self: &Arc<Self>, batch: SensorBatch) -> Result<Ingested, Status> {
        // The collector's own clock, whatever the batch says about time.
        let received = SystemTime::now();
        let host_id = batch
            .host
            .as_ref()
            .map(|h| h.host_id.clone())
            .unwrap_or_default();
        let sequence = batch.sequence;
        let limits = self.limits;
        // Inline only what is small both ways: a small zstd payload may
        // claim to inflate to 16 MiB, so it is decoded inline only when it
        // says it stays small, and then capped at that size.
        let small = batch.payload.len() <= INLINE_DECODE_BYTES
            && (batch.compression != proto::telemetry::v1::Compression::Zstd as i32
                || (1..=INLINE_DECODE_BYTES as u64).contains(&u64::from(batch.uncompressed_size)));
        let (batch, decoded) = if small {
            let inline = ingest::IngestLimits {
                max_decompressed_bytes: limits.max_decompressed_bytes.min(INLINE_DECODE_BYTES),
                ..limits
            };
            let decoded = ingest::decode_batch(&batch, &inline);
            (batch, decoded)
        } else {
            // Cheap checks first: no thread hop for an obviously bad batch.
            if let Err(e) = ingest::check_header(&batch, &limits) {
                return Err(self.reject(&e, &host_id, sequence));
            }
            let _permit = self
                .decode_permits
                .acquire()
                .await
                .map_err(|_| Status::unavailable("collector is shutting down"))?;
            tokio::task::spawn_blocking(move || {
                let decoded = ingest::decode_batch(&batch, &limits);
                (batch, decoded)
            })
            .await
            .map_err(|e| Status::internal(format!("batch decoder failed: {e}")))?
        };
        let decoded = decoded.map_err(|e| self.reject(&e, &host_id, sequence))?;
        let Some(host) = batch.host else {
            return Err(self.reject(&ingest::IngestError::MissingHost, &host_id, sequence));
        };
        let jump = self
            .hosts()
            .check_jump(&host, sequence, batch.drops.as_ref());
        jump.map_err(|e| self.reject(&e, &host_id, sequence))?;
        if self.store.is_some() {
            return self
                .ingest_stored(
                    host,
                    sequence,
                    batch.drops,
                    batch.payload.len(),
                    decoded.events,
                    received,
                )
                .await;
        }

        let outcome = self
            .hosts()
            .record_batch(
                BatchMeta {
                    host: &host,
                    sequence,
                    drops: batch.drops.as_ref(),
                    event_count: decoded.events.len() as u64,
                    payload_bytes: batch.payload.len() as u64,
                },
                received,
            )
            .map_err(|e| self.reject(&e, &host_id, sequence))?;
        if let Some(restart) = &outcome.observation.restart {
            log_restart(&host_id, &host.sensor_instance_id, restart);
        }
        for record in outcome.records {
            log_record(&host_id, &record);
            self.fanout.publish(FanoutItem::Record(Arc::new(record)));
        }
        if outcome.observation.is_new() {
            debug!(
                host_id,
                sequence,
                events = decoded.events.len(),
                "batch accepted"
            );
            let host = Arc::new(host);
            let received_unix_ns = unix_ns(received);
            for event in decoded.events {
                self.fanout.publish(FanoutItem::Event {
                    host: host.clone(),
                    batch_sequence: sequence,
                    event: Arc::new(event),
                    received_unix_ns,
                    store_id: 0,
                });
            }
        }
        Ok(Ingested::Acked(BatchAck { sequence }))
    }

    /// With a store: the writer checks the sequence against what it stored,
    /// commits, fans out; only then is the batch counted and acked (the
    /// returned future resolves to the ack).
    async fn ingest_stored(
        self: &Arc<Self>,
        host: proto::telemetry::v1::HostIdentity,
        sequence: u64,
        drops: Option<proto::telemetry::v1::DropCounters>,
        payload_bytes: usize,
        events: Vec<proto::telemetry::v1::Event>,
        received: SystemTime,
    ) -> Result<Ingested, Status> {
        // Bounded like the in-memory table: a new host past max_hosts is
        // refused before anything of it is stored.
        let admitted = self.hosts().admit(&host.host_id, received);
        admitted.map_err(|e| self.reject(&e, &host.host_id, sequence))?;
        let event_count = events.len() as u64;
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| Status::internal("no store"))?;
        let not_stored = move |e: StoreError| {
            warn!(sequence, error = %e, "batch not stored, not acked");
            Status::unavailable(format!("batch {sequence} not stored, resend it: {e}"))
        };
        let committed = store
            .submit(host.clone(), sequence, drops, events, received)
            .await
            .map_err(not_stored)?;
        let shared = self.clone();
        Ok(Ingested::Pending(Box::pin(async move {
            let stored = committed.await.map_err(not_stored)?;
            shared.count_stored(
                host,
                sequence,
                drops,
                event_count,
                payload_bytes,
                received,
                &stored,
            );
            Ok(BatchAck { sequence })
        })))
    }

    /// Logs and counts a committed batch.
    #[allow(clippy::too_many_arguments)]
    fn count_stored(
        &self,
        host: proto::telemetry::v1::HostIdentity,
        sequence: u64,
        drops: Option<proto::telemetry::v1::DropCounters>,
        event_count: u64,
        payload_bytes: usize,
        received: SystemTime,
        stored: &BatchStored,
    ) {
        if let Some(restart) = &stored.observation.restart {
            log_restart(&host.host_id, &host.sensor_instance_id, restart);
        }
        for record in hosts::sequence_records(&host, sequence, &stored.observation) {
            log_record(&host.host_id, &record);
        }
        self.hosts().count_stored(
            BatchMeta {
                host: &host,
                sequence,
                drops: drops.as_ref(),
                event_count,
                payload_bytes: payload_bytes as u64,
            },
            &stored.observation,
            received,
        );
    }
}

/// A batch that passed the checks: acked already, or waiting for its
/// commit to the store.
enum Ingested {
    Acked(BatchAck),
    Pending(AckFuture),
}

type AckFuture = Pin<Box<dyn Future<Output = Result<BatchAck, Status>> + Send + 'static>>;

/// A pending ack with the bytes its batch holds until then.
type WeighedAck = Pin<Box<dyn Future<Output = (Result<BatchAck, Status>, usize)> + Send + 'static>>;

/// Store queries read at the same time at most; more wait their turn.
const MAX_CONCURRENT_QUERIES: usize = 4;

/// Batches of one stream waiting for their commit at most; acks go out in
/// the stream's order.
const MAX_PENDING_PER_STREAM: usize = 64;

/// Bytes of one stream's batches waiting for their commit at most (wire
/// size plus declared decoded size): with 64 large batches a stream could
/// otherwise hold hundreds of MiB. Past it the stream is not read until
/// commits free room (HTTP/2 flow control then slows the sensor; nothing
/// is refused or lost). One batch is always admitted, however large.
pub const MAX_PENDING_BYTES_PER_STREAM: usize = 32 << 20;

/// What a batch weighs against [`MAX_PENDING_BYTES_PER_STREAM`].
fn pending_weight(batch: &SensorBatch) -> usize {
    prost::Message::encoded_len(batch) + batch.uncompressed_size as usize
}

/// UTC ns since the Unix epoch; 0 for a clock set before it.
pub(crate) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn log_restart(host_id: &str, instance: &str, restart: &Restart) {
    info!(
        host_id,
        instance,
        previous_instance = %restart.previous_instance_id,
        previous_last_sequence = restart.previous_last_sequence,
        "sensor restarted"
    );
}

fn log_record(host_id: &str, record: &HostRecord) {
    match &record.record {
        Some(host_record::Record::Sequence(s)) => match s.kind() {
            sequence_record::Kind::Gap => {
                warn!(
                    host_id,
                    first = s.first,
                    last = s.last,
                    "batches never arrived"
                );
            }
            sequence_record::Kind::Duplicate => {
                warn!(host_id, sequence = s.first, "duplicate batch dropped");
            }
            sequence_record::Kind::Late => {
                info!(
                    host_id,
                    sequence = s.first,
                    "batch reported missing arrived late, stored"
                );
            }
            _ => {}
        },
        Some(host_record::Record::Drops(d)) => {
            warn!(host_id, drops = ?d, "sensor drop counters changed")
        }
        Some(host_record::Record::Status(_)) => {}
        None => {}
    }
}

/// Counts an open `Publish` stream for as long as it lives.
struct StreamGuard(Arc<Shared>);

impl StreamGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.publish_streams.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.publish_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// tonic refuses a message over `max_decoding_message_size` with
/// OUT_OF_RANGE; for a sensor that is a size limit like any other.
fn inbound_error(status: Status, limit: usize) -> Status {
    if status.code() == Code::OutOfRange {
        Status::resource_exhausted(format!(
            "SensorBatch message refused: larger than the {limit}-byte gRPC limit \
             (max_batch_bytes plus envelope): {}",
            status.message()
        ))
    } else {
        status
    }
}

struct IngestService {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<BatchAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl TelemetryIngest for IngestService {
    type PublishStream = AckStream;

    async fn publish(
        &self,
        request: Request<Streaming<SensorBatch>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        let peer = request.remote_addr();
        let identity = self.shared.trust.sensor(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(32);
        let guard = StreamGuard::new(self.shared.clone());
        let stop = stopped(self.stop.clone());
        let grpc_limit = self.shared.config.max_grpc_message_bytes();
        debug!(?peer, "publish stream opened");
        tokio::spawn(async move {
            let shared = guard.0.clone();
            tokio::pin!(stop);
            // Acks in the stream's order: batches waiting for their commit,
            // and after them any ack or refusal that is already known.
            let mut pending: FuturesOrdered<WeighedAck> = FuturesOrdered::new();
            let mut pending_bytes = 0usize;
            // A refusal waits behind the pending acks; nothing after it is
            // read.
            let mut refused = false;
            loop {
                let next = tokio::select! {
                    () = &mut stop => break,
                    Some((reply, weight)) = pending.next(), if !pending.is_empty() => {
                        pending_bytes -= weight;
                        let failed = reply.is_err();
                        if tx.send(reply).await.is_err() || failed {
                            break;
                        }
                        continue;
                    }
                    next = inbound.message(), if !refused
                        && pending.len() < MAX_PENDING_PER_STREAM
                        && pending_bytes < MAX_PENDING_BYTES_PER_STREAM => next,
                };
                let reply = match next {
                    Ok(Some(batch)) => {
                        let claimed = batch.host.as_ref().map_or("", |h| h.host_id.as_str());
                        let weight = pending_weight(&batch);
                        match shared.trust.same_host(identity.as_ref(), claimed, "batch") {
                            Err(status) => Err(status),
                            Ok(()) => match shared.ingest(batch).await {
                                Ok(Ingested::Pending(ack)) => {
                                    pending_bytes += weight;
                                    shared
                                        .pending_bytes_high_water
                                        .fetch_max(pending_bytes as u64, Ordering::Relaxed);
                                    if pending_bytes >= MAX_PENDING_BYTES_PER_STREAM {
                                        shared.publish_throttled.fetch_add(1, Ordering::Relaxed);
                                    }
                                    pending.push_back(Box::pin(ack.map(move |r| (r, weight))));
                                    continue;
                                }
                                Ok(Ingested::Acked(ack)) => Ok(ack),
                                Err(status) => Err(status),
                            },
                        }
                    }
                    Ok(None) => {
                        // The sensor finished sending: its last acks.
                        while let Some((reply, _)) = pending.next().await {
                            if tx.send(reply).await.is_err() {
                                break;
                            }
                        }
                        break;
                    }
                    Err(status) if status.code() == Code::OutOfRange => {
                        shared.rejected_batches.fetch_add(1, Ordering::Relaxed);
                        let status = inbound_error(status, grpc_limit);
                        warn!(?peer, "{}", status.message());
                        Err(status)
                    }
                    Err(status) => {
                        debug!(?peer, %status, "publish stream broke");
                        break;
                    }
                };
                if !pending.is_empty() {
                    refused = reply.is_err();
                    pending.push_back(Box::pin(std::future::ready((reply, 0))));
                    continue;
                }
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
            debug!(?peer, "publish stream closed");
            drop(guard);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct SubscribeService {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl TelemetrySubscribe for SubscribeService {
    type SubscribeStream = SubscriberStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let operator =
            self.shared
                .trust
                .operator(request.metadata(), crate::auth::Role::Viewer, "subscribe");
        let req = request.into_inner();
        let trail = self.shared.trail.clone();
        let mut entry = subscribe_entry(&req, peer);
        let operator = match operator {
            Ok(op) => {
                entry.operator = Some(op.name.clone());
                op
            }
            Err(status) => {
                entry.outcome = audit::Outcome::Refused;
                return Err(trail.refused(entry, status).await);
            }
        };
        let filter = match SubscriptionFilter::from_request(&req) {
            Ok(filter) => filter,
            Err(e) => {
                let status = Status::invalid_argument(e.to_string());
                return Err(trail.refused(entry, status).await);
            }
        };
        info!(?peer, hosts = ?req.host_ids, kinds = ?req.kinds,
            process_names = ?req.process_names, "subscriber connected");
        trail.record(entry.clone()).await.map_err(|e| {
            Status::unavailable(format!(
                "the audit log cannot record the subscription, so it is refused: {e}"
            ))
        })?;
        // The stream ends at shutdown, or once its operator is removed (or
        // loses the viewer role): the token was checked only at the start.
        let trust = self.shared.trust.clone();
        let end = futures::future::select(
            Box::pin(stopped(self.stop.clone())),
            Box::pin(async move {
                while trust.still_in_force(&operator, crate::auth::Role::Viewer) {
                    tokio::time::sleep(OPERATOR_RECHECK).await;
                }
                info!(
                    operator = operator.name,
                    "subscription ended: operator no longer in force"
                );
            }),
        );
        let stream = self.shared.fanout.subscribe(filter, async move {
            end.await;
        });
        let stream = OnDrop::new(stream, move || {
            entry.action = "unsubscribe".into();
            entry.detail.clear();
            // Logged by the trail when it fails; the subscriber is gone.
            let _ = trail.record_now(entry);
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        let peer = request.remote_addr();
        // The same rule as Subscribe: the viewer role.
        let operator =
            self.shared
                .trust
                .operator(request.metadata(), crate::auth::Role::Viewer, "query");
        let req = request.into_inner();
        let trail = self.shared.trail.clone();
        let mut entry = filter_entry("query", &req.host_ids, &req.kinds, &req.process_names, peer);
        entry.args.insert(
            "since".into(),
            audit::ArgValue::One(req.since_unix_ns.to_string()),
        );
        entry.args.insert(
            "until".into(),
            audit::ArgValue::One(req.until_unix_ns.to_string()),
        );
        match operator {
            Ok(op) => entry.operator = Some(op.name),
            Err(status) => return Err(trail.refused(entry, status).await),
        }
        let Some(store) = self.shared.store.clone() else {
            let status = Status::failed_precondition(
                "this collector keeps no store (started without one): nothing to query",
            );
            return Err(trail.refused(entry, status).await);
        };
        // One audit record per query, not per page.
        let first_page = req.cursor.is_empty();
        let _permit = self
            .shared
            .query_permits
            .acquire()
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        let page = tokio::task::spawn_blocking(move || store.query(&req))
            .await
            .map_err(|e| Status::internal(format!("query task failed: {e}")))?;
        let page = match page {
            Ok(page) => page,
            Err(e @ StoreError::InvalidQuery(_)) => {
                let status = Status::invalid_argument(e.to_string());
                return Err(trail.refused(entry, status).await);
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        if first_page {
            trail.record(entry).await.map_err(|e| {
                Status::unavailable(format!(
                    "the audit log cannot record the query, so it is refused: {e}"
                ))
            })?;
        }
        Ok(Response::new(QueryResponse {
            items: page.items,
            next_cursor: page.next_cursor,
            high_water_id: page.high_water_id,
        }))
    }
}

/// The audit entry of a subscription: its filter as given (bounded).
fn subscribe_entry(req: &SubscribeRequest, peer: Option<std::net::SocketAddr>) -> audit::Entry {
    filter_entry(
        "subscribe",
        &req.host_ids,
        &req.kinds,
        &req.process_names,
        peer,
    )
}

/// An audit entry for a read of telemetry with these filters.
fn filter_entry(
    action: &str,
    host_ids: &[String],
    kinds: &[i32],
    process_names: &[String],
    peer: Option<std::net::SocketAddr>,
) -> audit::Entry {
    let mut entry = audit::Entry::new(action, audit::Outcome::Ok);
    entry.peer = peer.map(|p| p.to_string());
    let kinds = kinds.iter().map(|&k| {
        proto::telemetry::v1::EventKind::try_from(k)
            .map_or_else(|_| k.to_string(), |k| k.as_str_name().to_owned())
    });
    for (name, items) in [
        ("hosts", trail::list(host_ids.iter().cloned())),
        ("kinds", trail::list(kinds)),
        ("processes", trail::list(process_names.iter().cloned())),
    ] {
        entry.args.insert(name.to_owned(), items);
    }
    entry
}
