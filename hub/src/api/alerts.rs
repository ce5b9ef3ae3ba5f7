//! Alert rules (`/v1/alert-rules`) and alerts (`/v1/alerts`): list, add
//! and remove rules; list alerts and acknowledge one. Writes go through
//! [`Alerts`] (the writer, and the evaluator for acknowledgements).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access;
use super::admin::Admin;
use crate::access::{Principal, Role};
use crate::alerts::rule::RuleSpec;
use crate::alerts::{AckError, Alerts, RuleWriteError};
use crate::commits::Position;
use crate::http_error::ApiError;
use crate::store::Store;
use crate::store::alerts::AlertRow;

/// The largest body a rule or an acknowledgement may have.
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Most alerts one `GET /v1/alerts` returns.
const MAX_ALERTS: u32 = 1_000;

fn path<T>(value: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    value.map(|Path(value)| value).map_err(|rejection| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    })
}

fn rule_error(err: RuleWriteError) -> ApiError {
    let message = err.to_string();
    match err {
        RuleWriteError::Invalid(err) => ApiError::bad_field(err.field, err.message),
        RuleWriteError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "exists", message),
        RuleWriteError::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
        RuleWriteError::Write(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", message)
        }
        RuleWriteError::Unavailable(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", message)
        }
    }
}

/// Every alert rule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Rules {
    rules: Vec<RuleSpec>,
}

/// Every alert rule, by name.
#[utoipa::path(
    get,
    path = "/v1/alert-rules",
    tag = "monitor",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Every rule, defaults filled in", body = Rules),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "On a hub without keys or monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn rules(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = access::scope(&principal, &store).await?;
    let rules = store
        .alert_rules()
        .await?
        .into_iter()
        // A row edited by hand into something else is left out.
        .filter_map(|(_, text)| serde_json::from_str::<RuleSpec>(&text).ok())
        // A key limited to groups is not told of other devices' ids.
        .filter(|rule| match (&scope, &rule.device) {
            (Some(scope), Some(device)) if !device.contains(['*', '?']) => scope.contains(device),
            _ => true,
        })
        .collect();
    Ok(Json(Rules { rules }))
}

/// Adds an alert rule; it runs from the next readings on.
#[utoipa::path(
    post,
    path = "/v1/alert-rules",
    tag = "monitor",
    security((), ("api_key" = [])),
    request_body(content = RuleSpec, content_type = "application/json", description = "At most 8 KiB"),
    responses(
        (status = 201, description = "Added: the rule, defaults filled in", body = RuleSpec),
        (status = 400, description = "Not a rule: the field at fault is named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A cross-site request with the monitor cookie (`cross_site`), or on a hub without keys or monitor token a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 408, description = "The body did not arrive whole within the header deadline (`--header-read-timeout`)", body = ApiError),
        (status = 409, description = "A rule of that name exists", body = ApiError),
        (status = 413, description = "The body is over 8 KiB", body = ApiError),
        (status = 415, description = "The body is not `application/json`", body = ApiError),
        (status = 503, description = "The rule was not stored (in a cluster: the stream did not take it)", body = ApiError),
    ),
)]
pub async fn add_rule(
    State(alerts): State<Alerts>,
    State(admin): State<Admin>,
    Extension(principal): Extension<Principal>,
    body: Result<Json<RuleSpec>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    managing_rules(&principal)?;
    let Json(spec) = body.map_err(ApiError::from_json_rejection)?;
    let rule = alerts.add_rule(spec).await.map_err(rule_error)?;
    let detail = serde_json::to_value(&rule.spec).unwrap_or_default();
    admin.audit(&principal, "rule.add", None, detail).await;
    Ok((StatusCode::CREATED, Json(rule.spec)))
}

/// Removes an alert rule; its alerts resolve.
#[utoipa::path(
    delete,
    path = "/v1/alert-rules/{name}",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(("name" = String, Path, description = "The rule's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A bad path", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A cross-site request with the monitor cookie (`cross_site`), or on a hub without keys or monitor token a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such rule", body = ApiError),
        (status = 503, description = "The rule was not removed", body = ApiError),
    ),
)]
pub async fn remove_rule(
    State(alerts): State<Alerts>,
    State(admin): State<Admin>,
    Extension(principal): Extension<Principal>,
    name: Result<Path<String>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    managing_rules(&principal)?;
    let name = path(name)?;
    alerts.remove_rule(&name).await.map_err(rule_error)?;
    let detail = serde_json::json!({ "name": name });
    admin.audit(&principal, "rule.remove", None, detail).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Rules concern every device: only an admin of every device manages them.
fn managing_rules(principal: &Principal) -> Result<(), ApiError> {
    access::require_role(principal, Role::Admin, "managing alert rules")?;
    if principal.groups.is_some() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "managing alert rules needs a key of every device; this one is limited to groups",
        ));
    }
    Ok(())
}

/// Which alerts `GET /v1/alerts` lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `open` (the default: firing or acknowledged) or `all`.
    #[param(pattern = "^(open|all)$")]
    state: Option<String>,
    /// Only this device's.
    device: Option<String>,
    /// A key, for links (read by the token check).
    #[allow(dead_code)]
    token: Option<String>,
}

/// Alerts, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AlertList {
    alerts: Vec<AlertRow>,
}

/// Alerts, newest first (at most 1,000): those not resolved, or all.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(AlertQuery),
    responses(
        (status = 200, description = "Alerts, newest first", body = AlertList),
        (status = 400, description = "A bad query parameter, named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "On a hub without keys or monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn alerts(
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<AlertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            rejection.body_text(),
        )
    })?;
    let open = match query.state.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::bad_parameter(
                "state",
                format!("{other:?} is not a state to list: open or all"),
            ));
        }
    };
    let alerts = store
        .alerts(
            open,
            query.device.as_deref(),
            principal.groups.as_deref(),
            MAX_ALERTS,
        )
        .await?;
    Ok(Json(AlertList { alerts }))
}

/// Who acknowledges, and why.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Acknowledgement {
    /// Who has seen it: 1–64 characters, none a control character.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    by: String,
    /// At most 256 characters.
    #[schema(max_length = 256)]
    note: Option<String>,
}

/// Acknowledges a firing alert: a person has seen it. It stays open until
/// its rule resolves it.
#[utoipa::path(
    post,
    path = "/v1/alerts/{alert}/ack",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(("alert" = i64, Path, minimum = 1, description = "The alert's id")),
    request_body(content = Acknowledgement, content_type = "application/json"),
    responses(
        (status = 200, description = "Acknowledged: the alert as it now stands", body = AlertRow),
        (status = 400, description = "A bad path or body, the field named", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "A cross-site request with the monitor cookie (`cross_site`), or on a hub without keys or monitor token a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 404, description = "No such alert", body = ApiError),
        (status = 408, description = "The body did not arrive whole within the header deadline (`--header-read-timeout`)", body = ApiError),
        (status = 409, description = "The alert is resolved or already acknowledged", body = ApiError),
        (status = 413, description = "The body is over 8 KiB", body = ApiError),
        (status = 415, description = "The body is not `application/json`", body = ApiError),
        (status = 503, description = "Not recorded (the hub is busy or stopping); try again", body = ApiError),
    ),
)]
pub async fn acknowledge(
    State(alerts): State<Alerts>,
    State(store): State<Store>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<Position>, PathRejection>,
    body: Result<Json<Acknowledgement>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let id = path(id)?;
    access::require_role(&principal, Role::Operator, "acknowledging an alert")?;
    let Json(ack) = body.map_err(ApiError::from_json_rejection)?;
    let by = ack.by.as_str();
    if by.is_empty() || by.chars().count() > 64 || by.chars().any(char::is_control) {
        return Err(ApiError::bad_field(
            "by",
            "by is 1 to 64 characters, none a control character",
        ));
    }
    if ack
        .note
        .as_ref()
        .is_some_and(|note| note.chars().count() > 256)
    {
        return Err(ApiError::bad_field(
            "note",
            "a note is at most 256 characters",
        ));
    }
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no alert {id}"));
    let alert = store.alert(id).await?.ok_or_else(unknown)?;
    // An alert of a device the key does not see is as unknown as that device.
    access::sees(&principal, &store, &alert.device)
        .await
        .map_err(|_| unknown())?;
    alerts
        .acknowledge(id, by.to_owned(), ack.note)
        .await
        .map_err(|err| {
            let message = err.to_string();
            match err {
                AckError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
                AckError::Resolved(_) => ApiError::new(StatusCode::CONFLICT, "resolved", message),
                AckError::AlreadyAcknowledged(_) => {
                    ApiError::new(StatusCode::CONFLICT, "already_acknowledged", message)
                }
                AckError::Busy
                | AckError::Stopped
                | AckError::Write(_)
                | AckError::Unavailable(_) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_stored", message)
                }
            }
        })?;
    let alert = store.alert(id).await?.ok_or_else(unknown)?;
    Ok(Json(alert))
}
