//! Events: what happens to a device besides its readings, stored at
//! positions of the same sequence, so that every cursor consumer meets
//! readings and events in one order and resumes past both alike.
//!
//! [`EventKind`] is the one list of kinds, and this module the one place
//! that turns them into text: the `events` table's `kind` and `body`
//! columns ([`EventKind::to_row`], [`EventKind::from_row`]), the cluster
//! stream's entries (the same JSON with its `kind`), and the data of a
//! live `event:` ([`EventKind::sse_data`]). A new kind (an alert, a
//! configuration change) is a new variant here; storage, the ring,
//! catch-up and the cluster carry it unchanged.
//!
//! Alerts are events too: each transition of an alert (`firing`,
//! `acknowledged`, `resolved`) is an `alert` event of its device, whose
//! body keeps what caused it and the rule as it was. An alert's id is
//! the position of its `firing` event.
//!
//! So is the audit trail: each admin action and each command sent through
//! the API is an `audit` event, of the device it concerns or, for a key's
//! change, of no device (`NewEvent::device_row` is `None`). Only admins of
//! every device see them on the live stream.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Position;

/// What happened. Serialised with its name under `kind`:
/// `{"kind":"status","online":true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventKind {
    /// The device connected (`true`) to the hub, or to any hub of a
    /// cluster, or is no longer connected anywhere.
    Status { online: bool },
    /// An alert of the device changed state.
    Alert(Box<AlertChange>),
    /// Someone did something through the API.
    Audit(Box<AuditEntry>),
    /// The device's configuration changed: what people want it to run,
    /// or what it answered.
    Config(Box<ConfigChange>),
}

/// Which side of a device's configuration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSide {
    /// People changed what the device should run.
    Desired,
    /// The device answered a version: it runs it (`ok`), or refused it.
    Reported,
}

/// One change of a device's configuration. A `desired` change holds the
/// whole new configuration and who made it; it is stored only if its
/// `version` is one above the stored one (two changes racing, on one hub
/// or across a cluster, cannot both take a version: the loser learns it
/// lost). A `reported` one holds the device's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    pub side: ConfigSide,
    pub version: u64,
    /// Desired: the whole configuration, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
    /// Desired: who changed it (a key's name, `monitor-token`, `open`, or
    /// `cli` for `hub device config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Reported: whether the device runs this version now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// Reported: what the device said (why it refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ConfigChange {
    /// A new desired configuration.
    pub fn desired(version: u64, desired: Value, by: &str) -> ConfigChange {
        ConfigChange {
            side: ConfigSide::Desired,
            version,
            desired: Some(desired),
            by: Some(by.to_owned()),
            ok: None,
            detail: None,
        }
    }

    /// A device's answer.
    pub fn reported(version: u64, ok: bool, detail: String) -> ConfigChange {
        ConfigChange {
            side: ConfigSide::Reported,
            version,
            desired: None,
            by: None,
            ok: Some(ok),
            detail: Some(detail),
        }
    }
}

/// One entry of the audit trail: who (a key's name, `monitor-token`, or
/// `open` on a hub without keys), what, and its details (a command's name,
/// arguments and answer; a device's or key's new settings; never a secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub by: String,
    /// `command`, `device.add`, `device.update`, `device.token`,
    /// `device.revoke`, `key.add`, `key.revoke`, `rule.add`, `rule.remove`.
    pub action: String,
    /// What it was done to and with, and how it ended.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    /// A person has seen it; it is still firing.
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One transition of an alert: one rule on one device (and metric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertChange {
    /// The alert's id, the position of its `firing` event; absent on that
    /// event itself (a position is known only once stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Position>,
    /// The rule's name.
    pub rule: String,
    pub state: AlertState,
    /// The metric it watches, when the rule names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The value that caused it (a threshold rule's reading or aggregate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The position of the reading that caused it, when a reading did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Position>,
    pub severity: String,
    /// The rule's message, filled in.
    pub message: String,
    /// Who acknowledged it, and their note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The rule as it was when this happened (its JSON definition).
    pub definition: Value,
}

impl AlertChange {
    /// Whether this transition, coming from a cluster's stream, changes
    /// the alert of its rule and device as storage holds it (`latest`:
    /// the newest alert's id and state; `last_cause`: the newest position
    /// of a reading that caused one of their transitions), and as what.
    ///
    /// Every hub evaluates the same readings, and each appends what its
    /// rules say (timers even a moment apart), so the stream may hold one
    /// transition several times, or one a hub evaluating late sent after
    /// newer ones. Every hub applies the stream in one order and asks
    /// this of the same storage, so each transition happens once for the
    /// whole cluster: a firing only when none is open, an acknowledgement
    /// only of the firing alert it names, a resolution of whichever is
    /// open (it is named as that one), and none caused by a reading at or
    /// before the last that caused one.
    pub fn applies(
        &self,
        latest: Option<(Position, AlertState)>,
        last_cause: Option<Position>,
    ) -> Option<AlertChange> {
        if let (Some(cause), Some(last)) = (self.cause, last_cause)
            && cause <= last
        {
            return None;
        }
        let open = latest.filter(|(_, state)| *state != AlertState::Resolved);
        let alert = match (self.state, open) {
            (AlertState::Firing, None) => None,
            (AlertState::Acknowledged, Some((id, AlertState::Firing)))
                if self.alert == Some(id) =>
            {
                Some(id)
            }
            (AlertState::Resolved, Some((id, _))) => Some(id),
            _ => return None,
        };
        Some(AlertChange {
            alert,
            ..self.clone()
        })
    }
}

/// Why a stored or streamed event cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("an event of kind {kind:?} does not read back: {source}")]
pub struct BadEvent {
    kind: String,
    source: serde_json::Error,
}

impl EventKind {
    /// The kind's name: the `events.kind` column, the SSE `event:` field.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Status { .. } => "status",
            EventKind::Alert(_) => "alert",
            EventKind::Audit(_) => "audit",
            EventKind::Config(_) => "config",
        }
    }

    /// The `events` row's `kind` and `body` (the JSON without its kind).
    pub fn to_row(&self) -> (&'static str, String) {
        let mut fields = self.fields();
        fields.remove("kind");
        (self.name(), Value::Object(fields).to_string())
    }

    /// Reads an `events` row's `kind` and `body` back.
    ///
    /// # Errors
    /// The kind is unknown or the body does not fit it.
    pub fn from_row(kind: &str, body: &str) -> Result<EventKind, BadEvent> {
        let bad = |source| BadEvent {
            kind: kind.to_owned(),
            source,
        };
        let mut fields: Map<String, Value> = serde_json::from_str(body).map_err(bad)?;
        fields.insert("kind".into(), Value::String(kind.to_owned()));
        serde_json::from_value(Value::Object(fields)).map_err(bad)
    }

    /// The data of its live event at `pos`: the body's fields with the
    /// device (none for an event of no device) and the time,
    /// `{"device":"d1","online":true,"ts_ms":1700000000000}` (an alert's
    /// `firing` event names itself as the `alert`).
    pub fn sse_data(&self, pos: Position, device: &str, ts_ms: i64) -> String {
        let mut fields = self.fields();
        fields.remove("kind");
        if let EventKind::Alert(change) = self
            && change.alert.is_none()
        {
            fields.insert("alert".into(), Value::from(pos));
        }
        if !device.is_empty() {
            fields.insert("device".into(), Value::String(device.to_owned()));
        }
        fields.insert("ts_ms".into(), Value::from(ts_ms));
        Value::Object(fields).to_string()
    }

    fn fields(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            // A tagged enum of structs always serialises to an object.
            _ => unreachable!("an event kind serialises to an object"),
        }
    }
}

/// An event on its way to storage: the device's `devices.id` row and its
/// id, and the hub's time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// `None` for an event of no device (an audit entry of a key's change).
    pub device_row: Option<i64>,
    /// Empty for an event of no device.
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub kind: EventKind,
}

/// A stored event, as the writer reports it after commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub pos: Position,
    pub event: NewEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_stored_as_its_kind_and_a_body_without_it() {
        let online = EventKind::Status { online: true };
        assert_eq!(online.to_row(), ("status", r#"{"online":true}"#.to_owned()));
        let (kind, body) = online.to_row();
        assert_eq!(EventKind::from_row(kind, &body).unwrap(), online);
    }

    #[test]
    fn a_status_streams_as_it_always_did() {
        let offline = EventKind::Status { online: false };
        assert_eq!(
            offline.sse_data(7, "freezer \"3\"", 1_700_000_000_000),
            r#"{"device":"freezer \"3\"","online":false,"ts_ms":1700000000000}"#
        );
    }

    fn firing() -> EventKind {
        EventKind::Alert(Box::new(AlertChange {
            alert: None,
            rule: "warm".into(),
            state: AlertState::Firing,
            metric: Some("temp".into()),
            value: Some(6.5),
            cause: Some(41),
            severity: "critical".into(),
            message: "d1 temp is 6.5".into(),
            by: None,
            note: None,
            definition: serde_json::json!({"name": "warm"}),
        }))
    }

    #[test]
    fn an_alert_reads_back_and_its_firing_event_names_itself() {
        let (kind, body) = firing().to_row();
        assert_eq!(kind, "alert");
        assert!(!body.contains("\"alert\""), "{body}");
        assert_eq!(EventKind::from_row(kind, &body).unwrap(), firing());
        let data: Value = serde_json::from_str(&firing().sse_data(42, "d1", 5)).unwrap();
        assert_eq!(data["alert"], 42);
        assert_eq!(data["state"], "firing");
        assert_eq!(data["device"], "d1");
    }

    #[test]
    fn a_transition_from_the_stream_happens_once() {
        let EventKind::Alert(firing) = firing() else {
            unreachable!()
        };
        let change = |state, alert, cause| AlertChange {
            state,
            alert,
            cause,
            ..(*firing).clone()
        };
        use AlertState::*;
        // A firing: once none is open, and not from a reading already judged.
        assert!(change(Firing, None, Some(41)).applies(None, None).is_some());
        assert!(
            change(Firing, None, Some(41))
                .applies(Some((10, Resolved)), Some(30))
                .is_some()
        );
        assert!(
            change(Firing, None, Some(41))
                .applies(Some((10, Firing)), Some(30))
                .is_none()
        );
        assert!(
            change(Firing, None, Some(41))
                .applies(Some((10, Resolved)), Some(41))
                .is_none()
        );
        // A resolution of whichever is open, named as that one.
        let resolved = change(Resolved, Some(99), None).applies(Some((50, Acknowledged)), None);
        assert_eq!(resolved.unwrap().alert, Some(50));
        assert!(
            change(Resolved, Some(50), None)
                .applies(Some((50, Resolved)), None)
                .is_none()
        );
        // An acknowledgement only of the firing alert it names.
        assert!(
            change(Acknowledged, Some(50), None)
                .applies(Some((50, Firing)), None)
                .is_some()
        );
        assert!(
            change(Acknowledged, Some(49), None)
                .applies(Some((50, Firing)), None)
                .is_none()
        );
        assert!(
            change(Acknowledged, Some(50), None)
                .applies(Some((50, Acknowledged)), None)
                .is_none()
        );
    }

    #[test]
    fn a_configuration_change_reads_back_with_its_side() {
        let desired = EventKind::Config(Box::new(ConfigChange::desired(
            3,
            serde_json::json!({"sample_interval_ms": 5000}),
            "ops",
        )));
        let (kind, body) = desired.to_row();
        assert_eq!(kind, "config");
        assert_eq!(
            body,
            r#"{"by":"ops","desired":{"sample_interval_ms":5000},"side":"desired","version":3}"#
        );
        assert_eq!(EventKind::from_row(kind, &body).unwrap(), desired);
        let reported = EventKind::Config(Box::new(ConfigChange::reported(3, false, "no".into())));
        let (kind, body) = reported.to_row();
        assert_eq!(EventKind::from_row(kind, &body).unwrap(), reported);
    }

    #[test]
    fn an_unknown_kind_or_a_body_that_does_not_fit_is_refused() {
        assert!(EventKind::from_row("meteor", "{}").is_err());
        assert!(EventKind::from_row("status", r#"{"online":"yes"}"#).is_err());
        assert!(EventKind::from_row("status", r#"{"online":true,"extra":1}"#).is_err());
        assert!(EventKind::from_row("status", "[]").is_err());
    }
}
