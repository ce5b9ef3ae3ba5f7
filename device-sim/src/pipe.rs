//! `device-sim pipe`: one device sending what a script prints, so that
//! `read-sensor.sh | device-sim pipe --id boiler-3 --metric temperature:°C …`
//! puts any sensor on the hub, through the device library and, with
//! `--outbox`, its outbox on disk.
//!
//! The one format read, a reading per line, fields separated by spaces or
//! tabs:
//!
//! ```text
//! metric value [unit] [time]
//! ```
//!
//! * `metric`: a name given with `--metric name[:unit]`;
//! * `value`: a number (`nan` for "the sensor gave none");
//! * `unit`: if given, the one `--metric` declares;
//! * `time`: Unix seconds (`1765119600`, `1765119600.250`) or RFC 3339
//!   (`2026-12-07T15:00:00Z`); without it, when the line was read.
//!
//! Blank lines and lines starting with `#` are skipped. Any other line
//! that does not fit (CSV, JSON, an unknown metric) is reported on standard
//! error with its number and skipped, never fatal. At the end of input the
//! last batch is sealed and the pipe waits for the hub to acknowledge
//! everything.

use std::time::UNIX_EPOCH;

use protocol::MetricDescriptor;
use serde::Serialize;
use telemetry_device::{Device, Event};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// A reading read from a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub metric: u16,
    pub value: f64,
    /// Ms since the Unix epoch; `None`: now.
    pub time_ms: Option<u64>,
}

/// `--metric name[:unit]`: the metrics lines may name, with ids from 1 in
/// the order given.
///
/// # Errors
/// A name that is empty or has spaces.
pub fn metrics(specs: &[String]) -> Result<Vec<MetricDescriptor>, String> {
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let (name, unit) = spec.split_once(':').unwrap_or((spec, ""));
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!(
                    "{spec:?}: a metric is name or name:unit, without spaces"
                ));
            }
            Ok(MetricDescriptor {
                id: u16::try_from(index + 1).map_err(|_| "too many metrics".to_owned())?,
                name: name.to_owned(),
                unit: unit.to_owned(),
            })
        })
        .collect()
}

/// Reads one line: `Ok(None)` for a blank or comment line.
///
/// # Errors
/// The line is not `metric value [unit] [time]`; the message says what is
/// wrong with it.
pub fn parse(line: &str, metrics: &[MetricDescriptor]) -> Result<Option<Line>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split_whitespace().collect();
    let expected = "expected `metric value [unit] [time]`";
    if fields.len() == 1 && (line.contains(',') || line.starts_with('{')) {
        return Err(format!("not CSV or JSON: {expected}"));
    }
    let (name, value, rest) = match fields.as_slice() {
        [name, value, rest @ ..] if rest.len() <= 2 => (*name, *value, rest),
        _ => return Err(format!("{} fields: {expected}", fields.len())),
    };
    let metric = metrics.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        format!(
            "unknown metric {name:?} (--metric gives {})",
            known.join(", ")
        )
    })?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("the value {value:?} is not a number"))?;
    let (unit, time) = match rest {
        [] => (None, None),
        [one] => match parse_time(one) {
            Some(time) => (None, Some(time)),
            None => (Some(*one), None),
        },
        [unit, time] => (
            Some(*unit),
            Some(parse_time(time).ok_or_else(|| {
                format!("the time {time:?} is neither Unix seconds nor RFC 3339")
            })?),
        ),
        _ => unreachable!("at most two more fields"),
    };
    if let Some(unit) = unit
        && unit != metric.unit
    {
        return Err(format!(
            "unit {unit:?}, but --metric declares {name} in {:?}",
            metric.unit
        ));
    }
    Ok(Some(Line {
        metric: metric.id,
        value,
        time_ms: time,
    }))
}

/// Unix seconds (with a fraction, maybe) or RFC 3339, as ms.
fn parse_time(text: &str) -> Option<u64> {
    if text.starts_with(|c: char| c.is_ascii_digit()) && !text.contains(['-', ':']) {
        let seconds: f64 = text.parse().ok()?;
        return (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1_000.0).round() as u64);
    }
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

/// What a pipe did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub readings: u64,
    pub bad_lines: u64,
    /// Readings dropped because the outbox was full.
    pub dropped: u64,
    /// Readings not acknowledged when it stopped (kept on disk with
    /// `--outbox`).
    pub unacknowledged: u64,
}

/// Sends every reading of `input` as `device`, then waits for the hub to
/// acknowledge them all, or for `stop` (Ctrl-C).
///
/// # Errors
/// Reading the input or writing the outbox failed.
pub async fn run(
    device: &mut Device,
    input: impl AsyncBufRead + Unpin,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let metrics = device.metrics().to_vec();
    let mut lines = input.lines();
    let mut summary = Summary::default();
    let mut open = true;
    let mut last_reason = None;
    tokio::pin!(stop);
    loop {
        if !open && device.unacknowledged() == 0 {
            break;
        }
        // Act after the select: both branches need the device.
        let step = tokio::select! {
            () = &mut stop => break,
            event = device.poll() => Ok(event?),
            line = lines.next_line(), if open => Err(line?),
        };
        match step {
            Ok(Event::Refused(reason) | Event::HubError(reason) | Event::Lost(Some(reason))) => {
                if last_reason.as_ref() != Some(&reason) {
                    tracing::warn!(device = device.id(), "{reason}");
                    last_reason = Some(reason);
                }
            }
            Ok(Event::Connected { .. }) => last_reason = None,
            Ok(Event::Command(command)) => device.reply(protocol::CommandResult {
                id: command.id,
                ok: command.name == "ping",
                detail: match command.name.as_str() {
                    "ping" => "pong".into(),
                    other => format!("a pipe carries out no {other:?}"),
                },
            }),
            Ok(Event::Config(config)) => device.answer(protocol::ConfigResult {
                version: config.version,
                ok: false,
                detail: "a pipe takes no configuration".into(),
            }),
            Ok(_) => {}
            Err(Some(text)) => {
                summary.lines += 1;
                match parse(&text, &metrics) {
                    Ok(None) => {}
                    Ok(Some(line)) => {
                        device.send(
                            line.metric,
                            line.value,
                            line.time_ms.unwrap_or_else(telemetry_device::now_ms),
                        )?;
                        summary.readings += 1;
                    }
                    Err(why) => {
                        summary.bad_lines += 1;
                        eprintln!("line {}: {why}: {text:?}", summary.lines);
                    }
                }
            }
            Err(None) => {
                open = false;
                device.seal()?;
            }
        }
    }
    summary.dropped = device.dropped();
    summary.unacknowledged = device.unacknowledged() as u64;
    device.close().await;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Vec<MetricDescriptor> {
        metrics(&["temperature:°C".into(), "door".into()]).unwrap()
    }

    fn read(line: &str) -> Result<Option<Line>, String> {
        parse(line, &declared())
    }

    #[test]
    fn metrics_are_numbered_in_order_with_their_units() {
        let metrics = declared();
        assert_eq!((metrics[0].id, metrics[0].unit.as_str()), (1, "°C"));
        assert_eq!((metrics[1].id, metrics[1].unit.as_str()), (2, ""));
        assert!(super::metrics(&[":°C".into()]).is_err());
    }

    #[test]
    fn a_line_is_a_metric_a_value_and_maybe_a_unit_and_a_time() {
        let line = |metric, value, time_ms| {
            Some(Line {
                metric,
                value,
                time_ms,
            })
        };
        assert_eq!(read("temperature 21.5"), Ok(line(1, 21.5, None)));
        assert_eq!(read("temperature\t21.5 °C"), Ok(line(1, 21.5, None)));
        assert_eq!(
            read("temperature 21.5 1765119600.25"),
            Ok(line(1, 21.5, Some(1_765_119_600_250)))
        );
        assert_eq!(
            read("temperature 21.5 °C 2026-12-07T15:00:00Z"),
            Ok(line(1, 21.5, Some(1_796_655_600_000)))
        );
        assert_eq!(read("door 1"), Ok(line(2, 1.0, None)));
        assert!(read("door nan").unwrap().unwrap().value.is_nan());
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        assert_eq!(read("   "), Ok(None));
        assert_eq!(read("# from the boiler"), Ok(None));
    }

    #[test]
    fn other_lines_are_refused_saying_why() {
        for (line, why) in [
            ("temperature,21.5", "not CSV or JSON"),
            (
                r#"{"metric":"temperature","value":21.5}"#,
                "not CSV or JSON",
            ),
            ("temperature", "1 fields"),
            ("pressure 1013", "unknown metric \"pressure\""),
            ("temperature warm", "not a number"),
            ("temperature 21.5 K", "declares temperature in \"°C\""),
            ("temperature 21.5 °C yesterday", "neither Unix seconds"),
            ("temperature 21.5 °C 1 2", "5 fields"),
        ] {
            let err = read(line).unwrap_err();
            assert!(err.contains(why), "{line:?}: {err}");
        }
    }
}
