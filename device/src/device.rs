//! One device's half of the protocol: samples into its [`Outbox`], batches
//! sealed when full or when the oldest sample has waited `flush`, a
//! connection kept up with [`Backoff`], resends of what the hub's
//! `Welcome` says it lacks, and the hub's commands and configurations.
//!
//! [`Device::send`] only records a sample; [`Device::poll`] does all the
//! network work and must be called in a loop, as rumqttc's `EventLoop` is.
//! Both take `&mut self`, so one task owns the device: select on `poll`
//! and on wherever samples come from, and act on the result after the
//! select (`poll` is cancel-safe).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{
    Command, CommandResult, Config, ConfigResult, DeviceFrame, Hello, HubFrame, MetricDescriptor,
    PROTOCOL_VERSION, Welcome,
};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::Backoff;
use crate::journal::{Durability, Sample};
use crate::keyring::Keyring;
use crate::link::{Greeting, Ws, handshake};
use crate::outbox::{Outbox, Settled};
use crate::rng::Rng;

type Handshake = Pin<Box<dyn Future<Output = anyhow::Result<(Box<Ws>, Greeting)>> + Send>>;

/// Replies (command results, configuration answers) waiting to go out.
/// Each answers one frame of the hub, so few wait; if the application
/// queues more than this without polling, the oldest is dropped and the
/// hub times that command out.
const REPLY_QUEUE: usize = 64;

/// How the device proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Its own token (`hub device add`).
    Token(String),
    /// The hub's provisioning key: the hub registers the device and issues
    /// it a token, kept in [`Options::keyring`] and presented from then on.
    ProvisionKey(String),
    /// No token: the client certificate in [`Options::tls`] (see
    /// [`crate::tls::Identity::presented_with`]).
    Certificate,
}

/// Where the outbox is kept.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory, at most this many batches; lost with the process.
    Memory { batches: usize },
    /// In the folder `dir` (one per device), at most `max_bytes` there
    /// (at least [`crate::journal::MIN_BYTES`]); kept across restarts.
    /// Also held in memory while unacknowledged.
    Disk {
        dir: PathBuf,
        max_bytes: u64,
        durability: Durability,
    },
}

/// A device's settings. [`Options::new`] gives the defaults; change the
/// fields before [`Device::open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The device id: 1 to 64 of `A-Z a-z 0-9 - _ . :`.
    pub id: String,
    /// The hub's device endpoints ([`crate::endpoint`]): the first, and
    /// after a failed attempt or a lost connection the next, in turn.
    pub urls: Vec<String>,
    pub credential: Credential,
    /// Whom a `wss://` hub must chain to ([`crate::tls::client_config`]);
    /// `None`: the system's roots, read at every connection.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Where tokens the hub issues are kept (and a token given beforehand
    /// found): see [`Credential::ProvisionKey`].
    pub keyring: Arc<Keyring>,
    /// Groups a device registering with the provisioning key asks to join.
    pub groups: Arc<[String]>,
    pub model: String,
    pub firmware: String,
    /// The metrics it sends; [`Device::send`] takes their ids.
    pub metrics: Vec<MetricDescriptor>,
    /// Readings per batch.
    pub batch: usize,
    /// Longest a reading waits for its batch to fill.
    pub flush: Duration,
    pub storage: Storage,
    pub backoff: Backoff,
    /// Seeds the reconnect jitter.
    pub seed: u64,
    /// Wait this long before the first connection.
    pub start_delay: Duration,
}

impl Options {
    /// Device `id` of the hub at `url` (a device endpoint), with batches of
    /// 10 sent within a second, 1,000 batches kept in memory, the default
    /// backoff and the system's TLS roots.
    pub fn new(id: impl Into<String>, url: impl Into<String>, credential: Credential) -> Self {
        let id = id.into();
        let seed = id.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        Options {
            id,
            urls: vec![url.into()],
            credential,
            tls: None,
            keyring: Arc::new(Keyring::in_memory()),
            groups: Arc::from([]),
            model: "telemetry-device".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            metrics: Vec::new(),
            batch: 10,
            flush: Duration::from_secs(1),
            storage: Storage::Memory { batches: 1_000 },
            backoff: Backoff::default(),
            seed,
            start_delay: Duration::ZERO,
        }
    }
}

/// What [`Device::poll`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected: the hub's `Welcome`, and what it settled (batches the
    /// hub already held).
    Connected { welcome: Welcome, settled: Settled },
    /// A connection attempt failed, and why; the next follows the backoff.
    Refused(String),
    /// An established connection ended (with the hub's reason, when it
    /// gave one); the device reconnects.
    Lost(Option<String>),
    /// The hub committed readings: how many, and the acknowledged batch's
    /// send-to-ack time.
    Acknowledged {
        readings: usize,
        rtt: Option<Duration>,
    },
    /// A command to carry out and answer with [`Device::reply`].
    Command(Command),
    /// A configuration to apply whole or refuse, answered with
    /// [`Device::answer`].
    Config(Config),
    /// The hub reported an error about something the device sent.
    HubError(String),
}

/// Why [`Device::send`] did not keep a sample.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("metric {0} is not one of the device's metrics")]
    UnknownMetric(u16),
    #[error("the outbox: {0}")]
    Outbox(#[from] std::io::Error),
}

/// The connection, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to try again (or to start).
    Waiting {
        attempt: u32,
    },
    Connecting {
        attempt: u32,
    },
    Connected,
}

enum Link {
    Down { retry_at: Instant, attempt: u32 },
    Connecting { attempt: u32, handshake: Handshake },
    Up(Box<Ws>),
}

enum Happened {
    Retry,
    Handshake(anyhow::Result<(Box<Ws>, Greeting)>),
    Incoming(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    FlushDue,
}

/// Cancel-safe: the handshake is pinned inside the link, and a socket read
/// either completes or leaves the message in the socket.
async fn next_on(link: &mut Link) -> Happened {
    match link {
        Link::Down { retry_at, .. } => {
            sleep_until(*retry_at).await;
            Happened::Retry
        }
        Link::Connecting { handshake, .. } => Happened::Handshake(handshake.await),
        Link::Up(ws) => Happened::Incoming(ws.next().await),
    }
}

/// A device: its outbox and its connection to the hub.
pub struct Device {
    options: Options,
    outbox: Outbox,
    link: Link,
    rng: Rng,
    /// When the batch being filled must be sealed.
    flush_at: Instant,
    replies: VecDeque<DeviceFrame>,
    events: VecDeque<Event>,
    /// Frames fed to the socket since its last flush.
    unflushed: bool,
    /// The reason of the hub's close frame, until the connection ends.
    close_reason: Option<String>,
    /// Connections in a row that ended before the hub acknowledged
    /// anything: a hub that accepts devices but cannot store (a full or
    /// read-only disk) is backed off from like one that refuses them.
    fruitless: u32,
    /// Counts failed attempts and lost connections: which endpoint next.
    hub: usize,
    sent: u64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.options.id)
            .field("state", &self.state())
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device with its outbox opened (on disk: with what it held when
    /// the device last stopped, sent once connected). Nothing connects
    /// until [`Device::poll`].
    ///
    /// # Errors
    /// The outbox folder cannot be opened, or is given a bound below
    /// [`crate::journal::MIN_BYTES`].
    pub fn open(options: Options) -> std::io::Result<Self> {
        let outbox = match &options.storage {
            Storage::Memory { batches } => Outbox::in_memory(*batches),
            Storage::Disk {
                dir,
                max_bytes,
                durability,
            } => {
                if *max_bytes < crate::journal::MIN_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "an outbox on disk holds at least {} bytes",
                            crate::journal::MIN_BYTES
                        ),
                    ));
                }
                Outbox::on_disk(dir, *max_bytes, *durability)?
            }
        };
        let now = Instant::now();
        Ok(Device {
            link: Link::Down {
                retry_at: now + options.start_delay,
                attempt: 0,
            },
            rng: Rng::new(options.seed ^ 0x5EED),
            // What a reopened outbox holds unsealed waits one flush more.
            flush_at: now + options.flush,
            outbox,
            options,
            replies: VecDeque::new(),
            events: VecDeque::new(),
            unflushed: false,
            close_reason: None,
            fruitless: 0,
            hub: 0,
            sent: 0,
        })
    }

    /// Records a reading of `metric` (an id of [`Options::metrics`]) taken
    /// at `time_ms` (ms since the Unix epoch). With an outbox on disk it is
    /// there, as [`Durability`] says, when this returns; [`Device::poll`]
    /// sends it. A full batch is sealed at once.
    ///
    /// # Errors
    /// The metric is not the device's, or the outbox could not be written;
    /// the reading is not kept.
    pub fn send(&mut self, metric: u16, value: f64, time_ms: u64) -> Result<(), SendError> {
        if !self.options.metrics.iter().any(|m| m.id == metric) {
            return Err(SendError::UnknownMetric(metric));
        }
        if !self.outbox.fits(time_ms) {
            self.outbox.seal()?;
        }
        if self.outbox.unsealed().is_empty() {
            self.flush_at = Instant::now() + self.options.flush;
        }
        self.outbox.push(Sample {
            time_ms,
            metric,
            value,
        })?;
        if self.outbox.unsealed().len() >= self.options.batch {
            self.outbox.seal()?;
        }
        Ok(())
    }

    /// Seals the batch being filled now, without waiting for it to fill
    /// (before stopping, say).
    ///
    /// # Errors
    /// The outbox could not be written.
    pub fn seal(&mut self) -> std::io::Result<()> {
        self.outbox.seal().map(drop)
    }

    /// Readings per batch from now on (a configuration may change it).
    pub fn set_batch(&mut self, batch: usize) {
        self.options.batch = batch.max(1);
    }

    /// Answers a [`Event::Command`]; it goes out at the next poll.
    pub fn reply(&mut self, result: CommandResult) {
        self.queue_reply(DeviceFrame::CommandResult(result));
    }

    /// Answers a [`Event::Config`]; it goes out at the next poll.
    pub fn answer(&mut self, result: ConfigResult) {
        self.queue_reply(DeviceFrame::ConfigResult(result));
    }

    fn queue_reply(&mut self, frame: DeviceFrame) {
        if self.replies.len() == REPLY_QUEUE {
            self.replies.pop_front();
            tracing::warn!(device = %self.options.id, "too many replies waiting: the oldest dropped");
        }
        self.replies.push_back(frame);
    }

    pub fn id(&self) -> &str {
        &self.options.id
    }

    pub fn metrics(&self) -> &[MetricDescriptor] {
        &self.options.metrics
    }

    pub fn state(&self) -> State {
        match &self.link {
            Link::Down { attempt, .. } => State::Waiting { attempt: *attempt },
            Link::Connecting { attempt, .. } => State::Connecting { attempt: *attempt },
            Link::Up(_) => State::Connected,
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    /// Readings sampled and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.outbox.readings()
    }

    /// Sealed batches not yet acknowledged.
    pub fn unacknowledged_batches(&self) -> usize {
        self.outbox.batches()
    }

    /// Readings lost because the outbox was full, since [`Device::open`].
    pub fn dropped(&self) -> u64 {
        self.outbox.dropped_readings()
    }

    /// Readings put on the wire, resends included.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Bytes the outbox holds on disk (0 in memory).
    pub fn outbox_bytes(&self) -> u64 {
        self.outbox.disk_bytes()
    }

    /// Closes the connection, if any. What is unacknowledged stays in the
    /// outbox (on disk, for the next start).
    pub async fn close(&mut self) {
        let link = std::mem::replace(
            &mut self.link,
            Link::Down {
                retry_at: Instant::now(),
                attempt: 0,
            },
        );
        if let Link::Up(mut ws) = link {
            let _ = SinkExt::close(&mut *ws).await;
        }
    }

    /// Drives the connection: connects and reconnects, sends replies and
    /// batches, seals a partial batch when its time is up, and returns the
    /// next thing that happened. Cancel-safe.
    ///
    /// # Errors
    /// The outbox on disk could not be written (sealing, or renumbering at
    /// the first `Welcome`) or trimmed.
    pub async fn poll(&mut self) -> std::io::Result<Event> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            if self.send_next().await? {
                continue;
            }
            let happened = tokio::select! {
                happened = next_on(&mut self.link) => happened,
                () = sleep_until(self.flush_at), if !self.outbox.unsealed().is_empty() => Happened::FlushDue,
            };
            self.handle(happened)?;
        }
    }

    /// Puts one reply or batch on the wire, or flushes: whether it did
    /// anything (then there may be more).
    async fn send_next(&mut self) -> std::io::Result<bool> {
        let Link::Up(ws) = &mut self.link else {
            return Ok(false);
        };
        let frame = match (self.replies.front(), self.outbox.next_unsent()) {
            (Some(reply), _) => Some((reply.encode(), None)),
            (None, Some(batch)) => Some((
                DeviceFrame::Batch(batch.clone()).encode(),
                Some((batch.seq, batch.readings.len())),
            )),
            (None, None) => None,
        };
        let ok = match frame {
            Some((bytes, batch)) => {
                let ok = ws.feed(Message::Binary(bytes.into())).await.is_ok();
                if ok {
                    self.unflushed = true;
                    match batch {
                        Some((seq, readings)) => {
                            self.outbox.mark_sent(seq, std::time::Instant::now());
                            self.sent += readings as u64;
                        }
                        None => drop(self.replies.pop_front()),
                    }
                }
                ok
            }
            None if self.unflushed => {
                let ok = ws.flush().await.is_ok();
                self.unflushed = false;
                ok
            }
            None => return Ok(false),
        };
        if !ok {
            self.connection_ended();
        }
        Ok(true)
    }

    fn handle(&mut self, happened: Happened) -> std::io::Result<()> {
        match happened {
            Happened::FlushDue => {
                self.outbox.seal()?;
            }
            Happened::Retry => {
                let attempt = match self.link {
                    Link::Down { attempt, .. } => attempt,
                    _ => 0,
                };
                let options = &self.options;
                let credential =
                    options.keyring.token(&options.id).unwrap_or_else(|| {
                        match &options.credential {
                            Credential::Token(token) | Credential::ProvisionKey(token) => {
                                token.clone()
                            }
                            Credential::Certificate => String::new(),
                        }
                    });
                let handshake = Box::pin(handshake(
                    self.endpoint().to_owned(),
                    options.tls.clone(),
                    credential,
                    Arc::clone(&options.groups),
                    self.hello(),
                ));
                self.link = Link::Connecting { attempt, handshake };
            }
            Happened::Handshake(Ok((ws, Greeting { welcome, token }))) => {
                // Kept before any batch goes: the first one tells the hub
                // that this device holds its token, and the key stops
                // working for it.
                if let Some(token) = token
                    && let Err(err) = self.options.keyring.keep(&self.options.id, &token)
                {
                    drop(ws);
                    self.events.push_back(Event::Refused(format!(
                        "cannot keep the token the hub issued: {err}"
                    )));
                    self.link = self.retry_later(self.fruitless);
                    self.fruitless = self.fruitless.saturating_add(1);
                    return Ok(());
                }
                let settled = self.outbox.resume(welcome.last_seq)?;
                if settled.readings > 0 {
                    self.fruitless = 0;
                }
                self.link = Link::Up(ws);
                self.events.push_back(Event::Connected { welcome, settled });
            }
            Happened::Handshake(Err(err)) => {
                tracing::debug!(device = %self.options.id, error = %err, "connection attempt failed");
                self.events.push_back(Event::Refused(format!("{err:#}")));
                let attempt = match self.link {
                    Link::Connecting { attempt, .. } => attempt,
                    _ => 0,
                };
                self.link = self.retry_later(attempt);
            }
            Happened::Incoming(Some(Ok(Message::Binary(bytes)))) => {
                match HubFrame::decode(&bytes) {
                    Ok(HubFrame::Ack(ack)) => {
                        let settled = self.outbox.acknowledge(ack.seq)?;
                        self.fruitless = 0;
                        if settled.batches > 0 {
                            self.events.push_back(Event::Acknowledged {
                                readings: settled.readings,
                                rtt: settled.sent_at.map(|at| at.elapsed()),
                            });
                        }
                    }
                    Ok(HubFrame::Command(command)) => {
                        self.events.push_back(Event::Command(command))
                    }
                    Ok(HubFrame::Config(config)) => self.events.push_back(Event::Config(config)),
                    Ok(HubFrame::Error(error)) => self.events.push_back(Event::HubError(format!(
                        "hub error {}: {}",
                        error.code, error.message
                    ))),
                    // Only ever sent before Welcome, in the handshake.
                    Ok(HubFrame::Welcome(_) | HubFrame::Token(_)) => {}
                    Err(err) => {
                        tracing::warn!(device = %self.options.id, error = %err, "undecodable frame from the hub")
                    }
                }
            }
            Happened::Incoming(Some(Ok(Message::Close(Some(close))))) => {
                self.close_reason = Some(format!(
                    "the hub closed the connection: {} ({})",
                    close.reason,
                    u16::from(close.code)
                ));
            }
            Happened::Incoming(Some(Ok(_))) => {}
            Happened::Incoming(None | Some(Err(_))) => self.connection_ended(),
        }
        Ok(())
    }

    /// An established connection ended: report it and retry later.
    fn connection_ended(&mut self) {
        self.events.push_back(Event::Lost(self.close_reason.take()));
        // Replies answered frames of that connection.
        self.replies.clear();
        self.unflushed = false;
        self.link = self.retry_later(self.fruitless);
        self.fruitless = self.fruitless.saturating_add(1);
    }

    fn retry_later(&mut self, attempt: u32) -> Link {
        self.hub = self.hub.wrapping_add(1);
        let delay = self.options.backoff.delay(attempt, self.rng.unit());
        Link::Down {
            retry_at: Instant::now() + delay,
            attempt: attempt.saturating_add(1),
        }
    }

    /// The endpoint of the next connection attempt.
    fn endpoint(&self) -> &str {
        let urls = &self.options.urls;
        &urls[self.hub % urls.len().max(1)]
    }

    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            device_id: self.options.id.clone(),
            model: self.options.model.clone(),
            firmware: self.options.firmware.clone(),
            metrics: self.options.metrics.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_on_disk_below_its_least_bound_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = Options::new("d", "ws://127.0.0.1:9/v1/ws", Credential::Certificate);
        options.storage = Storage::Disk {
            dir: dir.path().join("outbox"),
            max_bytes: 1_024,
            durability: Durability::Process,
        };
        let err = Device::open(options).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("at least 65536 bytes"), "{err}");
        assert!(!dir.path().join("outbox").exists(), "nothing made");
    }
}
