//! `hub backup` while a fleet streams, from the file and from a running
//! hub's admin API: each copy passes `PRAGMA integrity_check`, holds every
//! reading committed before it and whole batches only, and opens with
//! `hub serve` as a hub its devices resume on.

use std::path::Path;
use std::time::Duration;

use device_sim::fleet;
use device_sim::sensors::SensorKind;
use e2e::TestHub;
use e2e::fleets::{PROVISION_KEY, fleet_of};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

const DEVICES: usize = 4;
const BATCH: usize = 10;
const READINGS: u64 = 2_000;

async fn open(path: &Path) -> SqlitePool {
    SqlitePool::connect_with(SqliteConnectOptions::new().filename(path).read_only(true))
        .await
        .unwrap()
}

/// Readings stored now.
async fn stored(db: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Checks a copy: whole, every batch whole (each device's readings are its
/// committed batches' worth), and every reading as the live file holds it.
/// Answers its readings.
async fn check_copy(copy: &Path, live: &Path) -> i64 {
    let db = open(copy).await;
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(verdict, "ok");
    let per_device: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT d.device_id, d.last_seq, (SELECT count(*) FROM readings r WHERE r.device = d.device_id)
         FROM devices d ORDER BY d.device_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(per_device.len(), DEVICES);
    for (device, last_seq, readings) in &per_device {
        assert_eq!(
            *readings,
            last_seq * BATCH as i64,
            "{device}: whole batches only"
        );
    }
    let readings = stored(&db).await;
    db.close().await;
    // The same readings as the live file, at the same positions.
    let live = open(live).await;
    // ATTACH holds for one connection only.
    let mut conn = live.acquire().await.unwrap();
    sqlx::query("ATTACH ? AS copy")
        .bind(copy.to_str().unwrap())
        .execute(&mut *conn)
        .await
        .unwrap();
    let same: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM copy.readings c JOIN main.readings m USING (pos)
         WHERE c.ts_ms = m.ts_ms AND c.value IS m.value AND c.metric = m.metric",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert_eq!(same, readings);
    drop(conn);
    live.close().await;
    readings
}

#[tokio::test]
async fn a_backup_taken_while_a_fleet_streams_is_whole_and_serves_as_a_hub() {
    let hub = TestHub::start(&["--provision-key", PROVISION_KEY])
        .await
        .unwrap();
    let admin = hub
        .add_key(&["--role", "admin", "--name", "admin"])
        .await
        .unwrap();
    let viewer = hub
        .add_key(&["--role", "viewer", "--name", "viewer"])
        .await
        .unwrap();
    // The hub reads its keys together: the last one made stands for both.
    hub.until_key_works(&viewer).await.unwrap();
    let settings = device_sim::device::DeviceSettings {
        kinds: vec![SensorKind::Temperature, SensorKind::Humidity],
        batch: BATCH,
        // Full batches only, however the run is timed.
        flush: Duration::from_secs(60),
        ..hub.quick_device(200.0, READINGS)
    };
    let run = tokio::spawn(fleet::run(fleet_of(DEVICES, settings)));
    let live = hub.db().await.unwrap();
    while stored(&live).await < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // From the file, beside the running hub.
    let dir = tempfile::tempdir().unwrap();
    let from_file = dir.path().join("from-file.db");
    let out = hub
        .cli(&["backup", "--to", from_file.to_str().unwrap()])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.starts_with("backed up "), "{said}");
    // From the running hub, with an admin key.
    let from_hub = dir.path().join("from-hub.db");
    let url = format!("http://{}", hub.addr);
    let out = hub
        .cli(&[
            "backup",
            "--to",
            from_hub.to_str().unwrap(),
            "--hub",
            &url,
            "--key",
            &admin,
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let summary = run.await.unwrap();
    assert!(summary.complete(), "{summary:?}");
    let all = (DEVICES as u64 * READINGS) as i64;
    for copy in [&from_file, &from_hub] {
        let held = check_copy(copy, &hub.db_path()).await;
        assert!(
            held >= 500 && held < all,
            "{held} of {all}: taken mid-stream"
        );
    }

    // Refusals: a key that is not an admin's, a file that exists, no --db.
    let (status, body) = testkit::http::request(
        &hub.addr,
        "POST",
        "/v1/admin/backup",
        &[("Authorization", &format!("Bearer {viewer}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "forbidden"
    );
    let out = hub
        .cli(&["backup", "--to", from_file.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--to"),
        "{out:?}"
    );
    let out = e2e::cli_on(&dir.path().join("none.db"), &["backup", "--to", "x.db"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--db"),
        "{out:?}"
    );
    let elsewhere = dir.path().join("elsewhere.db");
    let out = hub
        .cli(&[
            "backup",
            "--to",
            elsewhere.to_str().unwrap(),
            "--hub",
            "ftp://hub",
        ])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--hub"),
        "{out:?}"
    );
    // A refused key leaves no file behind.
    let out = hub
        .cli(&[
            "backup",
            "--to",
            elsewhere.to_str().unwrap(),
            "--hub",
            &url,
            "--key",
            &viewer,
        ])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{out:?}"
    );
    assert!(!elsewhere.exists() && !dir.path().join("elsewhere.db.partial").exists());

    // Restored: the copy taken over the API is a hub; each device resumes
    // from the last batch the copy holds.
    let copy_last_seq: Vec<(String, i64)> = {
        let db = open(&from_hub).await;
        let rows = sqlx::query_as("SELECT device_id, last_seq FROM devices ORDER BY device_id")
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        rows
    };
    let restored_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&from_hub, restored_dir.path().join(testkit::hub::DB_FILE)).unwrap();
    let keyring = hub.keyring();
    let restored = TestHub::start_in(restored_dir, "127.0.0.1:0", &[])
        .await
        .unwrap();
    let (status, body) = restored.get("/v1/devices").await.unwrap();
    assert_eq!(status, 401, "its keys came with it: {body}");
    for (device, last_seq) in copy_last_seq {
        let token = keyring.token(&device).unwrap();
        let mut raw = restored.connect(&token).await.unwrap();
        let welcome = raw.hello(&device).await.unwrap();
        assert_eq!(welcome.last_seq, last_seq as u64, "{device}");
    }
}
