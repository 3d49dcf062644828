//! What Inference reports to Prometheus, through the `metrics` facade (the process that serves
//! `/metrics` installs the recorder; without one every call here is a no-op): each request by
//! model, provider, status and stream, its duration and a stream's time to first token, the
//! requests in flight and the streams open. The upstream calls themselves are counted at the
//! HTTP layer (`providers/http.rs`), tokens and cost where the ledger stores them (billing).
//!
//! Recording is cheap: the handles of one model (its counters by status and stream, its
//! histograms) are registered once, on its first request, and reused; no label is allocated per
//! request unless per-key labels are switched on ([`set_per_key_labels`]).
//!
//! Each request's `chat` span (its trace, when traces are exported) is the meter's too: it carries
//! the OpenTelemetry GenAI attributes (`gen_ai.*`: provider, models, token usage, finish reasons;
//! never a prompt, an answer or a key) and a stream's `first_token` event.

use std::{
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, Label, counter, gauge, histogram};
use tollgate::{
    error::{ApiError, ErrorKind},
    v1::{ResolvedModel, Usage},
};
use tonic::Status;

use crate::service::Admitted;

/// Requests answered, by `model`, `provider`, `status` and `stream`.
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// A request's whole time, to its last byte, by `model`, `provider` and `stream`.
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
/// A stream's time to its first upstream chunk, by `model` and `provider`.
pub const TIME_TO_FIRST_TOKEN: &str = "tollgate_time_to_first_token_seconds";
/// Requests being handled.
pub const IN_FLIGHT: &str = "tollgate_in_flight_requests";
/// Streams open (first chunk sent, relay not finished).
pub const ACTIVE_STREAMS: &str = "tollgate_active_streams";
/// 1 while a deployment takes traffic, 0 while it cools down or awaits its probe, by `model` and
/// `deployment` (`routing.rs`).
pub const DEPLOYMENT_HEALTHY: &str = "tollgate_deployment_healthy";
/// This process's requests in flight on a deployment, by `model` and `deployment`.
pub const DEPLOYMENT_IN_FLIGHT: &str = "tollgate_deployment_in_flight";

/// The `model` and `provider` label of a request refused before its model was resolved (an
/// unknown model, an invalid body): what the caller named is never a label (cardinality).
const UNRESOLVED: &str = "";

static PER_KEY_LABELS: AtomicBool = AtomicBool::new(false);

/// Adds a `key` label (the key id) to `tollgate_requests_total`: one series per key, so off by
/// default.
pub fn set_per_key_labels(on: bool) {
    PER_KEY_LABELS.store(on, Ordering::Relaxed);
}

/// How a request ended, as its `status` label says it: `ok`, the error type of the table
/// (`tollgate::error`), or `cancelled` (a stream whose client left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestStatus {
    Ok,
    Cancelled,
    Failed(ErrorKind),
}

impl RequestStatus {
    pub(crate) fn of(status: &Status) -> Self {
        Self::Failed(ApiError::from_status(status).kind)
    }

    pub(crate) fn of_result<T>(result: &Result<T, Status>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(status) => Self::of(status),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Cancelled => "cancelled",
            Self::Failed(kind) => kind.openai_type(),
        }
    }

    /// Its slot among a model's cached counters.
    fn slot(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::Cancelled => 1,
            Self::Failed(kind) => 2 + kind as usize,
        }
    }
}

/// Counter slots per model and stream flag: ok, cancelled and one per error kind (with room).
const STATUS_SLOTS: usize = 16;

/// The handles of one model (or of the unresolved requests), registered on first use.
struct ModelMeters {
    model: String,
    provider: String,
    /// By stream flag (0: unary, 1: stream), then [`RequestStatus::slot`].
    requests: [[OnceLock<Counter>; STATUS_SLOTS]; 2],
    duration: [Histogram; 2],
    time_to_first_token: Histogram,
}

impl ModelMeters {
    fn new(model: &str, provider: &str) -> Self {
        let duration = |stream: &'static str| histogram!(REQUEST_DURATION, "model" => model.to_owned(), "provider" => provider.to_owned(), "stream" => stream);
        Self {
            model: model.to_owned(),
            provider: provider.to_owned(),
            requests: Default::default(),
            duration: [duration("false"), duration("true")],
            time_to_first_token: histogram!(TIME_TO_FIRST_TOKEN, "model" => model.to_owned(), "provider" => provider.to_owned()),
        }
    }

    fn count(&self, streamed: bool, status: RequestStatus, key_id: Option<&str>) {
        if let Some(key_id) = key_id.filter(|_| PER_KEY_LABELS.load(Ordering::Relaxed)) {
            self.counter(streamed, status, Some(key_id)).increment(1);
            return;
        }
        match self.requests[usize::from(streamed)].get(status.slot()) {
            Some(cell) => cell
                .get_or_init(|| self.counter(streamed, status, None))
                .increment(1),
            None => self.counter(streamed, status, None).increment(1),
        }
    }

    fn counter(&self, streamed: bool, status: RequestStatus, key_id: Option<&str>) -> Counter {
        let mut labels = vec![
            Label::new("model", self.model.clone()),
            Label::new("provider", self.provider.clone()),
            Label::new("status", status.label()),
            Label::new("stream", if streamed { "true" } else { "false" }),
        ];
        labels.extend(key_id.map(|k| Label::new("key", k.to_owned())));
        counter!(REQUESTS_TOTAL, labels)
    }
}

/// Every model's handles, by model id; the catalogue is fixed, so this stays small.
static MODELS: LazyLock<DashMap<String, Arc<ModelMeters>>> = LazyLock::new(DashMap::new);

fn model_meters(model: &str, provider: &str) -> Arc<ModelMeters> {
    if let Some(meters) = MODELS.get(model) {
        return Arc::clone(&meters);
    }
    Arc::clone(
        &MODELS
            .entry(model.to_owned())
            .or_insert_with(|| Arc::new(ModelMeters::new(model, provider))),
    )
}

/// How an upstream call ended, its `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A 2xx answer.
    Ok,
    /// 429.
    RateLimited,
    /// Another 4xx.
    ClientError,
    /// A 5xx (or any other non-2xx status).
    ServerError,
    /// No answer within the first-token deadline, or a read timed out.
    Timeout,
    /// The connection could not be made, or broke before an answer.
    ConnectError,
}

impl UpstreamOutcome {
    const ALL: [Self; 6] = [
        Self::Ok,
        Self::RateLimited,
        Self::ClientError,
        Self::ServerError,
        Self::Timeout,
        Self::ConnectError,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::RateLimited => "rate_limited",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::ConnectError => "connect_error",
        }
    }

    /// The outcome of an answer with HTTP status `status`.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            429 => Self::RateLimited,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

/// Calls to upstream providers, by `provider` and `outcome`.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "tollgate_upstream_requests_total";
/// An upstream call's time to its response headers, by `provider`.
pub const UPSTREAM_DURATION: &str = "tollgate_upstream_duration_seconds";

/// One provider's upstream handles, registered when the provider is built.
#[derive(Debug, Clone)]
pub struct UpstreamMeters {
    outcomes: [Counter; UpstreamOutcome::ALL.len()],
    duration: Histogram,
}

impl UpstreamMeters {
    pub fn new(provider: &str) -> Self {
        Self {
            outcomes: UpstreamOutcome::ALL.map(|outcome| {
                counter!(UPSTREAM_REQUESTS_TOTAL, "provider" => provider.to_owned(), "outcome" => outcome.label())
            }),
            duration: histogram!(UPSTREAM_DURATION, "provider" => provider.to_owned()),
        }
    }

    /// Records one call that ended with `outcome` after `started`.
    pub fn record(&self, outcome: UpstreamOutcome, started: Instant) {
        self.outcomes[outcome as usize].increment(1);
        self.duration.record(started.elapsed().as_secs_f64());
    }
}

/// The gauges of one deployment, registered once with its health entry (`routing.rs`).
#[derive(Debug)]
pub(crate) struct DeploymentMeters {
    healthy: Gauge,
    in_flight: Gauge,
}

impl DeploymentMeters {
    pub fn new(model_id: &str, deployment: &str) -> Self {
        let labels = [
            Label::new("model", model_id.to_owned()),
            Label::new("deployment", deployment.to_owned()),
        ];
        let meters = Self {
            healthy: gauge!(DEPLOYMENT_HEALTHY, labels.iter()),
            in_flight: gauge!(DEPLOYMENT_IN_FLIGHT, labels.iter()),
        };
        meters.healthy.set(1.0);
        meters
    }

    pub fn healthy(&self, healthy: bool) {
        self.healthy.set(if healthy { 1.0 } else { 0.0 });
    }

    /// One more request on the deployment.
    pub fn entered(&self) {
        self.in_flight.increment(1.0);
    }

    /// One request fewer.
    pub fn left(&self) {
        self.in_flight.decrement(1.0);
    }
}

static IN_FLIGHT_GAUGE: LazyLock<Gauge> = LazyLock::new(|| gauge!(IN_FLIGHT));
static ACTIVE_STREAMS_GAUGE: LazyLock<Gauge> = LazyLock::new(|| gauge!(ACTIVE_STREAMS));

/// The target of events that belong to a trace only (the `first_token` event): the log writer
/// leaves them out.
pub const SPAN_EVENT_TARGET: &str = "tollgate::span_event";

/// One request from its arrival to its last byte: counted in flight while it lives, and
/// recorded (count and duration, and its log line) once, by [`RequestMeter::finish`]; a meter
/// dropped unfinished (its task panicked) records an internal error.
pub(crate) struct RequestMeter {
    started: Instant,
    streamed: bool,
    model: Option<Arc<ModelMeters>>,
    /// Whether `key_id` is a metric label too.
    per_key: bool,
    finished: bool,
    stream_open: bool,
    log: RequestLog,
    /// The request's `chat` span; the work runs in it ([`RequestMeter::span`]).
    span: tracing::Span,
    /// The finish reasons seen, for `gen_ai.response.finish_reasons`.
    finish_reasons: Vec<String>,
}

/// What the request's log line says besides its status and latency.
#[derive(Default)]
struct RequestLog {
    request_id: String,
    key_id: String,
    key_prefix: String,
    model: String,
    provider: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_picodollars: Option<i64>,
    time_to_first_token: Option<std::time::Duration>,
}

impl RequestMeter {
    /// Starts metering a request for `requested_model` (as the caller named it).
    pub(crate) fn start(streamed: bool, requested_model: &str) -> Self {
        IN_FLIGHT_GAUGE.increment(1.0);
        let span = tracing::info_span!(
            "chat",
            otel.name = %format_args!("chat {requested_model}"),
            gen_ai.operation.name = "chat",
            gen_ai.system = tracing::field::Empty,
            gen_ai.request.model = %requested_model,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            gen_ai.response.finish_reasons = tracing::field::Empty,
            tollgate.request_id = tracing::field::Empty,
            tollgate.stream = streamed,
        );
        Self {
            span,
            finish_reasons: Vec::new(),
            started: Instant::now(),
            streamed,
            model: None,
            per_key: PER_KEY_LABELS.load(Ordering::Relaxed),
            finished: false,
            stream_open: false,
            log: RequestLog::default(),
        }
    }

    /// The request was admitted: its model, provider, id and key are known.
    pub(crate) fn admitted(&mut self, admitted: &Admitted) {
        let route: &ResolvedModel = &admitted.route;
        self.model = Some(model_meters(&route.model_id, &route.provider));
        self.log.request_id.clone_from(&admitted.request_id);
        self.log.key_id.clone_from(&admitted.key_id);
        self.log.key_prefix.clone_from(&admitted.key_prefix);
        self.log.model.clone_from(&route.model_id);
        self.log.provider.clone_from(&route.provider);
        self.span
            .record("gen_ai.system", admitted.provider.gen_ai_system())
            .record("gen_ai.response.model", route.upstream_model.as_str())
            .record("tollgate.request_id", admitted.request_id.as_str());
    }

    /// The span the request's work runs in.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The upstream named the model that answered (when it does).
    pub(crate) fn response_model(&mut self, model: &str) {
        if !model.is_empty() {
            self.span.record("gen_ai.response.model", model);
        }
    }

    /// A choice finished for `reason`.
    pub(crate) fn finish_reason(&mut self, reason: &str) {
        // Only the span wants them: nothing to keep when no layer takes it (no exporter).
        if self.span.is_disabled() {
            return;
        }
        if !reason.is_empty() && !self.finish_reasons.iter().any(|seen| seen == reason) {
            self.finish_reasons.push(reason.to_owned());
            self.span.record(
                "gen_ai.response.finish_reasons",
                self.finish_reasons.join(",").as_str(),
            );
        }
    }

    /// The request was settled with `usage` at `cost_picodollars`.
    pub(crate) fn settled(&mut self, usage: &Usage, cost_picodollars: i64) {
        self.log.prompt_tokens = usage.prompt_tokens;
        self.log.completion_tokens = usage.completion_tokens;
        self.log.cost_picodollars = Some(cost_picodollars);
        // As i64: the OpenTelemetry layer exports a u64 as a string.
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.span
            .record("gen_ai.usage.input_tokens", tokens(usage.prompt_tokens))
            .record(
                "gen_ai.usage.output_tokens",
                tokens(usage.completion_tokens),
            );
    }

    /// The stream's first upstream chunk arrived: its time to first token, and it is open.
    pub(crate) fn first_token(&mut self) {
        let elapsed = self.started.elapsed();
        self.log.time_to_first_token = Some(elapsed);
        // A span event for the trace, not a log line (the log writer skips this target).
        self.span.in_scope(|| {
            tracing::info!(
                target: SPAN_EVENT_TARGET,
                ttft_ms = elapsed.as_secs_f64() * 1000.0,
                "first_token"
            );
        });
        if let Some(model) = &self.model {
            model.time_to_first_token.record(elapsed.as_secs_f64());
        }
        if !self.stream_open {
            self.stream_open = true;
            ACTIVE_STREAMS_GAUGE.increment(1.0);
        }
    }

    /// Records how the request ended, and writes its log line; only the first call counts.
    pub(crate) fn finish(&mut self, status: RequestStatus) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let model = match &self.model {
            Some(model) => Arc::clone(model),
            None => model_meters(UNRESOLVED, UNRESOLVED),
        };
        let key_label = (self.per_key && !self.log.key_id.is_empty()).then_some(&*self.log.key_id);
        model.count(self.streamed, status, key_label);
        model.duration[usize::from(self.streamed)].record(elapsed.as_secs_f64());
        self.write_log(status, elapsed);
    }

    /// The request's one log line (target `tollgate::request`): at INFO unless the gateway or
    /// its upstream failed (WARN), or the gateway itself (ERROR); a client's error is INFO.
    fn write_log(&self, status: RequestStatus, elapsed: std::time::Duration) {
        let log = &self.log;
        // Fields are evaluated only when the line is written (the cost's formatting included).
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "tollgate::request",
                    $level,
                    request_id = %log.request_id,
                    key_id = %log.key_id,
                    key_prefix = %log.key_prefix,
                    model = %log.model,
                    provider = %log.provider,
                    stream = self.streamed,
                    status = status.label(),
                    prompt_tokens = log.prompt_tokens,
                    completion_tokens = log.completion_tokens,
                    cost_usd = log
                        .cost_picodollars
                        .map(tollgate::money::format_picodollars)
                        .as_deref(),
                    latency_ms = elapsed.as_secs_f64() * 1000.0,
                    ttft_ms = log.time_to_first_token.map(|t| t.as_secs_f64() * 1000.0),
                    "request"
                )
            };
        }
        match status {
            RequestStatus::Failed(ErrorKind::Internal) => line!(tracing::Level::ERROR),
            RequestStatus::Failed(
                ErrorKind::Upstream | ErrorKind::UpstreamTimeout | ErrorKind::Unavailable,
            ) => line!(tracing::Level::WARN),
            _ => line!(tracing::Level::INFO),
        }
    }
}

impl Drop for RequestMeter {
    fn drop(&mut self) {
        self.finish(RequestStatus::Failed(ErrorKind::Internal));
        if self.stream_open {
            ACTIVE_STREAMS_GAUGE.decrement(1.0);
        }
        IN_FLIGHT_GAUGE.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_a_counter_slot() {
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::UpstreamTimeout,
            ErrorKind::Unavailable,
        ] {
            assert!(RequestStatus::Failed(kind).slot() < STATUS_SLOTS);
        }
        assert_eq!(RequestStatus::Ok.label(), "ok");
        assert_eq!(
            RequestStatus::Failed(ErrorKind::RateLimit).label(),
            "rate_limit_error"
        );
    }
}
