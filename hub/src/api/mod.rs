//! The HTTP read API: devices, stored readings, health and counters.
//! Every failure answers with [`ApiError`]'s JSON body. Each handler takes
//! only the parts of the hub's state it uses (axum sub-states).

pub mod access;
pub mod admin;
pub mod alerts;
pub mod backup;
pub mod commands;
pub mod config;
pub mod events;
pub mod openapi;
mod readings;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Serialize;

use crate::access::Principal;
use crate::http_error::ApiError;
use crate::ingest::registry::Registry;
use crate::store::Store;
use crate::store::devices::DeviceRecord;
use crate::store::query::MetricInfo;
use crate::store::writer::WriterHealth;
use crate::telemetry::Counters;
use crate::tls::Tls;

pub use readings::readings;

/// One device in `GET /v1/devices`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Device)]
struct DeviceView {
    #[serde(flatten)]
    record: DeviceRecord,
    /// Connected to this hub now.
    online: bool,
    metrics: Vec<MetricInfo>,
    /// The groups it belongs to.
    groups: Vec<String>,
}

/// The answer of `GET /v1/devices`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Devices {
    devices: Vec<DeviceView>,
}

/// The answer of a healthy `GET /healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Healthy {
    /// Always `ok`.
    #[schema(value_type = String)]
    status: &'static str,
    /// The MQTT bridge, when `--mqtt-url` is set. A broker that is away
    /// does not make the hub unhealthy: readings wait in storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt: Option<crate::bridge::Health>,
    /// The cluster, with `--nats-url`. A hub that cannot reach NATS is
    /// unhealthy instead (503 `cluster_unavailable`): it can acknowledge
    /// nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::journal::Health>,
}

/// Every device the key sees, whether it is connected, its metrics and
/// groups.
#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "monitor",
    security((), ("api_key" = [])),
    params(
        ("group" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,64}(,[A-Za-z0-9._:-]{1,64})*$", description = "Only devices of these groups, comma-separated"),
        ("token" = Option<String>, Query, description = "A key, for a browser's address bar"),
    ),
    responses(
        (status = 200, description = "Every device", body = Devices),
        (status = 400, description = "A bad query parameter", body = ApiError),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "On a hub without keys or monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn devices(
    State(store): State<Store>,
    State(registry): State<Registry>,
    Extension(principal): Extension<Principal>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<impl IntoResponse, ApiError> {
    let mut asked = None;
    for (name, value) in &pairs {
        match name.as_str() {
            "group" => asked = Some(groups_parameter(value)?),
            "token" => {}
            _ => {
                return Err(ApiError::bad_parameter(
                    name,
                    format!("unknown parameter {name:?}; known: group, token"),
                ));
            }
        }
    }
    let records = store.list_devices().await?;
    let mut metrics = store.metrics_by_device().await?;
    let mut groups = store.groups_by_device().await?;
    let within = |mine: &[String], wanted: &[String]| mine.iter().any(|g| wanted.contains(g));
    let devices: Vec<DeviceView> = records
        .into_iter()
        .filter_map(|record| {
            let mine = groups.remove(&record.id).unwrap_or_default();
            let seen = principal.groups.as_deref().is_none_or(|g| within(&mine, g));
            let wanted = asked.as_deref().is_none_or(|g| within(&mine, g));
            (seen && wanted).then(|| DeviceView {
                online: registry.online_anywhere(&record.id),
                metrics: metrics.remove(&record.id).unwrap_or_default(),
                groups: mine,
                record,
            })
        })
        .collect();
    Ok(Json(Devices { devices }))
}

/// What the request's key may do: `GET /v1/me`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Me {
    /// The key's name; absent for `--monitor-token` and an open hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// `viewer`, `operator` or `admin`.
    role: String,
    /// The groups whose devices alone it sees; absent: every device.
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<String>>,
}

/// The request's key: its role and the groups it is limited to, for a page
/// that shows only what the key may do.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "monitor",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "The key's role and groups", body = Me),
        (status = 401, description = "The key is missing or does not work", body = ApiError),
        (status = 403, description = "On a hub without keys or monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
    ),
)]
pub async fn me(Extension(principal): Extension<Principal>) -> impl IntoResponse {
    Json(Me {
        key: principal.key.as_deref().map(str::to_owned),
        role: principal.role.as_str().to_owned(),
        groups: principal.groups.as_deref().map(<[String]>::to_vec),
    })
}

/// `group=a,b`: group names, each checked.
///
/// # Errors
/// An empty list or a name that cannot be a group's, naming `group`.
pub(crate) fn groups_parameter(value: &str) -> Result<Vec<String>, ApiError> {
    let groups: Vec<String> = value.split(',').map(str::to_owned).collect();
    if let Some(bad) = groups.iter().find(|g| !crate::access::is_valid_group(g)) {
        return Err(ApiError::bad_parameter(
            "group",
            format!("{bad:?} is not a group name: 1 to 64 of A-Z a-z 0-9 - _ . :"),
        ));
    }
    Ok(groups)
}

/// 200 while the database answers and the writer runs and commits, and in
/// a cluster while NATS is reachable; 503 with the reason otherwise
/// (`storage_failing`, `writer_stopped`, `storage_unavailable`,
/// `cluster_unavailable`).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The hub stores and serves", body = Healthy),
        (status = 503, description = "Why it does not", body = ApiError),
    ),
)]
pub async fn health(
    State(store): State<Store>,
    State(writer): State<WriterHealth>,
    State(mqtt): State<Option<Arc<crate::bridge::Status>>>,
    State(cluster): State<Option<Arc<crate::journal::Status>>>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(reason) = writer.failure() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "writer_stopped",
            reason,
        ));
    }
    if let Some(error) = writer.commit_failure() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_failing",
            format!("the last commit failed: {error}"),
        ));
    }
    let cluster = match cluster.map(|journal| journal.health()).transpose() {
        Ok(cluster) => cluster,
        Err(reason) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                reason.to_string(),
            ));
        }
    };
    store.ping().await?;
    Ok(Json(Healthy {
        status: "ok",
        mqtt: mqtt.map(|bridge| bridge.health()),
        cluster,
    }))
}

/// The hub's counters in Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4",
         body = String, content_type = "text/plain"),
    ),
)]
pub async fn metrics(
    State(counters): State<Arc<Counters>>,
    State(tls): State<Option<Tls>>,
    State(mqtt): State<Option<Arc<crate::bridge::Status>>>,
    State(cluster): State<Option<Arc<crate::journal::Status>>>,
    State(alerts): State<crate::alerts::Alerts>,
) -> impl IntoResponse {
    let mut text = counters.render();
    text.push_str(&alerts.render());
    if let Some(tls) = tls {
        text.push_str(&tls.render());
    }
    if let Some(mqtt) = mqtt {
        text.push_str(&mqtt.render());
    }
    if let Some(cluster) = cluster {
        text.push_str(&cluster.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
