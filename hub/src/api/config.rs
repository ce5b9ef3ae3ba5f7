//! Device configuration over HTTP: `GET`, `PUT` and `PATCH` (a JSON merge
//! patch) of `/v1/devices/{id}/config`, and `PUT`/`PATCH` of
//! `/v1/groups/{group}/config` for every device of a group. Viewers read;
//! operators change. A change is stored before it is answered; `If-Match:
//! "<version>"` makes it conditional (412 when the configuration is at
//! another version, as when another change won a race). The answer's
//! `ETag` is the version.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;

use super::access;
use super::admin::Admin;
use crate::access::{Principal, Role, is_valid_group};
use crate::configuration::view::{self, ConfigView};
use crate::configuration::{Change, Configs};
use crate::http_error::ApiError;
use crate::store::Store;

/// The largest body: a configuration's limit, with room for a patch's
/// nulls and white space.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The view with its version as the `ETag`.
fn answer(view: ConfigView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.version))
        .expect("a number in quotes is a header value");
    ([(header::ETAG, etag)], Json(view)).into_response()
}

fn path_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(p)| p).map_err(|rejection| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    })
}

/// The device's row, if the principal sees it (404 like an unknown one).
async fn device_row(principal: &Principal, store: &Store, device: &str) -> Result<i64, ApiError> {
    access::sees(principal, store, device).await?;
    match store.find_device(device).await? {
        Some((row, _)) => Ok(row),
        None => Err(access::unknown_device(device)),
    }
}

/// `If-Match`: absent, or one version, quoted or not (`"3"`, `W/"3"`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_parameter(
            "If-Match",
            "If-Match must be one version, as the ETag gives it (\"3\")",
        )
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    text.parse().map(Some).map_err(|_| bad())
}

/// Where the device's configuration stands.
#[utoipa::path(
    get,
    path = "/v1/devices/{id}/config",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "Desired against reported; the `ETag` is the version", body = ConfigView),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
    ),
)]
pub async fn get_config(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    device: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let device = path_of(device)?;
    let row = device_row(&principal, &store, &device).await?;
    Ok(answer(view::read(&store, &device, row).await?))
}

/// Replaces the device's desired configuration.
#[utoipa::path(
    put,
    path = "/v1/devices/{id}/config",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(
        ("id" = String, Path, description = "The device id"),
        ("If-Match" = Option<String>, Header, description = "Change only if the configuration is at this version (the `ETag`, `\"3\"`)"),
    ),
    request_body(content = Object, content_type = "application/json",
                 description = "The whole configuration: a JSON object of at most 8 KiB, at most 4 levels deep, 64 keys an object (1–64 of `A-Z a-z 0-9 _ - .`), strings of at most 256 bytes, no nulls"),
    responses(
        (status = 200, description = "Stored: the new standing, its version as the `ETag`", body = ConfigView),
        (status = 400, description = "Not a configuration: `parameter` names where (`config.alarm.limit`), or a bad `If-Match`", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A key whose role is viewer", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
        (status = 412, description = "`If-Match` names another version than the stored one", body = ApiError),
        (status = 413, description = "The body is over 16 KiB", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "Not stored (storage, or in a cluster the stream)", body = ApiError),
    ),
)]
pub async fn put_config(
    store: State<Store>,
    configs: State<Configs>,
    admin: State<Admin>,
    principal: Extension<Principal>,
    headers: HeaderMap,
    device: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    change_device(
        store,
        configs,
        admin,
        principal,
        headers,
        device,
        body,
        Change::Replace,
    )
    .await
}

/// Changes the device's desired configuration by a JSON merge patch
/// (RFC 7396): each key replaces the stored one, objects merge, `null`
/// removes a key.
#[utoipa::path(
    patch,
    path = "/v1/devices/{id}/config",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(
        ("id" = String, Path, description = "The device id"),
        ("If-Match" = Option<String>, Header, description = "Change only if the configuration is at this version (the `ETag`, `\"3\"`)"),
    ),
    request_body(content = Object, content_type = "application/merge-patch+json",
                 description = "A JSON merge patch (also taken as `application/json`); the configuration it makes keeps PUT's bounds"),
    responses(
        (status = 200, description = "Stored: the new standing, its version as the `ETag`", body = ConfigView),
        (status = 400, description = "Not a patch, or the configuration it makes breaks a bound: `parameter` names where; or a bad `If-Match`", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A key whose role is viewer", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
        (status = 412, description = "`If-Match` names another version than the stored one", body = ApiError),
        (status = 413, description = "The body is over 16 KiB", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "Not stored (storage, or in a cluster the stream)", body = ApiError),
    ),
)]
pub async fn patch_config(
    store: State<Store>,
    configs: State<Configs>,
    admin: State<Admin>,
    principal: Extension<Principal>,
    headers: HeaderMap,
    device: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    change_device(
        store,
        configs,
        admin,
        principal,
        headers,
        device,
        body,
        Change::Patch,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn change_device(
    State(store): State<Store>,
    State(configs): State<Configs>,
    State(admin): State<Admin>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    device: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
    change: fn(Value) -> Change,
) -> Result<Response, ApiError> {
    let device = path_of(device)?;
    access::require_role(&principal, Role::Operator, "changing a configuration")?;
    let row = device_row(&principal, &store, &device).await?;
    let expected = if_match(&headers)?;
    let Json(body) = body.map_err(ApiError::from_json_rejection)?;
    let change = change(body);
    let (version, _) = configs
        .change(row, &device, &change, expected, principal.who())
        .await?;
    admin
        .audit(
            &principal,
            "config.set",
            Some(&device),
            audit_detail(version, &change),
        )
        .await;
    Ok(answer(view::read(&store, &device, row).await?))
}

/// What the audit trail keeps of a change.
fn audit_detail(version: u64, change: &Change) -> Value {
    match change {
        Change::Replace(config) => serde_json::json!({"version": version, "config": config}),
        Change::Patch(patch) => serde_json::json!({"version": version, "patch": patch}),
    }
}

/// Each device a group change reached, and its new version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = GroupConfigChange)]
pub struct GroupChanged {
    group: String,
    devices: Vec<DeviceVersion>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ConfigVersion)]
struct DeviceVersion {
    device: String,
    version: u64,
}

/// Replaces the desired configuration of every device of a group (each
/// device gets a version of its own).
#[utoipa::path(
    put,
    path = "/v1/groups/{group}/config",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(("group" = String, Path, description = "The group's name")),
    request_body(content = Object, content_type = "application/json",
                 description = "The whole configuration, as for one device"),
    responses(
        (status = 200, description = "Stored for each device of the group the key sees", body = GroupChanged),
        (status = 400, description = "Not a configuration (`parameter` names where), a bad group name, or `If-Match` (a group has no one version)", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A key whose role is viewer", body = ApiError),
        (status = 404, description = "The group has no device the key sees", body = ApiError),
        (status = 413, description = "The body is over 16 KiB", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "Not stored (storage, or in a cluster the stream)", body = ApiError),
    ),
)]
pub async fn put_group_config(
    store: State<Store>,
    configs: State<Configs>,
    admin: State<Admin>,
    principal: Extension<Principal>,
    headers: HeaderMap,
    group: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<GroupChanged>, ApiError> {
    change_group(
        store,
        configs,
        admin,
        principal,
        headers,
        group,
        body,
        Change::Replace,
    )
    .await
}

/// Changes the desired configuration of every device of a group by one
/// JSON merge patch (each device's own configuration is patched).
#[utoipa::path(
    patch,
    path = "/v1/groups/{group}/config",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(("group" = String, Path, description = "The group's name")),
    request_body(content = Object, content_type = "application/merge-patch+json",
                 description = "A JSON merge patch, as for one device"),
    responses(
        (status = 200, description = "Stored for each device of the group the key sees", body = GroupChanged),
        (status = 400, description = "Not a patch, or one device's configuration it would make breaks a bound (nothing is changed then); a bad group name; or `If-Match`", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A key whose role is viewer", body = ApiError),
        (status = 404, description = "The group has no device the key sees", body = ApiError),
        (status = 413, description = "The body is over 16 KiB", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "Not stored (storage, or in a cluster the stream)", body = ApiError),
    ),
)]
pub async fn patch_group_config(
    store: State<Store>,
    configs: State<Configs>,
    admin: State<Admin>,
    principal: Extension<Principal>,
    headers: HeaderMap,
    group: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<GroupChanged>, ApiError> {
    change_group(
        store,
        configs,
        admin,
        principal,
        headers,
        group,
        body,
        Change::Patch,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn change_group(
    State(store): State<Store>,
    State(configs): State<Configs>,
    State(admin): State<Admin>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    group: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
    change: fn(Value) -> Change,
) -> Result<Json<GroupChanged>, ApiError> {
    let group = path_of(group)?;
    access::require_role(&principal, Role::Operator, "changing a configuration")?;
    if !is_valid_group(&group) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "a group's name is 1 to 64 of A-Z a-z 0-9 - _ . :",
        ));
    }
    if headers.contains_key(header::IF_MATCH) {
        return Err(ApiError::bad_parameter(
            "If-Match",
            "a group's devices have versions of their own: change one device to make it conditional",
        ));
    }
    let Json(body) = body.map_err(ApiError::from_json_rejection)?;
    let change = change(body);
    let mut devices = store
        .devices_in_groups(std::slice::from_ref(&group))
        .await?;
    if let Some(seen) = access::scope(&principal, &store).await? {
        devices.retain(|device| seen.contains(device));
    }
    if devices.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_group",
            format!("no device in group {group:?}"),
        ));
    }
    // Every device's new configuration is checked before any is stored,
    // so a patch one of them cannot take changes none.
    let mut rows = Vec::with_capacity(devices.len());
    for device in &devices {
        let Some((row, _)) = store.find_device(device).await? else {
            continue;
        };
        configs.check(row, &change).await?;
        rows.push((device, row));
    }
    let mut changed = Vec::with_capacity(rows.len());
    for (device, row) in rows {
        let (version, _) = configs
            .change(row, device, &change, None, principal.who())
            .await?;
        let mut detail = audit_detail(version, &change);
        detail["group"] = Value::String(group.clone());
        admin
            .audit(&principal, "config.set", Some(device), detail)
            .await;
        changed.push(DeviceVersion {
            device: device.clone(),
            version,
        });
    }
    Ok(Json(GroupChanged {
        group,
        devices: changed,
    }))
}
