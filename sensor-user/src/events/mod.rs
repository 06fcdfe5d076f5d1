//! Typed events decoded from the kernel's ring buffer records.
//!
//! This is the boundary between `hooks` (raw bytes from the kernel) and
//! `enrich` (process table, hashes): everything after it works on these types.

mod decode;
pub mod dns;

pub use decode::{DecodeError, decode, kernel_dev_to_user, user_dev_to_kernel};

/// The identity the kernel sees for `path` (symlinks followed): device in
/// the kernel's encoding, and inode.
pub fn file_id(path: &std::path::Path) -> std::io::Result<sensor_common::FileId> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    Ok(sensor_common::FileId {
        dev: user_dev_to_kernel(meta.dev()),
        _pad: 0,
        ino: meta.ino(),
    })
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
    pub comm: String,
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
    /// Size and mtime of the executed inode, as the kernel saw them.
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
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
    pub raw_path: RawPath,
    pub raw_new_path: Option<RawPath>,
    /// Full paths, filled by `Anchors::resolve_record` before enrichment.
    pub path: String,
    pub new_path: Option<String>,
    pub partial: bool,
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
        }
    }
}
