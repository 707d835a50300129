//! CIM (DMTF DSP0004) datetimes: timestamps `yyyymmddHHMMSS.mmmmmmsUUU` (UUU = UTC offset
//! in minutes, s = `+`/`-`) and intervals `ddddddddHHMMSS.mmmmmm:000`.
//!
//! Decision: the DSP0004 wildcard form (`*` for unknown digits) is rejected with a typed
//! error; neither Hyper-V nor cosnap produces it, and a half-known time cannot drive jobs.

use std::time::Duration;

use thiserror::Error;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Why a CIM datetime string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DateTimeError {
    /// The text is not 25 characters long; holds the text.
    #[error("CIM datetime {0:?} must be 25 characters long")]
    Length(String),
    #[error("CIM datetime {0:?}: wildcards ('*') are not supported")]
    /// The text uses `*` wildcards, which cosnap does not accept; holds the text.
    Wildcard(String),
    #[error("CIM datetime {text:?}: {reason}")]
    /// A field of the text is malformed or out of its range.
    Invalid {
        /// The datetime text as received.
        text: String,
        /// Which field is wrong, and how.
        reason: &'static str,
    },
    #[error("CIM datetime out of range: {0}")]
    /// The value does not fit the time types cosnap computes with; holds what overflowed.
    Range(String),
}

/// A parsed CIM datetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CimDateTime {
    /// A point in time with its UTC offset (`yyyymmddHHMMSS.mmmmmmsUUU`).
    Timestamp(OffsetDateTime),
    /// A time interval (`ddddddddHHMMSS.mmmmmm:000`).
    Interval(Duration),
}

impl CimDateTime {
    /// Parses either form (the 22nd character tells: `:` = interval, `+`/`-` = timestamp).
    pub fn parse(s: &str) -> Result<Self, DateTimeError> {
        check_shape(s)?;
        if s.as_bytes()[21] == b':' {
            parse_interval(s).map(Self::Interval)
        } else {
            parse_timestamp(s).map(Self::Timestamp)
        }
    }

    /// The DMTF text.
    pub fn to_cim_string(&self) -> String {
        match self {
            Self::Timestamp(t) => format_timestamp(*t),
            Self::Interval(d) => format_interval(*d),
        }
    }
}

fn check_shape(s: &str) -> Result<(), DateTimeError> {
    if s.len() != 25 || !s.is_ascii() {
        return Err(DateTimeError::Length(s.chars().take(60).collect()));
    }
    if s.contains('*') {
        return Err(DateTimeError::Wildcard(s.to_string()));
    }
    let b = s.as_bytes();
    let invalid = |reason| DateTimeError::Invalid {
        text: s.to_string(),
        reason,
    };
    if b[14] != b'.' {
        return Err(invalid("expected '.' at position 15"));
    }
    if !b[..14]
        .iter()
        .chain(&b[15..21])
        .chain(&b[22..])
        .all(u8::is_ascii_digit)
    {
        return Err(invalid("expected digits"));
    }
    if !matches!(b[21], b'+' | b'-' | b':') {
        return Err(invalid("expected '+', '-' or ':' at position 22"));
    }
    Ok(())
}

fn num(s: &str, r: std::ops::Range<usize>) -> u32 {
    s[r].parse().unwrap_or(0)
}

/// Parses `yyyymmddHHMMSS.mmmmmmsUUU`.
pub fn parse_timestamp(s: &str) -> Result<OffsetDateTime, DateTimeError> {
    check_shape(s)?;
    let invalid = |reason| DateTimeError::Invalid {
        text: s.to_string(),
        reason,
    };
    let sign = match s.as_bytes()[21] {
        b'+' => 1i32,
        b'-' => -1,
        _ => return Err(invalid("this is an interval, not a timestamp")),
    };
    let month = Month::try_from(num(s, 4..6) as u8).map_err(|_| invalid("month out of range"))?;
    let date = Date::from_calendar_date(num(s, 0..4) as i32, month, num(s, 6..8) as u8)
        .map_err(|_| invalid("no such date"))?;
    let time = Time::from_hms_micro(
        num(s, 8..10) as u8,
        num(s, 10..12) as u8,
        num(s, 12..14) as u8,
        num(s, 15..21),
    )
    .map_err(|_| invalid("no such time of day"))?;
    let minutes = sign * num(s, 22..25) as i32;
    let offset = UtcOffset::from_whole_seconds(minutes * 60)
        .map_err(|_| invalid("UTC offset out of range"))?;
    Ok(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

/// Formats a timestamp in its own UTC offset (whole minutes; seconds of offset dropped).
pub fn format_timestamp(t: OffsetDateTime) -> String {
    let off_min = t.offset().whole_minutes();
    let year = t.year().clamp(0, 9999);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}.{:06}{}{:03}",
        year,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond(),
        if off_min < 0 { '-' } else { '+' },
        off_min.unsigned_abs().min(999)
    )
}

/// The CIM timestamp (UTC, `+000`) of an instant given in milliseconds since the Unix
/// epoch; instants outside the `time` crate's range print as the epoch.
pub fn format_unix_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format_timestamp(t)
}

/// The CIM interval of a duration given in milliseconds (negative durations print as zero).
pub fn format_interval_ms(ms: i64) -> String {
    format_interval(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

/// Parses `ddddddddHHMMSS.mmmmmm:000`.
pub fn parse_interval(s: &str) -> Result<Duration, DateTimeError> {
    check_shape(s)?;
    let invalid = |reason| DateTimeError::Invalid {
        text: s.to_string(),
        reason,
    };
    if &s[21..] != ":000" {
        return Err(invalid("an interval ends in \":000\""));
    }
    let (h, m, sec) = (num(s, 8..10), num(s, 10..12), num(s, 12..14));
    if h > 23 || m > 59 || sec > 59 {
        return Err(invalid("hours, minutes or seconds out of range"));
    }
    let days = u64::from(num(s, 0..8));
    let secs = days * 86_400 + u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(sec);
    Ok(Duration::new(secs, num(s, 15..21) * 1000))
}

/// Formats an interval (microsecond precision; days above 99,999,999 are an error).
pub fn format_interval(d: Duration) -> String {
    try_format_interval(d).unwrap_or_else(|_| "99999999235959.999999:000".to_string())
}

/// [`format_interval`] that reports intervals too long for the format.
pub fn try_format_interval(d: Duration) -> Result<String, DateTimeError> {
    let secs = d.as_secs();
    let days = secs / 86_400;
    if days > 99_999_999 {
        return Err(DateTimeError::Range(format!("{days} days")));
    }
    let rem = secs % 86_400;
    Ok(format!(
        "{:08}{:02}{:02}{:02}.{:06}:000",
        days,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::datetime;

    #[test]
    fn milliseconds_since_the_epoch() {
        assert_eq!(format_unix_ms(0), "19700101000000.000000+000");
        assert_eq!(format_unix_ms(1_500), "19700101000001.500000+000");
        assert_eq!(format_interval_ms(300_000), "00000000000500.000000:000");
        assert_eq!(format_interval_ms(90_061_001), "00000001010101.001000:000");
        assert_eq!(format_interval_ms(-5), "00000000000000.000000:000");
    }

    #[test]
    fn timestamps() {
        let t = parse_timestamp("20261125063001.123456+060").unwrap();
        assert_eq!(t, datetime!(2026-11-25 06:30:01.123456 +01:00));
        assert_eq!(format_timestamp(t), "20261125063001.123456+060");
        let t = parse_timestamp("19991231235959.000000-300").unwrap();
        assert_eq!(t.offset().whole_minutes(), -300);
        assert_eq!(
            format_timestamp(datetime!(2026-01-02 03:04:05 UTC)),
            "20260102030405.000000+000"
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(
            parse_interval("00000000000500.000000:000").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            format_interval(Duration::from_secs(300)),
            "00000000000500.000000:000"
        );
        let d = Duration::new(3 * 86_400 + 4 * 3600 + 5 * 60 + 6, 7_000);
        assert_eq!(format_interval(d), "00000003040506.000007:000");
        assert_eq!(parse_interval(&format_interval(d)).unwrap(), d);
        assert!(try_format_interval(Duration::from_secs(100_000_000 * 86_400)).is_err());
    }

    #[test]
    fn either_form() {
        assert!(matches!(
            CimDateTime::parse("00000000000500.000000:000"),
            Ok(CimDateTime::Interval(_))
        ));
        assert!(matches!(
            CimDateTime::parse("20261125063001.123456+000"),
            Ok(CimDateTime::Timestamp(_))
        ));
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "2026112506300.123456+000",
            "20261325063001.123456+000",
            "20260230063001.123456+000",
            "20261125253001.123456+000",
            "20261125063001,123456+000",
            "2026112506300a.123456+000",
            "20261125063001.123456*000",
            "2026112506****.******+000",
            "00000000240000.000000:000",
            "00000000000000.000000:001",
            "20261125063001.123456+000x",
            "２0261125063001.123456+000",
        ] {
            assert!(CimDateTime::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_timestamp("00000000000500.000000:000").is_err());
        assert!(parse_interval("20261125063001.123456+000").is_err());
    }

    proptest! {
        #[test]
        fn timestamp_round_trip(secs in 0i64..253_402_300_799, micros in 0u32..1_000_000, off in -720i32..=720) {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap()
                .replace_microsecond(micros).unwrap()
                .to_offset(UtcOffset::from_whole_seconds(off * 60).unwrap());
            if (0..=9999).contains(&t.year()) {
                prop_assert_eq!(parse_timestamp(&format_timestamp(t)).unwrap(), t);
            }
        }

        #[test]
        fn interval_round_trip(secs in 0u64..99_999_999 * 86_400, micros in 0u32..1_000_000) {
            let d = Duration::new(secs, micros * 1000);
            prop_assert_eq!(parse_interval(&format_interval(d)).unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,30}") {
            let _ = CimDateTime::parse(&s);
        }
    }
}
