//! Whether a file the kernel holds, or a path a syscall names, lies in the
//! watched set (and is watched for the operation), with the caches that
//! spare an open outside the set the walk up its directory's ancestry.

use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use sensor_common::{
    FILE_NAME_LEN, KernelOffsets, NO_ANCHOR, PATH_NAME_TRUNCATED, PATH_WATCHED, PathRecord,
    WatchEntry,
    file::{ino_bit, prefix_hash},
};

use super::{
    AT_FDCWD,
    maps::{FILE_SETTINGS, WATCHED, WATCHED_INO_BITS, WATCHED_RENAMES},
    walk::{find_watched, longest_watched_prefix, write_chain},
};
use crate::{
    kernel::{Fields, Probe, read_dentry_id, read_fd_dentry, read_fs_dentry},
    maps::offsets,
};

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

/// False when no `WATCHED` key has inode number `ino`.
#[inline(always)]
fn maybe_watched_ino(ino: u64) -> bool {
    let (word, bit) = ino_bit(ino);
    WATCHED_INO_BITS.get(word).is_none_or(|w| w & bit != 0)
}

/// The generation cache entries must carry to be believed.
#[inline(always)]
fn cache_generation() -> u64 {
    let settings = FILE_SETTINGS.get(0).map_or(0, |s| s.generation);
    let renames = WATCHED_RENAMES.get(0).copied().unwrap_or(0);
    (u64::from(settings) << 32) | (renames & 0xffff_ffff)
}

/// Fills `rec` for a file the kernel holds; true when it is watched for `op`.
#[inline(always)]
pub(super) fn match_dentry(rec: &mut PathRecord, dentry: *const u8, op: u32) -> bool {
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
pub(super) fn watched_file<F: Fields>(
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
pub(super) fn write_watched(
    rec: &mut PathRecord,
    dentry: *const u8,
    levels: u32,
    entry: WatchEntry,
) {
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
pub(super) fn match_path(
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
