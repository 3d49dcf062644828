//! The rate limit of the management endpoints (`/admin/...`, `/v1/dashboard/billing/usage` and
//! `.../subscription`): each reads the database or guards a secret comparison, so a caller could
//! otherwise load the database or try tokens as fast as it can send. Counted per client address
//! (governor's GCRA, `server.management_rpm` a minute, burst the same); over it: 429
//! `rate_limit_error` with `Retry-After`. Inference routes have their own per-key limits.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, header::RETRY_AFTER},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use tollgate::error::{ApiError, ErrorKind};

use crate::error::RestError;

/// Addresses remembered before the idle ones are forgotten.
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// One limiter for all management routes of a process.
#[derive(Debug, Clone)]
pub struct ManagementLimit(Arc<DefaultKeyedRateLimiter<IpAddr>>);

impl ManagementLimit {
    pub fn per_minute(rpm: NonZeroU32) -> Self {
        Self(Arc::new(RateLimiter::keyed(Quota::per_minute(rpm))))
    }
}

/// The middleware: counts the request against its client address.
pub(crate) async fn limit(
    State(limit): State<ManagementLimit>,
    request: Request,
    next: Next,
) -> Response {
    // Requests that did not come through a listener (in-process tests) share one address.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if limit.0.len() > MAX_TRACKED_ADDRESSES {
        limit.0.retain_recent();
    }
    match limit.0.check_key(&client) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let mut response = RestError(ApiError::new(
                ErrorKind::RateLimit,
                "Too many management requests; try again shortly",
            ))
            .into_response();
            response.headers_mut().insert(
                RETRY_AFTER,
                HeaderValue::from(wait.as_secs().saturating_add(1)),
            );
            response
        }
    }
}
