//! Device configuration: what people want each device to run (desired)
//! and what it answered (reported), with the guarantees readings have.
//!
//! A change is a `config` event in the one sequence, stored through the
//! writer (in a cluster, a `{stream}.events.{device}` entry every hub
//! applies) before its caller is answered; the writer keeps
//! `config_state` in the same transaction and refuses a desired version
//! that another change took first, so `If-Match` races have one winner
//! everywhere. Delivery is driven by storage: an in-line consumer
//! ([`Nudge`]) tells the device's session, if it is connected here, that
//! its configuration changed; the session reads where it stands and sends
//! the latest version ([`delivery::due`]); a device that connects is sent
//! it after `Welcome`. What the device answers is stored the same way.
//!
//! `document` checks what people write; `delivery` holds the pure rules;
//! `view` is how a standing reads, for the API and the MQTT bridge.

pub mod delivery;
pub mod document;
pub mod view;

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{Map, Value};

use crate::commits::event::{ConfigChange, ConfigSide};
use crate::commits::{Commit, EventKind, InlineConsumer, NewEvent};
use crate::journal::{Journal, first_position};
use crate::store::configuration::ConfigRow;
use crate::store::writer::{WriteError, WriterHandle};
use crate::store::{Store, StoreError, now_ms};

/// How many times a change without `If-Match` is tried again on a newer
/// version when other changes keep taking the one it aimed at.
const RETRIES: usize = 8;

/// How a configuration changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// This object, whole (`PUT`).
    Replace(Value),
    /// A JSON merge patch of the stored one (`PATCH`).
    Patch(Value),
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The body, or the configuration it would make, breaks a bound.
    #[error(transparent)]
    Refused(#[from] document::Refused),
    /// `If-Match` named another version than the stored one, or another
    /// change took the version first.
    #[error("the configuration is at version {current}, not {expected}")]
    Conflict { expected: u64, current: u64 },
    /// Other changes kept taking the next version.
    #[error("the configuration changed {RETRIES} times while this change was tried; try again")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the cluster's stream did not take the change: {0}")]
    Stream(String),
}

/// The devices (rows) that have a configuration: a session of any other
/// skips the lookup. A std lock: every use is a set operation.
#[derive(Debug, Default)]
pub struct Index(RwLock<HashSet<i64>>);

impl Index {
    /// The devices that have a configuration, read at the start.
    ///
    /// # Errors
    /// A database failure.
    pub async fn load(store: &Store) -> Result<Arc<Index>, StoreError> {
        let index = Index::default();
        for (row, _) in store.configured_devices().await? {
            index.insert(row);
        }
        Ok(Arc::new(index))
    }

    pub fn has(&self, device_row: i64) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&device_row)
    }

    fn insert(&self, device_row: i64) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device_row);
    }
}

/// Changes and answers, for the API, the MQTT bridge and sessions.
#[derive(Debug, Clone)]
pub struct Configs {
    store: Store,
    writer: WriterHandle,
    /// In a cluster: changes go through the stream.
    journal: Option<Journal>,
    index: Arc<Index>,
}

impl Configs {
    pub fn new(
        store: Store,
        writer: WriterHandle,
        journal: Option<Journal>,
        index: Arc<Index>,
    ) -> Self {
        Configs {
            store,
            writer,
            journal,
            index,
        }
    }

    /// Whether the device of `device_row` may have a configuration.
    pub fn has(&self, device_row: i64) -> bool {
        self.index.has(device_row)
    }

    /// Where the device stands; `None`: it never had a configuration.
    ///
    /// # Errors
    /// A database failure.
    pub async fn standing(&self, device_row: i64) -> Result<Option<ConfigRow>, StoreError> {
        self.store.config_of(device_row).await
    }

    /// Makes `change` to the device's desired configuration, as `by`,
    /// only if it stands at `if_match` when given. Answers the new version
    /// and configuration once stored (in a cluster, once this hub applied
    /// it).
    ///
    /// # Errors
    /// A refused body, a lost race ([`ConfigError::Conflict`]), or storage.
    pub async fn change(
        &self,
        device_row: i64,
        device_id: &str,
        change: &Change,
        if_match: Option<u64>,
        by: &str,
    ) -> Result<(u64, Value), ConfigError> {
        for _ in 0..RETRIES {
            let (current, config) = self.next(device_row, change).await?;
            if let Some(expected) = if_match
                && expected != current
            {
                return Err(ConfigError::Conflict { expected, current });
            }
            let version = current + 1;
            if self
                .store_desired(device_row, device_id, version, &config, by)
                .await?
            {
                return Ok((version, config));
            }
            if let Some(expected) = if_match {
                return Err(ConfigError::Conflict {
                    expected,
                    current: version,
                });
            }
        }
        Err(ConfigError::Busy)
    }

    /// Checks that `change` would make a configuration of the device
    /// within the bounds, without storing it.
    ///
    /// # Errors
    /// The configuration it would make breaks a bound, or storage.
    pub async fn check(&self, device_row: i64, change: &Change) -> Result<(), ConfigError> {
        self.next(device_row, change).await.map(|_| ())
    }

    /// The stored version, and the configuration `change` makes of the
    /// stored one, checked.
    async fn next(&self, device_row: i64, change: &Change) -> Result<(u64, Value), ConfigError> {
        match change {
            Change::Replace(config) => document::check(config)?,
            Change::Patch(patch) => document::check_patch(patch)?,
        }
        let (current, mut config) = match self.store.config_of(device_row).await? {
            Some(row) => (
                row.desired_version,
                serde_json::from_str(&row.desired).unwrap_or_else(|_| Value::Object(Map::new())),
            ),
            None => (0, Value::Object(Map::new())),
        };
        match change {
            Change::Replace(whole) => config = whole.clone(),
            Change::Patch(patch) => document::merge(&mut config, patch),
        }
        document::check(&config)?;
        Ok((current, config))
    }

    /// Stores a desired version: whether it was kept (not taken first).
    async fn store_desired(
        &self,
        device_row: i64,
        device_id: &str,
        version: u64,
        config: &Value,
        by: &str,
    ) -> Result<bool, ConfigError> {
        let change = ConfigChange::desired(version, config.clone(), by);
        self.record(device_row, device_id, change).await
    }

    /// Stores what the device answered to `version`.
    ///
    /// # Errors
    /// Storage, or the cluster's stream.
    pub async fn reported(
        &self,
        device_row: i64,
        device_id: &str,
        version: u64,
        ok: bool,
        detail: String,
    ) -> Result<(), ConfigError> {
        let change = ConfigChange::reported(version, ok, detail);
        self.record(device_row, device_id, change).await.map(|_| ())
    }

    /// Stores a change as a `config` event: through the writer, or in a
    /// cluster as a stream entry. Whether it was kept (a desired version
    /// another change took first is not). In a cluster a desired change
    /// is answered once this hub applied it, so its caller learns whether
    /// it won; an answer is only appended (the session that sends it must
    /// not wait on the stream's round trip to the applier), and counts as
    /// kept.
    async fn record(
        &self,
        device_row: i64,
        device_id: &str,
        change: ConfigChange,
    ) -> Result<bool, ConfigError> {
        let desired = change.side == ConfigSide::Desired;
        let kind = EventKind::Config(Box::new(change));
        let ts_ms = now_ms();
        let Some(journal) = &self.journal else {
            let event = NewEvent {
                device_row: Some(device_row),
                device: device_id.into(),
                ts_ms,
                kind,
            };
            return Ok(self.writer.record_config(event).await?.is_some());
        };
        let stream = |err: async_nats::Error| ConfigError::Stream(err.to_string());
        if !desired {
            journal
                .append_event(device_id, ts_ms, kind, None)
                .await
                .map_err(stream)?;
            return Ok(true);
        }
        let sequence = journal
            .append_event_applied(device_id, ts_ms, kind)
            .await
            .map_err(stream)?;
        Ok(self.store.event_stored_at(first_position(sequence)).await?)
    }

    /// Notes, in the background, that this hub sent the device `version`
    /// (or could not, for its protocol). Bookkeeping: a failure is logged.
    pub fn delivered(&self, device_row: i64, version: u64, protocol: u16) {
        let writer = self.writer.clone();
        tokio::spawn(async move {
            if let Err(err) = writer.config_delivered(device_row, version, protocol).await {
                tracing::warn!(error = %err, "a configuration's delivery was not noted");
            }
        });
    }
}

/// Where a device connected to this hub is told that its desired
/// configuration changed: the sessions' registry (which implements it, so
/// this module needs nothing of ingest).
pub trait Sessions: Send + Sync + std::fmt::Debug {
    /// Wakes the device's session, if it has one here; never waits.
    fn config_changed(&self, device_id: &str);
}

/// The in-line consumer that tells a connected device's session that its
/// desired configuration changed (a nudge: the session reads storage), and
/// keeps the index of configured devices. Never waits.
#[derive(Debug)]
pub struct Nudge {
    sessions: Arc<dyn Sessions>,
    index: Arc<Index>,
}

impl Nudge {
    pub fn new(sessions: Arc<dyn Sessions>, index: Arc<Index>) -> Self {
        Nudge { sessions, index }
    }
}

impl InlineConsumer for Nudge {
    fn committed(&self, commit: &Commit) {
        for event in &commit.events {
            if let EventKind::Config(change) = &event.event.kind
                && change.side == ConfigSide::Desired
            {
                if let Some(row) = event.event.device_row {
                    self.index.insert(row);
                }
                self.sessions.config_changed(&event.event.device);
            }
        }
    }
}
