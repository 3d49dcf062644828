//! Per-key limits, all in memory: the tier's requests-per-minute (a governor GCRA limiter whose
//! burst is the RPM) and the monthly request quota (an atomic counter tagged with the month it
//! counts). A key may override its tier's RPM and monthly quota ([`LimitOverrides`]). A rejected
//! request is never counted against either limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::clock::Period;
use crate::config::Tier;
use crate::error::BillingError;

/// Bits of the packed counter that hold the count; the rest hold the period ordinal.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Admitted requests of one key in one UTC month. The month and the count are packed into one
/// `AtomicU64`, so a month rollover and an increment can never interleave.
#[derive(Debug)]
pub struct MonthlyCounter {
    state: AtomicU64,
}

fn pack(period: Period, count: u64) -> u64 {
    (period.ordinal() << COUNT_BITS) | count.min(COUNT_MASK)
}

fn count_in(state: u64, period: Period) -> u64 {
    if state >> COUNT_BITS == period.ordinal() {
        state & COUNT_MASK
    } else {
        // A counter of another month counts nothing in this one.
        0
    }
}

impl MonthlyCounter {
    /// A counter of `period` starting at `count` (the key's ledger rows of that month).
    pub fn new(period: Period, count: u64) -> Self {
        Self {
            state: AtomicU64::new(pack(period, count)),
        }
    }

    /// Requests counted in `period`.
    pub fn count(&self, period: Period) -> u64 {
        count_in(self.state.load(Ordering::Acquire), period)
    }

    /// Counts one request in `period` if fewer than `limit` are counted; false when the quota is
    /// used up. Concurrent callers never push the count past `limit`.
    /// A `period` before the counter's own (a clock stepped back over a month's end) counts in
    /// the counter's month: the counter never moves back, so it never restarts a month.
    pub fn try_acquire(&self, period: Period, limit: u64) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let month = (current >> COUNT_BITS).max(period.ordinal());
            let count = if current >> COUNT_BITS == month {
                current & COUNT_MASK
            } else {
                0
            };
            if count >= limit || count >= COUNT_MASK {
                return false;
            }
            match self.state.compare_exchange_weak(
                current,
                (month << COUNT_BITS) | (count + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back a slot taken by [`try_acquire`](Self::try_acquire) in `period` (the request was
    /// refused by another limit). A no-op once the month has rolled over.
    pub fn release(&self, period: Period) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current >> COUNT_BITS != period.ordinal() || current & COUNT_MASK == 0 {
                return;
            }
            match self.state.compare_exchange_weak(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// A key's own limits, replacing its tier's where set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub rpm: Option<NonZeroU32>,
    pub monthly_requests: Option<u64>,
}

impl LimitOverrides {
    /// The limits in force for a key of `tier`: (requests per minute, requests per month).
    pub fn apply(&self, tier: &Tier) -> (NonZeroU32, u64) {
        (
            self.rpm.unwrap_or(tier.rpm),
            self.monthly_requests.unwrap_or(tier.monthly_requests),
        )
    }
}

/// The limits of one key: its tier, the limits in force (the tier's or the key's overrides), its
/// RPM limiter and its monthly counter.
pub struct KeyLimits {
    tier: Arc<Tier>,
    rpm_limit: NonZeroU32,
    monthly_limit: u64,
    overrides: LimitOverrides,
    rpm: DefaultDirectRateLimiter,
    monthly: MonthlyCounter,
}

impl std::fmt::Debug for KeyLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimits")
            .field("tier", &self.tier)
            .field("overrides", &self.overrides)
            .field("monthly", &self.monthly)
            .finish_non_exhaustive()
    }
}

impl KeyLimits {
    /// Limits for a key of `tier` that already made `used` requests in `period`.
    #[cfg(test)]
    pub fn new(tier: Arc<Tier>, period: Period, used: u64) -> Self {
        Self::with_overrides(tier, LimitOverrides::default(), period, used)
    }

    /// Limits for a key of `tier` whose own `overrides` replace the tier's where set.
    pub fn with_overrides(
        tier: Arc<Tier>,
        overrides: LimitOverrides,
        period: Period,
        used: u64,
    ) -> Self {
        let (rpm_limit, monthly_limit) = overrides.apply(&tier);
        Self {
            rpm: RateLimiter::direct(Quota::per_minute(rpm_limit)),
            monthly: MonthlyCounter::new(period, used),
            rpm_limit,
            monthly_limit,
            overrides,
            tier,
        }
    }

    pub fn tier(&self) -> &Tier {
        &self.tier
    }

    /// Whether these are the limits of a key of `tier` with `overrides` (so they can be kept
    /// when the key is read again).
    pub fn applies(&self, tier: &Tier, overrides: LimitOverrides) -> bool {
        *self.tier == *tier && self.overrides == overrides
    }

    /// Requests per minute in force for this key.
    pub fn rpm_limit(&self) -> NonZeroU32 {
        self.rpm_limit
    }

    /// Requests per month in force for this key.
    pub fn monthly_limit(&self) -> u64 {
        self.monthly_limit
    }

    /// Who sets a limit, for refusal messages: `basic`, or `basic (key override)`.
    fn limit_owner(&self, overridden: bool) -> String {
        if overridden {
            format!("{} (key override)", self.tier.name)
        } else {
            self.tier.name.clone()
        }
    }

    /// Requests admitted in `period`.
    pub fn used(&self, period: Period) -> u64 {
        self.monthly.count(period)
    }

    /// Gives back the monthly slot of a request admitted in `period` and then refused by a later
    /// check (its money).
    pub fn release(&self, period: Period) {
        self.monthly.release(period);
    }

    /// Admits one request in `period`: takes a monthly slot, then an RPM cell. If the RPM
    /// limiter refuses, the monthly slot is given back, so a refused request counts nowhere.
    pub fn admit(&self, period: Period) -> Result<(), BillingError> {
        if !self.monthly.try_acquire(period, self.monthly_limit) {
            return Err(self.quota_exceeded());
        }
        if self.rpm.check().is_err() {
            self.monthly.release(period);
            return Err(self.rate_limited());
        }
        Ok(())
    }

    /// The refusal of a request over this key's monthly quota (whoever counted it).
    pub fn quota_exceeded(&self) -> BillingError {
        BillingError::QuotaExceeded {
            tier: self.limit_owner(self.overrides.monthly_requests.is_some()),
            limit: self.monthly_limit,
        }
    }

    /// The refusal of a request over this key's requests per minute (whoever counted it).
    pub fn rate_limited(&self) -> BillingError {
        BillingError::RateLimited {
            tier: self.limit_owner(self.overrides.rpm.is_some()),
            rpm: self.rpm_limit.get(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn nov() -> Period {
        Period::of(Utc.with_ymd_and_hms(2026, 11, 15, 0, 0, 0).unwrap())
    }

    fn tier(rpm: u32, monthly_requests: u64) -> Arc<Tier> {
        Arc::new(Tier {
            name: "basic".to_owned(),
            rpm: NonZeroU32::new(rpm).unwrap(),
            monthly_requests,
            models: None,
            max_concurrent_streams: None,
        })
    }

    #[test]
    fn a_late_month_never_restarts_the_counter() {
        let oct = Period::of(Utc.with_ymd_and_hms(2026, 10, 31, 23, 59, 59).unwrap());
        let counter = MonthlyCounter::new(nov(), 7);
        assert!(counter.try_acquire(oct, 100));
        assert_eq!((counter.count(nov()), counter.count(oct)), (8, 0));
        assert!(
            !counter.try_acquire(oct, 8),
            "counted against November's quota"
        );
    }

    #[test]
    fn overrides_replace_the_tier_limits() {
        let overrides = LimitOverrides {
            rpm: NonZeroU32::new(2),
            monthly_requests: None,
        };
        let limits = KeyLimits::with_overrides(tier(30, 100), overrides, nov(), 0);
        assert_eq!((limits.rpm_limit().get(), limits.monthly_limit()), (2, 100));
        limits.admit(nov()).unwrap();
        limits.admit(nov()).unwrap();
        let err = limits.admit(nov()).unwrap_err();
        assert_eq!(
            err.to_api_error().message,
            "Rate limit reached: tier basic (key override) allows 2 requests per minute"
        );

        let overrides = LimitOverrides {
            rpm: None,
            monthly_requests: Some(1),
        };
        let limits = KeyLimits::with_overrides(tier(30, 100), overrides, nov(), 0);
        limits.admit(nov()).unwrap();
        assert!(matches!(
            limits.admit(nov()),
            Err(BillingError::QuotaExceeded { limit: 1, .. })
        ));
    }

    #[test]
    fn counter_stops_at_the_limit_and_resets_next_month() {
        let c = MonthlyCounter::new(nov(), 3);
        assert!(c.try_acquire(nov(), 5));
        assert!(c.try_acquire(nov(), 5));
        assert!(!c.try_acquire(nov(), 5));
        assert_eq!(c.count(nov()), 5);
        assert_eq!(c.count(nov().next()), 0);
        assert!(c.try_acquire(nov().next(), 5));
        assert_eq!(c.count(nov().next()), 1);
        assert_eq!(c.count(nov()), 0);
        // A slot of the old month cannot be given back into the new one.
        c.release(nov());
        assert_eq!(c.count(nov().next()), 1);
        c.release(nov().next());
        c.release(nov().next());
        assert_eq!(c.count(nov().next()), 0);
    }

    #[test]
    fn concurrent_acquires_never_overshoot() {
        let c = Arc::new(MonthlyCounter::new(nov(), 0));
        let granted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let c = Arc::clone(&c);
                    s.spawn(move || (0..1000).filter(|_| c.try_acquire(nov(), 2500)).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap() as u64).sum()
        });
        assert_eq!(granted, 2500);
        assert_eq!(c.count(nov()), 2500);
    }

    #[test]
    fn rpm_refusal_does_not_use_quota() {
        let limits = KeyLimits::new(tier(3, 100), nov(), 0);
        for _ in 0..3 {
            limits.admit(nov()).unwrap();
        }
        let err = limits.admit(nov()).unwrap_err();
        assert!(
            matches!(err, BillingError::RateLimited { rpm: 3, .. }),
            "{err:?}"
        );
        assert_eq!(limits.used(nov()), 3);
    }

    #[test]
    fn quota_refusal_names_the_tier() {
        let limits = KeyLimits::new(tier(100, 2), nov(), 1);
        limits.admit(nov()).unwrap();
        let err = limits.admit(nov()).unwrap_err();
        assert_eq!(
            err.to_api_error().message,
            "Monthly quota reached: tier basic allows 2 requests per month"
        );
    }
}
