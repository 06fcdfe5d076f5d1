//! Kernel events -> protobuf events, with process context and file hashes.
//!
//! Enrichment does blocking file I/O (hashing, /proc), so an [`Enricher`]
//! lives on a dedicated thread (see `pipeline`), never on the async reactor.

pub mod hash_cache;
mod network;
pub mod process_table;

use std::path::Path;

use proto::telemetry::v1::{
    Event, ExecEvent, ExitEvent, FileEvent, FileIdentity, ForkEvent, PolicyEvent,
    event::Kind,
    file_event::Operation,
    policy_event::{Action, Reason},
};

use crate::{
    config::Config,
    events::{ExecRecord, FileRecord, KernelEvent, PolicyRecord},
};
pub use hash_cache::{ExecHash, HashCache, HashError, HashStats};
pub use process_table::{ProcessTable, TableStats};

/// Turns [`KernelEvent`]s into telemetry [`Event`]s.
#[derive(Debug)]
pub struct Enricher {
    table: ProcessTable,
    hashes: HashCache,
}

impl Enricher {
    pub fn new(config: &Config) -> Self {
        Self {
            table: ProcessTable::new(
                config.process_table.max_entries,
                config.process_table.lineage_depth,
            ),
            hashes: HashCache::new(config.hashing.cache_entries, config.hashing.max_file_bytes),
        }
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
        let timestamp_ns = event.timestamp_ns();
        let kind = match event {
            KernelEvent::Exec(exec) => {
                let hash = self.hashes.hash_exec(&exec);
                self.table.on_exec(&exec);
                let process = self.table.describe(&exec.task);
                Kind::Exec(ExecEvent {
                    process: Some(process),
                    filename: exec.filename,
                    argv: exec.argv,
                    argv_truncated: exec.argv_truncated,
                    sha256: hash.sha256,
                    hash_error: hash.error,
                    file: Some(FileIdentity {
                        device: exec.device,
                        inode: exec.inode,
                    }),
                })
            }
            KernelEvent::Fork(fork) => {
                self.table.on_fork(&fork);
                Kind::Fork(ForkEvent {
                    process: Some(self.table.describe(&fork.task)),
                })
            }
            KernelEvent::Exit(exit) => {
                let process = self.table.describe(&exit.task);
                let gone = self.table.on_exit(&exit);
                Kind::Exit(ExitEvent {
                    process: Some(process),
                    exit_code: exit.exit_code(),
                    signal: exit.signal(),
                    core_dumped: exit.core_dumped(),
                    duration_ns: gone.duration_ns,
                })
            }
            KernelEvent::Policy(block) => Kind::Policy(self.policy_event(block)),
            KernelEvent::File(file) => Kind::File(self.file_event(*file)),
            KernelEvent::Net(net) => {
                let process = self.table.describe(&net.task);
                Kind::Network(network::network_event(*net, process))
            }
        };
        Event {
            timestamp_ns,
            kind: Some(kind),
        }
    }
}

impl Enricher {
    fn file_event(&mut self, f: FileRecord) -> FileEvent {
        use sensor_common::file_op;
        let operation = match f.op {
            file_op::OPEN_READ => Operation::OpenRead,
            file_op::OPEN_WRITE => Operation::OpenWrite,
            file_op::UNLINK => Operation::Unlink,
            file_op::RENAME => Operation::Rename,
            file_op::CHMOD => Operation::Chmod,
            file_op::CHOWN => Operation::Chown,
            file_op::EXEC => Operation::Exec,
            _ => Operation::Unspecified,
        };
        let creates = f.flags & 0o100 != 0;
        let mode = match operation {
            Operation::Chmod => Some(f.mode),
            Operation::OpenWrite if creates => Some(f.mode),
            _ => None,
        };
        let id = |v: u32| (operation == Operation::Chown && v != u32::MAX).then_some(v);
        FileEvent {
            process: Some(self.table.describe(&f.task)),
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
        }
    }

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
            process: Some(self.table.describe(&block.task)),
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
    use crate::events::{ExecRecord, ExitRecord, ForkRecord, TaskIdentity};

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
        let mut e = Enricher::new(&Config::default());
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
}
