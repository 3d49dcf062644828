//! `GET /v1/dashboard/requests` and `POST /v1/dashboard/key/rotate`: a key holder's own recent
//! requests (`Billing.ListRequests`, newest first, paged by an opaque cursor) and the
//! regeneration of their own key (`Billing.RotateOwnKey`: the new secret is in this answer and
//! nowhere else). Money is an exact USD decimal string, as everywhere in the facade.

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::{
    error::ApiError,
    money::format_picodollars,
    v1::{ListRequestsRequest, RequestRecord, RotateOwnKeyRequest},
};

use crate::{app::AppState, error::RestError, extract::ApiKey};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestsQuery {
    /// Rows per page, 1 to 100 (Billing's default when absent).
    #[serde(default)]
    limit: u32,
    /// The previous page's `next_cursor`.
    #[serde(default)]
    cursor: String,
}

fn request_json(r: &RequestRecord) -> Value {
    json!({
        "id": r.request_id,
        "created": r.created_at_ms.div_euclid(1000),
        "created_at_ms": r.created_at_ms,
        "model": r.model,
        "requested_model": r.requested_model,
        "prompt_tokens": r.prompt_tokens,
        "cached_prompt_tokens": r.cached_prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "cost_usd": format_picodollars(r.cost_picodollars),
        "estimated": r.estimated,
        "status": r.status,
        "streamed": r.streamed,
    })
}

pub(crate) async fn requests(
    State(state): State<AppState>,
    key: ApiKey,
    query: Result<Query<RequestsQuery>, QueryRejection>,
) -> Result<Json<Value>, RestError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid_param("query", format!("Invalid query: {e}")))?;
    let page = state
        .billing
        .clone()
        .list_requests(key.request(ListRequestsRequest {
            page_size: query.limit,
            cursor: query.cursor,
        }))
        .await?
        .into_inner();
    let has_more = !page.next_cursor.is_empty();
    Ok(Json(json!({
        "object": "list",
        "data": page.requests.iter().map(request_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_cursor": has_more.then_some(page.next_cursor),
    })))
}

pub(crate) async fn rotate(
    State(state): State<AppState>,
    key: ApiKey,
) -> Result<Json<Value>, RestError> {
    let rotated = state
        .billing
        .clone()
        .rotate_own_key(key.request(RotateOwnKeyRequest {}))
        .await?
        .into_inner();
    Ok(Json(json!({
        "object": "api_key",
        "key_prefix": rotated.key_prefix,
        "tier": rotated.tier,
        "secret": rotated.secret,
    })))
}
