//! The write guard (BPF-LSM only): no process but the sensor changes the
//! sensor's binary, config, policy, state or spool. Each refusal is also a
//! tamper call, so the daemon reports who tried. The daemon fills
//! `WRITE_GUARD` with the identities it guards and arms the guard; the
//! links belong to the daemon, so a stopped sensor (upgrade, maintenance)
//! leaves the files writable again (docs/allowlisting.md).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{lsm, map},
    maps::{Array, HashMap},
    programs::LsmContext,
};
use sensor_common::{FileId, GUARD_ENTRIES, KernelOffsets, guard_op, guarded, tamper_call};

use crate::{
    kernel::{Probe, read, read_dentry_id, read_ptr},
    maps::offsets,
    tamper::{EPERM, report_with, reporting},
};

/// Guarded identities (kernel dev_t, inode) -> `guarded::*` bits.
#[map]
static WRITE_GUARD: HashMap<FileId, u8> = HashMap::with_max_entries(GUARD_ENTRIES, 0);

/// Slot 0: non-zero while the guard is armed.
#[map]
static WRITE_GUARD_ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// `FMODE_WRITE`.
const FMODE_WRITE: u32 = 0x2;

/// Whether the guard applies to the current task.
#[inline(always)]
fn armed() -> bool {
    WRITE_GUARD_ARMED.get(0).is_some_and(|a| *a != 0) && reporting()
}

/// The guarded identity `dentry` falls under: its own (`ITSELF`), or its
/// directory's (`ENTRIES`).
#[inline(always)]
fn guarding(dentry: *const u8, o: &KernelOffsets) -> Option<FileId> {
    let covers = |id: &FileId, bit: u8| {
        // SAFETY: a value read of a map entry.
        id.ino != 0 && unsafe { WRITE_GUARD.get(id) }.is_some_and(|g| *g & bit != 0)
    };
    if let Ok(id) = read_dentry_id::<Probe>(dentry, o)
        && covers(&id, guarded::ITSELF)
    {
        return Some(id);
    }
    let parent = read_ptr(dentry, o.dentry_parent).ok()?;
    let id = read_dentry_id::<Probe>(parent, o).ok()?;
    covers(&id, guarded::ENTRIES).then_some(id)
}

/// True when the armed guard refuses `file_open` of `file` (an open for
/// writing of a guarded file): file telemetry's `file_open` program then
/// leaves the open to the guard's report, whichever of the two the kernel
/// runs first.
#[inline(always)]
pub fn refuses_open(file: *const u8, o: &KernelOffsets) -> bool {
    armed() && guarding(open_for_writing(file, o), o).is_some()
}

/// The dentry of `file` when it is opened for writing, else NULL.
#[inline(always)]
fn open_for_writing(file: *const u8, o: &KernelOffsets) -> *const u8 {
    match read::<u32>(file, o.file_f_mode) {
        Ok(mode) if mode & FMODE_WRITE != 0 => {
            path_dentry(file.wrapping_add(o.file_f_path as usize), o)
        }
        _ => NONE,
    }
}

/// `-EPERM` (and a report of `op`) if `dentry` is guarded, else None.
#[inline(always)]
fn check(op: u32, dentry: *const u8, o: &KernelOffsets) -> Option<i32> {
    let file = guarding(dentry, o)?;
    report_with(tamper_call::WRITE_REFUSED, op, 0, |ev, o| {
        ev.file = file;
        if let Ok(name) = read_ptr(dentry, o.dentry_name) {
            // SAFETY: a bounded kernel string read; fails cleanly.
            if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut ev.path) }.is_err() {
                ev.path[0] = 0;
            }
        }
    });
    Some(-EPERM)
}

/// One guard program: `$ret` is the index of the hook's `ret` argument (an
/// earlier program's answer), `$dentry` turns the context into the dentries
/// to check.
macro_rules! guard_program {
    ($name:ident, $hook:literal, $op:expr, $ret:literal, |$ctx:ident, $o:ident| $dentries:expr) => {
        #[lsm(hook = $hook)]
        pub fn $name($ctx: LsmContext) -> i32 {
            let previous: i32 = $ctx.arg($ret);
            if previous != 0 || !armed() {
                return previous;
            }
            let Some($o) = offsets() else { return 0 };
            let dentries: [*const u8; 2] = $dentries;
            for dentry in dentries {
                if !dentry.is_null()
                    && let Some(refused) = check($op, dentry, $o)
                {
                    return refused;
                }
            }
            0
        }
    };
}

/// `path->dentry` of a `const struct path *` argument.
#[inline(always)]
fn path_dentry(path: *const u8, o: &KernelOffsets) -> *const u8 {
    read_ptr(path, o.path_dentry).unwrap_or(core::ptr::null())
}

const NONE: *const u8 = core::ptr::null();

// file_open(file): only opens for writing (O_TRUNC needs one too).
guard_program!(
    guard_file_open,
    "file_open",
    guard_op::OPEN_FOR_WRITE,
    1,
    |ctx, o| [open_for_writing(ctx.arg(0), o), NONE]
);
// path_truncate(path)
guard_program!(
    guard_path_truncate,
    "path_truncate",
    guard_op::TRUNCATE,
    1,
    |ctx, o| { [path_dentry(ctx.arg(0), o), NONE] }
);
// path_unlink(dir, dentry)
guard_program!(
    guard_path_unlink,
    "path_unlink",
    guard_op::UNLINK,
    2,
    |ctx, o| [ctx.arg(1), NONE]
);
// path_rmdir(dir, dentry)
guard_program!(
    guard_path_rmdir,
    "path_rmdir",
    guard_op::RMDIR,
    2,
    |ctx, o| [ctx.arg(1), NONE]
);
// path_rename(old_dir, old_dentry, new_dir, new_dentry, flags): both names.
guard_program!(
    guard_path_rename,
    "path_rename",
    guard_op::RENAME,
    5,
    |ctx, o| [ctx.arg(1), ctx.arg(3)]
);
// path_link(old_dentry, new_dir, new_dentry): the file and the new name.
guard_program!(guard_path_link, "path_link", guard_op::LINK, 3, |ctx, o| [
    ctx.arg(0),
    ctx.arg(2)
]);
// path_chmod(path, mode)
guard_program!(
    guard_path_chmod,
    "path_chmod",
    guard_op::CHMOD,
    2,
    |ctx, o| { [path_dentry(ctx.arg(0), o), NONE] }
);
// path_chown(path, uid, gid)
guard_program!(
    guard_path_chown,
    "path_chown",
    guard_op::CHOWN,
    3,
    |ctx, o| { [path_dentry(ctx.arg(0), o), NONE] }
);
// path_mknod(dir, dentry, mode, dev): also every open(O_CREAT) that creates.
guard_program!(
    guard_path_mknod,
    "path_mknod",
    guard_op::CREATE,
    4,
    |ctx, o| [ctx.arg(1), NONE]
);
// path_mkdir(dir, dentry, mode)
guard_program!(
    guard_path_mkdir,
    "path_mkdir",
    guard_op::MKDIR,
    3,
    |ctx, o| [ctx.arg(1), NONE]
);
// path_symlink(dir, dentry, old_name)
guard_program!(
    guard_path_symlink,
    "path_symlink",
    guard_op::SYMLINK,
    3,
    |ctx, o| [ctx.arg(1), NONE]
);
