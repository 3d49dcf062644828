//! One REST request as an operator sees it: its span, the root of its trace (or a child of the
//! caller's `traceparent`), with the HTTP semantic conventions' attributes (`http.request.method`,
//! `http.route`: the matched route, never the raw path with its ids; `url.path`,
//! `http.response.status_code`; a 5xx marks the span as an error), and its access line, which
//! names the request by itself (the log writer sees no span): method, route, status, latency and
//! the `x-request-id` where the answer has one. No header, query or body is recorded.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    extract::{MatchedPath, Request},
    http::{StatusCode, Uri},
    middleware::Next,
    response::Response,
};
use tower_http::{classify::ServerErrorsFailureClass, trace::OnResponse};

use tollgate::error::REQUEST_ID_METADATA;

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

/// Records the answer's status on the span (the access line is [`access_line`]'s).
#[derive(Clone, Copy, Default)]
pub(crate) struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, _latency: Duration, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        let status = response.status();
        span.record("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The access line's target: tower-http's, whose default line this replaces, so
/// `RUST_LOG=tower_http=debug` shows it as before.
const ACCESS_TARGET: &str = "tower_http::trace::on_response";

/// Writes the request's access line once its answer's head is ready: at DEBUG (as tower-http's
/// was), except a 500, the gateway's own failure, at ERROR. A 502, 503 or 504 (an upstream's
/// failure, logged where it was seen with its request id; an unset provider key, warned about
/// at start-up; load shedding) stays at DEBUG, so one operator state does not log an error per
/// request. Nothing is formatted unless the line is written.
pub(crate) async fn access_line(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    // The raw path only where no route matched (an unknown route): what was asked for.
    let unmatched: Option<Uri> = route.is_none().then(|| request.uri().clone());
    let response = next.run(request).await;
    let status = response.status();
    macro_rules! line {
        ($level:expr, $message:literal) => {
            tracing::event!(
                target: ACCESS_TARGET,
                $level,
                method = method.as_str(),
                route = route.as_ref().map(MatchedPath::as_str),
                path = unmatched.as_ref().map(Uri::path),
                status = status.as_u16(),
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = response
                    .headers()
                    .get(REQUEST_ID_METADATA)
                    .and_then(|id| id.to_str().ok()),
                $message
            )
        };
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        line!(tracing::Level::ERROR, "response failed");
    } else {
        line!(tracing::Level::DEBUG, "finished processing request");
    }
    response
}

/// A failure tower-http sees besides the status (which [`access_line`] logs): the answer's body
/// failed while it was sent. At ERROR, with the request's latency so far.
pub(crate) fn body_failed(
    class: ServerErrorsFailureClass,
    latency: Duration,
    _span: &tracing::Span,
) {
    if let ServerErrorsFailureClass::Error(error) = class {
        tracing::error!(
            error,
            latency_ms = latency.as_secs_f64() * 1000.0,
            "response body failed"
        );
    }
}
