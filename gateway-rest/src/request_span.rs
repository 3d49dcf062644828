//! The span of one REST request, the root of its trace (or a child of the caller's
//! `traceparent`), with the HTTP semantic conventions' attributes: `http.request.method`,
//! `http.route` (the matched route, never the raw path with its ids), `url.path`,
//! `http.response.status_code`; a 5xx marks the span as an error. No header, query or body is
//! recorded.

use std::time::Duration;

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    response::Response,
};
use tower_http::trace::{DefaultOnResponse, OnResponse};

/// The request's span, following the caller's trace context when it sends one. `Router::layer`
/// wraps each route, so the matched route is known here (absent for the fallback).
pub(crate) fn make(request: &Request<Body>) -> tracing::Span {
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    tollgate::trace_context::follow(&span, request.headers());
    span
}

/// Records the answer's status on the span, then logs it as `tower_http` does by default.
#[derive(Clone, Copy, Default)]
pub(crate) struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &tracing::Span) {
        let status = response.status();
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        DefaultOnResponse::default().on_response(response, latency, span);
    }
}
