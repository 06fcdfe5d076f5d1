//! The `bpf_loop` plumbing of the walks: a per-CPU state in map memory, and
//! the context a callback gets.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_loop, macros::map, maps::PerCpuArray};
use sensor_common::{KernelOffsets, PathRecord, WatchEntry};

use crate::maps::offsets;

pub(super) const LOOP_CONTINUE: i64 = 0;
pub(super) const LOOP_STOP: i64 = 1;

/// Scalar state of the `bpf_loop` walks (`walk`). It lives in map memory, not
/// on the stack, on purpose: the verifier tracks stack constants exactly, so
/// a counter there makes every iteration a new state to explore (seconds of
/// verification, then refusal); values in map memory are simply unknown,
/// and the callback is verified once.
#[derive(Clone, Copy)]
pub(super) struct LoopState {
    pub(super) cur: u64,
    pub(super) hash: u64,
    pub(super) before: u64,
    pub(super) depth: u32,
    pub(super) found: u32,
    pub(super) entry: WatchEntry,
    pub(super) levels: u32,
    pub(super) pos: u32,
    pub(super) len: u32,
    pub(super) dots: u32,
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
pub(super) fn bpf_for(
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
pub(super) fn loop_state(cur: *const u8) -> Option<&'static mut LoopState> {
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
pub(super) unsafe fn loop_parts(
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
