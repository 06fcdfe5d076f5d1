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

use aya_ebpf::{EbpfContext as _, bindings::BPF_NOEXIST, cty::c_void};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::bpf_loop,
    },
    macros::{fexit, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FExitContext, RawTracePointContext, TracePointContext},
};
use sensor_common::{
    EVENT_PARTIAL, EventKind, FILE_CHAIN_LEN, FILE_MAX_DEPTH, FILE_NAME_LEN, FileEvent, FileId,
    FileRenameEvent, FileSettings, KernelOffsets, NO_ANCHOR, PATH_CHAIN_TRUNCATED,
    PATH_NAME_TRUNCATED, PATH_WATCHED, PathRecord, WatchEntry, drop_reason,
    file::{OpenRepeatCount, OpenRepeatKey, ino_bit, prefix_hash},
    file_op,
};

use crate::{
    kernel::{
        Fields, Probe, ReadFailed, Typed, header, read_dentry_id, read_fd_dentry, read_file_dentry,
        read_fs_dentry, read_ptr, read_syscall_args, read_task, read_task_exe,
    },
    maps::{count_drop, offsets, output_event},
};

/// File events. The loader resizes it from config (`kernel.file_ringbuf_bytes`).
#[map]
static FILE_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Watched roots and excluded subtrees by (device, inode).
#[map]
static WATCHED: HashMap<FileId, WatchEntry> =
    HashMap::with_max_entries(sensor_common::file::WATCH_ENTRIES, 0);

/// `prefix_hash` of (ancestor identity, path from it to a watched root).
#[map]
static WATCH_PREFIXES: HashMap<u64, WatchEntry> =
    HashMap::with_max_entries(sensor_common::file::WATCH_PREFIX_ENTRIES, 0);

/// Programs whose file activity is never reported (by executable identity).
#[map]
static WATCH_EXCLUDED_EXES: HashMap<FileId, u8> =
    HashMap::with_max_entries(sensor_common::file::EXCLUDED_EXE_ENTRIES, 0);

#[map]
static FILE_SETTINGS: Array<FileSettings> = Array::with_max_entries(1, 0);

/// Watched path operations waiting for their syscall's result.
#[map]
static PENDING: HashMap<u64, FileRenameEvent> = HashMap::with_max_entries(4096, 0);

/// Per-CPU room to build a record: too big for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<FileRenameEvent> = PerCpuArray::with_max_entries(1, 0);

const AT_FDCWD: i32 = -100;
const ENOENT: i64 = 2;
const ENOTDIR: i64 = 20;
const O_ACCMODE: u32 = 0o3;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const UNCHANGED: u32 = u32::MAX;

/// Syscall tracepoint records: `int __syscall_nr` at 8, then one 8-byte
/// slot per argument from 16; at exit `long ret` at 16 (the trace event ABI,
/// checked against the kernel's format files by a test in sensor-user).
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: a direct load inside the tracepoint record (the verifier
    // checks the constant offset); no helper call on the hot path.
    unsafe { *ctx.as_ptr().cast::<u64>().add(2 + n) }
}

/// A directory, as the kernel's cache of "outside the watched set" knows it:
/// its dentry and its inode together, so a recycled dentry of another
/// directory never matches a stale entry. Both are pointers the open path
/// already holds or reaches in one read.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct DirKey {
    dentry: u64,
    inode: u64,
}

/// Directories whose whole ancestry was walked without meeting a watched
/// root, valued with the cache generation they were walked in. Saves the
/// walk for almost every open outside the watched set.
#[map]
static UNWATCHED_DIRS: LruHashMap<DirKey, u64> = LruHashMap::with_max_entries(16384, 0);

/// A slot of [`DIRS_CPU`]: a directory's place in the watched set, as
/// the walk found it in `generation`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DirSlot {
    key: DirKey,
    generation: u64,
    /// Non-zero: `entry` is the nearest watched root or exclusion above
    /// (or at) the directory, `levels` up; zero: outside the watched set.
    found: u32,
    levels: u32,
    entry: WatchEntry,
}

/// Slots of [`DIRS_CPU`] (a power of two).
const DIR_SLOTS: u32 = 256;

/// In front of the walk and `UNWATCHED_DIRS`: a small direct-mapped cache
/// per CPU of directories' verdicts, inside the watched set or outside,
/// read by index (no hashing, no shared cache line).
#[map]
static DIRS_CPU: PerCpuArray<DirSlot> = PerCpuArray::with_max_entries(DIR_SLOTS, 0);

/// `DIRS_CPU` slot of the directory with inode number `ino` (a number, not
/// the dentry's address: the verifier allows no arithmetic on a typed
/// pointer).
#[inline(always)]
fn dir_slot(ino: u64) -> Option<&'static mut DirSlot> {
    let index = (ino ^ (ino >> 8)) as u32 & (DIR_SLOTS - 1);
    // SAFETY: this CPU's slot, used by one program at a time.
    DIRS_CPU
        .get_ptr_mut(index)
        .map(|slot| unsafe { &mut *slot })
}

/// The inode numbers of `WATCHED` keys, as a Bloom filter (see
/// `sensor_common::file::ino_bit`); the daemon keeps it a superset.
#[map]
static WATCHED_INO_BITS: Array<u64> =
    Array::with_max_entries(sensor_common::file::WATCHED_INO_WORDS, 0);

/// False when no `WATCHED` key has inode number `ino`.
#[inline(always)]
fn maybe_watched_ino(ino: u64) -> bool {
    let (word, bit) = ino_bit(ino);
    WATCHED_INO_BITS.get(word).is_none_or(|w| w & bit != 0)
}

/// Successful watched renames: a directory moved into or out of a watched
/// tree changes what its subtree's ancestry is, so it invalidates the cache.
#[map]
static WATCHED_RENAMES: Array<u64> = Array::with_max_entries(1, 0);

/// The generation cache entries must carry to be believed.
#[inline(always)]
fn cache_generation() -> u64 {
    let settings = FILE_SETTINGS.get(0).map_or(0, |s| s.generation);
    let renames = WATCHED_RENAMES.get(0).copied().unwrap_or(0);
    (u64::from(settings) << 32) | (renames & 0xffff_ffff)
}

/// The settings when the file programs should look at this task.
#[inline(always)]
fn active() -> Option<FileSettings> {
    enabled().filter(|settings| !is_sensor(settings))
}

/// The settings when the file programs are on.
#[inline(always)]
fn enabled() -> Option<FileSettings> {
    FILE_SETTINGS.get(0).copied().filter(|s| s.enabled != 0)
}

/// True in the sensor's own process, which is never reported.
#[inline(always)]
fn is_sensor(settings: &FileSettings) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == settings.self_tgid
}

#[inline(always)]
fn current_task() -> *const u8 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}

const LOOP_CONTINUE: i64 = 0;
const LOOP_STOP: i64 = 1;

/// Scalar state of the `bpf_loop` walks below. It lives in map memory, not
/// on the stack, on purpose: the verifier tracks stack constants exactly, so
/// a counter there makes every iteration a new state to explore (seconds of
/// verification, then refusal); values in map memory are simply unknown,
/// and the callback is verified once.
#[derive(Clone, Copy)]
struct LoopState {
    cur: u64,
    hash: u64,
    before: u64,
    depth: u32,
    found: u32,
    entry: WatchEntry,
    levels: u32,
    pos: u32,
    len: u32,
    dots: u32,
}

#[map]
static LOOP_STATE: PerCpuArray<LoopState> = PerCpuArray::with_max_entries(1, 0);

/// What a callback gets: pointers only (the verifier keeps their types).
struct LoopCtx {
    state: *mut LoopState,
    rec: *mut PathRecord,
}

/// Runs `step` up to `n` times (`bpf_loop`) with `state` and `rec`.
#[inline(always)]
fn bpf_for(
    n: u32,
    step: unsafe extern "C" fn(u64, *mut c_void) -> i64,
    state: &mut LoopState,
    rec: &mut PathRecord,
) {
    let mut ctx = LoopCtx { state, rec };
    // SAFETY: a callback of the required signature and a context that
    // outlives the call.
    unsafe {
        bpf_loop(n, step as *mut c_void, (&mut ctx as *mut LoopCtx).cast(), 0);
    }
}

/// This CPU's loop state, reset.
#[inline(always)]
fn loop_state(cur: *const u8) -> Option<&'static mut LoopState> {
    let state = LOOP_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by one program at a time.
    let state = unsafe { &mut *state };
    state.cur = cur as u64;
    state.hash = 0;
    state.before = 0;
    state.depth = 0;
    state.found = 0;
    state.entry = WatchEntry::default();
    state.levels = 0;
    state.pos = 0;
    state.len = 0;
    state.dots = 0;
    Some(state)
}

/// The state and record of a callback, and the offsets.
///
/// # Safety
/// `ctx` must be the `LoopCtx` that [`bpf_for`] passed.
#[inline(always)]
unsafe fn loop_parts(
    ctx: *mut c_void,
) -> Option<(
    &'static mut LoopState,
    &'static mut PathRecord,
    &'static KernelOffsets,
)> {
    // SAFETY: per the contract, both pointers are live for the loop.
    let ctx = unsafe { &*ctx.cast::<LoopCtx>() };
    let o = offsets()?;
    // SAFETY: as above.
    Some(unsafe { (&mut *ctx.state, &mut *ctx.rec, o) })
}

/// One directory level of [`find_watched`].
unsafe extern "C" fn watched_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: called by bpf_loop with the context bpf_for built.
    let Some((walk, _, o)) = (unsafe { loop_parts(ctx) }) else {
        return LOOP_STOP;
    };
    let cur = walk.cur as *const u8;
    let Ok(id) = read_dentry_id::<Probe>(cur, o) else {
        return LOOP_STOP;
    };
    // SAFETY: the value is copied out at once.
    if let Some(entry) = unsafe { WATCHED.get(id) } {
        walk.entry = *entry;
        walk.found = 1;
        return LOOP_STOP;
    }
    match read_ptr(cur, o.dentry_parent) {
        // The root of this filesystem: nothing above is watched here.
        Ok(parent) if parent == cur => LOOP_STOP,
        Ok(parent) => {
            walk.cur = parent as u64;
            walk.depth += 1;
            LOOP_CONTINUE
        }
        Err(ReadFailed) => LOOP_STOP,
    }
}

/// The nearest `WATCHED` entry at or above `dentry`, with how many levels
/// up it was; one map lookup per level, no names read.
#[inline(always)]
fn find_watched(rec: &mut PathRecord, dentry: *const u8) -> Option<(u32, WatchEntry)> {
    let walk = loop_state(dentry)?;
    bpf_for(FILE_MAX_DEPTH, watched_step, walk, rec);
    (walk.found != 0).then_some((walk.depth, walk.entry))
}

/// Copies one dentry name of [`write_chain`].
unsafe extern "C" fn chain_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: called by bpf_loop with the context bpf_for built.
    let Some((walk, rec, o)) = (unsafe { loop_parts(ctx) }) else {
        return LOOP_STOP;
    };
    if index >= walk.levels as u64 {
        return LOOP_STOP;
    }
    if walk.pos as usize >= FILE_CHAIN_LEN / 2 {
        rec.flags |= PATH_CHAIN_TRUNCATED;
        return LOOP_STOP;
    }
    let cur = walk.cur as *const u8;
    let Ok(name) = read_ptr(cur, o.dentry_name) else {
        return LOOP_STOP;
    };
    let start = walk.pos as usize & (FILE_CHAIN_LEN / 2 - 1);
    // SAFETY: bounded string read into a window that ends inside `chain`.
    let len = match unsafe {
        bpf_probe_read_kernel_str_bytes(name, &mut rec.chain[start..start + FILE_NAME_LEN])
    } {
        Ok(s) => s.len(),
        Err(_) => return LOOP_STOP,
    };
    walk.pos = (start + len + 1) as u32;
    rec.chain_len = walk.pos;
    match read_ptr(cur, o.dentry_parent) {
        Ok(parent) => {
            walk.cur = parent as u64;
            LOOP_CONTINUE
        }
        Err(ReadFailed) => LOOP_STOP,
    }
}

/// Writes the names of `levels` dentries from `dentry` up into `rec.chain`.
#[inline(always)]
fn write_chain(rec: &mut PathRecord, dentry: *const u8, levels: u32) {
    rec.chain_len = 0;
    let Some(walk) = loop_state(dentry) else {
        return;
    };
    walk.levels = levels;
    bpf_for(FILE_MAX_DEPTH, chain_step, walk, rec);
}

/// One byte of [`longest_watched_prefix`].
unsafe extern "C" fn prefix_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: called by bpf_loop with the context bpf_for built.
    let Some((walk, rec, _)) = (unsafe { loop_parts(ctx) }) else {
        return LOOP_STOP;
    };
    if index >= FILE_NAME_LEN as u64 {
        return LOOP_STOP;
    }
    let c = rec.name[index as usize];
    if c == 0 || c == b'/' {
        if walk.len > 0 {
            if walk.dots == walk.len && walk.dots == 2 {
                // `..`: what follows cannot be named from the prefix.
                walk.found = 0;
                return LOOP_STOP;
            }
            if walk.dots == walk.len && walk.dots == 1 {
                walk.hash = walk.before;
            } else {
                // SAFETY: the value is copied out at once.
                if let Some(entry) = unsafe { WATCH_PREFIXES.get(walk.hash) } {
                    walk.entry = *entry;
                    walk.found = 1;
                }
            }
        }
        walk.len = 0;
        walk.dots = 0;
        return if c == 0 { LOOP_STOP } else { LOOP_CONTINUE };
    }
    if walk.len == 0 {
        walk.before = walk.hash;
        walk.hash = prefix_hash::byte(walk.hash, b'/');
    }
    walk.hash = prefix_hash::byte(walk.hash, c);
    if c == b'.' && walk.dots == walk.len {
        walk.dots += 1;
    }
    walk.len += 1;
    LOOP_CONTINUE
}

/// Hashes the components of `rec.name` onto `seed` and returns the last
/// (longest) prefix found in `WATCH_PREFIXES`. Empty and `.` components are
/// skipped like the kernel does; a `..` ends the search with no match.
#[inline(always)]
fn longest_watched_prefix(rec: &mut PathRecord, seed: u64) -> Option<WatchEntry> {
    let walk = loop_state(core::ptr::null())?;
    walk.hash = seed;
    walk.before = seed;
    bpf_for(FILE_NAME_LEN as u32, prefix_step, walk, rec);
    (walk.found != 0).then_some(walk.entry)
}

/// Fills `rec` for a file the kernel holds; true when it is watched for `op`.
#[inline(always)]
fn match_dentry(rec: &mut PathRecord, dentry: *const u8, op: u32) -> bool {
    match watched_file::<Probe>(rec, dentry, || Some(op)) {
        Some((levels, entry)) => {
            write_watched(rec, dentry, levels, entry);
            true
        }
        None => false,
    }
}

/// Where a file the kernel holds lies in the watched set (`levels` below
/// the `entry` that matched), when it is watched for the operation `op`
/// works out; `op` is only asked for a file inside the set (`None`: not
/// reported). `rec` is left empty.
#[inline(always)]
fn watched_file<F: Fields>(
    rec: &mut PathRecord,
    dentry: *const u8,
    op: impl FnOnce() -> Option<u32>,
) -> Option<(u32, WatchEntry)> {
    rec.anchor = NO_ANCHOR;
    rec.flags = 0;
    rec.chain_len = 0;
    rec.name[0] = 0;
    let (levels, entry) = find_watched_file::<F>(rec, dentry)?;
    match op() {
        Some(op) if entry.ops & (1 << op) != 0 => Some((levels, entry)),
        _ => None,
    }
}

/// Fills `rec` with the path of a file [`watched_file`] matched.
#[inline(always)]
fn write_watched(rec: &mut PathRecord, dentry: *const u8, levels: u32, entry: WatchEntry) {
    rec.anchor = entry.anchor;
    rec.flags = PATH_WATCHED;
    write_chain(rec, dentry, levels);
}

/// [`find_watched`] for a file: the file itself, then its directory's
/// ancestry unless the caches know the directory's place in the set. An
/// open usually ends at the per-CPU cache, after six field reads and no
/// hash lookup.
#[inline(always)]
fn find_watched_file<F: Fields>(
    rec: &mut PathRecord,
    dentry: *const u8,
) -> Option<(u32, WatchEntry)> {
    let o = offsets()?;
    let inode = F::ptr(dentry, o.dentry_inode).ok()?;
    if !inode.is_null() && maybe_watched_ino(F::get::<u64>(inode, o.inode_ino).ok()?) {
        let id = read_dentry_id::<F>(dentry, o).ok()?;
        // SAFETY: the value is copied out at once.
        if let Some(entry) = unsafe { WATCHED.get(id) } {
            return Some((0, *entry));
        }
    }
    let dir = F::ptr(dentry, o.dentry_parent).ok()?;
    if dir == dentry {
        return None;
    }
    let dir_inode = F::ptr(dir, o.dentry_inode).ok()?;
    let key = DirKey {
        dentry: dir as u64,
        inode: dir_inode as u64,
    };
    let generation = cache_generation();
    let slot = dir_slot(F::get::<u64>(dir_inode, o.inode_ino).unwrap_or(0));
    if let Some(slot) = &slot
        && slot.key == key
        && slot.generation == generation
    {
        return (slot.found != 0).then_some((slot.levels + 1, slot.entry));
    }
    // SAFETY: the value is copied out at once.
    let found = if unsafe { UNWATCHED_DIRS.get(key) }.copied() == Some(generation) {
        None
    } else {
        let found = find_watched(rec, dir);
        if found.is_none() {
            let _ = UNWATCHED_DIRS.insert(key, generation, 0);
        }
        found
    };
    if let Some(slot) = slot {
        slot.key = key;
        slot.generation = generation;
        slot.found = 0;
        if let Some((levels, entry)) = found {
            slot.found = 1;
            slot.levels = levels;
            slot.entry = entry;
        }
    }
    found.map(|(levels, entry)| (levels + 1, entry))
}

/// Fills `rec` for a path a syscall names (`dfd`, user string at `path`);
/// true when it is watched for `op`.
#[inline(always)]
fn match_path(
    rec: &mut PathRecord,
    task: *const u8,
    dfd: i32,
    path: u64,
    op: u32,
    o: &KernelOffsets,
) -> bool {
    rec.anchor = NO_ANCHOR;
    rec.flags = 0;
    rec.chain_len = 0;
    // SAFETY: bounded string read from user memory into a fixed array.
    let len = match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut rec.name) } {
        Ok(s) => s.len(),
        Err(_) => {
            rec.name[0] = 0;
            return false;
        }
    };
    if len >= FILE_NAME_LEN - 1 {
        rec.flags |= PATH_NAME_TRUNCATED;
    }
    let absolute = rec.name[0] == b'/';
    let base = if absolute {
        read_fs_dentry(task, true, o)
    } else if dfd == AT_FDCWD {
        read_fs_dentry(task, false, o)
    } else {
        read_fd_dentry::<Probe>(dfd as u32, o)
    };
    let Ok(base) = base else { return false };
    let Ok(base_id) = read_dentry_id::<Probe>(base, o) else {
        return false;
    };
    let seed = prefix_hash::seed(base_id.dev, base_id.ino);
    // A prefix hit is the most specific answer (it may be an excluded
    // subtree below a watched base); else the base itself may be inside a
    // watched tree.
    let (entry, levels) = match longest_watched_prefix(rec, seed) {
        Some(entry) => (entry, None),
        None if !absolute => match find_watched(rec, base) {
            Some((levels, entry)) => (entry, Some(levels)),
            None => return false,
        },
        None => return false,
    };
    if entry.ops & (1 << op) == 0 {
        return false;
    }
    rec.anchor = entry.anchor;
    rec.flags |= PATH_WATCHED;
    if let Some(levels) = levels {
        write_chain(rec, base, levels);
    }
    true
}

/// This CPU's record slot (programs of these hooks do not nest on a CPU).
#[inline(always)]
fn scratch() -> Option<&'static mut FileRenameEvent> {
    // SAFETY: this CPU's slot, used by one program at a time.
    SCRATCH.get_ptr_mut(0).map(|ev| unsafe { &mut *ev })
}

/// Fills the header, the task and the operation's arguments of a record
/// whose path already matched.
#[inline(always)]
fn begin(
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
struct OpArgs {
    flags: u32,
    mode: u32,
    uid: u32,
    gid: u32,
}

impl OpArgs {
    const NONE: Self = Self::flags(0);

    const fn flags(flags: u32) -> Self {
        Self {
            flags,
            mode: 0,
            uid: UNCHANGED,
            gid: UNCHANGED,
        }
    }

    const fn mode(flags: u32, mode: u32) -> Self {
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

/// True when the current program is excluded by executable.
#[inline(always)]
fn excluded_exe(task: *const u8, o: &KernelOffsets) -> bool {
    if FILE_SETTINGS.get(0).is_none_or(|s| s.excluded_exes == 0) {
        return false;
    }
    match read_task_exe(task, o) {
        // SAFETY: presence check only.
        Ok(exe) => unsafe { WATCH_EXCLUDED_EXES.get(exe) }.is_some(),
        Err(ReadFailed) => false,
    }
}

/// Records the inode identity of the file `dentry` names.
#[inline(always)]
fn set_target(ev: &mut FileEvent, dentry: *const u8, o: &KernelOffsets) {
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

/// Entry of rename, renameat, renameat2: reported when either side is watched.
#[inline(always)]
fn rename_op(old_dfd: i32, old: u64, new_dfd: i32, new: u64, flags: u32) {
    if active().is_none() {
        return;
    }
    let (Some(o), Some(ev)) = (offsets(), scratch()) else {
        return;
    };
    let task = current_task();
    let old_watched = match_path(&mut ev.file.path, task, old_dfd, old, file_op::RENAME, o);
    let new_watched = match_path(&mut ev.new_path, task, new_dfd, new, file_op::RENAME, o);
    if !(old_watched || new_watched) || excluded_exe(task, o) {
        return hold(None);
    }
    let args = OpArgs::flags(flags);
    begin(
        &mut ev.file,
        EventKind::FileRename,
        task,
        file_op::RENAME,
        &args,
        o,
    );
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
    OpArgs::flags(0x200)
));
enter_program!(file_enter_rename, |ctx| rename_op(
    AT_FDCWD,
    arg(&ctx, 0),
    AT_FDCWD,
    arg(&ctx, 1),
    0
));
enter_program!(file_enter_renameat, |ctx| rename_op(
    arg(&ctx, 0) as i32,
    arg(&ctx, 1),
    arg(&ctx, 2) as i32,
    arg(&ctx, 3),
    0
));
enter_program!(file_enter_renameat2, |ctx| rename_op(
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
    OpArgs::owner(0x100, arg(&ctx, 1) as u32, arg(&ctx, 2) as u32)
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
        OpenAbi::Creat => (AT_FDCWD, a[0], O_CREAT | O_TRUNC | 1, a[1] as u32),
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

/// Opens already reported in this window, counted instead of reported
/// again (see `OpenRepeatKey`); the daemon adds up each key's per-CPU
/// counts into one summary event. Per CPU: threads of one process opening
/// one file on two CPUs never fight over a cache line.
#[map]
static OPEN_REPEATS: PerCpuHashMap<OpenRepeatKey, OpenRepeatCount> =
    PerCpuHashMap::with_max_entries(sensor_common::file::OPEN_REPEAT_ENTRIES, 0);

/// The current coalescing generation, moved by the daemon every window;
/// 0: every open is reported.
#[map]
static OPEN_REPEAT_GEN: Array<u32> = Array::with_max_entries(1, 0);

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
    report_open::<F>(o, ret, opened, || open_args(abi, o));
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
    } else if let Ok(dentry) = read_file_dentry::<Typed>(file, o) {
        report_open::<Typed>(o, 0, Some(dentry), args);
    }
}

/// Decides and reports one open, whichever hook saw it: `result` is the
/// syscall's (fd or -errno), `opened` the opened file's dentry (`None`
/// when refused), `args` what was asked, read only for an open that may
/// be reported.
#[inline(always)]
fn report_open<F: Fields>(
    o: &KernelOffsets,
    result: i64,
    opened: Option<*const u8>,
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
    let args = if let Some(dentry) = opened {
        let mut asked = None;
        let Some(place) = watched_file::<F>(&mut ev.file.path, dentry, || {
            asked = args();
            asked.map(|(_, _, flags, _)| open_op(flags))
        }) else {
            return;
        };
        target = Some((dentry, place));
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
    if let Some((dentry, (levels, entry))) = target {
        id = read_dentry_id::<F>(dentry, o).ok();
        if let Some(id) = id
            && repeated(id, flags, open_op(flags))
        {
            return;
        }
        write_watched(&mut ev.file.path, dentry, levels, entry);
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

#[fexit(function = "do_filp_open")]
pub fn file_filp_open(ctx: FExitContext) -> i32 {
    filp_open_exit(&ctx);
    0
}

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
