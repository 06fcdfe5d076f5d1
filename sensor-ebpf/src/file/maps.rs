//! The maps of the file programs that the daemon fills or reads, or that
//! several of them share, and what the programs read from them: whether to
//! look at this task at all, and the per-CPU room a record is built in.
//! The walk caches (`UNWATCHED_DIRS`, `DIRS_CPU`) and the loop state
//! (`LOOP_STATE`) sit with their types in `watched` and `loops`.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sensor_common::{
    FileId, FileRenameEvent, FileSettings, KernelOffsets, WatchEntry,
    file::{O_PATH, OpenRepeatCount, OpenRepeatKey},
};

use crate::kernel::{ReadFailed, read_task_exe};

/// File events. The loader resizes it from config (`kernel.file_ringbuf_bytes`).
#[map]
pub(super) static FILE_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Watched roots and excluded subtrees by (device, inode).
#[map]
pub(super) static WATCHED: HashMap<FileId, WatchEntry> =
    HashMap::with_max_entries(sensor_common::file::WATCH_ENTRIES, 0);

/// `prefix_hash` of (ancestor identity, path from it to a watched root).
#[map]
pub(super) static WATCH_PREFIXES: HashMap<u64, WatchEntry> =
    HashMap::with_max_entries(sensor_common::file::WATCH_PREFIX_ENTRIES, 0);

/// Programs whose file activity is never reported (by executable identity).
#[map]
static WATCH_EXCLUDED_EXES: HashMap<FileId, u8> =
    HashMap::with_max_entries(sensor_common::file::EXCLUDED_EXE_ENTRIES, 0);

#[map]
pub(super) static FILE_SETTINGS: Array<FileSettings> = Array::with_max_entries(1, 0);

/// Watched path operations waiting for their syscall's result.
#[map]
pub(super) static PENDING: HashMap<u64, FileRenameEvent> = HashMap::with_max_entries(4096, 0);

/// Per-CPU room to build a record: too big for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<FileRenameEvent> = PerCpuArray::with_max_entries(1, 0);

/// The inode numbers of `WATCHED` keys, as a Bloom filter (see
/// `sensor_common::file::ino_bit`); the daemon keeps it a superset.
#[map]
pub(super) static WATCHED_INO_BITS: Array<u64> =
    Array::with_max_entries(sensor_common::file::WATCHED_INO_WORDS, 0);

/// Every file under a watched tree, by identity, valued with its root's
/// entry (anchor, operations): a name of it outside the watched trees (a
/// hard link) is still recognised. The daemon fills it from a scan at
/// start and from renames and links; the open programs add files created
/// in the watched set. The loader sizes it (`files.identity_max_entries`).
#[map]
pub(super) static WATCHED_INODES: HashMap<FileId, WatchEntry> =
    HashMap::with_max_entries(sensor_common::file::WATCHED_INODE_ENTRIES, 0);

/// The inode numbers of `WATCHED_INODES` keys, as a Bloom filter (see
/// `sensor_common::file::inode_bit`); bits are only ever added.
#[map]
pub(super) static WATCHED_INODE_BITS: Array<u64> =
    Array::with_max_entries(sensor_common::file::WATCHED_INODE_WORDS, 0);

/// Successful watched renames: a directory moved into or out of a watched
/// tree changes what its subtree's ancestry is, so it invalidates the cache.
#[map]
pub(super) static WATCHED_RENAMES: Array<u64> = Array::with_max_entries(1, 0);

/// Opens already reported in this window, counted instead of reported
/// again (see `OpenRepeatKey`); the daemon adds up each key's per-CPU
/// counts into one summary event. Per CPU: threads of one process opening
/// one file on two CPUs never fight over a cache line.
#[map]
pub(super) static OPEN_REPEATS: PerCpuHashMap<OpenRepeatKey, OpenRepeatCount> =
    PerCpuHashMap::with_max_entries(sensor_common::file::OPEN_REPEAT_ENTRIES, 0);

/// The current coalescing generation, moved by the daemon every window;
/// 0: every open is reported.
#[map]
pub(super) static OPEN_REPEAT_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Slot 0 non-zero once the loader has attached `lsm/file_open`
/// (BPF-LSM kernels): every successful open but an `O_PATH` one is then
/// reported there, and the exit programs keep refused and `O_PATH` opens.
#[map]
static FILE_OPEN_LSM: Array<u32> = Array::with_max_entries(1, 0);

/// True when `lsm/file_open` reported the successful open made with
/// `flags` (it sees every one but `O_PATH` opens).
#[inline(always)]
pub(super) fn lsm_reported(flags: u32) -> bool {
    flags & O_PATH == 0 && FILE_OPEN_LSM.get(0).is_some_and(|on| *on != 0)
}

/// The settings when the file programs should look at this task.
#[inline(always)]
pub(super) fn active() -> Option<FileSettings> {
    enabled().filter(|settings| !is_sensor(settings))
}

/// The settings when the file programs are on.
#[inline(always)]
pub(super) fn enabled() -> Option<FileSettings> {
    FILE_SETTINGS.get(0).copied().filter(|s| s.enabled != 0)
}

/// True in the sensor's own process, which is never reported.
#[inline(always)]
pub(super) fn is_sensor(settings: &FileSettings) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == settings.self_tgid
}

/// This CPU's record slot (programs of these hooks do not nest on a CPU).
#[inline(always)]
pub(super) fn scratch() -> Option<&'static mut FileRenameEvent> {
    // SAFETY: this CPU's slot, used by one program at a time.
    SCRATCH.get_ptr_mut(0).map(|ev| unsafe { &mut *ev })
}

/// True when the current program is excluded by executable.
#[inline(always)]
pub(super) fn excluded_exe(task: *const u8, o: &KernelOffsets) -> bool {
    if FILE_SETTINGS.get(0).is_none_or(|s| s.excluded_exes == 0) {
        return false;
    }
    match read_task_exe(task, o) {
        // SAFETY: presence check only.
        Ok(exe) => unsafe { WATCH_EXCLUDED_EXES.get(exe) }.is_some(),
        Err(ReadFailed) => false,
    }
}
