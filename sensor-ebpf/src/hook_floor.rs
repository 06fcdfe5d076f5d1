//! The hook floor: a program on the open exit tracepoint that only counts
//! its runs, so that the cost of the hook itself (the kernel's syscall
//! tracepoint path: the traced-syscall slow path, the perf trace record it
//! builds and the BPF dispatch) can be measured apart from the work of the
//! sensor's own open programs.
//!
//! `rxsentry-probe --hold-open-hook` attaches it; `cargo xtask bench` times
//! the open storm under it next to the storm under the sensor. The sensor
//! never loads it.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

/// Slot 0: runs on each CPU (per CPU, so that counting never bounces a
/// cache line between the storm's threads and adds cost of its own).
#[map]
static HOOK_FLOOR_RUNS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn hook_floor_open_exit(_ctx: TracePointContext) -> u32 {
    if let Some(runs) = HOOK_FLOOR_RUNS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; one program runs on a CPU at a time.
        unsafe { *runs += 1 };
    }
    0
}
