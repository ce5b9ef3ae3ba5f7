//! `device-sim`: run simulated devices against a hub.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use device_sim::backoff::Backoff;
use device_sim::device::{DeviceSettings, endpoint};
use device_sim::duration;
use device_sim::fleet::{self, Credential, FleetConfig, Ids};
use device_sim::keyring::Keyring;
use device_sim::sensors::SensorKind;
use device_sim::tls::{self, ClientCerts};

/// Simulated telemetry devices: one to ten thousand, reconnecting with
/// backoff and resending whatever the hub has not acknowledged.
#[derive(Debug, Parser)]
#[command(name = "device-sim", version)]
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
    /// Most unacknowledged batches a device keeps; when full, the oldest is
    /// dropped and counted.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    buffer: u64,
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
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_max_level(tracing::Level::WARN)
        .init();
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
    let tls = match (args.hub.secure(), &args.ca_cert) {
        (true, ca_cert) => match tls::client_config(ca_cert.as_deref(), "--ca-cert") {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("error: {err:#}");
                return ExitCode::from(2);
            }
        },
        (false, Some(_)) => {
            eprintln!("error: --ca-cert applies only to a wss:// --hub");
            return ExitCode::from(2);
        }
        (false, None) => None,
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
