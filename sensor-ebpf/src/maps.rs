//! Maps shared by every program: the event ring buffer, the per-CPU drop
//! counters, and the kernel offsets global the loader fills from BTF.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    macros::map,
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use sensor_common::{KernelOffsets, drop_reason};

/// Process lifecycle events. The loader resizes it from config
/// (`kernel.process_ringbuf_bytes`); this is only the default.
#[map]
pub static PROCESS_EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Losses counted where they happen, indexed by `drop_reason::*`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Filled by the loader (`EbpfLoader::set_global`) from the running kernel's
/// BTF before load; read-only to the programs.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// The offsets for this kernel, or `None` if the loader did not fill them (the
/// programs then stay silent instead of reading garbage). A reference, not a
/// copy: the struct is a third of the 512-byte BPF stack.
#[inline(always)]
pub fn offsets() -> Option<&'static KernelOffsets> {
    // Reading the address through a volatile load hides from the compiler
    // that the global is zero-initialised, so it cannot fold the fields the
    // loader fills to zero.
    let ptr: *const KernelOffsets = &OFFSETS;
    // SAFETY: a read of a local; then of a read-only global.
    let o = unsafe { &*core::ptr::read_volatile(&ptr) };
    (o.valid != 0).then_some(o)
}

/// Adds one to a drop counter of this CPU.
#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
}

/// Reserves a `T` in `PROCESS_EVENTS`, counting a drop when the ring is full.
#[inline(always)]
pub fn reserve_process_event<T: 'static>() -> Option<RingBufEntry<T>> {
    reserve_event(&PROCESS_EVENTS, drop_reason::PROCESS_RINGBUF_FULL)
}

/// Commits a `PROCESS_EVENTS` record (see [`submit_event`]).
#[inline(always)]
pub fn submit_process_event<T>(entry: RingBufEntry<T>) {
    submit_event(&PROCESS_EVENTS, entry)
}

/// Reserves a `T` in `ring`, counting a drop under `full` when it is full.
#[inline(always)]
pub fn reserve_event<T: 'static>(ring: &RingBuf, full: u32) -> Option<RingBufEntry<T>> {
    let entry = ring.reserve::<T>(0);
    if entry.is_none() {
        count_drop(full);
    }
    entry
}

/// Commits an event without waking the reader unless this event is the one
/// that makes a quarter of the ring (or 64 KiB) wait. The daemon also
/// drains on a short timer, so an event storm costs a few wakeups instead
/// of one per event.
#[inline(always)]
pub fn submit_event<T>(ring: &RingBuf, entry: RingBufEntry<T>) {
    entry.submit(wake_flags(ring, record_bytes::<T>(), true));
}

/// Copies `event` into `ring` (for records built in map memory), counting
/// a drop under `reason` when the ring is full.
#[inline(always)]
pub fn output_event<T>(ring: &RingBuf, event: &T, reason: u32) {
    if ring
        .output::<T>(event, wake_flags(ring, record_bytes::<T>(), false))
        .is_err()
    {
        count_drop(reason);
    }
}

/// Bytes a `T` record takes in a ring (with its 8-byte header).
#[inline(always)]
const fn record_bytes<T>() -> u64 {
    size_of::<T>() as u64 + 8
}

/// Commit flags for a record of `bytes` in `ring` (`reserved`: already
/// counted as waiting): a wakeup only for the record that takes the bytes
/// waiting past 64 KiB (or a quarter of the ring). Not for every record
/// after it: each wakeup is an irq_work, a self-interrupt, which costs
/// microseconds in a virtual machine, and the reader is already awake.
#[inline(always)]
fn wake_flags(ring: &RingBuf, bytes: u64, reserved: bool) -> u64 {
    let waiting = ring.query(BPF_RB_AVAIL_DATA as u64);
    let before = if reserved {
        waiting.saturating_sub(bytes)
    } else {
        waiting
    };
    let line = (ring.query(BPF_RB_RING_SIZE as u64) / 4).min(64 * 1024);
    let flags = if before < line && before + bytes >= line {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    flags as u64
}
