//! How often a key may rotate itself (`Billing.RotateOwnKey`): once per [`SELF_ROTATION_INTERVAL`]
//! per key, counted in this process. A leaked key's holder needs one rotation; a thief holding
//! the same secret must not be able to keep rotating it away from its owner faster than the
//! owner can notice. Operators rotate through Admin without this limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::BillingError;

/// The least time between two rotations of one key by its holder.
pub const SELF_ROTATION_INTERVAL: Duration = Duration::from_secs(60);

/// The last self-rotation of each key that rotated within the interval.
#[derive(Debug, Default)]
pub(crate) struct SelfRotations {
    last: Mutex<HashMap<String, Instant>>,
}

impl SelfRotations {
    /// Takes `key_id`'s rotation slot at `now`, or says how long until the next one. Entries
    /// older than the interval are dropped here, so the map holds only keys that rotated
    /// within the last interval.
    pub(crate) fn take(&self, key_id: &str, now: Instant) -> Result<(), BillingError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.retain(|_, at| now.saturating_duration_since(*at) < SELF_ROTATION_INTERVAL);
        if let Some(at) = last.get(key_id) {
            let wait = SELF_ROTATION_INTERVAL.saturating_sub(now.saturating_duration_since(*at));
            return Err(BillingError::RotationTooSoon {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        last.insert(key_id.to_owned(), now);
        Ok(())
    }

    /// Gives the slot back (the rotation failed, so it did not count).
    pub(crate) fn release(&self, key_id: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.remove(key_id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn one_rotation_per_interval_per_key() {
        let rotations = SelfRotations::default();
        let t0 = Instant::now();
        rotations.take("a", t0).unwrap();
        rotations.take("b", t0).unwrap();
        let refused = rotations
            .take("a", t0 + Duration::from_secs(59))
            .unwrap_err();
        assert!(matches!(
            refused,
            BillingError::RotationTooSoon {
                retry_after_secs: 1
            }
        ));
        rotations.take("a", t0 + SELF_ROTATION_INTERVAL).unwrap();
        rotations.release("a");
        rotations.take("a", t0 + SELF_ROTATION_INTERVAL).unwrap();
    }
}
