//! Opens, decided at exit: the syscall tracepoints' exit programs (on every
//! kernel) and `fexit/do_filp_open` (where trampolines are allowed), one
//! decision for both, and the coalescing of an application's repeated opens
//! of one file.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_user},
    macros::{fexit, lsm, tracepoint},
    programs::{FExitContext, LsmContext, TracePointContext},
};
use sensor_common::{
    EventKind, FileId, KernelOffsets, drop_reason,
    file::{O_ACCMODE, O_CREAT, O_TRUNC, O_WRONLY, OpenRepeatCount, OpenRepeatKey},
    file_op,
};

use super::{
    AT_FDCWD, arg, current_task,
    maps::{
        FILE_EVENTS, OPEN_REPEAT_GEN, OPEN_REPEATS, enabled, excluded_exe, is_sensor, lsm_reported,
        scratch,
    },
    ops::{OpArgs, begin},
    watched::{match_path, remember_inode, watched_file, watched_identity, write_watched},
};
use crate::{
    kernel::{
        Fields, Probe, Typed, current_syscall_nr, read_dentry_id, read_fd_dentry, read_file_dentry,
        read_syscall_args,
    },
    maps::{offsets, output_event},
};

const ENOENT: i64 = 2;
const ENOTDIR: i64 = 20;

/// How an open syscall lays out its arguments.
#[derive(Clone, Copy)]
enum OpenAbi {
    /// open(path, flags, mode)
    Open,
    /// openat(dfd, path, flags, mode)
    OpenAt,
    /// openat2(dfd, path, struct open_how *how, size)
    OpenAt2,
    /// creat(path, mode)
    Creat,
    /// open_by_handle_at(mount_fd, struct file_handle *, flags): no path.
    ByHandle,
}

/// The open syscall (x86-64 number) that creates files, if `nr` is one.
#[inline(always)]
fn open_syscall(nr: u64) -> Option<OpenAbi> {
    match nr {
        2 => Some(OpenAbi::Open),
        85 => Some(OpenAbi::Creat),
        257 => Some(OpenAbi::OpenAt),
        437 => Some(OpenAbi::OpenAt2),
        _ => None,
    }
}

/// What an open syscall asked for, from the registers saved at entry.
#[inline(always)]
fn open_args(abi: OpenAbi, o: &KernelOffsets) -> Option<OpenArgs> {
    let a = read_syscall_args(o);
    Some(match abi {
        OpenAbi::Open => (AT_FDCWD, a[0], a[1] as u32, a[2] as u32),
        OpenAbi::OpenAt => (a[0] as i32, a[1], a[2] as u32, a[3] as u32),
        OpenAbi::OpenAt2 => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; } (uapi).
            // SAFETY: a plain read of user memory that may fail.
            let how = unsafe { bpf_probe_read_user(a[2] as *const [u64; 2]) }.ok()?;
            (a[0] as i32, a[1], how[0] as u32, how[1] as u32)
        }
        OpenAbi::Creat => (AT_FDCWD, a[0], O_CREAT | O_TRUNC | O_WRONLY, a[1] as u32),
        // No path string: a refused open by handle names nothing to match.
        OpenAbi::ByHandle => (a[0] as i32, 0, a[2] as u32, 0),
    })
}

/// The operation an open with `flags` is.
#[inline(always)]
fn open_op(flags: u32) -> u32 {
    if flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0 {
        file_op::OPEN_WRITE
    } else {
        file_op::OPEN_READ
    }
}

/// True when the current process already had this successful open of this
/// file (same operation and flags) reported in this window: the open is
/// only counted. Otherwise the open starts a count and is reported.
#[inline(always)]
fn repeated(id: FileId, flags: u32, op: u32) -> bool {
    let generation = OPEN_REPEAT_GEN.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return false;
    }
    let key = OpenRepeatKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        dev: id.dev,
        ino: id.ino,
        flags,
        op,
        generation,
        _pad: 0,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(count) = OPEN_REPEATS.get_ptr_mut(key) {
        // SAFETY: this CPU's value, written by one program at a time; the
        // daemon reads it only a generation later. A CPU that has not
        // counted yet starts from zeros (the insert zeroes other CPUs).
        unsafe {
            if (*count).first_ns == 0 {
                (*count).first_ns = now;
            }
            (*count).count += 1;
            (*count).last_ns = now;
        }
        return true;
    }
    let first = OpenRepeatCount {
        count: 0,
        first_ns: now,
        last_ns: now,
    };
    // Full map, or another CPU just won the race: reported one by one.
    let _ = OPEN_REPEATS.insert(key, first, BPF_NOEXIST as u64);
    false
}

/// What an open asked for: (dfd, user path, flags, mode).
type OpenArgs = (i32, u64, u32, u32);

/// Exit of an open syscall: decides on the file the kernel opened, or on
/// the path for a refused open. There is no entry program: the arguments
/// are read from the saved registers, and only for an open that may be
/// reported, so an open outside the watched set costs one program run and
/// no map write. `F`: how the opened file's fields are read (one program
/// per reader).
#[inline(always)]
fn open_exit<F: Fields>(ctx: &TracePointContext, abi: OpenAbi) {
    let Some(o) = offsets() else { return };
    let ret = arg(ctx, 0) as i64;
    let opened = if ret >= 0 {
        match read_fd_dentry::<F>(ret as u32, o) {
            Ok(dentry) => Some(dentry),
            Err(_) => return,
        }
    } else {
        None
    };
    // A successful open `lsm/file_open` reported is left to it: asked
    // only of an open in the watched set (the arguments are read then).
    report_open::<F>(o, ret, opened.map(Opened::file), || {
        open_args(abi, o).filter(|&(_, _, flags, _)| ret < 0 || !lsm_reported(flags))
    });
}

/// `__FMODE_EXEC`: the open of a program being exec'd (`file_exec`'s).
const FMODE_EXEC: u32 = 0x20;
/// `__FMODE_NONOTIFY`: an open fanotify makes for itself.
const FMODE_NONOTIFY: u32 = 0x0400_0000;
/// Added by the kernel on 64-bit.
const O_LARGEFILE: u32 = 0o100000;
/// `open_flags.open_flag` bits that are the kernel's, not the caller's.
const KERNEL_OPEN_FLAGS: u32 = O_LARGEFILE | FMODE_EXEC | FMODE_NONOTIFY;
/// Permission bits of a mode (`S_IALLUGO`).
const S_IALLUGO: u32 = 0o7777;
/// The largest errno an `ERR_PTR` holds.
const MAX_ERRNO: i64 = 4095;

/// `fexit/do_filp_open`, on kernels that allow trampolines: every open by
/// path (open, openat, openat2, creat, and io_uring's openat) returns through
/// here with the opened `struct file *` (or an error) and the request,
/// all typed, so no syscall tracepoint sits on the open path at all.
/// The fd is not assigned yet: a successful open reports result 0.
#[inline(always)]
fn filp_open_exit(ctx: &FExitContext) {
    let Some(o) = offsets() else { return };
    let dfd: i64 = ctx.arg(0);
    let name: *const u8 = ctx.arg(1);
    let how: *const u8 = ctx.arg(2);
    let file: *const u8 = ctx.arg(3);
    let Ok(open_flag) = Typed::get::<u32>(how, o.open_flags_open_flag) else {
        return;
    };
    if open_flag & FMODE_EXEC != 0 {
        return;
    }
    let args = || {
        // A kernel-internal open names no user string (`uptr` NULL):
        // `match_path` then finds nothing.
        let path = Typed::get::<u64>(name, o.filename_uptr).ok()?;
        let mode = Typed::get::<u16>(how, o.open_flags_mode).ok()?;
        Some((
            dfd as i32,
            path,
            open_flag & !KERNEL_OPEN_FLAGS,
            // The kernel adds the file type (S_IFREG) to a creating open's
            // mode; the caller asked for the permission bits.
            u32::from(mode) & S_IALLUGO,
        ))
    };
    // One `report_open` per outcome, each with its `opened` fixed: merged,
    // the compiler would test "opened?" again later on the pointer (or on
    // a number derived from it), which the verifier cannot relate to the
    // first test, and it would walk a refused open down the opened-file
    // path. The result comes as a plain number (the helper is inlined).
    let Ok(ret) = ctx.ret::<i64>() else {
        return;
    };
    if (-MAX_ERRNO..0).contains(&ret) {
        report_open::<Typed>(o, ret, None, args);
    } else if lsm_reported(open_flag) {
        // Reported by `lsm/file_open` as it happened.
    } else if let Ok(dentry) = read_file_dentry::<Typed>(file, o) {
        report_open::<Typed>(o, 0, Some(Opened::file(dentry)), args);
    }
}

/// `lsm/file_open` (BPF-LSM kernels): every open that reaches a file
/// passes here, the ones no open syscall or `do_filp_open` carries
/// included: io_uring's (in its workers too), `open_by_handle_at`, a
/// stacked filesystem's opens of its layers' files, fanotify's. So every
/// successful open is reported here, and the exit programs report only
/// refused opens (and `O_PATH` ones, which never get here): none twice.
/// Nothing is refused; the result is 0, as the open is let through.
#[lsm(hook = "file_open")]
pub fn file_open_lsm(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous == 0 {
        lsm_open(&ctx);
    }
    previous
}

#[inline(always)]
fn lsm_open(ctx: &LsmContext) {
    let Some(o) = offsets() else { return };
    let file: *const u8 = ctx.arg(0);
    let Ok(flags) = Typed::get::<u32>(file, o.file_f_flags) else {
        return;
    };
    // An exec's own open is `file_exec`'s; one the write guard refuses
    // is its report (and a refused open's, from the exit programs).
    if flags & FMODE_EXEC != 0 || crate::write_guard::refuses_open(file, o) {
        return;
    }
    let (Ok(dentry), Ok(inode)) = (
        read_file_dentry::<Typed>(file, o),
        Typed::ptr(file, o.file_inode),
    ) else {
        return;
    };
    let flags = flags & !KERNEL_OPEN_FLAGS;
    let args = || {
        // A creating open's mode: the one asked, from the open syscall's
        // saved registers; for an open without one (io_uring's), what the
        // file got (umask applied).
        let mode = if flags & O_CREAT == 0 {
            0
        } else if let Some((_, _, _, asked)) =
            open_syscall(current_syscall_nr(o)).and_then(|abi| open_args(abi, o))
        {
            asked & S_IALLUGO
        } else {
            u32::from(Typed::get::<u16>(inode, o.inode_mode).ok()?) & S_IALLUGO
        };
        Some((AT_FDCWD, 0, flags, mode))
    };
    // A stacked filesystem's file of a layer (overlayfs on 6.1): the path
    // is the overlay's, the inode the layer's. The file is the layer's,
    // known by its identity. (Where the kernel names the layer's own path
    // instead, the ordinary decision below sees it.)
    if Typed::ptr(dentry, o.dentry_inode).is_ok_and(|named| named != inode) {
        let (Ok(sb), Ok(ino)) = (
            Typed::ptr(inode, o.inode_sb),
            Typed::get::<u64>(inode, o.inode_ino),
        ) else {
            return;
        };
        let Ok(dev) = Typed::get::<u32>(sb, o.sb_dev) else {
            return;
        };
        let layer = FileId { dev, _pad: 0, ino };
        report_open::<Typed>(
            o,
            0,
            Some(Opened {
                dentry,
                layer: Some(layer),
            }),
            args,
        );
    } else {
        report_open::<Typed>(o, 0, Some(Opened::file(dentry)), args);
    }
}

/// The file an open opened: its name's dentry, and the identity of the
/// layer's file a stacked filesystem opened under that name.
#[derive(Clone, Copy)]
struct Opened {
    dentry: *const u8,
    layer: Option<FileId>,
}

impl Opened {
    #[inline(always)]
    fn file(dentry: *const u8) -> Self {
        Self {
            dentry,
            layer: None,
        }
    }
}

/// Decides and reports one open, whichever hook saw it: `result` is the
/// syscall's (fd or -errno), `opened` the opened file (`None` when
/// refused), `args` what was asked, read only for an open that may be
/// reported.
#[inline(always)]
fn report_open<F: Fields>(
    o: &KernelOffsets,
    result: i64,
    opened: Option<Opened>,
    args: impl FnOnce() -> Option<OpenArgs>,
) {
    // Whether this is the sensor is asked only of a reported open.
    let Some(settings) = enabled() else {
        return;
    };
    if result == -ENOENT || result == -ENOTDIR {
        // The path does not exist: the dynamic loader's library search and
        // every config probe fail this way, dozens of times per exec, and
        // nothing was touched. Not an event, and not worth the path walk.
        return;
    }
    let Some(ev) = scratch() else {
        return;
    };
    // Where the opened file lies in the watched set: its path is written
    // only once the open is known to be reported.
    let mut target = None;
    let args = if let Some(Opened { dentry, layer }) = opened {
        let mut asked = None;
        let op = || {
            asked = args();
            asked.map(|(_, _, flags, _)| open_op(flags))
        };
        let place = match layer {
            None => watched_file::<F>(&mut ev.file.path, dentry, op),
            Some(id) => watched_identity(&mut ev.file.path, id, op),
        };
        let Some(place) = place else {
            return;
        };
        target = Some((dentry, layer, place));
        asked
    } else {
        // Refused (EACCES, EPERM, ...): decide on the path it named.
        let asked = args();
        let Some((dfd, path, flags, _)) = asked else {
            return;
        };
        if !match_path(
            &mut ev.file.path,
            current_task(),
            dfd,
            path,
            open_op(flags),
            o,
        ) {
            return;
        }
        asked
    };
    let Some((_, _, flags, mode)) = args else {
        return;
    };
    let task = current_task();
    if is_sensor(&settings) || excluded_exe(task, o) {
        return;
    }
    let mut id = None;
    if let Some((dentry, layer, place)) = target {
        id = layer.or_else(|| read_dentry_id::<F>(dentry, o).ok());
        if let Some(id) = id {
            if flags & O_CREAT != 0 {
                remember_inode(id, &place);
            }
            if repeated(id, flags, open_op(flags)) {
                return;
            }
        }
        write_watched(&mut ev.file.path, dentry, place);
        if layer.is_some() {
            // The names are the stacked filesystem's, from its root.
            ev.file.path.chain_dev = read_dentry_id::<F>(dentry, o).map_or(0, |named| named.dev);
        }
    }
    begin(
        &mut ev.file,
        EventKind::File,
        task,
        open_op(flags),
        &OpArgs::mode(flags, mode),
        o,
    );
    if let Some(id) = id {
        ev.file.dev = id.dev;
        ev.file.ino = id.ino;
    }
    ev.file.result = result;
    output_event(&FILE_EVENTS, &ev.file, drop_reason::FILE_RINGBUF_FULL);
}

/// An open exit program for each argument layout, in two builds: reading
/// the file by helper calls (every kernel) and by typed loads (`_typed`,
/// for kernels with `bpf_rdonly_cast`); the loader attaches one set.
macro_rules! open_exit_program {
    ($name:ident, $typed:ident, $abi:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            open_exit::<Probe>(&ctx, $abi);
            0
        }

        #[tracepoint]
        pub fn $typed(ctx: TracePointContext) -> u32 {
            open_exit::<Typed>(&ctx, $abi);
            0
        }
    };
}

open_exit_program!(file_exit_openat, file_exit_openat_typed, OpenAbi::OpenAt);
open_exit_program!(file_exit_openat2, file_exit_openat2_typed, OpenAbi::OpenAt2);
open_exit_program!(file_exit_open, file_exit_open_typed, OpenAbi::Open);
open_exit_program!(file_exit_creat, file_exit_creat_typed, OpenAbi::Creat);
open_exit_program!(
    file_exit_open_by_handle_at,
    file_exit_open_by_handle_at_typed,
    OpenAbi::ByHandle
);

/// `struct io_uring_params.flags` (uapi: after `sq_entries`, `cq_entries`).
const IO_URING_PARAMS_FLAGS: usize = 8;

/// Exit of `io_uring_setup`: a process made an io_uring instance. Its
/// opens, reads and sends need no syscall the file and network hooks see
/// (on kernels without BPF-LSM or trampolines), so the instance itself is
/// reported, for every process but the sensor: flags = the setup flags
/// (`IORING_SETUP_*`), result = the ring's fd or -errno.
#[tracepoint]
pub fn file_exit_io_uring_setup(ctx: TracePointContext) -> u32 {
    let (Some(_), Some(o), Some(ev)) = (super::maps::active(), offsets(), scratch()) else {
        return 0;
    };
    let params = read_syscall_args(o)[1];
    // SAFETY: a plain read of user memory that may fail.
    let flags =
        unsafe { bpf_probe_read_user((params as usize + IO_URING_PARAMS_FLAGS) as *const u32) }
            .unwrap_or(0);
    let path = &mut ev.file.path;
    path.anchor = sensor_common::NO_ANCHOR;
    path.flags = 0;
    path.chain_len = 0;
    path.name[0] = 0;
    begin(
        &mut ev.file,
        EventKind::File,
        current_task(),
        file_op::IO_URING_SETUP,
        &OpArgs::mode(flags, 0),
        o,
    );
    ev.file.result = arg(&ctx, 0) as i64;
    output_event(&FILE_EVENTS, &ev.file, drop_reason::FILE_RINGBUF_FULL);
    0
}

#[fexit(function = "do_filp_open")]
pub fn file_filp_open(ctx: FExitContext) -> i32 {
    filp_open_exit(&ctx);
    0
}
