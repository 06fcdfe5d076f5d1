//! YARA scans of new executables and written files (crate `detect`,
//! feature `yara`), off the enrichment thread.
//!
//! The enrichment thread hands each executable run for the first time (a
//! hash-cache miss) and each successful write or rename of a watched file
//! to a bounded queue ([`YaraFeed::on_event`]; never blocks, a full queue
//! is a counted drop). The `rxsentry-yara` worker reads the file, scans it
//! and sends an `AlertEvent` (engine yara) per matching rule, with the
//! triggering event's time and process, straight to the batcher.

use std::{path::PathBuf, sync::Arc, time::Duration};

use detect::yara::{
    ScanOutcome, YaraLoadError, YaraRules, YaraStore,
    worker::{self, Job, ScanQueue, StatsReader, Trigger, WorkerSettings},
};
use proto::telemetry::v1::{
    AlertEngine, AlertEvent, EventKind, event::Kind, file_event::Operation,
};
use tokio::sync::mpsc;

use crate::{
    clock::EventTime,
    config::YaraConfig,
    transport::{DropTracker, EncodedEvents},
};

/// Compiles the configured YARA rules; any file that does not compile
/// refuses the set (named, with the compiler's message).
pub fn load(config: &YaraConfig) -> Result<YaraRules, YaraLoadError> {
    YaraRules::load(config.default_pack, &config.rule_dirs)
}

/// Logs a load's outcome.
pub fn log_loaded(rules: &YaraRules, why: &str) {
    tracing::info!(
        rules = rules.len(),
        files = rules.sources().len(),
        "{why}: YARA rules loaded"
    );
}

/// Re-reads the rules on SIGHUP: the last good set stays on any error.
pub fn reload(store: &YaraStore, config: &YaraConfig) -> Result<usize, YaraLoadError> {
    match load(config) {
        Ok(rules) => {
            log_loaded(&rules, "SIGHUP");
            let n = rules.len();
            store.replace(rules);
            Ok(n)
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: YARA rules not reloaded; the last good set stays");
            Err(e)
        }
    }
}

/// What an alert needs of the event that triggered the scan.
#[derive(Debug)]
pub struct Origin {
    time: EventTime,
    /// The event's process, prost-encoded (as the enricher made it).
    process: Vec<u8>,
    kind: EventKind,
    subject: String,
}

/// The enrichment thread's end of the scan queue.
#[derive(Debug)]
pub struct YaraFeed {
    queue: ScanQueue<Origin>,
}

/// Starts the worker; its alerts go to `out` (the batcher, past
/// enrichment). An alert that cannot be passed on is counted in `drops`.
pub fn start(
    store: Arc<YaraStore>,
    config: &YaraConfig,
    out: mpsc::Sender<EncodedEvents>,
    drops: Arc<DropTracker>,
) -> std::io::Result<(YaraFeed, StatsReader)> {
    let settings = WorkerSettings {
        capacity: config.queue_capacity,
        max_file_bytes: config.max_file_bytes,
        settle: Duration::from_millis(config.settle_ms),
    };
    let (queue, _thread) = worker::spawn(store, settings, move |job, outcome| {
        let events = alerts_for(&job.tag, &outcome);
        let n = events.len() as u64;
        if out.blocking_send(events).is_err() {
            // The pipeline is gone (shutting down): counted, not silent.
            drops.add_userspace_queue_full(n);
        }
    })?;
    let stats = queue.stats_reader();
    Ok((YaraFeed { queue }, stats))
}

/// One alert per matching rule, each with the triggering event's process.
fn alerts_for(trigger: &Origin, outcome: &ScanOutcome) -> EncodedEvents {
    let mut out = EncodedEvents::default();
    for m in &outcome.matches {
        tracing::debug!(rule = %m.identifier, file = %trigger.subject, "YARA match");
        let alert = AlertEvent {
            process: None,
            rule_id: format!("{}:{}", m.namespace, m.identifier),
            rule_title: m.title.clone(),
            level: m.level.clone(),
            rule_author: m.author.clone(),
            rule_source: m.source.clone(),
            tags: m.tags.clone(),
            attack_ids: m.attack_ids.clone(),
            matched_kind: trigger.kind as i32,
            matched_subject: trigger.subject.clone(),
            engine: AlertEngine::Yara as i32,
            file_sha256: outcome.sha256.clone(),
        };
        out.push_with_process(trigger.time, &Kind::Alert(alert), &trigger.process);
    }
    out
}

impl YaraFeed {
    /// Queues a scan when `kind` is an executable seen for the first time
    /// (`new_executable`: the hash cache missed) or a successful write or
    /// rename of a watched file. Never blocks.
    pub fn on_event(
        &self,
        time: EventTime,
        kind: &Kind,
        pid: u32,
        new_executable: bool,
        process: &[u8],
    ) {
        let (trigger, paths, identity, matched, subject) = match kind {
            Kind::Exec(e) if new_executable && !e.sha256.is_empty() => {
                // The very file the kernel ran, else the path it saw.
                let mut paths = vec![PathBuf::from(format!("/proc/{pid}/exe"))];
                if e.filename.starts_with('/') {
                    paths.push(PathBuf::from(&e.filename));
                }
                let identity = e
                    .file
                    .filter(|f| f.device != 0 && f.inode != 0)
                    .map(|f| (f.device, f.inode));
                (
                    Trigger::Exec,
                    paths,
                    identity,
                    EventKind::Exec,
                    e.filename.clone(),
                )
            }
            Kind::File(f) if f.result >= 0 && f.repeats == 0 => {
                let path = match f.operation() {
                    Operation::OpenWrite => &f.path,
                    Operation::Rename if !f.new_path.is_empty() => &f.new_path,
                    _ => return,
                };
                if f.path_truncated || !path.starts_with('/') {
                    return;
                }
                // The file at the path when the writer is done may be a
                // new one (an editor's rename): no identity check.
                (
                    Trigger::Write,
                    vec![PathBuf::from(path)],
                    None,
                    EventKind::File,
                    path.clone(),
                )
            }
            _ => return,
        };
        self.queue.submit(Job {
            trigger,
            paths,
            identity,
            tag: Origin {
                time,
                process: process.to_vec(),
                kind: matched,
                subject,
            },
        });
    }
}
