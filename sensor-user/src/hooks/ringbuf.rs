//! Reads a BPF ring buffer from tokio without busy polling: the map's fd
//! becomes readable when the kernel asks for a wakeup, and a short timer
//! drains what was committed quietly in between.

use std::{future::Future, os::fd::AsRawFd};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// The kernel programs commit most records without a wakeup (see
/// sensor-ebpf `submit_process_event`); this timer bounds their latency.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Calls `on_record` for every record until `shutdown` resolves, then drains
/// what is left so nothing already committed is lost on a clean stop.
pub async fn read_ring(
    ring: RingBuf<MapData>,
    mut on_record: impl FnMut(&[u8]),
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut fd = register_readable(ring)?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(record) = ring.next() {
                    on_record(&record);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let ring = fd.get_mut();
                while let Some(record) = ring.next() {
                    on_record(&record);
                }
            }
            () = &mut shutdown => break,
        }
    }
    let ring = fd.get_mut();
    while let Some(record) = ring.next() {
        on_record(&record);
    }
    Ok(())
}

/// Registers an fd-owning aya object (ring buffer, logger) with tokio.
pub fn register_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: aya's ring buffer and logger own their map fd for their whole
    // lifetime and always return the same one, which is what tokio requires.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(|e| e.into())
}
