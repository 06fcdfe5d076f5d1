//! Kernel events -> protobuf events, with process context and file hashes.
//!
//! Enrichment does blocking file I/O (hashing, /proc), so an [`Enricher`]
//! lives on a dedicated thread (see `pipeline`), never on the async reactor.

pub mod hash_cache;
mod network;
pub mod process_table;

use std::path::Path;

use proto::telemetry::v1::{
    Event, ExecEvent, ExitEvent, FileEvent, FileIdentity, ForkEvent, PolicyEvent, Process,
    event::Kind,
    file_event::Operation,
    policy_event::{Action, Reason},
};

use crate::{
    alerts::{AlertStats, Alerter, TaskIds},
    clock::{EventTime, WallClock},
    config::Config,
    events::{ExecRecord, FileRecord, KernelEvent, PolicyRecord, TaskIdentity},
    transport::EncodedEvents,
    yara::YaraFeed,
};
pub use hash_cache::{ExecHash, HashCache, HashError, HashStats};
pub use process_table::{ProcessTable, TableStats};

/// Turns [`KernelEvent`]s into telemetry [`Event`]s.
#[derive(Debug)]
pub struct Enricher {
    table: ProcessTable,
    hashes: HashCache,
    /// Scratch for [`Self::enrich_into`]'s process field, kept to reuse
    /// its allocation.
    process_buf: Vec<u8>,
    /// Kernel stamps -> UTC, fixed here where each event is encoded once.
    clock: WallClock,
    /// Sigma rules on each encoded event (none: no detection).
    alerter: Option<Alerter>,
    /// Where new executables and written files go to be YARA-scanned.
    yara: Option<YaraFeed>,
}

impl Enricher {
    pub fn new(config: &Config) -> Self {
        Self::with_clock(config, WallClock::default())
    }

    /// [`Self::new`] with the given wall clock (tests step it).
    pub fn with_clock(config: &Config, clock: WallClock) -> Self {
        Self {
            table: ProcessTable::new(
                config.process_table.max_entries,
                config.process_table.lineage_depth,
            ),
            hashes: HashCache::new(config.hashing.cache_entries, config.hashing.max_file_bytes),
            process_buf: Vec::new(),
            clock,
            alerter: None,
            yara: None,
        }
    }

    /// Evaluates the rules of `alerter` on every event of
    /// [`Self::enrich_into`], appending the alerts after their event.
    pub fn with_alerter(mut self, alerter: Alerter) -> Self {
        self.alerter = Some(alerter);
        self
    }

    /// Queues YARA scans of new executables and written watched files.
    pub fn with_yara(mut self, feed: YaraFeed) -> Self {
        self.yara = Some(feed);
        self
    }

    pub fn alert_stats(&self) -> AlertStats {
        self.alerter
            .as_ref()
            .map(Alerter::stats)
            .unwrap_or_default()
    }

    /// Reads the CLOCK_REALTIME - CLOCK_BOOTTIME offset again: the
    /// pipeline calls it at the start of every run of events, so an NTP
    /// step is followed within one run (see `clock`).
    pub fn refresh_clock(&mut self) {
        self.clock.refresh();
    }

    /// Fills the process table with what already runs (normally `/proc`),
    /// so the first events already have lineage.
    pub fn seed_from_proc(&mut self, proc_root: &Path) -> std::io::Result<usize> {
        self.table.seed_from_proc(proc_root)
    }

    pub fn table(&self) -> &ProcessTable {
        &self.table
    }

    pub fn hash_stats(&self) -> HashStats {
        self.hashes.stats()
    }

    pub fn table_stats(&self) -> TableStats {
        self.table.stats()
    }

    /// One kernel event -> one telemetry event. Blocking (may hash a file).
    pub fn enrich(&mut self, event: KernelEvent) -> Event {
        let (time, mut kind, process) = self.enrich_with(event, ProcessTable::describe);
        if let Some(slot) = process_slot(&mut kind) {
            *slot = Some(process);
        }
        Event {
            timestamp_ns: time.timestamp_ns,
            boot_time_unix_ns: time.boot_time_unix_ns,
            kind: Some(kind),
        }
    }

    /// [`Self::enrich`], prost-encoded and appended to `out`: the same
    /// bytes as `enrich(event).encode_to_vec()`, but the process
    /// description comes from the table's cache instead of being rebuilt,
    /// copied and encoded (several times) for every event.
    pub fn enrich_into(&mut self, event: KernelEvent, out: &mut EncodedEvents) {
        let mut process = std::mem::take(&mut self.process_buf);
        process.clear();
        let task = event.task();
        let ids = TaskIds {
            pid: task.tgid,
            ppid: task.ppid,
            uid: task.uid,
            start_ns: task.start_boottime_ns,
        };
        let misses = self.hashes.stats().misses;
        let (time, kind, ()) = self.enrich_with(event, |table, task, at_ns| {
            table.encode_description(task, at_ns, &mut process)
        });
        out.push_with_process(time, &kind, &process);
        if let Some(alerter) = &mut self.alerter {
            alerter.on_event(time, &kind, ids, &self.table, &process, out);
        }
        if let Some(yara) = &self.yara {
            // A miss means the file was read: first seen in this version.
            let new_executable = self.hashes.stats().misses != misses;
            yara.on_event(time, &kind, ids.pid, new_executable, &process);
        }
        self.process_buf = process;
    }

    /// The event's kind with `process` left empty, and what `describe`
    /// made of its task at the event's kernel time, called at the point
    /// where the process table describes it (after an exec or fork is
    /// applied, before an exit).
    fn enrich_with<P>(
        &mut self,
        event: KernelEvent,
        mut describe: impl FnMut(&mut ProcessTable, &TaskIdentity, u64) -> P,
    ) -> (EventTime, Kind, P) {
        let timestamp_ns = event.timestamp_ns();
        let mut describe =
            |table: &mut ProcessTable, task: &TaskIdentity| describe(table, task, timestamp_ns);
        let time = EventTime {
            timestamp_ns,
            boot_time_unix_ns: self.clock.boot_time_ns(timestamp_ns),
        };
        let (kind, process) = match event {
            KernelEvent::Exec(exec) => {
                let hash = self.hashes.hash_exec(&exec);
                self.table.on_exec(&exec);
                let process = describe(&mut self.table, &exec.task);
                let kind = Kind::Exec(ExecEvent {
                    process: None,
                    filename: exec.filename,
                    argv: exec.argv,
                    argv_truncated: exec.argv_truncated,
                    sha256: hash.sha256,
                    hash_error: hash.error,
                    file: Some(FileIdentity {
                        device: exec.device,
                        inode: exec.inode,
                    }),
                });
                (kind, process)
            }
            KernelEvent::Fork(fork) => {
                self.table.on_fork(&fork);
                let process = describe(&mut self.table, &fork.task);
                (Kind::Fork(ForkEvent { process: None }), process)
            }
            KernelEvent::Exit(exit) => {
                let process = describe(&mut self.table, &exit.task);
                let gone = self.table.on_exit(&exit);
                let kind = Kind::Exit(ExitEvent {
                    process: None,
                    exit_code: exit.exit_code(),
                    signal: exit.signal(),
                    core_dumped: exit.core_dumped(),
                    duration_ns: gone.duration_ns,
                });
                (kind, process)
            }
            KernelEvent::Policy(block) => {
                let process = describe(&mut self.table, &block.task);
                (Kind::Policy(self.policy_event(block)), process)
            }
            KernelEvent::File(file) => {
                let process = describe(&mut self.table, &file.task);
                (Kind::File(file_event(*file)), process)
            }
            KernelEvent::Net(net) => {
                let process = describe(&mut self.table, &net.task);
                (Kind::Network(network::network_event(*net)), process)
            }
            KernelEvent::Tamper(tamper) => {
                let process = describe(&mut self.table, &tamper.task);
                (Kind::Tamper(crate::tamper::record_event(*tamper)), process)
            }
        };
        (time, kind, process)
    }
}

/// Where an enriched event's process description goes.
fn process_slot(kind: &mut Kind) -> Option<&mut Option<Process>> {
    match kind {
        Kind::Exec(e) => Some(&mut e.process),
        Kind::Fork(e) => Some(&mut e.process),
        Kind::Exit(e) => Some(&mut e.process),
        Kind::File(e) => Some(&mut e.process),
        Kind::Policy(e) => Some(&mut e.process),
        Kind::Network(e) => Some(&mut e.process),
        Kind::Alert(e) => Some(&mut e.process),
        Kind::Tamper(e) => Some(&mut e.process),
        Kind::Isolation(_) | Kind::Response(_) => None,
    }
}

/// A file record as a `FileEvent`, without its process.
fn file_event(f: FileRecord) -> FileEvent {
    use sensor_common::file_op;
    let operation = match f.op {
        file_op::OPEN_READ => Operation::OpenRead,
        file_op::OPEN_WRITE => Operation::OpenWrite,
        file_op::UNLINK => Operation::Unlink,
        file_op::RENAME => Operation::Rename,
        file_op::CHMOD => Operation::Chmod,
        file_op::CHOWN => Operation::Chown,
        file_op::EXEC => Operation::Exec,
        file_op::LINK => Operation::Link,
        file_op::IO_URING_SETUP => Operation::IoUringSetup,
        _ => Operation::Unspecified,
    };
    let creates = f.flags & sensor_common::file::O_CREAT != 0;
    let mode = match operation {
        Operation::Chmod => Some(f.mode),
        Operation::OpenWrite if creates => Some(f.mode),
        _ => None,
    };
    let id = |v: u32| (operation == Operation::Chown && v != u32::MAX).then_some(v);
    FileEvent {
        process: None,
        operation: operation as i32,
        path_truncated: f.raw_path.truncated
            || f.raw_new_path.as_ref().is_some_and(|p| p.truncated),
        path: f.path,
        new_path: f.new_path.unwrap_or_default(),
        flags: f.flags,
        result: f.result,
        mode,
        uid: id(f.uid),
        gid: id(f.gid),
        file: (f.inode != 0).then_some(FileIdentity {
            device: f.device,
            inode: f.inode,
        }),
        repeats: f.repeats.map_or(0, |r| r.count),
        repeat_first_ns: f.repeats.map_or(0, |r| r.first_ns),
        repeat_last_ns: f.repeats.map_or(0, |r| r.last_ns),
        depth_exceeded: f.raw_path.depth_exceeded,
        by_identity: f.raw_path.by_identity,
        watched_path: f.watched_path.unwrap_or_default(),
    }
}

impl Enricher {
    /// A policy record as a `PolicyEvent`, without its process.
    fn policy_event(&mut self, block: PolicyRecord) -> PolicyEvent {
        // Hash what was stopped, for the analyst: same cache as execs.
        let as_exec = ExecRecord {
            timestamp_ns: block.timestamp_ns,
            task: block.task.clone(),
            filename: block.filename.clone(),
            device: block.device,
            inode: block.inode,
            partial: block.partial,
            ..Default::default()
        };
        let hash = self.hashes.hash_exec(&as_exec);
        let reason = match block.reason {
            sensor_common::reason::NOT_ALLOWED => Reason::NotAllowed,
            sensor_common::reason::MODIFIED => Reason::Modified,
            sensor_common::reason::DENIED_CONTEXT => Reason::DeniedContext,
            _ => Reason::Unspecified,
        };
        PolicyEvent {
            process: None,
            path: block.filename,
            sha256: hash.sha256,
            hash_error: hash.error,
            file: Some(FileIdentity {
                device: block.device,
                inode: block.inode,
            }),
            action: if block.blocked {
                Action::Blocked
            } else {
                Action::WouldBlock
            } as i32,
            reason: reason as i32,
            rule: block.rule,
            mode: if block.blocked { "enforce" } else { "monitor" }.to_owned(),
            backend: match block.backend {
                sensor_common::backend::LSM => "lsm",
                _ => "tracepoint+sigkill",
            }
            .to_owned(),
            policy_generation: block.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::tests::FakeClocks;
    use crate::events::{ExecRecord, ExitRecord, ForkRecord, TaskIdentity};

    /// 2026-12-04T12:00:00Z in ns since the epoch, as CLOCK_REALTIME -
    /// CLOCK_BOOTTIME (the kiosk booted then).
    const BOOTED_AT: i64 = 1_796_385_600_000_000_000;

    /// An enricher whose clocks read CLOCK_BOOTTIME 1 ms and the offset
    /// [`BOOTED_AT`], returned to be stepped.
    fn enricher_at_noon() -> (Enricher, std::sync::Arc<FakeClocks>) {
        let clocks = FakeClocks::new(1_000_000, BOOTED_AT);
        let clock = WallClock::new(clocks.clone());
        (Enricher::with_clock(&Config::default(), clock), clocks)
    }

    fn task(tgid: u32, ppid: u32, comm: &str, start: u64) -> TaskIdentity {
        TaskIdentity {
            uid: 1000,
            euid: 1000,
            cgroup_id: 77,
            ..process_table::tests::task(tgid, ppid, comm, start)
        }
    }

    #[test]
    fn exec_fork_exit_become_proto_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let prog = dir.path().join("prog");
        std::fs::write(&prog, b"abc").expect("write");
        let (mut e, _) = enricher_at_noon();
        let parent = task(0x7fff_ff00, 1, "sh", 10);
        let child = task(0x7fff_ff01, 0x7fff_ff00, "sh", 100);
        e.enrich(KernelEvent::Fork(ForkRecord {
            timestamp_ns: 10,
            task: parent.clone(),
            partial: false,
        }));
        let fork = e.enrich(KernelEvent::Fork(ForkRecord {
            timestamp_ns: 100,
            task: child.clone(),
            partial: false,
        }));
        assert_eq!(fork.timestamp_ns, 100);
        assert_eq!(fork.wall_time_unix_ns(), Some(BOOTED_AT as u64 + 100));
        assert_eq!(fork.boot_time_unix_ns, BOOTED_AT as u64);
        let Some(Kind::Fork(f)) = fork.kind else {
            panic!("fork kind")
        };
        let p = f.process.expect("process");
        assert_eq!(
            (p.pid, p.ppid, p.uid, p.cgroup_id),
            (0x7fff_ff01, 0x7fff_ff00, 1000, 77)
        );
        assert_eq!(p.lineage, vec![format!("{}:sh", 0x7fff_ff00u32)]);

        let mut execd = child.clone();
        execd.comm = "prog".into();
        let exec = e.enrich(KernelEvent::Exec(ExecRecord {
            timestamp_ns: 200,
            task: execd.clone(),
            filename: prog.to_string_lossy().into_owned(),
            argv: vec!["prog".into(), "-x".into()],
            ..Default::default()
        }));
        let Some(Kind::Exec(x)) = exec.kind else {
            panic!("exec kind")
        };
        assert_eq!(
            x.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(x.hash_error.is_empty());
        assert_eq!(x.argv, vec!["prog", "-x"]);
        let p = x.process.expect("process");
        assert_eq!(
            (p.comm.as_str(), p.exe.as_str()),
            ("prog", x.filename.as_str())
        );
        assert_eq!(p.start_time_ns, 100);

        let exit = e.enrich(KernelEvent::Exit(ExitRecord {
            timestamp_ns: 1_100,
            task: execd,
            status: 9,
            partial: false,
        }));
        let Some(Kind::Exit(x)) = exit.kind else {
            panic!("exit kind")
        };
        assert_eq!(
            (x.exit_code, x.signal, x.duration_ns),
            (None, Some(9), 1_000)
        );
        assert_eq!(x.process.expect("process").exe, prog.to_string_lossy());
        assert!(e.table().get(0x7fff_ff01).is_none());
    }

    /// The pipeline's encoded events (cached process descriptions) must be
    /// the very bytes of the prost events built the old way, whatever
    /// happens to the process and its ancestors in between.
    #[test]
    fn encoded_events_are_byte_identical_to_prost_events() {
        use crate::events::{FileRecord, PolicyRecord};
        use prost::Message as _;
        let (pa, pb) = (0x7fff_ff10, 0x7fff_ff11);
        let parent = task(pa, 1, "sh", 10);
        let child = task(pb, pa, "worker", 100);
        let thread = TaskIdentity {
            tid: pb + 5,
            ..child.clone()
        };
        let file = |t: &TaskIdentity, ts: u64| {
            KernelEvent::File(Box::new(FileRecord {
                timestamp_ns: ts,
                task: t.clone(),
                op: sensor_common::file_op::OPEN_READ,
                path: format!("/srv/phi/f{ts}"),
                inode: ts,
                ..Default::default()
            }))
        };
        let net = |t: &TaskIdentity, ts: u64| {
            crate::events::tcp_connect(t, ts, "127.0.0.1:4000", "127.0.0.1:80")
        };
        let mut parent_execd = parent.clone();
        parent_execd.comm = "bash".into();
        let mut child_setuid = child.clone();
        child_setuid.euid = 0;
        let mut child_execd = child.clone();
        child_execd.comm = "prog".into();
        // A stale event of an older process that had the child's pid.
        let older = task(pb, pa, "old", 50);
        let events = vec![
            KernelEvent::Fork(ForkRecord {
                timestamp_ns: 10,
                task: parent.clone(),
                partial: false,
            }),
            KernelEvent::Fork(ForkRecord {
                timestamp_ns: 100,
                task: child.clone(),
                partial: false,
            }),
            file(&child, 200),
            file(&thread, 201),
            file(&child, 202),
            net(&thread, 203),
            // The parent execs: the child's lineage changes.
            KernelEvent::Exec(ExecRecord {
                timestamp_ns: 300,
                task: parent_execd.clone(),
                filename: "/bin/bash".into(),
                ..Default::default()
            }),
            file(&child, 301),
            file(&thread, 302),
            file(&child_setuid, 303),
            file(&older, 304),
            file(&task(0x7fff_ff20, 0x7fff_ff1f, "stranger", 7), 305),
            KernelEvent::Policy(PolicyRecord {
                timestamp_ns: 306,
                task: child.clone(),
                filename: "/nonexistent/rxsentry-test".into(),
                device: 1,
                inode: 2,
                blocked: true,
                reason: sensor_common::reason::NOT_ALLOWED,
                backend: sensor_common::backend::LSM,
                rule_index: None,
                rule: String::new(),
                generation: 3,
                partial: false,
            }),
            KernelEvent::Exec(ExecRecord {
                timestamp_ns: 400,
                task: child_execd.clone(),
                filename: "/nonexistent/prog".into(),
                argv: vec!["prog".into()],
                ..Default::default()
            }),
            file(&child_execd, 401),
            KernelEvent::Exit(ExitRecord {
                timestamp_ns: 500,
                task: child_execd.clone(),
                status: 0,
                partial: false,
            }),
            // Read after the exit, within the grace period.
            file(&child_execd, 501),
            net(&child_execd, 502),
        ];
        let (mut old_way, _) = enricher_at_noon();
        let (mut new_way, _) = enricher_at_noon();
        let mut wants = Vec::new();
        let mut got = EncodedEvents::default();
        for event in events {
            wants.push(old_way.enrich(event.clone()));
            new_way.enrich_into(event, &mut got);
        }
        assert_eq!(got.len(), wants.len());
        for (frame, want) in got.frames().zip(&wants) {
            let one = EncodedEvents::from_events([want]);
            assert_eq!(Some(frame), one.frames().next(), "{want:?}");
        }
        let batch = proto::telemetry::v1::EventBatch { events: wants };
        assert_eq!(got.as_bytes(), batch.encode_to_vec());
        let mut lineages = Vec::new();
        for want in &batch.events {
            if let Some(Kind::File(f)) = &want.kind
                && f.process.as_ref().map(|p| p.pid) == Some(pb)
            {
                lineages.push(f.process.clone().expect("process").lineage);
            }
        }
        let (sh, bash) = (format!("{pa}:sh"), format!("{pa}:bash"));
        assert_eq!(lineages[0], vec![sh], "before the parent's exec");
        assert_eq!(lineages[3], vec![bash], "after the parent's exec");
    }

    #[test]
    fn every_exec_has_a_hash_or_an_error() {
        let mut e = Enricher::new(&Config::default());
        let ev = e.enrich(KernelEvent::Exec(ExecRecord {
            timestamp_ns: 1,
            task: task(0x7fff_ff02, 1, "x", 1),
            filename: "/nonexistent/rxsentry-test".into(),
            argv: vec![],
            partial: true,
            ..Default::default()
        }));
        let Some(Kind::Exec(x)) = ev.kind else {
            panic!("exec kind")
        };
        assert!(x.sha256.is_empty());
        assert!(!x.hash_error.is_empty());
        assert_eq!(e.hash_stats().errors, 1);
    }

    /// The wall time is fixed as each event is enriched (encoded), from
    /// its kernel stamp; a clock step shows from the next run on.
    #[test]
    fn wall_time_follows_a_clock_step_from_the_next_run() {
        use std::sync::atomic::Ordering::SeqCst;
        let (mut e, clocks) = enricher_at_noon();
        let fork = |ts: u64| {
            KernelEvent::Fork(ForkRecord {
                timestamp_ns: ts,
                task: task(0x7fff_ff30, 1, "sh", 5),
                partial: false,
            })
        };
        let mut run = EncodedEvents::default();
        e.enrich_into(fork(2_000_000), &mut run);
        // NTP steps the clock back 2 s; the run goes on with the old offset.
        let stepped = BOOTED_AT - 2_000_000_000;
        clocks.offset.store(stepped, SeqCst);
        e.enrich_into(fork(3_000_000), &mut run);
        e.refresh_clock();
        e.enrich_into(fork(4_000_000), &mut run);
        // A zero stamp has no wall time either.
        e.enrich_into(fork(0), &mut run);
        let batch = <proto::telemetry::v1::EventBatch as prost::Message>::decode(run.as_bytes())
            .expect("decodes");
        let walls: Vec<u64> = batch
            .events
            .iter()
            .map(|e| e.wall_time_unix_ns().unwrap_or(0))
            .collect();
        assert_eq!(
            walls,
            [
                BOOTED_AT as u64 + 2_000_000,
                BOOTED_AT as u64 + 3_000_000,
                stepped as u64 + 4_000_000,
                0
            ]
        );
    }
}
