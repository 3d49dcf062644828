//! W3C trace context (`traceparent`, `tracestate`) across process boundaries, so one request is
//! one trace whichever processes it crosses: taken from what a caller sent ([`follow`]), put on
//! every gRPC call a dialled client makes ([`propagate`]) and, when the operator asks for it, on
//! the upstream provider's HTTP request ([`inject_upstream`]). The format is the process-wide
//! OpenTelemetry propagator, installed with the OTLP exporter; without one every function here
//! is a no-op (nothing extracted, nothing sent).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::global;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tower::ServiceExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::transport::GrpcTransport;

/// Makes `span` a child of the trace context `headers` carry, when they carry one.
pub fn follow(span: &tracing::Span, headers: &http::HeaderMap) {
    // No layer wants the span (no exporter): no context to read.
    if span.is_disabled() {
        return;
    }
    let parent =
        global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    // Only an error when no OpenTelemetry layer is installed: nothing to follow then.
    let _ = span.set_parent(parent);
}

/// Puts the current span's trace context on `headers` (nothing outside a traced span).
pub fn inject(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// `transport` with the caller's trace context on every call it carries: the server on the
/// other side continues the caller's trace. Calls are made in the caller's span, so the context
/// is read when the call starts.
pub fn propagate(transport: GrpcTransport) -> GrpcTransport {
    GrpcTransport::new(
        transport.map_request(|mut request: http::Request<tonic::body::Body>| {
            inject(request.headers_mut());
            request
        }),
    )
}

/// Whether upstream provider requests carry the trace context (`[telemetry] propagate_upstream`):
/// off unless the operator switches it on, since it tells a third party the gateway's trace ids.
static UPSTREAM: AtomicBool = AtomicBool::new(false);

/// Switches sending the trace context to upstream providers on or off, for the whole process.
pub fn propagate_upstream(on: bool) {
    UPSTREAM.store(on, Ordering::Relaxed);
}

/// Puts the current span's trace context on an upstream request's `headers` when
/// [`propagate_upstream`] is on.
pub fn inject_upstream(headers: &mut http::HeaderMap) {
    if UPSTREAM.load(Ordering::Relaxed) {
        inject(headers);
    }
}
