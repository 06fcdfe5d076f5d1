//! Where every kernel record goes: [`Router::on_ring_event`] decodes a ring
//! buffer record and hands the event to each part of the daemon that needs
//! it (policy, watched files, open coalescing), then to the
//! pipeline. A new event kind, or a new consumer of one, is routed here and
//! nowhere else.
//!
//! It runs on the ring buffer reader's thread: nothing here may block.

use std::{
    sync::{Arc, mpsc},
    time::Instant,
};

use crate::{
    events::{self, FileRecord, KernelEvent, PolicyRecord},
    hooks::RingEvent,
    pipeline::EventSender,
    policy::manager::{Command as PolicyCommand, RuleNames},
    tamper::Judge,
    transport::DropTracker,
    watch::{
        Anchors,
        manager::{self as watch_manager, Command as WatchCommand},
        repeats::{OpenRepeats, RepeatsError},
    },
};

/// The last consumer of every event: the pipeline, in the daemon.
pub trait EventSink {
    /// Takes one event without waiting; a refused event is counted by the
    /// sink as lost.
    fn deliver(&mut self, event: KernelEvent);
}

impl EventSink for EventSender {
    fn deliver(&mut self, event: KernelEvent) {
        // A refused push is already counted by the pipeline.
        _ = self.push(event);
    }
}

/// Open coalescing as the router uses it (the daemon's is [`OpenRepeats`]).
pub trait OpenCoalescer {
    /// An open reported in full: its repeats will be summed against it.
    fn observe(&mut self, file: &FileRecord);
    /// The summaries of the windows that are over (all of them with `all`).
    fn collect(&mut self, now: Instant, all: bool) -> Result<Vec<FileRecord>, RepeatsError>;
}

impl OpenCoalescer for OpenRepeats {
    fn observe(&mut self, file: &FileRecord) {
        OpenRepeats::observe(self, file);
    }

    fn collect(&mut self, now: Instant, all: bool) -> Result<Vec<FileRecord>, RepeatsError> {
        OpenRepeats::collect(self, now, all)
    }
}

/// The allowlist's consumers of policy events.
struct PolicyRoute {
    rules: RuleNames,
    /// The policy manager, to give trust back to a modified allowlisted file.
    retrust: Option<mpsc::Sender<PolicyCommand>>,
}

/// Takes each kernel record to its consumers.
pub struct Router<S, C = OpenRepeats> {
    sink: S,
    drops: Arc<DropTracker>,
    policy: PolicyRoute,
    anchors: Anchors,
    watch: Option<mpsc::Sender<WatchCommand>>,
    repeats: Option<C>,
    /// Keeps the kernel's tamper calls that reached the sensor's own
    /// objects, and turns writes to its files into tamper records. None:
    /// tamper calls are dropped.
    tamper: Option<Judge>,
}

impl<S: EventSink, C: OpenCoalescer> Router<S, C> {
    /// A router that only decodes and delivers to `sink`; undecodable
    /// records are counted in `drops`.
    pub fn new(sink: S, drops: Arc<DropTracker>) -> Self {
        Self {
            sink,
            drops,
            policy: PolicyRoute {
                rules: RuleNames::default(),
                retrust: None,
            },
            anchors: Anchors::default(),
            watch: None,
            repeats: None,
            tamper: None,
        }
    }

    /// Tamper calls are judged (and writes to the sensor's files reported)
    /// by `judge`.
    pub fn with_tamper(mut self, judge: Judge) -> Self {
        self.tamper = Some(judge);
        self
    }

    /// Policy events get their rule's name from `rules`; a modified
    /// allowlisted file is sent to the policy manager for a re-hash.
    pub fn with_policy(
        mut self,
        rules: RuleNames,
        retrust: Option<mpsc::Sender<PolicyCommand>>,
    ) -> Self {
        self.policy = PolicyRoute { rules, retrust };
        self
    }

    /// File events get their full paths from `anchors`; unlinks and
    /// renames are told to the watch manager.
    pub fn with_watch(
        mut self,
        anchors: Anchors,
        watch: Option<mpsc::Sender<WatchCommand>>,
    ) -> Self {
        self.anchors = anchors;
        self.watch = watch;
        self
    }

    /// Opens reported in full are remembered for their repeats' summaries.
    pub fn with_repeats(mut self, repeats: Option<C>) -> Self {
        self.repeats = repeats;
        self
    }

    /// One callback of the ring buffer reader.
    pub fn on_ring_event(&mut self, ring_event: RingEvent<'_>) {
        match ring_event {
            RingEvent::Record(record) => match events::decode(record) {
                Ok(event) => self.route(event),
                Err(e) => {
                    self.drops.add_malformed_kernel_records(1);
                    tracing::warn!(error = %e, "undecodable kernel record");
                }
            },
            RingEvent::Drained { last } => self.flush_repeats(Instant::now(), last),
        }
    }

    /// Hands one decoded event to its consumers, then to the sink.
    pub fn route(&mut self, event: KernelEvent) {
        let event = match event {
            KernelEvent::Policy(mut block) => {
                self.on_policy(&mut block);
                KernelEvent::Policy(block)
            }
            KernelEvent::File(mut file) => {
                self.on_file(&mut file);
                let tamper = self.tamper.as_ref().and_then(|j| j.file_write(&file));
                self.sink.deliver(KernelEvent::File(file));
                match tamper {
                    Some(t) => KernelEvent::Tamper(Box::new(t)),
                    None => return,
                }
            }
            KernelEvent::Tamper(mut call) => {
                let ours = self.tamper.as_mut().is_some_and(|j| j.judge(&mut call));
                if !ours {
                    // Not the sensor's: nothing was tampered with.
                    return;
                }
                KernelEvent::Tamper(call)
            }
            other => other,
        };
        self.sink.deliver(event);
    }

    fn on_policy(&mut self, block: &mut PolicyRecord) {
        block.rule = self.policy.rules.name(block.rule_index);
        if let (Some(tx), Some(rule), sensor_common::reason::MODIFIED) =
            (&self.policy.retrust, block.rule_index, block.reason)
        {
            let _ = tx.send(PolicyCommand::Retrust {
                file: sensor_common::FileId {
                    dev: events::user_dev_to_kernel(block.device),
                    _pad: 0,
                    ino: block.inode,
                },
                rule,
                path: block.filename.clone(),
            });
        }
    }

    fn on_file(&mut self, file: &mut FileRecord) {
        self.anchors.resolve_record(file);
        if let Some(tx) = &self.watch {
            watch_manager::notice(tx, file);
        }
        if let Some(repeats) = &mut self.repeats {
            repeats.observe(file);
        }
    }

    /// Delivers the summaries of the coalescing windows that are over (all
    /// of them with `last`, once the hooks are detached).
    fn flush_repeats(&mut self, now: Instant, last: bool) {
        let Some(repeats) = &mut self.repeats else {
            return;
        };
        match repeats.collect(now, last) {
            Ok(summaries) => {
                for file in summaries {
                    self.sink.deliver(KernelEvent::File(Box::new(file)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot collect repeated opens"),
        }
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::{file_op, reason};

    use super::*;
    use crate::events::{ExecRecord, RawPath, TaskIdentity};

    impl EventSink for Vec<KernelEvent> {
        fn deliver(&mut self, event: KernelEvent) {
            self.push(event);
        }
    }

    /// Records what it observed; hands out prepared summaries.
    #[derive(Default)]
    struct FakeRepeats {
        observed: Vec<String>,
        summaries: Vec<FileRecord>,
        collected_all: bool,
    }

    impl OpenCoalescer for FakeRepeats {
        fn observe(&mut self, file: &FileRecord) {
            self.observed.push(file.path.clone());
        }

        fn collect(&mut self, _now: Instant, all: bool) -> Result<Vec<FileRecord>, RepeatsError> {
            self.collected_all |= all;
            Ok(std::mem::take(&mut self.summaries))
        }
    }

    fn router() -> Router<Vec<KernelEvent>, FakeRepeats> {
        Router::new(Vec::new(), Arc::new(DropTracker::new()))
    }

    fn block(blocked: bool, reason: u32, rule_index: Option<u32>) -> KernelEvent {
        KernelEvent::Policy(PolicyRecord {
            timestamp_ns: 1,
            task: TaskIdentity::default(),
            filename: "/opt/pos/bin/pos".into(),
            device: 0x0801,
            inode: 42,
            blocked,
            reason,
            backend: 0,
            rule_index,
            rule: String::new(),
            generation: 1,
            partial: false,
        })
    }

    fn file(op: u32, name: &str) -> KernelEvent {
        KernelEvent::File(Box::new(FileRecord {
            op,
            raw_path: RawPath {
                name: name.into(),
                ..RawPath::default()
            },
            ..FileRecord::default()
        }))
    }

    #[test]
    fn policy_events_are_named_and_modified_files_retrusted() {
        let (retrust_tx, retrust_rx) = mpsc::channel();
        let mut r = router().with_policy(RuleNames::default(), Some(retrust_tx));

        r.route(block(true, reason::NOT_ALLOWED, None));
        assert!(retrust_rx.try_recv().is_err(), "nothing to re-hash");
        r.route(block(false, reason::NOT_ALLOWED, None));
        assert!(retrust_rx.try_recv().is_err());
        // A modified allowlisted file: re-hashed.
        r.route(block(true, reason::MODIFIED, Some(3)));
        match retrust_rx.try_recv().expect("a re-hash") {
            PolicyCommand::Retrust { file, rule, path } => {
                assert_eq!((file.ino, rule, path.as_str()), (42, 3, "/opt/pos/bin/pos"));
                assert_eq!(file.dev, events::user_dev_to_kernel(0x0801));
            }
            other => panic!("unexpected {other:?}"),
        }

        let names: Vec<&str> = r
            .sink
            .iter()
            .map(|e| match e {
                KernelEvent::Policy(p) => p.rule.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(names, ["not in allowlist", "not in allowlist", "rule #3"]);
    }

    #[test]
    fn file_events_are_resolved_noticed_and_observed() {
        let (watch_tx, watch_rx) = mpsc::channel();
        let mut r = router()
            .with_watch(Anchors::default(), Some(watch_tx))
            .with_repeats(Some(FakeRepeats::default()));
        r.route(file(file_op::OPEN_READ, "/var/lib/pharmacy/rx.db"));
        assert!(
            watch_rx.try_recv().is_err(),
            "an open changes no watched root"
        );
        r.route(file(file_op::UNLINK, "/var/lib/pharmacy"));
        match watch_rx
            .try_recv()
            .expect("unlink told to the watch manager")
        {
            WatchCommand::PathChanged(path) => assert_eq!(path, "/var/lib/pharmacy"),
            other => panic!("unexpected {other:?}"),
        }
        let repeats = r.repeats.as_ref().expect("repeats");
        assert_eq!(
            repeats.observed,
            ["/var/lib/pharmacy/rx.db", "/var/lib/pharmacy"]
        );
        let paths: Vec<&str> = r
            .sink
            .iter()
            .map(|e| match e {
                KernelEvent::File(f) => {
                    assert!(f.raw_path.name.is_empty(), "raw names freed");
                    f.path.as_str()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(paths, ["/var/lib/pharmacy/rx.db", "/var/lib/pharmacy"]);
    }

    #[test]
    fn other_events_go_straight_to_the_sink() {
        let mut r = router().with_repeats(Some(FakeRepeats::default()));
        let exec = KernelEvent::Exec(ExecRecord {
            filename: "/bin/true".into(),
            ..ExecRecord::default()
        });
        r.route(exec.clone());
        assert_eq!(r.sink, [exec]);
        assert!(r.repeats.as_ref().is_some_and(|f| f.observed.is_empty()));
    }

    #[test]
    fn undecodable_records_are_counted_not_delivered() {
        let drops = Arc::new(DropTracker::new());
        let mut r: Router<Vec<KernelEvent>, FakeRepeats> = Router::new(Vec::new(), drops.clone());
        r.on_ring_event(RingEvent::Record(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
        r.on_ring_event(RingEvent::Record(&[]));
        assert!(r.sink.is_empty());
        assert_eq!(drops.snapshot().malformed_kernel_records, 2);
    }

    #[test]
    fn drained_rings_flush_the_coalescing_summaries() {
        let summary = FileRecord {
            path: "/var/lib/pharmacy/rx.db".into(),
            ..FileRecord::default()
        };
        let mut r = router().with_repeats(Some(FakeRepeats {
            summaries: vec![summary.clone()],
            ..FakeRepeats::default()
        }));
        r.on_ring_event(RingEvent::Drained { last: false });
        assert_eq!(r.sink, [KernelEvent::File(Box::new(summary))]);
        assert!(!r.repeats.as_ref().is_some_and(|f| f.collected_all));
        r.on_ring_event(RingEvent::Drained { last: true });
        assert_eq!(r.sink.len(), 1, "nothing more to flush");
        assert!(r.repeats.as_ref().is_some_and(|f| f.collected_all));
    }
}
