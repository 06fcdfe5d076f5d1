//! File activity on watched paths: the maps the daemon fills to say what is
//! watched, and the records the kernel emits to `FILE_EVENTS`.
//!
//! The kernel decides "watched or not" without string matching where it can:
//! - a file it holds (open, exec, fchmod) is watched when it or a directory
//!   above it (dentry walk) is a key of `WATCHED`;
//! - a path a syscall names (unlink, rename, chmod, a failed open) is watched
//!   when its base directory (dirfd, cwd, or root for absolute paths) lies in
//!   a watched tree, or when hashing (base identity, path prefix) hits
//!   `WATCH_PREFIXES` — the daemon stores that hash for every ancestor of
//!   every watched root, so `/var/lib/pharmacy/rx.db` and `pharmacy/rx.db`
//!   seen from `/var/lib` both match.
//!
//! Paths are rebuilt in userspace: the record names an *anchor* (an index
//! into the daemon's table of watched roots and their ancestors) plus the
//! components the kernel walked and the string the process gave.

use crate::{EventHeader, TaskInfo};

/// Bytes kept of the path string a syscall was given, NUL included.
pub const FILE_NAME_LEN: usize = 256;
/// Bytes of dentry names (leaf first, each NUL-terminated). Each name is
/// copied at an offset masked below half the buffer, so a name never runs
/// past the end; a longer chain is cut and flagged.
pub const FILE_CHAIN_LEN: usize = 512;
/// Directories walked up from a file looking for a watched root (and
/// names copied up from it). A file deeper than this below every watched
/// root it might lie in is reported flagged [`PATH_DEPTH_EXCEEDED`]
/// (possibly watched), never dropped.
pub const FILE_MAX_DEPTH: u32 = 64;
/// Entries of `WATCHED`: watched roots and excluded subtrees.
pub const WATCH_ENTRIES: u32 = 4096;
/// Entries of `WATCH_PREFIXES`: one per (ancestor, watched root) pair.
pub const WATCH_PREFIX_ENTRIES: u32 = 16384;
/// Excluded executables (`WATCH_EXCLUDED_EXES`).
pub const EXCLUDED_EXE_ENTRIES: u32 = 1024;
/// Words of `WATCHED_INO_BITS`: a one-hash Bloom filter of the inode
/// numbers of `WATCHED` keys (64 Ki bits), so an open of a file that is no
/// watched root costs an array read instead of a hash lookup.
pub const WATCHED_INO_WORDS: u32 = 1024;
/// `PathRecord::anchor` when no anchor applies.
pub const NO_ANCHOR: u32 = u32::MAX;
/// Default entries of `WATCHED_INODES` (the loader sizes it from
/// `files.identity_max_entries`).
pub const WATCHED_INODE_ENTRIES: u32 = 65536;
/// Words of `WATCHED_INODE_BITS`: a one-hash Bloom filter of the inode
/// numbers of `WATCHED_INODES` keys (1 Mi bits, 128 KiB), so an open outside
/// the watched set costs an array read, not a hash lookup.
pub const WATCHED_INODE_WORDS: u32 = 16384;

/// The word of `WATCHED_INODE_BITS` and the bit in it that stand for inode
/// number `ino`.
#[inline(always)]
pub const fn inode_bit(ino: u64) -> (u32, u64) {
    let bit = (ino ^ (ino >> 20)) as u32 & (WATCHED_INODE_WORDS * 64 - 1);
    (bit / 64, 1 << (bit % 64))
}

/// `FileEvent::op`. A watch rule selects operations with a mask of `1 << op`.
pub mod file_op {
    /// Opened read-only.
    pub const OPEN_READ: u32 = 1;
    /// Opened for writing, created or truncated.
    pub const OPEN_WRITE: u32 = 2;
    /// unlink, unlinkat, rmdir.
    pub const UNLINK: u32 = 3;
    /// rename, renameat, renameat2 (a [`super::FileRenameEvent`]).
    pub const RENAME: u32 = 4;
    pub const CHMOD: u32 = 5;
    pub const CHOWN: u32 = 6;
    /// A watched file was executed.
    pub const EXEC: u32 = 7;
    /// link, linkat: a new name for a file (a [`super::FileRenameEvent`]:
    /// the existing name, then the new one; either side watched).
    pub const LINK: u32 = 8;
    /// io_uring_setup: a process made an io_uring instance, whose opens,
    /// reads and sends no syscall tracepoint sees. Reported for every
    /// process, whatever the watched set.
    pub const IO_URING_SETUP: u32 = 9;
    /// Every operation a watch rule can select.
    pub const ALL: u32 = (1 << OPEN_READ)
        | (1 << OPEN_WRITE)
        | (1 << UNLINK)
        | (1 << RENAME)
        | (1 << CHMOD)
        | (1 << CHOWN)
        | (1 << EXEC)
        | (1 << LINK);
}

// open(2) flags, as `FileEvent::flags` of an open carries them: the values
// of the kernel's uapi `asm-generic/fcntl.h` (x86-64's). The kernel programs
// test them to tell a read from a write, the daemon to tell a creating open.

/// The access mode bits: 0 read-only, [`O_WRONLY`], 2 read-write.
pub const O_ACCMODE: u32 = 0o3;
/// Write-only access.
pub const O_WRONLY: u32 = 0o1;
/// Create the file if it does not exist.
pub const O_CREAT: u32 = 0o100;
/// Truncate the file to length 0.
pub const O_TRUNC: u32 = 0o1000;
/// A handle on the name only: no data can be read or written through it.
pub const O_PATH: u32 = 0o10000000;

/// Value of `WATCHED` and `WATCH_PREFIXES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchEntry {
    /// Anchor the kernel names in the record: for `WATCHED` the watched root
    /// itself, for `WATCH_PREFIXES` the ancestor whose identity seeded the
    /// hash.
    pub anchor: u32,
    /// Mask of `1 << file_op::*` reported below this point; 0 = excluded.
    pub ops: u32,
}

/// The word of `WATCHED_INO_BITS` and the bit in it that stand for inode
/// number `ino` (the same on both sides: one definition).
#[inline(always)]
pub const fn ino_bit(ino: u64) -> (u32, u64) {
    let bit = (ino ^ (ino >> 16)) as u32 & (WATCHED_INO_WORDS * 64 - 1);
    (bit / 64, 1 << (bit % 64))
}

/// Settings of the file programs (`FILE_SETTINGS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileSettings {
    /// Non-zero once the daemon has filled the watch maps; until then the
    /// programs do nothing.
    pub enabled: u32,
    /// The sensor's own process: its reads of watched files (hashing,
    /// config reload) are never events.
    pub self_tgid: u32,
    /// Changes with every new watch set: invalidates the kernel's caches of
    /// directories' places in the watched set.
    pub generation: u32,
    /// Entries in `WATCH_EXCLUDED_EXES`: without any, no program reads the
    /// process's executable to check it.
    pub excluded_exes: u32,
}

/// Entries of `OPEN_REPEATS`: (process, file, operation, flags) pairs of
/// the two live generations together. When it is full, opens are reported
/// one by one again (nothing is lost, only not coalesced).
pub const OPEN_REPEAT_ENTRIES: u32 = 16384;

/// Key of `OPEN_REPEATS`: one successful open of a watched file, as it is
/// coalesced with its repeats.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OpenRepeatKey {
    pub tgid: u32,
    /// `s_dev` (kernel encoding) and inode of the file.
    pub dev: u32,
    pub ino: u64,
    /// open(2) flags as passed.
    pub flags: u32,
    /// `file_op::OPEN_READ` or `file_op::OPEN_WRITE`.
    pub op: u32,
    /// `OPEN_REPEAT_GEN[0]` when the open was reported: the daemon moves it
    /// on every window and collects the generation before last, which no
    /// program can still be writing.
    pub generation: u32,
    pub _pad: u32,
}

/// Value of `OPEN_REPEATS`, one per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenRepeatCount {
    /// Opens after the reported one, on this CPU.
    pub count: u64,
    /// CLOCK_BOOTTIME of the first open this CPU saw (the reported one, on
    /// its CPU) and of its last repeat; 0: none on this CPU.
    pub first_ns: u64,
    pub last_ns: u64,
}

impl OpenRepeatCount {
    /// The counts of all CPUs as one: opens added up, the earliest first
    /// and the latest last.
    pub fn sum(per_cpu: impl IntoIterator<Item = Self>) -> Self {
        per_cpu
            .into_iter()
            .fold(Self::default(), |total, cpu| Self {
                count: total.count + cpu.count,
                first_ns: match (total.first_ns, cpu.first_ns) {
                    (0, b) => b,
                    (a, 0) => a,
                    (a, b) => a.min(b),
                },
                last_ns: total.last_ns.max(cpu.last_ns),
            })
    }
}

/// `PathRecord::flags`: the dentry chain did not fit and was cut.
pub const PATH_CHAIN_TRUNCATED: u32 = 1 << 0;
/// `PathRecord::flags`: the path string did not fit and was cut.
pub const PATH_NAME_TRUNCATED: u32 = 1 << 1;
/// `PathRecord::flags`: this path matched the watched set.
pub const PATH_WATCHED: u32 = 1 << 2;
/// `PathRecord::flags`: the walk up from the file reached
/// [`FILE_MAX_DEPTH`] before a watched root or the filesystem's root: the
/// file is possibly watched. The chain holds the names walked (the
/// nearest ones), with no anchor.
pub const PATH_DEPTH_EXCEEDED: u32 = 1 << 3;
/// `PathRecord::flags`: the file was found by its identity (a watched
/// inode, `WATCHED_INODES`) under a name outside every watched tree (a hard
/// link). The chain holds the names up to its filesystem's root, no anchor.
pub const PATH_BY_IDENTITY: u32 = 1 << 4;

/// One path, as anchor + walked components + the string the process gave.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathRecord {
    /// Index into the daemon's anchor table, or [`NO_ANCHOR`].
    pub anchor: u32,
    /// `PATH_*` flags.
    pub flags: u32,
    /// Valid bytes of `chain`.
    pub chain_len: u32,
    /// The device (kernel `dev_t`) whose root a chain found by identity
    /// starts from, when not the file's own: a stacked filesystem's name
    /// for its layer's file. 0 otherwise.
    pub chain_dev: u32,
    /// Names from the leaf up to (not including) the anchor, each followed
    /// by a NUL.
    pub chain: [u8; FILE_CHAIN_LEN],
    /// NUL-terminated path string from the syscall, relative to the chain's
    /// leaf (empty when the kernel held the file itself).
    pub name: [u8; FILE_NAME_LEN],
}

/// A file operation on a watched path (`EventKind::File`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    pub header: EventHeader,
    pub task: TaskInfo,
    /// A `file_op::*` value.
    pub op: u32,
    /// open(2) flags as passed (plus O_CREAT when the open created the
    /// file); unlinkat/renameat2/fchownat flags for those operations.
    pub flags: u32,
    /// The syscall's return value (fd or 0 on success, -errno on failure).
    pub result: i64,
    /// Mode passed to chmod or to an open that creates.
    pub mode: u32,
    /// uid and gid passed to chown (u32::MAX: unchanged).
    pub uid: u32,
    pub gid: u32,
    /// `s_dev` (kernel encoding) of the file, when the kernel held it.
    pub dev: u32,
    pub ino: u64,
    pub path: PathRecord,
}

/// A rename touching a watched path (`EventKind::FileRename`): either side
/// may be the watched one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileRenameEvent {
    pub file: FileEvent,
    pub new_path: PathRecord,
}

/// FNV-1a, the hash of `WATCH_PREFIXES` keys: the kernel computes it while
/// reading a path, the daemon when it fills the map. One definition, so the
/// two sides cannot disagree.
pub mod prefix_hash {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Adds one byte.
    #[inline(always)]
    pub const fn byte(h: u64, b: u8) -> u64 {
        (h ^ b as u64).wrapping_mul(PRIME)
    }

    /// The hash of a base directory identity, before any component.
    #[inline(always)]
    pub const fn seed(dev: u32, ino: u64) -> u64 {
        let mut h = OFFSET;
        let dev = dev.to_le_bytes();
        let ino = ino.to_le_bytes();
        let mut i = 0;
        while i < 4 {
            h = byte(h, dev[i]);
            i += 1;
        }
        let mut i = 0;
        while i < 8 {
            h = byte(h, ino[i]);
            i += 1;
        }
        h
    }

    /// `h` extended by one path component: a '/' then its bytes.
    pub fn component(h: u64, name: &[u8]) -> u64 {
        let mut h = byte(h, b'/');
        for &b in name {
            h = byte(h, b);
        }
        h
    }
}

const _: () = assert!(core::mem::size_of::<PathRecord>() == 16 + FILE_CHAIN_LEN + FILE_NAME_LEN);
const _: () = assert!(core::mem::size_of::<FileEvent>() == 16 + 64 + 40 + 784);
const _: () = assert!(FILE_CHAIN_LEN.is_power_of_two() && FILE_NAME_LEN * 2 == FILE_CHAIN_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::WatchEntry {}
    unsafe impl aya::Pod for super::FileSettings {}
    unsafe impl aya::Pod for super::PathRecord {}
    unsafe impl aya::Pod for super::FileEvent {}
    unsafe impl aya::Pod for super::FileRenameEvent {}
    unsafe impl aya::Pod for super::OpenRepeatKey {}
    unsafe impl aya::Pod for super::OpenRepeatCount {}
}
