//! Alert rules and alerts in SQLite: the rules' table (the CLI's changes,
//! through the pool; the running hub's go through the writer), what the
//! evaluator reads back at its start, and the `alerts` view for the API.
//! Rules are kept as their JSON text; checking them is `alerts::rule`'s.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};
use crate::commits::{AlertState, Position};

/// An alert as `GET /v1/alerts` and the `alerts` view show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Alert)]
pub struct AlertRow {
    /// The position of its `firing` event.
    pub id: Position,
    pub device: String,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    pub severity: String,
    pub message: String,
    /// The value that fired it, when a reading did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub state: AlertState,
    /// The hub's time, ms since the Unix epoch.
    pub fired_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<i64>,
}

/// An alert not yet resolved, as the evaluator reads it back at its
/// start, with the rule as it was when it fired.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAlert {
    pub id: Position,
    pub device: String,
    pub rule: String,
    pub metric: Option<String>,
    pub state: AlertState,
    pub definition: String,
}

/// Every series' last reading that caused a transition: a transition
/// caused by a reading at or before it is already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCause {
    pub device: String,
    pub rule: String,
    pub metric: Option<String>,
    pub cause: Position,
}

/// The `alerts` view's columns as [`AlertRow`] reads them, then `$tail`.
macro_rules! select_alerts {
    ($tail:literal) => {
        concat!(
            "SELECT id, device, rule, metric, severity, message, value, state, fired_ms,
                    acknowledged_ms, acknowledged_by, note, resolved_ms FROM alerts ",
            $tail
        )
    };
}

fn alert_row(row: &sqlx::sqlite::SqliteRow) -> AlertRow {
    let state: String = row.get(7);
    AlertRow {
        id: row.get(0),
        device: row.get(1),
        rule: row.get(2),
        metric: row.get(3),
        severity: row.get(4),
        message: row.get(5),
        value: row.get(6),
        state: state_of(&state),
        fired_ms: row.get(8),
        acknowledged_ms: row.get(9),
        acknowledged_by: row.get(10),
        note: row.get(11),
        resolved_ms: row.get(12),
    }
}

fn state_of(text: &str) -> AlertState {
    match text {
        "acknowledged" => AlertState::Acknowledged,
        "resolved" => AlertState::Resolved,
        _ => AlertState::Firing,
    }
}

impl Store {
    /// Every rule's name and definition, by name.
    ///
    /// # Errors
    /// A database failure.
    pub async fn alert_rules(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, definition FROM alert_rules ORDER BY name")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Adds a rule (the CLI's way: the running hub adds through its
    /// writer); `false` if one of that name exists.
    ///
    /// # Errors
    /// A database failure.
    pub async fn add_alert_rule(&self, name: &str, definition: &str) -> Result<bool, StoreError> {
        let added = sqlx::query(
            "INSERT INTO alert_rules (name, definition, created_ms) VALUES (?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(definition)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(added.rows_affected() == 1)
    }

    /// Removes a rule (the CLI's way); `false` if there was none.
    ///
    /// # Errors
    /// A database failure.
    pub async fn remove_alert_rule(&self, name: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM alert_rules WHERE name = ?")
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(removed.rows_affected() == 1)
    }

    /// Alerts, newest first: those not resolved (`open`), or all; of one
    /// device if given; at most `limit`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn alerts(
        &self,
        open: bool,
        device: Option<&str>,
        groups: Option<&[String]>,
        limit: u32,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let groups = groups.map(|g| serde_json::to_string(g).expect("strings are valid JSON"));
        let rows = sqlx::query(select_alerts!(
            "WHERE (? = 0 OR state <> 'resolved') AND (? IS NULL OR device = ?)
               AND (? IS NULL OR device IN (
                    SELECT d.device_id FROM device_groups g JOIN devices d ON d.id = g.device
                    WHERE g.grp IN (SELECT value FROM json_each(?))))
             ORDER BY id DESC LIMIT ?"
        ))
        .bind(open)
        .bind(device)
        .bind(device)
        .bind(groups.as_deref())
        .bind(groups.as_deref())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(alert_row).collect())
    }

    /// The alerts not resolved, and those resolved at or after
    /// `resolved_since` (ms): what Alertmanager is told of.
    ///
    /// # Errors
    /// A database failure.
    pub async fn alerts_to_deliver(
        &self,
        resolved_since: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let rows = sqlx::query(select_alerts!(
            "WHERE state <> 'resolved' OR resolved_ms >= ? ORDER BY id"
        ))
        .bind(resolved_since)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(alert_row).collect())
    }

    /// The latest alert of `rule` on `device`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn latest_alert(
        &self,
        device: &str,
        rule: &str,
    ) -> Result<Option<AlertRow>, StoreError> {
        let row = sqlx::query(select_alerts!(
            "WHERE device = ? AND rule = ? ORDER BY id DESC LIMIT 1"
        ))
        .bind(device)
        .bind(rule)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.as_ref().map(alert_row))
    }

    /// The newest alert of `rule` on `device` (its id and state), and the
    /// newest position of a reading that caused one of their transitions:
    /// what a transition from a cluster's stream is judged against.
    ///
    /// # Errors
    /// A database failure.
    pub async fn alert_standing(
        &self,
        device: &str,
        rule: &str,
    ) -> Result<(Option<(Position, AlertState)>, Option<Position>), StoreError> {
        let latest = self
            .latest_alert(device, rule)
            .await?
            .map(|alert| (alert.id, alert.state));
        let cause: Option<Position> =
            sqlx::query_scalar("SELECT max(cause) FROM alert_events WHERE device = ? AND rule = ?")
                .bind(device)
                .bind(rule)
                .fetch_one(self.pool())
                .await?;
        Ok((latest, cause))
    }

    /// Every (device, rule) that has had an alert.
    ///
    /// # Errors
    /// A database failure.
    pub async fn alert_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT DISTINCT device, rule FROM alert_events WHERE state = 'firing'")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// One alert by id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn alert(&self, id: Position) -> Result<Option<AlertRow>, StoreError> {
        let row = sqlx::query(select_alerts!("WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.as_ref().map(alert_row))
    }

    /// The alerts not yet resolved, for the evaluator's start.
    ///
    /// # Errors
    /// A database failure.
    pub async fn open_alerts(&self) -> Result<Vec<OpenAlert>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, device, rule, metric, state, definition FROM alerts
             WHERE state <> 'resolved'",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| OpenAlert {
                id: row.get(0),
                device: row.get(1),
                rule: row.get(2),
                metric: row.get(3),
                state: state_of(row.get::<&str, _>(4)),
                definition: row.get::<Option<String>, _>(5).unwrap_or_default(),
            })
            .collect())
    }

    /// Each series' last transition caused by a reading, for the
    /// evaluator's start.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_alert_causes(&self) -> Result<Vec<LastCause>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, rule, metric, max(cause) FROM alert_events
             WHERE cause IS NOT NULL GROUP BY device, rule, metric",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|row| LastCause {
                device: row.get(0),
                rule: row.get(1),
                metric: row.get(2),
                cause: row.get(3),
            })
            .collect())
    }

    /// Each device's metrics with the time of their last raw reading (the
    /// device's clock), revoked devices left out: where silence rules
    /// start from.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_readings(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.device_id, m.name,
                    coalesce((SELECT max(ts_ms) FROM samples s WHERE s.metric = m.id),
                             (SELECT max(max_ms) FROM sample_blocks b WHERE b.metric = m.id))
                    AS last
             FROM metrics m JOIN devices d ON d.id = m.device
             WHERE d.revoked_ms IS NULL AND last IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Each device's last status and its time: where offline rules start
    /// from.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_statuses(&self) -> Result<Vec<(String, bool, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.device_id, coalesce(json_extract(e.body, '$.online'), 0), e.ts_ms
             FROM events e JOIN devices d ON d.id = e.device
             WHERE e.pos IN (SELECT max(pos) FROM events WHERE kind = 'status' GROUP BY device)",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
