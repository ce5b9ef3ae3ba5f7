//! `hub demo`: the hub with a simulated fleet in its own process, for a
//! first look. The fleet is device-sim's, as a library: devices carrying
//! every sensor kind, backfilled so the monitor's charts have history at
//! once, then sampling once a second. A few alert rules come with it, and
//! the fleet's last device misbehaves now and then (too hot for a minute,
//! then silent for 50 seconds, every four minutes), so alerts fire,
//! resolve and can be acknowledged within the first minutes.

use std::sync::Arc;
use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{Credential, FleetConfig, Ids, device_id};
use device_sim::sensors::SensorKind;
use telemetry_device::backoff::Backoff;
use telemetry_device::endpoint;
use telemetry_device::keyring::Keyring;

use crate::alerts::definition_text;
use crate::alerts::rule::RuleSpec;
use crate::store::Store;

/// The demo's devices are `sim-01`, `sim-02`, …
const FLEET_PREFIX: &str = "sim-";

/// Gives each of the demo's `devices` devices (`sim-01`, …) a new token,
/// creating those the database lacks: a demo run again on the same file
/// finds its devices and streams on as them.
///
/// # Errors
/// The database refuses.
pub async fn issue_tokens(store: &Store, devices: usize) -> anyhow::Result<Keyring> {
    let mut tokens = Vec::with_capacity(devices);
    for index in 1..=devices {
        let id = device_id(FLEET_PREFIX, index, devices);
        let token = store.issue_token(&id).await?;
        tokens.push((id, token));
    }
    Ok(Keyring::with_tokens(tokens))
}

/// The demo's alert rules: a temperature band, silence, and offline.
fn rules() -> Vec<RuleSpec> {
    let rule = |name: &str, kind: &str| RuleSpec {
        name: name.into(),
        kind: kind.into(),
        ..RuleSpec::default()
    };
    vec![
        RuleSpec {
            metric: Some("temperature".into()),
            condition: Some("outside".into()),
            low: Some(5.0),
            high: Some(30.0),
            hold: Some("10s".into()),
            dead_band: Some(1.0),
            severity: Some("critical".into()),
            message: Some("{device} is at {value} °C, outside {limit}".into()),
            ..rule("temperature-band", "threshold")
        },
        RuleSpec {
            hold: Some("30s".into()),
            ..rule("quiet", "silence")
        },
        RuleSpec {
            hold: Some("1m".into()),
            ..rule("offline", "offline")
        },
    ]
}

/// Adds the demo's rules the database lacks (a demo run again keeps
/// whatever the user changed of them).
///
/// # Errors
/// The database refuses.
pub async fn add_rules(store: &Store) -> anyhow::Result<()> {
    for spec in rules() {
        let rule = spec.check()?;
        store
            .add_alert_rule(&rule.name, &definition_text(&rule))
            .await?;
    }
    Ok(())
}

/// The fleet of `devices` devices for the hub at `addr`, presenting
/// `credential` (the demo's: [`Credential::Keyring`], the tokens of
/// `keyring`), their clocks starting `backfill` ago.
///
/// # Errors
/// `addr` does not make a device endpoint.
pub fn fleet(
    addr: &str,
    credential: Credential,
    keyring: Keyring,
    devices: usize,
    backfill: Duration,
) -> anyhow::Result<FleetConfig> {
    let kinds = SensorKind::ALL.to_vec();
    let device = DeviceSettings {
        // One sample a second, every sensor read each time.
        rate: Some(kinds.len() as f64),
        kinds,
        // Backfilled batches go large; live ones are sealed within a second.
        batch: 250,
        flush: Duration::from_secs(1),
        backfill,
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        },
        keyring: Arc::new(keyring),
        ..DeviceSettings::new(endpoint(&format!("ws://{addr}")).map_err(anyhow::Error::msg)?)
    };
    let mut config = FleetConfig::new(devices, credential, device);
    config.ids = Ids::Numbered(FLEET_PREFIX.into());
    config.misbehaving = Some(device_id(FLEET_PREFIX, devices, devices));
    // Ctrl-C: what is sampled is delivered within this, then the hub stops.
    config.grace = Duration::from_secs(3);
    Ok(config)
}
