//! Parsing `weir consume --from`: `beginning`, `end`, an offset, or a timestamp.
//!
//! A plain decimal number is an OFFSET. A TIMESTAMP is either `@` followed by milliseconds
//! since the Unix epoch (`@1714564800000`), or an RFC 3339 date-time with a zone
//! (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.250+02:00`), which always contains `-` and `:`
//! and so can never be mistaken for an offset.

use anyhow::{anyhow, bail, Result};
use weir_client::SeekTo;

pub fn parse_from(text: &str) -> Result<SeekTo> {
    let text = text.trim();
    match text.to_ascii_lowercase().as_str() {
        "beginning" | "earliest" => return Ok(SeekTo::Beginning),
        "end" | "latest" => return Ok(SeekTo::End),
        _ => {}
    }
    if let Some(millis) = text.strip_prefix('@') {
        let millis: i64 = millis
            .parse()
            .map_err(|_| anyhow!("--from {text:?}: expected @<milliseconds since the epoch>"))?;
        return Ok(SeekTo::Timestamp(millis));
    }
    if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) {
        let offset = text
            .parse()
            .map_err(|_| anyhow!("--from {text:?}: offset out of range"))?;
        return Ok(SeekTo::Offset(offset));
    }
    match parse_rfc3339_ms(text) {
        Some(millis) => Ok(SeekTo::Timestamp(millis)),
        None => bail!(
            "--from {text:?} is not beginning, end, an offset, @<ms since epoch> or an RFC 3339 date-time \
             such as 2024-05-01T12:00:00Z"
        ),
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 date-time (`T`, `t` or a space between date
/// and time; `Z` or `±HH:MM` zone; optional fraction of a second, truncated to milliseconds).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let month_ok = (1..=12).contains(&month);
    if !month_ok || day < 1 || day > days_in_month[(month - 1) as usize] || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && zone.as_bytes()[3] == b':' => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i64 = zone.get(1..3)?.parse().ok()?;
            let minutes: i64 = zone.get(4..6)?.parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 60 + minutes)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Some(seconds * 1_000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_keywords_offsets_and_timestamps() {
        assert_eq!(parse_from("beginning").unwrap(), SeekTo::Beginning);
        assert_eq!(parse_from("END").unwrap(), SeekTo::End);
        assert_eq!(parse_from("42").unwrap(), SeekTo::Offset(42));
        assert_eq!(
            parse_from("@1714564800000").unwrap(),
            SeekTo::Timestamp(1_714_564_800_000)
        );
        assert_eq!(
            parse_from("2024-05-01T12:00:00Z").unwrap(),
            SeekTo::Timestamp(1_714_564_800_000)
        );
        assert!(parse_from("-1").is_err());
        assert!(parse_from("@soon").is_err());
        assert!(parse_from("yesterday").is_err());
        assert!(parse_from("").is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:00:00.25+02:00"),
            Some(1_714_564_800_250)
        );
        assert_eq!(parse_rfc3339_ms("2024-05-01 12:00:00.123456z"), Some(1_714_564_800_123));
        assert_eq!(parse_rfc3339_ms("2000-02-29T00:00:00-01:30"), Some(951_787_800_000));
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), Some(-1_000));
        assert_eq!(parse_rfc3339_ms("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:00"), None, "a zone is required");
        assert_eq!(parse_rfc3339_ms("2024-13-01T12:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2024-05-01T12:00:00.Z"), None);
    }
}
