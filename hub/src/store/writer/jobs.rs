//! What the writer is asked to do, and what it answers: the jobs its
//! queue carries, each with its own reply channel, and [`WriteError`].

use std::collections::HashMap;
use std::sync::Arc;

use protocol::Hello;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::rollup;
use crate::commits::{NewEvent, Position, Sample};

/// Why a write was not done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The hub is stopping: the writer takes no more jobs.
    #[error("the writer has stopped")]
    Stopped,
    /// The writer failed for good (its file was replaced, a thread
    /// panicked): nothing more is written until the hub restarts.
    #[error("the writer has failed: {0}")]
    Failed(Arc<str>),
    /// The transaction that held the write failed; nothing of it was
    /// stored. Shared by every job of that commit.
    #[error("the database refused the write: {0}")]
    Database(Arc<rusqlite::Error>),
}

impl From<rusqlite::Error> for WriteError {
    fn from(err: rusqlite::Error) -> Self {
        WriteError::Database(Arc::new(err))
    }
}

/// What the writer tells a session about one of its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed now, or committed before (a resend).
    Stored { seq: u64 },
    /// The transaction failed; nothing of the batch was stored.
    Failed { seq: u64 },
}

/// Where a batch comes from: the device's `devices.id` row, and the session
/// (one connection, numbered by the registry in order) that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub device_row: i64,
    pub session: u64,
}

/// How the writer keeps a batch from being stored twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dedupe {
    /// A WebSocket batch: a `seq` at or below the device's last committed
    /// one is a resend, acknowledged again and not stored.
    BySeq,
    /// Readings from MQTT that carry their own time: one whose metric
    /// already has a reading at that `ts_ms` is a redelivery, not stored.
    ByTime,
    /// Readings from MQTT timed by the hub's clock: nothing tells a
    /// redelivery apart, so each is stored.
    Never,
}

/// One device batch on its way to the database.
#[derive(Debug)]
pub(super) struct WriteRequest {
    pub origin: Origin,
    /// The batch's seq; with `Dedupe::ByTime` or `Never` only a tag for
    /// the outcome.
    pub seq: u64,
    pub dedupe: Dedupe,
    pub samples: Vec<Sample>,
    /// Where the batch's readings go, when the position is not the
    /// writer's to choose: the cluster journal's (each hub stores a
    /// journal entry at the same positions). `None`: the next ones.
    pub at: Option<Position>,
    /// The session's outcome channel. Its capacity is the session's in-flight
    /// window, so the writer's `try_send` never finds it full.
    pub reply: mpsc::Sender<WriteOutcome>,
    /// Held until the request is answered: its share of the rows the
    /// writer's queue may hold.
    pub(super) _permit: OwnedSemaphorePermit,
}

/// A registration's reply channel, and the answer its commit wrote, kept
/// with the job itself: each registration is answered with its own result,
/// whatever else the commit held.
#[derive(Debug)]
pub(super) struct Reply<T> {
    to: oneshot::Sender<Result<T, WriteError>>,
    written: Option<T>,
}

impl<T> Reply<T> {
    pub(super) fn new(to: oneshot::Sender<Result<T, WriteError>>) -> Self {
        Reply { to, written: None }
    }

    /// Keeps what the transaction wrote, to answer once it commits.
    pub(super) fn wrote(&mut self, answer: T) {
        self.written = Some(answer);
    }

    /// Answers after the commit: what was written, or why nothing was.
    pub(super) fn settle(self, failure: Option<&WriteError>) {
        let answer = match (failure, self.written) {
            (Some(err), _) => Err(err.clone()),
            (None, Some(answer)) => Ok(answer),
            // Every registration of a commit writes before it commits.
            (None, None) => Err(WriteError::Failed(
                "a registration was committed without being written".into(),
            )),
        };
        // The asker may have gone (its session closed): nothing to tell.
        let _ = self.to.send(answer);
    }
}

/// A registration write: what a device's connection brings that the
/// database does not have yet, or a fact the hub keeps about itself.
#[derive(Debug)]
pub(super) enum Registration {
    /// Create the device, without a token, if it is unknown (a
    /// certificate vouches for it, or MQTT or the cluster's stream brings
    /// it). Answers its row and whether it is revoked.
    Device {
        device_id: String,
        reply: Reply<(i64, bool)>,
    },
    /// Record a `Hello`'s model, firmware and metrics. Answers the metric
    /// rows by the device's metric ids.
    Hello {
        device_row: i64,
        hello: Hello,
        reply: Reply<HashMap<u16, i64>>,
    },
    /// Create or update (the unit) metrics of a device, by name and unit:
    /// readings from MQTT bring no `Hello`. Answers their rows, in order.
    Metrics {
        device_row: i64,
        metrics: Vec<(String, String)>,
        reply: Reply<Vec<i64>>,
    },
    /// A change to a device's credentials (`Provisioned`).
    Provision {
        change: Provisioned,
        reply: Reply<()>,
    },
    /// Set one of the hub's facts about itself in `hub_state` (a cursor
    /// consumer's cursor, say).
    State {
        key: &'static str,
        value: i64,
        reply: Reply<()>,
    },
    /// Add or remove an alert rule. Answers whether it changed anything
    /// (`false`: a rule of that name exists, or did not).
    Rule {
        change: RuleChange,
        reply: Reply<bool>,
    },
    /// A change to keys or device groups from the admin API. Answers
    /// whether it changed anything (`false`: the name is taken, or there
    /// is no such key or device).
    Access {
        change: AccessChange,
        reply: Reply<bool>,
    },
    /// This hub sent the device the desired configuration `version` on a
    /// connection of protocol `protocol` (or, below the configuration's
    /// protocol, could not): its own bookkeeping of delivery.
    ConfigDelivered {
        device_row: i64,
        version: u64,
        protocol: u16,
        reply: Reply<()>,
    },
}

/// A change to `api_keys`, `device_groups` or a device's name, from the
/// admin API (`hub key` and `hub device group` write the file
/// themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessChange {
    /// A new key: `false` if the name is taken.
    AddKey {
        name: String,
        key_sha256: [u8; 32],
        role: &'static str,
        groups: Vec<String>,
        expires_ms: Option<i64>,
    },
    RevokeKey {
        name: String,
    },
    /// Puts a device into `join` and takes it out of `leave`, and renames
    /// it when `name` is set.
    Device {
        device_id: String,
        name: Option<String>,
        join: Vec<String>,
        leave: Vec<String>,
    },
}

/// A change to `alert_rules`, from the HTTP API or a cluster's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleChange {
    /// A new rule: its name and checked JSON definition.
    Add {
        name: String,
        definition: String,
    },
    /// A rule from a cluster's stream: new, or replacing the one of that
    /// name.
    Put {
        name: String,
        definition: String,
    },
    Remove {
        name: String,
    },
}

impl Registration {
    /// Answers after the commit, with what was written or `failure`.
    pub(super) fn settle(self, failure: Option<&WriteError>) {
        match self {
            Registration::Device { reply, .. } => reply.settle(failure),
            Registration::Hello { reply, .. } => reply.settle(failure),
            Registration::Metrics { reply, .. } => reply.settle(failure),
            Registration::Rule { reply, .. } | Registration::Access { reply, .. } => {
                reply.settle(failure);
            }
            Registration::Provision { reply, .. }
            | Registration::State { reply, .. }
            | Registration::ConfigDelivered { reply, .. } => {
                reply.settle(failure);
            }
        }
    }
}

/// A device's credentials as a cluster's stream carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// The device may connect with the token of this SHA-256 hash (a new
    /// device, or a new token for a known one); `name` is kept if `None`.
    Token {
        device_id: String,
        token_hash: [u8; 32],
        name: Option<String>,
    },
    /// The device is revoked from now on (known or not: a revoked id
    /// cannot register itself later).
    Revoked { device_id: String },
    /// The provisioning key registered the device and the hub issued it
    /// the token of this hash, which the key may still replace until the
    /// device confirms it. Changes nothing for a device that the key may
    /// not reach (one with credentials of its own, or revoked): whoever
    /// reads the device back learns whether its hash is the one it sent.
    Enrolled {
        device_id: String,
        token_hash: [u8; 32],
    },
    /// The device has shown that it holds the token of this hash (`None`:
    /// it has no token, and a certificate vouched for it): from now on the
    /// provisioning key does not reach it.
    Confirmed {
        device_id: String,
        token_hash: Option<[u8; 32]>,
    },
}

/// Events to store in order, each at the next position or at its own (a
/// cluster journal entry's, as for a batch). Answers each one's position,
/// or `None` for one stored before (a journal entry read again).
#[derive(Debug)]
pub(super) struct EventRecord {
    pub events: Vec<(NewEvent, Option<Position>)>,
    pub reply: Reply<Vec<Option<Position>>>,
}

/// What the writer is asked to do.
#[derive(Debug)]
pub(super) enum Job {
    Batch(WriteRequest),
    Register(Registration),
    /// Events, placed among the commit's batches in the order asked.
    Record(EventRecord),
    /// Retention's deletes, run by the writer so that nothing else in the
    /// running hub takes SQLite's write lock.
    Retain(RetainChunk),
    /// Compaction's moves, run by the writer for the same reason.
    Compact(CompactStep),
    /// The hub is stopping: refuse new jobs, finish the queued ones, exit.
    Stop,
}

/// Rows one retention chunk deletes at most: a few milliseconds of the
/// writer's time, between two group commits.
pub(super) const RETAIN_ROWS: usize = 2_000;

/// What retention deletes: raw readings by device time, or a roll-up
/// tier's buckets by their start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retainable {
    Readings,
    /// Events, by the hub's time (the metrics asked for do not matter).
    Events,
    Buckets(rollup::Tier),
}

/// One chunk of retention: delete rows of `what` older than `before_ms` of
/// `metrics`, in order, up to [`RETAIN_ROWS`].
#[derive(Debug)]
pub(super) struct RetainChunk {
    pub what: Retainable,
    pub metrics: Vec<i64>,
    pub before_ms: i64,
    pub reply: oneshot::Sender<Result<Retained, WriteError>>,
}

/// What a retention chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Readings deleted.
    pub deleted: usize,
    /// How many of the metrics asked for have nothing older left; the
    /// rest need another chunk.
    pub finished: usize,
}

/// One step of compaction: move these metrics' readings at these
/// positions (all of one slab) into blocks.
#[derive(Debug)]
pub(super) struct CompactStep {
    pub metrics: Vec<(i64, Vec<i64>)>,
    pub reply: oneshot::Sender<Result<usize, WriteError>>,
}
