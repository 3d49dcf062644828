//! The `tollgate.v1.Admin` gRPC service: key administration (create, list, rotate, revoke,
//! update, top up) for operators holding the admin token. The token is not an API key: it comes from the
//! process environment (`[admin] token_env`), travels as `authorization: Bearer <token>`, and is
//! compared in constant time. Without a configured token every call is refused.
//!
//! After a rotation, revocation or update the key is dropped from the serving cache through
//! Metering's `InvalidateKey`, so this process stops accepting an old secret at once; other
//! processes notice through their refresh poll of `api_keys.updated_at`.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate::money::{format_picodollars, parse_usd_picodollars};
use tollgate::transport::GrpcTransport;
use tollgate::v1::admin_server::Admin;
use tollgate::v1::metering_client::MeteringClient;
use tollgate::v1::{
    CreateKeyRequest, InvalidateKeyRequest, IssuedKey, ListKeysRequest, ListKeysResponse,
    ManagedKey, RevokeKeyRequest, RotateKeyRequest, TopUpRequest, UpdateKeyRequest,
};
use tonic::{Request, Response, Status};

use crate::accounts::{self, KeyAccount, KeyMoney};
use crate::clock::Period;
use crate::config::Tiers;
use crate::error::BillingError;
use crate::keys::{self, KeyRecord, KeyUpdate, NewKey};

/// The admin token. `Debug` never prints it.
#[derive(Clone)]
pub struct AdminToken {
    /// SHA-256 of the token: comparing fixed-length digests in constant time leaks neither the
    /// token's bytes nor its length.
    digest: [u8; 32],
}

impl AdminToken {
    /// Fewest characters an admin token may have.
    pub const MIN_LEN: usize = 16;

    /// The token, or why it is unfit (empty or shorter than [`MIN_LEN`](Self::MIN_LEN)).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.chars().count() < Self::MIN_LEN {
            return Err(format!(
                "the admin token must have at least {} characters",
                Self::MIN_LEN
            ));
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digest.ct_eq(&digest).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// The Admin service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: DatabaseConnection,
    tiers: Tiers,
    token: Option<AdminToken>,
    metering: MeteringClient<GrpcTransport>,
}

impl AdminService {
    /// `token: None` disables the service (every call UNAUTHENTICATED). `metering` reaches the
    /// Metering service whose key cache must forget rotated, revoked and updated keys.
    pub fn new(
        db: DatabaseConnection,
        tiers: Tiers,
        token: Option<AdminToken>,
        metering: GrpcTransport,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                tiers,
                token,
                metering: MeteringClient::new(metering),
            }),
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), BillingError> {
        let Some(token) = &self.inner.token else {
            return Err(BillingError::AdminDisabled);
        };
        match tollgate::auth::api_key(request.metadata()) {
            Some(presented) if token.matches(presented) => Ok(()),
            presented => {
                tracing::warn!(
                    token_present = presented.is_some(),
                    "Admin call refused: missing or wrong admin token"
                );
                Err(BillingError::AdminUnauthenticated)
            }
        }
    }

    /// Drops the key from the serving cache. A failure is logged, not returned: the change is
    /// committed, and the refresh poll evicts the key within its interval anyway.
    async fn invalidate(&self, key_id: &str) {
        let request = InvalidateKeyRequest {
            key_id: key_id.to_owned(),
        };
        if let Err(err) = self.inner.metering.clone().invalidate_key(request).await {
            tracing::warn!(key_id, error = %err, "InvalidateKey failed; the refresh poll will evict the key");
        }
    }

    /// The key as operators see it, with its money read afresh.
    async fn managed_now(&self, key: &KeyRecord) -> Result<ManagedKey, BillingError> {
        let account = accounts::account(&self.inner.db, &key.id).await?;
        Ok(self.managed(key, account.as_ref()))
    }

    fn managed(&self, key: &KeyRecord, account: Option<&KeyAccount>) -> ManagedKey {
        // A key whose tier was removed from the config has no limits in force (it is refused).
        let (rpm_limit, monthly_limit) = self.inner.tiers.get(&key.tier).map_or((0, 0), |tier| {
            let (rpm, monthly) = key.overrides.apply(tier);
            (rpm.get(), monthly)
        });
        ManagedKey {
            id: key.id.clone(),
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            tier: key.tier.clone(),
            created_at: key.created_at.timestamp(),
            revoked_at: key.revoked_at.map(|t| t.timestamp()),
            expires_at: key.expires_at.map(|t| t.timestamp()),
            rpm_override: key.overrides.rpm.map(|r| r.get()),
            monthly_requests_override: key.overrides.monthly_requests,
            rpm_limit,
            monthly_limit,
            status: key.status(Utc::now()).to_owned(),
            balance_usd: account
                .and_then(|a| a.balance_picodollars)
                .map(format_picodollars),
            monthly_budget_usd: account
                .and_then(|a| a.monthly_budget_picodollars)
                .map(format_picodollars),
            reserved_usd: format_picodollars(account.map_or(0, |a| a.reserved_picodollars)),
            spend_month_usd: format_picodollars(
                account.map_or(0, |a| a.spent_in(Period::current())),
            ),
            spend_total_usd: format_picodollars(account.map_or(0, |a| a.spent_total_picodollars)),
        }
    }

    async fn issued(
        &self,
        key: &KeyRecord,
        secret: &keys::SecretKey,
    ) -> Result<IssuedKey, BillingError> {
        Ok(IssuedKey {
            key: Some(self.managed_now(key).await?),
            secret: secret.expose_secret().to_owned(),
        })
    }
}

/// A USD amount given as a decimal string, in picodollars; a 400 naming `param` otherwise.
fn usd(param: &'static str, text: &str) -> Result<i64, BillingError> {
    parse_usd_picodollars(text.trim()).map_err(|e| BillingError::invalid(param, e.to_string()))
}

fn timestamp(param: &'static str, secs: i64) -> Result<DateTime<Utc>, BillingError> {
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| BillingError::invalid(param, format!("{param} is out of range")))
}

/// `value` unless `clear` is set; both at once is a 400 naming `clear_param`.
fn patch<T>(
    value: Option<T>,
    clear: bool,
    clear_param: &'static str,
) -> Result<Option<Option<T>>, BillingError> {
    match (value, clear) {
        (Some(_), true) => Err(BillingError::invalid(
            clear_param,
            format!("{clear_param} cannot be combined with a new value"),
        )),
        (None, true) => Ok(Some(None)),
        (value, false) => Ok(value.map(Some)),
    }
}

fn key_name(param: &'static str, key: String) -> Result<String, BillingError> {
    if key.trim().is_empty() {
        return Err(BillingError::invalid(
            param,
            "name the key by id, prefix or secret",
        ));
    }
    Ok(key)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<IssuedKey>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let new = NewKey {
            tier: req.tier,
            name: Some(req.name),
            expires_at: req
                .expires_at
                .map(|s| timestamp("expires_at", s))
                .transpose()?,
            rpm: req.rpm,
            monthly_requests: req.monthly_requests,
            money: KeyMoney {
                balance_picodollars: req
                    .balance_usd
                    .as_deref()
                    .map(|t| usd("balance_usd", t))
                    .transpose()?,
                monthly_budget_picodollars: req
                    .monthly_budget_usd
                    .as_deref()
                    .map(|t| usd("monthly_budget_usd", t))
                    .transpose()?,
            },
        };
        let (key, secret) = keys::create_key_with(&self.inner.db, &self.inner.tiers, &new).await?;
        Ok(Response::new(self.issued(&key, &secret).await?))
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.authorize(&request)?;
        let keys = keys::list_keys(&self.inner.db).await?;
        let accounts = accounts::all_accounts(&self.inner.db).await?;
        Ok(Response::new(ListKeysResponse {
            keys: keys
                .iter()
                .map(|k| self.managed(k, accounts.get(&k.id)))
                .collect(),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<RotateKeyRequest>,
    ) -> Result<Response<IssuedKey>, Status> {
        self.authorize(&request)?;
        let wanted = key_name("key", request.into_inner().key)?;
        let (key, secret) = keys::rotate_key(&self.inner.db, &wanted).await?;
        self.invalidate(&key.id).await;
        Ok(Response::new(self.issued(&key, &secret).await?))
    }

    async fn revoke_key(
        &self,
        request: Request<RevokeKeyRequest>,
    ) -> Result<Response<ManagedKey>, Status> {
        self.authorize(&request)?;
        let wanted = key_name("key", request.into_inner().key)?;
        let key = keys::revoke_key(&self.inner.db, &wanted).await?;
        self.invalidate(&key.id).await;
        Ok(Response::new(self.managed_now(&key).await?))
    }

    async fn update_key(
        &self,
        request: Request<UpdateKeyRequest>,
    ) -> Result<Response<ManagedKey>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let wanted = key_name("key", req.key)?;
        let update = KeyUpdate {
            name: req.name,
            tier: req.tier,
            expires_at: patch(
                req.expires_at
                    .map(|s| timestamp("expires_at", s))
                    .transpose()?,
                req.clear_expires_at,
                "clear_expires_at",
            )?,
            rpm: patch(req.rpm, req.clear_rpm, "clear_rpm")?,
            monthly_requests: patch(
                req.monthly_requests,
                req.clear_monthly_requests,
                "clear_monthly_requests",
            )?,
        };
        let budget = patch(
            req.monthly_budget_usd
                .as_deref()
                .map(|t| usd("monthly_budget_usd", t))
                .transpose()?,
            req.clear_monthly_budget,
            "clear_monthly_budget",
        )?;
        if update.is_empty() && budget.is_none() {
            return Err(BillingError::invalid("key", "the update changes nothing").into());
        }
        // The key's own fields first (this also checks that the key exists), then its budget.
        let key = if update.is_empty() {
            keys::find_key(&self.inner.db, &wanted).await?
        } else {
            keys::update_key(&self.inner.db, &self.inner.tiers, &wanted, &update).await?
        };
        if let Some(budget) = budget {
            accounts::set_monthly_budget(&self.inner.db, &key.id, budget).await?;
        }
        self.invalidate(&key.id).await;
        Ok(Response::new(self.managed_now(&key).await?))
    }

    async fn top_up(&self, request: Request<TopUpRequest>) -> Result<Response<ManagedKey>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let wanted = key_name("key", req.key)?;
        let amount = usd("amount_usd", &req.amount_usd)?;
        if amount == 0 {
            return Err(
                BillingError::invalid("amount_usd", "a top-up must be more than 0 USD").into(),
            );
        }
        let (key, account) = keys::top_up_key(&self.inner.db, &wanted, amount).await?;
        self.invalidate(&key.id).await;
        Ok(Response::new(self.managed(&key, Some(&account))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly_and_never_print() {
        let token = AdminToken::new("admin-token-0123456789").unwrap();
        assert!(token.matches("admin-token-0123456789"));
        assert!(!token.matches("admin-token-012345678"));
        assert!(!token.matches("admin-token-0123456789x"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
        let too_short = format!(
            "the admin token must have at least {} characters",
            AdminToken::MIN_LEN
        );
        assert_eq!(AdminToken::new("short").unwrap_err(), too_short);
        assert_eq!(AdminToken::new("   ").unwrap_err(), too_short);
    }

    #[test]
    fn patches_set_clear_or_leave() {
        assert_eq!(patch(Some(3), false, "clear_rpm").unwrap(), Some(Some(3)));
        assert_eq!(patch::<u32>(None, true, "clear_rpm").unwrap(), Some(None));
        assert_eq!(patch::<u32>(None, false, "clear_rpm").unwrap(), None);
        assert!(matches!(
            patch(Some(3), true, "clear_rpm"),
            Err(BillingError::InvalidArgument {
                param: "clear_rpm",
                ..
            })
        ));
    }
}
