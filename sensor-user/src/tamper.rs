//! Self-protection: what the daemon reports when someone other than the
//! sensor touches what keeps its enforcement in force, as a `TamperEvent`
//! in the telemetry stream (docs/allowlisting.md#self-protection).

use proto::telemetry::v1::{Event, TamperEvent, event};

use crate::clock;

/// Tamper findings since the sensor started, all kinds.
static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one more finding; the total so far, this one included.
pub fn count_one() -> u64 {
    COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Findings since the sensor started (the metrics' counter).
pub fn count() -> u64 {
    COUNT.load(std::sync::atomic::Ordering::Relaxed)
}

/// How often the daemon checks its pins.
pub const POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// One finding: what was touched, what was seen, and what the sensor did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub object: &'static str,
    pub action: String,
    pub target: String,
    pub restored: bool,
    pub error: String,
}

impl Finding {
    /// The finding as a telemetry event; `count` is the findings since
    /// start, this one included.
    pub fn event(&self, count: u64) -> Event {
        let now = clock::now();
        Event {
            timestamp_ns: now.timestamp_ns,
            boot_time_unix_ns: now.boot_time_unix_ns,
            kind: Some(event::Kind::Tamper(TamperEvent {
                object: self.object.to_owned(),
                action: self.action.clone(),
                target: self.target.clone(),
                restored: self.restored,
                error: self.error.clone(),
                count,
            })),
        }
    }
}
