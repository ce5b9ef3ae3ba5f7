//! Retention: deletes readings older than the configured age, by device
//! time, in small chunks so the writer never waits long for the lock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, now_ms};
use crate::commits::RetentionCutoff;

/// Rows deleted per transaction. Small enough that a chunk takes a few
/// milliseconds, so ingest stalls no longer than that.
const CHUNK_ROWS: i64 = 2_000;

impl Store {
    /// Deletes every reading with `ts_ms < cutoff_ms`, one metric and one
    /// chunk at a time through the (metric, ts_ms) index. Returns how many
    /// were deleted.
    ///
    /// # Errors
    /// A database failure.
    pub async fn delete_before(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let metrics: Vec<i64> = sqlx::query_scalar("SELECT id FROM metrics ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        let mut deleted = 0;
        for metric in metrics {
            loop {
                let chunk = self.delete_chunk(metric, cutoff_ms).await?;
                deleted += chunk;
                if chunk < CHUNK_ROWS as u64 {
                    break;
                }
                // Let the writer take the lock between chunks.
                tokio::task::yield_now().await;
            }
        }
        Ok(deleted)
    }
}

impl Store {
    /// Deletes one chunk of a metric's old readings and raises the retention
    /// watermark (the largest position deleted) in the same transaction, so
    /// live subscribers can tell they missed something.
    async fn delete_chunk(&self, metric: i64, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let positions: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM samples WHERE pos IN (
                 SELECT pos FROM samples WHERE metric = ? AND ts_ms < ? LIMIT ?)
             RETURNING pos",
        )
        .bind(metric)
        .bind(cutoff_ms)
        .bind(CHUNK_ROWS)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(&max) = positions.iter().max() {
            sqlx::query(
                "UPDATE hub_state SET value = max(value, ?) WHERE key = 'retention_deleted_through'",
            )
            .bind(max)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(positions.len() as u64)
    }
}

/// Runs a retention sweep every `every`, deleting readings older than
/// `keep`, until `shutdown`. `cutoff` is raised before each sweep, so
/// consumers stop serving what it is about to delete.
pub async fn run(
    store: Store,
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
        match store.delete_before(before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retention removed old readings"),
            Err(err) => tracing::warn!(error = %err, "retention sweep failed; will retry"),
        }
    }
}
