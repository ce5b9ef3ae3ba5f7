//! device-sim against the real hub: fleets deliver exactly once, survive a
//! hub restart, obey set_interval, and reach a hub behind TLS (wss://).

use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, Credential, FleetConfig, Ids, Summary};
use device_sim::sensors::SensorKind;
use e2e::TestHub;
use e2e::tls::{TlsFront, fixture};
use telemetry_device::backoff::Backoff;
use telemetry_device::endpoint;
use telemetry_device::tls;

fn fleet(
    hub_addr: &str,
    devices: usize,
    credential: Credential,
    device: DeviceSettings,
) -> FleetConfig {
    let url = endpoint(&format!("ws://{hub_addr}")).unwrap();
    FleetConfig {
        seed: 7,
        ..FleetConfig::new(devices, credential, DeviceSettings { url, ..device })
    }
}

fn settings(rate: Option<f64>, batch: usize, count: Option<u64>) -> DeviceSettings {
    DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        rate,
        batch,
        flush: Duration::from_millis(100),
        count,
        buffer: 10_000,
        disk: None,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
        },
        ..DeviceSettings::new(String::new())
    }
}

async fn stored(hub: &TestHub) -> (i64, i64) {
    let db = hub.db().await.unwrap();
    let counts = sqlx::query_as(
        "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT device, metric, ts_ms FROM readings)) FROM readings",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    counts
}

async fn run_with_patience(config: FleetConfig) -> Summary {
    tokio::time::timeout(Duration::from_secs(60), fleet::run(config))
        .await
        .expect("the fleet finished")
}

#[tokio::test]
async fn a_fleet_delivers_every_reading_exactly_once() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let config = fleet(
        &hub.addr,
        20,
        Credential::ProvisionKey("k".into()),
        settings(Some(200.0), 7, Some(100)),
    );
    let summary = run_with_patience(config).await;
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(summary.acked, 20 * 100);
    assert_eq!(summary.dropped, 0);
    assert_eq!(stored(&hub).await, (2_000, 2_000));
}

/// How the hub goes down in the middle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: it commits and acknowledges what it read, then exits.
    Terminate,
    /// SIGKILL: gone at once, mid-commit perhaps.
    Kill,
}

#[tokio::test]
async fn a_hub_restart_mid_run_loses_and_duplicates_nothing() {
    restart_mid_run(Stop::Terminate).await;
}

#[tokio::test]
async fn a_hub_killed_mid_run_loses_nothing_acknowledged_and_stores_nothing_twice() {
    restart_mid_run(Stop::Kill).await;
}

/// Five devices stream 300 readings each while the hub is stopped and
/// started again on the same database and address: when the fleet says
/// everything was acknowledged, the database holds every reading once.
async fn restart_mid_run(stop: Stop) {
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_in(dir, &listen, &["--provision-key", "k"])
        .await
        .unwrap();
    let config = fleet(
        &hub.addr,
        5,
        Credential::ProvisionKey("k".into()),
        settings(Some(100.0), 5, Some(300)),
    );
    let run = tokio::spawn(run_with_patience(config));

    // Let readings flow, stop the hub, keep it down a moment, bring it back.
    let db = hub.db().await.unwrap();
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
            .fetch_one(&db)
            .await
            .unwrap();
        if n > 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;
    let dir = match stop {
        Stop::Terminate => {
            let (status, dir) = hub.terminate().await.unwrap();
            assert!(status.success());
            dir
        }
        Stop::Kill => hub.kill().await.unwrap(),
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hub = TestHub::start_in(dir, &listen, &["--provision-key", "k"])
        .await
        .unwrap();

    let summary = run.await.unwrap();
    assert!(summary.complete(), "{summary:?}");
    assert!(
        summary.reconnects >= 5,
        "every device reconnected: {summary:?}"
    );
    assert_eq!(stored(&hub).await, (1_500, 1_500));
}

#[tokio::test]
async fn set_interval_changes_the_rate_that_reaches_the_hub() {
    let hub = TestHub::start(&["--sample-interval", "1s"]).await.unwrap();
    let token = hub.add_device("boiler-7").await.unwrap();
    let mut config = fleet(
        &hub.addr,
        1,
        Credential::Token(token),
        settings(None, 1, None),
    );
    config.ids = Ids::Exactly("boiler-7".into());
    config.duration = Some(Duration::from_secs(4));
    let run = tokio::spawn(fleet::run(config));

    // Wait for the device, then ask for ten samples a second.
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    let changed_at = loop {
        let (status, body) = hub
            .post(
                "/v1/devices/boiler-7/commands",
                r#"{"name": "set_interval", "args": {"interval_ms": "100"}}"#,
            )
            .await
            .unwrap();
        if status == 200 {
            assert!(body.contains("\"ok\":true"), "{body}");
            break std::time::SystemTime::now();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "device never connected: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let summary = run.await.unwrap();
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(summary.commands, 1);

    let changed_ms = changed_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let db = hub.db().await.unwrap();
    let (before, first_ms): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(min(ts_ms), 0) FROM readings WHERE ts_ms < ?")
            .bind(changed_ms)
            .fetch_one(&db)
            .await
            .unwrap();
    let (after, last_ms): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(max(ts_ms), 0) FROM readings WHERE ts_ms >= ?")
            .bind(changed_ms)
            .fetch_one(&db)
            .await
            .unwrap();
    let rate_before = before as f64 / ((changed_ms - first_ms).max(1_000) as f64 / 1_000.0);
    let rate_after = after as f64 / ((last_ms - changed_ms).max(1) as f64 / 1_000.0);
    assert!(
        rate_before <= 2.0,
        "about one sample a second before: {rate_before}"
    );
    assert!(
        rate_after >= 4.0,
        "many more after set_interval 100 ms: {rate_after}"
    );
}

/// A hub with a provisioning key behind a TLS front, and a fleet of
/// `devices` sending `count` readings each to it over `wss://localhost`,
/// trusting what `trust` trusts.
async fn behind_tls(
    devices: usize,
    count: u64,
    trust: rustls::ClientConfig,
) -> (TestHub, TlsFront, FleetConfig) {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let front = TlsFront::start(&hub.addr).await.unwrap();
    let port = front.addr.rsplit(':').next().unwrap();
    let mut config = fleet(
        &hub.addr,
        devices,
        Credential::ProvisionKey("k".into()),
        settings(Some(100.0), 10, Some(count)),
    );
    config.device.url = endpoint(&format!("wss://localhost:{port}")).unwrap();
    config.device.tls = Some(std::sync::Arc::new(trust));
    (hub, front, config)
}

#[tokio::test]
async fn a_fleet_delivers_over_wss_to_a_hub_behind_tls() {
    let trust = tls::client_config(Some(&fixture("ca.pem")), "--ca-cert").unwrap();
    let (hub, _front, config) = behind_tls(3, 50, (*trust).clone()).await;
    let summary = run_with_patience(config).await;
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(stored(&hub).await, (150, 150));
}

#[tokio::test]
async fn a_hub_whose_certificate_is_not_trusted_gets_nothing() {
    // Trusts no one: the test CA is not among the roots.
    let trusts_no_one = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let (hub, _front, mut config) = behind_tls(1, 20, trusts_no_one).await;
    config.duration = Some(Duration::from_secs(1));
    config.grace = Duration::from_secs(1);
    let summary = run_with_patience(config).await;
    assert!(!summary.complete(), "{summary:?}");
    assert_eq!(summary.acked, 0);
    let error = summary.last_error.clone().unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(stored(&hub).await, (0, 0));
}

#[tokio::test]
async fn a_partial_batch_goes_out_within_flush_while_sampling_goes_on() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    // Two samples a second into batches of 100, flushed after 1.5 s: each
    // tick comes sooner than the flush, which used to push it on, so the
    // first batch waited fifty seconds to fill.
    let mut device = settings(Some(2.0), 100, None);
    device.kinds = vec![SensorKind::Temperature];
    device.flush = Duration::from_millis(1_500);
    let run = tokio::spawn(fleet::run(fleet(
        &hub.addr,
        1,
        Credential::ProvisionKey("k".into()),
        device,
    )));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (stored, _) = stored(&hub).await;
        if stored >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stored} readings stored after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run.abort();
}
