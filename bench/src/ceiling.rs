//! SQLite's ceiling for the hub's schema: one process, no network, no
//! protocol, inserting the same rows with one prepared statement in large
//! transactions, with the hub's pragmas (WAL, synchronous=FULL).

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

/// Inserts `rows` readings for `metrics` metrics; returns rows per second.
pub fn rows_per_second(rows: u64, metrics: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut conn = Connection::open(dir.path().join("ceiling.db"))?;
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
