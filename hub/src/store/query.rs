//! Reads for the HTTP API: readings by device, metric and time, and the
//! metrics of each device.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError};
use crate::commits::Position;

/// One stored reading, as the API and the `readings` view show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReadingRow {
    pub pos: Position,
    pub device: String,
    pub metric: String,
    pub unit: String,
    pub ts_ms: i64,
    pub value: Option<f64>,
}

fn reading_row(row: SqliteRow) -> ReadingRow {
    ReadingRow {
        pos: row.get(0),
        device: row.get(1),
        metric: row.get(2),
        unit: row.get(3),
        ts_ms: row.get(4),
        value: row.get(5),
    }
}

/// One page of a cursor consumer's catch-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<ReadingRow>,
    /// Where the cursor stands after this page: every position up to it was
    /// read (those not in `rows` did not match, or are gone).
    pub read_through: Position,
}

/// Which readings to return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadingFilter {
    pub device: Option<String>,
    pub metric: Option<String>,
    /// Inclusive, ms since the Unix epoch.
    pub from_ms: Option<i64>,
    /// Exclusive, ms since the Unix epoch.
    pub to_ms: Option<i64>,
    pub limit: u32,
}

/// A metric as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricInfo {
    pub name: String,
    pub unit: String,
}

impl Store {
    /// Readings matching `filter`, oldest first (by device time, then
    /// position), at most `filter.limit`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn readings(&self, filter: &ReadingFilter) -> Result<Vec<ReadingRow>, StoreError> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT pos, device, metric, unit, ts_ms, value FROM readings WHERE 1 = 1",
        );
        if let Some(device) = &filter.device {
            query.push(" AND device = ").push_bind(device.clone());
        }
        if let Some(metric) = &filter.metric {
            query.push(" AND metric = ").push_bind(metric.clone());
        }
        if let Some(from) = filter.from_ms {
            query.push(" AND ts_ms >= ").push_bind(from);
        }
        if let Some(to) = filter.to_ms {
            query.push(" AND ts_ms < ").push_bind(to);
        }
        query
            .push(" ORDER BY ts_ms, pos LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(reading_row).collect())
    }

    /// The next page for a cursor consumer at `after` following a head at
    /// `upto`: readings with `after < pos <= upto`, in position order, at
    /// most `limit`, of the given devices and metrics (`None`: all). This is
    /// how live subscribers catch up, and how any cursor consumer reads what
    /// it has missed.
    ///
    /// # Errors
    /// A database failure.
    pub async fn readings_page(
        &self,
        after: Position,
        upto: Position,
        devices: Option<&[String]>,
        metrics: Option<&[String]>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT pos, device, metric, unit, ts_ms, value FROM readings WHERE pos > ",
        );
        query.push_bind(after).push(" AND pos <= ").push_bind(upto);
        for (column, values) in [("device", devices), ("metric", metrics)] {
            if let Some(values) = values {
                query.push(format_args!(" AND {column} IN ("));
                let mut list = query.separated(", ");
                for value in values {
                    list.push_bind(value.clone());
                }
                query.push(")");
            }
        }
        query
            .push(" ORDER BY pos LIMIT ")
            .push_bind(i64::from(limit));
        let rows: Vec<ReadingRow> = query
            .build()
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .map(reading_row)
            .collect();
        // A short page read everything up to the head, matching or not.
        let read_through = if rows.len() < limit as usize {
            upto
        } else {
            rows.last().map_or(upto, |row| row.pos)
        };
        Ok(Page { rows, read_through })
    }

    /// The oldest storage position still held (0 if none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn oldest_pos(&self) -> Result<i64, StoreError> {
        let pos: Option<i64> = sqlx::query_scalar("SELECT min(pos) FROM samples")
            .fetch_one(self.pool())
            .await?;
        Ok(pos.unwrap_or(0))
    }

    /// The largest storage position retention has deleted (0 if none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn retention_watermark(&self) -> Result<i64, StoreError> {
        let pos: i64 = sqlx::query_scalar(
            "SELECT value FROM hub_state WHERE key = 'retention_deleted_through'",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(pos)
    }

    /// Every device's metrics, by device id.
    ///
    /// # Errors
    /// A database failure.
    pub async fn metrics_by_device(&self) -> Result<HashMap<String, Vec<MetricInfo>>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.device_id, m.name, m.unit FROM metrics m JOIN devices d ON d.id = m.device
             ORDER BY d.device_id, m.name",
        )
        .fetch_all(self.pool())
        .await?;
        let mut by_device: HashMap<String, Vec<MetricInfo>> = HashMap::new();
        for row in rows {
            by_device.entry(row.get(0)).or_default().push(MetricInfo {
                name: row.get(1),
                unit: row.get(2),
            });
        }
        Ok(by_device)
    }
}
