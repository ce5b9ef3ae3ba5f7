//! Online backup: a consistent copy of the database as of one commit,
//! made while the hub goes on writing.
//!
//! `VACUUM INTO` on one of the pool's reading connections: it reads inside
//! one read transaction, so the copy holds every commit before it and none
//! after (never part of a batch), and under WAL the writer's commits go on
//! meanwhile (only checkpoints wait for it, so the WAL grows for as long as
//! it runs). The copy leaves out free pages, so it is as small as the data.
//! It is written beside its destination as `FILE.partial`, checked with
//! `PRAGMA integrity_check`, flushed to disk and only then renamed: a file
//! at the destination is always a whole backup.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use super::{Store, StoreError};

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backup {
    /// The file's size, in bytes.
    pub bytes: u64,
    /// The last storage position it holds (readings and events): a hub
    /// started on it continues from there.
    pub last_pos: i64,
    /// How long making it took, in ms.
    pub took_ms: u64,
}

/// Why a backup was not made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} already exists: a backup never replaces a file")]
    Exists(PathBuf),
    #[error("the copy failed its integrity check: {0}")]
    Damaged(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for BackupError {
    fn from(err: sqlx::Error) -> Self {
        BackupError::Store(err.into())
    }
}

/// `FILE.partial`, where the copy is made.
pub fn partial_of(to: &Path) -> PathBuf {
    let mut name = to.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

impl Store {
    /// Copies the database to `to`, which must not exist.
    ///
    /// # Errors
    /// `to` exists, the copy cannot be written (the folder, the disk), or
    /// it fails its integrity check.
    pub async fn backup_to(&self, to: &Path) -> Result<Backup, BackupError> {
        let started = Instant::now();
        if to.exists() {
            return Err(BackupError::Exists(to.to_owned()));
        }
        let partial = partial_of(to);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BackupError::Io { path, source }
        };
        // What an interrupted backup left.
        match std::fs::remove_file(&partial) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&partial)(err));
            }
            _ => {}
        }
        let target = partial.to_str().ok_or_else(|| BackupError::Io {
            path: partial.clone(),
            source: std::io::Error::other("not a UTF-8 path"),
        })?;
        sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(self.pool())
            .await?;
        let last_pos = match check(&partial).await {
            Ok(last_pos) => last_pos,
            Err(err) => {
                let _ = std::fs::remove_file(&partial);
                return Err(err);
            }
        };
        // Durable before it takes the name, and the name durable too.
        std::fs::File::open(&partial)
            .and_then(|file| file.sync_all())
            .map_err(io(&partial))?;
        std::fs::rename(&partial, to).map_err(io(to))?;
        if let Some(folder) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(folder)
                .and_then(|dir| dir.sync_all())
                .map_err(io(folder))?;
        }
        let bytes = std::fs::metadata(to).map_err(io(to))?.len();
        Ok(Backup {
            bytes,
            last_pos,
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// Opens the copy read-only: its integrity, and its last position.
async fn check(copy: &Path) -> Result<i64, BackupError> {
    let options = SqliteConnectOptions::new()
        .filename(copy)
        .read_only(true)
        .busy_timeout(Duration::from_secs(10));
    let mut db = SqliteConnection::connect_with(&options).await?;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await?;
    if verdict != "ok" {
        return Err(BackupError::Damaged(verdict));
    }
    // The samples' sequence is the last position of readings and events
    // alike (the writer moves it past every event).
    let last_pos: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'samples'")
            .fetch_optional(&mut db)
            .await?;
    db.close().await?;
    Ok(last_pos.unwrap_or(0))
}
