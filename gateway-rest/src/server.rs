//! Assembles a monolithic Tollgate process: the services wired to each other in-process over
//! their gRPC interfaces, the REST facade on one listener and the gRPC API (with health and
//! reflection; Admin too, guarded by the admin token) on another. Shutdown stops accepting, lets
//! in-flight requests finish (and every admitted request settle) within the grace period, then
//! flushes the ledger.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tollgate::{
    transport::in_process,
    v1::{
        admin_server::AdminServer, billing_server::BillingServer, catalog_server::CatalogServer,
        inference_server::InferenceServer, metering_server::MeteringServer,
    },
};
use tollgate_billing::{AdminService, AdminToken, BillingOptions, BillingService, SharedLimits};
use tollgate_catalog::CatalogService;
use tollgate_inference::{InferenceService, Providers};
use tonic::transport::server::TcpIncoming;

use crate::{
    AppState, Runtime, app,
    app::RestLimits,
    config::ServerConfig,
    http_listener::{self, ListenerLimits},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("database: {0}")]
    Database(#[from] tollgate_billing::BillingError),
    #[error("cannot build the HTTP client of a provider: {0}")]
    Http(#[from] tollgate_inference::providers::BuildError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("admin.token_env: {0}")]
    AdminToken(String),
}

/// The services of one process.
#[derive(Debug, Clone)]
pub struct Services {
    pub inference: InferenceService,
    pub catalog: CatalogService,
    pub billing: BillingService,
    pub admin: AdminService,
}

/// The admin token named by `[admin] token_env`, read from `env`. A configured variable that is
/// unset or too short stops the start-up: an operator who asked for an Admin API gets one.
fn admin_token(
    runtime: &Runtime,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AdminToken>, ServeError> {
    let Some(name) = &runtime.admin.token_env else {
        return Ok(None);
    };
    let token = env(name).ok_or_else(|| ServeError::AdminToken(format!("{name} is not set")))?;
    AdminToken::new(&token)
        .map(Some)
        .map_err(|e| ServeError::AdminToken(format!("{name}: {e}")))
}

impl Services {
    /// Connects the database (running migrations) and wires the services together in-process.
    pub async fn start(
        runtime: &Runtime,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ServeError> {
        let admin_token = admin_token(runtime, env)?;
        let db = tollgate_billing::connect(&runtime.database).await?;
        tollgate_billing::migrate(&db).await?;
        let shared_limits = match &runtime.redis {
            Some(redis) => Some(SharedLimits::connect(redis).await?),
            None => None,
        };
        let catalog = CatalogService::new(runtime.catalog.clone());
        // Billing prices requests from the catalogue itself, never from what Admit or Settle say.
        let billing = BillingService::with_options(
            db.clone(),
            runtime.tiers.clone(),
            in_process(CatalogServer::new(catalog.clone())),
            BillingOptions {
                key_refresh_interval: Duration::from_millis(runtime.server.key_refresh_ms),
                shared_limits,
                ..BillingOptions::default()
            },
        )
        .await?;
        let providers = Providers::new(&runtime.providers, &runtime.images, env)?;
        let inference = InferenceService::new(
            providers,
            in_process(CatalogServer::new(catalog.clone())),
            // Metering is internal: in-process only, never on the public listener.
            in_process(MeteringServer::new(billing.clone())),
        )
        .with_max_message_bytes(runtime.server.max_message_bytes);
        let admin = AdminService::new(
            db,
            runtime.tiers.clone(),
            admin_token,
            in_process(MeteringServer::new(billing.clone())),
        );
        Ok(Self {
            inference,
            catalog,
            billing,
            admin,
        })
    }

    /// The Inference gRPC server, its messages (requests and answers) limited to
    /// `server.max_message_bytes` both ways, as its clients' are.
    pub fn inference_server(&self) -> InferenceServer<InferenceService> {
        let limit = self.inference.max_message_bytes();
        InferenceServer::new(self.inference.clone())
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// The REST facade's state: clients of these services, called in-process.
    pub fn app_state(&self, server: &ServerConfig) -> AppState {
        AppState::new(
            in_process(self.inference_server()),
            in_process(CatalogServer::new(self.catalog.clone())),
            in_process(BillingServer::new(self.billing.clone())),
            in_process(AdminServer::new(self.admin.clone())),
            RestLimits::from_config(server),
        )
    }
}

/// Runs the monolith on the given listeners until `shutdown` resolves. `ready` is called with the
/// bound addresses once both listeners serve.
pub async fn serve(
    runtime: Runtime,
    http: TcpListener,
    grpc: TcpListener,
    env: &dyn Fn(&str) -> Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr, SocketAddr),
) -> Result<(), ServeError> {
    let services = Services::start(&runtime, env).await?;
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    let grace = Duration::from_secs(runtime.server.shutdown_grace_secs);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<InferenceServer<InferenceService>>()
        .await;
    health.set_serving::<CatalogServer<CatalogService>>().await;
    health.set_serving::<BillingServer<BillingService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tollgate::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let grpc_server = grpc_server_builder(&runtime.server)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(services.inference_server())
        .add_service(CatalogServer::new(services.catalog.clone()))
        .add_service(BillingServer::new(services.billing.clone()))
        .add_service(AdminServer::new(services.admin.clone()))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(grpc).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let rest = app(services.app_state(&runtime.server));
    let http_server = http_listener::serve(
        http,
        rest,
        ListenerLimits::from_config(&runtime.server),
        stopped(stop_rx),
    );

    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(http_server);
    ready(http_addr, grpc_addr);

    shutdown.await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    // Connections first, then admitted requests that outlive theirs (a stream whose client left
    // is read on to the upstream's usage): all are settled before the ledger closes.
    let drained = tokio::time::timeout(grace, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        services.inference.drained().await;
        (grpc, http)
    })
    .await;
    match drained {
        Ok((grpc, http)) => {
            if let Ok(Err(e)) = grpc {
                tracing::error!(error = %e, "gRPC server failed");
            }
            if let Err(e) = http {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
        Err(_) => tracing::warn!("grace period over; abandoning the remaining requests"),
    }
    services.billing.shutdown().await;
    Ok(())
}

/// The public gRPC listener's bounds, from `[server]`: streams per HTTP/2 connection, the size
/// of a request's headers, and keep-alive pings that close dead connections. Each call's time is
/// bounded by inference's own deadlines (first token, whole request) and the caller's
/// `grpc-timeout`.
fn grpc_server_builder(server: &ServerConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_max_header_list_size(http_listener::MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(http_listener::HTTP2_KEEP_ALIVE))
        .http2_keepalive_timeout(Some(http_listener::HTTP2_KEEP_ALIVE))
        .tcp_keepalive(Some(http_listener::HTTP2_KEEP_ALIVE))
}
