//! Process lifecycle: exec, fork (processes only), exit (last thread only).
//!
//! Raw tracepoints give the kernel's own objects (task_struct, linux_binprm),
//! so decisions and data come from the file being executed, not from syscall
//! arguments in user memory (no TOCTOU on the path).

use aya_ebpf::{
    helpers::generated::bpf_probe_read_user, macros::raw_tracepoint, programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use sensor_common::{
    ARGV_LEN, EVENT_PARTIAL, EXEC_ARGV_TRUNCATED, EXEC_FILENAME_TRUNCATED, EventKind, ExecEvent,
    ExitEvent, ForkEvent, KernelOffsets, drop_reason,
};

use crate::{
    kernel::{ReadFailed, header, read, read_exec_filename, read_exec_inode, read_ptr, read_task},
    maps::{count_drop, offsets, reserve_process_event, submit_process_event},
};

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> u32 {
    let Some(o) = offsets() else { return 0 };
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let Some(mut entry) = reserve_process_event::<ExecEvent>() else {
        // Also counted under PROCESS_RINGBUF_FULL, by the reserve.
        count_drop(drop_reason::EXEC_RINGBUF_FULL);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring buffer slot of size ExecEvent.
    unsafe {
        (*ev).header = header(EventKind::Exec as u32);
        let mut partial = read_task(&mut (*ev).task, task, o).is_err();
        (*ev).dev = 0;
        (*ev).ino = 0;
        (*ev).size = 0;
        (*ev).mtime_sec = 0;
        (*ev).mtime_nsec = 0;
        (*ev).ctime_nsec = 0;
        (*ev).ctime_sec = 0;
        (*ev).argv_len = 0;
        partial |= read_exec_file(&mut *ev, bprm, o).is_err();
        match read_argv(&mut *ev, task, o) {
            Ok(true) => (*ev).header.flags |= EXEC_ARGV_TRUNCATED,
            Ok(false) => {}
            Err(ReadFailed) => partial = true,
        }
        if partial {
            (*ev).header.flags |= EVENT_PARTIAL;
            count_drop(drop_reason::KERNEL_READ_FAILED);
            warn!(
                &ctx,
                "exec of tgid {} sent partial: a kernel read failed",
                (*ev).task.tgid
            );
        }
    }
    submit_process_event(entry);
    0
}

/// Filename and inode identity of the file being executed.
#[inline(always)]
fn read_exec_file(
    ev: &mut ExecEvent,
    bprm: *const u8,
    o: &KernelOffsets,
) -> Result<(), ReadFailed> {
    if read_exec_filename(&mut ev.filename, bprm, o)? {
        ev.header.flags |= EXEC_FILENAME_TRUNCATED;
    }
    let inode = read_exec_inode(bprm, o)?;
    ev.dev = inode.dev;
    ev.ino = inode.ino;
    ev.size = inode.size;
    ev.mtime_sec = inode.mtime_sec;
    ev.mtime_nsec = inode.mtime_nsec;
    ev.ctime_sec = inode.ctime_sec;
    ev.ctime_nsec = inode.ctime_nsec;
    Ok(())
}

/// Copies the new image's argv block (already on its stack); true if cut.
#[inline(always)]
fn read_argv(ev: &mut ExecEvent, task: *const u8, o: &KernelOffsets) -> Result<bool, ReadFailed> {
    let mm = read_ptr(task, o.task_mm)?;
    let start = read::<u64>(mm, o.mm_arg_start)?;
    let end = read::<u64>(mm, o.mm_arg_end)?;
    let len = end.saturating_sub(start) as usize;
    let truncated = len > ARGV_LEN;
    // A constant size, or one masked below ARGV_LEN, so the verifier can bound it.
    let size = if truncated || len == ARGV_LEN {
        ARGV_LEN
    } else {
        len & (ARGV_LEN - 1)
    };
    // SAFETY: writes at most ARGV_LEN bytes into the fixed-size argv array.
    let ret = unsafe {
        bpf_probe_read_user(
            ev.argv.as_mut_ptr().cast(),
            size as u32,
            start as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        return Err(ReadFailed);
    }
    ev.argv_len = size as u32;
    Ok(truncated)
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> u32 {
    let Some(o) = offsets() else { return 0 };
    let child: *const u8 = ctx.arg(1);
    // Threads share the parent's tgid: only new processes are events.
    match (
        read::<u32>(child, o.task_pid),
        read::<u32>(child, o.task_tgid),
    ) {
        (Ok(pid), Ok(tgid)) if pid == tgid => {}
        _ => return 0,
    }
    let Some(mut entry) = reserve_process_event::<ForkEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring buffer slot of size ForkEvent.
    unsafe {
        (*ev).header = header(EventKind::Fork as u32);
        if read_task(&mut (*ev).task, child, o).is_err() {
            (*ev).header.flags |= EVENT_PARTIAL;
            count_drop(drop_reason::KERNEL_READ_FAILED);
        }
    }
    submit_process_event(entry);
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: fires for every thread;
/// the process is gone when `signal->live` has dropped to zero.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> u32 {
    let Some(o) = offsets() else { return 0 };
    let task: *const u8 = ctx.arg(0);
    let live = read_ptr(task, o.task_signal).and_then(|s| read::<i32>(s, o.signal_live));
    if !matches!(live, Ok(0)) {
        return 0;
    }
    let Some(mut entry) = reserve_process_event::<ExitEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points into the reserved ring buffer slot of size ExitEvent.
    unsafe {
        (*ev).header = header(EventKind::Exit as u32);
        (*ev)._pad = 0;
        let mut partial = read_task(&mut (*ev).task, task, o).is_err();
        match read::<u32>(task, o.task_exit_code) {
            Ok(code) => (*ev).exit_code = code,
            Err(ReadFailed) => {
                (*ev).exit_code = 0;
                partial = true;
            }
        }
        if partial {
            (*ev).header.flags |= EVENT_PARTIAL;
            count_drop(drop_reason::KERNEL_READ_FAILED);
        }
    }
    submit_process_event(entry);
    0
}
