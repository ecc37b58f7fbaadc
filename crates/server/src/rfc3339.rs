//! Record times (microseconds since the Unix epoch, as the log stores
//! them) to and from RFC 3339 text, as tools print and take them.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `time_us` as RFC 3339 in UTC with microseconds
/// (`2026-12-03T06:41:02.123456Z`); `-` for 0, a record written before
/// records carried a time.
pub fn format_us(time_us: u64) -> String {
    if time_us == 0 {
        return "-".into();
    }
    let nanos = i128::from(time_us) * 1000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        ),
        Err(_) => format!("{time_us}us"),
    }
}

/// Parses RFC 3339 (`2026-12-03T06:41:02Z`, `2026-12-03T07:41:02.5+01:00`)
/// into microseconds since the Unix epoch; finer digits are cut, not
/// rounded, so a time names the microsecond it falls in.
pub fn parse_us(text: &str) -> Result<u64, String> {
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|e| {
        format!("{text:?} is not an RFC 3339 time ({e}); write it as 2026-12-03T06:41:02Z or 2026-12-03T07:41:02.250+01:00")
    })?;
    let us = t.unix_timestamp_nanos().div_euclid(1000);
    u64::try_from(us).map_err(|_| format!("{text:?} is before 1970, before any record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        let us = 1_796_280_062_123_456;
        let text = format_us(us);
        assert_eq!(text, "2026-12-03T06:41:02.123456Z");
        assert_eq!(parse_us(&text), Ok(us));
        assert_eq!(parse_us("2026-12-03T07:41:02.123456789+01:00"), Ok(us));
        assert_eq!(format_us(0), "-");
    }

    #[test]
    fn bad_times_say_how_to_write_one() {
        let e = parse_us("yesterday").unwrap_err();
        assert!(e.contains("2026-12-03T06:41:02Z"), "{e}");
        assert!(parse_us("1969-12-31T23:59:59Z")
            .unwrap_err()
            .contains("before 1970"));
    }
}
