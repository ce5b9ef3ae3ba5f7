//! Storage: the SQLite file that is the source of truth.
//!
//! [`Store`] opens the database (WAL, migrations applied) through a sqlx
//! pool, which serves every read (sessions' lookups, the API, SSE catch-up,
//! what retention must sweep) and the CLI's changes. While the hub runs,
//! everything is written by the [`writer`] on its own connection: readings,
//! positions, what a device's connection registers, retention's deletes.

pub mod access;
pub mod alerts;
pub mod backup;
pub mod blocks;
pub mod buckets;
pub mod compaction;
pub mod configuration;
pub mod devices;
pub mod lock;
pub mod query;
pub mod retention;
mod slab_cache;
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
    /// Compacted slabs decoded for cursor consumers.
    slabs: std::sync::Arc<slab_cache::SlabCache>,
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
            slabs: std::sync::Arc::default(),
        })
    }

    /// The connection pool, for readers and short writes.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file: the writer's own connection opens it, and a
    /// backup's copy is made beside it.
    pub fn path(&self) -> &Path {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `(ts_ms, n, mean, min, max)` of a bucket.
    type BucketRow = (i64, i64, Option<f64>, Option<f64>, Option<f64>);

    /// A database at `path` as a hub wrote it before migration `before`
    /// (`"0003"`): the migrations before it only.
    async fn migrated_before(path: &Path, before: &str) -> SqlitePool {
        let migrations = tempfile::tempdir().unwrap();
        let all = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"));
        for entry in std::fs::read_dir(all).unwrap() {
            let name = entry.unwrap().file_name();
            if name.to_string_lossy().as_ref() < before {
                std::fs::copy(all.join(&name), migrations.path().join(&name)).unwrap();
            }
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(migrations.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        pool
    }

    /// A database as the hub wrote it before the roll-ups' migration: the
    /// first two migrations only, and raw readings in it.
    async fn written_before_rollups(path: &Path) {
        let pool = migrated_before(path, "0003").await;
        sqlx::query("INSERT INTO devices (device_id, created_ms) VALUES ('old', 0)")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO metrics (device, name, unit) VALUES (1, 't', 'u')")
            .execute(&pool)
            .await
            .unwrap();
        // Two minutes of one reading every 10 s, one of them NULL.
        for (i, ts_ms) in (0..120_000).step_by(10_000).enumerate() {
            let value = (i != 3).then_some(i as f64);
            sqlx::query("INSERT INTO samples (metric, ts_ms, value) VALUES (1, ?, ?)")
                .bind(ts_ms)
                .bind(value)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }

    #[tokio::test]
    async fn the_access_migration_keeps_every_event_and_the_views_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let pool = migrated_before(&path, "0008").await;
        for statement in [
            "INSERT INTO devices (device_id, created_ms) VALUES ('old', 0)",
            r#"INSERT INTO events VALUES (1, 1, 5, 'status', '{"online":true}')"#,
            r#"INSERT INTO events VALUES (2, 1, 6, 'alert',
                '{"rule":"hot","state":"firing","severity":"warning","message":"m"}')"#,
        ] {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;

        let store = Store::open(&path, PoolDurability::EveryCommit)
            .await
            .unwrap();
        let events: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT pos, device, kind FROM device_events ORDER BY pos")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(
            events,
            [
                (1, "old".into(), "status".into()),
                (2, "old".into(), "alert".into())
            ]
        );
        let alert: (i64, String, String) = sqlx::query_as("SELECT id, rule, state FROM alerts")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(alert, (2, "hot".into(), "firing".into()));
        // An event of no device now fits, and the audit view shows it.
        sqlx::query(
            r#"INSERT INTO events VALUES (3, NULL, 7, 'audit', '{"by":"boss","action":"key.add"}')"#,
        )
        .execute(store.pool())
        .await
        .unwrap();
        let audit: (String, String, Option<String>) =
            sqlx::query_as("SELECT by, action, device FROM audit")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(audit, ("boss".into(), "key.add".into(), None));
    }

    #[tokio::test]
    async fn the_rollups_migration_rolls_up_what_a_database_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        written_before_rollups(&path).await;
        let store = Store::open(&path, PoolDurability::EveryCommit)
            .await
            .unwrap();
        let minutes: Vec<BucketRow> = sqlx::query_as(
            "SELECT ts_ms, n, mean, min, max FROM readings_1m WHERE device = 'old' ORDER BY ts_ms",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(
            minutes,
            [
                (
                    0,
                    6,
                    Some((1 + 2 + 4 + 5) as f64 / 5.0),
                    Some(0.0),
                    Some(5.0)
                ),
                (
                    60_000,
                    6,
                    Some((6..12).sum::<i64>() as f64 / 6.0),
                    Some(6.0),
                    Some(11.0)
                ),
            ]
        );
        let hours: (i64, i64) = sqlx::query_as("SELECT ts_ms, n FROM readings_1h")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(hours, (0, 12));
    }
}
