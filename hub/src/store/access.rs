//! API keys and device groups (migrations/0008): what `hub key` and
//! `hub device group` write, what the hub's key watcher reads every half
//! second, and the group lookups that limit a key to its devices. Names
//! are checked by their callers (`access`); this module only reads and
//! writes rows.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError, now_ms};

/// A key as stored: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyRecord {
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// The groups whose devices it is limited to; empty: every device.
    pub groups: Vec<String>,
    /// Times are ms since the Unix epoch.
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    /// SHA-256 of the key, for the watcher's table; never shown.
    #[serde(skip)]
    pub key_sha256: Vec<u8>,
}

/// One entry of the audit trail, as `GET /v1/admin/audit` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Its position in the one sequence (its live event's id).
    pub pos: i64,
    /// The hub's time, ms since the Unix epoch.
    pub ts_ms: i64,
    /// A key's name, `monitor-token` or `open`.
    pub by: String,
    pub action: String,
    /// The device it concerns, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// What it was done to and with, and how it ended (`{}` if nothing).
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A key to add.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub name: &'a str,
    pub key_sha256: [u8; 32],
    pub role: &'a str,
    pub groups: &'a [String],
    pub expires_ms: Option<i64>,
}

/// Why a key could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddKeyError {
    #[error("a key named {0:?} exists already")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Stores a new key (its hash).
    ///
    /// # Errors
    /// The name is taken, or a database failure.
    pub async fn add_key(&self, key: &NewKey<'_>) -> Result<(), AddKeyError> {
        let groups = serde_json::to_string(key.groups).expect("strings are valid JSON");
        let inserted = sqlx::query(
            "INSERT INTO api_keys (name, key_sha256, role, groups, created_ms, expires_ms)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(key.name)
        .bind(&key.key_sha256[..])
        .bind(key.role)
        .bind(groups)
        .bind(now_ms())
        .bind(key.expires_ms)
        .execute(self.pool())
        .await
        .map_err(StoreError::from)?;
        if inserted.rows_affected() == 0 {
            return Err(AddKeyError::Exists(key.name.to_owned()));
        }
        Ok(())
    }

    /// Every key, revoked and expired ones too, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, role, groups, created_ms, expires_ms, revoked_ms, key_sha256
             FROM api_keys ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| KeyRecord {
                name: row.get(0),
                role: row.get(1),
                groups: serde_json::from_str(row.get::<&str, _>(2)).unwrap_or_default(),
                created_ms: row.get(3),
                expires_ms: row.get(4),
                revoked_ms: row.get(5),
                key_sha256: row.get(6),
            })
            .collect())
    }

    /// Revokes a key by name; false if there is no such key. Revoking a
    /// revoked key changes nothing.
    ///
    /// # Errors
    /// A database failure.
    pub async fn revoke_key(&self, name: &str) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT 1 FROM api_keys WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await?
            .is_some();
        sqlx::query("UPDATE api_keys SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL")
            .bind(now_ms())
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(found)
    }

    /// Puts a device into `join` and takes it out of `leave`; false if
    /// there is no such device.
    ///
    /// # Errors
    /// A database failure.
    pub async fn regroup_device(
        &self,
        device_id: &str,
        join: &[String],
        leave: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row: Option<i64> = sqlx::query_scalar("SELECT id FROM devices WHERE device_id = ?")
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        for group in join {
            sqlx::query("INSERT OR IGNORE INTO device_groups (device, grp) VALUES (?, ?)")
                .bind(row)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        for group in leave {
            sqlx::query("DELETE FROM device_groups WHERE device = ? AND grp = ?")
                .bind(row)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Each device's groups, by device id (devices in none are absent).
    ///
    /// # Errors
    /// A database failure.
    pub async fn groups_by_device(&self) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT d.device_id, g.grp FROM device_groups g JOIN devices d ON d.id = g.device
             ORDER BY d.device_id, g.grp",
        )
        .fetch_all(self.pool())
        .await?;
        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for (device, group) in rows {
            groups.entry(device).or_default().push(group);
        }
        Ok(groups)
    }

    /// Every group and how many devices it has, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn groups(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT grp, count(*) FROM device_groups GROUP BY grp ORDER BY grp")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// The ids of the devices in any of `groups`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn devices_in_groups(&self, groups: &[String]) -> Result<Vec<String>, StoreError> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT DISTINCT d.device_id FROM device_groups g JOIN devices d ON d.id = g.device
             WHERE g.grp IN (",
        );
        let mut list = query.separated(", ");
        for group in groups {
            list.push_bind(group.clone());
        }
        query.push(")");
        Ok(query.build_query_scalar().fetch_all(self.pool()).await?)
    }

    /// The newest `limit` entries of the audit trail, newest first.
    ///
    /// # Errors
    /// A database failure.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT pos, ts_ms, by, action, device, detail FROM audit ORDER BY pos DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| AuditRow {
                pos: row.get(0),
                ts_ms: row.get(1),
                by: row.get::<Option<String>, _>(2).unwrap_or_default(),
                action: row.get::<Option<String>, _>(3).unwrap_or_default(),
                device: row.get(4),
                // An entry without details has an empty object.
                detail: row
                    .get::<Option<String>, _>(5)
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .filter(serde_json::Value::is_object)
                    .unwrap_or_else(|| serde_json::json!({})),
            })
            .collect())
    }

    /// Whether the device is in any of `groups`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn in_groups(&self, device_id: &str, groups: &[String]) -> Result<bool, StoreError> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT 1 FROM device_groups g JOIN devices d ON d.id = g.device WHERE d.device_id = ",
        );
        query
            .push_bind(device_id.to_owned())
            .push(" AND g.grp IN (");
        let mut list = query.separated(", ");
        for group in groups {
            list.push_bind(group.clone());
        }
        query.push(") LIMIT 1");
        Ok(query.build().fetch_optional(self.pool()).await?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_and_groups_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            crate::store::PoolDurability::EveryCommit,
        )
        .await
        .unwrap();
        let groups = vec!["floor-2".to_owned()];
        let key = NewKey {
            name: "wall",
            key_sha256: [7; 32],
            role: "viewer",
            groups: &groups,
            expires_ms: None,
        };
        store.add_key(&key).await.unwrap();
        assert!(matches!(
            store.add_key(&key).await,
            Err(AddKeyError::Exists(_))
        ));
        let keys = store.keys().await.unwrap();
        assert_eq!(keys[0].groups, groups);
        assert_eq!(keys[0].key_sha256, vec![7; 32]);
        assert!(store.revoke_key("wall").await.unwrap());
        assert!(!store.revoke_key("nobody").await.unwrap());
        assert!(store.keys().await.unwrap()[0].revoked_ms.is_some());

        store.add_device("a", None).await.unwrap();
        store.add_device("b", None).await.unwrap();
        assert!(store.regroup_device("a", &groups, &[]).await.unwrap());
        assert!(!store.regroup_device("zz", &groups, &[]).await.unwrap());
        assert_eq!(store.devices_in_groups(&groups).await.unwrap(), ["a"]);
        assert!(store.in_groups("a", &groups).await.unwrap());
        assert!(!store.in_groups("b", &groups).await.unwrap());
        assert_eq!(store.groups().await.unwrap(), [("floor-2".to_owned(), 1)]);
        store.regroup_device("a", &[], &groups).await.unwrap();
        assert!(store.groups_by_device().await.unwrap().is_empty());
    }
}
