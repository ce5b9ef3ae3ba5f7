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

mod delivery;
mod message;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::commits::{Head, Position};
use crate::store::query::ReadingRow;
use crate::store::writer::WriterHandle;
use crate::store::{Store, now_ms};
use delivery::Delivery;

/// Where the bridge keeps its cursor in `hub_state`.
const CURSOR_KEY: &str = "mqtt_cursor";
/// Readings published and not yet acknowledged, at most: the bridge's whole
/// memory of a slow broker. rumqttc's request channel holds as many, so
/// `try_publish` never finds it full while the window has room.
const WINDOW: usize = 100;
/// Readings read from SQLite at a time.
const PAGE: u32 = 500;
/// How often the cursor is saved (through the writer, in its next commit).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// How to reach the broker and what to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// Never logged (`Debug` prints it as `***`).
    pub password: Option<Secret>,
    /// The MQTT client id; default `hub-{hub id}`.
    pub client_id: Option<String>,
    /// The first topic level of everything the bridge publishes.
    pub prefix: String,
    /// 0 or 1: at 1 the cursor follows the broker's acks.
    pub qos: u8,
}

/// A password: compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Settings {
    /// Reads `mqtt://host[:port]` (port 1883 by default).
    ///
    /// # Errors
    /// Another scheme, or no host; the message is for `--mqtt-url`.
    pub fn parse_url(text: &str) -> Result<(String, u16), String> {
        let url = url::Url::parse(text).map_err(|err| format!("not a URL ({err})"))?;
        match url.scheme() {
            "mqtt" => {}
            "mqtts" => return Err("mqtts:// is not supported yet; use mqtt://".into()),
            other => return Err(format!("the scheme must be mqtt://, not {other}://")),
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
        Ok((host.to_owned(), url.port().unwrap_or(1883)))
    }
}

/// What `/metrics` and `/healthz` show of the bridge.
#[derive(Debug)]
pub struct Status {
    connected: AtomicBool,
    cursor: AtomicI64,
    published: AtomicU64,
    skipped: AtomicU64,
    /// When the cursor was last at the head (ms since the epoch).
    caught_up_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    head: Head,
}

/// The bridge's part of `/healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Connected to the broker now.
    pub connected: bool,
    /// Stored readings the broker has not acknowledged yet.
    pub lag: i64,
    /// Why the last connection failed, while it is not connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    fn new(head: Head, cursor: Position) -> Self {
        Status {
            connected: AtomicBool::new(false),
            cursor: AtomicI64::new(cursor),
            published: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            caught_up_ms: AtomicI64::new(now_ms()),
            last_error: Mutex::new(None),
            head,
        }
    }

    fn lag(&self) -> i64 {
        (self.head.peek() - self.cursor.load(Relaxed)).max(0)
    }

    fn set_cursor(&self, cursor: Position) {
        self.cursor.store(cursor, Relaxed);
        if cursor >= self.head.peek() {
            self.caught_up_ms.store(now_ms(), Relaxed);
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// For `/healthz`.
    pub fn health(&self) -> Health {
        let connected = self.connected.load(Relaxed);
        Health {
            connected,
            lag: self.lag(),
            error: if connected { None } else { self.last_error() },
        }
    }

    /// The bridge's series in Prometheus text.
    pub fn render(&self) -> String {
        let lag_s = if self.lag() == 0 {
            0.0
        } else {
            (now_ms() - self.caught_up_ms.load(Relaxed)).max(0) as f64 / 1000.0
        };
        format!(
            "# HELP hub_mqtt_connected Whether the bridge is connected to the broker.\n# TYPE hub_mqtt_connected gauge\nhub_mqtt_connected {}\n\
             # HELP hub_mqtt_published_total Readings handed to the broker (a rewind publishes some again).\n# TYPE hub_mqtt_published_total counter\nhub_mqtt_published_total {}\n\
             # HELP hub_mqtt_cursor Every reading at or below this position was acknowledged by the broker.\n# TYPE hub_mqtt_cursor gauge\nhub_mqtt_cursor {}\n\
             # HELP hub_mqtt_lag_positions Stored readings the broker has not acknowledged yet.\n# TYPE hub_mqtt_lag_positions gauge\nhub_mqtt_lag_positions {}\n\
             # HELP hub_mqtt_lag_seconds How long since the bridge was last caught up (0 while it is).\n# TYPE hub_mqtt_lag_seconds gauge\nhub_mqtt_lag_seconds {lag_s:.3}\n\
             # HELP hub_mqtt_skipped_total Readings retention deleted before the bridge published them.\n# TYPE hub_mqtt_skipped_total counter\nhub_mqtt_skipped_total {}\n",
            u8::from(self.connected.load(Relaxed)),
            self.published.load(Relaxed),
            self.cursor.load(Relaxed),
            self.lag(),
            self.skipped.load(Relaxed),
        )
    }
}

/// What the poller tells the bridge.
#[derive(Debug)]
enum Heard {
    Connected,
    WentOut(u16),
    Acked(u16),
    Disconnected,
    Lost(String),
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
        let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            // A new session each time: on reconnect the bridge rewinds to
            // its cursor rather than trust rumqttc's pending list.
            .set_clean_session(true)
            .set_inflight(u16::try_from(WINDOW).unwrap_or(u16::MAX))
            .set_request_channel_capacity(WINDOW + 8)
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
    pub async fn run(self, store: Store, writer: WriterHandle, shutdown: CancellationToken) {
        let mut head = self.head.clone();
        let qos = if self.settings.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let status = Arc::clone(&self.status);
        // One rumqttc client per connection (see `Link`), made when due.
        let mut link: Option<Link> = None;
        let mut failures = 0u32;
        let mut retry_at = tokio::time::Instant::now();
        let hub_topic = message::hub_status_topic(&self.settings.prefix, &self.hub_id);
        let mut delivery = Delivery::starting_at(self.cursor);
        let mut connected = false;
        let mut page: VecDeque<ReadingRow> = VecDeque::new();
        let mut page_through = self.cursor;
        // Positions up to here were checked for retention's gaps.
        let mut checked_through = self.cursor;
        let mut saved = self.cursor;
        let mut save = tokio::time::interval(SAVE_EVERY);
        loop {
            if link.is_none() && tokio::time::Instant::now() >= retry_at {
                link = Some(self.connect());
            }
            // Publish while connected and the window has room.
            while let Some(current) = link.as_ref().filter(|_| connected)
                && delivery.outstanding() < WINDOW
            {
                if page.is_empty() {
                    delivery.read_up_to(page_through);
                    let upto = head.current();
                    if delivery.read_through() >= upto {
                        break;
                    }
                    let after = delivery.read_through();
                    match store.readings_page(after, upto, None, None, PAGE).await {
                        Ok(read) => {
                            let skipped =
                                gaps(after, &read.rows, read.read_through, checked_through);
                            if skipped > 0 {
                                status.skipped.fetch_add(skipped, Relaxed);
                                tracing::warn!(
                                    after,
                                    skipped,
                                    "retention deleted readings before the bridge published them"
                                );
                            }
                            checked_through = checked_through.max(read.read_through);
                            page_through = read.read_through;
                            page.extend(read.rows);
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "the bridge cannot read storage; retrying");
                            break;
                        }
                    }
                    continue;
                }
                let Some(row) = page.pop_front() else { break };
                let topic = message::reading_topic(&self.settings.prefix, &row);
                match current
                    .client
                    .try_publish(topic, qos, false, message::reading_payload(&row))
                {
                    Ok(()) => {
                        delivery.asked(row.pos);
                        status.published.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        page.push_front(row);
                        break;
                    }
                }
            }
            let caught_up = page.is_empty() && delivery.read_through() >= head.peek();
            tokio::select! {
                event = heard(&mut link) => match event {
                    Some(Heard::Connected) => {
                        failures = 0;
                        delivery.rewind();
                        page.clear();
                        page_through = delivery.read_through();
                        if let Some(current) = &link
                            && current.client.try_publish(&hub_topic, QoS::AtLeastOnce, true, "online").is_ok()
                        {
                            delivery.asked_own();
                        }
                        connected = true;
                        status.connected.store(true, Relaxed);
                        status.set_error(None);
                        tracing::info!(host = %self.settings.host, port = self.settings.port, "bridge connected to the broker");
                    }
                    Some(Heard::WentOut(pkid)) => {
                        delivery.went_out(pkid);
                        status.set_cursor(delivery.cursor());
                    }
                    Some(Heard::Acked(pkid)) => {
                        delivery.acked(pkid);
                        status.set_cursor(delivery.cursor());
                    }
                    Some(Heard::Lost(error)) => {
                        if connected {
                            tracing::warn!(%error, "bridge lost the broker; it resumes from its cursor");
                        }
                        // Nothing of this connection may reach the next:
                        // its client goes, with whatever it still held.
                        link = None;
                        failures = failures.saturating_add(1);
                        retry_at = tokio::time::Instant::now() + backoff(failures);
                        connected = false;
                        delivery.rewind();
                        page.clear();
                        page_through = delivery.read_through();
                        status.connected.store(false, Relaxed);
                        status.set_error(Some(error));
                    }
                    Some(Heard::Disconnected) | None => break,
                },
                () = tokio::time::sleep_until(retry_at), if link.is_none() => {}
                moved = head.moved(), if connected && caught_up => {
                    if !moved {
                        break;
                    }
                }
                _ = save.tick() => {
                    let cursor = delivery.cursor();
                    status.set_cursor(cursor);
                    if cursor != saved && writer.set_state(CURSOR_KEY, cursor).await.is_ok() {
                        saved = cursor;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        // Say goodbye (a clean disconnect sends no last will), then save
        // where the broker's acks reached.
        if let Some(current) = link.as_mut().filter(|_| connected) {
            let _ = current
                .client
                .try_publish(&hub_topic, QoS::AtLeastOnce, true, "offline");
            let _ = current.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(event) = current.heard.recv().await {
                    match event {
                        Heard::WentOut(pkid) => delivery.went_out(pkid),
                        Heard::Acked(pkid) => delivery.acked(pkid),
                        Heard::Disconnected | Heard::Lost(_) => break,
                        Heard::Connected => {}
                    }
                }
            })
            .await;
        }
        drop(link);
        let cursor = delivery.cursor();
        status.set_cursor(cursor);
        if cursor != saved
            && let Err(err) = writer.set_state(CURSOR_KEY, cursor).await
        {
            tracing::warn!(error = %err, "the bridge's last cursor was not saved; it will publish some readings again");
        }
    }
}

/// Readings missing between `after` and `read_through` (positions are
/// assigned without gaps, so a missing one was deleted by retention), not
/// counting those at or below `checked_through`.
fn gaps(after: Position, rows: &[ReadingRow], read_through: Position, checked: Position) -> u64 {
    let mut missing = 0;
    let mut expected = after + 1;
    let mut count = |from: Position, to: Position| {
        let from = from.max(checked + 1);
        if to >= from {
            missing += u64::try_from(to - from + 1).unwrap_or(0);
        }
    };
    for row in rows {
        if row.pos > expected {
            count(expected, row.pos - 1);
        }
        expected = row.pos + 1;
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
#[derive(Debug)]
struct Link {
    client: AsyncClient,
    heard: mpsc::Receiver<Heard>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Bridge {
    fn connect(&self) -> Link {
        let (client, eventloop) = AsyncClient::new(self.options(), WINDOW + 8);
        let (report, heard) = mpsc::channel(4 * WINDOW);
        Link {
            client,
            heard,
            poller: tokio::spawn(poll(eventloop, report)),
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
/// connection ends (the bridge makes the next one, after a backoff).
async fn poll(mut eventloop: EventLoop, heard: mpsc::Sender<Heard>) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Heard::Connected,
            Ok(Event::Incoming(Packet::PubAck(ack))) => Heard::Acked(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Heard::WentOut(pkid),
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

    fn rows(positions: &[Position]) -> Vec<ReadingRow> {
        positions
            .iter()
            .map(|&pos| ReadingRow {
                pos,
                device: "d".into(),
                metric: "m".into(),
                unit: String::new(),
                ts_ms: 0,
                value: None,
            })
            .collect()
    }

    #[test]
    fn missing_positions_are_what_retention_deleted() {
        assert_eq!(gaps(0, &rows(&[1, 2, 3]), 3, 0), 0);
        assert_eq!(gaps(0, &rows(&[4, 5]), 5, 0), 3);
        assert_eq!(gaps(10, &rows(&[11, 14]), 20, 0), 2 + 6);
        // Counted once: a rewind reads them again.
        assert_eq!(gaps(0, &rows(&[4, 5]), 5, 5), 0);
        assert_eq!(gaps(0, &rows(&[]), 5, 2), 3);
    }

    #[test]
    fn backoff_grows_to_thirty_seconds_with_jitter() {
        assert!(backoff(1) <= Duration::from_millis(200));
        assert!(backoff(1) >= Duration::from_millis(100));
        assert!(backoff(30) <= Duration::from_secs(30));
        assert!(backoff(30) >= Duration::from_secs(15));
    }

    #[test]
    fn only_mqtt_urls_are_taken() {
        assert_eq!(
            Settings::parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            Settings::parse_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert!(
            Settings::parse_url("mqtts://broker")
                .unwrap_err()
                .contains("mqtts")
        );
        assert!(Settings::parse_url("http://broker").is_err());
        assert!(Settings::parse_url("broker:1883").is_err());
    }

    #[test]
    fn a_password_is_never_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "***");
    }
}
