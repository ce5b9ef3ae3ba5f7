//! One simulated device: samples its sensors on its own clock, seals batches
//! into its [`Outbox`], and keeps a connection to the hub alive, resending
//! what the hub lacks after every reconnect. It keeps sampling while
//! disconnected, as real firmware does; a full outbox drops the oldest batch.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use protocol::{
    Command, CommandResult, Config, ConfigResult, DeviceFrame, Hello, HubFrame, PROTOCOL_VERSION,
    Reading,
};
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::keyring::Keyring;
use crate::link::{Greeting, Ws, handshake};
use crate::outbox::Outbox;
use crate::rng::Rng;
use crate::sensors::{SensorKind, Sensors};
use crate::stats::Stats;

type Handshake = Pin<Box<dyn Future<Output = anyhow::Result<(Box<Ws>, Greeting)>> + Send>>;

/// Batches a backfilling device keeps unacknowledged at most.
const BACKFILL_WINDOW: usize = 16;

/// Shortest and longest interval `set_interval` accepts, in ms.
const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=86_400_000;

/// What every device of a fleet shares.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// The device endpoint, `ws://host:port/v1/ws` or `wss://…`.
    pub url: String,
    /// Other hubs' endpoints (a cluster's): after a failed attempt or a
    /// lost connection the device tries the next, in turn.
    pub other_urls: Vec<String>,
    pub kinds: Vec<SensorKind>,
    /// Readings per second; `None` follows the hub's `Welcome`.
    pub rate: Option<f64>,
    /// Readings per batch.
    pub batch: usize,
    /// Longest a reading waits for its batch to fill.
    pub flush: Duration,
    /// Readings to send, then stop once all are acknowledged.
    pub count: Option<u64>,
    /// Most unacknowledged batches kept.
    pub buffer: usize,
    pub backoff: Backoff,
    /// Added to the device's clock, in ms.
    pub clock_skew_ms: i64,
    /// Start the clock this far in the past: those samples go as fast as
    /// the hub acknowledges them, then sampling carries on live.
    pub backfill: Duration,
    /// Whom a `wss://` hub's certificate must chain to (see [`crate::tls`]).
    /// `None` reads the system's roots again at every connection: fleets
    /// should build one and share it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Client certificates the devices present to a `wss://` hub (with
    /// [`crate::fleet::Credential::Certificate`], instead of a token).
    pub client_certs: Option<Arc<crate::tls::ClientCerts>>,
    /// The devices' own tokens, presented instead of the fleet's
    /// credential; where tokens the hub issues are kept.
    pub keyring: Arc<Keyring>,
    /// The groups devices registering with the provisioning key ask to
    /// join (empty: those the key puts every device in).
    pub groups: Arc<[String]>,
}

impl DeviceSettings {
    /// Devices of the hub at `url` (a device endpoint, see [`endpoint`]) with
    /// the command line's defaults: temperature and humidity at the hub's
    /// rate, batches of 10 sent within a second, 1,000 batches kept while
    /// offline, no clock skew, the system's TLS roots.
    pub fn new(url: String) -> Self {
        DeviceSettings {
            url,
            other_urls: Vec::new(),
            kinds: vec![SensorKind::Temperature, SensorKind::Humidity],
            rate: None,
            batch: 10,
            flush: Duration::from_secs(1),
            count: None,
            buffer: 1_000,
            backoff: Backoff::default(),
            clock_skew_ms: 0,
            backfill: Duration::ZERO,
            tls: None,
            client_certs: None,
            keyring: Arc::new(Keyring::in_memory()),
            groups: Arc::from([]),
        }
    }
}

/// The hub's device endpoint for a `--hub` address: a `ws://` or `wss://`
/// URL with a host; `/v1/ws` becomes its path unless it names one. A query
/// string is kept.
///
/// # Errors
/// The address is not such a URL; the message says why.
pub fn endpoint(hub: &str) -> Result<String, String> {
    let mut url = url::Url::parse(hub).map_err(|err| format!("{hub:?}: {err}"))?;
    if !matches!(url.scheme(), "ws" | "wss") || !url.has_host() {
        return Err(format!(
            "{hub:?} is not a WebSocket address (ws://host:port or wss://host:port)"
        ));
    }
    if url.path() == "/" {
        url.set_path("/v1/ws");
    }
    Ok(url.into())
}

/// One device of the fleet.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub id: String,
    /// Its bearer token: its own, or the fleet's provisioning key (a
    /// token in [`DeviceSettings::keyring`] goes first).
    pub credential: String,
    pub seed: u64,
    /// Wait this long before the first connection (spreads a fleet's start).
    pub start_delay: Duration,
    /// Its readings go wrong now and then from its start on.
    pub misbehaves: bool,
}

/// The sampling interval for `rate` readings per second of `metrics` metrics:
/// every sample reads every metric.
pub fn interval_for_rate(rate: f64, metrics: usize) -> Duration {
    Duration::from_secs_f64((metrics.max(1) as f64 / rate).clamp(0.001, 86_400.0))
}

/// Carries out a hub command. `interval` is the sampling interval, which
/// `set_interval` changes.
pub fn execute(command: &Command, interval: &mut Duration) -> CommandResult {
    let reply = |ok: bool, detail: String| CommandResult {
        id: command.id,
        ok,
        detail,
    };
    match command.name.as_str() {
        "ping" => reply(true, "pong".into()),
        "set_interval" => {
            let Some(arg) = command.args.iter().find(|a| a.name == "interval_ms") else {
                return reply(false, "set_interval needs interval_ms".into());
            };
            match arg.value.parse::<u64>() {
                Ok(ms) if INTERVAL_RANGE_MS.contains(&ms) => {
                    *interval = Duration::from_millis(ms);
                    reply(true, format!("sampling every {ms} ms"))
                }
                _ => reply(
                    false,
                    format!(
                        "interval_ms must be a whole number from {} to {}, got {:?}",
                        INTERVAL_RANGE_MS.start(),
                        INTERVAL_RANGE_MS.end(),
                        arg.value
                    ),
                ),
            }
        }
        other => reply(false, format!("unknown command {other:?}")),
    }
}

enum Link {
    Down { retry_at: Instant, attempt: u32 },
    Connecting { attempt: u32, handshake: Handshake },
    Up(Box<Ws>),
}

impl Link {
    fn is_up(&self) -> bool {
        matches!(self, Link::Up(_))
    }
}

enum Event {
    Retry,
    Handshake(anyhow::Result<(Box<Ws>, Greeting)>),
    Incoming(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Tick,
    Flush,
    /// Past samples are due (`--backfill`).
    Backfill,
    Stop,
    Abort,
}

/// Cancel-safe: the handshake is pinned inside the link, and a socket read
/// either completes or leaves the message in the socket.
async fn next_link_event(link: &mut Link) -> Event {
    match link {
        Link::Down { retry_at, .. } => {
            sleep_until(*retry_at).await;
            Event::Retry
        }
        Link::Connecting { handshake, .. } => Event::Handshake(handshake.await),
        Link::Up(ws) => Event::Incoming(ws.next().await),
    }
}

fn device_time_ms(skew_ms: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    u64::try_from(now.saturating_add(skew_ms)).unwrap_or(0)
}

/// A device's state between events.
struct Device {
    spec: DeviceSpec,
    /// The fleet's TLS configuration, with this device's certificate if any.
    tls: Option<Arc<rustls::ClientConfig>>,
    settings: Arc<DeviceSettings>,
    stats: Arc<Stats>,
    sensors: Sensors,
    outbox: Outbox,
    rng: Rng,
    /// Sampled readings not yet sealed: (device time, metric, value).
    unsealed: Vec<(u64, u16, f64)>,
    flush_at: Instant,
    generated: u64,
    /// Ticks at the sampling interval.
    ticker: Interval,
    interval: Duration,
    /// The interval it samples at without a configuration saying
    /// otherwise (the fleet's rate, or the hub's `Welcome`).
    default_interval: Duration,
    /// The interval its configuration sets, which outranks the default.
    configured_interval: Option<Duration>,
    /// Readings per batch: the fleet's, or its configuration's.
    batch: usize,
    /// The metric ids it sends; `None`: all of them.
    only: Option<Vec<u16>>,
    sampling: bool,
    /// While backfilling: the device time of the next past sample.
    backfill_at: Option<u64>,
    /// The last sample's device time: each sample is later than the one
    /// before, even when the task was descheduled between a tick and its
    /// clock read (a busy machine), as a device's clock should be.
    last_sample_ms: u64,
    /// Connections in a row that ended before the hub acknowledged
    /// anything: a hub that accepts devices but cannot store (a full or
    /// read-only disk) is backed off from like one that refuses them.
    fruitless: u32,
    /// Counts failed attempts and lost connections: which of the hubs'
    /// endpoints the next attempt goes to.
    hub: usize,
}

/// A ticker every `interval`, first ticking one interval from now, that
/// waits out a late tick rather than bursting to catch up.
fn ticker(interval: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

impl Device {
    /// The endpoint of the next connection attempt: `url`, or after
    /// failures the next of `other_urls`, in turn.
    fn endpoint(&self) -> &str {
        let others = &self.settings.other_urls;
        match self.hub % (others.len() + 1) {
            0 => &self.settings.url,
            n => &others[n - 1],
        }
    }

    /// Samples every `interval` from now on.
    fn set_interval(&mut self, interval: Duration) {
        if interval != self.interval {
            self.interval = interval;
            self.ticker = ticker(interval);
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            device_id: self.spec.id.clone(),
            model: "device-sim".into(),
            firmware: env!("CARGO_PKG_VERSION").into(),
            metrics: self.sensors.descriptors(),
        }
    }

    fn finished(&self) -> bool {
        !self.sampling && self.unsealed.is_empty() && self.outbox.is_empty()
    }

    fn sample(&mut self) {
        self.sample_at(device_time_ms(self.settings.clock_skew_ms));
    }

    /// Whether past samples are due: backfilling, connected, and few
    /// enough batches unacknowledged (the outbox drops the oldest when
    /// full, and the hub takes 32 in flight).
    fn backfill_due(&self, link: &Link) -> bool {
        self.backfill_at.is_some()
            && self.sampling
            && link.is_up()
            && self.outbox.len() < BACKFILL_WINDOW
    }

    /// Samples the past, a batch's worth, at the sampling interval; once it
    /// reaches the present, sampling goes live.
    fn backfill(&mut self) {
        let step = u64::try_from(self.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        while let Some(at) = self.backfill_at
            && self.sampling
            && self.unsealed.len() < self.batch
        {
            if at >= device_time_ms(self.settings.clock_skew_ms) {
                self.backfill_at = None;
                self.ticker.reset_immediately();
                break;
            }
            self.sample_at(at);
            self.backfill_at = Some(at.saturating_add(step));
        }
        self.seal(self.backfill_at.is_some() && self.sampling);
    }

    fn sample_at(&mut self, now: u64) {
        let now = now.max(self.last_sample_ms.saturating_add(1));
        self.last_sample_ms = now;
        let mut values = Vec::with_capacity(self.sensors.len());
        self.sensors.sample(now, &mut values);
        let allowed = match self.settings.count {
            Some(count) => (count - self.generated).min(values.len() as u64) as usize,
            None => values.len(),
        };
        if self.unsealed.is_empty() {
            self.flush_at = Instant::now() + self.settings.flush;
        }
        if let Some(only) = &self.only {
            values.retain(|(metric, _)| only.contains(metric));
        }
        let allowed = allowed.min(values.len());
        for (metric, value) in values.into_iter().take(allowed) {
            self.unsealed.push((now, metric, value));
        }
        self.generated += allowed as u64;
        if self
            .settings
            .count
            .is_some_and(|count| self.generated >= count)
        {
            self.sampling = false;
        }
    }

    /// Seals unsealed readings into batches of at most `batch`.
    fn seal(&mut self, only_full: bool) {
        let before = self.unsealed.len();
        while !self.unsealed.is_empty() && (!only_full || self.unsealed.len() >= self.batch) {
            let take = self.unsealed.len().min(self.batch);
            let chunk: Vec<_> = self.unsealed.drain(..take).collect();
            let base = chunk[0].0;
            let readings = chunk
                .into_iter()
                .map(|(t, metric, value)| Reading {
                    metric,
                    offset_ms: u32::try_from(t.saturating_sub(base)).unwrap_or(u32::MAX),
                    value,
                })
                .collect();
            let lost = self.outbox.seal(base, readings);
            self.stats.dropped.fetch_add(lost as u64, Relaxed);
        }
        // A partial batch waits at most `flush` from its first reading
        // (`sample_at` starts the wait). A tick that sealed nothing must not
        // push the deadline on, or a device sampling at least once per
        // `flush` would only ever send full batches.
        if self.unsealed.len() != before && !self.unsealed.is_empty() {
            self.flush_at = Instant::now() + self.settings.flush;
        }
    }

    /// Sends every batch not yet sent on this connection. Returns false if
    /// the connection failed.
    async fn send_unsent(&mut self, ws: &mut Ws) -> bool {
        let batches = self.outbox.take_unsent(std::time::Instant::now());
        if batches.is_empty() {
            return true;
        }
        for batch in batches {
            let readings = batch.readings.len() as u64;
            if ws
                .feed(Message::Binary(DeviceFrame::Batch(batch).encode().into()))
                .await
                .is_err()
            {
                return false;
            }
            self.stats.sent.fetch_add(readings, Relaxed);
        }
        ws.flush().await.is_ok()
    }

    /// Applies the configuration the hub sent, whole, or refuses it and
    /// changes nothing: the answer for the hub.
    fn configure(&mut self, config: &Config) -> ConfigResult {
        let descriptors = self.sensors.descriptors();
        let known: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
        let answer = |ok, detail| ConfigResult {
            version: config.version,
            ok,
            detail,
        };
        match crate::config::read(&config.json, &known) {
            Ok(settings) => {
                self.configured_interval = settings.interval;
                self.set_interval(settings.interval.unwrap_or(self.default_interval));
                self.batch = settings.batch.unwrap_or(self.settings.batch);
                self.only = settings.metrics.map(|names| {
                    descriptors
                        .iter()
                        .filter(|d| names.contains(&d.name))
                        .map(|d| d.id)
                        .collect()
                });
                self.stats.configs_applied.fetch_add(1, Relaxed);
                self.stats.config_version.fetch_max(config.version, Relaxed);
                tracing::info!(device = %self.spec.id, version = config.version, "configuration applied");
                answer(true, format!("running version {}", config.version))
            }
            Err(why) => {
                self.stats.configs_refused.fetch_add(1, Relaxed);
                tracing::info!(device = %self.spec.id, version = config.version, why, "configuration refused");
                answer(false, why)
            }
        }
    }

    /// An established connection ended.
    fn dropped(&mut self) -> Link {
        self.stats.reconnects.fetch_add(1, Relaxed);
        let link = self.lost(self.fruitless);
        self.fruitless = self.fruitless.saturating_add(1);
        link
    }

    fn lost(&mut self, attempt: u32) -> Link {
        self.hub = self.hub.wrapping_add(1);
        let delay = self.settings.backoff.delay(attempt, self.rng.unit());
        Link::Down {
            retry_at: Instant::now() + delay,
            attempt: attempt.saturating_add(1),
        }
    }
}

/// Runs one device until it has delivered `count` readings (if set), or
/// until `stop` (stop sampling, deliver the rest) and then `abort` (give up).
/// Returns whether everything sampled was acknowledged.
pub async fn run(
    spec: DeviceSpec,
    settings: Arc<DeviceSettings>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    abort: CancellationToken,
) -> bool {
    let interval = settings.rate.map_or(Duration::from_secs(1), |rate| {
        interval_for_rate(rate, settings.kinds.len())
    });
    // This device's own certificate, if it presents one.
    let tls = match (&settings.tls, &settings.client_certs) {
        (Some(base), Some(certs)) => match certs.config_for(base, &spec.id) {
            Ok(config) => Some(config),
            Err(err) => {
                stats.set_last_error(&spec.id, format!("its client certificate: {err:#}"));
                return false;
            }
        },
        (tls, _) => tls.clone(),
    };
    let mut device = Device {
        tls,
        sensors: {
            let sensors = Sensors::new(&settings.kinds, spec.seed);
            match spec.misbehaves {
                true => sensors.misbehaving(device_time_ms(settings.clock_skew_ms)),
                false => sensors,
            }
        },
        outbox: Outbox::new(settings.buffer),
        rng: Rng::new(spec.seed ^ 0x5EED),
        unsealed: Vec::new(),
        flush_at: Instant::now(),
        generated: 0,
        ticker: ticker(interval),
        interval,
        default_interval: interval,
        configured_interval: None,
        batch: settings.batch,
        only: None,
        sampling: settings.count != Some(0),
        backfill_at: (!settings.backfill.is_zero()).then(|| {
            let back = u64::try_from(settings.backfill.as_millis()).unwrap_or(u64::MAX);
            device_time_ms(settings.clock_skew_ms).saturating_sub(back)
        }),
        last_sample_ms: 0,
        fruitless: 0,
        hub: 0,
        spec,
        settings,
        stats,
    };
    // The first sample is taken at once.
    device.ticker.reset_immediately();
    let mut link = Link::Down {
        retry_at: Instant::now() + device.spec.start_delay,
        attempt: 0,
    };
    let mut stopping = false;

    loop {
        let event = tokio::select! {
            biased;
            () = abort.cancelled() => Event::Abort,
            () = stop.cancelled(), if !stopping => Event::Stop,
            event = next_link_event(&mut link) => event,
            _ = device.ticker.tick(), if device.sampling && device.backfill_at.is_none() => Event::Tick,
            () = sleep_until(device.flush_at), if !device.unsealed.is_empty() => Event::Flush,
            // Last: acks and the rest come first.
            () = std::future::ready(()), if device.backfill_due(&link) => Event::Backfill,
        };
        let was_up = link.is_up();
        match event {
            Event::Abort => break,
            Event::Stop => {
                stopping = true;
                device.sampling = false;
                device.seal(false);
            }
            Event::Tick => {
                device.sample();
                device.seal(device.sampling);
            }
            Event::Flush => device.seal(false),
            Event::Backfill => device.backfill(),
            Event::Retry => {
                let attempt = match link {
                    Link::Down { attempt, .. } => attempt,
                    _ => 0,
                };
                let credential = device
                    .settings
                    .keyring
                    .token(&device.spec.id)
                    .unwrap_or_else(|| device.spec.credential.clone());
                let handshake = Box::pin(handshake(
                    device.endpoint().to_owned(),
                    device.tls.clone(),
                    credential,
                    Arc::clone(&device.settings.groups),
                    device.hello(),
                ));
                link = Link::Connecting { attempt, handshake };
            }
            Event::Handshake(Ok((ws, Greeting { welcome, token }))) => {
                // Kept before any batch goes: the first one tells the hub
                // that this device holds its token, and the key stops
                // working for it.
                if let Some(token) = token
                    && let Err(err) = device.settings.keyring.keep(&device.spec.id, &token)
                {
                    device.stats.set_last_error(
                        &device.spec.id,
                        format!("cannot keep the token the hub issued: {err}"),
                    );
                    link = device.dropped();
                    continue;
                }
                let settled = device.outbox.resume(welcome.last_seq);
                if settled.readings > 0 {
                    device.fruitless = 0;
                }
                device
                    .stats
                    .acked
                    .fetch_add(settled.readings as u64, Relaxed);
                if device.settings.rate.is_none() && welcome.sample_interval_ms > 0 {
                    device.default_interval =
                        Duration::from_millis(u64::from(welcome.sample_interval_ms));
                    device.set_interval(
                        device
                            .configured_interval
                            .unwrap_or(device.default_interval),
                    );
                }
                link = Link::Up(ws);
            }
            Event::Handshake(Err(err)) => {
                tracing::debug!(device = %device.spec.id, error = %err, "connection attempt failed");
                device
                    .stats
                    .set_last_error(&device.spec.id, format!("{err:#}"));
                let attempt = match link {
                    Link::Connecting { attempt, .. } => attempt,
                    _ => 0,
                };
                link = device.lost(attempt);
            }
            Event::Incoming(Some(Ok(Message::Binary(bytes)))) => match HubFrame::decode(&bytes) {
                Ok(HubFrame::Ack(ack)) => {
                    let settled = device.outbox.acknowledge(ack.seq);
                    device.fruitless = 0;
                    device
                        .stats
                        .acked
                        .fetch_add(settled.readings as u64, Relaxed);
                    if let Some(sent_at) = settled.sent_at {
                        device.stats.record_rtt(sent_at.elapsed());
                    }
                }
                Ok(HubFrame::Command(command)) => {
                    device.stats.commands.fetch_add(1, Relaxed);
                    let mut interval = device.interval;
                    let result = execute(&command, &mut interval);
                    device.set_interval(interval);
                    if let Link::Up(ws) = &mut link
                        && ws
                            .send(Message::Binary(
                                DeviceFrame::CommandResult(result).encode().into(),
                            ))
                            .await
                            .is_err()
                    {
                        link = device.dropped();
                    }
                }
                Ok(HubFrame::Config(config)) => {
                    let result = device.configure(&config);
                    if let Link::Up(ws) = &mut link
                        && ws
                            .send(Message::Binary(
                                DeviceFrame::ConfigResult(result).encode().into(),
                            ))
                            .await
                            .is_err()
                    {
                        link = device.dropped();
                    }
                }
                Ok(HubFrame::Error(error)) => {
                    device.stats.set_last_error(
                        &device.spec.id,
                        format!("hub error {}: {}", error.code, error.message),
                    );
                }
                // Only ever sent before Welcome, in the handshake.
                Ok(HubFrame::Welcome(_) | HubFrame::Token(_)) => {}
                Err(err) => {
                    tracing::warn!(device = %device.spec.id, error = %err, "undecodable frame from the hub")
                }
            },
            Event::Incoming(Some(Ok(Message::Close(Some(close))))) => {
                device.stats.set_last_error(
                    &device.spec.id,
                    format!(
                        "the hub closed the connection: {} ({})",
                        close.reason,
                        u16::from(close.code)
                    ),
                );
            }
            Event::Incoming(Some(Ok(_))) => {}
            Event::Incoming(None | Some(Err(_))) => {
                link = device.dropped();
            }
        }
        if let Link::Up(ws) = &mut link
            && !device.send_unsent(ws).await
        {
            link = device.dropped();
        }
        // The one place the connected gauge follows the link.
        match (was_up, link.is_up()) {
            (false, true) => device.stats.connected.fetch_add(1, Relaxed),
            (true, false) => device.stats.connected.fetch_sub(1, Relaxed),
            _ => 0,
        };
        if device.finished() {
            break;
        }
    }
    if let Link::Up(mut ws) = link {
        device.stats.connected.fetch_sub(1, Relaxed);
        let _ = ws.close().await;
    }
    device.finished()
}

#[cfg(test)]
mod tests {
    use protocol::CommandArg;

    use super::*;

    fn command(name: &str, args: &[(&str, &str)]) -> Command {
        Command {
            id: 9,
            name: name.into(),
            args: args
                .iter()
                .map(|(n, v)| CommandArg {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn ping_answers_at_once() {
        let mut interval = Duration::from_secs(1);
        let result = execute(&command("ping", &[]), &mut interval);
        assert!(result.ok);
        assert_eq!(result.id, 9);
    }

    #[test]
    fn set_interval_changes_the_sampling_interval() {
        let mut interval = Duration::from_secs(1);
        assert!(
            execute(
                &command("set_interval", &[("interval_ms", "250")]),
                &mut interval
            )
            .ok
        );
        assert_eq!(interval, Duration::from_millis(250));
    }

    #[test]
    fn a_bad_interval_is_refused_and_changes_nothing() {
        let mut interval = Duration::from_secs(1);
        for bad in [&[("interval_ms", "0")][..], &[("interval_ms", "fast")], &[]] {
            assert!(!execute(&command("set_interval", bad), &mut interval).ok);
        }
        assert_eq!(interval, Duration::from_secs(1));
    }

    #[test]
    fn unknown_commands_are_refused_with_a_reason() {
        let result = execute(&command("reboot", &[]), &mut Duration::from_secs(1));
        assert!(!result.ok);
        assert!(result.detail.contains("reboot"));
    }

    #[test]
    fn endpoints_get_the_device_path_unless_they_have_one() {
        let endpoint = |hub| endpoint(hub).unwrap();
        assert_eq!(endpoint("ws://127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(endpoint("ws://hub:81/"), "ws://hub:81/v1/ws");
        assert_eq!(endpoint("wss://hub/custom/ws"), "wss://hub/custom/ws");
        assert_eq!(endpoint("ws://hub:81?site=3"), "ws://hub:81/v1/ws?site=3");
    }

    #[test]
    fn only_websocket_urls_with_a_host_are_endpoints() {
        for hub in ["http://hub:80", "127.0.0.1:8080", "ws://", "hub"] {
            assert!(endpoint(hub).is_err(), "{hub}");
        }
    }

    #[test]
    fn the_rate_counts_every_metric() {
        assert_eq!(interval_for_rate(2.0, 2), Duration::from_secs(1));
        assert_eq!(interval_for_rate(10.0, 1), Duration::from_millis(100));
    }
}
