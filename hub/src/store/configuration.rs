//! Devices' configurations as `config_state` holds them (the writer keeps
//! it, in the transaction of each `config` event), for sessions that
//! deliver them and the API that shows them.

use sqlx::Row;

use super::{Store, StoreError};

/// Where one device's configuration stands.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRow {
    /// The desired configuration, a JSON object's text.
    pub desired: String,
    pub desired_version: u64,
    pub desired_ms: Option<i64>,
    pub desired_by: Option<String>,
    /// The last version the device runs (0: none).
    pub reported_version: u64,
    pub reported_ms: Option<i64>,
    /// The device's last answer.
    pub answered: Option<Answered>,
    /// The protocol of its last connection that could have been sent the
    /// desired version, as this hub saw it.
    pub protocol: Option<u16>,
    /// Times this hub sent the desired version.
    pub deliveries: u32,
    pub delivered_ms: Option<i64>,
}

/// A device's answer to one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub version: u64,
    pub ok: bool,
    pub detail: String,
    pub ts_ms: i64,
}

fn version(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl Store {
    /// Where the device of row `device_row` stands; `None` if it never had
    /// a configuration.
    ///
    /// # Errors
    /// A database failure.
    pub async fn config_of(&self, device_row: i64) -> Result<Option<ConfigRow>, StoreError> {
        let row = sqlx::query(
            "SELECT desired, desired_version, desired_ms, desired_by, reported_version,
                    reported_ms, answered_version, answered_ok, answered_detail, answered_ms,
                    protocol, deliveries, delivered_ms
             FROM config_state WHERE device = ?",
        )
        .bind(device_row)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|row| {
            let answered_version: Option<i64> = row.get(6);
            ConfigRow {
                desired: row.get(0),
                desired_version: version(row.get(1)),
                desired_ms: row.get(2),
                desired_by: row.get(3),
                reported_version: version(row.get(4)),
                reported_ms: row.get(5),
                answered: answered_version.map(|answered| Answered {
                    version: version(answered),
                    ok: row.get::<Option<bool>, _>(7).unwrap_or(false),
                    detail: row.get::<Option<String>, _>(8).unwrap_or_default(),
                    ts_ms: row.get::<Option<i64>, _>(9).unwrap_or(0),
                }),
                protocol: row
                    .get::<Option<i64>, _>(10)
                    .and_then(|p| u16::try_from(p).ok()),
                deliveries: u32::try_from(row.get::<i64, _>(11)).unwrap_or(u32::MAX),
                delivered_ms: row.get(12),
            }
        }))
    }

    /// The configuration the device of row `device_row` was desired to run
    /// at `version`, a JSON object's text, from that version's `config`
    /// event (retention keeps them); `None` for version 0 or one not held.
    ///
    /// # Errors
    /// A database failure.
    pub async fn desired_at(
        &self,
        device_row: i64,
        version: u64,
    ) -> Result<Option<String>, StoreError> {
        if version == 0 {
            return Ok(None);
        }
        // The device's config events by the partial index `events_config`:
        // a handful per device, however many readings it has.
        Ok(sqlx::query_scalar(
            "SELECT json_extract(body, '$.desired') FROM events
             WHERE kind = 'config' AND device = ?
               AND json_extract(body, '$.side') = 'desired'
               AND json_extract(body, '$.version') = ?
             ORDER BY pos DESC LIMIT 1",
        )
        .bind(device_row)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .fetch_optional(self.pool())
        .await?
        .flatten())
    }

    /// The rows and ids of the devices that have a configuration (the
    /// sessions' index at start; what the MQTT bridge publishes at each
    /// connection).
    ///
    /// # Errors
    /// A database failure.
    pub async fn configured_devices(&self) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.device, d.device_id FROM config_state c JOIN devices d ON d.id = c.device
             WHERE c.desired_version > 0",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Whether an event is stored at `pos` (a cluster entry's change was
    /// kept, not skipped for a version another change took).
    ///
    /// # Errors
    /// A database failure.
    pub async fn event_stored_at(&self, pos: i64) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT pos FROM events WHERE pos = ?")
            .bind(pos)
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }
}
