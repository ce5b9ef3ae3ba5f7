//! Storage: the SQLite file that is the source of truth.
//!
//! [`Store`] opens the database (WAL, migrations applied) through a sqlx
//! pool, which serves every read (sessions' lookups, the API, SSE catch-up,
//! what retention must sweep) and the CLI's changes. While the hub runs,
//! everything is written by the [`writer`] on its own connection: readings,
//! positions, what a device's connection registers, retention's deletes.

pub mod devices;
pub mod query;
pub mod retention;
pub mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("could not apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("writer's database error: {0}")]
    Writer(#[from] rusqlite::Error),
    #[error("cannot start the writer: {0}")]
    Thread(#[from] std::io::Error),
    #[error(
        "{0} can only be read (its mode, an immutable flag or a read-only mount): \
         the hub writes every reading to it"
    )]
    ReadOnly(PathBuf),
}

/// When the pool's own commits (the CLI's changes) reach the disk. The
/// writer's commits are always fsynced (`synchronous=FULL`, set on its own
/// connection): that is what an Ack promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolDurability {
    /// fsync at every commit: for one-off changes such as `hub device add`.
    EveryCommit,
    /// fsync with the writer's next commit. The WAL is written in order, so
    /// the fsync of a later commit makes every earlier one durable, and a
    /// device's readings are acknowledged only after such a commit. For the
    /// running hub, where ten thousand devices registering at once must not
    /// queue for an fsync each.
    WithWriter,
}

/// A handle on the database, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating it if absent) the database at `path` and applies the
    /// migrations.
    ///
    /// # Errors
    /// The file cannot be opened or a migration fails.
    pub async fn open(path: &Path, durability: PoolDurability) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool_sync = match durability {
            PoolDurability::EveryCommit => SqliteSynchronous::Full,
            PoolDurability::WithWriter => SqliteSynchronous::Normal,
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.synchronous(pool_sync))
            .await?;
        sqlx::migrate!("../migrations").run(&pool).await?;
        Ok(Store {
            pool,
            path: path.to_owned(),
        })
    }

    /// The connection pool, for readers and short writes.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file, for the writer's own connection.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// The database cannot run a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        conn.ping().await?;
        Ok(())
    }

    /// Closes every connection, waiting for them to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp column.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
