//! The ledger writer's own connection to a SQLite file: one synchronous rusqlite connection, owned
//! by the writer's thread ([`crate::ledger`]), on which each statement sea-query builds is a
//! direct call with a cached prepared statement (sqlx would send every statement to a worker
//! thread and wait for its answer: two thread wake-ups per statement, about six statements a
//! batch). This module owns the translation between sea-orm and rusqlite: sea-query [`Value`]s
//! bound as SQLite parameters, result rows read back into sea-orm's [`ProxyRow`] by column name,
//! rusqlite errors as [`DbErr`], and the transaction statements, whose failures (a COMMIT that
//! meets a full disk or a lock held past the busy timeout) are errors like any other statement's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{Null, ValueRef};
use rusqlite::{OpenFlags, ToSql};
use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, ExecResult, ProxyExecResult, ProxyRow, QueryResult,
    RuntimeErr, Statement, Value,
};

use crate::writer_connection::Commit;

/// Prepared statements kept per connection: the writer's statements, whose SQL varies with the
/// number of rows in a batch (as many as sqlx keeps for each of its connections).
const STATEMENT_CACHE_CAPACITY: usize = 100;

/// One open connection to a SQLite file. Used by one thread at a time (the mutex is never
/// contended: it is what lets sea-orm's `Sync` connection trait hold a rusqlite connection).
pub struct SqliteWriterConnection {
    conn: Mutex<rusqlite::Connection>,
    /// `PRAGMA synchronous` as `[database] durability` set it (2 FULL, 1 NORMAL).
    synchronous: i64,
    /// `PRAGMA synchronous` as it is now: NORMAL for a [`Commit::ProcessCrashSafe`] transaction.
    current: AtomicI64,
}

impl std::fmt::Debug for SqliteWriterConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteWriterConnection")
    }
}

impl SqliteWriterConnection {
    /// Opens the existing database file at `path` with the pragmas of the pool's connections
    /// ([`crate::db::connect`]): a WAL journal, `synchronous` as given (`PRAGMA synchronous`'s
    /// number: 2 FULL, 1 NORMAL), `busy_timeout`, and foreign keys on; it checkpoints the WAL
    /// itself only past [`crate::db::WRITER_AUTOCHECKPOINT_PAGES`] ([`crate::db::checkpoint_wal`]
    /// does it in the background).
    pub(crate) fn open(
        path: &Path,
        synchronous: i64,
        busy_timeout: Duration,
    ) -> Result<Self, DbErr> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(path, flags)
            .map_err(|err| DbErr::Conn(runtime_err(&err)))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|err| DbErr::Conn(runtime_err(&err)))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
             PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = {};",
            crate::db::WRITER_AUTOCHECKPOINT_PAGES
        ))
        .map_err(|err| DbErr::Conn(runtime_err(&err)))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(Self {
            conn: Mutex::new(conn),
            synchronous,
            current: AtomicI64::new(synchronous),
        })
    }

    fn lock(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // Poisoned only by a panic on the writer's thread, which ends with it.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `stmt` for its effect (stepping through any rows it returns) and reports the rows it
    /// changed.
    fn run(&self, stmt: &Statement) -> Result<ExecResult, DbErr> {
        let conn = self.lock();
        let run = || -> rusqlite::Result<ProxyExecResult> {
            let mut prepared = conn.prepare_cached(&stmt.sql)?;
            bind(&mut prepared, stmt)?;
            let mut rows = prepared.raw_query();
            while rows.next()?.is_some() {}
            Ok(ProxyExecResult::new(
                u64::try_from(conn.last_insert_rowid()).unwrap_or(0),
                conn.changes(),
            ))
        };
        run()
            .map(ExecResult::from)
            .map_err(|err| DbErr::Exec(runtime_err(&err)))
    }

    /// Runs `stmt` and returns its rows, each keyed by column name.
    fn rows(&self, stmt: &Statement) -> Result<Vec<QueryResult>, DbErr> {
        let conn = self.lock();
        let run = || -> rusqlite::Result<Vec<QueryResult>> {
            let mut prepared = conn.prepare_cached(&stmt.sql)?;
            bind(&mut prepared, stmt)?;
            let columns: Vec<(String, Option<String>)> = prepared
                .columns()
                .iter()
                .map(|c| {
                    (
                        c.name().to_owned(),
                        c.decl_type().map(str::to_ascii_uppercase),
                    )
                })
                .collect();
            let mut rows = prepared.raw_query();
            let mut results = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = BTreeMap::new();
                for (i, (name, decl_type)) in columns.iter().enumerate() {
                    values.insert(name.clone(), value(row.get_ref(i)?, decl_type.as_deref()));
                }
                results.push(QueryResult::from(ProxyRow::new(values)));
            }
            Ok(results)
        };
        run().map_err(|err| DbErr::Query(runtime_err(&err)))
    }

    /// `BEGIN IMMEDIATE`: the transaction takes the file's write lock at once (waiting up to the
    /// busy timeout), so a write after a read inside it can never fail on a stale snapshot. Its
    /// commit waits for the disk as `commit` says: a [`Commit::ProcessCrashSafe`] one under
    /// `synchronous = NORMAL` (no fsync under WAL), whatever the configured setting; the pragma
    /// is set before `BEGIN`, and only when it changes.
    pub(crate) fn begin(&self, commit: Commit) -> Result<SqliteTransaction<'_>, DbErr> {
        let conn = self.lock();
        let synchronous = match commit {
            Commit::Durable => self.synchronous,
            Commit::ProcessCrashSafe => self.synchronous.min(1),
        };
        if self.current.load(Ordering::Relaxed) != synchronous {
            conn.prepare_cached(&format!("PRAGMA synchronous = {synchronous}"))
                .and_then(|mut pragma| pragma.execute([]))
                .map_err(|err| DbErr::Exec(runtime_err(&err)))?;
            self.current.store(synchronous, Ordering::Relaxed);
        }
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|err| DbErr::Exec(runtime_err(&err)))?;
        drop(conn);
        Ok(SqliteTransaction {
            conn: self,
            open: true,
        })
    }
}

/// An open transaction on a [`SqliteWriterConnection`]; rolled back when dropped uncommitted.
#[derive(Debug)]
pub(crate) struct SqliteTransaction<'a> {
    conn: &'a SqliteWriterConnection,
    open: bool,
}

impl SqliteTransaction<'_> {
    /// The connection the transaction's statements run on.
    pub(crate) fn connection(&self) -> &SqliteWriterConnection {
        self.conn
    }

    /// Commits. A COMMIT that fails (the disk is full, another process holds a lock past the busy
    /// timeout) is an error, and whatever it left open is rolled back, so the next batch starts
    /// clean and the caller's retry writes everything again.
    pub(crate) fn commit(mut self) -> Result<(), DbErr> {
        self.open = false;
        let conn = self.conn.lock();
        conn.execute_batch("COMMIT").map_err(|err| {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            DbErr::Exec(runtime_err(&err))
        })
    }
}

impl Drop for SqliteTransaction<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let conn = self.conn.lock();
        if !conn.is_autocommit()
            && let Err(err) = conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %err, "rolling back a ledger transaction failed");
        }
    }
}

/// Runs each statement at once on the calling thread: the futures are ready when first polled.
#[async_trait::async_trait]
impl ConnectionTrait for SqliteWriterConnection {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.run(&stmt)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.run(&Statement::from_string(DbBackend::Sqlite, sql))
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.rows(&stmt)?.into_iter().next())
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.rows(&stmt)
    }
}

fn runtime_err(err: &rusqlite::Error) -> RuntimeErr {
    RuntimeErr::Internal(format!("sqlite: {err}"))
}

/// Binds `stmt`'s values to `prepared`'s `?` parameters, in order.
fn bind(prepared: &mut rusqlite::Statement<'_>, stmt: &Statement) -> rusqlite::Result<()> {
    let Some(values) = &stmt.values else {
        return Ok(());
    };
    for (i, value) in values.0.iter().enumerate() {
        bind_one(prepared, i + 1, value)?;
    }
    Ok(())
}

fn bind_one(
    prepared: &mut rusqlite::Statement<'_>,
    at: usize,
    value: &Value,
) -> rusqlite::Result<()> {
    fn put<T: ToSql>(
        prepared: &mut rusqlite::Statement<'_>,
        at: usize,
        value: Option<T>,
    ) -> rusqlite::Result<()> {
        match value {
            Some(v) => prepared.raw_bind_parameter(at, v),
            None => prepared.raw_bind_parameter(at, Null),
        }
    }
    match value {
        Value::Bool(v) => put(prepared, at, *v),
        Value::TinyInt(v) => put(prepared, at, *v),
        Value::SmallInt(v) => put(prepared, at, *v),
        Value::Int(v) => put(prepared, at, *v),
        Value::BigInt(v) => put(prepared, at, *v),
        Value::TinyUnsigned(v) => put(prepared, at, *v),
        Value::SmallUnsigned(v) => put(prepared, at, *v),
        Value::Unsigned(v) => put(prepared, at, *v),
        Value::BigUnsigned(v) => put(
            prepared,
            at,
            v.map(i64::try_from)
                .transpose()
                .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?,
        ),
        Value::Float(v) => put(prepared, at, v.map(f64::from)),
        Value::Double(v) => put(prepared, at, *v),
        Value::String(v) => put(prepared, at, v.as_deref().map(String::as_str)),
        Value::Char(v) => put(prepared, at, v.map(String::from)),
        Value::Bytes(v) => put(prepared, at, v.as_deref().map(Vec::as_slice)),
        other => Err(rusqlite::Error::ToSqlConversionFailure(
            format!("the ledger writer binds no {other:?}").into(),
        )),
    }
}

/// A column's value as sea-orm reads it: integers as `BigInt` (`Bool` where the column is declared
/// boolean), text as `String`; a NULL as the null of the declared type (sea-orm reads an
/// `Option<T>` only from a null of `T`'s own kind), `BigInt` for an expression.
fn value(raw: ValueRef<'_>, decl_type: Option<&str>) -> Value {
    let declared = |kinds: &[&str]| decl_type.is_some_and(|t| kinds.iter().any(|k| t.contains(k)));
    let boolean = declared(&["BOOL"]);
    match raw {
        ValueRef::Integer(i) if boolean => Value::Bool(Some(i != 0)),
        ValueRef::Integer(i) => Value::BigInt(Some(i)),
        ValueRef::Real(f) => Value::Double(Some(f)),
        ValueRef::Text(t) => Value::String(Some(Box::new(String::from_utf8_lossy(t).into_owned()))),
        ValueRef::Blob(b) => Value::Bytes(Some(Box::new(b.to_vec()))),
        ValueRef::Null if boolean => Value::Bool(None),
        ValueRef::Null if declared(&["CHAR", "TEXT", "CLOB"]) => Value::String(None),
        ValueRef::Null if declared(&["BLOB"]) => Value::Bytes(None),
        ValueRef::Null if declared(&["REAL", "FLOA", "DOUB"]) => Value::Double(None),
        ValueRef::Null => Value::BigInt(None),
    }
}
