//! What a command to a device comes to: the device's answer, or why none
//! came. Shared by the registry (whose `Elsewhere` hook, the cluster,
//! answers with it) and `command` (which calls devices), so neither
//! imports the other for it.

use protocol::DecodeError;

use crate::store::StoreError;

/// Commands queued for one session. When full, new commands are refused
/// (the API answers 503): a device that does not keep up with its commands
/// cannot make the hub hold more of them.
pub const COMMAND_QUEUE: usize = 16;

/// A command's answer, or why there is none.
pub type CommandOutcome = Result<Answer, Failure>;

/// The device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The command's id on this hub.
    pub id: u64,
    pub ok: bool,
    pub detail: String,
}

/// Why a command got no answer from its device.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Outside the protocol's limits: the device would refuse the frame.
    #[error("not a valid command: {error}")]
    Invalid {
        /// `name` or `args`.
        field: &'static str,
        error: DecodeError,
    },
    #[error("no device {0:?}")]
    UnknownDevice(String),
    #[error("device {0:?} is not connected")]
    Offline(String),
    #[error("device {0:?} has {COMMAND_QUEUE} commands waiting")]
    QueueFull(String),
    #[error("device {device:?} disconnected before answering command {id}")]
    Disconnected { device: String, id: u64 },
    #[error("device {device:?} did not answer command {id} within {ms} ms")]
    TimedOut { device: String, id: u64, ms: u128 },
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The hub holding the device could not be asked (NATS trouble).
    #[error("cannot reach the cluster: {0}")]
    Cluster(String),
}

impl Failure {
    /// A stable code for programs (the HTTP API's `error` field, the
    /// bridge's `cmd/result`).
    pub fn code(&self) -> &'static str {
        match self {
            Failure::Invalid { .. } => "bad_command",
            Failure::UnknownDevice(_) => "unknown_device",
            Failure::Offline(_) | Failure::Disconnected { .. } => "device_offline",
            Failure::QueueFull(_) => "command_queue_full",
            Failure::TimedOut { .. } => "command_timeout",
            Failure::Storage(_) => "storage_failing",
            Failure::Cluster(_) => "cluster_unavailable",
        }
    }
}
