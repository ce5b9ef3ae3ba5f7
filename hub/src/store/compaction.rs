//! Compaction: readings older than `--compact-after` leave `samples` (a row
//! and an index entry each, about 48 bytes) for `sample_blocks` (one JSON
//! row per metric and slab, about 20 bytes a reading), a slab of storage
//! positions at a time, oldest first. The `readings` view, the API, live
//! catch-up and the bridge read both, so nothing a reader can ask for
//! changes; only the bytes do.
//!
//! A slab is compacted once every position in it was committed at least
//! `--compact-after` ago, as this process saw it: the task notes the head
//! position every tick, and a slab whose end is at or below the head noted
//! that long ago is due. After a restart the clock starts again, so recent
//! readings are never compacted early.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::blocks::{SLAB, slab_end};
use super::writer::{WriteError, WriterHandle};
use super::{Store, StoreError};

/// Readings one writer step moves at most (whole metrics, so a block is
/// never split): a few milliseconds of the writer's time between two group
/// commits.
const STEP_READINGS: usize = 4_096;

/// How often the task notes the head and looks for due slabs.
const TICK: Duration = Duration::from_secs(10);

/// Head positions noted over the last `--compact-after`: at most about
/// this many, as a note is taken at most every `--compact-after / NOTES`
/// and dropped once a newer one is also old enough. Should it fill anyway,
/// the oldest note goes, which only delays compaction.
const NOTES: usize = 4_096;

/// Why a compaction pass stopped; the next tick tries again.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the writer could not compact: {0}")]
    Writer(#[from] WriteError),
}

impl Store {
    /// The highest position committed, compacted or not (0 if none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn head_pos(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'samples'")
                .fetch_optional(self.pool())
                .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Each metric's positions in `samples` within `lo..=hi`, in position
    /// order: one range of the table's primary key.
    async fn slab_positions(&self, lo: i64, hi: i64) -> Result<Vec<(i64, Vec<i64>)>, StoreError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT pos, metric FROM samples WHERE pos >= ? AND pos <= ? ORDER BY pos",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(self.pool())
        .await?;
        let mut by_metric: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (pos, metric) in rows {
            by_metric.entry(metric).or_default().push(pos);
        }
        Ok(by_metric.into_iter().collect())
    }
}

/// Moves the slab starting at `lo` into blocks, a step at a time through
/// the writer, then records it as compacted. Returns how many readings
/// moved.
///
/// # Errors
/// A read fails or the writer fails a step; what moved stays moved, and
/// compacting the slab again moves the rest.
pub async fn compact_slab(
    store: &Store,
    writer: &WriterHandle,
    lo: i64,
) -> Result<usize, CompactError> {
    let hi = slab_end(lo);
    let mut metrics = store.slab_positions(lo, hi).await?;
    let mut moved = 0;
    while !metrics.is_empty() {
        let mut take = 0;
        let mut readings = 0;
        while take < metrics.len()
            && (take == 0 || readings + metrics[take].1.len() <= STEP_READINGS)
        {
            readings += metrics[take].1.len();
            take += 1;
        }
        let step: Vec<(i64, Vec<i64>)> = metrics.drain(..take).collect();
        moved += writer.compact(step).await.map_err(CompactError::Writer)?;
    }
    writer
        .set_state("compacted_through", hi)
        .await
        .map_err(CompactError::Writer)?;
    Ok(moved)
}

/// The positions this process saw committed, with when: what tells a slab
/// old enough to compact.
#[derive(Debug)]
struct HeadNotes {
    notes: VecDeque<(Instant, i64)>,
    /// The least time between two notes.
    gap: Duration,
}

impl HeadNotes {
    fn new(after: Duration) -> HeadNotes {
        HeadNotes {
            notes: VecDeque::new(),
            gap: after / u32::try_from(NOTES).unwrap_or(u32::MAX),
        }
    }

    fn note(&mut self, at: Instant, head: i64) {
        if self
            .notes
            .back()
            .is_some_and(|&(last, _)| at.duration_since(last) < self.gap)
        {
            return;
        }
        if self.notes.len() == NOTES {
            self.notes.pop_front();
        }
        self.notes.push_back((at, head));
    }

    /// The highest position known committed at or before `cutoff` (0 if
    /// none). Notes older than the newest such one are dropped.
    fn aged(&mut self, cutoff: Instant) -> i64 {
        while self.notes.len() > 1 && self.notes[1].0 <= cutoff {
            self.notes.pop_front();
        }
        match self.notes.front() {
            Some(&(at, head)) if at <= cutoff => head,
            _ => 0,
        }
    }
}

/// Compacts every slab once it is `after` old, until `shutdown`.
pub async fn run(store: Store, writer: WriterHandle, after: Duration, shutdown: CancellationToken) {
    let mut notes = HeadNotes::new(after);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pass = async {
            let now = Instant::now();
            notes.note(now, store.head_pos().await?);
            // Before the clock can reach back that far, nothing is old enough.
            let aged = now
                .checked_sub(after)
                .map_or(0, |cutoff| notes.aged(cutoff));
            let mut through = store.state("compacted_through").await?.unwrap_or(0);
            let mut moved = 0;
            while through + SLAB <= aged {
                moved += compact_slab(&store, &writer, through + 1).await?;
                through += SLAB;
            }
            Ok::<usize, CompactError>(moved)
        };
        let moved = tokio::select! {
            () = shutdown.cancelled() => return,
            moved = pass => moved,
        };
        match moved {
            Ok(0) => {}
            Ok(moved) => tracing::info!(moved, "compacted old readings"),
            Err(err) => tracing::warn!(error = %err, "compaction failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_aged_once_a_note_that_covers_it_is_old_enough() {
        let start = Instant::now();
        let mut notes = HeadNotes::new(Duration::ZERO);
        assert_eq!(notes.aged(start), 0);
        notes.note(start, 10);
        notes.note(start + Duration::from_secs(10), 50);
        notes.note(start + Duration::from_secs(20), 90);
        assert_eq!(notes.aged(start + Duration::from_secs(5)), 10);
        assert_eq!(notes.aged(start + Duration::from_secs(15)), 50);
        // The note of 10 is gone, the rest wait.
        assert_eq!(notes.notes.len(), 2);
        assert_eq!(notes.aged(start + Duration::from_secs(60)), 90);
    }

    #[test]
    fn notes_stay_few_however_long_the_wait() {
        let day = Duration::from_secs(86_400);
        let start = Instant::now();
        let mut notes = HeadNotes::new(day);
        // A tick every 10 s for two days.
        for tick in 0..17_280u32 {
            let at = start + Duration::from_secs(10) * tick;
            notes.note(at, i64::from(tick));
            let aged = notes.aged(at.checked_sub(day).unwrap_or(start));
            if at >= start + day + Duration::from_secs(60) {
                assert!(aged > 0, "a day-old head is known at {tick}");
            }
        }
        assert!(notes.notes.len() <= NOTES + 1, "{}", notes.notes.len());
    }
}
