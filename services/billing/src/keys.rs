//! API keys: secret generation and hashing, the admin operations behind `tollgate keys`
//! (create, list, revoke), and the in-memory [`KeyCache`] that keeps the database off the hot path.
//!
//! Only the SHA-256 of a secret is stored. The cache maps that hash to the key's record and its
//! limits; it is filled by one read on a miss and emptied of a key by [`KeyCache::invalidate`]
//! (the `InvalidateKey` RPC) or by [`KeyRefresher::poll`], which notices rows whose `updated_at`
//! moved (a revocation made by another process). Unknown keys are never cached, so guessing
//! keys cannot fill memory; malformed ones are refused without touching the database.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rand::Rng;
use rand::distr::Alphanumeric;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use sha2::{Digest, Sha256};

use crate::accounts::{self, KeyMoney};
use crate::clock::{Period, from_ms, now_ms};
use crate::config::Tiers;
use crate::entity::api_key;
use crate::error::BillingError;
use crate::ledger;
use crate::limits::KeyLimits;

/// What every secret starts with.
pub const SECRET_SCHEME: &str = "sk-";
/// Random base62 characters after the scheme.
pub const SECRET_RANDOM_LEN: usize = 48;
/// Characters of the secret stored and shown as its prefix (`sk-` + 9).
pub const PREFIX_LEN: usize = 12;

/// A full API key secret. Shown once at creation; `Debug` and `Display` print only its prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// A new secret: `sk-` and 48 base62 characters from the thread-local CSPRNG (ChaCha, seeded
    /// from the OS).
    pub fn generate() -> Self {
        let random: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(SECRET_RANDOM_LEN)
            .map(char::from)
            .collect();
        Self(format!("{SECRET_SCHEME}{random}"))
    }

    /// The whole secret, for printing it to its owner once. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The displayable prefix (`sk-AbCd1234E`).
    pub fn prefix(&self) -> &str {
        self.0.get(..PREFIX_LEN).unwrap_or(SECRET_SCHEME)
    }

    /// Lowercase hex SHA-256 of the secret: what the database stores.
    pub fn hash(&self) -> String {
        hash_secret(&self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}...)", self.prefix())
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}...", self.prefix())
    }
}

/// Lowercase hex SHA-256 of a presented secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` has the shape of a key this crate issues (`sk-` + 48 base62). Anything else
/// is refused without a database read.
pub fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(SECRET_SCHEME).is_some_and(|random| {
        random.len() == SECRET_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// A key as operators see it. Never carries the secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// UUID v7.
    pub id: String,
    /// Free text given at creation; empty when none was.
    pub name: String,
    /// The first 12 characters of the secret (`sk-AbCd1234E`).
    pub prefix: String,
    pub tier: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// The prefix as shown to users: `sk-AbCd1234E...`.
    pub fn display_prefix(&self) -> String {
        format!("{}...", self.prefix)
    }
}

impl From<api_key::Model> for KeyRecord {
    fn from(m: api_key::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            prefix: m.prefix,
            tier: m.tier,
            created_at: from_ms(m.created_at),
            revoked_at: m.revoked_at.map(from_ms),
        }
    }
}

/// Issues a key of `tier`, unlimited in money. The secret is returned once and only its hash is
/// stored.
pub async fn create_key(
    db: &DatabaseConnection,
    tiers: &Tiers,
    tier: &str,
    name: Option<&str>,
) -> Result<(KeyRecord, SecretKey), BillingError> {
    create_key_with(db, tiers, tier, name, KeyMoney::default()).await
}

/// Issues a key of `tier` with `money` (a prepaid balance and/or a monthly budget). The key row
/// and its account are written in one transaction, so the key never exists without its limits.
pub async fn create_key_with(
    db: &DatabaseConnection,
    tiers: &Tiers,
    tier: &str,
    name: Option<&str>,
    money: KeyMoney,
) -> Result<(KeyRecord, SecretKey), BillingError> {
    let Some(tier) = tiers.get(tier) else {
        return Err(BillingError::UnknownTier {
            tier: tier.to_owned(),
            valid: tiers.names(),
        });
    };
    let secret = SecretKey::generate();
    let now = now_ms();
    let model = api_key::Model {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.unwrap_or_default().trim().to_owned(),
        prefix: secret.prefix().to_owned(),
        secret_hash: secret.hash(),
        tier: tier.name.clone(),
        created_at: now,
        revoked_at: None,
        updated_at: now,
    };
    let txn = db.begin().await?;
    api_key::Entity::insert(api_key::ActiveModel::from(model.clone()))
        .exec_without_returning(&txn)
        .await?;
    accounts::open(&txn, &model.id, money, now).await?;
    txn.commit().await?;
    tracing::info!(key_id = %model.id, prefix = %model.prefix, tier = %model.tier, "API key created");
    Ok((model.into(), secret))
}

/// Every key, oldest first, revoked ones included.
pub async fn list_keys(db: &DatabaseConnection) -> Result<Vec<KeyRecord>, BillingError> {
    let rows = api_key::Entity::find()
        .order_by_asc(api_key::Column::CreatedAt)
        .order_by_asc(api_key::Column::Id)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(KeyRecord::from).collect())
}

/// Revokes the key named by its id, its displayed prefix (`sk-AbCd1234E`, with or without the
/// trailing `...`, or any shorter start of it that names one key) or its full secret. Revoking a
/// revoked key returns it unchanged. Running services notice within their refresh interval, or
/// at once after `InvalidateKey`.
pub async fn revoke_key(
    db: &DatabaseConnection,
    id_or_prefix: &str,
) -> Result<KeyRecord, BillingError> {
    let wanted = id_or_prefix.trim();
    let wanted = wanted.strip_suffix("...").unwrap_or(wanted);
    let key = find_one(db, wanted).await?;
    if key.revoked_at.is_some() {
        return Ok(key.into());
    }
    let now = now_ms();
    // `updated_at` must move even within one millisecond of the last change: caches compare it.
    let updated_at = now.max(key.updated_at.saturating_add(1));
    api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(Some(now)))
        .col_expr(api_key::Column::UpdatedAt, Expr::value(updated_at))
        .filter(api_key::Column::Id.eq(key.id.as_str()))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    let key = api_key::Entity::find_by_id(key.id.as_str())
        .one(db)
        .await?
        .ok_or_else(|| BillingError::KeyNotFound(wanted.to_owned()))?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "API key revoked");
    Ok(key.into())
}

/// The key named by its id, its displayed prefix or its full secret (as [`revoke_key`] accepts).
pub async fn find_key(
    db: &DatabaseConnection,
    id_or_prefix: &str,
) -> Result<KeyRecord, BillingError> {
    let wanted = id_or_prefix.trim();
    let wanted = wanted.strip_suffix("...").unwrap_or(wanted);
    Ok(find_one(db, wanted).await?.into())
}

async fn find_one(db: &DatabaseConnection, wanted: &str) -> Result<api_key::Model, BillingError> {
    if wanted.is_empty() {
        return Err(BillingError::KeyNotFound(String::new()));
    }
    if let Some(key) = api_key::Entity::find_by_id(wanted).one(db).await? {
        return Ok(key);
    }
    if is_well_formed(wanted) {
        return api_key::Entity::find()
            .filter(api_key::Column::SecretHash.eq(hash_secret(wanted)))
            .one(db)
            .await?
            .ok_or_else(|| BillingError::KeyNotFound(format!("{}...", &wanted[..PREFIX_LEN])));
    }
    // A prefix is `sk-` and base62 only, so it holds no LIKE wildcard.
    let is_prefix = wanted.len() <= PREFIX_LEN
        && wanted.starts_with(SECRET_SCHEME)
        && wanted[SECRET_SCHEME.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric());
    if !is_prefix {
        return Err(BillingError::KeyNotFound(wanted.to_owned()));
    }
    let mut matches = api_key::Entity::find()
        .filter(api_key::Column::Prefix.starts_with(wanted))
        .order_by_asc(api_key::Column::CreatedAt)
        .limit(50)
        .all(db)
        .await?;
    // SQLite's LIKE ignores ASCII case; base62 does not.
    matches.retain(|k| k.prefix.starts_with(wanted));
    match matches.len() {
        0 => Err(BillingError::KeyNotFound(wanted.to_owned())),
        1 => Ok(matches.remove(0)),
        _ => Err(BillingError::AmbiguousPrefix {
            prefix: wanted.to_owned(),
            ids: matches.into_iter().map(|k| k.id).collect(),
        }),
    }
}

/// A cached, valid key: its record and its live limits.
#[derive(Debug)]
pub struct ActiveKey {
    pub record: KeyRecord,
    pub limits: KeyLimits,
    /// The key has a prepaid balance or a monthly budget: its admissions reserve money. Keys
    /// without either pay no database write at admission.
    pub metered: bool,
    /// `api_keys.updated_at` when this entry was read; the refresher evicts it when that moves.
    updated_at: i64,
}

#[derive(Debug, Clone)]
enum CacheEntry {
    Active(Arc<ActiveKey>),
    /// Revoked keys are cached too: their number is bounded by the table, not by callers.
    Revoked {
        key_id: String,
        updated_at: i64,
    },
}

impl CacheEntry {
    fn key_id(&self) -> &str {
        match self {
            Self::Active(k) => &k.record.id,
            Self::Revoked { key_id, .. } => key_id,
        }
    }

    fn updated_at(&self) -> i64 {
        match self {
            Self::Active(k) => k.updated_at,
            Self::Revoked { updated_at, .. } => *updated_at,
        }
    }

    fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Active(a), Self::Active(b)) => Arc::ptr_eq(a, b),
            (Self::Revoked { .. }, Self::Revoked { .. }) => {
                self.key_id() == other.key_id() && self.updated_at() == other.updated_at()
            }
            _ => false,
        }
    }

    fn into_result(self) -> Result<Arc<ActiveKey>, BillingError> {
        match self {
            Self::Active(k) => Ok(k),
            Self::Revoked { .. } => Err(BillingError::RevokedKey),
        }
    }
}

/// How often a fill retries when an invalidation raced with it.
const MAX_FILL_ATTEMPTS: usize = 3;

/// Known keys by secret hash. A hit costs one SHA-256 and one map lookup.
#[derive(Debug, Default)]
pub struct KeyCache {
    entries: DashMap<String, CacheEntry>,
    /// Bumped by every invalidation; a fill that saw it move re-reads, so an entry read before a
    /// revocation cannot be cached after the invalidation that should have removed it.
    epoch: AtomicU64,
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

    /// The valid key whose secret is `secret`: from the cache, or read once from the database
    /// (with its month's request count for the quota) and cached.
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
            let loaded = load(db, tiers, &hash).await?;
            // Concurrent fills of one key agree on one entry, so they share one quota counter.
            let entry = self.entries.entry(hash.clone()).or_insert(loaded).clone();
            if self.epoch.load(Ordering::SeqCst) == epoch || attempt >= MAX_FILL_ATTEMPTS {
                return entry.into_result();
            }
            self.entries
                .remove_if(&hash, |_, cached| cached.same_as(&entry));
        }
    }

    /// Drops the key `key_id` so the next request reads it afresh.
    pub fn invalidate(&self, key_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|_, e| e.key_id() != key_id);
    }

    /// Drops every cached key whose row changed: `changed` maps key id to its current
    /// `updated_at`.
    fn evict_changed(&self, changed: &HashMap<String, i64>) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|_, e| {
            changed
                .get(e.key_id())
                .is_none_or(|updated_at| *updated_at == e.updated_at())
        });
    }
}

/// Reads one key by hash and builds its cache entry.
async fn load(
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
        return Ok(CacheEntry::Revoked {
            key_id: key.id,
            updated_at: key.updated_at,
        });
    }
    let tier = tiers
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
    let updated_at = key.updated_at;
    Ok(CacheEntry::Active(Arc::new(ActiveKey {
        limits: KeyLimits::new(tier, period, used),
        metered,
        record: key.into(),
        updated_at,
    })))
}

/// How far back each poll looks before the newest change it has seen, in milliseconds: covers
/// clock skew between processes and transactions that commit out of timestamp order.
const REFRESH_LOOKBACK_MS: i64 = 5_000;

/// Polls `api_keys` for rows whose `updated_at` moved and evicts them from a [`KeyCache`].
#[derive(Debug)]
pub struct KeyRefresher {
    /// The newest `updated_at` seen.
    watermark: i64,
    /// Changes already handled inside the lookback window: key id → `updated_at`.
    seen: HashMap<String, i64>,
}

impl KeyRefresher {
    /// A refresher that reports changes made from `since` (Unix ms) on.
    pub fn new(since: i64) -> Self {
        Self {
            watermark: since,
            seen: HashMap::new(),
        }
    }

    /// One poll; returns how many new changes it found.
    pub async fn poll(
        &mut self,
        db: &DatabaseConnection,
        cache: &KeyCache,
    ) -> Result<usize, BillingError> {
        let floor = self.watermark.saturating_sub(REFRESH_LOOKBACK_MS);
        let rows: Vec<(String, i64)> = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::Id)
            .column(api_key::Column::UpdatedAt)
            .filter(api_key::Column::UpdatedAt.gte(floor))
            .into_tuple()
            .all(db)
            .await?;
        let changed: HashMap<String, i64> = rows
            .into_iter()
            .filter(|(id, updated_at)| self.seen.get(id) != Some(updated_at))
            .collect();
        if !changed.is_empty() {
            cache.evict_changed(&changed);
            for (id, updated_at) in &changed {
                self.watermark = self.watermark.max(*updated_at);
                self.seen.insert(id.clone(), *updated_at);
            }
        }
        let floor = self.watermark.saturating_sub(REFRESH_LOOKBACK_MS);
        self.seen.retain(|_, updated_at| *updated_at >= floor);
        Ok(changed.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_base62_and_redacted() {
        let a = SecretKey::generate();
        let b = SecretKey::generate();
        assert_ne!(a, b);
        assert!(is_well_formed(a.expose_secret()), "{}", a.expose_secret());
        assert_eq!(a.expose_secret().len(), 51);
        assert_eq!(a.prefix().len(), 12);
        assert!(a.expose_secret().starts_with(a.prefix()));
        let shown = format!("{a} {a:?}");
        assert!(!shown.contains(a.expose_secret()), "{shown}");
        assert!(shown.contains(a.prefix()));
        assert_eq!(a.hash(), hash_secret(a.expose_secret()));
        assert_eq!(a.hash().len(), 64);
    }

    #[tokio::test]
    async fn refresher_evicts_changed_keys_only() {
        use crate::config::{DatabaseConfig, TierConfig};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("k.db").display()),
        })
        .await
        .unwrap();
        crate::db::migrate(&db).await.unwrap();
        let tiers = Tiers::new(vec![TierConfig {
            name: "basic".into(),
            rpm: 10,
            monthly_requests: 10,
        }])
        .unwrap();
        let mut refresher = KeyRefresher::new(now_ms());
        let cache = KeyCache::new();
        let (a, a_secret) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let (_, b_secret) = create_key(&db, &tiers, "basic", None).await.unwrap();
        let a1 = cache
            .authenticate(&db, &tiers, a_secret.expose_secret())
            .await
            .unwrap();
        let b1 = cache
            .authenticate(&db, &tiers, b_secret.expose_secret())
            .await
            .unwrap();
        assert_eq!(refresher.poll(&db, &cache).await.unwrap(), 2);
        assert_eq!(refresher.poll(&db, &cache).await.unwrap(), 0);
        // Unchanged keys stay cached (their limiter state with them).
        let a2 = cache
            .authenticate(&db, &tiers, a_secret.expose_secret())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a1, &a2));

        revoke_key(&db, &a.id).await.unwrap();
        assert_eq!(refresher.poll(&db, &cache).await.unwrap(), 1);
        assert!(matches!(
            cache
                .authenticate(&db, &tiers, a_secret.expose_secret())
                .await,
            Err(BillingError::RevokedKey)
        ));
        let b2 = cache
            .authenticate(&db, &tiers, b_secret.expose_secret())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&b1, &b2));
        assert_eq!(cache.len(), 2);
        cache.invalidate(&a.id);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn malformed_secrets_are_recognised() {
        assert!(!is_well_formed("sk-short"));
        assert!(!is_well_formed(&format!("pk-{}", "a".repeat(48))));
        assert!(!is_well_formed(&format!("sk-{}!", "a".repeat(47))));
        assert!(is_well_formed(&format!("sk-{}", "a".repeat(48))));
    }
}
