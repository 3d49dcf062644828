//! The error bodies the mock answers with, shaped like OpenAI's and DeepSeek's
//! (`{"error":{"message","type","param","code"}}`, all four keys always present), or like
//! MiniMax's (HTTP 200 with a non-zero `base_resp.status_code`).

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// One error answer: an HTTP status and the OpenAI error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    /// MiniMax's `base_resp.status_code`: the error is then an HTTP 200 body.
    pub base_resp: Option<u64>,
}

impl MockError {
    /// A 400 `invalid_request_error`, the answer to every malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            base_resp: None,
        }
    }

    /// MiniMax's way to fail: HTTP 200, `choices: null` and a `base_resp` with a non-zero code.
    pub fn minimax(status_code: u64, status_msg: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            message: status_msg.into(),
            kind: "",
            param: None,
            code: None,
            base_resp: Some(status_code),
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// OpenAI's answer to a wrong or missing key. Like the real API it quotes the key it was
    /// given, which is exactly what a gateway must never pass on to its own callers.
    pub fn incorrect_api_key(given: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: format!("Incorrect API key provided: {given}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key".to_owned()),
            base_resp: None,
        }
    }

    /// The answer to a `[status=CODE]` directive. A 401 also quotes the key the caller sent, as
    /// the real API does, so tests can check the gateway does not leak it.
    pub fn directed(status: StatusCode, given_key: &str) -> Self {
        let code = status.as_u16();
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let (message, err_code) = if status == StatusCode::UNAUTHORIZED {
            (
                format!("mock upstream error {code}: Incorrect API key provided: {given_key}"),
                Some("invalid_api_key".to_owned()),
            )
        } else {
            (format!("mock upstream error {code}"), None)
        };
        Self {
            status,
            message,
            kind,
            param: None,
            code: err_code,
            base_resp: None,
        }
    }

    /// The JSON body, also used in-band in a stream.
    pub fn body(&self) -> serde_json::Value {
        if let Some(code) = self.base_resp {
            return json!({
                "id": "",
                "choices": null,
                "created": 0,
                "model": "",
                "object": "chat.completion",
                "usage": null,
                "input_sensitive": false,
                "output_sensitive": false,
                "base_resp": {"status_code": code, "status_msg": self.message},
            });
        }
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// What the mock's 429 and 503 answers say in `Retry-After`, as the real APIs do.
pub const RETRY_AFTER_SECS: u64 = 7;

impl IntoResponse for MockError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if matches!(self.status.as_u16(), 429 | 503) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
