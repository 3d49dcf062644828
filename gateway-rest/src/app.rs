//! The REST router and its middleware stack, in order, in one place.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use axum::{
    BoxError, Router,
    error_handling::HandleErrorLayer,
    http::{
        HeaderName, HeaderValue, Method, Uri,
        header::{CONTENT_TYPE, RETRY_AFTER},
    },
    middleware,
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use tollgate::{
    caller::{BillingCaller, InferenceCaller},
    error::{ApiError, ErrorKind},
    transport::GrpcTransport,
    v1::{
        admin_client::AdminClient, billing_client::BillingClient, billing_server::Billing,
        catalog_client::CatalogClient, inference_server::Inference,
    },
};
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer, load_shed::LoadShedLayer};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{
    admin, chat_completions,
    config::ServerConfig,
    console,
    cors::AllowedOrigins,
    dashboard,
    error::RestError,
    management_limit::{self, ManagementLimit},
    messages, models, request_span, responses, usage,
};

/// What a client is told to wait before trying again when the gateway sheds load.
const RETRY_AFTER_SECS: u64 = 1;

/// The REST facade's own bounds, from `[server]`.
#[derive(Debug, Clone)]
pub struct RestLimits {
    /// Larger request bodies are a 400.
    pub max_body_bytes: usize,
    /// The gRPC message limit of the Inference client (answers and requests).
    pub max_message_bytes: usize,
    /// The whole body must arrive within this time.
    pub body_read_timeout: Duration,
    /// Requests handled at once; over it: 503 with `Retry-After`.
    pub max_in_flight_requests: usize,
    /// SSE keep-alive comment interval while a stream is silent.
    pub sse_keep_alive: Duration,
    /// Management requests a minute per client address.
    pub management_rpm: NonZeroU32,
    /// Origins browsers may call from.
    pub allowed_origins: AllowedOrigins,
}

impl RestLimits {
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            max_body_bytes: server.max_body_bytes,
            max_message_bytes: server.max_message_bytes,
            body_read_timeout: Duration::from_secs(server.body_read_timeout_secs),
            max_in_flight_requests: server.max_in_flight_requests,
            sse_keep_alive: Duration::from_secs(server.sse_keep_alive_secs),
            management_rpm: NonZeroU32::new(server.management_rpm).unwrap_or(NonZeroU32::MIN),
            allowed_origins: server.cors_allowed_origins.clone(),
        }
    }
}

/// What every handler needs ([`Services`]), shared: axum clones a route's whole service, the
/// state of each of its handlers and fallbacks included, at every layer that clones its inner
/// service per request (a dozen clones a chat completion), so a clone is one reference count.
/// Cloning the clients themselves was 1.4% of a request's instructions (`scripts/profile.sh`).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// gRPC clients of the services and the facade's limits.
#[derive(Debug, Clone)]
pub struct Services {
    pub inference: InferenceCaller,
    pub catalog: CatalogClient<GrpcTransport>,
    pub billing: BillingClient<GrpcTransport>,
    /// Billing for the key check every keyed request makes (`extract::ApiKey`): called directly
    /// in the monolith ([`AppState::calling_directly`]), else over the billing transport.
    pub keys: BillingCaller,
    pub admin: AdminClient<GrpcTransport>,
    pub limits: RestLimits,
}

impl AppState {
    pub fn new(
        inference: GrpcTransport,
        catalog: GrpcTransport,
        billing: GrpcTransport,
        admin: GrpcTransport,
        limits: RestLimits,
    ) -> Self {
        Self(Arc::new(Services {
            inference: InferenceCaller::network(inference, limits.max_message_bytes),
            catalog: CatalogClient::new(catalog),
            keys: BillingCaller::from(billing.clone()),
            billing: BillingClient::new(billing),
            admin: AdminClient::new(admin),
            limits,
        }))
    }

    /// The monolith's request path: Inference and the key check call the services' trait
    /// implementations in this process directly, with no protobuf encoding between them.
    pub fn calling_directly(self, inference: impl Inference, billing: impl Billing) -> Self {
        let mut services = Arc::unwrap_or_clone(self.0);
        services.inference = InferenceCaller::direct(inference);
        services.keys = BillingCaller::direct(billing);
        Self(Arc::new(services))
    }
}

/// The OpenAI-compatible API, and key administration under `/admin` (admin token, not API keys).
/// The management routes (admin, usage, subscription) are rate-limited per client address.
/// Layers, outermost first: tracing (the span); the access line; CORS (preflights answered
/// here, never shed or routed); load shedding (over `max_in_flight_requests` requests in
/// the router at once, one shared count for all routes: 503 `service_unavailable` with
/// `Retry-After`, at once rather than queued); panics → 500 in the product's error format.
pub fn app(state: AppState) -> Router {
    let max_in_flight = state.limits.max_in_flight_requests;
    let cors = state.limits.allowed_origins.rest_layer();
    // Rate-limited per client address (management_limit.rs).
    let management = Router::new()
        .route("/v1/dashboard/billing/usage", get(usage::report))
        .route(
            "/v1/dashboard/billing/subscription",
            get(usage::subscription),
        )
        .route("/admin/keys", post(admin::create).get(admin::list))
        .route("/admin/keys/{key}", patch(admin::update))
        .route("/admin/keys/{key}/rotate", post(admin::rotate))
        .route("/admin/keys/{key}/revoke", post(admin::revoke))
        .route("/admin/keys/{key}/topup", post(admin::top_up))
        .route("/admin/usage", get(admin::usage))
        .route("/admin/deployments", get(admin::deployments))
        .route("/v1/dashboard/requests", get(dashboard::requests))
        .route("/v1/dashboard/key/rotate", post(dashboard::rotate))
        .route_layer(middleware::from_fn_with_state(
            ManagementLimit::per_minute(state.limits.management_rpm),
            management_limit::limit,
        ));
    Router::new()
        .route("/v1/chat/completions", post(chat_completions::create))
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
        .merge(management)
        .merge(console::routes())
        .route("/healthz", get(|| async { "ok" }))
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .with_state(state)
        .layer(middleware::map_response(unbuffered_event_streams))
        .layer(CatchPanicLayer::custom(|_| {
            RestError(ApiError::new(
                ErrorKind::Internal,
                "The server had an error while processing your request",
            ))
            .into_response()
        }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(shed))
                .layer(LoadShedLayer::new())
                .layer(GlobalConcurrencyLimitLayer::new(max_in_flight)),
        )
        .layer(cors)
        .layer(middleware::from_fn(request_span::access_line))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span::make)
                .on_response(request_span::RecordStatus)
                .on_failure(request_span::body_failed),
        )
}

/// Marks every SSE answer (chat completions, Messages, Responses streams) `X-Accel-Buffering: no`,
/// so reverse proxies that buffer answers by default (nginx) pass each event through at once.
async fn unbuffered_event_streams(mut response: Response) -> Response {
    let is_event_stream = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_event_stream {
        response
            .headers_mut()
            .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    response
}

/// nginx's per-response switch for its proxy buffering.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The answer to a request the load shedder refused (the only error the layers below it raise).
async fn shed(error: BoxError) -> Response {
    if !error.is::<tower::load_shed::error::Overloaded>() {
        tracing::error!(error = %error, "unexpected middleware error");
    }
    let mut response = RestError(ApiError::new(
        ErrorKind::Unavailable,
        "The server is overloaded; try again shortly",
    ))
    .into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

async fn unknown_route(method: Method, uri: Uri) -> RestError {
    RestError(ApiError::new(
        ErrorKind::NotFound,
        format!("Unknown request URL: {method} {}", uri.path()),
    ))
}
