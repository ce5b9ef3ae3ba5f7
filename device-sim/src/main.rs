//! `device-sim`: run simulated devices against a hub.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use device_sim::certs::ClientCerts;
use device_sim::device::{DeviceSettings, DiskOutbox};
use device_sim::duration;
use device_sim::fleet::{self, Credential, FleetConfig, Ids};
use device_sim::sensors::SensorKind;
use telemetry_device::backoff::Backoff;
use telemetry_device::keyring::Keyring;
use telemetry_device::tls;
use telemetry_device::{Durability, endpoint};

/// Simulated telemetry devices: one to ten thousand, reconnecting with
/// backoff and resending whatever the hub has not acknowledged.
#[derive(Debug, Parser)]
#[command(
    name = "device-sim",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    fleet: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One device sending the readings a script prints on standard input,
    /// one per line: `metric value [unit] [time]` (time in Unix seconds or
    /// RFC 3339; without it, when the line is read). Bad lines are reported
    /// with their number and skipped; at the end of input it waits for the
    /// hub to acknowledge everything.
    Pipe(PipeArgs),
}

#[derive(Debug, clap::Args)]
struct PipeArgs {
    /// The hub: ws://host:port or wss://host:port.
    #[arg(long, env = "SIM_HUB", default_value = "ws://127.0.0.1:8080", value_parser = endpoints)]
    hub: Endpoints,
    /// PEM file of the CA that signed a wss:// hub's certificate, or the
    /// hub's self-signed certificate itself.
    #[arg(long, env = "SIM_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The device's id.
    #[arg(long)]
    id: String,
    /// The device's own token (from `hub device add`).
    #[arg(
        long,
        env = "SIM_TOKEN",
        hide_env_values = true,
        required_unless_present = "client_cert"
    )]
    token: Option<String>,
    /// PEM certificate the device presents instead of a token (wss://).
    #[arg(long, requires = "client_key", conflicts_with = "token")]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// A metric lines may name, `name` or `name:unit` (repeat for more).
    #[arg(long = "metric", required = true)]
    metrics: Vec<String>,
    /// Readings per batch (frame).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=protocol::limits::MAX_READINGS_PER_BATCH as u64))]
    batch: u64,
    /// Longest a reading waits for its batch to fill.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    flush: Duration,
    #[command(flatten)]
    outbox: OutboxArgs,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Where devices keep what the hub has not acknowledged.
#[derive(Debug, clap::Args)]
struct OutboxArgs {
    /// Keep the outbox on disk in this folder (a device's in a folder of
    /// its own, named by its id): what was sampled and not acknowledged
    /// survives a crash or a power cut and is sent when the device starts
    /// again. Without it, the outbox is in memory (--buffer).
    #[arg(long, env = "SIM_OUTBOX")]
    outbox: Option<PathBuf>,
    /// Most bytes a device's outbox on disk holds (23 per reading); when
    /// full, its oldest eighth is dropped and counted. 64KiB at least.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes, requires = "outbox")]
    outbox_max: u64,
    /// What a reading must survive before it counts as sampled: `power-cut`
    /// (flushed to the disk, a disk flush per reading) or `process` (written
    /// to the operating system: survives the process being killed).
    #[arg(long, default_value = "power-cut", value_parser = parse_durability, requires = "outbox")]
    durability: Durability,
}

impl OutboxArgs {
    fn disk(&self) -> Option<DiskOutbox> {
        self.outbox.as_ref().map(|root| DiskOutbox {
            root: root.clone(),
            max_bytes: self.outbox_max,
            durability: self.durability,
        })
    }
}

/// `64MiB`, `512KiB`, `1GiB` or a number of bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?}: a size is bytes or KiB, MiB, GiB")),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?}: a size is bytes or KiB, MiB, GiB"))?;
    if bytes < telemetry_device::journal::MIN_BYTES {
        return Err(format!("{text:?}: an outbox holds at least 64KiB"));
    }
    Ok(bytes)
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "power-cut" => Ok(Durability::PowerCut),
        "process" => Ok(Durability::Process),
        _ => Err(format!("{text:?}: power-cut or process")),
    }
}

#[derive(Debug, clap::Args)]
struct Args {
    /// The hub: ws://host:port or wss://host:port (the device path /v1/ws
    /// is added unless a path is given). Several, comma-separated (the hubs
    /// of a cluster): devices connect to the first and, after a failed
    /// attempt or a lost connection, to the next, in turn.
    #[arg(long, env = "SIM_HUB", default_value = "ws://127.0.0.1:8080", value_parser = endpoints)]
    hub: Endpoints,
    /// PEM file of the CA that signed a wss:// hub's certificate, or of the
    /// hub's self-signed certificate itself, trusted besides the system's
    /// roots.
    #[arg(long, env = "SIM_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// How many devices to simulate.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    devices: u64,
    /// Device ids are this prefix and a number (sim-001, sim-002, …).
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// The id of a single device (the one its --token was issued for).
    #[arg(long, conflicts_with = "id_prefix")]
    id: Option<String>,
    /// One device's own token (from `hub device add`); needs --devices 1.
    #[arg(
        long,
        env = "SIM_TOKEN",
        hide_env_values = true,
        conflicts_with = "provision_key",
        required_unless_present_any = ["provision_key", "client_cert", "client_ca_cert"]
    )]
    token: Option<String>,
    /// PEM certificate one device presents to a wss:// hub instead of a
    /// token (the hub's --tls-client-ca must have signed it; its CN is the
    /// device id). Needs --client-key and --id.
    #[arg(long, requires_all = ["client_key", "id"], conflicts_with = "client_ca_cert")]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// A CA certificate (PEM) from which every device is issued its own
    /// certificate at start, its CN the device id, presented to a wss:// hub
    /// instead of a token. Needs --client-ca-key.
    #[arg(long, requires = "client_ca_key")]
    client_ca_cert: Option<PathBuf>,
    /// The PEM private key of --client-ca-cert.
    #[arg(long, requires = "client_ca_cert")]
    client_ca_key: Option<PathBuf>,
    /// The hub's provisioning key: every device registers itself with it,
    /// and the hub issues each its own token, which it presents from then
    /// on (the key no longer reaches it).
    #[arg(long, env = "SIM_PROVISION_KEY", hide_env_values = true)]
    provision_key: Option<String>,
    /// With --provision-key: the group new devices ask to join (repeat for
    /// more); the hub allows those its --provision-group lists. Without
    /// it, they join every group the key puts devices in.
    #[arg(long = "group", requires = "provision_key", value_parser = parse_group)]
    groups: Vec<String>,
    /// Where devices keep the tokens the hub issues them (`device-id
    /// token` lines, created readable by its owner only); read at start,
    /// so a fleet run again against the same hub gets in with them.
    /// Without it, issued tokens live as long as this process.
    #[arg(long, env = "SIM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Readings per second per device (every sample reads every metric);
    /// without it, devices sample at the interval the hub announces.
    #[arg(long, allow_negative_numbers = true)]
    rate: Option<f64>,
    /// Readings per batch (frame).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=protocol::limits::MAX_READINGS_PER_BATCH as u64))]
    batch: u64,
    /// Longest a reading waits for its batch to fill.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    flush: Duration,
    /// Sensors each device carries, comma-separated: temperature, humidity,
    /// pressure, vibration, battery.
    #[arg(long, value_delimiter = ',', default_value = "temperature,humidity")]
    metrics: Vec<SensorKind>,
    /// Stop sampling after this long (then deliver what is left).
    #[arg(long, value_parser = duration::parse)]
    duration: Option<Duration>,
    /// Readings per device; exit once all are acknowledged. With --duration,
    /// exit non-zero if they were not all delivered in time.
    #[arg(long)]
    count: Option<u64>,
    /// Seed for reproducible sensor values and timing.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most unacknowledged batches a device keeps in memory; when full, the
    /// oldest is dropped and counted.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "outbox")]
    buffer: u64,
    #[command(flatten)]
    outbox: OutboxArgs,
    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    backoff_cap: Duration,
    /// Start every device's clock this long ago (2h): those samples are sent
    /// as fast as the hub acknowledges them, then sampling carries on live at
    /// the rate. --count counts them too.
    #[arg(long, default_value = "0s", value_parser = duration::parse)]
    backfill: Duration,
    /// Offset added to every device's clock: 90s, or -5m for a clock behind.
    #[arg(long, default_value = "0s", allow_hyphen_values = true, value_parser = parse_signed_duration)]
    clock_skew: i64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Parses `90s` or `-5m` into signed milliseconds.
fn parse_signed_duration(text: &str) -> Result<i64, String> {
    let (sign, magnitude) = text.strip_prefix('-').map_or((1, text), |rest| (-1, rest));
    let ms = duration::parse(magnitude)
        .map_err(|err| err.to_string())?
        .as_millis();
    i64::try_from(ms)
        .map(|ms| sign * ms)
        .map_err(|_| format!("{text:?} is too long"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_max_level(tracing::Level::WARN)
        .init();
    match cli.command {
        Some(Command::Pipe(args)) => pipe(args).await,
        None => fleet(cli.fleet).await,
    }
}

/// Whom a wss:// hub must chain to, from `--ca-cert`; `None` for ws://.
fn trust(
    hub: &Endpoints,
    ca_cert: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    match (hub.secure(), ca_cert) {
        (true, ca_cert) => tls::client_config(ca_cert, "--ca-cert")
            .map(Some)
            .map_err(|err| format!("{err:#}")),
        (false, Some(_)) => Err("--ca-cert applies only to a wss:// --hub".into()),
        (false, None) => Ok(None),
    }
}

async fn pipe(args: PipeArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("error: {message}");
        ExitCode::from(2)
    };
    if !protocol::is_valid_device_id(&args.id) {
        return fail(format!(
            "--id {:?}: an id is 1 to 64 of A-Z a-z 0-9 - _ . :",
            args.id
        ));
    }
    let metrics = match device_sim::pipe::metrics(&args.metrics) {
        Ok(metrics) => metrics,
        Err(err) => return fail(format!("--metric {err}")),
    };
    let mut tls = match trust(&args.hub, args.ca_cert.as_deref()) {
        Ok(tls) => tls,
        Err(err) => return fail(err),
    };
    let credential = match (&args.token, &args.client_cert, &args.client_key) {
        (Some(token), _, _) => telemetry_device::Credential::Token(token.clone()),
        (None, Some(cert), Some(key)) => {
            let Some(base) = &tls else {
                return fail("client certificates need a wss:// --hub".into());
            };
            match telemetry_device::tls::Identity::from_pem_files(cert, key) {
                Ok(identity) => tls = Some(identity.presented_with(base)),
                Err(err) => return fail(format!("--client-cert: {err:#}")),
            }
            telemetry_device::Credential::Certificate
        }
        _ => return fail("--token or --client-cert is needed".into()),
    };
    let mut options =
        telemetry_device::Options::new(args.id.clone(), args.hub.0[0].clone(), credential);
    options.urls = args.hub.0.clone();
    options.tls = tls;
    options.model = "device-sim pipe".into();
    options.metrics = metrics;
    options.batch = args.batch as usize;
    options.flush = args.flush;
    if let Some(disk) = args.outbox.disk() {
        options.storage = telemetry_device::Storage::Disk {
            dir: disk.root.join(&args.id),
            max_bytes: disk.max_bytes,
            durability: disk.durability,
        };
    }
    let mut device = match telemetry_device::Device::open(options) {
        Ok(device) => device,
        Err(err) => return fail(format!("--outbox: {err}")),
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let summary = match device_sim::pipe::run(&mut device, stdin, stop).await {
        Ok(summary) => summary,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        println!(
            "{} lines: {} readings, {} bad lines skipped, {} dropped (outbox full), {} not acknowledged",
            summary.lines,
            summary.readings,
            summary.bad_lines,
            summary.dropped,
            summary.unacknowledged
        );
    }
    match summary.unacknowledged {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

async fn fleet(args: Args) -> ExitCode {
    if args.token_file.is_some() && args.provision_key.is_none() {
        eprintln!("error: --token-file keeps the tokens the hub issues; it needs --provision-key");
        return ExitCode::from(2);
    }
    let credential = match (args.token, args.provision_key) {
        (Some(_), _) if args.devices > 1 => {
            eprintln!(
                "error: --token authenticates one device; use --provision-key for --devices {}",
                args.devices
            );
            return ExitCode::from(2);
        }
        (Some(token), _) => Credential::Token(token),
        (None, Some(key)) => Credential::ProvisionKey(key),
        (None, None) => Credential::Certificate,
    };
    let certs = match (
        &args.client_cert,
        &args.client_key,
        &args.client_ca_cert,
        &args.client_ca_key,
    ) {
        (Some(cert), Some(key), _, _) => Some(("--client-cert", ClientCerts::one(cert, key))),
        (_, _, Some(cert), Some(key)) => {
            Some(("--client-ca-cert", ClientCerts::issued_by(cert, key)))
        }
        _ => None,
    };
    let client_certs = match certs {
        None => None,
        Some(_) if !args.hub.secure() => {
            eprintln!("error: client certificates need a wss:// --hub");
            return ExitCode::from(2);
        }
        Some((_, Ok(certs))) => Some(std::sync::Arc::new(certs)),
        Some((flag, Err(err))) => {
            eprintln!("error: {flag}: {err:#}");
            return ExitCode::from(2);
        }
    };
    if args
        .rate
        .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
    {
        eprintln!("error: --rate must be a positive number of readings per second");
        return ExitCode::from(2);
    }
    if args.id.is_some() && args.devices > 1 {
        eprintln!(
            "error: --id names one device; use --id-prefix for --devices {}",
            args.devices
        );
        return ExitCode::from(2);
    }
    let keyring = match &args.token_file {
        None => Keyring::in_memory(),
        Some(path) => match Keyring::open(path) {
            Ok(keyring) => keyring,
            Err(err) => {
                eprintln!("error: --token-file: {err:#}");
                return ExitCode::from(2);
            }
        },
    };
    let tls = match trust(&args.hub, args.ca_cert.as_deref()) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let config = FleetConfig {
        devices: args.devices as usize,
        ids: match args.id {
            Some(id) => Ids::Exactly(id),
            None => Ids::Numbered(args.id_prefix),
        },
        credential,
        seed: args.seed,
        duration: args.duration,
        grace: Duration::from_secs(10),
        progress: !args.json,
        misbehaving: None,
        device: DeviceSettings {
            url: args.hub.0[0].clone(),
            other_urls: args.hub.0[1..].to_vec(),
            kinds: args.metrics,
            rate: args.rate,
            batch: args.batch as usize,
            flush: args.flush,
            count: args.count,
            buffer: args.buffer as usize,
            disk: args.outbox.disk(),
            backoff: Backoff {
                cap: args.backoff_cap,
                ..Backoff::default()
            },
            clock_skew_ms: args.clock_skew,
            backfill: args.backfill,
            tls,
            client_certs,
            keyring: std::sync::Arc::new(keyring),
            groups: args.groups.into(),
        },
    };
    let summary = fleet::run(config).await;
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        println!(
            "{} devices ({} delivered everything) in {:.1} s: sent {}, acked {}, dropped {}, reconnects {}, rtt p50 {} ms p99 {} ms",
            summary.devices,
            summary.delivered_devices,
            summary.elapsed_s,
            summary.sent,
            summary.acked,
            summary.dropped,
            summary.reconnects,
            summary.rtt.p50_ms,
            summary.rtt.p99_ms,
        );
        if summary.configs_applied + summary.configs_refused > 0 {
            println!(
                "configuration: version {} runs; {} applied, {} refused",
                summary.config_version, summary.configs_applied, summary.configs_refused
            );
        }
        if let Some(error) = &summary.last_error {
            println!("last error: {error}");
        }
    }
    if args.count.is_some() && !summary.complete() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `--hub`: one endpoint or more.
#[derive(Debug, Clone)]
struct Endpoints(Vec<String>);

impl Endpoints {
    /// Whether the devices connect over TLS (all of them, then).
    fn secure(&self) -> bool {
        self.0.iter().any(|url| url.starts_with("wss://"))
    }
}

/// A group's name: 1 to 64 of `A-Z a-z 0-9 - _ . :`, as a device id.
fn parse_group(text: &str) -> Result<String, String> {
    if protocol::is_valid_device_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?}: a group is 1 to 64 of A-Z a-z 0-9 - _ . :"
        ))
    }
}

fn endpoints(text: &str) -> Result<Endpoints, String> {
    let urls = text
        .split(',')
        .map(|hub| endpoint(hub.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoints(urls))
}

/// Whether logs may carry colour: only on a terminal, and not when
/// `NO_COLOR` is set to anything (no-color.org).
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
