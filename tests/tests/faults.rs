//! Faults, against the real hub process: a writer or publisher thread that
//! stops (made to, with the debug build's `HUB_TEST_FAULT`) and a disk that
//! fills up. `/healthz` says what is wrong, devices are told to reconnect,
//! nothing is acknowledged that was not stored, nothing is stored twice, and
//! SIGTERM still ends the hub.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, Credential, FleetConfig};
use device_sim::sensors::SensorKind;
use e2e::fleets;
use e2e::{TestHub, batch};
use telemetry_device::backoff::Backoff;
use telemetry_device::endpoint;
use tokio_tungstenite::tungstenite;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Starts a hub whose `thread` panics at its second commit: the first is
/// the device's registration, the second its first batch.
async fn hub_failing(thread: &str) -> (TestHub, String) {
    let fault = format!("{thread}-panic-at-commit=2");
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with_env(dir, "127.0.0.1:0", &[], &[("HUB_TEST_FAULT", &fault)])
        .await
        .unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    (hub, token)
}

/// What a dead writer or publisher must look like from outside.
async fn the_hub_reports_it_and_stops(hub: TestHub, token: &str) -> tempfile::TempDir {
    let (status, body) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "writer_stopped");
    assert!(
        body["message"].as_str().unwrap().contains("panicked"),
        "{body}"
    );
    // New device connections are refused before the upgrade.
    match hub.connect(token).await.unwrap_err() {
        tungstenite::Error::Http(response) => assert_eq!(response.status(), 503),
        other => panic!("expected HTTP 503, got {other}"),
    }
    // What is stored can still be read.
    let (status, _) = hub.get("/v1/devices").await.unwrap();
    assert_eq!(status, 200);
    // SIGTERM ends it (within the kit's patience), and the exit status
    // says something went wrong.
    let (exit, dir) = hub.terminate().await.unwrap();
    assert!(!exit.success(), "{exit:?}");
    dir
}

#[tokio::test]
async fn a_writer_that_dies_closes_devices_with_1011_and_acknowledges_nothing() {
    let (hub, token) = hub_failing("writer").await;
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send(&batch(1, now_ms(), 3)).await.unwrap();
    let (closed, acks) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(11), "STORAGE_UNAVAILABLE");
    assert_eq!(closed.close_code, Some(1011));
    assert!(acks.is_empty(), "nothing was stored, nothing acknowledged");
    the_hub_reports_it_and_stops(hub, &token).await;
}

#[tokio::test]
async fn a_publisher_that_dies_is_noticed_and_what_was_committed_survives() {
    let (hub, token) = hub_failing("publisher").await;
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send(&batch(1, now_ms(), 3)).await.unwrap();
    // Committed, but the thread that acknowledges died: the device is told
    // to reconnect instead of waiting for an Ack forever.
    let (closed, acks) = device.until_closed().await.unwrap();
    assert_eq!(closed.close_code, Some(1011));
    assert!(acks.is_empty());
    let dir = the_hub_reports_it_and_stops(hub, &token).await;

    // Restarted without the fault: the batch was stored, and the device
    // learns it from Welcome instead of an Ack.
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    assert_eq!(device.hello("dev-1").await.unwrap().last_seq, 1);
    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
}

/// A small tmpfs mounted on a folder of its own, unmounted (and the folder
/// removed) on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts `size` of tmpfs on `dir`; `None` where this process may not
    /// mount (not root, or a sandbox that forbids it).
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| SmallDisk(dir.to_owned()))
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 16 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: a process still holding a file there (a test that failed
        // before stopping its hub) must not leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg(&self.0)
            .status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn a_full_disk_is_reported_and_once_space_returns_everything_is_stored_once() {
    // Three simulated devices stream into a hub whose disk fills up:
    // `/healthz` says so while it lasts, and once space returns every
    // reading is acknowledged and stored exactly once.
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path(), "16m") else {
        eprintln!("skipped: this process may not mount a tmpfs (it needs root)");
        return;
    };
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &["--provision-key", "k"])
        .await
        .unwrap();
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        ..hub.quick_device(200.0, 1_000)
    };
    let config = fleets::fleet_of(3, device);

    // Let the devices register and store a little, then fill the disk.
    let run = tokio::spawn(fleet::run(config));
    let db = hub.db().await.unwrap();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap()
        < 100
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.close().await;
    let filler = disk.fill();

    // The hub keeps running and says why it cannot store.
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    let reason = loop {
        let (status, body) = hub.get("/healthz").await.unwrap();
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never reported the full disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("storage_failing"), "{reason}");
    assert!(reason.contains("full"), "{reason}");

    // Space returns: the devices resend, and every reading is stored once.
    std::fs::remove_file(filler).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fleet finished")
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(summary.acked, 3_000, "{summary:?}");
    // Each batch has its seq: one stored twice would make more rows than
    // the 3,000 readings the devices made, one lost fewer.
    let db = hub.db().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 3_000);
    db.close().await;
    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    // The hub (and its folder's files) go before the disk is unmounted.
    let (_, dir) = hub.terminate().await.unwrap();
    drop(dir);
    drop(disk);
}

#[tokio::test]
async fn a_database_file_removed_under_the_hub_stops_acknowledgements() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, now_ms(), 3)).await.unwrap();

    // SQLite would go on writing to the unlinked file, and every reading
    // acknowledged from now on would be gone with the process.
    std::fs::remove_file(hub.db_path()).unwrap();
    device.send(&batch(2, now_ms(), 3)).await.unwrap();
    let (closed, acks) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(11));
    assert_eq!(closed.close_code, Some(1011));
    assert!(acks.is_empty(), "nothing acknowledged after the removal");

    let (status, body) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("is gone"), "{body}");
    let (exit, _) = hub.terminate().await.unwrap();
    assert!(!exit.success());
}

/// Sets or clears the immutable flag on `files` (which even root cannot
/// write through); false where the filesystem or the process cannot.
fn immutable(files: &[PathBuf], on: bool) -> bool {
    std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .args(files)
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test]
async fn a_database_made_read_only_is_reported_acknowledges_nothing_unstored_and_blocks_a_restart()
{
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let listen = hub.addr.clone();
    let db_path = hub.db_path();
    let files: Vec<PathBuf> = ["", "-wal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db_path.display())))
        .collect();
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        rate: Some(200.0),
        batch: 10,
        flush: Duration::from_millis(50),
        count: Some(1_000),
        buffer: 10_000,
        disk: None,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(300),
        },
        ..DeviceSettings::new(endpoint(&format!("ws://{listen}")).unwrap())
    };
    let run = tokio::spawn(fleet::run(FleetConfig::new(
        2,
        Credential::ProvisionKey("k".into()),
        device,
    )));
    let db = hub.db().await.unwrap();
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap()
        < 100
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.close().await;

    // Made read-only under the running hub. Whether a file already open
    // for writing still takes writes is the filesystem's call (ext4 refuses
    // them, tmpfs does not); either way nothing unstored is acknowledged,
    // and when writes fail `/healthz` says so.
    if !immutable(&files, true) {
        eprintln!("skipped: chattr +i is not allowed here (it needs root and ext4, xfs or tmpfs)");
        run.abort();
        return;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = hub.get("/healthz").await.unwrap();
    assert!(
        status == 200 || body.contains("storage_failing"),
        "{status} {body}"
    );
    let (status, dir) = tokio::time::timeout(e2e::PATIENCE, hub.terminate())
        .await
        .expect("SIGTERM ends the hub")
        .unwrap();
    assert!(status.code().is_some(), "{status:?}");

    // A restart on the read-only file refuses to start, saying why, rather
    // than accepting devices whose every batch would fail.
    let serve = tokio::time::timeout(
        e2e::PATIENCE,
        e2e::cli_on(&db_path, &["serve", "--listen", "127.0.0.1:0"]),
    )
    .await
    .expect("the hub exited by itself")
    .unwrap();
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "{stderr}");
    assert!(stderr.contains("can only be read"), "{stderr}");
    assert!(stderr.contains(&db_path.display().to_string()), "{stderr}");

    // Writable again, on the same address: the devices resend what was not
    // acknowledged, and every reading is stored once.
    assert!(immutable(&files, false));
    let hub = TestHub::start_in(dir, &listen, &["--provision-key", "k"])
        .await
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fleet finished")
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(summary.acked, 2_000, "{summary:?}");
    let db = hub.db().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 2_000);
    db.close().await;
}
