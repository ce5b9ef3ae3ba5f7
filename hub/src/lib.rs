//! The telemetry hub.
//!
//! Data flows through these stages, each one module; dependencies point the
//! same way (ingest → store → commit consumers), and only [`server`] knows
//! them all:
//!
//! ```text
//! device ──WebSocket──▶ ingest ──WriteRequest──▶ store::writer ──COMMIT──▶ SQLite
//!   ▲                     │                          │ publisher thread
//!   └──────── Ack ────────┴──── WriteOutcome ◀───────┤
//!                                                    ▼
//!                          commits::Consumers ── in-line: live (ring) ──▶ SSE
//!                                     └──────── Head ──▶ cursor consumers
//!                                                      (SSE subscribers, …)
//! HTTP ──▶ api ── SELECT ──▶ SQLite
//!
//! with --nats-url, between ingest and the writer:
//! ingest ──journal::append──▶ JetStream ──journal::apply (every hub)──▶ store::writer
//!   ▲                           │
//!   └──── Ack (stream's ack) ───┘
//! ```
//!
//! * [`commits`]: what flows (samples, committed readings, positions) and
//!   the seam through which every commit reaches its consumers, in order.
//! * [`ingest`]: the `/v1/ws` endpoint. Authenticates the upgrade, runs one
//!   [`ingest::session`] per device (handshake rules in [`ingest::state`]),
//!   and knows who is online ([`ingest::registry`]).
//! * [`store`]: the SQLite file. [`store::writer`] is the only writer of the
//!   running hub: it group-commits batches and registrations from every
//!   session, publishes each commit to the consumers and then answers the
//!   sessions. Device lookups, read queries and retention live beside it.
//! * [`live`]: the SSE fan-out, an in-line consumer (the ring of formatted
//!   commits) with cursor-consumer subscribers.
//! * [`api`]: the HTTP API (devices, readings, events, commands, health,
//!   metrics); [`http_error`]: its one JSON error shape; [`monitor`]: the
//!   page at `/`.
//! * [`listener`]: the accept loop (header deadline and size, the cap on
//!   connections without a request yet, graceful close).
//! * [`server`]: the app state, the routes, the wiring and the ordered
//!   shutdown. [`cli`]: the `hub` command line; [`demo`]: the simulated
//!   fleet of `hub demo`. [`auth`]: tokens and secrets. [`access`]: API
//!   keys, their roles and device groups, for the API. [`telemetry`]:
//!   counters. [`bridge`]: the MQTT bridge, both ways. [`tls`]: certificates.
//! * [`journal`]: cluster mode (`--nats-url`): batches go to a NATS
//!   JetStream stream shared by every hub, and each hub stores the stream
//!   in order through its writer, at the positions the stream's sequences
//!   name; [`cluster`]: presence and commands across the hubs.
//! * [`configuration`]: each device's desired and reported configuration,
//!   stored as events like the rest and sent to the device by its session.

pub mod access;
pub mod admission;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod bridge;
pub mod cli;
pub mod cluster;
pub mod commits;
pub mod configuration;
pub mod demo;
#[cfg(test)]
mod fixtures;
pub mod http_error;
pub mod ingest;
pub mod invalid;
pub mod journal;
pub mod listener;
pub mod live;
pub mod monitor;
pub mod presence;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
