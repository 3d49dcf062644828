//! What handlers take from a request, each refusal already in the product's error format: the
//! JSON body parsed into its type ([`JsonBody`]), the caller's API key ([`ApiKey`]) and the
//! admin token ([`AdminToken`]), the last two forwarded to the services as gRPC metadata.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, request::Parts},
};
use serde::de::DeserializeOwned;
use tollgate::{
    auth::{AUTHORIZATION, AuthenticatedKey, bearer_token, missing_api_key_http},
    error::ApiError,
    v1::CheckKeyRequest,
};
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
};

use crate::{app::AppState, error::RestError};

/// Anthropic's API-key header.
const X_API_KEY: &str = "x-api-key";

/// A JSON object body parsed straight into `T` (`tollgate::openai::body`): a body over
/// `server.max_body_bytes`, one not whole within `server.body_read_timeout_secs`, one that is not
/// JSON or one that does not fit `T` is a 400 whose `param` names the field at fault, or `body`.
/// The content type is not checked: clients that send JSON as `text/plain` or without a type
/// are served.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = RestError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.limits.max_body_bytes;
        let timeout = state.limits.body_read_timeout;
        let read = axum::body::to_bytes(request.into_body(), limit);
        let bytes = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| {
                ApiError::invalid_param(
                    "body",
                    format!(
                        "The request body did not arrive within {} seconds",
                        timeout.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                let message = if too_large {
                    format!("The request body is larger than the limit of {limit} bytes")
                } else {
                    format!("The request body could not be read: {e}")
                };
                ApiError::invalid_param("body", message)
            })?;
        Ok(Self(tollgate::openai::body::from_slice(&bytes)?))
    }
}

/// The caller's API key, for routes that act for a key: `authorization: Bearer <key>`, else
/// `x-api-key: <key>` (Anthropic's header, as its SDKs and Claude Code send it), forwarded to
/// the services as `authorization: Bearer <key>`. Missing, not `Bearer`, or not sendable as
/// metadata: 401 `missing_api_key`; unknown, revoked or expired: Billing's 401
/// (`Billing.CheckKey`, a cache lookup). Both before the body is read, so a caller without a
/// valid key costs no parse. When billing cannot be reached the check is skipped: admission
/// still checks the key. In the monolith the check's proof ([`AuthenticatedKey`]) rides along
/// with the key, so admission does not look it up again.
pub(crate) struct ApiKey {
    key: MetadataValue<Ascii>,
    checked: Option<AuthenticatedKey>,
}

impl ApiKey {
    /// `message` as a gRPC request carrying the key (and the proof of its check, in-process).
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = with_authorization(Some(&self.key), message);
        if let Some(checked) = &self.checked {
            request.extensions_mut().insert(checked.clone());
        }
        request
    }
}

// The key is a secret: never in logs.
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = RestError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut key = authorization(&parts.headers)
            .filter(|value| value.to_str().ok().and_then(bearer_token).is_some())
            .or_else(|| x_api_key(&parts.headers))
            .map(|key| Self { key, checked: None })
            .ok_or_else(|| RestError(missing_api_key_http()))?;
        match state
            .keys
            .clone()
            .check_key(key.request(CheckKeyRequest {}))
            .await
        {
            Ok(checked) => {
                key.checked = checked.extensions().get::<AuthenticatedKey>().cloned();
                Ok(key)
            }
            // Billing unreachable (a split deployment's billing restarting): this check only
            // spares the parse of a keyless body, so the request goes on, and admission, which
            // retries within its deadline, decides about the key.
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::DeadlineExceeded
                ) =>
            {
                tracing::debug!(error = %status.message(), "key pre-check skipped: billing unreachable");
                Ok(key)
            }
            Err(status) => Err(status.into()),
        }
    }
}

/// Whatever `authorization` the caller sent to an `/admin` route, forwarded as is: only the
/// Admin service knows whether a token is configured (`admin_disabled`) and compares it (in
/// constant time), so nothing is refused here.
pub(crate) struct AdminToken(Option<MetadataValue<Ascii>>);

impl AdminToken {
    /// `message` as a gRPC request carrying the token.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        with_authorization(self.0.as_ref(), message)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AdminToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(authorization(&parts.headers)))
    }
}

/// The `authorization` header as metadata, if it can travel as metadata.
fn authorization(headers: &HeaderMap) -> Option<MetadataValue<Ascii>> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// An `x-api-key` header as the `authorization: Bearer` metadata that carries keys.
fn x_api_key(headers: &HeaderMap) -> Option<MetadataValue<Ascii>> {
    let key = headers.get(X_API_KEY)?.to_str().ok()?.trim();
    if key.is_empty() {
        return None;
    }
    format!("Bearer {key}").parse().ok()
}

fn with_authorization<T>(value: Option<&MetadataValue<Ascii>>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = value {
        request.metadata_mut().insert(AUTHORIZATION, value.clone());
    }
    request
}
