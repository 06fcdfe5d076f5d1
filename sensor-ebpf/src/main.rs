//! rxsentry kernel programs. One module per hook family; helpers shared by all
//! programs live in `kernel` (field reads through BTF offsets) and `maps`
//! (ring buffers, drop counters).
//!
//! Only meaningful for `target_arch = "bpf"` (built by sensor-user's build.rs);
//! on the host a stub binary keeps `cargo build --workspace` working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod file;
#[cfg(target_arch = "bpf")]
mod hook_floor;
#[cfg(target_arch = "bpf")]
mod isolation;
#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod tamper;
#[cfg(target_arch = "bpf")]
mod write_guard;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects reachable loops without exits, so every panic path
    // must be optimised away; this is never reached in a loaded program.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "sensor-ebpf holds eBPF programs; sensor-user's build.rs builds it for bpfel-unknown-none"
    );
    std::process::exit(2);
}
