//! The ring of recent commits, formatted: what live subscribers read when
//! they are close to the head. Bounded in bytes of text; the oldest commits
//! are evicted first, and a subscriber that still needed them reads SQLite.
//! Pure data, no locking or I/O: [`super::Live`] holds it behind a mutex.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Bytes;

use crate::commits::Position;

/// What an event of a chunk is about, for filters.
#[derive(Debug, Clone)]
pub(super) enum Subject {
    /// A reading of this `metrics.id` row.
    Metric(i64),
    /// An event of this device, of this kind (`status`, `alert`).
    Event {
        device: Arc<str>,
        kind: &'static str,
    },
}

/// One reading or event inside a chunk's text.
#[derive(Debug, Clone)]
pub(super) struct EventSpan {
    pub pos: Position,
    pub subject: Subject,
    /// Device time (the hub's, for an event), for retention.
    pub ts_ms: i64,
    pub start: usize,
    pub end: usize,
}

/// One commit's readings and events, formatted as SSE events.
#[derive(Debug)]
pub struct Chunk {
    pub(super) first_pos: Position,
    pub(super) last_pos: Position,
    /// The oldest time among its readings and events.
    pub(super) min_ts: i64,
    pub(super) text: Bytes,
    pub(super) events: Vec<EventSpan>,
    /// Whether it holds an `audit` event, which only some subscribers see.
    pub(super) has_audit: bool,
}

/// Where a cursor stands against the ring.
#[derive(Debug)]
pub(super) enum RingRead {
    /// The first commit past the cursor.
    Next(Arc<Chunk>),
    /// Readings past the cursor are no longer (or not yet) in the ring:
    /// read them from SQLite.
    Behind,
    /// Nothing past the cursor has been published.
    UpToDate,
}

#[derive(Debug)]
pub(super) struct Ring {
    chunks: VecDeque<Arc<Chunk>>,
    bytes: usize,
    budget: usize,
}

impl Ring {
    /// A ring keeping at most `budget` bytes of text (and always the newest
    /// commit, however large).
    pub fn new(budget: usize) -> Self {
        Ring {
            chunks: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Appends a commit, evicting the oldest ones past the budget.
    pub fn push(&mut self, chunk: Arc<Chunk>) {
        self.bytes += chunk.text.len();
        self.chunks.push_back(chunk);
        while self.bytes > self.budget && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.text.len();
            }
        }
    }

    /// What a cursor at `cursor` reads next, when `head` is the last
    /// position published.
    pub fn after(&self, cursor: Position, head: Position) -> RingRead {
        let Some(front) = self.chunks.front() else {
            return if head > cursor {
                RingRead::Behind
            } else {
                RingRead::UpToDate
            };
        };
        if front.first_pos > cursor + 1 {
            return RingRead::Behind;
        }
        let next = self
            .chunks
            .partition_point(|chunk| chunk.last_pos <= cursor);
        match self.chunks.get(next) {
            Some(chunk) => RingRead::Next(Arc::clone(chunk)),
            None => RingRead::UpToDate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit of positions `first..=last`, 10 bytes of text each.
    fn chunk(first: Position, last: Position) -> Arc<Chunk> {
        let events: Vec<EventSpan> = (first..=last)
            .zip(0..)
            .map(|(pos, i)| EventSpan {
                pos,
                subject: Subject::Metric(1),
                ts_ms: 0,
                start: i * 10,
                end: i * 10 + 10,
            })
            .collect();
        Arc::new(Chunk {
            first_pos: first,
            last_pos: last,
            min_ts: 0,
            text: Bytes::from(vec![b'x'; events.len() * 10]),
            events,
            has_audit: false,
        })
    }

    fn next_range(read: RingRead) -> Option<(Position, Position)> {
        match read {
            RingRead::Next(chunk) => Some((chunk.first_pos, chunk.last_pos)),
            RingRead::Behind | RingRead::UpToDate => None,
        }
    }

    #[test]
    fn a_cursor_reads_the_first_commit_past_it() {
        let mut ring = Ring::new(1_000);
        ring.push(chunk(1, 3));
        ring.push(chunk(4, 6));
        assert_eq!(next_range(ring.after(0, 6)), Some((1, 3)));
        assert_eq!(next_range(ring.after(2, 6)), Some((1, 3)));
        assert_eq!(next_range(ring.after(3, 6)), Some((4, 6)));
        assert!(matches!(ring.after(6, 6), RingRead::UpToDate));
    }

    #[test]
    fn the_oldest_commits_are_evicted_past_the_budget() {
        let mut ring = Ring::new(50);
        ring.push(chunk(1, 3)); // 30 bytes
        ring.push(chunk(4, 5)); // 50
        ring.push(chunk(6, 6)); // 60: the first commit goes
        assert_eq!(ring.bytes, 30);
        assert_eq!(ring.chunks.len(), 2);
        assert!(
            matches!(ring.after(0, 6), RingRead::Behind),
            "a cursor before the evicted commit must read SQLite"
        );
        assert_eq!(next_range(ring.after(3, 6)), Some((4, 5)));
    }

    #[test]
    fn the_newest_commit_stays_even_above_the_budget() {
        let mut ring = Ring::new(5);
        ring.push(chunk(1, 1));
        ring.push(chunk(2, 4));
        assert_eq!(ring.chunks.len(), 1);
        assert_eq!(next_range(ring.after(1, 4)), Some((2, 4)));
    }

    #[test]
    fn an_empty_ring_sends_a_cursor_behind_the_head_to_sqlite() {
        let ring = Ring::new(100);
        assert!(matches!(ring.after(0, 7), RingRead::Behind));
        assert!(matches!(ring.after(7, 7), RingRead::UpToDate));
    }
}
