//! rxsentry kernel programs. One module per hook family; helpers shared by all
//! programs live in `kernel` (field reads through BTF offsets) and `maps`
//! (ring buffers, drop counters).
#![no_std]
#![no_main]

mod kernel;
mod maps;
mod process;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects reachable loops without exits, so every panic path
    // must be optimised away; this is never reached in a loaded program.
    loop {}
}
