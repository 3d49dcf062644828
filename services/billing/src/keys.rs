//! API keys: secret generation and hashing, the admin operations behind `tollgate keys` and the
//! Admin service (create, list, rotate, revoke, update: expiry and per-key limit overrides), and
//! the in-memory [`KeyCache`] that keeps the database off the hot path.
//!
//! Only the SHA-256 of a secret is stored. The cache maps that hash to the key's record and its
//! limits; it is filled by one read on a miss and emptied of a key by [`KeyCache::invalidate`]
//! (the `InvalidateKey` RPC) or by [`KeyRefresher::poll`], which notices rows whose `updated_at`
//! moved (a revocation, rotation or update made by another process). Expiry needs no eviction:
//! it is checked against the clock on every authentication. Unknown keys are never cached, so
//! guessing keys cannot fill memory; malformed ones are refused without touching the database.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
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
use crate::config::{Tier, Tiers};
use crate::entity::api_key;
use crate::error::BillingError;
use crate::ledger;
use crate::limits::{KeyLimits, LimitOverrides};

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
    /// When the key stops working; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's own limits, replacing its tier's where set.
    pub overrides: LimitOverrides,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// Whether the key has expired by `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// `revoked`, `expired` or `active`, as listings show it.
    pub fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.is_revoked() {
            "revoked"
        } else if self.is_expired(now) {
            "expired"
        } else {
            "active"
        }
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
            expires_at: m.expires_at.map(from_ms),
            overrides: LimitOverrides {
                rpm: m
                    .rpm_override
                    .and_then(|v| u32::try_from(v).ok())
                    .and_then(NonZeroU32::new),
                monthly_requests: m
                    .monthly_requests_override
                    .and_then(|v| u64::try_from(v).ok()),
            },
        }
    }
}

/// What a new key is made of, beyond its secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewKey {
    pub tier: String,
    pub name: Option<String>,
    /// Must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
    /// Overrides of the tier's requests per minute (at least 1) and monthly quota.
    pub rpm: Option<u32>,
    pub monthly_requests: Option<u64>,
    /// A prepaid balance and/or a monthly budget; unlimited in money by default.
    pub money: KeyMoney,
}

/// A change to a key; `None` leaves a field as it is, `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    pub name: Option<String>,
    pub tier: Option<String>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub rpm: Option<Option<u32>>,
    pub monthly_requests: Option<Option<u64>>,
}

impl KeyUpdate {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn known_tier<'a>(tiers: &'a Tiers, tier: &str) -> Result<&'a str, BillingError> {
    tiers
        .get(tier)
        .map(|t| t.name.as_str())
        .ok_or_else(|| BillingError::UnknownTier {
            tier: tier.to_owned(),
            valid: tiers.names(),
        })
}

fn rpm_column(rpm: u32) -> Result<i64, BillingError> {
    if rpm == 0 {
        return Err(BillingError::invalid("rpm", "rpm must be at least 1"));
    }
    Ok(i64::from(rpm))
}

fn monthly_column(monthly_requests: u64) -> Result<i64, BillingError> {
    i64::try_from(monthly_requests)
        .map_err(|_| BillingError::invalid("monthly_requests", "monthly_requests is too large"))
}

/// Issues a key of `tier`, unlimited in money. The secret is returned once and only its hash is stored.
pub async fn create_key(
    db: &DatabaseConnection,
    tiers: &Tiers,
    tier: &str,
    name: Option<&str>,
) -> Result<(KeyRecord, SecretKey), BillingError> {
    let new = NewKey {
        tier: tier.to_owned(),
        name: name.map(str::to_owned),
        ..NewKey::default()
    };
    create_key_with(db, tiers, &new).await
}

/// Issues a key as `new` describes it. The secret is returned once and only its hash is stored;
/// the key row and its money account are written in one transaction.
pub async fn create_key_with(
    db: &DatabaseConnection,
    tiers: &Tiers,
    new: &NewKey,
) -> Result<(KeyRecord, SecretKey), BillingError> {
    let tier = known_tier(tiers, &new.tier)?;
    let now = now_ms();
    if let Some(at) = new.expires_at
        && at.timestamp_millis() <= now
    {
        return Err(BillingError::invalid(
            "expires_at",
            "expires_at must be in the future",
        ));
    }
    let secret = SecretKey::generate();
    let model = api_key::Model {
        id: uuid::Uuid::now_v7().to_string(),
        name: new.name.as_deref().unwrap_or_default().trim().to_owned(),
        prefix: secret.prefix().to_owned(),
        secret_hash: secret.hash(),
        tier: tier.to_owned(),
        created_at: now,
        revoked_at: None,
        updated_at: now,
        expires_at: new.expires_at.map(|t| t.timestamp_millis()),
        rpm_override: new.rpm.map(rpm_column).transpose()?,
        monthly_requests_override: new.monthly_requests.map(monthly_column).transpose()?,
    };
    let txn = db.begin().await?;
    api_key::Entity::insert(api_key::ActiveModel::from(model.clone()))
        .exec_without_returning(&txn)
        .await?;
    accounts::open(&txn, &model.id, new.money, now).await?;
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
    let key = find_named(db, id_or_prefix).await?;
    if key.revoked_at.is_some() {
        return Ok(key.into());
    }
    let now = now_ms();
    api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(Some(now)))
        .col_expr(
            api_key::Column::UpdatedAt,
            Expr::value(next_updated_at(&key)),
        )
        .filter(api_key::Column::Id.eq(key.id.as_str()))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    let key = reload(db, &key.id).await?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "API key revoked");
    Ok(key.into())
}

/// `updated_at` for a change made now: it must move even within one millisecond of the last
/// change, because caches compare it.
fn next_updated_at(key: &api_key::Model) -> i64 {
    now_ms().max(key.updated_at.saturating_add(1))
}

/// The key an operator named, in any form [`revoke_key`] accepts.
async fn find_named(
    db: &DatabaseConnection,
    id_or_prefix: &str,
) -> Result<api_key::Model, BillingError> {
    let wanted = id_or_prefix.trim();
    find_one(db, wanted.strip_suffix("...").unwrap_or(wanted)).await
}

async fn reload(db: &DatabaseConnection, key_id: &str) -> Result<api_key::Model, BillingError> {
    api_key::Entity::find_by_id(key_id)
        .one(db)
        .await?
        .ok_or_else(|| BillingError::KeyNotFound(key_id.to_owned()))
}

/// Gives the key named by `id_or_prefix` (as [`revoke_key`] names keys) a new secret. The id,
/// tier, limits and ledger rows stay; the old secret stops working (at once in a process whose
/// cache is invalidated, within the refresh interval in the others). Revoked keys are refused.
pub async fn rotate_key(
    db: &DatabaseConnection,
    id_or_prefix: &str,
) -> Result<(KeyRecord, SecretKey), BillingError> {
    let key = find_named(db, id_or_prefix).await?;
    if key.revoked_at.is_some() {
        return Err(BillingError::RotateRevoked(key.id));
    }
    let secret = SecretKey::generate();
    let rotated = api_key::Entity::update_many()
        .col_expr(api_key::Column::SecretHash, Expr::value(secret.hash()))
        .col_expr(api_key::Column::Prefix, Expr::value(secret.prefix()))
        .col_expr(
            api_key::Column::UpdatedAt,
            Expr::value(next_updated_at(&key)),
        )
        .filter(api_key::Column::Id.eq(key.id.as_str()))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    if rotated.rows_affected == 0 {
        // Revoked between the read and the write.
        return Err(BillingError::RotateRevoked(key.id));
    }
    let key = reload(db, &key.id).await?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "API key rotated");
    Ok((key.into(), secret))
}

/// Applies `update` to the key named by `id_or_prefix`. An empty update returns the key as is.
pub async fn update_key(
    db: &DatabaseConnection,
    tiers: &Tiers,
    id_or_prefix: &str,
    update: &KeyUpdate,
) -> Result<KeyRecord, BillingError> {
    let key = find_named(db, id_or_prefix).await?;
    if update.is_empty() {
        return Ok(key.into());
    }
    use api_key::Column as C;
    let mut query = api_key::Entity::update_many()
        .col_expr(C::UpdatedAt, Expr::value(next_updated_at(&key)))
        .filter(C::Id.eq(key.id.as_str()));
    if let Some(name) = &update.name {
        query = query.col_expr(C::Name, Expr::value(name.trim()));
    }
    if let Some(tier) = &update.tier {
        query = query.col_expr(C::Tier, Expr::value(known_tier(tiers, tier)?));
    }
    if let Some(expires_at) = update.expires_at {
        query = query.col_expr(
            C::ExpiresAt,
            Expr::value(expires_at.map(|t| t.timestamp_millis())),
        );
    }
    if let Some(rpm) = update.rpm {
        query = query.col_expr(
            C::RpmOverride,
            Expr::value(rpm.map(rpm_column).transpose()?),
        );
    }
    if let Some(monthly) = update.monthly_requests {
        query = query.col_expr(
            C::MonthlyRequestsOverride,
            Expr::value(monthly.map(monthly_column).transpose()?),
        );
    }
    query.exec(db).await?;
    let key = reload(db, &key.id).await?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "API key updated");
    Ok(key.into())
}

/// The key named by its id, its displayed prefix or its full secret (as [`revoke_key`] accepts).
pub async fn find_key(
    db: &DatabaseConnection,
    id_or_prefix: &str,
) -> Result<KeyRecord, BillingError> {
    Ok(find_named(db, id_or_prefix).await?.into())
}

/// Adds `amount` picodollars to the prepaid balance of the key named by `id_or_prefix` (as
/// [`revoke_key`] names keys). A revoked key is refused: its money could never be spent.
pub async fn top_up_key(
    db: &DatabaseConnection,
    id_or_prefix: &str,
    amount: i64,
) -> Result<(KeyRecord, accounts::KeyAccount), BillingError> {
    let key = find_named(db, id_or_prefix).await?;
    if key.revoked_at.is_some() {
        return Err(BillingError::invalid(
            "key",
            "a revoked key cannot be topped up",
        ));
    }
    let account = accounts::top_up(db, &key.id, amount).await?;
    Ok((key.into(), account))
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
    /// Shared by every cache entry of this key id (see [`KeyCache`]), so counters survive
    /// evictions and re-reads.
    pub limits: Arc<KeyLimits>,
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
            Self::Active(k) => match k.record.expires_at {
                Some(at) if at <= Utc::now() => Err(BillingError::ExpiredKey(at)),
                _ => Ok(k),
            },
            Self::Revoked { .. } => Err(BillingError::RevokedKey),
        }
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
                updated_at: key.updated_at,
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
        let updated_at = key.updated_at;
        let record = KeyRecord::from(key);
        let limits = self.limits_for(&record.id, tier, record.overrides, period, used);
        Ok(CacheEntry::Active(Arc::new(ActiveKey {
            limits,
            metered,
            record,
            updated_at,
        })))
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
            models: None,
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

    #[tokio::test]
    async fn counters_survive_evictions_and_carry_over_when_limits_change() {
        use crate::config::{DatabaseConfig, TierConfig};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::connect(&DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("c.db").display()),
        })
        .await
        .unwrap();
        crate::db::migrate(&db).await.unwrap();
        let tiers = Tiers::new(vec![TierConfig {
            name: "basic".into(),
            rpm: 1000,
            monthly_requests: 3,
            models: None,
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

    #[test]
    fn malformed_secrets_are_recognised() {
        assert!(!is_well_formed("sk-short"));
        assert!(!is_well_formed(&format!("pk-{}", "a".repeat(48))));
        assert!(!is_well_formed(&format!("sk-{}!", "a".repeat(47))));
        assert!(is_well_formed(&format!("sk-{}", "a".repeat(48))));
    }
}
