//! Alert rules: the definition people write (JSON through the API, flags
//! through `hub alert add`), checked field by field into a [`Rule`] the
//! evaluator runs. Pure: no I/O.
//!
//! Enumerations (`kind`, `condition`, `aggregate`, `severity`) are text in
//! the definition rather than Rust enums so that a wrong one is refused by
//! [`RuleSpec::check`] naming its field, like every other mistake.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rule as written: `POST /v1/alert-rules`' body, `hub alert add`'s
/// flags, the `alert_rules.definition` column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AlertRule)]
pub struct RuleSpec {
    /// 1–64 characters of A-Z a-z 0-9 - _ . (it names the rule in alerts
    /// and MQTT topics).
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")]
    pub name: String,
    /// `threshold`, `silence` or `offline`.
    #[schema(pattern = "^(threshold|silence|offline)$")]
    pub kind: String,
    /// One device id, or a pattern of them with `*` (any run of
    /// characters) and `?` (one); absent: every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The metric watched: required by `threshold`; for `silence`,
    /// absent means any metric of the device; not used by `offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// `threshold`: `above` or `below` (`limit`), or `outside` (`low`,
    /// `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    /// `threshold`: `last` (the default: each reading), or `mean`, `min`,
    /// `max` over `window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
    /// `threshold` with an aggregate: how far back it looks, by the
    /// readings' times (`5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// `threshold`: how long (by the readings' times) the condition must
    /// hold before the alert fires (default `0s`); `silence` and
    /// `offline`: how long (by the hub's clock) before it fires (required).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// `threshold`: how far back past the limit the value must come before
    /// the alert resolves (default 0), so a value hovering at the limit
    /// does not flap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_band: Option<f64>,
    /// `info`, `warning` (the default) or `critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// At most 256 characters; `{device}`, `{metric}`, `{value}`,
    /// `{limit}` and `{rule}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a definition was refused: the field at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: &'static str,
    pub message: String,
}

fn refuse<T>(field: &'static str, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        field,
        message: message.into(),
    })
}

/// A checked rule, as the evaluator runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub devices: DevicePattern,
    pub metric: Option<String>,
    pub kind: Kind,
    pub severity: &'static str,
    pub message: String,
    /// The definition with its defaults filled in: what is stored, and
    /// what each alert keeps of the rule as it was.
    pub spec: RuleSpec,
}

/// What a rule watches for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Threshold(Threshold),
    /// No reading (of the metric, or of any metric) for this long.
    Silence {
        after_ms: i64,
    },
    /// Disconnected for this long.
    Offline {
        after_ms: i64,
    },
}

/// A threshold rule's arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub condition: Condition,
    pub aggregate: Aggregate,
    /// 0 with `Aggregate::Last`.
    pub window_ms: i64,
    pub hold_ms: i64,
    pub dead_band: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Above(f64),
    Below(f64),
    Outside { low: f64, high: f64 },
}

impl Condition {
    /// Whether `value` breaks the condition, the limits moved `inward`
    /// (the dead band, while firing: still broken until past it).
    pub fn broken(self, value: f64, inward: f64) -> bool {
        match self {
            Condition::Above(limit) => value > limit - inward,
            Condition::Below(limit) => value < limit + inward,
            Condition::Outside { low, high } => value < low + inward || value > high - inward,
        }
    }

    /// The limit, as a message shows it.
    pub fn limit_text(self) -> String {
        match self {
            Condition::Above(limit) | Condition::Below(limit) => limit.to_string(),
            Condition::Outside { low, high } => format!("{low}..{high}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Last,
    Mean,
    Min,
    Max,
}

/// Which devices a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePattern {
    All,
    Exactly(String),
    /// A pattern with `*` and `?`.
    Matching(String),
}

impl DevicePattern {
    pub fn matches(&self, device: &str) -> bool {
        match self {
            DevicePattern::All => true,
            DevicePattern::Exactly(id) => id == device,
            DevicePattern::Matching(pattern) => glob(pattern.as_bytes(), device.as_bytes()),
        }
    }
}

/// Whether `text` matches `pattern` (`*`: any run, `?`: one byte). Device
/// ids are ASCII. Iterative, with one point to come back to: linear in
/// practice, never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The placeholders a message may use.
const PLACEHOLDERS: [&str; 5] = ["device", "metric", "value", "limit", "rule"];
const MAX_MESSAGE: usize = 256;
const MAX_NAME: usize = 64;
/// Beyond a day a window or a hold is a mistake (and would keep too many
/// readings in memory).
const MAX_SPAN: Duration = Duration::from_secs(24 * 3600);

impl RuleSpec {
    /// Checks every field, fills in the defaults, and makes the rule.
    ///
    /// # Errors
    /// The first field at fault, and why.
    pub fn check(mut self) -> Result<Rule, RuleError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return refuse(
                "name",
                "a rule's name is 1 to 64 characters of A-Z a-z 0-9 - _ .",
            );
        }
        let devices = match &self.device {
            None => DevicePattern::All,
            Some(device) => device_pattern(device)?,
        };
        if let Some(metric) = &self.metric
            && (metric.is_empty() || metric.len() > 64 || metric.chars().any(char::is_control))
        {
            return refuse(
                "metric",
                "a metric name is 1 to 64 characters, none a control character",
            );
        }
        let kind = match self.kind.as_str() {
            "threshold" => Kind::Threshold(self.threshold()?),
            "silence" | "offline" => {
                self.only_threshold_fields()?;
                if self.kind == "offline" && self.metric.is_some() {
                    return refuse("metric", "an offline rule watches devices, not metrics");
                }
                let after_ms = match &self.hold {
                    Some(text) => span("for", text, false)?,
                    None => {
                        return refuse(
                            "for",
                            format!("a {} rule needs `for`: how long before it fires", self.kind),
                        );
                    }
                };
                if self.kind == "silence" {
                    Kind::Silence { after_ms }
                } else {
                    Kind::Offline { after_ms }
                }
            }
            other => {
                return refuse(
                    "kind",
                    format!("{other:?} is not a kind of rule: threshold, silence or offline"),
                );
            }
        };
        let severity = match self.severity.as_deref().unwrap_or("warning") {
            "info" => "info",
            "warning" => "warning",
            "critical" => "critical",
            other => {
                return refuse(
                    "severity",
                    format!("{other:?} is not a severity: info, warning or critical"),
                );
            }
        };
        self.severity = Some(severity.to_owned());
        let message = match self.message.take() {
            Some(message) => {
                check_template(&message)?;
                message
            }
            None => default_message(&kind).to_owned(),
        };
        self.message = Some(message.clone());
        Ok(Rule {
            name: self.name.clone(),
            devices,
            metric: self.metric.clone(),
            kind,
            severity,
            message,
            spec: self,
        })
    }

    fn threshold(&mut self) -> Result<Threshold, RuleError> {
        if self.metric.is_none() {
            return refuse("metric", "a threshold rule needs the metric it watches");
        }
        let finite = |field, value: Option<f64>| match value {
            Some(v) if !v.is_finite() => refuse(field, "must be a finite number"),
            _ => Ok(value),
        };
        let (limit, low, high) = (
            finite("limit", self.limit)?,
            finite("low", self.low)?,
            finite("high", self.high)?,
        );
        let condition = match (self.condition.as_deref(), limit, low, high) {
            (None, ..) => {
                return refuse(
                    "condition",
                    "a threshold rule needs a condition: above, below or outside",
                );
            }
            (Some("above" | "below"), None, ..) => {
                return refuse("limit", "above and below need a limit");
            }
            (Some("above" | "below"), Some(_), Some(_), _) => {
                return refuse("low", "low and high are for outside");
            }
            (Some("above" | "below"), Some(_), _, Some(_)) => {
                return refuse("high", "low and high are for outside");
            }
            (Some("above"), Some(limit), ..) => Condition::Above(limit),
            (Some("below"), Some(limit), ..) => Condition::Below(limit),
            (Some("outside"), Some(_), ..) => {
                return refuse("limit", "outside takes low and high, not limit");
            }
            (Some("outside"), None, None, _) => return refuse("low", "outside needs low and high"),
            (Some("outside"), None, _, None) => {
                return refuse("high", "outside needs low and high");
            }
            (Some("outside"), None, Some(low), Some(high)) => {
                if low >= high {
                    return refuse(
                        "low",
                        format!("the band's low ({low}) must be below its high ({high})"),
                    );
                }
                Condition::Outside { low, high }
            }
            (Some(other), ..) => {
                return refuse(
                    "condition",
                    format!("{other:?} is not a condition: above, below or outside"),
                );
            }
        };
        let aggregate = match self.aggregate.as_deref().unwrap_or("last") {
            "last" => Aggregate::Last,
            "mean" => Aggregate::Mean,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            other => {
                return refuse(
                    "aggregate",
                    format!("{other:?} is not an aggregate: last, mean, min or max"),
                );
            }
        };
        self.aggregate = Some(
            match aggregate {
                Aggregate::Last => "last",
                Aggregate::Mean => "mean",
                Aggregate::Min => "min",
                Aggregate::Max => "max",
            }
            .to_owned(),
        );
        let window_ms = match (&self.window, aggregate) {
            (None, Aggregate::Last) => 0,
            (Some(_), Aggregate::Last) => {
                return refuse("window", "a window needs an aggregate: mean, min or max");
            }
            (None, _) => return refuse("window", "an aggregate needs a window, such as 5m"),
            (Some(text), _) => span("window", text, false)?,
        };
        let hold_ms = match &self.hold {
            Some(text) => span("for", text, true)?,
            None => 0,
        };
        let dead_band = match self.dead_band {
            None => 0.0,
            Some(band) if !band.is_finite() || band < 0.0 => {
                return refuse("dead_band", "the dead band is a number at or above 0");
            }
            Some(band) => band,
        };
        if let Condition::Outside { low, high } = condition
            && dead_band * 2.0 >= high - low
        {
            return refuse(
                "dead_band",
                "the dead band must be under half the band's width, or the alert could never resolve",
            );
        }
        self.dead_band = Some(dead_band);
        self.hold = Some(self.hold.take().unwrap_or_else(|| "0s".to_owned()));
        Ok(Threshold {
            condition,
            aggregate,
            window_ms,
            hold_ms,
            dead_band,
        })
    }

    /// A silence or offline rule must not carry a threshold's fields.
    fn only_threshold_fields(&self) -> Result<(), RuleError> {
        let stray = [
            ("condition", self.condition.is_some()),
            ("limit", self.limit.is_some()),
            ("low", self.low.is_some()),
            ("high", self.high.is_some()),
            ("aggregate", self.aggregate.is_some()),
            ("window", self.window.is_some()),
            ("dead_band", self.dead_band.is_some()),
        ];
        match stray.into_iter().find(|(_, set)| *set) {
            Some((field, _)) => refuse(field, format!("only threshold rules take {field}")),
            None => Ok(()),
        }
    }
}

fn device_pattern(device: &str) -> Result<DevicePattern, RuleError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    if device.is_empty() || device.len() > 64 {
        return refuse("device", "a device id or pattern is 1 to 64 characters");
    }
    if !device
        .bytes()
        .all(|b| allowed(b) || matches!(b, b'*' | b'?'))
    {
        return refuse(
            "device",
            format!(
                "{device:?} is neither a device id nor a pattern: A-Z a-z 0-9 - _ . : with * and ?"
            ),
        );
    }
    Ok(if device.bytes().all(allowed) {
        DevicePattern::Exactly(device.to_owned())
    } else {
        DevicePattern::Matching(device.to_owned())
    })
}

/// A duration field in ms: longer than zero (or zero when `zero_ok`), at
/// most a day.
fn span(field: &'static str, text: &str, zero_ok: bool) -> Result<i64, RuleError> {
    let duration = match device_sim::duration::parse(text) {
        Ok(duration) => duration,
        Err(err) => return refuse(field, err.to_string()),
    };
    if duration.is_zero() && !zero_ok {
        return refuse(field, "must be longer than zero");
    }
    if duration > MAX_SPAN {
        return refuse(field, "must be at most a day (24h)");
    }
    Ok(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

fn check_template(message: &str) -> Result<(), RuleError> {
    if message.is_empty() || message.chars().count() > MAX_MESSAGE {
        return refuse("message", "a message is 1 to 256 characters");
    }
    let mut rest = message;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return refuse("message", "a `{` without its `}`");
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return refuse(
                "message",
                format!(
                    "{{{name}}} is not a placeholder: {{device}}, {{metric}}, {{value}}, {{limit}} or {{rule}}"
                ),
            );
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn default_message(kind: &Kind) -> &'static str {
    match kind {
        Kind::Threshold(_) => "{device} {metric} is {value} (limit {limit})",
        Kind::Silence { .. } => "{device} {metric} has sent nothing for {limit}",
        Kind::Offline { .. } => "{device} has been offline for {limit}",
    }
}

impl Rule {
    /// Whether the rule watches this device's metric (`None`: the device
    /// itself, for silence on any metric and offline rules).
    pub fn watches(&self, device: &str, metric: Option<&str>) -> bool {
        self.devices.matches(device) && self.metric.as_deref() == metric
    }

    /// The message, filled in.
    pub fn render(&self, device: &str, metric: Option<&str>, value: Option<f64>) -> String {
        let limit = match self.kind {
            Kind::Threshold(threshold) => threshold.condition.limit_text(),
            Kind::Silence { .. } | Kind::Offline { .. } => {
                self.spec.hold.clone().unwrap_or_default()
            }
        };
        let value = value.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let mut out = self.message.clone();
        for (name, text) in [
            ("{device}", device),
            ("{metric}", metric.unwrap_or("any metric")),
            ("{value}", value.as_str()),
            ("{limit}", limit.as_str()),
            ("{rule}", self.name.as_str()),
        ] {
            out = out.replace(name, text);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> RuleSpec {
        serde_json::from_value(json).unwrap()
    }

    fn refused(json: serde_json::Value) -> &'static str {
        spec(json).check().unwrap_err().field
    }

    #[test]
    fn a_threshold_rule_is_checked_and_filled_in() {
        let rule = spec(serde_json::json!({
            "name": "warm", "kind": "threshold", "device": "freezer-*", "metric": "temp",
            "condition": "above", "limit": 5.0, "aggregate": "mean", "window": "5m", "for": "1m",
        }))
        .check()
        .unwrap();
        let Kind::Threshold(threshold) = rule.kind else {
            panic!()
        };
        assert_eq!(threshold.condition, Condition::Above(5.0));
        assert_eq!((threshold.window_ms, threshold.hold_ms), (300_000, 60_000));
        assert_eq!(rule.severity, "warning");
        assert!(rule.watches("freezer-3", Some("temp")));
        assert!(!rule.watches("fridge-3", Some("temp")));
        assert!(!rule.watches("freezer-3", Some("humidity")));
        assert_eq!(
            rule.render("freezer-3", Some("temp"), Some(6.5)),
            "freezer-3 temp is 6.5 (limit 5)"
        );
        assert_eq!(rule.spec.dead_band, Some(0.0));
    }

    #[test]
    fn a_bad_rule_is_refused_naming_its_field() {
        use serde_json::json;
        let base = |extra: serde_json::Value| {
            let mut rule = json!({"name": "r", "kind": "threshold", "metric": "t", "condition": "above", "limit": 1.0});
            for (key, value) in extra.as_object().unwrap() {
                if value.is_null() {
                    rule.as_object_mut().unwrap().remove(key);
                } else {
                    rule[key] = value.clone();
                }
            }
            rule
        };
        assert_eq!(refused(base(json!({"kind": "meteor"}))), "kind");
        assert_eq!(
            refused(base(
                json!({"condition": "outside", "limit": null, "low": 5.0, "high": 1.0})
            )),
            "low"
        );
        assert_eq!(
            refused(base(json!({"aggregate": "mean", "window": "0s"}))),
            "window"
        );
        assert_eq!(refused(base(json!({"aggregate": "mean"}))), "window");
        assert_eq!(refused(base(json!({"device": "freezer-[1]"}))), "device");
        assert_eq!(refused(base(json!({"device": ""}))), "device");
        assert_eq!(refused(base(json!({"name": "a/b"}))), "name");
        assert_eq!(refused(base(json!({"metric": null}))), "metric");
        assert_eq!(refused(base(json!({"severity": "loud"}))), "severity");
        assert_eq!(
            refused(base(json!({"message": "{device} is {colour}"}))),
            "message"
        );
        assert_eq!(refused(base(json!({"dead_band": -1.0}))), "dead_band");
        assert_eq!(refused(base(json!({"for": "soon"}))), "for");
        assert_eq!(refused(json!({"name": "s", "kind": "silence"})), "for");
        assert_eq!(
            refused(json!({"name": "s", "kind": "silence", "for": "1m", "limit": 2.0})),
            "limit"
        );
        assert_eq!(
            refused(json!({"name": "o", "kind": "offline", "for": "1m", "metric": "t"})),
            "metric"
        );
    }

    #[test]
    fn patterns_match_as_shells_do() {
        assert!(glob(b"freezer-*", b"freezer-12"));
        assert!(glob(b"*-1?", b"freezer-12"));
        assert!(!glob(b"*-1?", b"freezer-1"));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
        assert!(glob(b"*", b""));
    }

    #[test]
    fn a_dead_band_moves_the_limit_inward_while_firing() {
        let above = Condition::Above(5.0);
        assert!(above.broken(5.1, 0.0));
        assert!(!above.broken(5.0, 0.0));
        assert!(above.broken(4.6, 0.5));
        assert!(!above.broken(4.5, 0.5));
        let band = Condition::Outside {
            low: 0.0,
            high: 10.0,
        };
        assert!(band.broken(-0.1, 0.0) && band.broken(10.1, 0.0) && !band.broken(5.0, 0.0));
        assert!(band.broken(0.5, 1.0));
    }
}
