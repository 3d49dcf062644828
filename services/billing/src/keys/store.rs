//! Keys in the database: the admin operations behind `tollgate keys` and the Admin service
//! (create, list, find, rotate, revoke, update: expiry and per-key limit overrides; top up), and
//! how an operator names a key (id, displayed prefix or full secret). Every change takes a number
//! of the change sequence in its own transaction ([`super::refresh::record_change`]), which is
//! how other processes' caches notice it.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::refresh::record_change;
use super::secret::{PREFIX_LEN, SECRET_SCHEME, SecretKey, hash_secret, is_well_formed};
use crate::accounts::{self, KeyMoney};
use crate::clock::{from_ms, now_ms};
use crate::config::Tiers;
use crate::entity::api_key;
use crate::error::BillingError;
use crate::limits::LimitOverrides;

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
        change_seq: 0,
    };
    let txn = db.begin().await?;
    api_key::Entity::insert(api_key::ActiveModel::from(model.clone()))
        .exec_without_returning(&txn)
        .await?;
    record_change(&txn, &model.id).await?;
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
    let txn = db.begin().await?;
    let revoked = api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(Some(now)))
        .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
        .filter(api_key::Column::Id.eq(key.id.as_str()))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if revoked.rows_affected > 0 {
        record_change(&txn, &key.id).await?;
    }
    txn.commit().await?;
    let key = reload(db, &key.id).await?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, "API key revoked");
    Ok(key.into())
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
    let txn = db.begin().await?;
    let rotated = api_key::Entity::update_many()
        .col_expr(api_key::Column::SecretHash, Expr::value(secret.hash()))
        .col_expr(api_key::Column::Prefix, Expr::value(secret.prefix()))
        .col_expr(api_key::Column::UpdatedAt, Expr::value(now_ms()))
        .filter(api_key::Column::Id.eq(key.id.as_str()))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if rotated.rows_affected == 0 {
        // Revoked between the read and the write.
        return Err(BillingError::RotateRevoked(key.id));
    }
    record_change(&txn, &key.id).await?;
    txn.commit().await?;
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
        .col_expr(C::UpdatedAt, Expr::value(now_ms()))
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
    let txn = db.begin().await?;
    query.exec(&txn).await?;
    record_change(&txn, &key.id).await?;
    txn.commit().await?;
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
