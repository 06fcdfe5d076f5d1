//! The BPF-LSM probe: a `bprm_check_security` program that allows every exec
//! and counts how often it ran.
//!
//! `rxsentry-probe` loads and attaches it, runs one exec, and reads the
//! count. Attaching is not enough: a kernel with CONFIG_BPF_LSM but without
//! `bpf` among its active LSMs (the `lsm=` boot parameter) accepts the
//! program and then never calls it. Only a count above zero proves that
//! exec allowlisting can use the LSM backend; otherwise the tracepoint +
//! SIGKILL backend is the one to use.

use aya_ebpf::{macros::lsm, macros::map, maps::Array, programs::LsmContext};

/// Slot 0: how many times the program ran (races may lose counts; only
/// "more than zero" matters).
#[map]
static LSM_PROBE_HITS: Array<u64> = Array::with_max_entries(1, 0);

/// Returns 0 = allow: attaching it never changes what the machine does.
#[lsm(hook = "bprm_check_security")]
pub fn lsm_probe_bprm(_ctx: LsmContext) -> i32 {
    if let Some(hits) = LSM_PROBE_HITS.get_ptr_mut(0) {
        // SAFETY: a valid pointer to the map's only slot.
        unsafe { *hits += 1 };
    }
    0
}
