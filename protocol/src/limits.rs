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
