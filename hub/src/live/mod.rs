//! Live: fan-out of committed readings to Server-Sent Events subscribers.
//!
//! After each commit the writer hands the new rows to [`Live::committed`],
//! which formats every reading once as SSE text and appends the commit as
//! one [`Chunk`] to a ring held in memory (at most `--live-buffer-mb`; the
//! oldest commits are evicted first).
//! Subscribers ([`subscription`]) keep a cursor — the last position they
//! sent — and read the ring after it. One that falls behind the ring (or
//! resumes with an old `Last-Event-ID`) is caught up from SQLite, in order,
//! until it reaches the ring again. So every subscriber gets every matching
//! event exactly once, a slow one costs the hub no memory of its own, and it
//! never slows ingest or other subscribers: nobody waits for it.
//!
//! Subscribers filtered by device are not woken by every commit: each has a
//! small inbox, and a commit is delivered only to the inboxes of the devices
//! it contains. An inbox that overflows marks its subscriber, which then
//! catches up through the ring or SQLite like any other.
//!
//! Device connect/disconnect `status` events are live-only (not stored, not
//! replayed) and go through a small broadcast channel.

pub mod format;
pub mod subscription;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::body::Bytes;
use protocol::MetricDescriptor;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};

use crate::store::Store;
use crate::store::writer::{Committed, OnCommit};

/// Status events buffered for subscribers. One that lags further skips the
/// oldest: presence is also in `/v1/devices`.
const STATUS_BUFFER: usize = 1024;

/// Commits a device-filtered subscriber may have waiting in its inbox; when
/// full, the subscriber is marked and catches up from the ring or SQLite.
const INBOX_CHUNKS: usize = 64;

/// A device-filtered subscriber's inbox, as the fan-out sees it.
#[derive(Debug)]
struct Inbox {
    chunks: mpsc::Sender<Arc<Chunk>>,
    overflowed: Arc<AtomicBool>,
}

/// A device-filtered subscriber's side of its inbox.
#[derive(Debug)]
pub struct InboxReceiver {
    pub(crate) chunks: mpsc::Receiver<Arc<Chunk>>,
    pub(crate) overflowed: Arc<AtomicBool>,
}

/// One reading inside a chunk's text.
#[derive(Debug, Clone, Copy)]
struct EventSpan {
    pos: i64,
    metric: i64,
    start: usize,
    end: usize,
}

/// One commit's readings, formatted.
#[derive(Debug)]
pub struct Chunk {
    first_pos: i64,
    last_pos: i64,
    text: Bytes,
    events: Vec<EventSpan>,
}

/// What a metric's events need: who it belongs to, for filters, and its
/// pre-escaped JSON prefix.
#[derive(Debug)]
pub struct MetricMeta {
    pub device: Arc<str>,
    pub name: Arc<str>,
    prefix: String,
}

#[derive(Debug, Default)]
struct Ring {
    chunks: VecDeque<Arc<Chunk>>,
    bytes: usize,
}

/// The fan-out hub shared by the writer and every subscriber.
#[derive(Debug)]
pub struct Live {
    ring: Mutex<Ring>,
    /// The last position published; subscribers wait for it to change.
    head: watch::Sender<i64>,
    catalog: RwLock<HashMap<i64, Arc<MetricMeta>>>,
    status: broadcast::Sender<(Arc<str>, Bytes)>,
    /// Inboxes of device-filtered subscribers, by device.
    inboxes: Mutex<HashMap<String, Vec<Inbox>>>,
    store: Store,
    /// Most bytes of formatted events the ring keeps.
    ring_bytes: usize,
    /// Permits for concurrent subscribers.
    pub(crate) slots: Arc<Semaphore>,
}

impl Live {
    /// A fan-out starting after position `head` (the last stored), allowing
    /// `max_subscribers` concurrent subscribers and keeping at most
    /// `ring_bytes` of recent events in memory.
    pub fn new(store: Store, head: i64, max_subscribers: usize, ring_bytes: usize) -> Self {
        Live {
            ring: Mutex::new(Ring::default()),
            head: watch::Sender::new(head),
            catalog: RwLock::new(HashMap::new()),
            status: broadcast::Sender::new(STATUS_BUFFER),
            inboxes: Mutex::new(HashMap::new()),
            store,
            ring_bytes,
            slots: Arc::new(Semaphore::new(max_subscribers)),
        }
    }

    /// Records the names behind a connection's metric rows, before any of
    /// its readings can be committed.
    pub fn register_metrics(
        &self,
        device: &str,
        metrics: &[MetricDescriptor],
        rows: &HashMap<u16, i64>,
    ) {
        let device: Arc<str> = device.into();
        let mut catalog = self.catalog.write().unwrap_or_else(PoisonError::into_inner);
        for metric in metrics {
            if let Some(&row) = rows.get(&metric.id) {
                catalog.insert(
                    row,
                    Arc::new(MetricMeta {
                        device: Arc::clone(&device),
                        name: metric.name.as_str().into(),
                        prefix: format::reading_prefix(&device, &metric.name, &metric.unit),
                    }),
                );
            }
        }
    }

    /// Opens an inbox that receives every commit containing one of `devices`.
    pub fn open_inbox(&self, devices: &std::collections::HashSet<String>) -> InboxReceiver {
        let (sender, chunks) = mpsc::channel(INBOX_CHUNKS);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut inboxes = self.inboxes.lock().unwrap_or_else(PoisonError::into_inner);
        for device in devices {
            inboxes.entry(device.clone()).or_default().push(Inbox {
                chunks: sender.clone(),
                overflowed: Arc::clone(&overflowed),
            });
        }
        InboxReceiver { chunks, overflowed }
    }

    /// Delivers a chunk to the inboxes of the devices it contains.
    fn deliver(&self, chunk: &Arc<Chunk>, devices: &[Arc<str>]) {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(PoisonError::into_inner);
        for device in devices {
            let Some(list) = inboxes.get_mut(&**device) else {
                continue;
            };
            list.retain(|inbox| !inbox.chunks.is_closed());
            for inbox in list.iter() {
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    inbox.chunks.try_send(Arc::clone(chunk))
                {
                    inbox.overflowed.store(true, Ordering::Release);
                }
            }
            if list.is_empty() {
                inboxes.remove(&**device);
            }
        }
    }

    /// Publishes a device's connect or disconnect.
    pub fn device_status(&self, device: &str, online: bool) {
        let text = format::status(device, online, crate::store::now_ms());
        // No subscribers is not an error.
        let _ = self.status.send((device.into(), Bytes::from(text)));
    }

    fn metric(&self, row: i64) -> Option<Arc<MetricMeta>> {
        self.catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&row)
            .cloned()
    }

    fn lock_ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last position published.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// The store, for catch-up reads.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl OnCommit for Live {
    fn committed(&self, rows: &[Committed]) {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return;
        };
        let mut text = String::with_capacity(rows.len() * 160);
        let mut events = Vec::with_capacity(rows.len());
        // The devices in this commit, only if some subscriber filters by device.
        let targeted = !self
            .inboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        let mut devices: Vec<Arc<str>> = Vec::new();
        let mut seen: HashSet<*const u8> = HashSet::new();
        let catalog = self.catalog.read().unwrap_or_else(PoisonError::into_inner);
        for row in rows {
            let Some(meta) = catalog.get(&row.sample.metric) else {
                // Sessions register metrics before sending any batch, so
                // this cannot happen; the reading is still in SQLite.
                tracing::error!(
                    metric = row.sample.metric,
                    "no metadata for a committed metric"
                );
                continue;
            };
            if targeted && seen.insert(meta.device.as_ptr()) {
                devices.push(Arc::clone(&meta.device));
            }
            let start = text.len();
            format::reading(
                &mut text,
                row.pos,
                &meta.prefix,
                row.sample.ts_ms,
                row.sample.value,
            );
            events.push(EventSpan {
                pos: row.pos,
                metric: row.sample.metric,
                start,
                end: text.len(),
            });
        }
        drop(catalog);
        // The ring's budget counts text bytes; the allocation must not be
        // larger than what is counted.
        text.shrink_to_fit();
        let chunk = Arc::new(Chunk {
            first_pos: first.pos,
            last_pos: last.pos,
            text: Bytes::from(text),
            events,
        });
        {
            let mut ring = self.lock_ring();
            ring.bytes += chunk.text.len();
            ring.chunks.push_back(Arc::clone(&chunk));
            while ring.bytes > self.ring_bytes && ring.chunks.len() > 1 {
                if let Some(old) = ring.chunks.pop_front() {
                    ring.bytes -= old.text.len();
                }
            }
        }
        self.head.send_replace(last.pos);
        if targeted {
            self.deliver(&chunk, &devices);
        }
    }
}
