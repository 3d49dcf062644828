//! The billing service's background work: the key-refresh poll (evicting keys other processes
//! changed from the cache), the sweep of reservations whose request never settled and, on a
//! SQLite file, the WAL checkpoint, plus the ledger writer they are stopped with.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::db;
use crate::keys::{KeyCache, KeyRefresher};
use crate::ledger::{Ledger, LedgerWriter};
use crate::service::BillingOptions;

/// How often a service polls `api_keys` for changes made elsewhere, unless told otherwise.
pub const DEFAULT_KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest accepted refresh or sweep interval.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// How often expired reservations are released, unless told otherwise.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often a SQLite file's WAL is checkpointed in the background ([`crate::db::checkpoint_wal`]).
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The running background tasks of one service.
pub(crate) struct Tasks {
    ledger_writer: LedgerWriter,
    /// Dropping or signalling it ends the refresh and sweep tasks.
    stop: watch::Sender<bool>,
    refresh: JoinHandle<()>,
    sweep: JoinHandle<()>,
    /// On a SQLite file.
    checkpoint: Option<JoinHandle<()>>,
}

impl Tasks {
    /// Spawns the refresh poll (from `refresher`, started before any key was cached) and the
    /// sweep (through `ledger`, on its writer's connection) beside the already running
    /// `ledger_writer`.
    pub(crate) fn spawn(
        db: &DatabaseConnection,
        ledger: &Ledger,
        keys: &Arc<KeyCache>,
        refresher: KeyRefresher,
        ledger_writer: LedgerWriter,
        options: &BillingOptions,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let refresh = tokio::spawn(refresh_keys(
            db.clone(),
            Arc::clone(keys),
            refresher,
            options.key_refresh_interval.max(MIN_INTERVAL),
            stopped.clone(),
        ));
        let sweep = tokio::spawn(sweep_reservations(
            ledger.clone(),
            options.sweep_interval.max(MIN_INTERVAL),
            stopped.clone(),
        ));
        let checkpoint = db::sqlite_file(db)
            .is_some()
            .then(|| tokio::spawn(checkpoint_wal(db.clone(), WAL_CHECKPOINT_INTERVAL, stopped)));
        Self {
            ledger_writer,
            stop,
            refresh,
            sweep,
            checkpoint,
        }
    }

    /// Stops the tasks: the ledger commits every queued row first, then refuses new ones.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        self.ledger_writer.shutdown().await;
        if let Err(err) = self.refresh.await {
            tracing::error!(error = %err, "key refresh task panicked");
        }
        if let Err(err) = self.sweep.await {
            tracing::error!(error = %err, "reservation sweep task panicked");
        }
        if let Some(checkpoint) = self.checkpoint
            && let Err(err) = checkpoint.await
        {
            tracing::error!(error = %err, "WAL checkpoint task panicked");
        }
    }
}

/// The ticks of a periodic task: one every `interval` (late ticks are delayed, not bunched) until
/// the service signals stop or is dropped.
struct Ticks {
    ticker: tokio::time::Interval,
    stop: watch::Receiver<bool>,
}

impl Ticks {
    fn new(interval: Duration, stop: watch::Receiver<bool>) -> Self {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ticker, stop }
    }

    /// Waits for the next tick; false once the task must stop.
    async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => true,
            _ = self.stop.changed() => false,
        }
    }
}

/// Releases expired reservations every `interval` until told to stop.
async fn sweep_reservations(ledger: Ledger, interval: Duration, stop: watch::Receiver<bool>) {
    let mut ticks = Ticks::new(interval, stop);
    while ticks.next().await {
        match ledger.release_expired(now_ms()).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::warn!(
                    released,
                    "released expired reservations of unsettled requests"
                )
            }
            Err(err) => tracing::warn!(error = %err, "sweeping reservations failed"),
        }
    }
}

/// Checkpoints a SQLite file's WAL every `interval` until told to stop.
async fn checkpoint_wal(db: DatabaseConnection, interval: Duration, stop: watch::Receiver<bool>) {
    let mut ticks = Ticks::new(interval, stop);
    while ticks.next().await {
        if let Err(err) = db::checkpoint_wal(&db).await {
            tracing::warn!(error = %err, "checkpointing the WAL failed");
        }
    }
}

/// Polls for key changes (see [`KeyRefresher`]) until told to stop (or until the service is
/// dropped).
async fn refresh_keys(
    db: DatabaseConnection,
    keys: Arc<KeyCache>,
    mut refresher: KeyRefresher,
    interval: Duration,
    stop: watch::Receiver<bool>,
) {
    let mut ticks = Ticks::new(interval, stop);
    while ticks.next().await {
        match refresher.poll(&db, &keys).await {
            Ok(0) => {}
            Ok(changed) => {
                tracing::debug!(changed, "api_keys changed; stale cache entries evicted")
            }
            Err(err) => tracing::warn!(error = %err, "polling api_keys for changes failed"),
        }
    }
}
