//! Commands from the broker: a JSON `{"id", "name", "args", "timeout_ms"}`
//! on `{prefix}/{device}/cmd` goes to the device the way
//! `POST /v1/devices/{id}/commands` does (`ingest::command`), and its answer,
//! or why there is none, to `{prefix}/{device}/cmd/result` with the same
//! `id`. Every message on a command topic gets a result, malformed ones
//! included.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::{Own, command_result_topic};
use crate::ingest::command::{self, Failure};
use crate::ingest::registry::Registry;
use crate::store::Store;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT_MS: f64 = 60_000.0;

/// A command request. `id` is the caller's, any JSON string or number,
/// and is only echoed back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    id: Value,
    name: String,
    #[serde(default)]
    args: BTreeMap<String, Value>,
    timeout_ms: Option<f64>,
}

/// What goes to `cmd/result`.
#[derive(Debug, Serialize)]
struct Reply<'a> {
    id: &'a Value,
    /// Whether the device carried the command out.
    ok: bool,
    /// The device's answer, or why there is none.
    detail: String,
    /// A stable code when the hub got no answer from the device
    /// (`bad_command`, `unknown_device`, `device_offline`,
    /// `command_queue_full`, `command_timeout`); absent when the device
    /// answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// A request read from a payload, or the result saying why it is not one.
fn read(payload: &[u8]) -> Result<(Value, Request), Reply<'static>> {
    static NULL: Value = Value::Null;
    let bad = |detail: String| Reply {
        id: &NULL,
        ok: false,
        detail,
        error: Some("bad_command"),
    };
    let request: Request =
        serde_json::from_slice(payload).map_err(|err| bad(format!("not a command: {err}")))?;
    if !(request.id.is_string() || request.id.is_number()) {
        return Err(bad("`id` must be a string or a number".into()));
    }
    if let Some(ms) = request.timeout_ms
        && !(ms.fract() == 0.0 && (1.0..=MAX_TIMEOUT_MS).contains(&ms))
    {
        return Err(bad(format!(
            "`timeout_ms` must be a whole number from 1 to {MAX_TIMEOUT_MS}"
        )));
    }
    Ok((request.id.clone(), request))
}

/// Answers one message on `{prefix}/{device}/cmd`: the result to publish.
pub async fn answer(
    registry: Registry,
    store: Store,
    prefix: String,
    device: String,
    payload: Vec<u8>,
) -> Own {
    let topic = command_result_topic(&prefix, &device);
    let reply = |reply: &Reply<'_>| Own {
        topic: topic.clone(),
        payload: serde_json::to_vec(reply).unwrap_or_default(),
        retain: false,
    };
    let (id, request) = match read(&payload) {
        Ok(read) => read,
        Err(bad) => {
            // The id, when the payload is JSON with one.
            let id = serde_json::from_slice::<Value>(&payload)
                .ok()
                .and_then(|mut value| value.get_mut("id").map(Value::take))
                .filter(|id| id.is_string() || id.is_number())
                .unwrap_or(Value::Null);
            return reply(&Reply { id: &id, ..bad });
        }
    };
    let args = match command::args_of(request.args) {
        Ok(args) => args,
        Err(bad) => {
            return reply(&Reply {
                id: &id,
                ok: false,
                detail: bad.to_string(),
                error: Some("bad_command"),
            });
        }
    };
    let timeout = request
        .timeout_ms
        .map_or(DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms as u64));
    let result = command::call(&registry, &store, &device, request.name, args, timeout).await;
    reply(&match result {
        Ok(answer) => Reply {
            id: &id,
            ok: answer.ok,
            detail: answer.detail,
            error: None,
        },
        Err(failure) => {
            if let Failure::Storage(err) = &failure {
                tracing::warn!(error = %err, "a command from MQTT could not be checked");
            }
            Reply {
                id: &id,
                ok: false,
                detail: failure.to_string(),
                error: Some(failure.code()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PoolDurability;

    async fn result(payload: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db"), PoolDurability::WithWriter)
            .await
            .unwrap();
        store.add_device("known", None).await.unwrap();
        let own = answer(
            Registry::default(),
            store,
            "telemetry".into(),
            "known".into(),
            payload.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(own.topic, "telemetry/known/cmd/result");
        assert!(!own.retain);
        serde_json::from_slice(&own.payload).unwrap()
    }

    #[tokio::test]
    async fn malformed_commands_get_a_result_with_their_id_when_there_is_one() {
        let not_json = result("reboot now").await;
        assert_eq!(not_json["error"], "bad_command");
        assert_eq!(not_json["id"], Value::Null);
        assert_eq!(not_json["ok"], false);
        let no_name = result(r#"{"id": "a1"}"#).await;
        assert_eq!(no_name["error"], "bad_command");
        assert_eq!(no_name["id"], "a1");
        let bad_args = result(r#"{"id": 7, "name": "x", "args": {"n": {"deep": 1}}}"#).await;
        assert_eq!(bad_args["error"], "bad_command");
        assert_eq!(bad_args["id"], 7);
        assert!(
            bad_args["detail"].as_str().unwrap().contains("\"n\""),
            "{bad_args}"
        );
        let bad_timeout = result(r#"{"id": 7, "name": "x", "timeout_ms": 0}"#).await;
        assert_eq!(bad_timeout["error"], "bad_command");
        let long_name = format!(r#"{{"id": 7, "name": "{}"}}"#, "x".repeat(300));
        assert_eq!(result(&long_name).await["error"], "bad_command");
    }

    #[tokio::test]
    async fn an_offline_device_is_an_error_result() {
        let offline = result(r#"{"id": "c-1", "name": "ping"}"#).await;
        assert_eq!(offline["id"], "c-1");
        assert_eq!(offline["error"], "device_offline");
    }
}
