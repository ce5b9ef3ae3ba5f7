//! [`WriterHandle`]: how the rest of the hub hands the writer its jobs, and
//! the bounds on what may wait in its queue.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::Hello;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot};

use super::WriterHealth;
use super::jobs::{
    AccessChange, CompactStep, Dedupe, EventRecord, Job, Origin, Provisioned, Registration, Reply,
    RetainChunk, Retainable, Retained, RuleChange, WriteError, WriteOutcome, WriteRequest,
};
use crate::commits::{NewEvent, Position, Sample};

/// Most rows queued for the writer across all sessions. A session that
/// cannot get permits for its batch waits, and so stops reading its socket:
/// the device sees TCP backpressure and nothing is dropped.
pub(super) const QUEUED_ROWS: usize = 128 * 1024;

/// Most requests queued for the writer (the rows budget above is usually the
/// tighter bound); when full, `submit` waits, with the same backpressure.
pub(super) const QUEUED_REQUESTS: usize = 4096;

/// The sessions' handle on the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    requests: mpsc::Sender<Job>,
    rows: Arc<Semaphore>,
    health: WriterHealth,
}

impl WriterHandle {
    pub(super) fn new(requests: mpsc::Sender<Job>, health: WriterHealth) -> Self {
        WriterHandle {
            requests,
            rows: Arc::new(Semaphore::new(QUEUED_ROWS)),
            health,
        }
    }

    /// Whether the writer still runs.
    pub fn health(&self) -> &WriterHealth {
        &self.health
    }

    /// Queues a batch, waiting while the writer is behind.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn submit(
        &self,
        origin: Origin,
        seq: u64,
        samples: Vec<Sample>,
        reply: mpsc::Sender<WriteOutcome>,
    ) -> Result<(), WriteError> {
        self.enqueue(origin, seq, Dedupe::BySeq, samples, None, reply)
            .await
    }

    /// Queues a batch from the cluster journal, deduplicated by `seq` like
    /// a device's own, whose readings take the positions from `first_pos`
    /// on. Batches must come in position order; one whose positions are
    /// already taken was stored before and is not stored again.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn submit_at(
        &self,
        device_row: i64,
        seq: u64,
        samples: Vec<Sample>,
        first_pos: Position,
        reply: mpsc::Sender<WriteOutcome>,
    ) -> Result<(), WriteError> {
        let origin = Origin {
            device_row,
            session: 0,
        };
        self.enqueue(origin, seq, Dedupe::BySeq, samples, Some(first_pos), reply)
            .await
    }

    /// Queues readings that came without a sequence (from MQTT), kept from
    /// being stored twice as `dedupe` says; `tag` comes back in the outcome.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn submit_unsequenced(
        &self,
        device_row: i64,
        tag: u64,
        dedupe: Dedupe,
        samples: Vec<Sample>,
        reply: mpsc::Sender<WriteOutcome>,
    ) -> Result<(), WriteError> {
        let origin = Origin {
            device_row,
            session: 0,
        };
        self.enqueue(origin, tag, dedupe, samples, None, reply)
            .await
    }

    async fn enqueue(
        &self,
        origin: Origin,
        seq: u64,
        dedupe: Dedupe,
        samples: Vec<Sample>,
        at: Option<Position>,
        reply: mpsc::Sender<WriteOutcome>,
    ) -> Result<(), WriteError> {
        // The waits are boxed and taken only when the queue is full: this
        // future is part of every device session's, and an inline wait
        // would cost each connection its size while it almost never waits.
        let wanted = u32::try_from(samples.len().clamp(1, QUEUED_ROWS)).unwrap_or(u32::MAX);
        let permit = match Arc::clone(&self.rows).try_acquire_many_owned(wanted) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                Box::pin(Arc::clone(&self.rows).acquire_many_owned(wanted))
                    .await
                    .map_err(|_| WriteError::Stopped)?
            }
            Err(TryAcquireError::Closed) => return Err(WriteError::Stopped),
        };
        let request = WriteRequest {
            origin,
            seq,
            dedupe,
            samples,
            at,
            reply,
            _permit: permit,
        };
        match self.requests.try_send(Job::Batch(request)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => Box::pin(self.send(job)).await,
            Err(TrySendError::Closed(_)) => Err(WriteError::Stopped),
        }
    }

    /// Creates a device unless it is known, in the next group commit;
    /// answers its row and whether it is revoked.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn register_device(&self, device_id: &str) -> Result<(i64, bool), WriteError> {
        let device_id = device_id.to_owned();
        self.register(|reply| Registration::Device { device_id, reply })
            .await
    }

    /// Writes a `Hello`'s model, firmware and metrics in the next group
    /// commit and returns the metric rows.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn register_hello(
        &self,
        device_row: i64,
        hello: &Hello,
    ) -> Result<HashMap<u16, i64>, WriteError> {
        let hello = hello.clone();
        self.register(|reply| Registration::Hello {
            device_row,
            hello,
            reply,
        })
        .await
    }

    /// Creates (or updates the unit of) a device's metrics, given by name
    /// and unit, in the next group commit; answers their rows in order.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn register_metrics(
        &self,
        device_row: i64,
        metrics: Vec<(String, String)>,
    ) -> Result<Vec<i64>, WriteError> {
        self.register(|reply| Registration::Metrics {
            device_row,
            metrics,
            reply,
        })
        .await
    }

    /// Writes a change to a device's credentials in the next group commit.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn provision(&self, change: Provisioned) -> Result<(), WriteError> {
        self.register(|reply| Registration::Provision { change, reply })
            .await
    }

    /// Sets `key` in `hub_state` to `value` in the next group commit.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn set_state(&self, key: &'static str, value: i64) -> Result<(), WriteError> {
        self.register(|reply| Registration::State { key, value, reply })
            .await
    }

    /// Adds or removes an alert rule in the next group commit; whether it
    /// changed anything.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn change_rule(&self, change: RuleChange) -> Result<bool, WriteError> {
        self.register(|reply| Registration::Rule { change, reply })
            .await
    }

    /// Adds or revokes a key, or changes a device's groups and name, in
    /// the next group commit; whether it changed anything.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn change_access(&self, change: AccessChange) -> Result<bool, WriteError> {
        self.register(|reply| Registration::Access { change, reply })
            .await
    }

    /// Deletes one chunk (at most 2,000 rows) of `what` older than
    /// `before_ms` of `metrics`, taken in order, between two group commits.
    /// Call again with the metrics not yet `finished`.
    ///
    /// # Errors
    /// The writer has stopped or the delete failed.
    pub async fn retain(
        &self,
        what: Retainable,
        metrics: Vec<i64>,
        before_ms: i64,
    ) -> Result<Retained, WriteError> {
        let (reply, answer) = oneshot::channel();
        let chunk = RetainChunk {
            what,
            metrics,
            before_ms,
            reply,
        };
        self.send(Job::Retain(chunk)).await?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Moves the readings at `metrics`' positions (one slab's, found by
    /// compaction on a reader) into one compacted block per metric, in one
    /// transaction between two group commits. Returns how many moved.
    ///
    /// # Errors
    /// The writer has stopped or the move failed (and nothing moved).
    pub async fn compact(&self, metrics: Vec<(i64, Vec<i64>)>) -> Result<usize, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Compact(CompactStep { metrics, reply }))
            .await?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }

    /// Stores `events`, in order, at the next positions, in one group
    /// commit, and answers their positions once it is committed and
    /// published.
    ///
    /// # Errors
    /// The writer has stopped, or the commit failed: none was stored.
    pub async fn record(&self, events: Vec<NewEvent>) -> Result<Vec<Position>, WriteError> {
        let events = events.into_iter().map(|event| (event, None)).collect();
        let stored = self
            .ask(|reply| Job::Record(EventRecord { events, reply }))
            .await?;
        stored
            .into_iter()
            .map(|pos| pos.ok_or_else(|| WriteError::Failed("an event without a position".into())))
            .collect()
    }

    /// Stores `event` at `at` (a cluster journal entry's position), or
    /// answers `None` if that position is already taken: the entry was
    /// stored before.
    ///
    /// # Errors
    /// The writer has stopped, or the commit failed.
    pub async fn record_at(
        &self,
        event: NewEvent,
        at: Position,
    ) -> Result<Option<Position>, WriteError> {
        let events = vec![(event, Some(at))];
        let stored = self
            .ask(|reply| Job::Record(EventRecord { events, reply }))
            .await?;
        Ok(stored.into_iter().next().flatten())
    }

    /// Stores a configuration change of a device at the next position, or
    /// answers `None` when it does not apply to where the device stands (a
    /// desired version another change took first, an answer to a version
    /// never desired).
    ///
    /// # Errors
    /// The writer has stopped, or the commit failed.
    pub async fn record_config(&self, event: NewEvent) -> Result<Option<Position>, WriteError> {
        let events = vec![(event, None)];
        let stored = self
            .ask(|reply| Job::Record(EventRecord { events, reply }))
            .await?;
        Ok(stored.into_iter().next().flatten())
    }

    /// Notes that this hub sent a device its desired configuration
    /// `version` (or could not, below the configuration's protocol).
    ///
    /// # Errors
    /// The writer has stopped, or the commit failed.
    pub async fn config_delivered(
        &self,
        device_row: i64,
        version: u64,
        protocol: u16,
    ) -> Result<(), WriteError> {
        self.register(|reply| Registration::ConfigDelivered {
            device_row,
            version,
            protocol,
            reply,
        })
        .await
    }

    async fn register<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> Registration,
    ) -> Result<T, WriteError> {
        self.ask(|reply| Job::Register(job(reply))).await
    }

    /// Queues the job `job` makes of a reply, and waits for that reply (or
    /// for the writer to fail).
    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.send(job(Reply::new(reply))).await?;
        tokio::select! {
            answer = answer => answer.map_err(|_| WriteError::Stopped)?,
            () = self.health.failed() => Err(WriteError::Failed(
                self.health.failure().unwrap_or_default().into(),
            )),
        }
    }

    async fn send(&self, job: Job) -> Result<(), WriteError> {
        self.requests
            .send(job)
            .await
            .map_err(|_| WriteError::Stopped)
    }
}
