//! One simulated device: samples its sensors on its own clock and sends
//! them with the device library ([`telemetry_device::Device`]: the outbox,
//! reconnects, resends), exactly as a device embedding it would. It keeps
//! sampling while disconnected, as real firmware does; a full outbox drops
//! the oldest batch.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocol::{Command, CommandResult, Config, ConfigResult};
use telemetry_device::backoff::Backoff;
use telemetry_device::keyring::Keyring;
use telemetry_device::{Credential, Device, Durability, Event, Options, Storage};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::sensors::{SensorKind, Sensors};
use crate::stats::Stats;

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
    /// Most unacknowledged batches kept in memory.
    pub buffer: usize,
    /// Keep each device's outbox on disk instead, in a folder of its own.
    pub disk: Option<DiskOutbox>,
    pub backoff: Backoff,
    /// Added to the device's clock, in ms.
    pub clock_skew_ms: i64,
    /// Start the clock this far in the past: those samples go as fast as
    /// the hub acknowledges them, then sampling carries on live.
    pub backfill: Duration,
    /// Whom a `wss://` hub's certificate must chain to (see
    /// [`telemetry_device::tls`]).
    /// `None` reads the system's roots again at every connection: fleets
    /// should build one and share it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Client certificates the devices present to a `wss://` hub (with
    /// [`crate::fleet::Credential::Certificate`], instead of a token).
    pub client_certs: Option<Arc<crate::certs::ClientCerts>>,
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
            disk: None,
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

/// Outboxes on disk (`--outbox`): each device's in `root/<device id>`.
#[derive(Debug, Clone)]
pub struct DiskOutbox {
    pub root: PathBuf,
    /// Most bytes each device's outbox holds.
    pub max_bytes: u64,
    pub durability: Durability,
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

/// What woke the device's loop.
enum Step {
    Device(std::io::Result<Event>),
    Tick,
    /// Past samples are due (`--backfill`).
    Backfill,
    Stop,
    Abort,
}

fn device_time_ms(skew_ms: i64) -> u64 {
    let now = i64::try_from(telemetry_device::now_ms()).unwrap_or(i64::MAX);
    u64::try_from(now.saturating_add(skew_ms)).unwrap_or(0)
}

/// A simulated device's state between steps.
struct Simulated {
    spec: DeviceSpec,
    settings: Arc<DeviceSettings>,
    stats: Arc<Stats>,
    device: Device,
    sensors: Sensors,
    generated: u64,
    /// Ticks at the sampling interval.
    ticker: Interval,
    interval: Duration,
    /// The interval it samples at without a configuration saying
    /// otherwise (the fleet's rate, or the hub's `Welcome`).
    default_interval: Duration,
    /// The interval its configuration sets, which outranks the default.
    configured_interval: Option<Duration>,
    /// The metric ids it sends; `None`: all of them.
    only: Option<Vec<u16>>,
    sampling: bool,
    /// While backfilling: the device time of the next past sample.
    backfill_at: Option<u64>,
    /// The last sample's device time: each sample is later than the one
    /// before, even when the task was descheduled between a tick and its
    /// clock read (a busy machine), as a device's clock should be.
    last_sample_ms: u64,
    /// The library's counters as last added to the fleet's.
    counted_sent: u64,
    counted_dropped: u64,
}

/// A ticker every `interval`, first ticking one interval from now, that
/// waits out a late tick rather than bursting to catch up.
fn ticker(interval: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

impl Simulated {
    /// Samples every `interval` from now on.
    fn set_interval(&mut self, interval: Duration) {
        if interval != self.interval {
            self.interval = interval;
            self.ticker = ticker(interval);
        }
    }

    fn finished(&self) -> bool {
        !self.sampling && self.device.unacknowledged() == 0
    }

    /// Whether past samples are due: backfilling, connected, and few
    /// enough batches unacknowledged (the outbox drops the oldest when
    /// full, and the hub takes 32 in flight).
    fn backfill_due(&self) -> bool {
        self.backfill_at.is_some()
            && self.sampling
            && self.device.is_connected()
            && self.device.unacknowledged_batches() < BACKFILL_WINDOW
    }

    /// Samples the past at the sampling interval until a batch is sealed;
    /// once it reaches the present, sampling goes live.
    fn backfill(&mut self) -> anyhow::Result<()> {
        let step = u64::try_from(self.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let batches = self.device.unacknowledged_batches();
        while let Some(at) = self.backfill_at
            && self.sampling
            && self.device.unacknowledged_batches() == batches
        {
            if at >= device_time_ms(self.settings.clock_skew_ms) {
                self.backfill_at = None;
                self.ticker.reset_immediately();
                break;
            }
            self.sample_at(at)?;
            self.backfill_at = Some(at.saturating_add(step));
        }
        Ok(())
    }

    fn sample_at(&mut self, now: u64) -> anyhow::Result<()> {
        let now = now.max(self.last_sample_ms.saturating_add(1));
        self.last_sample_ms = now;
        let mut values = Vec::with_capacity(self.sensors.len());
        self.sensors.sample(now, &mut values);
        if let Some(only) = &self.only {
            values.retain(|(metric, _)| only.contains(metric));
        }
        let allowed = match self.settings.count {
            Some(count) => (count - self.generated).min(values.len() as u64) as usize,
            None => values.len(),
        };
        for (metric, value) in values.into_iter().take(allowed) {
            self.device.send(metric, value, now)?;
        }
        self.generated += allowed as u64;
        if self
            .settings
            .count
            .is_some_and(|count| self.generated >= count)
        {
            self.sampling = false;
        }
        Ok(())
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
                self.device
                    .set_batch(settings.batch.unwrap_or(self.settings.batch));
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

    /// Counts what the library reports.
    fn on(&mut self, event: Event) {
        let stats = &self.stats;
        match event {
            Event::Connected { welcome, settled } => {
                stats.connected.fetch_add(1, Relaxed);
                stats.acked.fetch_add(settled.readings as u64, Relaxed);
                if self.settings.rate.is_none() && welcome.sample_interval_ms > 0 {
                    self.default_interval =
                        Duration::from_millis(u64::from(welcome.sample_interval_ms));
                    self.set_interval(self.configured_interval.unwrap_or(self.default_interval));
                }
            }
            Event::Refused(reason) | Event::HubError(reason) => {
                stats.set_last_error(&self.spec.id, reason);
            }
            Event::Lost(reason) => {
                stats.connected.fetch_sub(1, Relaxed);
                stats.reconnects.fetch_add(1, Relaxed);
                if let Some(reason) = reason {
                    stats.set_last_error(&self.spec.id, reason);
                }
            }
            Event::Acknowledged { readings, rtt } => {
                stats.acked.fetch_add(readings as u64, Relaxed);
                if let Some(rtt) = rtt {
                    stats.record_rtt(rtt);
                }
            }
            Event::Command(command) => {
                stats.commands.fetch_add(1, Relaxed);
                let mut interval = self.interval;
                let result = execute(&command, &mut interval);
                self.set_interval(interval);
                self.device.reply(result);
            }
            Event::Config(config) => {
                let result = self.configure(&config);
                self.device.answer(result);
            }
        }
    }

    /// Adds what the library sent and dropped since last time to the
    /// fleet's counters.
    fn count(&mut self) {
        let (sent, dropped) = (self.device.sent(), self.device.dropped());
        self.stats.sent.fetch_add(sent - self.counted_sent, Relaxed);
        self.stats
            .dropped
            .fetch_add(dropped - self.counted_dropped, Relaxed);
        (self.counted_sent, self.counted_dropped) = (sent, dropped);
    }
}

/// The library's options for one device of the fleet.
fn options(
    spec: &DeviceSpec,
    settings: &DeviceSettings,
    sensors: &Sensors,
) -> anyhow::Result<Options> {
    let credential = match spec.credential.is_empty() {
        true => Credential::Certificate,
        false => Credential::Token(spec.credential.clone()),
    };
    let mut options = Options::new(spec.id.clone(), settings.url.clone(), credential);
    options.urls.extend(settings.other_urls.iter().cloned());
    // This device's own certificate, if it presents one.
    options.tls = match (&settings.tls, &settings.client_certs) {
        (Some(base), Some(certs)) => Some(
            certs
                .config_for(base, &spec.id)
                .map_err(|err| anyhow::anyhow!("its client certificate: {err:#}"))?,
        ),
        (tls, _) => tls.clone(),
    };
    options.keyring = Arc::clone(&settings.keyring);
    options.groups = Arc::clone(&settings.groups);
    options.model = "device-sim".into();
    options.firmware = env!("CARGO_PKG_VERSION").into();
    options.metrics = sensors.descriptors();
    options.batch = settings.batch;
    options.flush = settings.flush;
    options.storage = match &settings.disk {
        None => Storage::Memory {
            batches: settings.buffer,
        },
        Some(disk) => Storage::Disk {
            dir: disk.root.join(&spec.id),
            max_bytes: disk.max_bytes,
            durability: disk.durability,
        },
    };
    options.backoff = settings.backoff;
    options.seed = spec.seed;
    options.start_delay = spec.start_delay;
    Ok(options)
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
    let sensors = {
        let sensors = Sensors::new(&settings.kinds, spec.seed);
        match spec.misbehaves {
            true => sensors.misbehaving(device_time_ms(settings.clock_skew_ms)),
            false => sensors,
        }
    };
    let device = match options(&spec, &settings, &sensors).and_then(|options| {
        let dir = match &options.storage {
            Storage::Disk { dir, .. } => Some(dir.clone()),
            Storage::Memory { .. } => None,
        };
        Device::open(options).map_err(|err| match dir {
            Some(dir) => anyhow::anyhow!("its outbox {}: {err}", dir.display()),
            None => err.into(),
        })
    }) {
        Ok(device) => device,
        Err(err) => {
            stats.set_last_error(&spec.id, format!("{err:#}"));
            return false;
        }
    };
    let mut sim = Simulated {
        device,
        sensors,
        generated: 0,
        ticker: ticker(interval),
        interval,
        default_interval: interval,
        configured_interval: None,
        only: None,
        sampling: settings.count != Some(0),
        backfill_at: (!settings.backfill.is_zero()).then(|| {
            let back = u64::try_from(settings.backfill.as_millis()).unwrap_or(u64::MAX);
            device_time_ms(settings.clock_skew_ms).saturating_sub(back)
        }),
        last_sample_ms: 0,
        counted_sent: 0,
        counted_dropped: 0,
        spec,
        settings,
        stats,
    };
    // The first sample is taken at once.
    sim.ticker.reset_immediately();
    let mut stopping = false;

    loop {
        let step = tokio::select! {
            biased;
            () = abort.cancelled() => Step::Abort,
            () = stop.cancelled(), if !stopping => Step::Stop,
            event = sim.device.poll() => Step::Device(event),
            _ = sim.ticker.tick(), if sim.sampling && sim.backfill_at.is_none() => Step::Tick,
            // Last: acks and the rest come first.
            () = std::future::ready(()), if sim.backfill_due() => Step::Backfill,
        };
        let done = match step {
            Step::Abort => break,
            Step::Stop => {
                stopping = true;
                sim.sampling = false;
                sim.device.seal().map_err(anyhow::Error::from)
            }
            Step::Tick => sim.sample_at(device_time_ms(sim.settings.clock_skew_ms)),
            Step::Backfill => sim.backfill(),
            Step::Device(Ok(event)) => {
                sim.on(event);
                Ok(())
            }
            Step::Device(Err(err)) => Err(err.into()),
        };
        sim.count();
        if let Err(err) = done {
            sim.stats
                .set_last_error(&sim.spec.id, format!("its outbox: {err:#}"));
            break;
        }
        if sim.finished() {
            break;
        }
    }
    if sim.device.is_connected() {
        sim.stats.connected.fetch_sub(1, Relaxed);
    }
    sim.device.close().await;
    sim.finished()
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
    fn the_rate_counts_every_metric() {
        assert_eq!(interval_for_rate(2.0, 2), Duration::from_secs(1));
        assert_eq!(interval_for_rate(10.0, 1), Duration::from_millis(100));
    }
}
