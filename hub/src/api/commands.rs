//! `POST /v1/devices/{id}/commands`: send a command to a connected device
//! and wait for its result (two-way, like ThingsBoard's RPC).
//!
//! Body: `{"name": "set_interval", "args": {"interval_ms": 500},
//! "timeout_ms": 10000}`; `args` and `timeout_ms` are optional; an
//! argument's value is text, a number or a boolean (sent as its text). Answers
//! 200 `{"id", "ok", "detail"}` with the device's result, 404 for an unknown
//! device, 409 when it is not connected, 503 when its command queue is full,
//! 504 when it does not answer in time.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use protocol::limits::{MAX_COMMAND_ARGS, MAX_TEXT_LEN};
use serde::Deserialize;
use serde_json::Value;

use super::access;
use super::admin::Admin;
use crate::access::{Principal, Role};
use crate::http_error::ApiError;
use crate::ingest::command::{self, Failure};
use crate::ingest::registry::Registry;
use crate::store::Store;

/// The largest body a command request may have: a command the protocol
/// allows (16 args of 256-byte names and values) is far below it.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const MAX_TIMEOUT_MS: u64 = 60_000;

/// The request body. Names and values reach the device as they are; the
/// protocol counts their length in UTF-8 bytes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Command)]
pub struct CommandRequest {
    /// The command, 1–256 bytes of UTF-8.
    #[schema(min_length = 1, max_length = 256)]
    name: String,
    /// At most 16, each name 1–256 bytes and each value text of at most
    /// 256 bytes of UTF-8, a number or a boolean (the device receives
    /// their JSON text: `250`, `true`).
    #[serde(default)]
    #[schema(schema_with = args_schema)]
    args: BTreeMap<String, Value>,
    /// How long to wait for the device's answer (default 10000). JSON has
    /// one number type, so `500.0` is 500.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 60000)]
    timeout_ms: Option<f64>,
}

/// `args` as the protocol bounds it. JSON Schema counts characters, the
/// protocol bytes: a text of at most 256 characters can still be refused
/// when it is over 256 bytes.
fn args_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, OneOfBuilder, RefOr, Schema, Type};
    let text = |min| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(min)
            .max_length(Some(MAX_TEXT_LEN))
    };
    let value = OneOfBuilder::new()
        .item(text(None))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(text(Some(1))))
        .additional_properties(Some(RefOr::T(Schema::OneOf(value.build()))))
        .max_properties(Some(MAX_COMMAND_ARGS))
        .build()
}

/// The device's answer to a command.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct CommandResult {
    /// The command's id on this hub.
    id: u64,
    /// Whether the device carried it out.
    ok: bool,
    /// What the device said about it.
    detail: String,
}

/// Sends a command to a connected device and waits for its answer.
#[utoipa::path(
    post,
    path = "/v1/devices/{id}/commands",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(("id" = String, Path, description = "The device id")),
    request_body(content = CommandRequest, content_type = "application/json",
                 description = "At most 16 KiB"),
    responses(
        (status = 200, description = "The device's answer", body = CommandResult),
        (status = 400, description = "Not a command: the field at fault is named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A key whose role is viewer (`forbidden`), a cross-site request with the monitor cookie (`cross_site`), or on a hub without keys or monitor token a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
        (status = 408, description = "The body did not arrive whole within the header deadline (`--header-read-timeout`)", body = ApiError),
        (status = 409, description = "The device is not connected", body = ApiError),
        (status = 413, description = "The body is over 16 KiB", body = ApiError),
        (status = 415, description = "The body is not `application/json`", body = ApiError),
        (status = 503, description = "The device's command queue is full, or in a cluster the hub that has the device cannot be asked (`cluster_unavailable`)", body = ApiError),
        (status = 504, description = "The device did not answer in time", body = ApiError),
    ),
)]
pub async fn send(
    State(registry): State<Registry>,
    State(store): State<Store>,
    State(admin): State<Admin>,
    Extension(principal): Extension<Principal>,
    device: Result<Path<String>, PathRejection>,
    body: Result<Json<CommandRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(device) = device.map_err(|rejection| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    })?;
    access::require_role(&principal, Role::Operator, "sending a command")?;
    access::sees(&principal, &store, &device).await?;
    let Json(request) = body.map_err(ApiError::from_json_rejection)?;
    let timeout_ms = match request.timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(ms) if ms.fract() == 0.0 && (1.0..=MAX_TIMEOUT_MS as f64).contains(&ms) => ms as u64,
        Some(_) => {
            return Err(ApiError::bad_field(
                "timeout_ms",
                format!("timeout_ms must be a whole number from 1 to {MAX_TIMEOUT_MS}"),
            ));
        }
    };
    // What the audit trail keeps of it, beside its answer.
    let mut detail = serde_json::json!({"name": request.name, "args": request.args});
    let args = command::args_of(request.args)
        .map_err(|bad| ApiError::bad_field(&bad.field(), bad.to_string()))?;
    let timeout = Duration::from_millis(timeout_ms);
    let result = command::call(&registry, &store, &device, request.name, args, timeout).await;
    detail["answer"] = match &result {
        Ok(answer) => serde_json::json!({"ok": answer.ok, "detail": answer.detail}),
        Err(failure) => serde_json::json!({"error": failure.code()}),
    };
    if !matches!(
        result,
        Err(Failure::UnknownDevice(_) | Failure::Invalid { .. })
    ) {
        admin
            .audit(&principal, "command", Some(&device), detail)
            .await;
    }
    match result {
        Ok(answer) => Ok(Json(CommandResult {
            id: answer.id,
            ok: answer.ok,
            detail: answer.detail,
        })),
        Err(Failure::Storage(err)) => Err(err.into()),
        Err(failure) => {
            let message = failure.to_string();
            let status = match failure {
                Failure::Invalid { field, .. } => return Err(ApiError::bad_field(field, message)),
                Failure::UnknownDevice(_) => StatusCode::NOT_FOUND,
                Failure::QueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
                Failure::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
                Failure::Cluster(_) => StatusCode::SERVICE_UNAVAILABLE,
                Failure::Offline(_) | Failure::Disconnected { .. } | Failure::Storage(_) => {
                    StatusCode::CONFLICT
                }
            };
            Err(ApiError::new(status, failure.code(), message))
        }
    }
}
