//! The `tollgate.v1.Admin` gRPC service: key administration (create, list, rotate, revoke,
//! update, top up), the usage report across all keys, and the one view of a key operators get
//! back ([`ManagedKey`]). Two callers are
//! authorised:
//!
//! - network (and REST) callers holding the admin token. The token is not an API key: it comes from
//!   the process environment (`[admin] token_env`), travels as `authorization: Bearer <token>`, and
//!   is compared in constant time. Without a configured token every such call is refused;
//! - a [`LocalOperator`]: code in this process that has the config and the database anyway (the
//!   `tollgate` CLI). It is a request extension, which exists only in memory, so no network peer
//!   can present it and the token check for network callers is untouched.
//!
//! After a rotation, revocation or update the key is dropped from the serving cache through
//! Metering's `InvalidateKey`, so this process stops accepting an old secret at once; other
//! processes notice through their refresh poll of the key change sequence (`keys::refresh`).
//! A process without a key cache (the CLI) has no Metering to tell.

use std::sync::Arc;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use tollgate::money::{format_picodollars, parse_usd_picodollars};
use tollgate::transport::GrpcTransport;
use tollgate::v1::admin_server::Admin;
use tollgate::v1::metering_client::MeteringClient;
use tollgate::v1::{
    AllKeysUsage, CreateKeyRequest, InvalidateKeyRequest, IssuedKey, KeySpend, ListKeysRequest,
    ListKeysResponse, ManagedKey, RevokeKeyRequest, RotateKeyRequest, TopUpRequest,
    UpdateKeyRequest, UsageReportRequest,
};
use tonic::{Request, Response, Status};

use crate::accounts::{self, KeyAccount, KeyMoney};
use crate::clock::{DateRange, Period};
use crate::config::Tiers;
use crate::entity::usage_ledger;
use crate::error::BillingError;
use crate::keys::{self, KeyRecord, KeyUpdate, NewKey};
use crate::ledger;
use crate::reports::{daily_report, unsigned};

/// Keys in a usage report's `top_keys` when the caller does not say, and the most it may ask for.
const DEFAULT_TOP_KEYS: u32 = 10;
const MAX_TOP_KEYS: u32 = 100;

pub use tollgate::admin_token::AdminToken;

/// The identity of a trusted caller in this process: one that holds the config and the database
/// (the `tollgate` CLI), so the admin token would add nothing. Put it in a request's extensions
/// with [`LocalOperator::authorize`]. Extensions never cross a socket, so a network or REST caller
/// cannot present one; it reaches the service only through an in-process transport
/// (`tollgate::transport::in_process`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalOperator;

impl LocalOperator {
    /// `request`, marked as coming from the local operator.
    pub fn authorize<T>(message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(Self);
        request
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
    /// The key cache to invalidate; `None` in a process that serves no keys.
    metering: Option<MeteringClient<GrpcTransport>>,
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
                metering: Some(MeteringClient::new(metering)),
            }),
        }
    }

    /// The service for a process that serves no keys and takes no network calls: the `tollgate`
    /// CLI, calling it in-process as the [`LocalOperator`]. No admin token is configured, so any
    /// other caller is refused; there is no key cache here to invalidate (serving processes
    /// follow within their key-refresh interval).
    pub fn for_local_operator(db: DatabaseConnection, tiers: Tiers) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                tiers,
                token: None,
                metering: None,
            }),
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), BillingError> {
        if request.extensions().get::<LocalOperator>().is_some() {
            return Ok(());
        }
        tollgate::admin_token::check(self.inner.token.as_ref(), request.metadata())
            .map_err(BillingError::Admin)
    }

    /// Drops the key from the serving cache. A failure is logged, not returned: the change is
    /// committed, and the refresh poll evicts the key within its interval anyway.
    async fn invalidate(&self, key_id: &str) {
        let Some(metering) = &self.inner.metering else {
            return;
        };
        let request = InvalidateKeyRequest {
            key_id: key_id.to_owned(),
        };
        if let Err(err) = metering.clone().invalidate_key(request).await {
            tracing::warn!(key_id, error = %err, "InvalidateKey failed; the refresh poll will evict the key");
        }
    }

    /// The key as operators see it, with its money and request counts read afresh.
    async fn managed_now(&self, key: &KeyRecord) -> Result<ManagedKey, BillingError> {
        let account = accounts::account(&self.inner.db, &key.id).await?;
        self.managed_with(key, account.as_ref()).await
    }

    /// The key as operators see it, with `account` as its money and its request counts read
    /// afresh.
    async fn managed_with(
        &self,
        key: &KeyRecord,
        account: Option<&KeyAccount>,
    ) -> Result<ManagedKey, BillingError> {
        let period = Period::current();
        let requests = request_counts(&self.inner.db, Some(&key.id), period).await?;
        Ok(self.managed(
            key,
            account,
            period,
            requests.get(&key.id).copied().unwrap_or_default(),
        ))
    }

    /// The one place a key's view is made: its record, its money and its settled requests.
    fn managed(
        &self,
        key: &KeyRecord,
        account: Option<&KeyAccount>,
        period: Period,
        requests: RequestCounts,
    ) -> ManagedKey {
        // A key whose tier was removed from the config has no limits in force (it is refused).
        let (rpm_limit, monthly_limit) = self.inner.tiers.get(&key.tier).map_or((0, 0), |tier| {
            let (rpm, monthly) = key.overrides.apply(tier);
            (rpm.get(), monthly)
        });
        let balance = account.and_then(|a| a.balance_picodollars);
        let budget = account.and_then(|a| a.monthly_budget_picodollars);
        let reserved = account.map_or(0, |a| a.reserved_picodollars);
        let spend_month = account.map_or(0, |a| a.spent_in(period));
        let spend_total = account.map_or(0, |a| a.spent_total_picodollars);
        let over_reserved = account.map_or(0, |a| a.over_reserved_picodollars);
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
            balance_usd: balance.map(format_picodollars),
            monthly_budget_usd: budget.map(format_picodollars),
            reserved_usd: format_picodollars(reserved),
            spend_month_usd: format_picodollars(spend_month),
            spend_total_usd: format_picodollars(spend_total),
            balance_picodollars: balance,
            monthly_budget_picodollars: budget,
            reserved_picodollars: reserved,
            spend_month_picodollars: spend_month,
            spend_total_picodollars: spend_total,
            credited_total_picodollars: account.map_or(0, |a| a.credited_total_picodollars),
            written_off_picodollars: account.map_or(0, |a| a.written_off_picodollars),
            over_reserved_usd: format_picodollars(over_reserved),
            over_reserved_picodollars: over_reserved,
            over_reserved_count: account.map_or(0, |a| {
                u64::try_from(a.over_reserved_count).unwrap_or_default()
            }),
            period: period.label(),
            requests_month: requests.month,
            requests_total: requests.total,
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

/// A key's settled requests: in the current period and in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RequestCounts {
    month: u64,
    total: u64,
}

/// Ledger rows per key (only `key_id`'s when given), in `period` and in all: one grouped query,
/// so listing every key costs one scan, not two counts per key.
async fn request_counts(
    db: &DatabaseConnection,
    key_id: Option<&str>,
    period: Period,
) -> Result<HashMap<String, RequestCounts>, BillingError> {
    use usage_ledger::Column;
    let mut query = usage_ledger::Entity::find()
        .select_only()
        .column(Column::KeyId)
        .column(Column::Period)
        .column_as(Expr::col(Column::Id).count(), "requests")
        .group_by(Column::KeyId)
        .group_by(Column::Period);
    if let Some(key_id) = key_id {
        query = query.filter(Column::KeyId.eq(key_id));
    }
    let rows: Vec<(String, String, i64)> = query.into_tuple().all(db).await?;
    let period = period.label();
    let mut counts: HashMap<String, RequestCounts> = HashMap::new();
    for (key_id, in_period, requests) in rows {
        let requests = u64::try_from(requests).unwrap_or(0);
        let entry = counts.entry(key_id).or_default();
        entry.total += requests;
        if in_period == period {
            entry.month += requests;
        }
    }
    Ok(counts)
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
        let period = Period::current();
        let requests = request_counts(&self.inner.db, None, period).await?;
        Ok(Response::new(ListKeysResponse {
            keys: keys
                .iter()
                .map(|k| {
                    let counts = requests.get(&k.id).copied().unwrap_or_default();
                    self.managed(k, accounts.get(&k.id), period, counts)
                })
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
        Ok(Response::new(
            self.managed_with(&key, Some(&account)).await?,
        ))
    }

    async fn get_usage_report(
        &self,
        request: Request<UsageReportRequest>,
    ) -> Result<Response<AllKeysUsage>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let top = match req.top_keys {
            0 => DEFAULT_TOP_KEYS,
            n if n <= MAX_TOP_KEYS => n,
            _ => {
                return Err(BillingError::invalid(
                    "top_keys",
                    format!("top_keys must be between 1 and {MAX_TOP_KEYS}"),
                )
                .into());
            }
        };
        let range = DateRange::parse(&req.start_date, &req.end_date, Utc::now().date_naive())?;
        let (start_ms, end_ms) = range.bounds_ms();
        let db = &self.inner.db;
        let rows = ledger::daily_usage(db, None, start_ms, end_ms).await?;
        let (daily_costs, totals) = daily_report(range, rows);
        let spenders = ledger::top_keys(db, start_ms, end_ms, u64::from(top)).await?;
        let keys: HashMap<String, KeyRecord> = keys::list_keys(db)
            .await?
            .into_iter()
            .map(|k| (k.id.clone(), k))
            .collect();
        let top_keys = spenders
            .into_iter()
            .map(|spender| {
                let key = keys.get(&spender.key_id);
                KeySpend {
                    name: key.map(|k| k.name.clone()).unwrap_or_default(),
                    prefix: key.map(|k| k.prefix.clone()).unwrap_or_default(),
                    tier: key.map(|k| k.tier.clone()).unwrap_or_default(),
                    id: spender.key_id,
                    requests: unsigned(spender.requests),
                    cost_picodollars: spender.cost_picodollars,
                }
            })
            .collect();
        Ok(Response::new(AllKeysUsage {
            start_date: range.start.format("%Y-%m-%d").to_string(),
            end_date: range.end.format("%Y-%m-%d").to_string(),
            daily_costs,
            total_requests: unsigned(totals.requests),
            total_prompt_tokens: unsigned(totals.prompt_tokens),
            total_cached_prompt_tokens: unsigned(totals.cached_prompt_tokens),
            total_completion_tokens: unsigned(totals.completion_tokens),
            total_reasoning_tokens: unsigned(totals.reasoning_tokens),
            total_cost_picodollars: totals.cost_picodollars,
            top_keys,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn database(dir: &tempfile::TempDir) -> (DatabaseConnection, Tiers) {
        let db = crate::connect(&crate::DatabaseConfig::at(format!(
            "sqlite://{}",
            dir.path().join("admin.db").display()
        )))
        .await
        .unwrap();
        crate::migrate(&db).await.unwrap();
        let tiers = Tiers::new(vec![crate::TierConfig {
            name: "pro".into(),
            rpm: 30,
            monthly_requests: 3000,
            models: None,
            max_concurrent_streams: None,
        }])
        .unwrap();
        (db, tiers)
    }

    fn client(service: AdminService) -> tollgate::v1::admin_client::AdminClient<GrpcTransport> {
        use tollgate::v1::admin_server::AdminServer;
        tollgate::v1::admin_client::AdminClient::new(tollgate::transport::in_process(
            AdminServer::new(service),
        ))
    }

    /// The error code of a refused `ListKeys`.
    async fn refusal(
        admin: &mut tollgate::v1::admin_client::AdminClient<GrpcTransport>,
        request: Request<ListKeysRequest>,
    ) -> String {
        let status = admin.list_keys(request).await.unwrap_err();
        tollgate::error::ApiError::from_status(&status)
            .code
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn the_local_operator_is_authorised_in_process_and_nobody_else_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (db, tiers) = database(&dir).await;
        let mut local = client(AdminService::for_local_operator(db.clone(), tiers.clone()));
        let created = local
            .create_key(LocalOperator::authorize(CreateKeyRequest {
                tier: "pro".into(),
                name: "cli".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(created.secret.starts_with("sk-"));
        // Without the extension, even an in-process call is a caller like any other: no token
        // is configured, so it is refused; an API key is no substitute.
        assert_eq!(
            refusal(&mut local, Request::new(ListKeysRequest {})).await,
            "admin_disabled"
        );
        let mut with_api_key = Request::new(ListKeysRequest {});
        tollgate::auth::set_api_key(with_api_key.metadata_mut(), &created.secret);
        assert_eq!(refusal(&mut local, with_api_key).await, "admin_disabled");

        // A service with a token (as `tollgate serve` runs it) still wants the token from
        // everyone but the local operator.
        let token = AdminToken::new("admin-token-0123456789").unwrap();
        let served = AdminService {
            inner: Arc::new(Inner {
                db,
                tiers,
                token: Some(token),
                metering: None,
            }),
        };
        let mut served = client(served);
        assert_eq!(
            refusal(&mut served, Request::new(ListKeysRequest {})).await,
            "invalid_admin_token"
        );
        let listed = served
            .list_keys(LocalOperator::authorize(ListKeysRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.keys.len(), 1);
    }

    #[tokio::test]
    async fn the_view_counts_settled_requests_per_month_and_in_all() {
        use sea_orm::{ActiveModelTrait, IntoActiveModel};
        let dir = tempfile::tempdir().unwrap();
        let (db, tiers) = database(&dir).await;
        let mut admin = client(AdminService::for_local_operator(db.clone(), tiers));
        let mut ids = Vec::new();
        for name in ["busy", "idle"] {
            let issued = admin
                .create_key(LocalOperator::authorize(CreateKeyRequest {
                    tier: "pro".into(),
                    name: name.into(),
                    balance_usd: Some("2".into()),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            ids.push(issued.key.unwrap().id);
        }
        let now = Period::current();
        let earlier = Period::of(Utc::now() - chrono::Duration::days(40));
        for (n, period) in (1..).zip([now, now, earlier]) {
            usage_ledger::Model {
                id: n,
                request_id: format!("req-{n}"),
                key_id: ids[0].clone(),
                requested_model: "m".into(),
                model_id: "m".into(),
                provider: "p".into(),
                upstream_model: "m".into(),
                prompt_tokens: 1,
                cached_prompt_tokens: 0,
                completion_tokens: 1,
                reasoning_tokens: 0,
                cache_write_tokens: 0,
                cost_picodollars: 0,
                outcome: "succeeded".into(),
                streamed: false,
                estimated: false,
                created_at: 0,
                period: period.label(),
                deployment: None,
                attempts: None,
            }
            .into_active_model()
            .insert(&db)
            .await
            .unwrap();
        }
        let listed = admin
            .list_keys(LocalOperator::authorize(ListKeysRequest {}))
            .await
            .unwrap()
            .into_inner()
            .keys;
        let counts: Vec<_> = listed
            .iter()
            .map(|k| (k.name.as_str(), k.requests_month, k.requests_total))
            .collect();
        assert_eq!(counts, vec![("busy", 2, 3), ("idle", 0, 0)]);
        assert_eq!(listed[0].period, now.label());
        assert_eq!(
            (
                listed[0].balance_picodollars,
                listed[0].credited_total_picodollars
            ),
            (Some(2_000_000_000_000), 2_000_000_000_000)
        );
        // A single key's answer counts the same way.
        let updated = admin
            .update_key(LocalOperator::authorize(UpdateKeyRequest {
                key: ids[0].clone(),
                name: Some("renamed".into()),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((updated.requests_month, updated.requests_total), (2, 3));
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
