//! Builders for valid telemetry and a minimal sensor-side client, so tests
//! (here and in other crates) publish exactly what a sensor would without
//! each re-implementing the batch encoding. Not used by the server itself.
//! Test support: a failure to build a test batch panics.
#![allow(clippy::expect_used)]

use prost::Message;
use proto::telemetry::v1::{
    BatchAck, Compression, DropCounters, Event, EventBatch, ExecEvent, ExitEvent, ForkEvent,
    HostIdentity, Process, SensorBatch, event, telemetry_ingest_client::TelemetryIngestClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// CLOCK_REALTIME - CLOCK_BOOTTIME of the test events' sensor, their
/// `boot_time_unix_ns`: their UTC time is this plus their `timestamp_ns`
/// (the kiosk booted 2026-12-04T12:00:00Z).
pub const BOOTED_AT_UNIX_NS: u64 = 1_796_385_600_000_000_000;

/// `timestamp_ns` and `boot_time_unix_ns` of test event number `n`.
fn event_at(n: u32, kind: event::Kind) -> Event {
    let timestamp_ns = 1_000_000_000 + u64::from(n);
    Event {
        timestamp_ns,
        boot_time_unix_ns: BOOTED_AT_UNIX_NS,
        kind: Some(kind),
    }
}

/// This process's clock as the collector reads it for
/// `HostEvent.received_unix_ns` (UTC ns since the epoch): an in-process
/// collector's receive times fall between two calls around a publish.
pub fn now_unix_ns() -> u64 {
    crate::server::unix_ns(std::time::SystemTime::now())
}

/// A host identity with the two fields the collector requires.
pub fn host(host_id: &str, sensor_instance_id: &str) -> HostIdentity {
    HostIdentity {
        host_id: host_id.to_owned(),
        hostname: format!("{host_id}.local"),
        sensor_instance_id: sensor_instance_id.to_owned(),
        sensor_version: "test".to_owned(),
        ..Default::default()
    }
}

fn process(pid: u32, ppid: u32, comm: &str) -> Process {
    Process {
        pid,
        tid: pid,
        ppid,
        uid: 1000,
        gid: 1000,
        euid: 1000,
        egid: 1000,
        comm: comm.to_owned(),
        ..Default::default()
    }
}

/// An exec of `filename` with `argv`, by a process now called `comm`.
pub fn exec_event(pid: u32, comm: &str, filename: &str, argv: &[&str]) -> Event {
    event_at(
        pid,
        event::Kind::Exec(ExecEvent {
            process: Some(process(pid, 1, comm)),
            filename: filename.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            sha256: "ab".repeat(32),
            ..Default::default()
        }),
    )
}

/// A fork that created `pid` from `ppid`.
pub fn fork_event(pid: u32, ppid: u32, comm: &str) -> Event {
    event_at(
        pid,
        event::Kind::Fork(ForkEvent {
            process: Some(process(pid, ppid, comm)),
        }),
    )
}

/// An exit with a status code or a signal.
pub fn exit_event(pid: u32, comm: &str, exit_code: Option<i32>, signal: Option<i32>) -> Event {
    event_at(
        pid,
        event::Kind::Exit(ExitEvent {
            process: Some(process(pid, 1, comm)),
            exit_code,
            signal,
            ..Default::default()
        }),
    )
}

fn batch(
    host: &HostIdentity,
    sequence: u64,
    compression: Compression,
    events: Vec<Event>,
) -> SensorBatch {
    let event_count = events.len() as u32;
    let encoded = EventBatch { events }.encode_to_vec();
    let payload = match compression {
        Compression::Zstd => zstd::bulk::compress(&encoded, 3).expect("zstd compress"),
        _ => encoded.clone(),
    };
    SensorBatch {
        host: Some(host.clone()),
        sequence,
        drops: Some(DropCounters::default()),
        compression: compression as i32,
        payload,
        event_count,
        uncompressed_size: encoded.len() as u32,
        sealed_at_ns: 0,
    }
}

/// A valid zstd-compressed batch, as a sensor sends it.
pub fn zstd_batch(host: &HostIdentity, sequence: u64, events: Vec<Event>) -> SensorBatch {
    batch(host, sequence, Compression::Zstd, events)
}

/// A valid uncompressed batch.
pub fn plain_batch(host: &HostIdentity, sequence: u64, events: Vec<Event>) -> SensorBatch {
    batch(host, sequence, Compression::None, events)
}

/// One open `Publish` stream: send batches, read acks.
pub struct SensorStream {
    tx: mpsc::Sender<SensorBatch>,
    acks: Streaming<BatchAck>,
}

impl SensorStream {
    /// Opens a `Publish` stream to the collector at `url` (http://host:port).
    pub async fn connect(url: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .connect()
            .await?;
        Ok(Self::open(channel).await?)
    }

    /// Opens a `Publish` stream on `channel` (a TLS one carries the
    /// client certificate the collector checks).
    pub async fn open(channel: tonic::transport::Channel) -> Result<Self, Status> {
        let mut client = TelemetryIngestClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let acks = client.publish(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, acks })
    }

    /// A handle that queues batches from another task while this one
    /// reads acks.
    pub fn sender(&self) -> mpsc::Sender<SensorBatch> {
        self.tx.clone()
    }

    /// Queues a batch; fails only once the stream is gone.
    pub async fn send(&self, batch: SensorBatch) -> Result<(), Status> {
        self.tx
            .send(batch)
            .await
            .map_err(|_| Status::cancelled("publish stream closed"))
    }

    /// The next ack, `Ok(None)` at a clean end, `Err` with the collector's
    /// refusal.
    pub async fn next_ack(&mut self) -> Result<Option<BatchAck>, Status> {
        self.acks.message().await
    }

    /// Publishes a zstd batch of `events` and waits for its ack; a refusal
    /// fails the test.
    pub async fn publish_events(&mut self, host: &HostIdentity, sequence: u64, events: Vec<Event>) {
        self.publish(zstd_batch(host, sequence, events))
            .await
            .expect("batch refused");
    }

    /// Sends one batch and waits for its ack.
    pub async fn publish(&mut self, batch: SensorBatch) -> Result<BatchAck, Status> {
        self.send(batch).await?;
        self.next_ack()
            .await?
            .ok_or_else(|| Status::unavailable("stream ended before the ack"))
    }
}
