//! The public `tollgate.v1.Billing` API: what a key holder may ask about their own key, its usage
//! report (a daily per-model breakdown over a date range, the quota counters of the month) and
//! its subscription view.

use tollgate::v1::billing_server::Billing;
use tollgate::v1::{
    CheckKeyRequest, GetSubscriptionRequest, GetUsageRequest, KeyInfo, Subscription, UsageReport,
};
use tonic::{Request, Response, Status};

use crate::accounts;
use crate::clock::{DateRange, Period};
use crate::keys::ActiveKey;
use crate::ledger;
use crate::metering::key_info;
use crate::reports::{daily_report, unsigned};
use crate::service::BillingService;

impl BillingService {
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

    async fn check_key(
        &self,
        request: Request<CheckKeyRequest>,
    ) -> Result<Response<KeyInfo>, Status> {
        // The REST facade's key check before it reads a body: a key refused here is a refused
        // admission (the request never reaches Admit).
        let key = self
            .authenticate_request(&request)
            .await
            .inspect_err(crate::telemetry::admission_failed)?;
        Ok(Response::new(key_info(&key)))
    }
}
