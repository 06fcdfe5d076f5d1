//! Execs of watched files.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use sensor_common::{EventKind, drop_reason, file_op};

use super::{
    maps::{FILE_EVENTS, active, excluded_exe, scratch},
    ops::{OpArgs, begin, set_target},
    watched::match_dentry,
};
use crate::{
    kernel::{Probe, read_file_dentry, read_ptr},
    maps::{offsets, output_event},
};

/// `sched_process_exec`: the program being run lies in a watched tree.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn file_exec(ctx: RawTracePointContext) -> u32 {
    if active().is_none() {
        return 0;
    }
    let Some(o) = offsets() else { return 0 };
    let task: *const u8 = ctx.arg(0);
    let bprm: *const u8 = ctx.arg(2);
    let Ok(dentry) = read_ptr(bprm, o.bprm_file).and_then(|f| read_file_dentry::<Probe>(f, o))
    else {
        return 0;
    };
    let Some(ev) = scratch() else { return 0 };
    if !match_dentry(&mut ev.file.path, dentry, file_op::EXEC) || excluded_exe(task, o) {
        return 0;
    }
    begin(
        &mut ev.file,
        EventKind::File,
        task,
        file_op::EXEC,
        &OpArgs::NONE,
        o,
    );
    set_target(&mut ev.file, dentry, o);
    output_event(&FILE_EVENTS, &ev.file, drop_reason::FILE_RINGBUF_FULL);
    0
}
