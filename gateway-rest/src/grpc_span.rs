//! The server span of each gRPC call a listener serves, with the OpenTelemetry RPC conventions:
//! named `<package.Service>/<Method>`, kind server, `rpc.system = "grpc"`, `rpc.service`,
//! `rpc.method`, and `rpc.grpc.status_code` from the answer's headers (a status-only answer) or
//! its trailers; the codes the conventions count as server errors (UNKNOWN, DEADLINE_EXCEEDED,
//! UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) mark it as an error. It follows the caller's
//! trace context (`traceparent` metadata: another target's call, or an outside client's), so the
//! targets of a split deployment make one trace. It lasts until the answer's last frame, a
//! stream's included. Health checks (probes every few seconds) get no span. No metadata or
//! message is recorded.

use std::time::Duration;

use tower_http::{
    classify::{GrpcErrorsAsFailures, SharedClassifier},
    trace::{MakeSpan, OnEos, OnResponse, TraceLayer},
};

/// The tower layer a gRPC server is built with (`Server::builder().layer(grpc_span::layer())`).
pub(crate) type Layer = TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    RpcSpan,
    (),
    RecordStatus,
    (),
    RecordStatus,
    (),
>;

pub(crate) fn layer() -> Layer {
    TraceLayer::new_for_grpc()
        .make_span_with(RpcSpan)
        .on_request(())
        .on_response(RecordStatus)
        .on_body_chunk(())
        .on_eos(RecordStatus)
        // The status is on the span; a client's error is no ERROR log line, and the services
        // log their own failures.
        .on_failure(())
}

/// The gRPC service whose calls get no span.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Makes the call's span from its path (`/package.Service/Method`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RpcSpan;

impl<B> MakeSpan<B> for RpcSpan {
    fn make_span(&mut self, request: &http::Request<B>) -> tracing::Span {
        let path = request.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        if service == HEALTH_SERVICE {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            "gRPC call",
            otel.name = %path,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        tollgate::trace_context::follow(&span, request.headers());
        span
    }
}

/// Records the call's `grpc-status` on its span, from the response headers or the trailers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RecordStatus;

impl RecordStatus {
    fn record(headers: &http::HeaderMap, span: &tracing::Span) {
        // No layer wants the span (no exporter): nothing to parse the status for.
        if span.is_disabled() {
            return;
        }
        let Some(code) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
        else {
            return;
        };
        span.record("rpc.grpc.status_code", i64::from(code));
        if is_server_error(tonic::Code::from_i32(code)) {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The codes the RPC conventions count as a server span's error.
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &http::Response<B>, _latency: Duration, span: &tracing::Span) {
        Self::record(response.headers(), span);
    }
}

impl OnEos for RecordStatus {
    fn on_eos(self, trailers: Option<&http::HeaderMap>, _duration: Duration, span: &tracing::Span) {
        if let Some(trailers) = trailers {
            Self::record(trailers, span);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_the_conventions_codes() {
        assert!(is_server_error(tonic::Code::Unavailable));
        assert!(is_server_error(tonic::Code::Internal));
        assert!(!is_server_error(tonic::Code::Ok));
        assert!(!is_server_error(tonic::Code::InvalidArgument));
        assert!(!is_server_error(tonic::Code::Unauthenticated));
        assert!(!is_server_error(tonic::Code::ResourceExhausted));
    }
}
