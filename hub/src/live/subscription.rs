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
//! A subscriber filtered by device, once caught up, follows its inbox
//! instead of the head: it wakes only for commits of its devices.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use bytes::BytesMut;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{OwnedSemaphorePermit, broadcast, watch};
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::{Chunk, InboxReceiver, Live, format};
use crate::store::StoreError;
use crate::store::query::ReadingRow;

/// Readings read from SQLite per catch-up query.
const CATCH_UP_ROWS: u32 = 1_000;

/// Which events a subscriber wants: `None` means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub devices: Option<HashSet<String>>,
    pub metrics: Option<HashSet<String>>,
}

impl Filter {
    fn is_all(&self) -> bool {
        self.devices.is_none() && self.metrics.is_none()
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
    After(i64),
}

/// Timing of a subscription.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The `retry:` hint for the browser's reconnects.
    pub retry: Duration,
    /// How often an idle stream gets a keep-alive comment.
    pub keep_alive: Duration,
}

/// A live subscriber.
#[derive(Debug)]
pub struct Subscription {
    live: Arc<Live>,
    cursor: i64,
    filter: Filter,
    /// Per metric row: does this subscriber want it?
    verdicts: HashMap<i64, bool>,
    head: watch::Receiver<i64>,
    status: broadcast::Receiver<(Arc<str>, Bytes)>,
    /// Text to send before anything else (retry hint, reset).
    preamble: Option<Bytes>,
    keep_alive: Interval,
    shutdown: CancellationToken,
    /// The retention watermark already reported with a `reset`.
    reset_reported: i64,
    /// For device-filtered subscribers: commits of their devices.
    inbox: Option<InboxReceiver>,
    /// Caught up, and woken only by the inbox.
    following_inbox: bool,
    _slot: OwnedSemaphorePermit,
}

enum Inboxed {
    Text(Bytes),
    Nothing,
    End,
}

enum RingRead {
    Text(Bytes),
    Behind,
    UpToDate,
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
            .map(|devices| live.open_inbox(devices));
        let head = live.head.subscribe();
        let status = live.status.subscribe();
        let now = *head.borrow();
        let mut preamble = format::retry(timing.retry.as_millis() as u64);
        let mut reset_reported = 0;
        let cursor = match start {
            Start::Live => now,
            Start::After(0) => {
                // "Everything retained": what retention removed is not news.
                reset_reported = live.store().retention_watermark().await?;
                0
            }
            Start::After(id) if id > now => {
                let oldest = live.store().oldest_pos().await?;
                preamble.push_str(&format::reset("unknown", id, oldest, now));
                now
            }
            Start::After(id) => {
                let watermark = live.store().retention_watermark().await?;
                if id < watermark {
                    let oldest = live.store().oldest_pos().await?;
                    preamble.push_str(&format::reset("retention", id, oldest, id));
                    reset_reported = watermark;
                }
                id
            }
        };
        Ok(Subscription {
            live,
            cursor,
            filter,
            verdicts: HashMap::new(),
            head,
            status,
            preamble: Some(Bytes::from(preamble)),
            keep_alive: tokio::time::interval_at(
                Instant::now() + timing.keep_alive,
                timing.keep_alive,
            ),
            shutdown,
            reset_reported,
            inbox,
            following_inbox: false,
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
            loop {
                match self.status.try_recv() {
                    Ok((device, text)) if self.filter.wants_device(&device) => return Some(text),
                    Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if self.following_inbox {
                match self.next_from_inbox().await {
                    Inboxed::Text(text) => return Some(text),
                    Inboxed::Nothing => continue,
                    Inboxed::End => return None,
                }
            }
            self.head.borrow_and_update();
            match self.read_ring() {
                RingRead::Text(text) if text.is_empty() => continue,
                RingRead::Text(text) => return Some(text),
                RingRead::Behind => match self.catch_up().await {
                    Ok(Some(text)) => return Some(text),
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::warn!(error = %err, "catch-up from storage failed; ending the stream");
                        return None;
                    }
                },
                RingRead::UpToDate if self.inbox.is_some() => {
                    // Caught up: from now on only this subscriber's commits
                    // wake it. Any that arrived meanwhile are in the inbox
                    // (opened before the cursor was placed) and are skipped
                    // up to the cursor.
                    self.following_inbox = true;
                    continue;
                }
                RingRead::UpToDate => {}
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                changed = self.head.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                status = self.status.recv() => match status {
                    Ok((device, text)) if self.filter.wants_device(&device) => return Some(text),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                _ = self.keep_alive.tick() => return Some(Bytes::from_static(format::KEEP_ALIVE.as_bytes())),
            }
        }
    }

    /// The next commit delivered to this device-filtered subscriber's inbox,
    /// waiting for one (or a status event, or the keep-alive).
    async fn next_from_inbox(&mut self) -> Inboxed {
        let Some(inbox) = &mut self.inbox else {
            return Inboxed::Nothing;
        };
        if inbox.overflowed.swap(false, Ordering::AcqRel) {
            // Commits were not delivered: catch up from the cursor instead.
            while inbox.chunks.try_recv().is_ok() {}
            self.following_inbox = false;
            return Inboxed::Nothing;
        }
        let chunk = tokio::select! {
            () = self.shutdown.cancelled() => return Inboxed::End,
            chunk = inbox.chunks.recv() => match chunk {
                Some(chunk) => chunk,
                None => return Inboxed::End,
            },
            status = self.status.recv() => return match status {
                Ok((device, text)) if self.filter.wants_device(&device) => Inboxed::Text(text),
                Ok(_) | Err(RecvError::Lagged(_)) => Inboxed::Nothing,
                Err(RecvError::Closed) => Inboxed::End,
            },
            _ = self.keep_alive.tick() => return Inboxed::Text(Bytes::from_static(format::KEEP_ALIVE.as_bytes())),
        };
        if chunk.last_pos <= self.cursor {
            return Inboxed::Nothing;
        }
        let text = self.take(&chunk);
        if text.is_empty() {
            Inboxed::Nothing
        } else {
            Inboxed::Text(text)
        }
    }

    fn read_ring(&mut self) -> RingRead {
        let chunk = {
            let ring = self.live.lock_ring();
            let Some(front) = ring.chunks.front() else {
                return if self.live.head() > self.cursor {
                    RingRead::Behind
                } else {
                    RingRead::UpToDate
                };
            };
            if front.first_pos > self.cursor + 1 {
                return RingRead::Behind;
            }
            let next = ring
                .chunks
                .partition_point(|chunk| chunk.last_pos <= self.cursor);
            match ring.chunks.get(next) {
                Some(chunk) => Arc::clone(chunk),
                None => return RingRead::UpToDate,
            }
        };
        RingRead::Text(self.take(&chunk))
    }

    /// The part of `chunk` after the cursor that this subscriber wants;
    /// moves the cursor to the chunk's end.
    fn take(&mut self, chunk: &Chunk) -> Bytes {
        let first = chunk.events.partition_point(|e| e.pos <= self.cursor);
        self.cursor = chunk.last_pos;
        let events = &chunk.events[first..];
        let Some(start) = events.first().map(|e| e.start) else {
            return Bytes::new();
        };
        if self.filter.is_all() {
            // Shared, not copied: every unfiltered subscriber sends the same
            // bytes.
            return chunk.text.slice(start..);
        }
        let mut out = BytesMut::new();
        for event in events {
            if self.wants_metric(event.metric) {
                out.extend_from_slice(&chunk.text[event.start..event.end]);
            }
        }
        out.freeze()
    }

    fn wants_metric(&mut self, row: i64) -> bool {
        if let Some(&verdict) = self.verdicts.get(&row) {
            return verdict;
        }
        let verdict = self
            .live
            .metric(row)
            .is_some_and(|meta| self.filter.wants(&meta.device, &meta.name));
        self.verdicts.insert(row, verdict);
        verdict
    }

    /// Reads the next readings after the cursor from SQLite, reporting first
    /// if retention deleted some of them.
    async fn catch_up(&mut self) -> Result<Option<Bytes>, StoreError> {
        let store = self.live.store();
        let watermark = store.retention_watermark().await?;
        if self.cursor < watermark && watermark > self.reset_reported {
            self.reset_reported = watermark;
            let oldest = store.oldest_pos().await?;
            let text = format::reset("retention", self.cursor, oldest, self.cursor);
            return Ok(Some(Bytes::from(text)));
        }
        let upto = self.live.head();
        let rows = store
            .readings_after(
                self.cursor,
                upto,
                Filter::list(&self.filter.devices).as_deref(),
                Filter::list(&self.filter.metrics).as_deref(),
                CATCH_UP_ROWS,
            )
            .await?;
        self.cursor = if rows.len() < CATCH_UP_ROWS as usize {
            upto
        } else {
            rows.last().map_or(upto, |row| row.pos)
        };
        Ok((!rows.is_empty()).then(|| format_rows(&rows)))
    }
}

fn format_rows(rows: &[ReadingRow]) -> Bytes {
    let mut text = String::with_capacity(rows.len() * 160);
    for row in rows {
        let prefix = format::reading_prefix(&row.device, &row.metric, &row.unit);
        format::reading(&mut text, row.pos, &prefix, row.ts_ms, row.value);
    }
    Bytes::from(text)
}
