//! Scenario 6: what history costs on disk. A fleet with every sensor kind
//! is backfilled into a hub; then SQLite's own page accounting (`dbstat`)
//! says how many bytes each table and index takes, per raw reading and per
//! roll-up bucket, raw and compacted, and how soon the hub gives the pages
//! compaction freed back. A second, slower fleet backfills a week into a
//! hub that keeps a day of raw readings, to show the file that retention
//! leaves. A third, one device over a week, times a query for one hour of
//! history in `sqlite3`'s way, on raw rows and on blocks.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, Credential, FleetConfig};
use device_sim::sensors::SensorKind;
use serde_json::{Value, json};
use telemetry_device::backoff::Backoff;

use testkit::hub::HubProcess;

use crate::Size;
use crate::hubproc;

/// Bytes of every table and index, rows of each table.
#[derive(Debug, Default)]
struct Footprint {
    samples: u64,
    samples_index: u64,
    minutes: u64,
    hours: u64,
    readings: u64,
    /// `sample_blocks` and its two indexes.
    blocks: u64,
    /// Readings in those blocks.
    compacted: u64,
    minute_buckets: u64,
    hour_buckets: u64,
    file: u64,
    free: u64,
}

impl Footprint {
    /// Bytes of the pages that hold something.
    fn in_use(&self) -> u64 {
        self.file - self.free
    }
}

/// Backfills `devices` devices (five metrics, one sample every `every`)
/// over `span` into a hub started with `extra`; returns the hub, still
/// running.
pub(crate) async fn backfill(
    devices: usize,
    every: Duration,
    span: Duration,
    extra: &[&str],
) -> anyhow::Result<HubProcess> {
    let hub = hubproc::start(extra).await?;
    let kinds = SensorKind::ALL.to_vec();
    let samples = span.as_millis() as u64 / every.as_millis() as u64;
    let device = DeviceSettings {
        rate: Some(kinds.len() as f64 / every.as_secs_f64()),
        count: Some(samples * kinds.len() as u64),
        kinds,
        batch: 500,
        flush: Duration::from_millis(50),
        backfill: span,
        buffer: 100_000,
        disk: None,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(1),
        },
        ..DeviceSettings::new(hubproc::ws_url(&hub))
    };
    let config = FleetConfig::new(devices, Credential::ProvisionKey("bench".into()), device);
    let summary = fleet::run(config).await;
    anyhow::ensure!(
        summary.complete(),
        "the backfill did not complete: {summary:?}"
    );
    Ok(hub)
}

/// Waits until the hub's oldest raw reading is younger than `keep` (and a
/// minute), as retention makes it.
async fn retained(hub: &HubProcess, keep: Duration) -> anyhow::Result<()> {
    let path = hub.db_path();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let path = path.clone();
        let oldest: Option<i64> = tokio::task::spawn_blocking(move || {
            rusqlite::Connection::open(path)?.query_row(
                "SELECT min(ts_ms) FROM samples",
                [],
                |row| row.get(0),
            )
        })
        .await??;
        let horizon = crate::stats::now_us() as i64 / 1_000 - keep.as_millis() as i64 - 60_000;
        if oldest.is_none_or(|oldest| oldest >= horizon) {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "retention did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How fast a live subscriber resuming from position 0 receives the first
/// `count` readings, in readings per second: catch-up from SQLite.
async fn catch_up_rate(hub: &HubProcess, count: u64) -> anyhow::Result<f64> {
    let (ready, _opened) = tokio::sync::mpsc::channel(1);
    let began = crate::stats::now_us();
    let received = crate::subscribers::sse(
        hub.addr.clone(),
        "last_event_id=0".into(),
        count,
        u64::MAX,
        ready,
    )
    .await?;
    Ok(received.count as f64 / ((received.done_at_us - began) / 1e6))
}

/// Waits until the hub has compacted every full slab it holds.
async fn compacted(hub: &HubProcess) -> anyhow::Result<()> {
    let path = hub.db_path();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let path = path.clone();
        let (head, through): (i64, i64) = tokio::task::spawn_blocking(move || {
            rusqlite::Connection::open(path)?.query_row(
                "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'samples'),
                        (SELECT value FROM hub_state WHERE key = 'compacted_through')",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
        .await??;
        if through >= head / 100_000 * 100_000 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "compaction did not catch up: {through} of {head}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Free pages the hub's writer keeps for new rows rather than give back.
const KEPT_FREE_PAGES: i64 = 256;

/// Waits until the running hub has given its free pages back (at most
/// the reserve left) and a checkpoint has shrunk the file to its pages;
/// answers how long that took.
async fn given_back(hub: &HubProcess) -> anyhow::Result<Duration> {
    let path = hub.db_path();
    let began = tokio::time::Instant::now();
    loop {
        let path = path.clone();
        let (pages, free, size, file) = tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&path)?;
            let (pages, free, size): (i64, i64, i64) = conn.query_row(
                "SELECT (SELECT page_count FROM pragma_page_count),
                        (SELECT freelist_count FROM pragma_freelist_count),
                        (SELECT page_size FROM pragma_page_size)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?;
            anyhow::Ok((pages, free, size, std::fs::metadata(&path)?.len()))
        })
        .await??;
        if free <= KEPT_FREE_PAGES && file == (pages * size) as u64 {
            return Ok(began.elapsed());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "the hub did not give its free pages back: {free} of {pages} free, file {file} bytes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `sql` on the file five times; answers the rows it returned and
/// the median time in milliseconds.
fn timed_query(path: &Path, sql: &str) -> anyhow::Result<(u64, f64)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = conn.prepare(sql)?;
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..5 {
        let began = std::time::Instant::now();
        let mut answer = statement.query([])?;
        rows = 0;
        while answer.next()?.is_some() {
            rows += 1;
        }
        times.push(began.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((rows, times[2]))
}

/// Reads the footprint of the database in `dir`.
fn footprint(dir: &Path) -> anyhow::Result<Footprint> {
    let path = dir.join(testkit::hub::DB_FILE);
    let conn = rusqlite::Connection::open(&path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let bytes = |name: &str| -> anyhow::Result<u64> {
        conn.query_row(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ?1",
            [name],
            |row| row.get::<_, i64>(0),
        )
        .map(|b| b as u64)
        .with_context(|| format!("dbstat of {name}"))
    };
    let rows = |table: &str| -> anyhow::Result<u64> {
        Ok(
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get::<_, i64>(0)
            })? as u64,
        )
    };
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
    Ok(Footprint {
        samples: bytes("samples")?,
        samples_index: bytes("samples_by_metric_time")?,
        minutes: bytes("rollups_1m")?,
        hours: bytes("rollups_1h")?,
        readings: rows("samples")?,
        blocks: bytes("sample_blocks")?
            + bytes("sample_blocks_by_metric_time")?
            + bytes("sample_blocks_by_pos")?,
        compacted: conn.query_row("SELECT coalesce(sum(n), 0) FROM sample_blocks", [], |row| {
            row.get::<_, i64>(0)
        })? as u64,
        minute_buckets: rows("rollups_1m")?,
        hour_buckets: rows("rollups_1h")?,
        file: std::fs::metadata(&path)?.len(),
        free: (free * page_size) as u64,
    })
}

fn per(bytes: u64, rows: u64) -> f64 {
    bytes as f64 / rows.max(1) as f64
}

fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

pub async fn storage(size: Size) -> anyhow::Result<Value> {
    let (devices, span, week_devices) = match size {
        Size::Quick => (10, Duration::from_secs(120), 2),
        Size::Full => (1_000, Duration::from_secs(600), 20),
    };
    println!("\n### storage\n");
    let hub = backfill(devices, Duration::from_secs(1), span, &[]).await?;
    let catch_up = (devices as u64 * 5 * span.as_secs()).min(1_000_000);
    let from_rows = catch_up_rate(&hub, catch_up).await?;
    let (_, dir) = hub.terminate().await?;
    let path = dir.path().to_owned();
    let f = tokio::task::spawn_blocking(move || footprint(&path)).await??;
    let raw = per(f.samples + f.samples_index, f.readings);
    let minute = per(f.minutes, f.minute_buckets);
    let hour = per(f.hours, f.hour_buckets);
    println!(
        "{devices} devices × 5 metrics, one sample a second, {} s backfilled: {} readings, {} minute and {} hour buckets; bytes from SQLite's dbstat after a checkpoint.\n",
        span.as_secs(),
        f.readings,
        f.minute_buckets,
        f.hour_buckets
    );
    println!("| what | rows | bytes | bytes per row |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `samples` (table) | {} | {} | {:.1} |",
        f.readings,
        f.samples,
        per(f.samples, f.readings)
    );
    println!(
        "| `samples_by_metric_time` (index) | {} | {} | {:.1} |",
        f.readings,
        f.samples_index,
        per(f.samples_index, f.readings)
    );
    println!("| a raw reading, both | | | **{raw:.1}** |");
    println!(
        "| `rollups_1m` | {} | {} | {minute:.1} |",
        f.minute_buckets, f.minutes
    );
    println!(
        "| `rollups_1h` | {} | {} | {hour:.1} |",
        f.hour_buckets, f.hours
    );
    println!(
        "| the file | | {} | {:.1} per reading |",
        f.file,
        per(f.file, f.readings)
    );

    // The same file, compacted: the hub started again on it with
    // --compact-after 0s, and stopped once every full slab is moved.
    let hub = hubproc::start_in(dir, &["--compact-after", "0s"]).await?;
    let began = std::time::Instant::now();
    compacted(&hub).await?;
    let compaction_s = began.elapsed().as_secs_f64();
    let vacuum_s = given_back(&hub).await?.as_secs_f64();
    let from_blocks = catch_up_rate(&hub, catch_up).await?;
    let (_, dir) = hub.terminate().await?;
    let c = tokio::task::spawn_blocking(move || footprint(dir.path())).await??;
    let packed = per(c.blocks, c.compacted);
    println!(
        "\nThe same file after compaction (`--compact-after 0s`): {} readings in blocks, {} left in `samples`.\n",
        c.compacted, c.readings
    );
    println!("| what | readings | bytes | bytes per reading |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `sample_blocks` and its two indexes | {} | {} | **{packed:.1}** |",
        c.compacted, c.blocks
    );
    println!(
        "| the file | {} | {} | {:.1} |",
        c.compacted + c.readings,
        c.file,
        per(c.file, c.compacted + c.readings)
    );
    println!(
        "| of it pages in use | | {} | {:.1} |",
        c.in_use(),
        per(c.in_use(), c.compacted + c.readings)
    );
    println!(
        "| of it free pages (the writer's reserve for new rows) | | {} | |",
        c.free
    );
    println!(
        "\nCompacting took {compaction_s:.1} s ({:.0} readings/s, the first pass starting at once); the free pages it left were back with the file system {vacuum_s:.1} s after that. A live subscriber resuming from position 0 received its first {catch_up} readings at {from_rows:.0}/s from rows and {from_blocks:.0}/s from blocks.",
        c.compacted as f64 / compaction_s
    );
    // A day of a 1,000-device fleet with 5 metrics at one reading a second,
    // its last hour (the default --compact-after) not yet compacted.
    let day_readings = 1_000.0 * 5.0 * 86_400.0;
    let day_minutes = 1_000.0 * 5.0 * 1_440.0;
    let day_hours = 1_000.0 * 5.0 * 24.0;
    let day_stored = day_readings * (raw + 23.0 * packed) / 24.0;
    println!(
        "\nOne day of 1,000 devices × 5 metrics at one reading a second ({:.0} M readings): {} uncompacted, {} with its last hour uncompacted and the rest in blocks ({:.1} B a reading); minute buckets {}, hour buckets {}.\n",
        day_readings / 1e6,
        mb(day_readings * raw),
        mb(day_stored),
        day_stored / day_readings,
        mb(day_minutes * minute),
        mb(day_hours * hour)
    );

    // A week at one sample a minute, a day of raw readings kept.
    let week = Duration::from_secs(7 * 86_400);
    let hub = backfill(
        week_devices,
        Duration::from_secs(60),
        week,
        &["--retention", "1d", "--retention-sweep", "1s"],
    )
    .await?;
    retained(&hub, Duration::from_secs(86_400)).await?;
    given_back(&hub).await?;
    let (_, dir) = hub.terminate().await?;
    let w = tokio::task::spawn_blocking(move || footprint(dir.path())).await??;
    println!(
        "A week backfilled by {week_devices} devices × 5 metrics at one sample a minute into a hub with `--retention 1d`: {} raw readings left (a day), {} minute and {} hour buckets (the week); once retention had run and the hub had given its free pages back, the file is {} bytes, {} of them in use and {} free (the writer's reserve).\n",
        w.readings,
        w.minute_buckets,
        w.hour_buckets,
        w.file,
        w.in_use(),
        w.free
    );
    let by_time = queries_by_time(size).await?;
    Ok(json!({
        "scenario": "storage",
        "devices": devices, "seconds": span.as_secs(), "readings": f.readings,
        "bytes_per_reading": raw, "bytes_per_compacted_reading": packed,
        "compacted_readings": c.compacted, "compacted_file_bytes": c.file, "compacted_free_bytes": c.free,
        "day_stored_bytes": day_stored, "compaction_s": compaction_s,
        "catch_up_from_rows_per_s": from_rows, "catch_up_from_blocks_per_s": from_blocks,
        "samples_bytes": f.samples, "index_bytes": f.samples_index,
        "bytes_per_minute_bucket": minute, "bytes_per_hour_bucket": hour,
        "file_bytes": f.file,
        "day_raw_bytes": day_readings * raw, "day_minute_bytes": day_minutes * minute, "day_hour_bytes": day_hours * hour,
        "vacuum_s": vacuum_s,
        "week": {"devices": week_devices, "readings_left": w.readings, "minute_buckets": w.minute_buckets,
                 "hour_buckets": w.hour_buckets, "file_bytes": w.file, "free_bytes": w.free},
        "by_time": by_time,
    }))
}

/// One device's five metrics at one sample a second, backfilled a week
/// (a quick run: six hours), then one hour of one metric in the middle
/// asked for in `sqlite3`'s way: from raw rows, then compacted through
/// `readings` (which decodes every block of the metric) and through
/// `readings_by_time` with the block bounds named.
async fn queries_by_time(size: Size) -> anyhow::Result<Value> {
    let span = match size {
        Size::Quick => Duration::from_secs(6 * 3_600),
        Size::Full => Duration::from_secs(7 * 86_400),
    };
    let hub = backfill(1, Duration::from_secs(1), span, &[]).await?;
    let (_, dir) = hub.terminate().await?;
    let path = dir.path().join(testkit::hub::DB_FILE);
    let (device, metric, first): (String, String, i64) = rusqlite::Connection::open(&path)?
        .query_row(
            "SELECT d.device_id, m.name, (SELECT min(ts_ms) FROM samples WHERE metric = m.id)
             FROM metrics m JOIN devices d ON d.id = m.device ORDER BY m.id LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
    let from = first + span.as_millis() as i64 / 2;
    let to = from + 3_600_000;
    let filter =
        format!("device = '{device}' AND metric = '{metric}' AND ts_ms BETWEEN {from} AND {to}");
    let plain = format!("SELECT ts_ms, value FROM readings WHERE {filter}");
    let bounded = format!(
        "SELECT ts_ms, value FROM readings_by_time WHERE {filter} \
         AND block_max_ms >= {from} AND block_min_ms <= {to}"
    );
    let (raw_rows, raw_ms) = timed_query(&path, &plain)?;

    let hub = hubproc::start_in(dir, &["--compact-after", "0s"]).await?;
    compacted(&hub).await?;
    let (_, dir) = hub.terminate().await?;
    let path = dir.path().join(testkit::hub::DB_FILE);
    let (blocks, in_blocks): (i64, i64) = rusqlite::Connection::open(&path)?.query_row(
        "SELECT count(*), sum(n) FROM sample_blocks",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let (all_rows, all_ms) = timed_query(&path, &plain)?;
    let (bounded_rows, bounded_ms) = timed_query(&path, &bounded)?;
    anyhow::ensure!(
        raw_rows == all_rows && all_rows == bounded_rows,
        "the hour's rows differ: {raw_rows} raw, {all_rows} and {bounded_rows} compacted"
    );
    println!(
        "One device × 5 metrics at one sample a second, {} h backfilled ({} readings in {blocks} blocks once compacted); one hour of `{metric}` in the middle ({raw_rows} readings), median of five runs in one connection:\n",
        span.as_secs() / 3_600,
        in_blocks
    );
    println!("| query | ms |");
    println!("|---|---:|");
    println!("| `readings`, raw rows (the `(metric, ts_ms)` index) | {raw_ms:.2} |");
    println!("| `readings`, compacted (every block of the metric) | {all_ms:.2} |");
    println!("| `readings_by_time` with the block bounds, compacted | **{bounded_ms:.2}** |\n");
    Ok(json!({
        "hours": span.as_secs() / 3_600, "blocks": blocks, "rows": raw_rows,
        "raw_ms": raw_ms, "compacted_readings_ms": all_ms, "compacted_by_time_ms": bounded_ms,
    }))
}
