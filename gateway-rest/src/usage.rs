//! `GET /v1/dashboard/billing/usage` and `GET /v1/dashboard/billing/subscription`: the calling
//! key's usage and plan, translated from `Billing.GetUsage` and `Billing.GetSubscription`.
//!
//! The usage report keeps the seed's shape (`billing.usage`: this month's request counters and
//! the token totals) and adds OpenAI's legacy `daily_costs` and `total_usage`. `start_date` and
//! `end_date` (`YYYY-MM-DD`, end exclusive, at most 100 days) choose the days reported; without
//! them the report covers the current UTC month up to today. The monthly counters always cover
//! the current month; every total covers the range. As in OpenAI's legacy endpoint, `cost` and
//! `total_usage` are in US cents (JSON numbers, for display); the exact amounts travel beside
//! them as USD decimal strings (`cost_usd`, `total_usage_usd`, `total_cost_usd_exact`).

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::{
    error::ApiError,
    money::{format_picodollars, format_picodollars_as_cents, json_number},
    v1::{DailyUsage, GetSubscriptionRequest, GetUsageRequest},
};

use crate::{app::AppState, error::RestError, extract::ApiKey};

/// What `hard_limit_usd` says for a key without a spending limit. OpenAI's format has no "none";
/// OpenAI-compatible gateways and the dashboards built on them read this value as "unlimited".
const UNLIMITED_USD: u64 = 100_000_000;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsageQuery {
    #[serde(default)]
    start_date: String,
    #[serde(default)]
    end_date: String,
}

/// One day of a usage report (`daily_costs[]`): also the shape of `GET /admin/usage`'s days.
pub(crate) fn day_json(day: &DailyUsage) -> Value {
    let line_items: Vec<Value> = day
        .line_items
        .iter()
        .map(|item| {
            json!({
                "name": item.model,
                "cost": json_number(&format_picodollars_as_cents(item.cost_picodollars)),
                "cost_usd": format_picodollars(item.cost_picodollars),
                "requests": item.requests,
                "prompt_tokens": item.prompt_tokens,
                "completion_tokens": item.completion_tokens,
            })
        })
        .collect();
    json!({
        "timestamp": day.timestamp,
        "date": day.date,
        "line_items": line_items,
        "cost_usd": format_picodollars(day.cost_picodollars),
    })
}

pub(crate) async fn report(
    State(state): State<AppState>,
    key: ApiKey,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Value>, RestError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid_param("query", format!("Invalid query: {e}")))?;
    let u = state
        .billing
        .clone()
        .get_usage(key.request(GetUsageRequest {
            start_date: query.start_date,
            end_date: query.end_date,
        }))
        .await?
        .into_inner();
    // A percentage with one decimal, computed in integers (142 of 3000 -> 4.7).
    let permille = (u.monthly_requests * 1000 + u.monthly_limit / 2)
        .checked_div(u.monthly_limit)
        .unwrap_or(0);
    let usage_percent = json_number(&format!("{}.{}", permille / 10, permille % 10));
    let cost = format_picodollars(u.total_cost_picodollars);
    Ok(Json(json!({
        "object": "billing.usage",
        "key_prefix": u.key_prefix,
        "tier": u.tier,
        "monthly_requests": u.monthly_requests,
        "monthly_limit": u.monthly_limit,
        "remaining": u.remaining,
        "usage_percent": usage_percent,
        "total_prompt_tokens": u.total_prompt_tokens,
        "total_completion_tokens": u.total_completion_tokens,
        "total_cached_prompt_tokens": u.total_cached_prompt_tokens,
        "total_reasoning_tokens": u.total_reasoning_tokens,
        "total_cost_usd": json_number(&cost),
        "total_cost_usd_exact": cost,
        "rpm_limit": u.rpm_limit,
        "period_start": u.period_start,
        "start_date": u.start_date,
        "end_date": u.end_date,
        "total_requests": u.total_requests,
        "daily_costs": u.daily_costs.iter().map(day_json).collect::<Vec<_>>(),
        "total_usage": json_number(&format_picodollars_as_cents(u.total_cost_picodollars)),
        "total_usage_usd": cost,
    })))
}

/// OpenAI's legacy `billing_subscription` for the calling key: the tier is the plan, the key's
/// expiry is `access_until` (0 when it never expires).
pub(crate) async fn subscription(
    State(state): State<AppState>,
    key: ApiKey,
) -> Result<Json<Value>, RestError> {
    let s = state
        .billing
        .clone()
        .get_subscription(key.request(GetSubscriptionRequest {}))
        .await?
        .into_inner();
    let limit = match monthly_hard_limit(&s) {
        Some(pico) => json_number(&format_picodollars(pico)),
        None => json!(UNLIMITED_USD),
    };
    let usd = |pico: Option<i64>| pico.map(format_picodollars);
    Ok(Json(json!({
        "object": "billing_subscription",
        "has_payment_method": false,
        "hard_limit_usd": limit,
        "soft_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "access_until": s.expires_at.unwrap_or(0),
        "plan": {"title": s.tier, "id": s.tier},
        "key_prefix": s.key_prefix,
        "rpm_limit": s.rpm_limit,
        "monthly_limit": s.monthly_limit,
        "balance_usd": usd(s.balance_picodollars),
        "monthly_budget_usd": usd(s.monthly_budget_picodollars),
        "spend_month_usd": format_picodollars(s.spend_month_picodollars),
    })))
}

/// What the key may spend this month in all, as OpenAI's `hard_limit_usd` means it: dashboards
/// show `hard_limit_usd - total_usage` of the month as what is left. A prepaid balance allows
/// this month's spend plus what is left of it; a monthly budget caps it; with both the smaller
/// wins; with neither there is no limit (`None`). Exact integers, picodollars.
fn monthly_hard_limit(s: &tollgate::v1::Subscription) -> Option<i64> {
    let from_balance = s
        .balance_picodollars
        .map(|balance| balance.saturating_add(s.spend_month_picodollars));
    match (from_balance, s.monthly_budget_picodollars) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
