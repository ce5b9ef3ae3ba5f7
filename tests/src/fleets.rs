//! Simulated fleets for tests: devices that flush every 50 ms and
//! reconnect within 300 ms, so a test waits on the hub, not on them.

use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, Credential, FleetConfig, Summary};
use telemetry_device::backoff::Backoff;
use telemetry_device::endpoint;

use crate::TestHub;

/// The provisioning key the tests' hubs are started with (`--provision-key k`).
pub const PROVISION_KEY: &str = "k";

/// A quick device against `url`: `count` readings at `rate` a second, in
/// batches of 10, an outbox of 10,000.
pub fn quick_device(url: String, rate: f64, count: u64) -> DeviceSettings {
    DeviceSettings {
        rate: Some(rate),
        flush: Duration::from_millis(50),
        count: Some(count),
        buffer: 10_000,
        disk: None,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(300),
        },
        ..DeviceSettings::new(url)
    }
}

impl TestHub {
    /// The hub's device endpoint, `ws://…/v1/ws`.
    ///
    /// # Panics
    /// Never: the hub's address is a socket address.
    pub fn ws_url(&self) -> String {
        endpoint(&format!("ws://{}", self.addr)).expect("a socket address makes an endpoint")
    }

    /// A [`quick_device`] of this hub that keeps the tokens the hub issues
    /// in its [`keyring`](TestHub::keyring), so a fleet may run again.
    pub fn quick_device(&self, rate: f64, count: u64) -> DeviceSettings {
        DeviceSettings {
            keyring: self.keyring(),
            ..quick_device(self.ws_url(), rate, count)
        }
    }
}

/// `devices` devices of `settings`, enrolled with [`PROVISION_KEY`].
pub fn fleet_of(devices: usize, settings: DeviceSettings) -> FleetConfig {
    FleetConfig::new(
        devices,
        Credential::ProvisionKey(PROVISION_KEY.into()),
        settings,
    )
}

/// Two devices of this hub with `kinds`, one sample of each a second,
/// backfilled `seconds` into the past in batches of `batch`, run to their
/// end within two minutes.
///
/// # Panics
/// The fleet did not finish in time, or left readings unacknowledged.
pub async fn backfill(
    hub: &TestHub,
    kinds: Vec<device_sim::sensors::SensorKind>,
    seconds: u64,
    batch: usize,
) -> Summary {
    let per_second = kinds.len() as u64;
    let device = DeviceSettings {
        kinds,
        batch,
        backfill: Duration::from_secs(seconds),
        ..hub.quick_device(per_second as f64, per_second * seconds)
    };
    let summary = tokio::time::timeout(Duration::from_secs(120), fleet::run(fleet_of(2, device)))
        .await
        .expect("the backfill finished");
    assert!(summary.complete(), "{summary:?}");
    summary
}

/// Runs `config` to its end, within a minute, and checks that every
/// reading of every device was acknowledged.
///
/// # Panics
/// The fleet did not finish in time, or left readings unacknowledged.
pub async fn run_complete(config: FleetConfig) -> Summary {
    let summary = tokio::time::timeout(Duration::from_secs(60), fleet::run(config))
        .await
        .expect("the fleet finished");
    assert!(summary.complete(), "{summary:?}");
    summary
}
