//! Idempotent admission: the requests this process admitted and has not yet seen settle, by
//! request id, so a retried `Admit` (the caller lost the answer to a broken connection or a
//! deadline) gets the same admission back without counting the request twice. An entry leaves
//! when its request settles or, at the latest, when its reservation would expire. Across a
//! restart of this process (or on another replica) the memory does not have it; the reservation
//! row (keys with a balance or budget) then answers a retry that says it is one
//! (`AdmitRequest.retry`, [`crate::accounts::reserved_for`]).

use std::collections::HashMap;
use std::sync::Mutex;

/// How many remembered admissions trigger a sweep of the expired ones.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Admitted {
    key_id: String,
    reserved_picodollars: i64,
    /// A reservation row was written for it (the key had a balance or budget).
    held: bool,
    /// Unix milliseconds after which the entry is forgotten.
    expires_at: i64,
}

/// Recent admissions of this process.
#[derive(Debug, Default)]
pub(crate) struct Admissions {
    admitted: Mutex<HashMap<String, Admitted>>,
}

impl Admissions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Admitted>> {
        self.admitted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The amount reserved for `request_id` when this process already admitted it for `key_id`.
    pub(crate) fn get(&self, request_id: &str, key_id: &str, now: i64) -> Option<i64> {
        self.lock()
            .get(request_id)
            .filter(|a| a.key_id == key_id && a.expires_at > now)
            .map(|a| a.reserved_picodollars)
    }

    /// Whether `request_id` of `key_id` may hold a reservation row: `false` only when this
    /// process admitted it without one (the key had neither balance nor budget), so its
    /// settlement need not look for one. Unknown here (admitted before a restart, or by another
    /// replica): `true`.
    pub(crate) fn may_hold_reservation(&self, request_id: &str, key_id: &str) -> bool {
        self.lock()
            .get(request_id)
            .is_none_or(|a| a.key_id != key_id || a.held)
    }

    /// Remembers an admission until `expires_at` (Unix ms) or its settlement; `held`: a
    /// reservation row was written for it.
    pub(crate) fn remember(
        &self,
        request_id: &str,
        key_id: &str,
        reserved_picodollars: i64,
        held: bool,
        expires_at: i64,
        now: i64,
    ) {
        let mut admitted = self.lock();
        if admitted.len() >= SWEEP_AT {
            admitted.retain(|_, a| a.expires_at > now);
        }
        admitted.insert(
            request_id.to_owned(),
            Admitted {
                key_id: key_id.to_owned(),
                reserved_picodollars,
                held,
                expires_at,
            },
        );
    }

    /// Forgets a settled request.
    pub(crate) fn forget(&self, request_id: &str) {
        self.lock().remove(request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admission_is_found_for_its_key_until_it_settles_or_expires() {
        let admissions = Admissions::default();
        admissions.remember("r1", "k1", 7, true, 1_000, 0);
        assert_eq!(admissions.get("r1", "k1", 10), Some(7));
        assert_eq!(admissions.get("r1", "k2", 10), None);
        assert_eq!(admissions.get("r1", "k1", 1_000), None);
        assert_eq!(admissions.get("r2", "k1", 10), None);
        admissions.forget("r1");
        assert_eq!(admissions.get("r1", "k1", 10), None);
    }

    #[test]
    fn only_an_admission_made_here_without_a_reservation_holds_none() {
        let admissions = Admissions::default();
        admissions.remember("free", "k1", 0, false, 1_000, 0);
        admissions.remember("paid", "k1", 0, true, 1_000, 0);
        assert!(!admissions.may_hold_reservation("free", "k1"));
        assert!(admissions.may_hold_reservation("paid", "k1"));
        // Another key's request id, or one this process did not admit: it may.
        assert!(admissions.may_hold_reservation("free", "k2"));
        assert!(admissions.may_hold_reservation("elsewhere", "k1"));
        admissions.forget("free");
        assert!(admissions.may_hold_reservation("free", "k1"));
    }

    #[test]
    fn expired_admissions_are_swept_once_many_are_remembered() {
        let admissions = Admissions::default();
        for i in 0..SWEEP_AT {
            admissions.remember(&format!("old{i}"), "k", 0, false, 5, 0);
        }
        admissions.remember("new", "k", 1, true, 100, 10);
        assert_eq!(admissions.lock().len(), 1);
        assert_eq!(admissions.get("new", "k", 10), Some(1));
    }
}
