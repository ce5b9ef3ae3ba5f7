//! What a person with Debian's `sqlite3` command finds in the database:
//! the same readings from the `readings` view before and after compaction,
//! and a query by time through `readings_by_time` that gives the same rows
//! while SQLite seeks the blocks it needs from the index.

use device_sim::sensors::SensorKind;
use e2e::TestHub;
use e2e::fleets::backfill;

/// Runs one statement with the `sqlite3` command on the file, read-only,
/// and answers what it printed.
async fn sqlite3(db: &std::path::Path, sql: &str) -> String {
    let out = tokio::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(db)
        .arg(sql)
        .output()
        .await
        .expect("Debian's sqlite3 (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One hour of one metric, in the middle of the history, through the view
/// that cannot skip blocks and through the one that can.
fn hour_of_pressure(from: i64) -> (String, String) {
    let to = from + 3_600_000;
    let filter =
        format!("device = 'sim-1' AND metric = 'pressure' AND ts_ms BETWEEN {from} AND {to}");
    (
        format!("SELECT pos, ts_ms, value FROM readings WHERE {filter} ORDER BY pos;"),
        format!(
            "SELECT pos, ts_ms, value FROM readings_by_time WHERE {filter} \
             AND block_max_ms >= {from} AND block_min_ms <= {to} ORDER BY pos;"
        ),
    )
}

#[tokio::test]
async fn sqlite3_sees_the_same_readings_before_and_after_compaction() {
    // Two devices with five sensors, backfilled 10,200 s: a full slab of
    // positions and some.
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    backfill(&hub, SensorKind::ALL.to_vec(), 10_200, 500).await;
    let (_, dir) = hub.terminate().await.unwrap();
    let file = dir.path().join(testkit::hub::DB_FILE);
    let all = "SELECT pos, device, metric, unit, ts_ms, value FROM readings ORDER BY pos;";
    let raw = sqlite3(&file, all).await;
    assert_eq!(raw.lines().count(), 102_000);
    let first: i64 = sqlite3(
        &file,
        "SELECT min(ts_ms) FROM readings WHERE device = 'sim-1' AND metric = 'pressure';",
    )
    .await
    .trim()
    .parse()
    .unwrap();
    let (by_view, by_blocks) = hour_of_pressure(first + 3_600_000);
    let hour = sqlite3(&file, &by_view).await;
    assert_eq!(hour.lines().count(), 3_601, "{hour}");
    assert_eq!(sqlite3(&file, &by_blocks).await, hour);

    // Compacted: the first slab's readings are in blocks now.
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &["--compact-after", "0s"])
        .await
        .unwrap();
    hub.until_compacted(100_000).await.unwrap();
    let (_, dir) = hub.terminate().await.unwrap();
    let file = dir.path().join(testkit::hub::DB_FILE);
    let in_blocks: i64 = sqlite3(&file, "SELECT sum(n) FROM sample_blocks;")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(in_blocks > 90_000, "{in_blocks} readings in blocks");
    let hour_in_rows = format!(
        "SELECT count(*) FROM samples WHERE ts_ms BETWEEN {} AND {};",
        first + 3_600_000,
        first + 7_200_000
    );
    assert_eq!(
        sqlite3(&file, &hour_in_rows).await.trim(),
        "0",
        "the hour is in blocks"
    );
    assert!(sqlite3(&file, all).await == raw, "the view changed");
    assert_eq!(sqlite3(&file, &by_view).await, hour);
    assert_eq!(sqlite3(&file, &by_blocks).await, hour);

    // The plan seeks the metric's blocks by their end, testing their start
    // in the index entry, where `readings` reads all of them.
    let plan = sqlite3(&file, &format!("EXPLAIN QUERY PLAN {by_blocks}")).await;
    assert!(
        plan.contains("USING INDEX sample_blocks_by_metric_time (metric=? AND max_ms>?)"),
        "{plan}"
    );
    let plan = sqlite3(&file, &format!("EXPLAIN QUERY PLAN {by_view}")).await;
    assert!(
        plan.contains("USING INDEX sample_blocks_by_metric_time (metric=?)"),
        "{plan}"
    );
}
