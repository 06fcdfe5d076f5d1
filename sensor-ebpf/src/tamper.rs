//! Self-protection: `bpf()` commands that hand out a descriptor of an
//! existing object, and `ptrace`/`process_vm_*` calls, made by any process
//! but the sensor. Each is reported raw; the daemon keeps those that reach
//! its own objects or process (it alone knows its ids and pins). These are
//! rare calls on a kiosk: nothing is filtered here beyond the command.
//!
//! Arguments are read at syscall entry from the caller's memory: a caller
//! that rewrites them from another thread can race the kernel's copy
//! (docs/security.md says so; BPF-LSM kernels check the kernel's copy).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use sensor_common::{
    EventKind, FileId, KernelOffsets, TamperCallEvent, TamperSettings, bpf_cmd, ptrace_request,
    tamper_call,
};

use crate::{
    kernel::{Probe, args, header, read, read_current_task, read_dentry_id, read_fs_dentry},
    maps::{offsets, reserve_process_event, submit_process_event},
};

/// Filled by the loader before load; zero (off) otherwise.
#[unsafe(no_mangle)]
static TAMPER_SETTINGS: TamperSettings = unsafe { core::mem::zeroed() };

/// Whether calls are reported now and the caller is not the sensor.
#[inline(always)]
pub fn reporting() -> bool {
    // SAFETY: plain read of a read-only global (volatile: see maps::offsets).
    let s = unsafe { core::ptr::read_volatile(&TAMPER_SETTINGS) };
    s.enabled != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 != s.self_tgid
}

/// Sends one call; `fill` writes its `path` and `file` (both start empty).
#[inline(always)]
pub fn report_with(
    call: u32,
    op: u32,
    target: u64,
    fill: impl FnOnce(&mut TamperCallEvent, &KernelOffsets),
) {
    let Some(o) = offsets() else { return };
    let Some(mut entry) = reserve_process_event::<TamperCallEvent>() else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved slot of size TamperCallEvent;
    // every field is written before submit.
    unsafe {
        (*ev).header = header(EventKind::TamperCall as u32);
        read_current_task(&mut (*ev).task, o);
        (*ev).call = call;
        (*ev).op = op;
        (*ev).target = target;
        (*ev).file = FileId::default();
        (*ev).path[0] = 0;
        fill(&mut *ev, o);
    }
    submit_process_event(entry);
}

/// Sends one call; `path` is read from user memory at `path_ptr` when set.
#[inline(always)]
fn report(call: u32, op: u32, target: u64, path_ptr: u64) {
    if path_ptr == 0 {
        return report_with(call, op, target, |_, _| {});
    }
    report_with(call, op, target, |ev, o| {
        // SAFETY: a user string read into a fixed-size array; fails cleanly.
        if unsafe { bpf_probe_read_user_str_bytes(path_ptr as *const u8, &mut ev.path) }.is_err() {
            ev.path[0] = 0;
        }
        // A relative name is the working directory's: kept by identity.
        if ev.path[0] != b'/' {
            // SAFETY: helper without preconditions.
            let task = unsafe { bpf_get_current_task() } as *const u8;
            if let Ok(id) =
                read_fs_dentry(task, false, o).and_then(|dentry| read_dentry_id::<Probe>(dentry, o))
            {
                ev.file = id;
            }
        }
    });
}

/// `bpf(cmd, attr, size)`.
#[tracepoint]
pub fn tamper_enter_bpf(ctx: TracePointContext) -> u32 {
    if !reporting() {
        return 0;
    }
    let Some(o) = offsets() else { return 0 };
    let Ok([cmd, attr]) = args::<2>(&ctx, o) else {
        return 0;
    };
    let cmd = cmd as u32;
    match cmd {
        // `attr.pathname` (the first field) names the pin.
        bpf_cmd::OBJ_GET => {
            // SAFETY: a user read that fails cleanly.
            let path = unsafe { bpf_probe_read_user(attr as *const u64) }.unwrap_or(0);
            report(tamper_call::BPF, cmd, 0, path);
        }
        // The id is the first field of `attr`.
        bpf_cmd::PROG_GET_FD_BY_ID | bpf_cmd::MAP_GET_FD_BY_ID | bpf_cmd::LINK_GET_FD_BY_ID => {
            // SAFETY: a user read that fails cleanly.
            let id = unsafe { bpf_probe_read_user(attr as *const u32) }.unwrap_or(0);
            report(tamper_call::BPF, cmd, u64::from(id), 0);
        }
        _ => {}
    }
    0
}

/// `ptrace(request, pid, ...)`: only the requests that start tracing.
#[tracepoint]
pub fn tamper_enter_ptrace(ctx: TracePointContext) -> u32 {
    if !reporting() {
        return 0;
    }
    let Some(o) = offsets() else { return 0 };
    let Ok([request, pid]) = args::<2>(&ctx, o) else {
        return 0;
    };
    let request = request as u32;
    if request == ptrace_request::ATTACH || request == ptrace_request::SEIZE {
        report(tamper_call::PTRACE, request, pid, 0);
    }
    0
}

/// `process_vm_{readv,writev}(pid, ...)`, one program per syscall.
macro_rules! vm_program {
    ($name:ident, $call:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            if !reporting() {
                return 0;
            }
            let Some(o) = offsets() else { return 0 };
            if let Ok([pid]) = args::<1>(&ctx, o) {
                report($call, 0, pid, 0);
            }
            0
        }
    };
}

vm_program!(tamper_enter_vm_readv, tamper_call::VM_READ);
vm_program!(tamper_enter_vm_writev, tamper_call::VM_WRITE);

/// `PTRACE_MODE_ATTACH`: the access ptrace attach, `process_vm_*`,
/// `pidfd_getfd` and opening `/proc/<pid>/mem` ask for (reads of most
/// other /proc files ask for `PTRACE_MODE_READ` and are left alone).
const PTRACE_MODE_ATTACH: u32 = 0x02;
pub const EPERM: i32 = 1;

/// BPF-LSM `ptrace_access_check(child, mode)`: no other process gets
/// attach rights over the sensor, root included. Attached only where
/// BPF-LSM runs; the tracepoints above report the attempt either way.
#[lsm(hook = "ptrace_access_check")]
pub fn tamper_ptrace_lsm(ctx: LsmContext) -> i32 {
    // An earlier program's refusal stands.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        return previous;
    }
    let mode: u32 = ctx.arg(1);
    if mode & PTRACE_MODE_ATTACH == 0 || !reporting() {
        return 0;
    }
    let Some(o) = offsets() else { return 0 };
    let child: *const u8 = ctx.arg(0);
    // SAFETY: a plain read of a read-only global.
    let sensor = unsafe { core::ptr::read_volatile(&TAMPER_SETTINGS) }.self_tgid;
    match read::<u32>(child, o.task_tgid) {
        Ok(tgid) if tgid == sensor => -EPERM,
        _ => 0,
    }
}
