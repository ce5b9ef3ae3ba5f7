//! Reads for the HTTP API and cursor consumers: readings by device, metric
//! and time or in storage order, from rows and compacted blocks alike, and
//! the metrics of each device.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::blocks::{self, slab_end, slab_start};
use super::slab_cache::{Identity, Names, Slab};
use super::{Store, StoreError};
use crate::commits::{EventKind, Position};

/// One stored reading, as the API and the `readings` view show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Reading)]
pub struct ReadingRow {
    /// The storage position: the reading's live event id.
    pub pos: Position,
    pub device: String,
    pub metric: String,
    pub unit: String,
    /// The device's time, ms since the Unix epoch.
    pub ts_ms: i64,
    /// `null` when the device sent NaN or an infinity.
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

/// One stored event (a device's status, an alert's transition), as
/// cursor consumers read it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub pos: Position,
    pub device: String,
    /// The hub's time, ms since the Unix epoch.
    pub ts_ms: i64,
    pub kind: EventKind,
}

/// One page of a cursor consumer's catch-up: readings and events, each in
/// position order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<ReadingRow>,
    pub events: Vec<EventRow>,
    /// Where the cursor stands after this page: every position up to it was
    /// read (those in neither list did not match, or are gone).
    pub read_through: Position,
}

/// Which readings `GET /v1/readings` returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadingFilter {
    pub device: Option<String>,
    /// Without `device`: only devices of these groups (a key's scope).
    pub groups: Option<Vec<String>>,
    pub metric: Option<String>,
    /// Inclusive, ms since the Unix epoch.
    pub from_ms: Option<i64>,
    /// Exclusive, ms since the Unix epoch.
    pub to_ms: Option<i64>,
    pub limit: u32,
    /// Where this page starts: after the last row of the page before.
    pub after: Option<After>,
}

/// A place in one of the two orders `GET /v1/readings` pages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// One device's readings come by device time, then position: an index
    /// range per metric, merged.
    Time { ts_ms: i64, pos: Position },
    /// Readings of every device come in storage order, the order of the live
    /// stream: the one order that pages across devices without a sort.
    Storage(Position),
}

/// One page of `GET /v1/readings`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingsPage {
    pub rows: Vec<ReadingRow>,
    /// Where the next page starts; `None` once everything that matched has
    /// been returned. A page may hold fewer than `limit` rows and still have
    /// a next one: a storage-order page reads a bounded span of positions.
    pub next: Option<After>,
}

/// How many positions one storage-order page reads at most, matching or
/// not: what bounds the cost of a request whose filter matches little.
pub const STORAGE_SCAN_SPAN: i64 = 100_000;

/// Which compacted blocks a page by time reads, and where it must end.
struct PageBlocks {
    ids: Vec<i64>,
    until: Option<i64>,
}

/// A metric as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MetricInfo {
    pub name: String,
    pub unit: String,
}

impl Store {
    /// One page of readings matching `filter`: with a device, oldest first
    /// by device time, then position; without one, in storage order. Either
    /// way a page costs about its `limit` rows, or at most
    /// [`STORAGE_SCAN_SPAN`] positions, however much is stored (compacted
    /// readings: the blocks the page needs, decoded).
    ///
    /// # Errors
    /// A database failure.
    pub async fn readings(&self, filter: &ReadingFilter) -> Result<ReadingsPage, StoreError> {
        match &filter.device {
            Some(device) => self.device_readings(device, filter).await,
            None => self.readings_in_storage_order(filter).await,
        }
    }

    /// One device's readings by time: each of its metrics is an ordered
    /// range of the `(metric, ts_ms)` index, and SQLite merges the ranges of
    /// a compound SELECT lazily, so it reads about `limit` rows, not every
    /// row of the range. Compacted readings come from the few blocks that
    /// can hold the page ([`Store::blocks_for_page`]), sorted.
    async fn device_readings(
        &self,
        device: &str,
        filter: &ReadingFilter,
    ) -> Result<ReadingsPage, StoreError> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT m.id, m.name, m.unit FROM metrics m JOIN devices d ON d.id = m.device
             WHERE d.device_id = ",
        );
        query.push_bind(device.to_owned());
        if let Some(metric) = &filter.metric {
            query.push(" AND m.name = ").push_bind(metric.clone());
        }
        let metrics: Vec<(i64, String, String)> = query
            .push(" ORDER BY m.id")
            .build_query_as()
            .fetch_all(self.pool())
            .await?;
        if metrics.is_empty() {
            return Ok(ReadingsPage {
                rows: Vec::new(),
                next: None,
            });
        }
        let after = match filter.after {
            Some(After::Time { ts_ms, pos }) => Some((ts_ms, pos)),
            _ => None,
        };
        let from = match (filter.from_ms, after) {
            (Some(from), Some((ts, _))) => Some(from.max(ts)),
            (from, after) => from.or(after.map(|(ts, _)| ts)),
        };
        let ids: Vec<i64> = metrics.iter().map(|(id, _, _)| *id).collect();
        let blocks = self
            .blocks_for_page(&ids, from, filter.to_ms, filter.limit)
            .await?;
        // Readings at or after `blocks.until` may sit in blocks not read:
        // this page ends before it.
        let to = match (filter.to_ms, blocks.until) {
            (Some(to), Some(until)) => Some(to.min(until)),
            (to, until) => to.or(until),
        };
        let range = |query: &mut QueryBuilder<Sqlite>| {
            if let Some(from) = from {
                query.push(" AND ts_ms >= ").push_bind(from);
            }
            if let Some(to) = to {
                query.push(" AND ts_ms < ").push_bind(to);
            }
            if let Some((ts, pos)) = after {
                query
                    .push(" AND (ts_ms > ")
                    .push_bind(ts)
                    .push(" OR pos > ")
                    .push_bind(pos)
                    .push(")");
            }
        };
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new("");
        for (arm, metric) in ids.iter().enumerate() {
            if arm > 0 {
                query.push(" UNION ALL ");
            }
            query
                .push("SELECT pos, ts_ms, value, metric FROM samples WHERE metric = ")
                .push_bind(*metric);
            range(&mut query);
        }
        if !blocks.ids.is_empty() {
            query.push(" UNION ALL SELECT pos, ts_ms, value, metric FROM compacted_samples WHERE block IN (");
            let mut list = query.separated(", ");
            for id in &blocks.ids {
                list.push_bind(*id);
            }
            query.push(")");
            range(&mut query);
        }
        // One row more than asked says whether there is a next page.
        query
            .push(" ORDER BY 2, 1 LIMIT ")
            .push_bind(i64::from(filter.limit) + 1);
        let names: HashMap<i64, (&String, &String)> = metrics
            .iter()
            .map(|(id, name, unit)| (*id, (name, unit)))
            .collect();
        let mut rows: Vec<ReadingRow> = query
            .build_query_as::<(i64, i64, Option<f64>, i64)>()
            .fetch_all(self.pool())
            .await?
            .into_iter()
            .filter_map(|(pos, ts_ms, value, metric)| {
                let (name, unit) = names.get(&metric)?;
                Some(ReadingRow {
                    pos,
                    device: device.to_owned(),
                    metric: (*name).clone(),
                    unit: (*unit).clone(),
                    ts_ms,
                    value,
                })
            })
            .collect();
        let next = if rows.len() > filter.limit as usize {
            rows.truncate(filter.limit as usize);
            rows.last().map(|row| After::Time {
                ts_ms: row.ts_ms,
                pos: row.pos,
            })
        } else {
            // Everything before `until` was read; the rest starts there.
            blocks
                .until
                .filter(|until| filter.to_ms.is_none_or(|to| *until < to))
                .map(|until| After::Time {
                    ts_ms: until,
                    pos: 0,
                })
        };
        Ok(ReadingsPage { rows, next })
    }

    /// The compacted blocks a page of `metrics` by time from `from` needs:
    /// those in time order until they hold more than `limit` readings, and
    /// always every block that starts at or before `from`. `until` is the
    /// start of the first block left out (`None`: none was).
    async fn blocks_for_page(
        &self,
        metrics: &[i64],
        from: Option<i64>,
        to: Option<i64>,
        limit: u32,
    ) -> Result<PageBlocks, StoreError> {
        let mut query: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT id, min_ms, n FROM sample_blocks WHERE metric IN (");
        let mut list = query.separated(", ");
        for metric in metrics {
            list.push_bind(*metric);
        }
        query.push(")");
        if let Some(from) = from {
            query.push(" AND max_ms >= ").push_bind(from);
        }
        if let Some(to) = to {
            query.push(" AND min_ms < ").push_bind(to);
        }
        query.push(" ORDER BY min_ms");
        let mut candidates = query.build_query_as::<(i64, i64, i64)>().fetch(self.pool());
        let mut page = PageBlocks {
            ids: Vec::new(),
            until: None,
        };
        let mut held = 0;
        while let Some((id, min_ms, n)) =
            futures_util::TryStreamExt::try_next(&mut candidates).await?
        {
            if held > i64::from(limit) && from.is_none_or(|from| min_ms > from) {
                page.until = Some(min_ms);
                break;
            }
            page.ids.push(id);
            held += n;
        }
        Ok(page)
    }

    /// Readings of every device in storage order, reading at most
    /// [`STORAGE_SCAN_SPAN`] positions a page.
    async fn readings_in_storage_order(
        &self,
        filter: &ReadingFilter,
    ) -> Result<ReadingsPage, StoreError> {
        // The newest position ever assigned stands for the newest held:
        // retention deletes the oldest.
        let (oldest, newest): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT min(p) FROM (SELECT min(pos) AS p FROM samples
                                         UNION ALL SELECT min(first_pos) FROM sample_blocks)),
                    (SELECT seq FROM sqlite_sequence WHERE name = 'samples')",
        )
        .fetch_one(self.pool())
        .await?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(ReadingsPage {
                rows: Vec::new(),
                next: None,
            });
        };
        let after = match filter.after {
            Some(After::Storage(pos)) => pos,
            _ => 0,
        };
        // Positions retention deleted are skipped, not read as empty spans.
        let after = after.max(oldest - 1);
        let through = after.saturating_add(STORAGE_SCAN_SPAN);
        let terms = |query: &mut QueryBuilder<Sqlite>| {
            if let Some(groups) = &filter.groups {
                query.push(" AND m.device IN (SELECT device FROM device_groups WHERE grp IN (");
                let mut list = query.separated(", ");
                for group in groups {
                    list.push_bind(group.clone());
                }
                query.push("))");
            }
            if let Some(metric) = &filter.metric {
                query.push(" AND m.name = ").push_bind(metric.clone());
            }
            if let Some(from) = filter.from_ms {
                query.push(" AND s.ts_ms >= ").push_bind(from);
            }
            if let Some(to) = filter.to_ms {
                query.push(" AND s.ts_ms < ").push_bind(to);
            }
        };
        let mut conn = self.pool().acquire().await?;
        let mut rows = storage_range(
            &mut conn,
            after,
            through,
            terms,
            true,
            filter.limit.saturating_add(1),
        )
        .await?;
        let next = if rows.len() > filter.limit as usize {
            rows.truncate(filter.limit as usize);
            rows.last().map(|row| After::Storage(row.pos))
        } else {
            (through < newest).then_some(After::Storage(through))
        };
        Ok(ReadingsPage { rows, next })
    }

    /// The next page for a cursor consumer at `after` following a head at
    /// `upto`: readings and events with `after < pos <= upto`, in position
    /// order, at most `limit` of each, of the given devices (and readings
    /// of the given metrics; `None`: all). This is how live subscribers
    /// catch up, and how any cursor consumer reads what it has missed.
    ///
    /// # Errors
    /// A database failure. (A stored event that does not read back is
    /// skipped and logged.)
    pub async fn readings_page(
        &self,
        after: Position,
        upto: Position,
        devices: Option<&[String]>,
        metrics: Option<&[String]>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        let mut page = self
            .only_readings_page(after, upto, devices, metrics, limit)
            .await?;
        let (events, full) = self
            .events_between(after, page.read_through, devices, limit)
            .await?;
        page.events = events;
        if let Some(last) = full {
            // Events fill the page: it ends at the last of them.
            page.read_through = last;
            page.rows.retain(|row| row.pos <= last);
        }
        Ok(page)
    }

    /// Events with `after < pos <= upto` of `devices` (`None`: all), in
    /// position order, at most `limit`; and the last position read when
    /// `limit` were (the page must end there).
    async fn events_between(
        &self,
        after: Position,
        upto: Position,
        devices: Option<&[String]>,
        limit: u32,
    ) -> Result<(Vec<EventRow>, Option<Position>), StoreError> {
        let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
            // An event of no device (an audit entry of a key's change) has
            // no devices row: its device reads as "".
            "SELECT e.pos, coalesce(d.device_id, ''), e.ts_ms, e.kind, e.body
             FROM events e LEFT JOIN devices d ON d.id = e.device WHERE e.pos > ",
        );
        query
            .push_bind(after)
            .push(" AND e.pos <= ")
            .push_bind(upto);
        if let Some(devices) = devices {
            query.push(" AND d.device_id IN (");
            let mut list = query.separated(", ");
            for device in devices {
                list.push_bind(device.clone());
            }
            query.push(")");
        }
        query
            .push(" ORDER BY e.pos LIMIT ")
            .push_bind(i64::from(limit));
        let rows = query.build().fetch_all(self.pool()).await?;
        // A full page ends at its last row, kept or not.
        let full = (rows.len() == limit as usize)
            .then(|| rows.last().map(|row| row.get::<Position, _>(0)))
            .flatten();
        let events = rows
            .into_iter()
            .filter_map(|row| {
                let pos: Position = row.get(0);
                let kind: String = row.get(3);
                let body: String = row.get(4);
                // A row someone edited by hand into nonsense is skipped,
                // not allowed to end every reader's stream at its position.
                let kind = EventKind::from_row(&kind, &body)
                    .inspect_err(|err| tracing::warn!(pos, error = %err, "skipped a stored event"))
                    .ok()?;
                Some(EventRow {
                    pos,
                    device: row.get(1),
                    ts_ms: row.get(2),
                    kind,
                })
            })
            .collect();
        Ok((events, full))
    }

    /// The readings of [`Store::readings_page`]'s page, without events.
    async fn only_readings_page(
        &self,
        after: Position,
        upto: Position,
        devices: Option<&[String]>,
        metrics: Option<&[String]>,
        limit: u32,
    ) -> Result<Page, StoreError> {
        // A page stays within one slab, so it needs the compacted blocks
        // of one slab at most.
        let upto = upto.min(slab_end(after + 1));
        let slab = slab_start(after + 1);
        let filter = |query: &mut QueryBuilder<Sqlite>| {
            for (column, values) in [("d.device_id", devices), ("m.name", metrics)] {
                if let Some(values) = values {
                    query.push(format_args!(" AND {column} IN ("));
                    let mut list = query.separated(", ");
                    for value in values {
                        list.push_bind(value.clone());
                    }
                    query.push(")");
                }
            }
        };
        // Nearly always the slab has no blocks, and the rows, with the
        // count of its blocks read in the same statement, are the page.
        // With no row to carry the count, it is read after them: a slab
        // without blocks then had none when the rows were read either
        // (compaction only adds them).
        let (rows, blocks) = rows_and_blocks(self.pool(), after, upto, filter, limit).await?;
        let blocks = match blocks {
            Some(blocks) => blocks,
            None => {
                slab_identity(&mut *self.pool().acquire().await?, slab)
                    .await?
                    .blocks
            }
        };
        if blocks == 0 {
            return Ok(page_of(rows, upto, limit));
        }
        // Blocks and rows in one snapshot, the blocks decoded once.
        let mut tx = self.pool().begin().await?;
        let identity = slab_identity(&mut tx, slab).await?;
        let slab = match self.slabs.get(identity) {
            Some(slab) => slab,
            None => {
                let slab = Arc::new(decode_slab(&mut tx, identity).await?);
                self.slabs.put(Arc::clone(&slab));
                slab
            }
        };
        let wanted = |device: &str, metric: &str| {
            devices.is_none_or(|list| list.iter().any(|d| d == device))
                && metrics.is_none_or(|list| list.iter().any(|m| m == metric))
        };
        let rows = storage_range(&mut tx, after, upto, |_| {}, false, u32::MAX).await?;
        let rows = merge_by_pos(slab.range(after, upto), &slab, rows, wanted, limit as usize);
        tx.rollback().await?;
        Ok(page_of(rows, upto, limit))
    }

    /// The oldest storage position still held (0 if none).
    ///
    /// # Errors
    /// A database failure.
    pub async fn oldest_pos(&self) -> Result<i64, StoreError> {
        let pos: Option<i64> = sqlx::query_scalar(
            "SELECT min(p) FROM (SELECT min(pos) AS p FROM samples
                                 UNION ALL SELECT min(first_pos) FROM sample_blocks
                                 UNION ALL SELECT min(pos) FROM events)",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(pos.unwrap_or(0))
    }

    /// The devices whose last stored status says they are online.
    ///
    /// # Errors
    /// A database failure.
    pub async fn last_online(&self) -> Result<Vec<String>, StoreError> {
        let last: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT d.device_id, e.kind, e.body FROM events e JOIN devices d ON d.id = e.device
             WHERE e.pos IN (SELECT max(pos) FROM events WHERE kind = 'status' GROUP BY device)",
        )
        .fetch_all(self.pool())
        .await?;
        let mut online = Vec::new();
        for (device, kind, body) in last {
            // One that does not read back (edited by hand) says nothing.
            if EventKind::from_row(&kind, &body).ok() == Some(EventKind::Status { online: true }) {
                online.push(device);
            }
        }
        Ok(online)
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

    /// One of the hub's facts about itself (`hub_state`), if set.
    ///
    /// # Errors
    /// A database failure.
    pub async fn state(&self, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM hub_state WHERE key = ?")
                .bind(key)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// This hub's id, stable across restarts: made at its first start.
    ///
    /// # Errors
    /// A database failure.
    pub async fn hub_id(&self) -> Result<String, StoreError> {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes)
            .map_err(|err| StoreError::Thread(std::io::Error::other(err)))?;
        let fresh = bytes
            .iter()
            .fold(0i64, |id, byte| (id << 8) | i64::from(*byte));
        sqlx::query("INSERT OR IGNORE INTO hub_state (key, value) VALUES ('hub_id', ?)")
            .bind(fresh)
            .execute(self.pool())
            .await?;
        let id = self.state("hub_id").await?.unwrap_or(fresh);
        Ok(format!("{id:012x}"))
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

/// Readings with `after < pos <= upto` that pass `filter` (terms on
/// `s.ts_ms`, `m.name` and `d.device_id`), in storage order, at most
/// `limit`: a range of `samples`' primary key, merged `with_blocks` with
/// the compacted blocks of the slabs the range touches.
async fn storage_range(
    conn: &mut SqliteConnection,
    after: Position,
    upto: Position,
    filter: impl Fn(&mut QueryBuilder<Sqlite>),
    with_blocks: bool,
    limit: u32,
) -> Result<Vec<ReadingRow>, StoreError> {
    // CROSS JOIN keeps the readings the outer loop: a range of a key,
    // whatever the filter.
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT s.pos, d.device_id, m.name, m.unit, s.ts_ms, s.value
         FROM samples s CROSS JOIN metrics m ON m.id = s.metric
         CROSS JOIN devices d ON d.id = m.device WHERE s.pos > ",
    );
    query
        .push_bind(after)
        .push(" AND s.pos <= ")
        .push_bind(upto);
    filter(&mut query);
    if with_blocks {
        query.push(
            " UNION ALL SELECT s.pos, d.device_id, m.name, m.unit, s.ts_ms, s.value
             FROM compacted_samples s CROSS JOIN metrics m ON m.id = s.metric
             CROSS JOIN devices d ON d.id = m.device WHERE s.block_first_pos >= ",
        );
        query
            .push_bind(slab_start(after + 1))
            .push(" AND s.block_first_pos <= ")
            .push_bind(upto)
            .push(" AND s.pos > ")
            .push_bind(after)
            .push(" AND s.pos <= ")
            .push_bind(upto);
        filter(&mut query);
    }
    query.push(" ORDER BY 1 LIMIT ").push_bind(i64::from(limit));
    Ok(query
        .build()
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(reading_row)
        .collect())
}

/// A cursor consumer's page of `rows`, read up to `upto` at most `limit`.
fn page_of(rows: Vec<ReadingRow>, upto: Position, limit: u32) -> Page {
    // A short page read everything up to `upto`, matching or not.
    let read_through = if rows.len() < limit as usize {
        upto
    } else {
        rows.last().map_or(upto, |row| row.pos)
    };
    Page {
        rows,
        events: Vec::new(),
        read_through,
    }
}

/// The rows of `samples` with `after < pos <= upto` that pass `filter`, at
/// most `limit`, and how many compacted blocks the slab of `after + 1`
/// holds, read in the same statement (`None` when no row came back).
async fn rows_and_blocks(
    pool: &sqlx::SqlitePool,
    after: Position,
    upto: Position,
    filter: impl Fn(&mut QueryBuilder<Sqlite>),
    limit: u32,
) -> Result<(Vec<ReadingRow>, Option<i64>), StoreError> {
    let slab = slab_start(after + 1);
    let mut query: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT s.pos, d.device_id, m.name, m.unit, s.ts_ms, s.value,
                (SELECT count(*) FROM sample_blocks WHERE first_pos >= ",
    );
    query
        .push_bind(slab)
        .push(" AND first_pos <= ")
        .push_bind(slab_end(slab))
        .push(
            ") FROM samples s CROSS JOIN metrics m ON m.id = s.metric
             CROSS JOIN devices d ON d.id = m.device WHERE s.pos > ",
        )
        .push_bind(after)
        .push(" AND s.pos <= ")
        .push_bind(upto);
    filter(&mut query);
    query
        .push(" ORDER BY s.pos LIMIT ")
        .push_bind(i64::from(limit));
    let found = query.build().fetch_all(pool).await?;
    let blocks = found.first().map(|row| row.get::<i64, _>(6));
    Ok((found.into_iter().map(reading_row).collect(), blocks))
}

/// Which compacted blocks the slab starting at `slab` holds.
async fn slab_identity(conn: &mut SqliteConnection, slab: i64) -> Result<Identity, StoreError> {
    let (blocks, id_sum, id_max): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(id), 0), coalesce(max(id), 0) FROM sample_blocks
         WHERE first_pos >= ? AND first_pos <= ?",
    )
    .bind(slab)
    .bind(slab_end(slab))
    .fetch_one(&mut *conn)
    .await?;
    Ok(Identity {
        slab,
        blocks,
        id_sum,
        id_max,
    })
}

/// Every compacted reading of a slab, decoded, in position order.
async fn decode_slab(conn: &mut SqliteConnection, identity: Identity) -> Result<Slab, StoreError> {
    let blocks: Vec<(i64, i64, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT metric, first_pos, pos_step, first_ms, ms_step, readings FROM sample_blocks
         WHERE first_pos >= ? AND first_pos <= ?",
    )
    .bind(identity.slab)
    .bind(slab_end(identity.slab))
    .fetch_all(&mut *conn)
    .await?;
    let mut readings = Vec::new();
    for (metric, first_pos, pos_step, first_ms, ms_step, text) in &blocks {
        let block = blocks::decode(*first_pos, *pos_step, *first_ms, *ms_step, text)
            .map_err(|err| sqlx::Error::Decode(Box::new(err)))?;
        readings.extend(block.into_iter().map(|reading| (*metric, reading)));
    }
    readings.sort_unstable_by_key(|(_, reading)| reading.pos);
    let metrics: Vec<i64> = blocks.iter().map(|block| block.0).collect();
    let names: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT m.id, d.device_id, m.name, m.unit FROM metrics m JOIN devices d ON d.id = m.device
         WHERE m.id IN (SELECT value FROM json_each(?))",
    )
    .bind(serde_json::to_string(&metrics).expect("integers are valid JSON"))
    .fetch_all(&mut *conn)
    .await?;
    Ok(Slab {
        identity,
        readings,
        names: names
            .into_iter()
            .map(|(id, device, metric, unit)| {
                (
                    id,
                    Names {
                        device,
                        metric,
                        unit,
                    },
                )
            })
            .collect(),
    })
}

/// A page in position order from a slab's compacted readings and the
/// rows beside them, of `wanted` devices and metrics, at most `limit`.
fn merge_by_pos(
    compacted: &[(i64, blocks::Reading)],
    slab: &Slab,
    rows: Vec<ReadingRow>,
    wanted: impl Fn(&str, &str) -> bool,
    limit: usize,
) -> Vec<ReadingRow> {
    let mut page = Vec::new();
    let mut compacted = compacted.iter().peekable();
    let mut rows = rows.into_iter().peekable();
    while page.len() < limit {
        let take_row = match (compacted.peek(), rows.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((_, reading)), Some(row)) => row.pos < reading.pos,
        };
        let next = if take_row {
            rows.next()
        } else {
            compacted.next().and_then(|(metric, reading)| {
                let names = slab.names.get(metric)?;
                Some(ReadingRow {
                    pos: reading.pos,
                    device: names.device.clone(),
                    metric: names.metric.clone(),
                    unit: names.unit.clone(),
                    ts_ms: reading.ts_ms,
                    value: reading.value,
                })
            })
        };
        if let Some(row) = next
            && wanted(&row.device, &row.metric)
        {
            page.push(row);
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PoolDurability;

    /// A store holding, for each `(device, metric, positions)`, one reading
    /// per position with `ts_ms` from `time(pos)`.
    async fn store_with(
        rows: &[(&str, &str, std::ops::RangeInclusive<i64>)],
        time: fn(i64) -> i64,
    ) -> (Store, tempfile::TempDir) {
        stored(rows, time, false).await
    }

    /// As [`store_with`], then everything compacted when `compacted`.
    async fn stored(
        rows: &[(&str, &str, std::ops::RangeInclusive<i64>)],
        time: fn(i64) -> i64,
        compacted: bool,
    ) -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db"), PoolDurability::WithWriter)
            .await
            .unwrap();
        for (device, metric, positions) in rows {
            sqlx::query("INSERT OR IGNORE INTO devices (device_id, created_ms) VALUES (?, 0)")
                .bind(device)
                .execute(store.pool())
                .await
                .unwrap();
            sqlx::query(
                "INSERT OR IGNORE INTO metrics (device, name, unit)
                 SELECT id, ?, 'u' FROM devices WHERE device_id = ?",
            )
            .bind(metric)
            .bind(device)
            .execute(store.pool())
            .await
            .unwrap();
            sqlx::query(
                "WITH RECURSIVE p(pos) AS (SELECT ? UNION ALL SELECT pos + 1 FROM p WHERE pos < ?)
                 INSERT INTO samples (pos, metric, ts_ms, value)
                 SELECT p.pos, m.id, 0, p.pos FROM p, metrics m JOIN devices d ON d.id = m.device
                 WHERE d.device_id = ? AND m.name = ?",
            )
            .bind(positions.start())
            .bind(positions.end())
            .bind(device)
            .bind(metric)
            .execute(store.pool())
            .await
            .unwrap();
        }
        // ts_ms from the position: a function SQLite cannot see, so set here.
        let all: Vec<i64> = sqlx::query_scalar("SELECT pos FROM samples")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let mut tx = store.pool().begin().await.unwrap();
        for pos in all {
            sqlx::query("UPDATE samples SET ts_ms = ? WHERE pos = ?")
                .bind(time(pos))
                .bind(pos)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        if compacted {
            crate::store::writer::compact_everything(&dir.path().join("hub.db"));
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
                .fetch_one(store.pool())
                .await
                .unwrap();
            assert_eq!(left, 0, "every reading compacted");
        }
        (store, dir)
    }

    /// Every page of `filter`, following `next`.
    async fn all_pages(store: &Store, mut filter: ReadingFilter) -> Vec<ReadingsPage> {
        let mut pages = Vec::new();
        loop {
            let page = store.readings(&filter).await.unwrap();
            let next = page.next;
            pages.push(page);
            match next {
                Some(after) => filter.after = Some(after),
                None => return pages,
            }
        }
    }

    #[tokio::test]
    async fn a_device_pages_by_time_across_its_metrics_with_ties_by_position() {
        for compacted in [false, true] {
            device_pages_by_time(compacted).await;
        }
    }

    async fn device_pages_by_time(compacted: bool) {
        // Two metrics, interleaved, with times going backwards in places
        // and many equal times: the order is (ts_ms, pos) whatever the
        // storage order.
        let (store, _dir) = stored(
            &[
                ("d1", "a", 1..=40),
                ("d1", "b", 41..=80),
                ("d2", "a", 81..=90),
            ],
            |pos| (pos * 7) % 13,
            compacted,
        )
        .await;
        let filter = ReadingFilter {
            device: Some("d1".into()),
            limit: 7,
            ..ReadingFilter::default()
        };
        let pages = all_pages(&store, filter.clone()).await;
        if !compacted {
            assert_eq!(pages.len(), 12, "80 rows in pages of 7");
        }
        let got: Vec<(i64, i64)> = pages
            .iter()
            .flat_map(|page| page.rows.iter().map(|row| (row.ts_ms, row.pos)))
            .collect();
        let mut want: Vec<(i64, i64)> = (1..=80).map(|pos| ((pos * 7) % 13, pos)).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(
            pages
                .iter()
                .all(|page| page.rows.iter().all(|r| r.device == "d1"))
        );

        // A time range and a metric narrow it; the cursor stays inside them.
        let narrowed = all_pages(
            &store,
            ReadingFilter {
                metric: Some("b".into()),
                from_ms: Some(3),
                to_ms: Some(6),
                limit: 2,
                ..filter
            },
        )
        .await;
        let got: Vec<i64> = narrowed
            .iter()
            .flat_map(|page| page.rows.iter().map(|row| row.pos))
            .collect();
        let mut want: Vec<(i64, i64)> = (41..=80)
            .map(|pos| ((pos * 7) % 13, pos))
            .filter(|(ts, _)| (3..6).contains(ts))
            .collect();
        want.sort_unstable();
        assert_eq!(got, want.iter().map(|(_, pos)| *pos).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn without_a_device_pages_go_in_storage_order_and_read_a_bounded_span() {
        for compacted in [false, true] {
            storage_order_pages(compacted).await;
        }
    }

    async fn storage_order_pages(compacted: bool) {
        let span = STORAGE_SCAN_SPAN;
        // A rare metric far apart: one reading, then a span and more of
        // another metric, then the second one.
        let (store, _dir) = stored(
            &[
                ("d1", "rare", 1..=1),
                ("d1", "common", 2..=span + 10),
                ("d2", "rare", span + 11..=span + 11),
            ],
            |pos| pos,
            compacted,
        )
        .await;
        let pages = all_pages(
            &store,
            ReadingFilter {
                metric: Some("rare".into()),
                limit: 10,
                ..ReadingFilter::default()
            },
        )
        .await;
        // The first page read its span and found one; the second the rest.
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].rows.len(), 1);
        assert_eq!(pages[0].next, Some(After::Storage(span)));
        let devices: Vec<&str> = pages[1].rows.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(devices, ["d2"]);
        assert_eq!(pages[1].next, None);

        // Unfiltered, full pages follow storage order.
        let page = store
            .readings(&ReadingFilter {
                limit: 3,
                after: Some(After::Storage(5)),
                ..ReadingFilter::default()
            })
            .await
            .unwrap();
        let positions: Vec<i64> = page.rows.iter().map(|r| r.pos).collect();
        assert_eq!(positions, [6, 7, 8]);
        assert_eq!(page.next, Some(After::Storage(8)));
    }

    #[tokio::test]
    async fn a_storage_order_page_skips_what_retention_deleted() {
        let (store, _dir) = store_with(&[("d1", "m", 1..=10)], |pos| pos).await;
        sqlx::query("DELETE FROM samples WHERE pos <= 5")
            .execute(store.pool())
            .await
            .unwrap();
        // Far below the oldest position: not a run of empty spans.
        let page = store
            .readings(&ReadingFilter {
                limit: 100,
                ..ReadingFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.rows.len(), 5);
        assert_eq!(page.next, None);
    }

    #[tokio::test]
    async fn an_unknown_device_is_an_empty_last_page() {
        let (store, _dir) = store_with(&[("d1", "m", 1..=3)], |pos| pos).await;
        let page = store
            .readings(&ReadingFilter {
                device: Some("nobody".into()),
                limit: 10,
                ..ReadingFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page,
            ReadingsPage {
                rows: Vec::new(),
                next: None
            }
        );
    }
}
