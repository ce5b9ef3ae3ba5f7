//! What the hub's unit tests share: a device's `Hello`.

use protocol::{Hello, MetricDescriptor, PROTOCOL_VERSION};

/// The `Hello` of a test device: `device_id`, of this protocol version,
/// with one metric, temperature in °C, as metric id 1.
pub fn hello(device_id: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        device_id: device_id.into(),
        model: "m".into(),
        firmware: "f".into(),
        metrics: vec![MetricDescriptor {
            id: 1,
            name: "temperature".into(),
            unit: "°C".into(),
        }],
    }
}
