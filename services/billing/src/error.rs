//! The billing crate's one error type, and the table that maps each failure onto the product's
//! error table ([`ApiError`]). Database detail is logged here and never sent to callers.

use std::sync::Arc;

use sea_orm::DbErr;
use tollgate::error::{ApiError, ErrorKind};
use tollgate::money::format_picodollars;

/// Every way a billing operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("database connection error: {0}")]
    Connect(#[from] sqlx::Error),
    #[error("cannot prepare the database file: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "unsupported database url {0:?}: expected sqlite://PATH, sqlite::memory: or postgres://..."
    )]
    UnsupportedDatabaseUrl(String),
    /// The batch holding this row failed to commit; every row of it gets this error.
    #[error("ledger write failed: {0}")]
    LedgerWrite(Arc<DbErr>),
    #[error("the ledger writer has stopped")]
    LedgerClosed,
    #[error("missing API key")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("API key has been revoked")]
    RevokedKey,
    /// The key's tier was removed from the config after the key was created.
    #[error("tier {tier:?} of key {key_id} is not configured")]
    TierNotConfigured { key_id: String, tier: String },
    #[error("unknown tier {tier:?}; configured tiers: {}", valid.join(", "))]
    UnknownTier { tier: String, valid: Vec<String> },
    #[error("no API key with id or prefix {0:?}")]
    KeyNotFound(String),
    #[error("{prefix:?} matches {} keys ({}); give the key id", ids.len(), ids.join(", "))]
    AmbiguousPrefix { prefix: String, ids: Vec<String> },
    #[error("rate limit reached: tier {tier} allows {rpm} requests per minute")]
    RateLimited { tier: String, rpm: u32 },
    /// The key has as many streams open as its tier allows.
    #[error("too many streams: tier {tier} allows {limit} open at once")]
    TooManyStreams { tier: String, limit: u32 },
    #[error("monthly quota reached: tier {tier} allows {limit} requests per month")]
    QuotaExceeded { tier: String, limit: u64 },
    /// The prepaid balance (less what requests in flight hold) cannot cover the request's worst
    /// case. Amounts in picodollars.
    #[error("insufficient balance: needs {needed} pUSD, {available} pUSD available")]
    InsufficientBalance { needed: i64, available: i64 },
    /// The month's budget (less spend and holds) cannot cover the request's worst case.
    #[error("monthly budget exceeded: needs {needed} pUSD, {available} pUSD left")]
    BudgetExceeded { needed: i64, available: i64 },
    /// The shared limit store (Redis) failed; detail is logged, never sent.
    #[error("shared limits unavailable: {0}")]
    SharedLimits(String),
    #[error("{param}: {message}")]
    InvalidArgument {
        param: &'static str,
        message: String,
    },
    #[error("API key expired at {0}")]
    ExpiredKey(chrono::DateTime<chrono::Utc>),
    /// The key's tier has a model allow-list without this model.
    #[error("tier {tier} may not use model {model}")]
    ModelNotAllowed { tier: String, model: String },
    #[error("key {0} is revoked; a revoked key cannot be rotated")]
    RotateRevoked(String),
    /// The key rotated itself less than a minute ago (`crate::self_rotation`).
    #[error("the key rotated itself too recently; retry in {retry_after_secs} s")]
    RotationTooSoon { retry_after_secs: u64 },
    /// An Admin call without the admin token, or with no admin token configured.
    #[error("{0}")]
    Admin(#[from] tollgate::admin_token::AdminRefusal),
    /// A Metering call named a model the catalogue does not list (an alias, or no model).
    #[error("model_id {0:?} is not a model of the catalogue")]
    UnknownModel(String),
    /// The Catalog service could not be asked for a model's prices; detail is logged.
    #[error("the model catalogue is unavailable: {0}")]
    CatalogUnavailable(String),
    /// The catalogue answered with a price billing refuses (negative).
    #[error("catalogue prices of {model_id}: {reason}")]
    InvalidCatalogPrice { model_id: String, reason: String },
}

/// A generic message for failures whose detail stays in the logs.
const INTERNAL_MESSAGE: &str = "Internal billing error";

impl BillingError {
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            param,
            message: message.into(),
        }
    }

    /// This failure as the caller sees it.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::Config(_)
            | Self::Database(_)
            | Self::Connect(_)
            | Self::Io(_)
            | Self::UnsupportedDatabaseUrl(_)
            | Self::LedgerWrite(_)
            | Self::InvalidCatalogPrice { .. } => {
                ApiError::new(ErrorKind::Internal, INTERNAL_MESSAGE)
            }
            Self::LedgerClosed => ApiError::new(
                ErrorKind::Unavailable,
                "The billing service is shutting down",
            ),
            Self::MissingKey => tollgate::auth::missing_api_key(),
            Self::InvalidKey => {
                ApiError::new(ErrorKind::Authentication, "Invalid API key provided")
                    .with_code("invalid_api_key")
            }
            Self::RevokedKey => {
                ApiError::new(ErrorKind::Authentication, "API key has been revoked")
                    .with_code("invalid_api_key")
            }
            Self::TierNotConfigured { tier, .. } => ApiError::new(
                ErrorKind::Permission,
                format!("The tier {tier:?} of this API key is not configured on this gateway"),
            )
            .with_code("tier_not_configured"),
            Self::UnknownTier { .. } | Self::AmbiguousPrefix { .. } => {
                ApiError::new(ErrorKind::InvalidRequest, self.to_string())
            }
            Self::KeyNotFound(_) => ApiError::new(ErrorKind::NotFound, self.to_string()),
            Self::RateLimited { tier, rpm } => ApiError::new(
                ErrorKind::RateLimit,
                format!("Rate limit reached: tier {tier} allows {rpm} requests per minute"),
            )
            .with_code("rate_limit_exceeded"),
            Self::TooManyStreams { tier, limit } => ApiError::new(
                ErrorKind::RateLimit,
                format!(
                    "Too many concurrent streams: tier {tier} allows {limit} open at once \
                     (max_concurrent_streams); wait for one to end"
                ),
            )
            .with_code("rate_limit_exceeded"),
            Self::QuotaExceeded { tier, limit } => ApiError::new(
                ErrorKind::RateLimit,
                format!("Monthly quota reached: tier {tier} allows {limit} requests per month"),
            )
            .with_code("monthly_quota_exceeded"),
            Self::InsufficientBalance { needed, available } => ApiError::new(
                ErrorKind::InsufficientQuota,
                format!(
                    "You exceeded your current quota: this request may cost up to ${} and the \
                     key's balance has ${} available. Top up the key to continue.",
                    format_picodollars(*needed),
                    format_picodollars(*available)
                ),
            )
            .with_code("insufficient_quota"),
            Self::BudgetExceeded { needed, available } => ApiError::new(
                ErrorKind::InsufficientQuota,
                format!(
                    "You exceeded your current quota: this request may cost up to ${} and the \
                     key's monthly budget has ${} left.",
                    format_picodollars(*needed),
                    format_picodollars(*available)
                ),
            )
            .with_code("insufficient_quota"),
            Self::SharedLimits(_) => ApiError::new(
                ErrorKind::Unavailable,
                "Rate limiting is temporarily unavailable",
            ),
            Self::UnknownModel(_) => ApiError::invalid_param("model_id", self.to_string()),
            Self::CatalogUnavailable(_) => ApiError::new(
                ErrorKind::Unavailable,
                "Model prices are temporarily unavailable",
            ),
            Self::InvalidArgument { param, message } => ApiError::invalid_param(*param, message),
            Self::ExpiredKey(at) => ApiError::new(
                ErrorKind::Authentication,
                format!(
                    "API key expired at {}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
            .with_code("expired_api_key"),
            Self::ModelNotAllowed { tier, model } => ApiError::new(
                ErrorKind::Permission,
                format!("The model `{model}` is not available to API keys of tier {tier}"),
            )
            .with_param("model")
            .with_code("model_not_allowed"),
            Self::RotateRevoked(_) => {
                ApiError::new(ErrorKind::InvalidRequest, self.to_string()).with_param("key")
            }
            Self::RotationTooSoon { retry_after_secs } => ApiError::new(
                ErrorKind::RateLimit,
                format!(
                    "Key regeneration limit reached: a key may regenerate itself once a minute; \
                     try again in {retry_after_secs} s"
                ),
            )
            .with_code("rate_limit_exceeded"),
            Self::Admin(refusal) => refusal.to_api_error(),
        }
    }

    fn is_internal(&self) -> bool {
        matches!(self, Self::SharedLimits(_) | Self::CatalogUnavailable(_))
            || self.to_api_error().kind == ErrorKind::Internal
    }
}

impl BillingError {
    /// The caller's status; a failure of billing itself is logged at ERROR, naming the request
    /// `request_id` when the call is about one (Admit, Settle).
    pub(crate) fn into_status_of(self, request_id: Option<&str>) -> tonic::Status {
        if self.is_internal() {
            tracing::error!(request_id, error = %self, "billing request failed");
        }
        self.to_api_error().into_status()
    }
}

impl From<BillingError> for tonic::Status {
    fn from(err: BillingError) -> Self {
        err.into_status_of(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_onto_the_error_table() {
        let status = tonic::Status::from(BillingError::RevokedKey);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let api = ApiError::from_status(&status);
        assert_eq!(api.code.as_deref(), Some("invalid_api_key"));

        let status = tonic::Status::from(BillingError::QuotaExceeded {
            tier: "basic".into(),
            limit: 1000,
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "Monthly quota reached: tier basic allows 1000 requests per month"
        );

        let status = tonic::Status::from(BillingError::Database(DbErr::Custom(
            "disk I/O error at /secret/path".into(),
        )));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("/secret/path"));

        let status = tonic::Status::from(BillingError::invalid("request_id", "must not be empty"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            ApiError::from_status(&status).param.as_deref(),
            Some("request_id")
        );
        let status = tonic::Status::from(BillingError::InsufficientBalance {
            needed: 50_000_000_000,
            available: 1,
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let api = ApiError::from_status(&status);
        assert_eq!(api.kind, ErrorKind::InsufficientQuota);
        assert_eq!(api.code.as_deref(), Some("insufficient_quota"));
        assert!(api.message.contains("$0.05"), "{}", api.message);
        assert!(api.message.contains("$0.000000000001"), "{}", api.message);
        let status = tonic::Status::from(BillingError::KeyNotFound("sk-x".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
    }
}
