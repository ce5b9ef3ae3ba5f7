//! `POST /v1/devices/{id}/commands`: send a command to a connected device
//! and wait for its result (two-way, like ThingsBoard's RPC).
//!
//! Body: `{"name": "set_interval", "args": {"interval_ms": "500"},
//! "timeout_ms": 10000}`; `args` and `timeout_ms` are optional. Answers
//! 200 `{"id", "ok", "detail"}` with the device's result, 404 for an unknown
//! device, 409 when it is not connected, 503 when its command queue is full,
//! 504 when it does not answer in time.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use protocol::{Command, CommandArg, DecodeError, HubFrame};
use serde::Deserialize;

use crate::http_error::ApiError;
use crate::ingest::registry::{COMMAND_QUEUE, CommandRefused, Registry};
use crate::store::Store;

/// The body field a protocol limit was broken in: the name, or the args.
fn field_at_fault(err: &DecodeError) -> &'static str {
    match err {
        DecodeError::TooLong { field, .. }
        | DecodeError::TooMany { field, .. }
        | DecodeError::Empty { field }
            if *field == "command name" =>
        {
            "name"
        }
        _ => "args",
    }
}

/// The largest body a command request may have: a command the protocol
/// allows (16 args of 256-byte names and values) is far below it.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const MAX_TIMEOUT_MS: u64 = 60_000;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    name: String,
    #[serde(default)]
    args: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

/// Sends the command and waits for the device's answer.
pub async fn send(
    State(registry): State<Registry>,
    State(store): State<Store>,
    Path(device): Path<String>,
    body: Result<Json<CommandRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body.map_err(|rejection| {
        // 413 past MAX_BODY_BYTES, 415 without a JSON content type, 400 for
        // any other body that is not a command request.
        let status = match rejection.status() {
            status @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => status,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "bad_body", rejection.body_text())
    })?;
    let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ApiError::bad_field(
            "timeout_ms",
            format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}"),
        ));
    }
    let args: Vec<CommandArg> = request
        .args
        .into_iter()
        .map(|(name, value)| CommandArg { name, value })
        .collect();
    // The device would refuse a frame outside the protocol's limits.
    let probe = HubFrame::Command(Command {
        id: 0,
        name: request.name.clone(),
        args: args.clone(),
    });
    if let Err(err) = probe.validate() {
        return Err(ApiError::bad_field(
            field_at_fault(&err),
            format!("not a valid command: {err}"),
        ));
    }

    let (id, result) = match registry.send_command(&device, request.name, args) {
        Ok(sent) => sent,
        Err(CommandRefused::QueueFull) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "command_queue_full",
                format!("device {device:?} has {COMMAND_QUEUE} commands waiting"),
            ));
        }
        Err(CommandRefused::Offline) => {
            let known = store.list_devices().await?.iter().any(|d| d.id == device);
            return Err(if known {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "device_offline",
                    format!("device {device:?} is not connected"),
                )
            } else {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_device",
                    format!("no device {device:?}"),
                )
            });
        }
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), result).await {
        Ok(Ok(result)) => Ok(Json(serde_json::json!({
            "id": id,
            "ok": result.ok,
            "detail": result.detail,
        }))),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "device_offline",
            format!("device {device:?} disconnected before answering command {id}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "command_timeout",
            format!("device {device:?} did not answer command {id} within {timeout_ms} ms"),
        )),
    }
}
