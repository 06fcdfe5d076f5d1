//! Application allowlisting: the maps the daemon fills and the kernel reads
//! to decide on every exec, and the record it emits for each block.
//!
//! The verdict is keyed by file identity (device, inode) and guarded by the
//! inode's size, mtime and ctime as they were when the daemon hashed the
//! file: any write, truncate, chmod or utimes changes ctime, so a modified
//! allowlisted binary loses trust until it is hashed again.

use crate::{EventHeader, FILENAME_LEN, TaskInfo};

/// Entries of each allowlist map: the most files one policy can allow.
pub const ALLOW_ENTRIES: u32 = 65536;

/// Key of the allowlist maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Kernel dev_t encoding (major << 20 | minor) of `inode->i_sb->s_dev`.
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Key of `DENY_PARENT_*`: an allowlisted program denied when its parent
/// process runs `parent` (e.g. no shell spawned by the POS app).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyParentKey {
    pub program: FileId,
    pub parent: FileId,
}

/// Key of `DENY_UID_*`: an allowlisted program denied for one user.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DenyUidKey {
    pub program: FileId,
    pub uid: u32,
    pub _pad: u32,
}

/// Entries of each deny-context map.
pub const DENY_ENTRIES: u32 = 4096;

/// Entries of `POLICY_SCOPE`: the most cgroups one policy can scope to.
pub const SCOPE_ENTRIES: u32 = 1024;

/// What the daemon hashed; the kernel trusts the file only while these match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    pub size: u64,
    pub mtime_sec: i64,
    pub ctime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
    /// Index of the policy rule that allowed it (for reports).
    pub rule: u32,
    pub _pad: u32,
}

/// `PolicyState::mode`.
pub mod mode {
    /// No policy loaded: every exec is allowed, nothing is reported.
    pub const OFF: u32 = 0;
    /// Report would-block, never block.
    pub const MONITOR: u32 = 1;
    /// Kill before the first instruction and report.
    pub const ENFORCE: u32 = 2;
}

/// Single entry of the `POLICY_STATE` array: which allowlist map is live.
/// The daemon fills the inactive map completely, then flips `active` with
/// one map update, so there is never a moment without a policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// 0: `ALLOW_A` is live, 1: `ALLOW_B`.
    pub active: u32,
    /// A `mode::*` value.
    pub mode: u32,
    /// Incremented by the daemon at each policy swap; copied into events.
    pub generation: u64,
    /// Non-zero: only tasks whose cgroup, or one of its ancestors, is in
    /// `POLICY_SCOPE` are checked (see [`SCOPE_MAX_LEVELS`]).
    pub scoped: u32,
    pub _pad: u32,
}

/// The depth the scope check walks: a task whose cgroup is this many levels
/// below the cgroup v2 root or more (the root is level 0,
/// `/kiosk.slice/pos.service` level 2) is checked as in scope whatever its
/// ancestors: a scoped policy fails closed, never open, for a deep
/// sub-cgroup made to escape it.
pub const SCOPE_MAX_LEVELS: u32 = 32;

/// `PolicyEvent::action`.
pub mod action {
    pub const BLOCKED: u32 = 1;
    pub const WOULD_BLOCK: u32 = 2;
}

/// `PolicyEvent::reason`.
pub mod reason {
    /// The file is not in the allowlist.
    pub const NOT_ALLOWED: u32 = 1;
    /// The file is allowlisted but changed since it was hashed.
    pub const MODIFIED: u32 = 2;
    /// Allowlisted, but denied for this parent program or user.
    pub const DENIED_CONTEXT: u32 = 3;
}

/// `PolicyEvent::backend`.
pub mod backend {
    /// BPF-LSM `bprm_check_security` returning -EPERM.
    pub const LSM: u32 = 1;
    /// Tracepoint at exec + `bpf_send_signal(SIGKILL)`.
    pub const TRACEPOINT_SIGKILL: u32 = 2;
}

/// A block or would-block, sent on `PROCESS_EVENTS` with kind `Policy`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PolicyEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    pub file: FileId,
    pub action: u32,
    pub reason: u32,
    pub backend: u32,
    /// `AllowEntry::rule` for `MODIFIED`, the deny rule for
    /// `DENIED_CONTEXT`, else u32::MAX.
    pub rule: u32,
    pub generation: u64,
    pub filename: [u8; FILENAME_LEN],
}

const _: () = assert!(core::mem::size_of::<FileId>() == 16);
const _: () = assert!(core::mem::size_of::<DenyParentKey>() == 32);
const _: () = assert!(core::mem::size_of::<DenyUidKey>() == 24);
const _: () = assert!(core::mem::size_of::<AllowEntry>() == 40);
const _: () = assert!(core::mem::size_of::<PolicyState>() == 24);
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 16 + 64 + 16 + 16 + 8 + FILENAME_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::FileId {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::PolicyState {}
    unsafe impl aya::Pod for super::PolicyEvent {}
    unsafe impl aya::Pod for super::DenyParentKey {}
    unsafe impl aya::Pod for super::DenyUidKey {}
}
