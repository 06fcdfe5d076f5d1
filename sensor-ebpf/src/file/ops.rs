//! The record of an operation on a watched file, and the programs of the
//! path and fd operations (unlink, rename, chmod, chown): an entry program
//! per syscall holds the matched record in `PENDING`, and one exit program
//! adds the result and sends it.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use sensor_common::{
    EVENT_PARTIAL, EventKind, FileEvent, FileRenameEvent, KernelOffsets, drop_reason, file_op,
};

use super::{
    AT_FDCWD, arg, current_task,
    maps::{FILE_EVENTS, PENDING, WATCHED_RENAMES, active, excluded_exe, scratch},
    watched::{match_dentry, match_path},
};
use crate::{
    kernel::{Probe, header, read_dentry_id, read_fd_dentry, read_task},
    maps::{count_drop, offsets, output_event},
};

const UNCHANGED: u32 = u32::MAX;
/// unlinkat(2)'s flag for a directory.
const AT_REMOVEDIR: u32 = 0x200;
/// fchownat(2)'s flag for a symbolic link itself.
const AT_SYMLINK_NOFOLLOW: u32 = 0x100;

/// Fills the header, the task and the operation's arguments of a record
/// whose path already matched.
#[inline(always)]
pub(super) fn begin(
    ev: &mut FileEvent,
    kind: EventKind,
    task: *const u8,
    op: u32,
    args: &OpArgs,
    o: &KernelOffsets,
) {
    ev.header = header(kind as u32);
    if read_task(&mut ev.task, task, o).is_err() {
        ev.header.flags |= EVENT_PARTIAL;
        count_drop(drop_reason::KERNEL_READ_FAILED);
    }
    ev.op = op;
    ev.flags = args.flags;
    ev.result = 0;
    ev.mode = args.mode;
    ev.uid = args.uid;
    ev.gid = args.gid;
    ev.dev = 0;
    ev.ino = 0;
}

/// Arguments of an operation other than its path(s).
pub(super) struct OpArgs {
    flags: u32,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl OpArgs {
    pub(super) const NONE: Self = Self::flags(0);

    const fn flags(flags: u32) -> Self {
        Self {
            flags,
            mode: 0,
            uid: UNCHANGED,
            gid: UNCHANGED,
        }
    }

    pub(super) const fn mode(flags: u32, mode: u32) -> Self {
        Self {
            flags,
            mode,
            uid: UNCHANGED,
            gid: UNCHANGED,
        }
    }

    const fn owner(flags: u32, uid: u32, gid: u32) -> Self {
        Self {
            flags,
            mode: 0,
            uid,
            gid,
        }
    }
}

/// Records the inode identity of the file `dentry` names.
#[inline(always)]
pub(super) fn set_target(ev: &mut FileEvent, dentry: *const u8, o: &KernelOffsets) {
    if let Ok(id) = read_dentry_id::<Probe>(dentry, o) {
        ev.dev = id.dev;
        ev.ino = id.ino;
    }
}

/// Holds a watched path operation until its syscall returns, or forgets
/// whatever this thread left behind (a syscall whose exit never came), so a
/// stale record can never take the next result.
#[inline(always)]
fn hold(ev: Option<&FileRenameEvent>) {
    let key = bpf_get_current_pid_tgid();
    match ev {
        Some(ev) => {
            if PENDING.insert(key, ev, 0).is_err() {
                count_drop(drop_reason::FILE_RINGBUF_FULL);
            }
        }
        None => _ = PENDING.remove(key),
    }
}

/// Entry of a syscall naming one path (`dfd`, `path`).
#[inline(always)]
fn path_op(op: u32, dfd: i32, path: u64, args: OpArgs) {
    if active().is_none() {
        return;
    }
    let (Some(o), Some(ev)) = (offsets(), scratch()) else {
        return;
    };
    let task = current_task();
    if !match_path(&mut ev.file.path, task, dfd, path, op, o) || excluded_exe(task, o) {
        return hold(None);
    }
    begin(&mut ev.file, EventKind::File, task, op, &args, o);
    hold(Some(ev));
}

/// Entry of a syscall acting on an open file descriptor.
#[inline(always)]
fn fd_op(op: u32, fd: u64, args: OpArgs) {
    if active().is_none() {
        return;
    }
    let (Some(o), Some(ev)) = (offsets(), scratch()) else {
        return;
    };
    let task = current_task();
    let Ok(dentry) = read_fd_dentry::<Probe>(fd as u32, o) else {
        return hold(None);
    };
    if !match_dentry(&mut ev.file.path, dentry, op) || excluded_exe(task, o) {
        return hold(None);
    }
    begin(&mut ev.file, EventKind::File, task, op, &args, o);
    set_target(&mut ev.file, dentry, o);
    hold(Some(ev));
}

/// Entry of rename, renameat, renameat2 (`op` RENAME) and link, linkat
/// (`op` LINK: the existing name, then the new one): reported when either
/// side is watched.
#[inline(always)]
fn rename_op(op: u32, old_dfd: i32, old: u64, new_dfd: i32, new: u64, flags: u32) {
    if active().is_none() {
        return;
    }
    let (Some(o), Some(ev)) = (offsets(), scratch()) else {
        return;
    };
    let task = current_task();
    let old_watched = match_path(&mut ev.file.path, task, old_dfd, old, op, o);
    let new_watched = match_path(&mut ev.new_path, task, new_dfd, new, op, o);
    if !(old_watched || new_watched) || excluded_exe(task, o) {
        return hold(None);
    }
    let args = OpArgs::flags(flags);
    begin(&mut ev.file, EventKind::FileRename, task, op, &args, o);
    hold(Some(ev));
}

macro_rules! enter_program {
    ($name:ident, |$ctx:ident| $body:expr) => {
        #[tracepoint]
        pub fn $name($ctx: TracePointContext) -> u32 {
            $body;
            0
        }
    };
}

enter_program!(file_enter_unlink, |ctx| path_op(
    file_op::UNLINK,
    AT_FDCWD,
    arg(&ctx, 0),
    OpArgs::NONE
));
enter_program!(file_enter_unlinkat, |ctx| path_op(
    file_op::UNLINK,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    OpArgs::flags(arg(&ctx, 2) as u32)
));
// AT_REMOVEDIR: says it was a directory, as unlinkat would.
enter_program!(file_enter_rmdir, |ctx| path_op(
    file_op::UNLINK,
    AT_FDCWD,
    arg(&ctx, 0),
    OpArgs::flags(AT_REMOVEDIR)
));
enter_program!(file_enter_rename, |ctx| rename_op(
    file_op::RENAME,
    AT_FDCWD,
    arg(&ctx, 0),
    AT_FDCWD,
    arg(&ctx, 1),
    0
));
enter_program!(file_enter_renameat, |ctx| rename_op(
    file_op::RENAME,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    arg(&ctx, 2) as i32,
    arg(&ctx, 3),
    0
));
enter_program!(file_enter_renameat2, |ctx| rename_op(
    file_op::RENAME,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    arg(&ctx, 2) as i32,
    arg(&ctx, 3),
    arg(&ctx, 4) as u32
));
enter_program!(file_enter_link, |ctx| rename_op(
    file_op::LINK,
    AT_FDCWD,
    arg(&ctx, 0),
    AT_FDCWD,
    arg(&ctx, 1),
    0
));
enter_program!(file_enter_linkat, |ctx| rename_op(
    file_op::LINK,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    arg(&ctx, 2) as i32,
    arg(&ctx, 3),
    arg(&ctx, 4) as u32
));
enter_program!(file_enter_chmod, |ctx| path_op(
    file_op::CHMOD,
    AT_FDCWD,
    arg(&ctx, 0),
    OpArgs::mode(0, arg(&ctx, 1) as u32)
));
enter_program!(file_enter_fchmod, |ctx| fd_op(
    file_op::CHMOD,
    arg(&ctx, 0),
    OpArgs::mode(0, arg(&ctx, 1) as u32)
));
enter_program!(file_enter_fchmodat, |ctx| path_op(
    file_op::CHMOD,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    OpArgs::mode(0, arg(&ctx, 2) as u32)
));
enter_program!(file_enter_fchmodat2, |ctx| path_op(
    file_op::CHMOD,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    OpArgs::mode(arg(&ctx, 3) as u32, arg(&ctx, 2) as u32)
));
enter_program!(file_enter_chown, |ctx| path_op(
    file_op::CHOWN,
    AT_FDCWD,
    arg(&ctx, 0),
    OpArgs::owner(0, arg(&ctx, 1) as u32, arg(&ctx, 2) as u32)
));
// AT_SYMLINK_NOFOLLOW, as fchownat would say it.
enter_program!(file_enter_lchown, |ctx| path_op(
    file_op::CHOWN,
    AT_FDCWD,
    arg(&ctx, 0),
    OpArgs::owner(
        AT_SYMLINK_NOFOLLOW,
        arg(&ctx, 1) as u32,
        arg(&ctx, 2) as u32
    )
));
enter_program!(file_enter_fchown, |ctx| fd_op(
    file_op::CHOWN,
    arg(&ctx, 0),
    OpArgs::owner(0, arg(&ctx, 1) as u32, arg(&ctx, 2) as u32)
));
enter_program!(file_enter_fchownat, |ctx| path_op(
    file_op::CHOWN,
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    OpArgs::owner(
        arg(&ctx, 4) as u32,
        arg(&ctx, 2) as u32,
        arg(&ctx, 3) as u32
    )
));

/// Exit of the path operations held in `PENDING`: adds the result, sends.
#[tracepoint]
pub fn file_exit_pending(ctx: TracePointContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let Some(ev) = PENDING.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: our own thread's entry; nothing else writes it meanwhile.
    let ev = unsafe { &mut *ev };
    ev.file.result = arg(&ctx, 0) as i64;
    if ev.file.header.kind == EventKind::FileRename as u32 {
        if ev.file.result == 0
            && ev.file.op == file_op::RENAME
            && let Some(renames) = WATCHED_RENAMES.get_ptr_mut(0)
        {
            // SAFETY: an aligned u64 in map memory. Not atomic: two renames
            // at once may count once, and the value still changes, which
            // is all the cache needs.
            unsafe { *renames = (*renames).wrapping_add(1) };
        }
        output_event(&FILE_EVENTS, &*ev, drop_reason::FILE_RINGBUF_FULL);
    } else {
        output_event(&FILE_EVENTS, &ev.file, drop_reason::FILE_RINGBUF_FULL);
    }
    let _ = PENDING.remove(key);
    0
}
