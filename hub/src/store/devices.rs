//! The device registry: provisioning, authentication, revocation and the
//! per-connection registration of metrics. Reads run on the shared pool;
//! while the hub runs, its writes (a device's first connection, a changed
//! `Hello`) run in the writer's transactions (`writer::statements`). The
//! CLI's changes are short statements of their own.

use std::collections::HashMap;

use protocol::{Hello, is_valid_device_id};
use serde::Serialize;
use sqlx::Row;

use super::query::MetricInfo;
use super::writer::Provisioned;
use super::{Store, StoreError, now_ms};
use crate::auth;

/// Why a device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddDeviceError {
    #[error("device id must be 1 to 64 characters of A-Z a-z 0-9 - _ . :")]
    InvalidId,
    #[error("device {0} already exists")]
    Exists(String),
    #[error("no randomness for a token: {0}")]
    Random(#[from] getrandom::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A device as the registry knows it. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceRecord {
    pub id: String,
    pub name: Option<String>,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    pub last_seq: i64,
}

/// The columns [`device_record`] reads (a macro, so queries stay literals).
macro_rules! select_devices {
    ($rest:literal) => {
        concat!(
            "SELECT device_id, name, model, firmware, created_ms, revoked_ms, last_seen_ms, \
             last_seq FROM devices ",
            $rest
        )
    };
}

fn device_record(row: &sqlx::sqlite::SqliteRow) -> DeviceRecord {
    DeviceRecord {
        id: row.get(0),
        name: row.get(1),
        model: row.get(2),
        firmware: row.get(3),
        created_ms: row.get(4),
        revoked_ms: row.get(5),
        last_seen_ms: row.get(6),
        last_seq: row.get(7),
    }
}

/// A device that may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The `devices.id` row.
    pub row: i64,
    /// The id the device must send in `Hello`.
    pub device_id: String,
    /// What to write once this connection has shown that the device holds
    /// its credential, while the provisioning key may still reach it (an
    /// issued token not yet confirmed, or a device from before tokens
    /// were issued); `None` when there is nothing to confirm.
    pub confirm: Option<Provisioned>,
}

/// A device as the provisioning key finds it (migrations/0005).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub row: i64,
    pub revoked: bool,
    /// Whether the key may (still) register it.
    pub key_claimable: bool,
    pub token_hash: Option<[u8; 32]>,
}

impl Store {
    /// Adds a device and returns its new token; only the token's hash is kept.
    ///
    /// # Errors
    /// An invalid or taken id, or a database failure.
    pub async fn add_device(
        &self,
        device_id: &str,
        name: Option<&str>,
    ) -> Result<String, AddDeviceError> {
        if !is_valid_device_id(device_id) {
            return Err(AddDeviceError::InvalidId);
        }
        let token = auth::generate_token()?;
        let hash = auth::hash_token(&token);
        let inserted = sqlx::query(
            "INSERT INTO devices (device_id, name, token_hash, created_ms) VALUES (?, ?, ?, ?)
             ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(device_id)
        .bind(name)
        .bind(&hash[..])
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(StoreError::from)?;
        if inserted.rows_affected() == 0 {
            return Err(AddDeviceError::Exists(device_id.to_owned()));
        }
        Ok(token)
    }

    /// Every device, ordered by id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows = sqlx::query(select_devices!("ORDER BY device_id"))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.iter().map(device_record).collect())
    }

    /// One device, if there is such a device.
    ///
    /// # Errors
    /// A database failure.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(select_devices!("WHERE device_id = ?"))
            .bind(device_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(device_record))
    }

    /// A device's metric rows: `(row, name, unit)`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn metric_rows(
        &self,
        device_row: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT id, name, unit FROM metrics WHERE device = ?")
                .bind(device_row)
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// A device's metrics, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn metrics_of(&self, device_id: &str) -> Result<Vec<MetricInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.name, m.unit FROM metrics m JOIN devices d ON d.id = m.device
             WHERE d.device_id = ? ORDER BY m.name",
        )
        .bind(device_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| MetricInfo {
                name: row.get(0),
                unit: row.get(1),
            })
            .collect())
    }

    /// Revokes a device: its token stops working and a running hub closes its
    /// connection. Returns false if there is no such device.
    ///
    /// # Errors
    /// A database failure.
    pub async fn revoke_device(&self, device_id: &str) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM devices WHERE device_id = ?")
            .bind(device_id)
            .fetch_optional(self.pool())
            .await?
            .is_some();
        sqlx::query("UPDATE devices SET revoked_ms = ? WHERE device_id = ? AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(device_id)
            .execute(self.pool())
            .await?;
        Ok(found)
    }

    /// Devices revoked at or after `since_ms`, for closing their connections.
    ///
    /// # Errors
    /// A database failure.
    pub async fn revoked_since(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query_scalar("SELECT device_id FROM devices WHERE revoked_ms >= ?")
            .bind(since_ms)
            .fetch_all(self.pool())
            .await?;
        Ok(rows)
    }

    /// The device a token belongs to, unless it is unknown or revoked.
    ///
    /// # Errors
    /// A database failure.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Credentials>, StoreError> {
        let hash = auth::hash_token(token);
        let row = sqlx::query(
            "SELECT id, device_id, key_claimable FROM devices
             WHERE token_hash = ? AND revoked_ms IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|row| {
            let device_id: String = row.get(1);
            Credentials {
                row: row.get(0),
                confirm: row.get::<bool, _>(2).then(|| Provisioned::Confirmed {
                    device_id: device_id.clone(),
                    token_hash: Some(hash),
                }),
                device_id,
            }
        }))
    }

    /// What the provisioning key finds of `device_id`: `None` if it is
    /// unknown.
    ///
    /// # Errors
    /// A database failure.
    pub async fn enrolment(&self, device_id: &str) -> Result<Option<Enrolment>, StoreError> {
        let row = sqlx::query(
            "SELECT id, revoked_ms IS NOT NULL, key_claimable, token_hash FROM devices
             WHERE device_id = ?",
        )
        .bind(device_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|row| Enrolment {
            row: row.get(0),
            revoked: row.get(1),
            key_claimable: row.get(2),
            token_hash: row
                .get::<Option<Vec<u8>>, _>(3)
                .and_then(|hash| hash.try_into().ok()),
        }))
    }

    /// Gives a device a new token, creating the device if it is unknown,
    /// and returns the token; the old one stops working, the provisioning
    /// key no longer reaches the device, and a revoked device stays
    /// revoked. For an operator whose device lost its token, and for
    /// `hub demo`'s fleet.
    ///
    /// # Errors
    /// An invalid id, or a database failure.
    pub async fn issue_token(&self, device_id: &str) -> Result<String, AddDeviceError> {
        if !is_valid_device_id(device_id) {
            return Err(AddDeviceError::InvalidId);
        }
        let token = auth::generate_token()?;
        let hash = auth::hash_token(&token);
        sqlx::query(
            "INSERT INTO devices (device_id, token_hash, created_ms) VALUES (?, ?, ?)
             ON CONFLICT (device_id) DO UPDATE
             SET token_hash = excluded.token_hash, key_claimable = 0",
        )
        .bind(device_id)
        .bind(&hash[..])
        .bind(now_ms())
        .execute(self.pool())
        .await
        .map_err(StoreError::from)?;
        Ok(token)
    }

    /// The device with this id: its row and whether it is revoked, or `None`
    /// if it is unknown (a device presenting the provisioning key registers
    /// through the writer then).
    ///
    /// # Errors
    /// A database failure.
    pub async fn find_device(&self, device_id: &str) -> Result<Option<(i64, bool)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT id, revoked_ms IS NOT NULL FROM devices WHERE device_id = ?")
                .bind(device_id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// The rows of those of `device_ids` that are registered, in one read
    /// however many are asked for.
    ///
    /// # Errors
    /// A database failure.
    pub async fn device_rows(
        &self,
        device_ids: &[&str],
    ) -> Result<HashMap<String, i64>, StoreError> {
        let ids = serde_json::to_string(device_ids).expect("strings are valid JSON");
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT device_id, id FROM devices WHERE device_id IN (SELECT value FROM json_each(?))",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// What the database already knows of a device's `Hello`: the last
    /// committed seq, and the metric rows if model, firmware and every
    /// metric (by name and unit) are already stored. `None` for the rows
    /// means the `Hello` brings something new, to be written by the writer.
    /// The usual reconnect is thus a read only.
    ///
    /// # Errors
    /// A database failure.
    pub async fn known_hello(
        &self,
        device_row: i64,
        hello: &Hello,
    ) -> Result<(u64, Option<HashMap<u16, i64>>), StoreError> {
        let (model, firmware, last_seq): (Option<String>, Option<String>, i64) =
            sqlx::query_as("SELECT model, firmware, last_seq FROM devices WHERE id = ?")
                .bind(device_row)
                .fetch_one(self.pool())
                .await?;
        let known: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, name, unit FROM metrics WHERE device = ?")
                .bind(device_row)
                .fetch_all(self.pool())
                .await?;
        let last_seq = u64::try_from(last_seq).unwrap_or(0);
        if model.as_deref() != Some(hello.model.as_str())
            || firmware.as_deref() != Some(hello.firmware.as_str())
        {
            return Ok((last_seq, None));
        }
        let mut metric_rows = HashMap::with_capacity(hello.metrics.len());
        for metric in &hello.metrics {
            match known.iter().find(|(_, name, _)| *name == metric.name) {
                Some((row, _, unit)) if *unit == metric.unit => {
                    metric_rows.insert(metric.id, *row);
                }
                _ => return Ok((last_seq, None)),
            }
        }
        Ok((last_seq, Some(metric_rows)))
    }
}
