//! The connection the ledger writer writes on ([`crate::db::writer`] opens it), whichever it is:
//! sea-orm's sqlx connection (PostgreSQL, an in-memory SQLite database), or on a SQLite file the
//! writer's own synchronous connection ([`crate::sqlite_writer`]). Both are a sea-orm
//! [`ConnectionTrait`], and so are their transactions ([`WriterTransaction`]), so the writer's
//! SQL (the ledger's and the accounts') is built and read the same way on either; only where a
//! statement runs differs.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement, TransactionTrait,
};

use crate::sqlite_writer::{SqliteTransaction, SqliteWriterConnection};

/// Where the ledger writer's statements run.
#[derive(Debug)]
pub enum WriterConnection {
    /// A sea-orm (sqlx) connection: the writer is a task on the runtime.
    Pooled(DatabaseConnection),
    /// A SQLite file's own connection: the writer is a thread that owns it.
    SqliteFile(SqliteWriterConnection),
}

/// What a transaction's commit waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// What `[database] durability` says: with `power_loss`, the disk (fsync).
    Durable,
    /// The database only, never the disk: the commit survives the process (`kill -9`), and the
    /// next durable commit's fsync makes it durable too (SQLite's WAL and PostgreSQL's WAL are
    /// written in order). For reservations alone: a hold is not money moved, and a power loss
    /// that loses one also ends the request it was held for on that machine.
    ProcessCrashSafe,
}

impl WriterConnection {
    /// Begins a transaction whose commit waits for what `commit` says.
    pub(crate) async fn begin(&self, commit: Commit) -> Result<WriterTransaction<'_>, DbErr> {
        Ok(match self {
            Self::Pooled(db) => {
                let txn = db.begin().await?;
                if commit == Commit::ProcessCrashSafe
                    && txn.get_database_backend() == DbBackend::Postgres
                {
                    txn.execute_unprepared("SET LOCAL synchronous_commit = off")
                        .await?;
                }
                WriterTransaction::Pooled(txn)
            }
            Self::SqliteFile(conn) => WriterTransaction::SqliteFile(conn.begin(commit)?),
        })
    }

    fn inner(&self) -> &dyn ConnectionTrait {
        match self {
            Self::Pooled(db) => db,
            Self::SqliteFile(conn) => conn,
        }
    }
}

/// An open transaction on a [`WriterConnection`]; rolled back when dropped uncommitted.
pub(crate) enum WriterTransaction<'a> {
    Pooled(DatabaseTransaction),
    SqliteFile(SqliteTransaction<'a>),
}

impl WriterTransaction<'_> {
    /// Commits; a failed commit is an error, and the transaction is rolled back.
    pub(crate) async fn commit(self) -> Result<(), DbErr> {
        match self {
            Self::Pooled(txn) => txn.commit().await,
            Self::SqliteFile(txn) => txn.commit(),
        }
    }

    fn inner(&self) -> &dyn ConnectionTrait {
        match self {
            Self::Pooled(txn) => txn,
            Self::SqliteFile(txn) => txn.connection(),
        }
    }
}

/// `ConnectionTrait` for a type whose `inner()` is the connection its statements run on.
macro_rules! delegate_connection_trait {
    ($type:ty) => {
        #[async_trait::async_trait]
        impl ConnectionTrait for $type {
            fn get_database_backend(&self) -> DbBackend {
                self.inner().get_database_backend()
            }

            async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                self.inner().execute(stmt).await
            }

            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                self.inner().execute_unprepared(sql).await
            }

            async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                self.inner().query_one(stmt).await
            }

            async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
                self.inner().query_all(stmt).await
            }
        }
    };
}

delegate_connection_trait!(WriterConnection);
delegate_connection_trait!(WriterTransaction<'_>);
