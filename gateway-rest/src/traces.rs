//! Traces: the OpenTelemetry layer of the process's `tracing` subscriber, exporting spans over
//! OTLP/HTTP (protobuf) to `[telemetry] otlp_endpoint`, and the W3C trace context propagator
//! `tollgate::trace_context` reads and writes `traceparent` with (to upstreams too when
//! `[telemetry] propagate_upstream` is on). Without an endpoint nothing is installed, and since
//! the log writer takes events only, no layer takes a span: opening one costs next to nothing.
//!
//! The spans themselves are where the work happens (the REST request span in `app`, the chat,
//! admit and settle spans in the services); this module only ships them.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, global};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::config::TelemetryConfig;

/// The installed exporter; [`Traces::shutdown`] flushes what is still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the OTLP exporter (batching, parent-based ratio sampling) when `otlp_endpoint` is
    /// set, with `service.name` from the config or `default_service_name`. Call inside the tokio
    /// runtime: exports run on it.
    pub fn install(
        telemetry: &TelemetryConfig,
        default_service_name: &str,
    ) -> Result<Option<Self>, String> {
        let Some(endpoint) = telemetry.otlp_endpoint.as_deref() else {
            return Ok(None);
        };
        let client = RuntimeHttpClient {
            client: reqwest::Client::new(),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|e| format!("traces need the tokio runtime: {e}"))?,
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_http_client(client)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let service_name = telemetry
            .service_name
            .clone()
            .unwrap_or_else(|| default_service_name.to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                telemetry.sampling_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_attributes([KeyValue::new("service.name", service_name)])
                    .build(),
            )
            .build();
        global::set_text_map_propagator(TraceContextPropagator::new());
        tollgate::trace_context::propagate_upstream(telemetry.propagate_upstream);
        Ok(Some(Self { provider }))
    }

    /// The `tracing` layer recording spans into this exporter.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        // Without thread ids and busy/idle times per span: noise for the cost.
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("tollgate"))
            .with_threads(false)
            .with_tracked_inactivity(false)
    }

    /// Exports the spans still buffered and stops the exporter. Blocks: call it outside the
    /// runtime's tasks, while the runtime still runs (the exports are sent on it).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces: the last spans were not exported");
        }
    }
}

/// The exporter's HTTP client: the tree's reqwest, each export spawned on the gateway's tokio
/// runtime, since the batch processor awaits exports on a thread of its own (no reactor there).
#[derive(Debug)]
struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let mut built = Response::builder().status(response.status());
            if let Some(headers) = built.headers_mut() {
                headers.extend(response.headers().clone());
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(built.body(body)?)
        });
        sent.await.map_err(|e| -> HttpError { Box::new(e) })?
    }
}
