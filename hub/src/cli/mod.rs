//! The `hub` command line: `serve`, `demo` (with a simulated fleet), and
//! `device add|token|list|revoke` for provisioning. Every flag can also be set by its environment variable.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::alerts::alertmanager;
use crate::bridge;
use crate::ingest::session::{Limits, Timing};
use crate::invalid::Invalid;
use crate::journal;
use crate::journal::access::AccessEntry;
use crate::journal::provision::DeviceChange;
use crate::listener;
use crate::live::subscription;
use crate::server::{Hub, Retention, Settings};
use crate::store::devices::AddDeviceError;
use crate::store::{PoolDurability, Store, retention};
use crate::tls::TlsFiles;

mod alert;
mod backup;
mod config;
mod key;

/// A command line the checks refused: the binary exits with status 2, as
/// for the flags clap refuses itself.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Telemetry hub: devices stream readings over WebSocket, the hub stores them
/// in SQLite and serves them to browsers and tools.
#[derive(Debug, Parser)]
#[command(name = "hub", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: device WebSocket ingest and the HTTP API.
    // Boxed: the serve flags outweigh the other commands many times over.
    Serve(Box<ServeArgs>),
    /// Provision, list and revoke devices (works while the hub runs).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Add, list and remove alert rules (works while the hub runs).
    #[command(subcommand)]
    Alert(alert::AlertCommand),
    /// Make, list and revoke API keys for the monitor and admin API (works
    /// while the hub runs).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Copy the database to a file, consistent as of one commit, while the
    /// hub runs (or not): from the file (--db) or from a running hub's
    /// admin API (--hub).
    Backup(backup::BackupArgs),
    /// Run the hub with a simulated fleet in the same process, the last hour
    /// backfilled, for a first look at the monitor. Takes every serve flag.
    Demo(Box<DemoArgs>),
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Simulated devices, each with every sensor kind, sampling once a
    /// second.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    devices: u64,
    /// History the devices send at start, so the charts are not empty.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    backfill: Duration,
}

#[derive(Debug, Args)]
struct DbArg {
    /// SQLite database file; created with its schema if absent.
    #[arg(long, env = "HUB_DB", default_value = "./telemetry.db")]
    db: PathBuf,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the real one is printed).
    #[arg(long, env = "HUB_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    db: DbArg,
    /// Log filter: a level (error, warn, info, debug, trace) or per-target
    /// directives such as `hub=debug,warn`.
    #[arg(long, env = "HUB_LOG", default_value = "info", value_parser = Targets::from_str)]
    log: Targets,
    /// Lets a device with an unknown id register itself at its first
    /// connection by presenting this key as its bearer token.
    #[arg(long, env = "HUB_PROVISION_KEY", hide_env_values = true)]
    provision_key: Option<String>,
    /// A group the provisioning key puts devices in (repeat, or
    /// comma-separate in the environment, for more): each device it
    /// registers joins all of them, or those it names (`device-sim
    /// --group`, the upgrade's `X-Device-Groups`) among them.
    #[arg(long = "provision-group", env = "HUB_PROVISION_GROUPS", value_delimiter = ',', requires = "provision_key", value_parser = parse_group)]
    provision_groups: Vec<String>,
    /// How long a new device connection has to send Hello.
    #[arg(long, env = "HUB_HELLO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    hello_timeout: Duration,
    /// How often the hub pings devices; one silent for two intervals is closed.
    #[arg(long, env = "HUB_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Most concurrent device connections; more get 503 with Retry-After
    /// before the WebSocket upgrade.
    #[arg(long, env = "HUB_MAX_DEVICES", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_devices: u32,
    /// Frames one device may send a second (a second's worth may come at
    /// once); past it the device gets Error 13 and close 1008. 0: no limit.
    #[arg(long, env = "HUB_DEVICE_MAX_FRAMES_PER_S", default_value_t = 1_000)]
    device_max_frames_per_s: u32,
    /// Readings one device may send a second, as above. 0: no limit.
    #[arg(long, env = "HUB_DEVICE_MAX_READINGS_PER_S", default_value_t = 100_000)]
    device_max_readings_per_s: u32,
    /// Serve https and wss with this PEM certificate chain (the hub's
    /// certificate first). Needs --tls-key. SIGHUP reloads both files.
    #[arg(long, env = "HUB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, env = "HUB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Republish every stored reading to this MQTT broker:
    /// mqtt://host[:port] (1883), or mqtts://host[:port] (8883) over TLS.
    #[arg(long, env = "HUB_MQTT_URL")]
    mqtt_url: Option<bridge::BrokerUrl>,
    /// PEM file of the CA that signed an mqtts:// broker's certificate,
    /// trusted besides the system's roots.
    #[arg(long, env = "HUB_MQTT_CA_CERT", requires = "mqtt_url")]
    mqtt_ca_cert: Option<PathBuf>,
    /// The broker's user name.
    #[arg(long, env = "HUB_MQTT_USERNAME", requires = "mqtt_url")]
    mqtt_username: Option<String>,
    /// The broker's password (never logged).
    #[arg(
        long,
        env = "HUB_MQTT_PASSWORD",
        hide_env_values = true,
        requires = "mqtt_username"
    )]
    mqtt_password: Option<String>,
    /// The bridge's MQTT client id [default: hub-<hub id>, stable across restarts].
    #[arg(long, env = "HUB_MQTT_CLIENT_ID", requires = "mqtt_url")]
    mqtt_client_id: Option<String>,
    /// First topic level of everything the bridge publishes.
    #[arg(long, env = "HUB_MQTT_PREFIX", default_value = "telemetry", value_parser = parse_mqtt_prefix)]
    mqtt_prefix: String,
    /// QoS of published readings: 1 (the broker acknowledges each; the
    /// bridge's cursor follows) or 0 (fire and forget).
    #[arg(long, env = "HUB_MQTT_QOS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    mqtt_qos: u8,
    /// Publish discovery configs for this home-automation system (retained,
    /// one per device metric), so devices appear in it by themselves.
    #[arg(long, env = "HUB_MQTT_DISCOVERY", value_enum, requires = "mqtt_url")]
    mqtt_discovery: Option<Discovery>,
    /// Take readings in from MQTT topics matching this template, where
    /// {device} and {metric} each stand for one topic level, e.g.
    /// 'sensors/{device}/{metric}'. Repeatable (comma-separated in the env
    /// variable). Payloads: a number, or {"value", "ts_ms", "unit"}.
    #[arg(
        long,
        env = "HUB_MQTT_INGEST",
        value_delimiter = ',',
        requires = "mqtt_url"
    )]
    mqtt_ingest: Vec<bridge::Template>,
    /// Let devices unknown to the hub register themselves by publishing on
    /// an --mqtt-ingest topic (as the provisioning key does for WebSocket
    /// devices); revoked ones stay out.
    #[arg(long, env = "HUB_MQTT_INGEST_REGISTER", requires = "mqtt_ingest")]
    mqtt_ingest_register: bool,
    /// Publish each device's readings as one message per page of storage
    /// (a JSON array, on {prefix}/{device}) rather than one per reading on
    /// {prefix}/{device}/{metric}: for brokers that cannot take the hub's
    /// rate one message at a time.
    #[arg(long, env = "HUB_MQTT_BATCH", requires = "mqtt_url")]
    mqtt_batch: bool,
    /// PEM file of the CA whose certificates devices may present instead
    /// of a token: the certificate's subject CN is the device id. Needs
    /// --tls-cert. SIGHUP reloads it too.
    #[arg(long, env = "HUB_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// How long an HTTP request's headers may take to arrive; a connection
    /// slower than that is closed (slowloris).
    #[arg(long, env = "HUB_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// The most bytes of HTTP request headers; more get 431.
    #[arg(long, env = "HUB_MAX_HEADER_BYTES", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(8_192..=1_048_576))]
    max_header_bytes: u32,
    /// The most connections that have not yet sent their first request's
    /// headers; past it, new connections are closed at once.
    #[arg(long, env = "HUB_MAX_HANDSHAKES", default_value_t = 1_024, value_parser = clap::value_parser!(u32).range(1..))]
    max_handshakes: u32,
    /// The most HTTP connections served at once, HTTP/1.1 and HTTP/2 alike
    /// (live streams included; a device's until its WebSocket upgrade,
    /// then --max-devices counts it); past it, new connections are closed
    /// at once. Keep it and --max-devices within the hub's descriptor limit
    /// (ulimit -n), which the hub raises to its hard limit at start.
    #[arg(long, env = "HUB_MAX_CONNECTIONS", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Sampling interval announced to devices in Welcome.
    #[arg(long, env = "HUB_SAMPLE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    sample_interval: Duration,
    /// Delete readings whose device time is older than this (for example 30d).
    /// Without it, readings are kept forever.
    #[arg(long, env = "HUB_RETENTION", value_parser = parse_duration)]
    retention: Option<Duration>,
    /// Delete one-minute roll-up buckets older than this (for example 90d).
    /// Without it, they are kept forever.
    #[arg(long, env = "HUB_ROLLUP_RETENTION", value_parser = parse_duration)]
    rollup_retention: Option<Duration>,
    /// Delete one-hour roll-up buckets older than this (for example 5y); at
    /// least --rollup-retention. Without it, they are kept forever.
    #[arg(long, env = "HUB_ROLLUP_RETENTION_HOURS", value_parser = parse_duration)]
    rollup_retention_hours: Option<Duration>,
    /// Compact readings committed longer ago than this: they move from one
    /// row each (about 48 bytes) into one JSON block per metric (about 20
    /// bytes a reading), a slab of 100,000 storage positions at a time. The
    /// `readings` view, the API and live catch-up read both the same.
    #[arg(long, env = "HUB_COMPACT_AFTER", default_value = "1h", value_parser = parse_age)]
    compact_after: Duration,
    /// How often retention looks for old readings and buckets.
    #[arg(long, env = "HUB_RETENTION_SWEEP", default_value = "1m", value_parser = parse_duration)]
    retention_sweep: Duration,
    /// Require this token for the monitor API (/v1/events, /v1/devices,
    /// /v1/readings, commands). Without it that API is open to anyone who
    /// can reach the hub.
    #[arg(long, env = "HUB_MONITOR_TOKEN", hide_env_values = true, value_parser = parse_monitor_token)]
    monitor_token: Option<String>,
    /// Without --monitor-token, the monitor API answers only requests whose
    /// Host is an IP address, `localhost`, or one of these names (so a web
    /// page cannot reach it by DNS rebinding); repeat it, or separate names
    /// with commas.
    #[arg(long = "allowed-host", env = "HUB_ALLOWED_HOSTS", value_delimiter = ',', value_parser = parse_host_name)]
    allowed_hosts: Vec<String>,
    /// Most concurrent live (SSE) subscribers; more get 503 with Retry-After.
    #[arg(long, env = "HUB_MAX_SUBSCRIBERS", default_value_t = 10_000)]
    max_subscribers: usize,
    /// MiB of recent events kept in memory for live subscribers; one further
    /// behind is caught up from the database.
    #[arg(long, env = "HUB_LIVE_BUFFER_MB", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    live_buffer_mb: u64,
    /// How often an idle live stream gets a keep-alive comment.
    #[arg(long, env = "HUB_KEEP_ALIVE", default_value = "15s", value_parser = parse_duration)]
    keep_alive: Duration,
    /// Reconnection delay suggested to browsers (the SSE `retry:` field).
    #[arg(long, env = "HUB_SSE_RETRY", default_value = "2s", value_parser = parse_duration)]
    sse_retry: Duration,
    /// Join a cluster of hubs sharing one ordered log on this NATS server's
    /// JetStream (nats://host:port; comma-separated for a NATS cluster).
    /// Devices are acknowledged once the stream holds their batch, and every
    /// hub stores every reading. Needs a database that only this cluster
    /// has written.
    #[arg(long, env = "HUB_NATS_URL", value_parser = parse_nats_url)]
    nats_url: Option<String>,
    /// The JetStream stream of the cluster, and the prefix of its subjects.
    #[arg(long, env = "HUB_NATS_STREAM", default_value = "telemetry", requires = "nats_url", value_parser = parse_stream_name)]
    nats_stream: String,
    /// This hub's name in the cluster (presence, logs); the host name and
    /// process id if not given.
    #[arg(long, env = "HUB_HUB_ID", requires = "nats_url", value_parser = parse_hub_id)]
    hub_id: Option<String>,
    /// Copies of the stream kept by a NATS cluster, when this hub creates
    /// the stream (1 to 5; 3 for a three-node NATS cluster).
    #[arg(long, env = "HUB_NATS_REPLICAS", default_value_t = 1, requires = "nats_url", value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_replicas: u8,
    /// Post alerts to this Prometheus Alertmanager (http://host:9093), as
    /// Prometheus does: firing ones again every --alertmanager-resend,
    /// resolved ones for 15 minutes, retried while it is away.
    #[arg(long, env = "HUB_ALERTMANAGER_URL", value_parser = parse_alertmanager_url)]
    alertmanager_url: Option<url::Url>,
    /// How often every firing alert is posted to Alertmanager again.
    #[arg(long, env = "HUB_ALERTMANAGER_RESEND", default_value = "1m", value_parser = parse_duration, requires = "alertmanager_url")]
    alertmanager_resend: Duration,
    /// How long the stream keeps readings, when this hub creates it: a hub
    /// that was down longer starts again from the oldest kept, and its
    /// browsers get a `reset`.
    #[arg(long, env = "HUB_NATS_MAX_AGE", default_value = "24h", requires = "nats_url", value_parser = parse_duration)]
    nats_max_age: Duration,
}

/// The systems `--mqtt-discovery` speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Discovery {
    /// Home Assistant's MQTT discovery, under `homeassistant/`.
    Homeassistant,
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Create a device and print its token (alone on standard output).
    /// With --nats-url: for every hub of the cluster (a device that exists
    /// gets a new token, and its old one stops working).
    Add {
        /// Device id: 1 to 64 characters of A-Z a-z 0-9 - _ . :
        id: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Put it in this group (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Put a device into groups or take it out of them, and print its
    /// groups. Keys limited to a group see its devices from their next
    /// request (a live stream from its next reconnect).
    Group {
        id: String,
        /// A group to join (repeat for more).
        #[arg(long = "add")]
        join: Vec<String>,
        /// A group to leave (repeat for more).
        #[arg(long = "remove")]
        leave: Vec<String>,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// Give an existing device a new token and print it (alone on standard
    /// output): its old token stops working, and the provisioning key no
    /// longer reaches it. For a device that lost the token it had.
    /// With --nats-url: on every hub of the cluster.
    Token {
        id: String,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
    /// List devices.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArg,
    },
    /// Show a device's configuration (desired against reported), or change
    /// it with key=value settings, through a running hub's API: the change
    /// is stored, then sent to the device now or when it next connects.
    Config(config::ConfigArgs),
    /// Revoke a device: its token stops working and a running hub closes its
    /// connection within a second.
    /// With --nats-url: on every hub of the cluster.
    Revoke {
        id: String,
        #[command(flatten)]
        db: DbArg,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

#[derive(Debug, Args)]
struct ClusterArg {
    /// Provision through a cluster's stream (see `hub serve --nats-url`)
    /// rather than one database: every hub applies it. --db is not used.
    #[arg(long, env = "HUB_NATS_URL", value_parser = parse_nats_url)]
    nats_url: Option<String>,
    /// The cluster's JetStream stream.
    #[arg(long, env = "HUB_NATS_STREAM", default_value = "telemetry", requires = "nats_url", value_parser = parse_stream_name)]
    nats_stream: String,
}

/// Parses a positive duration such as `500ms`, `10s`, `15m`, `2h`, `30d`.
///
/// # Errors
/// A message saying what a duration looks like.
pub fn parse_duration(text: &str) -> Result<Duration, Invalid> {
    let duration = parse_age(text)?;
    if duration.is_zero() {
        return Err("a duration must be longer than zero".into());
    }
    Ok(duration)
}

/// A duration that may be zero (`0s`: at once).
///
/// # Errors
/// Not a duration.
pub fn parse_age(text: &str) -> Result<Duration, Invalid> {
    device_sim::duration::parse(text).map_err(|err| Invalid(err.to_string()))
}

/// Runs the command line.
///
/// # Errors
/// Whatever the command failed with, for the binary to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let stop = shutdown_signal();
            let (hub, _) = start(*args).await?;
            hub.run_until_stopped(stop).await
        }
        Command::Demo(args) => demo(*args).await,
        Command::Device(command) => device(command).await,
        Command::Alert(command) => alert::run(command).await,
        Command::Key(command) => key::run(command).await,
        Command::Backup(args) => backup::run(args).await,
    }
}

/// The hub and a simulated fleet: the fleet stops at Ctrl-C (delivering what
/// it sampled), then the hub.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let DemoArgs {
        serve,
        devices,
        backfill,
    } = args;
    let stop = shutdown_signal();
    let (hub, addr) = start(serve).await?;
    let devices = usize::try_from(devices).unwrap_or(usize::MAX);
    let tokens = crate::demo::issue_tokens(hub.store(), devices).await?;
    crate::demo::add_rules(hub.store()).await?;
    let fleet = crate::demo::fleet(
        &addr.to_string(),
        device_sim::fleet::Credential::Keyring,
        tokens,
        devices,
        backfill,
    )?;
    println!(
        "monitor: http://{addr}/ ({devices} simulated devices, {} of history; Ctrl-C stops them, then the hub)",
        humantime::format_duration(backfill)
    );
    let fleet = tokio::spawn(device_sim::fleet::run(fleet));
    hub.run_until_stopped(async move {
        tokio::select! {
            _ = fleet => {}
            () = stop => {}
        }
    })
    .await
}

/// Checks the flags, starts logging, builds the hub and prints where it
/// listens.
async fn start(args: ServeArgs) -> anyhow::Result<(Hub, std::net::SocketAddr)> {
    if args.mqtt_ca_cert.is_some() && args.mqtt_url.as_ref().is_some_and(|url| !url.tls) {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--mqtt-ca-cert is for an mqtts:// --mqtt-url; this one is mqtt://",
            )
            .exit();
    }
    if let Some(template) = args
        .mqtt_ingest
        .iter()
        .find(|template| template.inside(&args.mqtt_prefix))
    {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--mqtt-ingest {template}: every topic it matches is under --mqtt-prefix {}/, \
                     where the bridge publishes, so it would take the hub's own readings in again",
                    args.mqtt_prefix
                ),
            )
            .exit();
    }
    if args.nats_url.is_some() && !args.mqtt_ingest.is_empty() {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--mqtt-ingest cannot be used with --nats-url yet: readings from MQTT carry no \
                 sequence to keep them once across the cluster's hubs",
            )
            .exit();
    }
    // Once per process: a second hub in it (the in-process tests) logs
    // through the first one's subscriber.
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colour_on_stderr()),
        )
        .with(args.log)
        .try_init();
    let keep = retention::Keep {
        readings: args.retention,
        minutes: args.rollup_retention,
        hours: args.rollup_retention_hours,
    };
    if keep
        .hours
        .is_some_and(|hours| keep.minutes.is_none_or(|minutes| hours < minutes))
    {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--rollup-retention-hours needs a --rollup-retention no longer than it: hours summarise minutes, and are kept at least as long",
            )
            .exit();
    }
    let monitor_protected = args.monitor_token.is_some();
    // Read before anything starts, so a bad --mqtt-ca-cert stops the hub
    // with its name.
    let mqtt_tls = match &args.mqtt_url {
        Some(broker) if broker.tls => Some(telemetry_device::tls::client_config(
            args.mqtt_ca_cert.as_deref(),
            "--mqtt-ca-cert",
        )?),
        _ => None,
    };
    let clustered = args.nats_url.is_some();
    let settings = Settings {
        listen: args.listen,
        db: args.db.db,
        provision_key: args.provision_key,
        provision_groups: args.provision_groups,
        timing: Timing {
            hello_timeout: args.hello_timeout,
            ping_interval: args.ping_interval,
            sample_interval: args.sample_interval,
        },
        device_limits: Limits {
            frames_per_s: (args.device_max_frames_per_s > 0)
                .then_some(args.device_max_frames_per_s),
            readings_per_s: (args.device_max_readings_per_s > 0)
                .then_some(args.device_max_readings_per_s),
        },
        max_devices: args.max_devices as usize,
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }),
        http: listener::Limits {
            header_read_timeout: args.header_read_timeout,
            max_header_bytes: args.max_header_bytes as usize,
            max_handshakes: args.max_handshakes as usize,
            max_connections: args.max_connections as usize,
        },
        retention: keep.deletes().then_some(Retention {
            keep,
            sweep_every: args.retention_sweep,
        }),
        compact_after: args.compact_after,
        monitor_token: args.monitor_token,
        allowed_hosts: args.allowed_hosts,
        max_subscribers: args.max_subscribers,
        live_buffer_bytes: usize::try_from(args.live_buffer_mb << 20).unwrap_or(usize::MAX),
        live: subscription::Timing {
            retry: args.sse_retry,
            keep_alive: args.keep_alive,
        },
        cluster: args.nats_url.map(|url| journal::Settings {
            url,
            stream: args.nats_stream,
            hub_id: args.hub_id.unwrap_or_else(default_hub_id),
            replicas: usize::from(args.nats_replicas),
            max_age: args.nats_max_age,
        }),
        alertmanager: args.alertmanager_url.map(|url| alertmanager::Settings {
            url,
            resend: args.alertmanager_resend,
        }),
        mqtt: args.mqtt_url.map(|broker| bridge::Settings {
            tls: broker.tls.then(|| mqtt_tls.clone()).flatten(),
            broker,
            username: args.mqtt_username,
            password: args.mqtt_password.map(bridge::Secret),
            client_id: args.mqtt_client_id,
            prefix: args.mqtt_prefix,
            qos: args.mqtt_qos,
            discovery: args.mqtt_discovery == Some(Discovery::Homeassistant),
            batch: args.mqtt_batch,
            dense_positions: !clustered,
            ingest: bridge::IngestSettings {
                templates: args.mqtt_ingest,
                register: args.mqtt_ingest_register,
            },
        }),
    };
    let tls = settings.tls.is_some();
    let hub = Hub::build(settings).await?;
    let addr = hub.local_addr()?;
    // On standard output, so scripts and tests can read the real port.
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("hub listening on {http}://{addr} (devices: {ws}://{addr}/v1/ws)");
    tracing::info!(%addr, "listening");
    if !addr.ip().is_loopback() && !monitor_protected {
        tracing::warn!(%addr, "the monitor API is open to anyone who can reach this address; set --monitor-token");
    }
    Ok((hub, addr))
}

async fn device(command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Add {
            id,
            name,
            groups,
            cluster:
                ClusterArg {
                    nats_url: Some(url),
                    nats_stream,
                },
            ..
        } => {
            check_groups("--group", &groups)?;
            let token = cluster_token(&url, &nats_stream, &id, name).await?;
            if !groups.is_empty() {
                let entry = AccessEntry::Device {
                    device: id.clone(),
                    name: None,
                    join: groups,
                    leave: Vec::new(),
                };
                journal::access::announce(&url, &nats_stream, &entry).await?;
            }
            print_out(&format!("{token}\n"))?;
            eprintln!("added {id} for every hub of stream {nats_stream}");
        }
        DeviceCommand::Token {
            id,
            cluster:
                ClusterArg {
                    nats_url: Some(url),
                    nats_stream,
                },
            ..
        } => {
            let token = cluster_token(&url, &nats_stream, &id, None).await?;
            print_out(&format!("{token}\n"))?;
            eprintln!("gave {id} a new token on every hub of stream {nats_stream}");
        }
        DeviceCommand::Token { id, db, .. } => {
            let store = open(&db).await?;
            if store.device(&id).await?.is_none() {
                anyhow::bail!(
                    "no device {id:?} in {}: add it with `hub device add`",
                    db.db.display()
                );
            }
            let token = store.issue_token(&id).await.context("issuing the token")?;
            store.close().await;
            print_out(&format!("{token}\n"))?;
        }
        DeviceCommand::Add {
            id,
            name,
            groups,
            db,
            ..
        } => {
            check_groups("--group", &groups)?;
            let store = open(&db).await?;
            match store.add_device(&id, name.as_deref()).await {
                Ok(token) => {
                    store.regroup_device(&id, &groups, &[]).await?;
                    print_out(&format!("{token}\n"))?;
                }
                Err(err @ (AddDeviceError::InvalidId | AddDeviceError::Exists(_))) => {
                    anyhow::bail!("{err}")
                }
                Err(err) => return Err(err).context("adding the device"),
            }
            store.close().await;
        }
        DeviceCommand::Group {
            id,
            join,
            leave,
            cluster:
                ClusterArg {
                    nats_url: Some(url),
                    nats_stream,
                },
            ..
        } => {
            check_groups("--add", &join)?;
            check_groups("--remove", &leave)?;
            let entry = AccessEntry::Device {
                device: id.clone(),
                name: None,
                join,
                leave,
            };
            journal::access::announce(&url, &nats_stream, &entry).await?;
            eprintln!("regrouped {id} on every hub of stream {nats_stream}");
        }
        DeviceCommand::Group {
            id,
            join,
            leave,
            db,
            ..
        } => {
            check_groups("--add", &join)?;
            check_groups("--remove", &leave)?;
            let store = open(&db).await?;
            let found = store.regroup_device(&id, &join, &leave).await?;
            let groups = store.groups_by_device().await?.remove(&id);
            store.close().await;
            if !found {
                anyhow::bail!("no device {id:?} in {}", db.db.display());
            }
            print_out(&format!("{}\n", groups.unwrap_or_default().join(",")))?;
        }
        DeviceCommand::Config(args) => config::run(args).await?,
        DeviceCommand::List { json, db } => {
            let store = open(&db).await?;
            let devices = store.list_devices().await?;
            let mut groups = store.groups_by_device().await?;
            let text = if json {
                let devices: Vec<serde_json::Value> = devices
                    .into_iter()
                    .map(|device| {
                        let mut value = serde_json::json!(device);
                        value["groups"] =
                            serde_json::json!(groups.remove(&device.id).unwrap_or_default());
                        value
                    })
                    .collect();
                format!("{}\n", serde_json::to_string_pretty(&devices)?)
            } else {
                let mut text = format!(
                    "{:<24} {:<20} {:>10} {:<8} {}\n",
                    "ID", "NAME", "LAST SEQ", "STATE", "GROUPS"
                );
                for device in devices {
                    let state = if device.revoked_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    let in_groups = groups.remove(&device.id).unwrap_or_default().join(",");
                    text.push_str(&format!(
                        "{:<24} {:<20} {:>10} {:<8} {}\n",
                        device.id,
                        device.name.as_deref().unwrap_or("-"),
                        device.last_seq,
                        state,
                        in_groups
                    ));
                }
                text
            };
            store.close().await;
            print_out(&text)?;
        }
        DeviceCommand::Revoke {
            id,
            cluster:
                ClusterArg {
                    nats_url: Some(url),
                    nats_stream,
                },
            ..
        } => {
            let change = DeviceChange::Revoked { device: id.clone() };
            journal::provision::announce(&url, &nats_stream, &change).await?;
            eprintln!("revoked {id} on every hub of stream {nats_stream}");
        }
        DeviceCommand::Revoke { id, db, .. } => {
            let store = open(&db).await?;
            if !store.revoke_device(&id).await? {
                anyhow::bail!("no device {id:?} in {}", db.db.display());
            }
            store.close().await;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

/// A group's name, for a flag.
fn parse_group(text: &str) -> Result<String, Invalid> {
    if crate::access::is_valid_group(text) {
        Ok(text.to_owned())
    } else {
        Err(Invalid(format!(
            "{text:?}: a group is 1 to 64 of A-Z a-z 0-9 - _ . :"
        )))
    }
}

/// Refuses group names that cannot be groups', naming the flag.
fn check_groups(flag: &str, groups: &[String]) -> Result<(), UsageError> {
    match groups.iter().find(|g| !crate::access::is_valid_group(g)) {
        Some(bad) => Err(UsageError(format!(
            "{flag} {bad:?}: a group is 1 to 64 of A-Z a-z 0-9 - _ . :"
        ))),
        None => Ok(()),
    }
}

/// Publishes a new token for `id` to a cluster's stream, for every hub;
/// returns the token.
async fn cluster_token(
    url: &str,
    stream: &str,
    id: &str,
    name: Option<String>,
) -> anyhow::Result<String> {
    let token = crate::auth::generate_token()?;
    let change = DeviceChange::Token {
        device: id.to_owned(),
        token_sha256: crate::auth::hash_token(&token).to_vec(),
        name,
    };
    journal::provision::announce(url, stream, &change).await?;
    Ok(token)
}

/// Alertmanager's base URL: http only (the hub's HTTP client has no TLS).
fn parse_alertmanager_url(text: &str) -> Result<url::Url, Invalid> {
    let url =
        url::Url::parse(text).map_err(|err| Invalid(format!("{text:?} is not a URL: {err}")))?;
    if url.scheme() != "http" || url.host().is_none() {
        return Err(format!(
            "{text:?}: an Alertmanager URL is http://host[:port][/path] (https is not supported yet: \
             reach it through a local proxy)"
        )
        .into());
    }
    // `join` keeps a path only up to its last `/`.
    let mut url = url;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// A host name as a `Host` header names it: letters, digits, `-` and `.`,
/// compared without regard to case.
fn parse_host_name(text: &str) -> Result<String, Invalid> {
    let name = text.trim().to_ascii_lowercase();
    if name.is_empty()
        || name.len() > 253
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
    {
        return Err(
            format!("{text:?} is not a host name (letters, digits, - and .; no port)").into(),
        );
    }
    Ok(name)
}

/// A monitor token: it travels in the `hub_token` cookie, whose value may
/// hold only RFC 6265's cookie octets (printable ASCII but space, `"`, `,`,
/// `;` and `\`). Another character would be cut off by the browser, and
/// every request refused.
fn parse_monitor_token(text: &str) -> Result<String, Invalid> {
    let cookie_octet = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | ',' | ';' | '\\');
    if text.is_empty() || text.len() > 256 || !text.chars().all(cookie_octet) {
        return Err(
            "a monitor token is 1 to 256 characters of printable ASCII other than space, \
             \" , ; and \\ (it travels in a cookie)"
                .into(),
        );
    }
    Ok(text.to_owned())
}

/// A topic prefix: one or more levels, no wildcards, no empty level.
fn parse_mqtt_prefix(text: &str) -> Result<String, Invalid> {
    if text.is_empty() || text.split('/').any(str::is_empty) || text.contains(['+', '#']) {
        return Err(format!(
            "{text:?} is not a topic prefix: levels separated by /, none empty, no + or #"
        )
        .into());
    }
    Ok(text.to_owned())
}

/// Writes `text` to standard output. A reader that has gone (`| head`) is
/// not an error: the command's work is done, and it exits quietly.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing to standard output"),
    }
}

async fn open(db: &DbArg) -> anyhow::Result<Store> {
    Store::open(&db.db, PoolDurability::EveryCommit)
        .await
        .with_context(|| format!("opening database {} (--db)", db.db.display()))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are in place once
/// this returns, before the hub says it listens: a supervisor's SIGTERM
/// right after that line stops the hub cleanly, where the default action
/// would have killed it.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let signals = signal(SignalKind::interrupt())
            .and_then(|interrupt| Ok((interrupt, signal(SignalKind::terminate())?)));
        async move {
            match signals {
                Ok((mut interrupt, mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGINT and SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

/// A `--nats-url`: one or more `nats://` (or `tls://`) servers.
fn parse_nats_url(text: &str) -> Result<String, Invalid> {
    for server in text.split(',') {
        let url = url::Url::parse(server.trim())
            .map_err(|err| format!("{server:?} is not a URL ({err}); use nats://host:port"))?;
        if !matches!(url.scheme(), "nats" | "tls") || url.host_str().is_none() {
            return Err(format!("{server:?}: use nats://host:port (or tls://host:port)").into());
        }
    }
    Ok(text.to_owned())
}

/// A JetStream stream name, which is also the cluster's subject prefix.
fn parse_stream_name(text: &str) -> Result<String, Invalid> {
    if text.is_empty()
        || text.len() > 32
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(
            "1 to 32 of A-Z a-z 0-9 - _ (it names the stream and prefixes its subjects)".into(),
        );
    }
    Ok(text.to_owned())
}

/// A hub id: what a device id may be.
fn parse_hub_id(text: &str) -> Result<String, Invalid> {
    if protocol::is_valid_device_id(text) {
        Ok(text.to_owned())
    } else {
        Err("1 to 64 of A-Z a-z 0-9 - _ . :".into())
    }
}

/// The default hub id: the host's name and the process id, so that two
/// hubs on one host never take each other's presence for their own.
fn default_hub_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.len() <= 48 && protocol::is_valid_device_id(name))
        .unwrap_or_else(|| "hub".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Whether logs may carry colour: only on a terminal, and not when
/// `NO_COLOR` is set to anything (no-color.org), so a log file or a pipe
/// reads as plain text.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(2_592_000)));
    }

    #[test]
    fn bad_durations_explain_themselves() {
        for text in ["", "10", "s", "10x", "0s", "-5s", "99999999999999999999d"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    /// The hub `hub serve` builds with `flags` on a fresh database, whose
    /// routes answer requests in-process.
    async fn router_of(flags: &[&str]) -> (axum::Router, Hub, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let mut args = vec!["hub", "serve", "--listen", "127.0.0.1:0", "--db"];
        args.push(db.to_str().unwrap());
        args.extend_from_slice(flags);
        let Command::Serve(serve) = Cli::try_parse_from(args).unwrap().command else {
            panic!("not hub serve");
        };
        let (hub, _) = start(*serve).await.unwrap();
        (hub.router(), hub, dir)
    }

    async fn request(router: &axum::Router, uri: &str) -> (u16, serde_json::Value) {
        use tower::ServiceExt;
        let request = axum::http::Request::get(uri)
            .header("host", "localhost")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn the_router_answers_in_process_and_bad_requests_get_a_json_error() {
        let (router, _hub, _dir) = router_of(&[]).await;
        let (status, health) = request(&router, "/healthz").await;
        assert_eq!((status, &health["status"]), (200, &"ok".into()), "{health}");
        let (status, devices) = request(&router, "/v1/devices").await;
        assert_eq!(status, 200, "{devices}");
        assert_eq!(
            devices["devices"].as_array().map(Vec::len),
            Some(0),
            "{devices}"
        );

        let (status, error) = request(&router, "/v1/readings?device=dev-1&limit=zero").await;
        assert_eq!(status, 400, "{error}");
        assert!(
            error["error"].is_string() && error["message"].is_string(),
            "{error}"
        );
    }

    #[tokio::test]
    async fn with_a_monitor_token_the_router_asks_for_it() {
        let (router, _hub, _dir) = router_of(&["--monitor-token", "t0k3n"]).await;
        let (status, error) = request(&router, "/v1/devices").await;
        assert_eq!(status, 401, "{error}");
        assert!(error["error"].is_string(), "{error}");
    }
}
