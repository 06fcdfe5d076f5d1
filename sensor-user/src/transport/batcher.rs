//! Encoded events -> sealed, numbered, compressed `SensorBatch`es.
//!
//! Events arrive already prost-encoded ([`EncodedEvents`]), so a batch is
//! built by copying bytes and sealed by compressing them.
//!
//! Split in three so the rules are testable without timers: [`Accumulator`]
//! decides *when* a batch is complete (count or age), [`Sealer`] decides
//! *what* a batch is (sequence, drop counters, zstd payload), and [`run`]
//! drives both from a channel with tokio timers (no polling).

use std::{path::PathBuf, sync::Arc, time::Duration};

use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};
use proto::telemetry::v1::{Compression, Event, HostIdentity, SensorBatch, event::Kind};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::DropTracker;
use crate::clock::{EventTime, boottime_ns};

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

/// Prost-encoded events, each framed as a field 1 of `EventBatch` (tag,
/// length, event): the concatenation is the `EventBatch` encoding.
/// Enrichment encodes each event once, on its own thread, and hands the
/// batcher a run of them at a time; the batcher only copies bytes, and no
/// large message crosses a channel or is dropped field by field later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedEvents {
    bytes: Vec<u8>,
    events: usize,
    /// Local audit record files these events came from: deleted only once
    /// the batch carrying them is acknowledged.
    audit: Vec<PathBuf>,
}

impl EncodedEvents {
    /// Empty, with room for `bytes` of events.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            events: 0,
            audit: Vec::new(),
        }
    }

    /// Marks these events as read from the audit record file at `path`.
    pub fn with_audit_file(mut self, path: PathBuf) -> Self {
        self.audit.push(path);
        self
    }

    /// The audit record files these events came from.
    pub fn audit_files(&self) -> &[PathBuf] {
        &self.audit
    }

    /// `events`, encoded (for events made outside enrichment).
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut out = Self::default();
        for event in events {
            out.push_frame(event.encoded_len(), |buf| event.encode_raw(buf));
        }
        out
    }

    /// Appends `Event { timestamp_ns, boot_time_unix_ns, kind }` with
    /// `process` (the prost encoding of a `Process`, without tag or length)
    /// put into `kind`, whose own `process` must be `None`: byte for byte
    /// what prost writes for the complete event, as `process` is field 1 of
    /// every kind that has one and prost writes fields in number order
    /// (the times are fields 1 and 3 of `Event`, the kinds 10 and up).
    ///
    /// A kind without a process field (isolation) is encoded as it is.
    pub fn push_with_process(&mut self, time: EventTime, kind: &Kind, process: &[u8]) {
        match kind {
            Kind::Exec(m) => self.push_spliced(time, (10, 1), m, process),
            Kind::Fork(m) => self.push_spliced(time, (11, 1), m, process),
            Kind::Exit(m) => self.push_spliced(time, (12, 1), m, process),
            Kind::File(m) => self.push_spliced(time, (13, 1), m, process),
            Kind::Network(m) => self.push_spliced(time, (14, 1), m, process),
            Kind::Policy(m) => self.push_spliced(time, (15, 1), m, process),
            Kind::Alert(m) => self.push_spliced(time, (16, 1), m, process),
            // A call the kernel saw has its process; a finding of the
            // sensor's own checks has none.
            Kind::Tamper(m) if !process.is_empty() => self.push_spliced(time, (18, 7), m, process),
            Kind::Isolation(_) | Kind::Tamper(_) | Kind::Response(_) => {
                let event = Event {
                    timestamp_ns: time.timestamp_ns,
                    boot_time_unix_ns: time.boot_time_unix_ns,
                    kind: Some(kind.clone()),
                };
                self.push_frame(event.encoded_len(), |buf| event.encode_raw(buf));
            }
        }
    }

    /// `Event` fields 1 and 3 (the times, each only when non-zero, as
    /// prost leaves out proto3 defaults), then field `tag` holding
    /// `process` as its field `process_field` followed by the fields of
    /// `m` (protobuf takes fields in any order).
    fn push_spliced(
        &mut self,
        time: EventTime,
        (tag, process_field): (u32, u32),
        m: &impl Message,
        process: &[u8],
    ) {
        let process_len =
            key_len(process_field) + encoded_len_varint(process.len() as u64) + process.len();
        let inner_len = process_len + m.encoded_len();
        let mut len = key_len(tag) + encoded_len_varint(inner_len as u64) + inner_len;
        let times = [(1, time.timestamp_ns), (3, time.boot_time_unix_ns)];
        for (field, value) in times {
            if value != 0 {
                len += key_len(field) + encoded_len_varint(value);
            }
        }
        self.push_frame(len, |out| {
            for (field, value) in times {
                if value != 0 {
                    prost::encoding::uint64::encode(field, &value, out);
                }
            }
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(inner_len as u64, out);
            encode_key(process_field, WireType::LengthDelimited, out);
            encode_varint(process.len() as u64, out);
            out.extend_from_slice(process);
            // What `encode` does after its capacity check, which a Vec
            // never fails and which would measure `m` a second time.
            m.encode_raw(out);
        });
    }

    /// Appends one event of `len` bytes, written by `encode`.
    fn push_frame(&mut self, len: usize, encode: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.reserve(1 + encoded_len_varint(len as u64) + len);
        encode_key(1, WireType::LengthDelimited, &mut self.bytes);
        encode_varint(len as u64, &mut self.bytes);
        let start = self.bytes.len();
        encode(&mut self.bytes);
        debug_assert_eq!(self.bytes.len() - start, len);
        self.events += 1;
    }

    /// Appends one framed event taken from another `EncodedEvents`.
    fn push_framed(&mut self, frame: Frame<'_>) {
        self.bytes.extend_from_slice(frame.0);
        self.events += 1;
    }

    /// Each event, framed.
    pub fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            let mut body = rest.get(1..)?;
            let len = prost::encoding::decode_varint(&mut body).ok()? as usize;
            let framed = rest.len() - body.len() + len;
            let (frame, tail) = rest.split_at_checked(framed)?;
            rest = tail;
            Some(Frame(frame))
        })
    }

    pub fn len(&self) -> usize {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Encoded size of the events as one `EventBatch`.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// The prost encoding of the events as one `EventBatch`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One event of an [`EncodedEvents`], with its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a>(&'a [u8]);

/// Collects events until a batch is full (count or bytes) or old enough.
#[derive(Debug)]
pub struct Accumulator {
    batch: EncodedEvents,
    first_at: Option<Instant>,
    max_events: usize,
    max_bytes: usize,
    max_delay: Duration,
}

impl Accumulator {
    /// `max_events` is raised to 1 if 0.
    pub fn new(max_events: usize, max_delay: Duration) -> Self {
        Self {
            batch: EncodedEvents::default(),
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
        self.batch.encoded_len()
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Adds an event; returns the batch when it reached `max_events` or
    /// `max_bytes`.
    pub fn push(&mut self, event: Frame<'_>, now: Instant) -> Option<EncodedEvents> {
        self.first_at.get_or_insert(now);
        self.batch.push_framed(event);
        (self.batch.len() >= self.max_events || self.encoded_bytes() >= self.max_bytes)
            .then(|| self.take())
    }

    /// When the pending events must be sealed at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.max_delay)
    }

    /// Everything pending, leaving the accumulator empty (with room for a
    /// batch as large as this one, so the next one grows without copies).
    pub fn take(&mut self) -> EncodedEvents {
        self.first_at = None;
        let room = self.batch.encoded_len().min(self.max_bytes);
        std::mem::replace(&mut self.batch, EncodedEvents::with_capacity(room))
    }
}

/// A sealed batch and the audit record files whose events it carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sealed {
    pub batch: SensorBatch,
    pub audit: Vec<PathBuf>,
}

/// Numbers and encodes batches. One per sensor instance: the sequence starts
/// at 1 (or after the last spooled one) and only moves forward.
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

    /// Continues a host's sequence after `last` (the spool's last one),
    /// so the collector sees one unbroken sequence across restarts.
    pub fn continuing_after(mut self, last: u64) -> Self {
        self.next_sequence = last.saturating_add(1).max(1);
        self
    }

    /// The sequence the next sealed batch will carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Compresses the encoded events and numbers the batch. A failed seal
    /// takes no sequence number (no false gap) and counts its events as
    /// dropped (no silent loss).
    pub fn seal(&mut self, batch: EncodedEvents) -> Result<SensorBatch, SealError> {
        match self.encode(&batch) {
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
                self.drops.add_batches_dropped(1, batch.len() as u64);
                Err(e)
            }
        }
    }

    fn encode(&mut self, batch: &EncodedEvents) -> Result<(Vec<u8>, u32, u32), SealError> {
        let event_count =
            u32::try_from(batch.len()).map_err(|_| SealError::TooLarge(batch.len()))?;
        let raw = batch.as_bytes();
        let size = u32::try_from(raw.len()).map_err(|_| SealError::TooLarge(raw.len()))?;
        let compressor = match &mut self.compressor {
            Some(c) => c,
            slot => slot
                .insert(zstd::bulk::Compressor::new(self.zstd_level).map_err(SealError::Compress)?),
        };
        let payload = compressor.compress(raw).map_err(SealError::Compress)?;
        Ok((payload, size, event_count))
    }
}

/// Runs until `events` (runs of encoded events) closes or `stop` fires,
/// then seals what is pending and returns. Every sealed batch goes to
/// `sink`, in sequence order. With no event for `heartbeat`, an empty
/// batch (carrying the drop counters) is sealed: a heartbeat. A run of
/// events from audit record files is sealed at once, with the files.
pub async fn run(
    mut events: mpsc::Receiver<EncodedEvents>,
    mut stop: oneshot::Receiver<()>,
    mut acc: Accumulator,
    mut sealer: Sealer,
    heartbeat: Duration,
    mut sink: impl FnMut(Sealed),
) {
    // Whether anything was sealed, for the heartbeat's clock.
    let mut seal = |batch: EncodedEvents, heartbeat: bool| -> bool {
        if batch.is_empty() && !heartbeat {
            return false;
        }
        let audit = batch.audit.clone();
        match sealer.seal(batch) {
            Ok(sealed) => {
                sink(Sealed {
                    batch: sealed,
                    audit,
                });
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not seal a batch; its events are counted as dropped");
                false
            }
        }
    };
    let take = |acc: &mut Accumulator,
                chunk: EncodedEvents,
                seal: &mut dyn FnMut(EncodedEvents, bool) -> bool| {
        let now = Instant::now();
        let mut sealed = false;
        for event in chunk.frames() {
            if let Some(full) = acc.push(event, now) {
                sealed |= seal(full, false);
            }
        }
        if !chunk.audit.is_empty() {
            let mut pending = acc.take();
            pending.audit = chunk.audit;
            sealed |= seal(pending, false);
        }
        sealed
    };
    let mut last_sealed = Instant::now();
    loop {
        let deadline = acc.deadline();
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let idle = acc.is_empty();
        let beat_at = last_sealed + heartbeat;
        let sealed = tokio::select! {
            biased;
            chunk = events.recv() => match chunk {
                Some(chunk) => take(&mut acc, chunk, &mut seal),
                None => break,
            },
            () = expired => seal(acc.take(), false),
            () = tokio::time::sleep_until(beat_at), if idle => {
                // A failed heartbeat waits for the next one too.
                seal(EncodedEvents::default(), true);
                true
            }
            _ = &mut stop => {
                // Take what already arrived, then stop.
                while let Ok(chunk) = events.try_recv() {
                    take(&mut acc, chunk, &mut seal);
                }
                break;
            }
        };
        if sealed {
            last_sealed = Instant::now();
        }
    }
    seal(acc.take(), false);
}

#[cfg(test)]
mod tests {
    use proto::telemetry::v1::{EventBatch, ForkEvent, Process};

    use super::*;

    fn ev(pid: u32) -> Event {
        Event {
            timestamp_ns: u64::from(pid) * 1000,
            boot_time_unix_ns: 0,
            kind: Some(Kind::Fork(ForkEvent {
                process: Some(Process {
                    pid,
                    comm: format!("p{pid}"),
                    ..Default::default()
                }),
            })),
        }
    }

    fn enc(pid: u32) -> EncodedEvents {
        EncodedEvents::from_events(&[ev(pid)])
    }

    /// Pushes event `pid` alone.
    fn push(acc: &mut Accumulator, pid: u32, now: Instant) -> Option<EncodedEvents> {
        let one = enc(pid);
        let frame = one.frames().next().expect("one event");
        acc.push(frame, now)
    }

    fn events_of(batch: &EncodedEvents) -> Vec<Event> {
        let events = EventBatch::decode(batch.as_bytes()).expect("prost").events;
        assert_eq!(events.len(), batch.len());
        events
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
        let b1 = sealer
            .seal(EncodedEvents::from_events(&events))
            .expect("seal");
        drops.add_userspace_queue_full(2);
        let b2 = sealer
            .seal(EncodedEvents::from_events(&[ev(99)]))
            .expect("seal");
        let b3 = sealer
            .seal(EncodedEvents::from_events(&[ev(100)]))
            .expect("seal");
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
        assert!(push(&mut acc, 1, start).is_none());
        assert_eq!(acc.deadline(), Some(start + Duration::from_millis(500)));
        assert!(push(&mut acc, 2, start + Duration::from_millis(400)).is_none());
        assert_eq!(
            acc.deadline(),
            Some(start + Duration::from_millis(500)),
            "age of the first event"
        );
        let full = push(&mut acc, 3, start).expect("full at 3");
        assert_eq!(events_of(&full), vec![ev(1), ev(2), ev(3)]);
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
        assert!(push(&mut acc, 1, now).is_none());
        assert!(push(&mut acc, 2, now).is_none());
        let two = EventBatch {
            events: vec![ev(1), ev(2)],
        };
        assert_eq!(
            acc.encoded_bytes(),
            two.encoded_len(),
            "size is tracked exactly"
        );
        let full = push(&mut acc, 3, now).expect("full by bytes, far below max_events");
        assert_eq!(events_of(&full), vec![ev(1), ev(2), ev(3)]);
        assert_eq!(acc.encoded_bytes(), 0);
    }

    #[test]
    fn spliced_process_encodes_like_prost() {
        use proto::telemetry::v1::{
            AlertEvent, ExecEvent, ExitEvent, FileEvent, IsolationEvent, NetworkEvent, PolicyEvent,
        };
        let process = Process {
            pid: 300,
            tid: 301,
            ppid: 1,
            uid: 1000,
            comm: "sh".into(),
            exe: "/bin/sh".into(),
            lineage: vec!["1:init".into()],
            start_time_ns: 5,
            ..Default::default()
        };
        let kinds = [
            Kind::Exec(ExecEvent {
                filename: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into()],
                sha256: "ab".repeat(32),
                ..Default::default()
            }),
            Kind::Fork(ForkEvent::default()),
            Kind::Exit(ExitEvent {
                exit_code: Some(0),
                duration_ns: 9,
                ..Default::default()
            }),
            Kind::File(FileEvent {
                operation: 1,
                path: "/x/".repeat(100),
                result: -2,
                ..Default::default()
            }),
            Kind::Network(NetworkEvent {
                op: 1,
                remote_address: "::1".into(),
                ..Default::default()
            }),
            Kind::Policy(PolicyEvent {
                path: "/tmp/evil".into(),
                rule: "r".into(),
                ..Default::default()
            }),
            Kind::Alert(AlertEvent {
                rule_title: "Execution From a World-Writable Directory".into(),
                attack_ids: vec!["T1204.002".into()],
                matched_subject: "/tmp/evil".into(),
                ..Default::default()
            }),
        ];
        let times = [
            (EventTime::default(), Process::default()),
            (
                EventTime {
                    timestamp_ns: 1 << 40,
                    boot_time_unix_ns: 0,
                },
                process.clone(),
            ),
            (
                EventTime {
                    timestamp_ns: 1 << 40,
                    boot_time_unix_ns: 1_796_385_600_123_456_789,
                },
                process,
            ),
        ];
        for (time, process) in times {
            for kind in &kinds {
                let mut got = EncodedEvents::default();
                got.push_with_process(time, kind, &process.encode_to_vec());
                let mut whole = kind.clone();
                match &mut whole {
                    Kind::Exec(e) => e.process = Some(process.clone()),
                    Kind::Fork(e) => e.process = Some(process.clone()),
                    Kind::Exit(e) => e.process = Some(process.clone()),
                    Kind::File(e) => e.process = Some(process.clone()),
                    Kind::Network(e) => e.process = Some(process.clone()),
                    Kind::Policy(e) => e.process = Some(process.clone()),
                    Kind::Alert(e) => e.process = Some(process.clone()),
                    Kind::Isolation(_) | Kind::Tamper(_) | Kind::Response(_) => unreachable!(),
                }
                let want = Event {
                    timestamp_ns: time.timestamp_ns,
                    boot_time_unix_ns: time.boot_time_unix_ns,
                    kind: Some(whole),
                };
                let batch = EventBatch { events: vec![want] };
                assert_eq!(got.as_bytes(), batch.encode_to_vec(), "{batch:?}");
            }
        }
        let isolation = Kind::Isolation(IsolationEvent {
            requester: "cli".into(),
            ..Default::default()
        });
        let want = EventBatch {
            events: vec![Event {
                timestamp_ns: 7,
                boot_time_unix_ns: 8,
                kind: Some(isolation.clone()),
            }],
        };
        let mut got = EncodedEvents::default();
        let time = EventTime {
            timestamp_ns: 7,
            boot_time_unix_ns: 8,
        };
        got.push_with_process(time, &isolation, b"");
        assert_eq!(got.as_bytes(), want.encode_to_vec());

        // A tamper event's process is its field 7, spliced in first: not
        // prost's byte order, the same message once decoded.
        let tamper = proto::telemetry::v1::TamperEvent {
            object: "sensor process".into(),
            action: "ptrace(PTRACE_SEIZE)".into(),
            count: 3,
            ..Default::default()
        };
        let process = Process {
            pid: 300,
            comm: "gdb".into(),
            ..Default::default()
        };
        let mut got = EncodedEvents::default();
        got.push_with_process(
            time,
            &Kind::Tamper(tamper.clone()),
            &process.encode_to_vec(),
        );
        let decoded = EventBatch::decode(got.as_bytes()).expect("decodes");
        let mut whole = tamper;
        whole.process = Some(process);
        assert_eq!(
            decoded.events,
            [Event {
                timestamp_ns: 7,
                boot_time_unix_ns: 8,
                kind: Some(Kind::Tamper(whole)),
            }]
        );
    }

    type Out<T> = Arc<std::sync::Mutex<Vec<T>>>;

    /// A batcher task with `sealer`, whose sealed batches `keep` turns
    /// into what the test collects.
    fn start_with<T: Send + 'static>(
        sealer: Sealer,
        max_events: usize,
        heartbeat: Duration,
        keep: fn(Sealed) -> T,
    ) -> (
        mpsc::Sender<EncodedEvents>,
        oneshot::Sender<()>,
        Out<T>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let (stop_tx, stop_rx) = oneshot::channel();
        let out: Out<T> = Arc::default();
        let sink = out.clone();
        let acc = Accumulator::new(max_events, Duration::from_millis(500));
        let task = tokio::spawn(run(rx, stop_rx, acc, sealer, heartbeat, move |b| {
            sink.lock().expect("lock").push(keep(b))
        }));
        (tx, stop_tx, out, task)
    }

    /// The batches only, and no heartbeat within any test's time.
    fn start(
        max_events: usize,
    ) -> (
        mpsc::Sender<EncodedEvents>,
        oneshot::Sender<()>,
        Out<SensorBatch>,
        tokio::task::JoinHandle<()>,
    ) {
        let sealer = Sealer::new(host(), 3, Arc::new(DropTracker::new()));
        start_with(sealer, max_events, Duration::from_secs(3600), |s| s.batch)
    }

    #[tokio::test(start_paused = true)]
    async fn seals_by_count_then_by_time() {
        let (tx, _stop, out, task) = start(4);
        for pid in 1..=9 {
            tx.send(enc(pid)).await.expect("send");
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
        tx.send(enc(10)).await.expect("send");
        drop(tx);
        task.await.expect("batcher ends when its input closes");
        let got = out.lock().expect("lock");
        assert_eq!(got.len(), 4, "the pending event is flushed at close");
        assert_eq!((got[3].sequence, decode(&got[3])), (4, vec![ev(10)]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_of_events_is_split_across_batches() {
        let (tx, _stop, out, task) = start(4);
        // Events of more than 127 bytes: two-byte frame lengths.
        let big = |pid: u32| Event {
            timestamp_ns: u64::from(pid),
            boot_time_unix_ns: 0,
            kind: Some(Kind::Fork(ForkEvent {
                process: Some(Process {
                    pid,
                    exe: "/x".repeat(100),
                    ..Default::default()
                }),
            })),
        };
        let run: Vec<Event> = (1..=6).map(big).collect();
        let chunk = EncodedEvents::from_events(&run);
        assert_eq!(chunk.frames().count(), 6);
        tx.send(chunk).await.expect("send");
        drop(tx);
        task.await.expect("batcher ends when its input closes");
        let got = out.lock().expect("lock");
        assert_eq!(got.len(), 2);
        assert_eq!(decode(&got[0]), run[..4]);
        assert_eq!(decode(&got[1]), run[4..]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_flushes_what_arrived() {
        let (tx, stop, out, task) = start(100);
        tx.send(enc(1)).await.expect("send");
        tx.send(enc(2)).await.expect("send");
        stop.send(()).expect("stop");
        task.await.expect("stopped");
        let got = out.lock().expect("lock");
        assert_eq!(got.len(), 1);
        assert_eq!(decode(&got[0]), vec![ev(1), ev(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_seals_heartbeats_and_audit_runs_at_once() {
        let drops = Arc::new(DropTracker::new());
        let sealer = Sealer::new(host(), 3, drops.clone()).continuing_after(41);
        let (tx, _stop, out, task) = start_with(sealer, 100, Duration::from_secs(30), |s| s);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(
            out.lock().expect("lock").is_empty(),
            "no heartbeat before 30 s"
        );
        drops.add_userspace_queue_full(3);
        tokio::time::sleep(Duration::from_secs(2)).await;
        {
            let got = out.lock().expect("lock");
            assert_eq!(got.len(), 1, "one heartbeat after 30 idle seconds");
            let beat = &got[0].batch;
            assert_eq!(
                (beat.sequence, beat.event_count),
                (42, 0),
                "continues after 41"
            );
            assert!(decode(beat).is_empty());
            assert_eq!(
                beat.drops.expect("drops").userspace_queue_full,
                3,
                "carries the counters"
            );
        }
        // Events keep the heartbeat away: batches are sealed anyway.
        for n in 0..10 {
            tx.send(enc(n)).await.expect("send");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let beats = |v: &[Sealed]| v.iter().filter(|b| b.batch.event_count == 0).count();
        assert_eq!(beats(&out.lock().expect("lock")), 1);
        // An audit record is sealed at once, with its file.
        let path = PathBuf::from("/state/audit/1.pb");
        tx.send(enc(99).with_audit_file(path.clone()))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(1)).await;
        {
            let got = out.lock().expect("lock");
            let last = got.last().expect("sealed");
            assert_eq!(decode(&last.batch), vec![ev(99)]);
            assert_eq!(last.audit, [path]);
        }
        drop(tx);
        task.await.expect("ends");
    }
}
