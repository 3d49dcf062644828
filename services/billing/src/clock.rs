//! Time as the billing tables store it: Unix milliseconds, and the UTC calendar month (`period`)
//! that quotas and usage reports are counted in.

use chrono::{DateTime, Datelike, Utc};

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
}
