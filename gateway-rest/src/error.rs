//! Errors as HTTP responses: the status and OpenAI `type` come from the one table in
//! `tollgate::error`; the body is OpenAI's `{"error":{"message","type","param","code"}}`. An
//! error that ended an admitted request carries its `x-request-id`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use tollgate::error::{ApiError, ErrorKind};

/// An error on its way to a REST client.
#[derive(Debug)]
pub struct RestError(pub ApiError);

impl From<ApiError> for RestError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<tonic::Status> for RestError {
    fn from(status: tonic::Status) -> Self {
        Self(ApiError::from_status(&status))
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The OpenAI SDKs retry 429 and 5xx; a spent monthly quota or an empty balance will not
        // come back by retrying.
        let retry = !matches!(
            self.0.code.as_deref(),
            Some("monthly_quota_exceeded" | "insufficient_quota")
        );
        let mut response = (status, Json(self.0.to_openai_json())).into_response();
        if let Some(id) = self
            .0
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            response
                .headers_mut()
                .insert(tollgate::error::REQUEST_ID_METADATA, id);
        }
        if let Some(seconds) = self.0.retry_after_secs {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(
            self.0.kind,
            ErrorKind::RateLimit | ErrorKind::InsufficientQuota
        ) || status.is_server_error()
        {
            response.headers_mut().insert(
                "x-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        response
    }
}
