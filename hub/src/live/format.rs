//! Server-Sent Events text, formatted once per event and shared by every
//! subscriber.
//!
//! A reading becomes
//!
//! ```text
//! id: 42
//! event: reading
//! data: {"device":"d1","metric":"temperature","unit":"°C","ts_ms":1700000000000,"value":21.5}
//!
//! ```
//!
//! The JSON is assembled here rather than serialized per event: the
//! device/metric/unit part is escaped (by serde_json) once per metric
//! ([`reading_prefix`]) and only the numbers are formatted per reading,
//! which keeps publishing cheap.

use std::fmt::Write;

use crate::commits::EventKind;

/// `text` as a JSON string, quotes included.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serializes")
}

/// `{"device":…,"metric":…,"unit":…,` — the part of a reading's JSON that
/// is the same for every reading of one metric.
pub fn reading_prefix(device: &str, metric: &str, unit: &str) -> String {
    format!(
        "{{\"device\":{},\"metric\":{},\"unit\":{},",
        json_string(device),
        json_string(metric),
        json_string(unit)
    )
}

/// Appends one `reading` event to `out`.
pub fn reading(out: &mut String, pos: i64, prefix: &str, ts_ms: i64, value: Option<f64>) {
    let _ = write!(
        out,
        "id: {pos}\nevent: reading\ndata: {prefix}\"ts_ms\":{ts_ms},\"value\":"
    );
    match value {
        // Debug formatting is the shortest text that reads back as the same
        // f64, with an exponent for very large or small magnitudes, and is
        // valid JSON for every finite value.
        Some(v) if v.is_finite() => {
            let _ = write!(out, "{v:?}");
        }
        _ => out.push_str("null"),
    }
    out.push_str("}\n\n");
}

/// Appends a stored event (a `status`, say) to `out`: its position is its
/// id, as for a reading, so it is resumed alike.
pub fn event(out: &mut String, pos: i64, device: &str, ts_ms: i64, kind: &EventKind) {
    let _ = write!(
        out,
        "id: {pos}\nevent: {}\ndata: {}\n\n",
        kind.name(),
        kind.sse_data(pos, device, ts_ms)
    );
}

/// A `reset` event: the subscriber asked to resume after `requested`, but
/// readings after it are gone (deleted by retention) or the id is unknown.
/// `oldest` is the oldest position still held (0 if none).
pub fn reset(reason: &str, requested: i64, oldest: i64, resume_after: i64) -> String {
    format!(
        "event: reset\ndata: {{\"reason\":\"{reason}\",\"requested\":{requested},\"oldest\":{oldest},\"resume_after\":{resume_after}}}\n\n"
    )
}

/// The reconnection delay hint for `EventSource`, sent first.
pub fn retry(ms: u64) -> String {
    format!("retry: {ms}\n\n")
}

/// A comment that keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: &str = ": keep-alive\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn data_json(event: &str) -> serde_json::Value {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn a_reading_is_an_sse_event_with_its_position_as_id() {
        let mut out = String::new();
        reading(
            &mut out,
            42,
            &reading_prefix("d1", "temperature", "°C"),
            1_700_000_000_000,
            Some(21.5),
        );
        assert!(out.starts_with("id: 42\nevent: reading\ndata: "));
        assert!(out.ends_with("\n\n"));
        assert_eq!(
            data_json(&out),
            serde_json::json!({"device":"d1","metric":"temperature","unit":"°C","ts_ms":1_700_000_000_000_i64,"value":21.5})
        );
    }

    #[test]
    fn missing_values_are_null() {
        let mut out = String::new();
        reading(&mut out, 1, &reading_prefix("d", "m", ""), 0, None);
        assert_eq!(data_json(&out)["value"], serde_json::Value::Null);
    }

    #[test]
    fn values_read_back_exactly() {
        for v in [0.1, -3.0e-12, 1.7976931348623157e308, 5e-324, 123456789.123] {
            let mut out = String::new();
            reading(&mut out, 1, &reading_prefix("d", "m", ""), 0, Some(v));
            assert_eq!(data_json(&out)["value"].as_f64(), Some(v));
        }
    }

    #[test]
    fn names_are_escaped_and_stay_on_one_data_line() {
        let mut out = String::new();
        reading(
            &mut out,
            1,
            &reading_prefix("d", "a\"b\\c\nd\u{1}", "x\ty"),
            0,
            Some(1.0),
        );
        assert_eq!(out.lines().filter(|l| l.starts_with("data: ")).count(), 1);
        assert_eq!(data_json(&out)["metric"], "a\"b\\c\nd\u{1}");
        assert_eq!(data_json(&out)["unit"], "x\ty");
    }

    #[test]
    fn a_status_is_an_sse_event_with_its_position_as_id() {
        let mut out = String::new();
        event(&mut out, 7, "d1", 5, &EventKind::Status { online: true });
        assert!(out.starts_with("id: 7\nevent: status\ndata: "));
        assert!(out.ends_with("\n\n"));
        assert_eq!(
            data_json(&out),
            serde_json::json!({"device":"d1","online":true,"ts_ms":5})
        );
    }

    #[test]
    fn a_reset_carries_json_and_no_id() {
        let reset = reset("retention", 3, 10, 9);
        assert!(!reset.contains("id:"));
        assert!(reset.starts_with("event: reset\n"));
        assert_eq!(data_json(&reset)["oldest"], 10);
    }
}
