//! Home Assistant MQTT discovery (`--mqtt-discovery homeassistant`): a
//! retained sensor config per device metric, so every device appears in
//! Home Assistant by itself, and an empty retained payload to clear them.
//!
//! Checked against Home Assistant's "MQTT" (discovery) and "MQTT Sensor"
//! integration pages (README, "Home Assistant").

use serde::Serialize;

use super::message::{device_status_topic, hub_status_topic, level};
use crate::store::devices::DeviceRecord;
use crate::store::query::MetricInfo;

/// Home Assistant's default discovery prefix.
pub const PREFIX: &str = "homeassistant";

/// Where Home Assistant says `online` when it starts: configs are
/// published again then.
pub const HOME_ASSISTANT_STATUS: &str = "homeassistant/status";

/// A name as a discovery id: Home Assistant allows `[a-zA-Z0-9_-]` in
/// node and object ids. Letters, digits and `-` stay; every other byte
/// becomes `_` and two uppercase hex digits (`boiler.3` → `boiler_2E3`), so
/// two names never map to one id.
pub fn id(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02X}"));
        }
    }
    out
}

/// The node id of a device: the bridge's prefix and the device, joined by
/// `__` (which [`id`] never makes), so hubs with other prefixes do not
/// overwrite each other's configs.
fn node_id(prefix: &str, device: &str) -> String {
    format!("{}__{}", id(prefix), id(device))
}

/// `homeassistant/sensor/{node id}/{metric id}/config`.
pub fn config_topic(prefix: &str, device: &str, metric: &str) -> String {
    format!(
        "{PREFIX}/sensor/{}/{}/config",
        node_id(prefix, device),
        id(metric)
    )
}

/// The `device_class` that fits a metric, and the unit Home Assistant
/// expects with it; `None` where none fits (vibration, say: `speed` would
/// let Home Assistant convert the unit).
fn device_class(metric: &str, unit: &str) -> Option<(&'static str, &'static str)> {
    let class = match metric {
        "temperature" => "temperature",
        "humidity" => "humidity",
        "pressure" => "pressure",
        "battery" => "battery",
        _ => return None,
    };
    let unit = match (class, unit) {
        ("temperature", "°C") => "°C",
        ("temperature", "°F") => "°F",
        ("temperature", "K") => "K",
        // Relative humidity is a percentage.
        ("humidity", "%" | "%RH") | ("battery", "%") => "%",
        ("pressure", unit) => [
            "Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi",
        ]
        .into_iter()
        .find(|known| *known == unit)?,
        _ => return None,
    };
    Some((class, unit))
}

#[derive(Serialize)]
struct Config<'a> {
    name: &'a str,
    unique_id: String,
    state_topic: String,
    value_template: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    unit_of_measurement: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_class: Option<&'static str>,
    state_class: &'static str,
    /// The device's status and the hub's: both must say `online`.
    availability: [Availability; 2],
    availability_mode: &'static str,
    device: Device<'a>,
    origin: Origin,
}

#[derive(Serialize)]
struct Availability {
    topic: String,
    payload_available: &'static str,
    payload_not_available: &'static str,
}

#[derive(Serialize)]
struct Device<'a> {
    identifiers: [String; 1],
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sw_version: Option<&'a str>,
}

#[derive(Serialize)]
struct Origin {
    name: &'static str,
    sw_version: &'static str,
}

/// What every config says published it.
const ORIGIN: Origin = Origin {
    name: "telemetry-hub",
    sw_version: env!("CARGO_PKG_VERSION"),
};

impl<'a> Device<'a> {
    /// The Home Assistant device of a hub device, under its node id.
    fn of(node: String, device: &'a DeviceRecord) -> Device<'a> {
        Device {
            identifiers: [node],
            name: non_empty(&device.name).unwrap_or(&device.id),
            model: non_empty(&device.model),
            sw_version: non_empty(&device.firmware),
        }
    }
}

fn availability(topic: String) -> Availability {
    Availability {
        topic,
        payload_available: "online",
        payload_not_available: "offline",
    }
}

fn non_empty(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|text| !text.is_empty())
}

/// The sensor config of one metric of a device.
pub fn config_payload(
    prefix: &str,
    hub_id: &str,
    device: &DeviceRecord,
    metric: &MetricInfo,
) -> Vec<u8> {
    let class = device_class(&metric.name, &metric.unit);
    let node = node_id(prefix, &device.id);
    let config = Config {
        name: &metric.name,
        unique_id: format!("{node}__{}", id(&metric.name)),
        state_topic: format!("{prefix}/{}/{}", level(&device.id), level(&metric.name)),
        // A stored NaN is published as null, which renders as `None`:
        // Home Assistant shows that as unknown.
        value_template: "{{ value_json.value }}",
        unit_of_measurement: class.map_or(metric.unit.as_str(), |(_, unit)| unit),
        device_class: class.map(|(class, _)| class),
        state_class: "measurement",
        availability: [
            availability(device_status_topic(prefix, &device.id)),
            availability(hub_status_topic(prefix, hub_id)),
        ],
        availability_mode: "all",
        device: Device::of(node, device),
        origin: ORIGIN,
    };
    serde_json::to_vec(&config).unwrap_or_default()
}

/// `homeassistant/binary_sensor/{node id}/alert__{rule id}/config`.
pub fn alert_config_topic(prefix: &str, device: &str, rule: &str) -> String {
    format!(
        "{PREFIX}/binary_sensor/{}/alert__{}/config",
        node_id(prefix, device),
        id(rule)
    )
}

#[derive(Serialize)]
struct AlertConfig<'a> {
    name: String,
    unique_id: String,
    state_topic: String,
    value_template: &'static str,
    device_class: &'static str,
    /// The hub's status only: an offline alert must show while its device
    /// is offline.
    availability: [Availability; 1],
    device: Device<'a>,
    origin: Origin,
}

/// The `problem` binary sensor of one rule on a device: on while its alert
/// fires (acknowledged or not), off once resolved.
pub fn alert_config_payload(
    prefix: &str,
    hub_id: &str,
    device: &DeviceRecord,
    rule: &str,
) -> Vec<u8> {
    let node = node_id(prefix, &device.id);
    let config = AlertConfig {
        name: format!("alert {rule}"),
        unique_id: format!("{node}__alert__{}", id(rule)),
        state_topic: super::message::alert_topic(prefix, &device.id, rule),
        value_template: "{{ 'OFF' if value_json.state == 'resolved' else 'ON' }}",
        device_class: "problem",
        availability: [availability(hub_status_topic(prefix, hub_id))],
        device: Device::of(node, device),
        origin: ORIGIN,
    };
    serde_json::to_vec(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            name: None,
            model: Some("sim-v1".into()),
            firmware: Some("1.2.3".into()),
            created_ms: 0,
            revoked_ms: None,
            last_seen_ms: None,
            last_seq: 0,
        }
    }

    fn metric(name: &str, unit: &str) -> MetricInfo {
        MetricInfo {
            name: name.into(),
            unit: unit.into(),
        }
    }

    fn config(metric_name: &str, unit: &str) -> serde_json::Value {
        serde_json::from_slice(&config_payload(
            "telemetry",
            "00ab",
            &device("sim-1"),
            &metric(metric_name, unit),
        ))
        .unwrap()
    }

    #[test]
    fn an_alert_becomes_a_problem_sensor_of_its_device() {
        assert_eq!(
            alert_config_topic("telemetry", "sim-1", "warm"),
            "homeassistant/binary_sensor/telemetry__sim-1/alert__warm/config"
        );
        let config: serde_json::Value = serde_json::from_slice(&alert_config_payload(
            "telemetry",
            "00ab",
            &device("sim-1"),
            "warm",
        ))
        .unwrap();
        assert_eq!(config["device_class"], "problem");
        assert_eq!(config["state_topic"], "telemetry/sim-1/alert/warm");
        assert_eq!(config["device"]["identifiers"][0], "telemetry__sim-1");
        assert_eq!(config["unique_id"], "telemetry__sim-1__alert__warm");
    }

    #[test]
    fn ids_keep_what_home_assistant_allows_and_escape_the_rest() {
        assert_eq!(id("sim-1"), "sim-1");
        assert_eq!(id("boiler.3"), "boiler_2E3");
        assert_eq!(id("a_b"), "a_5Fb");
        assert_eq!(id("°C"), "_C2_B0C");
        assert_ne!(id("a.b"), id("a_b"));
    }

    #[test]
    fn a_metric_becomes_a_sensor_of_its_device() {
        assert_eq!(
            config_topic("telemetry", "sim-1", "temperature"),
            "homeassistant/sensor/telemetry__sim-1/temperature/config"
        );
        let config = config("temperature", "°C");
        assert_eq!(config["unique_id"], "telemetry__sim-1__temperature");
        assert_eq!(config["state_topic"], "telemetry/sim-1/temperature");
        assert_eq!(config["value_template"], "{{ value_json.value }}");
        assert_eq!(config["unit_of_measurement"], "°C");
        assert_eq!(config["device_class"], "temperature");
        assert_eq!(config["state_class"], "measurement");
        assert_eq!(config["availability_mode"], "all");
        assert_eq!(config["availability"][0]["topic"], "telemetry/sim-1/status");
        assert_eq!(
            config["availability"][1]["topic"],
            "telemetry/hub/00ab/status"
        );
        assert_eq!(config["device"]["identifiers"][0], "telemetry__sim-1");
        assert_eq!(config["device"]["name"], "sim-1");
        assert_eq!(config["device"]["model"], "sim-v1");
        assert_eq!(config["device"]["sw_version"], "1.2.3");
    }

    #[test]
    fn device_classes_only_where_the_unit_fits() {
        assert_eq!(config("humidity", "%RH")["device_class"], "humidity");
        assert_eq!(config("humidity", "%RH")["unit_of_measurement"], "%");
        assert_eq!(config("pressure", "hPa")["device_class"], "pressure");
        assert_eq!(config("battery", "%")["device_class"], "battery");
        assert!(config("vibration", "mm/s").get("device_class").is_none());
        assert_eq!(config("vibration", "mm/s")["unit_of_measurement"], "mm/s");
        // A temperature in an odd unit stays a plain sensor.
        assert!(config("temperature", "mV").get("device_class").is_none());
        assert!(config("count", "").get("unit_of_measurement").is_none());
    }
}
