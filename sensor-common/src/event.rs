//! Records the kernel writes to the `PROCESS_EVENTS` ring buffer.
//!
//! Each record starts with an [`EventHeader`]; `kind` says which struct follows.

/// Length of `task_struct.comm` (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;
/// Bytes kept of the exec filename (bprm->filename), NUL included.
pub const FILENAME_LEN: usize = 256;
/// Bytes kept of the NUL-separated argv block. A power of two so the kernel
/// side can bound the read length with a mask the verifier understands.
pub const ARGV_LEN: usize = 1024;

/// What follows the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Exec = 1,
    Fork = 2,
    Exit = 3,
    /// A [`crate::policy::PolicyEvent`].
    Policy = 4,
    /// A [`crate::file::FileEvent`].
    File = 5,
    /// A [`crate::net::NetEvent`].
    Net = 6,
    /// A [`crate::file::FileRenameEvent`].
    FileRename = 7,
    /// A [`crate::tamper::TamperCallEvent`].
    TamperCall = 8,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Fork),
            3 => Some(Self::Exit),
            4 => Some(Self::Policy),
            5 => Some(Self::File),
            7 => Some(Self::FileRename),
            6 => Some(Self::Net),
            8 => Some(Self::TamperCall),
            _ => None,
        }
    }
}

/// `ExecEvent::flags`: argv was longer than [`ARGV_LEN`].
pub const EXEC_ARGV_TRUNCATED: u32 = 1 << 0;
/// `ExecEvent::flags`: filename was longer than [`FILENAME_LEN`].
pub const EXEC_FILENAME_TRUNCATED: u32 = 1 << 1;
/// Any record: a kernel read failed and some fields are zero.
pub const EVENT_PARTIAL: u32 = 1 << 31;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    /// Flags (`EXEC_*`, `EVENT_PARTIAL`).
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, survives suspend.
    pub timestamp_ns: u64,
}

/// Identity and credentials of a task, read from its `task_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskInfo {
    /// Thread group id: the process id.
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
    /// `real_parent->tgid`.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    /// `task_struct.start_boottime`: with tgid, a pid-reuse-proof identity.
    pub start_boottime_ns: u64,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// `inode->i_sb->s_dev` of the executed file (kernel dev_t encoding).
    pub dev: u32,
    /// Bytes of `argv` that are valid.
    pub argv_len: u32,
    /// `inode->i_ino` of the executed file.
    pub ino: u64,
    /// `inode->i_size`: with dev, ino, mtime and ctime, the hash cache key, so a
    /// cached binary needs no syscall in userspace.
    pub size: u64,
    /// `inode` modification time (seconds, nanoseconds).
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// `inode` change time (nanoseconds, then seconds): a write with the
    /// mtime and size put back still moves it, so it is in the hash cache
    /// key too.
    pub ctime_nsec: u32,
    pub ctime_sec: i64,
    /// NUL-terminated bprm->filename.
    pub filename: [u8; FILENAME_LEN],
    /// NUL-separated arguments, `argv_len` bytes valid.
    pub argv: [u8; ARGV_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    /// The new process (child).
    pub task: TaskInfo,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// `task_struct.exit_code` as wait(2) would report it: (status << 8) | signal.
    pub exit_code: u32,
    pub _pad: u32,
}

// Pinned sizes: a change here must be made on purpose, on both sides.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<TaskInfo>() == 64);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 16 + 64 + 48 + FILENAME_LEN + ARGV_LEN);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 80);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 88);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::TaskInfo {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ForkEvent {}
    unsafe impl aya::Pod for super::ExitEvent {}
}
