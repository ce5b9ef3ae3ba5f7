//! The HTTP read API: devices, stored readings, health and counters.
//! Every failure answers with [`ApiError`]'s JSON body. Each handler takes
//! only the parts of the hub's state it uses (axum sub-states).

pub mod alerts;
pub mod commands;
pub mod events;
pub mod monitor_auth;
pub mod openapi;
mod readings;

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;

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

/// Every device, whether it is connected, and its metrics.
#[utoipa::path(
    get,
    path = "/v1/devices",
    tag = "monitor",
    security((), ("monitor_token" = [])),
    responses(
        (status = 200, description = "Every device", body = Devices),
        (status = 400, description = "A bad query parameter", body = ApiError),
        (status = 401, description = "The monitor token is missing or wrong", body = ApiError),
        (status = 403, description = "Without a monitor token: a `Host` that is not an IP address, `localhost` or an `--allowed-host` name (`host_not_allowed`)", body = ApiError),
        (status = 503, description = "The database cannot be read", body = ApiError),
    ),
)]
pub async fn devices(
    State(store): State<Store>,
    State(registry): State<Registry>,
) -> Result<impl IntoResponse, ApiError> {
    let records = store.list_devices().await?;
    let mut metrics = store.metrics_by_device().await?;
    let devices: Vec<DeviceView> = records
        .into_iter()
        .map(|record| DeviceView {
            online: registry.online_anywhere(&record.id),
            metrics: metrics.remove(&record.id).unwrap_or_default(),
            record,
        })
        .collect();
    Ok(Json(Devices { devices }))
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
