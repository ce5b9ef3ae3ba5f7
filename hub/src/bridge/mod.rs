//! The MQTT bridge (`--mqtt-url`): every stored reading republished to a
//! broker the user already runs, at least once and in storage order, across
//! broker outages and hub restarts.
//!
//! It is a cursor consumer (ARCHITECTURE.md, "Commit consumers"): it follows
//! the commit `Head`, reads what it has not published from SQLite in pages,
//! and keeps in `hub_state` (`mqtt_cursor`) the highest position at or below
//! which the broker acknowledged everything (`delivery`). Ingest never waits
//! for it: a slow or absent broker costs the bridge's bounded window of
//! publishes and nothing else. After an outage or a restart it resumes
//! after the cursor.

mod command;
mod config_set;
mod delivery;
mod discovery;
mod inbound;
mod message;
mod news;
mod status;

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::commits::{EventKind, Head, Position};
use crate::ingest::registry::{Change, PresenceChange, Registry};
use crate::invalid::Invalid;
use crate::store::query::ReadingRow;
use crate::store::writer::WriterHandle;
use crate::store::{Store, StoreError};
use delivery::Delivery;
pub use inbound::{Settings as IngestSettings, Template};
use message::Own;
use news::{AlertNews, ConfigNews, News, Owed};
pub use status::{Health, Status};

/// Where the bridge keeps its cursor in `hub_state`.
const CURSOR_KEY: &str = "mqtt_cursor";
/// Readings published and not yet acknowledged, at most: the bridge's whole
/// memory of a slow broker.
const WINDOW: usize = 100;
/// Messages of the hub's own (statuses, configs, command results) published
/// and not yet acknowledged, at most.
const OWN_WINDOW: usize = 32;
/// Commands from MQTT waiting for their devices or to be published, at
/// most; past it, new ones are dropped (counted and logged), so a flood of
/// commands on the broker cannot grow the hub's memory.
const COMMANDS_WAITING: usize = 64;
/// rumqttc's request channel: room for both windows, a round of ingest
/// acks, the subscriptions and the disconnect, so `try_publish` never finds
/// it full while a window has room.
const REQUESTS: usize = WINDOW + OWN_WINDOW + inbound::BATCH + 8;
/// Readings read from SQLite at a time.
const PAGE: u32 = 500;
/// With `--mqtt-batch`: a larger page makes larger messages and fewer
/// queries, the bridge's own cost there (`bench bridge`).
const BATCH_PAGE: u32 = 5_000;
/// How often the cursor is saved (through the writer, in its next commit).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Where the broker is: `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl FromStr for BrokerUrl {
    type Err = Invalid;

    /// Port 1883 by default, 8883 for `mqtts://`.
    fn from_str(text: &str) -> Result<Self, Invalid> {
        let url = url::Url::parse(text).map_err(|err| format!("not a URL ({err})"))?;
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            other => {
                return Err(
                    format!("the scheme must be mqtt:// or mqtts://, not {other}://").into(),
                );
            }
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
        // IPv6 hosts come bracketed; the socket wants them bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        Ok(BrokerUrl { host, port, tls })
    }
}

/// How to reach the broker and what to publish.
#[derive(Debug, Clone)]
pub struct Settings {
    pub broker: BrokerUrl,
    /// Whom to trust under `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    /// Never logged (`Debug` prints it as `***`).
    pub password: Option<Secret>,
    /// The MQTT client id; default `hub-{hub id}`.
    pub client_id: Option<String>,
    /// The first topic level of everything the bridge publishes.
    pub prefix: String,
    /// 0 or 1: at 1 the cursor follows the broker's acks.
    pub qos: u8,
    /// Publish Home Assistant discovery configs.
    pub discovery: bool,
    /// Readings to take in from MQTT topics.
    pub ingest: IngestSettings,
    /// One message per device per page of storage on `{prefix}/{device}`,
    /// rather than one per reading.
    pub batch: bool,
    /// Storage positions come without gaps, so a missing one was deleted
    /// by retention. Not so in a cluster, where each stream entry owns
    /// 4,096 positions and uses as many as it has readings.
    pub dense_positions: bool,
}

/// A password: compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What the poller tells the bridge.
#[derive(Debug)]
enum Heard {
    Connected,
    WentOut(u16),
    Acked(u16),
    /// A message on a topic the bridge subscribed to.
    Message(Publish),
    Disconnected,
    Lost(String),
}

/// What of the hub the bridge uses.
#[derive(Debug, Clone)]
pub struct Parts {
    pub store: Store,
    pub writer: WriterHandle,
    /// Presence changes, and where commands go.
    pub registry: Registry,
    /// Where devices and metrics that MQTT brings are found or registered.
    pub admission: Admission,
    /// Where configuration changes from MQTT go.
    pub configs: crate::configuration::Configs,
}

/// A bridge ready to run: its status can be shown before it connects.
#[derive(Debug)]
pub struct Bridge {
    settings: Settings,
    hub_id: String,
    cursor: Position,
    head: Head,
    status: Arc<Status>,
}

impl Bridge {
    /// Reads the saved cursor and the hub's id.
    ///
    /// # Errors
    /// The database cannot be read.
    pub async fn open(
        settings: Settings,
        store: &Store,
        head: Head,
    ) -> Result<Bridge, crate::store::StoreError> {
        let cursor = store.state(CURSOR_KEY).await?.unwrap_or(0);
        let hub_id = store.hub_id().await?;
        Ok(Bridge {
            settings,
            hub_id,
            cursor,
            status: Arc::new(Status::new(head.clone(), cursor)),
            head,
        })
    }

    /// What `/metrics` and `/healthz` read.
    pub fn status(&self) -> Arc<Status> {
        Arc::clone(&self.status)
    }

    fn options(&self) -> MqttOptions {
        let settings = &self.settings;
        let client_id = settings
            .client_id
            .clone()
            .unwrap_or_else(|| format!("hub-{}", self.hub_id));
        let mut options = MqttOptions::new(
            client_id,
            settings.broker.host.clone(),
            settings.broker.port,
        );
        if let Some(config) = &settings.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(config),
            )));
        }
        options
            .set_keep_alive(Duration::from_secs(30))
            // Outgoing, the bridge rewinds to its cursor on every
            // connection rather than trust rumqttc's pending list, so a
            // session is kept only for what comes in: with --mqtt-ingest
            // the broker holds what the hub has not acknowledged while it
            // is away, and acks wait for the commit.
            .set_clean_session(self.settings.ingest.templates.is_empty())
            .set_manual_acks(!self.settings.ingest.templates.is_empty())
            .set_inflight(u16::try_from(WINDOW + OWN_WINDOW).unwrap_or(u16::MAX))
            .set_request_channel_capacity(REQUESTS)
            // Room for a --mqtt-batch payload, a command and its framing.
            .set_max_packet_size(2 * message::MAX_BATCH_BYTES, 2 * message::MAX_BATCH_BYTES)
            .set_last_will(LastWill::new(
                message::hub_status_topic(&settings.prefix, &self.hub_id),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(username) = &settings.username {
            let password = settings.password.as_ref().map_or("", |p| p.0.as_str());
            options.set_credentials(username.clone(), password);
        }
        options
    }

    /// Runs until `shutdown`, then says `offline` and disconnects.
    pub async fn run(self, parts: Parts, shutdown: CancellationToken) {
        let changes = parts.registry.changes();
        let qos = if self.settings.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let mut worker = Worker {
            qos,
            link: None,
            connected: false,
            failures: 0,
            retry_at: tokio::time::Instant::now(),
            delivery: Delivery::starting_at(self.cursor),
            page: VecDeque::new(),
            page_through: self.cursor,
            checked_through: self.cursor,
            saved: self.cursor,
            outbox: VecDeque::new(),
            news: News::default(),
            alerts: AlertNews::default(),
            configs: ConfigNews::default(),
            changes,
            commands: JoinSet::new(),
            head: self.head.clone(),
            hub_topic: message::hub_status_topic(&self.settings.prefix, &self.hub_id),
            bridge: self,
            parts,
        };
        worker.run(shutdown).await;
    }
}

/// The running bridge's state.
struct Worker {
    bridge: Bridge,
    parts: Parts,
    head: Head,
    qos: QoS,
    hub_topic: String,
    /// One rumqttc client per connection (see `Link`), made when due.
    link: Option<Link>,
    /// The current link's broker said CONNACK.
    connected: bool,
    failures: u32,
    retry_at: tokio::time::Instant,
    delivery: Delivery,
    /// Readings read from storage and not yet handed to rumqttc.
    page: VecDeque<ReadingRow>,
    page_through: Position,
    /// Positions up to here were checked for retention's gaps.
    checked_through: Position,
    /// The cursor last saved in `hub_state`.
    saved: Position,
    /// Messages of the hub's own not yet handed to rumqttc: command results
    /// (at most `COMMANDS_WAITING`) and one device's news at a time, which
    /// is read only when this is empty.
    outbox: VecDeque<Own>,
    news: News,
    /// Alerts whose state is owed, noted from the alert events the pages
    /// bring and, at each connection, from storage.
    alerts: AlertNews,
    /// Devices whose configuration's standing is owed, noted like alerts.
    configs: ConfigNews,
    changes: broadcast::Receiver<PresenceChange>,
    /// Commands waiting for their devices; each ends as a result to publish.
    commands: JoinSet<Own>,
}

impl Worker {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut save = tokio::time::interval(SAVE_EVERY);
        loop {
            if self.link.is_none() && tokio::time::Instant::now() >= self.retry_at {
                self.link = Some(self.connect());
            }
            if self.connected {
                self.publish_readings().await;
                self.publish_own().await;
            }
            let caught_up =
                self.page.is_empty() && self.delivery.read_through() >= self.head.peek();
            tokio::select! {
                event = heard(&mut self.link) => match event {
                    Some(Heard::Connected) => self.on_connected().await,
                    Some(Heard::WentOut(pkid)) => {
                        self.delivery.went_out(pkid);
                        self.bridge.status.set_cursor(self.delivery.cursor());
                    }
                    Some(Heard::Acked(pkid)) => {
                        self.delivery.acked(pkid);
                        self.bridge.status.set_cursor(self.delivery.cursor());
                    }
                    Some(Heard::Message(publish)) => self.on_message(publish).await,
                    Some(Heard::Lost(error)) => self.on_lost(error),
                    Some(Heard::Disconnected) | None => break,
                },
                () = tokio::time::sleep_until(self.retry_at), if self.link.is_none() => {}
                moved = self.head.moved(), if self.connected && caught_up => {
                    if !moved {
                        break;
                    }
                }
                change = self.changes.recv() => match change {
                    Ok((device, change)) => {
                        let configs = self.bridge.settings.discovery && change != Change::Offline;
                        self.news.note(device, change, configs);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let configs = self.bridge.settings.discovery;
                        self.note_everyone(configs).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                Some(done) = self.commands.join_next(), if !self.commands.is_empty() => {
                    if let Ok(result) = done {
                        self.outbox.push_back(result);
                    }
                }
                _ = save.tick() => self.save().await,
                () = shutdown.cancelled() => break,
            }
        }
        self.stop().await;
    }

    /// Hands rumqttc the next stored readings while the window has room.
    async fn publish_readings(&mut self) {
        let status = &self.bridge.status;
        while let Some(current) = self.link.as_ref()
            && self.delivery.outstanding() < WINDOW
        {
            if self.page.is_empty() {
                self.delivery.read_up_to(self.page_through);
                let upto = self.head.current();
                if self.delivery.read_through() >= upto {
                    return;
                }
                let after = self.delivery.read_through();
                let limit = if self.bridge.settings.batch {
                    BATCH_PAGE
                } else {
                    PAGE
                };
                match self
                    .parts
                    .store
                    .readings_page(after, upto, None, None, limit)
                    .await
                {
                    Ok(read) => {
                        let skipped = if self.bridge.settings.dense_positions {
                            // Events hold positions too; the bridge
                            // publishes presence from the registry.
                            let mut held: Vec<Position> =
                                read.rows.iter().map(|row| row.pos).collect();
                            held.extend(read.events.iter().map(|event| event.pos));
                            held.sort_unstable();
                            gaps(after, &held, read.read_through, self.checked_through)
                        } else {
                            0
                        };
                        if skipped > 0 {
                            status.skipped.fetch_add(skipped, Relaxed);
                            tracing::warn!(
                                after,
                                skipped,
                                "retention deleted readings before the bridge published them"
                            );
                        }
                        for event in &read.events {
                            match &event.kind {
                                EventKind::Alert(change) => {
                                    self.alerts.note(&event.device, &change.rule);
                                }
                                EventKind::Config(_) => {
                                    self.configs.note(&Arc::from(event.device.as_str()));
                                }
                                _ => {}
                            }
                        }
                        self.checked_through = self.checked_through.max(read.read_through);
                        self.page_through = read.read_through;
                        if self.bridge.settings.batch {
                            self.page.extend(message::group_by_device(read.rows));
                        } else {
                            self.page.extend(read.rows);
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the bridge cannot read storage; retrying");
                        return;
                    }
                }
                continue;
            }
            let prefix = &self.bridge.settings.prefix;
            let (rows, topic, payload) = if self.bridge.settings.batch {
                let Some((rows, payload)) = message::take_batch(&mut self.page) else {
                    continue;
                };
                let topic = message::batch_topic(prefix, &rows[0].device);
                (rows, topic, payload)
            } else {
                let Some(row) = self.page.pop_front() else {
                    continue;
                };
                let topic = message::reading_topic(prefix, &row);
                let payload = message::reading_payload(&row);
                (vec![row], topic, payload)
            };
            match current.client.try_publish(topic, self.qos, false, payload) {
                Ok(()) => {
                    status.published.fetch_add(rows.len() as u64, Relaxed);
                    self.delivery
                        .asked(rows.iter().map(|row| row.pos).collect());
                }
                Err(_) => {
                    // Back in front, in order: each device's order holds.
                    for row in rows.into_iter().rev() {
                        self.page.push_front(row);
                    }
                    return;
                }
            }
        }
    }

    /// Hands rumqttc the hub's own messages while their window has room:
    /// command results first, then the devices' news.
    async fn publish_own(&mut self) {
        while let Some(current) = self.link.as_ref()
            && self.delivery.own_outstanding() < OWN_WINDOW
        {
            let Some(own) = self.outbox.pop_front() else {
                let Some((device, owed)) = self.news.take() else {
                    let Some((device, rule)) = self.alerts.take() else {
                        let Some(device) = self.configs.take() else {
                            return;
                        };
                        match self.tell_config(&device).await {
                            Ok(message) => self.outbox.extend(message),
                            Err(err) => {
                                tracing::warn!(error = %err, device = %device, "the bridge cannot read a configuration; it retries");
                                self.configs.note(&device);
                                return;
                            }
                        }
                        continue;
                    };
                    match self.tell_alert(&device, &rule).await {
                        Ok(messages) => self.outbox.extend(messages),
                        Err(err) => {
                            tracing::warn!(error = %err, device = %device, "the bridge cannot read an alert; it retries");
                            self.alerts.note(&device, &rule);
                            return;
                        }
                    }
                    continue;
                };
                match self.tell(&device, owed).await {
                    Ok(messages) => self.outbox.extend(messages),
                    Err(err) => {
                        tracing::warn!(error = %err, device = %device, "the bridge cannot read a device's record; it retries");
                        self.news.note(device, owed.change, owed.configs);
                        return;
                    }
                }
                continue;
            };
            match current.client.try_publish(
                &own.topic,
                QoS::AtLeastOnce,
                own.retain,
                own.payload.clone(),
            ) {
                Ok(()) => self.delivery.asked_own(),
                Err(_) => {
                    self.outbox.push_front(own);
                    return;
                }
            }
        }
    }

    /// The messages that tell the broker a device's news: its discovery
    /// configs (or their clearing), then its status.
    async fn tell(&self, device: &str, owed: Owed) -> Result<Vec<Own>, StoreError> {
        let prefix = &self.bridge.settings.prefix;
        let mut messages = Vec::new();
        if owed.configs {
            let store = &self.parts.store;
            if let Some(record) = store.device(device).await? {
                for metric in store.metrics_of(device).await? {
                    let topic = discovery::config_topic(prefix, device, &metric.name);
                    let payload = if owed.change == Change::Revoked {
                        Vec::new()
                    } else {
                        discovery::config_payload(prefix, &self.bridge.hub_id, &record, &metric)
                    };
                    messages.push(Own::retained(topic, payload));
                }
            }
        }
        let status = match owed.change {
            Change::Online => "online",
            Change::Offline => "offline",
            Change::Revoked => "",
        };
        messages.push(Own::retained(
            message::device_status_topic(prefix, device),
            status,
        ));
        Ok(messages)
    }

    /// The messages that tell the broker an alert's state: with discovery,
    /// its binary sensor's config first.
    async fn tell_alert(&self, device: &str, rule: &str) -> Result<Vec<Own>, StoreError> {
        let prefix = &self.bridge.settings.prefix;
        let store = &self.parts.store;
        let Some(alert) = store.latest_alert(device, rule).await? else {
            return Ok(Vec::new());
        };
        let mut messages = Vec::new();
        if self.bridge.settings.discovery
            && let Some(record) = store.device(device).await?
        {
            messages.push(Own::retained(
                discovery::alert_config_topic(prefix, device, rule),
                discovery::alert_config_payload(prefix, &self.bridge.hub_id, &record, rule),
            ));
        }
        let payload = serde_json::to_vec(&alert).unwrap_or_default();
        messages.push(Own::retained(
            message::alert_topic(prefix, device, rule),
            payload,
        ));
        Ok(messages)
    }

    /// The retained message of where a device's configuration stands.
    async fn tell_config(&self, device: &str) -> Result<Option<Own>, StoreError> {
        let prefix = &self.bridge.settings.prefix;
        let Some((row, _)) = self.parts.store.find_device(device).await? else {
            return Ok(None);
        };
        let view = crate::configuration::view::read(&self.parts.store, device, row).await?;
        Ok(Some(Own::retained(
            message::config_topic(prefix, device),
            serde_json::to_vec(&view).unwrap_or_default(),
        )))
    }

    /// Notes every configured device's standing as owed, at each
    /// connection, like alerts.
    async fn note_every_config(&mut self) {
        match self.parts.store.configured_devices().await {
            Ok(devices) => {
                for (_, device) in devices {
                    self.configs.note(&Arc::from(device));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "the bridge cannot list the configurations; their topics may be stale");
            }
        }
    }

    /// Notes every alert's state as owed: on each connection, so the
    /// broker's retained states are never left stale by an outage.
    async fn note_every_alert(&mut self) {
        match self.parts.store.alert_keys().await {
            Ok(keys) => {
                for (device, rule) in keys {
                    self.alerts.note(&device, &rule);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "the bridge cannot list the alerts; their topics may be stale");
            }
        }
    }

    /// Notes every device's presence (and configs) as news.
    async fn note_everyone(&mut self, configs: bool) {
        match self.parts.store.list_devices().await {
            Ok(devices) => {
                for device in devices {
                    let change = if device.revoked_ms.is_some() {
                        Change::Revoked
                    } else if self.parts.registry.is_online(&device.id) {
                        Change::Online
                    } else {
                        Change::Offline
                    };
                    self.news.note(device.id.into(), change, configs);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "the bridge cannot list the devices; their status topics may be stale");
            }
        }
    }

    async fn on_connected(&mut self) {
        self.failures = 0;
        self.delivery.rewind();
        self.page.clear();
        self.page_through = self.delivery.read_through();
        let Some(current) = &self.link else { return };
        // Subscriptions first, while nothing is in flight (rumqtt#1057).
        let prefix = &self.bridge.settings.prefix;
        let _ = current
            .client
            .try_subscribe(message::command_filter(prefix), QoS::AtMostOnce);
        let _ = current
            .client
            .try_subscribe(message::config_set_filter(prefix), QoS::AtLeastOnce);
        if self.bridge.settings.discovery {
            let _ = current
                .client
                .try_subscribe(discovery::HOME_ASSISTANT_STATUS, QoS::AtMostOnce);
        }
        for template in &self.bridge.settings.ingest.templates {
            let _ = current
                .client
                .try_subscribe(template.filter(), QoS::AtLeastOnce);
        }
        if current
            .client
            .try_publish(&self.hub_topic, QoS::AtLeastOnce, true, "online")
            .is_ok()
        {
            self.delivery.asked_own();
        }
        self.connected = true;
        self.bridge.status.connected.store(true, Relaxed);
        self.bridge.status.set_error(None);
        let broker = &self.bridge.settings.broker;
        tracing::info!(host = %broker.host, port = broker.port, tls = broker.tls, "bridge connected to the broker");
        // The broker may hold stale statuses from before the outage.
        self.note_everyone(self.bridge.settings.discovery).await;
        self.note_every_alert().await;
        self.note_every_config().await;
    }

    async fn on_message(&mut self, publish: Publish) {
        let prefix = &self.bridge.settings.prefix;
        if let Some(device) = message::command_device(prefix, &publish.topic) {
            self.bridge.status.commands.fetch_add(1, Relaxed);
            if self.commands.len() + self.outbox.len() >= COMMANDS_WAITING {
                self.bridge.status.commands_dropped.fetch_add(1, Relaxed);
                tracing::warn!(
                    device,
                    "too many commands from MQTT are waiting; this one is dropped"
                );
                return;
            }
            self.commands.spawn(command::answer(
                self.parts.registry.clone(),
                self.parts.store.clone(),
                prefix.clone(),
                device.to_owned(),
                publish.payload.to_vec(),
            ));
        } else if let Some(device) = message::config_set_device(prefix, &publish.topic) {
            if self.commands.len() + self.outbox.len() >= COMMANDS_WAITING {
                self.bridge.status.commands_dropped.fetch_add(1, Relaxed);
                tracing::warn!(
                    device,
                    "too many messages from MQTT are waiting; this configuration change is dropped"
                );
                return;
            }
            self.commands.spawn(config_set::answer(
                self.parts.configs.clone(),
                self.parts.store.clone(),
                prefix.clone(),
                device.to_owned(),
                publish.payload.to_vec(),
            ));
        } else if publish.topic == discovery::HOME_ASSISTANT_STATUS
            && publish.payload.as_ref() == b"online"
        {
            tracing::info!("Home Assistant started; publishing discovery configs again");
            self.note_everyone(true).await;
            self.note_every_alert().await;
        }
    }

    fn on_lost(&mut self, error: String) {
        if self.connected {
            tracing::warn!(%error, "bridge lost the broker; it resumes from its cursor");
        }
        // Nothing of this connection may reach the next: its client goes,
        // with whatever it still held.
        self.link = None;
        self.failures = self.failures.saturating_add(1);
        self.retry_at = tokio::time::Instant::now() + backoff(self.failures);
        self.connected = false;
        self.delivery.rewind();
        self.page.clear();
        self.page_through = self.delivery.read_through();
        // The outbox stays: command results not yet handed over go out on
        // the next connection (what rumqttc held is gone with it).
        self.bridge.status.connected.store(false, Relaxed);
        self.bridge.status.set_error(Some(error));
    }

    async fn save(&mut self) {
        let cursor = self.delivery.cursor();
        self.bridge.status.set_cursor(cursor);
        if cursor != self.saved
            && self
                .parts
                .writer
                .set_state(CURSOR_KEY, cursor)
                .await
                .is_ok()
        {
            self.saved = cursor;
        }
    }

    /// Says goodbye (a clean disconnect sends no last will), then saves
    /// where the broker's acks reached.
    async fn stop(&mut self) {
        if let Some(current) = self.link.as_mut().filter(|_| self.connected) {
            let _ = current
                .client
                .try_publish(&self.hub_topic, QoS::AtLeastOnce, true, "offline");
            let _ = current.client.try_disconnect();
            let delivery = &mut self.delivery;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(event) = current.heard.recv().await {
                    match event {
                        Heard::WentOut(pkid) => delivery.went_out(pkid),
                        Heard::Acked(pkid) => delivery.acked(pkid),
                        Heard::Disconnected | Heard::Lost(_) => break,
                        Heard::Connected | Heard::Message(_) => {}
                    }
                }
            })
            .await;
        }
        self.link = None;
        let cursor = self.delivery.cursor();
        self.bridge.status.set_cursor(cursor);
        if cursor != self.saved
            && let Err(err) = self.parts.writer.set_state(CURSOR_KEY, cursor).await
        {
            tracing::warn!(error = %err, "the bridge's last cursor was not saved; it will publish some readings again");
        }
    }
}

/// Positions missing between `after` and `read_through` from `held` (the
/// page's readings and events, in order): positions are assigned without
/// gaps, so a missing one was deleted by retention. Those at or below
/// `checked` are not counted again.
fn gaps(after: Position, held: &[Position], read_through: Position, checked: Position) -> u64 {
    let mut missing = 0;
    let mut expected = after + 1;
    let mut count = |from: Position, to: Position| {
        let from = from.max(checked + 1);
        if to >= from {
            missing += u64::try_from(to - from + 1).unwrap_or(0);
        }
    };
    for &pos in held {
        if pos > expected {
            count(expected, pos - 1);
        }
        expected = pos + 1;
    }
    if read_through >= expected {
        count(expected, read_through);
    }
    missing
}

/// One connection to the broker: its own rumqttc client, event loop and
/// report channel, all dropped when the connection ends. rumqttc would
/// otherwise carry requests queued in its channel at the moment of the loss
/// into the next connection, where their packet ids would be taken for
/// readings asked for after the rewind.
/// With `--mqtt-ingest`, the connection's ingest task goes with it too: an
/// ack must never reach a connection other than the one that delivered.
#[derive(Debug)]
struct Link {
    client: AsyncClient,
    heard: mpsc::Receiver<Heard>,
    poller: tokio::task::JoinHandle<()>,
    ingest: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.poller.abort();
        if let Some(ingest) = &self.ingest {
            ingest.abort();
        }
    }
}

impl Worker {
    fn connect(&self) -> Link {
        let bridge = &self.bridge;
        let (client, eventloop) = AsyncClient::new(bridge.options(), REQUESTS);
        let (report, heard) = mpsc::channel(4 * WINDOW);
        let (ingest, route) = if bridge.settings.ingest.templates.is_empty() {
            (None, None)
        } else {
            let (to_ingest, messages) = mpsc::channel(inbound::BATCH);
            let ctx = inbound::Context {
                settings: Arc::new(bridge.settings.ingest.clone()),
                prefix: bridge.settings.prefix.clone(),
                admission: self.parts.admission.clone(),
                writer: self.parts.writer.clone(),
                status: Arc::clone(&bridge.status),
            };
            let task = tokio::spawn(inbound::run(messages, client.clone(), report.clone(), ctx));
            (
                Some(task),
                Some((to_ingest, bridge.settings.prefix.clone())),
            )
        };
        Link {
            client,
            heard,
            poller: tokio::spawn(poll(eventloop, report, route)),
            ingest,
        }
    }
}

/// The next report of the current connection; never, while there is none.
async fn heard(link: &mut Option<Link>) -> Option<Heard> {
    match link {
        Some(link) => link.heard.recv().await,
        None => std::future::pending().await,
    }
}

/// Drives one connection's event loop and reports what matters, until the
/// connection ends (the bridge makes the next one, after a backoff). With
/// `ingest`, every message that is not a command or Home Assistant's status
/// goes to the ingest task (which acknowledges each one), waiting while it
/// is busy: the broker's socket waits with it.
async fn poll(
    mut eventloop: EventLoop,
    heard: mpsc::Sender<Heard>,
    ingest: Option<(mpsc::Sender<Publish>, String)>,
) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Heard::Connected,
            Ok(Event::Incoming(Packet::PubAck(ack))) => Heard::Acked(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Heard::WentOut(pkid),
            Ok(Event::Incoming(Packet::Publish(publish))) => match &ingest {
                Some((to_ingest, prefix))
                    if message::command_device(prefix, &publish.topic).is_none()
                        && publish.topic != discovery::HOME_ASSISTANT_STATUS =>
                {
                    if to_ingest.send(publish).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ => Heard::Message(publish),
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Heard::Disconnected,
            Ok(_) => continue,
            Err(err) => {
                let _ = heard.send(Heard::Lost(err.to_string())).await;
                return;
            }
        };
        if heard.send(report).await.is_err() {
            return;
        }
    }
}

/// 100 ms doubling to 30 s, each wait between half and all of it, so a
/// hub restarted with others does not reconnect in step with them.
fn backoff(failures: u32) -> Duration {
    let full = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(9))
        .min(Duration::from_secs(30));
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    full.mul_f64(0.5 + f64::from(byte[0]) / 510.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_positions_are_what_retention_deleted() {
        assert_eq!(gaps(0, &[1, 2, 3], 3, 0), 0);
        assert_eq!(gaps(0, &[4, 5], 5, 0), 3);
        assert_eq!(gaps(10, &[11, 14], 20, 0), 2 + 6);
        // Counted once: a rewind reads them again.
        assert_eq!(gaps(0, &[4, 5], 5, 5), 0);
        assert_eq!(gaps(0, &[], 5, 2), 3);
    }

    #[test]
    fn backoff_grows_to_thirty_seconds_with_jitter() {
        assert!(backoff(1) <= Duration::from_millis(200));
        assert!(backoff(1) >= Duration::from_millis(100));
        assert!(backoff(30) <= Duration::from_secs(30));
        assert!(backoff(30) >= Duration::from_secs(15));
    }

    #[test]
    fn broker_urls_are_mqtt_or_mqtts() {
        let url = |text: &str| text.parse::<BrokerUrl>();
        let plain = url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.tls),
            ("127.0.0.1", 1884, false)
        );
        assert_eq!(url("mqtt://broker").unwrap().port, 1883);
        let tls = url("mqtts://broker.example").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert_eq!(url("mqtt://[::1]:1883").unwrap().host, "::1");
        assert!(url("http://broker").unwrap_err().0.contains("mqtts://"));
        assert!(url("broker:1883").is_err());
    }

    #[test]
    fn a_password_is_never_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "***");
    }
}
