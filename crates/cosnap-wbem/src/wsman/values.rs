//! CIM datetimes and intervals in their WS-Man forms (DSP0230 via MS-WSMV §2.2.5.3):
//! timestamps as xs:dateTime (`2026-11-30T10:00:00.123456Z`), intervals as xs:duration
//! (`P1DT2H3M4.000005S`), both ways.

use std::time::Duration;

use cosnap_cim::datetime::{self, CimDateTime};
use time::{OffsetDateTime, UtcOffset};

/// Longest xs:duration text accepted (bounds the parse).
const MAX_DURATION_TEXT: usize = 64;

/// Parses a non-negative xs:duration (`PnDTnHnMn.nS`; years and months are refused, as a
/// length of time they are ambiguous). Returns `None` for anything else.
pub fn parse_xs_duration(text: &str) -> Option<Duration> {
    if text.len() > MAX_DURATION_TEXT {
        return None;
    }
    let rest = text.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut micros: u128 = 0;
    let mut any = false;
    if !date.is_empty() {
        let days = date.strip_suffix('D')?;
        micros += u128::from(days.parse::<u64>().ok()?) * 86_400_000_000;
        any = true;
    }
    if let Some(mut t) = time {
        if t.is_empty() {
            return None;
        }
        for (unit, scale) in [('H', 3_600_000_000u128), ('M', 60_000_000)] {
            if let Some(i) = t.find(unit) {
                micros += u128::from(t[..i].parse::<u64>().ok()?) * scale;
                t = &t[i + 1..];
                any = true;
            }
        }
        if !t.is_empty() {
            let secs = t.strip_suffix('S')?;
            let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
            if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
                return None;
            }
            micros += u128::from(whole.parse::<u64>().ok()?) * 1_000_000;
            let frac6: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
            micros += u128::from(frac6.parse::<u64>().ok()?);
            any = true;
        }
    }
    if !any {
        return None;
    }
    let secs = u64::try_from(micros / 1_000_000).ok()?;
    Some(Duration::new(secs, (micros % 1_000_000) as u32 * 1000))
}

/// Formats an interval as xs:duration, e.g. `P1DT2H3M4.000005S`.
pub fn format_xs_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let micros = d.subsec_micros();
    let mut out = format!("P{days}DT{h}H{m}M{s}");
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    out.push('S');
    out
}

/// A CIM timestamp as xs:dateTime in UTC with microseconds.
pub fn format_xs_datetime(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Parses xs:dateTime (fraction optional, zone `Z`, `±hh:mm` or none = UTC) into CIM text.
pub fn xs_datetime_to_cim(text: &str) -> Option<String> {
    if text.len() > MAX_DURATION_TEXT || !text.is_ascii() {
        return None;
    }
    let (main, offset_min) = split_zone(text)?;
    let (date, time) = main.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da) = (d.next()?, d.next()?, d.next()?);
    if d.next().is_some() || y.len() != 4 || mo.len() != 2 || da.len() != 2 {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (h, mi, s) = (t.next()?, t.next()?, t.next()?);
    if t.next().is_some() || [h, mi, s].iter().any(|p| p.len() != 2) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac6: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let sign = if offset_min < 0 { '-' } else { '+' };
    let cim = format!(
        "{y}{mo}{da}{h}{mi}{s}.{frac6}{sign}{:03}",
        offset_min.unsigned_abs()
    );
    datetime::parse_timestamp(&cim).ok()?;
    Some(cim)
}

fn split_zone(text: &str) -> Option<(&str, i32)> {
    if let Some(main) = text.strip_suffix('Z') {
        return Some((main, 0));
    }
    let tail = text.len().checked_sub(6)?;
    let zone = &text[tail..];
    if zone.as_bytes()[3] == b':' && matches!(zone.as_bytes()[0], b'+' | b'-') {
        let h: i32 = zone[1..3].parse().ok()?;
        let m: i32 = zone[4..6].parse().ok()?;
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        return Some((&text[..tail], sign * (h * 60 + m)));
    }
    Some((text, 0))
}

/// The `cim:` element for a CIM datetime value: `Datetime` or `Interval`, or the raw
/// `CIM_DateTime` text when it does not parse.
pub fn datetime_element(cim_text: &str) -> (&'static str, String) {
    match CimDateTime::parse(cim_text) {
        Ok(CimDateTime::Timestamp(t)) => ("Datetime", format_xs_datetime(t)),
        Ok(CimDateTime::Interval(d)) => ("Interval", format_xs_duration(d)),
        Err(_) => ("CIM_DateTime", cim_text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for text in ["PT20S", "PT0.5S", "P1DT2H3M4.000005S", "PT60M", "P3D"] {
            let d = parse_xs_duration(text).unwrap();
            assert_eq!(parse_xs_duration(&format_xs_duration(d)), Some(d), "{text}");
        }
        assert_eq!(parse_xs_duration("PT20S"), Some(Duration::from_secs(20)));
        assert_eq!(
            parse_xs_duration("P1DT2H3M4.000005S"),
            Some(Duration::new(93_784, 5_000))
        );
        for bad in ["", "P", "PT", "20S", "P1Y", "PT-1S", "PT1.5.5S", "PTXS"] {
            assert_eq!(parse_xs_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn datetimes_both_ways() {
        let cim = xs_datetime_to_cim("2026-11-30T10:00:00.123456Z").unwrap();
        assert_eq!(cim, "20261130100000.123456+000");
        assert_eq!(
            datetime_element(&cim),
            ("Datetime", "2026-11-30T10:00:00.123456Z".to_string())
        );
        assert_eq!(
            xs_datetime_to_cim("2026-11-30T11:30:00+01:30").unwrap(),
            "20261130113000.000000+090"
        );
        assert_eq!(
            datetime_element("00000000000500.000000:000"),
            ("Interval", "P0DT0H5M0S".to_string())
        );
        assert!(xs_datetime_to_cim("2026-13-30T10:00:00Z").is_none());
        assert!(xs_datetime_to_cim("yesterday").is_none());
    }
}
