//! The one set-up of the billing tests: [`Harness::sqlite`] (a SQLite file in a temp dir the
//! harness owns) or [`Setup::postgres`], the services behind a real tonic server on 127.0.0.1:0,
//! generated clients connected to it, and the catalogue billing takes its prices from (a Catalog
//! service over the contract, in-process, as in `tollgate serve`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tollgate::error::ApiError;
use tollgate::transport::in_process;
use tollgate::v1::admin_client::AdminClient;
use tollgate::v1::admin_server::AdminServer;
use tollgate::v1::billing_client::BillingClient;
use tollgate::v1::billing_server::BillingServer;
use tollgate::v1::catalog_server::{Catalog, CatalogServer};
use tollgate::v1::metering_client::MeteringClient;
use tollgate::v1::metering_server::MeteringServer;
use tollgate::v1::{
    GetModelRequest, ListModelsRequest, ListModelsResponse, Model, Pricing, ResolveModelRequest,
    ResolvedModel,
};
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
        max_concurrent_streams: None,
    }
}

/// The admin token every harness's Admin service accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Long enough that the key-refresh poll never runs during a test that relies on something else.
pub const NO_REFRESH: Duration = Duration::from_secs(3600);

pub fn tiers(list: Vec<TierConfig>) -> Tiers {
    Tiers::new(list).unwrap()
}

/// Opens (and migrates) the database at `url`.
pub async fn connect(url: String) -> DatabaseConnection {
    let db = tollgate_billing::connect(&DatabaseConfig::at(url))
        .await
        .unwrap();
    tollgate_billing::migrate(&db).await.unwrap();
    db
}

/// The PostgreSQL database of the `--ignored` tests (`scripts/test.sh` starts one).
pub async fn postgres() -> DatabaseConnection {
    let Ok(url) = std::env::var("TOLLGATE_TEST_POSTGRES_URL") else {
        panic!("set TOLLGATE_TEST_POSTGRES_URL to a PostgreSQL database to run this test");
    };
    connect(url).await
}

/// deepseek-v4-flash: 0.22 in, 0.005 cached, 0.44 out (USD per 1M tokens), cache writes at the
/// input price.
pub const FLASH: Pricing = Pricing {
    input_micros_per_mtok: 220_000,
    cached_input_micros_per_mtok: 5_000,
    output_micros_per_mtok: 440_000,
    cache_write_micros_per_mtok: 220_000,
};

/// deepseek-v4-pro: 0.55 in, 0.14 cached, 2.19 out.
pub const PRO: Pricing = Pricing {
    input_micros_per_mtok: 550_000,
    cached_input_micros_per_mtok: 140_000,
    output_micros_per_mtok: 2_190_000,
    cache_write_micros_per_mtok: 550_000,
};

/// An alias in the harness catalogue (of `deepseek-v4-flash`): not a model, so not priced.
pub const ALIAS: &str = "deepseek-chat";

/// What a harness runs: its tiers, how often its service polls for key changes, and the models
/// of its catalogue with their prices.
#[derive(Debug, Clone)]
pub struct Setup {
    pub tiers: Vec<TierConfig>,
    pub refresh: Duration,
    pub models: BTreeMap<String, Pricing>,
}

impl Setup {
    /// `tiers`, no refresh poll during the test, and a catalogue of `deepseek-v4-flash` and
    /// `deepseek-v4-pro` (and the alias [`ALIAS`]).
    pub fn new(tiers: Vec<TierConfig>) -> Self {
        Self {
            tiers,
            refresh: NO_REFRESH,
            models: BTreeMap::from([
                ("deepseek-v4-flash".to_owned(), FLASH),
                ("deepseek-v4-pro".to_owned(), PRO),
            ]),
        }
    }

    /// Polls for key changes made by other processes every `interval`.
    pub fn refresh(mut self, interval: Duration) -> Self {
        self.refresh = interval;
        self
    }

    /// Adds the model `id` at `prices` to the catalogue.
    pub fn model(mut self, id: &str, prices: Pricing) -> Self {
        self.models.insert(id.to_owned(), prices);
        self
    }

    /// On a fresh SQLite file in a temp dir the harness owns.
    pub async fn sqlite(self) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let db = connect(sqlite_url(&dir)).await;
        Harness::start(db, self, Some(dir)).await
    }

    /// On the PostgreSQL database of the `--ignored` tests.
    pub async fn postgres(self) -> Harness {
        Harness::start(postgres().await, self, None).await
    }
}

fn sqlite_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("billing.db").display())
}

/// One running billing service (Billing, Metering and Admin on one tonic server) and clients of it.
pub struct Harness {
    pub db: DatabaseConnection,
    pub tiers: Tiers,
    pub service: BillingService,
    pub client: Clients,
    setup: Setup,
    /// The SQLite file's folder; `None` on PostgreSQL.
    dir: Option<TempDir>,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Harness {
    /// A service with the one tier `tier` on a fresh SQLite file, no refresh poll.
    pub async fn sqlite(tier: TierConfig) -> Self {
        Setup::new(vec![tier]).sqlite().await
    }

    async fn start(db: DatabaseConnection, setup: Setup, dir: Option<TempDir>) -> Self {
        let tiers = tiers(setup.tiers.clone());
        let catalog = in_process(CatalogServer::new(TestCatalog(Arc::new(
            setup.models.clone(),
        ))));
        let service = BillingService::new(db.clone(), tiers.clone(), catalog, setup.refresh)
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
            setup,
            dir,
            stop_server: Some(stop_server),
            server: Some(server),
        }
    }

    /// The SQLite file (only for SQLite harnesses).
    pub fn db_path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("a SQLite harness")
            .path()
            .join("billing.db")
    }

    /// A second connection to the same database, as another process (the CLI) would open.
    pub async fn another_connection(&self) -> DatabaseConnection {
        match &self.dir {
            Some(dir) => connect(sqlite_url(dir)).await,
            None => postgres().await,
        }
    }

    /// Stops this service and starts a new one on the same database: a process restart.
    pub async fn restart(self) -> Self {
        let setup = self.setup.clone();
        self.restart_with(setup).await
    }

    /// A restart with another configuration (other tiers, another refresh interval).
    pub async fn restart_with(mut self, setup: Setup) -> Self {
        let dir = self.dir.take();
        self.stop().await;
        let db = match &dir {
            Some(dir) => connect(sqlite_url(dir)).await,
            None => postgres().await,
        };
        Self::start(db, setup, dir).await
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

/// The harness's catalogue: the Catalog contract over a fixed list of models and their prices,
/// plus [`ALIAS`], so billing reads prices exactly as it does from the real catalogue service.
#[derive(Debug, Clone)]
struct TestCatalog(Arc<BTreeMap<String, Pricing>>);

impl TestCatalog {
    fn model(&self, id: &str) -> Result<Model, tonic::Status> {
        let (model_id, alias_of) = if id == ALIAS {
            ("deepseek-v4-flash", Some("deepseek-v4-flash".to_owned()))
        } else {
            (id, None)
        };
        let pricing =
            self.0.get(model_id).copied().ok_or_else(|| {
                tonic::Status::not_found(format!("The model `{id}` does not exist"))
            })?;
        Ok(Model {
            id: id.to_owned(),
            pricing: Some(pricing),
            alias_of,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl Catalog for TestCatalog {
    async fn list_models(
        &self,
        _request: tonic::Request<ListModelsRequest>,
    ) -> Result<tonic::Response<ListModelsResponse>, tonic::Status> {
        let models = self
            .0
            .keys()
            .map(|id| self.model(id))
            .collect::<Result<_, _>>()?;
        Ok(tonic::Response::new(ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        request: tonic::Request<GetModelRequest>,
    ) -> Result<tonic::Response<Model>, tonic::Status> {
        self.model(&request.get_ref().id).map(tonic::Response::new)
    }

    async fn resolve_model(
        &self,
        request: tonic::Request<ResolveModelRequest>,
    ) -> Result<tonic::Response<ResolvedModel>, tonic::Status> {
        let model = self.model(&request.get_ref().id)?;
        Ok(tonic::Response::new(ResolvedModel {
            requested_id: model.id.clone(),
            model_id: model.alias_of.unwrap_or(model.id),
            pricing: model.pricing,
            ..Default::default()
        }))
    }
}

/// A late ledger row of the previous month (settled by a replica whose clock is behind, or
/// committed after the month turned) is added to the key's total but leaves this month's spend
/// and its month alone; a row of this month still adds to it. On `db`.
/// The rows name a key id of their own (the ledger and accounts need no key row), so the test
/// makes no key change another test's refresh poll could see.
pub async fn assert_a_late_row_keeps_the_months_spend(db: &DatabaseConnection) {
    use tollgate_billing::clock::Period;
    use tollgate_billing::ledger::{Ledger, LedgerRow, Outcome};

    let key_id = format!("key-late-{}", uuid::Uuid::now_v7().simple());
    let now = Period::current();
    let before = Period::of(chrono::Utc::now() - chrono::Duration::days(40));
    let (ledger, writer) = Ledger::start(tollgate_billing::db::writer(db).await.unwrap()).unwrap();
    let row = |n: u32, period: Period, cost: i64| LedgerRow {
        request_id: format!("chatcmpl-{key_id}-{n}"),
        key_id: key_id.clone(),
        requested_model: "deepseek-v4-flash".to_owned(),
        model_id: "deepseek-v4-flash".to_owned(),
        provider: "deepseek".to_owned(),
        upstream_model: "deepseek-v4-flash".to_owned(),
        prompt_tokens: 1,
        cached_prompt_tokens: 0,
        completion_tokens: 1,
        reasoning_tokens: 0,
        cache_write_tokens: 0,
        cost_picodollars: cost,
        outcome: Outcome::Succeeded,
        streamed: false,
        estimated: false,
        created_at: tollgate_billing::clock::now_ms(),
        period,
        deployment: None,
        attempts: None,
        may_hold_reservation: true,
    };
    ledger.record(row(1, now, 100)).await.unwrap();
    ledger.record(row(2, before, 7)).await.unwrap();
    ledger.record(row(3, now, 5)).await.unwrap();
    writer.shutdown().await;
    let account = tollgate_billing::accounts::account(db, &key_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            account.spent_period.as_str(),
            account.spent_month_picodollars,
            account.spent_total_picodollars
        ),
        (now.label().as_str(), 105, 112)
    );
    assert_eq!(account.spent_in(now), 105);
}
