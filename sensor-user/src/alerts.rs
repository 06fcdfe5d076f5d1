//! Sigma rules (crate `detect`) on every enriched event, on the enrichment
//! thread: that is where an event is complete (the process table has
//! applied the exec, knows the parent's program and command line). Each
//! match becomes an `AlertEvent` right after its event in the stream.
//!
//! The rules live in a [`RuleStore`] shared with the daemon, which swaps in
//! a new set on SIGHUP; the enrichment thread picks it up at its next event
//! (one atomic load per event).

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use detect::{CommandLine, EventRef, Loader, Refusal, RefusalKind, RuleSet, Scratch};
use proto::telemetry::v1::{AlertEvent, event::Kind};

use crate::{
    clock::EventTime, config::DetectionConfig, enrich::ProcessTable, transport::EncodedEvents,
};

/// Why a rule set was not (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Dir(#[from] detect::DirError),
    /// Broken rule files: the last good set stays.
    #[error("{} broken rule file(s), first: {}", .0.len(), .0[0])]
    Invalid(Vec<Refusal>),
}

/// A loaded set and the rules it refused as unsupported.
#[derive(Debug)]
pub struct Loaded {
    pub rules: RuleSet,
    pub unsupported: Vec<Refusal>,
}

/// Loads the default pack (if configured) and every rule directory. Any
/// broken file fails the whole load; unsupported rules are returned.
pub fn load(config: &DetectionConfig) -> Result<Loaded, RulesError> {
    let mut loader = Loader::new(config.loader_placeholders());
    if config.default_pack {
        loader.add_default_pack();
    }
    for dir in &config.rule_dirs {
        loader.add_dir(dir)?;
    }
    let (rules, refused) = loader.finish();
    let (invalid, unsupported): (Vec<_>, Vec<_>) = refused
        .into_iter()
        .partition(|r| r.kind == RefusalKind::Invalid);
    if !invalid.is_empty() {
        return Err(RulesError::Invalid(invalid));
    }
    Ok(Loaded { rules, unsupported })
}

/// Logs a load's outcome: each refused rule with its file and field.
pub fn log_loaded(loaded: &Loaded, why: &str) {
    for r in &loaded.unsupported {
        tracing::warn!(file = %r.file, field = %r.field, reason = %r.reason, "detection rule refused");
    }
    tracing::info!(
        rules = loaded.rules.len(),
        refused = loaded.unsupported.len(),
        "{why}: detection rules loaded"
    );
}

/// The rule set in force, shared by the daemon (which replaces it) and the
/// enrichment thread (which reads it).
#[derive(Debug, Default)]
pub struct RuleStore {
    current: Mutex<Arc<RuleSet>>,
    generation: AtomicU64,
    /// Matches per rule title, for the metrics.
    hits: crate::metrics::RuleHits,
}

impl RuleStore {
    pub fn new(rules: RuleSet) -> Arc<Self> {
        Arc::new(Self {
            current: Mutex::new(Arc::new(rules)),
            generation: AtomicU64::new(1),
            hits: crate::metrics::RuleHits::default(),
        })
    }

    /// Matches per rule title since start (reloads keep counting).
    pub fn hits(&self) -> crate::metrics::RuleHits {
        self.hits.clone()
    }

    /// Puts `rules` in force from the next event on.
    pub fn replace(&self, rules: RuleSet) {
        let mut current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(rules);
        self.generation.fetch_add(1, Relaxed);
    }

    /// Re-reads the rules: on success they replace the set in force; on any
    /// error the set in force stays and the error is logged.
    pub fn reload(&self, config: &DetectionConfig) -> Result<usize, RulesError> {
        match load(config) {
            Ok(loaded) => {
                log_loaded(&loaded, "SIGHUP");
                let n = loaded.rules.len();
                self.replace(loaded.rules);
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: detection rules not reloaded; the last good set stays");
                Err(e)
            }
        }
    }

    fn get(&self) -> (u64, Arc<RuleSet>) {
        let current = match self.current.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        (self.generation.load(Relaxed), current.clone())
    }
}

/// uid -> user name, from /etc/passwd, re-read on a miss at most every
/// [`PASSWD_REREAD`].
#[derive(Debug)]
struct Users {
    names: HashMap<u32, String>,
    read_at: Option<Instant>,
    passwd: &'static str,
    /// An unknown uid, as its number.
    number: String,
}

const PASSWD_REREAD: Duration = Duration::from_secs(30);

impl Users {
    fn new(passwd: &'static str) -> Self {
        Self {
            names: HashMap::new(),
            read_at: None,
            passwd,
            number: String::new(),
        }
    }

    fn name(&mut self, uid: u32) -> &str {
        if !self.names.contains_key(&uid)
            && self.read_at.is_none_or(|t| t.elapsed() >= PASSWD_REREAD)
        {
            self.read_at = Some(Instant::now());
            if let Ok(text) = std::fs::read_to_string(Path::new(self.passwd)) {
                for line in text.lines() {
                    let mut f = line.split(':');
                    if let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next())
                        && let Ok(id) = id.parse()
                    {
                        self.names.insert(id, name.to_owned());
                    }
                }
            }
        }
        match self.names.get(&uid) {
            Some(name) => name,
            // An unknown uid is matched as its number.
            None => {
                self.number = uid.to_string();
                &self.number
            }
        }
    }
}

/// The ids of the event's task, taken before enrichment consumes it.
#[derive(Clone, Copy, Debug)]
pub struct TaskIds {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
}

/// Running totals, for status and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertStats {
    pub events_evaluated: u64,
    pub alerts: u64,
}

/// The enrichment thread's evaluator.
#[derive(Debug)]
pub struct Alerter {
    store: Arc<RuleStore>,
    generation: u64,
    rules: Arc<RuleSet>,
    scratch: Scratch,
    users: Users,
    stats: AlertStats,
}

impl Alerter {
    pub fn new(store: Arc<RuleStore>) -> Self {
        let (generation, rules) = store.get();
        Self {
            store,
            generation,
            rules,
            scratch: Scratch::default(),
            users: Users::new("/etc/passwd"),
            stats: AlertStats::default(),
        }
    }

    pub fn stats(&self) -> AlertStats {
        self.stats
    }

    /// Evaluates one enriched event (`kind`, its process encoded in
    /// `process`) and appends an alert per matching rule to `out`.
    pub fn on_event(
        &mut self,
        time: EventTime,
        kind: &Kind,
        ids: TaskIds,
        table: &ProcessTable,
        process: &[u8],
        out: &mut EncodedEvents,
    ) {
        if self.store.generation.load(Relaxed) != self.generation {
            (self.generation, self.rules) = self.store.get();
        }
        let Some((category, matched_kind)) = detect::telemetry::category_of(kind) else {
            return;
        };
        if self.rules.is_empty() {
            return;
        }
        self.stats.events_evaluated += 1;
        let me = table.get(ids.pid);
        let parent = table.get(ids.ppid);
        let mut view = EventRef::new(category);
        view.pid = Some(ids.pid);
        view.ppid = Some(ids.ppid);
        view.user = Some(self.users.name(ids.uid));
        view.image = me.map(|p| p.exe.as_str()).filter(|s| !s.is_empty());
        view.command_line = me
            .map(|p| p.cmdline.as_str())
            .filter(|s| !s.is_empty())
            .map_or(CommandLine::Unknown, CommandLine::Joined);
        view.parent_image = parent.map(|p| p.exe.as_str()).filter(|s| !s.is_empty());
        view.parent_command_line = parent.map(|p| p.cmdline.as_str()).filter(|s| !s.is_empty());
        let Some(subject) = detect::telemetry::fill(&mut view, kind) else {
            return;
        };
        let mut hits = Vec::new();
        self.rules.matches(&view, &mut self.scratch, &mut hits);
        for rule in hits {
            self.stats.alerts += 1;
            self.store.hits.hit(&rule.title);
            tracing::debug!(rule = %rule.title, author = %rule.author, subject = %subject, "alert");
            let alert = AlertEvent {
                process: None,
                rule_id: rule.id.clone(),
                rule_title: rule.title.clone(),
                level: rule.level.clone(),
                rule_author: rule.author.clone(),
                rule_source: rule.source.clone(),
                tags: rule.tags.clone(),
                attack_ids: rule.attack_ids().collect(),
                matched_kind: matched_kind as i32,
                matched_subject: subject.clone(),
                ..AlertEvent::default()
            };
            out.push_with_process(time, &Kind::Alert(alert), process);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use proto::telemetry::v1::{Event, EventBatch, EventKind};

    use super::*;
    use crate::{
        config::Config,
        enrich::{Enricher, process_table::tests::task},
        events::{ExecRecord, FileRecord, KernelEvent, Repeats},
    };

    fn default_store() -> Arc<RuleStore> {
        let loaded = load(&DetectionConfig::default()).expect("default pack");
        assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
        RuleStore::new(loaded.rules)
    }

    fn exec(pid: u32, ppid: u32, ts: u64, filename: &str) -> KernelEvent {
        let comm = filename.rsplit('/').next().unwrap_or_default();
        KernelEvent::Exec(ExecRecord {
            timestamp_ns: ts,
            task: task(pid, ppid, comm, 10),
            filename: filename.into(),
            argv: vec![comm.into(), "-c".into(), "id".into()],
            ..ExecRecord::default()
        })
    }

    /// Enriches `events` and returns what came out: events and alerts.
    fn run(e: &mut Enricher, events: Vec<KernelEvent>) -> Vec<Event> {
        let mut out = EncodedEvents::default();
        for ev in events {
            e.enrich_into(ev, &mut out);
        }
        EventBatch::decode(out.as_bytes()).expect("decodes").events
    }

    fn alerts(events: &[Event]) -> Vec<(&AlertEvent, u64)> {
        events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::Alert(a)) => Some((a, e.timestamp_ns)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_exec_from_tmp_and_a_shell_under_the_pos_app_alert_after_their_event() {
        let mut e = Enricher::new(&Config::default()).with_alerter(Alerter::new(default_store()));
        let out = run(
            &mut e,
            vec![
                exec(0x7fff_fe00, 1, 100, "/opt/pos/bin/pos"),
                exec(0x7fff_fe01, 0x7fff_fe00, 200, "/usr/bin/bash"),
                exec(0x7fff_fe02, 0x7fff_fe01, 300, "/tmp/payload"),
                exec(0x7fff_fe03, 1, 400, "/usr/bin/id"),
            ],
        );
        // 4 execs, 2 alerts, each right after its exec.
        assert_eq!(out.len(), 6);
        assert!(matches!(out[2].kind, Some(Kind::Alert(_))));
        assert!(matches!(out[4].kind, Some(Kind::Alert(_))));
        let got = alerts(&out);
        let (shell, ts) = got[0];
        assert_eq!(ts, 200);
        assert_eq!(
            shell.rule_title,
            "Shell or Interpreter Started by the POS or Dispensing Application"
        );
        assert_eq!(shell.rule_author, "rxsentry");
        assert_eq!(shell.rule_source, "builtin:shell_from_pos_app.yml");
        assert_eq!(shell.level, "critical");
        assert_eq!(shell.attack_ids, ["T1059.004", "T1059.006", "T1190"]);
        assert_eq!(shell.matched_kind(), EventKind::Exec);
        assert_eq!(shell.matched_subject, "/usr/bin/bash");
        let p = shell.process.as_ref().expect("the exec's process");
        assert_eq!((p.pid, p.ppid), (0x7fff_fe01, 0x7fff_fe00));
        let (tmp, ts) = got[1];
        assert_eq!(ts, 300);
        assert_eq!(tmp.rule_title, "Execution From a World-Writable Directory");
        assert_eq!(
            e.alert_stats(),
            AlertStats {
                events_evaluated: 4,
                alerts: 2
            }
        );
    }

    #[test]
    fn a_shadow_read_alerts_once_not_again_for_its_repeats_summary() {
        let mut e = Enricher::new(&Config::default()).with_alerter(Alerter::new(default_store()));
        let read = |repeats| {
            KernelEvent::File(Box::new(FileRecord {
                timestamp_ns: 600,
                task: task(0x7fff_fd01, 1, "cat", 10),
                op: sensor_common::file_op::OPEN_READ,
                path: "/etc/shadow".into(),
                repeats,
                ..FileRecord::default()
            }))
        };
        let summary = Repeats {
            count: 3,
            first_ns: 600,
            last_ns: 700,
        };
        let out = run(
            &mut e,
            vec![
                exec(0x7fff_fd01, 1, 500, "/usr/bin/cat"),
                read(None),
                read(Some(summary)),
            ],
        );
        let got = alerts(&out);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0].0.rule_title,
            "Read of the Shadow Password File by an Unexpected Program"
        );
        assert_eq!(got[0].0.matched_kind(), EventKind::File);
        assert_eq!(got[0].0.attack_ids, ["T1003.008"]);
    }

    #[test]
    fn a_reload_with_a_broken_file_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = DetectionConfig {
            rule_dirs: vec![dir.path().to_owned()],
            ..DetectionConfig::default()
        };
        let store = default_store();
        let mut e = Enricher::new(&Config::default()).with_alerter(Alerter::new(store.clone()));
        let id_exec = || vec![exec(0x7fff_fc01, 1, 800, "/usr/bin/id")];
        assert!(alerts(&run(&mut e, id_exec())).is_empty());

        let rule = "title: id run\nauthor: soc\nlogsource: {product: linux, category: process_creation}\ndetection:\n  selection:\n    Image|endswith: /id\n  condition: selection\n";
        std::fs::write(dir.path().join("id.yml"), rule).expect("write");
        std::fs::write(dir.path().join("broken.yml"), "detection: [").expect("write");
        let err = store.reload(&config).expect_err("a broken file");
        assert!(err.to_string().contains("broken.yml"), "{err}");
        assert!(
            alerts(&run(&mut e, id_exec())).is_empty(),
            "the old set stays"
        );

        std::fs::remove_file(dir.path().join("broken.yml")).expect("rm");
        let n = store.reload(&config).expect("reloads");
        assert_eq!(n, detect::DEFAULT_PACK.len() + 1);
        let out = run(&mut e, id_exec());
        let got = alerts(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.rule_title.as_str(), got[0].0.rule_author.as_str()),
            ("id run", "soc")
        );
    }
}
