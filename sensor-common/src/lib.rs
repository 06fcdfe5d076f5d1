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
pub mod net;
pub mod offsets;
pub mod policy;

pub use event::*;
pub use net::*;
pub use offsets::KernelOffsets;
pub use policy::{
    ALLOW_ENTRIES, AllowEntry, DENY_ENTRIES, DenyParentKey, DenyUidKey, FileId, PolicyEvent,
    PolicyState, action, backend, mode, reason,
};

/// Indexes of the per-CPU `DROPS` counter array.
pub mod drop_reason {
    /// `bpf_ringbuf_reserve` on `PROCESS_EVENTS` failed (ring buffer full).
    pub const PROCESS_RINGBUF_FULL: u32 = 0;
    /// A kernel read needed for an event failed; the event went out partial.
    pub const KERNEL_READ_FAILED: u32 = 1;
    /// `bpf_ringbuf_reserve` on `NET_EVENTS` failed (2 is the file ring's).
    pub const NET_RINGBUF_FULL: u32 = 3;
    /// Number of counters in `DROPS`.
    pub const COUNT: u32 = 4;
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
    // network
    pub const NET_EVENTS: &str = "NET_EVENTS";
    pub const NET_SETTINGS: &str = "NET_SETTINGS";
    pub const NET_DNS_PORTS: &str = "NET_DNS_PORTS";
    pub const NET_EXCLUDE_REMOTE: &str = "NET_EXCLUDE_REMOTE";
    pub const NET_EXCLUDE_LPORT: &str = "NET_EXCLUDE_LPORT";
    pub const NET_EXCLUDE_EXE: &str = "NET_EXCLUDE_EXE";
    /// Network programs and the tracepoints (category, name) they attach to.
    pub const NET_TRACEPOINTS: [(&str, &str, &str); 7] = [
        ("net_sock_state", "sock", "inet_sock_set_state"),
        ("net_accept4", "syscalls", "sys_exit_accept4"),
        ("net_accept", "syscalls", "sys_exit_accept"),
        ("net_connect", "syscalls", "sys_enter_connect"),
        ("net_sendto", "syscalls", "sys_enter_sendto"),
        ("net_sendmsg", "syscalls", "sys_enter_sendmsg"),
        ("net_sendmmsg", "syscalls", "sys_enter_sendmmsg"),
    ];
}
