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
pub fn reload(store: &YaraStore, config: &YaraConfig, why: &str) -> Result<usize, YaraLoadError> {
    match load(config) {
        Ok(rules) => {
            log_loaded(&rules, why);
            let n = rules.len();
            store.replace(rules);
            Ok(n)
        }
        Err(e) => {
            tracing::error!(error = %e, "{why}: YARA rules not reloaded; the last good set stays");
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
            ..AlertEvent::default()
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

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use proto::telemetry::v1::{EventBatch, ExecEvent, FileEvent, FileIdentity};

    use super::*;

    /// Above any pid_max: /proc/<it>/exe never exists.
    const GONE_PID: u32 = 0x7fff_fff0;

    #[test]
    fn new_executables_and_writes_are_scanned_known_ones_and_reads_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let implant = dir.path().join("implant");
        let mut content = b"\x7fELF\x02\x01\x01\0".to_vec();
        content.extend_from_slice(b"\0sh -i >& /dev/udp/127.0.0.1/53 0>&1\0");
        std::fs::write(&implant, &content).expect("write");
        let path = implant.to_str().expect("utf-8").to_owned();

        let store = YaraStore::new(load(&YaraConfig::default()).expect("default pack"));
        let (tx, mut rx) = mpsc::channel(8);
        let config = YaraConfig {
            settle_ms: 10,
            ..YaraConfig::default()
        };
        let drops = Arc::new(DropTracker::new());
        let (feed, stats) = start(store, &config, tx, drops).expect("worker");
        let time = EventTime {
            timestamp_ns: 77,
            boot_time_unix_ns: 0,
        };
        let exec = Kind::Exec(ExecEvent {
            filename: path.clone(),
            sha256: "ab".repeat(32),
            file: Some(FileIdentity {
                device: 0,
                inode: 0,
            }),
            ..ExecEvent::default()
        });
        // A cache hit: the file was scanned before, nothing queued.
        feed.on_event(time, &exec, GONE_PID, false, b"");
        // A read is no write.
        let read = Kind::File(FileEvent {
            operation: Operation::OpenRead as i32,
            path: path.clone(),
            ..FileEvent::default()
        });
        feed.on_event(time, &read, GONE_PID, false, b"");
        assert_eq!(stats.stats().queued, 0);

        feed.on_event(time, &exec, GONE_PID, true, b"");
        let batch = rx.blocking_recv().expect("an alert");
        let events = EventBatch::decode(batch.as_bytes())
            .expect("decodes")
            .events;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].timestamp_ns, 77, "the exec's time");
        let Some(Kind::Alert(a)) = &events[0].kind else {
            panic!("{events:?}");
        };
        assert_eq!(a.engine(), AlertEngine::Yara);
        assert_eq!(a.matched_kind(), EventKind::Exec);
        assert_eq!(a.matched_subject, path);
        assert_eq!(a.rule_id, "elf_reverse_shell:elf_reverse_shell_string");
        assert_eq!(a.file_sha256.len(), 64);

        let write = Kind::File(FileEvent {
            operation: Operation::OpenWrite as i32,
            path: path.clone(),
            ..FileEvent::default()
        });
        feed.on_event(time, &write, GONE_PID, false, b"");
        let batch = rx.blocking_recv().expect("an alert");
        let events = EventBatch::decode(batch.as_bytes())
            .expect("decodes")
            .events;
        let Some(Kind::Alert(a)) = &events[0].kind else {
            panic!("{events:?}");
        };
        assert_eq!(a.matched_kind(), EventKind::File);
        assert_eq!(stats.stats().queued, 2);
    }
}
