//! The Prometheus endpoint: installs this process's `metrics` recorder (once; every target's
//! services record into it where their events happen, see `tollgate_inference::telemetry` and
//! `tollgate_billing::telemetry`), with histogram buckets and a description of every metric, and
//! serves `GET /metrics`: what was recorded plus the process's own metrics (RSS, CPU, open file
//! descriptors, from `metrics-process`), in the Prometheus text format.

use std::{sync::OnceLock, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tollgate_billing::telemetry as billing;
use tollgate_inference::telemetry as inference;

use crate::config::TelemetryConfig;

/// Bucket bounds of every `_seconds` histogram: from a fast cached answer to a long generation.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Bucket bounds of `tollgate_ledger_batch_rows`, up to the writer's largest batch.
const BATCH_ROWS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// How often recorded histogram samples are folded into their buckets between scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's recorder, installed by the first [`install`].
static HANDLE: OnceLock<Option<Metrics>> = OnceLock::new();

/// The installed recorder's handle and the process collector.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    process: std::sync::Arc<metrics_process::Collector>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Installs the Prometheus recorder for this process (later calls return the first one's), and
/// applies `telemetry.per_key_labels`. Call before the services are built: handles registered
/// before a recorder exists record nowhere. `None` if another recorder was installed already.
pub fn install(telemetry: &TelemetryConfig) -> Option<Metrics> {
    inference::set_per_key_labels(telemetry.per_key_labels);
    billing::set_per_key_labels(telemetry.per_key_labels);
    HANDLE.get_or_init(build).clone()
}

fn build() -> Option<Metrics> {
    let installed = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(billing::LEDGER_BATCH_ROWS.to_owned()),
                BATCH_ROWS_BUCKETS,
            )
        })
        .and_then(PrometheusBuilder::install_recorder);
    let handle = match installed {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics is not served");
            return None;
        }
    };
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    let upkeep = handle.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
    }
    Some(Metrics {
        handle,
        process: std::sync::Arc::new(process),
    })
}

/// The HELP and unit of every metric the services record.
fn describe() {
    describe_counter!(
        inference::REQUESTS_TOTAL,
        "Requests answered, by model, provider, status (ok, cancelled or the error type) and stream"
    );
    describe_histogram!(
        inference::REQUEST_DURATION,
        Unit::Seconds,
        "A request's whole time, to its last byte"
    );
    describe_histogram!(
        inference::TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "A stream's time to its first upstream chunk"
    );
    describe_gauge!(inference::IN_FLIGHT, "Requests being handled");
    describe_gauge!(inference::ACTIVE_STREAMS, "Streams open");
    describe_gauge!(
        inference::DEPLOYMENT_HEALTHY,
        "1 while a deployment takes traffic, 0 while it cools down or awaits its probe"
    );
    describe_gauge!(
        inference::DEPLOYMENT_IN_FLIGHT,
        "This process's requests in flight on a deployment"
    );
    describe_counter!(
        inference::UPSTREAM_REQUESTS_TOTAL,
        "Calls to upstream providers, by provider and outcome"
    );
    describe_histogram!(
        inference::UPSTREAM_DURATION,
        Unit::Seconds,
        "An upstream call's time to its response headers"
    );
    describe_counter!(
        billing::ADMISSION_REFUSALS_TOTAL,
        "Admissions refused, by reason"
    );
    describe_counter!(
        billing::TOKENS_TOTAL,
        "Tokens settled in the ledger, by model and kind"
    );
    describe_gauge!(
        billing::COST_USD_TOTAL,
        "USD settled in the ledger, by model (only ever raised)"
    );
    describe_counter!(
        billing::SETTLEMENTS_TOTAL,
        "Ledger rows stored, by kind (final, estimated, cancelled, failed)"
    );
    describe_histogram!(
        billing::LEDGER_BATCH_ROWS,
        "Rows per committed ledger batch"
    );
    describe_histogram!(
        billing::LEDGER_COMMIT_SECONDS,
        Unit::Seconds,
        "Time of one ledger commit, retries included"
    );
    describe_gauge!(
        billing::LEDGER_QUEUE_DEPTH,
        "Rows waiting for the ledger writer"
    );
}

/// `GET /metrics`.
pub fn routes(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    metrics.process.collect();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.handle.render(),
    )
}
