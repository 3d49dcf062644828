//! Time as the billing tables store it: Unix milliseconds, the UTC calendar month (`period`)
//! that quotas are counted in, and the range of UTC days a usage report covers.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use crate::error::BillingError;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A Unix-millisecond timestamp as a UTC time (the epoch if it is out of range).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// One UTC calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    /// 1..=12
    month: u32,
}

impl Period {
    /// The month `at` falls in (UTC).
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    pub fn current() -> Self {
        Self::of(Utc::now())
    }

    /// The following month.
    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The value stored in `usage_ledger.period`: `YYYY-MM`.
    pub fn label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// The first instant of the month, RFC 3339 (`2026-11-01T00:00:00Z`).
    pub fn start_rfc3339(self) -> String {
        format!("{:04}-{:02}-01T00:00:00Z", self.year, self.month)
    }

    /// Months since year 0, a dense ordinal that fits in 24 bits for any plausible date.
    pub(crate) fn ordinal(self) -> u64 {
        let months = i64::from(self.year) * 12 + i64::from(self.month) - 1;
        u64::try_from(months).unwrap_or(0)
    }
}

/// The longest range a usage report covers, in days.
pub const MAX_REPORT_DAYS: i64 = 100;

/// Whole UTC days from `start` up to `end` (exclusive), as usage reports cover them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl DateRange {
    /// The range a report asked for: both `YYYY-MM-DD` dates or neither (empty strings); neither
    /// means the month of `today` up to and including `today`. Errors name the field.
    pub fn parse(start: &str, end: &str, today: NaiveDate) -> Result<Self, BillingError> {
        let (start, end) = (start.trim(), end.trim());
        let range = match (start.is_empty(), end.is_empty()) {
            (true, true) => Self {
                start: today.with_day(1).unwrap_or(today),
                end: today.succ_opt().unwrap_or(today),
            },
            (false, true) => {
                return Err(BillingError::invalid(
                    "end_date",
                    "end_date is required with start_date",
                ));
            }
            (true, false) => {
                return Err(BillingError::invalid(
                    "start_date",
                    "start_date is required with end_date",
                ));
            }
            (false, false) => Self {
                start: parse_date("start_date", start)?,
                end: parse_date("end_date", end)?,
            },
        };
        if range.end <= range.start {
            return Err(BillingError::invalid(
                "end_date",
                "end_date must be after start_date (it is exclusive)",
            ));
        }
        if range.days() > MAX_REPORT_DAYS {
            return Err(BillingError::invalid(
                "end_date",
                format!("a report covers at most {MAX_REPORT_DAYS} days from start_date"),
            ));
        }
        Ok(range)
    }

    /// Days in the range.
    pub fn days(self) -> i64 {
        (self.end - self.start).num_days()
    }

    /// Each day of the range, in order.
    pub fn iter_days(self) -> impl Iterator<Item = NaiveDate> {
        self.start.iter_days().take_while(move |d| *d < self.end)
    }

    /// The range in Unix milliseconds, end exclusive.
    pub fn bounds_ms(self) -> (i64, i64) {
        (day_start_ms(self.start), day_start_ms(self.end))
    }
}

/// Unix milliseconds of the first instant of `day` (UTC).
pub fn day_start_ms(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_millis())
}

fn parse_date(param: &'static str, text: &str) -> Result<NaiveDate, BillingError> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        // chrono accepts 1-digit months and days; the format is fixed-width.
        .filter(|_| text.len() == 10)
        .ok_or_else(|| {
            BillingError::invalid(
                param,
                format!("{param} must be a date as YYYY-MM-DD, got {text:?}"),
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn months_are_utc_and_roll_over() {
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
        let p = Period::of(t);
        assert_eq!(p.label(), "2026-11");
        assert_eq!(p.start_rfc3339(), "2026-11-01T00:00:00Z");
        assert_eq!(p.next().label(), "2026-12");
        assert_eq!(p.next().next().label(), "2027-01");
        assert_eq!(p.next().ordinal(), p.ordinal() + 1);
        assert_eq!(p.next().next().ordinal(), p.ordinal() + 2);
        assert_eq!(from_ms(t.timestamp_millis()), t);
    }

    fn param(err: BillingError) -> &'static str {
        match err {
            BillingError::InvalidArgument { param, .. } => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn report_ranges_default_to_this_month_and_are_validated() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let r = DateRange::parse("", "", today).unwrap();
        assert_eq!(r.start.to_string(), "2026-11-01");
        assert_eq!(r.end.to_string(), "2026-11-24");
        assert_eq!(r.days(), 23);
        let r = DateRange::parse("2026-11-20", "2026-11-22", today).unwrap();
        assert_eq!(
            r.iter_days().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["2026-11-20", "2026-11-21"]
        );
        let (start, end) = r.bounds_ms();
        assert_eq!(start, 1_795_132_800_000);
        assert_eq!(end - start, 2 * 86_400_000);

        let bad = |s, e| param(DateRange::parse(s, e, today).unwrap_err());
        assert_eq!(bad("2026-11-2", "2026-11-22"), "start_date");
        assert_eq!(bad("2026-13-01", "2026-11-22"), "start_date");
        assert_eq!(bad("2026-11-01", "tomorrow"), "end_date");
        assert_eq!(bad("2026-11-01", ""), "end_date");
        assert_eq!(bad("", "2026-11-01"), "start_date");
        assert_eq!(bad("2026-11-22", "2026-11-22"), "end_date");
        assert_eq!(bad("2026-11-22", "2026-11-01"), "end_date");
        assert_eq!(bad("2026-01-01", "2026-04-12"), "end_date");
        assert!(DateRange::parse("2026-01-01", "2026-04-11", today).is_ok());
    }
}
