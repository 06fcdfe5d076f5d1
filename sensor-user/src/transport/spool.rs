//! The disk spool: sealed batches wait here, in sequence order, until the
//! collector acknowledges them (docs/durability.md).
//!
//! Layout of the spool directory:
//! - `LOCK`: held (flock) by the one sensor using the spool;
//! - `state`: TOML, written atomically (temp file, fsync, rename): the last
//!   sequence sealed, the last one acked, the loss totals;
//! - `seg-<first sequence, 20 digits>.spl`: segment files, oldest first.
//!
//! A segment starts with [`SEGMENT_MAGIC`], then records:
//!
//! ```text
//! magic u32 LE  RECORD_MAGIC
//! len   u32 LE  length of the body
//! crc   u32 LE  CRC-32 (IEEE) of the body
//! body: sequence u64, sealed_unix_ns u64, event_count u32, audit_len u32,
//!       audit (audit file paths, each followed by a NUL byte),
//!       the SensorBatch, prost-encoded, exactly as sealed
//! ```
//!
//! Only the newest segment is appended to, and a sensor never appends to a
//! segment of an earlier run: a torn tail stays where the crash left it
//! and is found by the scan at start. A record that is torn or fails its
//! CRC is skipped (the scan resynchronises on the next record magic whose
//! CRC holds), counted in [`SpoolLosses`], and the segment is rewritten
//! without it, so that it is counted once.
//!
//! Bounded by bytes: an append that would exceed `max_bytes` first drops
//! whole segments, oldest first (never the one being appended to), and
//! counts their unacknowledged batches as lost. The loss totals are written
//! to `state` before the segment is deleted, so a crash cannot hide them.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, FileExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use nix::fcntl::{Flock, FlockArg};
use prost::Message as _;
use proto::telemetry::v1::SensorBatch;
use serde::{Deserialize, Serialize};

use super::{DropTracker, drops::SpoolLosses};
use crate::config::{SpoolConfig, SpoolFsync};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"RXSPOOL1";
/// First bytes of every record ("RXSR" in a hex dump).
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RXSR");
/// magic, len, crc.
const RECORD_HEADER: usize = 12;
/// sequence, sealed_unix_ns, event_count, audit_len.
const BODY_FIXED: usize = 24;
/// Largest body the scan believes: far above any batch the sealer makes
/// (3 MiB of events before compression), far below a corrupt length's
/// worst case.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {0} is in use by another sensor (its LOCK file is held)")]
    Locked(PathBuf),
    #[error("spool state {path}: {why}")]
    State { path: PathBuf, why: String },
    #[error("batch of {0} bytes is too large for a spool record")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How a spool is opened (from `[spool]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: bool,
}

impl SpoolSettings {
    pub fn from_config(config: &SpoolConfig) -> Self {
        Self {
            dir: config.dir.clone(),
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes,
            fsync: config.fsync == SpoolFsync::Batch,
        }
    }
}

/// The `state` file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct State {
    /// Highest sequence ever spooled: the next sensor continues after it.
    last_sequence: u64,
    /// Highest sequence the collector acknowledged.
    acked: u64,
    losses: SpoolLosses,
}

/// Where one record lives, and what a loss report needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordMeta {
    sequence: u64,
    offset: u64,
    /// Header and body.
    len: u64,
    event_count: u32,
    sealed_unix_ns: u64,
    audit: Vec<PathBuf>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// File size.
    bytes: u64,
    /// Not yet acknowledged, in sequence order.
    records: VecDeque<RecordMeta>,
}

/// A sealed batch read back from the spool.
#[derive(Clone, Debug, PartialEq)]
pub struct Spooled {
    pub batch: SensorBatch,
    pub audit: Vec<PathBuf>,
}

/// What [`Spool::append`] did besides appending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Batches up to this sequence were dropped to make room (lost, and
    /// counted): they must not be sent any more.
    pub dropped_through: Option<u64>,
}

/// What the scan at open found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub batches: u64,
    pub events: u64,
    pub corrupt_records: u64,
    pub corrupt_bytes: u64,
}

/// The spool of one sensor (see the module docs).
#[derive(Debug)]
pub struct Spool {
    settings: SpoolSettings,
    _lock: Flock<File>,
    state: State,
    /// Oldest first; the last one is the active one when `active` is set.
    segments: VecDeque<Segment>,
    /// Append handle of the last segment, created by this run.
    active: Option<File>,
    total_bytes: u64,
    drops: Arc<DropTracker>,
    recovered: Recovered,
    /// Reused for every record written or read.
    buf: Vec<u8>,
}

impl Spool {
    /// Opens (creating it if needed) and scans the spool: every intact
    /// unacknowledged batch is ready to be read back, in order; torn and
    /// corrupt records are counted (in `drops` too) and removed.
    pub fn open(settings: SpoolSettings, drops: Arc<DropTracker>) -> Result<Self, SpoolError> {
        let dir = settings.dir.clone();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| SpoolError::Locked(dir.clone()))?;
        let state = read_state(&dir)?;
        let mut spool = Self {
            settings,
            _lock: lock,
            state,
            segments: VecDeque::new(),
            active: None,
            total_bytes: 0,
            drops,
            recovered: Recovered::default(),
            buf: Vec::new(),
        };
        spool.scan()?;
        spool.drops.set_spool_losses(spool.state.losses);
        Ok(spool)
    }

    fn scan(&mut self) -> Result<(), SpoolError> {
        let dir = self.settings.dir.clone();
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".spl"))
            })
            .collect();
        names.sort();
        let mut changed = false;
        for path in names {
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let scan = scan_segment(&bytes);
            let mut last = self.state.acked.max(
                self.segments
                    .back()
                    .and_then(|s| s.records.back())
                    .map_or(0, |r| r.sequence),
            );
            let mut records = VecDeque::new();
            for r in scan.records {
                self.state.last_sequence = self.state.last_sequence.max(r.sequence);
                // Acked before the last run ended (the segment lived on
                // for its newer records), or out of order (never written
                // so by a sensor): not sent again.
                if r.sequence > last {
                    last = r.sequence;
                    records.push_back(r);
                }
            }
            if scan.corrupt_records > 0 {
                changed = true;
                let l = &mut self.state.losses;
                l.corrupt_records += scan.corrupt_records;
                l.corrupt_bytes += scan.corrupt_bytes;
                tracing::error!(
                    segment = %path.display(),
                    records = scan.corrupt_records,
                    bytes = scan.corrupt_bytes,
                    "spool: torn or corrupt records skipped (reported to the collector)"
                );
                self.recovered.corrupt_records += scan.corrupt_records;
                self.recovered.corrupt_bytes += scan.corrupt_bytes;
            }
            if records.is_empty() {
                // Fully acked or nothing intact: nothing to keep. The
                // losses are in `state` before the file goes.
                if changed {
                    self.write_state()?;
                }
                remove(&path);
                continue;
            }
            let bytes_len = if scan.corrupt_records > 0 {
                // Counted once: the file is rewritten without them.
                self.write_state()?;
                rewrite(&path, &bytes, &mut records)?
            } else {
                bytes.len() as u64
            };
            self.recovered.batches += records.len() as u64;
            self.recovered.events += records
                .iter()
                .map(|r| u64::from(r.event_count))
                .sum::<u64>();
            self.total_bytes += bytes_len;
            self.segments.push_back(Segment {
                path,
                bytes: bytes_len,
                records,
            });
        }
        if changed {
            self.write_state()?;
        }
        Ok(())
    }

    /// What the scan at open found (batches waiting, records skipped).
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// The highest sequence ever spooled here (0: none): a new sensor
    /// instance continues after it.
    pub fn last_sequence(&self) -> u64 {
        self.state.last_sequence
    }

    /// Bytes on disk in segment files.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Batches waiting for an ack.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.records.is_empty())
    }

    /// Whether batch `sequence` waits here.
    pub fn contains(&self, sequence: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.records.iter().any(|r| r.sequence == sequence))
    }

    /// Whether a batch above `sequence` waits.
    pub fn has_after(&self, sequence: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.records.back().is_some_and(|r| r.sequence > sequence))
    }

    /// Audit files carried by batches still waiting: the isolation task
    /// must not send them again.
    pub fn audit_files(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .flat_map(|s| &s.records)
            .flat_map(|r| r.audit.iter().cloned())
            .collect()
    }

    /// Writes `batch` (with the audit files it carries) at the end, and
    /// with the `batch` fsync policy makes it durable before returning.
    /// Its sequence must be above every spooled one.
    pub fn append(
        &mut self,
        batch: &SensorBatch,
        audit: &[PathBuf],
    ) -> Result<Appended, SpoolError> {
        let mut buf = std::mem::take(&mut self.buf);
        let meta = encode_record(&mut buf, batch, audit, wall_ns());
        let result = meta.and_then(|meta| self.append_encoded(&buf, meta));
        self.buf = buf;
        result
    }

    fn append_encoded(
        &mut self,
        record: &[u8],
        mut meta: RecordMeta,
    ) -> Result<Appended, SpoolError> {
        let len = record.len() as u64;
        let full = self
            .segments
            .back()
            .is_some_and(|s| s.bytes + len > self.settings.segment_bytes && !s.records.is_empty());
        if self.active.is_none() || full {
            self.start_segment(meta.sequence)?;
        }
        let mut appended = Appended::default();
        while self.total_bytes + len > self.settings.max_bytes && self.segments.len() > 1 {
            appended.dropped_through = self.drop_oldest()?.or(appended.dropped_through);
        }
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(SpoolError::State {
                path: self.settings.dir.clone(),
                why: "no active segment".into(),
            });
        };
        meta.offset = segment.bytes;
        let written = file.write_all(record).and_then(|()| {
            if self.settings.fsync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Cut a partial record off, so the next one starts clean.
            let _ = file.set_len(segment.bytes);
            return Err(io_err(&segment.path)(e));
        }
        segment.bytes += len;
        self.total_bytes += len;
        self.state.last_sequence = self.state.last_sequence.max(meta.sequence);
        segment.records.push_back(meta);
        Ok(appended)
    }

    fn start_segment(&mut self, first_sequence: u64) -> Result<(), SpoolError> {
        let path = self
            .settings
            .dir
            .join(format!("seg-{first_sequence:020}.spl"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
        if self.settings.fsync {
            // The file's name must survive a power cut with its records.
            file.sync_data().map_err(io_err(&path))?;
            sync_dir(&self.settings.dir)?;
        }
        self.active = Some(file);
        self.total_bytes += SEGMENT_MAGIC.len() as u64;
        self.segments.push_back(Segment {
            path,
            bytes: SEGMENT_MAGIC.len() as u64,
            records: VecDeque::new(),
        });
        Ok(())
    }

    /// Drops the oldest segment, counting its unacked batches as lost
    /// (in `state` first). Returns the last sequence dropped.
    fn drop_oldest(&mut self) -> Result<Option<u64>, SpoolError> {
        let Some(segment) = self.segments.front() else {
            return Ok(None);
        };
        let mut losses = self.state.losses;
        for r in &segment.records {
            losses.add_dropped(u64::from(r.event_count), r.sealed_unix_ns);
        }
        let last = segment.records.back().map(|r| r.sequence);
        if let (Some(first), Some(last)) = (segment.records.front(), last) {
            tracing::warn!(
                first_sequence = first.sequence,
                last_sequence = last,
                batches = segment.records.len(),
                events = segment
                    .records
                    .iter()
                    .map(|r| u64::from(r.event_count))
                    .sum::<u64>(),
                "spool full: dropped the oldest batches (reported to the collector)"
            );
            self.state.losses = losses;
            self.state.acked = self.state.acked.max(last);
            self.write_state()?;
            self.drops.set_spool_losses(losses);
        }
        if let Some(segment) = self.segments.pop_front() {
            self.total_bytes -= segment.bytes;
            remove(&segment.path);
        }
        Ok(last)
    }

    /// Up to `max` batches with a sequence above `after`, in order, and
    /// no more than `max_bytes` of records (at least one). A record that no
    /// longer reads back intact is skipped and counted.
    pub fn read_after(&mut self, after: u64, max: usize, max_bytes: u64) -> Vec<Spooled> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut bad = Vec::new();
        for segment in &self.segments {
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
            if segment.records.back().is_none_or(|r| r.sequence <= after) {
                continue;
            }
            let file = match File::open(&segment.path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(segment = %segment.path.display(), error = %e, "spool: cannot read a segment");
                    bad.extend(segment.records.iter().map(|r| (r.sequence, r.len)));
                    continue;
                }
            };
            for r in segment.records.iter().filter(|r| r.sequence > after) {
                if out.len() >= max || (!out.is_empty() && bytes + r.len > max_bytes) {
                    break;
                }
                bytes += r.len;
                match read_record(&file, r, &mut self.buf) {
                    Some(batch) => out.push(Spooled {
                        batch,
                        audit: r.audit.clone(),
                    }),
                    None => bad.push((r.sequence, r.len)),
                }
            }
        }
        if !bad.is_empty() {
            self.forget_corrupt(&bad);
        }
        out
    }

    /// Records that failed on reading back: counted, and not read again.
    fn forget_corrupt(&mut self, bad: &[(u64, u64)]) {
        for &(sequence, len) in bad {
            tracing::error!(
                sequence,
                "spool: a record no longer reads back intact; skipped"
            );
            self.state.losses.corrupt_records += 1;
            self.state.losses.corrupt_bytes += len;
            for s in &mut self.segments {
                s.records.retain(|r| r.sequence != sequence);
            }
        }
        self.drops.set_spool_losses(self.state.losses);
        if let Err(e) = self.write_state() {
            tracing::error!(error = %e, "spool: cannot persist the loss counters");
        }
    }

    /// The collector has every batch up to `sequence`: their audit files
    /// are deleted, and so are segments with nothing left unacknowledged.
    pub fn ack(&mut self, sequence: u64) -> Result<(), SpoolError> {
        if sequence <= self.state.acked {
            return Ok(());
        }
        self.state.acked = sequence;
        for segment in &mut self.segments {
            while segment
                .records
                .front()
                .is_some_and(|r| r.sequence <= sequence)
            {
                if let Some(r) = segment.records.pop_front() {
                    r.audit.iter().for_each(|p| remove(p));
                }
            }
        }
        let done = self
            .segments
            .iter()
            .take_while(|s| s.records.is_empty())
            .count();
        if done == 0 {
            return Ok(());
        }
        // The sequence and acked position outlive the files.
        self.write_state()?;
        for _ in 0..done {
            if self.segments.len() == 1 {
                // The active segment: the next append starts a new one.
                self.active = None;
            }
            if let Some(segment) = self.segments.pop_front() {
                self.total_bytes -= segment.bytes;
                remove(&segment.path);
            }
        }
        Ok(())
    }

    fn write_state(&self) -> Result<(), SpoolError> {
        let dir = &self.settings.dir;
        let path = dir.join("state");
        let text = toml::to_string(&self.state).map_err(|e| SpoolError::State {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let tmp = dir.join("state.tmp");
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(dir)
    }
}

fn read_state(dir: &Path) -> Result<State, SpoolError> {
    let path = dir.join("state");
    match fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| SpoolError::State {
            path,
            why: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Best effort: a file that is already gone is what we wanted.
fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "spool: cannot remove");
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Encodes one record into `buf` (cleared first).
fn encode_record(
    buf: &mut Vec<u8>,
    batch: &SensorBatch,
    audit: &[PathBuf],
    sealed_unix_ns: u64,
) -> Result<RecordMeta, SpoolError> {
    use std::os::unix::ffi::OsStrExt as _;
    buf.clear();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    buf.extend_from_slice(&batch.sequence.to_le_bytes());
    buf.extend_from_slice(&sealed_unix_ns.to_le_bytes());
    buf.extend_from_slice(&batch.event_count.to_le_bytes());
    let audit_len: usize = audit.iter().map(|p| p.as_os_str().len() + 1).sum();
    let too_large = |n: usize| SpoolError::TooLarge(n);
    buf.extend_from_slice(
        &u32::try_from(audit_len)
            .map_err(|_| too_large(audit_len))?
            .to_le_bytes(),
    );
    for p in audit {
        buf.extend_from_slice(p.as_os_str().as_bytes());
        buf.push(0);
    }
    batch
        .encode(buf)
        .map_err(|_| too_large(batch.encoded_len()))?;
    let body_len = buf.len() - RECORD_HEADER;
    if body_len > MAX_BODY {
        return Err(too_large(body_len));
    }
    let crc = crc32fast::hash(&buf[RECORD_HEADER..]);
    buf[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(RecordMeta {
        sequence: batch.sequence,
        offset: 0,
        len: buf.len() as u64,
        event_count: batch.event_count,
        sealed_unix_ns,
        audit: audit.to_vec(),
    })
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The record at `at` of `bytes` if it is whole and its CRC holds, with
/// its body's range.
fn parse_record(bytes: &[u8], at: usize) -> Option<(RecordMeta, std::ops::Range<usize>)> {
    use std::os::unix::ffi::OsStrExt as _;
    if le_u32(bytes, at)? != RECORD_MAGIC {
        return None;
    }
    let len = le_u32(bytes, at + 4)? as usize;
    let crc = le_u32(bytes, at + 8)?;
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return None;
    }
    let start = at + RECORD_HEADER;
    let body = bytes.get(start..start + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let sequence = le_u64(body, 0)?;
    let sealed_unix_ns = le_u64(body, 8)?;
    let event_count = le_u32(body, 16)?;
    let audit_len = le_u32(body, 20)? as usize;
    let audit_bytes = body.get(BODY_FIXED..BODY_FIXED + audit_len)?;
    let audit = audit_bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
        .collect();
    let batch_start = start + BODY_FIXED + audit_len;
    Some((
        RecordMeta {
            sequence,
            offset: at as u64,
            len: (RECORD_HEADER + len) as u64,
            event_count,
            sealed_unix_ns,
            audit,
        },
        batch_start..start + len,
    ))
}

/// What [`scan_segment`] found in one file.
#[derive(Debug, Default)]
struct Scan {
    records: Vec<RecordMeta>,
    corrupt_records: u64,
    corrupt_bytes: u64,
}

/// Every intact record of a segment file. A stretch that is not one (a
/// torn tail, flipped bits, a bad file header) counts as one corrupt
/// record; the scan goes on at the next record magic.
fn scan_segment(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut bad_from = None;
    let mut at = if bytes.starts_with(SEGMENT_MAGIC) {
        SEGMENT_MAGIC.len()
    } else {
        bad_from = Some(0);
        0
    };
    let magic = RECORD_MAGIC.to_le_bytes();
    while at < bytes.len() {
        if let Some((meta, _)) = parse_record(bytes, at) {
            if let Some(from) = bad_from.take() {
                scan.corrupt_records += 1;
                scan.corrupt_bytes += (at - from) as u64;
            }
            at += meta.len as usize;
            scan.records.push(meta);
        } else {
            bad_from.get_or_insert(at);
            at = bytes
                .get(at + 1..)
                .and_then(|rest| rest.windows(4).position(|w| w == magic))
                .map_or(bytes.len(), |p| at + 1 + p);
        }
    }
    if let Some(from) = bad_from {
        scan.corrupt_records += 1;
        scan.corrupt_bytes += (bytes.len() - from) as u64;
    }
    scan
}

/// Writes the segment again with only `records` (taken from `bytes`),
/// atomically, and points them at their new offsets. Returns its size.
fn rewrite(
    path: &Path,
    bytes: &[u8],
    records: &mut VecDeque<RecordMeta>,
) -> Result<u64, SpoolError> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(SEGMENT_MAGIC);
    for r in records.iter_mut() {
        let from = r.offset as usize;
        let Some(record) = bytes.get(from..from + r.len as usize) else {
            continue;
        };
        r.offset = out.len() as u64;
        out.extend_from_slice(record);
    }
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&out).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(out.len() as u64)
}

/// Reads one record back and checks it again (the disk may have changed
/// since the scan).
fn read_record(file: &File, r: &RecordMeta, buf: &mut Vec<u8>) -> Option<SensorBatch> {
    buf.clear();
    buf.resize(r.len as usize, 0);
    file.read_exact_at(buf, r.offset).ok()?;
    let (meta, batch) = parse_record(buf, 0)?;
    if meta.sequence != r.sequence {
        return None;
    }
    SensorBatch::decode(buf.get(batch)?).ok()
}

#[cfg(test)]
mod tests {
    use proto::telemetry::v1::HostIdentity;

    use super::*;

    fn settings(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            fsync: true,
        }
    }

    fn batch(sequence: u64, events: u32, payload: usize) -> SensorBatch {
        SensorBatch {
            host: Some(HostIdentity {
                host_id: "h".into(),
                sensor_instance_id: "i1".into(),
                ..Default::default()
            }),
            sequence,
            event_count: events,
            payload: vec![sequence as u8; payload],
            ..Default::default()
        }
    }

    fn open(s: &SpoolSettings) -> (Spool, Arc<DropTracker>) {
        let drops = Arc::new(DropTracker::new());
        (Spool::open(s.clone(), drops.clone()).expect("open"), drops)
    }

    fn seqs(spool: &mut Spool) -> Vec<u64> {
        spool
            .read_after(0, usize::MAX, u64::MAX)
            .iter()
            .map(|s| s.batch.sequence)
            .collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "spl"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn batches_survive_a_restart_in_order_exactly_as_sealed() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 1 << 20, 4096);
        let (mut spool, _) = open(&s);
        let audit = vec![dir.path().join("audit/a.pb")];
        let sent: Vec<SensorBatch> = (1..=20).map(|n| batch(n, n as u32, 500)).collect();
        for b in &sent {
            let files = if b.sequence == 3 { &audit[..] } else { &[] };
            assert_eq!(spool.append(b, files).expect("append"), Appended::default());
        }
        assert!(segments(dir.path()).len() > 1, "4 KiB segments roll");
        assert_eq!(spool.last_sequence(), 20);
        drop(spool);
        let (mut again, drops) = open(&s);
        assert_eq!(again.last_sequence(), 20, "the next sensor continues at 21");
        assert_eq!(again.recovered().batches, 20);
        assert_eq!(again.recovered().events, (1..=20).sum::<u64>());
        assert_eq!(again.audit_files(), audit);
        let back = again.read_after(0, usize::MAX, u64::MAX);
        let batches: Vec<SensorBatch> = back.iter().map(|s| s.batch.clone()).collect();
        assert_eq!(batches, sent, "byte for byte what was sealed, in order");
        assert_eq!(back[2].audit, audit);
        assert_eq!(drops.snapshot().spool_corrupt_records, 0);
        let page: Vec<u64> = again
            .read_after(5, 3, u64::MAX)
            .iter()
            .map(|s| s.batch.sequence)
            .collect();
        assert_eq!(page, [6, 7, 8]);
        let one_record = again.segments[0].records[0].len;
        let page: Vec<u64> = again
            .read_after(5, 10, 2 * one_record)
            .iter()
            .map(|s| s.batch.sequence)
            .collect();
        assert_eq!(page, [6, 7], "bounded by bytes");
        let page = again.read_after(5, 10, 1);
        assert_eq!(page.len(), 1, "at least one");
    }

    #[test]
    fn a_second_sensor_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 1 << 20, 4096);
        let (_first, _) = open(&s);
        let e = Spool::open(s, Arc::new(DropTracker::new())).expect_err("locked");
        assert!(matches!(e, SpoolError::Locked(_)), "{e}");
    }

    #[test]
    fn acks_delete_segments_and_audit_files_and_persist() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 1 << 20, 4096);
        let (mut spool, _) = open(&s);
        let audit = dir.path().join("a.pb");
        fs::write(&audit, b"x").expect("audit");
        for n in 1..=20 {
            let files = if n == 2 { vec![audit.clone()] } else { vec![] };
            spool.append(&batch(n, 1, 500), &files).expect("append");
        }
        let before = segments(dir.path()).len();
        spool.ack(1).expect("ack");
        assert!(audit.exists(), "its batch (2) is not acked yet");
        spool.ack(12).expect("ack");
        assert!(!audit.exists(), "deleted once its batch is acked");
        assert!(
            segments(dir.path()).len() < before,
            "acked segments deleted"
        );
        assert_eq!(seqs(&mut spool), (13..=20).collect::<Vec<_>>());
        drop(spool);
        let (mut again, _) = open(&s);
        assert_eq!(
            seqs(&mut again),
            (13..=20).collect::<Vec<_>>(),
            "acked ones are not replayed"
        );
        again.ack(20).expect("ack");
        assert!(again.is_empty() && segments(dir.path()).is_empty());
        assert_eq!(again.bytes(), 0);
        drop(again);
        let (again, _) = open(&s);
        assert_eq!(
            again.last_sequence(),
            20,
            "kept in `state` with no segment left"
        );
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 16 << 10, 4 << 10);
        let (mut spool, drops) = open(&s);
        let mut dropped_through = None;
        for n in 1..=100 {
            let out = spool.append(&batch(n, 10, 900), &[]).expect("append");
            dropped_through = out.dropped_through.or(dropped_through);
            assert!(spool.bytes() <= 16 << 10, "bound held: {}", spool.bytes());
        }
        let kept = seqs(&mut spool);
        let last_dropped = dropped_through.expect("something dropped");
        assert_eq!(kept.first(), Some(&(last_dropped + 1)), "the oldest went");
        assert_eq!(kept.last(), Some(&100), "the newest stayed");
        assert_eq!(kept, (last_dropped + 1..=100).collect::<Vec<_>>());
        let d = drops.snapshot();
        assert_eq!(
            d.spool_batches_dropped, last_dropped,
            "every dropped batch counted"
        );
        assert_eq!(d.spool_events_dropped, last_dropped * 10);
        assert!(d.spool_dropped_first_sealed_unix_ns > 0);
        assert!(d.spool_dropped_last_sealed_unix_ns >= d.spool_dropped_first_sealed_unix_ns);
        drop(spool);
        let (_again, drops) = open(&s);
        assert_eq!(
            drops.snapshot().spool_batches_dropped,
            last_dropped,
            "persisted"
        );
    }

    #[test]
    fn a_torn_tail_is_skipped_counted_once_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let (mut spool, _) = open(&s);
        for n in 1..=5 {
            spool.append(&batch(n, 2, 300), &[]).expect("append");
        }
        drop(spool);
        let seg = segments(dir.path()).pop().expect("one segment");
        // A crash in the middle of writing record 6.
        let mut six = Vec::new();
        encode_record(&mut six, &batch(6, 2, 300), &[], 1).expect("encode");
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        f.write_all(&six[..six.len() / 2]).expect("torn write");
        drop(f);
        let (mut again, drops) = open(&s);
        assert_eq!(seqs(&mut again), [1, 2, 3, 4, 5]);
        let d = drops.snapshot();
        assert_eq!(
            (d.spool_corrupt_records, d.spool_corrupt_bytes),
            (1, six.len() as u64 / 2)
        );
        assert_eq!(again.last_sequence(), 5);
        drop(again);
        let (_third, drops) = open(&s);
        assert_eq!(drops.snapshot().spool_corrupt_records, 1, "counted once");
    }

    #[test]
    fn a_corrupt_record_is_skipped_and_its_neighbours_delivered() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let (mut spool, _) = open(&s);
        for n in 1..=5 {
            spool.append(&batch(n, 2, 300), &[]).expect("append");
        }
        let third = spool.segments[0].records[2].clone();
        drop(spool);
        let seg = segments(dir.path()).pop().expect("one segment");
        let mut bytes = fs::read(&seg).expect("read");
        // Flip bits in record 3's payload, and in record 4's length.
        bytes[third.offset as usize + 100] ^= 0xff;
        let fourth = third.offset as usize + third.len as usize;
        bytes[fourth + 5] ^= 0x40;
        fs::write(&seg, &bytes).expect("write");
        let (mut again, drops) = open(&s);
        assert_eq!(
            seqs(&mut again),
            [1, 2, 5],
            "records 3 and 4 fail, 5 resyncs"
        );
        let d = drops.snapshot();
        assert_eq!(d.spool_corrupt_records, 1, "one bad stretch");
        assert_eq!(d.spool_corrupt_bytes, third.len * 2);
        // Garbage in place of the file header: the records still count.
        drop(again);
        let mut bytes = fs::read(&seg).expect("read");
        bytes[..8].copy_from_slice(b"garbage!");
        fs::write(&seg, &bytes).expect("write");
        let (mut third_run, drops) = open(&s);
        assert_eq!(seqs(&mut third_run), [1, 2, 5]);
        assert_eq!(drops.snapshot().spool_corrupt_records, 2);
    }

    #[test]
    fn a_record_damaged_after_the_scan_is_skipped_on_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let (mut spool, drops) = open(&s);
        for n in 1..=3 {
            spool.append(&batch(n, 2, 300), &[]).expect("append");
        }
        let seg = segments(dir.path()).pop().expect("one segment");
        let second = spool.segments[0].records[1].clone();
        let f = OpenOptions::new().write(true).open(&seg).expect("open");
        f.write_all_at(b"\0\0\0\0", second.offset + 40)
            .expect("damage");
        assert_eq!(seqs(&mut spool), [1, 3]);
        assert_eq!(drops.snapshot().spool_corrupt_records, 1);
        assert_eq!(seqs(&mut spool), [1, 3], "counted once");
        assert_eq!(drops.snapshot().spool_corrupt_records, 1);
    }
}
