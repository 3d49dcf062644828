//! The public `tollgate.v1.Billing` API: what a key holder may ask about their own key, its usage
//! report (a daily per-model breakdown over a date range, the quota counters of the month), its
//! subscription view, its own requests (ledger rows, paged), and rotating its own secret.

use tollgate::v1::billing_server::Billing;
use tollgate::v1::{
    CheckKeyRequest, GetSubscriptionRequest, GetUsageRequest, KeyInfo, ListRequestsRequest,
    RequestPage, RequestRecord, RotateOwnKeyRequest, RotatedKey, Subscription, UsageReport,
};
use tonic::{Request, Response, Status};

use crate::accounts;
use crate::clock::{DateRange, Period};
use crate::entity::usage_ledger;
use crate::error::BillingError;
use crate::keys::{self, ActiveKey};
use crate::ledger::{self, RowPosition};
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

/// Rows on a page of `ListRequests` when the caller does not say, and the most it may ask for.
const DEFAULT_PAGE_SIZE: u32 = 20;
const MAX_PAGE_SIZE: u32 = 100;

/// The cursor after `row`: `<created_at>.<id>`, opaque to callers.
fn cursor_after(row: &usage_ledger::Model) -> String {
    format!("{}.{}", row.created_at, row.id)
}

/// A cursor [`cursor_after`] made, or a 400 naming `cursor`.
fn parse_cursor(cursor: &str) -> Result<Option<RowPosition>, BillingError> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let invalid = || BillingError::invalid("cursor", "cursor is not one this API returned");
    let (created_at, id) = cursor.split_once('.').ok_or_else(invalid)?;
    Ok(Some(RowPosition {
        created_at: created_at.parse().map_err(|_| invalid())?,
        id: id.parse().map_err(|_| invalid())?,
    }))
}

fn request_record(row: usage_ledger::Model) -> RequestRecord {
    RequestRecord {
        request_id: row.request_id,
        created_at_ms: row.created_at,
        requested_model: row.requested_model,
        model: row.model_id,
        prompt_tokens: unsigned(row.prompt_tokens),
        cached_prompt_tokens: unsigned(row.cached_prompt_tokens),
        completion_tokens: unsigned(row.completion_tokens),
        reasoning_tokens: unsigned(row.reasoning_tokens),
        cost_picodollars: row.cost_picodollars,
        estimated: row.estimated,
        status: row.outcome,
        streamed: row.streamed,
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
        let rows =
            ledger::daily_usage(&self.inner.db, Some(&key.record.id), start_ms, end_ms).await?;
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
        let (key, proof) = self
            .authenticate_request_once(&request)
            .await
            .inspect_err(crate::telemetry::admission_failed)?;
        // Carried by the caller to the request's Admit in this process: one lookup a request.
        let mut response = Response::new(key_info(&key));
        response.extensions_mut().insert(proof);
        Ok(response)
    }

    async fn list_requests(
        &self,
        request: Request<ListRequestsRequest>,
    ) -> Result<Response<RequestPage>, Status> {
        let key = self.authenticate_request(&request).await?;
        let asked = request.into_inner();
        let page_size = match asked.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            _ => {
                return Err(BillingError::invalid(
                    "page_size",
                    format!("page_size must be between 1 and {MAX_PAGE_SIZE}"),
                )
                .into());
            }
        };
        let after = parse_cursor(asked.cursor.trim())?;
        // One row more than the page says whether another page follows.
        let mut rows = ledger::key_requests(
            &self.inner.db,
            &key.record.id,
            after,
            u64::from(page_size) + 1,
        )
        .await?;
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => cursor_after(last),
            _ => String::new(),
        };
        Ok(Response::new(RequestPage {
            requests: rows.into_iter().map(request_record).collect(),
            next_cursor,
        }))
    }

    async fn rotate_own_key(
        &self,
        request: Request<RotateOwnKeyRequest>,
    ) -> Result<Response<RotatedKey>, Status> {
        let key = self.authenticate_request(&request).await?;
        let id = key.record.id.as_str();
        let rotations = &self.inner.self_rotations;
        rotations.take(id, std::time::Instant::now())?;
        // The Admin rotation's path: a new secret in the same row, the change sequence raised
        // (other processes evict the key within their refresh poll), then this process's cache.
        let (rotated, secret) = match keys::rotate_key(&self.inner.db, id).await {
            Ok(rotated) => rotated,
            Err(err) => {
                rotations.release(id);
                return Err(err.into());
            }
        };
        self.inner.keys.invalidate(id);
        tracing::info!(key_id = %id, prefix = %rotated.prefix, "API key rotated by its holder");
        Ok(Response::new(RotatedKey {
            key_prefix: rotated.display_prefix(),
            secret: secret.expose_secret().to_owned(),
            tier: rotated.tier,
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let row = usage_ledger::Model {
            id: 42,
            request_id: "r".into(),
            key_id: "k".into(),
            requested_model: "m".into(),
            model_id: "m".into(),
            provider: "p".into(),
            upstream_model: "m".into(),
            prompt_tokens: 0,
            cached_prompt_tokens: 0,
            completion_tokens: 0,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
            cost_picodollars: 0,
            outcome: "succeeded".into(),
            streamed: false,
            estimated: false,
            created_at: 1_700_000_000_123,
            period: "2023-11".into(),
            deployment: None,
            attempts: None,
        };
        assert_eq!(
            parse_cursor(&cursor_after(&row)).unwrap(),
            Some(RowPosition {
                created_at: 1_700_000_000_123,
                id: 42
            })
        );
        assert_eq!(parse_cursor("").unwrap(), None);
        for bad in ["x", "1.", ".2", "1.2.3", "a.b"] {
            assert!(matches!(
                parse_cursor(bad),
                Err(BillingError::InvalidArgument {
                    param: "cursor",
                    ..
                })
            ));
        }
    }
}
