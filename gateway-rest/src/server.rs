//! Assembles a Tollgate process for one target (`serve --target`): `all` is the monolith, the
//! services wired to each other in-process through their gRPC interfaces (on the request path
//! their trait implementations called directly, `tollgate::caller`), REST on one listener and
//! the public gRPC API (with health and reflection; Admin too, guarded by the admin token) on
//! another; `rest`, `inference`, `catalog` and `billing` each serve their part and dial the
//! targets they call over the network (`[services]`), Metering only on the billing target's
//! internal listener, behind the peer token. Shutdown turns health NOT_SERVING, stops accepting,
//! lets in-flight requests finish (and every admitted request settle) within the grace period,
//! cuts and settles those still running when it ends, then flushes the ledger.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tollgate::{
    caller::{CatalogCaller, MeteringCaller},
    peer::PeerToken,
    transport::{GrpcTransport, dial_replicas, in_process},
    v1::{
        admin_server::AdminServer, billing_server::BillingServer, catalog_server::CatalogServer,
        inference_server::InferenceServer, metering_server::MeteringServer,
    },
};
use tollgate_billing::{AdminService, AdminToken, BillingOptions, BillingService, SharedLimits};
use tollgate_catalog::CatalogService;
use tollgate_inference::{InferenceService, Providers, SharedCooldown};
use tonic::{server::NamedService, service::Routes, transport::server::TcpIncoming};

use crate::{
    AppState, Runtime, app,
    app::RestLimits,
    config::{ServerConfig, ServiceUrls, ServicesConfig},
    health::{Dependency, Health},
    http_listener::{self, ListenerLimits},
    metrics_endpoint,
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
    Reflection(#[from] crate::reflection::ReflectionError),
    #[error("admin.token_env: {0}")]
    AdminToken(String),
    #[error("services.internal_token_env: {0}")]
    PeerToken(String),
    #[error("services.{0}: {1}")]
    Services(&'static str, String),
    #[error("redis: {0}")]
    Redis(String),
    #[error("the {0} listener is missing")]
    Listener(&'static str),
}

/// What `serve --target` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The monolith: every service in one process (REST and gRPC).
    All,
    /// The REST facade; dials inference, catalog and billing.
    Rest,
    /// tollgate.v1.Inference; dials catalog and metering.
    Inference,
    /// tollgate.v1.Catalog; dials nothing.
    Catalog,
    /// tollgate.v1.Billing and Admin, and the internal Metering; dials catalog (prices).
    Billing,
}

/// A listener a target serves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `[server] http_addr`: REST, `/livez`, `/readyz`.
    Http,
    /// `[server] grpc_addr`: the public gRPC services, gRPC health, reflection.
    Grpc,
    /// `[server] internal_grpc_addr`: Metering (peer token) and gRPC health.
    Internal,
    /// `[server] metrics_addr`: `/metrics`, `/livez`, `/readyz` of targets without REST.
    Metrics,
}

impl Listener {
    /// Its name in the `READY` line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Internal => "internal",
            Self::Metrics => "metrics",
        }
    }

    /// Its configured address.
    pub fn addr(self, server: &crate::config::ServerConfig) -> SocketAddr {
        match self {
            Self::Http => server.http_addr,
            Self::Grpc => server.grpc_addr,
            Self::Internal => server.internal_grpc_addr,
            Self::Metrics => server.metrics_addr,
        }
    }
}

impl Target {
    /// The listeners this target serves on.
    pub fn listeners(self) -> &'static [Listener] {
        match self {
            Self::All => &[Listener::Http, Listener::Grpc],
            Self::Rest => &[Listener::Http],
            Self::Inference | Self::Catalog => &[Listener::Grpc, Listener::Metrics],
            Self::Billing => &[Listener::Grpc, Listener::Internal, Listener::Metrics],
        }
    }
}

/// The bound listeners of a process, by kind.
#[derive(Debug, Default)]
pub struct Listeners(Vec<(Listener, TcpListener)>);

impl Listeners {
    /// Binds every listener `target` serves at its configured address.
    pub async fn bind(
        target: Target,
        server: &crate::config::ServerConfig,
    ) -> Result<Self, String> {
        let mut bound = Vec::new();
        for &listener in target.listeners() {
            let addr = listener.addr(server);
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} ({}): {e}", listener.name()))?;
            bound.push((listener, socket));
        }
        Ok(Self(bound))
    }

    /// Listeners bound elsewhere (tests).
    pub fn from_bound(bound: Vec<(Listener, TcpListener)>) -> Self {
        Self(bound)
    }

    fn take(&mut self, kind: Listener) -> Option<TcpListener> {
        let at = self.0.iter().position(|(k, _)| *k == kind)?;
        Some(self.0.remove(at).1)
    }

    fn addrs(&self) -> Result<Vec<(Listener, SocketAddr)>, std::io::Error> {
        self.0
            .iter()
            .map(|(kind, socket)| Ok((*kind, socket.local_addr()?)))
            .collect()
    }
}

/// The services of one monolithic process.
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

/// The admin token of the inference target, which only `ListDeploymentHealth` needs: a pod not
/// given the variable starts with that call refused (deployments that hand the admin Secret to
/// rest and billing only keep starting); one given a bad token does not start.
fn inference_admin_token(
    runtime: &Runtime,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AdminToken>, ServeError> {
    if let Some(name) = &runtime.admin.token_env
        && env(name).is_none()
    {
        tracing::info!(
            env = %name,
            "the admin token is not set: Inference.ListDeploymentHealth is refused here"
        );
        return Ok(None);
    }
    admin_token(runtime, env)
}

/// The peer token named by `[services] internal_token_env`: required by the targets on either
/// side of Metering (billing serves it, inference calls it).
fn peer_token(
    runtime: &Runtime,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PeerToken, ServeError> {
    let name = runtime
        .services
        .internal_token_env
        .as_ref()
        .ok_or_else(|| {
            ServeError::PeerToken(
                "name the environment variable of the shared internal token Metering demands"
                    .to_owned(),
            )
        })?;
    let token = env(name).ok_or_else(|| ServeError::PeerToken(format!("{name} is not set")))?;
    PeerToken::new(&token).map_err(|e| ServeError::PeerToken(format!("{name}: {e}")))
}

/// A network transport to the target `[services] <name>` names, balanced over its replicas.
fn dial_service(
    name: &'static str,
    urls: Option<&ServiceUrls>,
    services: &ServicesConfig,
) -> Result<GrpcTransport, ServeError> {
    let urls = urls.ok_or_else(|| {
        ServeError::Services(
            name,
            "this target calls it: give its http://host:port".to_owned(),
        )
    })?;
    dial_replicas(
        urls.urls(),
        Duration::from_secs(services.resolve_interval_secs),
    )
    .map_err(|e| ServeError::Services(name, e.to_string()))
}

/// The gRPC service name health and readiness use for `S`.
fn name_of<S: NamedService>() -> &'static str {
    S::NAME
}

/// Connects the database (running migrations) and Redis when configured.
async fn datastores(
    runtime: &Runtime,
) -> Result<(sea_orm::DatabaseConnection, Option<SharedLimits>), ServeError> {
    let db = tollgate_billing::connect(&runtime.database).await?;
    tollgate_billing::migrate(&db).await?;
    let shared_limits = match &runtime.redis {
        Some(redis) => Some(SharedLimits::connect(redis).await?),
        None => None,
    };
    Ok((db, shared_limits))
}

/// Inference with its deployment cooldowns shared through `[redis]` when configured (the
/// monolith and the inference target read the same table as billing).
fn share_cooldowns(
    inference: InferenceService,
    runtime: &Runtime,
) -> Result<InferenceService, ServeError> {
    let Some(redis) = &runtime.redis else {
        return Ok(inference);
    };
    let shared = SharedCooldown::connect(&redis.url, &redis.key_prefix)
        .map_err(|e| ServeError::Redis(e.to_string()))?;
    Ok(inference.with_shared_cooldown(shared))
}

/// Starts Billing on `db`, taking prices from the Catalog that `catalog` reaches.
async fn start_billing(
    runtime: &Runtime,
    db: sea_orm::DatabaseConnection,
    shared_limits: Option<SharedLimits>,
    catalog: GrpcTransport,
) -> Result<BillingService, ServeError> {
    Ok(BillingService::with_options(
        db,
        runtime.tiers.clone(),
        catalog,
        BillingOptions {
            key_refresh_interval: Duration::from_millis(runtime.server.key_refresh_ms),
            shared_limits,
            ..BillingOptions::default()
        },
    )
    .await?)
}

impl Services {
    /// Connects the database (running migrations) and wires the services together in-process.
    pub async fn start(
        runtime: &Runtime,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ServeError> {
        Ok(Self::start_with(runtime, env).await?.0)
    }

    async fn start_with(
        runtime: &Runtime,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Self, Vec<Dependency>), ServeError> {
        let admin_token = admin_token(runtime, env)?;
        let (db, shared_limits) = datastores(runtime).await?;
        let dependencies = datastore_dependencies(&db, shared_limits.as_ref());
        let catalog = CatalogService::new(runtime.catalog.clone());
        // Billing prices requests from the catalogue itself, never from what Admit or Settle say.
        let billing = start_billing(
            runtime,
            db.clone(),
            shared_limits,
            in_process(CatalogServer::new(catalog.clone())),
        )
        .await?;
        let providers = Providers::new(&runtime.providers, &runtime.images, env)?;
        let inference = InferenceService::new(
            providers,
            CatalogCaller::direct(catalog.clone()),
            // Metering is internal: in-process only, never on the public listener.
            MeteringCaller::direct(billing.clone()),
        )
        .with_max_message_bytes(runtime.server.max_message_bytes)
        .with_client_policy(runtime.server.client_policy())
        .with_routing(runtime.routing)
        .with_admin_token(admin_token.clone());
        let inference = share_cooldowns(inference, runtime)?;
        let admin = AdminService::new(
            db,
            runtime.tiers.clone(),
            admin_token,
            in_process(MeteringServer::new(billing.clone())),
        );
        let services = Self {
            inference,
            catalog,
            billing,
            admin,
        };
        Ok((services, dependencies))
    }

    /// The Inference gRPC server of this process ([`inference_server`]).
    pub fn inference_server(&self) -> InferenceServer<InferenceService> {
        inference_server(&self.inference)
    }

    /// The REST facade's state: clients of these services, called in-process (Inference and the
    /// key check through their trait implementations, with no encoding).
    pub fn app_state(&self, server: &ServerConfig) -> AppState {
        AppState::new(
            in_process(self.inference_server()),
            in_process(CatalogServer::new(self.catalog.clone())),
            in_process(BillingServer::new(self.billing.clone())),
            in_process(AdminServer::new(self.admin.clone())),
            RestLimits::from_config(server),
        )
        .calling_directly(self.inference.clone(), self.billing.clone())
    }
}

fn datastore_dependencies(
    db: &sea_orm::DatabaseConnection,
    shared_limits: Option<&SharedLimits>,
) -> Vec<Dependency> {
    let mut dependencies = vec![Dependency::Database(db.clone())];
    dependencies.extend(shared_limits.cloned().map(Dependency::Redis));
    dependencies
}

/// What one target runs: its gRPC services by listener, its REST facade, the service names its
/// health reports, what it depends on, and what its shutdown waits for.
#[derive(Default)]
struct Assembly {
    public: Option<Routes>,
    internal: Option<Routes>,
    rest: Option<AppState>,
    services: Vec<&'static str>,
    dependencies: Vec<Dependency>,
    inference: Option<InferenceService>,
    billing: Option<BillingService>,
}

impl Assembly {
    async fn new(
        target: Target,
        runtime: &Runtime,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ServeError> {
        let services = &runtime.services;
        match target {
            Target::All => {
                let (services, dependencies) = Services::start_with(runtime, env).await?;
                let mut routes = Routes::builder();
                routes
                    .add_service(services.inference_server())
                    .add_service(CatalogServer::new(services.catalog.clone()))
                    .add_service(BillingServer::new(services.billing.clone()))
                    .add_service(AdminServer::new(services.admin.clone()));
                Ok(Self {
                    public: Some(routes.routes()),
                    rest: Some(services.app_state(&runtime.server)),
                    services: vec![
                        name_of::<InferenceServer<InferenceService>>(),
                        name_of::<CatalogServer<CatalogService>>(),
                        name_of::<BillingServer<BillingService>>(),
                        name_of::<AdminServer<AdminService>>(),
                    ],
                    dependencies,
                    inference: Some(services.inference),
                    billing: Some(services.billing),
                    ..Self::default()
                })
            }
            Target::Rest => {
                let inference = dial_service("inference", services.inference.as_ref(), services)?;
                let catalog = dial_service("catalog", services.catalog.as_ref(), services)?;
                let billing = dial_service("billing", services.billing.as_ref(), services)?;
                let dependencies = vec![
                    Dependency::Peer {
                        name: "inference",
                        service: name_of::<InferenceServer<InferenceService>>(),
                        transport: inference.clone(),
                    },
                    Dependency::Peer {
                        name: "catalog",
                        service: name_of::<CatalogServer<CatalogService>>(),
                        transport: catalog.clone(),
                    },
                    Dependency::Peer {
                        name: "billing",
                        service: name_of::<BillingServer<BillingService>>(),
                        transport: billing.clone(),
                    },
                ];
                Ok(Self {
                    // Billing and Admin share the billing target's public listener.
                    rest: Some(AppState::new(
                        inference,
                        catalog,
                        billing.clone(),
                        billing,
                        RestLimits::from_config(&runtime.server),
                    )),
                    dependencies,
                    ..Self::default()
                })
            }
            Target::Inference => {
                let token = peer_token(runtime, env)?;
                let catalog = dial_service("catalog", services.catalog.as_ref(), services)?;
                let metering = dial_service("metering", services.metering.as_ref(), services)?;
                let providers = Providers::new(&runtime.providers, &runtime.images, env)?;
                let inference = InferenceService::new(
                    providers,
                    catalog.clone(),
                    token.attach(metering.clone()),
                )
                .with_max_message_bytes(runtime.server.max_message_bytes)
                .with_client_policy(runtime.server.client_policy())
                .with_routing(runtime.routing)
                .with_admin_token(inference_admin_token(runtime, env)?);
                let inference = share_cooldowns(inference, runtime)?;
                let mut routes = Routes::builder();
                routes.add_service(inference_server(&inference));
                Ok(Self {
                    public: Some(routes.routes()),
                    services: vec![name_of::<InferenceServer<InferenceService>>()],
                    dependencies: vec![
                        Dependency::Peer {
                            name: "catalog",
                            service: name_of::<CatalogServer<CatalogService>>(),
                            transport: catalog,
                        },
                        Dependency::Peer {
                            name: "metering",
                            service: name_of::<MeteringServer<BillingService>>(),
                            transport: metering,
                        },
                    ],
                    inference: Some(inference),
                    ..Self::default()
                })
            }
            Target::Catalog => {
                let catalog = CatalogService::new(runtime.catalog.clone());
                let mut routes = Routes::builder();
                routes.add_service(CatalogServer::new(catalog));
                Ok(Self {
                    public: Some(routes.routes()),
                    services: vec![name_of::<CatalogServer<CatalogService>>()],
                    ..Self::default()
                })
            }
            Target::Billing => {
                let token = peer_token(runtime, env)?;
                let admin_token = admin_token(runtime, env)?;
                let catalog = dial_service("catalog", services.catalog.as_ref(), services)?;
                let (db, shared_limits) = datastores(runtime).await?;
                let mut dependencies = datastore_dependencies(&db, shared_limits.as_ref());
                dependencies.push(Dependency::Peer {
                    name: "catalog",
                    service: name_of::<CatalogServer<CatalogService>>(),
                    transport: catalog.clone(),
                });
                let billing = start_billing(runtime, db.clone(), shared_limits, catalog).await?;
                let admin = AdminService::new(
                    db,
                    runtime.tiers.clone(),
                    admin_token,
                    in_process(MeteringServer::new(billing.clone())),
                );
                let mut public = Routes::builder();
                public
                    .add_service(BillingServer::new(billing.clone()))
                    .add_service(AdminServer::new(admin));
                let mut internal = Routes::builder();
                internal.add_service(MeteringServer::with_interceptor(
                    billing.clone(),
                    move |request| token.check(request),
                ));
                Ok(Self {
                    public: Some(public.routes()),
                    internal: Some(internal.routes()),
                    services: vec![
                        name_of::<BillingServer<BillingService>>(),
                        name_of::<AdminServer<AdminService>>(),
                        name_of::<MeteringServer<BillingService>>(),
                    ],
                    dependencies,
                    billing: Some(billing),
                    ..Self::default()
                })
            }
        }
    }
}

/// The services of `services` (every one a target serves) on its gRPC listener `kind`: Metering
/// alone on the internal listener, everything else on the public one.
fn served_on(kind: Listener, services: &[&'static str]) -> Vec<&'static str> {
    let metering = name_of::<MeteringServer<BillingService>>();
    services
        .iter()
        .copied()
        .filter(|&name| (name == metering) == (kind == Listener::Internal))
        .collect()
}

/// A future that resolves once `stop` turns true.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves `routes` with gRPC health and reflection on the gRPC listener `kind` until `stop`;
/// `services` are every service the target serves (each listener's reflection lists its own).
/// The public listener also answers grpc-web (HTTP/1.1 included) for browsers, within the
/// configured CORS origins; the internal one speaks native gRPC only. Each call has its server
/// span (`grpc_span`), under the caller's trace context.
fn serve_grpc(
    listener: TcpListener,
    kind: Listener,
    routes: Routes,
    services: &[&'static str],
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    server: &ServerConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, ServeError> {
    let routes = crate::reflection::add_to(routes.add_service(health), &served_on(kind, services))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let builder = grpc_server_builder(server);
    Ok(if kind == Listener::Internal {
        tokio::spawn(
            builder
                .layer(crate::grpc_span::layer())
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stopped(stop)),
        )
    } else {
        tokio::spawn(
            builder
                .accept_http1(true)
                .layer(server.cors_allowed_origins.grpc_web_layer())
                .layer(tonic_web::GrpcWebLayer::new())
                // Inside grpc-web's translation: the span sees native gRPC trailers.
                .layer(crate::grpc_span::layer())
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stopped(stop)),
        )
    })
}

/// Serves `router` on `listener` within the listener bounds of `server` until `stop`.
fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    server: &ServerConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(http_listener::serve(
        listener,
        router,
        ListenerLimits::from_config(server),
        stopped(stop),
    ))
}

/// `router` with `GET /metrics` when the process has its metrics recorder: the REST listener
/// serves it, or `metrics_addr` for the targets without REST.
fn with_metrics(router: axum::Router, metrics: Option<metrics_endpoint::Metrics>) -> axum::Router {
    match metrics {
        Some(metrics) => router.merge(metrics_endpoint::routes(metrics)),
        None => router,
    }
}

/// Runs `target` on `listeners` (those [`Target::listeners`] names) until `shutdown` resolves.
/// `ready` is called with the bound addresses once every listener serves.
pub async fn serve(
    runtime: Runtime,
    target: Target,
    mut listeners: Listeners,
    env: &dyn Fn(&str) -> Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(&[(Listener, SocketAddr)]),
) -> Result<(), ServeError> {
    // Before the services are built: they register their metric handles as they start.
    let metrics = metrics_endpoint::install(&runtime.telemetry);
    let assembly = Assembly::new(target, &runtime, env).await?;
    let addrs = listeners.addrs()?;
    let grace = Duration::from_secs(runtime.server.shutdown_grace_secs);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, assembly.services.clone(), assembly.dependencies).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut grpc_tasks = Vec::new();
    let mut http_tasks = Vec::new();
    for (kind, routes) in [
        (Listener::Grpc, assembly.public),
        (Listener::Internal, assembly.internal),
    ] {
        if let Some(routes) = routes {
            let listener = listeners
                .take(kind)
                .ok_or(ServeError::Listener(kind.name()))?;
            grpc_tasks.push(serve_grpc(
                listener,
                kind,
                routes,
                &assembly.services,
                health_service.clone(),
                &runtime.server,
                stop_rx.clone(),
            )?);
        }
    }
    let probes = with_metrics(health.routes(), metrics);
    let (kind, router) = match assembly.rest {
        Some(state) => (Listener::Http, app(state).merge(probes)),
        None => (Listener::Metrics, probes),
    };
    let listener = listeners
        .take(kind)
        .ok_or(ServeError::Listener(kind.name()))?;
    http_tasks.push(serve_http(
        listener,
        router,
        &runtime.server,
        stop_rx.clone(),
    ));
    ready(&addrs);

    shutdown.await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining in-flight requests"
    );
    health.drain().await;
    let _ = stop_tx.send(true);
    // Connections first, then admitted requests that outlive theirs (a stream whose client left
    // is read on to the upstream's usage): all are settled before the ledger closes.
    let drained = tokio::time::timeout(grace, async {
        for task in grpc_tasks {
            if let Ok(Err(e)) = task.await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }
        for task in http_tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }
        if let Some(inference) = &assembly.inference {
            inference.drained().await;
        }
    })
    .await;
    if drained.is_err()
        && let Some(inference) = &assembly.inference
    {
        cut_and_settle(inference).await;
    }
    if let Some(billing) = &assembly.billing {
        billing.shutdown().await;
    }
    Ok(())
}

/// How long, once the grace period is over, the cut requests have to settle before the process
/// exits anyway (a settlement waits at most for the ledger's group commit and its retries).
const SETTLE_CUT_WITHIN: Duration = Duration::from_secs(15);

/// Ends a shutdown whose grace period is over: cuts every request still running (each closes
/// its upstream and is settled at what it has, estimated where the upstream never sent a final
/// count) and waits for their settlements, so nothing admitted is left unsettled.
async fn cut_and_settle(inference: &InferenceService) {
    tracing::warn!("grace period over; cutting the remaining requests and settling them");
    inference.cut_running();
    if tokio::time::timeout(SETTLE_CUT_WITHIN, inference.drained())
        .await
        .is_err()
    {
        tracing::error!("cut requests still unsettled after the settle window; exiting anyway");
    }
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

/// The Inference gRPC server, its messages (requests and answers) limited to
/// `server.max_message_bytes` both ways, as its clients' are.
fn inference_server(inference: &InferenceService) -> InferenceServer<InferenceService> {
    let limit = inference.max_message_bytes();
    InferenceServer::new(inference.clone())
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}
