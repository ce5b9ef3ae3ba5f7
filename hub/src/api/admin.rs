//! The admin API (`/v1/admin/...`): devices (add, with the token shown
//! once; a new token; revoke; rename and groups), keys (list, add, with the
//! key shown once; revoke) and groups, so a fleet can be managed from
//! another machine without a shell on the hub. Every endpoint needs the
//! admin role; a key limited to groups manages only devices of its groups,
//! and keys only with a key of every device.
//!
//! Writes go through the writer (committed before the answer); a device's
//! credentials in a cluster go through the stream, as `hub device add
//! --nats-url`, and keys and groups on the stream's access subject; both
//! are answered once this hub has applied them, so every hub agrees.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access;
use crate::access::{Principal, Role, is_valid_group};
use crate::auth;
use crate::commits::event::{AuditEntry, EventKind, NewEvent};
use crate::http_error::ApiError;
use crate::journal::Journal;
use crate::journal::access::AccessEntry;
use crate::journal::provision::DeviceChange;
use crate::store::access::{AuditRow, KeyRecord};
use crate::store::writer::{Provisioned, WriteError, WriterHandle};
use crate::store::{Store, now_ms};

/// The largest body an admin request may have.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Most entries `GET /v1/admin/audit` returns.
const MAX_AUDIT: u32 = 200;
/// Most groups one request names.
const MAX_GROUPS: usize = 32;
/// The longest a key made by the API may live: ten years.
const MAX_EXPIRES_IN_S: u64 = 315_360_000;

/// A group's name in the document: 1 to 64 of `A-Z a-z 0-9 - _ . :`.
const GROUP_PATTERN: &str = "^[A-Za-z0-9._:-]{1,64}$";

/// A list of group names, or null, as the document describes it.
fn group_list() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(GROUP_PATTERN)),
        )
        .max_items(Some(MAX_GROUPS))
        .build()
}

/// Where the admin API's writes, and every audit entry, go.
#[derive(Debug, Clone)]
pub struct Admin {
    pub writer: WriterHandle,
    pub store: Store,
    /// In a cluster: devices' credentials and audit entries go through the
    /// stream.
    pub journal: Option<Journal>,
}

impl Admin {
    /// Records what `principal` did as an `audit` event of `device` (or of
    /// no device), after it was done. A failure to record is logged: what
    /// was done stays done. In a cluster an entry of no device is not
    /// kept yet (the stream's events belong to devices).
    pub async fn audit(
        &self,
        principal: &Principal,
        action: &str,
        device: Option<&str>,
        detail: serde_json::Value,
    ) {
        let kind = EventKind::Audit(Box::new(AuditEntry {
            by: principal.who().to_owned(),
            action: action.to_owned(),
            detail,
        }));
        let ts_ms = now_ms();
        let recorded = match (&self.journal, device) {
            (Some(journal), Some(device)) => journal
                .append_event(device, ts_ms, kind, None)
                .await
                .map(|_| ())
                .map_err(|err| err.to_string()),
            (Some(_), None) => {
                tracing::debug!(
                    action,
                    "an audit entry of no device is not kept in a cluster yet"
                );
                Ok(())
            }
            (None, device) => self.record(device, ts_ms, kind).await,
        };
        if let Err(err) = recorded {
            tracing::error!(action, by = principal.who(), error = %err, "an audit entry was not stored");
        }
    }

    /// Changes keys or a device's name and groups: through the writer, or
    /// in a cluster through the stream (answered once this hub applied
    /// it). Whether it changed anything; in a cluster, that the stream
    /// holds it (callers check what they must before and after).
    async fn change_access(&self, entry: AccessEntry) -> Result<bool, ApiError> {
        match &self.journal {
            Some(journal) => {
                journal.change_access(&entry).await.map_err(not_stored)?;
                Ok(true)
            }
            None => {
                let change = entry.to_write().map_err(not_stored)?;
                self.writer.change_access(change).await.map_err(write_error)
            }
        }
    }

    async fn record(
        &self,
        device: Option<&str>,
        ts_ms: i64,
        kind: EventKind,
    ) -> Result<(), String> {
        let device_row = match device {
            Some(device) => match self.store.find_device(device).await {
                Ok(Some((row, _))) => Some(row),
                Ok(None) => return Err(format!("no device {device:?}")),
                Err(err) => return Err(err.to_string()),
            },
            None => None,
        };
        let event = NewEvent {
            device_row,
            device: device.unwrap_or_default().into(),
            ts_ms,
            kind,
        };
        self.writer
            .record(vec![event])
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}

fn path(value: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    value.map(|Path(value)| value).map_err(|rejection| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    })
}

fn not_stored(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_stored",
        format!("not stored: {err}"),
    )
}

fn write_error(err: WriteError) -> ApiError {
    not_stored(err)
}

/// 403 unless the principal is an admin.
fn admin(principal: &Principal) -> Result<(), ApiError> {
    access::require_role(principal, Role::Admin, "the admin API")
}

/// 403 unless the principal is an admin of every device.
pub(super) fn admin_of_everything(principal: &Principal, what: &str) -> Result<(), ApiError> {
    admin(principal)?;
    match principal.groups {
        None => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} needs a key of every device; this one is limited to groups"),
        )),
    }
}

/// Checks group names from the body's `field`, and that a key limited to
/// groups names only its own.
fn groups_of(
    principal: &Principal,
    field: &str,
    groups: Option<Vec<String>>,
) -> Result<Vec<String>, ApiError> {
    let groups = groups.unwrap_or_default();
    if groups.len() > MAX_GROUPS {
        return Err(ApiError::bad_field(
            field,
            format!("at most {MAX_GROUPS} groups"),
        ));
    }
    if let Some(bad) = groups.iter().find(|g| !is_valid_group(g)) {
        return Err(ApiError::bad_field(
            field,
            format!("{bad:?} is not a group name: 1 to 64 of A-Z a-z 0-9 - _ . :"),
        ));
    }
    if let Some(mine) = &principal.groups
        && let Some(other) = groups.iter().find(|g| !mine.contains(g))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this key manages only its own groups, not {other:?}"),
        ));
    }
    Ok(groups)
}

/// A name for people: 1 to 64 characters, none a control character.
fn name_of(field: &str, name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        Some(name)
            if name.is_empty()
                || name.chars().count() > 64
                || name.chars().any(char::is_control) =>
        {
            Err(ApiError::bad_field(
                field,
                "a name is 1 to 64 characters, none a control character",
            ))
        }
        name => Ok(name),
    }
}

/// A device to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// 1 to 64 of `A-Z a-z 0-9 - _ . :`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    id: String,
    /// A name for people: 1 to 64 characters, none a control character.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    name: Option<String>,
    /// Groups it joins (a key limited to groups must name one of its own).
    #[schema(schema_with = group_list)]
    groups: Option<Vec<String>>,
}

/// A device's credential, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeviceToken {
    id: String,
    /// The device's bearer token for `/v1/ws`.
    token: String,
}

/// Adds a device and returns its token, this once.
#[utoipa::path(
    post,
    path = "/v1/admin/devices",
    tag = "admin",
    security((), ("api_key" = [])),
    request_body(content = NewDevice, content_type = "application/json", description = "At most 8 KiB"),
    responses(
        (status = 201, description = "Added: the device's token", body = DeviceToken),
        (status = 400, description = "The field at fault is named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key, or groups outside the key's (`forbidden`); a cross-site request with the cookie (`cross_site`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 408, description = "The body did not arrive in time", body = ApiError),
        (status = 409, description = "A device with that id exists", body = ApiError),
        (status = 413, description = "The body is over 8 KiB", body = ApiError),
        (status = 415, description = "The body is not `application/json`", body = ApiError),
        (status = 503, description = "Not stored", body = ApiError),
    ),
)]
pub async fn add_device(
    State(admin_state): State<Admin>,
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin(&principal)?;
    let Json(device) = body.map_err(ApiError::from_json_rejection)?;
    if !protocol::is_valid_device_id(&device.id) {
        return Err(ApiError::bad_field(
            "id",
            "a device id is 1 to 64 of A-Z a-z 0-9 - _ . :",
        ));
    }
    let name = name_of("name", device.name)?;
    let groups = groups_of(&principal, "groups", device.groups)?;
    if principal.groups.is_some() && groups.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a key limited to groups adds devices to one of its groups: name it in `groups`",
        ));
    }
    if store.device(&device.id).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("device {:?} exists", device.id),
        ));
    }
    let token = issue_token(&admin_state, &device.id, name.clone()).await?;
    if !groups.is_empty() {
        regroup(&admin_state, &device.id, None, groups.clone(), Vec::new()).await?;
    }
    let detail = serde_json::json!({"name": name, "groups": groups});
    admin_state
        .audit(&principal, "device.add", Some(&device.id), detail)
        .await;
    Ok((
        StatusCode::CREATED,
        Json(DeviceToken {
            id: device.id,
            token,
        }),
    ))
}

/// Gives the device a token of its own, through the writer or the stream.
async fn issue_token(
    admin: &Admin,
    device_id: &str,
    name: Option<String>,
) -> Result<String, ApiError> {
    let token = auth::generate_token().map_err(not_stored)?;
    let hash = auth::hash_token(&token);
    match &admin.journal {
        Some(journal) => journal
            .provision(&DeviceChange::Token {
                device: device_id.to_owned(),
                token_sha256: hash.to_vec(),
                name,
            })
            .await
            .map_err(not_stored)?,
        None => admin
            .writer
            .provision(Provisioned::Token {
                device_id: device_id.to_owned(),
                token_hash: hash,
                name,
            })
            .await
            .map_err(write_error)?,
    }
    Ok(token)
}

async fn regroup(
    admin: &Admin,
    device_id: &str,
    name: Option<String>,
    join: Vec<String>,
    leave: Vec<String>,
) -> Result<bool, ApiError> {
    admin
        .change_access(AccessEntry::Device {
            device: device_id.to_owned(),
            name,
            join,
            leave,
        })
        .await
}

/// A change to a device: its name, groups to join and to leave.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    /// A new name for people: 1 to 64 characters, none a control character.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    name: Option<String>,
    /// Groups to join.
    #[schema(schema_with = group_list)]
    join: Option<Vec<String>>,
    /// Groups to leave.
    #[schema(schema_with = group_list)]
    leave: Option<Vec<String>>,
}

/// A device's name and groups, after a change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeviceGroups {
    id: String,
    name: Option<String>,
    groups: Vec<String>,
}

/// Renames a device, or moves it between groups.
#[utoipa::path(
    patch,
    path = "/v1/admin/devices/{id}",
    tag = "admin",
    security((), ("api_key" = [])),
    params(("id" = String, Path, description = "The device id")),
    request_body(content = DeviceUpdate, content_type = "application/json", description = "At most 8 KiB"),
    responses(
        (status = 200, description = "The device as it now stands", body = DeviceGroups),
        (status = 400, description = "The field at fault is named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key, or groups outside the key's (`forbidden`); a cross-site request with the cookie (`cross_site`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
        (status = 408, description = "The body did not arrive in time", body = ApiError),
        (status = 413, description = "The body is over 8 KiB", body = ApiError),
        (status = 415, description = "The body is not `application/json`", body = ApiError),
        (status = 503, description = "Not stored", body = ApiError),
    ),
)]
pub async fn update_device(
    State(admin_state): State<Admin>,
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<DeviceUpdate>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin(&principal)?;
    let id = path(id)?;
    let Json(update) = body.map_err(ApiError::from_json_rejection)?;
    access::sees(&principal, &store, &id).await?;
    let name = name_of("name", update.name)?;
    let join = groups_of(&principal, "join", update.join)?;
    let leave = groups_of(&principal, "leave", update.leave)?;
    if store.device(&id).await?.is_none() {
        return Err(access::unknown_device(&id));
    }
    let detail = serde_json::json!({"name": name, "join": join, "leave": leave});
    if !regroup(&admin_state, &id, name, join, leave).await? {
        return Err(access::unknown_device(&id));
    }
    admin_state
        .audit(&principal, "device.update", Some(&id), detail)
        .await;
    let record = store
        .device(&id)
        .await?
        .ok_or_else(|| access::unknown_device(&id))?;
    let groups = store
        .groups_by_device()
        .await?
        .remove(&id)
        .unwrap_or_default();
    Ok(Json(DeviceGroups {
        id,
        name: record.name,
        groups,
    }))
}

/// Revokes a device: its token stops working and its connection closes
/// within a second. Its history stays: revocation is not deletion.
#[utoipa::path(
    post,
    path = "/v1/admin/devices/{id}/revoke",
    tag = "admin",
    security((), ("api_key" = [])),
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 204, description = "Revoked (or it was already)"),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key (`forbidden`); a cross-site request with the cookie (`cross_site`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
        (status = 503, description = "Not stored", body = ApiError),
    ),
)]
pub async fn revoke_device(
    State(admin_state): State<Admin>,
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin(&principal)?;
    let id = path(id)?;
    access::sees(&principal, &store, &id).await?;
    if store.device(&id).await?.is_none() {
        return Err(access::unknown_device(&id));
    }
    match &admin_state.journal {
        Some(journal) => journal
            .provision(&DeviceChange::Revoked { device: id.clone() })
            .await
            .map_err(not_stored)?,
        None => admin_state
            .writer
            .provision(Provisioned::Revoked {
                device_id: id.clone(),
            })
            .await
            .map_err(write_error)?,
    }
    admin_state
        .audit(
            &principal,
            "device.revoke",
            Some(&id),
            serde_json::Value::Null,
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a device a new token, shown this once: its old one stops working.
#[utoipa::path(
    post,
    path = "/v1/admin/devices/{id}/token",
    tag = "admin",
    security((), ("api_key" = [])),
    params(("id" = String, Path, description = "The device id")),
    responses(
        (status = 200, description = "The device's new token", body = DeviceToken),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key (`forbidden`); a cross-site request with the cookie (`cross_site`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such device, or none the key sees", body = ApiError),
        (status = 503, description = "Not stored", body = ApiError),
    ),
)]
pub async fn new_token(
    State(admin_state): State<Admin>,
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin(&principal)?;
    let id = path(id)?;
    access::sees(&principal, &store, &id).await?;
    if store.device(&id).await?.is_none() {
        return Err(access::unknown_device(&id));
    }
    let token = issue_token(&admin_state, &id, None).await?;
    admin_state
        .audit(
            &principal,
            "device.token",
            Some(&id),
            serde_json::Value::Null,
        )
        .await;
    Ok(Json(DeviceToken { id, token }))
}

/// Every key (never the keys themselves).
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Keys {
    keys: Vec<KeyRecord>,
}

/// Every key, revoked and expired ones too.
#[utoipa::path(
    get,
    path = "/v1/admin/keys",
    tag = "admin",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Every key, by name", body = Keys),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key of every device (`forbidden`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn keys(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
) -> Result<impl IntoResponse, ApiError> {
    admin_of_everything(&principal, "managing keys")?;
    Ok(Json(Keys {
        keys: store.keys().await?,
    }))
}

/// A key to make.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// `viewer`, `operator` or `admin`.
    #[schema(pattern = "^(viewer|operator|admin)$")]
    role: String,
    /// 1 to 64 of `A-Z a-z 0-9 - _ . :`; default `key-` and 8 hex.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    name: Option<String>,
    /// The groups whose devices alone it sees; absent or empty: every device.
    #[schema(schema_with = group_list)]
    groups: Option<Vec<String>>,
    /// It stops working this many seconds from now (at most ten years).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 315_360_000)]
    expires_in_s: Option<f64>,
}

/// A new key, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct MadeKey {
    name: String,
    /// The key, for `Authorization: Bearer`.
    key: String,
    role: String,
    groups: Vec<String>,
    /// When it stops working, ms since the Unix epoch.
    expires_ms: Option<i64>,
}

/// Makes a key and returns it, this once.
#[utoipa::path(
    post,
    path = "/v1/admin/keys",
    tag = "admin",
    security((), ("api_key" = [])),
    request_body(content = NewKey, content_type = "application/json", description = "At most 8 KiB"),
    responses(
        (status = 201, description = "The key", body = MadeKey),
        (status = 400, description = "The field at fault is named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key of every device (`forbidden`); a cross-site request with the cookie (`cross_site`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 408, description = "The body did not arrive in time", body = ApiError),
        (status = 409, description = "A key of that name exists", body = ApiError),
        (status = 413, description = "The body is over 8 KiB", body = ApiError),
        (status = 415, description = "The body is not `application/json`", body = ApiError),
        (status = 503, description = "Not stored", body = ApiError),
    ),
)]
pub async fn add_key(
    State(admin_state): State<Admin>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin_of_everything(&principal, "managing keys")?;
    let Json(new) = body.map_err(ApiError::from_json_rejection)?;
    let role = Role::parse(&new.role)
        .ok_or_else(|| ApiError::bad_field("role", format!("a role is {}", Role::NAMES)))?;
    let name = match new.name {
        Some(name) if is_valid_group(&name) => name,
        Some(_) => {
            return Err(ApiError::bad_field(
                "name",
                "a key's name is 1 to 64 of A-Z a-z 0-9 - _ . :",
            ));
        }
        None => format!("key-{}", &auth::generate_token().map_err(not_stored)?[..8]),
    };
    let groups = groups_of(&principal, "groups", new.groups)?;
    let expires_ms = match new.expires_in_s {
        None => None,
        // JSON's 60.0 is the integer 60.
        Some(s) if s.fract() == 0.0 && (1.0..=MAX_EXPIRES_IN_S as f64).contains(&s) => {
            Some(now_ms() + s as i64 * 1_000)
        }
        Some(_) => {
            return Err(ApiError::bad_field(
                "expires_in_s",
                format!("expires_in_s is 1 to {MAX_EXPIRES_IN_S} seconds"),
            ));
        }
    };
    let key = crate::access::generate_key().map_err(not_stored)?;
    let key_sha256 = auth::hash_token(&key);
    let named = |keys: &[KeyRecord]| keys.iter().any(|k| k.name == name);
    let ours = |keys: &[KeyRecord]| {
        keys.iter()
            .any(|k| k.name == name && k.key_sha256 == key_sha256)
    };
    // In a cluster the stream answers only that it holds the change:
    // whether the name was free is read back, as this hub applied it.
    let taken = admin_state.journal.is_some() && named(&admin_state.store.keys().await?);
    let added = !taken
        && admin_state
            .change_access(AccessEntry::AddKey {
                name: name.clone(),
                key_sha256: key_sha256.to_vec(),
                role: role.as_str().to_owned(),
                groups: groups.clone(),
                expires_ms,
            })
            .await?
        && ours(&admin_state.store.keys().await?);
    if !added {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("a key named {name:?} exists"),
        ));
    }
    let detail = serde_json::json!({
        "name": name, "role": role.as_str(), "groups": groups, "expires_ms": expires_ms,
    });
    admin_state.audit(&principal, "key.add", None, detail).await;
    Ok((
        StatusCode::CREATED,
        Json(MadeKey {
            name,
            key,
            role: role.as_str().to_owned(),
            groups,
            expires_ms,
        }),
    ))
}

/// Revokes a key: requests with it are refused within a second, and its
/// open live streams end. It stays listed, as revoked.
#[utoipa::path(
    post,
    path = "/v1/admin/keys/{name}/revoke",
    tag = "admin",
    security((), ("api_key" = [])),
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 204, description = "Revoked (or it was already)"),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key of every device (`forbidden`); a cross-site request with the cookie (`cross_site`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such key", body = ApiError),
        (status = 503, description = "Not stored", body = ApiError),
    ),
)]
pub async fn revoke_key(
    State(admin_state): State<Admin>,
    Extension(principal): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    admin_of_everything(&principal, "managing keys")?;
    let name = path(name)?;
    let known = admin_state
        .store
        .keys()
        .await?
        .iter()
        .any(|k| k.name == name);
    let found = known
        && admin_state
            .change_access(AccessEntry::RevokeKey { name: name.clone() })
            .await?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no key {name:?}"),
        ));
    }
    let detail = serde_json::json!({ "name": name });
    admin_state
        .audit(&principal, "key.revoke", None, detail)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The newest entries of the audit trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Audit {
    entries: Vec<AuditRow>,
}

/// The newest 200 entries of the audit trail, newest first: admin actions
/// and commands, by whom. The live stream carries the next ones (`audit`
/// events, `types=audit`).
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "admin",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Newest first", body = Audit),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key of every device (`forbidden`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn audit(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
) -> Result<impl IntoResponse, ApiError> {
    admin_of_everything(&principal, "the audit trail")?;
    Ok(Json(Audit {
        entries: store.audit(MAX_AUDIT).await?,
    }))
}

/// Groups and how many devices each has.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Groups {
    /// Group name → number of devices.
    groups: BTreeMap<String, i64>,
}

/// Every group the key sees, with its number of devices.
#[utoipa::path(
    get,
    path = "/v1/admin/groups",
    tag = "admin",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Groups by name", body = Groups),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "Not an admin key (`forbidden`); an open hub's unknown `Host` (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn groups(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
) -> Result<impl IntoResponse, ApiError> {
    admin(&principal)?;
    let groups = store
        .groups()
        .await?
        .into_iter()
        .filter(|(group, _)| {
            principal
                .groups
                .as_deref()
                .is_none_or(|mine| mine.contains(group))
        })
        .collect();
    Ok(Json(Groups { groups }))
}
