//! `hub demo`: the hub with a simulated fleet in its own process, for a
//! first look. The fleet is device-sim's, as a library: devices carrying
//! every sensor kind, backfilled so the monitor's charts have history at
//! once, then sampling once a second.

use std::time::Duration;

use device_sim::backoff::Backoff;
use device_sim::device::{DeviceSettings, endpoint};
use device_sim::fleet::{Credential, FleetConfig};
use device_sim::sensors::SensorKind;

/// The fleet of `devices` devices for the hub at `addr`, registering
/// themselves with `provision_key`, their clocks starting `backfill` ago.
///
/// # Errors
/// `addr` does not make a device endpoint.
pub fn fleet(
    addr: &str,
    provision_key: &str,
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
        ..DeviceSettings::new(endpoint(&format!("ws://{addr}")).map_err(anyhow::Error::msg)?)
    };
    let mut config = FleetConfig::new(
        devices,
        Credential::ProvisionKey(provision_key.into()),
        device,
    );
    // Ctrl-C: what is sampled is delivered within this, then the hub stops.
    config.grace = Duration::from_secs(3);
    Ok(config)
}
