//! Limits that both sides enforce. A frame that breaks one is rejected with a
//! typed [`DecodeError`](crate::DecodeError) before anything else looks at it.
//!
//! The numbers are chosen so that the largest legal batch still fits in one
//! frame: a reading costs at most 1 + 5 + 9 = 15 bytes on the wire
//! (metric id, offset, value), so `MAX_READINGS_PER_BATCH` readings take at
//! most 61,440 bytes, below `MAX_FRAME_BYTES`.

/// Largest encoded frame, in bytes. Larger WebSocket messages are refused
/// unread.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Most readings in one `Batch`.
pub const MAX_READINGS_PER_BATCH: usize = 4096;

/// Most metric descriptors in one `Hello`.
pub const MAX_METRICS: usize = 64;

/// Longest device id, in bytes. Ids are limited to ASCII letters, digits and
/// `-`, `_`, `.`, `:` so that they are safe in URLs, MQTT topics and file
/// names.
pub const MAX_ID_LEN: usize = 64;

/// Longest free text (model, firmware, metric name, unit, command name and
/// arguments, details and error messages), in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 256;

/// Most arguments in one `Command`.
pub const MAX_COMMAND_ARGS: usize = 16;

/// Highest batch `seq`: SQLite keeps a device's last one as a signed 64-bit
/// integer. A batch above it is refused as malformed.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// How far past the highest `seq` the hub knows for a device one batch may
/// jump (2^24, a device that dropped sixteen million batches while offline).
/// A jump beyond it is refused (`error_code::SEQ_TOO_FAR`), never adopted:
/// adopted, it would make every later batch below it a "resend".
pub const MAX_SEQ_JUMP: u64 = 1 << 24;

/// Characters a metric name may not hold beside control characters: MQTT
/// gives `/` a meaning in topics and forbids `+` and `#` in published ones,
/// and a metric name is one topic level of the bridge's.
pub const METRIC_NAME_RESERVED: &str = "/+#";

/// Most metrics one device may have, across all its connections: SQLite
/// reads a device's history with one term per metric in a compound
/// `SELECT`, which it caps at 500. A `Hello` that would pass it is refused
/// (`error_code::TOO_MANY_METRICS`).
pub const MAX_METRICS_PER_DEVICE: usize = 256;

/// Longest configuration in a [`Config`](crate::Config) frame, in bytes of
/// JSON text: far below a frame, and small enough for a device's RAM.
pub const MAX_CONFIG_BYTES: usize = 8 * 1024;
