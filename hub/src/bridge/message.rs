//! What the bridge publishes: topics and JSON payloads (README, "MQTT").

use serde::Serialize;

use crate::store::query::ReadingRow;

/// One topic level from a name: MQTT gives `/` a meaning and forbids `+`
/// and `#` in the topics a client publishes to, and brokers refuse control
/// characters (Mosquitto drops the connection over one), so each becomes
/// `_`, as does an empty name. `Hello` refuses all of them in metric
/// names; a database from before it did may still hold some, and one such
/// name must not stall the bridge for every device.
pub fn level(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `{prefix}/{device}/{metric}`.
pub fn reading_topic(prefix: &str, row: &ReadingRow) -> String {
    format!("{prefix}/{}/{}", level(&row.device), level(&row.metric))
}

/// `{prefix}/{device}/status`: `online` or `offline`, retained; cleared
/// (an empty retained payload) when the device is revoked.
pub fn device_status_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{}/status", level(device))
}

/// `{prefix}/{device}/alert/{rule}`: the latest alert of a rule on a
/// device (`GET /v1/alerts`' JSON: `state` is `firing`, `acknowledged` or
/// `resolved`), retained.
pub fn alert_topic(prefix: &str, device: &str, rule: &str) -> String {
    format!("{prefix}/{}/alert/{}", level(device), level(rule))
}

/// `{prefix}/+/cmd`: where commands for devices come in.
pub fn command_filter(prefix: &str) -> String {
    format!("{prefix}/+/cmd")
}

/// The device a `{prefix}/{device}/cmd` topic is for.
pub fn command_device<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let device = rest.strip_suffix("/cmd")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// `{prefix}/{device}/cmd/result`: where a command's answer goes.
pub fn command_result_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/cmd/result")
}

/// `{prefix}/{device}/config`: where the device's configuration stands
/// (`GET /v1/devices/{id}/config`'s JSON), retained.
pub fn config_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{}/config", level(device))
}

/// `{prefix}/+/config/set`: where configuration changes come in.
pub fn config_set_filter(prefix: &str) -> String {
    format!("{prefix}/+/config/set")
}

/// The device a `{prefix}/{device}/config/set` topic is for.
pub fn config_set_device<'t>(prefix: &str, topic: &'t str) -> Option<&'t str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let device = rest.strip_suffix("/config/set")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// `{prefix}/{device}/config/set/result`: how a change went.
pub fn config_result_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{device}/config/set/result")
}

/// `{prefix}/hub/{hub id}/status`: `online` while connected, the last will
/// `offline` otherwise; retained.
pub fn hub_status_topic(prefix: &str, hub_id: &str) -> String {
    format!("{prefix}/hub/{hub_id}/status")
}

/// A message of the hub's own (a status, a discovery config, a command's
/// answer): published at QoS 1, outside the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Own {
    /// A retained message; an empty payload clears the topic.
    pub fn retained(topic: String, payload: impl Into<Vec<u8>>) -> Own {
        Own {
            topic,
            payload: payload.into(),
            retain: true,
        }
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    pos: i64,
    ts_ms: i64,
    value: Option<f64>,
    unit: &'a str,
}

/// `{"pos":…,"ts_ms":…,"value":…,"unit":"…"}`, `value` null for NaN or an
/// infinity (stored as NULL).
pub fn reading_payload(row: &ReadingRow) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        pos: row.pos,
        ts_ms: row.ts_ms,
        value: row.value,
        unit: &row.unit,
    })
    .unwrap_or_default()
}

/// `{prefix}/{device}`: a device's readings as one message, with
/// `--mqtt-batch`.
pub fn batch_topic(prefix: &str, device: &str) -> String {
    format!("{prefix}/{}", level(device))
}

#[derive(Serialize)]
struct BatchEntry<'a> {
    pos: i64,
    metric: &'a str,
    ts_ms: i64,
    value: Option<f64>,
    unit: &'a str,
}

/// The largest `--mqtt-batch` payload the bridge makes (the entry that
/// crosses it is the last): rumqttc's packet limit is set above it.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// A page's rows with each device's together: devices in the order they
/// first appear, each one's rows in storage order. [`take_batch`] then
/// takes a run from the front, so a page of many devices costs one pass.
pub fn group_by_device(rows: Vec<ReadingRow>) -> Vec<ReadingRow> {
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Vec<ReadingRow>> = Vec::new();
    for row in rows {
        let at = *index.entry(row.device.clone()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(row);
    }
    groups.into_iter().flatten().collect()
}

/// Takes the run of the first row's device from the front of `page` (see
/// [`group_by_device`]), up to [`MAX_BATCH_BYTES`] of payload: a JSON array
/// of `{"pos","metric","ts_ms","value","unit"}`.
pub fn take_batch(
    page: &mut std::collections::VecDeque<ReadingRow>,
) -> Option<(Vec<ReadingRow>, Vec<u8>)> {
    let device = page.front()?.device.clone();
    let mut payload = vec![b'['];
    let mut taken = Vec::new();
    while payload.len() < MAX_BATCH_BYTES
        && let Some(row) = page.pop_front_if(|row| row.device == device)
    {
        if !taken.is_empty() {
            payload.push(b',');
        }
        let entry = BatchEntry {
            pos: row.pos,
            metric: &row.metric,
            ts_ms: row.ts_ms,
            value: row.value,
            unit: &row.unit,
        };
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut payload, &entry);
        taken.push(row);
    }
    payload.push(b']');
    Some((taken, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, value: Option<f64>) -> ReadingRow {
        ReadingRow {
            pos: 7,
            device: "boiler-3".into(),
            metric: metric.into(),
            unit: "°C".into(),
            ts_ms: 1_764_300_000_000,
            value,
        }
    }

    #[test]
    fn a_reading_goes_to_its_device_and_metric() {
        assert_eq!(
            reading_topic("telemetry", &row("temperature", Some(21.5))),
            "telemetry/boiler-3/temperature"
        );
        assert_eq!(
            String::from_utf8(reading_payload(&row("temperature", Some(21.5)))).unwrap(),
            r#"{"pos":7,"ts_ms":1764300000000,"value":21.5,"unit":"°C"}"#
        );
        assert_eq!(
            String::from_utf8(reading_payload(&row("t", None))).unwrap(),
            r#"{"pos":7,"ts_ms":1764300000000,"value":null,"unit":"°C"}"#
        );
    }

    #[test]
    fn commands_come_in_on_their_devices_topic() {
        assert_eq!(
            command_device("telemetry", "telemetry/sim-1/cmd"),
            Some("sim-1")
        );
        assert_eq!(command_device("a/b", "a/b/sim-1/cmd"), Some("sim-1"));
        assert_eq!(
            command_device("telemetry", "telemetry/sim-1/cmd/result"),
            None
        );
        assert_eq!(command_device("telemetry", "telemetry//cmd"), None);
        assert_eq!(command_device("telemetry", "telemetryx/sim-1/cmd"), None);
        assert_eq!(command_device("telemetry", "telemetry/a/b/cmd"), None);
    }

    #[test]
    fn a_batch_takes_one_devices_rows_in_order_and_leaves_the_rest() {
        let at = |pos, device: &str| ReadingRow {
            pos,
            device: device.into(),
            ..row("t", Some(1.0))
        };
        let mut page: std::collections::VecDeque<ReadingRow> =
            group_by_device(vec![at(1, "a"), at(2, "b"), at(3, "a"), at(4, "b")]).into();
        let (rows, payload) = take_batch(&mut page).unwrap();
        assert_eq!(rows.iter().map(|r| r.pos).collect::<Vec<_>>(), [1, 3]);
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(payload[1]["pos"], 3);
        assert_eq!(payload[1]["metric"], "t");
        assert_eq!(page.iter().map(|r| r.pos).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(batch_topic("telemetry", "a"), "telemetry/a");
        let (rows, _) = take_batch(&mut page).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(take_batch(&mut page).is_none());
    }

    #[test]
    fn a_batch_stops_near_its_byte_limit() {
        let mut page: std::collections::VecDeque<ReadingRow> = (1..=2_000)
            .map(|pos| ReadingRow {
                pos,
                ..row("temperature", Some(21.5))
            })
            .collect();
        let (rows, payload) = take_batch(&mut page).unwrap();
        assert!(payload.len() < MAX_BATCH_BYTES + 200, "{}", payload.len());
        assert!(serde_json::from_slice::<serde_json::Value>(&payload).is_ok());
        assert_eq!(rows.len() + page.len(), 2_000);
        assert_eq!(page.front().map(|r| r.pos), Some(rows.len() as i64 + 1));
    }

    #[test]
    fn names_cannot_add_levels_or_wildcards() {
        assert_eq!(level("a/b+c#d"), "a_b_c_d");
        assert_eq!(level(""), "_");
        assert_eq!(level("°C ok"), "°C ok");
        assert_eq!(level("tab\there\0\u{85}"), "tab_here__");
    }
}
