//! Retention: deletes readings older than the configured age, by device
//! time, and roll-up buckets older than theirs (buckets outlive the raw rows
//! they summarise: they are written in the same commit as the readings). Finding what is due is a read on the pool (it takes no lock the
//! writer needs); the deletes themselves go through the writer, a chunk at a
//! time between its group commits, so the running hub keeps a single writer
//! and nobody waits in SQLite's busy handler. A sweep with nothing due
//! writes nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::writer::rollup::{self, Tier};
use super::writer::{Retainable, WriteError, WriterHandle};
use super::{Store, StoreError, now_ms};
use crate::commits::RetentionCutoff;

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("reading what is due: {0}")]
    Store(#[from] StoreError),
    #[error("deleting: {0}")]
    Writer(#[from] WriteError),
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
             WHERE EXISTS (SELECT 1 FROM samples WHERE metric = metrics.id AND ts_ms < ?1)
                OR EXISTS (SELECT 1 FROM sample_blocks WHERE metric = metrics.id AND max_ms < ?1)
             ORDER BY id",
        )
        .bind(before_ms)
        .fetch_all(self.pool())
        .await?)
    }

    /// The metrics with buckets of `tier` that start before `before_ms`:
    /// one key seek per metric.
    ///
    /// # Errors
    /// A database failure.
    pub async fn metrics_with_buckets_before(
        &self,
        tier: Tier,
        before_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let sql = if tier == rollup::MINUTES {
            "SELECT id FROM metrics WHERE EXISTS
                 (SELECT 1 FROM rollups_1m WHERE metric = metrics.id AND bucket_ms < ?) ORDER BY id"
        } else {
            "SELECT id FROM metrics WHERE EXISTS
                 (SELECT 1 FROM rollups_1h WHERE metric = metrics.id AND bucket_ms < ?) ORDER BY id"
        };
        Ok(sqlx::query_scalar(sql)
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
    let due = store.metrics_with_readings_before(before_ms).await?;
    sweep_due(writer, Retainable::Readings, due, before_ms).await
}

/// Deletes every bucket of `tier` that starts before `before_ms`, chunk by
/// chunk through the writer. Returns how many were deleted.
///
/// # Errors
/// The due metrics cannot be read, or the writer fails a chunk.
pub async fn sweep_buckets(
    store: &Store,
    writer: &WriterHandle,
    tier: Tier,
    before_ms: i64,
) -> Result<usize, SweepError> {
    let due = store.metrics_with_buckets_before(tier, before_ms).await?;
    sweep_due(writer, Retainable::Buckets(tier), due, before_ms).await
}

async fn sweep_due(
    writer: &WriterHandle,
    what: Retainable,
    mut due: Vec<i64>,
    before_ms: i64,
) -> Result<usize, SweepError> {
    let mut deleted = 0;
    while !due.is_empty() {
        let chunk = writer
            .retain(what, due.clone(), before_ms)
            .await
            .map_err(SweepError::Writer)?;
        deleted += chunk.deleted;
        due.drain(..chunk.finished);
    }
    Ok(deleted)
}

/// Deletes events older than `before_ms` (the hub's time), a chunk at a
/// time through the writer. Returns how many went.
///
/// # Errors
/// The writer fails a chunk.
pub async fn sweep_events(writer: &WriterHandle, before_ms: i64) -> Result<usize, SweepError> {
    let mut deleted = 0;
    loop {
        let chunk = writer
            .retain(Retainable::Events, Vec::new(), before_ms)
            .await
            .map_err(SweepError::Writer)?;
        deleted += chunk.deleted;
        if chunk.finished > 0 {
            return Ok(deleted);
        }
    }
}

/// How long each kind of history is kept; `None` is forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// Raw readings, by device time (`--retention`).
    pub readings: Option<Duration>,
    /// Minute buckets (`--rollup-retention`).
    pub minutes: Option<Duration>,
    /// Hour buckets (`--rollup-retention-hours`).
    pub hours: Option<Duration>,
}

impl Keep {
    /// Whether anything is ever deleted.
    pub fn deletes(&self) -> bool {
        self.readings.is_some() || self.minutes.is_some() || self.hours.is_some()
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Runs a retention sweep every `every` until `shutdown`: readings older
/// than `keep.readings`, and buckets that ended longer ago than their
/// tier's keep. `cutoff` is raised before each sweep of readings, so
/// consumers stop serving what it is about to delete.
pub async fn run(
    store: Store,
    writer: WriterHandle,
    keep: Keep,
    every: Duration,
    cutoff: RetentionCutoff,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        if let Some(readings) = keep.readings {
            let before = now.saturating_sub(ms(readings));
            cutoff.raise(before);
            let swept = tokio::select! {
                () = shutdown.cancelled() => return,
                swept = sweep(&store, &writer, before) => swept,
            };
            report(swept, "readings");
            // Events are kept as long as readings.
            let swept = tokio::select! {
                () = shutdown.cancelled() => return,
                swept = sweep_events(&writer, before) => swept,
            };
            report(swept, "events");
        }
        for (tier, kept) in [(rollup::MINUTES, keep.minutes), (rollup::HOURS, keep.hours)] {
            let Some(kept) = kept else { continue };
            // A bucket goes once all of it is older than the keep.
            let before = now.saturating_sub(ms(kept)).saturating_sub(tier.width_ms) + 1;
            let swept = tokio::select! {
                () = shutdown.cancelled() => return,
                swept = sweep_buckets(&store, &writer, tier, before) => swept,
            };
            report(swept, tier.table);
        }
    }
}

fn report(swept: Result<usize, SweepError>, what: &str) {
    match swept {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, what, "retention removed old rows"),
        Err(err) => tracing::warn!(error = %err, what, "retention sweep failed; will retry"),
    }
}
