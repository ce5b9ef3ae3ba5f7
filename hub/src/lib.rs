//! The telemetry hub.
//!
//! Data flows through these stages, each one module:
//!
//! ```text
//! device ──WebSocket──▶ ingest ──WriteRequest──▶ store::writer ──COMMIT──▶ SQLite
//!   ▲                     │                          │
//!   └──────── Ack ────────┴──────── WriteOutcome ────┘
//!                                                   api ◀── SELECT ── SQLite
//! ```
//!
//! * [`ingest`]: the `/v1/ws` endpoint. Authenticates the upgrade, runs one
//!   [`ingest::session`] per device (handshake rules in [`ingest::state`]),
//!   and knows who is online ([`ingest::registry`]).
//! * [`store`]: the SQLite file. [`store::writer`] is the only task that
//!   inserts readings, group-committing batches from every session and
//!   reporting each commit back so the session can `Ack`. The device
//!   registry, read queries and retention live beside it.
//! * [`api`]: the HTTP read API and its JSON errors.
//! * [`server`]: wires the stages together and shuts them down in order.
//! * [`cli`]: the `hub` command line. [`telemetry`]: counters.

pub mod api;
pub mod auth;
pub mod cli;
pub mod commits;
pub mod http_error;
pub mod ingest;
pub mod live;
pub mod monitor;
pub mod server;
pub mod store;
pub mod telemetry;
