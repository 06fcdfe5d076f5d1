//! Types shared by the eBPF programs (`sensor-ebpf`) and the daemon
//! (`sensor-user`).
//!
//! Every type here is `#[repr(C)]` plain old data: the kernel side writes it
//! into a ring buffer or reads it from a global, and the user side reads the
//! same bytes back. Layouts are pinned by the size assertions at the bottom and
//! by `sensor-user`'s layout test, so a change on one side cannot silently
//! shift the other.
#![no_std]

pub mod event;
pub mod file;
pub mod isolation;
pub mod net;
pub mod offsets;
pub mod policy;
pub mod tamper;

pub use event::*;
pub use file::{
    FILE_CHAIN_LEN, FILE_MAX_DEPTH, FILE_NAME_LEN, FileEvent, FileRenameEvent, FileSettings,
    NO_ANCHOR, PATH_BY_IDENTITY, PATH_CHAIN_TRUNCATED, PATH_DEPTH_EXCEEDED, PATH_NAME_TRUNCATED,
    PATH_WATCHED, PathRecord, WatchEntry, file_op,
};
pub use isolation::{ISOLATION_ALLOW_ENTRIES, IsolationAllowKey, IsolationState, isolation_stat};
pub use net::*;
pub use offsets::KernelOffsets;
pub use policy::{
    ALLOW_ENTRIES, AllowEntry, DENY_ENTRIES, DenyParentKey, DenyUidKey, FileId, PolicyEvent,
    PolicyState, SCOPE_ENTRIES, SCOPE_MAX_LEVELS, action, backend, mode, reason,
};
pub use tamper::{
    GUARD_ENTRIES, TAMPER_PATH_LEN, TamperCallEvent, TamperSettings, bpf_cmd, guard_op, guarded,
    ptrace_request, tamper_call,
};

/// The `imm` of a kfunc call instruction to `bpf_rdonly_cast` as built:
/// aya does not resolve kfuncs, so the loader replaces it with the kernel's
/// BTF id of the function (or loads the programs that make no such call).
pub const KFUNC_PLACEHOLDER_RDONLY_CAST: u32 = 0x7ff0_cafe;

/// Indexes of the per-CPU `DROPS` counter array.
pub mod drop_reason {
    /// `bpf_ringbuf_reserve` on `PROCESS_EVENTS` failed (ring buffer full).
    pub const PROCESS_RINGBUF_FULL: u32 = 0;
    /// A kernel read needed for an event failed; the event went out partial.
    pub const KERNEL_READ_FAILED: u32 = 1;
    /// `bpf_ringbuf_reserve` on `FILE_EVENTS` failed, or a watched file
    /// operation could not be held until its syscall returned.
    pub const FILE_RINGBUF_FULL: u32 = 2;
    /// `bpf_ringbuf_reserve` on `NET_EVENTS` failed.
    pub const NET_RINGBUF_FULL: u32 = 3;
    /// A file created in a watched tree could not be added to
    /// `WATCHED_INODES` (full): its other names are not recognised.
    pub const FILE_IDENTITY_FULL: u32 = 4;
    /// The exec events among `PROCESS_RINGBUF_FULL`: lost execs counted
    /// apart from lost forks and exits, so a test (and the SOC) can tell
    /// that every exec arrived or was counted.
    pub const EXEC_RINGBUF_FULL: u32 = 5;
    /// Number of counters in `DROPS`.
    pub const COUNT: u32 = 6;
}

/// Names of maps and programs, shared so the loader cannot misspell them.
pub mod names {
    pub const PROCESS_EVENTS: &str = "PROCESS_EVENTS";
    pub const DROPS: &str = "DROPS";
    pub const OFFSETS: &str = "OFFSETS";
    pub const PROG_EXEC: &str = "sched_process_exec";
    pub const PROG_FORK: &str = "sched_process_fork";
    pub const PROG_EXIT: &str = "sched_process_exit";
    pub const PROG_EXEC_VERDICT: &str = "exec_verdict";
    pub const PROG_EXEC_VERDICT_LSM: &str = "exec_verdict_lsm";
    pub const LSM_VERDICT_RUNS: &str = "LSM_VERDICT_RUNS";
    pub const ALLOW_A: &str = "ALLOW_A";
    pub const ALLOW_B: &str = "ALLOW_B";
    pub const POLICY_STATE: &str = "POLICY_STATE";
    pub const POLICY_SCOPE: &str = "POLICY_SCOPE";
    pub const DENY_PARENT_A: &str = "DENY_PARENT_A";
    pub const DENY_PARENT_B: &str = "DENY_PARENT_B";
    pub const DENY_UID_A: &str = "DENY_UID_A";
    pub const DENY_UID_B: &str = "DENY_UID_B";
    pub const FILE_EVENTS: &str = "FILE_EVENTS";
    pub const WATCHED: &str = "WATCHED";
    pub const WATCH_PREFIXES: &str = "WATCH_PREFIXES";
    pub const WATCH_EXCLUDED_EXES: &str = "WATCH_EXCLUDED_EXES";
    pub const FILE_SETTINGS: &str = "FILE_SETTINGS";
    /// Set once `lsm/file_open` reports successful opens.
    pub const FILE_OPEN_LSM: &str = "FILE_OPEN_LSM";
    /// `lsm/file_open`: every open that reaches a file (BPF-LSM kernels).
    pub const PROG_FILE_OPEN_LSM: (&str, &str) = ("file_open_lsm", "file_open");
    pub const WATCHED_INO_BITS: &str = "WATCHED_INO_BITS";
    pub const OPEN_REPEATS: &str = "OPEN_REPEATS";
    pub const OPEN_REPEAT_GEN: &str = "OPEN_REPEAT_GEN";
    pub const WATCHED_INODES: &str = "WATCHED_INODES";
    pub const WATCHED_INODE_BITS: &str = "WATCHED_INODE_BITS";
    /// The syscall-entry programs of path operations, with the tracepoint
    /// (`syscalls:<name>`) each one attaches to.
    pub const FILE_ENTER_PROGRAMS: &[(&str, &str)] = &[
        ("file_enter_unlink", "sys_enter_unlink"),
        ("file_enter_unlinkat", "sys_enter_unlinkat"),
        ("file_enter_rmdir", "sys_enter_rmdir"),
        ("file_enter_rename", "sys_enter_rename"),
        ("file_enter_renameat", "sys_enter_renameat"),
        ("file_enter_renameat2", "sys_enter_renameat2"),
        ("file_enter_chmod", "sys_enter_chmod"),
        ("file_enter_fchmod", "sys_enter_fchmod"),
        ("file_enter_fchmodat", "sys_enter_fchmodat"),
        ("file_enter_fchmodat2", "sys_enter_fchmodat2"),
        ("file_enter_chown", "sys_enter_chown"),
        ("file_enter_lchown", "sys_enter_lchown"),
        ("file_enter_fchown", "sys_enter_fchown"),
        ("file_enter_fchownat", "sys_enter_fchownat"),
        ("file_enter_link", "sys_enter_link"),
        ("file_enter_linkat", "sys_enter_linkat"),
    ];
    /// Opens, decided at exit alone (on the file the kernel opened), one
    /// program per argument layout, with its tracepoint.
    pub const FILE_EXIT_OPEN_PROGRAMS: &[(&str, &str)] = &[
        ("file_exit_openat", "sys_exit_openat"),
        ("file_exit_openat2", "sys_exit_openat2"),
        ("file_exit_open", "sys_exit_open"),
        ("file_exit_creat", "sys_exit_creat"),
    ];
    /// The same open programs reading file fields by plain loads, for
    /// kernels with `bpf_rdonly_cast` (same order and tracepoints).
    pub const FILE_EXIT_OPEN_TYPED_PROGRAMS: &[(&str, &str)] = &[
        ("file_exit_openat_typed", "sys_exit_openat"),
        ("file_exit_openat2_typed", "sys_exit_openat2"),
        ("file_exit_open_typed", "sys_exit_open"),
        ("file_exit_creat_typed", "sys_exit_creat"),
    ];
    /// Opens decided by `fexit` on this kernel function instead of the open
    /// syscalls' exit tracepoints, where trampolines are allowed.
    pub const PROG_FILE_FILP_OPEN: &str = "file_filp_open";
    pub const FILP_OPEN_FUNCTION: &str = "do_filp_open";
    /// Finishes a path operation decided at entry (adds the result).
    pub const PROG_FILE_EXIT_PENDING: &str = "file_exit_pending";
    pub const FILE_EXIT_PENDING_TRACEPOINTS: &[&str] = &[
        "sys_exit_unlink",
        "sys_exit_unlinkat",
        "sys_exit_rmdir",
        "sys_exit_rename",
        "sys_exit_renameat",
        "sys_exit_renameat2",
        "sys_exit_chmod",
        "sys_exit_fchmod",
        "sys_exit_fchmodat",
        "sys_exit_fchmodat2",
        "sys_exit_chown",
        "sys_exit_lchown",
        "sys_exit_fchown",
        "sys_exit_fchownat",
        "sys_exit_link",
        "sys_exit_linkat",
    ];
    /// Opens by file handle (`open_by_handle_at`), decided at exit on the
    /// opened file: attached whichever open hook is in use (fexit on
    /// `do_filp_open` does not see them), helper-read and typed builds.
    pub const FILE_EXIT_BY_HANDLE: (&str, &str) =
        ("file_exit_open_by_handle_at", "sys_exit_open_by_handle_at");
    pub const FILE_EXIT_BY_HANDLE_TYPED: (&str, &str) = (
        "file_exit_open_by_handle_at_typed",
        "sys_exit_open_by_handle_at",
    );
    /// io_uring instances made (`file_op::IO_URING_SETUP`).
    pub const FILE_IO_URING_SETUP: (&str, &str) =
        ("file_exit_io_uring_setup", "sys_exit_io_uring_setup");
    /// Exec of a watched file (raw tracepoint `sched_process_exec`).
    pub const PROG_FILE_EXEC: &str = "file_exec";
    // network
    pub const NET_EVENTS: &str = "NET_EVENTS";
    pub const NET_SETTINGS: &str = "NET_SETTINGS";
    pub const NET_DNS_PORTS: &str = "NET_DNS_PORTS";
    pub const NET_EXCLUDE_REMOTE: &str = "NET_EXCLUDE_REMOTE";
    pub const NET_EXCLUDE_LPORT: &str = "NET_EXCLUDE_LPORT";
    pub const NET_EXCLUDE_EXE: &str = "NET_EXCLUDE_EXE";
    /// The TCP state program and its raw tracepoint (arguments: the
    /// kernel's `sock` and the two states; no record is built).
    pub const NET_SOCK_STATE: (&str, &str) = ("net_sock_state", "inet_sock_set_state");
    /// The other network programs and the tracepoints (category, name) they
    /// attach to.
    pub const NET_TRACEPOINTS: [(&str, &str, &str); 6] = [
        ("net_accept4", "syscalls", "sys_exit_accept4"),
        ("net_accept", "syscalls", "sys_exit_accept"),
        ("net_connect", "syscalls", "sys_enter_connect"),
        ("net_sendto", "syscalls", "sys_enter_sendto"),
        ("net_sendmsg", "syscalls", "sys_enter_sendmsg"),
        ("net_sendmmsg", "syscalls", "sys_enter_sendmmsg"),
    ];
    /// BPF-LSM socket programs reporting io_uring's UDP sends and connects
    /// (they act only in io_uring's contexts), with their hooks.
    pub const NET_IO_URING_LSM: [(&str, &str); 2] = [
        ("net_io_uring_sendmsg", "socket_sendmsg"),
        ("net_io_uring_connect", "socket_connect"),
    ];
    pub const ISOLATION_STATE: &str = "ISOLATION_STATE";
    pub const ISOLATION_ALLOW: &str = "ISOLATION_ALLOW";
    pub const ISOLATION_STATS: &str = "ISOLATION_STATS";
    pub const PROG_ISOLATE_INGRESS: &str = "isolate_ingress";
    pub const PROG_ISOLATE_EGRESS: &str = "isolate_egress";
    pub const PROG_ISOLATE_INGRESS_L3: &str = "isolate_ingress_l3";
    pub const PROG_ISOLATE_EGRESS_L3: &str = "isolate_egress_l3";
    /// `rxsentry-probe --hold-open-hook`: a program that only counts its
    /// runs (per CPU, in `HOOK_FLOOR_RUNS`), on the tracepoint the sensor
    /// decides `openat` on.
    pub const HOOK_FLOOR: (&str, &str, &str) =
        ("hook_floor_open_exit", "syscalls", "sys_exit_openat");
    pub const HOOK_FLOOR_RUNS: &str = "HOOK_FLOOR_RUNS";
    // self-protection
    pub const TAMPER_SETTINGS: &str = "TAMPER_SETTINGS";
    /// BPF-LSM `ptrace_access_check`: refuses attach rights over the sensor.
    pub const PROG_TAMPER_PTRACE_LSM: (&str, &str) = ("tamper_ptrace_lsm", "ptrace_access_check");
    /// The write guard's maps: guarded identities, and whether it is armed.
    pub const WRITE_GUARD: &str = "WRITE_GUARD";
    pub const WRITE_GUARD_ARMED: &str = "WRITE_GUARD_ARMED";
    /// The write guard's BPF-LSM programs and their hooks (the `path_*`
    /// hooks need `CONFIG_SECURITY_PATH`, which Debian's kernels have).
    pub const WRITE_GUARD_LSM: [(&str, &str); 11] = [
        ("guard_file_open", "file_open"),
        ("guard_path_truncate", "path_truncate"),
        ("guard_path_unlink", "path_unlink"),
        ("guard_path_rmdir", "path_rmdir"),
        ("guard_path_rename", "path_rename"),
        ("guard_path_link", "path_link"),
        ("guard_path_chmod", "path_chmod"),
        ("guard_path_chown", "path_chown"),
        ("guard_path_mknod", "path_mknod"),
        ("guard_path_mkdir", "path_mkdir"),
        ("guard_path_symlink", "path_symlink"),
    ];
    /// The self-protection programs and the syscall tracepoints they
    /// attach to (`syscalls:<name>`).
    pub const TAMPER_TRACEPOINTS: [(&str, &str); 4] = [
        ("tamper_enter_bpf", "sys_enter_bpf"),
        ("tamper_enter_ptrace", "sys_enter_ptrace"),
        ("tamper_enter_vm_readv", "sys_enter_process_vm_readv"),
        ("tamper_enter_vm_writev", "sys_enter_process_vm_writev"),
    ];
}
