//! `yyyymmddThhmmssZ`, the only date form SigV4 signs, to and from a time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_types::calendar::{civil_from_days, days_from_civil, days_in_month};

/// `yyyymmddThhmmssZ` as a time; `None` for anything else.
pub(crate) fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let number = |range| freshet_types::calendar::digits_at(text, range);
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days.checked_mul(86_400)? + hour * 3_600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// A time as `yyyymmddThhmmssZ` (times before 1970 read as 1970).
pub(crate) fn format_amz_date(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3_600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn amz_dates_read_as_utc_times() {
        // 2026-12-04T10:00:00Z
        assert_eq!(parse_amz_date("20261204T100000Z"), Some(at(1_796_378_400)));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(at(0)));
        for bad in [
            "",
            "20261204T100000",
            "20261304T100000Z",
            "2026-12-04T10:00Z",
            "2026120AT100000Z",
            "+0261204T100000Z",
            "20260231T000000Z",
            "20250229T000000Z",
            "20261204T235960Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_is_the_inverse_of_parsing() {
        for text in [
            "19700101T000000Z",
            "20000229T235959Z",
            "20261204T100000Z",
            "21000301T000001Z",
        ] {
            let time = parse_amz_date(text).expect("parses");
            assert_eq!(format_amz_date(time), text);
        }
    }
}
