//! Events -> sealed, numbered, compressed `SensorBatch`es.
//!
//! Split in three so the rules are testable without timers: [`Accumulator`]
//! decides *when* a batch is complete (count or age), [`Sealer`] decides
//! *what* a batch is (sequence, drop counters, zstd payload), and [`run`]
//! drives both from a channel with tokio timers (no polling).

use std::{sync::Arc, time::Duration};

use prost::Message;
use proto::telemetry::v1::{Compression, Event, EventBatch, HostIdentity, SensorBatch};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{DropTracker, boottime_ns};

/// Why a batch could not be sealed (its events are counted as dropped).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("zstd compression failed: {0}")]
    Compress(std::io::Error),
    #[error("batch of {0} bytes does not fit the uint32 size field")]
    TooLarge(usize),
}

/// Largest encoded `EventBatch` (before compression) the batcher builds:
/// under the collector's default limits (4 MiB compressed, 16 MiB
/// decompressed) even when the payload does not compress at all, so a batch
/// is never refused for its size whatever `batching.max_events` says.
pub const MAX_BATCH_BYTES: usize = 3 << 20;

/// Collects events until a batch is full (count or bytes) or old enough.
#[derive(Debug)]
pub struct Accumulator {
    events: Vec<Event>,
    /// Encoded size of `EventBatch { events }`, kept exactly.
    bytes: usize,
    first_at: Option<Instant>,
    max_events: usize,
    max_bytes: usize,
    max_delay: Duration,
}

impl Accumulator {
    /// `max_events` is raised to 1 if 0.
    pub fn new(max_events: usize, max_delay: Duration) -> Self {
        Self {
            events: Vec::new(),
            bytes: 0,
            first_at: None,
            max_events: max_events.max(1),
            max_bytes: MAX_BATCH_BYTES,
            max_delay,
        }
    }

    /// Overrides [`MAX_BATCH_BYTES`] (tests, or a collector with other limits).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Encoded size of the pending events as one `EventBatch`.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Adds an event; returns the batch when it reached `max_events` or
    /// `max_bytes`.
    pub fn push(&mut self, event: Event, now: Instant) -> Option<Vec<Event>> {
        self.first_at.get_or_insert(now);
        let len = event.encoded_len();
        // Field 1, length-delimited: one tag byte, the length, the message.
        self.bytes += 1 + prost::length_delimiter_len(len) + len;
        self.events.push(event);
        (self.events.len() >= self.max_events || self.bytes >= self.max_bytes).then(|| self.take())
    }

    /// When the pending events must be sealed at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.max_delay)
    }

    /// Everything pending, leaving the accumulator empty.
    pub fn take(&mut self) -> Vec<Event> {
        self.first_at = None;
        self.bytes = 0;
        std::mem::take(&mut self.events)
    }
}

/// Numbers and encodes batches. One per sensor instance: the sequence starts
/// at 1 and only moves forward.
pub struct Sealer {
    host: HostIdentity,
    next_sequence: u64,
    zstd_level: i32,
    /// Kept across batches: a zstd context is costly to create per batch.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    drops: Arc<DropTracker>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("host", &self.host)
            .field("next_sequence", &self.next_sequence)
            .field("zstd_level", &self.zstd_level)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(host: HostIdentity, zstd_level: i32, drops: Arc<DropTracker>) -> Self {
        Self {
            host,
            next_sequence: 1,
            zstd_level,
            compressor: None,
            drops,
        }
    }

    /// The sequence the next sealed batch will carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// prost-encodes the events, compresses them and numbers the batch. A
    /// failed seal takes no sequence number (no false gap) and counts its
    /// events as dropped (no silent loss).
    pub fn seal(&mut self, events: Vec<Event>) -> Result<SensorBatch, SealError> {
        let count = events.len();
        let result = self.encode(events);
        match result {
            Ok((payload, uncompressed_size, event_count)) => {
                let sequence = self.next_sequence;
                self.next_sequence += 1;
                Ok(SensorBatch {
                    host: Some(self.host.clone()),
                    sequence,
                    drops: Some(self.drops.snapshot()),
                    compression: Compression::Zstd as i32,
                    payload,
                    event_count,
                    uncompressed_size,
                    sealed_at_ns: boottime_ns(),
                })
            }
            Err(e) => {
                self.drops.add_batches_dropped(1, count as u64);
                Err(e)
            }
        }
    }

    fn encode(&mut self, events: Vec<Event>) -> Result<(Vec<u8>, u32, u32), SealError> {
        let event_count =
            u32::try_from(events.len()).map_err(|_| SealError::TooLarge(events.len()))?;
        let raw = EventBatch { events }.encode_to_vec();
        let size = u32::try_from(raw.len()).map_err(|_| SealError::TooLarge(raw.len()))?;
        let compressor = match &mut self.compressor {
            Some(c) => c,
            slot => slot
                .insert(zstd::bulk::Compressor::new(self.zstd_level).map_err(SealError::Compress)?),
        };
        let payload = compressor.compress(&raw).map_err(SealError::Compress)?;
        Ok((payload, size, event_count))
    }
}

/// Runs until `events` closes or `stop` fires, then seals what is pending
/// and returns. Every sealed batch goes to `sink`, in sequence order.
pub async fn run(
    mut events: mpsc::Receiver<Event>,
    mut stop: oneshot::Receiver<()>,
    mut acc: Accumulator,
    mut sealer: Sealer,
    mut sink: impl FnMut(SensorBatch),
) {
    let mut seal = |batch: Vec<Event>| {
        if batch.is_empty() {
            return;
        }
        match sealer.seal(batch) {
            Ok(sealed) => sink(sealed),
            Err(e) => {
                tracing::error!(error = %e, "could not seal a batch; its events are counted as dropped")
            }
        }
    };
    loop {
        let deadline = acc.deadline();
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Some(event) => {
                    if let Some(full) = acc.push(event, Instant::now()) {
                        seal(full);
                    }
                }
                None => break,
            },
            () = expired => seal(acc.take()),
            _ = &mut stop => {
                // Take what already arrived, then stop.
                while let Ok(event) = events.try_recv() {
                    if let Some(full) = acc.push(event, Instant::now()) {
                        seal(full);
                    }
                }
                break;
            }
        }
    }
    seal(acc.take());
}

#[cfg(test)]
mod tests {
    use proto::telemetry::v1::{ForkEvent, Process, event::Kind};

    use super::*;

    fn ev(pid: u32) -> Event {
        Event {
            timestamp_ns: u64::from(pid) * 1000,
            kind: Some(Kind::Fork(ForkEvent {
                process: Some(Process {
                    pid,
                    comm: format!("p{pid}"),
                    ..Default::default()
                }),
            })),
        }
    }

    fn host() -> HostIdentity {
        HostIdentity {
            host_id: "h1".into(),
            sensor_instance_id: "i1".into(),
            ..Default::default()
        }
    }

    fn decode(batch: &SensorBatch) -> Vec<Event> {
        assert_eq!(batch.compression, Compression::Zstd as i32);
        let raw = zstd::stream::decode_all(batch.payload.as_slice()).expect("zstd");
        assert_eq!(raw.len(), batch.uncompressed_size as usize);
        let events = EventBatch::decode(raw.as_slice()).expect("prost").events;
        assert_eq!(events.len(), batch.event_count as usize);
        events
    }

    #[test]
    fn sealing_numbers_from_one_and_round_trips() {
        let drops = Arc::new(DropTracker::new());
        drops.set_kernel_ringbuf_full(5);
        let mut sealer = Sealer::new(host(), 3, drops.clone());
        let events: Vec<Event> = (1..=50).map(ev).collect();
        let b1 = sealer.seal(events.clone()).expect("seal");
        drops.add_userspace_queue_full(2);
        let b2 = sealer.seal(vec![ev(99)]).expect("seal");
        let b3 = sealer.seal(vec![ev(100)]).expect("seal");
        assert_eq!([b1.sequence, b2.sequence, b3.sequence], [1, 2, 3]);
        assert_eq!(sealer.next_sequence(), 4);
        assert_eq!(decode(&b1), events);
        assert_eq!(decode(&b2), vec![ev(99)]);
        assert_eq!(b1.host, Some(host()));
        let d1 = b1.drops.expect("drops in every batch");
        assert_eq!((d1.kernel_ringbuf_full, d1.userspace_queue_full), (5, 0));
        assert_eq!(
            b2.drops.expect("drops").userspace_queue_full,
            2,
            "snapshot at seal time"
        );
        assert!(b3.sealed_at_ns >= b1.sealed_at_ns && b1.sealed_at_ns > 0);
        assert!(
            b1.payload.len() < b1.uncompressed_size as usize,
            "compressed"
        );
    }

    #[test]
    fn accumulator_fills_by_count() {
        let start = Instant::now();
        let mut acc = Accumulator::new(3, Duration::from_millis(500));
        assert!(acc.deadline().is_none());
        assert!(acc.push(ev(1), start).is_none());
        assert_eq!(acc.deadline(), Some(start + Duration::from_millis(500)));
        assert!(
            acc.push(ev(2), start + Duration::from_millis(400))
                .is_none()
        );
        assert_eq!(
            acc.deadline(),
            Some(start + Duration::from_millis(500)),
            "age of the first event"
        );
        let full = acc.push(ev(3), start).expect("full at 3");
        assert_eq!(full, vec![ev(1), ev(2), ev(3)]);
        assert!(acc.is_empty() && acc.deadline().is_none());
    }

    #[test]
    fn accumulator_fills_by_encoded_size() {
        let now = Instant::now();
        let one = EventBatch {
            events: vec![ev(1)],
        }
        .encoded_len();
        let mut acc = Accumulator::new(1000, Duration::from_secs(1)).with_max_bytes(3 * one);
        assert!(acc.push(ev(1), now).is_none());
        assert!(acc.push(ev(2), now).is_none());
        let two = EventBatch {
            events: vec![ev(1), ev(2)],
        };
        assert_eq!(
            acc.encoded_bytes(),
            two.encoded_len(),
            "size is tracked exactly"
        );
        let full = acc
            .push(ev(3), now)
            .expect("full by bytes, far below max_events");
        assert_eq!(full.len(), 3);
        assert_eq!(acc.encoded_bytes(), 0);
    }

    type Sealed = Arc<std::sync::Mutex<Vec<SensorBatch>>>;

    fn start(
        max_events: usize,
    ) -> (
        mpsc::Sender<Event>,
        oneshot::Sender<()>,
        Sealed,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let (stop_tx, stop_rx) = oneshot::channel();
        let out: Sealed = Arc::default();
        let sink = out.clone();
        let sealer = Sealer::new(host(), 3, Arc::new(DropTracker::new()));
        let acc = Accumulator::new(max_events, Duration::from_millis(500));
        let task = tokio::spawn(run(rx, stop_rx, acc, sealer, move |b| {
            sink.lock().expect("lock").push(b)
        }));
        (tx, stop_tx, out, task)
    }

    #[tokio::test(start_paused = true)]
    async fn seals_by_count_then_by_time() {
        let (tx, _stop, out, task) = start(4);
        for pid in 1..=9 {
            tx.send(ev(pid)).await.expect("send");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        {
            let got = out.lock().expect("lock");
            assert_eq!(got.len(), 2, "two full batches of 4, one event pending");
            assert_eq!(decode(&got[0]), (1..=4).map(ev).collect::<Vec<_>>());
            assert_eq!(decode(&got[1]), (5..=8).map(ev).collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            out.lock().expect("lock").len(),
            2,
            "not sealed before max_delay"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        {
            let got = out.lock().expect("lock");
            assert_eq!(got.len(), 3, "sealed once the first event is 500 ms old");
            assert_eq!(decode(&got[2]), vec![ev(9)]);
            let seqs: Vec<u64> = got.iter().map(|b| b.sequence).collect();
            assert_eq!(seqs, [1, 2, 3]);
        }
        // Nothing pending: no empty batch is ever sealed, however long we wait.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(out.lock().expect("lock").len(), 3);
        tx.send(ev(10)).await.expect("send");
        drop(tx);
        task.await.expect("batcher ends when its input closes");
        let got = out.lock().expect("lock");
        assert_eq!(got.len(), 4, "the pending event is flushed at close");
        assert_eq!((got[3].sequence, decode(&got[3])), (4, vec![ev(10)]));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_flushes_what_arrived() {
        let (tx, stop, out, task) = start(100);
        tx.send(ev(1)).await.expect("send");
        tx.send(ev(2)).await.expect("send");
        stop.send(()).expect("stop");
        task.await.expect("stopped");
        let got = out.lock().expect("lock");
        assert_eq!(got.len(), 1);
        assert_eq!(decode(&got[0]), vec![ev(1), ev(2)]);
    }
}
