//! The HTTP read API: devices, stored readings, health and counters.
//! Every failure answers with [`error::ApiError`]'s JSON body.

pub mod commands;
pub mod error;
pub mod events;
pub mod monitor_auth;
mod readings;

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::server::Shared;
use crate::store::devices::DeviceRecord;
use crate::store::query::MetricInfo;
use error::ApiError;

pub use readings::readings;

/// One device in `GET /v1/devices`.
#[derive(Debug, Serialize)]
struct DeviceView {
    #[serde(flatten)]
    record: DeviceRecord,
    online: bool,
    metrics: Vec<MetricInfo>,
}

/// `GET /v1/devices`: every device, whether it is connected and its metrics.
pub async fn devices(State(shared): State<Arc<Shared>>) -> Result<impl IntoResponse, ApiError> {
    let store = &shared.sessions.store;
    let records = store.list_devices().await?;
    let mut metrics = store.metrics_by_device().await?;
    let devices: Vec<DeviceView> = records
        .into_iter()
        .map(|record| DeviceView {
            online: shared.sessions.registry.is_online(&record.id),
            metrics: metrics.remove(&record.id).unwrap_or_default(),
            record,
        })
        .collect();
    Ok(Json(serde_json::json!({ "devices": devices })))
}

/// `GET /healthz`: 200 while the database answers.
pub async fn health(State(shared): State<Arc<Shared>>) -> Result<impl IntoResponse, ApiError> {
    shared.sessions.store.ping().await?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

/// `GET /metrics`: the counters in Prometheus text format.
pub async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.sessions.counters.render(),
    )
}
