//! The cluster journal: several hubs share one ordered log of readings on a
//! NATS JetStream stream (`hub serve --nats-url`).
//!
//! In cluster mode a device's batch is not written to SQLite by the hub it
//! is connected to. The session hands it to an [`append::Appender`], which
//! publishes it to the stream (subject `{stream}.readings.{device}`, message
//! id `{device}:{seq}` so that a resend inside the stream's duplicate window
//! is dropped by the server) and acknowledges the device once the stream has
//! acknowledged it. Every hub, the origin included, follows the stream in
//! order ([`apply`]) and stores each entry through its own writer at the
//! positions the entry's stream sequence names ([`first_position`]). So the
//! storage position, the SSE event id and the stream sequence are one
//! number space on every hub: a browser resumes on any hub, and the live
//! ring, catch-up, the bridge and compaction work as on a single hub.
//!
//! Devices' events (their statuses) are entries of the same stream
//! (`{stream}.events.{device}`, [`events`]), stored at their entries'
//! positions like readings, so a status has the same id on every hub.
//!
//! Alert rules for the whole cluster are entries too
//! (`{stream}.rules.{name}`, [`rules`]), and alerts' transitions are
//! devices' events.
//!
//! This module owns the connection to NATS, the stream and its identity
//! (the epoch kept in `hub_state`), publishing and applying entries, and
//! their status for `/healthz`. Presence and commands across hubs are
//! the `cluster` module's, on the same connection.

pub mod access;
pub mod append;
pub mod apply;
mod events;
pub mod provision;
mod record;
mod resume;
pub mod rules;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};

use crate::commits::Position;
use crate::invalid::Invalid;
use crate::store::writer::{WriteError, WriterHandle};
use crate::store::{Store, StoreError};
use resume::Divergence;

/// An entry's readings take the positions `sequence << ENTRY_BITS` and
/// up: room for a whole batch (`protocol::limits::MAX_READINGS_PER_BATCH`).
pub const ENTRY_BITS: u32 = 12;

const _: () = assert!(1 << ENTRY_BITS >= protocol::limits::MAX_READINGS_PER_BATCH);

/// The first storage position of the stream entry `sequence`.
pub fn first_position(sequence: u64) -> Position {
    i64::try_from(sequence).unwrap_or(i64::MAX >> ENTRY_BITS) << ENTRY_BITS
}

/// The stream entry whose readings include position `pos`.
pub fn entry_of(pos: Position) -> u64 {
    u64::try_from(pos >> ENTRY_BITS).unwrap_or(0)
}

/// How long the hub waits for NATS: to connect at start, and for the
/// stream's acknowledgement of a publish.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// The `hub_state` key holding the stream's creation time (ns since the
/// epoch) that this database follows: a stream deleted and created again
/// starts its sequences at 1, and must not be taken for the old one.
const EPOCH_KEY: &str = "cluster_epoch";

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// The JetStream stream, and the prefix of every subject the hubs use.
    pub stream: String,
    /// This hub's name among the others (presence, logs).
    pub hub_id: String,
    /// Copies of the stream, when the hub creates it (1, or 3 on a
    /// three-node NATS cluster).
    pub replicas: usize,
    /// How long the stream keeps entries, when the hub creates it: what a
    /// hub that was down can catch up from.
    pub max_age: Duration,
}

/// Why the cluster cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot reach NATS at {url} (--nats-url): {detail}")]
    Connect { url: String, detail: String },
    #[error("cannot open the JetStream stream {stream:?} (--nats-stream): {detail}")]
    Stream { stream: String, detail: String },
    #[error("{0}")]
    Diverged(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the writer refused: {0}")]
    Writer(#[from] WriteError),
    #[error("{0}")]
    BadChange(#[from] Invalid),
}

/// The hub's handle on the cluster: the NATS connection and the stream.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    settings: Arc<Settings>,
    status: Arc<Status>,
}

impl Journal {
    /// Connects to NATS, opens (or creates) the stream and checks that this
    /// database follows it. Returns the journal and the first stream entry
    /// this hub has not stored yet.
    ///
    /// # Errors
    /// NATS cannot be reached, the stream cannot be opened, or the database
    /// holds readings that are not the stream's.
    pub async fn join(
        settings: Settings,
        store: &Store,
        writer: &WriterHandle,
        last_pos: Position,
    ) -> Result<(Journal, u64), JournalError> {
        let client = connect(&settings).await?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(NATS_TIMEOUT);
        let stream_error = |detail: String| JournalError::Stream {
            stream: settings.stream.clone(),
            detail,
        };
        let mut stream = jetstream
            .get_or_create_stream(stream::Config {
                name: settings.stream.clone(),
                subjects: subjects(&settings.stream).to_vec(),
                // Entries are at most a frame and a Hello, far below NATS's
                // 1 MiB payload limit.
                max_age: settings.max_age,
                num_replicas: settings.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|err| stream_error(err.to_string()))?;
        let mut info = stream
            .info()
            .await
            .map_err(|err| stream_error(err.to_string()))?
            .clone();
        let wanted = subjects(&settings.stream);
        let missing: Vec<String> = wanted[2..]
            .iter()
            .filter(|subject| !info.config.subjects.contains(subject))
            .cloned()
            .collect();
        if !missing.is_empty()
            && info
                .config
                .subjects
                .iter()
                .any(|subject| subject == &wanted[0])
        {
            // A stream made by a hub from before events (or rules) were
            // kept in it: it takes them from now on.
            let mut config = info.config.clone();
            config.subjects.extend(missing.iter().cloned());
            info = jetstream
                .update_stream(config)
                .await
                .map_err(|err| stream_error(format!("adding {missing:?} to it: {err}")))?;
            tracing::info!(stream = %settings.stream, subjects = ?missing, "the stream now takes them");
        }
        if !wanted
            .iter()
            .all(|subject| info.config.subjects.contains(subject))
        {
            return Err(stream_error(format!(
                "it exists but does not take {wanted:?} (its subjects: {:?}); name another \
                 stream, or let the hub create this one",
                info.config.subjects
            )));
        }
        let facts = resume::Facts {
            known_epoch: store.state(EPOCH_KEY).await?,
            stream_epoch: i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            last_pos,
            first: info.state.first_sequence,
            last: info.state.last_sequence,
        };
        let resume = resume::decide(facts)
            .map_err(|divergence| diverged(divergence, &settings.stream, store.path()))?;
        if resume.record_epoch {
            writer.set_state(EPOCH_KEY, facts.stream_epoch).await?;
        }
        if let Some(missed) = &resume.missed {
            // A subscriber resuming from before them is told `reset`, as
            // it is after retention.
            tracing::warn!(
                missed_from = missed.start(),
                missed_to = missed.end(),
                "the stream no longer holds entries this hub has not stored"
            );
        }
        if let Some(watermark) = resume.watermark()
            && store.retention_watermark().await? < watermark
        {
            writer
                .set_state("retention_deleted_through", watermark)
                .await?;
        }
        let start = resume.start;
        tracing::info!(
            stream = %settings.stream,
            hub = %settings.hub_id,
            from = start,
            last = info.state.last_sequence,
            "joined the cluster"
        );
        let status = Arc::new(Status {
            client: client.clone(),
            url: settings.url.clone(),
            applied: AtomicU64::new(start - 1),
            stream_last: AtomicU64::new(info.state.last_sequence),
            trouble: Mutex::default(),
            applied_moved: tokio::sync::Notify::new(),
        });
        let journal = Journal {
            client,
            jetstream,
            settings: Arc::new(settings),
            status,
        };
        Ok((journal, start))
    }

    /// The NATS connection, for presence and commands.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How the journal is doing, for `/healthz` and `/metrics`.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }

    /// The subject of a device's entries.
    fn subject(&self, device_id: &str) -> String {
        format!("{}.readings.{device_id}", self.settings.stream)
    }

    /// Every entry's subject, for the applier's filter (one subject with
    /// a wildcard: nats-server 2.9 ignores a consumer's list of them).
    fn all_entries(&self) -> String {
        format!("{}.>", self.settings.stream)
    }

    /// The device whose readings an entry on `subject` holds.
    fn reading_device<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.settings.stream.as_str())?
            .strip_prefix(".readings.")
    }

    /// Whether an entry on `subject` provisions a device (else it holds
    /// readings).
    fn provisions(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.settings.stream.as_str())
            .is_some_and(|rest| rest.starts_with(".devices."))
    }
}

impl Journal {
    /// Publishes `entry`'s JSON on `subject` and waits until this hub's
    /// applier has written it (and every entry before it): how a change
    /// made on one hub (a device's credentials, a rule, a key) is answered
    /// only once this hub holds it, as every other will.
    ///
    /// # Errors
    /// NATS refusing or not answering in time.
    async fn publish_applied(
        &self,
        subject: String,
        entry: &impl serde::Serialize,
    ) -> Result<(), JournalError> {
        let refused = |detail: String| JournalError::Stream {
            stream: self.settings.stream.clone(),
            detail,
        };
        let payload = serde_json::to_vec(entry).map_err(|err| refused(err.to_string()))?;
        let ack = self
            .jetstream
            .publish(subject, payload.into())
            .await
            .map_err(|err| refused(err.to_string()))?
            .await
            .map_err(|err| refused(err.to_string()))?;
        self.status.until_applied(ack.sequence).await;
        Ok(())
    }
}

/// The stream's subjects: devices' readings, devices provisioned for the
/// whole cluster, devices' events, alert rules, and keys and groups.
fn subjects(stream: &str) -> [String; 5] {
    [
        format!("{stream}.readings.>"),
        format!("{stream}.devices.>"),
        format!("{stream}.events.>"),
        format!("{stream}.rules.>"),
        format!("{stream}.access"),
    ]
}

/// Publishes one entry on `subject` of the cluster at `url`, stream
/// `stream`, and waits for the stream to hold it: the command line's way
/// into a cluster (devices, rules), on a connection of its own.
///
/// # Errors
/// NATS cannot be reached, or the stream does not exist or refuses it.
async fn publish_once(
    url: &str,
    stream: &str,
    subject: String,
    payload: Vec<u8>,
) -> Result<(), JournalError> {
    let settings = Settings {
        url: url.to_owned(),
        stream: stream.to_owned(),
        hub_id: "cli".into(),
        replicas: 1,
        max_age: NATS_TIMEOUT,
    };
    let client = connect(&settings).await?;
    let mut jetstream = jetstream::new(client);
    jetstream.set_timeout(NATS_TIMEOUT);
    let refused = |detail: String| JournalError::Stream {
        stream: stream.to_owned(),
        detail,
    };
    jetstream
        .publish(subject, payload.into())
        .await
        .map_err(|err| refused(err.to_string()))?
        .await
        .map_err(|err| {
            refused(format!(
                "{err} (is a hub with --nats-url running on this stream?)"
            ))
        })?;
    Ok(())
}

/// A connection to the NATS servers of `settings.url`.
async fn connect(settings: &Settings) -> Result<async_nats::Client, JournalError> {
    async_nats::ConnectOptions::new()
        .name(format!("telemetry-hub {}", settings.hub_id))
        .connection_timeout(NATS_TIMEOUT)
        .connect(settings.url.split(',').map(str::trim).collect::<Vec<_>>())
        .await
        .map_err(|err| JournalError::Connect {
            url: settings.url.clone(),
            detail: err.to_string(),
        })
}

/// The journal as `/healthz` and `/metrics` see it.
#[derive(Debug)]
pub struct Status {
    client: async_nats::Client,
    url: String,
    /// The last stream entry stored here (or skipped).
    applied: AtomicU64,
    /// The last stream entry seen acknowledged or delivered.
    stream_last: AtomicU64,
    /// The last failure of the applier, until it recovers.
    trouble: Mutex<Option<String>>,
    /// Told each time `applied` moves, for [`Status::until_applied`].
    applied_moved: tokio::sync::Notify,
}

/// Why this hub cannot take readings in cluster mode now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unhealthy {
    #[error("cannot reach NATS at {0}: readings are not accepted")]
    Unreachable(String),
    /// The applier's last failure; it is retrying.
    #[error("{0}")]
    Applier(String),
}

/// What `/healthz` reports of the cluster.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Whether this hub is connected to NATS.
    pub connected: bool,
    /// The last stream entry stored in this hub's database.
    pub applied: u64,
    /// Stream entries known to exist and not yet stored here.
    pub behind: u64,
}

impl Status {
    /// `Err` with the reason while this hub cannot take readings.
    ///
    /// # Errors
    /// NATS is unreachable, or the applier failed and is retrying.
    pub fn health(&self) -> Result<Health, Unhealthy> {
        if self.client.connection_state() != State::Connected {
            return Err(Unhealthy::Unreachable(self.url.clone()));
        }
        if let Some(trouble) = self.lock().clone() {
            return Err(Unhealthy::Applier(trouble));
        }
        let applied = self.applied.load(Relaxed);
        Ok(Health {
            connected: true,
            applied,
            behind: self.stream_last.load(Relaxed).saturating_sub(applied),
        })
    }

    /// Whether readings can be published now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.trouble.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn saw(&self, sequence: u64) {
        self.stream_last.fetch_max(sequence, Relaxed);
    }

    fn applied(&self, sequence: u64) {
        self.applied.fetch_max(sequence, Relaxed);
        *self.lock() = None;
        self.applied_moved.notify_waiters();
    }

    /// Waits until the stream's entries up to `sequence` are stored (or
    /// skipped) here.
    async fn until_applied(&self, sequence: u64) {
        loop {
            // Registered before the check, so a move in between wakes it.
            let moved = self.applied_moved.notified();
            if self.applied.load(Relaxed) >= sequence {
                return;
            }
            moved.await;
        }
    }

    fn failing(&self, why: String) {
        *self.lock() = Some(why);
    }

    /// Prometheus lines.
    pub fn render(&self) -> String {
        let applied = self.applied.load(Relaxed);
        let last = self.stream_last.load(Relaxed);
        format!(
            "# HELP hub_cluster_applied_entry The last stream entry stored here.\n\
             # TYPE hub_cluster_applied_entry gauge\n\
             hub_cluster_applied_entry {applied}\n\
             # HELP hub_cluster_behind_entries Stream entries not yet stored here.\n\
             # TYPE hub_cluster_behind_entries gauge\n\
             hub_cluster_behind_entries {}\n\
             # HELP hub_cluster_connected Whether the hub is connected to NATS.\n\
             # TYPE hub_cluster_connected gauge\n\
             hub_cluster_connected {}\n",
            last.saturating_sub(applied),
            u8::from(self.connected()),
        )
    }
}

/// Says why a database cannot follow the stream, and what to do.
fn diverged(divergence: Divergence, stream: &str, db: &Path) -> JournalError {
    let db = db.display();
    JournalError::Diverged(match divergence {
        Divergence::ReadingsFromOutside => format!(
            "{db} already holds readings stored outside the cluster; a hub joins a cluster \
             with a database of its own (a new --db)"
        ),
        Divergence::StreamRecreated => format!(
            "the stream {stream:?} was created again since {db} followed it (its sequences \
             started over): start this hub on a new --db"
        ),
        Divergence::AheadOfStream { applied, last } => format!(
            "{db} holds stream entries up to {applied}, but the stream {stream:?} ends at \
             {last}: start this hub on a new --db"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_owns_the_positions_of_a_whole_batch() {
        assert_eq!(first_position(1), 4096);
        assert_eq!(entry_of(first_position(7)), 7);
        assert_eq!(entry_of(first_position(7) + 4095), 7);
        assert_eq!(entry_of(first_position(8) - 1), 7);
    }
}
