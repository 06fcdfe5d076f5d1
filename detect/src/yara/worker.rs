//! The YARA scan worker: one thread, fed through a bounded queue that never
//! blocks the caller (a full queue drops the scan and counts it).
//!
//! Executables are scanned as they come. Written files wait a settle delay
//! after their last reported write (the kernel reports opens for writing,
//! not closes), so a file being written is scanned once, when the writer
//! has paused; each further write to the same path restarts its delay.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{ScanError, ScanOutcome, YaraStore};

/// Why a file is scanned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// An executable seen for the first time.
    Exec,
    /// A file written in a watched directory (settles first).
    Write,
}

/// One scan request; `tag` is the caller's (what the alert needs).
#[derive(Debug)]
pub struct Job<T> {
    pub trigger: Trigger,
    /// Tried in order until one opens (e.g. `/proc/<pid>/exe`, then the
    /// path the kernel saw).
    pub paths: Vec<PathBuf>,
    /// The (device, inode) the event named, when known: another file at
    /// the path is not scanned in its place.
    pub identity: Option<(u64, u64)>,
    pub tag: T,
}

/// Worker settings.
#[derive(Clone, Copy, Debug)]
pub struct WorkerSettings {
    /// Jobs waiting (queued plus written files settling).
    pub capacity: usize,
    pub max_file_bytes: u64,
    pub settle: Duration,
}

/// Running totals, for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Jobs accepted.
    pub queued: u64,
    /// Files read and scanned.
    pub scanned: u64,
    pub bytes_scanned: u64,
    /// Scans with at least one match, and the matches (alerts).
    pub files_matched: u64,
    pub matches: u64,
    /// Dropped because the queue (or the settling set) was full.
    pub dropped_queue_full: u64,
    /// Not scanned: larger than `max_file_bytes`.
    pub too_large: u64,
    /// Not scanned: gone, unreadable, not a regular file, replaced, or the
    /// engine failed.
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    scanned: AtomicU64,
    bytes_scanned: AtomicU64,
    files_matched: AtomicU64,
    matches: AtomicU64,
    dropped_queue_full: AtomicU64,
    too_large: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ScanStats {
        ScanStats {
            queued: self.queued.load(Relaxed),
            scanned: self.scanned.load(Relaxed),
            bytes_scanned: self.bytes_scanned.load(Relaxed),
            files_matched: self.files_matched.load(Relaxed),
            matches: self.matches.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// The producer's handle: cheap to clone, never blocks.
#[derive(Debug)]
pub struct ScanQueue<T> {
    tx: SyncSender<Job<T>>,
    counters: Arc<Counters>,
}

impl<T> Clone for ScanQueue<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<T> ScanQueue<T> {
    /// Queues `job`; false (and counted in `dropped_queue_full`) when the
    /// queue is full or the worker is gone.
    pub fn submit(&self, job: Job<T>) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped_queue_full.fetch_add(1, Relaxed);
                false
            }
        }
    }

    pub fn stats(&self) -> ScanStats {
        self.counters.snapshot()
    }

    /// Reads the counters without keeping the worker alive (the worker ends
    /// when the last [`ScanQueue`] is dropped).
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.counters.clone())
    }
}

/// The worker's counters, for whoever reports them.
#[derive(Clone, Debug)]
pub struct StatsReader(Arc<Counters>);

impl StatsReader {
    pub fn stats(&self) -> ScanStats {
        self.0.snapshot()
    }
}

/// Starts the worker thread. `on_match` gets every job whose file matched
/// at least one rule, with the outcome. The thread ends when every
/// [`ScanQueue`] is dropped (after scanning what settles).
pub fn spawn<T, F>(
    store: Arc<YaraStore>,
    settings: WorkerSettings,
    on_match: F,
) -> std::io::Result<(ScanQueue<T>, JoinHandle<()>)>
where
    T: Send + 'static,
    F: FnMut(Job<T>, ScanOutcome) + Send + 'static,
{
    let (tx, rx) = sync_channel(settings.capacity.max(1));
    let counters = Arc::new(Counters::default());
    let worker = Worker {
        store,
        settings,
        counters: counters.clone(),
        settling: HashMap::new(),
    };
    let handle = std::thread::Builder::new()
        .name("rxsentry-yara".into())
        .spawn(move || worker.run(rx, on_match))?;
    Ok((ScanQueue { tx, counters }, handle))
}

struct Worker<T> {
    store: Arc<YaraStore>,
    settings: WorkerSettings,
    counters: Arc<Counters>,
    /// Written files waiting for their settle deadline, by first path.
    settling: HashMap<PathBuf, (Instant, Job<T>)>,
}

impl<T> Worker<T> {
    fn run(mut self, rx: Receiver<Job<T>>, mut on_match: impl FnMut(Job<T>, ScanOutcome)) {
        let mut open = true;
        while open || !self.settling.is_empty() {
            // The scanner borrows its rule set: made again when it changes.
            let (generation, rules) = self.store.get();
            let mut scanner = rules.scanner();
            while self.store.generation() == generation {
                let due = self.settling.values().map(|(at, _)| *at).min();
                let got = match (open, due) {
                    (false, _) => Err(RecvTimeoutError::Disconnected),
                    (true, None) => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    (true, Some(at)) => {
                        rx.recv_timeout(at.saturating_duration_since(Instant::now()))
                    }
                };
                let mut ready = Vec::new();
                match got {
                    Ok(job) if job.trigger == Trigger::Exec => ready.push(job),
                    Ok(job) => self.settle(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
                let now = Instant::now();
                let due: Vec<PathBuf> = self
                    .settling
                    .iter()
                    .filter(|(_, (at, _))| !open || *at <= now)
                    .map(|(p, _)| p.clone())
                    .collect();
                ready.extend(
                    due.iter()
                        .filter_map(|p| self.settling.remove(p))
                        .map(|(_, j)| j),
                );
                for job in ready {
                    if let Some(outcome) = self.scan(&mut scanner, &job) {
                        on_match(job, outcome);
                    }
                }
                if !open && self.settling.is_empty() {
                    return;
                }
            }
        }
    }

    /// A written file (re)starts its settle delay; a new path beyond the
    /// capacity is dropped and counted.
    fn settle(&mut self, job: Job<T>) {
        let Some(key) = job.paths.first().cloned() else {
            self.counters.errors.fetch_add(1, Relaxed);
            return;
        };
        let at = Instant::now() + self.settings.settle;
        if let Some(slot) = self.settling.get_mut(&key) {
            // The same file again: one scan, for its latest writer.
            *slot = (at, job);
            return;
        }
        if self.settling.len() >= self.settings.capacity.max(1) {
            self.counters.dropped_queue_full.fetch_add(1, Relaxed);
            return;
        }
        self.settling.insert(key, (at, job));
    }

    /// Scans the job's file; the outcome if anything matched.
    fn scan(&self, scanner: &mut super::FileScanner<'_>, job: &Job<T>) -> Option<ScanOutcome> {
        let c = &self.counters;
        let mut last = None;
        for path in &job.paths {
            match scanner.scan_path(path, self.settings.max_file_bytes, job.identity) {
                Ok(outcome) => {
                    c.scanned.fetch_add(1, Relaxed);
                    c.bytes_scanned.fetch_add(outcome.size, Relaxed);
                    if outcome.matches.is_empty() {
                        return None;
                    }
                    c.files_matched.fetch_add(1, Relaxed);
                    c.matches.fetch_add(outcome.matches.len() as u64, Relaxed);
                    return Some(outcome);
                }
                // Another path may still lead to the file.
                Err(e @ (ScanError::Open { .. } | ScanError::Replaced { .. })) => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        match last {
            Some(ScanError::TooLarge { .. }) => c.too_large.fetch_add(1, Relaxed),
            _ => c.errors.fetch_add(1, Relaxed),
        };
        None
    }
}
