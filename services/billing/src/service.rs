//! The billing service value: its shared state (database, tiers, key cache, price book, ledger,
//! shared limits), how it starts (releasing reservations left by requests that never settled)
//! and stops. It serves two gRPC APIs, each in its own module: the public `tollgate.v1.Billing`
//! ([`crate::billing_api`]) and the internal `tollgate.v1.Metering` ([`crate::metering`]); its
//! background work is [`crate::tasks`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, QuerySelect};
use tollgate::auth::AuthenticatedKey;
use tollgate::transport::GrpcTransport;
use tonic::Request;

use crate::accounts;
use crate::admissions::Admissions;
use crate::clock::now_ms;
use crate::config::Tiers;
use crate::entity::api_key;
use crate::error::BillingError;
use crate::keys::{ActiveKey, Authenticated, KeyCache, KeyRefresher};
use crate::ledger::Ledger;
use crate::pricing::PriceBook;
use crate::self_rotation::SelfRotations;
use crate::shared_limits::SharedLimits;
use crate::streams::OpenStreams;
use crate::tasks::{DEFAULT_KEY_REFRESH_INTERVAL, DEFAULT_SWEEP_INTERVAL, Tasks};

/// How a [`BillingService`] runs beyond its database and tiers.
#[derive(Debug, Clone)]
pub struct BillingOptions {
    /// How often `api_keys` is polled for changes made by other processes.
    pub key_refresh_interval: Duration,
    /// Per-minute windows and monthly counters in Redis, shared with other gateway processes;
    /// in memory when `None`.
    pub shared_limits: Option<SharedLimits>,
    /// How often reservations past their expiry (requests that never settled) are released.
    pub sweep_interval: Duration,
}

impl Default for BillingOptions {
    fn default() -> Self {
        Self {
            key_refresh_interval: DEFAULT_KEY_REFRESH_INTERVAL,
            shared_limits: None,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }
}

/// The billing service. Cheap to clone; clones share one cache, one ledger and one set of tasks.
#[derive(Clone)]
pub struct BillingService {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: DatabaseConnection,
    pub(crate) tiers: Tiers,
    pub(crate) keys: Arc<KeyCache>,
    pub(crate) prices: PriceBook,
    pub(crate) ledger: Ledger,
    pub(crate) shared_limits: Option<SharedLimits>,
    pub(crate) admissions: Admissions,
    pub(crate) streams: OpenStreams,
    pub(crate) self_rotations: SelfRotations,
    tasks: Mutex<Option<Tasks>>,
}

impl std::fmt::Debug for BillingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingService")
            .field("tiers", &self.inner.tiers)
            .field("cached_keys", &self.inner.keys.len())
            .finish_non_exhaustive()
    }
}

impl BillingService {
    /// Starts the service on a migrated database: spawns the ledger writer and a task that polls
    /// `api_keys` every `key_refresh_interval` (see [`DEFAULT_KEY_REFRESH_INTERVAL`]) and evicts
    /// keys changed by other processes. Prices come from the Catalog service `catalog` reaches.
    /// Fails when the schema is missing (run the migrations).
    pub async fn new(
        db: DatabaseConnection,
        tiers: Tiers,
        catalog: GrpcTransport,
        key_refresh_interval: Duration,
    ) -> Result<Self, BillingError> {
        Self::with_options(
            db,
            tiers,
            catalog,
            BillingOptions {
                key_refresh_interval,
                ..BillingOptions::default()
            },
        )
        .await
    }

    /// Starts the service with `options`. Before serving, it releases the reservations left by
    /// requests that never settled: on SQLite all of them (a SQLite database serves one gateway
    /// process, so none can belong to a live request), on PostgreSQL the expired ones (other
    /// replicas' requests may still be running); the sweep task releases the rest as they expire.
    pub async fn with_options(
        db: DatabaseConnection,
        tiers: Tiers,
        catalog: GrpcTransport,
        options: BillingOptions,
    ) -> Result<Self, BillingError> {
        api_key::Entity::find().limit(1).all(&db).await?;
        let stale_before = match db.get_database_backend() {
            DatabaseBackend::Sqlite => i64::MAX,
            _ => now_ms(),
        };
        let released = accounts::release_expired(&db, stale_before).await?;
        if released > 0 {
            tracing::warn!(
                released,
                "released reservations of requests that never settled"
            );
        }
        // Before any key is cached: every change after this point reaches the cache.
        let refresher = KeyRefresher::start(&db).await?;
        let keys = Arc::new(KeyCache::new());
        let writer = crate::db::writer(&db).await?;
        let (ledger, ledger_writer) = Ledger::start(writer)?;
        let tasks = Tasks::spawn(&db, &ledger, &keys, refresher, ledger_writer, &options);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                tiers,
                keys,
                prices: PriceBook::new(catalog),
                ledger,
                shared_limits: options.shared_limits,
                admissions: Admissions::default(),
                streams: OpenStreams::default(),
                self_rotations: SelfRotations::default(),
                tasks: Mutex::new(Some(tasks)),
            }),
        })
    }

    /// Stops the background tasks: the ledger commits every queued row first, then refuses new
    /// ones (`Settle` answers UNAVAILABLE afterwards). Idempotent.
    pub async fn shutdown(&self) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(tasks) = tasks {
            tasks.stop().await;
        }
    }

    /// The configured tiers.
    pub fn tiers(&self) -> &Tiers {
        &self.inner.tiers
    }

    /// The valid key the request's `authorization` metadata carries: looked up, or taken from
    /// the proof an earlier call of the same request left ([`AuthenticatedKey`]) while it holds.
    pub(crate) async fn authenticate_request<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Arc<ActiveKey>, BillingError> {
        let secret = tollgate::auth::api_key(request.metadata()).ok_or(BillingError::MissingKey)?;
        let earlier = request
            .extensions()
            .get::<AuthenticatedKey>()
            .and_then(|proof| proof.0.downcast_ref::<Authenticated>())
            .and_then(|proof| self.inner.keys.authenticated_before(proof, secret));
        match earlier {
            Some(answer) => answer,
            None => {
                self.inner
                    .keys
                    .authenticate(&self.inner.db, &self.inner.tiers, secret)
                    .await
            }
        }
    }

    /// [`Self::authenticate_request`], and the proof of it ([`AuthenticatedKey`]) the request's
    /// next call in this process carries so the key is not looked up again.
    pub(crate) async fn authenticate_request_once<T>(
        &self,
        request: &Request<T>,
    ) -> Result<(Arc<ActiveKey>, AuthenticatedKey), BillingError> {
        let secret = tollgate::auth::api_key(request.metadata()).ok_or(BillingError::MissingKey)?;
        let (key, proof) = self
            .inner
            .keys
            .authenticate_once(&self.inner.db, &self.inner.tiers, secret)
            .await?;
        Ok((key, AuthenticatedKey(Arc::new(proof))))
    }
}
