//! What a simulated device does with the configuration the hub sends it
//! (protocol version 3): the settings it understands, checked whole before
//! any is applied, so a refused configuration changes nothing. Pure.
//!
//! Understood: `sample_interval_ms` (a whole number, 10 to 86,400,000),
//! `batch` (readings per batch, 1 to 4,096) and `metrics` (the names of the
//! metrics to send, a non-empty list of the device's own). A key left out
//! is the device's default again. Anything else is refused with its name.

use std::time::Duration;

use serde_json::{Map, Value};

const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 10..=86_400_000;
const BATCH_RANGE: std::ops::RangeInclusive<u64> = 1..=4_096;

/// The settings a configuration gives; `None`: the device's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub interval: Option<Duration>,
    pub batch: Option<usize>,
    /// Which of the device's metrics to send.
    pub metrics: Option<Vec<String>>,
}

/// Reads `json` (a whole configuration) for a device whose metrics are
/// `known`.
///
/// # Errors
/// Why the device refuses it: the first key it does not know or value out
/// of range, in words for the hub to show.
pub fn read(json: &str, known: &[&str]) -> Result<Settings, String> {
    let map: Map<String, Value> =
        serde_json::from_str(json).map_err(|err| format!("not a JSON object: {err}"))?;
    let mut settings = Settings::default();
    for (key, value) in &map {
        match key.as_str() {
            "sample_interval_ms" => {
                let ms = whole(value, INTERVAL_RANGE_MS)
                    .ok_or_else(|| out_of_range(key, value, &INTERVAL_RANGE_MS))?;
                settings.interval = Some(Duration::from_millis(ms));
            }
            "batch" => {
                let batch = whole(value, BATCH_RANGE)
                    .ok_or_else(|| out_of_range(key, value, &BATCH_RANGE))?;
                settings.batch = Some(usize::try_from(batch).unwrap_or(usize::MAX));
            }
            "metrics" => settings.metrics = Some(metrics(value, known)?),
            other => return Err(format!("unknown key: {other}")),
        }
    }
    Ok(settings)
}

fn whole(value: &Value, range: std::ops::RangeInclusive<u64>) -> Option<u64> {
    let n = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    })?;
    range.contains(&n).then_some(n)
}

fn out_of_range(key: &str, value: &Value, range: &std::ops::RangeInclusive<u64>) -> String {
    format!(
        "{key} must be a whole number from {} to {}, got {value}",
        range.start(),
        range.end()
    )
}

fn metrics(value: &Value, known: &[&str]) -> Result<Vec<String>, String> {
    let names = value
        .as_array()
        .filter(|names| !names.is_empty())
        .ok_or_else(|| format!("metrics must be a non-empty list of names, got {value}"))?;
    names
        .iter()
        .map(|name| match name.as_str() {
            Some(name) if known.contains(&name) => Ok(name.to_owned()),
            _ => Err(format!(
                "metrics: this device has no metric {name}; it has {}",
                known.join(", ")
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["temperature", "humidity"];

    #[test]
    fn the_settings_it_understands_are_read() {
        let settings = read(
            r#"{"sample_interval_ms":5000,"batch":2,"metrics":["humidity"]}"#,
            KNOWN,
        )
        .unwrap();
        assert_eq!(settings.interval, Some(Duration::from_secs(5)));
        assert_eq!(settings.batch, Some(2));
        assert_eq!(settings.metrics, Some(vec!["humidity".to_owned()]));
        assert_eq!(read("{}", KNOWN).unwrap(), Settings::default());
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name() {
        let err = read(r#"{"sample_interval_ms":500,"colour":"red"}"#, KNOWN).unwrap_err();
        assert_eq!(err, "unknown key: colour");
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_range() {
        for json in [
            r#"{"sample_interval_ms":5}"#,
            r#"{"sample_interval_ms":"fast"}"#,
            r#"{"sample_interval_ms":1.5}"#,
            r#"{"batch":0}"#,
            r#"{"metrics":[]}"#,
            r#"{"metrics":["pressure"]}"#,
        ] {
            assert!(read(json, KNOWN).is_err(), "{json}");
        }
        let err = read(r#"{"batch":5000}"#, KNOWN).unwrap_err();
        assert!(err.contains("1 to 4096"), "{err}");
    }
}
