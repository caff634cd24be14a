//! Timestamps: milliseconds since the Unix epoch, rendered as RFC 3339 UTC on the wire.
//!
//! Storage keeps integers (portable across SQLite and PostgreSQL, cheap to compare); only the
//! API edge turns them into strings.

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self(millis)
    }

    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn plus_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis))
    }

    pub fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    /// `2026-11-23T14:43:20.123Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let millis = self.0.rem_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

impl Timestamp {
    /// Parses an RFC 3339 date-time, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; the fraction is
    /// cut to milliseconds. `None` for anything else (including impossible dates).
    pub fn parse_rfc3339(raw: &str) -> Option<Self> {
        parse(raw, false)
    }

    /// Like [`Timestamp::parse_rfc3339`], and also a bare date `YYYY-MM-DD` (midnight UTC), for
    /// ranges a person types (`tessera` usage `from`/`to`).
    pub fn parse_rfc3339_or_date(raw: &str) -> Option<Self> {
        parse(raw, true)
    }
}

/// The one RFC 3339 parser behind [`Timestamp::parse_rfc3339`] and
/// [`Timestamp::parse_rfc3339_or_date`].
fn parse(raw: &str, allow_date: bool) -> Option<Timestamp> {
    let b = raw.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) || day < 1 {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    if civil_from_days(days) != (year, month as u32, day as u32) {
        return None;
    }
    if allow_date && b.len() == 10 {
        return Some(Timestamp(days.checked_mul(86_400_000)?));
    }
    if !(sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(Timestamp(secs.checked_mul(1000)?.checked_add(millis)?))
}

/// Days since 1970-01-01 of a Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(
            Timestamp::from_millis(0).to_rfc3339(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_736_937_900_123).to_rfc3339(),
            "2025-01-15T10:45:00.123Z"
        );
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_rfc3339() {
        for ms in [
            0,
            1_736_937_900_123,
            951_782_400_000,
            4_102_444_799_999,
            -86_400_000,
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
            assert_eq!(Timestamp::parse_rfc3339_or_date(&t.to_rfc3339()), Some(t));
        }
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-15T12:45:00+02:00"),
            Some(Timestamp::from_millis(1_736_937_900_000))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-15T11:45:00+01:00"),
            Timestamp::parse_rfc3339("2025-01-15T10:45:00Z")
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-15T10:45:00.1234567Z"),
            Some(Timestamp::from_millis(1_736_937_900_123))
        );
        for bad in [
            "",
            "2025-01-15",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-01-15T10:45:00",
            "2025-01-15T24:00:00Z",
            "2025-01-15T25:00:00Z",
            "2025-01-15T10:45:00.Z",
            "2025-01-15T10:45:00Zjunk",
            "tomorrow",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_a_bare_date_only_when_asked() {
        assert_eq!(
            Timestamp::parse_rfc3339_or_date("2025-01-15"),
            Timestamp::parse_rfc3339("2025-01-15T00:00:00Z")
        );
        assert_eq!(
            Timestamp::parse_rfc3339_or_date("2024-02-29"),
            Timestamp::parse_rfc3339("2024-02-29T00:00:00Z")
        );
        for bad in ["", "2025-13-01", "2025-02-30", "2025-01-15T", "yesterday"] {
            assert_eq!(Timestamp::parse_rfc3339_or_date(bad), None, "{bad}");
        }
    }
}
