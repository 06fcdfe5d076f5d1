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
pub mod isolation;
pub mod offsets;
pub mod policy;

pub use event::*;
pub use isolation::{ISOLATION_ALLOW_ENTRIES, IsolationAllowKey, IsolationState, isolation_stat};
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
    /// Number of counters in `DROPS`.
    pub const COUNT: u32 = 2;
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
    pub const ISOLATION_STATE: &str = "ISOLATION_STATE";
    pub const ISOLATION_ALLOW: &str = "ISOLATION_ALLOW";
    pub const ISOLATION_STATS: &str = "ISOLATION_STATS";
    pub const PROG_ISOLATE_INGRESS: &str = "isolate_ingress";
    pub const PROG_ISOLATE_EGRESS: &str = "isolate_egress";
    pub const PROG_ISOLATE_INGRESS_L3: &str = "isolate_ingress_l3";
    pub const PROG_ISOLATE_EGRESS_L3: &str = "isolate_egress_l3";
}
