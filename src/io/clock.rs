//! The current UTC calendar date and time of day, for timestamps in written files and names.

/// A UTC instant split into the proleptic Gregorian calendar date and the time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UtcDateTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
}

impl UtcDateTime {
    /// Now (the Unix epoch if the system clock is before it).
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as i64;
        Self::from_unix_seconds(secs)
    }

    /// Seconds since 1970-01-01T00:00:00Z → date and time (civil-from-days, H. Hinnant).
    pub fn from_unix_seconds(secs: i64) -> Self {
        let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        UtcDateTime {
            year: yoe + era * 400 + (month <= 2) as i64,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UtcDateTime;

    #[test]
    fn known_instants() {
        let t = UtcDateTime::from_unix_seconds(0);
        assert_eq!((t.year, t.month, t.day, t.hour), (1970, 1, 1, 0));
        // 2000-02-29T12:34:56Z (a leap day of a year divisible by 400)
        let t = UtcDateTime::from_unix_seconds(951_827_696);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2000, 2, 29, 12, 34, 56)
        );
        // 2024-12-31T23:59:59Z
        let t = UtcDateTime::from_unix_seconds(1_735_689_599);
        assert_eq!((t.year, t.month, t.day, t.second), (2024, 12, 31, 59));
    }
}
