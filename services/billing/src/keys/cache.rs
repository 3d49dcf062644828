//! The hot path's keys: [`KeyCache`] maps a presented secret's hash to the key's record and its
//! live limits, so a known key costs no database read. It is filled by one read on a miss and
//! emptied of a key by [`KeyCache::invalidate`] (the `InvalidateKey` RPC) or by the refresh poll
//! ([`super::KeyRefresher`]). Expiry needs no eviction: it is checked against the clock on every
//! authentication. Unknown keys are never cached, so guessing keys cannot fill memory; malformed
//! ones are refused without touching the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use dashmap::DashMap;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::secret::{hash_secret, is_well_formed};
use super::store::KeyRecord;
use crate::accounts;
use crate::clock::Period;
use crate::config::{Tier, Tiers};
use crate::entity::api_key;
use crate::error::BillingError;
use crate::ledger;
use crate::limits::{KeyLimits, LimitOverrides};

/// A cached, valid key: its record and its live limits.
#[derive(Debug)]
pub struct ActiveKey {
    pub record: KeyRecord,
    /// Shared by every cache entry of this key id (see [`KeyCache`]), so counters survive
    /// evictions and re-reads.
    pub limits: Arc<KeyLimits>,
    /// The key has a prepaid balance or a monthly budget: its admissions reserve money. Keys
    /// without either pay no database write at admission.
    pub metered: bool,
    /// `api_keys.change_seq` when this entry was read; the refresher evicts it when that moves.
    change_seq: i64,
}

#[derive(Debug, Clone)]
enum CacheEntry {
    Active(Arc<ActiveKey>),
    /// Revoked keys are cached too: their number is bounded by the table, not by callers.
    Revoked {
        key_id: String,
        change_seq: i64,
    },
}

impl CacheEntry {
    fn key_id(&self) -> &str {
        match self {
            Self::Active(k) => &k.record.id,
            Self::Revoked { key_id, .. } => key_id,
        }
    }

    fn change_seq(&self) -> i64 {
        match self {
            Self::Active(k) => k.change_seq,
            Self::Revoked { change_seq, .. } => *change_seq,
        }
    }

    fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Active(a), Self::Active(b)) => Arc::ptr_eq(a, b),
            (Self::Revoked { .. }, Self::Revoked { .. }) => {
                self.key_id() == other.key_id() && self.change_seq() == other.change_seq()
            }
            _ => false,
        }
    }

    fn into_result(self) -> Result<Arc<ActiveKey>, BillingError> {
        match self {
            Self::Active(k) => match k.record.expires_at {
                Some(at) if at <= Utc::now() => Err(BillingError::ExpiredKey(at)),
                _ => Ok(k),
            },
            Self::Revoked { .. } => Err(BillingError::RevokedKey),
        }
    }
}

/// A key [`KeyCache::authenticate_once`] found valid, handed to the request's next
/// authentication ([`KeyCache::authenticated_before`]) as a `tollgate::auth::AuthenticatedKey`.
/// It holds while no key of its cache was invalidated or evicted since (the epoch), for the same
/// secret; expiry is checked again.
#[derive(Debug)]
pub struct Authenticated {
    key: Arc<ActiveKey>,
    secret: Box<str>,
    cache: u64,
    epoch: u64,
}

/// Tells caches apart, so a key authenticated by one is never taken by another.
#[derive(Debug)]
struct CacheId(u64);

impl Default for CacheId {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// How often a fill retries when an invalidation raced with it.
const MAX_FILL_ATTEMPTS: usize = 3;

/// Known keys by secret hash. A hit costs one SHA-256 and one map lookup.
///
/// The limits of a key (its RPM limiter and monthly counter) live apart from the entries, by key
/// id, and outlive them: an entry evicted because its row changed, or dropped by a fill that raced
/// an invalidation, is re-read with the same limiter and counter. Rebuilding the counter from the
/// ledger instead would forget requests admitted but not yet settled, and a burst arriving during
/// a re-read would be counted against two counters. A key whose limits changed (tier, overrides)
/// gets a new limiter whose monthly count starts from what the old one had counted.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: DashMap<String, CacheEntry>,
    limits: DashMap<String, Arc<KeyLimits>>,
    /// Bumped by every invalidation; a fill that saw it move re-reads, so an entry read before a
    /// revocation cannot be cached after the invalidation that should have removed it.
    epoch: AtomicU64,
    id: CacheId,
}

impl KeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cached keys (valid and revoked).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The valid (known, not revoked, not expired) key whose secret is `secret`: from the cache,
    /// or read once from the database (with its month's request count for the quota) and cached.
    pub async fn authenticate(
        &self,
        db: &DatabaseConnection,
        tiers: &Tiers,
        secret: &str,
    ) -> Result<Arc<ActiveKey>, BillingError> {
        if !is_well_formed(secret) {
            return Err(BillingError::InvalidKey);
        }
        let hash = hash_secret(secret);
        if let Some(entry) = self.entries.get(&hash).map(|e| e.value().clone()) {
            return entry.into_result();
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let epoch = self.epoch.load(Ordering::SeqCst);
            let loaded = self.load(db, tiers, &hash).await?;
            // Concurrent fills of one key agree on one entry, so they share one quota counter.
            let entry = self.entries.entry(hash.clone()).or_insert(loaded).clone();
            if self.epoch.load(Ordering::SeqCst) == epoch || attempt >= MAX_FILL_ATTEMPTS {
                return entry.into_result();
            }
            self.entries
                .remove_if(&hash, |_, cached| cached.same_as(&entry));
        }
    }

    /// [`Self::authenticate`], and the proof of it the request's next call can present to
    /// [`Self::authenticated_before`] instead of a second lookup.
    pub async fn authenticate_once(
        &self,
        db: &DatabaseConnection,
        tiers: &Tiers,
        secret: &str,
    ) -> Result<(Arc<ActiveKey>, Authenticated), BillingError> {
        // Read before the lookup: an invalidation during it makes the proof stale.
        let epoch = self.epoch.load(Ordering::SeqCst);
        let key = self.authenticate(db, tiers, secret).await?;
        let proof = Authenticated {
            key: key.clone(),
            secret: secret.into(),
            cache: self.id.0,
            epoch,
        };
        Ok((key, proof))
    }

    /// The key `earlier` proves valid for `secret`, as [`Self::authenticate`] would answer now,
    /// or `None` when the proof no longer holds (another cache's, another secret, or a key
    /// invalidated or evicted since) and the key must be looked up.
    pub fn authenticated_before(
        &self,
        earlier: &Authenticated,
        secret: &str,
    ) -> Option<Result<Arc<ActiveKey>, BillingError>> {
        let holds = earlier.cache == self.id.0
            && earlier.epoch == self.epoch.load(Ordering::SeqCst)
            && *earlier.secret == *secret;
        holds.then(|| CacheEntry::Active(earlier.key.clone()).into_result())
    }

    /// The limits of `key_id` for `tier` and `overrides`: the live ones when they still apply,
    /// else new ones counting at least `ledger_used` and what the old ones had counted.
    fn limits_for(
        &self,
        key_id: &str,
        tier: Arc<Tier>,
        overrides: LimitOverrides,
        period: Period,
        ledger_used: u64,
    ) -> Arc<KeyLimits> {
        match self.limits.entry(key_id.to_owned()) {
            dashmap::Entry::Occupied(mut live) => {
                if live.get().applies(&tier, overrides) {
                    return live.get().clone();
                }
                let used = ledger_used.max(live.get().used(period));
                let limits = Arc::new(KeyLimits::with_overrides(tier, overrides, period, used));
                live.insert(limits.clone());
                limits
            }
            dashmap::Entry::Vacant(slot) => slot
                .insert(Arc::new(KeyLimits::with_overrides(
                    tier,
                    overrides,
                    period,
                    ledger_used,
                )))
                .clone(),
        }
    }

    /// Reads one key by hash and builds its cache entry.
    async fn load(
        &self,
        db: &DatabaseConnection,
        tiers: &Tiers,
        hash: &str,
    ) -> Result<CacheEntry, BillingError> {
        let key = api_key::Entity::find()
            .filter(api_key::Column::SecretHash.eq(hash))
            .one(db)
            .await?
            .ok_or(BillingError::InvalidKey)?;
        if key.revoked_at.is_some() {
            self.limits.remove(&key.id);
            return Ok(CacheEntry::Revoked {
                key_id: key.id,
                change_seq: key.change_seq,
            });
        }
        let tier =
            tiers
                .get(&key.tier)
                .cloned()
                .ok_or_else(|| BillingError::TierNotConfigured {
                    key_id: key.id.clone(),
                    tier: key.tier.clone(),
                })?;
        let period = Period::current();
        let used = ledger::count_requests(db, &key.id, period).await?;
        let metered = accounts::account(db, &key.id)
            .await?
            .is_some_and(|account| account.is_metered());
        let change_seq = key.change_seq;
        let record = KeyRecord::from(key);
        let limits = self.limits_for(&record.id, tier, record.overrides, period, used);
        Ok(CacheEntry::Active(Arc::new(ActiveKey {
            limits,
            metered,
            record,
            change_seq,
        })))
    }

    /// Drops the key `key_id` so the next request reads it afresh.
    pub fn invalidate(&self, key_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|_, e| e.key_id() != key_id);
    }

    /// Drops every cached key whose row changed: `changed` maps key id to its current
    /// `updated_at`.
    pub(super) fn evict_changed(&self, changed: &HashMap<String, i64>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|_, e| {
            changed
                .get(e.key_id())
                .is_none_or(|change_seq| *change_seq == e.change_seq())
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::keys::{KeyUpdate, create_key, update_key};

    #[tokio::test]
    async fn a_proof_of_authentication_holds_until_a_key_changes() {
        use crate::config::TierConfig;
        let (_dir, db) = crate::db::scratch_sqlite().await;
        let tiers = Tiers::new(vec![TierConfig {
            name: "basic".into(),
            rpm: 1000,
            monthly_requests: 1000,
            models: None,
            max_concurrent_streams: None,
        }])
        .unwrap();
        let cache = KeyCache::new();
        let (key, secret) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let (_, other) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let secret = secret.expose_secret();
        let (found, proof) = cache.authenticate_once(&db, &tiers, secret).await.unwrap();

        // The same secret, nothing changed: the key the proof names, with no lookup.
        let again = cache.authenticated_before(&proof, secret).unwrap().unwrap();
        assert!(Arc::ptr_eq(&found, &again));
        // Another secret, or another cache: no answer, the key must be looked up.
        assert!(
            cache
                .authenticated_before(&proof, other.expose_secret())
                .is_none()
        );
        assert!(
            KeyCache::new()
                .authenticated_before(&proof, secret)
                .is_none()
        );
        // Any key invalidated since (a revocation, a rotation, an update): no answer either.
        cache.invalidate("some-other-key");
        assert!(cache.authenticated_before(&proof, secret).is_none());
        let (_, fresh) = cache.authenticate_once(&db, &tiers, secret).await.unwrap();
        cache.evict_changed(&HashMap::from([(key.id.clone(), i64::MAX)]));
        assert!(cache.authenticated_before(&fresh, secret).is_none());
    }

    #[tokio::test]
    async fn counters_survive_evictions_and_carry_over_when_limits_change() {
        use crate::config::TierConfig;
        let (_dir, db) = crate::db::scratch_sqlite().await;
        let tiers = Tiers::new(vec![TierConfig {
            name: "basic".into(),
            rpm: 1000,
            monthly_requests: 3,
            models: None,
            max_concurrent_streams: None,
        }])
        .unwrap();
        let cache = KeyCache::new();
        let (key, secret) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let period = Period::current();
        let first = cache
            .authenticate(&db, &tiers, secret.expose_secret())
            .await
            .unwrap();
        // Two requests admitted and still in flight: nothing of them is in the ledger yet.
        first.limits.admit(period).unwrap();
        first.limits.admit(period).unwrap();

        // An eviction (a key change seen by the poll, an InvalidateKey) and a re-read keep the
        // counter: rebuilt from the ledger it would say 0 and admit 3 more.
        cache.invalidate(&key.id);
        let again = cache
            .authenticate(&db, &tiers, secret.expose_secret())
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert!(Arc::ptr_eq(&first.limits, &again.limits));
        again.limits.admit(period).unwrap();
        assert!(matches!(
            again.limits.admit(period),
            Err(BillingError::QuotaExceeded { .. })
        ));

        // New limits (an override) get a new limiter that starts from what was counted.
        update_key(
            &db,
            &tiers,
            &key.id,
            &KeyUpdate {
                monthly_requests: Some(Some(5)),
                ..KeyUpdate::default()
            },
        )
        .await
        .unwrap();
        cache.invalidate(&key.id);
        let changed = cache
            .authenticate(&db, &tiers, secret.expose_secret())
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first.limits, &changed.limits));
        assert_eq!(changed.limits.used(period), 3);
        assert_eq!(changed.limits.monthly_limit(), 5);
    }
}
