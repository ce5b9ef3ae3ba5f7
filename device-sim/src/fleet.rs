//! A fleet: N devices in one process, their shared counters, a live progress
//! line and the final summary.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::device::{self, DeviceSettings, DeviceSpec};
use crate::stats::{RttSummary, Stats};
use telemetry_device::rng::Rng;

/// How devices authenticate.
#[derive(Debug, Clone)]
pub enum Credential {
    /// One device with its own token.
    Token(String),
    /// Any number of devices registering with the fleet's provisioning key.
    ProvisionKey(String),
    /// No token: each device presents its client certificate
    /// ([`crate::device::DeviceSettings::client_certs`]).
    Certificate,
    /// Each device presents its own token from
    /// [`crate::device::DeviceSettings::keyring`].
    Keyring,
}

/// How the fleet's devices are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ids {
    /// A prefix and a zero-padded number: `sim-01`, `sim-02`, …
    Numbered(String),
    /// One device with exactly this id (the one its token was issued for).
    Exactly(String),
}

/// A fleet to run.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    pub ids: Ids,
    pub credential: Credential,
    pub seed: u64,
    /// Stop sampling after this long, deliver what is left, then give up
    /// after `grace` (Ctrl-C does the same).
    pub duration: Option<Duration>,
    pub grace: Duration,
    /// Show a live progress line on standard error.
    pub progress: bool,
    /// This device of the fleet misbehaves now and then (`hub demo`'s:
    /// see [`crate::sensors::Sensors::misbehaving`]).
    pub misbehaving: Option<String>,
    pub device: DeviceSettings,
}

impl FleetConfig {
    /// `devices` devices `sim-01`, `sim-02`, … presenting `credential`,
    /// sampling until stopped, quietly (no progress line), seed 1.
    pub fn new(devices: usize, credential: Credential, device: DeviceSettings) -> Self {
        FleetConfig {
            devices,
            ids: Ids::Numbered("sim-".into()),
            credential,
            seed: 1,
            duration: None,
            grace: Duration::from_secs(5),
            progress: false,
            misbehaving: None,
            device,
        }
    }
}

/// What a fleet did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub devices: usize,
    /// Devices whose every sampled reading was acknowledged.
    pub delivered_devices: usize,
    /// Readings put on the wire, resends included.
    pub sent: u64,
    /// Readings the hub acknowledged (each once).
    pub acked: u64,
    /// Readings dropped because a device's buffer was full.
    pub dropped: u64,
    pub reconnects: u64,
    pub commands: u64,
    /// Configurations the devices applied and refused, and the highest
    /// version any of them runs (0: none).
    pub configs_applied: u64,
    pub configs_refused: u64,
    pub config_version: u64,
    pub rtt: RttSummary,
    pub elapsed_s: f64,
    pub last_error: Option<String>,
}

impl Summary {
    /// Whether every device delivered everything it sampled.
    pub fn complete(&self) -> bool {
        self.delivered_devices == self.devices
    }
}

/// The id of the `index`-th device (from 1): prefix and a zero-padded number.
pub fn device_id(prefix: &str, index: usize, devices: usize) -> String {
    let width = devices.to_string().len();
    format!("{prefix}{index:0width$}")
}

/// Runs the fleet to its end and summarises it.
pub async fn run(config: FleetConfig) -> Summary {
    let stats = Arc::new(Stats::default());
    let settings = Arc::new(config.device.clone());
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let started = Instant::now();
    let mut rng = Rng::new(config.seed);
    // Spread the first connections over up to five seconds (a millisecond
    // per device), so a large fleet does not arrive as one burst.
    let ramp = Duration::from_millis(config.devices as u64).min(Duration::from_secs(5));

    let mut devices = JoinSet::new();
    for index in 1..=config.devices {
        let credential = match &config.credential {
            Credential::Token(token) | Credential::ProvisionKey(token) => token.clone(),
            Credential::Certificate | Credential::Keyring => String::new(),
        };
        let id = match &config.ids {
            Ids::Numbered(prefix) => device_id(prefix, index, config.devices),
            Ids::Exactly(id) => id.clone(),
        };
        let spec = DeviceSpec {
            misbehaves: config.misbehaving.as_ref() == Some(&id),
            id,
            credential,
            seed: config.seed.wrapping_add(index as u64),
            start_delay: ramp.mul_f64(rng.unit()),
        };
        devices.spawn(device::run(
            spec,
            Arc::clone(&settings),
            Arc::clone(&stats),
            stop.clone(),
            abort.clone(),
        ));
    }

    if let Some(duration) = config.duration {
        let (stop, abort, grace) = (stop.clone(), abort.clone(), config.grace);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
            tokio::time::sleep(grace).await;
            abort.cancel();
        });
    }
    {
        let (stop, abort, grace) = (stop.clone(), abort.clone(), config.grace);
        tokio::spawn(async move {
            // Ctrl-C: stop sampling and deliver what is left; give up after
            // the grace period or at a second Ctrl-C.
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    () = tokio::time::sleep(grace) => {}
                }
                abort.cancel();
            }
        });
    }
    let progress = config
        .progress
        .then(|| tokio::spawn(show_progress(Arc::clone(&stats), config.devices)));

    let mut delivered_devices = 0;
    while let Some(done) = devices.join_next().await {
        if done.unwrap_or(false) {
            delivered_devices += 1;
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    Summary {
        devices: config.devices,
        delivered_devices,
        sent: stats.sent.load(Relaxed),
        acked: stats.acked.load(Relaxed),
        dropped: stats.dropped.load(Relaxed),
        reconnects: stats.reconnects.load(Relaxed),
        commands: stats.commands.load(Relaxed),
        configs_applied: stats.configs_applied.load(Relaxed),
        configs_refused: stats.configs_refused.load(Relaxed),
        config_version: stats.config_version.load(Relaxed),
        rtt: stats.rtt(),
        elapsed_s: (started.elapsed().as_secs_f64() * 1_000.0).round() / 1_000.0,
        last_error: stats.last_error(),
    }
}

async fn show_progress(stats: Arc<Stats>, devices: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut sent, mut acked) = (0, 0);
    let terminal = std::io::stderr().is_terminal();
    loop {
        tick.tick().await;
        let (now_sent, now_acked) = (stats.sent.load(Relaxed), stats.acked.load(Relaxed));
        let rtt = stats.rtt();
        let line = format!(
            "connected {}/{devices} | sent {}/s acked {}/s | rtt p50 {:.1} ms p99 {:.1} ms | reconnects {} | dropped {}",
            stats.connected.load(Relaxed),
            now_sent - sent,
            now_acked - acked,
            rtt.p50_ms,
            rtt.p99_ms,
            stats.reconnects.load(Relaxed),
            stats.dropped.load(Relaxed),
        );
        (sent, acked) = (now_sent, now_acked);
        // Why some device is not connected, while one is not.
        let line = match stats.last_reason() {
            Some(reason) if stats.connected.load(Relaxed) < devices as u64 => {
                format!("{line} | last error: {reason}")
            }
            _ => line,
        };
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_padded_to_sort_in_order() {
        assert_eq!(device_id("sim-", 7, 1_000), "sim-0007");
        assert_eq!(device_id("sim-", 1, 1), "sim-1");
    }
}
