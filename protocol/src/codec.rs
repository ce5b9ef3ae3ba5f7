//! Encoding and checked decoding. Decoding never panics: every way input can
//! be wrong comes back as a [`DecodeError`], and frames are checked against
//! [`crate::limits`] before the caller sees them.

use alloc::vec::Vec;
use core::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frames::{DeviceFrame, HubFrame, MetricDescriptor, error_code};
use crate::limits::{
    MAX_COMMAND_ARGS, MAX_CONFIG_BYTES, MAX_FRAME_BYTES, MAX_ID_LEN, MAX_METRICS,
    MAX_READINGS_PER_BATCH, MAX_SEQ, MAX_TEXT_LEN, METRIC_NAME_RESERVED,
};

/// Why bytes are not an acceptable frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is longer than [`MAX_FRAME_BYTES`].
    TooLarge { len: usize },
    /// The input ended in the middle of a frame.
    Truncated,
    /// A whole frame was decoded and bytes were left over.
    TrailingBytes { extra: usize },
    /// The bytes are not a frame: an unknown variant, a bad varint, invalid
    /// UTF-8 and the like.
    Malformed(&'static str),
    /// A list holds more entries than its limit.
    TooMany { field: &'static str, limit: usize },
    /// A text is longer than its limit, in bytes.
    TooLong { field: &'static str, limit: usize },
    /// A text or list that must not be empty is.
    Empty { field: &'static str },
    /// A device id uses characters outside `A-Z a-z 0-9 - _ . :`.
    InvalidDeviceId,
    /// Two metric descriptors share an id or a name.
    DuplicateMetric { id: u16 },
    /// A batch's `seq` is 0; sequence numbers start at 1.
    ZeroSeq,
    /// A batch's `seq` is above [`MAX_SEQ`].
    SeqOutOfRange,
    /// A text holds a control character, or a metric name one of
    /// [`METRIC_NAME_RESERVED`].
    BadCharacter { field: &'static str },
}

impl DecodeError {
    /// The [`error_code`] the hub reports for this error.
    pub fn code(&self) -> u16 {
        match self {
            DecodeError::TooLarge { .. } => error_code::TOO_LARGE,
            _ => error_code::MALFORMED,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES}"
                )
            }
            DecodeError::Truncated => write!(f, "frame is truncated"),
            DecodeError::TrailingBytes { extra } => {
                write!(f, "{extra} unexpected bytes after the frame")
            }
            DecodeError::Malformed(why) => write!(f, "malformed frame: {why}"),
            DecodeError::TooMany { field, limit } => {
                write!(f, "{field} holds more than {limit} entries")
            }
            DecodeError::TooLong { field, limit } => {
                write!(f, "{field} is longer than {limit} bytes")
            }
            DecodeError::Empty { field } => write!(f, "{field} must not be empty"),
            DecodeError::InvalidDeviceId => write!(
                f,
                "device id must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . :"
            ),
            DecodeError::DuplicateMetric { id } => {
                write!(f, "metric descriptor {id} repeats an id or a name")
            }
            DecodeError::ZeroSeq => write!(f, "batch seq must start at 1"),
            DecodeError::SeqOutOfRange => write!(f, "batch seq must be at most {MAX_SEQ}"),
            DecodeError::BadCharacter { field } if *field == "metric name" => write!(
                f,
                "metric name must hold no control characters and none of {METRIC_NAME_RESERVED:?}"
            ),
            DecodeError::BadCharacter { field } => {
                write!(f, "{field} must hold no control characters")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<postcard::Error> for DecodeError {
    fn from(err: postcard::Error) -> Self {
        use postcard::Error as P;
        match err {
            P::DeserializeUnexpectedEnd => DecodeError::Truncated,
            P::DeserializeBadVarint => DecodeError::Malformed("bad varint"),
            P::DeserializeBadBool => DecodeError::Malformed("bad bool"),
            P::DeserializeBadChar => DecodeError::Malformed("bad char"),
            P::DeserializeBadUtf8 => DecodeError::Malformed("text is not UTF-8"),
            P::DeserializeBadOption => DecodeError::Malformed("bad option"),
            P::DeserializeBadEnum => DecodeError::Malformed("unknown frame kind"),
            // serde reports an out-of-range variant index as a custom error.
            P::SerdeDeCustom => DecodeError::Malformed("unknown variant or invalid value"),
            _ => DecodeError::Malformed("undecodable"),
        }
    }
}

fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    let (frame, rest) = postcard::take_from_bytes::<T>(bytes)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(frame)
}

fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // Serialising plain structs into a growable Vec has no failure mode.
    postcard::to_allocvec(frame).expect("frames always serialise into a Vec")
}

impl DeviceFrame {
    /// Decodes one frame and checks it against the limits.
    ///
    /// # Errors
    /// Any [`DecodeError`]; the input is never trusted.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let frame: Self = decode_exact(bytes)?;
        frame.validate()?;
        Ok(frame)
    }

    /// Encodes the frame. The peer rejects a frame that [`Self::validate`]
    /// rejects, so senders that build frames from outside input check first.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Checks the frame against the limits without encoding it.
    ///
    /// # Errors
    /// The first limit the frame breaks.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            DeviceFrame::Hello(hello) => {
                check_device_id(&hello.device_id)?;
                check_printable("model", &hello.model)?;
                check_printable("firmware", &hello.firmware)?;
                check_count("metrics", hello.metrics.len(), MAX_METRICS)?;
                check_metrics(&hello.metrics)
            }
            DeviceFrame::Batch(batch) => {
                if batch.seq == 0 {
                    return Err(DecodeError::ZeroSeq);
                }
                if batch.seq > MAX_SEQ {
                    return Err(DecodeError::SeqOutOfRange);
                }
                if batch.readings.is_empty() {
                    return Err(DecodeError::Empty { field: "readings" });
                }
                check_count("readings", batch.readings.len(), MAX_READINGS_PER_BATCH)
            }
            DeviceFrame::CommandResult(result) => check_text("detail", &result.detail),
            DeviceFrame::ConfigResult(result) => check_text("detail", &result.detail),
        }
    }
}

impl HubFrame {
    /// Decodes one frame and checks it against the limits.
    ///
    /// # Errors
    /// Any [`DecodeError`]; the input is never trusted.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let frame: Self = decode_exact(bytes)?;
        frame.validate()?;
        Ok(frame)
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Checks the frame against the limits without encoding it.
    ///
    /// # Errors
    /// The first limit the frame breaks.
    pub fn validate(&self) -> Result<(), DecodeError> {
        match self {
            HubFrame::Welcome(_) | HubFrame::Ack(_) => Ok(()),
            HubFrame::Token(token) => check_required_text("token", &token.token),
            HubFrame::Command(command) => {
                check_required_text("command name", &command.name)?;
                check_count("args", command.args.len(), MAX_COMMAND_ARGS)?;
                for arg in &command.args {
                    check_required_text("argument name", &arg.name)?;
                    check_text("argument value", &arg.value)?;
                }
                Ok(())
            }
            HubFrame::Error(error) => check_text("message", &error.message),
            HubFrame::Config(config) => check_config(&config.json),
        }
    }
}

/// Whether `id` is an acceptable device id (see [`crate::limits::MAX_ID_LEN`]).
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn check_device_id(id: &str) -> Result<(), DecodeError> {
    if is_valid_device_id(id) {
        Ok(())
    } else {
        Err(DecodeError::InvalidDeviceId)
    }
}

fn check_text(field: &'static str, text: &str) -> Result<(), DecodeError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(DecodeError::TooLong {
            field,
            limit: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

/// A text people read and tools store (model, firmware, unit): within its
/// limit, and without control characters, which would reach terminals,
/// CSV files and MQTT packets raw.
fn check_printable(field: &'static str, text: &str) -> Result<(), DecodeError> {
    check_text(field, text)?;
    if text.chars().any(char::is_control) {
        return Err(DecodeError::BadCharacter { field });
    }
    Ok(())
}

/// Whether `name` may name a metric: 1 to [`MAX_TEXT_LEN`] bytes, no control
/// characters, and none of [`METRIC_NAME_RESERVED`], so that it is one
/// MQTT topic level as it stands.
pub fn is_valid_metric_name(name: &str) -> bool {
    check_metric_name(name).is_ok()
}

fn check_metric_name(name: &str) -> Result<(), DecodeError> {
    check_required_text("metric name", name)?;
    if name
        .chars()
        .any(|c| c.is_control() || METRIC_NAME_RESERVED.contains(c))
    {
        return Err(DecodeError::BadCharacter {
            field: "metric name",
        });
    }
    Ok(())
}

/// A configuration's text: within its limit, and an object (the protocol
/// crate parses no JSON; the hub sends only objects it has checked).
fn check_config(json: &str) -> Result<(), DecodeError> {
    if json.len() > MAX_CONFIG_BYTES {
        return Err(DecodeError::TooLong {
            field: "config",
            limit: MAX_CONFIG_BYTES,
        });
    }
    let trimmed = json.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return Err(DecodeError::Malformed("config is not a JSON object"));
    }
    Ok(())
}

fn check_required_text(field: &'static str, text: &str) -> Result<(), DecodeError> {
    if text.is_empty() {
        return Err(DecodeError::Empty { field });
    }
    check_text(field, text)
}

fn check_count(field: &'static str, len: usize, limit: usize) -> Result<(), DecodeError> {
    if len > limit {
        return Err(DecodeError::TooMany { field, limit });
    }
    Ok(())
}

fn check_metrics(metrics: &[MetricDescriptor]) -> Result<(), DecodeError> {
    for (i, metric) in metrics.iter().enumerate() {
        check_metric_name(&metric.name)?;
        check_printable("unit", &metric.unit)?;
        // At most MAX_METRICS entries, so the quadratic scan is cheap.
        let repeated = metrics[..i]
            .iter()
            .any(|earlier| earlier.id == metric.id || earlier.name == metric.name);
        if repeated {
            return Err(DecodeError::DuplicateMetric { id: metric.id });
        }
    }
    Ok(())
}
