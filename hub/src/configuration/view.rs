//! A device's configuration as people and programs read it: the API's
//! answer and the MQTT bridge's retained `{prefix}/{device}/config`.

use serde::Serialize;
use serde_json::Value;

use super::delivery::{self, State as Standing};
use crate::store::configuration::ConfigRow;
use crate::store::{Store, StoreError};

/// Where a device's configuration stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DeviceConfig)]
pub struct ConfigView {
    pub device: String,
    /// What the device should run, a JSON object (`{}` before any change).
    #[schema(value_type = Object)]
    desired: Value,
    /// The desired configuration's version (0: never changed); the `ETag`.
    pub version: u64,
    /// Who made the desired version, and when (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    desired_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    desired_ms: Option<i64>,
    reported: Reported,
    /// `none`, `applied`, `pending`, `refused`, `unsupported` (the device
    /// speaks a protocol older than configuration) or `unanswered` (sent
    /// three times without an answer).
    state: Standing,
    /// Whether the desired version is on its way (`state` is `pending`).
    pending: bool,
    /// Times this hub sent the desired version.
    deliveries: u32,
}

/// What the device answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ConfigReported)]
struct Reported {
    /// The last version it runs (0: none), and since when.
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<i64>,
    /// The configuration of that version: what the device runs, as it was
    /// desired then (absent before the device took any).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    config: Option<Value>,
    /// Its last answer: to which version, whether it took it, what it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<Answer>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ConfigAnswer)]
struct Answer {
    version: u64,
    ok: bool,
    detail: String,
    ms: i64,
}

/// Where the device of row `device_row` stands, read from storage: its
/// `config_state` row and the configuration of the version it runs.
///
/// # Errors
/// A database failure.
pub async fn read(store: &Store, device: &str, device_row: i64) -> Result<ConfigView, StoreError> {
    let row = store.config_of(device_row).await?;
    let applied = match &row {
        Some(row) if row.reported_version == row.desired_version => Some(row.desired.clone()),
        Some(row) => store.desired_at(device_row, row.reported_version).await?,
        None => None,
    };
    Ok(view(device, row, applied))
}

/// The view of a `config_state` row and the text of the configuration the
/// device runs.
fn view(device: &str, row: Option<ConfigRow>, applied: Option<String>) -> ConfigView {
    let Some(row) = row else {
        return ConfigView {
            device: device.to_owned(),
            desired: Value::Object(Default::default()),
            version: 0,
            desired_by: None,
            desired_ms: None,
            reported: Reported {
                version: 0,
                ms: None,
                config: None,
                answer: None,
            },
            state: Standing::None,
            pending: false,
            deliveries: 0,
        };
    };
    let state = delivery::state(&row);
    ConfigView {
        device: device.to_owned(),
        desired: serde_json::from_str(&row.desired).unwrap_or(Value::Null),
        version: row.desired_version,
        desired_by: row.desired_by,
        desired_ms: row.desired_ms,
        reported: Reported {
            version: row.reported_version,
            ms: row.reported_ms,
            config: applied.and_then(|text| serde_json::from_str(&text).ok()),
            answer: row.answered.map(|a| Answer {
                version: a.version,
                ok: a.ok,
                detail: a.detail,
                ms: a.ts_ms,
            }),
        },
        state,
        pending: state == Standing::Pending,
        deliveries: row.deliveries,
    }
}
