//! The usage ledger: one row per settled request, written by a single group-commit writer, and
//! the reads over it (the quota count, the usage sums, the daily per-model breakdown).
//!
//! [`Ledger::record`] queues a row and waits. The writer takes one row, drains whatever else is
//! already queued (up to [`MAX_BATCH`]), inserts the batch in one transaction with
//! `ON CONFLICT (request_id) DO NOTHING` ([`insert_rows`]), applies the rows it newly inserted to
//! their keys' accounts in the same transaction (reservation released, balance debited, spend
//! totals raised: [`crate::accounts::apply_settlements`]), commits, and answers every waiter with
//! the cost stored for its request id. One fsync covers the whole batch, and a row is durable
//! before its caller hears back. Settling a request id twice stores one row, moves its money once
//! and answers both with the first cost. A crash leaves either the row and its money effect, or
//! neither. A failed commit is retried with bounded backoff, then row by row (one poisoned row
//! must not fail the others); a row that still cannot be written fails its request and keeps its
//! reservation out of the expiry sweep.
//!
//! The writer also makes reservations ([`Ledger::reserve`]): each queued reservation is held in
//! the batch's transaction after its settlements ([`crate::accounts::hold`]; a refusal answers
//! its caller and fails nothing else), and answered once the batch commits. Under load the
//! admissions' reservations share the batch's one commit (and fsync) with the settlements, and
//! every write of the request path goes through one connection in order. So does the sweep of
//! expired reservations ([`Ledger::release_expired`]), between batches.
//!
//! Where the writer runs follows its connection ([`crate::db::writer`], [`Ledger::start`]): on a
//! SQLite file, a thread of its own that owns a synchronous SQLite connection, so a batch costs
//! one wake-up of that thread and its statements are direct calls; on PostgreSQL (and an
//! in-memory SQLite database), a task on the runtime writing through sqlx. The SQL is the same,
//! but for the ledger insert: one statement for the batch on PostgreSQL, one per row on SQLite.
//!
//! Each waiter has its `ledger commit` span (in its request's trace: the Settle call's span is
//! its parent) from the moment its row is queued to its answer, recording the size of the batch
//! its row was committed in (`tollgate.ledger.batch_rows`); a row given up marks it an error.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sea_orm::sea_query::{Alias, Expr, Func, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Value,
};

use crate::accounts::{self, Reservation, Settled};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::clock::Period;
use crate::entity::usage_ledger;
use crate::error::BillingError;
use crate::telemetry;
use crate::writer_connection::{Commit, WriterConnection};

/// Most rows committed in one transaction.
pub const MAX_BATCH: usize = 256;
/// Rows that may wait for the writer before `record` itself waits (backpressure).
const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// How a settled request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    /// The value stored in `usage_ledger.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One settled request, ready to store. Token counts and cost are already validated integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub request_id: String,
    pub key_id: String,
    pub requested_model: String,
    pub model_id: String,
    pub provider: String,
    pub upstream_model: String,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
    pub cache_write_tokens: i64,
    pub cost_picodollars: i64,
    pub outcome: Outcome,
    pub streamed: bool,
    /// The token counts are the gateway's estimate, not the upstream's report.
    pub estimated: bool,
    /// Unix milliseconds of settlement.
    pub created_at: i64,
    pub period: Period,
    /// The deployment that served (or last failed), when the request was routed to one.
    pub deployment: Option<String>,
    /// Upstream calls the request took, when known.
    pub attempts: Option<i32>,
    /// The request may hold a reservation, which settling it deletes and releases. `false`
    /// (not stored) only when Metering knows it admitted the request without one, so the
    /// settlement skips looking: a request of a key without balance or budget. Were one there
    /// anyway, the expiry sweep releases it.
    pub may_hold_reservation: bool,
}

/// The columns a settlement inserts into `usage_ledger` (every column but the generated `id`), in
/// the order of [`LedgerRow::values`].
const INSERT_COLUMNS: [&str; 19] = [
    "request_id",
    "key_id",
    "requested_model",
    "model_id",
    "provider",
    "upstream_model",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cache_write_tokens",
    "cost_picodollars",
    "outcome",
    "streamed",
    "estimated",
    "created_at",
    "period",
    "deployment",
    "attempts",
];

impl LedgerRow {
    /// The row's values, in the order of [`INSERT_COLUMNS`].
    fn values(&self) -> [Value; INSERT_COLUMNS.len()] {
        [
            self.request_id.as_str().into(),
            self.key_id.as_str().into(),
            self.requested_model.as_str().into(),
            self.model_id.as_str().into(),
            self.provider.as_str().into(),
            self.upstream_model.as_str().into(),
            self.prompt_tokens.into(),
            self.cached_prompt_tokens.into(),
            self.completion_tokens.into(),
            self.reasoning_tokens.into(),
            self.cache_write_tokens.into(),
            self.cost_picodollars.into(),
            self.outcome.as_str().into(),
            self.streamed.into(),
            self.estimated.into(),
            self.created_at.into(),
            self.period.label().into(),
            self.deployment.clone().into(),
            self.attempts.into(),
        ]
    }
}

/// A queued row's caller: where its answer goes, and its `ledger commit` span.
struct Reply {
    answer: oneshot::Sender<Result<i64, BillingError>>,
    span: tracing::Span,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

/// What the writer commits: a settled request's row, or a reservation to hold.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "a job is moved once, into the queue; boxing the row would add an allocation to every settlement"
)]
enum Job {
    Settle(LedgerRow, Reply),
    Reserve(Reservation, oneshot::Sender<Result<i64, BillingError>>),
    /// Release the reservations that expire before this time ([`accounts::release_expired_in`]).
    Release(i64, oneshot::Sender<Result<u64, BillingError>>),
    /// A writer that dies mid-batch, for the tests of what its callers see.
    #[cfg(test)]
    Panic,
}

/// The handle that queues rows and reservations for the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    queue: mpsc::Sender<Job>,
}

/// The running writer. [`shutdown`](Self::shutdown) flushes what is queued and stops it; it also
/// stops, after flushing, once this handle and every [`Ledger`] are dropped.
#[derive(Debug)]
pub struct LedgerWriter {
    stop: watch::Sender<bool>,
    running: Running,
}

/// Where the writer runs, to wait for its end.
#[derive(Debug)]
enum Running {
    /// A task on the runtime.
    Task(JoinHandle<()>),
    /// A thread of its own; answers whether the writer ended without a panic.
    Thread(oneshot::Receiver<bool>),
}

impl Ledger {
    /// Starts the writer on `writer` ([`crate::db::writer`]). On a sea-orm (sqlx) connection it is
    /// a task on the runtime. On a SQLite file's own connection it is a thread of its own, which
    /// owns the connection and runs the writer on a current-thread runtime: a batch costs one
    /// wake-up of that thread (the jobs in, the answers out), and each of its statements is a
    /// direct call. A panic there drops the queue and every job taken from it, so callers get
    /// [`BillingError::LedgerClosed`] rather than waiting.
    pub fn start(writer: WriterConnection) -> Result<(Self, LedgerWriter), BillingError> {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (stop, stop_rx) = watch::channel(false);
        let running = match writer {
            WriterConnection::Pooled(_) => {
                Running::Task(tokio::spawn(run_writer(writer, rx, stop_rx)))
            }
            WriterConnection::SqliteFile(_) => {
                // Time for the retries' backoff.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?;
                let (ended, end) = oneshot::channel();
                std::thread::Builder::new()
                    .name("ledger-writer".to_owned())
                    .spawn(move || {
                        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            runtime.block_on(run_writer(writer, rx, stop_rx));
                        }));
                        let _ = ended.send(ran.is_ok());
                    })?;
                Running::Thread(end)
            }
        };
        Ok((Self { queue }, LedgerWriter { stop, running }))
    }

    /// Stores `row` (or finds the row already stored under its request id) and returns the cost
    /// stored for that request id, once it is committed.
    pub async fn record(&self, row: LedgerRow) -> Result<i64, BillingError> {
        let span = tracing::info_span!(
            "ledger commit",
            tollgate.request_id = %row.request_id,
            tollgate.ledger.batch_rows = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let (reply, answer) = oneshot::channel();
        let reply = Reply {
            answer: reply,
            span: span.clone(),
        };
        async move {
            self.queue
                .send(Job::Settle(row, reply))
                .await
                .map_err(|_| BillingError::LedgerClosed)?;
            answer.await.map_err(|_| BillingError::LedgerClosed)?
        }
        .instrument(span)
        .await
    }
}

impl Ledger {
    /// Holds `reservation` ([`accounts::hold`]) in the writer's next batch and returns the amount
    /// its request id holds once that batch is committed (the amount held before, when the
    /// request id already held one). Refusals are [`BillingError::InsufficientBalance`] and
    /// [`BillingError::BudgetExceeded`]; nothing is held then.
    pub async fn reserve(&self, reservation: Reservation) -> Result<i64, BillingError> {
        self.ask(|reply| Job::Reserve(reservation, reply)).await
    }

    /// Releases the reservations whose expiry is before `before` (requests that never settled),
    /// on the writer's connection between its batches; returns how many.
    pub async fn release_expired(&self, before: i64) -> Result<u64, BillingError> {
        self.ask(|reply| Job::Release(before, reply)).await
    }

    /// Queues the job `job` makes around its reply channel and waits for the writer's answer.
    async fn ask<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, BillingError>>) -> Job,
    ) -> Result<T, BillingError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(job(reply))
            .await
            .map_err(|_| BillingError::LedgerClosed)?;
        answer.await.map_err(|_| BillingError::LedgerClosed)?
    }
}

impl LedgerWriter {
    /// Refuses new rows, commits every queued one, and waits for the writer to end.
    pub async fn shutdown(self) {
        // An error means the writer already ended.
        let _ = self.stop.send(true);
        let panicked = match self.running {
            Running::Task(task) => task.await.is_err(),
            Running::Thread(end) => !matches!(end.await, Ok(true)),
        };
        if panicked {
            tracing::error!("ledger writer panicked");
        }
    }
}

async fn run_writer(
    db: WriterConnection,
    mut rx: mpsc::Receiver<Job>,
    mut stop: watch::Receiver<bool>,
) {
    let mut stopping = false;
    loop {
        let first = tokio::select! {
            next = rx.recv() => match next {
                Some(item) => item,
                None => break,
            },
            // A stop request, or the writer handle dropped: take no new rows, flush the queue.
            _ = stop.changed(), if !stopping => {
                stopping = true;
                rx.close();
                continue;
            }
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        batch.push(first);
        if matches!(db, WriterConnection::SqliteFile(_)) {
            // On its own thread the writer wakes the moment one job arrives, ahead of the
            // runtime's thread that is making the next ones; on a busy core that meant batches of
            // one or two, each a commit and an fsync. Giving way once first lets the jobs being
            // made join this batch; on an idle core it returns at once.
            std::thread::yield_now();
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        telemetry::queue_depth(rx.len());
        write_batch(&db, batch).await;
    }
    tracing::debug!("ledger writer stopped");
}

/// Commits a batch; a failed one is retried ([`commit_retrying`]), then, since one poisoned row
/// fails the whole transaction, written job by job (each with its retries), so the other rows
/// and reservations of the batch are stored. A row that still cannot be written answers its
/// caller with the error (the request fails with a 500) and keeps its reservation
/// ([`hold_reservation`]); a reservation that cannot be written answers with the error (the
/// admission fails, nothing is held).
async fn write_batch(db: &WriterConnection, batch: Vec<Job>) {
    let mut rows = Vec::new();
    let mut replies = Vec::new();
    let mut holds = Vec::new();
    let mut holders = Vec::new();
    for job in batch {
        match job {
            Job::Release(before, reply) => {
                // A sweep failed is tried again at its next tick.
                let _ = reply.send(release_expired(db, before).await);
            }
            #[cfg(test)]
            Job::Panic => panic!("the ledger writer's test panic"),
            Job::Settle(row, reply) => {
                rows.push(row);
                replies.push(reply);
            }
            Job::Reserve(reservation, holder) => {
                holds.push(reservation);
                holders.push(holder);
            }
        }
    }
    if rows.is_empty() && holds.is_empty() {
        return;
    }
    let err = match commit_retrying(db, &holds, &rows).await {
        Ok(committed) => {
            answer(&rows, replies, &committed.costs);
            answer_holds(holders, committed.holds);
            return;
        }
        Err(err) => err,
    };
    // A batch of one job has had its retries: its failure is the job's. Otherwise each job is
    // written alone, with retries of its own.
    let mut failed_alone = if rows.len() + holds.len() == 1 {
        Some(err)
    } else {
        tracing::warn!(
            error = %err,
            rows = rows.len(),
            reservations = holds.len(),
            request_ids = %RequestIds(&rows, &holds),
            "ledger batch failed; writing its jobs one by one"
        );
        None
    };
    for (row, reply) in rows.into_iter().zip(replies) {
        let written = match failed_alone.take() {
            Some(err) => Err(err),
            None => commit_retrying(db, &[], std::slice::from_ref(&row)).await,
        };
        match written {
            Ok(committed) => answer(std::slice::from_ref(&row), vec![reply], &committed.costs),
            Err(err) => give_up(db, &row, reply, err).await,
        }
    }
    for (hold, holder) in holds.into_iter().zip(holders) {
        let written = match failed_alone.take() {
            Some(err) => Err(err),
            None => commit_retrying(db, std::slice::from_ref(&hold), &[]).await,
        };
        match written {
            Ok(committed) => answer_holds(vec![holder], committed.holds),
            Err(err) => {
                tracing::error!(request_id = %hold.request_id, key_id = %hold.key_id, error = %err, "reservation could not be written");
                let _ = holder.send(Err(BillingError::Database(err)));
            }
        }
    }
}

/// Attempts of one commit before it is given up.
const COMMIT_ATTEMPTS: u32 = 4;
/// The wait before the first retry; each next wait doubles (50, 100, 200 ms).
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);

/// [`commit`], retried with exponential backoff: the transaction rolled back, and the insert is
/// idempotent per request id, so a retry after a transient failure (a lock timeout, a dropped
/// connection) stores each row and moves its money exactly once.
async fn commit_retrying(
    db: &WriterConnection,
    holds: &[Reservation],
    rows: &[LedgerRow],
) -> Result<Committed, DbErr> {
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    let started = std::time::Instant::now();
    loop {
        match commit(db, holds, rows).await {
            Ok(committed) => {
                if !rows.is_empty() {
                    telemetry::batch_committed(rows.len(), started.elapsed().as_secs_f64());
                }
                return Ok(committed);
            }
            Err(err) if attempt >= COMMIT_ATTEMPTS => return Err(err),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    rows = rows.len(),
                    request_ids = %RequestIds(rows, holds),
                    attempt,
                    "ledger commit failed; retrying"
                );
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// The request ids of a batch's rows and reservations, space-separated, for a log line that
/// names its requests: formatted only when the line is written.
struct RequestIds<'a>(&'a [LedgerRow], &'a [Reservation]);

impl std::fmt::Display for RequestIds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = self.0.iter().map(|row| row.request_id.as_str());
        let holds = self.1.iter().map(|hold| hold.request_id.as_str());
        for (i, id) in rows.chain(holds).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(id)?;
        }
        Ok(())
    }
}

/// Answers each reservation's caller, in queue order.
fn answer_holds(
    holders: Vec<oneshot::Sender<Result<i64, BillingError>>>,
    holds: Vec<Result<i64, BillingError>>,
) {
    for (holder, held) in holders.into_iter().zip(holds) {
        // An admission that went away: its reservation is released by the sweep when it expires.
        let _ = holder.send(held);
    }
}

/// Answers each caller with the cost stored for its request id.
fn answer(rows: &[LedgerRow], replies: Vec<Reply>, costs: &HashMap<String, i64>) {
    for (row, reply) in rows.iter().zip(replies) {
        let request_id = &row.request_id;
        let answer = costs.get(request_id).copied().ok_or_else(|| {
            BillingError::Database(DbErr::RecordNotFound(format!(
                "ledger row {request_id} missing after commit"
            )))
        });
        // A waiter that went away needs no answer; its row is stored anyway.
        // As an integer attribute (a usize would be exported as a string).
        let batch_rows = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        reply.span.record("tollgate.ledger.batch_rows", batch_rows);
        let _ = reply.answer.send(answer);
    }
}

/// A row that could not be written after every retry: logged, its reservation held, its caller
/// answered with the error.
async fn give_up(db: &WriterConnection, row: &LedgerRow, reply: Reply, err: DbErr) {
    tracing::error!(
        request_id = %row.request_id,
        key_id = %row.key_id,
        cost_picodollars = row.cost_picodollars,
        error = %err,
        "ledger row could not be written; its reservation is kept"
    );
    hold_reservation(db, &row.request_id).await;
    reply.span.record("otel.status_code", "ERROR");
    let _ = reply
        .answer
        .send(Err(BillingError::LedgerWrite(Arc::new(err))));
}

/// Keeps the reservation of a request whose row could not be written out of the expiry sweep:
/// the request was served, so its money stays held (visible as `reserved_picodollars`) until an
/// operator settles it, rather than being freed as if nothing was spent.
async fn hold_reservation(db: &WriterConnection, request_id: &str) {
    let held = async {
        let txn = db.begin(Commit::Durable).await?;
        accounts::hold_reservation(&txn, request_id).await?;
        txn.commit().await
    };
    if let Err(err) = held.await {
        tracing::error!(request_id, error = %err, "could not keep the reservation of an unwritten row");
    }
}

/// Releases the reservations that expire before `before`, in a transaction of its own.
async fn release_expired(db: &WriterConnection, before: i64) -> Result<u64, BillingError> {
    let txn = db.begin(Commit::Durable).await?;
    let released = accounts::release_expired_in(&txn, before).await?;
    txn.commit().await?;
    Ok(released)
}

/// What one committed batch answers.
struct Committed {
    /// The cost stored under each settled request id.
    costs: HashMap<String, i64>,
    /// Each reservation's outcome, in order: the amount held, or its refusal.
    holds: Vec<Result<i64, BillingError>>,
}

/// In one transaction: inserts `rows`, applies the newly inserted ones to their accounts, then
/// holds `holds` (after the settlements, so money a settlement frees counts for them). Returns the
/// cost stored under each request id and each reservation's outcome. The newly inserted rows are
/// counted in the metrics once committed.
async fn commit(
    db: &WriterConnection,
    holds: &[Reservation],
    rows: &[LedgerRow],
) -> Result<Committed, DbErr> {
    // A batch of reservations alone moves no money: its commit need not wait for the disk
    // (see `Commit::ProcessCrashSafe`), and the next settlement's fsync makes it durable.
    let durability = if rows.is_empty() {
        Commit::ProcessCrashSafe
    } else {
        Commit::Durable
    };
    let txn = db.begin(durability).await?;
    let (costs, newly) = if rows.is_empty() {
        (HashMap::new(), HashSet::new())
    } else {
        settle(&txn, rows).await?
    };
    let mut held = Vec::with_capacity(holds.len());
    for hold in holds {
        held.push(accounts::hold(&txn, hold).await?);
    }
    txn.commit().await?;
    for row in rows.iter().filter(|r| newly.contains(&r.request_id)) {
        telemetry::settled(row);
    }
    Ok(Committed { costs, holds: held })
}

/// The statement that inserts `rows` ledger rows and skips the request ids already stored; with
/// `returning`, it also returns the rows it inserted. Written out rather than built by sea-query:
/// the writer runs it for every batch, and sea-query formats every identifier and placeholder of
/// it anew each time, while this text is the same for every batch of the same size (and is
/// prepared once per size on a SQLite file: [`crate::sqlite_writer`]).
fn insert_sql(rows: usize, returning: bool) -> String {
    const ON_CONFLICT: &str = " ON CONFLICT (request_id) DO NOTHING";
    const RETURNING: &str = " RETURNING request_id, key_id, cost_picodollars, period";
    // The statement's head, and one row's placeholders.
    static PARTS: LazyLock<(String, String)> = LazyLock::new(|| {
        (
            format!(
                "INSERT INTO usage_ledger ({}) VALUES ",
                INSERT_COLUMNS.join(", ")
            ),
            format!("({})", ["?"; INSERT_COLUMNS.len()].join(", ")),
        )
    });
    let (head, row) = &*PARTS;
    let mut sql = String::with_capacity(
        head.len() + rows * (row.len() + 2) + ON_CONFLICT.len() + RETURNING.len(),
    );
    sql.push_str(head);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql.push_str(ON_CONFLICT);
    if returning {
        sql.push_str(RETURNING);
    }
    sql
}

/// The rows of `rows` that `txn` newly inserts into the ledger, skipping request ids already
/// stored (by an earlier batch, or earlier in this one).
///
/// On PostgreSQL one statement inserts the whole batch and `RETURNING` names exactly the rows it
/// inserted: one round trip. On SQLite, where a statement is a call, each row is its own cached
/// single-row statement and the number of rows it changed (1 or 0) says whether it was inserted:
/// SQLite builds an ephemeral table for each `RETURNING` and the writer a row of named values for
/// each row returned, which were about 4% of a request's instructions in the profile.
async fn insert_rows(
    txn: &impl ConnectionTrait,
    rows: &[LedgerRow],
) -> Result<Vec<Settled>, DbErr> {
    let backend = txn.get_database_backend();
    if backend == DbBackend::Sqlite {
        static ONE_ROW: LazyLock<String> = LazyLock::new(|| insert_sql(1, false));
        let sql = &*ONE_ROW;
        let mut settled = Vec::with_capacity(rows.len());
        for row in rows {
            let inserted = txn
                .execute(accounts::statement(backend, sql, row.values().into()))
                .await?;
            if inserted.rows_affected() == 1 {
                settled.push(Settled {
                    request_id: row.request_id.clone(),
                    key_id: row.key_id.clone(),
                    cost: row.cost_picodollars,
                    period: row.period.label(),
                    may_hold_reservation: row.may_hold_reservation,
                });
            }
        }
        return Ok(settled);
    }
    let inserted = txn
        .query_all(accounts::statement(
            backend,
            &insert_sql(rows.len(), true),
            rows.iter().flat_map(LedgerRow::values).collect(),
        ))
        .await?;
    let hold_none: HashSet<&str> = rows
        .iter()
        .filter(|row| !row.may_hold_reservation)
        .map(|row| row.request_id.as_str())
        .collect();
    inserted
        .into_iter()
        .map(|row| {
            let request_id: String = row.try_get("", "request_id")?;
            Ok(Settled {
                may_hold_reservation: !hold_none.contains(request_id.as_str()),
                request_id,
                key_id: row.try_get("", "key_id")?,
                cost: row.try_get("", "cost_picodollars")?,
                period: row.try_get("", "period")?,
            })
        })
        .collect()
}

/// Inserts `rows` inside `txn`, applies the newly inserted ones to their accounts, and returns
/// the cost stored under each request id and the request ids newly inserted.
async fn settle(
    txn: &impl ConnectionTrait,
    rows: &[LedgerRow],
) -> Result<(HashMap<String, i64>, HashSet<String>), DbErr> {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.request_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // Only the rows this batch newly inserted (not the duplicates it skipped) move money.
    let settled = insert_rows(txn, rows).await?;
    accounts::apply_settlements(txn, &settled).await?;
    let mut stored: HashMap<String, i64> = settled
        .iter()
        .map(|s| (s.request_id.clone(), s.cost))
        .collect();
    // Only ids settled before (duplicates the insert skipped) need their stored cost read back.
    let earlier: Vec<String> = ids
        .into_iter()
        .filter(|id| !stored.contains_key(id))
        .collect();
    if !earlier.is_empty() {
        let select = Query::select()
            .columns([
                usage_ledger::Column::RequestId,
                usage_ledger::Column::CostPicodollars,
            ])
            .from(usage_ledger::Entity)
            .and_where(usage_ledger::Column::RequestId.is_in(earlier))
            .to_owned();
        // Read by column name: a SQLite file writer's rows are keyed by name, not position.
        for row in txn
            .query_all(txn.get_database_backend().build(&select))
            .await?
        {
            stored.insert(
                row.try_get("", "request_id")?,
                row.try_get("", "cost_picodollars")?,
            );
        }
    }
    let newly = settled.into_iter().map(|s| s.request_id).collect();
    Ok((stored, newly))
}

/// Ledger rows of `key_id` in `period`: the requests it made that month.
pub async fn count_requests(
    db: &DatabaseConnection,
    key_id: &str,
    period: Period,
) -> Result<u64, BillingError> {
    Ok(usage_ledger::Entity::find()
        .filter(usage_ledger::Column::KeyId.eq(key_id))
        .filter(usage_ledger::Column::Period.eq(period.label()))
        .count(db)
        .await?)
}

/// All ledger rows of `key_id`, every month.
pub async fn count_all_requests(
    db: &DatabaseConnection,
    key_id: &str,
) -> Result<u64, BillingError> {
    Ok(usage_ledger::Entity::find()
        .filter(usage_ledger::Column::KeyId.eq(key_id))
        .count(db)
        .await?)
}

/// Sums of one key's ledger rows over one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_picodollars: i64,
}

/// `CAST(COALESCE(SUM(col), 0) AS BIGINT)`: PostgreSQL sums BIGINT into NUMERIC, so cast back.
fn sum(col: usage_ledger::Column) -> SimpleExpr {
    Expr::expr(Func::coalesce([Expr::col(col).sum(), Expr::value(0i64)]))
        .cast_as(Alias::new("BIGINT"))
}

/// Totals of `key_id`'s ledger rows in `period` (the tests' oracle for what was settled).
#[cfg(test)]
pub async fn usage_totals(
    db: &DatabaseConnection,
    key_id: &str,
    period: Period,
) -> Result<UsageTotals, BillingError> {
    use usage_ledger::Column as C;
    let row: Option<(i64, i64, i64, i64, i64, i64)> = usage_ledger::Entity::find()
        .select_only()
        .column_as(Expr::col(C::Id).count(), "requests")
        .column_as(sum(C::PromptTokens), "prompt_tokens")
        .column_as(sum(C::CachedPromptTokens), "cached_prompt_tokens")
        .column_as(sum(C::CompletionTokens), "completion_tokens")
        .column_as(sum(C::ReasoningTokens), "reasoning_tokens")
        .column_as(sum(C::CostPicodollars), "cost_picodollars")
        .filter(C::KeyId.eq(key_id))
        .filter(C::Period.eq(period.label()))
        .into_tuple()
        .one(db)
        .await?;
    Ok(row.map_or_else(UsageTotals::default, |r| UsageTotals {
        requests: r.0,
        prompt_tokens: r.1,
        cached_prompt_tokens: r.2,
        completion_tokens: r.3,
        reasoning_tokens: r.4,
        cost_picodollars: r.5,
    }))
}

/// Milliseconds in a UTC day (Unix time has no leap seconds).
pub const DAY_MS: i64 = 86_400_000;

/// One model's requests on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyModelUsage {
    /// Days since the Unix epoch.
    pub day: i64,
    /// The catalogue model the requests resolved to.
    pub model_id: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_prompt_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_picodollars: i64,
}

/// The ledger rows settled in `[start_ms, end_ms)` of `key_id` (of every key when `None`), summed
/// by UTC day and model, ordered by day then model. One grouped query: the `(key_id, created_at)`
/// index serves a key's.
pub async fn daily_usage(
    db: &DatabaseConnection,
    key_id: Option<&str>,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<DailyModelUsage>, BillingError> {
    use usage_ledger::Column as C;
    // Integer division on both SQLite and PostgreSQL (BIGINT / BIGINT); created_at is never
    // negative, so it rounds down to the day. Grouped and ordered by the output name: PostgreSQL
    // would not see two bound copies of the divisor as one expression.
    let day = || Expr::col(Alias::new("day"));
    type Row = (i64, String, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = usage_ledger::Entity::find()
        .select_only()
        .column_as(Expr::col(C::CreatedAt).div(DAY_MS), "day")
        .column(C::ModelId)
        .column_as(Expr::col(C::Id).count(), "requests")
        .column_as(sum(C::PromptTokens), "prompt_tokens")
        .column_as(sum(C::CachedPromptTokens), "cached_prompt_tokens")
        .column_as(sum(C::CompletionTokens), "completion_tokens")
        .column_as(sum(C::ReasoningTokens), "reasoning_tokens")
        .column_as(sum(C::CostPicodollars), "cost_picodollars")
        .apply_if(key_id, |q, key_id| q.filter(C::KeyId.eq(key_id)))
        .filter(C::CreatedAt.gte(start_ms))
        .filter(C::CreatedAt.lt(end_ms))
        .group_by(day())
        .group_by(C::ModelId)
        .order_by_asc(day())
        .order_by_asc(C::ModelId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| DailyModelUsage {
            day: r.0,
            model_id: r.1,
            requests: r.2,
            prompt_tokens: r.3,
            cached_prompt_tokens: r.4,
            completion_tokens: r.5,
            reasoning_tokens: r.6,
            cost_picodollars: r.7,
        })
        .collect())
}

/// Where a page of a key's requests starts: the last row of the page before, by
/// `(created_at, id)`, the order pages are read in (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPosition {
    pub created_at: i64,
    pub id: i64,
}

/// Up to `limit` of `key_id`'s ledger rows, newest first (by settlement time, then row id), the
/// ones after `after` when given. Keyset paging: the `(key_id, created_at)` index serves every
/// page the same, however deep.
pub async fn key_requests(
    db: &DatabaseConnection,
    key_id: &str,
    after: Option<RowPosition>,
    limit: u64,
) -> Result<Vec<usage_ledger::Model>, BillingError> {
    use sea_orm::Condition;
    use usage_ledger::Column as C;
    Ok(usage_ledger::Entity::find()
        .filter(C::KeyId.eq(key_id))
        .apply_if(after, |q, after| {
            q.filter(
                Condition::any().add(C::CreatedAt.lt(after.created_at)).add(
                    Condition::all()
                        .add(C::CreatedAt.eq(after.created_at))
                        .add(C::Id.lt(after.id)),
                ),
            )
        })
        .order_by_desc(C::CreatedAt)
        .order_by_desc(C::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// One key's requests and cost over a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotal {
    pub key_id: String,
    pub requests: i64,
    pub cost_picodollars: i64,
}

/// The `limit` keys with the highest cost settled in `[start_ms, end_ms)`, highest first (ties:
/// more requests first, then by key id), in one grouped query.
pub async fn top_keys(
    db: &DatabaseConnection,
    start_ms: i64,
    end_ms: i64,
    limit: u64,
) -> Result<Vec<KeyTotal>, BillingError> {
    use sea_orm::Order;
    use usage_ledger::Column as C;
    let rows: Vec<(String, i64, i64)> = usage_ledger::Entity::find()
        .select_only()
        .column(C::KeyId)
        .column_as(Expr::col(C::Id).count(), "requests")
        .column_as(sum(C::CostPicodollars), "cost_picodollars")
        .filter(C::CreatedAt.gte(start_ms))
        .filter(C::CreatedAt.lt(end_ms))
        .group_by(C::KeyId)
        .order_by(Expr::col(Alias::new("cost_picodollars")), Order::Desc)
        .order_by(Expr::col(Alias::new("requests")), Order::Desc)
        .order_by_asc(C::KeyId)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(key_id, requests, cost_picodollars)| KeyTotal {
            key_id,
            requests,
            cost_picodollars,
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::DatabaseConfig;
    use crate::db;

    /// The settlement's insert names every column of the entity but the generated id, so a
    /// column added to `usage_ledger` cannot be left out of it.
    #[test]
    fn the_insert_names_every_column_but_the_id() {
        use sea_orm::{IdenStatic, Iterable};
        let entity: Vec<String> = usage_ledger::Column::iter()
            .filter(|c| !matches!(c, usage_ledger::Column::Id))
            .map(|c| c.as_str().to_owned())
            .collect();
        assert_eq!(entity, INSERT_COLUMNS);
        let sql = insert_sql(2, true);
        assert_eq!(sql.matches('?').count(), 2 * INSERT_COLUMNS.len());
        assert!(sql.starts_with("INSERT INTO usage_ledger (request_id, key_id, "));
        assert!(sql.ends_with(
            "ON CONFLICT (request_id) DO NOTHING \
             RETURNING request_id, key_id, cost_picodollars, period"
        ));
        let one = insert_sql(1, false);
        assert_eq!(one.matches('?').count(), INSERT_COLUMNS.len());
        assert!(one.ends_with("ON CONFLICT (request_id) DO NOTHING"));
    }

    /// The two ways the writer runs on a SQLite file: on a connection of its own on a thread of
    /// its own (what a gateway does), and on sea-orm's sqlx pool (what it does on PostgreSQL).
    #[derive(Debug, Clone, Copy)]
    enum WriterPath {
        OwnConnection,
        Pooled,
    }

    async fn writer_on(db: &DatabaseConnection, path: WriterPath) -> WriterConnection {
        match path {
            WriterPath::OwnConnection => {
                let writer = db::writer(db).await.unwrap();
                assert!(matches!(writer, WriterConnection::SqliteFile(_)));
                writer
            }
            WriterPath::Pooled => WriterConnection::Pooled(db.clone()),
        }
    }

    /// Runs each named test once per [`WriterPath`].
    macro_rules! on_both_writers {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[tokio::test]
                async fn on_its_own_connection() {
                    super::$name(super::WriterPath::OwnConnection).await;
                }

                #[tokio::test]
                async fn on_the_pool() {
                    super::$name(super::WriterPath::Pooled).await;
                }
            }
        )*};
    }

    on_both_writers!(
        one_batch_settles_first_then_holds_each_reservation_or_refuses_it_alone,
        reservations_queued_together_are_answered_once_their_batch_commits,
        duplicate_request_ids_keep_the_first_row_even_within_one_batch,
        shutdown_flushes_queued_rows_and_refuses_new_ones,
        daily_usage_groups_by_utc_day_and_model_within_the_range,
        a_keys_requests_page_newest_first_and_top_keys_rank_by_cost,
        rows_keep_cache_writes_and_the_estimate_mark,
        a_failed_commit_is_retried_then_fails_only_its_own_row,
        the_sweep_releases_expired_reservations_on_the_writer,
        a_row_known_to_hold_no_reservation_settles_without_looking_for_one,
    );

    async fn open(path: &std::path::Path) -> DatabaseConnection {
        let db = db::connect(&DatabaseConfig::at(format!("sqlite://{}", path.display())))
            .await
            .unwrap();
        db::migrate(&db).await.unwrap();
        db
    }

    fn row(request_id: &str, cost: i64) -> LedgerRow {
        LedgerRow {
            request_id: request_id.to_owned(),
            key_id: "key-1".to_owned(),
            requested_model: "m".to_owned(),
            model_id: "m".to_owned(),
            provider: "p".to_owned(),
            upstream_model: "um".to_owned(),
            prompt_tokens: 10,
            cached_prompt_tokens: 2,
            completion_tokens: 5,
            reasoning_tokens: 1,
            cache_write_tokens: 0,
            cost_picodollars: cost,
            outcome: Outcome::Succeeded,
            streamed: false,
            estimated: false,
            deployment: None,
            attempts: None,
            created_at: crate::clock::now_ms(),
            period: Period::current(),
            may_hold_reservation: true,
        }
    }

    fn reservation(request_id: &str, key_id: &str, amount: i64) -> Reservation {
        Reservation {
            request_id: request_id.to_owned(),
            key_id: key_id.to_owned(),
            amount,
            period: Period::current(),
            expires_at: i64::MAX,
        }
    }

    /// A prepaid balance of `balance` picodollars, no monthly budget.
    fn prepaid(balance: i64) -> accounts::KeyMoney {
        accounts::KeyMoney {
            balance_picodollars: Some(balance),
            monthly_budget_picodollars: None,
        }
    }

    async fn money(db: &DatabaseConnection, key_id: &str) -> (Option<i64>, i64, u64) {
        let account = accounts::account(db, key_id).await.unwrap().unwrap();
        let open = db
            .query_one(accounts::statement(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM reservations WHERE key_id = ?",
                vec![key_id.into()],
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        (
            account.balance_picodollars,
            account.reserved_picodollars,
            u64::try_from(open).unwrap(),
        )
    }

    async fn a_row_known_to_hold_no_reservation_settles_without_looking_for_one(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        accounts::open(&db, "key-1", prepaid(100), 0).await.unwrap();
        let writer = writer_on(&db, path).await;
        let mut r2 = reservation("r2", "key-1", 20);
        r2.expires_at = 1_000;
        commit(&writer, &[reservation("r1", "key-1", 30), r2], &[])
            .await
            .unwrap();
        assert_eq!(money(&db, "key-1").await, (Some(100), 50, 2));
        // r1 may hold one: released. r2 is said to hold none: its row is not looked for (the
        // expiry sweep would release it), while its cost is debited all the same. r3 holds none.
        let free = |id: &str, cost: i64| LedgerRow {
            may_hold_reservation: false,
            ..row(id, cost)
        };
        let batch = commit(&writer, &[], &[row("r1", 10), free("r2", 5), free("r3", 1)])
            .await
            .unwrap();
        assert_eq!(batch.costs.len(), 3);
        assert_eq!(money(&db, "key-1").await, (Some(84), 20, 1));
        assert_eq!(release_expired(&writer, 2_000).await.unwrap(), 1);
        assert_eq!(money(&db, "key-1").await, (Some(84), 0, 0));
    }

    async fn one_batch_settles_first_then_holds_each_reservation_or_refuses_it_alone(
        path: WriterPath,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let prepaid = prepaid(100);
        accounts::open(&db, "key-1", prepaid, 0).await.unwrap();
        let writer = writer_on(&db, path).await;
        let first = commit(&writer, &[reservation("r1", "key-1", 80)], &[])
            .await
            .unwrap();
        assert_eq!(first.holds[0].as_ref().unwrap(), &80);
        assert_eq!(money(&db, "key-1").await, (Some(100), 80, 1));

        // r1 settles at 10 in the same batch as three reservations: its 80 is released first,
        // so r2 (50) fits in the 90 left; r3 (50) does not, and is refused without failing the
        // others; r2 again (a concurrent Admit of one request) holds nothing more.
        let batch = commit(
            &writer,
            &[
                reservation("r2", "key-1", 50),
                reservation("r3", "key-1", 50),
                reservation("r2", "key-1", 50),
            ],
            &[row("r1", 10)],
        )
        .await
        .unwrap();
        assert_eq!(batch.costs.get("r1"), Some(&10));
        assert_eq!(batch.holds[0].as_ref().unwrap(), &50);
        match &batch.holds[1] {
            Err(BillingError::InsufficientBalance { needed, available }) => {
                assert_eq!((*needed, *available), (50, 40));
            }
            other => panic!("r3 should be refused, not {other:?}"),
        }
        assert_eq!(batch.holds[2].as_ref().unwrap(), &50);
        assert_eq!(money(&db, "key-1").await, (Some(90), 50, 1));

        // Another key's request cannot take over a request id that holds a reservation.
        accounts::open(&db, "key-2", prepaid, 0).await.unwrap();
        let taken = commit(&writer, &[reservation("r2", "key-2", 5)], &[])
            .await
            .unwrap();
        assert!(matches!(
            &taken.holds[0],
            Err(BillingError::InvalidArgument {
                param: "request_id",
                ..
            })
        ));
        assert_eq!(money(&db, "key-2").await, (Some(100), 0, 0));
    }

    async fn reservations_queued_together_are_answered_once_their_batch_commits(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let prepaid = prepaid(1_000);
        accounts::open(&db, "key-1", prepaid, 0).await.unwrap();
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let answers = futures::future::join_all(
            (0..20).map(|i| ledger.reserve(reservation(&format!("q{i}"), "key-1", 100))),
        )
        .await;
        let held = answers.iter().filter(|a| a.is_ok()).count();
        let refused = answers
            .iter()
            .filter(|a| matches!(a, Err(BillingError::InsufficientBalance { .. })))
            .count();
        assert_eq!((held, refused), (10, 10), "{answers:?}");
        assert_eq!(money(&db, "key-1").await, (Some(1_000), 1_000, 10));
        writer.shutdown().await;
        assert!(matches!(
            ledger.reserve(reservation("late", "key-1", 1)).await,
            Err(BillingError::LedgerClosed)
        ));
    }

    async fn duplicate_request_ids_keep_the_first_row_even_within_one_batch(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let (a, b) = tokio::join!(ledger.record(row("r1", 100)), ledger.record(row("r1", 999)));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(
            (a, b),
            (100, 100),
            "both settles answer with the first cost"
        );
        assert_eq!(ledger.record(row("r1", 5)).await.unwrap(), a);
        assert_eq!(ledger.record(row("r2", 7)).await.unwrap(), 7);
        writer.shutdown().await;
        let totals = usage_totals(&db, "key-1", Period::current()).await.unwrap();
        assert_eq!(totals.requests, 2);
        assert_eq!(totals.cost_picodollars, a + 7);
        assert_eq!(totals.prompt_tokens, 20);
        assert_eq!(
            count_requests(&db, "key-1", Period::current())
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            count_requests(&db, "key-2", Period::current())
                .await
                .unwrap(),
            0
        );
    }

    async fn shutdown_flushes_queued_rows_and_refuses_new_ones(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("l.db");
        let db = open(&file).await;
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let waiters: Vec<_> = (0..300)
            .map(|i| {
                let ledger = ledger.clone();
                tokio::spawn(async move { ledger.record(row(&format!("r{i}"), i)).await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        writer.shutdown().await;
        assert!(matches!(
            ledger.record(row("late", 1)).await,
            Err(BillingError::LedgerClosed)
        ));
        drop(db);
        let db = open(&file).await;
        let totals = usage_totals(&db, "key-1", Period::current()).await.unwrap();
        assert_eq!(totals.requests, 300);
        assert_eq!(totals.cost_picodollars, (0..300).sum::<i64>());
    }

    async fn daily_usage_groups_by_utc_day_and_model_within_the_range(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let day0 = 20_000 * DAY_MS;
        let rows = [
            ("a", "flash", day0, 10),
            ("b", "flash", day0 + DAY_MS - 1, 20),
            ("c", "pro", day0 + 5, 7),
            ("d", "flash", day0 + DAY_MS, 1),
            ("e", "flash", day0 + 2 * DAY_MS, 1000),
            ("f", "flash", day0 - 1, 2000),
        ];
        for (id, model, at, cost) in rows {
            let mut r = row(id, cost);
            r.model_id = model.to_owned();
            r.created_at = at;
            ledger.record(r).await.unwrap();
        }
        writer.shutdown().await;
        let got = daily_usage(&db, Some("key-1"), day0, day0 + 2 * DAY_MS)
            .await
            .unwrap();
        let summary: Vec<_> = got
            .iter()
            .map(|d| (d.day, d.model_id.as_str(), d.requests, d.cost_picodollars))
            .collect();
        assert_eq!(
            summary,
            [
                (20_000, "flash", 2, 30),
                (20_000, "pro", 1, 7),
                (20_001, "flash", 1, 1)
            ]
        );
        assert_eq!(got[0].prompt_tokens, 20);
        assert!(
            daily_usage(&db, Some("key-2"), day0, day0 + DAY_MS)
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn a_keys_requests_page_newest_first_and_top_keys_rank_by_cost(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let day0 = 20_000 * DAY_MS;
        // Two rows share a settlement time: the row id orders them.
        let rows = [
            ("a", "key-1", day0, 10),
            ("b", "key-1", day0 + 5, 20),
            ("c", "key-1", day0 + 5, 30),
            ("d", "key-2", day0 + 6, 100),
            ("e", "key-1", day0 + 7, 40),
            ("f", "key-3", day0 + 8, 5),
            ("g", "key-3", day0 + 9, 5),
            ("h", "key-4", day0 + 9, 10),
            ("late", "key-2", day0 + DAY_MS, 1000),
        ];
        for (id, key, at, cost) in rows {
            let mut r = row(id, cost);
            r.key_id = key.to_owned();
            r.created_at = at;
            ledger.record(r).await.unwrap();
        }
        writer.shutdown().await;
        let mut seen = Vec::new();
        let mut after = None;
        for _ in 0..5 {
            let page = key_requests(&db, "key-1", after, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(RowPosition {
                created_at: last.created_at,
                id: last.id,
            });
            assert!(page.iter().all(|r| r.key_id == "key-1"));
            seen.extend(page.iter().map(|r| r.request_id.clone()));
        }
        assert_eq!(seen, ["e", "c", "b", "a"]);

        let top = top_keys(&db, day0, day0 + DAY_MS, 3).await.unwrap();
        let ranked: Vec<_> = top
            .iter()
            .map(|t| (t.key_id.as_str(), t.requests, t.cost_picodollars))
            .collect();
        assert_eq!(
            ranked,
            [("key-1", 4, 100), ("key-2", 1, 100), ("key-3", 2, 10)]
        );
        let all = daily_usage(&db, None, day0, day0 + DAY_MS).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].requests, all[0].cost_picodollars), (8, 220));
    }

    async fn rows_keep_cache_writes_and_the_estimate_mark(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let mut estimated = row("est", 3);
        estimated.cache_write_tokens = 7;
        estimated.estimated = true;
        ledger.record(estimated).await.unwrap();
        ledger.record(row("real", 4)).await.unwrap();
        writer.shutdown().await;
        let stored: Vec<(String, i64, bool)> = usage_ledger::Entity::find()
            .select_only()
            .column(usage_ledger::Column::RequestId)
            .column(usage_ledger::Column::CacheWriteTokens)
            .column(usage_ledger::Column::Estimated)
            .into_tuple()
            .all(&db)
            .await
            .unwrap();
        let mut stored = stored;
        stored.sort();
        assert_eq!(
            stored,
            vec![("est".to_owned(), 7, true), ("real".to_owned(), 0, false)]
        );
    }

    /// A failure at COMMIT itself (here a deferred foreign key the trigger breaks for one request
    /// id; on a live gateway a full disk or a lock held past the busy timeout) is the batch's
    /// error: the batch is retried, then written job by job, the other rows are stored, the
    /// unlucky one fails alone, and the failed COMMIT leaves no transaction open behind it.
    async fn a_failed_commit_is_retried_then_fails_only_its_own_row(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        db.execute_unprepared(
            "CREATE TABLE guard_parent (id TEXT PRIMARY KEY); \
             CREATE TABLE guard_child (parent TEXT \
               REFERENCES guard_parent (id) DEFERRABLE INITIALLY DEFERRED); \
             CREATE TRIGGER fails_at_commit AFTER INSERT ON usage_ledger \
               WHEN NEW.request_id = 'unlucky' \
               BEGIN INSERT INTO guard_child VALUES ('missing'); END",
        )
        .await
        .unwrap();
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let ids = ["a", "unlucky", "b", "c"];
        let answers =
            futures::future::join_all(ids.iter().map(|id| ledger.record(row(id, 10)))).await;
        for (id, answer) in ids.iter().zip(&answers) {
            match (*id, answer) {
                ("unlucky", Err(BillingError::LedgerWrite(err))) => {
                    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
                }
                ("unlucky", other) => panic!("the unlucky row should fail, not {other:?}"),
                (_, answer) => assert_eq!(answer.as_ref().unwrap(), &10, "{id}"),
            }
        }
        // The writer goes on: its connection is out of the failed transaction.
        assert_eq!(ledger.record(row("d", 5)).await.unwrap(), 5);
        writer.shutdown().await;
        let totals = usage_totals(&db, "key-1", Period::current()).await.unwrap();
        assert_eq!((totals.requests, totals.cost_picodollars), (4, 35));
    }

    /// The sweep of expired reservations runs between the writer's batches, on its connection.
    async fn the_sweep_releases_expired_reservations_on_the_writer(path: WriterPath) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        accounts::open(&db, "key-1", prepaid(100), 0).await.unwrap();
        let (ledger, writer) = Ledger::start(writer_on(&db, path).await).unwrap();
        let mut expired = reservation("old", "key-1", 30);
        expired.expires_at = 1_000;
        ledger.reserve(expired).await.unwrap();
        ledger
            .reserve(reservation("live", "key-1", 20))
            .await
            .unwrap();
        assert_eq!(ledger.release_expired(2_000).await.unwrap(), 1);
        assert_eq!(money(&db, "key-1").await, (Some(100), 20, 1));
        writer.shutdown().await;
    }

    /// A writer thread that dies answers its callers (queued or yet to come) with
    /// `LedgerClosed` instead of leaving them waiting.
    #[tokio::test]
    async fn a_writer_that_panics_closes_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let (ledger, writer) =
            Ledger::start(writer_on(&db, WriterPath::OwnConnection).await).unwrap();
        ledger.queue.send(Job::Panic).await.unwrap();
        let bounded = Duration::from_secs(10);
        let (queued, later) = tokio::time::timeout(bounded, async {
            let queued = ledger.record(row("r1", 1)).await;
            (queued, ledger.reserve(reservation("r2", "key-1", 1)).await)
        })
        .await
        .expect("callers of a dead writer must not wait");
        assert!(
            matches!(queued, Err(BillingError::LedgerClosed)),
            "{queued:?}"
        );
        assert!(
            matches!(later, Err(BillingError::LedgerClosed)),
            "{later:?}"
        );
        tokio::time::timeout(bounded, writer.shutdown())
            .await
            .expect("shutting down a dead writer returns");
    }

    #[tokio::test]
    async fn empty_usage_sums_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("l.db")).await;
        let totals = usage_totals(&db, "nobody", Period::current())
            .await
            .unwrap();
        assert_eq!(totals, UsageTotals::default());
    }
}
