//! Configuration changes from the broker: a JSON merge patch on
//! `{prefix}/{device}/config/set` changes the device's desired
//! configuration as `PATCH /v1/devices/{id}/config` does (as `mqtt` in
//! its history), and `{prefix}/{device}/config/set/result` says how it
//! went: `{"ok": true, "version": 4}`, or `{"ok": false, "error",
//! "detail"}`. What the device then runs is retained on
//! `{prefix}/{device}/config`.

use serde_json::{Value, json};

use super::message::{Own, config_result_topic};
use crate::configuration::{Change, ConfigError, Configs};
use crate::store::Store;

/// Who the history says made a change that came over MQTT.
const BY: &str = "mqtt";

/// Answers one message on `{prefix}/{device}/config/set`: the result to
/// publish.
pub async fn answer(
    configs: Configs,
    store: Store,
    prefix: String,
    device: String,
    payload: Vec<u8>,
) -> Own {
    let result = change(&configs, &store, &device, &payload).await;
    let body = match result {
        Ok(version) => json!({"ok": true, "version": version}),
        Err((error, detail)) => json!({"ok": false, "error": error, "detail": detail}),
    };
    Own {
        topic: config_result_topic(&prefix, &device),
        payload: body.to_string().into_bytes(),
        retain: false,
    }
}

async fn change(
    configs: &Configs,
    store: &Store,
    device: &str,
    payload: &[u8],
) -> Result<u64, (&'static str, String)> {
    let patch: Value = serde_json::from_slice(payload)
        .map_err(|err| ("bad_config", format!("not JSON: {err}")))?;
    let row = match store.find_device(device).await {
        Ok(Some((row, _))) => row,
        Ok(None) => return Err(("unknown_device", format!("no device {device:?}"))),
        Err(err) => return Err(("not_stored", err.to_string())),
    };
    let (version, _) = configs
        .change(row, device, &Change::Patch(patch), None, BY)
        .await
        .map_err(|err| {
            let code = match &err {
                ConfigError::Refused(_) => "bad_config",
                ConfigError::Conflict { .. } | ConfigError::Busy => "busy",
                _ => "not_stored",
            };
            (code, err.to_string())
        })?;
    Ok(version)
}
