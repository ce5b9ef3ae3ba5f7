//! Simulated telemetry devices, as a library for tests and benchmarks and as
//! the `device-sim` command, built on the device library
//! ([`telemetry_device`]) that real devices embed.
//!
//! * [`device`]: one device: sensors sampled on its own clock, sent with
//!   the library (outbox, reconnects, resends), hub commands (`ping`,
//!   `set_interval`) and the configuration the hub sends ([`config`]: the
//!   settings it understands).
//! * [`fleet`]: N devices in one process, progress and summary ([`stats`]).
//! * [`pipe`]: one device sending what a script prints (`device-sim pipe`).
//! * [`certs`]: client certificates for a fleet, issued at start.
//! * [`sensors`]: sensor models that look real on a chart.

pub mod certs;
pub mod config;
pub mod device;
pub mod duration;
pub mod fleet;
pub mod pipe;
pub mod sensors;
pub mod stats;
