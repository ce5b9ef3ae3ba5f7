//! The wire protocol between telemetry devices and the hub.
//!
//! One WebSocket binary message carries exactly one frame, encoded with
//! [postcard](https://docs.rs/postcard). Devices send [`DeviceFrame`]s, the hub
//! answers with [`HubFrame`]s. `docs/protocol.md` is the byte-level catalogue;
//! its hex vectors are checked by this crate's tests.
//!
//! The crate is `no_std` (it needs only `alloc`) and does no I/O, so the same
//! types can run on a constrained device, in the simulator and in the hub.
//!
//! # Compatibility rules
//!
//! * [`PROTOCOL_VERSION`] is sent in `Hello` and echoed in `Welcome`.
//! * Enum variants are only ever appended: postcard encodes a variant by its
//!   position, so reordering or removing one changes the bytes of every frame
//!   after it. Struct fields are never reordered, removed or retyped.
//! * A change that an older peer cannot decode (a new field in an existing
//!   frame) needs a new protocol version; a new frame kind or a new error code
//!   does not, because a peer that does not know it can reject it cleanly.
//! * Error codes are plain `u16`s ([`error_code`]) rather than an enum so that
//!   an old device can still decode, log and show a code added later.

#![no_std]

extern crate alloc;

mod bounded;
mod codec;
mod frames;
pub mod limits;

pub use codec::{DecodeError, is_valid_device_id, is_valid_metric_name};
pub use frames::{
    Ack, Batch, Command, CommandArg, CommandResult, Config, ConfigResult, DeviceFrame, ErrorFrame,
    Hello, HubFrame, MetricDescriptor, Reading, Token, Welcome, error_code,
};

/// The protocol version this crate speaks. Sent in [`Hello::version`].
///
/// Version 2 adds [`HubFrame::Token`]: a device that registers itself with
/// the fleet's provisioning key is issued a token of its own, and the key no
/// longer reaches it afterwards. A version 1 device may still connect with
/// its own token or certificate, but not with the provisioning key.
///
/// Version 3 adds [`HubFrame::Config`] and [`DeviceFrame::ConfigResult`]:
/// the hub keeps a configuration for each device and sends it the latest
/// version it has not answered. Older devices are never sent one.
pub const PROTOCOL_VERSION: u16 = 3;

/// The first version whose devices may register with the provisioning key.
pub const ENROLMENT_VERSION: u16 = 2;

/// The first version whose devices are sent their configuration.
pub const CONFIG_VERSION: u16 = 3;
