//! Presence in the log: each device's connects and disconnects, recorded
//! as `status` events at storage positions, so that the live stream (with
//! ids, resumed by `Last-Event-ID`), catch-up and every cursor consumer get
//! them the way they get readings.
//!
//! The registry broadcasts its changes; [`Recorder`] records them, on a
//! lone hub through the writer, in a cluster as entries of the stream that
//! every hub stores at the same positions (chosen once, at start: [`Log`]).
//! It records a change only when it changes what this hub last said:
//! `online` once for a device's sessions here, however many replace each
//! other, and `offline` once none is left, and in a cluster only when no
//! other hub has the device either (a device moving to another hub stays
//! online in the log; that hub said so). What it could not record (the
//! writer or the stream failing), and whatever a lagging broadcast hid, is
//! made good from the registry's own list: at once after a lag, every
//! second while a record fails.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::commits::{EventKind, NewEvent};
use crate::ingest::registry::{Change, Registry};
use crate::journal::Journal;
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError, now_ms};

/// Changes recorded together: one group commit, or one run of publishes.
const RECORD_AT_ONCE: usize = 1024;

/// How soon a failed record is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where status events are recorded.
#[derive(Debug, Clone)]
pub enum Log {
    /// A lone hub: its writer, at the next positions.
    Writer(WriterHandle),
    /// A cluster: the stream, whose entries every hub stores.
    Stream(Box<Journal>),
}

/// A device that came (`true`) or went.
type Status = (Arc<str>, bool);

/// Records this hub's presence changes as status events.
#[derive(Debug)]
pub struct Recorder {
    registry: Registry,
    admission: Admission,
    log: Log,
    /// The devices this hub last said are online.
    said_online: HashSet<Arc<str>>,
    /// A record failed: the registry's list is to be recorded again.
    behind: bool,
}

impl Recorder {
    /// A recorder of `registry`'s changes into `log`. On a lone hub the
    /// devices the log last left online (the hub stopped without saying
    /// otherwise) are taken as said online, so the first sync records them
    /// offline unless they are back.
    ///
    /// # Errors
    /// The log's last statuses cannot be read.
    pub async fn new(
        registry: Registry,
        admission: Admission,
        store: &Store,
        log: Log,
    ) -> Result<Self, StoreError> {
        let said_online = match log {
            Log::Writer(_) => store
                .last_online()
                .await?
                .into_iter()
                .map(Arc::from)
                .collect(),
            // Other hubs may have them: the cluster's roster is not heard
            // yet, and each hub speaks only for its own devices.
            Log::Stream(_) => HashSet::new(),
        };
        Ok(Recorder {
            registry,
            admission,
            log,
            said_online,
            behind: true,
        })
    }

    /// Records presence changes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut changes = self.registry.changes();
        let mut retry = tokio::time::interval(RETRY_AFTER);
        loop {
            if self.behind {
                self.behind = false;
                self.sync().await;
            }
            let mut statuses = Vec::new();
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = retry.tick(), if self.behind => continue,
                change = changes.recv() => match change {
                    Ok(change) => {
                        self.note(change, &mut statuses);
                        // Whatever else is waiting goes in the same record.
                        while statuses.len() < RECORD_AT_ONCE {
                            match changes.try_recv() {
                                Ok(change) => self.note(change, &mut statuses),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => self.behind = true,
                    Err(RecvError::Closed) => return,
                },
            }
            self.record(statuses).await;
        }
    }

    /// What `change` adds to the statuses to record.
    fn note(&mut self, (device, change): (Arc<str>, Change), statuses: &mut Vec<Status>) {
        match change {
            Change::Online => {
                if self.said_online.insert(Arc::clone(&device)) {
                    statuses.push((device, true));
                }
            }
            Change::Offline => {
                // No session left here; another hub that has it said so.
                if !self.registry.is_online(&device)
                    && self.said_online.remove(&device)
                    && !self.registry.online_elsewhere(&device)
                {
                    statuses.push((device, false));
                }
            }
            // The session it closes reports the device offline.
            Change::Revoked => {}
        }
    }

    /// Records what differs between the registry's list and what this hub
    /// last said.
    async fn sync(&mut self) {
        let here: HashSet<Arc<str>> = self
            .registry
            .online_here()
            .into_iter()
            .map(Arc::from)
            .collect();
        let mut statuses: Vec<Status> = here
            .difference(&self.said_online)
            .map(|device| (Arc::clone(device), true))
            .collect();
        for gone in self.said_online.difference(&here) {
            if !self.registry.online_elsewhere(gone) {
                statuses.push((Arc::clone(gone), false));
            }
        }
        self.said_online = here;
        self.record(statuses).await;
    }

    /// Records `statuses` in order; what could not be is taken back from
    /// what was said, to be made good by the next sync.
    async fn record(&mut self, statuses: Vec<Status>) {
        if statuses.is_empty() {
            return;
        }
        let recorded = match &self.log {
            Log::Writer(writer) => self.record_in_storage(writer, &statuses).await,
            Log::Stream(journal) => record_in_stream(journal, &statuses).await,
        };
        if recorded < statuses.len() {
            self.behind = true;
            for (device, online) in &statuses[recorded..] {
                if *online {
                    self.said_online.remove(device);
                } else {
                    self.said_online.insert(Arc::clone(device));
                }
            }
        }
    }

    /// Stores `statuses` in one group commit: all of them, or none.
    async fn record_in_storage(&self, writer: &WriterHandle, statuses: &[Status]) -> usize {
        let ids: Vec<&str> = statuses.iter().map(|(device, _)| &**device).collect();
        let rows = match self.admission.rows(&ids).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look up devices for their status; trying again");
                return 0;
            }
        };
        let ts_ms = now_ms();
        let events = statuses
            .iter()
            // Only a registered device has a session.
            .filter_map(|(device, online)| {
                Some(NewEvent {
                    device_row: Some(*rows.get(&**device)?),
                    device: Arc::clone(device),
                    ts_ms,
                    kind: EventKind::Status { online: *online },
                })
            })
            .collect();
        match writer.record(events).await {
            Ok(_) => statuses.len(),
            Err(err) => {
                tracing::warn!(error = %err, "device statuses were not stored; trying again");
                0
            }
        }
    }
}

/// Appends `statuses` to the stream one after another; answers how many
/// it took before one failed.
async fn record_in_stream(journal: &Journal, statuses: &[Status]) -> usize {
    for (n, (device, online)) in statuses.iter().enumerate() {
        let kind = EventKind::Status { online: *online };
        if let Err(err) = journal.append_event(device, now_ms(), kind, None).await {
            tracing::warn!(%device, error = %err, "the stream did not take a device's status; trying again");
            return n;
        }
    }
    statuses.len()
}
