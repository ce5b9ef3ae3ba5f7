//! Aggregated reads (`GET /v1/readings?step=`): a device's readings in
//! buckets of `step` by device time, served from the roll-up tier the step
//! is a multiple of (hours, then minutes), or from the raw rows for smaller
//! steps. Buckets start at multiples of `step` since the Unix epoch; those
//! without readings are left out.

use serde::Serialize;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError};

/// What to aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketQuery {
    pub device: String,
    /// One metric, or every metric of the device.
    pub metric: Option<String>,
    /// The first bucket's start (inclusive), a multiple of `step_ms`.
    pub from_ms: i64,
    /// The end (exclusive), a multiple of `step_ms`.
    pub to_ms: i64,
    pub step_ms: i64,
}

/// Where a step's buckets are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hours,
    Minutes,
    Raw,
}

impl Source {
    /// The coarsest tier `step_ms` is a whole multiple of.
    pub fn for_step(step_ms: i64) -> Source {
        if step_ms % 3_600_000 == 0 {
            Source::Hours
        } else if step_ms % 60_000 == 0 {
            Source::Minutes
        } else {
            Source::Raw
        }
    }
}

/// One bucket of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Bucket)]
pub struct BucketRow {
    pub metric: String,
    pub unit: String,
    /// The bucket's start, ms since the Unix epoch (device time).
    pub ts_ms: i64,
    /// Readings in the bucket, those without a value (NaN) included.
    pub n: i64,
    /// Of the readings with a value; `null` if none has one.
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Store {
    /// The buckets of `query`, by metric name, then time.
    ///
    /// # Errors
    /// A database failure.
    pub async fn buckets(&self, query: &BucketQuery) -> Result<Vec<BucketRow>, StoreError> {
        let step = query.step_ms;
        let mut sql: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT m.name, m.unit, ");
        match Source::for_step(step) {
            Source::Raw => {
                // Each metric's range of the (metric, ts_ms) index, and the
                // compacted blocks whose time span meets the range; the
                // metrics are named in each arm, where SQLite can use them.
                let arm = |sql: &mut QueryBuilder<Sqlite>, table: &str, blocks: bool| {
                    sql.push(format_args!(
                        "SELECT metric, ts_ms, value FROM {table} WHERE metric IN \
                         (SELECT m.id FROM metrics m JOIN devices d ON d.id = m.device \
                          WHERE d.device_id = "
                    ))
                    .push_bind(query.device.clone());
                    if let Some(metric) = &query.metric {
                        sql.push(" AND m.name = ").push_bind(metric.clone());
                    }
                    sql.push(")");
                    if blocks {
                        sql.push(" AND block_max_ms >= ")
                            .push_bind(query.from_ms)
                            .push(" AND block_min_ms < ")
                            .push_bind(query.to_ms);
                    }
                    sql.push(" AND ts_ms >= ")
                        .push_bind(query.from_ms)
                        .push(" AND ts_ms < ")
                        .push_bind(query.to_ms);
                };
                sql.push("s.ts_ms - s.ts_ms % ").push_bind(step).push(
                    " AS b, count(*), avg(s.value), min(s.value), max(s.value) \
                         FROM (",
                );
                arm(&mut sql, "samples", false);
                sql.push(" UNION ALL ");
                arm(&mut sql, "compacted_samples", true);
                sql.push(
                    ") s JOIN metrics m ON m.id = s.metric \
                     JOIN devices d ON d.id = m.device WHERE 1",
                );
            }
            tier => {
                let table = if tier == Source::Hours {
                    "rollups_1h"
                } else {
                    "rollups_1m"
                };
                sql.push("r.bucket_ms - r.bucket_ms % ")
                    .push_bind(step)
                    .push(format_args!(
                        " AS b, sum(r.n), sum(r.sum) / sum(r.n_values), min(r.min), max(r.max) \
                         FROM {table} r JOIN metrics m ON m.id = r.metric \
                         JOIN devices d ON d.id = m.device WHERE r.bucket_ms >= "
                    ))
                    .push_bind(query.from_ms)
                    .push(" AND r.bucket_ms < ")
                    .push_bind(query.to_ms);
            }
        }
        sql.push(" AND d.device_id = ")
            .push_bind(query.device.clone());
        if let Some(metric) = &query.metric {
            sql.push(" AND m.name = ").push_bind(metric.clone());
        }
        sql.push(" GROUP BY m.id, b ORDER BY m.name, b");
        let rows = sql.build().fetch_all(self.pool()).await?;
        Ok(rows
            .iter()
            .map(|row| BucketRow {
                metric: row.get(0),
                unit: row.get(1),
                ts_ms: row.get(2),
                n: row.get(3),
                mean: row.get(4),
                min: row.get(5),
                max: row.get(6),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_served_by_the_coarsest_tier_it_is_a_multiple_of() {
        assert_eq!(Source::for_step(10_000), Source::Raw);
        assert_eq!(Source::for_step(90_000), Source::Raw);
        assert_eq!(Source::for_step(60_000), Source::Minutes);
        assert_eq!(Source::for_step(15 * 60_000), Source::Minutes);
        assert_eq!(Source::for_step(3_600_000), Source::Hours);
        assert_eq!(Source::for_step(86_400_000), Source::Hours);
    }
}
