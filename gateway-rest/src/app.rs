//! The REST router and its middleware stack, in order, in one place.

use axum::{
    Router,
    http::{Method, Uri},
    response::IntoResponse,
    routing::{get, patch, post},
};
use tollgate::{
    error::{ApiError, ErrorKind},
    transport::GrpcTransport,
    v1::{
        admin_client::AdminClient, billing_client::BillingClient, catalog_client::CatalogClient,
        inference_client::InferenceClient,
    },
};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{admin, chat_completions, error::RestError, messages, models, responses, usage};

/// What every handler needs: gRPC clients of the services and the body limit.
#[derive(Debug, Clone)]
pub struct AppState {
    pub inference: InferenceClient<GrpcTransport>,
    pub catalog: CatalogClient<GrpcTransport>,
    pub billing: BillingClient<GrpcTransport>,
    pub admin: AdminClient<GrpcTransport>,
    pub max_body_bytes: usize,
}

impl AppState {
    pub fn new(
        inference: GrpcTransport,
        catalog: GrpcTransport,
        billing: GrpcTransport,
        admin: GrpcTransport,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            inference: InferenceClient::new(inference),
            catalog: CatalogClient::new(catalog),
            billing: BillingClient::new(billing),
            admin: AdminClient::new(admin),
            max_body_bytes,
        }
    }
}

/// The OpenAI-compatible API, and key administration under `/admin` (admin token, not API keys).
/// Layers, outermost first: tracing, then panics → 500 in the product's error format.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions::create))
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
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
        .route("/healthz", get(|| async { "ok" }))
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_route)
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| {
            RestError(ApiError::new(
                ErrorKind::Internal,
                "The server had an error while processing your request",
            ))
            .into_response()
        }))
        .layer(TraceLayer::new_for_http())
}

async fn unknown_route(method: Method, uri: Uri) -> RestError {
    RestError(ApiError::new(
        ErrorKind::NotFound,
        format!("Unknown request URL: {method} {}", uri.path()),
    ))
}
