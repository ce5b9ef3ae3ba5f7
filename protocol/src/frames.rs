//! The frame types. Field order is wire order: never reorder, remove or retype
//! a field, and only append enum variants (see the crate's compatibility rules).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::bounded;

/// A frame sent by a device to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceFrame {
    /// Must be the first frame of every connection.
    Hello(Hello),
    /// Readings to store; answered by an [`Ack`] once they are committed.
    Batch(Batch),
    /// The outcome of a [`Command`].
    CommandResult(CommandResult),
    /// The device's answer to a [`HubFrame::Config`] (protocol version 3):
    /// it runs that version now, or refused it and runs what it ran.
    ConfigResult(ConfigResult),
}

/// A frame sent by the hub to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HubFrame {
    /// The answer to `Hello`.
    Welcome(Welcome),
    /// A batch is durably stored.
    Ack(Ack),
    /// Something the device should do; answered by a [`CommandResult`].
    Command(Command),
    /// The hub is about to close the connection, and why.
    Error(ErrorFrame),
    /// The device's own token, issued when it registered itself with the
    /// provisioning key (protocol version 2). Sent before `Welcome`; the
    /// device keeps it and presents it instead of the key from then on.
    Token(Token),
    /// The configuration the device should run (protocol version 3): sent
    /// right after `Welcome` when the device has not yet answered the
    /// latest version, and again whenever it changes while connected.
    /// Answered by a [`DeviceFrame::ConfigResult`] of the same version.
    Config(Config),
}

/// Introduces the device and the metrics it will send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the device speaks ([`crate::PROTOCOL_VERSION`]).
    pub version: u16,
    /// The device's id; must match the id its token was issued for.
    pub device_id: String,
    /// Free text, for people.
    pub model: String,
    /// Free text, for people.
    pub firmware: String,
    /// Every metric the device will send on this connection.
    #[serde(deserialize_with = "bounded::metrics")]
    pub metrics: Vec<MetricDescriptor>,
}

/// Names one metric and gives it a small id used by every [`Reading`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricDescriptor {
    /// The id readings use; unique within one `Hello`.
    pub id: u16,
    /// For example `temperature`.
    pub name: String,
    /// For example `°C`; may be empty.
    pub unit: String,
}

/// A group of readings sharing a sequence number and a base time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Per-device sequence number, starting at 1 and strictly increasing.
    pub seq: u64,
    /// Milliseconds since the Unix epoch (UTC) that every offset counts from.
    pub base_ms: u64,
    /// The readings; at least one.
    #[serde(deserialize_with = "bounded::readings")]
    pub readings: Vec<Reading>,
}

/// One measured value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// A [`MetricDescriptor::id`] from this connection's `Hello`.
    pub metric: u16,
    /// Milliseconds after [`Batch::base_ms`].
    pub offset_ms: u32,
    /// The value. NaN and ±infinity are accepted on the wire and mean "the
    /// sensor gave no number": the hub stores them as SQL `NULL` and shows
    /// them as JSON `null`.
    pub value: f64,
}

/// The outcome of a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The [`Command::id`] being answered.
    pub id: u64,
    /// Whether the command was carried out.
    pub ok: bool,
    /// Free text: a result or the reason for failure.
    pub detail: String,
}

/// The hub's answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the hub speaks.
    pub version: u16,
    /// The last `seq` the hub has committed for this device (0 if none).
    /// The device resends every unacknowledged batch after it.
    pub last_seq: u64,
    /// How often the device should sample, in milliseconds.
    pub sample_interval_ms: u32,
}

/// A batch and every batch before it on this connection are durably stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The [`Batch::seq`] that was stored.
    pub seq: u64,
}

/// Something the hub asks the device to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Chosen by the hub; echoed in [`CommandResult::id`].
    pub id: u64,
    /// For example `set_interval` or `ping`.
    pub name: String,
    /// Named text arguments.
    #[serde(deserialize_with = "bounded::args")]
    pub args: Vec<CommandArg>,
}

/// One named argument of a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandArg {
    /// For example `interval_ms`.
    pub name: String,
    /// For example `500`.
    pub value: String,
}

/// A device's own bearer token, issued by the hub (see [`HubFrame::Token`]).
///
/// Sent before `Welcome`, so a device that sends a `Batch` (which it does
/// only after `Welcome`) has read it: the hub takes that first batch as
/// proof that the device holds its token. Until then the provisioning key
/// may still register the device again (a device that lost the frame, or
/// crashed before it kept it, is not locked out); after it, only the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The bearer token, as printable ASCII.
    pub token: String,
}

/// The configuration the hub keeps for a device (its desired state).
///
/// Only the latest version is ever sent: a device that was offline while
/// the configuration changed several times gets the last one, once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Grows by one with every change; echoed in [`ConfigResult::version`].
    pub version: u64,
    /// The whole configuration, a JSON object as UTF-8 text of at most
    /// [`crate::limits::MAX_CONFIG_BYTES`] bytes (never a patch).
    pub json: String,
}

/// A device's answer to a [`Config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigResult {
    /// The [`Config::version`] being answered.
    pub version: u64,
    /// `true`: the device runs this version now. `false`: it refused it
    /// (a key it does not know, a value out of range) and keeps running
    /// the configuration it had.
    pub ok: bool,
    /// Free text: why it refused, or anything worth showing.
    pub detail: String,
}

/// Sent by the hub just before it closes the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// One of [`error_code`]; new codes may be added.
    pub code: u16,
    /// For people and logs.
    pub message: String,
}

/// The codes of [`ErrorFrame::code`]. The WebSocket close that follows uses
/// close code 1008 (policy violation) for the device's mistakes and for a
/// replaced or revoked connection, 1009 for a
/// frame that is too large, 1011 for the hub's own trouble. When the hub
/// shuts down it sends no `Error`, only a close with code 1001.
pub mod error_code {
    /// The frame could not be decoded.
    pub const MALFORMED: u16 = 1;
    /// The frame is larger than the limit.
    pub const TOO_LARGE: u16 = 2;
    /// A valid frame at the wrong time (a `Batch` before `Hello`, a second
    /// `Hello`).
    pub const UNEXPECTED_FRAME: u16 = 3;
    /// No `Hello` arrived in time.
    pub const HELLO_TIMEOUT: u16 = 4;
    /// The protocol version is not supported.
    pub const UNSUPPORTED_VERSION: u16 = 5;
    /// The `Hello`'s device id is not the one the credentials are for, or
    /// the provisioning key was presented for a device that has credentials
    /// of its own (a token, or a certificate identity).
    pub const WRONG_DEVICE: u16 = 6;
    /// A `Batch`'s `seq` is not above the previous one on this connection.
    pub const SEQ_NOT_INCREASING: u16 = 7;
    /// A reading names a metric id that `Hello` did not declare.
    pub const UNKNOWN_METRIC: u16 = 8;
    /// Another connection of the same device replaced this one.
    pub const REPLACED: u16 = 9;
    /// The device's credentials were revoked.
    pub const REVOKED: u16 = 10;
    /// The hub could not store the readings; nothing unacknowledged was kept.
    /// Reconnect later and resend.
    pub const STORAGE_UNAVAILABLE: u16 = 11;
    /// The connection sent nothing, not even a pong, for too long.
    pub const IDLE_TIMEOUT: u16 = 12;
    /// The device sent frames or readings faster than the hub's per-device
    /// budget allows.
    pub const RATE_LIMITED: u16 = 13;
    /// A `Batch`'s `seq` jumps more than [`crate::limits::MAX_SEQ_JUMP`]
    /// past the highest the hub knows for the device. Number batches on
    /// from `Welcome.last_seq`.
    pub const SEQ_TOO_FAR: u16 = 14;
    /// The device would have more metrics than
    /// [`crate::limits::MAX_METRICS_PER_DEVICE`].
    pub const TOO_MANY_METRICS: u16 = 15;
}
