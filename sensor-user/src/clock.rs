//! The sensor's clocks: the kernel's event clock and wall-clock (UTC) time.
//!
//! The kernel stamps every event with CLOCK_BOOTTIME
//! (`bpf_ktime_get_boot_ns`), which only means something on that host and
//! that boot. Each event also carries the UTC time of the host's boot,
//! fixed when the enrichment thread encodes it (so a batch spooled or
//! retried for hours keeps the time its events happened, not the time it
//! was sent); the event's UTC time is the sum:
//!
//! ```text
//! boot_time_unix_ns = CLOCK_REALTIME - CLOCK_BOOTTIME   (per event, on the wire)
//! wall time         = boot_time_unix_ns + timestamp_ns  (Event::wall_time_unix_ns())
//! ```
//!
//! On the wire the boot time is the same for every event of a run, so zstd
//! takes it for almost nothing; a full UTC time per event cost 4.9 bytes
//! per event (the bench's bytes per exec went from 47.9 to 62.5).
//!
//! - Suspend: CLOCK_BOOTTIME keeps counting while the kiosk is suspended,
//!   as CLOCK_REALTIME does, so their difference does not move across a
//!   suspend (with CLOCK_MONOTONIC, which stops, every event after a resume
//!   would be early by the time spent asleep). Kernel stamps and the offset
//!   use the same clock, so no suspend correction is needed.
//! - NTP steps (chrony `makestep`, `date -s`, settimeofday): CLOCK_REALTIME
//!   jumps and CLOCK_BOOTTIME does not, so the offset changes; slewing
//!   (adjtimex) moves it slowly (at most 500 ppm). [`WallClock`] reads the
//!   offset again at the start of every run of events the enrichment thread
//!   encodes (at most `pipeline::RUN_EVENTS`, 64, and a run ends whenever
//!   the queue is empty) and whenever an event's stamp is more than
//!   [`MAX_OFFSET_AGE_NS`] (100 ms) past the moment the offset was read.
//!   So after a step, an event still gets the old offset only if it
//!   happened less than 100 ms after the step *and* its run began before
//!   the step. Events that happened before a step but are encoded after it
//!   get the new, corrected offset: every wall time is on the clock as it
//!   was when the event was encoded.
//! - The offset is read as BOOTTIME, REALTIME, BOOTTIME and taken against
//!   the midpoint, the narrowest of a few tries: off by at most half that
//!   window (well under a microsecond unless the thread was preempted).

use std::sync::Arc;

/// Longest an offset is used for, in event time (CLOCK_BOOTTIME ns past
/// the moment it was read) before it is read again.
pub const MAX_OFFSET_AGE_NS: u64 = 100_000_000;

/// A read window at most this wide is taken at once (no further tries).
const GOOD_WINDOW_NS: u64 = 20_000;
const OFFSET_TRIES: usize = 3;

/// CLOCK_BOOTTIME in ns: the clock of kernel event timestamps, so batch and
/// event times compare directly. 0 if the clock cannot be read.
pub fn boottime_ns() -> u64 {
    SystemClocks.boottime_ns().unwrap_or(0)
}

/// The two clocks a wall time is made of; a trait so tests can step them.
pub trait ClockSource: Send + Sync {
    /// CLOCK_BOOTTIME, ns.
    fn boottime_ns(&self) -> Option<u64>;
    /// CLOCK_REALTIME, ns since the Unix epoch (negative before it).
    fn realtime_ns(&self) -> Option<i128>;
}

/// The host's clocks (vDSO `clock_gettime`, no system call).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClocks;

fn read(clock: nix::time::ClockId) -> Option<i128> {
    let ts = nix::time::clock_gettime(clock).ok()?;
    Some(i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
}

impl ClockSource for SystemClocks {
    fn boottime_ns(&self) -> Option<u64> {
        u64::try_from(read(nix::time::ClockId::CLOCK_BOOTTIME)?).ok()
    }

    fn realtime_ns(&self) -> Option<i128> {
        read(nix::time::ClockId::CLOCK_REALTIME)
    }
}

/// CLOCK_REALTIME - CLOCK_BOOTTIME as read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootOffset {
    offset_ns: i128,
    /// CLOCK_BOOTTIME when it was read.
    read_at_boot_ns: u64,
}

impl BootOffset {
    /// Reads the offset from `source`; `None` if a clock cannot be read.
    pub fn read(source: &dyn ClockSource) -> Option<Self> {
        let mut best: Option<(u64, Self)> = None;
        for _ in 0..OFFSET_TRIES {
            let before = source.boottime_ns()?;
            let real = source.realtime_ns()?;
            let after = source.boottime_ns()?.max(before);
            let window = after - before;
            let mid = before + window / 2;
            let offset = Self {
                offset_ns: real - i128::from(mid),
                read_at_boot_ns: mid,
            };
            if best.is_none_or(|(w, _)| window < w) {
                best = Some((window, offset));
            }
            if window <= GOOD_WINDOW_NS {
                break;
            }
        }
        best.map(|(_, offset)| offset)
    }

    /// UTC ns since the Unix epoch of CLOCK_BOOTTIME `boot_ns`; 0 (unknown)
    /// for a zero stamp or a time before the epoch.
    pub fn wall_ns(&self, boot_ns: u64) -> u64 {
        if boot_ns == 0 {
            return 0;
        }
        u64::try_from(i128::from(boot_ns) + self.offset_ns).unwrap_or(0)
    }

    /// CLOCK_BOOTTIME when the offset was read.
    pub fn read_at_boot_ns(&self) -> u64 {
        self.read_at_boot_ns
    }
}

/// Converts kernel stamps to wall time on the enrichment thread: the
/// offset is read again per run ([`Self::refresh`]) and when it is older
/// than [`MAX_OFFSET_AGE_NS`] in event time (see the module docs).
#[derive(Clone)]
pub struct WallClock {
    source: Arc<dyn ClockSource>,
    offset: Option<BootOffset>,
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WallClock")
            .field("offset", &self.offset)
            .finish()
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new(Arc::new(SystemClocks))
    }
}

impl WallClock {
    pub fn new(source: Arc<dyn ClockSource>) -> Self {
        let offset = BootOffset::read(source.as_ref());
        Self { source, offset }
    }

    /// Reads the offset again (the start of a run of events).
    pub fn refresh(&mut self) {
        self.offset = BootOffset::read(self.source.as_ref());
    }

    /// The wall time of kernel stamp `boot_ns` (0: unknown).
    pub fn wall_ns(&mut self, boot_ns: u64) -> u64 {
        if boot_ns == 0 {
            return 0;
        }
        let stale = self
            .offset
            .is_none_or(|o| boot_ns > o.read_at_boot_ns().saturating_add(MAX_OFFSET_AGE_NS));
        if stale {
            self.refresh();
        }
        self.offset.map_or(0, |o| o.wall_ns(boot_ns))
    }

    /// The UTC time of the host's boot for an event stamped `boot_ns`: its
    /// wall time minus its stamp (0: unknown).
    pub fn boot_time_ns(&mut self, boot_ns: u64) -> u64 {
        self.wall_ns(boot_ns).saturating_sub(boot_ns)
    }

    /// Both stamps of an event made now in userspace (audit records).
    pub fn now(&mut self) -> EventTime {
        let timestamp_ns = self.source.boottime_ns().unwrap_or(0);
        EventTime {
            timestamp_ns,
            boot_time_unix_ns: self.boot_time_ns(timestamp_ns),
        }
    }
}

/// Both stamps of an event made now in userspace (isolation audit records:
/// fixed when made, before they may wait in the audit spool).
pub fn now() -> EventTime {
    WallClock::default().now()
}

/// The two times of an `Event`: the kernel's CLOCK_BOOTTIME stamp and the
/// UTC time of the boot it counts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventTime {
    pub timestamp_ns: u64,
    pub boot_time_unix_ns: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};

    use super::*;

    /// Clocks a test moves: each read advances CLOCK_BOOTTIME by `tick`
    /// ns; CLOCK_REALTIME is CLOCK_BOOTTIME plus `offset`.
    #[derive(Debug, Default)]
    pub struct FakeClocks {
        pub boot: AtomicU64,
        pub offset: AtomicI64,
        pub tick: AtomicU64,
    }

    impl FakeClocks {
        pub fn new(boot: u64, offset: i64) -> Arc<Self> {
            Arc::new(Self {
                boot: AtomicU64::new(boot),
                offset: AtomicI64::new(offset),
                tick: AtomicU64::new(0),
            })
        }

        fn advance(&self) -> u64 {
            let tick = self.tick.load(SeqCst);
            self.boot.fetch_add(tick, SeqCst) + tick
        }
    }

    impl ClockSource for FakeClocks {
        fn boottime_ns(&self) -> Option<u64> {
            Some(self.advance())
        }

        fn realtime_ns(&self) -> Option<i128> {
            Some(i128::from(self.advance()) + i128::from(self.offset.load(SeqCst)))
        }
    }

    /// A host whose clocks cannot be read.
    struct NoClocks;

    impl ClockSource for NoClocks {
        fn boottime_ns(&self) -> Option<u64> {
            None
        }

        fn realtime_ns(&self) -> Option<i128> {
            None
        }
    }

    const SEC: u64 = 1_000_000_000;
    /// 2026-12-04T12:00:00Z.
    const NOON: i64 = 1_796_385_600 * SEC as i64;

    #[test]
    fn offset_is_taken_against_the_midpoint() {
        let clocks = FakeClocks::new(5 * SEC, NOON);
        clocks.tick.store(1_000, SeqCst);
        let offset = BootOffset::read(clocks.as_ref()).unwrap();
        // boot 5 s + 1 µs, real (5 s + 2 µs) + NOON, boot 5 s + 3 µs.
        assert_eq!(offset.read_at_boot_ns(), 5 * SEC + 2_000);
        assert_eq!(offset.wall_ns(7 * SEC), (NOON as u64) + 7 * SEC);
    }

    #[test]
    fn zero_stamps_and_times_before_the_epoch_are_unknown() {
        let offset = BootOffset::read(FakeClocks::new(SEC, NOON).as_ref()).unwrap();
        assert_eq!(offset.wall_ns(0), 0);
        // A clock set to before 1970 (a dead RTC battery and no NTP).
        let offset = BootOffset::read(FakeClocks::new(100 * SEC, -(200 * SEC as i64)).as_ref());
        assert_eq!(offset.unwrap().wall_ns(150 * SEC), 0);
        let mut clock = WallClock::new(Arc::new(NoClocks));
        assert_eq!(clock.wall_ns(5 * SEC), 0);
        assert_eq!(clock.now(), EventTime::default());
    }

    #[test]
    fn an_ntp_step_is_followed_within_one_run_or_100_ms() {
        let clocks = FakeClocks::new(1_000 * SEC, NOON);
        let mut clock = WallClock::new(clocks.clone());
        let wall = |boot: u64, offset: i64| (i128::from(boot) + i128::from(offset)) as u64;
        assert_eq!(clock.wall_ns(999 * SEC), wall(999 * SEC, NOON));

        // NTP steps the clock back one hour at boot time 1000.05 s.
        let stepped = NOON - 3_600 * SEC as i64;
        clocks.boot.store(1_000 * SEC + 50_000_000, SeqCst);
        clocks.offset.store(stepped, SeqCst);
        // Same run, event within 100 ms of the read: the old offset (the
        // documented bound).
        let soon = 1_000 * SEC + 60_000_000;
        assert_eq!(clock.wall_ns(soon), wall(soon, NOON));
        // The next run reads it again.
        clock.refresh();
        assert_eq!(clock.wall_ns(soon), wall(soon, stepped));

        // Another step, forward 10 s; an event more than 100 ms after the
        // last read needs no new run.
        let forward = stepped + 10 * SEC as i64;
        clocks.offset.store(forward, SeqCst);
        clocks.boot.store(1_001 * SEC, SeqCst);
        let later = 1_000 * SEC + 200_000_000;
        assert_eq!(clock.wall_ns(later), wall(later, forward));
    }

    #[test]
    fn suspend_does_not_move_the_offset() {
        // BOOTTIME and REALTIME both count the 8 hours the kiosk slept.
        let clocks = FakeClocks::new(60 * SEC, NOON);
        let mut clock = WallClock::new(clocks.clone());
        let before = clock.wall_ns(59 * SEC);
        let asleep = 8 * 3_600 * SEC;
        clocks.boot.fetch_add(asleep, SeqCst);
        clock.refresh();
        assert_eq!(clock.wall_ns(59 * SEC), before);
        assert_eq!(clock.wall_ns(59 * SEC + asleep), before + asleep);
    }

    #[test]
    fn system_wall_time_matches_the_system_clock() {
        let mut clock = WallClock::default();
        let before = std::time::SystemTime::now();
        let now = clock.now();
        let after = std::time::SystemTime::now();
        let ns = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        };
        assert!(now.timestamp_ns > 0);
        // Within 1 ms of the standard library's reading of CLOCK_REALTIME.
        let wall = now.boot_time_unix_ns + now.timestamp_ns;
        assert!(
            wall + 1_000_000 >= ns(before) && wall <= ns(after) + 1_000_000,
            "{now:?} not within [{before:?}, {after:?}]"
        );
        assert!(now.timestamp_ns <= boottime_ns());
    }
}
