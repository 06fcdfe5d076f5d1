//! Typed events decoded from the kernel's ring buffer records.
//!
//! This is the boundary between `hooks` (raw bytes from the kernel) and
//! `enrich` (process table, hashes): everything after it works on these types.

mod decode;
pub mod device;
pub mod dns;

pub use decode::{DecodeError, decode, kernel_dev_to_user, user_dev_to_kernel};

/// The identity the kernel sees for `path` (symlinks followed): device in
/// the kernel's encoding ([`device::kernel_device`]), and inode.
pub fn file_id(path: &std::path::Path) -> std::io::Result<sensor_common::FileId> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    // O_PATH: no read permission needed, and a FIFO does not block.
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_PATH.bits())
        .open(path)?;
    let meta = file.metadata()?;
    Ok(sensor_common::FileId {
        dev: user_dev_to_kernel(device::kernel_device(&file, &meta)),
        _pad: 0,
        ino: meta.ino(),
    })
}

/// Most bytes a comm takes as UTF-8: the kernel's 16 bytes, each possibly
/// replaced by U+FFFD (3 bytes) when not UTF-8.
const COMM_MAX: usize = 3 * sensor_common::COMM_LEN;

/// A task's comm, kept inline: every event carries one, and a `String`
/// would cost an allocation and a free per event.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm {
    len: u8,
    bytes: [u8; COMM_MAX],
}

impl Comm {
    /// `text`, cut at a character boundary if longer than any kernel comm.
    pub fn new(text: &str) -> Self {
        let mut len = text.len().min(COMM_MAX);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; COMM_MAX];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Self {
            len: len as u8,
            bytes,
        }
    }

    /// The kernel's NUL-terminated comm bytes, lossily as UTF-8.
    pub fn from_kernel(raw: &[u8]) -> Self {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Self::new(&String::from_utf8_lossy(&raw[..end]))
    }

    pub fn as_str(&self) -> &str {
        // `new` copies whole characters of a str.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl Default for Comm {
    fn default() -> Self {
        Self::new("")
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Comm {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity and credentials of a task as the kernel reported them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskIdentity {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id of the task that triggered the event.
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    /// CLOCK_BOOTTIME ns at which the process started.
    pub start_boottime_ns: u64,
}

/// A program was executed (after the point of no return).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRecord {
    pub timestamp_ns: u64,
    pub task: TaskIdentity,
    /// Path as given to the kernel (bprm->filename).
    pub filename: String,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub filename_truncated: bool,
    /// Device of the executed file, userspace `st_dev` encoding.
    pub device: u64,
    pub inode: u64,
    /// Size, mtime and ctime of the executed inode, as the kernel saw them.
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    /// Some kernel read failed: fields may be zero.
    pub partial: bool,
}

/// A new process (never a thread) was created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkRecord {
    pub timestamp_ns: u64,
    pub task: TaskIdentity,
    pub partial: bool,
}

/// The last thread of a process exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    pub timestamp_ns: u64,
    pub task: TaskIdentity,
    /// wait(2) status: (code << 8) | signal, 0x80 = core dumped.
    pub status: u32,
    pub partial: bool,
}

impl ExitRecord {
    /// Exit code when the process exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        (self.status & 0x7f == 0).then_some(((self.status >> 8) & 0xff) as i32)
    }

    /// Signal number when the process was killed by a signal.
    pub fn signal(&self) -> Option<i32> {
        let sig = self.status & 0x7f;
        (sig != 0).then_some(sig as i32)
    }

    pub fn core_dumped(&self) -> bool {
        self.status & 0x80 != 0
    }
}

/// The allowlist blocked (or would have blocked) an exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    pub timestamp_ns: u64,
    pub task: TaskIdentity,
    pub filename: String,
    /// Device (userspace `st_dev` encoding) and inode of the executed file.
    pub device: u64,
    pub inode: u64,
    /// True: killed (enforce mode); false: would-block (monitor mode).
    pub blocked: bool,
    /// A `sensor_common::reason::*` value.
    pub reason: u32,
    /// A `sensor_common::backend::*` value.
    pub backend: u32,
    /// Index of the allowlist rule involved, if any.
    pub rule_index: Option<u32>,
    /// Human-readable rule, filled by the policy manager before enrichment.
    pub rule: String,
    pub generation: u64,
    pub partial: bool,
}

/// A path as the kernel reported it; [`crate::watch::Anchors`] turns it
/// into a full path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawPath {
    /// Index into the anchor table (a watched root or an ancestor of one).
    pub anchor: Option<u32>,
    /// Directory and file names the kernel walked, from the anchor down,
    /// '/'-separated (a name never holds '/'): one string, not one per name.
    pub chain: String,
    /// The path string the process gave, relative to the chain's leaf.
    pub name: String,
    /// The kernel cut the chain or the string.
    pub truncated: bool,
    /// The walk ran out of levels: possibly watched, `chain` is the names
    /// nearest the file, no anchor (`PATH_DEPTH_EXCEEDED`).
    pub depth_exceeded: bool,
    /// Found by identity under a name outside the watched trees: `chain`
    /// runs from the filesystem's root, no anchor (`PATH_BY_IDENTITY`).
    pub by_identity: bool,
    /// The device whose root `chain` starts from when it is not the
    /// file's own (an overlay's name for a file of its layer).
    pub chain_device: Option<u64>,
}

impl RawPath {
    /// Frees `chain` and `name` once the path is resolved.
    pub fn drop_names(&mut self) {
        self.chain = String::new();
        self.name = String::new();
    }
}

/// A file operation on a watched path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRecord {
    pub timestamp_ns: u64,
    pub task: TaskIdentity,
    /// A `sensor_common::file_op::*` value.
    pub op: u32,
    /// open(2) / unlinkat / renameat2 / fchownat flags.
    pub flags: u32,
    /// Syscall return value: >= 0 success, -errno failure.
    pub result: i64,
    pub mode: u32,
    /// chown target ids; u32::MAX = unchanged.
    pub uid: u32,
    pub gid: u32,
    /// Device (userspace encoding) and inode, when the kernel held the file.
    pub device: u64,
    pub inode: u64,
    /// As decoded; their names are dropped by `Anchors::resolve_record`.
    pub raw_path: RawPath,
    pub raw_new_path: Option<RawPath>,
    /// Full paths, filled by `Anchors::resolve_record` before enrichment.
    pub path: String,
    pub new_path: Option<String>,
    /// For a file found by identity: the name the sensor knows it by.
    pub watched_path: Option<String>,
    pub partial: bool,
    /// Set on a summary of coalesced opens.
    pub repeats: Option<Repeats>,
}

/// Opens counted in the kernel after the one reported in full (see
/// [`crate::watch::repeats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repeats {
    pub count: u64,
    /// CLOCK_BOOTTIME of the reported open and of the last repeat.
    pub first_ns: u64,
    pub last_ns: u64,
}

/// A network event (see `sensor_common::net_op` for `op`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRecord {
    pub timestamp_ns: u64,
    /// The process (for connect results and closes: the recorded owner).
    pub task: TaskIdentity,
    pub op: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// CONNECT: `sensor_common::NET_CONNECT_FAILED` or 0; CLOSE: TCP state
    /// it closed from.
    pub result: u8,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// DNS_QUERY: the questions parsed, and why parsing stopped early.
    pub dns_questions: Vec<dns::DnsQuestion>,
    pub dns_error: Option<dns::DnsError>,
    pub partial: bool,
}

/// A call the kernel's self-protection programs saw (see
/// `sensor_common::tamper`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TamperCall {
    /// `bpf()`: the command, the object id (`*_GET_FD_BY_ID`) or the pin
    /// path as the caller wrote it (`BPF_OBJ_GET`).
    /// `cwd` is the caller's working directory (user `st_dev`, inode)
    /// when `path` is relative.
    Bpf {
        cmd: u32,
        id: u32,
        path: String,
        cwd: Option<(u64, u64)>,
    },
    /// `ptrace` attach or seize of thread `target`.
    Ptrace {
        request: u32,
        target: u32,
    },
    /// `process_vm_readv` / `process_vm_writev` on process `target`.
    VmRead {
        target: u32,
    },
    VmWrite {
        target: u32,
    },
    /// The BPF-LSM write guard refused `op` (a `guard_op` value) on `name`,
    /// under the guarded identity `guarded` (the file, or its directory).
    WriteRefused {
        op: u32,
        guarded: sensor_common::FileId,
        name: String,
    },
}

/// Someone other than the sensor touched what is the sensor's: a call the
/// kernel saw (`call`), kept by [`crate::tamper::Judge`] once it named what
/// was touched, or a write to the sensor's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TamperRecord {
    pub timestamp_ns: u64,
    pub task: TaskIdentity,
    pub call: Option<TamperCall>,
    /// What was touched, what was done, where (empty until judged).
    pub object: String,
    pub action: String,
    pub target: String,
    pub partial: bool,
}

/// One decoded kernel record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Exec(ExecRecord),
    Fork(ForkRecord),
    Exit(ExitRecord),
    Policy(PolicyRecord),
    /// Boxed: a file record is several times the size of the others.
    File(Box<FileRecord>),
    /// Boxed: larger than the other records, and rarer than execs.
    Net(Box<NetRecord>),
    /// Boxed: rare.
    Tamper(Box<TamperRecord>),
}

impl KernelEvent {
    pub fn timestamp_ns(&self) -> u64 {
        match self {
            Self::Exec(e) => e.timestamp_ns,
            Self::Fork(e) => e.timestamp_ns,
            Self::Exit(e) => e.timestamp_ns,
            Self::Policy(e) => e.timestamp_ns,
            Self::File(e) => e.timestamp_ns,
            Self::Net(e) => e.timestamp_ns,
            Self::Tamper(e) => e.timestamp_ns,
        }
    }

    pub fn task(&self) -> &TaskIdentity {
        match self {
            Self::Exec(e) => &e.task,
            Self::Fork(e) => &e.task,
            Self::Exit(e) => &e.task,
            Self::Policy(e) => &e.task,
            Self::File(e) => &e.task,
            Self::Net(e) => &e.task,
            Self::Tamper(e) => &e.task,
        }
    }
}

/// A TCP connect by `task` at `ts` from `local` to `remote`, for tests.
#[cfg(test)]
pub(crate) fn tcp_connect(task: &TaskIdentity, ts: u64, local: &str, remote: &str) -> KernelEvent {
    KernelEvent::Net(Box::new(NetRecord {
        timestamp_ns: ts,
        task: task.clone(),
        op: sensor_common::net_op::CONNECT,
        protocol: sensor_common::IPPROTO_TCP,
        family: sensor_common::AF_INET,
        local: local.parse().expect("addr"),
        remote: remote.parse().expect("addr"),
        result: 0,
        bytes_sent: 0,
        bytes_received: 0,
        dns_questions: vec![],
        dns_error: None,
        partial: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_holds_any_kernel_comm() {
        assert_eq!(Comm::from_kernel(b"sh\0garbage"), "sh");
        assert_eq!(Comm::from_kernel(b"kworker/u8:3"), "kworker/u8:3");
        // 16 bytes, none UTF-8: 16 replacement characters, nothing lost.
        let odd = Comm::from_kernel(&[0xff; 16]);
        assert_eq!(odd.as_str(), "\u{fffd}".repeat(16));
        assert_eq!(odd.to_string().len(), COMM_MAX);
        // Longer text is cut at a character boundary.
        let long = Comm::new(&"é".repeat(40));
        assert_eq!(long.as_str(), "é".repeat(COMM_MAX / 2));
        assert_eq!(Comm::default(), "");
    }
}
