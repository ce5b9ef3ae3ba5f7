//! One SSE subscriber: a cursor over storage positions and the stream of
//! event text that moves it forward.
//!
//! The body is pulled: hyper asks for the next piece only when the socket
//! can take it, so a subscriber that stops reading just stops being asked.
//! Its cursor waits; the ring moves on; when it reads again it is caught up
//! from the ring or, if the ring has moved past it, from SQLite. Events are
//! sent strictly in position order and only if past the cursor, which is
//! what makes a resume free of gaps and duplicates.
//!
//! A subscriber is in one of two [`Mode`]s: reading (the ring, or SQLite,
//! then waiting for the head) or, when filtered by device and caught up,
//! following its inbox: it then wakes only for commits of its devices, and
//! goes back to reading from its cursor if the inbox overflowed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use bytes::BytesMut;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::ring::{RingRead, Subject};
use super::router::Inbox;
use super::{Chunk, Live, format};
use crate::commits::{Head, Position};
use crate::store::StoreError;
use crate::store::query::{EventRow, ReadingRow};

/// Readings read from SQLite per catch-up query.
const CATCH_UP_ROWS: u32 = 1_000;

/// Which events a subscriber wants: `None` means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub devices: Option<HashSet<String>>,
    pub metrics: Option<HashSet<String>>,
    /// Event names (`reading`, `status`, `alert`, `audit`).
    pub types: Option<HashSet<String>>,
    /// Leave out `audit` events whatever `types` says: the subscriber is
    /// not an admin of every device.
    pub hide_audit: bool,
}

impl Filter {
    fn is_all(&self) -> bool {
        self.devices.is_none() && self.metrics.is_none() && self.types.is_none()
    }

    fn wants_type(&self, name: &str) -> bool {
        !(self.hide_audit && name == "audit")
            && self.types.as_ref().is_none_or(|t| t.contains(name))
    }

    fn wants_device(&self, device: &str) -> bool {
        self.devices.as_ref().is_none_or(|d| d.contains(device))
    }

    fn wants(&self, device: &str, metric: &str) -> bool {
        self.wants_device(device) && self.metrics.as_ref().is_none_or(|m| m.contains(metric))
    }

    fn list(set: &Option<HashSet<String>>) -> Option<Vec<String>> {
        set.as_ref().map(|s| s.iter().cloned().collect())
    }
}

/// Where a subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only what is stored from now on.
    Live,
    /// Everything after this position (`Last-Event-ID`); 0 is everything
    /// retained.
    After(Position),
}

/// Timing of a subscription.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The `retry:` hint for the browser's reconnects.
    pub retry: Duration,
    /// How often an idle stream gets a keep-alive comment.
    pub keep_alive: Duration,
}

/// What a subscriber is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the ring, or SQLite when the ring has moved past the cursor;
    /// when up to date, waiting for the head to move.
    Reading,
    /// Device-filtered and caught up: waiting on the inbox, which only
    /// commits of its devices reach.
    FollowingInbox,
}

/// What woke a waiting subscriber.
enum Wake {
    /// Text to send: a keep-alive.
    Send(Bytes),
    /// A commit of this subscriber's devices, from its inbox.
    Commit(Arc<Chunk>),
    /// Something to look at again (the head moved).
    Again,
    /// The hub is stopping.
    End,
}

/// A live subscriber.
#[derive(Debug)]
pub struct Subscription {
    live: Arc<Live>,
    cursor: Position,
    filter: Filter,
    /// Per metric row: does this subscriber want it?
    verdicts: HashMap<i64, bool>,
    head: Head,
    /// Text to send before anything else (retry hint, reset).
    preamble: Option<Bytes>,
    keep_alive: Interval,
    shutdown: CancellationToken,
    /// The retention watermark already reported with a `reset`.
    reset_reported: Position,
    /// For device-filtered subscribers: commits of their devices.
    inbox: Option<Inbox>,
    mode: Mode,
    _slot: OwnedSemaphorePermit,
}

impl Subscription {
    /// Starts a subscription holding one of the live slots.
    ///
    /// # Errors
    /// Storage cannot be read to place the cursor.
    pub async fn start(
        live: Arc<Live>,
        slot: OwnedSemaphorePermit,
        filter: Filter,
        start: Start,
        timing: Timing,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        // Subscribe (and open the inbox) before reading the head so nothing
        // published in between is missed.
        let inbox = filter
            .devices
            .as_ref()
            .map(|devices| live.router.open(devices));
        let mut head = live.head.clone();
        let now = head.current();
        let mut preamble = format::retry(timing.retry.as_millis() as u64);
        let mut reset_reported = 0;
        let store = &live.store;
        let cursor = match start {
            Start::Live => now,
            Start::After(0) => {
                // "Everything retained": what retention removed is not news.
                reset_reported = store.retention_watermark().await?;
                resume_point(0, store.oldest_pos().await?, now)
            }
            Start::After(id) if id > now => {
                let oldest = store.oldest_pos().await?;
                preamble.push_str(&format::reset("unknown", id, oldest, now));
                now
            }
            Start::After(id) => {
                let watermark = store.retention_watermark().await?;
                if id < watermark {
                    let oldest = store.oldest_pos().await?;
                    let resume = resume_point(id, oldest, now);
                    preamble.push_str(&format::reset("retention", id, oldest, resume));
                    reset_reported = watermark;
                    resume
                } else {
                    id
                }
            }
        };
        Ok(Subscription {
            live,
            cursor,
            filter,
            verdicts: HashMap::new(),
            head,
            preamble: Some(Bytes::from(preamble)),
            keep_alive: tokio::time::interval_at(
                Instant::now() + timing.keep_alive,
                timing.keep_alive,
            ),
            shutdown,
            reset_reported,
            inbox,
            mode: Mode::Reading,
            _slot: slot,
        })
    }

    /// The next piece of the stream, or `None` when it ends (hub shutdown,
    /// or storage failing: the browser then reconnects with its last id).
    pub async fn next_text(&mut self) -> Option<Bytes> {
        if let Some(preamble) = self.preamble.take() {
            return Some(preamble);
        }
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if self.mode == Mode::Reading {
                match self.read().await {
                    Ok(Some(text)) => return Some(text),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "catch-up from storage failed; ending the stream");
                        return None;
                    }
                }
                if self.head.peek() > self.cursor {
                    continue; // more to read
                }
                if self.inbox.is_some() {
                    // Caught up: from now on only this subscriber's commits
                    // wake it. Any that arrived meanwhile are in the inbox
                    // (opened before the cursor was placed) and are skipped
                    // up to the cursor.
                    self.mode = Mode::FollowingInbox;
                }
            }
            match self.wait().await {
                Wake::Send(text) => return Some(text),
                Wake::Commit(chunk) => {
                    if let Some(text) = self.take(&chunk) {
                        return Some(text);
                    }
                }
                Wake::Again => {}
                Wake::End => return None,
            }
        }
    }

    /// One step of [`Mode::Reading`]: the next text past the cursor from the
    /// ring or SQLite, or `None` with nothing to send (yet).
    async fn read(&mut self) -> Result<Option<Bytes>, StoreError> {
        let head = self.head.current();
        let read = self.live.lock_ring().after(self.cursor, head);
        match read {
            RingRead::Next(chunk) => Ok(self.take(&chunk)),
            // Nothing past the head is read: the ring may hold a commit
            // whose head has not moved yet, and the head will move.
            RingRead::Behind if head > self.cursor => self.catch_up(head).await,
            RingRead::Behind | RingRead::UpToDate => Ok(None),
        }
    }

    /// Waits for whatever comes first: the hub stopping, the keep-alive, or
    /// what the mode follows (the head, or the inbox).
    async fn wait(&mut self) -> Wake {
        let inbox = match (self.mode, &mut self.inbox) {
            (Mode::FollowingInbox, Some(inbox)) => {
                if inbox.take_overflow() {
                    // Commits were not delivered: catch up from the cursor.
                    self.mode = Mode::Reading;
                    return Wake::Again;
                }
                Some(inbox)
            }
            _ => None,
        };
        let following_inbox = inbox.is_some();
        tokio::select! {
            () = self.shutdown.cancelled() => Wake::End,
            moved = self.head.moved(), if !following_inbox => {
                if moved { Wake::Again } else { Wake::End }
            }
            chunk = async {
                match inbox {
                    Some(inbox) => inbox.recv().await,
                    None => std::future::pending().await,
                }
            }, if following_inbox => {
                chunk.map_or(Wake::End, Wake::Commit)
            }
            _ = self.keep_alive.tick() => Wake::Send(Bytes::from_static(format::KEEP_ALIVE.as_bytes())),
        }
    }

    /// The part of `chunk` after the cursor that this subscriber wants
    /// (`None` if nothing); moves the cursor to the chunk's end.
    fn take(&mut self, chunk: &Chunk) -> Option<Bytes> {
        if chunk.last_pos <= self.cursor {
            return None;
        }
        let first = chunk.events.partition_point(|e| e.pos <= self.cursor);
        self.cursor = chunk.last_pos;
        let events = &chunk.events[first..];
        let start = events.first()?.start;
        let cutoff = self.live.retention.get();
        if self.filter.is_all()
            && chunk.min_ts >= cutoff
            && !(self.filter.hide_audit && chunk.has_audit)
        {
            // Shared, not copied: every unfiltered subscriber sends the same
            // bytes.
            return Some(chunk.text.slice(start..));
        }
        let mut out = BytesMut::new();
        for event in events {
            // Retention is deleting what is older: SQLite may not hold it.
            let wanted = match &event.subject {
                Subject::Metric(row) => {
                    self.filter.wants_type("reading") && self.wants_metric(*row)
                }
                Subject::Event { device, kind } => {
                    self.filter.wants_type(kind) && self.filter.wants_device(device)
                }
            };
            if event.ts_ms >= cutoff && wanted {
                out.extend_from_slice(&chunk.text[event.start..event.end]);
            }
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    fn wants_metric(&mut self, row: i64) -> bool {
        if let Some(&verdict) = self.verdicts.get(&row) {
            return verdict;
        }
        let verdict = self
            .live
            .catalog
            .get(row)
            .is_some_and(|meta| self.filter.wants(&meta.device, &meta.name));
        self.verdicts.insert(row, verdict);
        verdict
    }

    /// Reads the next readings and events after the cursor, up to `head`,
    /// from SQLite, reporting first if retention deleted some of them.
    async fn catch_up(&mut self, head: Position) -> Result<Option<Bytes>, StoreError> {
        let store = &self.live.store;
        let watermark = store.retention_watermark().await?;
        if self.cursor < watermark && watermark > self.reset_reported {
            self.reset_reported = watermark;
            let oldest = store.oldest_pos().await?;
            let requested = self.cursor;
            self.cursor = resume_point(requested, oldest, head);
            let text = format::reset("retention", requested, oldest, self.cursor);
            return Ok(Some(Bytes::from(text)));
        }
        let page = store
            .readings_page(
                self.cursor,
                head,
                Filter::list(&self.filter.devices).as_deref(),
                Filter::list(&self.filter.metrics).as_deref(),
                CATCH_UP_ROWS,
            )
            .await?;
        self.cursor = page.read_through;
        let mut page = page;
        if !self.filter.wants_type("reading") {
            page.rows.clear();
        }
        page.events
            .retain(|event| self.filter.wants_type(event.kind.name()));
        let empty = page.rows.is_empty() && page.events.is_empty();
        Ok((!empty).then(|| format_page(&page.rows, &page.events)))
    }
}

/// Where a cursor at `after` continues once retention has deleted readings:
/// past everything below the oldest position still held (`oldest`, 0 when
/// nothing is), never before `after` itself.
fn resume_point(after: Position, oldest: Position, head: Position) -> Position {
    if oldest == 0 {
        after.max(head)
    } else {
        after.max(oldest - 1)
    }
}

/// A catch-up page's readings and events as SSE text, in position order.
fn format_page(rows: &[ReadingRow], events: &[EventRow]) -> Bytes {
    let mut text = String::with_capacity((rows.len() + events.len()) * 160);
    let mut events = events.iter().peekable();
    let mut format_events_before = |text: &mut String, pos: Position| {
        while let Some(event) = events.next_if(|event| event.pos < pos) {
            format::event(text, event.pos, &event.device, event.ts_ms, &event.kind);
        }
    };
    for row in rows {
        format_events_before(&mut text, row.pos);
        let prefix = format::reading_prefix(&row.device, &row.metric, &row.unit);
        format::reading(&mut text, row.pos, &prefix, row.ts_ms, row.value);
    }
    format_events_before(&mut text, Position::MAX);
    Bytes::from(text)
}

#[cfg(test)]
mod tests {

    use tokio::sync::mpsc;

    use super::*;
    use crate::admission::{Admission, Names};
    use crate::commits::{
        Commit, Committed, Consumers, EventKind, InlineConsumer, NewEvent, RetentionCutoff, Sample,
    };
    use crate::store::writer::{self, WriteOutcome};
    use crate::store::{PoolDurability, Store};
    use crate::telemetry::Counters;

    const TIMING: Timing = Timing {
        retry: Duration::from_secs(2),
        keep_alive: Duration::from_secs(15),
    };

    /// The ids of the events (readings and statuses) in a piece of the stream.
    fn ids(text: &[u8]) -> Vec<Position> {
        std::str::from_utf8(text)
            .unwrap()
            .lines()
            .filter_map(|line| line.strip_prefix("id: "))
            .map(|id| id.parse().unwrap())
            .collect()
    }

    async fn subscribe(live: &Arc<Live>, filter: Filter, start: Start) -> Subscription {
        let slot = live.admit().unwrap();
        let shutdown = CancellationToken::new();
        Subscription::start(Arc::clone(live), slot, filter, start, TIMING, shutdown)
            .await
            .unwrap()
    }

    /// Reads the stream until a keep-alive says it is caught up (with time
    /// paused, the keep-alive comes as soon as nothing else can), returning
    /// every reading id sent.
    async fn read_until_idle(subscription: &mut Subscription) -> Vec<Position> {
        let mut seen = Vec::new();
        loop {
            let text = subscription.next_text().await.expect("the stream goes on");
            if &text[..] == format::KEEP_ALIVE.as_bytes() {
                return seen;
            }
            seen.extend(ids(&text));
        }
    }

    /// A fan-out fed by a running writer, its ring `ring_bytes` long, and
    /// `dev-1` admitted with one metric.
    struct Stack {
        live: Arc<Live>,
        store: Store,
        writer: writer::WriterHandle,
        device: i64,
        metric: i64,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    impl Stack {
        async fn start(ring_bytes: usize) -> Stack {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("hub.db"), PoolDurability::WithWriter)
                .await
                .unwrap();
            let opened = writer::open(&store).await.unwrap();
            let consumers = Consumers::new(opened.last_pos());
            let names = Arc::new(Names::default());
            let live = Arc::new(Live::new(
                store.clone(),
                Arc::clone(&names),
                consumers.head(),
                RetentionCutoff::default(),
                10,
                ring_bytes,
            ));
            let consumers = consumers.with_inline(Arc::clone(&live) as Arc<dyn InlineConsumer>);
            let stop = CancellationToken::new();
            let (writer, task) = opened
                .spawn(Arc::new(Counters::default()), consumers, stop.clone())
                .unwrap();
            let admission = Admission::new(store.clone(), writer.clone(), names);
            let device = admission.find_or_register("dev-1").await.unwrap().row;
            let hello = crate::fixtures::hello("dev-1");
            let (_, rows) = admission.hello(device, &hello).await.unwrap();
            Stack {
                live,
                store,
                writer,
                device,
                metric: rows[&1],
                stop,
                task,
                _dir: dir,
            }
        }

        /// Stores batch `seq` of dev-1: `n` readings.
        async fn batch(&self, seq: u64, n: i64) {
            let (reply, mut outcomes) = mpsc::channel(1);
            let samples = (0..n)
                .map(|i| Sample {
                    metric: self.metric,
                    ts_ms: 1_000_000 + seq as i64 * 100 + i,
                    value: Some(1.5),
                })
                .collect();
            let origin = writer::Origin {
                device_row: self.device,
                session: 1,
            };
            self.writer
                .submit(origin, seq, samples, reply)
                .await
                .unwrap();
            assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq }));
        }

        async fn status(&self, online: bool) -> Position {
            let event = NewEvent {
                device_row: Some(self.device),
                device: "dev-1".into(),
                ts_ms: 1_000_000,
                kind: EventKind::Status { online },
            };
            self.writer.record(vec![event]).await.unwrap()[0]
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap();
        }
    }

    /// Reads ids from `subscription` until it has `n` of them.
    async fn read_ids(subscription: &mut Subscription, n: usize) -> (Vec<Position>, String) {
        let (mut seen, mut text) = (Vec::new(), String::new());
        while seen.len() < n {
            let piece = tokio::time::timeout(Duration::from_secs(15), subscription.next_text())
                .await
                .expect("the stream keeps up")
                .expect("the stream goes on");
            seen.extend(ids(&piece));
            text.push_str(std::str::from_utf8(&piece).unwrap());
        }
        (seen, text)
    }

    #[tokio::test]
    async fn a_subscriber_behind_the_ring_reads_sqlite_then_the_ring_with_no_gap_or_duplicate() {
        // Room for about five commits of 100 readings.
        let stack = Stack::start(60_000).await;
        for seq in 1..=25u64 {
            stack.batch(seq, 100).await;
        }
        {
            let ring = stack.live.lock_ring();
            assert!(matches!(ring.after(0, 2_500), RingRead::Behind));
            assert!(matches!(ring.after(1_000, 2_500), RingRead::Behind));
            assert!(matches!(ring.after(2_000, 2_500), RingRead::Next(_)));
        }
        // What the ring holds is now only in the ring: a subscriber that
        // still gets it has switched from SQLite to the ring.
        sqlx::query("DELETE FROM samples WHERE pos > 2000")
            .execute(stack.store.pool())
            .await
            .unwrap();

        let mut subscription = subscribe(&stack.live, Filter::default(), Start::After(0)).await;
        subscription.next_text().await.unwrap(); // retry hint
        let (seen, _) = read_ids(&mut subscription, 2_500).await;
        assert_eq!(seen, (1..=2_500).collect::<Vec<_>>());
        stack.stop().await;
    }

    #[tokio::test]
    async fn status_events_are_caught_up_from_sqlite_among_the_readings_in_position_order() {
        // The ring keeps only the newest commit.
        let stack = Stack::start(1).await;
        stack.batch(1, 2).await; // 1, 2
        assert_eq!(stack.status(false).await, 3);
        stack.batch(2, 1).await; // 4
        assert_eq!(stack.status(true).await, 5);
        stack.batch(3, 1).await; // 6

        let dev_1 = Filter {
            devices: Some(HashSet::from(["dev-1".to_owned()])),
            metrics: None,
            types: None,
            hide_audit: false,
        };
        let mut subscription = subscribe(&stack.live, dev_1, Start::After(1)).await;
        subscription.next_text().await.unwrap(); // retry hint
        let (seen, text) = read_ids(&mut subscription, 5).await;
        assert_eq!(seen, [2, 3, 4, 5, 6]);
        let statuses: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("data: {\"device\":\"dev-1\",\"online\""))
            .collect();
        assert_eq!(statuses.len(), 2, "{text}");
        assert!(
            text.contains("id: 3\nevent: status\ndata: {\"device\":\"dev-1\",\"online\":false")
        );

        // A stored event edited into nonsense by hand is skipped; the
        // stream goes on past it.
        sqlx::query("UPDATE events SET body = 'nonsense' WHERE pos = 3")
            .execute(stack.store.pool())
            .await
            .unwrap();
        let mut after_edit = subscribe(&stack.live, Filter::default(), Start::After(1)).await;
        after_edit.next_text().await.unwrap(); // retry hint
        let (seen, _) = read_ids(&mut after_edit, 4).await;
        assert_eq!(seen, [2, 4, 5, 6]);
        stack.stop().await;
    }

    /// A fan-out with no writer: commits are handed to it directly, and its
    /// (empty) database is never needed while the ring holds them.
    async fn bare_live() -> (Arc<Live>, Consumers, RetentionCutoff, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db"), PoolDurability::WithWriter)
            .await
            .unwrap();
        let consumers = Consumers::new(0);
        let retention = RetentionCutoff::default();
        let names = Arc::new(Names::default());
        names.tell("dev-1", [(1, "temperature", "°C")]);
        names.tell("dev-2", [(2, "temperature", "°C")]);
        let live = Arc::new(Live::new(
            store,
            names,
            consumers.head(),
            retention.clone(),
            10,
            1 << 20,
        ));
        let consumers = consumers.with_inline(Arc::clone(&live) as Arc<dyn InlineConsumer>);
        (live, consumers, retention, dir)
    }

    fn commit(readings: &[Committed]) -> Commit {
        Commit {
            readings: readings.to_vec(),
            events: Vec::new(),
        }
    }

    fn status(pos: Position, device: &str, online: bool) -> crate::commits::Event {
        crate::commits::Event {
            pos,
            event: NewEvent {
                device_row: Some(1),
                device: device.into(),
                ts_ms: pos,
                kind: EventKind::Status { online },
            },
        }
    }

    fn reading(pos: Position, metric: i64) -> Committed {
        Committed {
            pos,
            sample: Sample {
                metric,
                ts_ms: pos,
                value: Some(1.0),
            },
        }
    }

    #[tokio::test]
    async fn an_overflowing_inbox_is_caught_up_from_the_cursor_exactly_once() {
        let (live, consumers, _retention, _dir) = bare_live().await;
        tokio::time::pause();
        let devices = Some(HashSet::from(["dev-1".to_owned()]));
        let filter = Filter {
            devices,
            metrics: None,
            types: None,
            hide_audit: false,
        };
        let mut subscription = subscribe(&live, filter, Start::Live).await;
        subscription.next_text().await.unwrap(); // retry hint
        assert!(read_until_idle(&mut subscription).await.is_empty());
        assert_eq!(subscription.mode, Mode::FollowingInbox);

        // Twice the inbox's room of dev-1 commits, each beside a dev-2 one.
        let commits = 2 * super::super::router::INBOX_CHUNKS as i64;
        for n in 0..commits {
            consumers.publish(&commit(&[reading(2 * n + 1, 1)]));
            consumers.publish(&commit(&[reading(2 * n + 2, 2)]));
        }
        let first = subscription.next_text().await.unwrap();
        assert_eq!(
            subscription.mode,
            Mode::Reading,
            "the overflow sends the subscriber back to its cursor"
        );
        let mut seen = ids(&first);
        seen.extend(read_until_idle(&mut subscription).await);
        let dev_1: Vec<Position> = (0..commits).map(|n| 2 * n + 1).collect();
        assert_eq!(seen, dev_1);
        assert_eq!(subscription.mode, Mode::FollowingInbox);

        consumers.publish(&commit(&[reading(1_000, 1)]));
        assert_eq!(read_until_idle(&mut subscription).await, [1_000]);
    }

    #[tokio::test]
    async fn a_metric_filter_sends_only_its_metric_from_a_shared_commit() {
        let (live, consumers, _retention, _dir) = bare_live().await;
        tokio::time::pause();
        let filter = Filter {
            devices: None,
            metrics: Some(HashSet::from(["temperature".to_owned()])),
            types: None,
            hide_audit: false,
        };
        let mut everything = subscribe(&live, Filter::default(), Start::Live).await;
        let mut dev_2 = subscribe(
            &live,
            Filter {
                devices: Some(HashSet::from(["dev-2".to_owned()])),
                ..filter
            },
            Start::Live,
        )
        .await;
        everything.next_text().await.unwrap();
        dev_2.next_text().await.unwrap();
        consumers.publish(&commit(&[reading(1, 1), reading(2, 2), reading(3, 1)]));
        assert_eq!(read_until_idle(&mut everything).await, [1, 2, 3]);
        assert_eq!(read_until_idle(&mut dev_2).await, [2]);
    }

    #[tokio::test]
    async fn what_retention_is_deleting_is_not_served_from_the_ring() {
        let (live, consumers, retention, _dir) = bare_live().await;
        tokio::time::pause();
        let mut everything = subscribe(&live, Filter::default(), Start::Live).await;
        everything.next_text().await.unwrap();
        // ts_ms is the position in these readings: 1 and 3 are older than
        // the cutoff, 5 and 6 are not.
        retention.raise(4);
        consumers.publish(&commit(&[reading(1, 1), reading(5, 2)]));
        consumers.publish(&commit(&[reading(3, 2)]));
        consumers.publish(&commit(&[reading(6, 1)]));
        assert_eq!(read_until_idle(&mut everything).await, [5, 6]);
    }

    #[tokio::test]
    async fn a_status_in_a_commit_reaches_subscribers_of_its_device_in_position_order() {
        let (live, consumers, _retention, _dir) = bare_live().await;
        tokio::time::pause();
        let mut everything = subscribe(&live, Filter::default(), Start::Live).await;
        let dev_2 = Filter {
            devices: Some(HashSet::from(["dev-2".to_owned()])),
            metrics: Some(HashSet::from(["humidity".to_owned()])),
            types: None,
            hide_audit: false,
        };
        let mut following = subscribe(&live, dev_2, Start::Live).await;
        everything.next_text().await.unwrap();
        following.next_text().await.unwrap();
        assert!(read_until_idle(&mut following).await.is_empty());
        let mut mixed = commit(&[reading(1, 1), reading(3, 2)]);
        mixed.events = vec![status(2, "dev-2", true), status(4, "dev-1", false)];
        consumers.publish(&mixed);
        assert_eq!(read_until_idle(&mut everything).await, [1, 2, 3, 4]);
        // A status passes a metric filter: it is about the device.
        assert_eq!(read_until_idle(&mut following).await, [2]);
    }

    #[test]
    fn after_retention_a_cursor_resumes_past_what_is_gone() {
        assert_eq!(resume_point(3, 11, 20), 10, "1 to 10 are gone");
        assert_eq!(resume_point(15, 11, 20), 15, "never backwards");
        assert_eq!(resume_point(0, 1, 20), 0, "nothing is gone");
        assert_eq!(resume_point(3, 0, 20), 20, "everything is gone");
    }
}
