//! A file that gives space back: pages that retention and compaction free
//! go back to the file system in the writer's idle time; a database made
//! before that converts once at the start; a kill in the middle of either
//! loses nothing.

use std::path::Path;
use std::time::Duration;

use device_sim::sensors::SensorKind;
use e2e::TestHub;
use e2e::fleets::backfill;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

/// Every reading the `readings` view shows, as text to compare whole.
type Rows = Vec<(i64, String, String, i64, Option<f64>)>;

/// One connection to the database in `dir`, for a stopped hub's file.
async fn open(dir: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new().filename(dir.join(testkit::hub::DB_FILE));
    SqliteConnection::connect_with(&options).await.unwrap()
}

async fn rows(db: &mut SqliteConnection) -> Rows {
    sqlx::query_as("SELECT pos, device, metric, ts_ms, value FROM readings ORDER BY pos")
        .fetch_all(&mut *db)
        .await
        .unwrap()
}

async fn auto_vacuum(db: &mut SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&mut *db)
        .await
        .unwrap()
}

async fn intact(db: &mut SqliteConnection) {
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    assert_eq!(check, "ok");
}

/// A hub's folder holding two devices' five sensors backfilled `seconds`,
/// and every reading in it.
async fn filled(seconds: u64, extra: &[&str]) -> (tempfile::TempDir, Rows) {
    let mut args = vec!["--provision-key", "k"];
    args.extend_from_slice(extra);
    let hub = TestHub::start(&args).await.unwrap();
    backfill(&hub, SensorKind::ALL.to_vec(), seconds, 500).await;
    let (status, dir) = hub.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    let stored = rows(&mut open(dir.path()).await).await;
    assert_eq!(stored.len() as u64, 2 * 5 * seconds);
    (dir, stored)
}

/// Free pages the hub's writer keeps for new rows.
const KEPT_FREE_PAGES: i64 = 256;

/// Waits until the file holds no more than its pages in use and the
/// reserve of free ones, as the running hub's vacuum and checkpoint leave
/// it, and checks that this is about what it holds: no more than a fresh
/// `VACUUM INTO` copy of it (every page packed) and the reserve, give or
/// take a tenth for pages that deletes left part-filled. Returns its length.
async fn shrunk(hub: &TestHub) -> u64 {
    let db = hub.db().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (file, size) = loop {
        let (pages, free, size): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT page_count FROM pragma_page_count),
                    (SELECT freelist_count FROM pragma_freelist_count),
                    (SELECT page_size FROM pragma_page_size)",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        let file = std::fs::metadata(hub.db_path()).unwrap().len();
        if free <= KEPT_FREE_PAGES && file == (pages * size) as u64 {
            break (file, size);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file did not shrink: {file} bytes, {pages} pages of {size}, {free} free"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let copy = tempfile::tempdir().unwrap();
    let packed = copy.path().join("packed.db");
    sqlx::query("VACUUM INTO ?")
        .bind(packed.to_str().unwrap())
        .execute(&db)
        .await
        .unwrap();
    let packed = std::fs::metadata(&packed).unwrap().len();
    let reserve = (KEPT_FREE_PAGES * size) as u64;
    assert!(
        file <= packed + packed / 10 + reserve,
        "the file keeps {file} bytes for {packed} that a VACUUM packs"
    );
    file
}

#[tokio::test]
async fn an_old_database_converts_at_the_start_even_after_a_kill_midway() {
    let (dir, stored) = filled(2_000, &[]).await;
    // What the hub made before it gave pages back: auto_vacuum NONE.
    {
        let mut db = open(dir.path()).await;
        assert_eq!(auto_vacuum(&mut db).await, 2, "a new file is incremental");
        sqlx::raw_sql("PRAGMA auto_vacuum = NONE; VACUUM;")
            .execute(&mut db)
            .await
            .unwrap();
        assert_eq!(auto_vacuum(&mut db).await, 0);
    }

    // Killed in the middle of the conversion's VACUUM (an abort, like a
    // kill -9), the file is as it was.
    let mut converting = tokio::process::Command::new(e2e::hub_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join(testkit::hub::DB_FILE))
        .env("HUB_TEST_FAULT", "abort-while-converting")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), converting.wait())
        .await
        .expect("the fault ends the hub while it converts")
        .unwrap();
    assert!(!status.success(), "the fault ended the hub: {status}");
    {
        let mut db = open(dir.path()).await;
        intact(&mut db).await;
        assert_eq!(auto_vacuum(&mut db).await, 0);
        assert_eq!(rows(&mut db).await, stored);
    }

    // The next start converts it, and every reading is where it was.
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    let (status, dir) = hub.terminate().await.unwrap();
    assert!(status.success(), "{status}");
    let mut db = open(dir.path()).await;
    intact(&mut db).await;
    assert_eq!(auto_vacuum(&mut db).await, 2);
    assert_eq!(rows(&mut db).await, stored);
}

#[tokio::test]
async fn a_kill_in_a_vacuum_step_loses_nothing_and_the_file_still_shrinks() {
    // A full slab and some, not yet compacted.
    let (dir, stored) = filled(10_200, &[]).await;
    let before = std::fs::metadata(dir.path().join(testkit::hub::DB_FILE))
        .unwrap()
        .len();

    // Compaction moves the slab's rows into blocks a few metrics at a
    // time, freeing their pages; the first vacuum step after one of its
    // steps kills the hub with its pages moved and not committed.
    let hub = TestHub::start_with_env(
        dir,
        "127.0.0.1:0",
        &["--compact-after", "0s"],
        &[("HUB_TEST_FAULT", "abort-in-vacuum-step")],
    )
    .await
    .unwrap();
    let (status, dir) = hub.exited(Duration::from_secs(60)).await.unwrap();
    assert!(!status.success(), "the fault ended the hub: {status}");
    {
        let mut db = open(dir.path()).await;
        intact(&mut db).await;
        assert_eq!(rows(&mut db).await, stored);
        // A step of compaction committed; the vacuum step after it gave
        // nothing back.
        let (blocks, free): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sample_blocks),
                    (SELECT freelist_count FROM pragma_freelist_count)",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(blocks > 0, "nothing compacted");
        assert!(free > KEPT_FREE_PAGES, "{free} free pages");
    }

    // Started again, the hub compacts the rest and gives the pages back.
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &["--compact-after", "0s"])
        .await
        .unwrap();
    hub.until_compacted(100_000).await.unwrap();
    let after = shrunk(&hub).await;
    assert!(
        after < before,
        "compacted, the file went from {before} to {after} bytes"
    );
    let (_, dir) = hub.terminate().await.unwrap();
    let mut db = open(dir.path()).await;
    intact(&mut db).await;
    assert_eq!(rows(&mut db).await, stored);
}

#[tokio::test]
async fn the_file_shrinks_after_retention() {
    let hub = TestHub::start(&[
        "--provision-key",
        "k",
        "--retention",
        "1h",
        "--retention-sweep",
        "1s",
    ])
    .await
    .unwrap();
    // Three hours backfilled: two of them are past the retention.
    backfill(&hub, SensorKind::ALL.to_vec(), 10_800, 500).await;
    let db = hub.db().await.unwrap();
    let peak: i64 = sqlx::query_scalar(
        "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let horizon = i64::try_from(now.as_millis()).unwrap() - 3_600_000 - 60_000;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sqlx::query_scalar::<_, Option<i64>>("SELECT min(ts_ms) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap()
        .is_some_and(|oldest| oldest < horizon)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Two thirds of the readings are gone, and their pages.
    let after = shrunk(&hub).await;
    assert!(
        (after as i64) < peak,
        "after retention, the file went from {peak} to {after} bytes"
    );
}
