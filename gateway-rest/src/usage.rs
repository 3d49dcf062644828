//! `GET /v1/dashboard/billing/usage`: the calling key's usage this month, in the seed's shape
//! (`billing.usage`), plus tokens by kind and the exact cost.

use axum::{Json, extract::State, http::HeaderMap};
use serde_json::{Value, json};
use tollgate::{
    money::{format_picodollars, json_number},
    v1::GetUsageRequest,
};

use crate::{
    app::{AppState, with_key},
    error::RestError,
};

pub(crate) async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, RestError> {
    let u = state
        .billing
        .clone()
        .get_usage(with_key(&headers, GetUsageRequest {}))
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
    })))
}
