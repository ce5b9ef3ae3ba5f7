//! Live: fan-out of committed readings and events to Server-Sent Events
//! subscribers.
//!
//! [`Live`] is an in-line commit consumer ([`crate::commits`]): on the
//! publisher thread it formats every reading and event (a device's
//! `status`) of a commit once as SSE text, with its position as its id,
//! and appends the commit as one [`Chunk`] to the [`ring`] (at most
//! `--live-buffer-mb`; the oldest commits are evicted first). Subscribers
//! ([`subscription`]) are cursor consumers: each keeps the last position it
//! sent and reads the ring after it; one that falls behind the ring (or
//! resumes with an old `Last-Event-ID`) is caught up from SQLite, in order,
//! until it reaches the ring again. So every subscriber gets every matching
//! event exactly once, a slow one costs the hub no memory of its own, and it
//! never slows ingest or other subscribers: nobody waits for it.
//!
//! Beside the ring: the [`catalog`] of metric names, the device [`router`]
//! (so an idle device-filtered subscriber is woken only by commits of its
//! devices) and the admission permits (`--max-subscribers`).

mod catalog;
pub mod format;
mod ring;
mod router;
pub mod subscription;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::Names;
use crate::commits::{Commit, Entry, Head, InlineConsumer, RetentionCutoff};
use crate::store::Store;
use catalog::Catalog;
pub use catalog::MetricMeta;
pub use ring::Chunk;
use ring::{EventSpan, Ring, Subject};
use router::Router;

/// The fan-out shared by the publisher and every subscriber.
#[derive(Debug)]
pub struct Live {
    ring: Mutex<Ring>,
    /// The last position published; subscribers follow it.
    head: Head,
    catalog: Catalog,
    router: Router,
    /// For catch-up reads.
    store: Store,
    /// What retention is deleting: never served from the ring.
    retention: RetentionCutoff,
    /// Permits for concurrent subscribers.
    slots: Arc<Semaphore>,
}

impl Live {
    /// A fan-out following `head`, allowing `max_subscribers` concurrent
    /// subscribers and keeping at most `ring_bytes` of recent events in
    /// memory. Readings below `retention` are not served from memory;
    /// metric rows are shown by their admitted `names`.
    pub fn new(
        store: Store,
        names: Arc<Names>,
        head: Head,
        retention: RetentionCutoff,
        max_subscribers: usize,
        ring_bytes: usize,
    ) -> Self {
        Live {
            ring: Mutex::new(Ring::new(ring_bytes)),
            head,
            retention,
            catalog: Catalog::new(names),
            router: Router::default(),
            store,
            slots: Arc::new(Semaphore::new(max_subscribers)),
        }
    }

    /// A permit for one more subscriber, if `--max-subscribers` allows it.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    fn lock_ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Formats a commit as one chunk. `devices` gets the devices it
    /// contains when `route` is set.
    fn format(&self, commit: &Commit, route: bool, devices: &mut Vec<Arc<str>>) -> Chunk {
        let entries = commit.readings.len() + commit.events.len();
        let mut text = String::with_capacity(entries * 160);
        let mut events = Vec::with_capacity(entries);
        let mut seen: HashSet<*const u8> = HashSet::new();
        let mut min_ts = i64::MAX;
        let catalog = self.catalog.read();
        // Rows met for the first time: kept once the read lock is gone.
        let mut learned: HashMap<i64, Arc<MetricMeta>> = HashMap::new();
        let mut has_audit = false;
        for entry in commit.in_order() {
            let start = text.len();
            let (pos, ts_ms, subject) = match entry {
                Entry::Reading(row) => {
                    let metric = row.sample.metric;
                    let meta = match catalog.get(&metric).or_else(|| learned.get(&metric)) {
                        Some(meta) => Arc::clone(meta),
                        None => match self.catalog.learn(metric) {
                            Some(meta) => Arc::clone(learned.entry(metric).or_insert(meta)),
                            None => {
                                // Metrics are admitted (named) before any of
                                // their readings is committed, so this cannot
                                // happen; the reading is still in SQLite.
                                tracing::error!(metric, "no names for a committed metric");
                                continue;
                            }
                        },
                    };
                    let ts_ms = row.sample.ts_ms;
                    format::reading(&mut text, row.pos, &meta.prefix, ts_ms, row.sample.value);
                    if route && seen.insert(meta.device.as_ptr()) {
                        devices.push(Arc::clone(&meta.device));
                    }
                    (row.pos, ts_ms, Subject::Metric(metric))
                }
                Entry::Event(stored) => {
                    let event = &stored.event;
                    format::event(
                        &mut text,
                        stored.pos,
                        &event.device,
                        event.ts_ms,
                        &event.kind,
                    );
                    // An event of no device reaches no inbox.
                    if route && !event.device.is_empty() && seen.insert(event.device.as_ptr()) {
                        devices.push(Arc::clone(&event.device));
                    }
                    let device = Arc::clone(&event.device);
                    let kind = event.kind.name();
                    has_audit |= kind == "audit";
                    (stored.pos, event.ts_ms, Subject::Event { device, kind })
                }
            };
            min_ts = min_ts.min(ts_ms);
            events.push(EventSpan {
                pos,
                subject,
                ts_ms,
                start,
                end: text.len(),
            });
        }
        drop(catalog);
        if !learned.is_empty() {
            self.catalog.keep(learned);
        }
        // The ring's budget counts text bytes; the allocation must not be
        // larger than what is counted.
        text.shrink_to_fit();
        Chunk {
            first_pos: events.first().map_or(0, |event| event.pos),
            last_pos: commit.last_pos().unwrap_or(0),
            min_ts,
            text: Bytes::from(text),
            events,
            has_audit,
        }
    }
}

impl InlineConsumer for Live {
    fn committed(&self, commit: &Commit) {
        let route = !self.router.is_empty();
        let mut devices = Vec::new();
        let chunk = Arc::new(self.format(commit, route, &mut devices));
        self.lock_ring().push(Arc::clone(&chunk));
        if route {
            self.router.deliver(&chunk, &devices);
        }
    }
}
