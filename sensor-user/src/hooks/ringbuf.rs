//! Reads a BPF ring buffer from tokio without busy polling: the map's fd
//! becomes readable when the kernel asks for a wakeup, and a short timer
//! drains what was committed quietly in between.

use std::{future::Future, os::fd::AsRawFd};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

/// The kernel programs commit most records without a wakeup (see
/// sensor-ebpf `submit_process_event`); this timer bounds their latency.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// What [`read_rings`] hands its caller.
pub enum RingEvent<'a> {
    /// One record, in ring order.
    Record(&'a [u8]),
    /// Every ring was just drained (on a wakeup or the timer); `last` on
    /// the final drain after `shutdown`.
    Drained { last: bool },
}

/// Calls `on_event` for every record of `rings` and after each drain until
/// `shutdown` resolves, then drains what is left so nothing already
/// committed is lost on a clean stop.
///
/// One task reads every ring and always drains them in the given order: a
/// task's exec (process ring) is committed before anything it does next, so
/// draining the process ring first hands the exec to enrichment before the
/// file or socket event of the same process.
pub async fn read_rings(
    rings: Vec<RingBuf<MapData>>,
    mut on_event: impl FnMut(RingEvent<'_>),
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut fds = rings
        .into_iter()
        .map(register_readable)
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let woken =
            futures::future::select_all(fds.iter_mut().map(|fd| Box::pin(fd.readable_mut())));
        tokio::select! {
            (guard, _, _) = woken => {
                // Cleared before draining: data committed after this point
                // raises readiness again, and the drain below reads it.
                guard?.clear_ready();
            }
            _ = tick.tick() => {}
            () = &mut shutdown => break,
        }
        drain(&mut fds, &mut on_event);
        on_event(RingEvent::Drained { last: false });
    }
    drain(&mut fds, &mut on_event);
    on_event(RingEvent::Drained { last: true });
    Ok(())
}

fn drain(fds: &mut [AsyncFd<RingBuf<MapData>>], on_event: &mut impl FnMut(RingEvent<'_>)) {
    for fd in fds {
        let ring = fd.get_mut();
        while let Some(record) = ring.next() {
            on_event(RingEvent::Record(&record));
        }
    }
}

/// Registers an fd-owning aya object (ring buffer, logger) with tokio.
pub fn register_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: aya's ring buffer and logger own their map fd for their whole
    // lifetime and always return the same one, which is what tokio requires.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }.map_err(|e| e.into())
}
