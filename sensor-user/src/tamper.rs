//! Self-protection: what the daemon reports when someone other than the
//! sensor touches what keeps its enforcement in force, as a `TamperEvent`
//! in the telemetry stream (docs/allowlisting.md#self-protection).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    time::Instant,
};

use proto::telemetry::v1::{Event, TamperEvent, event};
use sensor_common::{FileId, bpf_cmd, file_op, guard_op, guarded, ptrace_request};

use crate::{
    clock,
    events::{FileRecord, TamperCall, TamperRecord, device::kernel_device_at, user_dev_to_kernel},
};

/// Tamper findings since the sensor started, all kinds.
static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one more finding; the total so far, this one included.
pub fn count_one() -> u64 {
    COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Findings since the sensor started (the metrics' counter).
pub fn count() -> u64 {
    COUNT.load(std::sync::atomic::Ordering::Relaxed)
}

/// How often the daemon checks its pins.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// One finding: what was touched, what was seen, and what the sensor did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub object: &'static str,
    pub action: String,
    pub target: String,
    pub restored: bool,
    pub error: String,
}

impl Finding {
    /// The finding as a telemetry event; `count` is the findings since
    /// start, this one included.
    pub fn event(&self, count: u64) -> Event {
        let now = clock::now();
        Event {
            timestamp_ns: now.timestamp_ns,
            boot_time_unix_ns: now.boot_time_unix_ns,
            kind: Some(event::Kind::Tamper(TamperEvent {
                process: None,
                object: self.object.to_owned(),
                action: self.action.clone(),
                target: self.target.clone(),
                restored: self.restored,
                error: self.error.clone(),
                count,
            })),
        }
    }
}

/// How often the ids of the sensor's own kernel objects may be re-read
/// (on a call naming an id not known to be ours): a caller spraying ids
/// cannot make the sensor rescan for each.
const ID_RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

/// The kinds of kernel object a `bpf()` id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ObjectKind {
    Program,
    Map,
    Link,
}

impl ObjectKind {
    fn of_cmd(cmd: u32) -> Option<Self> {
        match cmd {
            bpf_cmd::PROG_GET_FD_BY_ID => Some(Self::Program),
            bpf_cmd::MAP_GET_FD_BY_ID => Some(Self::Map),
            bpf_cmd::LINK_GET_FD_BY_ID => Some(Self::Link),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Program => "program",
            Self::Map => "map",
            Self::Link => "link",
        }
    }
}

/// Ids of the kernel objects this process holds, read from
/// `/proc/self/fdinfo` (every program, map and link the sensor loaded,
/// adopted from pins or attached is held by a descriptor).
#[derive(Default)]
struct OwnIds {
    ids: HashSet<(ObjectKind, u32)>,
    read_at: Option<Instant>,
}

impl OwnIds {
    fn contains(&mut self, kind: ObjectKind, id: u32) -> bool {
        if self.ids.contains(&(kind, id)) {
            return true;
        }
        if self.read_at.is_some_and(|t| t.elapsed() < ID_RESCAN) {
            return false;
        }
        self.rescan();
        self.ids.contains(&(kind, id))
    }

    fn rescan(&mut self) {
        self.read_at = Some(Instant::now());
        self.ids.clear();
        let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
            return;
        };
        for entry in dir.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                self.ids.extend(fdinfo_ids(&text));
            }
        }
    }
}

/// The bpf object ids in one fdinfo file (a link's names its program too).
fn fdinfo_ids(text: &str) -> impl Iterator<Item = (ObjectKind, u32)> + '_ {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        let kind = match key {
            "prog_id" => ObjectKind::Program,
            "map_id" => ObjectKind::Map,
            "link_id" => ObjectKind::Link,
            _ => return None,
        };
        Some((kind, value.trim().parse().ok()?))
    })
}

/// `path` without `.` and `..` components, without touching the file
/// system (for a name that does not exist, or no longer can be resolved).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Decides which calls the kernel reported reached the sensor's own
/// kernel objects or process, and which file writes its own files, and
/// names what was touched. Runs on the ring reader's thread: it reads
/// /proc and stats a few files, only for calls that are rare on a kiosk.
pub struct Judge {
    /// Pin directories (allowlist, isolation), as configured.
    pin_dirs: Vec<PathBuf>,
    /// The sensor's binary, config, policy and state directories, resolved.
    files: Vec<(PathBuf, &'static str)>,
    /// The same by the identity the kernel sees (the write guard's keys):
    /// index into `files`, and the `guarded` bits.
    identities: HashMap<FileId, (usize, u8)>,
    /// The BPF-LSM write guard refuses (and reports) writes to `files`.
    guard_armed: bool,
    own: OwnIds,
}

impl Judge {
    /// `files`: each protected path (a file, or a directory for all below
    /// it) with what it is ("config", "state directory", ...).
    pub fn new(pin_dirs: Vec<PathBuf>, files: Vec<(PathBuf, &'static str)>) -> Self {
        let files: Vec<(PathBuf, &'static str)> = files
            .into_iter()
            .map(|(path, what)| (std::fs::canonicalize(&path).unwrap_or(path), what))
            .collect();
        let identities = files
            .iter()
            .enumerate()
            .filter_map(|(i, (path, _))| {
                let (id, bits) = kernel_identity(path)?;
                Some((id, (i, bits)))
            })
            .collect();
        Self {
            pin_dirs,
            files,
            identities,
            guard_armed: false,
            own: OwnIds::default(),
        }
    }

    /// The write guard now refuses changes to the protected files: the
    /// calls it refused (EPERM) are its reports, not reported again.
    pub fn set_guard_armed(&mut self) {
        self.guard_armed = true;
    }

    /// What the BPF-LSM write guard is to refuse: each protected file by
    /// the identity the kernel sees, a directory with its entries.
    /// The isolation state directory is not among them: `rxsentry-sensor
    /// isolate|release`, the operator's local commands, write it while the
    /// sensor runs (its changes are reported).
    pub fn guarded(&self) -> Vec<(FileId, u8)> {
        let mut guarded: Vec<(usize, FileId, u8)> = self
            .identities
            .iter()
            .filter(|(_, (i, _))| self.files[*i].1 != STATE_DIRECTORY)
            .map(|(id, &(i, bits))| (i, *id, bits))
            .collect();
        guarded.sort_by_key(|&(i, ..)| i);
        guarded
            .into_iter()
            .map(|(_, id, bits)| (id, bits))
            .collect()
    }

    /// Names what `record`'s call touched; false when it touched nothing
    /// of the sensor's (the record is then dropped: not a finding).
    pub fn judge(&mut self, record: &mut TamperRecord) -> bool {
        let Some(call) = &record.call else {
            return !record.object.is_empty();
        };
        let pid = record.task.tgid;
        let (object, action, target) = match call {
            TamperCall::Bpf { cmd, path, cwd, .. } if *cmd == bpf_cmd::OBJ_GET => {
                let Some(pin) = self.pinned_object(pid, path, *cwd) else {
                    return false;
                };
                (
                    "rxsentry pinned object".to_owned(),
                    "bpf(BPF_OBJ_GET): opened a pin".to_owned(),
                    pin,
                )
            }
            TamperCall::Bpf { cmd, id, .. } => {
                let Some(kind) = ObjectKind::of_cmd(*cmd) else {
                    return false;
                };
                if !self.own.contains(kind, *id) {
                    return false;
                }
                (
                    format!("rxsentry {}", kind.name()),
                    format!("bpf(): got a descriptor of {} {id} by id", kind.name()),
                    format!("{} id {id}", kind.name()),
                )
            }
            TamperCall::Ptrace { request, target } => {
                if !is_own_thread(*target) {
                    return false;
                }
                let how = if *request == ptrace_request::SEIZE {
                    "ptrace(PTRACE_SEIZE)"
                } else {
                    "ptrace(PTRACE_ATTACH)"
                };
                (
                    "sensor process".to_owned(),
                    how.to_owned(),
                    format!("thread {target}"),
                )
            }
            TamperCall::VmRead { target } | TamperCall::VmWrite { target } => {
                if !is_own_thread(*target) {
                    return false;
                }
                let how = match call {
                    TamperCall::VmRead { .. } => "process_vm_readv: read its memory",
                    _ => "process_vm_writev: wrote its memory",
                };
                (
                    "sensor process".to_owned(),
                    how.to_owned(),
                    format!("process {target}"),
                )
            }
            // The kernel refuses only what the daemon guards: always ours.
            TamperCall::WriteRefused { op, guarded, name } => {
                let (object, target) = match self.identities.get(guarded) {
                    Some(&(i, _)) => {
                        let (path, what) = &self.files[i];
                        (format!("sensor {what}"), path.display().to_string())
                    }
                    None => (
                        "sensor file".to_owned(),
                        format!("device {:#x} inode {}", guarded.dev, guarded.ino),
                    ),
                };
                (
                    object,
                    format!("{} of {name:?} refused (BPF-LSM)", guard_op_name(*op)),
                    target,
                )
            }
        };
        record.object = object;
        record.action = action;
        record.target = target;
        true
    }

    /// The pin `path` (as process `pid` wrote it) names, if it is one of
    /// the sensor's: under a pin directory by name, or the same inode as
    /// a pin (another mount of the same bpf file system).
    fn pinned_object(&self, pid: u32, path: &str, cwd: Option<(u64, u64)>) -> Option<String> {
        let given = Path::new(path);
        let absolute = if given.is_absolute() {
            given.to_path_buf()
        } else if let Ok(dir) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            dir.join(given)
        } else {
            // The caller is gone (a short-lived tool): its working
            // directory by the identity the kernel read, looked for where
            // pins can be (the bpf file systems of the pin directories).
            let (dev, ino) = cwd?;
            self.directory_on_pin_fs(dev, ino)?.join(given)
        };
        // Through the caller's root, so a chroot or mount namespace names
        // the same file it did.
        let seen = Path::new(&format!("/proc/{pid}/root")).join(absolute.strip_prefix("/").ok()?);
        let resolved = std::fs::canonicalize(&seen).unwrap_or_else(|_| lexical(&absolute));
        for dir in &self.pin_dirs {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            if resolved.starts_with(&dir) {
                return Some(resolved.display().to_string());
            }
        }
        let meta = std::fs::metadata(&seen).ok()?;
        let same = |p: &Path| {
            std::fs::metadata(p).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        };
        self.pin_dirs
            .iter()
            .flat_map(|dir| walkdir(dir, 3))
            .find(|pin| same(pin))
            .map(|pin| format!("{} (as {})", pin.display(), absolute.display()))
    }

    /// The directory with identity (`dev`, `ino`) on the file system of a
    /// pin directory: one of the pin directory's ancestors, or else found
    /// by walking that file system (a bpf file system holds few entries;
    /// the walk is bounded all the same).
    fn directory_on_pin_fs(&self, dev: u64, ino: u64) -> Option<PathBuf> {
        let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        for dir in &self.pin_dirs {
            let same_fs: Vec<&Path> = dir
                .ancestors()
                .filter(|a| id(a).is_some_and(|(d, _)| d == dev))
                .collect();
            if let Some(found) = same_fs.iter().find(|a| id(a) == Some((dev, ino))) {
                return Some(found.to_path_buf());
            }
            let Some(top) = same_fs.last() else {
                continue;
            };
            if let Some(found) = walkdir(top, 6)
                .into_iter()
                .find(|p| p.is_dir() && id(p) == Some((dev, ino)))
            {
                return Some(found);
            }
        }
        None
    }

    /// A write, rename, removal, link or mode/owner change of one of the
    /// sensor's files by another process, as a tamper record.
    pub fn file_write(&self, file: &FileRecord) -> Option<TamperRecord> {
        let action = match file.op {
            file_op::OPEN_WRITE => "opened for writing",
            file_op::UNLINK => "removed",
            file_op::RENAME => "renamed",
            file_op::CHMOD => "mode changed",
            file_op::CHOWN => "owner changed",
            file_op::LINK => "hard-linked",
            _ => return None,
        };
        if self.guard_armed && file.result == -i64::from(nix::errno::Errno::EPERM as i32) {
            return None;
        }
        let (path, what) = [
            Some(&file.path),
            file.new_path.as_ref(),
            file.watched_path.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find_map(|p| {
            let what = self.protected(Path::new(p))?;
            Some((p, what))
        })?;
        let action = if file.result < 0 {
            format!("{action} (refused: errno {})", -file.result)
        } else {
            action.to_owned()
        };
        Some(TamperRecord {
            timestamp_ns: file.timestamp_ns,
            task: file.task.clone(),
            call: None,
            object: format!("sensor {what}"),
            action,
            target: path.clone(),
            partial: file.partial,
        })
    }

    fn protected(&self, path: &Path) -> Option<&'static str> {
        self.files
            .iter()
            .find(|(p, _)| path.starts_with(p))
            .map(|&(_, what)| what)
    }
}

/// What `Judge::new`'s caller calls the isolation state directory.
pub const STATE_DIRECTORY: &str = "state directory";

/// (kernel identity, `guarded` bits) of `path`: a directory guards its
/// entries too.
fn kernel_identity(path: &Path) -> Option<(FileId, u8)> {
    let meta = std::fs::metadata(path).ok()?;
    let id = FileId {
        dev: user_dev_to_kernel(kernel_device_at(path, &meta)),
        _pad: 0,
        ino: meta.ino(),
    };
    let bits = if meta.is_dir() {
        guarded::ITSELF | guarded::ENTRIES
    } else {
        guarded::ITSELF
    };
    Some((id, bits))
}

/// What the write guard refused, for a person.
fn guard_op_name(op: u32) -> &'static str {
    match op {
        guard_op::OPEN_FOR_WRITE => "open for writing",
        guard_op::TRUNCATE => "truncate",
        guard_op::UNLINK => "unlink",
        guard_op::RMDIR => "rmdir",
        guard_op::RENAME => "rename",
        guard_op::LINK => "hard link",
        guard_op::CHMOD => "chmod",
        guard_op::CHOWN => "chown",
        guard_op::CREATE => "create",
        guard_op::MKDIR => "mkdir",
        guard_op::SYMLINK => "symlink",
        _ => "change",
    }
}

/// Whether thread `tid` is one of this process's.
fn is_own_thread(tid: u32) -> bool {
    tid != 0 && Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Most entries a walk of a pin file system looks at.
const WALK_MAX: usize = 4096;

/// Entries under `dir`, `depth` levels down and [`WALK_MAX`] at most.
fn walkdir(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), depth)];
    while let Some((dir, depth)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if out.len() >= WALK_MAX {
                return out;
            }
            let path = entry.path();
            if depth > 1 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push((path.clone(), depth - 1));
            }
            out.push(path);
        }
    }
    out
}

/// A judged tamper record as a telemetry event (its process is filled in
/// by enrichment); counts it.
pub fn record_event(record: TamperRecord) -> TamperEvent {
    let count = count_one();
    tracing::warn!(
        pid = record.task.tgid,
        object = %record.object,
        action = %record.action,
        target = %record.target,
        count,
        "tamper: another process touched what is rxsentry's"
    );
    TamperEvent {
        process: None,
        object: record.object,
        action: record.action,
        target: record.target,
        restored: false,
        error: String::new(),
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_ids_reads_programs_maps_and_links() {
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t2\nmap_id:\t17\nfrozen:\t0\n";
        let link = "link_type:\traw_tracepoint\nlink_id:\t9\nprog_tag:\tab\nprog_id:\t41\n";
        assert_eq!(fdinfo_ids(map).collect::<Vec<_>>(), [(ObjectKind::Map, 17)]);
        assert_eq!(
            fdinfo_ids(link).collect::<Vec<_>>(),
            [(ObjectKind::Link, 9), (ObjectKind::Program, 41)]
        );
        assert_eq!(fdinfo_ids("pos:\t0\nflags:\t0\n").count(), 0);
    }

    #[test]
    fn lexical_removes_dots_without_the_file_system() {
        assert_eq!(
            lexical(Path::new("/sys/fs/bpf/x/../rxsentry/./allowlist/verdict")),
            Path::new("/sys/fs/bpf/rxsentry/allowlist/verdict")
        );
        assert_eq!(lexical(Path::new("/../..")), Path::new("/"));
    }

    fn record(call: TamperCall) -> TamperRecord {
        TamperRecord {
            timestamp_ns: 1,
            task: crate::events::TaskIdentity {
                tgid: std::process::id(),
                ..Default::default()
            },
            call: Some(call),
            object: String::new(),
            action: String::new(),
            target: String::new(),
            partial: false,
        }
    }

    #[test]
    fn pin_paths_match_by_name_relative_and_with_dots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pins = dir.path().join("pins");
        std::fs::create_dir_all(pins.join("allowlist")).expect("mkdir");
        std::fs::write(pins.join("allowlist/verdict"), b"").expect("pin");
        let judge = Judge::new(vec![pins.join("allowlist")], vec![]);
        let pid = std::process::id();
        let by_dots = format!("{}/../pins/allowlist/verdict", pins.display());
        assert!(judge.pinned_object(pid, &by_dots, None).is_some());
        // Not a pin of ours: a sibling directory, and the parent itself.
        std::fs::create_dir_all(pins.join("other")).expect("mkdir");
        std::fs::write(pins.join("other/verdict"), b"").expect("other");
        let other = pins.join("other/verdict").display().to_string();
        assert_eq!(judge.pinned_object(pid, &other, None), None);
        // Another name of the same inode (a hard link here; another mount
        // of the bpf file system in real life).
        std::fs::hard_link(pins.join("allowlist/verdict"), dir.path().join("alias")).expect("link");
        let alias = dir.path().join("alias").display().to_string();
        let found = judge.pinned_object(pid, &alias, None).expect("same inode");
        assert!(found.contains("allowlist/verdict"), "{found}");
        // A relative name of a caller that is gone: its working directory
        // as the kernel identified it (here: the pins' parent).
        let meta = std::fs::metadata(&pins).expect("stat");
        let gone = u32::MAX;
        let found = judge
            .pinned_object(gone, "allowlist/verdict", Some((meta.dev(), meta.ino())))
            .expect("resolved from the kernel's cwd");
        assert!(found.ends_with("pins/allowlist/verdict"), "{found}");
        assert_eq!(judge.pinned_object(gone, "allowlist/verdict", None), None);
    }

    #[test]
    fn ptrace_and_memory_calls_count_only_on_the_sensors_threads() {
        let mut judge = Judge::new(vec![], vec![]);
        let me = std::process::id();
        let mut r = record(TamperCall::Ptrace {
            request: ptrace_request::SEIZE,
            target: me,
        });
        assert!(judge.judge(&mut r));
        assert_eq!(r.object, "sensor process");
        assert!(r.action.contains("SEIZE"), "{}", r.action);
        // pid 1 is never this test process.
        let mut r = record(TamperCall::VmWrite { target: 1 });
        assert!(!judge.judge(&mut r));
        let mut r = record(TamperCall::VmWrite { target: me });
        assert!(judge.judge(&mut r) && r.action.contains("wrote"));
    }

    #[test]
    fn ids_count_only_when_this_process_holds_the_object() {
        let mut judge = Judge::new(vec![], vec![]);
        // No bpf object is held by a unit test: no id is ours.
        let mut r = record(TamperCall::Bpf {
            cmd: bpf_cmd::MAP_GET_FD_BY_ID,
            id: 1,
            path: String::new(),
            cwd: None,
        });
        assert!(!judge.judge(&mut r));
        judge.own.ids.insert((ObjectKind::Map, 7));
        judge.own.read_at = Some(Instant::now());
        let mut r = record(TamperCall::Bpf {
            cmd: bpf_cmd::MAP_GET_FD_BY_ID,
            id: 7,
            path: String::new(),
            cwd: None,
        });
        assert!(judge.judge(&mut r));
        assert_eq!(
            (r.object.as_str(), r.target.as_str()),
            ("rxsentry map", "map id 7")
        );
        // The same number as a program id is not ours.
        let mut r = record(TamperCall::Bpf {
            cmd: bpf_cmd::PROG_GET_FD_BY_ID,
            id: 7,
            path: String::new(),
            cwd: None,
        });
        assert!(!judge.judge(&mut r));
    }

    #[test]
    fn the_guard_covers_files_and_spool_entries_but_not_the_state_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("sensor.toml");
        std::fs::write(&config, b"").expect("config");
        let (spool, state) = (dir.path().join("spool"), dir.path().join("state"));
        std::fs::create_dir_all(&spool).expect("spool");
        std::fs::create_dir_all(&state).expect("state");
        let judge = Judge::new(
            vec![],
            vec![
                (config.clone(), "config"),
                (spool.clone(), "spool directory"),
                (state, STATE_DIRECTORY),
            ],
        );
        let id = |p: &Path| kernel_identity(p).expect("stat").0;
        assert_eq!(
            judge.guarded(),
            [
                (id(&config), guarded::ITSELF),
                (id(&spool), guarded::ITSELF | guarded::ENTRIES)
            ]
        );
        // A refusal names the guarded object and what was refused, found
        // by the identity the kernel reported; an unknown one still counts.
        let mut judge = judge;
        let mut r = record(TamperCall::WriteRefused {
            op: guard_op::CREATE,
            guarded: id(&spool),
            name: "0001.seg".into(),
        });
        assert!(judge.judge(&mut r));
        assert_eq!(r.object, "sensor spool directory");
        assert_eq!(r.action, "create of \"0001.seg\" refused (BPF-LSM)");
        assert_eq!(r.target, spool.display().to_string());
        let mut r = record(TamperCall::WriteRefused {
            op: guard_op::RENAME,
            guarded: FileId::default(),
            name: "x".into(),
        });
        assert!(judge.judge(&mut r));
        assert_eq!(r.object, "sensor file");
    }

    #[test]
    fn writes_to_the_sensors_files_are_findings_and_reads_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("sensor.toml");
        std::fs::write(&config, b"").expect("config");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state");
        let judge = Judge::new(
            vec![],
            vec![
                (config.clone(), "config"),
                (state.clone(), "state directory"),
            ],
        );
        let file = |op, path: &Path| FileRecord {
            op,
            path: path.display().to_string(),
            ..Default::default()
        };
        let t = judge
            .file_write(&file(file_op::OPEN_WRITE, &config))
            .expect("a write to the config");
        assert_eq!(
            (t.object.as_str(), t.action.as_str()),
            ("sensor config", "opened for writing")
        );
        assert!(
            judge
                .file_write(&file(file_op::OPEN_READ, &config))
                .is_none()
        );
        let t = judge
            .file_write(&file(file_op::UNLINK, &state.join("isolation.toml")))
            .expect("a removal under the state directory");
        assert_eq!(t.object, "sensor state directory");
        // A rename onto the config is caught by its new name.
        let mut onto = file(file_op::RENAME, &dir.path().join("evil"));
        onto.new_path = Some(config.display().to_string());
        onto.result = -13;
        let t = judge.file_write(&onto).expect("a rename onto the config");
        assert_eq!(t.action, "renamed (refused: errno 13)");
        assert!(
            judge
                .file_write(&file(file_op::CHMOD, &dir.path().join("other")))
                .is_none()
        );
    }
}
