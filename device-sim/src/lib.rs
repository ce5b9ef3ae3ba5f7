//! Simulated telemetry devices, as a library for tests and benchmarks and as
//! the `device-sim` command.
//!
//! * [`device`]: one device: sensors sampled on its own clock, batches kept
//!   in an [`outbox`] until acknowledged, reconnects with [`backoff`], and
//!   hub commands (`ping`, `set_interval`) and the configuration the hub
//!   sends ([`config`]: the settings it understands).
//! * [`link`]: the connection handshake (`Hello`, `Welcome`), shared with the
//!   end-to-end tests and the benchmark harness; [`reason`]: why it failed,
//!   in words.
//! * [`fleet`]: N devices in one process, progress and summary ([`stats`]).
//! * [`tls`]: whom a `wss://` hub must be vouched for by.
//! * [`sensors`]: sensor models that look real on a chart, seeded by [`rng`].

pub mod backoff;
pub mod config;
pub mod device;
pub mod duration;
pub mod fleet;
pub mod keyring;
pub mod link;
pub mod outbox;
pub mod reason;
pub mod rng;
pub mod sensors;
pub mod stats;
pub mod tls;
