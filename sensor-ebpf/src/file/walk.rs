//! The walks, each a `bpf_loop`: up a dentry's ancestry to the nearest
//! watched entry, up again copying the names, and along a path string
//! hashing its prefixes.

use aya_ebpf::{cty::c_void, helpers::bpf_probe_read_kernel_str_bytes};
use sensor_common::{
    FILE_CHAIN_LEN, FILE_MAX_DEPTH, FILE_NAME_LEN, NO_ANCHOR, PATH_CHAIN_TRUNCATED,
    PATH_DEPTH_EXCEEDED, PathRecord, WatchEntry, file::prefix_hash, file_op,
};

use super::{
    loops::{LOOP_CONTINUE, LOOP_STOP, bpf_for, loop_parts, loop_state},
    maps::{WATCH_PREFIXES, WATCHED},
};
use crate::kernel::{Probe, ReadFailed, read_dentry_id, read_ptr};

/// One directory level of [`find_watched`].
unsafe extern "C" fn watched_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: called by bpf_loop with the context bpf_for built.
    let Some((walk, _, o)) = (unsafe { loop_parts(ctx) }) else {
        return LOOP_STOP;
    };
    let cur = walk.cur as *const u8;
    // Every way out but "one more level" ends the walk with an answer.
    walk.levels = 1;
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
            walk.levels = 0;
            LOOP_CONTINUE
        }
        Err(ReadFailed) => LOOP_STOP,
    }
}

/// Where a file lies in the watched set: `levels` below `entry`, or (with
/// `flags`) found another way than under an anchor.
#[derive(Clone, Copy)]
pub(super) struct Place {
    pub(super) levels: u32,
    /// `PATH_DEPTH_EXCEEDED` or `PATH_BY_IDENTITY`; 0 under an anchor.
    pub(super) flags: u32,
    pub(super) entry: WatchEntry,
}

/// The nearest `WATCHED` entry at or above `dentry`, with how many levels
/// up it was; one map lookup per level, no names read. A walk that ran out
/// of levels first is a possibly watched place (every operation, no
/// anchor), never "outside".
#[inline(always)]
pub(super) fn find_watched(rec: &mut PathRecord, dentry: *const u8) -> Option<Place> {
    let walk = loop_state(dentry)?;
    bpf_for(FILE_MAX_DEPTH, watched_step, walk, rec);
    if walk.found != 0 {
        return Some(Place {
            levels: walk.depth,
            flags: 0,
            entry: walk.entry,
        });
    }
    (walk.levels == 0).then_some(Place {
        levels: TO_ROOT,
        flags: PATH_DEPTH_EXCEEDED,
        entry: WatchEntry {
            anchor: NO_ANCHOR,
            ops: file_op::ALL,
        },
    })
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
    match read_ptr(cur, o.dentry_parent) {
        // The filesystem's root: its name ("/") is not a component.
        Ok(parent) if parent == cur => {
            walk.found = 1;
            return LOOP_STOP;
        }
        Ok(_) => {}
        Err(ReadFailed) => return LOOP_STOP,
    }
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

/// `Place::levels` of a file with no anchor: its names up to its
/// filesystem's root, as many as fit.
pub(super) const TO_ROOT: u32 = u32::MAX;

/// Writes the names of `levels` dentries from `dentry` up into `rec.chain`
/// ([`TO_ROOT`]: up to the filesystem's root, flagged truncated when the
/// root was not reached).
#[inline(always)]
pub(super) fn write_chain(rec: &mut PathRecord, dentry: *const u8, levels: u32) {
    rec.chain_len = 0;
    rec.chain_dev = 0;
    let Some(walk) = loop_state(dentry) else {
        return;
    };
    walk.levels = levels;
    bpf_for(FILE_MAX_DEPTH, chain_step, walk, rec);
    if levels == TO_ROOT && walk.found == 0 {
        rec.flags |= PATH_CHAIN_TRUNCATED;
    }
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
pub(super) fn longest_watched_prefix(rec: &mut PathRecord, seed: u64) -> Option<WatchEntry> {
    let walk = loop_state(core::ptr::null())?;
    walk.hash = seed;
    walk.before = seed;
    bpf_for(FILE_NAME_LEN as u32, prefix_step, walk, rec);
    (walk.found != 0).then_some(walk.entry)
}
