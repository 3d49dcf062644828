//! Shared set-up of the billing service tests: a SQLite file in a temp dir, the service behind a
//! real tonic server on 127.0.0.1:0, and a generated client connected to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate::error::ApiError;
use tollgate::transport::in_process;
use tollgate::v1::admin_client::AdminClient;
use tollgate::v1::admin_server::AdminServer;
use tollgate::v1::billing_client::BillingClient;
use tollgate::v1::billing_server::BillingServer;
use tollgate::v1::metering_client::MeteringClient;
use tollgate::v1::metering_server::MeteringServer;
use tollgate_billing::{
    AdminService, AdminToken, BillingService, DatabaseConfig, TierConfig, Tiers,
};
use tonic::transport::Channel;

pub fn tier(name: &str, rpm: u32, monthly_requests: u64) -> TierConfig {
    TierConfig {
        name: name.to_owned(),
        rpm,
        monthly_requests,
        models: None,
    }
}

/// The admin token every harness's Admin service accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn tiers(list: Vec<TierConfig>) -> Tiers {
    Tiers::new(list).unwrap()
}

pub async fn open_db(path: &Path) -> DatabaseConnection {
    let db = tollgate_billing::connect(&DatabaseConfig {
        url: format!("sqlite://{}", path.display()),
    })
    .await
    .unwrap();
    tollgate_billing::migrate(&db).await.unwrap();
    db
}

/// One running billing service and a client of it.
pub struct Harness {
    pub db: DatabaseConnection,
    pub tiers: Tiers,
    pub service: BillingService,
    pub client: Clients,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Harness {
    pub async fn start(db_path: &Path, tiers: Tiers, refresh: Duration) -> Self {
        Self::start_on(open_db(db_path).await, tiers, refresh).await
    }

    /// Starts on an open, migrated database (PostgreSQL tests).
    pub async fn start_on(db: DatabaseConnection, tiers: Tiers, refresh: Duration) -> Self {
        let service = BillingService::new(db.clone(), tiers.clone(), refresh)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_server, stopped) = oneshot::channel::<()>();
        // Admin reaches this service's cache through Metering, in-process, as in `tollgate serve`.
        let admin = AdminService::new(
            db.clone(),
            tiers.clone(),
            Some(AdminToken::new(ADMIN_TOKEN).unwrap()),
            in_process(MeteringServer::new(service.clone())),
        );
        let server = tokio::spawn({
            let service = service.clone();
            async move {
                tonic::transport::Server::builder()
                    .add_service(AdminServer::new(admin))
                    .add_service(BillingServer::new(service.clone()))
                    .add_service(MeteringServer::new(service))
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Self {
            db,
            tiers,
            service,
            client: Clients {
                metering: MeteringClient::new(channel.clone()),
                admin: AdminClient::new(channel.clone()),
                billing: BillingClient::new(channel),
            },
            stop_server: Some(stop_server),
            server: Some(server),
        }
    }

    /// The key's usage report, through the public `Billing.GetUsage`.
    pub async fn usage(&self, secret: &str) -> tollgate::v1::UsageReport {
        self.client
            .clone()
            .get_usage(with_key(tollgate::v1::GetUsageRequest::default(), secret))
            .await
            .unwrap()
            .into_inner()
    }

    /// Stops the server and the service (flushing the ledger).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
        self.service.shutdown().await;
    }
}

/// A request carrying `authorization: Bearer <secret>`.
pub fn with_key<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    assert!(tollgate::auth::set_api_key(request.metadata_mut(), secret));
    request
}

/// The machine-readable `code` of a status built from the error table.
pub fn error_code(status: &tonic::Status) -> Option<String> {
    ApiError::from_status(status).code
}

/// The `param` (field) of a status built from the error table.
#[allow(dead_code)] // Not every test binary that includes this module uses it.
pub fn error_param(status: &tonic::Status) -> Option<String> {
    ApiError::from_status(status).param
}

/// Polls `check` until it holds or `deadline` passes; true when it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Clients of the billing services (the public `Billing`, the internal `Metering`; `Admin` is
/// reached through its own field), so a test calls every RPC on one value.
#[derive(Clone)]
pub struct Clients {
    pub metering: MeteringClient<Channel>,
    pub billing: BillingClient<Channel>,
    pub admin: AdminClient<Channel>,
}

impl Clients {
    pub async fn authenticate(
        &mut self,
        request: impl tonic::IntoRequest<tollgate::v1::AuthenticateRequest>,
    ) -> Result<tonic::Response<tollgate::v1::KeyInfo>, tonic::Status> {
        self.metering.authenticate(request).await
    }

    pub async fn admit(
        &mut self,
        request: impl tonic::IntoRequest<tollgate::v1::AdmitRequest>,
    ) -> Result<tonic::Response<tollgate::v1::Admission>, tonic::Status> {
        self.metering.admit(request).await
    }

    pub async fn settle(
        &mut self,
        request: impl tonic::IntoRequest<tollgate::v1::SettleRequest>,
    ) -> Result<tonic::Response<tollgate::v1::Settlement>, tonic::Status> {
        self.metering.settle(request).await
    }

    pub async fn invalidate_key(
        &mut self,
        request: impl tonic::IntoRequest<tollgate::v1::InvalidateKeyRequest>,
    ) -> Result<tonic::Response<tollgate::v1::InvalidateKeyResponse>, tonic::Status> {
        self.metering.invalidate_key(request).await
    }

    pub async fn get_usage(
        &mut self,
        request: impl tonic::IntoRequest<tollgate::v1::GetUsageRequest>,
    ) -> Result<tonic::Response<tollgate::v1::UsageReport>, tonic::Status> {
        self.billing.get_usage(request).await
    }
}
