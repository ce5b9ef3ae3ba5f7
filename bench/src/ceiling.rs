//! SQLite's ceilings for the hub's schema: one process, no network, no
//! protocol, with the hub's pragmas (WAL, synchronous=FULL). The plain one
//! inserts the rows one statement each; the best one as the writer does,
//! 256 rows to a prepared statement, with values that are not whole numbers
//! (SQLite stores a whole-number REAL as a small integer, which would flatter
//! it). Both in transactions of 10,000 rows.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rusqlite::{Connection, params};

/// Rows per transaction.
const TRANSACTION_ROWS: u64 = 10_000;

/// Applies the hub's migrations, in order, to a new database.
fn migrate(conn: &Connection) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
        .collect();
    files.sort();
    for file in files {
        conn.execute_batch(&std::fs::read_to_string(&file)?)?;
    }
    Ok(())
}

/// Rows in one multi-row INSERT of the best ceiling (the writer's largest).
const ROWS_PER_STATEMENT: usize = 256;

/// A fresh database with the hub's schema and pragmas, one device and
/// `metrics` metrics.
fn prepared(dir: &Path, metrics: u64) -> anyhow::Result<Connection> {
    let conn = Connection::open(dir.join("ceiling.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&conn)?;
    conn.execute(
        "INSERT INTO devices (device_id, created_ms) VALUES ('ceiling', 0)",
        [],
    )?;
    for metric in 0..metrics.max(1) {
        conn.execute(
            "INSERT INTO metrics (device, name, unit) VALUES (1, ?1, 'us')",
            params![format!("m{metric}")],
        )?;
    }
    Ok(conn)
}

/// Inserts `rows` readings for `metrics` metrics one statement each;
/// returns rows per second.
pub fn rows_per_second(rows: u64, metrics: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = prepared(dir.path(), metrics)?;
    let started = Instant::now();
    let mut pos = 0u64;
    while pos < rows {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO samples (pos, metric, ts_ms, value) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for _ in 0..TRANSACTION_ROWS.min(rows - pos) {
                pos += 1;
                let metric = (pos % metrics.max(1)) + 1;
                insert.execute(params![
                    pos as i64,
                    metric as i64,
                    1_700_000_000_000i64 + pos as i64,
                    pos as f64
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Inserts `rows` readings for `metrics` metrics as the writer does, 256 to
/// a statement; returns rows per second.
pub fn best_rows_per_second(rows: u64, metrics: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = prepared(dir.path(), metrics)?;
    let values = vec!["(?, ?, ?, ?)"; ROWS_PER_STATEMENT].join(", ");
    let full = format!("INSERT INTO samples (pos, metric, ts_ms, value) VALUES {values}");
    let started = Instant::now();
    let mut pos = 0u64;
    while pos < rows {
        let tx = conn.transaction()?;
        let in_tx = TRANSACTION_ROWS.min(rows - pos);
        let mut done = 0;
        while done < in_tx {
            let take = (in_tx - done).min(ROWS_PER_STATEMENT as u64) as usize;
            let sql = if take == ROWS_PER_STATEMENT {
                full.clone()
            } else {
                format!(
                    "INSERT INTO samples (pos, metric, ts_ms, value) VALUES {}",
                    vec!["(?, ?, ?, ?)"; take].join(", ")
                )
            };
            let mut insert = tx.prepare_cached(&sql)?;
            for i in 0..take {
                pos += 1;
                let metric = (pos % metrics.max(1)) + 1;
                let first = 4 * i + 1;
                insert.raw_bind_parameter(first, pos as i64)?;
                insert.raw_bind_parameter(first + 1, metric as i64)?;
                insert.raw_bind_parameter(first + 2, 1_700_000_000_000i64 + pos as i64)?;
                insert.raw_bind_parameter(first + 3, pos as f64 + 0.25)?;
            }
            insert.raw_execute()?;
            done += take as u64;
        }
        tx.commit()?;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
