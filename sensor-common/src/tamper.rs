//! Calls by other processes that can reach rxsentry's kernel objects or its
//! process: the kernel reports them as they are made, the daemon decides
//! whether they touched what is its own (only it knows its object ids and
//! pin paths) and reports a tamper event if so.

use crate::{EventHeader, TaskInfo};

/// Bytes kept of an `BPF_OBJ_GET` path, NUL included.
pub const TAMPER_PATH_LEN: usize = 256;

/// `TamperCallEvent::call`: which syscall.
pub mod tamper_call {
    /// `bpf(cmd, attr)`: `op` is the command, `target` the object id (the
    /// `*_GET_FD_BY_ID` commands) and `path` the pin (`BPF_OBJ_GET`).
    pub const BPF: u32 = 1;
    /// `ptrace(request, pid)`: `op` is the request (attach or seize only),
    /// `target` the thread id.
    pub const PTRACE: u32 = 2;
    /// `process_vm_readv(pid, ...)`: `target` the process id.
    pub const VM_READ: u32 = 3;
    /// `process_vm_writev(pid, ...)`: `target` the process id.
    pub const VM_WRITE: u32 = 4;
    /// A change to a guarded file refused by the BPF-LSM write guard: `op`
    /// is a [`super::guard_op`] value, `file` the guarded identity that
    /// matched (the file, or the directory whose entries are guarded),
    /// `path` the name acted on.
    pub const WRITE_REFUSED: u32 = 5;
}

/// What the write guard refused (`TamperCallEvent::op` of
/// `tamper_call::WRITE_REFUSED`).
pub mod guard_op {
    pub const OPEN_FOR_WRITE: u32 = 1;
    pub const TRUNCATE: u32 = 2;
    pub const UNLINK: u32 = 3;
    pub const RMDIR: u32 = 4;
    pub const RENAME: u32 = 5;
    pub const LINK: u32 = 6;
    pub const CHMOD: u32 = 7;
    pub const CHOWN: u32 = 8;
    pub const CREATE: u32 = 9;
    pub const MKDIR: u32 = 10;
    pub const SYMLINK: u32 = 11;
}

/// `WRITE_GUARD` values: what a guarded identity covers.
pub mod guarded {
    /// The file or directory itself: no open for writing, truncate,
    /// rename, removal, chmod, chown or hard link by another process.
    pub const ITSELF: u8 = 1;
    /// A directory's entries: none is written, created, removed or renamed
    /// by another process.
    pub const ENTRIES: u8 = 2;
}

/// Capacity of `WRITE_GUARD` (the sensor's own files and directories).
pub const GUARD_ENTRIES: u32 = 64;

/// `bpf()` commands that hand out a file descriptor of an existing object:
/// every later map write, detach or program swap needs one (or an fd
/// inherited from the sensor itself, which takes ptrace rights).
pub mod bpf_cmd {
    pub const OBJ_GET: u32 = 7;
    pub const PROG_GET_FD_BY_ID: u32 = 13;
    pub const MAP_GET_FD_BY_ID: u32 = 14;
    pub const LINK_GET_FD_BY_ID: u32 = 30;
}

/// `ptrace` requests that start tracing a process.
pub mod ptrace_request {
    pub const ATTACH: u32 = 16;
    pub const SEIZE: u32 = 0x4206;
}

/// What the tamper programs need to know: set by the loader before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TamperSettings {
    /// Non-zero: report.
    pub enabled: u32,
    /// The sensor's own tgid: its calls are not reported.
    pub self_tgid: u32,
}

/// One call (`EventKind::TamperCall`) in `PROCESS_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TamperCallEvent {
    pub header: EventHeader,
    /// The caller.
    pub task: TaskInfo,
    /// A `tamper_call` value.
    pub call: u32,
    /// The bpf command or ptrace request.
    pub op: u32,
    /// Object id or target pid (see `tamper_call`).
    pub target: u64,
    /// (kernel dev_t, inode) of the caller's working directory, for a
    /// relative `BPF_OBJ_GET` path (the caller may be gone before the
    /// daemon could read its cwd from /proc); of the guarded file for
    /// `WRITE_REFUSED`.
    pub file: crate::FileId,
    /// `BPF_OBJ_GET`'s path as the caller wrote it (relative paths too);
    /// the name acted on for `WRITE_REFUSED`.
    pub path: [u8; TAMPER_PATH_LEN],
}

const _: () = assert!(core::mem::size_of::<TamperSettings>() == 8);
const _: () =
    assert!(core::mem::size_of::<TamperCallEvent>() == 16 + 64 + 16 + 16 + TAMPER_PATH_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays, no implicit padding.
    unsafe impl aya::Pod for super::TamperSettings {}
    unsafe impl aya::Pod for super::TamperCallEvent {}
}
