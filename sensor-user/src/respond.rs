//! Detection rules' responses (docs/detection.md#responses): kill the
//! process or its tree, quarantine a file, isolate the terminal. They run
//! on their own thread, never on the enrichment thread that evaluates the
//! rules (hashing a file or walking /proc must not hold events up), and
//! each one is audited with a `ResponseEvent` like isolation changes are.

use std::{
    collections::HashSet,
    fs::File,
    io::Write as _,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc as std_mpsc,
    },
};

use detect::Action;
use nix::libc;
use proto::telemetry::v1::{Event, ResponseEvent, event};
use tokio::sync::mpsc;

use crate::{
    clock,
    enrich::hash_cache::sha256_hex,
    isolation::{self, service::Request as IsolationRequest},
    transport::EncodedEvents,
};

/// Requests waiting for the responder; past it a request is refused and
/// counted (the alert says which responses were not run).
pub const QUEUE: usize = 256;

/// What one alert asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub actions: Vec<Action>,
    /// `detection:<rule title>`.
    pub requester: String,
    pub rule_source: String,
    /// What the rule saw ("exec /tmp/x").
    pub reason: String,
    /// The process of the event that fired the rule.
    pub pid: u32,
    /// Its start (CLOCK_BOOTTIME ns, 0 unknown) and how far off that may
    /// be: a pid reused by another process since is not killed.
    pub start_ns: u64,
    pub start_slack_ns: u64,
    /// The executed or written file (quarantine).
    pub file: Option<String>,
}

/// The enrichment thread's end: hands requests to the responder thread.
#[derive(Clone, Debug)]
pub struct Responses {
    tx: std_mpsc::SyncSender<Request>,
    refused: Arc<AtomicU64>,
}

impl Responses {
    /// Queues `request`; false (counted, logged) when the queue is full or
    /// the responder is gone.
    pub fn ask(&self, request: Request) -> bool {
        match self.tx.try_send(request) {
            Ok(()) => true,
            Err(e) => {
                let n = self.refused.fetch_add(1, Relaxed) + 1;
                tracing::error!(refused = n, error = %e, "detection response not run: responder queue full or stopped");
                false
            }
        }
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }
}

/// The responder thread's end.
#[derive(Debug)]
pub struct Requests(std_mpsc::Receiver<Request>);

#[cfg(test)]
impl Requests {
    /// A request waiting, if any (tests stand in for the responder).
    pub(crate) fn try_recv(&self) -> Option<Request> {
        self.0.try_recv().ok()
    }
}

pub fn channel() -> (Responses, Requests) {
    let (tx, rx) = std_mpsc::sync_channel(QUEUE);
    (
        Responses {
            tx,
            refused: Arc::default(),
        },
        Requests(rx),
    )
}

/// Files moved aside by a quarantine response, by SHA-256: an exec of a
/// file with one of these hashes (another copy) is killed (alerts.rs).
#[derive(Debug)]
pub struct Quarantine {
    dir: PathBuf,
    hashes: RwLock<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl Quarantine {
    /// Reads the hashes of the files in `dir`; the directory is created
    /// (0700) by the first quarantine, so a sensor that never quarantines
    /// leaves nothing behind.
    pub fn open(dir: &Path) -> Result<Arc<Self>, QuarantineError> {
        let err = |source| QuarantineError::Dir {
            dir: dir.to_owned(),
            source,
        };
        let mut hashes = HashSet::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry.map_err(err)?.file_name();
                    if let Some(name) = name.to_str()
                        && is_sha256(name)
                    {
                        hashes.insert(name.to_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        if !hashes.is_empty() {
            tracing::info!(dir = %dir.display(), files = hashes.len(), "quarantined hashes refused at exec");
        }
        Ok(Arc::new(Self {
            dir: dir.to_owned(),
            hashes: RwLock::new(hashes),
        }))
    }

    /// Whether `sha256` (hex) is a quarantined file's.
    pub fn contains(&self, sha256: &str) -> bool {
        !sha256.is_empty()
            && match self.hashes.read() {
                Ok(h) => h.contains(sha256),
                Err(poisoned) => poisoned.into_inner().contains(sha256),
            }
    }

    fn add(&self, sha256: String) {
        match self.hashes.write() {
            Ok(mut h) => h.insert(sha256),
            Err(poisoned) => poisoned.into_inner().insert(sha256),
        };
    }

    /// Moves `path` to `<dir>/<sha256>` (mode 0, root's), writes where it
    /// came from beside it, and refuses its hash from now on.
    pub fn quarantine(&self, path: &Path, why: &str) -> Result<(PathBuf, String), String> {
        // Not following a symlink: the rule saw this name, not its target.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = file.metadata().map_err(|e| format!("stat: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let (sha256, _) = sha256_hex(&mut file, u64::MAX - 1).map_err(|e| format!("read: {e}"))?;
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| format!("quarantine directory {}: {e}", self.dir.display()))?;
        let dest = self.dir.join(&sha256);
        match std::fs::rename(path, &dest) {
            Ok(()) => {}
            // Another file system: copy what was hashed, then remove it.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                copy_out(&mut file, &dest)?;
                std::fs::remove_file(path)
                    .map_err(|e| format!("copied, but cannot remove {}: {e}", path.display()))?;
            }
            Err(e) => return Err(format!("cannot move to {}: {e}", dest.display())),
        }
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o000))
            .map_err(|e| format!("chmod 0 {}: {e}", dest.display()))?;
        let origin = format!("path={}\nreason={why}\n", path.display());
        if let Err(e) = std::fs::write(self.dir.join(format!("{sha256}.origin")), origin) {
            tracing::warn!(error = %e, "cannot record where a quarantined file came from");
        }
        self.add(sha256.clone());
        Ok((dest, sha256))
    }
}

fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn copy_out(file: &mut File, dest: &Path) -> Result<(), String> {
    use std::io::Seek as _;
    file.rewind().map_err(|e| format!("rewind: {e}"))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    std::io::copy(file, &mut out).map_err(|e| format!("copy: {e}"))?;
    out.flush().map_err(|e| format!("write: {e}"))?;
    out.sync_all().map_err(|e| format!("fsync: {e}"))
}

/// Where the responder sends what it cannot do itself, and its audit.
pub struct Responder {
    pub isolation: Option<mpsc::Sender<IsolationRequest>>,
    pub audit: mpsc::Sender<EncodedEvents>,
    pub quarantine: Arc<Quarantine>,
}

impl Responder {
    /// Runs the requests until every [`Responses`] is dropped.
    pub fn spawn(self, requests: Requests) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("rxsentry-respond".into())
            .spawn(move || {
                for request in requests.0 {
                    for &action in &request.actions {
                        let event = self.run(action, &request);
                        let audit = EncodedEvents::from_events([&event]);
                        if self.audit.blocking_send(audit).is_err() {
                            tracing::error!("response audit event lost: pipeline stopped");
                        }
                    }
                }
            })
    }

    fn run(&self, action: Action, request: &Request) -> Event {
        let mut record = ResponseEvent {
            action: action.name().to_owned(),
            requester: request.requester.clone(),
            rule_source: request.rule_source.clone(),
            reason: request.reason.clone(),
            target_pid: request.pid,
            ..ResponseEvent::default()
        };
        let outcome = match action {
            Action::Kill => kill(request, false).map(|pids| record.killed_pids = pids),
            Action::KillTree => kill(request, true).map(|pids| record.killed_pids = pids),
            Action::Quarantine => match &request.file {
                None => Err("the event names no file".to_owned()),
                Some(file) => {
                    record.target_path = file.clone();
                    let why = format!("{} ({})", request.requester, request.reason);
                    self.quarantine
                        .quarantine(Path::new(file), &why)
                        .map(|(dest, sha)| {
                            record.quarantine_path = dest.display().to_string();
                            record.sha256 = sha;
                        })
                }
            },
            Action::Isolate => self.isolate(request),
        };
        match &outcome {
            Ok(()) => {
                tracing::warn!(action = action.name(), requester = %request.requester, pid = request.pid, "detection response carried out")
            }
            Err(e) => {
                tracing::error!(action = action.name(), requester = %request.requester, pid = request.pid, error = %e, "detection response failed")
            }
        }
        if let Err(e) = outcome {
            record.error = e;
        }
        let now = clock::now();
        Event {
            timestamp_ns: now.timestamp_ns,
            boot_time_unix_ns: now.boot_time_unix_ns,
            kind: Some(event::Kind::Response(record)),
        }
    }

    /// Asks the isolation service; its own audit event follows.
    fn isolate(&self, request: &Request) -> Result<(), String> {
        let Some(tx) = &self.isolation else {
            return Err("isolation is not enabled on this sensor".into());
        };
        let change = isolation::Change {
            action: isolation::Action::Isolate,
            requester: request.requester.clone(),
            reason: request.reason.clone(),
        };
        tx.try_send(IsolationRequest {
            change,
            reply: None,
        })
        .map_err(|e| format!("isolation request not queued: {e}"))
    }
}

/// SIGKILLs the request's process (and with `tree` every process below
/// it), through pidfds: a pid reused after the check is never signalled.
/// Returns the pids signalled.
fn kill(request: &Request, tree: bool) -> Result<Vec<u32>, String> {
    let pid = request.pid;
    if pid <= 1 || pid == std::process::id() {
        return Err(format!("refused: pid {pid} is init or the sensor"));
    }
    let root = Pidfd::open(pid).map_err(|e| format!("pid {pid}: {e} (already gone?)"))?;
    if let Some(started) = start_ns(pid)
        && request.start_ns != 0
        && started.abs_diff(request.start_ns) > request.start_slack_ns + START_TOLERANCE_NS
    {
        return Err(format!(
            "pid {pid} is another process now (started at {started} ns, the rule's at {} ns)",
            request.start_ns
        ));
    }
    if !tree {
        root.signal(libc::SIGKILL)
            .map_err(|e| format!("kill {pid}: {e}"))?;
        return Ok(vec![pid]);
    }
    // Stop the tree from the top down until nothing new appears (a
    // stopped process cannot fork), then kill everything stopped.
    root.signal(libc::SIGSTOP)
        .map_err(|e| format!("stop {pid}: {e}"))?;
    let mut held = vec![(pid, root)];
    for _ in 0..TREE_ROUNDS {
        let known: HashSet<u32> = held.iter().map(|(p, _)| *p).collect();
        let fresh: Vec<u32> = descendants(&known)
            .into_iter()
            .filter(|p| !known.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for p in fresh {
            // Gone since the scan: nothing to stop.
            if let Ok(fd) = Pidfd::open(p)
                && fd.signal(libc::SIGSTOP).is_ok()
            {
                held.push((p, fd));
            }
        }
    }
    let mut killed = Vec::with_capacity(held.len());
    for (p, fd) in &held {
        if fd.signal(libc::SIGKILL).is_ok() {
            killed.push(*p);
        }
    }
    Ok(killed)
}

/// How far /proc's start time (clock ticks) may be from the event's.
const START_TOLERANCE_NS: u64 = 50_000_000;
/// Stop rounds of a tree kill (each finds the children of the last).
const TREE_ROUNDS: usize = 32;

/// A process's start time from /proc (CLOCK_BOOTTIME ns).
fn start_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name's closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split(' ').nth(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)?;
    Some(ticks * (1_000_000_000 / hz))
}

/// The pids whose parent is in `parents`, transitively, from /proc.
fn descendants(parents: &HashSet<u32>) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: Vec<(u32, u32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 2..))
            .and_then(|rest| rest.split(' ').nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            children.push((pid, ppid));
        }
    }
    let mut found: HashSet<u32> = parents.clone();
    loop {
        let before = found.len();
        for &(pid, ppid) in &children {
            if found.contains(&ppid) {
                found.insert(pid);
            }
        }
        if found.len() == before {
            break;
        }
    }
    found.into_iter().filter(|p| !parents.contains(p)).collect()
}

/// A process handle that cannot be confused with a later process that
/// gets the same pid.
struct Pidfd(OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> std::io::Result<Self> {
        let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(std::io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn request(pid: u32, actions: &[Action]) -> Request {
        Request {
            actions: actions.to_vec(),
            requester: "detection:test".into(),
            rule_source: "builtin:test.yml".into(),
            reason: "exec /tmp/x".into(),
            pid,
            start_ns: 0,
            start_slack_ns: 0,
            file: None,
        }
    }

    #[test]
    fn kill_tree_kills_the_process_and_everything_below_it_and_nothing_else() {
        // sh -> (sleep, sh -> sleep): three levels.
        let mut root = Command::new("sh")
            .args(["-c", "sleep 60 & sh -c 'sleep 60 & wait' & wait"])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut bystander = Command::new("sleep").arg("60").spawn().expect("spawn");
        let root_pid = root.id();
        // Wait until both sleeps exist below the root.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let below = loop {
            let d = descendants(&HashSet::from([root_pid]));
            if d.len() >= 3 || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(below.len(), 3, "sh, sleep, sleep below the root: {below:?}");
        let mut req = request(root_pid, &[Action::KillTree]);
        req.start_ns = start_ns(root_pid).expect("start");
        let mut killed = kill(&req, true).expect("killed");
        killed.sort_unstable();
        let mut want: Vec<u32> = below.iter().copied().chain([root_pid]).collect();
        want.sort_unstable();
        assert_eq!(killed, want);
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(root.wait().expect("wait").signal(), Some(libc::SIGKILL));
        // SIGKILL is delivered asynchronously: each one is dead (gone or a
        // zombie) within a few seconds.
        let dead = |p: u32| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| s.contains(") Z "))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !below.iter().all(|&p| dead(p)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for p in below {
            assert!(dead(p), "{p} still runs");
        }
        assert!(
            bystander.try_wait().expect("poll").is_none(),
            "the bystander lives"
        );
        bystander.kill().expect("kill");
        let _ = bystander.wait();
    }

    #[test]
    fn a_pid_that_now_belongs_to_another_process_is_not_killed() {
        let mut child = Command::new("sleep").arg("60").spawn().expect("spawn");
        let mut req = request(child.id(), &[Action::Kill]);
        // The rule saw a process that started 10 s before this one.
        req.start_ns = start_ns(child.id())
            .expect("start")
            .saturating_sub(10_000_000_000);
        let err = kill(&req, false).expect_err("refused");
        assert!(err.contains("another process"), "{err}");
        assert!(child.try_wait().expect("poll").is_none(), "still runs");
        req.start_ns = 0;
        assert_eq!(kill(&req, false).expect("killed"), [child.id()]);
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(child.wait().expect("wait").signal(), Some(libc::SIGKILL));
        assert!(
            kill(&request(1, &[Action::Kill]), false).is_err(),
            "never init"
        );
        assert!(
            kill(&request(std::process::id(), &[Action::Kill]), false).is_err(),
            "never the sensor"
        );
    }

    #[test]
    fn quarantine_moves_the_file_aside_and_remembers_its_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let q = Quarantine::open(&dir.path().join("q")).expect("open");
        let file = dir.path().join("payload");
        std::fs::write(&file, b"#!/bin/sh\necho pwned\n").expect("write");
        let (dest, sha) = q.quarantine(&file, "test").expect("quarantined");
        assert!(!file.exists());
        let (want, _) = sha256_hex(&mut &b"#!/bin/sh\necho pwned\n"[..], 100).expect("hash");
        assert_eq!(sha, want);
        assert_eq!(dest, dir.path().join("q").join(&want));
        assert!(is_sha256(&sha));
        assert_eq!(
            std::fs::read(&dest).expect("read"),
            b"#!/bin/sh\necho pwned\n"
        );
        assert_eq!(
            std::fs::metadata(&dest).expect("stat").permissions().mode() & 0o7777,
            0
        );
        assert!(q.contains(&sha));
        // A new sensor finds it again.
        let again = Quarantine::open(&dir.path().join("q")).expect("reopen");
        assert!(again.contains(&sha));
        assert!(!again.contains(""));
        // A symlink is not followed; a missing file is an error.
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).expect("symlink");
        assert!(q.quarantine(&dir.path().join("link"), "t").is_err());
        assert!(Path::new("/etc/hostname").exists());
        assert!(q.quarantine(&dir.path().join("missing"), "t").is_err());
    }
}
