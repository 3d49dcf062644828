//! How an upstream call fails, and how each failure maps onto the product's error table. The
//! provider's own key never reaches a message: upstream auth failures are reported generically.

use tollgate::error::{ApiError, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream said the request itself is wrong (4xx other than auth and rate limits).
    #[error("{provider} rejected the request: {message}")]
    Rejected {
        provider: String,
        status: u16,
        message: String,
    },
    /// The upstream refused the gateway's credentials (401/403) or account (402).
    #[error("{provider} refused the gateway's credentials (HTTP {status})")]
    Credentials { provider: String, status: u16 },
    /// The upstream is overloaded or rate-limits the gateway (429, 503, 529).
    #[error("{provider} is overloaded or rate limited (HTTP {status}); try again later")]
    Overloaded {
        provider: String,
        status: u16,
        /// The upstream's `Retry-After`, in seconds, passed on to the client.
        retry_after_secs: Option<u64>,
    },
    /// The upstream reported in a successful response that it lacks the capacity to answer
    /// (DeepSeek's `insufficient_system_resource` finish reason): retryable, like a 503.
    #[error("{provider} ran out of capacity before finishing ({reason}); try again later")]
    OutOfCapacity { provider: String, reason: String },
    /// The upstream answered with a server error status (5xx other than 503) instead of a body.
    #[error("{provider} failed: HTTP {status}: {message}")]
    ServerError {
        provider: String,
        status: u16,
        message: String,
    },
    /// The upstream sent something unreadable, or failed in-band or mid-stream.
    #[error("{provider} failed: {message}")]
    Failed { provider: String, message: String },
    /// The connection could not be made (`sent: false`: the request never left), or it broke
    /// after the request was sent.
    #[error("could not reach {provider}: {message}")]
    Connect {
        provider: String,
        message: String,
        sent: bool,
    },
    /// No answer within the deadline.
    #[error("{provider} did not answer within {seconds} s")]
    Timeout { provider: String, seconds: u64 },
    /// The gateway cut the request (sent upstream already) because it is shutting down and the
    /// grace period is over.
    #[error("the gateway is shutting down; the request to {provider} was cut")]
    ShuttingDown { provider: String },
    /// The provider has no key configured.
    #[error("provider {provider} is not configured: set the environment variable {env}")]
    NotConfigured { provider: String, env: String },
    /// A retry would have to wait (backoff, or the upstream's `Retry-After`) past the request's
    /// deadline: the request ends now instead of late.
    #[error("{provider} asked to wait {wait_ms} ms before a retry, past the request's deadline")]
    RetryPastDeadline { provider: String, wait_ms: u64 },
    /// Every deployment of every model the request may go to is cooling down (or none is ready).
    #[error("no deployment of {model} can take requests now; try again later")]
    NoDeployment { model: String },
    /// The request cannot be expressed for this provider.
    #[error("{message}")]
    Unsupported { param: String, message: String },
}

impl UpstreamError {
    /// A request this provider cannot take: a 400 naming the OpenAI field `param`.
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            param: param.into(),
            message: message.into(),
        }
    }

    /// Maps an upstream HTTP error status (and the upstream's message) onto the error kinds.
    pub fn from_status(provider: &str, status: u16, message: String) -> Self {
        let provider = provider.to_owned();
        match status {
            401..=403 => Self::Credentials { provider, status },
            429 | 503 | 529 => Self::Overloaded {
                provider,
                status,
                retry_after_secs: None,
            },
            400..=499 => Self::Rejected {
                provider,
                status,
                message,
            },
            _ => Self::ServerError {
                provider,
                status,
                message,
            },
        }
    }

    /// Whether the upstream provably generated (and billed) nothing: it refused with an error
    /// status before any answer, or the request never reached it. Anything else (a timeout after
    /// the request was sent, an unreadable or broken answer, an in-band failure) may have been
    /// generated, and is settled as an estimate rather than at zero.
    pub fn generated_nothing(&self) -> bool {
        match self {
            Self::Rejected { .. }
            | Self::Credentials { .. }
            | Self::Overloaded { .. }
            | Self::ServerError { .. }
            | Self::NotConfigured { .. }
            | Self::NoDeployment { .. }
            | Self::RetryPastDeadline { .. }
            | Self::Unsupported { .. } => true,
            Self::Connect { sent, .. } => !sent,
            Self::OutOfCapacity { .. }
            | Self::Failed { .. }
            | Self::Timeout { .. }
            | Self::ShuttingDown { .. } => false,
        }
    }

    /// The upstream's `Retry-After` (seconds), kept where the error is one a client retries.
    pub fn with_retry_after(mut self, seconds: Option<u64>) -> Self {
        if let Self::Overloaded {
            retry_after_secs, ..
        } = &mut self
        {
            *retry_after_secs = seconds;
        }
        self
    }

    pub fn to_api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            Self::Rejected { .. } => {
                ApiError::new(ErrorKind::InvalidRequest, message).with_code("upstream_rejected")
            }
            Self::Unsupported { param, .. } => ApiError::invalid_param(param.clone(), message),
            Self::ServerError { status: 504, .. } => {
                ApiError::new(ErrorKind::UpstreamTimeout, message)
            }
            Self::Credentials { .. }
            | Self::ServerError { .. }
            | Self::Failed { .. }
            | Self::Connect { .. } => ApiError::new(ErrorKind::Upstream, message),
            Self::Overloaded {
                retry_after_secs, ..
            } => ApiError::new(ErrorKind::Unavailable, message).with_retry_after(*retry_after_secs),
            Self::OutOfCapacity { .. }
            | Self::NotConfigured { .. }
            | Self::NoDeployment { .. }
            | Self::ShuttingDown { .. } => ApiError::new(ErrorKind::Unavailable, message),
            Self::Timeout { .. } | Self::RetryPastDeadline { .. } => {
                ApiError::new(ErrorKind::UpstreamTimeout, message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_statuses_map_onto_the_table() {
        let kind = |status| {
            UpstreamError::from_status("p", status, "m".into())
                .to_api_error()
                .kind
        };
        assert_eq!(kind(400), ErrorKind::InvalidRequest);
        assert_eq!(kind(422), ErrorKind::InvalidRequest);
        assert_eq!(kind(401), ErrorKind::Upstream);
        assert_eq!(kind(403), ErrorKind::Upstream);
        assert_eq!(kind(429), ErrorKind::Unavailable);
        assert_eq!(kind(529), ErrorKind::Unavailable);
        assert_eq!(kind(503), ErrorKind::Unavailable);
        assert_eq!(kind(500), ErrorKind::Upstream);
        assert_eq!(kind(504), ErrorKind::UpstreamTimeout);
        let e = UpstreamError::from_status("p", 429, "m".into())
            .with_retry_after(Some(30))
            .to_api_error();
        assert_eq!(e.retry_after_secs, Some(30));
        let e = UpstreamError::from_status("p", 400, "bad temperature".into()).to_api_error();
        assert!(e.message.contains("bad temperature"));
    }

    #[test]
    fn only_refusals_and_unsent_requests_provably_generated_nothing() {
        for status in [400, 401, 429, 500, 503, 504] {
            assert!(UpstreamError::from_status("p", status, "m".into()).generated_nothing());
        }
        let connect = |sent| UpstreamError::Connect {
            provider: "p".into(),
            message: "m".into(),
            sent,
        };
        assert!(connect(false).generated_nothing());
        assert!(!connect(true).generated_nothing());
        let timeout = UpstreamError::Timeout {
            provider: "p".into(),
            seconds: 1,
        };
        assert!(!timeout.generated_nothing());
        let unreadable = UpstreamError::Failed {
            provider: "p".into(),
            message: "unreadable response".into(),
        };
        assert!(!unreadable.generated_nothing());
    }
}
