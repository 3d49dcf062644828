//! `/admin/keys...`: key administration over REST for tools that cannot speak gRPC. Each route
//! translates to one `tollgate.v1.Admin` call (deployment health: the Inference service's, where
//! routing keeps it); the admin token travels in `Authorization:
//! Bearer <token>` exactly as in gRPC metadata, and the Admin service checks it.
//!
//! | route                          | Admin RPC  |
//! |--------------------------------|------------|
//! | `POST /admin/keys`             | CreateKey  |
//! | `GET /admin/keys`              | ListKeys   |
//! | `PATCH /admin/keys/{key}`      | UpdateKey  |
//! | `POST /admin/keys/{key}/rotate`| RotateKey  |
//! | `POST /admin/keys/{key}/revoke`| RevokeKey  |
//! | `POST /admin/keys/{key}/topup` | TopUp      |
//! | `GET /admin/usage`             | GetUsageReport |
//! | `GET /admin/deployments`       | Inference.ListDeploymentHealth |
//!
//! `{key}` is a key id or a shown prefix, never a secret: a URL path reaches access logs, so a
//! secret (or more of one than its prefix) there is refused with 400 ([`KeyPath`]); the CLI and
//! gRPC still take secrets. Answers show times as Unix seconds;
//! `expires_at` is taken in every format [`crate::expiry`] accepts. In a `PATCH`, `null` clears
//! a field (`"expires_at": null`: never expires; `"rpm": null`: back to the tier's) and an absent
//! field is left as it is; both become the Admin request's `clear_*` flags. Money is always a USD
//! decimal string (`"balance_usd": "5"`, `"amount_usd": "0.25"`), never a JSON number, so no
//! amount ever passes through a float. Keys are shown as [`crate::key_view`] renders them.

use axum::{
    Json,
    extract::{FromRequestParts, Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, request::Parts},
};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use tollgate::error::ApiError;
use tollgate::money::format_picodollars;
use tollgate::v1::{
    CreateKeyRequest, DeploymentState, IssuedKey, ListDeploymentHealthRequest, ListKeysRequest,
    ManagedKey, RevokeKeyRequest, RotateKeyRequest, TopUpRequest, UpdateKeyRequest,
    UsageReportRequest,
};

use tollgate_billing::keys::secret::{PREFIX_LEN, SECRET_SCHEME};

use crate::{
    app::AppState,
    error::RestError,
    expiry::Expiry,
    extract::{AdminToken, JsonBody},
    key_view::{self, Times},
    usage::day_json,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    tier: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_at: Option<Expiry>,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    monthly_requests: Option<u64>,
    #[serde(default)]
    balance_usd: Option<String>,
    #[serde(default)]
    monthly_budget_usd: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopUpBody {
    amount_usd: String,
}

/// Present and `null` (clear) is `Some(None)`; absent (leave) is `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<Expiry>>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    monthly_requests: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    monthly_budget_usd: Option<Option<String>>,
}

/// A key as REST answers show it.
fn key_json(key: &ManagedKey) -> Value {
    key_view::key_json(key, Times::UnixSeconds)
}

fn issued_json(issued: IssuedKey) -> Value {
    let mut value = issued
        .key
        .as_ref()
        .map(key_json)
        .unwrap_or_else(|| json!({}));
    value["secret"] = Value::String(issued.secret);
    value
}

pub(crate) async fn create(
    State(state): State<AppState>,
    token: AdminToken,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Value>), RestError> {
    let request = CreateKeyRequest {
        tier: body.tier,
        name: body.name,
        expires_at: body.expires_at.map(|t| t.unix_secs()).transpose()?,
        rpm: body.rpm,
        monthly_requests: body.monthly_requests,
        balance_usd: body.balance_usd,
        monthly_budget_usd: body.monthly_budget_usd,
    };
    let issued = state
        .admin
        .clone()
        .create_key(token.request(request))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(issued_json(issued))))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    token: AdminToken,
) -> Result<Json<Value>, RestError> {
    let keys = state
        .admin
        .clone()
        .list_keys(token.request(ListKeysRequest {}))
        .await?
        .into_inner()
        .keys;
    Ok(Json(json!({
        "object": "list",
        "data": keys.iter().map(key_json).collect::<Vec<_>>(),
    })))
}

/// The `{key}` of an `/admin/keys/{key}` route: a key id or a shown prefix (`sk-AbCd1234E`,
/// with or without `...`). Anything that starts like a secret and is longer than a prefix is a
/// 400 naming `key`, so no secret is put in a URL path (and in access logs) by habit.
pub(crate) struct KeyPath(String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid_param("key", e.body_text()))?;
        let shown = key.trim().trim_end_matches("...");
        if shown.starts_with(SECRET_SCHEME) && shown.len() > PREFIX_LEN {
            return Err(ApiError::invalid_param(
                "key",
                "Name the key by its id or its shown prefix: a secret in a URL ends up in access logs",
            )
            .into());
        }
        Ok(Self(key))
    }
}

pub(crate) async fn rotate(
    State(state): State<AppState>,
    token: AdminToken,
    KeyPath(key): KeyPath,
) -> Result<Json<Value>, RestError> {
    let issued = state
        .admin
        .clone()
        .rotate_key(token.request(RotateKeyRequest { key }))
        .await?
        .into_inner();
    Ok(Json(issued_json(issued)))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    token: AdminToken,
    KeyPath(key): KeyPath,
) -> Result<Json<Value>, RestError> {
    let key = state
        .admin
        .clone()
        .revoke_key(token.request(RevokeKeyRequest { key }))
        .await?
        .into_inner();
    Ok(Json(key_json(&key)))
}

pub(crate) async fn update(
    State(state): State<AppState>,
    token: AdminToken,
    KeyPath(key): KeyPath,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<Value>, RestError> {
    let expires_at = match body.expires_at {
        Some(Some(t)) => Some(Some(t.unix_secs()?)),
        Some(None) => Some(None),
        None => None,
    };
    let request = UpdateKeyRequest {
        key,
        name: body.name,
        tier: body.tier,
        expires_at: expires_at.flatten(),
        clear_expires_at: matches!(expires_at, Some(None)),
        rpm: body.rpm.flatten(),
        clear_rpm: matches!(body.rpm, Some(None)),
        monthly_requests: body.monthly_requests.flatten(),
        clear_monthly_requests: matches!(body.monthly_requests, Some(None)),
        clear_monthly_budget: matches!(body.monthly_budget_usd, Some(None)),
        monthly_budget_usd: body.monthly_budget_usd.flatten(),
    };
    let key = state
        .admin
        .clone()
        .update_key(token.request(request))
        .await?
        .into_inner();
    Ok(Json(key_json(&key)))
}

pub(crate) async fn top_up(
    State(state): State<AppState>,
    token: AdminToken,
    KeyPath(key): KeyPath,
    JsonBody(body): JsonBody<TopUpBody>,
) -> Result<Json<Value>, RestError> {
    let request = TopUpRequest {
        key,
        amount_usd: body.amount_usd,
    };
    let key = state
        .admin
        .clone()
        .top_up(token.request(request))
        .await?
        .into_inner();
    Ok(Json(key_json(&key)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    #[serde(default)]
    start_date: String,
    #[serde(default)]
    end_date: String,
    #[serde(default)]
    top_keys: u32,
}

/// Usage across all keys: `daily_costs` as in `/v1/dashboard/billing/usage`, the totals, and the
/// keys that spent the most over the range (`top_keys`, 10 by default).
pub(crate) async fn usage(
    State(state): State<AppState>,
    token: AdminToken,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Value>, RestError> {
    let Query(query) =
        query.map_err(|e| ApiError::invalid_param("query", format!("Invalid query: {e}")))?;
    let u = state
        .admin
        .clone()
        .get_usage_report(token.request(UsageReportRequest {
            start_date: query.start_date,
            end_date: query.end_date,
            top_keys: query.top_keys,
        }))
        .await?
        .into_inner();
    let top_keys: Vec<Value> = u
        .top_keys
        .iter()
        .map(|k| {
            json!({
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "tier": k.tier,
                "requests": k.requests,
                "cost_usd": format_picodollars(k.cost_picodollars),
            })
        })
        .collect();
    Ok(Json(json!({
        "object": "admin.usage",
        "start_date": u.start_date,
        "end_date": u.end_date,
        "total_requests": u.total_requests,
        "total_prompt_tokens": u.total_prompt_tokens,
        "total_cached_prompt_tokens": u.total_cached_prompt_tokens,
        "total_completion_tokens": u.total_completion_tokens,
        "total_reasoning_tokens": u.total_reasoning_tokens,
        "total_cost_usd": format_picodollars(u.total_cost_picodollars),
        "daily_costs": u.daily_costs.iter().map(day_json).collect::<Vec<_>>(),
        "top_keys": top_keys,
    })))
}

/// Every deployment of every model as the serving replica routes: provider, upstream model,
/// `state` (`healthy`, `cooling_down`, `probing`), requests in flight, recent failures and the
/// cooldown's seconds left.
pub(crate) async fn deployments(
    State(state): State<AppState>,
    token: AdminToken,
) -> Result<Json<Value>, RestError> {
    let listing = state
        .inference
        .clone()
        .list_deployment_health(token.request(ListDeploymentHealthRequest {}))
        .await?
        .into_inner();
    let data: Vec<Value> = listing
        .deployments
        .iter()
        .map(|d| {
            let state = match d.state() {
                DeploymentState::CoolingDown => "cooling_down",
                DeploymentState::Probing => "probing",
                DeploymentState::Healthy | DeploymentState::Unspecified => "healthy",
            };
            json!({
                "model": d.model_id,
                "deployment": d.deployment,
                "provider": d.provider,
                "upstream_model": d.upstream_model,
                "state": state,
                "in_flight": d.in_flight,
                "recent_failures": d.recent_failures,
                "cooldown_left_secs": d.cooldown_left_secs,
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tollgate::openai::body::from_slice;

    use super::*;

    #[test]
    fn patch_bodies_tell_null_from_absent() {
        let body: UpdateBody = from_slice(
            br#"{"rpm": null, "monthly_requests": 7, "expires_at": "2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(body.rpm, Some(None));
        assert_eq!(body.monthly_requests, Some(Some(7)));
        assert_eq!(
            body.expires_at.flatten().unwrap().unix_secs().unwrap(),
            1_893_456_000
        );
        let body: UpdateBody = from_slice(b"{}").unwrap();
        assert_eq!((body.rpm, body.monthly_requests), (None, None));
        assert!(body.expires_at.is_none());
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let err = from_slice::<CreateBody>(br#"{"tier": "pro", "rpm": "two"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("rpm"));
        let err = from_slice::<CreateBody>(br#"{"tier": "pro", "burst": 1}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("burst"));
        let err = from_slice::<CreateBody>(br#"{"name": "x"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tier"));
    }
}
