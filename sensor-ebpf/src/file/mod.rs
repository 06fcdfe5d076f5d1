//! File telemetry on watched paths, filtered here so that activity outside
//! the watched set never reaches the ring buffer (model and maps:
//! `sensor_common::file`).
//!
//! Syscall tracepoints are the hooks every kernel has. Opens are decided at
//! exit on the file the kernel opened (its dentry, not the string: no
//! symlink or `..` tricks), by an exit program alone that reads the
//! arguments from the saved registers; path operations (unlink, rename, chmod, chown,
//! failed opens) are decided on the base directory's dentry plus the path
//! string, held in `PENDING` at entry and completed with the result at exit.
//!
//! - [`maps`]: the maps (the daemon fills or reads most of them) and the
//!   settings the programs read from them;
//! - [`loops`]: the `bpf_loop` plumbing the walks run on;
//! - [`walk`]: the walks themselves, up a dentry's ancestry and along a
//!   path string;
//! - [`watched`]: whether a file the kernel holds or a path a syscall names
//!   lies in the watched set, and the caches of directories' places in it;
//! - [`ops`]: the records of operations, and the entry programs of the path
//!   and fd operations with their common exit program;
//! - [`open`]: the open exit programs (syscall tracepoints, fexit) and the
//!   coalescing of repeated opens;
//! - [`exec`]: execs of watched files.

mod exec;
mod loops;
mod maps;
mod open;
mod ops;
mod walk;
mod watched;

use aya_ebpf::{EbpfContext as _, helpers::bpf_get_current_task, programs::TracePointContext};

pub(super) const AT_FDCWD: i32 = -100;

/// Syscall tracepoint records: `int __syscall_nr` at 8, then one 8-byte
/// slot per argument from 16; at exit `long ret` at 16 (the trace event ABI,
/// checked against the kernel's format files by a test in sensor-user).
#[inline(always)]
pub(super) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: a direct load inside the tracepoint record (the verifier
    // checks the constant offset); no helper call on the hot path.
    unsafe { *ctx.as_ptr().cast::<u64>().add(2 + n) }
}

#[inline(always)]
pub(super) fn current_task() -> *const u8 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}
