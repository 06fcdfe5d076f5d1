//! The daemon's allocator settings, for a small resident set on a kiosk.
//!
//! glibc gives each thread that allocates under contention an arena of its
//! own and keeps freed memory in it for reuse: after a burst (a storm of
//! execs with long command lines, a spool replayed after an outage) the
//! sensor's RSS stayed at its peak, spread over the tokio workers' and
//! blocking threads' arenas. Measured with `cargo xtask bench --only-spool`
//! (20,000 execs with ~900 bytes of argv, docs/durability.md): RSS 48.8 MiB
//! with a full spool and 55.4 MiB after replaying it with glibc's defaults;
//! 37.6 and 36.7 MiB with one arena and memory above 128 KiB returned to
//! the kernel (large blocks mapped, the heap's top trimmed).

/// One arena, and 128 KiB as both the trim and the mmap threshold (fixed,
/// so glibc does not raise them after the first large free).
const THRESHOLD: i32 = 128 << 10;

/// Applies the settings; call before the first thread starts. On a libc
/// other than glibc this does nothing.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        use nix::libc;
        // SAFETY: mallopt only sets allocator parameters; it is called
        // before any other thread exists, as glibc asks.
        let ok = unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) == 1
        };
        if !ok {
            eprintln!("rxsentry-sensor: allocator settings refused; running with glibc's defaults");
        }
    }
}
