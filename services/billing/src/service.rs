//! The `tollgate.v1.Billing` gRPC service: authentication from the key cache, admission against
//! the tier's model allow-list, the tier limits (in memory, or in Redis when shared) and, for
//! keys with a balance or budget, a reservation of the worst-case cost ([`crate::accounts`]);
//! settlement through the group-commit ledger, usage reports (with a daily per-model breakdown)
//! and the subscription view. [`BillingService`] owns three background tasks (the ledger writer,
//! the key-refresh poll and the sweep of reservations that never settled);
//! [`BillingService::shutdown`] stops them after flushing the ledger.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, QuerySelect};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate::transport::GrpcTransport;
use tollgate::v1::billing_server::Billing;
use tollgate::v1::metering_server::Metering;
use tollgate::v1::{
    Admission, AdmitRequest, AuthenticateRequest, DailyUsage, GetSubscriptionRequest,
    GetUsageRequest, InvalidateKeyRequest, InvalidateKeyResponse, KeyInfo, Pricing, SettleRequest,
    Settlement, Subscription, UsageLineItem, UsageReport,
};
use tonic::{Request, Response, Status};

use crate::accounts::{self, Reservation};
use crate::clock::{DateRange, Period, day_start_ms, now_ms};
use crate::config::Tiers;
use crate::entity::api_key;
use crate::error::BillingError;
use crate::keys::{ActiveKey, KeyCache, KeyRefresher};
use crate::ledger::{self, Ledger, LedgerRow, LedgerWriter, Outcome};
use crate::pricing::{PriceBook, cost_picodollars, worst_case_picodollars};
use crate::shared_limits::SharedLimits;

/// How often a service polls `api_keys` for changes made elsewhere, unless told otherwise.
pub const DEFAULT_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest accepted refresh interval.
const MIN_KEY_REFRESH_INTERVAL: Duration = Duration::from_millis(10);
/// How long a reservation may stay unsettled when the caller names no deadline.
const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(600);
/// How often expired reservations are released, unless told otherwise.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How a [`BillingService`] runs beyond its database and tiers.
#[derive(Debug, Clone)]
pub struct BillingOptions {
    /// How often `api_keys` is polled for changes made by other processes.
    pub key_refresh_interval: Duration,
    /// Per-minute windows and monthly counters in Redis, shared with other gateway processes;
    /// in memory when `None`.
    pub shared_limits: Option<SharedLimits>,
    /// How often reservations past their expiry (requests that never settled) are released.
    pub sweep_interval: Duration,
}

impl Default for BillingOptions {
    fn default() -> Self {
        Self {
            key_refresh_interval: DEFAULT_KEY_REFRESH_INTERVAL,
            shared_limits: None,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// The billing service. Cheap to clone; clones share one cache, one ledger and one set of tasks.
#[derive(Clone)]
pub struct BillingService {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    tiers: Tiers,
    keys: Arc<KeyCache>,
    prices: PriceBook,
    ledger: Ledger,
    shared_limits: Option<SharedLimits>,
    tasks: Mutex<Option<Tasks>>,
}

struct Tasks {
    ledger_writer: LedgerWriter,
    /// Dropping or signalling it ends the refresh and sweep tasks.
    stop_refresh: watch::Sender<bool>,
    refresh: JoinHandle<()>,
    sweep: JoinHandle<()>,
}

impl std::fmt::Debug for BillingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingService")
            .field("tiers", &self.inner.tiers)
            .field("cached_keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

impl BillingService {
    /// Starts the service on a migrated database: spawns the ledger writer and a task that polls
    /// `api_keys` every `key_refresh_interval` (see [`DEFAULT_KEY_REFRESH_INTERVAL`]) and evicts
    /// keys changed by other processes. Prices come from the Catalog service `catalog` reaches.
    /// Fails when the schema is missing (run the migrations).
    pub async fn new(
        db: DatabaseConnection,
        tiers: Tiers,
        catalog: GrpcTransport,
        key_refresh_interval: Duration,
    ) -> Result<Self, BillingError> {
        Self::with_options(
            db,
            tiers,
            catalog,
            BillingOptions {
                key_refresh_interval,
                ..BillingOptions::default()
            },
        )
        .await
    }

    /// Starts the service with `options`. Before serving, it releases the reservations left by
    /// requests that never settled: on SQLite all of them (a SQLite database serves one gateway
    /// process, so none can belong to a live request), on PostgreSQL the expired ones (other
    /// replicas' requests may still be running); the sweep task releases the rest as they expire.
    pub async fn with_options(
        db: DatabaseConnection,
        tiers: Tiers,
        catalog: GrpcTransport,
        options: BillingOptions,
    ) -> Result<Self, BillingError> {
        api_key::Entity::find().limit(1).all(&db).await?;
        let stale_before = match db.get_database_backend() {
            DatabaseBackend::Sqlite => i64::MAX,
            _ => now_ms(),
        };
        let released = accounts::release_expired(&db, stale_before).await?;
        if released > 0 {
            tracing::warn!(
                released,
                "released reservations of requests that never settled"
            );
        }
        let keys = Arc::new(KeyCache::new());
        let (ledger, ledger_writer) = Ledger::start(db.clone());
        let (stop_refresh, stop_rx) = watch::channel(false);
        let refresh = tokio::spawn(refresh_keys(
            db.clone(),
            Arc::clone(&keys),
            options.key_refresh_interval.max(MIN_KEY_REFRESH_INTERVAL),
            stop_rx.clone(),
        ));
        let sweep = tokio::spawn(sweep_reservations(
            db.clone(),
            options.sweep_interval.max(MIN_KEY_REFRESH_INTERVAL),
            stop_rx,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                tiers,
                keys,
                prices: PriceBook::new(catalog),
                ledger,
                shared_limits: options.shared_limits,
                tasks: Mutex::new(Some(Tasks {
                    ledger_writer,
                    stop_refresh,
                    refresh,
                    sweep,
                })),
            }),
        })
    }

    /// Stops the background tasks: the ledger commits every queued row first, then refuses new
    /// ones (`Settle` answers UNAVAILABLE afterwards). Idempotent.
    pub async fn shutdown(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let Some(tasks) = tasks else { return };
        let _ = tasks.stop_refresh.send(true);
        tasks.ledger_writer.shutdown().await;
        if let Err(err) = tasks.refresh.await {
            tracing::error!(error = %err, "key refresh task panicked");
        }
        if let Err(err) = tasks.sweep.await {
            tracing::error!(error = %err, "reservation sweep task panicked");
        }
    }

    /// The configured tiers.
    pub fn tiers(&self) -> &Tiers {
        &self.inner.tiers
    }

    async fn authenticate_request<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Arc<ActiveKey>, BillingError> {
        let secret = tollgate::auth::api_key(request.metadata()).ok_or(BillingError::MissingKey)?;
        self.inner
            .keys
            .authenticate(&self.inner.db, &self.inner.tiers, secret)
            .await
    }

    /// Counts one request against the key's tier limits (shared or local).
    async fn take_slot(&self, key: &ActiveKey, period: Period) -> Result<(), BillingError> {
        match &self.inner.shared_limits {
            Some(shared) => {
                shared
                    .admit(&key.record.id, &key.limits, period, key.limits.used(period))
                    .await
            }
            None => key.limits.admit(period),
        }
    }

    /// Gives back the monthly slot of a request refused after [`Self::take_slot`].
    async fn give_back_slot(&self, key: &ActiveKey, period: Period) {
        match &self.inner.shared_limits {
            Some(shared) => {
                if let Err(err) = shared.release(&key.record.id, period).await {
                    tracing::error!(error = %err, "could not give back a monthly slot");
                }
            }
            None => key.limits.release(period),
        }
    }

    /// Requests counted for `key` in `period`.
    async fn used(&self, key: &ActiveKey, period: Period) -> u64 {
        let local = key.limits.used(period);
        match &self.inner.shared_limits {
            Some(shared) => match shared.used(&key.record.id, period).await {
                Ok(Some(used)) => used,
                Ok(None) => local,
                Err(err) => {
                    tracing::warn!(error = %err, "reading the shared monthly counter failed");
                    local
                }
            },
            None => local,
        }
    }

    /// Reserves the worst case of `req` at `prices` against the key's balance and budget; returns
    /// the amount.
    async fn reserve(
        &self,
        key: &ActiveKey,
        req: &AdmitRequest,
        prices: &Pricing,
        request_id: &str,
        period: Period,
    ) -> Result<i64, BillingError> {
        let amount =
            worst_case_picodollars(req.max_prompt_tokens, req.max_completion_tokens, prices);
        let ttl = if req.reservation_ttl_ms == 0 {
            DEFAULT_RESERVATION_TTL
        } else {
            Duration::from_millis(req.reservation_ttl_ms)
        };
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        accounts::reserve(
            &self.inner.db,
            &Reservation {
                request_id: request_id.to_owned(),
                key_id: key.record.id.clone(),
                amount,
                period,
                expires_at: now_ms().saturating_add(ttl_ms),
            },
        )
        .await?;
        Ok(amount)
    }

    async fn settle_row(&self, req: SettleRequest) -> Result<Settlement, BillingError> {
        // Priced by the model the Settle names, at the catalogue's prices.
        let prices = self.inner.prices.prices(&req.model_id).await?;
        let row = ledger_row(req, &prices, now_ms(), Period::current())?;
        let request_id = row.request_id.clone();
        let cost_picodollars = self.inner.ledger.record(row).await?;
        Ok(Settlement {
            request_id,
            cost_picodollars,
        })
    }
}

fn key_info(key: &ActiveKey) -> KeyInfo {
    KeyInfo {
        key_id: key.record.id.clone(),
        key_prefix: key.record.display_prefix(),
        tier: key.record.tier.clone(),
        name: key.record.name.clone(),
    }
}

fn non_empty(param: &'static str, value: String) -> Result<String, BillingError> {
    if value.trim().is_empty() {
        Err(BillingError::invalid(
            param,
            format!("{param} must not be empty"),
        ))
    } else {
        Ok(value)
    }
}

fn tokens(param: &'static str, value: u64) -> Result<i64, BillingError> {
    i64::try_from(value).map_err(|_| BillingError::invalid(param, format!("{param} is too large")))
}

/// Validates a `SettleRequest` and prices it at `prices`.
fn ledger_row(
    req: SettleRequest,
    prices: &Pricing,
    now: i64,
    period: Period,
) -> Result<LedgerRow, BillingError> {
    let request_id = non_empty("request_id", req.request_id)?;
    let key_id = non_empty("key_id", req.key_id)?;
    let outcome = match tollgate::v1::Outcome::try_from(req.outcome) {
        Ok(tollgate::v1::Outcome::Succeeded) => Outcome::Succeeded,
        Ok(tollgate::v1::Outcome::Failed) => Outcome::Failed,
        Ok(tollgate::v1::Outcome::Cancelled) => Outcome::Cancelled,
        Ok(tollgate::v1::Outcome::Unspecified) | Err(_) => {
            return Err(BillingError::invalid(
                "outcome",
                "outcome must be succeeded, failed or cancelled",
            ));
        }
    };
    let usage = req.usage.unwrap_or_default();
    Ok(LedgerRow {
        request_id,
        key_id,
        requested_model: req.requested_model,
        model_id: req.model_id,
        provider: req.provider,
        upstream_model: req.upstream_model,
        prompt_tokens: tokens("usage.prompt_tokens", usage.prompt_tokens)?,
        cached_prompt_tokens: tokens("usage.cached_prompt_tokens", usage.cached_prompt_tokens)?,
        completion_tokens: tokens("usage.completion_tokens", usage.completion_tokens)?,
        reasoning_tokens: tokens("usage.reasoning_tokens", usage.reasoning_tokens)?,
        cache_write_tokens: tokens("usage.cache_write_tokens", usage.cache_write_tokens)?,
        cost_picodollars: cost_picodollars(&usage, prices),
        outcome,
        streamed: req.streamed,
        estimated: req.estimated,
        created_at: now,
        period,
    })
}

/// Releases expired reservations every `interval` until told to stop.
async fn sweep_reservations(
    db: DatabaseConnection,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        match accounts::release_expired(&db, now_ms()).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::warn!(
                    released,
                    "released expired reservations of unsettled requests"
                )
            }
            Err(err) => tracing::warn!(error = %err, "sweeping reservations failed"),
        }
    }
}

/// Polls for key changes until told to stop (or until the service is dropped).
async fn refresh_keys(
    db: DatabaseConnection,
    keys: Arc<KeyCache>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut refresher = KeyRefresher::new(now_ms());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        match refresher.poll(&db, &keys).await {
            Ok(0) => {}
            Ok(changed) => {
                tracing::debug!(changed, "api_keys changed; stale cache entries evicted")
            }
            Err(err) => tracing::warn!(error = %err, "polling api_keys for changes failed"),
        }
    }
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Every day of `range` with its line items (from `rows`, ordered by day), and the sums over all
/// of them. Sums are of integers, so the days add up to the total exactly.
fn daily_report(
    range: DateRange,
    rows: Vec<ledger::DailyModelUsage>,
) -> (Vec<DailyUsage>, ledger::UsageTotals) {
    let mut totals = ledger::UsageTotals::default();
    let mut rows = rows.into_iter().peekable();
    let days = range
        .iter_days()
        .map(|date| {
            let start_ms = day_start_ms(date);
            let mut day = DailyUsage {
                timestamp: start_ms / 1000,
                date: date.format("%Y-%m-%d").to_string(),
                ..Default::default()
            };
            while let Some(row) = rows.next_if(|r| r.day * ledger::DAY_MS == start_ms) {
                totals.requests += row.requests;
                totals.prompt_tokens += row.prompt_tokens;
                totals.cached_prompt_tokens += row.cached_prompt_tokens;
                totals.completion_tokens += row.completion_tokens;
                totals.reasoning_tokens += row.reasoning_tokens;
                totals.cost_picodollars += row.cost_picodollars;
                day.cost_picodollars += row.cost_picodollars;
                day.line_items.push(UsageLineItem {
                    model: row.model_id,
                    requests: unsigned(row.requests),
                    prompt_tokens: unsigned(row.prompt_tokens),
                    completion_tokens: unsigned(row.completion_tokens),
                    cost_picodollars: row.cost_picodollars,
                });
            }
            day
        })
        .collect();
    (days, totals)
}

#[tonic::async_trait]
impl Billing for BillingService {
    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<UsageReport>, Status> {
        let key = self.authenticate_request(&request).await?;
        let asked = request.get_ref();
        let range = DateRange::parse(
            &asked.start_date,
            &asked.end_date,
            chrono::Utc::now().date_naive(),
        )?;
        let (start_ms, end_ms) = range.bounds_ms();
        let rows = ledger::daily_usage(&self.inner.db, &key.record.id, start_ms, end_ms).await?;
        let (daily_costs, totals) = daily_report(range, rows);
        let period = Period::current();
        let used = self.used(&key, period).await;
        let monthly_limit = key.limits.monthly_limit();
        Ok(Response::new(UsageReport {
            key_prefix: key.record.display_prefix(),
            tier: key.limits.tier().name.clone(),
            monthly_requests: used,
            monthly_limit,
            remaining: monthly_limit.saturating_sub(used),
            total_prompt_tokens: unsigned(totals.prompt_tokens),
            total_completion_tokens: unsigned(totals.completion_tokens),
            total_cached_prompt_tokens: unsigned(totals.cached_prompt_tokens),
            total_reasoning_tokens: unsigned(totals.reasoning_tokens),
            total_cost_picodollars: totals.cost_picodollars,
            rpm_limit: key.limits.rpm_limit().get(),
            period_start: period.start_rfc3339(),
            start_date: range.start.format("%Y-%m-%d").to_string(),
            end_date: range.end.format("%Y-%m-%d").to_string(),
            daily_costs,
            total_requests: unsigned(totals.requests),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<GetSubscriptionRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let key = self.authenticate_request(&request).await?;
        let account = accounts::account(&self.inner.db, &key.record.id)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(Subscription {
            key_prefix: key.record.display_prefix(),
            tier: key.limits.tier().name.clone(),
            rpm_limit: key.limits.rpm_limit().get(),
            monthly_limit: key.limits.monthly_limit(),
            expires_at: key.record.expires_at.map(|t| t.timestamp()),
            balance_picodollars: account.as_ref().and_then(|a| a.balance_picodollars),
            monthly_budget_picodollars: account.as_ref().and_then(|a| a.monthly_budget_picodollars),
            spend_month_picodollars: account
                .as_ref()
                .map_or(0, |a| a.spent_in(Period::current())),
        }))
    }
}

#[tonic::async_trait]
impl Metering for BillingService {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        let key = self.authenticate_request(&request).await?;
        Ok(Response::new(key_info(&key)))
    }

    async fn admit(&self, request: Request<AdmitRequest>) -> Result<Response<Admission>, Status> {
        let key = self.authenticate_request(&request).await?;
        let req = request.into_inner();
        let request_id = non_empty("request_id", req.request_id.clone())?;
        // Before the limits: a refused model must not use a slot of either.
        let tier = key.limits.tier();
        if !tier.allows(&req.model, &req.model_id) {
            return Err(BillingError::ModelNotAllowed {
                tier: tier.name.clone(),
                model: req.model,
            }
            .into());
        }
        // Also before the limits: an unknown model is refused without using a slot.
        let prices = self.inner.prices.prices(&req.model_id).await?;
        let period = Period::current();
        self.take_slot(&key, period).await?;
        let reserved_picodollars = if key.metered {
            match self.reserve(&key, &req, &prices, &request_id, period).await {
                Ok(amount) => amount,
                Err(err) => {
                    self.give_back_slot(&key, period).await;
                    return Err(err.into());
                }
            }
        } else {
            0
        };
        Ok(Response::new(Admission {
            key: Some(key_info(&key)),
            request_id,
            reserved_picodollars,
        }))
    }

    async fn settle(
        &self,
        request: Request<SettleRequest>,
    ) -> Result<Response<Settlement>, Status> {
        Ok(Response::new(self.settle_row(request.into_inner()).await?))
    }

    async fn invalidate_key(
        &self,
        request: Request<InvalidateKeyRequest>,
    ) -> Result<Response<InvalidateKeyResponse>, Status> {
        self.inner.keys.invalidate(&request.into_inner().key_id);
        Ok(Response::new(InvalidateKeyResponse {}))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tollgate::v1::Usage;

    use super::*;

    /// deepseek-v4-flash: 0.22 in, 0.005 cached, 0.44 out per 1M tokens.
    const FLASH: Pricing = Pricing {
        input_micros_per_mtok: 220_000,
        cached_input_micros_per_mtok: 5_000,
        output_micros_per_mtok: 440_000,
        cache_write_micros_per_mtok: 220_000,
    };

    fn settle_request() -> SettleRequest {
        SettleRequest {
            request_id: "chatcmpl-1".into(),
            key_id: "k".into(),
            usage: Some(Usage {
                prompt_tokens: 161,
                cached_prompt_tokens: 128,
                completion_tokens: 25,
                total_tokens: 186,
                ..Default::default()
            }),
            outcome: tollgate::v1::Outcome::Succeeded as i32,
            ..Default::default()
        }
    }

    #[test]
    fn settle_rows_are_priced_exactly() {
        let row = ledger_row(settle_request(), &FLASH, 0, Period::current()).unwrap();
        assert_eq!(
            row.cost_picodollars,
            33 * 220_000 + 128 * 5_000 + 25 * 440_000
        );
        let mut req = settle_request();
        req.usage = None;
        assert_eq!(
            ledger_row(req, &FLASH, 0, Period::current())
                .unwrap()
                .cost_picodollars,
            0
        );
    }

    #[test]
    fn settle_rows_are_validated() {
        let param = |req: SettleRequest| match ledger_row(req, &FLASH, 0, Period::current()) {
            Err(BillingError::InvalidArgument { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        let mut req = settle_request();
        req.request_id = " ".into();
        assert_eq!(param(req), "request_id");
        let mut req = settle_request();
        req.key_id.clear();
        assert_eq!(param(req), "key_id");
        let mut req = settle_request();
        req.outcome = 0;
        assert_eq!(param(req), "outcome");
        let mut req = settle_request();
        req.usage = Some(Usage {
            prompt_tokens: u64::MAX,
            ..Default::default()
        });
        assert_eq!(param(req), "usage.prompt_tokens");
    }
}
