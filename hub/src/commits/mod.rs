//! Commits: the seam between the writer and everything that consumes
//! committed readings and events.
//!
//! The types here are what flows along the pipeline — a [`Sample`] on its
//! way in, a [`Committed`] reading on its way out, an [`Event`] (a device's
//! status, in [`event`]), a [`Commit`] of both, their [`Position`]s — and
//! the two ways of consuming commits. They depend on nothing else in the
//! hub, so `ingest`, `store`, the cluster journal and every consumer
//! (`live`, the MQTT bridge) can use them without importing each other.
//!
//! * **In-line consumers** ([`InlineConsumer`]) run on the writer's
//!   publisher thread, in commit order, after the commit is durable and
//!   before any session sends its Ack. They must never block: a slow one
//!   delays every Ack. The live fan-out is one (it formats each reading once
//!   and appends it to its ring).
//! * **Cursor consumers** keep their own [`Position`] and follow the
//!   [`Head`]: when it moves past them they read what they lack from memory
//!   or from SQLite (`store::query::Page`), at their own pace. Nothing waits
//!   for them, so a slow or failed one costs the writer nothing and resumes
//!   from its cursor. An SSE subscriber is one (its cursor is the browser's
//!   `Last-Event-ID`); the MQTT bridge is one (its cursor in SQLite).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::watch;

pub mod event;

pub use event::{AlertChange, AlertState, Event, EventKind, NewEvent};

/// A storage position: `samples.pos` or `events.pos`, the SSE event id.
/// Readings and events take them from one sequence, assigned by the writer
/// in commit order: it only grows and is never reused, so a consumer that
/// has seen position N has seen every committed position below it.
pub type Position = i64;

/// One reading, ready to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The `metrics.id` row.
    pub metric: i64,
    /// Device time, ms since the Unix epoch.
    pub ts_ms: i64,
    /// `None` for NaN and infinities.
    pub value: Option<f64>,
}

/// Why a batch's readings cannot become samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadBatch {
    #[error("base_ms {0} is out of range")]
    BaseOutOfRange(u64),
    #[error("metric id {0} was not declared in Hello")]
    UnknownMetric(u16),
}

/// A device batch's readings as samples, given the `metrics.id` rows of
/// the metric ids its `Hello` declared: device time is the batch's base
/// plus each offset; NaN and infinities become `None`. What a session
/// hands the writer, and what every hub of a cluster makes of a stream
/// entry.
///
/// # Errors
/// A reading names an undeclared metric, or the base time does not fit.
pub fn samples_of(
    metric_rows: &HashMap<u16, i64>,
    batch: &protocol::Batch,
) -> Result<Vec<Sample>, BadBatch> {
    let base = i64::try_from(batch.base_ms)
        .ok()
        .filter(|base| base.checked_add(i64::from(u32::MAX)).is_some())
        .ok_or(BadBatch::BaseOutOfRange(batch.base_ms))?;
    batch
        .readings
        .iter()
        .map(|reading| {
            let metric = *metric_rows
                .get(&reading.metric)
                .ok_or(BadBatch::UnknownMetric(reading.metric))?;
            Ok(Sample {
                metric,
                ts_ms: base + i64::from(reading.offset_ms),
                value: reading.value.is_finite().then_some(reading.value),
            })
        })
        .collect()
}

/// A stored reading, as the writer reports it after commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    pub pos: Position,
    pub sample: Sample,
}

/// What one group commit stored: its readings and its events, each in
/// position order (the two interleave: [`Commit::in_order`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    pub readings: Vec<Committed>,
    pub events: Vec<Event>,
}

/// One entry of a commit, in position order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Entry<'a> {
    Reading(&'a Committed),
    Event(&'a Event),
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty() && self.events.is_empty()
    }

    /// The last position it took (`None` if it stored nothing).
    pub fn last_pos(&self) -> Option<Position> {
        let reading = self.readings.last().map(|row| row.pos);
        let event = self.events.last().map(|event| event.pos);
        reading.max(event)
    }

    /// Its readings and events merged in position order.
    pub fn in_order(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut readings = self.readings.iter().peekable();
        let mut events = self.events.iter().peekable();
        std::iter::from_fn(move || match (readings.peek(), events.peek()) {
            (Some(row), Some(event)) if event.pos < row.pos => events.next().map(Entry::Event),
            (Some(_), _) => readings.next().map(Entry::Reading),
            (None, _) => events.next().map(Entry::Event),
        })
    }
}

/// Told of every commit on the publisher thread, in commit order, after it
/// is durable and before any session hears of it.
pub trait InlineConsumer: Send + Sync {
    /// `commit` holds what was just committed (never nothing). Must not
    /// block or wait for I/O: every Ack waits for it.
    fn committed(&self, commit: &Commit);
}

/// Every consumer of commits, in the order the publisher calls them.
pub struct Consumers {
    inline: Vec<Arc<dyn InlineConsumer>>,
    head: watch::Sender<Position>,
}

impl fmt::Debug for Consumers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumers")
            .field("inline", &self.inline.len())
            .field("head", &*self.head.borrow())
            .finish()
    }
}

impl Consumers {
    /// Consumers of the commits after `head`, the last position stored.
    pub fn new(head: Position) -> Self {
        Consumers {
            inline: Vec::new(),
            head: watch::Sender::new(head),
        }
    }

    /// Adds an in-line consumer, called after those added before it.
    #[must_use]
    pub fn with_inline(mut self, consumer: Arc<dyn InlineConsumer>) -> Self {
        self.inline.push(consumer);
        self
    }

    /// The head for cursor consumers to follow.
    pub fn head(&self) -> Head {
        Head(self.head.subscribe())
    }

    /// Hands a commit to every in-line consumer, then moves the head: a
    /// cursor consumer woken by the head finds the commit in every in-line
    /// consumer already (the live ring, for one).
    pub fn publish(&self, commit: &Commit) {
        let Some(last) = commit.last_pos() else {
            return;
        };
        for consumer in &self.inline {
            consumer.committed(commit);
        }
        self.head.send_replace(last);
    }
}

/// The last committed position, for cursor consumers to follow. Cheap to
/// clone; each clone waits on its own.
#[derive(Debug, Clone)]
pub struct Head(watch::Receiver<Position>);

impl Head {
    /// The last position published; marks it seen for [`Head::moved`].
    pub fn current(&mut self) -> Position {
        *self.0.borrow_and_update()
    }

    /// The last position published, without marking it seen.
    pub fn peek(&self) -> Position {
        *self.0.borrow()
    }

    /// Waits until a position newer than the last one seen is published.
    /// `false` once the publisher has gone (the hub is stopping).
    pub async fn moved(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// The device time (ms since the epoch) below which retention deletes
/// readings; 0 while nothing is deleted. Retention raises it before each
/// sweep; a consumer that serves readings from memory skips those below
/// it, so it never hands out a reading that storage no longer holds.
#[derive(Debug, Clone, Default)]
pub struct RetentionCutoff(Arc<AtomicI64>);

impl RetentionCutoff {
    /// Readings older than `ts_ms` are being deleted. Never lowers it.
    pub fn raise(&self, ts_ms: i64) {
        self.0.fetch_max(ts_ms, Ordering::AcqRel);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(&'static str, Position)>>);

    struct Named(&'static str, Arc<Recorder>, Head);

    impl InlineConsumer for Named {
        fn committed(&self, commit: &Commit) {
            let first = commit.readings[0].pos;
            // The head has not moved yet when in-line consumers run.
            assert!(self.2.peek() < first);
            self.1.0.lock().unwrap().push((self.0, first));
        }
    }

    fn row(pos: Position) -> Committed {
        Committed {
            pos,
            sample: Sample {
                metric: 1,
                ts_ms: 0,
                value: None,
            },
        }
    }

    fn status(pos: Position) -> Event {
        Event {
            pos,
            event: NewEvent {
                device_row: Some(1),
                device: "d1".into(),
                ts_ms: 0,
                kind: EventKind::Status { online: true },
            },
        }
    }

    fn readings(positions: &[Position]) -> Commit {
        Commit {
            readings: positions.iter().copied().map(row).collect(),
            events: Vec::new(),
        }
    }

    #[tokio::test]
    async fn in_line_consumers_run_in_order_before_the_head_moves() {
        let seen = Arc::new(Recorder::default());
        let consumers = Consumers::new(0);
        let (probe_1, probe_2) = (consumers.head(), consumers.head());
        let consumers = consumers
            .with_inline(Arc::new(Named("first", seen.clone(), probe_1)))
            .with_inline(Arc::new(Named("second", seen.clone(), probe_2)));
        let mut head = consumers.head();
        assert_eq!(head.current(), 0);

        consumers.publish(&readings(&[1, 2]));
        assert!(head.moved().await);
        assert_eq!(head.current(), 2);
        assert_eq!(*seen.0.lock().unwrap(), [("first", 1), ("second", 1)]);
    }

    #[tokio::test]
    async fn an_empty_commit_does_not_move_the_head() {
        let consumers = Consumers::new(5);
        let mut head = consumers.head();
        head.current();
        consumers.publish(&Commit::default());
        assert_eq!(head.peek(), 5);
        drop(consumers);
        assert!(!head.moved().await, "the head reports the publisher's end");
    }

    #[tokio::test]
    async fn a_commit_of_readings_and_events_moves_the_head_to_its_last_position() {
        let consumers = Consumers::new(0);
        let mut head = consumers.head();
        let mut commit = readings(&[1, 3]);
        commit.events = vec![status(2), status(4)];
        consumers.publish(&commit);
        assert_eq!(head.current(), 4);
    }

    #[test]
    fn a_commit_reads_in_position_order() {
        let mut commit = readings(&[2, 3, 5]);
        commit.events = vec![status(1), status(4), status(6)];
        let order: Vec<(char, Position)> = commit
            .in_order()
            .map(|entry| match entry {
                Entry::Reading(row) => ('r', row.pos),
                Entry::Event(event) => ('e', event.pos),
            })
            .collect();
        assert_eq!(
            order,
            [('e', 1), ('r', 2), ('r', 3), ('e', 4), ('r', 5), ('e', 6)]
        );
    }
}
