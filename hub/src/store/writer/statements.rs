//! The writer's SQL, run on its own rusqlite connection and thread.
//!
//! Everything here is synchronous: a whole group commit runs on the writer's
//! thread without handing each statement to another thread and waiting to be
//! woken with its result.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use protocol::Hello;
use protocol::limits::MAX_METRICS_PER_DEVICE;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::jobs::{AccessChange, RuleChange};
use super::rollup::{self, Bucket, Tier};
use crate::commits::{Committed, Event};
use crate::store::blocks::{Block, Reading};
use crate::store::now_ms;

/// Most rows in one INSERT or UPDATE. One statement for many rows runs the
/// statement machinery (bind, step, reset) once instead of per row;
/// 256 rows × 4 columns stays far below SQLite's 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 256;

/// Prepared statements kept per connection: nine sizes each of the INSERT,
/// the UPDATE and the two roll-up UPSERTs, and the few single statements
/// below.
const STATEMENT_CACHE: usize = 64;

/// WAL pages between automatic checkpoints.
const WAL_CHECKPOINT_PAGES: i64 = 16_384;

/// Opens the writer's connection to the database the store created and
/// migrated. Only the writer's thread uses it, so SQLite's own per-call
/// mutex is left out.
pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The pool's connections (retention, the CLI) write too, rarely.
    conn.busy_timeout(Duration::from_secs(10))?;
    // FULL: a commit survives power loss, and only then is a batch
    // acknowledged. Group commit pays the fsync once for many batches.
    // (WAL mode is a property of the file; the store set it.)
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A group commit under load writes thousands of pages to the WAL; at
    // SQLite's default (a checkpoint every 1,000 pages) nearly every commit
    // is followed by a checkpoint that copies pages a later commit changes
    // again. Every 16,384 pages (64 MiB at 4 KiB), each is copied once more
    // rarely; the WAL file grows to about that before it is reused.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The largest storage position ever assigned (0 if none). With
/// AUTOINCREMENT, `sqlite_sequence` keeps it even after retention deleted
/// the row.
pub(super) fn last_position(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'samples'")?
        .query_row([], |row| row.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

/// A device's last committed batch `seq` (0 if it never sent one).
pub(super) fn last_seq(conn: &Connection, device_row: i64) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT last_seq FROM devices WHERE id = ?")?
        .query_row([device_row], |row| row.get(0))
        .optional()?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// Sets one of the hub's facts about itself.
pub(super) fn set_state(conn: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO hub_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(rusqlite::params![key, value])?;
    Ok(())
}

/// Adds or removes an alert rule; whether it changed anything.
pub(super) fn change_rule(conn: &Connection, change: &RuleChange) -> rusqlite::Result<bool> {
    let changed = match change {
        RuleChange::Add { name, definition } => conn
            .prepare_cached(
                "INSERT INTO alert_rules (name, definition, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
            )?
            .execute(rusqlite::params![name, definition, now_ms()])?,
        RuleChange::Put { name, definition } => conn
            .prepare_cached(
                "INSERT INTO alert_rules (name, definition, created_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
            )?
            .execute(rusqlite::params![name, definition, now_ms()])?,
        RuleChange::Remove { name } => conn
            .prepare_cached("DELETE FROM alert_rules WHERE name = ?1")?
            .execute([name])?,
    };
    Ok(changed == 1)
}

/// Adds or revokes a key, or changes a device's groups and name; whether
/// it changed anything (the key or device was there to change).
pub(super) fn change_access(conn: &Connection, change: &AccessChange) -> rusqlite::Result<bool> {
    match change {
        AccessChange::AddKey {
            name,
            key_sha256,
            role,
            groups,
            expires_ms,
        } => {
            let groups = serde_json::to_string(groups).expect("strings are valid JSON");
            let added = conn
                .prepare_cached(
                    "INSERT INTO api_keys (name, key_sha256, role, groups, created_ms, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO NOTHING",
                )?
                .execute(rusqlite::params![
                    name,
                    &key_sha256[..],
                    role,
                    groups,
                    now_ms(),
                    expires_ms
                ])?;
            Ok(added == 1)
        }
        AccessChange::RevokeKey { name } => conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_ms = coalesce(revoked_ms, ?1) WHERE name = ?2",
            )?
            .execute(rusqlite::params![now_ms(), name])
            .map(|changed| changed == 1),
        AccessChange::Device {
            device_id,
            name,
            join,
            leave,
        } => {
            let row: Option<i64> = conn
                .prepare_cached("SELECT id FROM devices WHERE device_id = ?1")?
                .query_row([device_id], |row| row.get(0))
                .optional()?;
            let Some(row) = row else {
                return Ok(false);
            };
            if let Some(name) = name {
                conn.prepare_cached("UPDATE devices SET name = ?1 WHERE id = ?2")?
                    .execute(rusqlite::params![name, row])?;
            }
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO device_groups (device, grp) VALUES (?1, ?2)",
            )?;
            for group in join {
                insert.execute(rusqlite::params![row, group])?;
            }
            let mut delete =
                conn.prepare_cached("DELETE FROM device_groups WHERE device = ?1 AND grp = ?2")?;
            for group in leave {
                delete.execute(rusqlite::params![row, group])?;
            }
            Ok(true)
        }
    }
}

/// Writes a device's credentials from a cluster's stream: a token (for a
/// new device, or replacing a known one's), or a revocation (never
/// cleared, and recorded for an id not seen yet so it cannot register
/// itself later).
pub(super) fn provision(conn: &Connection, change: &super::Provisioned) -> rusqlite::Result<()> {
    match change {
        super::Provisioned::Token {
            device_id,
            token_hash,
            name,
        } => conn
            .prepare_cached(
                "INSERT INTO devices (device_id, name, token_hash, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device_id) DO UPDATE
                 SET token_hash = excluded.token_hash, name = coalesce(excluded.name, devices.name),
                     key_claimable = 0",
            )?
            .execute(rusqlite::params![device_id, name, &token_hash[..], now_ms()])?,
        super::Provisioned::Enrolled {
            device_id,
            token_hash,
        } => conn
            .prepare_cached(
                "INSERT INTO devices (device_id, token_hash, created_ms, key_claimable)
                 VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (device_id) DO UPDATE SET token_hash = excluded.token_hash
                 WHERE devices.key_claimable = 1 AND devices.revoked_ms IS NULL",
            )?
            .execute(rusqlite::params![device_id, &token_hash[..], now_ms()])?,
        super::Provisioned::Confirmed {
            device_id,
            token_hash,
        } => conn
            .prepare_cached(
                "UPDATE devices SET key_claimable = 0 WHERE device_id = ?1 AND token_hash IS ?2",
            )?
            .execute(rusqlite::params![
                device_id,
                token_hash.as_ref().map(|hash| &hash[..])
            ])?,
        super::Provisioned::Revoked { device_id } => conn
            .prepare_cached(
                "INSERT INTO devices (device_id, created_ms, revoked_ms) VALUES (?1, ?2, ?2)
                 ON CONFLICT (device_id) DO UPDATE
                 SET revoked_ms = coalesce(devices.revoked_ms, excluded.revoked_ms)",
            )?
            .execute(rusqlite::params![device_id, now_ms()])?,
    };
    Ok(())
}

/// Creates a device that has no token: one a client certificate vouches
/// for, or one MQTT or a cluster's stream brings (or finds it, if it was
/// created meanwhile). Answers its row and whether it is revoked.
pub(super) fn insert_device(conn: &Connection, device_id: &str) -> rusqlite::Result<(i64, bool)> {
    conn.prepare_cached(
        "INSERT INTO devices (device_id, created_ms) VALUES (?, ?)
         ON CONFLICT (device_id) DO NOTHING",
    )?
    .execute((device_id, now_ms()))?;
    conn.prepare_cached("SELECT id, revoked_ms IS NOT NULL FROM devices WHERE device_id = ?")?
        .query_row([device_id], |row| Ok((row.get(0)?, row.get(1)?)))
}

/// Records a `Hello`'s model, firmware and metrics; answers the metric rows
/// by the device's metric ids. A `Hello` that would give the device more
/// than [`MAX_METRICS_PER_DEVICE`] metrics writes nothing and gets only the
/// rows of the metrics the device already has: its session sees the
/// shortfall and refuses it (so two connections racing cannot pass the cap
/// either).
pub(super) fn write_hello(
    conn: &Connection,
    device_row: i64,
    hello: &Hello,
) -> rusqlite::Result<HashMap<u16, i64>> {
    let known: HashMap<String, i64> = conn
        .prepare_cached("SELECT name, id FROM metrics WHERE device = ?")?
        .query_map([device_row], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let new = hello
        .metrics
        .iter()
        .filter(|metric| !known.contains_key(&metric.name))
        .count();
    if known.len() + new > MAX_METRICS_PER_DEVICE {
        return Ok(hello
            .metrics
            .iter()
            .filter_map(|metric| Some((metric.id, *known.get(&metric.name)?)))
            .collect());
    }
    conn.prepare_cached("UPDATE devices SET model = ?, firmware = ? WHERE id = ?")?
        .execute((&hello.model, &hello.firmware, device_row))?;
    let rows = upsert_metrics(
        conn,
        device_row,
        hello
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.unit.as_str())),
    )?;
    Ok(hello.metrics.iter().map(|m| m.id).zip(rows).collect())
}

/// Creates a device's metrics by name, or updates their unit; answers their
/// rows in order.
pub(super) fn upsert_metrics<'m>(
    conn: &Connection,
    device_row: i64,
    metrics: impl Iterator<Item = (&'m str, &'m str)>,
) -> rusqlite::Result<Vec<i64>> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO metrics (device, name, unit) VALUES (?, ?, ?)
         ON CONFLICT (device, name) DO UPDATE SET unit = excluded.unit
         RETURNING id",
    )?;
    metrics
        .map(|(name, unit)| upsert.query_row((device_row, name, unit), |row| row.get(0)))
        .collect()
}

/// Whether `metric` has a reading at `ts_ms`: an index lookup, and a look
/// inside the compacted blocks whose time span holds it (usually none:
/// readings are compacted long after they arrive).
pub(super) fn has_reading_at(conn: &Connection, metric: i64, ts_ms: i64) -> rusqlite::Result<bool> {
    if conn
        .prepare_cached("SELECT 1 FROM samples WHERE metric = ? AND ts_ms = ? LIMIT 1")?
        .exists((metric, ts_ms))?
    {
        return Ok(true);
    }
    conn.prepare_cached(
        "SELECT 1 FROM compacted_samples WHERE metric = ?1 AND block_max_ms >= ?2
             AND block_min_ms <= ?2 AND ts_ms = ?2 LIMIT 1",
    )?
    .exists((metric, ts_ms))
}

/// Statements for 1, 2, 4 … [`ROWS_PER_STATEMENT`] rows of `row`
/// placeholders each, made by `sql`: any count is written as full-size
/// statements plus at most one of each smaller power of two, so only nine
/// distinct statements of a kind are ever prepared and all stay in the
/// connection's statement cache. The placeholders are bare `?`, numbered by
/// their place in the text: with numbered ones (`?513`) SQLite looks each
/// name up in a list, and a 1,024-parameter statement binds many times
/// slower.
fn power_of_two_statements(row: &str, sql: impl Fn(&str) -> String) -> Vec<&'static str> {
    let mut statements = Vec::new();
    let mut rows = 1;
    while rows <= ROWS_PER_STATEMENT {
        let values = vec![row; rows].join(", ");
        statements.push(&*sql(&values).leak());
        rows *= 2;
    }
    statements
}

/// Splits `items` into the chunks [`power_of_two_statements`] serves, each
/// with the index of its statement.
fn power_of_two_chunks<T>(mut rest: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let take = if rest.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        Some((take.ilog2() as usize, chunk))
    })
}

static INSERT_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    power_of_two_statements("(?, ?, ?, ?)", |values| {
        format!("INSERT INTO samples (pos, metric, ts_ms, value) VALUES {values}")
    })
});

/// Inserts the readings of a commit, bound straight into cached statements.
pub(super) fn insert_samples(conn: &Connection, committed: &[Committed]) -> rusqlite::Result<()> {
    for (statement, chunk) in power_of_two_chunks(committed) {
        let mut insert = conn.prepare_cached(INSERT_SQL[statement])?;
        for (i, row) in chunk.iter().enumerate() {
            let first = 4 * i + 1;
            insert.raw_bind_parameter(first, row.pos)?;
            insert.raw_bind_parameter(first + 1, row.sample.metric)?;
            insert.raw_bind_parameter(first + 2, row.sample.ts_ms)?;
            insert.raw_bind_parameter(first + 3, row.sample.value)?;
        }
        insert.raw_execute()?;
    }
    Ok(())
}

/// Inserts a commit's events, then moves `samples`' row of
/// `sqlite_sequence` past the last of them: it is the one record of the
/// last position ever assigned, whether a reading or an event took it.
pub(super) fn insert_events(conn: &Connection, events: &[Event]) -> rusqlite::Result<()> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (pos, device, ts_ms, kind, body) VALUES (?, ?, ?, ?, ?)",
    )?;
    for Event { pos, event } in events {
        let (kind, body) = event.kind.to_row();
        insert.execute(rusqlite::params![
            pos,
            event.device_row,
            event.ts_ms,
            kind,
            body
        ])?;
    }
    let moved = conn
        .prepare_cached("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'samples'")?
        .execute([last.pos])?;
    if moved == 0 {
        // No reading was ever stored: the row does not exist yet.
        conn.prepare_cached("INSERT INTO sqlite_sequence (name, seq) VALUES ('samples', ?)")?
            .execute([last.pos])?;
    }
    Ok(())
}

/// Deletes events older than `before_ms` (the hub's time), alerts' kept
/// (few, and their history is the point), at most
/// `max_rows`, raising the retention watermark past them. Returns how many
/// went, and 1 if none older is left (else 0).
pub(super) fn delete_old_events(
    conn: &mut Connection,
    before_ms: i64,
    max_rows: usize,
) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let positions = tx
        .prepare_cached(
            "DELETE FROM events WHERE pos IN (
                 SELECT pos FROM events WHERE ts_ms < ? AND kind NOT IN ('alert', 'audit', 'config') LIMIT ?)
             RETURNING pos",
        )?
        .query_map(
            rusqlite::params![before_ms, i64::try_from(max_rows).unwrap_or(i64::MAX)],
            |row| row.get::<_, i64>(0),
        )?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    if let Some(watermark) = positions.iter().copied().max() {
        tx.prepare_cached(
            "UPDATE hub_state SET value = max(value, ?) WHERE key = 'retention_deleted_through'",
        )?
        .execute([watermark])?;
    }
    tx.commit()?;
    Ok((positions.len(), usize::from(positions.len() < max_rows)))
}

/// `INSERT … ON CONFLICT DO UPDATE` of a roll-up table: a bucket the
/// commit adds to is created, or has the commit's part added. SQLite's
/// two-argument `min` and `max` are NULL if either is, hence the
/// `coalesce`: a bucket that held only NULLs takes the new value.
fn upsert_rollup_sql(table: &str) -> Vec<&'static str> {
    power_of_two_statements("(?, ?, ?, ?, ?, ?, ?, ?, ?)", |values| {
        format!(
            "INSERT INTO {table} (metric, bucket_ms, n, n_values, sum, min, max, first_ms, last_ms) \
             VALUES {values} ON CONFLICT (metric, bucket_ms) DO UPDATE SET \
             n = n + excluded.n, n_values = n_values + excluded.n_values, \
             sum = coalesce(sum + excluded.sum, sum, excluded.sum), \
             min = coalesce(min(min, excluded.min), min, excluded.min), \
             max = coalesce(max(max, excluded.max), max, excluded.max), \
             first_ms = min(first_ms, excluded.first_ms), last_ms = max(last_ms, excluded.last_ms)"
        )
    })
}

static UPSERT_MINUTES_SQL: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| upsert_rollup_sql(rollup::MINUTES.table));
static UPSERT_HOURS_SQL: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| upsert_rollup_sql(rollup::HOURS.table));

/// Adds a commit's buckets of `tier` to its table.
pub(super) fn upsert_rollups(
    conn: &Connection,
    tier: Tier,
    buckets: &BTreeMap<(i64, i64), Bucket>,
) -> rusqlite::Result<()> {
    let sql = if tier == rollup::MINUTES {
        &UPSERT_MINUTES_SQL
    } else {
        &UPSERT_HOURS_SQL
    };
    let buckets: Vec<(&(i64, i64), &Bucket)> = buckets.iter().collect();
    for (statement, chunk) in power_of_two_chunks(&buckets) {
        let mut upsert = conn.prepare_cached(sql[statement])?;
        for (i, &(&(metric, start), bucket)) in chunk.iter().enumerate() {
            let first = 9 * i + 1;
            upsert.raw_bind_parameter(first, metric)?;
            upsert.raw_bind_parameter(first + 1, start)?;
            upsert.raw_bind_parameter(first + 2, bucket.n)?;
            upsert.raw_bind_parameter(first + 3, bucket.n_values)?;
            upsert.raw_bind_parameter(first + 4, bucket.sum)?;
            upsert.raw_bind_parameter(first + 5, bucket.min)?;
            upsert.raw_bind_parameter(first + 6, bucket.max)?;
            upsert.raw_bind_parameter(first + 7, bucket.first_ms)?;
            upsert.raw_bind_parameter(first + 8, bucket.last_ms)?;
        }
        upsert.raw_execute()?;
    }
    Ok(())
}

/// `UPDATE … FROM (VALUES …)`: every device of a commit in one statement.
/// The first parameter (it comes first in the text) is the time seen.
static LAST_SEQ_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    power_of_two_statements("(?, ?)", |values| {
        format!(
            "UPDATE devices SET last_seq = v.column2, last_seen_ms = ? \
             FROM (VALUES {values}) AS v WHERE devices.id = v.column1"
        )
    })
});

/// Writes each device's last committed `seq` and when it was last seen.
pub(super) fn record_last_seq(
    conn: &Connection,
    advanced: &HashMap<i64, u64>,
    seen_ms: i64,
) -> rusqlite::Result<()> {
    let advanced: Vec<(i64, u64)> = advanced.iter().map(|(&row, &seq)| (row, seq)).collect();
    for (statement, chunk) in power_of_two_chunks(&advanced) {
        let mut update = conn.prepare_cached(LAST_SEQ_SQL[statement])?;
        update.raw_bind_parameter(1, seen_ms)?;
        for (i, &(device_row, seq)) in chunk.iter().enumerate() {
            let first = 2 * i + 2;
            update.raw_bind_parameter(first, device_row)?;
            update.raw_bind_parameter(first + 1, i64::try_from(seq).unwrap_or(i64::MAX))?;
        }
        update.raw_execute()?;
    }
    Ok(())
}

/// Compacted blocks one retention chunk deletes at most per metric.
const BLOCKS_PER_CHUNK: i64 = 64;

/// Deletes readings older than `before_ms` of `metrics`, in that order: at
/// most `max_rows` rows of `samples` in all, and the compacted blocks that
/// hold nothing newer. Raises the retention watermark (the largest position
/// deleted) in the same transaction. Returns how many readings went and how
/// many of `metrics` have nothing older left.
pub(super) fn delete_old(
    conn: &mut Connection,
    metrics: &[i64],
    before_ms: i64,
    max_rows: usize,
) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (mut deleted, mut finished, mut watermark) = (0, 0, 0i64);
    // Rows of `samples` deleted: what `max_rows` bounds.
    let mut rows = 0;
    {
        let mut delete = tx.prepare_cached(
            "DELETE FROM samples WHERE pos IN (
                 SELECT pos FROM samples WHERE metric = ? AND ts_ms < ? LIMIT ?)
             RETURNING pos",
        )?;
        let mut delete_blocks = tx.prepare_cached(
            "DELETE FROM sample_blocks WHERE id IN (
                 SELECT id FROM sample_blocks WHERE metric = ? AND max_ms < ? LIMIT ?)
             RETURNING last_pos, n",
        )?;
        for &metric in metrics {
            let room = max_rows - rows;
            if room == 0 {
                break;
            }
            let limit = i64::try_from(room).unwrap_or(i64::MAX);
            let positions = delete
                .query_map(rusqlite::params![metric, before_ms, limit], |row| {
                    row.get::<_, i64>(0)
                })?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            rows += positions.len();
            deleted += positions.len();
            watermark = positions.iter().copied().fold(watermark, i64::max);
            if positions.len() == room {
                break;
            }
            // Compacted readings go a block at a time, once all of it is
            // older: deleting a block is one row, whatever it holds.
            let blocks = delete_blocks
                .query_map(
                    rusqlite::params![metric, before_ms, BLOCKS_PER_CHUNK],
                    |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)),
                )?
                .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
            for &(last_pos, n) in &blocks {
                deleted += usize::try_from(n).unwrap_or_default();
                watermark = watermark.max(last_pos);
            }
            if (blocks.len() as i64) < BLOCKS_PER_CHUNK {
                finished += 1;
            }
        }
    }
    if watermark > 0 {
        tx.prepare_cached(
            "UPDATE hub_state SET value = max(value, ?) WHERE key = 'retention_deleted_through'",
        )?
        .execute([watermark])?;
    }
    tx.commit()?;
    Ok((deleted, finished))
}

/// Deletes buckets of `tier` that start before `before_ms` of `metrics`,
/// in that order, at most `max_rows` in all. Returns how many went and how
/// many of `metrics` have nothing older left.
pub(super) fn delete_old_buckets(
    conn: &mut Connection,
    tier: Tier,
    metrics: &[i64],
    before_ms: i64,
    max_rows: usize,
) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (mut deleted, mut finished) = (0, 0);
    {
        let table = tier.table;
        // A key range of the table's primary key (metric, bucket_ms).
        let mut delete = tx.prepare_cached(&format!(
            "DELETE FROM {table} WHERE metric = ?1 AND bucket_ms IN (
                 SELECT bucket_ms FROM {table} WHERE metric = ?1 AND bucket_ms < ?2 LIMIT ?3)"
        ))?;
        for &metric in metrics {
            let room = max_rows - deleted;
            if room == 0 {
                break;
            }
            let limit = i64::try_from(room).unwrap_or(i64::MAX);
            let gone = delete.execute(rusqlite::params![metric, before_ms, limit])?;
            deleted += gone;
            if gone < room {
                finished += 1;
            }
        }
    }
    tx.commit()?;
    Ok((deleted, finished))
}

/// Moves readings of one slab into compacted blocks, one block per metric,
/// in one transaction: each reading is in `samples` or in a block, never
/// both, whatever reads meanwhile. `metrics` names each metric's positions
/// in the slab, as compaction found them; a position no longer there
/// (retention deleted it) is skipped. A value SQLite would read back from
/// the JSON as a different f64 (it can, at extreme exponents) stays in
/// `samples`. Returns how many readings moved.
pub(super) fn compact(
    conn: &mut Connection,
    metrics: &[(i64, Vec<i64>)],
) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut moved = 0;
    {
        let mut read = tx.prepare_cached(
            "SELECT pos, ts_ms, value FROM samples
             WHERE pos IN (SELECT value FROM json_each(?1)) AND metric = ?2 ORDER BY pos",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO sample_blocks (metric, first_pos, last_pos, pos_step, first_ms, ms_step,
                                        min_ms, max_ms, n, readings)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )?;
        let mut read_back =
            tx.prepare_cached("SELECT pos, ts_ms, value FROM compacted_samples WHERE block = ?")?;
        let mut drop_block = tx.prepare_cached("DELETE FROM sample_blocks WHERE id = ?")?;
        let mut delete =
            tx.prepare_cached("DELETE FROM samples WHERE pos IN (SELECT value FROM json_each(?))")?;
        for (metric, positions) in metrics {
            let wanted = serde_json::to_string(positions).expect("integers are valid JSON");
            let mut readings = read
                .query_map(rusqlite::params![wanted, metric], reading)?
                .collect::<rusqlite::Result<Vec<Reading>>>()?;
            while !readings.is_empty() {
                let block = Block::encode(&readings);
                let id: i64 = insert.query_row(
                    rusqlite::params![
                        metric,
                        block.first_pos,
                        block.last_pos,
                        block.pos_step,
                        block.first_ms,
                        block.ms_step,
                        block.min_ms,
                        block.max_ms,
                        block.n,
                        block.readings
                    ],
                    |row| row.get(0),
                )?;
                let back = read_back
                    .query_map([id], reading)?
                    .collect::<rusqlite::Result<Vec<Reading>>>()?;
                if back.len() != readings.len()
                    || back
                        .iter()
                        .zip(&readings)
                        .any(|(b, r)| b.pos != r.pos || b.ts_ms != r.ts_ms)
                {
                    // The encoding's arithmetic and the view's disagree: a
                    // bug, and nothing of this slab may move.
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
                        Some(format!(
                            "a compacted block of metric {metric} reads back differently"
                        )),
                    ));
                }
                let faithful = |(b, r): (&Reading, &Reading)| {
                    b.value.map(f64::to_bits) == r.value.map(f64::to_bits) || b.value == r.value // 0.0 and -0.0
                };
                if back.iter().zip(&readings).all(faithful) {
                    break;
                }
                drop_block.execute([id])?;
                let keep: Vec<bool> = back.iter().zip(&readings).map(faithful).collect();
                let mut keep = keep.into_iter();
                readings.retain(|_| keep.next().unwrap_or(false));
            }
            if readings.is_empty() {
                continue;
            }
            let gone: Vec<i64> = readings.iter().map(|r| r.pos).collect();
            delete.execute([serde_json::to_string(&gone).expect("integers are valid JSON")])?;
            moved += readings.len();
        }
    }
    tx.commit()?;
    Ok(moved)
}

/// A `(pos, ts_ms, value)` row.
fn reading(row: &rusqlite::Row<'_>) -> rusqlite::Result<Reading> {
    Ok(Reading {
        pos: row.get(0)?,
        ts_ms: row.get(1)?,
        value: row.get(2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_a_statement_for_every_power_of_two_up_to_the_largest() {
        let statements = power_of_two_statements("(?)", |values| values.to_owned());
        assert_eq!(statements.len(), 9);
        assert_eq!(statements[0], "(?)");
        assert_eq!(statements[1], "(?), (?)");
        assert_eq!(statements[8].matches('?').count(), ROWS_PER_STATEMENT);
    }

    #[test]
    fn any_count_is_covered_by_power_of_two_chunks() {
        for count in [0, 1, 5, 255, 256, 257, 1000] {
            let items: Vec<usize> = (0..count).collect();
            let chunks: Vec<(usize, &[usize])> = power_of_two_chunks(&items).collect();
            assert_eq!(chunks.iter().map(|(_, c)| c.len()).sum::<usize>(), count);
            for (statement, chunk) in chunks {
                assert_eq!(chunk.len(), 1 << statement);
            }
        }
    }
}
