//! UTC timestamps in the one form records use: `2026-11-24T10:00:00.123Z`.

use std::time::{SystemTime, UNIX_EPOCH};

const MS_PER_DAY: u64 = 86_400_000;

/// `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (times before 1970 print as 1970).
pub fn format_utc(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (y, m, d) = civil_from_days(ms / MS_PER_DAY);
    let in_day = ms % MS_PER_DAY;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// Milliseconds since the epoch of `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM`,
/// `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DDTHH:MM:SS.mmm`, each with an
/// optional trailing `Z` (always UTC); `None` for anything else.
pub fn parse_utc_ms(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut date = date.split('-');
    let y = number(date.next()?, 4, 1970, 9999)?;
    let m = number(date.next()?, 2, 1, 12)?;
    let d = number(date.next()?, 2, 1, days_in_month(y, m))?;
    if date.next().is_some() {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * MS_PER_DAY;
    if let Some(time) = time {
        let (hms, frac) = match time.split_once('.') {
            Some((hms, frac)) => (hms, Some(frac)),
            None => (time, None),
        };
        let mut parts = hms.split(':');
        let h = number(parts.next()?, 2, 0, 23)?;
        let mi = number(parts.next()?, 2, 0, 59)?;
        let s = parts.next().map_or(Some(0), |s| number(s, 2, 0, 59))?;
        if parts.next().is_some() {
            return None;
        }
        let milli = frac.map_or(Some(0), |f| number(f, 3, 0, 999))?;
        ms += ((h * 60 + mi) * 60 + s) * 1000 + milli;
    }
    Some(ms)
}

fn number(text: &str, digits: usize, min: u64, max: u64) -> Option<u64> {
    if text.len() != digits || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| (min..=max).contains(n))
}

fn is_leap(y: u64) -> bool {
    y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400))
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date from 1970 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let leaps = |y: u64| y / 4 - y / 100 + y / 400;
    let before_year = (y - 1970) * 365 + leaps(y - 1) - leaps(1969);
    let before_month: u64 = (1..m).map(|mm| days_in_month(y, mm)).sum();
    before_year + before_month + d - 1
}

/// The date `days` after 1970-01-01.
fn civil_from_days(mut days: u64) -> (u64, u64, u64) {
    let mut y = 1970;
    loop {
        let len = if is_leap(y) { 366 } else { 365 };
        if days < len {
            break;
        }
        days -= len;
        y += 1;
    }
    let mut m = 1;
    while days >= days_in_month(y, m) {
        days -= days_in_month(y, m);
        m += 1;
    }
    (y, m, days + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_and_parses_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_521_600_123); // 2026-11-24T12:00:00.123Z
        let text = format_utc(t);
        assert_eq!(text, "2026-11-24T12:00:00.123Z");
        assert_eq!(parse_utc_ms(&text), Some(1_795_521_600_123));
        assert_eq!(parse_utc_ms("2026-11-24"), Some(1_795_478_400_000));
        assert_eq!(parse_utc_ms("2026-11-24T12:00"), Some(1_795_521_600_000));
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(parse_utc_ms("2000-02-29"), Some(951_782_400_000));
    }

    #[test]
    fn other_forms_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-11-31",
            "2026-13-01",
            "2026-1-01",
            "2026-11-24T25:00",
            "2026-11-24 10:00",
            "2026-11-24T10:00:00+01:00",
            "1969-12-31",
        ] {
            assert_eq!(parse_utc_ms(bad), None, "{bad}");
        }
    }
}
