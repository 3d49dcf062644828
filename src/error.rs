//! The product's error table, in one place: every failure a caller can see is one [`ErrorKind`],
//! which fixes its gRPC code, its HTTP status and its OpenAI error `type`. Services build a
//! [`tonic::Status`] with [`ApiError::into_status`]; the REST facade reads it back with
//! [`ApiError::from_status`]. The kind travels as a `google.rpc.ErrorInfo` reason so that kinds
//! sharing a gRPC code (502 and 503 are both `UNAVAILABLE`) stay distinct; the offending field
//! travels as a `google.rpc.BadRequest` violation and becomes the OpenAI error's `param`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every status Tollgate builds.
pub const ERROR_DOMAIN: &str = "tollgate";

/// Every kind of failure in the product's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    RateLimit,
    /// The key's prepaid balance or monthly budget cannot cover the request (OpenAI's 429
    /// `insufficient_quota`).
    InsufficientQuota,
    Internal,
    Upstream,
    Unavailable,
    UpstreamTimeout,
}

impl ErrorKind {
    const ALL: [ErrorKind; 10] = [
        Self::InvalidRequest,
        Self::Authentication,
        Self::Permission,
        Self::NotFound,
        Self::RateLimit,
        Self::InsufficientQuota,
        Self::Internal,
        Self::Upstream,
        Self::Unavailable,
        Self::UpstreamTimeout,
    ];

    /// The row of the table: (gRPC code, HTTP status, OpenAI error type, Anthropic error type).
    const fn row(self) -> (Code, u16, &'static str, &'static str) {
        match self {
            Self::InvalidRequest => (
                Code::InvalidArgument,
                400,
                "invalid_request_error",
                "invalid_request_error",
            ),
            Self::Authentication => (
                Code::Unauthenticated,
                401,
                "authentication_error",
                "authentication_error",
            ),
            Self::Permission => (
                Code::PermissionDenied,
                403,
                "permission_error",
                "permission_error",
            ),
            Self::NotFound => (Code::NotFound, 404, "not_found_error", "not_found_error"),
            Self::RateLimit => (
                Code::ResourceExhausted,
                429,
                "rate_limit_error",
                "rate_limit_error",
            ),
            Self::InsufficientQuota => (
                Code::ResourceExhausted,
                429,
                "insufficient_quota",
                "rate_limit_error",
            ),
            Self::Internal => (Code::Internal, 500, "internal_error", "api_error"),
            Self::Upstream => (Code::Unavailable, 502, "upstream_error", "api_error"),
            Self::Unavailable => (
                Code::Unavailable,
                503,
                "service_unavailable",
                "overloaded_error",
            ),
            Self::UpstreamTimeout => (
                Code::DeadlineExceeded,
                504,
                "upstream_timeout",
                "timeout_error",
            ),
        }
    }

    pub const fn grpc_code(self) -> Code {
        self.row().0
    }

    pub const fn http_status(self) -> u16 {
        self.row().1
    }

    /// The OpenAI error `type`; also the `ErrorInfo.reason` on the gRPC status.
    pub const fn openai_type(self) -> &'static str {
        self.row().2
    }

    /// The error `type` of Anthropic's error shape (`/v1/messages`), for the same row; the HTTP
    /// status stays the table's.
    pub const fn anthropic_type(self) -> &'static str {
        self.row().3
    }

    fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.openai_type() == reason)
    }

    /// The kind of a status that carries no Tollgate `ErrorInfo` (a transport failure, or a
    /// status from a foreign server).
    fn from_code(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                Self::InvalidRequest
            }
            Code::Unauthenticated => Self::Authentication,
            Code::PermissionDenied => Self::Permission,
            Code::NotFound => Self::NotFound,
            Code::ResourceExhausted => Self::RateLimit,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded => Self::UpstreamTimeout,
            _ => Self::Internal,
        }
    }
}

/// A failure as the caller sees it: kind, message, and optionally the offending request field
/// (`param`) and a machine-readable `code` (`rate_limit_exceeded`, `invalid_api_key`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// How long the caller should wait before retrying (an upstream's `Retry-After`): REST's
    /// `Retry-After` header, gRPC's `google.rpc.RetryInfo`.
    pub retry_after_secs: Option<u64>,
    /// The ledger id of the admitted request this error ended (`chatcmpl-...`), so a client can
    /// name it to an operator: [`REQUEST_ID_METADATA`] metadata on the status, REST's header.
    pub request_id: Option<String>,
}

/// The metadata (gRPC) and header (REST) naming a chat request's ledger id, on its answer and on
/// an error after its admission.
pub const REQUEST_ID_METADATA: &str = "x-request-id";

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_secs: None,
            request_id: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after_secs = seconds;
        self
    }

    /// A 400 about one request field, named as a JSON path (`messages[0].role`).
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message).with_param(param)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn into_status(self) -> Status {
        let mut details = ErrorDetails::new();
        let mut metadata = std::collections::HashMap::new();
        if let Some(code) = &self.code {
            metadata.insert("code".to_owned(), code.clone());
        }
        details.set_error_info(self.kind.openai_type(), ERROR_DOMAIN, metadata);
        if let Some(param) = &self.param {
            details.add_bad_request_violation(param.clone(), self.message.clone());
        }
        if let Some(seconds) = self.retry_after_secs {
            details.set_retry_info(Some(std::time::Duration::from_secs(seconds)));
        }
        let mut status = Status::with_error_details(self.kind.grpc_code(), self.message, details);
        if let Some(value) = self.request_id.and_then(|id| id.parse().ok()) {
            status.metadata_mut().insert(REQUEST_ID_METADATA, value);
        }
        status
    }

    /// Reads a status back into the table. Statuses without Tollgate details fall back to their
    /// gRPC code; their message is kept.
    pub fn from_status(status: &Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let kind = info
            .and_then(|i| (i.domain == ERROR_DOMAIN).then(|| ErrorKind::from_reason(&i.reason)))
            .flatten()
            .unwrap_or_else(|| ErrorKind::from_code(status.code()));
        let code = info.and_then(|i| i.metadata.get("code").cloned());
        let param = details
            .bad_request()
            .and_then(|b| b.field_violations.first())
            .map(|v| v.field.clone());
        let retry_after_secs = details
            .retry_info()
            .and_then(|r| r.retry_delay)
            .map(|d| d.as_secs());
        let request_id = status
            .metadata()
            .get(REQUEST_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            kind,
            message: status.message().to_owned(),
            param,
            code,
            retry_after_secs,
            request_id,
        }
    }

    /// The OpenAI error body: `{"error":{"message","type","param","code"}}`.
    pub fn to_openai_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind.openai_type(),
                "param": self.param,
                "code": self.code,
            }
        })
    }

    /// Anthropic's error body: `{"type":"error","error":{"type","message"}}`. The field, when
    /// known, is named at the start of the message, as Anthropic does (`max_tokens: ...`).
    pub fn to_anthropic_json(&self) -> serde_json::Value {
        let message = match &self.param {
            Some(param) if !self.message.starts_with(param.as_str()) => {
                format!("{param}: {}", self.message)
            }
            _ => self.message.clone(),
        };
        serde_json::json!({
            "type": "error",
            "error": {"type": self.kind.anthropic_type(), "message": message},
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.openai_type(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_a_status() {
        for kind in ErrorKind::ALL {
            let err = ApiError::new(kind, "boom")
                .with_param("messages[0].role")
                .with_code("c")
                .with_retry_after(Some(7));
            let err = ApiError {
                request_id: Some("chatcmpl-1".to_owned()),
                ..err
            };
            let back = ApiError::from_status(&err.clone().into_status());
            assert_eq!(back, err, "{kind:?}");
        }
    }

    #[test]
    fn table_matches_the_product_error_table() {
        let rows: Vec<_> = ErrorKind::ALL
            .iter()
            .map(|k| (k.grpc_code(), k.http_status(), k.openai_type()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (Code::InvalidArgument, 400, "invalid_request_error"),
                (Code::Unauthenticated, 401, "authentication_error"),
                (Code::PermissionDenied, 403, "permission_error"),
                (Code::NotFound, 404, "not_found_error"),
                (Code::ResourceExhausted, 429, "rate_limit_error"),
                (Code::ResourceExhausted, 429, "insufficient_quota"),
                (Code::Internal, 500, "internal_error"),
                (Code::Unavailable, 502, "upstream_error"),
                (Code::Unavailable, 503, "service_unavailable"),
                (Code::DeadlineExceeded, 504, "upstream_timeout"),
            ]
        );
    }

    #[test]
    fn a_status_carries_the_kind_as_error_info_and_the_field_as_a_bad_request() {
        let status = ApiError::invalid_param("messages[0].role", "bad role")
            .with_code("invalid_value")
            .into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("invalid_request_error", ERROR_DOMAIN)
        );
        assert_eq!(
            info.metadata.get("code").map(String::as_str),
            Some("invalid_value")
        );
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(
            (
                violations[0].field.as_str(),
                violations[0].description.as_str()
            ),
            ("messages[0].role", "bad role")
        );
        let plain = ApiError::new(ErrorKind::Internal, "boom").into_status();
        assert!(plain.get_error_details().bad_request().is_none());
    }

    #[test]
    fn every_kind_has_an_anthropic_type() {
        let types: Vec<_> = ErrorKind::ALL.iter().map(|k| k.anthropic_type()).collect();
        assert_eq!(
            types,
            vec![
                "invalid_request_error",
                "authentication_error",
                "permission_error",
                "not_found_error",
                "rate_limit_error",
                "rate_limit_error",
                "api_error",
                "api_error",
                "overloaded_error",
                "timeout_error",
            ]
        );
        let body = ApiError::invalid_param("max_tokens", "Field required").to_anthropic_json();
        assert_eq!(
            body,
            serde_json::json!({"type": "error", "error": {
                "type": "invalid_request_error", "message": "max_tokens: Field required"}})
        );
    }

    #[test]
    fn foreign_statuses_fall_back_to_their_code() {
        let e = ApiError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.message, "connection refused");
        let e = ApiError::from_status(&Status::unknown("?"));
        assert_eq!(e.kind, ErrorKind::Internal);
    }
}
