//! The device router: inboxes of device-filtered subscribers, so that a
//! commit wakes only the subscribers of the devices it contains. An idle
//! filtered subscriber then costs nothing per commit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::ring::Chunk;

/// Commits a device-filtered subscriber may have waiting in its inbox; when
/// full, the subscriber is marked and catches up from the ring or SQLite.
pub(super) const INBOX_CHUNKS: usize = 64;

/// An inbox, as the fan-out sees it.
#[derive(Debug)]
struct Sender {
    chunks: mpsc::Sender<Arc<Chunk>>,
    overflowed: Arc<AtomicBool>,
}

/// A device-filtered subscriber's side of its inbox.
#[derive(Debug)]
pub struct Inbox {
    chunks: mpsc::Receiver<Arc<Chunk>>,
    overflowed: Arc<AtomicBool>,
    /// For an inbox of no device (a key whose groups have none yet): the
    /// sender no device holds, so that it waits, with keep-alives, rather
    /// than end as if the fan-out had gone.
    _idle: Option<mpsc::Sender<Arc<Chunk>>>,
}

impl Inbox {
    /// Whether commits were dropped since the last call (the inbox was
    /// full). If so, what is queued is discarded too: the subscriber must
    /// catch up from its cursor instead.
    pub fn take_overflow(&mut self) -> bool {
        if !self.overflowed.swap(false, Ordering::AcqRel) {
            return false;
        }
        while self.chunks.try_recv().is_ok() {}
        true
    }

    /// The next commit of this subscriber's devices; `None` once the fan-out
    /// has gone.
    pub async fn recv(&mut self) -> Option<Arc<Chunk>> {
        self.chunks.recv().await
    }
}

#[derive(Debug, Default)]
pub(super) struct Router(Mutex<HashMap<String, Vec<Sender>>>);

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Sender>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens an inbox that receives every commit containing one of `devices`.
    pub fn open(&self, devices: &HashSet<String>) -> Inbox {
        let (sender, chunks) = mpsc::channel(INBOX_CHUNKS);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut inboxes = self.lock();
        for device in devices {
            inboxes.entry(device.clone()).or_default().push(Sender {
                chunks: sender.clone(),
                overflowed: Arc::clone(&overflowed),
            });
        }
        Inbox {
            chunks,
            overflowed,
            _idle: devices.is_empty().then_some(sender),
        }
    }

    /// Whether any subscriber filters by device (else commits need not be
    /// routed at all).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Delivers a commit to the inboxes of the devices it contains, dropping
    /// the inboxes of subscribers that have gone. Never waits: a full inbox
    /// is marked instead.
    pub fn deliver(&self, chunk: &Arc<Chunk>, devices: &[Arc<str>]) {
        let mut inboxes = self.lock();
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
}
