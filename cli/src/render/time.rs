//! Times as people read them: UTC, RFC 3339 with milliseconds.

use proto::telemetry::v1::Event;

const NS_PER_SEC: u64 = 1_000_000_000;
const SECS_PER_DAY: u64 = 86_400;

/// `2026-12-04T12:34:56.789Z` for UTC ns since the Unix epoch (cut, not
/// rounded, to the millisecond).
pub fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / NS_PER_SEC;
    let millis = unix_ns % NS_PER_SEC / 1_000_000;
    let (days, of_day) = (secs / SECS_PER_DAY, secs % SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// `utc`, or `None` for 0 (unknown).
pub fn utc_if_known(unix_ns: u64) -> Option<String> {
    (unix_ns != 0).then(|| utc(unix_ns))
}

/// Boot-relative seconds with milliseconds, for events without a wall
/// time (a sensor older than the field): `boot+2750.480`.
pub fn boot_seconds(ns: u64) -> String {
    format!(
        "boot+{}.{:03}",
        ns / NS_PER_SEC,
        ns % NS_PER_SEC / 1_000_000
    )
}

/// When `event` happened: its UTC time, else its boot-relative stamp.
pub fn event_time(event: &Event) -> String {
    event
        .wall_time_unix_ns()
        .and_then(utc_if_known)
        .unwrap_or_else(|| boot_seconds(event.timestamp_ns))
}

/// Another CLOCK_BOOTTIME stamp of the same event's host (a repeat's
/// first open), shown like [`event_time`]: its UTC time on the offset the
/// sensor used for the event itself.
pub fn related_time(event: &Event, boot_ns: u64) -> String {
    if event.boot_time_unix_ns == 0 || boot_ns == 0 {
        return boot_seconds(boot_ns);
    }
    utc(event.boot_time_unix_ns.saturating_add(boot_ns))
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic
/// Gregorian calendar (H. Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted to 0000-03-01, so the leap day ends each 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_is_rfc3339_with_milliseconds() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_796_385_600_123_456_789), "2026-12-04T12:00:00.123Z");
        assert_eq!(utc(1_709_251_199_999_999_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(utc(951_868_800_000_000_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(utc(u64::MAX), "2554-07-21T23:34:33.709Z");
        assert_eq!(utc_if_known(0), None);
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        // 1970 .. 2200: days, months and years roll over one at a time.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for days in 1..84_000 {
            let (y, m, d) = civil_from_days(days);
            let next_day = (y, m, d) == (prev.0, prev.1, prev.2 + 1);
            let next_month = (y, m, d) == (prev.0, prev.1 + 1, 1);
            let next_year = (y, m, d) == (prev.0 + 1, 1, 1) && prev.1 == 12 && prev.2 == 31;
            assert!(
                next_day || next_month || next_year,
                "{prev:?} -> {y}-{m}-{d}"
            );
            let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
            let month_len = [
                31,
                28 + u64::from(leap),
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            assert!(d <= month_len[m as usize - 1], "{y}-{m}-{d}");
            prev = (y, m, d);
        }
    }

    #[test]
    fn boot_time_has_milliseconds() {
        assert_eq!(boot_seconds(0), "boot+0.000");
        assert_eq!(boot_seconds(1_002_999_999), "boot+1.002");
    }

    #[test]
    fn event_time_prefers_the_wall_time() {
        let mut e = Event {
            timestamp_ns: 5_000_000_000,
            boot_time_unix_ns: 1_796_385_600_000_000_000 - 5_000_000_000,
            kind: None,
        };
        assert_eq!(event_time(&e), "2026-12-04T12:00:00.000Z");
        // 900 ms before the event, on the same offset.
        assert_eq!(related_time(&e, 4_100_000_000), "2026-12-04T11:59:59.100Z");
        e.boot_time_unix_ns = 0;
        assert_eq!(event_time(&e), "boot+5.000");
        assert_eq!(related_time(&e, 4_100_000_000), "boot+4.100");
    }
}
