//! Whether a file the kernel holds, or a path a syscall names, lies in the
//! watched set (and is watched for the operation), with the caches that
//! spare an open outside the set the walk up its directory's ancestry.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_user_str_bytes,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use sensor_common::{
    FILE_NAME_LEN, FileId, KernelOffsets, NO_ANCHOR, PATH_BY_IDENTITY, PATH_NAME_TRUNCATED,
    PATH_WATCHED, PathRecord, WatchEntry, drop_reason,
    file::{ino_bit, inode_bit, prefix_hash},
};

use super::{
    AT_FDCWD,
    maps::{
        FILE_SETTINGS, WATCHED, WATCHED_INO_BITS, WATCHED_INODE_BITS, WATCHED_INODES,
        WATCHED_RENAMES,
    },
    walk::{Place, TO_ROOT, find_watched, longest_watched_prefix, write_chain},
};
use crate::maps::count_drop;
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
    /// Non-zero: `place` is the nearest watched root or exclusion above
    /// (or at) the directory (or a walk out of levels); zero: outside the
    /// watched set.
    found: u32,
    _pad: u32,
    place: Place,
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

/// False when no `WATCHED_INODES` key has inode number `ino`.
#[inline(always)]
fn maybe_watched_inode(ino: u64) -> bool {
    let (word, bit) = inode_bit(ino);
    WATCHED_INODE_BITS.get(word).is_some_and(|w| w & bit != 0)
}

/// A watched file by its identity (`WATCHED_INODES`), whatever name it was
/// reached by: its names are then written up to the filesystem's root.
#[inline(always)]
fn watched_inode(id: FileId) -> Option<Place> {
    // SAFETY: the value is copied out at once.
    unsafe { WATCHED_INODES.get(id) }.map(by_identity)
}

/// The place of a file found by its identity under `entry`: no anchor,
/// its names written up to the filesystem's root.
#[inline(always)]
fn by_identity(entry: &WatchEntry) -> Place {
    Place {
        levels: TO_ROOT,
        flags: PATH_BY_IDENTITY,
        entry: WatchEntry {
            anchor: NO_ANCHOR,
            ops: entry.ops,
        },
    }
}

/// Adds a file just created in the watched set (`place`) to
/// `WATCHED_INODES`, so a hard link made to it at once is recognised; a
/// full map is counted.
#[inline(always)]
pub(super) fn remember_inode(id: FileId, place: &Place) {
    if place.flags != 0 || place.entry.ops == 0 {
        return;
    }
    match WATCHED_INODES.insert(id, place.entry, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Already known.
        Err(-17) => return,
        Err(_) => {
            count_drop(drop_reason::FILE_IDENTITY_FULL);
            return;
        }
    }
    let (word, bit) = inode_bit(id.ino);
    if let Some(w) = WATCHED_INODE_BITS.get_ptr_mut(word) {
        // SAFETY: an aligned u64 in map memory; bits are only ever added
        // (a lost race costs one missed bit until the daemon's next write,
        // which ORs the kernel's words in).
        unsafe { *w |= bit };
    }
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
        Some(place) => {
            write_watched(rec, dentry, place);
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
) -> Option<Place> {
    empty(rec);
    watched_for(find_watched_file::<F>(rec, dentry)?, op)
}

/// `place` when the file there is watched for the operation `op` works
/// out (`None`: not reported).
#[inline(always)]
fn watched_for(place: Place, op: impl FnOnce() -> Option<u32>) -> Option<Place> {
    match op() {
        Some(op) if place.entry.ops & (1 << op) != 0 => Some(place),
        _ => None,
    }
}

/// Leaves `rec` naming nothing.
#[inline(always)]
fn empty(rec: &mut PathRecord) {
    rec.anchor = NO_ANCHOR;
    rec.flags = 0;
    rec.chain_len = 0;
    rec.name[0] = 0;
}

/// [`watched_file`] for a file known only by its identity `id` (a
/// stacked filesystem's file of a layer, whose name is the overlay's):
/// a watched root itself, or a file of a watched tree.
#[inline(always)]
pub(super) fn watched_identity(
    rec: &mut PathRecord,
    id: FileId,
    op: impl FnOnce() -> Option<u32>,
) -> Option<Place> {
    empty(rec);
    // SAFETY: the value is copied out at once.
    let root = maybe_watched_ino(id.ino)
        .then(|| unsafe { WATCHED.get(id) }.map(by_identity))
        .flatten();
    let place = match root {
        Some(place) => place,
        None if maybe_watched_inode(id.ino) => watched_inode(id)?,
        None => return None,
    };
    watched_for(place, op)
}

/// Fills `rec` with the path of a file [`watched_file`] matched.
#[inline(always)]
pub(super) fn write_watched(rec: &mut PathRecord, dentry: *const u8, place: Place) {
    rec.anchor = place.entry.anchor;
    rec.flags = PATH_WATCHED | place.flags;
    write_chain(rec, dentry, place.levels);
}

/// [`find_watched`] for a file: the file itself, then its directory's
/// ancestry unless the caches know the directory's place in the set, then
/// (outside the set, or too deep to tell) its identity. An open usually
/// ends at the per-CPU cache and the identity filter, after seven field
/// reads and no hash lookup.
#[inline(always)]
fn find_watched_file<F: Fields>(rec: &mut PathRecord, dentry: *const u8) -> Option<Place> {
    let o = offsets()?;
    let inode = F::ptr(dentry, o.dentry_inode).ok()?;
    let ino = if inode.is_null() {
        0
    } else {
        F::get::<u64>(inode, o.inode_ino).ok()?
    };
    if ino != 0 && maybe_watched_ino(ino) {
        let id = read_dentry_id::<F>(dentry, o).ok()?;
        // SAFETY: the value is copied out at once.
        if let Some(entry) = unsafe { WATCHED.get(id) } {
            return Some(Place {
                levels: 0,
                flags: 0,
                entry: *entry,
            });
        }
    }
    let found = find_watched_dir::<F>(rec, dentry, o);
    if found.is_some_and(|place| place.flags == 0) {
        return found;
    }
    if ino != 0 && maybe_watched_inode(ino) {
        let by_identity = read_dentry_id::<F>(dentry, o).ok().and_then(watched_inode);
        if by_identity.is_some() {
            return by_identity;
        }
    }
    found
}

/// Where the directory of the file `dentry` lies in the watched set, from
/// the caches or the walk, as the file's place (one level further down).
#[inline(always)]
fn find_watched_dir<F: Fields>(
    rec: &mut PathRecord,
    dentry: *const u8,
    o: &KernelOffsets,
) -> Option<Place> {
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
        return (slot.found != 0).then_some(below(slot.place));
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
        if let Some(place) = found {
            slot.found = 1;
            slot.place = place;
        }
    }
    found.map(below)
}

/// A directory's place as the place of a file in it.
#[inline(always)]
fn below(dir: Place) -> Place {
    Place {
        levels: if dir.flags == 0 {
            dir.levels + 1
        } else {
            dir.levels
        },
        ..dir
    }
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
    let (entry, place) = match longest_watched_prefix(rec, seed) {
        Some(entry) => (entry, None),
        None if !absolute => match find_watched(rec, base) {
            Some(place) => (place.entry, Some(place)),
            None => return false,
        },
        None => return false,
    };
    if entry.ops & (1 << op) == 0 {
        return false;
    }
    rec.anchor = entry.anchor;
    rec.flags |= PATH_WATCHED;
    if let Some(place) = place {
        rec.flags |= place.flags;
        write_chain(rec, base, place.levels);
    }
    true
}
