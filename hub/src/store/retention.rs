//! Retention: deletes readings older than the configured age, by device
//! time. Finding what is due is a read on the pool (it takes no lock the
//! writer needs); the deletes themselves go through the writer, a chunk at a
//! time between its group commits, so the running hub keeps a single writer
//! and nobody waits in SQLite's busy handler. A sweep with nothing due
//! writes nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::writer::WriterHandle;
use super::{Store, StoreError, now_ms};
use crate::commits::RetentionCutoff;

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("reading what is due: {0}")]
    Store(#[from] StoreError),
    #[error("deleting: {0}")]
    Writer(String),
}

impl Store {
    /// The metrics that hold readings older than `before_ms`: one index seek
    /// per metric, on a reader connection.
    ///
    /// # Errors
    /// A database failure.
    pub async fn metrics_with_readings_before(
        &self,
        before_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM metrics
             WHERE EXISTS (SELECT 1 FROM samples WHERE metric = metrics.id AND ts_ms < ?)
             ORDER BY id",
        )
        .bind(before_ms)
        .fetch_all(self.pool())
        .await?)
    }
}

/// Deletes every reading older than `before_ms`, chunk by chunk through the
/// writer. Returns how many were deleted.
///
/// # Errors
/// The due metrics cannot be read, or the writer fails a chunk.
pub async fn sweep(
    store: &Store,
    writer: &WriterHandle,
    before_ms: i64,
) -> Result<usize, SweepError> {
    let mut due = store.metrics_with_readings_before(before_ms).await?;
    let mut deleted = 0;
    while !due.is_empty() {
        let chunk = writer
            .retain(due.clone(), before_ms)
            .await
            .map_err(SweepError::Writer)?;
        deleted += chunk.deleted;
        due.drain(..chunk.finished);
    }
    Ok(deleted)
}

/// Runs a retention sweep every `every`, deleting readings older than
/// `keep`, until `shutdown`. `cutoff` is raised before each sweep, so
/// consumers stop serving what it is about to delete.
pub async fn run(
    store: Store,
    writer: WriterHandle,
    keep: Duration,
    every: Duration,
    cutoff: RetentionCutoff,
    shutdown: CancellationToken,
) {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = now_ms().saturating_sub(keep_ms);
        cutoff.raise(before);
        let swept = tokio::select! {
            () = shutdown.cancelled() => return,
            swept = sweep(&store, &writer, before) => swept,
        };
        match swept {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retention removed old readings"),
            Err(err) => tracing::warn!(error = %err, "retention sweep failed; will retry"),
        }
    }
}
