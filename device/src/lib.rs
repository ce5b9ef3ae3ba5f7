//! The device side of the telemetry hub: connect to a hub, send readings
//! that are kept until the hub has committed them, and take its commands
//! and configurations. What `device-sim` runs, ten thousand at a time, is
//! this crate; embed it in a gateway's or a sensor's program.
//!
//! * [`Device`]: one device. [`Device::send`] records a reading in its
//!   [`outbox`] (in memory, or on disk so that it survives the device's
//!   crash or power cut: [`Storage::Disk`], [`journal`]); [`Device::poll`]
//!   connects, reconnects with [`backoff`], sends and resends what the hub
//!   lacks, and reports [`Event`]s.
//! * [`link`]: the handshake alone (`Hello`, `Welcome`), for tests and
//!   tools that speak the protocol frame by frame; [`reason`]: why a
//!   connection failed, in words.
//! * [`tls`]: whom a `wss://` hub must be vouched for by, and a client
//!   certificate to present instead of a token; [`keyring`]: tokens the
//!   hub issues to devices registering with its provisioning key.
//!
//! # Example
//!
//! A device with one metric, its outbox on disk, that answers `ping`:
//!
//! ```no_run
//! use protocol::{CommandResult, MetricDescriptor};
//! use telemetry_device::{Credential, Device, Durability, Event, Options, Storage};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut options = Options::new(
//!     "boiler-3",
//!     telemetry_device::endpoint("ws://hub.local:8080")?,
//!     Credential::Token(std::env::var("DEVICE_TOKEN")?),
//! );
//! options.metrics = vec![MetricDescriptor { id: 1, name: "temperature".into(), unit: "°C".into() }];
//! options.storage = Storage::Disk {
//!     dir: "/var/lib/boiler-3/outbox".into(),
//!     max_bytes: 64 << 20,
//!     durability: Durability::PowerCut,
//! };
//! let mut device = Device::open(options)?;
//! let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
//! loop {
//!     // Act after the select: both branches need the device.
//!     let event = tokio::select! {
//!         event = device.poll() => Some(event?),
//!         _ = every_second.tick() => None,
//!     };
//!     match event {
//!         None => device.send(1, read_thermometer(), telemetry_device::now_ms())?,
//!         Some(Event::Command(command)) => device.reply(CommandResult {
//!             id: command.id,
//!             ok: command.name == "ping",
//!             detail: String::new(),
//!         }),
//!         Some(Event::Refused(why)) => eprintln!("cannot connect: {why}"),
//!         Some(_) => {}
//!     }
//! }
//! # }
//! # fn read_thermometer() -> f64 { 21.5 }
//! ```
//!
//! `examples/pipe.rs` is a complete program; `device-sim pipe` puts any
//! script's output on the hub with it.

pub mod backoff;
pub mod device;
pub mod journal;
pub mod keyring;
pub mod link;
pub mod outbox;
pub mod reason;
pub mod rng;
pub mod tls;

pub use device::{Credential, Device, Event, Options, SendError, State, Storage};
pub use journal::Durability;

/// Milliseconds since the Unix epoch, now: a reading's time.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The hub's device endpoint for an address given by a user: a `ws://` or
/// `wss://` URL with a host; `/v1/ws` becomes its path unless it names
/// one. A query string is kept.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
