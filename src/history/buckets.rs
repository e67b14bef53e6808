//! Bucket boundaries. Five-minute and hourly buckets are aligned to the
//! site's local clock (the same as UTC for whole-hour zones); daily buckets
//! start at local midnight of `site.timezone`, so a day of a DST change has
//! 23 or 25 hours. A bucket is named by its start, a UTC instant.

use chrono::{DateTime, Duration, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// A rollup resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// `victron.history_5m`.
    FiveMinutes,
    /// `victron.history_1h`.
    Hour,
    /// `victron.history_1d`: local days.
    Day,
}

impl Resolution {
    /// Every resolution, finest first.
    pub(crate) const ALL: [Resolution; 3] = [Self::FiveMinutes, Self::Hour, Self::Day];

    /// Its table in schema `victron`.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Self::FiveMinutes => "history_5m",
            Self::Hour => "history_1h",
            Self::Day => "history_1d",
        }
    }

    /// The start of the bucket `at` falls in.
    pub(crate) fn bucket(self, at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        let length = match self {
            Self::FiveMinutes => 300,
            Self::Hour => 3_600,
            Self::Day => return day_start(local_day(at, tz), tz),
        };
        let offset = i64::from(
            tz.offset_from_utc_datetime(&at.naive_utc())
                .fix()
                .local_minus_utc(),
        );
        let local = at.timestamp() + offset;
        let start = local - local.rem_euclid(length) - offset;
        Utc.timestamp_opt(start, 0).single().unwrap_or(at)
    }
}

/// The first local day that starts at or after `instant` (the first day
/// whole after a retention bound).
pub(crate) fn first_day_from(instant: DateTime<Utc>, tz: Tz) -> NaiveDate {
    let day = local_day(instant, tz);
    if day_start(day, tz) < instant {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    }
}

/// The local date `at` falls on.
pub(crate) fn local_day(at: DateTime<Utc>, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// When local day `day` starts: its midnight, or the first local time that
/// exists when a DST change skips midnight.
pub(crate) fn day_start(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    (0..=180)
        .step_by(15)
        .find_map(|minutes| {
            tz.from_local_datetime(&(midnight + Duration::minutes(minutes)))
                .earliest()
        })
        .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
}

/// When local day `day` ends (the next one starts).
pub(crate) fn day_end(day: NaiveDate, tz: Tz) -> DateTime<Utc> {
    day_start(day.succ_opt().unwrap_or(day), tz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hours_of(day: &str, tz: Tz) -> i64 {
        let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        (day_end(day, tz) - day_start(day, tz)).num_hours()
    }

    #[test]
    fn days_of_dst_changes_have_23_or_25_hours() {
        assert_eq!(hours_of("2026-03-29", chrono_tz::Europe::Berlin), 23);
        assert_eq!(hours_of("2026-10-25", chrono_tz::Europe::Berlin), 25);
        assert_eq!(hours_of("2026-11-01", chrono_tz::America::Denver), 25);
        assert_eq!(hours_of("2026-06-01", chrono_tz::America::Denver), 24);
        assert_eq!(hours_of("2026-03-29", chrono_tz::UTC), 24);
    }

    #[test]
    fn buckets_start_on_the_local_clock() {
        let berlin = chrono_tz::Europe::Berlin;
        let at = utc("2026-07-01T10:47:31Z");
        assert_eq!(
            Resolution::FiveMinutes.bucket(at, berlin),
            utc("2026-07-01T10:45:00Z")
        );
        assert_eq!(
            Resolution::Hour.bucket(at, berlin),
            utc("2026-07-01T10:00:00Z")
        );
        // Local midnight in summer is 22:00 UTC the day before.
        assert_eq!(
            Resolution::Day.bucket(at, berlin),
            utc("2026-06-30T22:00:00Z")
        );
        // Half-hour zones: hours start at :30 UTC.
        let kolkata = chrono_tz::Asia::Kolkata;
        assert_eq!(
            Resolution::Hour.bucket(at, kolkata),
            utc("2026-07-01T10:30:00Z")
        );
        assert_eq!(
            Resolution::Day.bucket(at, kolkata),
            utc("2026-06-30T18:30:00Z")
        );
    }
}
