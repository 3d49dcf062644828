//! Opening the billing database and bringing its schema up to date. SQLite (the embedded default)
//! is opened with a WAL journal, a 5 s busy timeout and foreign keys on; PostgreSQL goes through
//! sea-orm's own pool. Both honour `[database] durability` ([`Durability`]): whether each commit
//! waits for the disk (SQLite `synchronous = FULL`, PostgreSQL `synchronous_commit = on`) or only
//! for the database (`NORMAL` under WAL, `synchronous_commit = off`). [`writer`] gives the
//! connection the hot path writes on: on a SQLite file, one connection of the ledger writer's own.

use std::str::FromStr;
use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqlxSqliteConnector, Statement, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::config::{DatabaseConfig, Durability, redact_url_password};
use crate::error::BillingError;
use crate::migration::Migrator;
use crate::sqlite_writer::SqliteWriterConnection;
use crate::writer_connection::WriterConnection;

/// Connections in the SQLite pool. WAL lets readers run beside the one writer.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// How long a SQLite statement waits for another connection's lock before it fails.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection the request path writes on (reservations, the ledger's group commits) and the
/// expiry sweep: the ledger writer's ([`crate::ledger::Ledger::start`]). A SQLite file has one
/// write lock, and its writers on different connections collide on it (the loser sleeps in
/// SQLite's busy handler, 1, 2, 5, 10, ... up to 100 ms a try, even when the winner commits a
/// moment later), so every write of the request path goes through one connection, in order: for
/// a SQLite file, a connection of its own ([`SqliteWriterConnection`]), opened with the pool's
/// pragmas (WAL, the pool's `synchronous`, the busy timeout, foreign keys), that the writer's
/// thread calls directly, without sqlx's worker thread and its two wake-ups per statement. Reads
/// stay on `db`'s connections beside it (WAL), and a rare write elsewhere (the Admin API, another
/// process) still meets the busy timeout. PostgreSQL locks rows, and an in-memory SQLite pool
/// already has its one connection: the writer writes on `db` itself.
pub async fn writer(db: &DatabaseConnection) -> Result<WriterConnection, BillingError> {
    let Some(pool) = sqlite_file(db) else {
        return Ok(WriterConnection::Pooled(db.clone()));
    };
    let path = pool.connect_options().get_filename().to_owned();
    // Whatever `[database] durability` chose for the pool's connections ([`connect_sqlite`]).
    let synchronous: i64 = db
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA synchronous",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("PRAGMA synchronous returned no row".to_owned()))?
        .try_get_by_index(0)?;
    let conn = tokio::task::spawn_blocking(move || {
        SqliteWriterConnection::open(&path, synchronous, SQLITE_BUSY_TIMEOUT)
    })
    .await
    .map_err(|err| DbErr::Custom(format!("opening the ledger writer's connection: {err}")))??;
    Ok(WriterConnection::SqliteFile(conn))
}

/// `db`'s pool when it is a SQLite file's (not PostgreSQL's, not an in-memory database's, which
/// lives in its one connection).
pub(crate) fn sqlite_file(db: &DatabaseConnection) -> Option<&sqlx::SqlitePool> {
    if !matches!(db, DatabaseConnection::SqlxSqlitePoolConnection(_)) {
        return None;
    }
    let pool = db.get_sqlite_connection_pool();
    (pool.options().get_max_connections() > 1).then_some(pool)
}

/// Pages the ledger writer's own connection lets the WAL grow to before it checkpoints itself
/// (SQLite's default is 1,000): a backstop, for when [`checkpoint_wal`] falls behind.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// What a WAL checkpoint did: frames in the WAL, and how many of them are now in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalCheckpoint {
    pub wal_frames: i64,
    pub checkpointed: i64,
}

/// Copies what the WAL holds into the database file, on one of `db`'s pool connections, without
/// waiting for or blocking the writer (`PRAGMA wal_checkpoint(PASSIVE)`). SQLite otherwise
/// checkpoints at the commit that takes the WAL past 1,000 pages, on the committing connection:
/// the ledger writer's, so the requests queued behind that commit waited for the checkpoint and
/// its fsyncs (under `process_crash` the whole WAL is synced first: 17 to 43 ms, the p99 of a
/// prepaid request). Run every [`crate::tasks`] tick on a SQLite file, the writer's own
/// checkpoint ([`WRITER_AUTOCHECKPOINT_PAGES`]) is left as the backstop. Once every frame is in
/// the database, the writer's next commit starts the WAL over.
pub(crate) async fn checkpoint_wal(db: &DatabaseConnection) -> Result<WalCheckpoint, DbErr> {
    let row = db
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("PRAGMA wal_checkpoint returned no row".to_owned()))?;
    Ok(WalCheckpoint {
        wal_frames: row.try_get_by_index(1)?,
        checkpointed: row.try_get_by_index(2)?,
    })
}

/// Opens the database named by `cfg.url`, creating a SQLite file (and its folder) if missing.
pub async fn connect(cfg: &DatabaseConfig) -> Result<DatabaseConnection, BillingError> {
    let url = cfg.url.trim();
    if url.starts_with("sqlite:") {
        connect_sqlite(url, cfg.durability).await
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut options = ConnectOptions::new(url.to_owned());
        options.sqlx_logging(false);
        if cfg.durability == Durability::ProcessCrash {
            // A session setting of every pooled connection; the server's own default otherwise.
            options.map_sqlx_postgres_opts(|pg| pg.options([("synchronous_commit", "off")]));
        }
        Ok(Database::connect(options).await?)
    } else {
        Err(BillingError::UnsupportedDatabaseUrl(redact_url_password(
            url,
        )))
    }
}

async fn connect_sqlite(
    url: &str,
    durability: Durability,
) -> Result<DatabaseConnection, BillingError> {
    let synchronous = match durability {
        Durability::PowerLoss => SqliteSynchronous::Full,
        // Under WAL, NORMAL syncs at checkpoints only; a commit is in the WAL file (the OS has it)
        // before it returns, so it survives the process, not power loss.
        Durability::ProcessCrash => SqliteSynchronous::Normal,
    };
    let options = SqliteConnectOptions::from_str(url)?
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true)
        .synchronous(synchronous);
    // An in-memory database lives only as long as a connection to it, so keep exactly one open.
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let pool = if in_memory {
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?
    } else {
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(parent).await?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        SqlitePoolOptions::new()
            .max_connections(SQLITE_MAX_CONNECTIONS)
            .connect_with(options)
            .await?
    };
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// The PostgreSQL advisory lock that serialises migrations (any constant unique to Tollgate: the
/// bytes of "tollgate" read as an integer).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;

/// Applies every pending migration; a no-op when the schema is current. On PostgreSQL, replicas
/// that start together (each pod migrates at start-up) take turns: the migration runs in one
/// transaction holding a transaction-scoped advisory lock, so the second waits for the first to
/// commit and then finds nothing to do, instead of failing on a table the first is creating.
/// SQLite serves one process, whose file lock orders writers already.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), BillingError> {
    if db.get_database_backend() == DbBackend::Postgres {
        let transaction = db.begin().await?;
        transaction
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock($1)",
                [MIGRATION_LOCK.into()],
            ))
            .await?;
        Migrator::up(&transaction, None).await?;
        transaction.commit().await?;
    } else {
        Migrator::up(db, None).await?;
    }
    Ok(())
}

/// A migrated SQLite database in a fresh temp dir, for unit tests: the dir lives as long as the
/// returned guard.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn scratch_sqlite() -> (tempfile::TempDir, DatabaseConnection) {
    let dir = tempfile::tempdir().unwrap();
    let db = connect(&DatabaseConfig::at(format!(
        "sqlite://{}",
        dir.path().join("scratch.db").display()
    )))
    .await
    .unwrap();
    migrate(&db).await.unwrap();
    (dir, db)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;

    async fn pragma(db: &(impl ConnectionTrait + ?Sized), name: &str) -> String {
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                format!("PRAGMA {name}"),
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0)
            .map(|v| v.to_string())
            .or_else(|_| row.try_get_by_index::<String>(0))
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_file_is_created_durable_and_migrated_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/deeper/billing.db");
        let cfg = DatabaseConfig::at(format!("sqlite://{}", path.display()));
        let db = connect(&cfg).await.unwrap();
        assert!(path.exists());
        assert_eq!(pragma(&db, "journal_mode").await, "wal");
        assert_eq!(pragma(&db, "synchronous").await, "2"); // FULL
        assert_eq!(pragma(&db, "foreign_keys").await, "1");
        assert_eq!(pragma(&db, "busy_timeout").await, "5000");
        migrate(&db).await.unwrap();
        migrate(&db).await.unwrap();
        db.execute(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, secret_hash, updated_at FROM api_keys",
        ))
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn process_crash_durability_stops_waiting_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DatabaseConfig {
            durability: Durability::ProcessCrash,
            ..DatabaseConfig::at(format!("sqlite://{}", dir.path().join("fast.db").display()))
        };
        let db = connect(&cfg).await.unwrap();
        assert_eq!(pragma(&db, "journal_mode").await, "wal");
        assert_eq!(pragma(&db, "synchronous").await, "1"); // NORMAL
        let cfg: DatabaseConfig =
            serde_json::from_str(r#"{"url": "sqlite::memory:", "durability": "process_crash"}"#)
                .unwrap();
        assert_eq!(cfg.durability, Durability::ProcessCrash);
        let err = serde_json::from_str::<DatabaseConfig>(r#"{"durability": "sometimes"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("power_loss") && err.contains("process_crash"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn sqlite_colon_path_and_memory_urls_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.db");
        let db = connect(&DatabaseConfig::at(format!("sqlite:{}", path.display())))
            .await
            .unwrap();
        migrate(&db).await.unwrap();
        assert!(path.exists());

        let db = connect(&DatabaseConfig::at("sqlite::memory:".to_owned()))
            .await
            .unwrap();
        migrate(&db).await.unwrap();
        migrate(&db).await.unwrap();
    }

    #[tokio::test]
    async fn the_wal_is_checkpointed_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = connect(&DatabaseConfig::at(format!(
            "sqlite://{}",
            dir.path().join("checkpoint.db").display()
        )))
        .await
        .unwrap();
        migrate(&db).await.unwrap();
        let writer = writer(&db).await.unwrap();
        writer
            .execute_unprepared("CREATE TABLE probe (x INTEGER)")
            .await
            .unwrap();
        for x in 0..20 {
            writer
                .execute_unprepared(&format!("INSERT INTO probe VALUES ({x})"))
                .await
                .unwrap();
        }
        // The writer's commits left their pages in the WAL; one checkpoint on the pool copies
        // every frame into the database while the writer stays open.
        let done = checkpoint_wal(&db).await.unwrap();
        assert!(done.wal_frames >= 20, "{done:?}");
        assert_eq!(done.checkpointed, done.wal_frames);
        // The next commit starts the WAL over.
        writer
            .execute_unprepared("INSERT INTO probe VALUES (20)")
            .await
            .unwrap();
        let again = checkpoint_wal(&db).await.unwrap();
        assert!(
            again.wal_frames < done.wal_frames,
            "{again:?} after {done:?}"
        );
    }

    #[tokio::test]
    async fn a_sqlite_file_is_written_on_one_connection_with_the_same_pragmas() {
        for durability in [Durability::PowerLoss, Durability::ProcessCrash] {
            let dir = tempfile::tempdir().unwrap();
            let db = connect(&DatabaseConfig {
                durability,
                ..DatabaseConfig::at(format!(
                    "sqlite://{}",
                    dir.path().join("one-writer.db").display()
                ))
            })
            .await
            .unwrap();
            migrate(&db).await.unwrap();
            let writer = writer(&db).await.unwrap();
            assert!(
                matches!(writer, WriterConnection::SqliteFile(_)),
                "{writer:?}"
            );
            assert_eq!(
                db.get_sqlite_connection_pool()
                    .options()
                    .get_max_connections(),
                SQLITE_MAX_CONNECTIONS
            );
            let synchronous = match durability {
                Durability::PowerLoss => "2",    // FULL
                Durability::ProcessCrash => "1", // NORMAL
            };
            for connection in [&writer as &dyn ConnectionTrait, &db] {
                assert_eq!(pragma(connection, "journal_mode").await, "wal");
                assert_eq!(pragma(connection, "synchronous").await, synchronous);
                assert_eq!(pragma(connection, "busy_timeout").await, "5000");
                assert_eq!(pragma(connection, "foreign_keys").await, "1");
            }
            // The writer leaves checkpoints to checkpoint_wal, up to its backstop.
            assert_eq!(pragma(&writer, "wal_autocheckpoint").await, "10000");
            assert_eq!(pragma(&db, "wal_autocheckpoint").await, "1000");
            // The same file: what the writer commits, the readers see.
            for sql in [
                "CREATE TABLE probe (x INTEGER)",
                "INSERT INTO probe VALUES (7)",
            ] {
                writer
                    .execute(Statement::from_string(writer.get_database_backend(), sql))
                    .await
                    .unwrap();
            }
            let seen = db
                .query_one(Statement::from_string(
                    db.get_database_backend(),
                    "SELECT x FROM probe",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index::<i64>(0)
                .unwrap();
            assert_eq!(seen, 7);
            // A transaction of reservations alone commits without waiting for the disk; the
            // next durable one waits again as configured.
            for (x, commit, expected) in [
                (8, crate::writer_connection::Commit::ProcessCrashSafe, "1"),
                (9, crate::writer_connection::Commit::Durable, synchronous),
            ] {
                let txn = writer.begin(commit).await.unwrap();
                txn.execute(Statement::from_string(
                    DbBackend::Sqlite,
                    format!("INSERT INTO probe VALUES ({x})"),
                ))
                .await
                .unwrap();
                txn.commit().await.unwrap();
                assert_eq!(pragma(&writer, "synchronous").await, expected, "{commit:?}");
            }
        }

        // An in-memory database lives in its one connection: it is its own writer.
        let memory = connect(&DatabaseConfig::at("sqlite::memory:".to_owned()))
            .await
            .unwrap();
        let same = super::writer(&memory).await.unwrap();
        assert!(matches!(same, WriterConnection::Pooled(_)), "{same:?}");
        same.execute(Statement::from_string(
            same.get_database_backend(),
            "CREATE TABLE probe (x INTEGER)",
        ))
        .await
        .unwrap();
        memory
            .execute(Statement::from_string(
                memory.get_database_backend(),
                "SELECT x FROM probe",
            ))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn rejects_unknown_schemes_without_leaking_passwords() {
        let err = connect(&DatabaseConfig::at(
            "mysql://root:hunter2@localhost/db".to_owned(),
        ))
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("mysql://root:***@localhost/db"), "{text}");
        assert!(!text.contains("hunter2"));
    }
}
