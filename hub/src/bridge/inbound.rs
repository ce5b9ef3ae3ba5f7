//! Readings from devices that already speak MQTT (`--mqtt-ingest
//! TEMPLATE`): subscribed at QoS 1, stored through the writer like a
//! WebSocket batch (so they are on the SSE stream, in `/v1/readings` and in
//! SQLite), and acknowledged to the broker only after the commit. A hub that
//! dies in between leaves them unacknowledged in its persistent session, and
//! the broker delivers them again.
//!
//! MQTT gives a reading no sequence number, so a redelivery is recognised
//! by its time: a reading whose payload carries `ts_ms` is not stored when
//! its metric already holds one at that millisecond (`Dedupe::ByTime`). One
//! timed by the hub's clock (a bare number) cannot be told from a new
//! reading and is stored again: send `ts_ms` where duplicates matter.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use protocol::is_valid_device_id;
use protocol::limits::{MAX_METRICS_PER_DEVICE, MAX_TEXT_LEN};
use rumqttc::{AsyncClient, Publish};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::Heard;
use super::status::Status;
use crate::admission::{Admission, AdmitError, Admitted};
use crate::commits::Sample;
use crate::invalid::Invalid;
use crate::store::now_ms;
use crate::store::writer::{Dedupe, WriteError, WriteOutcome, WriterHandle};

/// Messages taken into one round of commits at most; the broker's own
/// in-flight limit (Mosquitto: 20 by default) is usually lower. The channel
/// from the event loop is as deep: when it is full the loop waits, and so
/// the broker's socket does.
pub const BATCH: usize = 256;

/// How long a device's row (and whether it is revoked) is trusted before
/// it is read again.
const RECHECK: Duration = Duration::from_secs(2);

/// The latest `ts_ms` taken (year 9999): past it is not a time.
const MAX_TS_MS: i64 = 253_402_300_799_999;

/// One level of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Device,
    Metric,
}

/// A topic template such as `sensors/{device}/{metric}`: each placeholder
/// stands for one topic level (subscribed as `+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    levels: Vec<Level>,
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Template {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        let levels: Vec<Level> = text
            .split('/')
            .map(|level| match level {
                "{device}" => Ok(Level::Device),
                "{metric}" => Ok(Level::Metric),
                "" => Err("a topic level is empty".to_owned()),
                _ if level.contains(['+', '#', '{', '}']) => Err(format!(
                    "{level:?} is neither a plain topic level nor {{device}} or {{metric}}"
                )),
                _ => Ok(Level::Literal(level.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        for placeholder in [Level::Device, Level::Metric] {
            let count = levels.iter().filter(|l| **l == placeholder).count();
            if count != 1 {
                let name = if placeholder == Level::Device {
                    "device"
                } else {
                    "metric"
                };
                return Err(format!("the template needs {{{name}}} exactly once").into());
            }
        }
        Ok(Template {
            text: text.to_owned(),
            levels,
        })
    }
}

impl Template {
    /// The subscription: placeholders as `+`.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|level| match level {
                Level::Literal(text) => text.as_str(),
                Level::Device | Level::Metric => "+",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The device and metric a topic names, if it matches.
    pub fn capture<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let mut levels = topic.split('/');
        let (mut device, mut metric) = (None, None);
        for level in &self.levels {
            let got = levels.next()?;
            match level {
                Level::Literal(text) if text == got => {}
                Level::Literal(_) => return None,
                Level::Device => device = Some(got),
                Level::Metric => metric = Some(got),
            }
        }
        if levels.next().is_some() {
            return None;
        }
        Some((device?, metric?))
    }

    /// Whether every topic it matches lies under `prefix/`: the bridge's
    /// own topics, which it must never take in.
    pub fn inside(&self, prefix: &str) -> bool {
        let prefix: Vec<&str> = prefix.split('/').collect();
        self.levels.len() > prefix.len()
            && prefix
                .iter()
                .zip(&self.levels)
                .all(|(want, level)| matches!(level, Level::Literal(text) if text == want))
    }
}

/// A reading's payload: a bare number, or `{"value", "ts_ms", "unit"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// `None` for null, NaN and infinities (stored as NULL).
    pub value: Option<f64>,
    pub ts_ms: Option<i64>,
    pub unit: Option<String>,
}

#[derive(Deserialize)]
struct Object {
    /// Required, though it may be null.
    #[serde(deserialize_with = "nullable")]
    value: Option<f64>,
    ts_ms: Option<f64>,
    unit: Option<String>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(from: D) -> Result<Option<f64>, D::Error> {
    Option::<f64>::deserialize(from)
}

/// Reads a payload.
///
/// # Errors
/// Not a number nor such an object; the message says why.
pub fn parse(payload: &[u8]) -> Result<Payload, Invalid> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "the payload is not UTF-8".to_owned())?
        .trim();
    if !text.starts_with('{') {
        let value: f64 = text
            .parse()
            .map_err(|_| format!("{:?} is not a number", shorten(text)))?;
        return Ok(Payload {
            value: value.is_finite().then_some(value),
            ts_ms: None,
            unit: None,
        });
    }
    let object: Object =
        serde_json::from_str(text).map_err(|err| format!("not a reading: {err}"))?;
    let ts_ms = match object.ts_ms {
        None => None,
        Some(ms) if ms.fract() == 0.0 && (0.0..=MAX_TS_MS as f64).contains(&ms) => Some(ms as i64),
        Some(ms) => {
            return Err(format!("ts_ms {ms} is not a time in ms since the Unix epoch").into());
        }
    };
    if let Some(unit) = &object.unit
        && (unit.len() > MAX_TEXT_LEN || unit.contains(char::is_control))
    {
        return Err(format!(
            "the unit must be at most {MAX_TEXT_LEN} bytes without control characters"
        )
        .into());
    }
    Ok(Payload {
        value: object.value.filter(|v| v.is_finite()),
        ts_ms,
        unit: object.unit,
    })
}

fn shorten(text: &str) -> &str {
    text.char_indices()
        .nth(40)
        .map_or(text, |(i, _)| &text[..i])
}

/// What `--mqtt-ingest` and `--mqtt-ingest-register` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub templates: Vec<Template>,
    /// Unknown device ids register themselves (like the provisioning key).
    pub register: bool,
}

/// What one connection's ingest needs of the hub.
#[derive(Debug, Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    /// The bridge's own topics (and Home Assistant's) are never taken in.
    pub prefix: String,
    /// Devices and their metrics: found, or registered through the writer.
    pub admission: Admission,
    pub writer: WriterHandle,
    pub status: Arc<Status>,
}

/// A device as ingest last read it.
#[derive(Debug)]
struct Known {
    row: i64,
    revoked: bool,
    read_at: Instant,
    /// Metric rows and units, by name.
    metrics: HashMap<String, (i64, String)>,
}

/// Why a round of messages was not stored: the broker delivers it again.
#[derive(Debug, thiserror::Error)]
enum NotStored {
    #[error("ingest cannot read or write devices: {0}")]
    Admission(#[from] AdmitError),
    #[error("ingest lost a device it had just read")]
    Forgotten,
    #[error("storing readings from MQTT: {0}")]
    Writer(#[from] WriteError),
    #[error("storing readings from MQTT failed; the broker delivers them again")]
    Failed,
}

/// Why a message was not stored.
enum Refusal {
    /// One of the hub's own topics, or a subscription the broker kept from
    /// an earlier run: acknowledged and dropped.
    NotOurs,
    /// Counted and logged: unparsable, or a device that may not send.
    Refused(String),
    /// Storage could not be read: the connection ends unacknowledged.
    Storage(NotStored),
}

/// Takes one connection's messages until it ends: stores them in rounds and
/// acknowledges each round, in order, after its commit. When storing fails
/// it reports the connection lost, so the broker delivers the round again
/// to the next one.
pub async fn run(
    mut messages: mpsc::Receiver<Publish>,
    client: AsyncClient,
    report: mpsc::Sender<Heard>,
    ctx: Context,
) {
    let mut ingest = Ingest {
        own: [
            format!("{}/", ctx.prefix),
            format!("{}/", super::discovery::PREFIX),
        ],
        ctx,
        known: HashMap::new(),
        warned_at: None,
    };
    let mut round = Vec::with_capacity(BATCH);
    while messages.recv_many(&mut round, BATCH).await > 0 {
        if let Err(error) = ingest.store(&round).await {
            let _ = report.send(Heard::Lost(error.to_string())).await;
            return;
        }
        for publish in round.drain(..) {
            if client.ack(&publish).await.is_err() {
                return;
            }
        }
    }
}

struct Ingest {
    ctx: Context,
    /// Where the hub's own topics (and Home Assistant's) start.
    own: [String; 2],
    known: HashMap<String, Known>,
    /// When a refusal was last logged at `warn` (the rest go to `debug`, so
    /// a flood of garbage cannot flood the log).
    warned_at: Option<Instant>,
}

impl Ingest {
    /// Stores a round of messages, refusing what cannot be stored.
    async fn store(&mut self, round: &[Publish]) -> Result<(), NotStored> {
        let now = now_ms();
        let mut batches: HashMap<(i64, Dedupe), Vec<Sample>> = HashMap::new();
        for publish in round {
            match self.reading(publish, now).await {
                Ok((row, dedupe, sample)) => batches.entry((row, dedupe)).or_default().push(sample),
                Err(Refusal::NotOurs) => {}
                Err(Refusal::Refused(reason)) => self.refused(&publish.topic, &reason),
                Err(Refusal::Storage(error)) => return Err(error),
            }
        }
        if batches.is_empty() {
            return Ok(());
        }
        let (reply, mut outcomes) = mpsc::channel(batches.len());
        let mut readings = 0;
        let count = batches.len();
        for (tag, ((row, dedupe), samples)) in (0..).zip(batches) {
            readings += samples.len() as u64;
            self.ctx
                .writer
                .submit_unsequenced(row, tag, dedupe, samples, reply.clone())
                .await?;
        }
        for _ in 0..count {
            match outcomes.recv().await {
                Some(WriteOutcome::Stored { .. }) => {}
                Some(WriteOutcome::Failed { .. }) | None => return Err(NotStored::Failed),
            }
        }
        self.ctx.status.ingested.fetch_add(readings, Relaxed);
        Ok(())
    }

    fn refused(&mut self, topic: &str, reason: &str) {
        self.ctx.status.ingest_refused.fetch_add(1, Relaxed);
        if self
            .warned_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.warned_at = Some(Instant::now());
            tracing::warn!(
                topic,
                reason,
                "a message on an --mqtt-ingest topic was not stored"
            );
        } else {
            tracing::debug!(
                topic,
                reason,
                "a message on an --mqtt-ingest topic was not stored"
            );
        }
    }

    /// The reading a message carries: its device's row, how to keep it from
    /// being stored twice, and the sample.
    async fn reading(
        &mut self,
        publish: &Publish,
        now: i64,
    ) -> Result<(i64, Dedupe, Sample), Refusal> {
        let topic = publish.topic.as_str();
        if self.own.iter().any(|own| topic.starts_with(own.as_str())) {
            return Err(Refusal::NotOurs);
        }
        let (device, metric) = self
            .ctx
            .settings
            .templates
            .iter()
            .find_map(|template| template.capture(topic))
            .ok_or(Refusal::NotOurs)?;
        if !is_valid_device_id(device) {
            return Err(Refusal::Refused(format!(
                "{:?} is not a device id (1 to 64 of A-Z a-z 0-9 - _ . :)",
                shorten(device)
            )));
        }
        if !protocol::is_valid_metric_name(metric) {
            return Err(Refusal::Refused(format!(
                "a metric name must be 1 to {MAX_TEXT_LEN} bytes without control characters \
                 (as in a device's Hello)"
            )));
        }
        let payload = parse(&publish.payload).map_err(|why| Refusal::Refused(why.0))?;
        let (row, metric_row) = self.rows(device, metric, payload.unit.as_deref()).await?;
        let (ts_ms, dedupe) = match payload.ts_ms {
            Some(ts_ms) => (ts_ms, Dedupe::ByTime),
            None => (now, Dedupe::Never),
        };
        let sample = Sample {
            metric: metric_row,
            ts_ms,
            value: payload.value,
        };
        Ok((row, dedupe, sample))
    }

    /// The device's row and the metric's, registering what is new.
    async fn rows(
        &mut self,
        device: &str,
        metric: &str,
        unit: Option<&str>,
    ) -> Result<(i64, i64), Refusal> {
        let storage = |err: AdmitError| Refusal::Storage(err.into());
        let admission = &self.ctx.admission;
        let fresh = self
            .known
            .get(device)
            .is_some_and(|known| known.read_at.elapsed() < RECHECK);
        if !fresh {
            let found = if self.ctx.settings.register {
                Some(admission.find_or_register(device).await)
            } else {
                admission.find(device).await.transpose()
            };
            let Admitted { row, revoked } = match found {
                Some(found) => found.map_err(storage)?,
                None => {
                    return Err(Refusal::Refused(format!(
                        "no device {device:?}: add it with `hub device add`, or pass --mqtt-ingest-register"
                    )));
                }
            };
            let metrics = match self.known.remove(device) {
                Some(known) if known.row == row => known.metrics,
                _ => admission.metrics(device, row).await.map_err(storage)?,
            };
            self.known.insert(
                device.to_owned(),
                Known {
                    row,
                    revoked,
                    read_at: Instant::now(),
                    metrics,
                },
            );
        }
        let Some(known) = self.known.get_mut(device) else {
            return Err(Refusal::Storage(NotStored::Forgotten));
        };
        if known.revoked {
            return Err(Refusal::Refused(format!("device {device:?} is revoked")));
        }
        let row = known.row;
        if !known.metrics.contains_key(metric) && known.metrics.len() >= MAX_METRICS_PER_DEVICE {
            return Err(Refusal::Refused(format!(
                "device {device:?} has {MAX_METRICS_PER_DEVICE} metrics, the most a device may have"
            )));
        }
        match known.metrics.get(metric) {
            Some((metric_row, known_unit)) if unit.is_none_or(|unit| unit == known_unit) => {
                Ok((row, *metric_row))
            }
            known_metric => {
                let unit = unit
                    .or(known_metric.map(|(_, unit)| unit.as_str()))
                    .unwrap_or_default()
                    .to_owned();
                let metric_row = admission
                    .metric(device, row, metric, &unit)
                    .await
                    .map_err(storage)?;
                known.metrics.insert(metric.to_owned(), (metric_row, unit));
                Ok((row, metric_row))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Template {
        text.parse().unwrap()
    }

    #[test]
    fn templates_capture_the_device_and_metric_levels() {
        let t = template("sensors/{device}/{metric}");
        assert_eq!(t.filter(), "sensors/+/+");
        assert_eq!(
            t.capture("sensors/boiler-3/temperature"),
            Some(("boiler-3", "temperature"))
        );
        assert_eq!(t.capture("sensors/boiler-3"), None);
        assert_eq!(t.capture("sensors/boiler-3/temperature/x"), None);
        assert_eq!(t.capture("other/boiler-3/temperature"), None);
        let reversed = template("tele/{metric}/of/{device}");
        assert_eq!(reversed.filter(), "tele/+/of/+");
        assert_eq!(
            reversed.capture("tele/rssi/of/plug"),
            Some(("plug", "rssi"))
        );
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        assert!(
            "sensors/{device}"
                .parse::<Template>()
                .unwrap_err()
                .0
                .contains("{metric}")
        );
        assert!(
            "{device}/{device}/{metric}"
                .parse::<Template>()
                .unwrap_err()
                .0
                .contains("once")
        );
        assert!(
            "a/+/{device}/{metric}"
                .parse::<Template>()
                .unwrap_err()
                .0
                .contains("\"+\"")
        );
        assert!("a/#".parse::<Template>().is_err());
        assert!(
            "a//{device}/{metric}"
                .parse::<Template>()
                .unwrap_err()
                .0
                .contains("empty")
        );
        assert!("a/{dev}/{metric}".parse::<Template>().is_err());
    }

    #[test]
    fn a_template_inside_the_prefix_would_take_in_the_hubs_own_topics() {
        assert!(template("telemetry/{device}/{metric}").inside("telemetry"));
        assert!(template("a/b/{device}/{metric}").inside("a/b"));
        assert!(!template("a/c/{device}/{metric}").inside("a/b"));
        assert!(!template("sensors/{device}/{metric}").inside("telemetry"));
        assert!(!template("{device}/{metric}").inside("telemetry"));
    }

    #[test]
    fn payloads_are_numbers_or_reading_objects() {
        let bare = parse(b" 21.5\n").unwrap();
        assert_eq!(
            bare,
            Payload {
                value: Some(21.5),
                ts_ms: None,
                unit: None
            }
        );
        assert_eq!(parse(b"NaN").unwrap().value, None);
        let object = parse(br#"{"value": 3, "ts_ms": 1764300000000, "unit": "V"}"#).unwrap();
        assert_eq!(
            object,
            Payload {
                value: Some(3.0),
                ts_ms: Some(1_764_300_000_000),
                unit: Some("V".into())
            }
        );
        assert_eq!(parse(br#"{"value": null}"#).unwrap().value, None);
        // Other fields are ignored: many devices add their own.
        assert_eq!(
            parse(br#"{"value": 1, "rssi": -70}"#).unwrap().value,
            Some(1.0)
        );
    }

    #[test]
    fn unparsable_payloads_say_why() {
        assert!(parse(b"ON").unwrap_err().0.contains("not a number"));
        assert!(
            parse(b"{\"value\": \"hot\"}")
                .unwrap_err()
                .0
                .contains("not a reading")
        );
        assert!(
            parse(br#"{"value": 1, "ts_ms": -5}"#)
                .unwrap_err()
                .0
                .contains("ts_ms")
        );
        assert!(
            parse(br#"{"value": 1, "ts_ms": 1.5}"#)
                .unwrap_err()
                .0
                .contains("ts_ms")
        );
        assert!(parse(&[0xff, 0xfe]).unwrap_err().0.contains("UTF-8"));
        assert!(parse(b"").is_err());
        assert!(parse(br#"{"ts_ms": 5}"#).unwrap_err().0.contains("value"));
    }
}
