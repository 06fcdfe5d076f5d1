//! `--since` / `--until` as an analyst types them: an age (`90s`, `15m`,
//! `1h`, `7d`, counted back from now) or a UTC time
//! (`2026-12-04T12:00:00Z`, `2026-12-04T12:00:00.250Z`, `2026-12-04`).

use std::time::{SystemTime, UNIX_EPOCH};

const NS_PER_SEC: u64 = 1_000_000_000;

/// This machine's clock, UTC ns since the epoch.
pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A point in time, UTC ns since the epoch, relative to `now`.
pub fn parse(text: &str, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Some(age) = parse_age(text) {
        return age.map(|ns| now.saturating_sub(ns));
    }
    parse_utc(text).ok_or_else(|| {
        format!(
            "{text:?}: expected an age (90s, 15m, 1h, 7d) or a UTC time \
             (2026-12-04T12:00:00Z or 2026-12-04)"
        )
    })
}

/// `Some(Ok(ns))` for `<n><s|m|h|d>`, `None` when it is not an age.
fn parse_age(text: &str) -> Option<Result<u64, String>> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    let n: u64 = number.parse().ok()?;
    Some(
        n.checked_mul(per)
            .and_then(|s| s.checked_mul(NS_PER_SEC))
            .ok_or_else(|| format!("{text:?}: too far back")),
    )
}

/// `YYYY-MM-DD[THH:MM:SS[.fff]Z]`, UTC only (no offsets: say Z).
fn parse_utc(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut d = date.splitn(3, '-');
    let year: u64 = d.next()?.parse().ok()?;
    let month: u64 = d.next()?.parse().ok()?;
    let day: u64 = d.next()?.parse().ok()?;
    if !(1970..=2500).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(year, month, day) * 86_400;
    let mut frac_ns = 0;
    if let Some(time) = time {
        let (hms, frac) = match time.split_once('.') {
            Some((hms, frac)) => (hms, Some(frac)),
            None => (time, None),
        };
        let mut t = hms.splitn(3, ':');
        let h: u64 = t.next()?.parse().ok()?;
        let m: u64 = t.next()?.parse().ok()?;
        let s: u64 = t.next()?.parse().ok()?;
        if h > 23 || m > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + m * 60 + s;
        if let Some(frac) = frac {
            if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            frac_ns = format!("{frac:0<9}").parse().ok()?;
        }
    }
    Some(secs * NS_PER_SEC + frac_ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`, for years >= 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_385_600_000_000_000; // 2026-12-04T12:00:00Z

    #[test]
    fn ages_count_back_from_now() {
        assert_eq!(parse("90s", NOW).unwrap(), NOW - 90 * NS_PER_SEC);
        assert_eq!(parse("1h", NOW).unwrap(), NOW - 3600 * NS_PER_SEC);
        assert_eq!(parse("7d", NOW).unwrap(), NOW - 7 * 86_400 * NS_PER_SEC);
        assert!(parse("99999999999999999d", NOW).is_err());
    }

    #[test]
    fn utc_times_and_dates() {
        assert_eq!(parse("2026-12-04T12:00:00Z", 0).unwrap(), NOW);
        assert_eq!(
            parse("2026-12-04T12:00:00.25Z", 0).unwrap(),
            NOW + 250_000_000
        );
        assert_eq!(
            parse("2026-12-04", 0).unwrap(),
            NOW - 12 * 3600 * NS_PER_SEC
        );
        assert_eq!(
            parse("2024-02-29T23:59:59Z", 0).unwrap(),
            1_709_251_199 * NS_PER_SEC
        );
        assert_eq!(parse("1970-01-01", 0).unwrap(), 0);
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "1x",
            "h",
            "yesterday",
            "2026-13-01",
            "2026-12-04T25:00:00Z",
            "2026-12-04T12:00:00+01:00",
            "2026-12-04T12:00:00",
            "2026-12-04T12:00:00.Z",
        ] {
            assert!(parse(bad, NOW).is_err(), "{bad}");
        }
    }
}
