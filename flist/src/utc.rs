//! The UTC calendar, for the two places that write or read dates: the timestamps of S3 request
//! signatures and a manifest's `expires`. Written here rather than taken from a date crate
//! (jiff was 79 KB of PID 1) because both need only whole seconds of the proleptic Gregorian
//! calendar in UTC, from 1970 to the end of 9999, and RFC 3339's one grammar.

/// The last second of the year 9999, the latest time flint reads or writes.
pub const MAX_SECS: u64 = 253_402_300_799;

const SECS_PER_DAY: i64 = 86_400;

/// A second of the UTC calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub(crate) year: i64,
    pub(crate) month: u8,
    pub(crate) day: u8,
    pub(crate) hour: u8,
    pub(crate) minute: u8,
    pub(crate) second: u8,
}

impl DateTime {
    /// The calendar second `secs` after the epoch, for any `secs` up to [`MAX_SECS`].
    pub fn from_secs(secs: u64) -> Option<DateTime> {
        (secs <= MAX_SECS).then(|| DateTime::at_most_max(secs))
    }

    /// The calendar second `secs` after the epoch, or the last one of 9999 for any later `secs`.
    pub fn at_most_max(secs: u64) -> DateTime {
        // Below MAX_SECS, so within i64.
        let secs = secs.min(MAX_SECS) as i64;
        let (days, in_day) = (secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY));
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month: narrow(month),
            day: narrow(day),
            hour: narrow(in_day / 3600),
            minute: narrow(in_day / 60 % 60),
            second: narrow(in_day % 60),
        }
    }

    /// Seconds from the epoch to this time minus `offset_secs` (its UTC offset), if each field
    /// is in range and the result lies from 1970 to 9999.
    fn to_secs(self, offset_secs: i64) -> Option<u64> {
        let valid = (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        if !valid || !(0..=9999).contains(&self.year) {
            return None;
        }
        let day_secs = i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second);
        let secs = days_from_civil(self.year, i64::from(self.month), i64::from(self.day)) * SECS_PER_DAY + day_secs
            - offset_secs;
        u64::try_from(secs).ok().filter(|&s| s <= MAX_SECS)
    }

    /// `YYYYMMDD`, as in an S3 signature's scope.
    pub fn basic_date(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYYMMDDTHHMMSSZ`, as in `X-Amz-Date`.
    pub fn basic_date_time(&self) -> String {
        format!("{}T{:02}{:02}{:02}Z", self.basic_date(), self.hour, self.minute, self.second)
    }
}

/// `secs` after the epoch as RFC 3339 in UTC (`2026-12-10T12:00:00Z`); past 9999, in seconds.
pub fn rfc3339(secs: u64) -> String {
    match DateTime::from_secs(secs) {
        Some(t) => format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year, t.month, t.day, t.hour, t.minute, t.second),
        None => format!("{secs} s after the epoch"),
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2026-12-10T12:00:00Z`,
/// `2026-12-10 14:00:00.5+02:00`), fractions of a second dropped. A leap second (`:60`) reads as
/// the second before it, as no flint clock keeps leap seconds. Times before 1970 or after 9999
/// are refused.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let refused = |why: &str| format!("{text:?} is not an RFC 3339 time: {why}");
    let mut at = Cursor { bytes: text.as_bytes(), at: 0 };
    let year = at.digits(4).ok_or_else(|| refused("no four-digit year"))?;
    at.one_of(b"-").ok_or_else(|| refused("no '-' after the year"))?;
    let month = at.digits(2).ok_or_else(|| refused("no two-digit month"))?;
    at.one_of(b"-").ok_or_else(|| refused("no '-' after the month"))?;
    let day = at.digits(2).ok_or_else(|| refused("no two-digit day"))?;
    at.one_of(b"Tt ").ok_or_else(|| refused("no 'T' between the date and the time"))?;
    let hour = at.digits(2).ok_or_else(|| refused("no two-digit hour"))?;
    at.one_of(b":").ok_or_else(|| refused("no ':' after the hour"))?;
    let minute = at.digits(2).ok_or_else(|| refused("no two-digit minute"))?;
    at.one_of(b":").ok_or_else(|| refused("no ':' after the minute"))?;
    let second = at.digits(2).filter(|&s| s <= 60).ok_or_else(|| refused("no two-digit second from 00 to 60"))?;
    if at.one_of(b".").is_some() {
        let fraction = at.bytes.get(at.at..).unwrap_or_default().iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=9).contains(&fraction) {
            return Err(refused("a fraction of a second needs 1 to 9 digits"));
        }
        at.at += fraction;
    }
    let offset = match at.one_of(b"Zz+-") {
        Some(b'Z' | b'z') => 0,
        Some(sign) => {
            let hours = at.digits(2).filter(|&h| h < 24).ok_or_else(|| refused("no offset hour from 00 to 23"))?;
            at.one_of(b":").ok_or_else(|| refused("no ':' in the offset"))?;
            let minutes = at.digits(2).filter(|&m| m < 60).ok_or_else(|| refused("no offset minute from 00 to 59"))?;
            let offset = hours * 3600 + minutes * 60;
            if sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        None => return Err(refused("no offset ('Z' or '+HH:MM')")),
    };
    if at.at != text.len() {
        return Err(refused("something follows the offset"));
    }
    let time = DateTime {
        year,
        month: narrow(month),
        day: narrow(day),
        hour: narrow(hour),
        minute: narrow(minute),
        second: narrow(second.min(59)),
    };
    time.to_secs(offset).ok_or_else(|| refused("a field is out of range, or it is before 1970 or after 9999"))
}

/// A calendar field as a byte: every field is below 256 where this is used (below 60, 24, 32 or
/// 13 when computed, two digits when read), so nothing is lost.
fn narrow(field: i64) -> u8 {
    u8::try_from(field).unwrap_or(u8::MAX)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    /// Exactly `n` ASCII digits, as a number.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let digits = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.at += n;
        Some(digits.iter().fold(0, |v, d| v * 10 + i64::from(d - b'0')))
    }

    /// One of `allowed`, which it returns.
    fn one_of(&mut self, allowed: &[u8]) -> Option<u8> {
        let byte = *self.bytes.get(self.at).filter(|b| allowed.contains(b))?;
        self.at += 1;
        Some(byte)
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date: Howard Hinnant's `days_from_civil`, eras of 400 years.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01: the inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jiff_secs(text: &str) -> Option<i64> {
        text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
    }

    #[test]
    fn the_ends_of_the_range_and_the_leap_days() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(MAX_SECS), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(MAX_SECS + 1), "253402300800 s after the epoch");
        assert_eq!(rfc3339(u64::MAX), format!("{} s after the epoch", u64::MAX));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Ok(951_782_400));
        assert!(parse_rfc3339("1900-02-29T00:00:00Z").is_err(), "1900 was not a leap year");
        assert!(parse_rfc3339("2026-02-29T00:00:00Z").is_err());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z").is_err(), "before 1970");
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Ok(0));
        assert!(parse_rfc3339("9999-12-31T23:59:59-00:01").is_err(), "after 9999");
        assert_eq!(parse_rfc3339("2016-12-31T23:59:60Z"), parse_rfc3339("2016-12-31T23:59:59Z"));
        assert_eq!(DateTime::from_secs(1_369_353_600).unwrap().basic_date_time(), "20130524T000000Z");
        assert_eq!(DateTime::at_most_max(u64::MAX), DateTime::from_secs(MAX_SECS).unwrap());
    }

    #[test]
    fn what_is_not_rfc_3339_is_refused_with_the_reason() {
        for bad in [
            "",
            "2026",
            "2026-12-10",
            "2026-12-10T12:00:00",
            "2026-12-10T12:00Z",
            "2026-12-10T12:00:00.Z",
            "2026-12-10T12:00:00.1234567890Z",
            "2026-12-10T12:00:00+0200",
            "2026-12-10T12:00:00+24:00",
            "2026-12-10T12:00:00Z ",
            " 2026-12-10T12:00:00Z",
            "2026-13-10T12:00:00Z",
            "2026-00-10T12:00:00Z",
            "2026-12-00T12:00:00Z",
            "2026-04-31T12:00:00Z",
            "2026-12-10T24:00:00Z",
            "2026-12-10T12:60:00Z",
            "2026-12-10T12:00:61Z",
            "+2026-12-10T12:00:00Z",
            "2026-1２-10T12:00:00Z",
        ] {
            let why = parse_rfc3339(bad).expect_err(bad);
            assert!(why.contains("not an RFC 3339 time"), "{bad}: {why}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_second_formats_as_jiff_does_and_reads_back(secs in 0..=MAX_SECS) {
            let text = rfc3339(secs);
            prop_assert_eq!(&text, &jiff::Timestamp::from_second(secs as i64).unwrap().to_string());
            prop_assert_eq!(parse_rfc3339(&text), Ok(secs));
            let t = DateTime::from_secs(secs).unwrap();
            prop_assert_eq!(t.basic_date_time(), jiff::Timestamp::from_second(secs as i64).unwrap()
                .strftime("%Y%m%dT%H%M%SZ").to_string());
        }

        #[test]
        fn any_offset_fraction_and_separator_reads_as_jiff_reads_it(
            secs in 0..=MAX_SECS,
            offset_minutes in -1439i64..=1439,
            fraction in proptest::option::of("[0-9]{1,9}"),
            separator in prop::sample::select(vec!['T', 't', ' ']),
            zulu in prop::sample::select(vec!["Z", "z"]),
        ) {
            let local = secs as i64 + offset_minutes * 60;
            prop_assume!((0..=MAX_SECS as i64).contains(&local));
            let t = DateTime::from_secs(local as u64).unwrap();
            let offset = match offset_minutes {
                0 => zulu.to_string(),
                m => format!("{}{:02}:{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60),
            };
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            let text = format!("{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}{fraction}{offset}",
                t.year, t.month, t.day, t.hour, t.minute, t.second);
            prop_assert_eq!(parse_rfc3339(&text), Ok(secs), "{}", text);
            prop_assert_eq!(jiff_secs(&text), Some(secs as i64), "{}", text);
        }

        /// Damaged times: whatever this reads, jiff reads the same; nothing panics.
        #[test]
        fn a_damaged_time_is_refused_or_read_as_jiff_reads_it(
            secs in 0..=MAX_SECS,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = rfc3339(secs).into_bytes();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(read) = parse_rfc3339(&text) {
                prop_assert_eq!(jiff_secs(&text), Some(read as i64), "{}", text);
            }
        }

        #[test]
        fn any_text_is_refused_or_read_without_panic(text in "\\PC{0,40}") {
            if let Ok(read) = parse_rfc3339(&text) {
                prop_assert!(read <= MAX_SECS);
            }
        }
    }
}
