//! A userspace mirror of the live processes, for lineage and exe paths.
//!
//! A pid alone is not an identity (pids are reused), so a process is
//! (tgid, start time): an entry only describes an event's task when their
//! start times agree. Start times from the kernel are exact CLOCK_BOOTTIME ns;
//! those read from /proc at seeding are clock ticks, so seeded entries carry a
//! tolerance of one tick until a kernel event makes them exact.
//!
//! An exited process stays describable for [`EXIT_GRACE_NS`] of kernel
//! time: its last file or socket events travel on other ring buffers and may
//! be read after its exit. For the same reason a program replaced by an exec
//! is kept for as long: a file or socket event is described with the program
//! its process ran at the event's kernel time, not with the one it runs when
//! the event is read (`bash -c 'exec 3<>/dev/tcp/...; sleep 2'` connects as
//! bash, even when its exec into sleep was read first).
//!
//! The table is bounded: when full, a process not seen recently is evicted
//! (second-chance "clock" order, so ancestors that keep showing up in lineages
//! stay) and the eviction is counted.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    path::Path,
};

use prost::Message;
use proto::telemetry::v1::Process;

use crate::events::{ExecRecord, ExitRecord, ForkRecord, TaskIdentity};

/// How long (kernel time) an exited process, or a program replaced by an
/// exec, is still described for events read after its exit or exec.
pub const EXIT_GRACE_NS: u64 = 2_000_000_000;

/// Replaced programs kept per process at most (a chain of execs within
/// the grace period keeps its last ones; older events get no exe).
const MAX_REPLACED: usize = 4;

/// One tracked process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEntry {
    pub tgid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Path of the current program, "" if unknown.
    pub exe: String,
    /// Its argv joined with spaces (Sigma's CommandLine), "" if unknown:
    /// kept for the detection rules' ParentCommandLine and for the
    /// CommandLine of a process's file and network events.
    pub cmdline: String,
    /// Kernel time of the exec that started `exe` (0: the process ran it
    /// since its start, or it was read from /proc).
    pub exe_since_ns: u64,
    /// Programs run before `exe`, oldest first, for events read after the
    /// exec that replaced them; each is dropped [`EXIT_GRACE_NS`] after.
    replaced: Vec<ReplacedProgram>,
    /// CLOCK_BOOTTIME ns, 0 if unknown.
    pub start_ns: u64,
    /// How far the true start may be from `start_ns` (0 = exact).
    pub start_slack_ns: u64,
    /// Tells a live clock slot from a stale one after the tgid was reused.
    generation: u64,
    /// Second chance bit of the clock eviction.
    referenced: bool,
    /// The process exited; the entry waits out its grace period.
    exited: bool,
    /// "pid:comm" as lineages show it, built once per comm instead of once
    /// per event ("" until first needed).
    label: String,
    /// This process's last description, encoded: most events come in runs
    /// from the same process, so it is built once per run, not per event.
    description: Option<Box<CachedDescription>>,
}

/// A program a process ran until an exec replaced it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ReplacedProgram {
    exe: String,
    cmdline: String,
    /// Kernel time of the exec that started it (0: the process's start).
    since_ns: u64,
    /// Kernel time of the exec that replaced it.
    until_ns: u64,
}

/// What a process ran at some moment: its exe and command line, "" if
/// unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program<'a> {
    pub exe: &'a str,
    pub cmdline: &'a str,
}

/// An encoded `Process` and what it was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedDescription {
    /// [`ProcessTable::epoch`] when it was built.
    epoch: u64,
    /// The task it describes; `tid` is ignored (encoded per event).
    task: TaskIdentity,
    /// The prost encoding of the `Process` with `pid` and `tid` zero, i.e.
    /// its fields 3 and up.
    fields: Box<[u8]>,
}

impl CachedDescription {
    /// Whether it describes `task` (any thread of it).
    fn describes(&self, task: &TaskIdentity) -> bool {
        let t = &self.task;
        (t.tgid, t.ppid, t.uid, t.gid, t.euid, t.egid)
            == (
                task.tgid, task.ppid, task.uid, task.gid, task.euid, task.egid,
            )
            && (t.cgroup_id, t.start_boottime_ns) == (task.cgroup_id, task.start_boottime_ns)
            && t.comm == task.comm
    }
}

impl ProcessEntry {
    /// The program this process ran at kernel time `at_ns`: the current one
    /// unless an exec replaced it since (0: now). Unknown ("") when the
    /// replaced program is no longer kept, rather than a wrong one.
    pub fn program_at(&self, at_ns: u64) -> Program<'_> {
        if at_ns == 0 || at_ns >= self.exe_since_ns {
            return Program {
                exe: &self.exe,
                cmdline: &self.cmdline,
            };
        }
        self.replaced
            .iter()
            .find(|r| r.since_ns <= at_ns && at_ns < r.until_ns)
            .map_or(
                Program {
                    exe: "",
                    cmdline: "",
                },
                |r| Program {
                    exe: &r.exe,
                    cmdline: &r.cmdline,
                },
            )
    }

    /// Whether this entry is the process that started at `start_ns`.
    fn is_process(&self, start_ns: u64) -> bool {
        self.start_ns == 0
            || start_ns == 0
            || self.start_ns.abs_diff(start_ns) <= self.start_slack_ns
    }

    /// Whether this entry started no later than `start_ns` (it can be the
    /// process of a task that started at `start_ns`, or its ancestor).
    fn not_newer_than(&self, start_ns: u64) -> bool {
        self.start_ns == 0
            || start_ns == 0
            || self.start_ns <= start_ns.saturating_add(self.start_slack_ns)
    }
}

/// Counters of the table's own losses and corrections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub entries: usize,
    /// Entries dropped to stay within `max_entries`.
    pub evictions: u64,
    /// Entries replaced because their tgid now belongs to a newer process
    /// (their exit was never seen).
    pub replaced_stale: u64,
    /// Entries read from /proc at start.
    pub seeded: u64,
}

/// What an exit removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitedProcess {
    /// The entry, if the table knew the process.
    pub entry: Option<ProcessEntry>,
    /// Lifetime, 0 when no start time was known.
    pub duration_ns: u64,
}

/// Live processes keyed by tgid, each checked against its start time.
#[derive(Debug)]
pub struct ProcessTable {
    entries: HashMap<u32, ProcessEntry, BuildHasherDefault<PidHasher>>,
    /// Eviction order: (tgid, generation), oldest first; may hold stale slots.
    clock: VecDeque<(u32, u64)>,
    /// Exited entries in exit order: (exit timestamp, tgid, generation).
    exited: VecDeque<(u64, u32, u64)>,
    /// Execs that replaced a kept program, in order: (exec timestamp,
    /// tgid, generation).
    replaced: VecDeque<(u64, u32, u64)>,
    next_generation: u64,
    max_entries: usize,
    lineage_depth: usize,
    stats: TableStats,
    /// Bumped by every change to the entries (insert, update, removal): a
    /// cached description from an older epoch may be stale.
    epoch: u64,
}

impl ProcessTable {
    /// `max_entries` is raised to 1 if 0.
    pub fn new(max_entries: usize, lineage_depth: usize) -> Self {
        Self {
            entries: HashMap::default(),
            clock: VecDeque::new(),
            exited: VecDeque::new(),
            replaced: VecDeque::new(),
            next_generation: 0,
            max_entries: max_entries.max(1),
            lineage_depth,
            stats: TableStats::default(),
            epoch: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> TableStats {
        TableStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }

    /// The live entry for `tgid`, whatever its start time.
    pub fn get(&self, tgid: u32) -> Option<&ProcessEntry> {
        self.entries.get(&tgid).filter(|e| !e.exited)
    }

    /// The program process `tgid` ran at kernel time `at_ns`, if the table
    /// knows a process with that pid that started no later than
    /// `start_ns` (the event's task's start for its own process, the
    /// child's start for a parent), exited ones within their grace period
    /// included: what an event of that moment is attributed to.
    pub fn program_at(&self, tgid: u32, start_ns: u64, at_ns: u64) -> Option<Program<'_>> {
        self.entries
            .get(&tgid)
            .filter(|e| e.not_newer_than(start_ns))
            .map(|e| e.program_at(at_ns))
    }

    /// Reads every process under `proc_root` (normally `/proc`). Processes
    /// that vanish during the scan are skipped. Returns how many were added.
    pub fn seed_from_proc(&mut self, proc_root: &Path) -> std::io::Result<usize> {
        let tick_ns = clock_tick_ns();
        let mut added = 0;
        for dirent in std::fs::read_dir(proc_root)? {
            let Ok(dirent) = dirent else { continue };
            let Some(tgid) = dirent
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = dirent.path();
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
                continue;
            };
            let Some(stat) = parse_stat(&stat) else {
                continue;
            };
            let exe = std::fs::read_link(dir.join("exe"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            let cmdline = std::fs::read(dir.join("cmdline"))
                .map(|raw| cmdline_from_proc(&raw))
                .unwrap_or_default();
            self.insert(ProcessEntry {
                tgid,
                ppid: stat.ppid,
                comm: stat.comm,
                exe,
                cmdline,
                exe_since_ns: 0,
                replaced: Vec::new(),
                start_ns: stat.start_ticks.saturating_mul(tick_ns),
                start_slack_ns: tick_ns,
                generation: 0,
                referenced: false,
                exited: false,
                label: String::new(),
                description: None,
            });
            added += 1;
        }
        self.stats.seeded += added as u64;
        Ok(added)
    }

    /// A new process: it runs its parent's program until it execs.
    pub fn on_fork(&mut self, fork: &ForkRecord) {
        let task = &fork.task;
        let program = self
            .entries
            .get(&task.ppid)
            .filter(|p| p.not_newer_than(task.start_boottime_ns))
            .map(|p| (p.exe.clone(), p.cmdline.clone()))
            .unwrap_or_default();
        self.upsert(task, Some(program), 0);
    }

    /// The process now runs `exec.filename` with `exec.argv`; what it ran
    /// before is kept for [`EXIT_GRACE_NS`] for events read late.
    pub fn on_exec(&mut self, exec: &ExecRecord) {
        let cmdline = exec.argv.join(" ");
        self.upsert(
            &exec.task,
            Some((exec.filename.clone(), cmdline)),
            exec.timestamp_ns,
        );
        self.reap(exec.timestamp_ns);
    }

    /// Removes the process and says how long it lived.
    ///
    /// The exiting task may be a thread that started after its process, so
    /// an entry that started no later than the task is this process.
    pub fn on_exit(&mut self, exit: &ExitRecord) -> ExitedProcess {
        let task = &exit.task;
        let entry = match self.entries.get_mut(&task.tgid) {
            Some(e) if !e.exited && e.not_newer_than(task.start_boottime_ns) => {
                e.exited = true;
                // Rarely used again: late events rebuild it.
                e.description = None;
                self.exited
                    .push_back((exit.timestamp_ns, e.tgid, e.generation));
                Some(e.clone())
            }
            _ => None,
        };
        self.reap(exit.timestamp_ns);
        let start = match &entry {
            Some(e) if e.start_ns != 0 && !e.is_process(task.start_boottime_ns) => e.start_ns,
            Some(e) if task.start_boottime_ns == 0 => e.start_ns,
            _ => task.start_boottime_ns,
        };
        let duration_ns = if start == 0 {
            0
        } else {
            exit.timestamp_ns.saturating_sub(start)
        };
        self.compact_clock();
        ExitedProcess { entry, duration_ns }
    }

    /// Ancestors of `task`, parent first, as "pid:comm", at most
    /// `lineage_depth`. Stops where the table has no entry, or where the
    /// entry under the parent pid is younger than the child (pid reused).
    pub fn lineage(&mut self, task: &TaskIdentity) -> Vec<String> {
        let mut out = Vec::new();
        self.walk_ancestors(task, |parent| {
            if parent.label.is_empty() {
                parent.label = format!("{}:{}", parent.tgid, parent.comm);
            }
            out.push(parent.label.clone());
        });
        out
    }

    /// Calls `visit` on each ancestor [`Self::lineage`] lists, in order,
    /// marking each as referenced (hot for eviction).
    fn walk_ancestors(&mut self, task: &TaskIdentity, mut visit: impl FnMut(&mut ProcessEntry)) {
        let mut depth = 0;
        let mut pid = task.ppid;
        let mut child_start = task.start_boottime_ns;
        let mut child = task.tgid;
        while depth < self.lineage_depth && pid != 0 && pid != child {
            let Some(parent) = self.entries.get_mut(&pid) else {
                break;
            };
            if !parent.not_newer_than(child_start) {
                break;
            }
            parent.referenced = true;
            visit(parent);
            depth += 1;
            child = pid;
            child_start = parent.start_ns;
            pid = parent.ppid;
        }
    }

    /// The protobuf `Process` for an event's task at kernel time `at_ns`,
    /// with exe (the program it ran then), lineage and start time from the
    /// table when it knows this process.
    pub fn describe(&mut self, task: &TaskIdentity, at_ns: u64) -> Process {
        let (exe, start_time_ns) = match self.entries.get_mut(&task.tgid) {
            Some(e) if e.not_newer_than(task.start_boottime_ns) => {
                e.referenced = true;
                let start = if task.start_boottime_ns != 0 && e.is_process(task.start_boottime_ns) {
                    task.start_boottime_ns
                } else {
                    e.start_ns
                };
                (e.program_at(at_ns).exe.to_owned(), start)
            }
            _ => (String::new(), task.start_boottime_ns),
        };
        Process {
            pid: task.tgid,
            tid: task.tid,
            ppid: task.ppid,
            uid: task.uid,
            gid: task.gid,
            euid: task.euid,
            egid: task.egid,
            comm: task.comm.to_string(),
            cgroup_id: task.cgroup_id,
            exe,
            lineage: self.lineage(task),
            start_time_ns,
        }
    }

    /// Appends the prost encoding of [`Self::describe`]`(task, at_ns)` to
    /// `out` (the message's fields, without tag or length), with the same
    /// effect on the table. The fields after `pid` and `tid` are cached in
    /// the entry until the table or the task changes, so a run of events
    /// from one process builds its description once; an event from before
    /// the process's last exec is described apart, never cached.
    pub fn encode_description(&mut self, task: &TaskIdentity, at_ns: u64, out: &mut Vec<u8>) {
        let epoch = self.epoch;
        let (known, hit) = match self.entries.get_mut(&task.tgid) {
            Some(e) if e.not_newer_than(task.start_boottime_ns) && at_ns < e.exe_since_ns => {
                (false, false)
            }
            Some(e) if e.not_newer_than(task.start_boottime_ns) => match &e.description {
                Some(d) if d.epoch == epoch && d.describes(task) => {
                    e.referenced = true;
                    encode_ids(task, out);
                    out.extend_from_slice(&d.fields);
                    (true, true)
                }
                _ => (true, false),
            },
            _ => (false, false),
        };
        if hit {
            // The same eviction hints as describe's lineage walk.
            self.walk_ancestors(task, |_| {});
            return;
        }
        let process = Process {
            pid: 0,
            tid: 0,
            ..self.describe(task, at_ns)
        };
        let fields = process.encode_to_vec().into_boxed_slice();
        encode_ids(task, out);
        out.extend_from_slice(&fields);
        if known && let Some(e) = self.entries.get_mut(&task.tgid) {
            e.description = Some(Box::new(CachedDescription {
                epoch,
                task: task.clone(),
                fields,
            }));
        }
    }

    /// Removes exited entries and replaced programs whose grace period
    /// ended by `now_ns`.
    fn reap(&mut self, now_ns: u64) {
        while let Some(&(at, tgid, generation)) = self.replaced.front() {
            if at.saturating_add(EXIT_GRACE_NS) > now_ns {
                break;
            }
            self.replaced.pop_front();
            if let Some(e) = self.entries.get_mut(&tgid)
                && e.generation == generation
            {
                e.replaced
                    .retain(|r| r.until_ns.saturating_add(EXIT_GRACE_NS) > now_ns);
            }
        }
        while let Some(&(at, tgid, generation)) = self.exited.front() {
            if at.saturating_add(EXIT_GRACE_NS) > now_ns {
                break;
            }
            self.exited.pop_front();
            if self
                .entries
                .get(&tgid)
                .is_some_and(|e| e.generation == generation && e.exited)
            {
                self.entries.remove(&tgid);
                self.epoch += 1;
            }
        }
    }

    /// Adds or refreshes the process of `task`; `program` (exe, cmdline)
    /// None keeps the old one; `since_ns` is the kernel time of the exec
    /// that started it (0 for a fork), when the old one is kept.
    fn upsert(&mut self, task: &TaskIdentity, program: Option<(String, String)>, since_ns: u64) {
        self.epoch += 1;
        if let Some(e) = self.entries.get_mut(&task.tgid)
            && !e.exited
            && e.is_process(task.start_boottime_ns)
        {
            e.ppid = task.ppid;
            if e.comm != *task.comm {
                e.comm.clear();
                e.comm.push_str(&task.comm);
                e.label.clear();
            }
            if let Some((exe, cmdline)) = program {
                let old_exe = std::mem::replace(&mut e.exe, exe);
                let old_cmdline = std::mem::replace(&mut e.cmdline, cmdline);
                if since_ns > e.exe_since_ns {
                    if e.replaced.len() >= MAX_REPLACED {
                        e.replaced.remove(0);
                    }
                    e.replaced.push(ReplacedProgram {
                        exe: old_exe,
                        cmdline: old_cmdline,
                        since_ns: e.exe_since_ns,
                        until_ns: since_ns,
                    });
                    e.exe_since_ns = since_ns;
                    self.replaced.push_back((since_ns, e.tgid, e.generation));
                }
            }
            if task.start_boottime_ns != 0 {
                e.start_ns = task.start_boottime_ns;
                e.start_slack_ns = 0;
            }
            e.referenced = true;
            return;
        }
        let (exe, cmdline) = program.unwrap_or_default();
        self.insert(ProcessEntry {
            tgid: task.tgid,
            ppid: task.ppid,
            comm: task.comm.to_string(),
            exe,
            cmdline,
            // Nothing earlier is known: events of any time get this one.
            exe_since_ns: 0,
            replaced: Vec::new(),
            start_ns: task.start_boottime_ns,
            start_slack_ns: 0,
            generation: 0,
            referenced: false,
            exited: false,
            label: String::new(),
            description: None,
        });
    }

    fn insert(&mut self, mut entry: ProcessEntry) {
        self.epoch += 1;
        match self.entries.get(&entry.tgid) {
            Some(e) if !e.exited => self.stats.replaced_stale += 1,
            // A pid reused during the old process's grace period.
            Some(_) => {}
            None => self.make_room(),
        }
        self.next_generation += 1;
        entry.generation = self.next_generation;
        self.clock.push_back((entry.tgid, entry.generation));
        self.entries.insert(entry.tgid, entry);
        self.compact_clock();
    }

    /// Evicts until one more entry fits: a referenced entry gets a second
    /// chance (moved to the back, bit cleared), an unreferenced one goes.
    fn make_room(&mut self) {
        while self.entries.len() >= self.max_entries {
            let Some((tgid, generation)) = self.clock.pop_front() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&tgid) else {
                continue;
            };
            if e.generation != generation {
                continue;
            }
            if e.referenced {
                e.referenced = false;
                self.clock.push_back((tgid, generation));
            } else {
                self.entries.remove(&tgid);
                self.stats.evictions += 1;
            }
        }
    }

    /// Drops stale clock slots so the queue stays O(entries).
    fn compact_clock(&mut self) {
        if self.clock.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.clock
                .retain(|(tgid, g)| entries.get(tgid).is_some_and(|e| e.generation == *g));
        }
    }
}

/// Hashes a pid with one multiply (Fibonacci hashing) instead of SipHash,
/// which was a visible share of each event's cost (the table is looked up
/// once per ancestor per event). Collision flooding is not a concern: the
/// kernel picks pids, and the multiply maps distinct low bits to distinct
/// buckets.
#[derive(Clone, Copy, Debug, Default)]
struct PidHasher(u64);

impl Hasher for PidHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u32 keys; any other key still hashes correctly.
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(26) ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `Process.pid` and `Process.tid` as prost encodes them (proto3: zero is
/// left out).
fn encode_ids(task: &TaskIdentity, out: &mut Vec<u8>) {
    if task.tgid != 0 {
        prost::encoding::uint32::encode(1, &task.tgid, out);
    }
    if task.tid != 0 {
        prost::encoding::uint32::encode(2, &task.tid, out);
    }
}

/// The fields of /proc/<pid>/stat the table needs.
/// /proc/PID/cmdline (NUL-separated, NUL-terminated) as argv joined with
/// spaces.
fn cmdline_from_proc(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    String::from_utf8_lossy(raw).replace('\0', " ")
}

#[derive(Debug, PartialEq, Eq)]
struct ProcStat {
    comm: String,
    ppid: u32,
    start_ticks: u64,
}

/// Parses /proc/<pid>/stat. The comm is in parentheses and may itself hold
/// spaces and ')', so fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the comm start at field 3 (state).
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    let ppid = rest.get(4 - 3)?.parse().ok()?;
    let start_ticks = rest.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        comm,
        ppid,
        start_ticks,
    })
}

/// Nanoseconds per /proc clock tick (USER_HZ, 100 on every Linux we ship).
fn clock_tick_ns() -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    1_000_000_000 / hz as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn task(tgid: u32, ppid: u32, comm: &str, start: u64) -> TaskIdentity {
        TaskIdentity {
            tgid,
            tid: tgid,
            ppid,
            comm: comm.into(),
            start_boottime_ns: start,
            ..Default::default()
        }
    }

    fn fork(t: TaskIdentity) -> ForkRecord {
        ForkRecord {
            timestamp_ns: t.start_boottime_ns,
            task: t,
            partial: false,
        }
    }

    fn exec(t: TaskIdentity, filename: &str) -> ExecRecord {
        ExecRecord {
            timestamp_ns: t.start_boottime_ns + 10,
            task: t,
            filename: filename.into(),
            argv: vec![],
            ..Default::default()
        }
    }

    fn exit(t: TaskIdentity, at: u64) -> ExitRecord {
        ExitRecord {
            timestamp_ns: at,
            task: t,
            status: 0,
            partial: false,
        }
    }

    #[test]
    fn fork_exec_exit_lifecycle() {
        let mut t = ProcessTable::new(16, 8);
        t.on_fork(&fork(task(1, 0, "systemd", 100)));
        t.on_exec(&exec(task(1, 0, "systemd", 100), "/sbin/init"));
        t.on_fork(&fork(task(50, 1, "systemd", 1_000)));
        assert_eq!(
            t.get(50).map(|e| e.exe.as_str()),
            Some("/sbin/init"),
            "fork inherits exe"
        );
        t.on_exec(&exec(task(50, 1, "bash", 1_000), "/usr/bin/bash"));
        let e = t.get(50).expect("present");
        assert_eq!((e.comm.as_str(), e.exe.as_str()), ("bash", "/usr/bin/bash"));
        let p = t.describe(&task(50, 1, "bash", 1_000), 0);
        assert_eq!(p.exe, "/usr/bin/bash");
        assert_eq!(p.start_time_ns, 1_000);
        assert_eq!(p.lineage, vec!["1:systemd"]);
        let gone = t.on_exit(&exit(task(50, 1, "bash", 1_000), 6_000));
        assert_eq!(gone.duration_ns, 5_000);
        assert_eq!(gone.entry.map(|e| e.exe), Some("/usr/bin/bash".to_owned()));
        assert!(t.get(50).is_none(), "not live any more");
        // Events read after the exit (other ring buffers) still get it ...
        assert_eq!(
            t.describe(&task(50, 1, "bash", 1_000), 0).exe,
            "/usr/bin/bash"
        );
        // ... until the grace period has passed in kernel time.
        t.on_exit(&exit(task(77, 1, "x", 2_000), 6_000 + EXIT_GRACE_NS));
        assert_eq!(t.describe(&task(50, 1, "bash", 1_000), 0).exe, "");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_event_before_an_exec_gets_the_program_it_ran_then() {
        let mut t = ProcessTable::new(16, 8);
        t.on_exec(&exec(task(1, 0, "init", 1), "/sbin/init"));
        t.on_fork(&fork(task(60, 1, "init", 1_000)));
        let mut bash = exec(task(60, 1, "bash", 1_000), "/usr/bin/bash");
        bash.timestamp_ns = 2_000;
        bash.argv = vec!["bash".into(), "-c".into(), "x".into()];
        t.on_exec(&bash);
        let mut sleep = exec(task(60, 1, "sleep", 1_000), "/usr/bin/sleep");
        sleep.timestamp_ns = 5_000;
        t.on_exec(&sleep);
        let exe_at =
            |t: &ProcessTable, at: u64| t.program_at(60, 1_000, at).map(|p| p.exe.to_owned());
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            exe_at(&t, 1_500),
            some("/sbin/init"),
            "forked, not yet exec'd"
        );
        assert_eq!(exe_at(&t, 4_999), some("/usr/bin/bash"));
        assert_eq!(
            t.program_at(60, 1_000, 4_999).map(|p| p.cmdline),
            Some("bash -c x")
        );
        assert_eq!(exe_at(&t, 5_000), some("/usr/bin/sleep"));
        assert_eq!(exe_at(&t, 0), some("/usr/bin/sleep"), "0: now");
        assert_eq!(t.program_at(60, 900, 4_000), None, "a younger process");
        // The description follows the event's time, and an early event
        // does not replace the cached (current) description.
        let sleeping = task(60, 1, "sleep", 1_000);
        let mut now = Vec::new();
        t.encode_description(&sleeping, 6_000, &mut now);
        let mut early = Vec::new();
        t.encode_description(&sleeping, 3_000, &mut early);
        assert_eq!(early, t.describe(&sleeping, 3_000).encode_to_vec());
        assert_eq!(
            Process::decode(early.as_slice()).expect("prost").exe,
            "/usr/bin/bash"
        );
        let mut again = Vec::new();
        t.encode_description(&sleeping, 7_000, &mut again);
        assert_eq!(again, now);
        assert_eq!(
            Process::decode(now.as_slice()).expect("prost").exe,
            "/usr/bin/sleep"
        );
        // Past the grace period the replaced programs are gone: an event
        // that old gets no exe rather than the wrong one.
        t.on_exit(&exit(task(77, 1, "x", 2_000), 5_000 + EXIT_GRACE_NS));
        assert_eq!(exe_at(&t, 4_999), some(""));
        assert!(t.entries[&60].replaced.is_empty());
        assert!(t.replaced.is_empty());
    }

    #[test]
    fn a_chain_of_execs_keeps_its_last_programs() {
        let mut t = ProcessTable::new(16, 8);
        t.on_fork(&fork(task(70, 1, "sh", 100)));
        for i in 1..=6u64 {
            let mut x = exec(task(70, 1, "p", 100), &format!("/bin/p{i}"));
            x.timestamp_ns = 1_000 * i;
            t.on_exec(&x);
        }
        let exe_at = |at: u64| t.program_at(70, 100, at).map(|p| p.exe.to_owned());
        assert_eq!(exe_at(6_500).as_deref(), Some("/bin/p6"));
        assert_eq!(exe_at(5_500).as_deref(), Some("/bin/p5"));
        assert_eq!(exe_at(2_500).as_deref(), Some("/bin/p2"));
        assert_eq!(exe_at(2_000).as_deref(), Some("/bin/p2"));
        assert_eq!(t.entries[&70].replaced.len(), MAX_REPLACED);
        assert_eq!(exe_at(1_500).as_deref(), Some(""), "older than kept");
    }

    #[test]
    fn encoded_description_is_cached_until_the_table_changes() {
        let mut t = ProcessTable::new(16, 8);
        t.on_fork(&fork(task(1, 0, "init", 1)));
        t.on_fork(&fork(task(5, 1, "app", 100)));
        let app = task(5, 1, "app", 100);
        let encode = |t: &mut ProcessTable, task: &TaskIdentity| {
            let mut out = Vec::new();
            t.encode_description(task, 0, &mut out);
            out
        };
        assert_eq!(encode(&mut t, &app), t.describe(&app, 0).encode_to_vec());
        let cached = t.entries[&5].description.clone().expect("cached");
        let other_thread = TaskIdentity {
            tid: 6,
            ..app.clone()
        };
        assert_eq!(
            encode(&mut t, &other_thread),
            t.describe(&other_thread, 0).encode_to_vec()
        );
        assert_eq!(
            t.entries[&5].description.as_ref(),
            Some(&cached),
            "another thread reuses the description"
        );
        let setuid = TaskIdentity {
            euid: 0,
            uid: 7,
            ..app.clone()
        };
        assert_eq!(
            encode(&mut t, &setuid),
            t.describe(&setuid, 0).encode_to_vec()
        );
        assert_eq!(encode(&mut t, &app), t.describe(&app, 0).encode_to_vec());
        // The parent execs: the cached lineage is stale.
        t.on_exec(&exec(task(1, 0, "systemd", 1), "/sbin/init"));
        let after = encode(&mut t, &app);
        assert_eq!(after, t.describe(&app, 0).encode_to_vec());
        assert_eq!(
            Process::decode(after.as_slice()).expect("prost").lineage,
            vec!["1:systemd"]
        );
        assert_ne!(t.entries[&5].description.as_ref(), Some(&cached));
    }

    #[test]
    fn lineage_is_parent_first_and_bounded() {
        let mut t = ProcessTable::new(64, 3);
        let names = ["init", "sshd", "bash", "make", "cc"];
        for (i, name) in names.iter().enumerate() {
            let pid = i as u32 + 1;
            t.on_fork(&fork(task(pid, pid - 1, name, 100 * pid as u64)));
        }
        let leaf = task(6, 5, "ld", 600);
        assert_eq!(t.lineage(&leaf), vec!["5:cc", "4:make", "3:bash"]);
        let mut deep = ProcessTable::new(64, 8);
        for (i, name) in names.iter().enumerate() {
            let pid = i as u32 + 1;
            deep.on_fork(&fork(task(pid, pid - 1, name, 100 * pid as u64)));
        }
        assert_eq!(
            deep.lineage(&leaf),
            vec!["5:cc", "4:make", "3:bash", "2:sshd", "1:init"]
        );
    }

    #[test]
    fn pid_reuse_replaces_the_stale_process() {
        let mut t = ProcessTable::new(64, 8);
        t.on_fork(&fork(task(1, 0, "init", 1)));
        t.on_fork(&fork(task(70, 1, "old", 1_000)));
        // Exit of pid 70 was lost; pid 70 now is a different process.
        t.on_exec(&exec(task(70, 1, "new", 9_000), "/bin/new"));
        let e = t.get(70).expect("present");
        assert_eq!((e.comm.as_str(), e.start_ns), ("new", 9_000));
        assert_eq!(t.stats().replaced_stale, 1);
        // A late exit of the old process must not remove the new one.
        let gone = t.on_exit(&exit(task(70, 1, "old", 1_000), 9_500));
        assert!(gone.entry.is_none());
        assert!(t.get(70).is_some());
        // A child whose parent pid now belongs to a younger process gets no
        // lineage through it.
        t.on_fork(&fork(task(80, 70, "x", 5_000)));
        assert!(t.lineage(&task(80, 70, "x", 5_000)).is_empty());
        assert_eq!(
            t.lineage(&task(81, 70, "y", 9_100)),
            vec!["70:new", "1:init"]
        );
    }

    #[test]
    fn exit_by_a_later_thread_still_removes_the_process() {
        let mut t = ProcessTable::new(8, 8);
        t.on_fork(&fork(task(9, 1, "srv", 1_000)));
        let mut last_thread = task(9, 1, "srv", 4_000);
        last_thread.tid = 12;
        let gone = t.on_exit(&exit(last_thread, 10_000));
        assert_eq!(
            gone.duration_ns, 9_000,
            "lifetime counts from the process start"
        );
        assert!(t.get(9).is_none());
    }

    #[test]
    fn size_is_bounded_and_evictions_counted() {
        let mut t = ProcessTable::new(4, 8);
        t.on_fork(&fork(task(1, 0, "init", 1)));
        for pid in 10..20 {
            t.on_fork(&fork(task(pid, 1, "w", pid as u64 * 10)));
            // Lineage lookups keep init referenced, so it survives.
            assert_eq!(
                t.lineage(&task(pid, 1, "w", pid as u64 * 10)),
                vec!["1:init"]
            );
            assert!(t.len() <= 4);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.stats().evictions, 11 - 4);
        assert!(t.get(1).is_some(), "a hot ancestor is not evicted");
        assert!(t.get(19).is_some(), "the newest entry is kept");
        assert!(t.clock.len() <= 2 * t.len() + 64);
    }

    #[test]
    fn seeding_reads_a_proc_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tick = clock_tick_ns();
        let mk = |pid: u32, stat: &str, exe: Option<&str>| {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("stat"), stat).expect("stat");
            if let Some(exe) = exe {
                std::os::unix::fs::symlink(exe, d.join("exe")).expect("symlink");
            }
        };
        let rest = "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
        mk(
            1,
            &format!("1 (systemd) S 0 {rest} 5 0 0"),
            Some("/usr/lib/systemd/systemd"),
        );
        mk(
            42,
            &format!("42 (my (odd) app) R 1 {rest} 250 0 0"),
            Some("/opt/app"),
        );
        mk(43, "43 (truncated) S", None);
        std::fs::create_dir(dir.path().join("self")).expect("mkdir");
        let mut t = ProcessTable::new(64, 8);
        assert_eq!(t.seed_from_proc(dir.path()).expect("seed"), 2);
        let app = t.get(42).expect("seeded").clone();
        assert_eq!(app.comm, "my (odd) app");
        assert_eq!((app.ppid, app.exe.as_str()), (1, "/opt/app"));
        assert_eq!(app.start_ns, 250 * tick);
        // The kernel's exact start falls within one tick of /proc's.
        let exact = 250 * tick + tick / 2;
        assert_eq!(
            t.lineage(&task(99, 42, "c", exact + 1)),
            vec!["42:my (odd) app", "1:systemd"]
        );
        t.on_exec(&exec(task(42, 1, "app2", exact), "/opt/app2"));
        assert_eq!(t.stats().replaced_stale, 0, "same process, not a reuse");
        assert_eq!(t.get(42).map(|e| e.start_ns), Some(exact));
        assert_eq!(t.stats().seeded, 2);
    }

    #[test]
    fn seeding_the_real_proc_finds_this_process() {
        let mut t = ProcessTable::new(1 << 16, 8);
        t.seed_from_proc(Path::new("/proc")).expect("seed");
        let me = t
            .get(std::process::id())
            .expect("this test process is seeded");
        assert!(me.start_ns > 0);
        assert!(!me.exe.is_empty());
    }
}
