//! Sigma rules (crate `detect`) on every enriched event, on the enrichment
//! thread: that is where an event is complete (the process table has
//! applied the exec, knows the parent's program and command line). Each
//! match becomes an `AlertEvent` right after its event in the stream.
//!
//! The rules live in a [`RuleStore`] shared with the daemon, which swaps in
//! a new set on SIGHUP; the enrichment thread picks it up at its next event
//! (one atomic load per event). Sequence rules' steps feed a
//! [`SequenceTracker`] (a reload starts it afresh). What a rule that fired
//! asks for besides its alert goes to the responder (`respond`).

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use detect::{
    Action, CommandLine, EventRef, Loader, Refusal, RefusalKind, RuleSet, Scratch, SequenceEvent,
    SequenceTracker, StepRef,
};
use proto::telemetry::v1::{AlertEngine, AlertEvent, EventKind, event::Kind};

use crate::{
    clock::EventTime,
    config::{Config, DetectionConfig, ResponseRule},
    enrich::ProcessTable,
    respond::{self, Quarantine, Responses},
    transport::EncodedEvents,
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

/// Where the rules come from: `[detection]` and the `[[response]]` rules
/// of the sensor's configuration (each one a sequence rule).
#[derive(Clone, Debug, Default)]
pub struct RuleSources {
    pub detection: DetectionConfig,
    pub response: Vec<ResponseRule>,
}

impl RuleSources {
    pub fn from_config(config: &Config) -> Self {
        Self {
            detection: config.detection.clone(),
            response: config.response.clone(),
        }
    }
}

/// Loads the default pack (if configured), every rule directory and the
/// `[[response]]` rules. Any broken file fails the whole load; unsupported
/// rules are returned.
pub fn load(sources: &RuleSources) -> Result<Loaded, RulesError> {
    let config = &sources.detection;
    let mut loader = Loader::new(config.loader_placeholders());
    if config.default_pack {
        loader.add_default_pack();
    }
    for dir in &config.rule_dirs {
        loader.add_dir(dir)?;
    }
    for (i, rule) in sources.response.iter().enumerate() {
        loader.add(&format!("config:response[{i}]"), &rule.to_sequence_rule());
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
    /// Completed sequences per sequence rule title.
    sequence_hits: crate::metrics::RuleHits,
}

impl RuleStore {
    pub fn new(rules: RuleSet) -> Arc<Self> {
        Arc::new(Self {
            current: Mutex::new(Arc::new(rules)),
            generation: AtomicU64::new(1),
            hits: crate::metrics::RuleHits::default(),
            sequence_hits: crate::metrics::RuleHits::default(),
        })
    }

    /// Matches per Sigma rule title since start (reloads keep counting).
    pub fn hits(&self) -> crate::metrics::RuleHits {
        self.hits.clone()
    }

    /// Completed sequences per sequence rule title since start.
    pub fn sequence_hits(&self) -> crate::metrics::RuleHits {
        self.sequence_hits.clone()
    }

    /// The paths the rules in force need watched, and their blind rules.
    pub fn path_needs(&self) -> detect::PathNeeds {
        let current = match self.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        current.path_needs()
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
    pub fn reload(&self, sources: &RuleSources, why: &str) -> Result<usize, RulesError> {
        match load(sources) {
            Ok(loaded) => {
                log_loaded(&loaded, why);
                let n = loaded.rules.len();
                self.replace(loaded.rules);
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "{why}: detection rules not reloaded; the last good set stays");
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
    /// The task's process start (CLOCK_BOOTTIME ns, 0 unknown): tells its
    /// process and parent from later ones with the same pids.
    pub start_ns: u64,
}

/// Running totals, for status and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AlertStats {
    pub events_evaluated: u64,
    pub alerts: u64,
    /// Partial sequences not started because their rule's table was full.
    pub sequences_dropped: u64,
    /// Responses not run because the responder's queue was full.
    pub responses_refused: u64,
}

/// Where the responses of the rules that fire go.
#[derive(Clone, Debug)]
pub struct ResponseRoute {
    pub responses: Responses,
    pub quarantine: Arc<Quarantine>,
    /// Off: rules only alert (`detection.responses = false`).
    pub enabled: bool,
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
    tracker: SequenceTracker,
    /// Dropped partial sequences of the trackers of earlier rule sets.
    sequences_dropped_before: u64,
    steps: Vec<StepRef>,
    ancestors: Vec<u32>,
    respond: Option<ResponseRoute>,
}

/// How far up the process table a `process_tree` sequence looks.
const TREE_DEPTH: usize = 64;

/// One alert about to be made: from a Sigma rule or a sequence rule.
struct Made<'r> {
    engine: AlertEngine,
    id: &'r str,
    title: &'r str,
    level: &'r str,
    author: &'r str,
    source: &'r str,
    tags: &'r [String],
    response: &'r [Action],
    steps: Vec<String>,
    reason: String,
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
            tracker: SequenceTracker::default(),
            sequences_dropped_before: 0,
            steps: Vec::new(),
            ancestors: Vec::new(),
            respond: None,
        }
    }

    /// Rules that ask for kill, quarantine or isolate get it from `route`;
    /// an exec of a quarantined file is killed.
    pub fn with_responses(mut self, route: ResponseRoute) -> Self {
        self.respond = Some(route);
        self
    }

    pub fn stats(&self) -> AlertStats {
        AlertStats {
            sequences_dropped: self.sequences_dropped_before + self.tracker.dropped(),
            responses_refused: self.respond.as_ref().map_or(0, |r| r.responses.refused()),
            ..self.stats
        }
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
            self.sequences_dropped_before += self.tracker.dropped();
            self.tracker = SequenceTracker::default();
        }
        if let Kind::Exec(e) = kind {
            self.on_quarantined_exec(time, e, ids, table, process, out);
        }
        let Some((category, matched_kind)) = detect::telemetry::category_of(kind) else {
            return;
        };
        if self.rules.is_empty() {
            return;
        }
        self.stats.events_evaluated += 1;
        // The programs they ran when the event happened: a file or network
        // event is read after the process ring's later execs (other rings).
        let at = time.timestamp_ns;
        let me = table.program_at(ids.pid, ids.start_ns, at);
        let parent = table.program_at(ids.ppid, ids.start_ns, at);
        let mut view = EventRef::new(category);
        view.pid = Some(ids.pid);
        view.ppid = Some(ids.ppid);
        view.user = Some(self.users.name(ids.uid));
        view.image = me.map(|p| p.exe).filter(|s| !s.is_empty());
        view.command_line = me
            .map(|p| p.cmdline)
            .filter(|s| !s.is_empty())
            .map_or(CommandLine::Unknown, CommandLine::Joined);
        view.parent_image = parent.map(|p| p.exe).filter(|s| !s.is_empty());
        view.parent_command_line = parent.map(|p| p.cmdline).filter(|s| !s.is_empty());
        let Some(subject) = detect::telemetry::fill(&mut view, kind) else {
            return;
        };
        let mut hits = Vec::new();
        self.steps.clear();
        let rules = self.rules.clone();
        rules.evaluate(&view, &mut self.scratch, &mut hits, &mut self.steps);
        let kind_name = category.name();
        let mut made: Vec<Made<'_>> = hits
            .iter()
            .map(|rule| {
                self.store.hits.hit(&rule.title);
                Made {
                    engine: AlertEngine::Sigma,
                    id: &rule.id,
                    title: &rule.title,
                    level: &rule.level,
                    author: &rule.author,
                    source: &rule.source,
                    tags: &rule.tags,
                    response: &rule.response,
                    steps: Vec::new(),
                    reason: format!("{kind_name} {subject}"),
                }
            })
            .collect();
        if !self.steps.is_empty() {
            self.ancestors.clear();
            let mut at = ids.ppid;
            while at > 1 && self.ancestors.len() < TREE_DEPTH {
                self.ancestors.push(at);
                at = table.get(at).map_or(0, |p| p.ppid);
            }
            let event = SequenceEvent {
                time_ns: time.timestamp_ns,
                pid: ids.pid,
                ancestors: &self.ancestors,
                subject: &subject,
            };
            for fired in self.tracker.observe(&rules, &mut self.steps, &event) {
                let seq = fired.sequence;
                self.store.sequence_hits.hit(&seq.title);
                let reason = match seq.steps.as_slice() {
                    [only] if only.count > 1 => format!(
                        "{} {} within {} s",
                        only.count,
                        only.category.name(),
                        seq.within_ns / 1_000_000_000
                    ),
                    _ => format!(
                        "{} within {} s",
                        fired.steps.join(" then "),
                        seq.within_ns / 1_000_000_000
                    ),
                };
                made.push(Made {
                    engine: AlertEngine::Sequence,
                    id: &seq.id,
                    title: &seq.title,
                    level: &seq.level,
                    author: &seq.author,
                    source: &seq.source,
                    tags: &seq.tags,
                    response: &seq.response,
                    steps: fired.steps,
                    reason,
                });
            }
        }
        let start = table
            .get(ids.pid)
            .map_or((0, 0), |p| (p.start_ns, p.start_slack_ns));
        for m in made {
            self.stats.alerts += 1;
            tracing::debug!(rule = %m.title, author = %m.author, subject = %subject, "alert");
            let asked = match &self.respond {
                Some(route) if route.enabled && !m.response.is_empty() => {
                    let request = respond::Request {
                        actions: m.response.to_vec(),
                        requester: format!("detection:{}", m.title),
                        rule_source: m.source.to_owned(),
                        reason: m.reason.clone(),
                        pid: ids.pid,
                        start_ns: start.0,
                        start_slack_ns: start.1,
                        file: detect::telemetry::file_of(kind).map(str::to_owned),
                    };
                    if route.responses.ask(request) {
                        m.response.iter().map(|a| a.name().to_owned()).collect()
                    } else {
                        Vec::new()
                    }
                }
                _ => Vec::new(),
            };
            let alert = AlertEvent {
                process: None,
                rule_id: m.id.to_owned(),
                rule_title: m.title.to_owned(),
                level: m.level.to_owned(),
                rule_author: m.author.to_owned(),
                rule_source: m.source.to_owned(),
                tags: m.tags.to_vec(),
                attack_ids: detect::attack_ids(m.tags).collect(),
                matched_kind: matched_kind as i32,
                matched_subject: subject.clone(),
                engine: m.engine as i32,
                sequence_steps: m.steps,
                responses: asked,
                ..AlertEvent::default()
            };
            out.push_with_process(time, &Kind::Alert(alert), process);
        }
    }

    /// An exec of a file whose hash a quarantine response refused (another
    /// copy of it): killed, with an alert.
    fn on_quarantined_exec(
        &mut self,
        time: EventTime,
        exec: &proto::telemetry::v1::ExecEvent,
        ids: TaskIds,
        table: &ProcessTable,
        process: &[u8],
        out: &mut EncodedEvents,
    ) {
        let Some(route) = &self.respond else {
            return;
        };
        if !route.quarantine.contains(&exec.sha256) {
            return;
        }
        let title = "Execution of a Quarantined File";
        let reason = format!("exec {} (sha256 {})", exec.filename, exec.sha256);
        let start = table
            .get(ids.pid)
            .map_or((0, 0), |p| (p.start_ns, p.start_slack_ns));
        let asked = route.enabled
            && route.responses.ask(respond::Request {
                actions: vec![Action::Kill],
                requester: format!("detection:{title}"),
                rule_source: "builtin:quarantine".into(),
                reason,
                pid: ids.pid,
                start_ns: start.0,
                start_slack_ns: start.1,
                file: None,
            });
        self.stats.alerts += 1;
        self.store.hits.hit(title);
        let alert = AlertEvent {
            process: None,
            rule_id: String::new(),
            rule_title: title.into(),
            level: "critical".into(),
            rule_author: "rxsentry".into(),
            rule_source: "builtin:quarantine".into(),
            tags: vec!["attack.execution".into(), "attack.t1204.002".into()],
            attack_ids: vec!["T1204.002".into()],
            matched_kind: EventKind::Exec as i32,
            matched_subject: exec.filename.clone(),
            engine: AlertEngine::Sigma as i32,
            file_sha256: exec.sha256.clone(),
            sequence_steps: Vec::new(),
            responses: if asked {
                vec!["kill".into()]
            } else {
                Vec::new()
            },
        };
        out.push_with_process(time, &Kind::Alert(alert), process);
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use proto::telemetry::v1::{Event, EventBatch, EventKind};

    use super::*;
    use crate::{
        enrich::{Enricher, process_table::tests::task},
        events::{ExecRecord, FileRecord, KernelEvent, Repeats},
    };

    fn default_store() -> Arc<RuleStore> {
        let loaded = load(&RuleSources::default()).expect("default pack");
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
                alerts: 2,
                ..AlertStats::default()
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
        let config = RuleSources {
            detection: DetectionConfig {
                rule_dirs: vec![dir.path().to_owned()],
                ..DetectionConfig::default()
            },
            response: Vec::new(),
        };
        let store = default_store();
        let mut e = Enricher::new(&Config::default()).with_alerter(Alerter::new(store.clone()));
        let id_exec = || vec![exec(0x7fff_fc01, 1, 800, "/usr/bin/id")];
        assert!(alerts(&run(&mut e, id_exec())).is_empty());

        let rule = "title: id run\nauthor: soc\nlogsource: {product: linux, category: process_creation}\ndetection:\n  selection:\n    Image|endswith: /id\n  condition: selection\n";
        std::fs::write(dir.path().join("id.yml"), rule).expect("write");
        std::fs::write(dir.path().join("broken.yml"), "detection: [").expect("write");
        let err = store.reload(&config, "SIGHUP").expect_err("a broken file");
        assert!(err.to_string().contains("broken.yml"), "{err}");
        assert!(
            alerts(&run(&mut e, id_exec())).is_empty(),
            "the old set stays"
        );

        std::fs::remove_file(dir.path().join("broken.yml")).expect("rm");
        let n = store.reload(&config, "SIGHUP").expect("reloads");
        assert_eq!(n, detect::DEFAULT_PACK.len() + 1);
        let out = run(&mut e, id_exec());
        let got = alerts(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.rule_title.as_str(), got[0].0.rule_author.as_str()),
            ("id run", "soc")
        );
    }

    /// A responder stand-in: the requests the rules made.
    fn with_responses(store: Arc<RuleStore>, dir: &Path) -> (Enricher, respond::Requests) {
        let (responses, requests) = respond::channel();
        let quarantine = Quarantine::open(&dir.join("q")).expect("quarantine");
        let alerter = Alerter::new(store).with_responses(ResponseRoute {
            responses,
            quarantine,
            enabled: true,
        });
        (
            Enricher::new(&Config::default()).with_alerter(alerter),
            requests,
        )
    }

    fn blocked(pid: u32, ts: u64, blocked: bool) -> KernelEvent {
        KernelEvent::Policy(crate::events::PolicyRecord {
            timestamp_ns: ts,
            task: task(pid, 1, "intruder", 10),
            filename: "/tmp/intruder".into(),
            device: 1,
            inode: 2,
            blocked,
            reason: sensor_common::reason::NOT_ALLOWED,
            backend: 0,
            rule_index: None,
            rule: String::new(),
            generation: 1,
            partial: false,
        })
    }

    #[test]
    fn a_response_rule_is_a_sequence_rule_that_counts_blocks_and_asks_to_isolate() {
        let mut rule = crate::config::ResponseRule::burst(3, 60);
        rule.name = "it's-a-burst".into();
        let loaded = load(&RuleSources {
            detection: DetectionConfig::default(),
            response: vec![rule],
        })
        .expect("loads");
        assert!(loaded.unsupported.is_empty(), "{:?}", loaded.unsupported);
        let seq = loaded
            .rules
            .sequences()
            .iter()
            .find(|s| s.source == "config:response[0]")
            .expect("the response rule");
        assert_eq!(seq.title, "it's-a-burst");
        assert_eq!(seq.response, [Action::Isolate]);
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut e, requests) = with_responses(RuleStore::new(loaded.rules), dir.path());
        // Two blocks and a would-block (monitor mode): not yet.
        let out = run(
            &mut e,
            vec![
                blocked(0x7fff_fa01, 1_000, true),
                blocked(0x7fff_fa02, 2_000, false),
                blocked(0x7fff_fa03, 3_000, true),
            ],
        );
        assert!(alerts(&out).is_empty(), "{out:?}");
        assert!(requests.try_recv().is_none());
        let out = run(&mut e, vec![blocked(0x7fff_fa04, 4_000, true)]);
        let got = alerts(&out);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0.rule_title, "it's-a-burst");
        assert_eq!(got[0].0.responses, ["isolate"]);
        assert_eq!(got[0].0.matched_kind(), EventKind::Policy);
        assert_eq!(got[0].0.sequence_steps, ["/tmp/intruder"]);
        let request = requests.try_recv().expect("a request");
        assert_eq!(request.actions, [Action::Isolate]);
        assert_eq!(request.requester, "detection:it's-a-burst");
        assert_eq!(request.reason, "3 allowlist_block within 60 s");
        assert_eq!(request.pid, 0x7fff_fa04);
    }

    #[test]
    fn an_exec_of_a_quarantined_hash_is_killed_and_alerted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut e, requests) = with_responses(default_store(), dir.path());
        let payload = dir.path().join("payload");
        std::fs::write(&payload, b"evil").expect("write");
        let copy = dir.path().join("copy");
        std::fs::copy(&payload, &copy).expect("copy");
        let q = Quarantine::open(&dir.path().join("q")).expect("same dir");
        let (_, sha) = q.quarantine(&payload, "test").expect("quarantined");
        // The enricher's quarantine set is the one the responder fills: a
        // new one here reads the directory, as a restarted sensor does.
        let (mut e2, requests2) = with_responses(default_store(), dir.path());
        let exec_copy = || {
            let mut ev = exec(0x7fff_f901, 1, 100, &copy.display().to_string());
            if let KernelEvent::Exec(x) = &mut ev {
                x.argv = vec!["copy".into()];
            }
            vec![ev]
        };
        let quarantined = |out: &[Event]| -> Vec<AlertEvent> {
            alerts(out)
                .into_iter()
                .filter(|(a, _)| a.rule_title == "Execution of a Quarantined File")
                .map(|(a, _)| a.clone())
                .collect()
        };
        let got = quarantined(&run(&mut e2, exec_copy()));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].responses, ["kill"]);
        let request = requests2.try_recv().expect("kill asked");
        assert_eq!(request.actions, [Action::Kill]);
        assert!(request.reason.contains(&sha), "{}", request.reason);
        // The first enricher's set did not learn of it (it was opened
        // before): it only alerts on what its own responder quarantined.
        assert!(quarantined(&run(&mut e, exec_copy())).is_empty());
        assert!(requests.try_recv().is_none());
    }

    #[test]
    fn a_phi_read_then_a_connection_alerts_with_both_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut e, _requests) = with_responses(default_store(), dir.path());
        let pid = 0x7fff_f801;
        let read = KernelEvent::File(Box::new(FileRecord {
            timestamp_ns: 2_000_000_000,
            task: task(pid, 1, "python3", 10),
            op: sensor_common::file_op::OPEN_READ,
            path: "/var/lib/pharmacy/phi/patient-0001.json".into(),
            ..FileRecord::default()
        }));
        let connect = |ts: u64, remote: &str| {
            crate::events::tcp_connect(&task(pid, 1, "python3", 10), ts, "10.9.0.1:40000", remote)
        };
        let out = run(
            &mut e,
            vec![
                exec(pid, 1, 1_000_000_000, "/usr/bin/python3"),
                read,
                connect(3_000_000_000, "127.0.0.1:80"),
                connect(4_000_000_000, "10.9.0.2:443"),
            ],
        );
        let got = alerts(&out);
        let titles: Vec<&str> = got.iter().map(|(a, _)| a.rule_title.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Read of the PHI Store by an Unexpected Program",
                "PHI Read Followed by an Outbound Connection"
            ]
        );
        let (exfil, ts) = got[1];
        assert_eq!(ts, 4_000_000_000);
        assert_eq!(
            exfil.sequence_steps,
            ["/var/lib/pharmacy/phi/patient-0001.json", "10.9.0.2:443"]
        );
        assert_eq!(exfil.attack_ids, ["T1041", "T1005"]);
        assert!(exfil.responses.is_empty(), "alert only");
    }

    /// `bash -c 'exec 3<>/dev/tcp/...; sleep 2'`: the connect comes through
    /// the network ring and is read after the exec into sleep (process
    /// ring); it is still bash's connection, and sleep's later one is not.
    #[test]
    fn a_connect_read_after_its_shell_execd_into_sleep_is_the_shells() {
        let mut e = Enricher::new(&Config::default()).with_alerter(Alerter::new(default_store()));
        let pid = 0x7fff_f701;
        let connect = |ts: u64| {
            crate::events::tcp_connect(
                &task(pid, 1, "bash", 10),
                ts,
                "127.0.0.1:40000",
                "127.0.0.1:4444",
            )
        };
        let out = run(
            &mut e,
            vec![
                exec(pid, 1, 100, "/usr/bin/bash"),
                exec(pid, 1, 300, "/usr/bin/sleep"),
                connect(200),
                connect(400),
            ],
        );
        let got = alerts(&out);
        let titles: Vec<&str> = got.iter().map(|(a, _)| a.rule_title.as_str()).collect();
        assert_eq!(titles, ["Shell Process Making a Network Connection"]);
        assert_eq!(got[0].1, 200, "on the connect before the exec");
        let exe = |ts: u64| {
            out.iter().find_map(|ev| match &ev.kind {
                Some(Kind::Network(n)) if ev.timestamp_ns == ts => {
                    Some(n.process.as_ref().expect("process").exe.clone())
                }
                _ => None,
            })
        };
        assert_eq!(exe(200).as_deref(), Some("/usr/bin/bash"));
        assert_eq!(exe(400).as_deref(), Some("/usr/bin/sleep"));
        let p = got[0].0.process.as_ref().expect("process");
        assert_eq!(p.exe, "/usr/bin/bash", "the alert names the shell");
    }
}
