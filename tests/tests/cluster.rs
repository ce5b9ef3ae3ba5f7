//! Several hubs sharing one ordered log on NATS JetStream (`--nats-url`),
//! each test with its own real `nats-server` (alone, or three routed into a
//! cluster) on free ports and a temporary folder: every hub stores every
//! reading once at the same positions, a browser resumes on any hub, a
//! command reaches a device on another hub, and nothing acknowledged is
//! lost when a hub is killed, a NATS node stops or NATS is away a while.

use std::collections::HashSet;
use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, FleetConfig, Ids};
use e2e::fleets;
use e2e::nginx::Nginx;
use e2e::partition::Relay;
use e2e::{PATIENCE, RawDevice, SseClient, TestHub, batch, hub_binary};
use protocol::{CommandResult, DeviceFrame, HubFrame};
use telemetry_device::endpoint;
use testkit::nats::{NatsCluster, NatsServer};

/// `(pos, device, metric, ts_ms, value)`: a stored reading.
type Row = (i64, String, String, i64, Option<f64>);

/// A hub of the cluster at `nats`, named `id`, taking devices with the
/// provisioning key `k`.
async fn member(nats: &str, id: &str, extra: &[&str]) -> TestHub {
    let mut args = vec!["--provision-key", "k", "--nats-url", nats, "--hub-id", id];
    args.extend_from_slice(extra);
    TestHub::start(&args).await.unwrap()
}

/// Hubs `a`, `b` and `c` of the cluster at `nats`.
async fn three(nats: &str) -> (TestHub, TestHub, TestHub) {
    (
        member(nats, "a", &[]).await,
        member(nats, "b", &[]).await,
        member(nats, "c", &[]).await,
    )
}

/// `devices` devices named `{prefix}1…`, each sending `count` readings to
/// the first of `hubs` (`host:port`), then the next in turn after a failure.
fn fleet(prefix: &str, devices: usize, count: u64, hubs: &[&str]) -> FleetConfig {
    let url = |hub: &&str| endpoint(&format!("ws://{hub}")).unwrap();
    let settings = DeviceSettings {
        batch: 5,
        other_urls: hubs[1..].iter().map(url).collect(),
        ..fleets::quick_device(url(&hubs[0]), 200.0, count)
    };
    FleetConfig {
        ids: Ids::Numbered(prefix.into()),
        grace: Duration::from_secs(30),
        ..fleets::fleet_of(devices, settings)
    }
}

/// Runs a fleet to its end; every reading acknowledged. Answers how many.
async fn delivered(config: FleetConfig) -> u64 {
    let summary = tokio::time::timeout(Duration::from_secs(120), fleet::run(config))
        .await
        .expect("the fleet finished");
    assert!(summary.complete(), "{summary:?}");
    summary.acked
}

/// The rows `sql` (with `device` bound, if given) selects on `hub`, once
/// there are at least `n`: each hub stores the stream moments after it.
async fn at_least<T>(hub: &TestHub, n: usize, sql: &'static str, device: Option<&str>) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin + std::fmt::Debug,
{
    let db = hub.db().await.unwrap();
    let deadline = tokio::time::Instant::now() + 4 * PATIENCE;
    loop {
        let mut query = sqlx::query_as(sql);
        if let Some(device) = device {
            query = query.bind(device);
        }
        let rows: Vec<T> = query.fetch_all(&db).await.unwrap();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} holds {} of {n}: {rows:?}",
            hub.addr,
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every reading the hub stored, in position order, once it holds `n`.
async fn stored(hub: &TestHub, n: usize) -> Vec<Row> {
    let sql = "SELECT pos, device, metric, ts_ms, value FROM readings ORDER BY pos";
    at_least(hub, n, sql, None).await
}

/// Each reading once: no two rows share device, metric and time, and
/// there are `n` of them.
fn each_once(rows: &[Row], n: u64) {
    let distinct: HashSet<(&str, &str, i64)> = rows
        .iter()
        .map(|(_, device, metric, ts_ms, _)| (device.as_str(), metric.as_str(), *ts_ms))
        .collect();
    assert_eq!(distinct.len(), rows.len(), "a reading stored twice");
    assert_eq!(rows.len() as u64, n, "every acknowledged reading, once");
}

/// Reading events from `live` until `n`, their positions.
async fn positions(live: &mut SseClient, n: usize) -> Vec<i64> {
    let mut seen = Vec::with_capacity(n);
    while seen.len() < n {
        seen.push(live.next_of("reading").await.unwrap().pos());
    }
    seen
}

#[tokio::test]
async fn three_hubs_hold_every_reading_and_browsers_and_commands_cross_them() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b, c) = three(&url).await;
    let mut live_c = SseClient::connect(&c.addr, "/v1/events", &[])
        .await
        .unwrap();

    // Devices on A and on B at once.
    let (on_a, on_b) = tokio::join!(
        delivered(fleet("a-", 3, 60, &[&a.addr])),
        delivered(fleet("b-", 3, 60, &[&b.addr])),
    );
    let total = on_a + on_b;
    assert_eq!(total, 360);

    // A subscriber on C holds every reading of both, once, in order.
    let seen = positions(&mut live_c, total as usize).await;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids only grow");

    // Every hub stored the same readings at the same positions: the ids.
    let rows = stored(&c, total as usize).await;
    each_once(&rows, total);
    assert_eq!(rows.iter().map(|row| row.0).collect::<Vec<_>>(), seen);
    assert_eq!(stored(&a, rows.len()).await, rows);
    assert_eq!(stored(&b, rows.len()).await, rows);

    // A browser that saw C up to one id resumes on A with exactly the rest.
    let cut = 150;
    let last_seen = seen[cut].to_string();
    let mut resumed = SseClient::connect(&a.addr, "/v1/events", &[("Last-Event-ID", &last_seen)])
        .await
        .unwrap();
    assert_eq!(
        positions(&mut resumed, seen.len() - cut - 1).await,
        seen[cut + 1..]
    );

    // A command asked of C reaches a device on A, and its answer comes back.
    let mut device = RawDevice::connect(&a.addr, Some("k")).await.unwrap();
    device.hello("cmd-1").await.unwrap();
    device.send_acked(&batch(1, 1_000, 1)).await.unwrap();
    c.until_online("cmd-1").await.unwrap();
    let c_addr = c.addr.clone();
    let request = tokio::spawn(async move {
        testkit::http::request(
            &c_addr,
            "POST",
            "/v1/devices/cmd-1/commands",
            &[],
            Some(r#"{"name": "ping"}"#),
        )
        .await
        .unwrap()
    });
    let HubFrame::Command(command) = device.recv().await.unwrap() else {
        panic!("expected the command routed from C");
    };
    assert_eq!(command.name, "ping");
    device
        .send(&DeviceFrame::CommandResult(CommandResult {
            id: command.id,
            ok: true,
            detail: "pong from A".into(),
        }))
        .await
        .unwrap();
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["detail"], "pong from A");

    // Gone from A: C says so, as it would of its own device.
    drop(device);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = c
            .post("/v1/devices/cmd-1/commands", r#"{"name": "ping"}"#)
            .await
            .unwrap();
        if status == 409 {
            assert!(body.contains("device_offline"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = c
        .post("/v1/devices/nobody/commands", r#"{"name": "ping"}"#)
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    let (status, body) = c.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""connected":true"#), "{body}");
}

/// The device's stored statuses on `hub`: `(pos, body)`, once it holds `n`.
async fn statuses(hub: &TestHub, device: &str, n: usize) -> Vec<(i64, String)> {
    let sql =
        "SELECT pos, body FROM device_events WHERE device = ? AND kind = 'status' ORDER BY pos";
    at_least(hub, n, sql, Some(device)).await
}

#[tokio::test]
async fn a_status_has_one_id_on_every_hub_and_a_silent_hubs_devices_go_offline_once() {
    let nats = NatsServer::start().await.unwrap();
    let (a, b, c) = three(&nats.url()).await;
    let mut live_b = SseClient::connect(&b.addr, "/v1/events", &[])
        .await
        .unwrap();

    let mut device = RawDevice::connect(&a.addr, Some("k")).await.unwrap();
    device.hello("st-1").await.unwrap();
    let online = live_b.next_of("status").await.unwrap();
    assert_eq!(online.json()["device"], "st-1");
    assert_eq!(online.json()["online"], true);
    // The same event, at the same id, on the hub the device is on.
    let mut replay_a = SseClient::connect(&a.addr, "/v1/events", &[("Last-Event-ID", "0")])
        .await
        .unwrap();
    assert_eq!(replay_a.next_of("status").await.unwrap(), online);

    // A is killed: it says nothing more. B and C each notice it silent
    // and record its device offline; the stream keeps one entry.
    a.kill().await.unwrap();
    drop(device);
    let offline = live_b.next_of("status").await.unwrap();
    assert_eq!(offline.json()["device"], "st-1");
    assert_eq!(offline.json()["online"], false);
    let on_c = statuses(&c, "st-1", 2).await;
    // C's own publish, a moment after B's, would come in under a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let expected = vec![
        (online.pos(), r#"{"online":true}"#.to_owned()),
        (offline.pos(), r#"{"online":false}"#.to_owned()),
    ];
    assert_eq!(statuses(&b, "st-1", 2).await, expected);
    assert_eq!(on_c, expected);
    assert_eq!(statuses(&c, "st-1", 2).await, expected);
}

#[tokio::test]
async fn a_hub_killed_mid_run_loses_nothing_its_devices_were_acknowledged() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b, c) = three(&url).await;
    let hubs = [a.addr.clone(), b.addr.clone(), c.addr.clone()];
    let run = tokio::spawn(delivered(fleet(
        "k-",
        4,
        600,
        &hubs.iter().map(String::as_str).collect::<Vec<_>>(),
    )));
    // Once A has taken some, kill it: no shutdown of any kind.
    stored(&b, 200).await;
    a.kill().await.unwrap();

    // The devices moved on to B; every acknowledged reading is on B and C,
    // once, at the same positions.
    let acked = run.await.unwrap();
    assert_eq!(acked, 2_400);
    let rows = stored(&b, acked as usize).await;
    each_once(&rows, acked);
    assert_eq!(stored(&c, rows.len()).await, rows);
}

#[tokio::test]
async fn a_nats_server_out_of_reach_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", testkit::free_port());
    let output = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(hub_binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--nats-url",
                &nowhere,
                "--db",
            ])
            .arg(dir.path().join("hub.db"))
            .output(),
    )
    .await
    .expect("the hub gave up in time")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach NATS") && stderr.contains("--nats-url"),
        "{stderr}"
    );
}

#[tokio::test]
async fn while_nats_is_away_nothing_is_acknowledged_and_the_hub_recovers() {
    let mut nats = NatsServer::start().await.unwrap();
    let hub = member(&nats.url(), "a", &[]).await;
    let run = tokio::spawn(delivered(fleet("w-", 2, 1_200, &[&hub.addr])));
    stored(&hub, 100).await;

    nats.stop().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = hub.get("/healthz").await.unwrap();
        if status == 503 {
            assert!(body.contains("cluster_unavailable"), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New devices are told to come back later rather than accepted.
    let refused = RawDevice::connect(&hub.addr, Some("k")).await;
    assert!(refused.is_err(), "a device was taken in without NATS");

    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.resume().await.unwrap();
    let acked = run.await.unwrap();
    assert_eq!(acked, 2_400);
    let rows = stored(&hub, acked as usize).await;
    each_once(&rows, acked);
    let (status, body) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_nats_node_stopping_in_a_cluster_of_three_loses_nothing_acknowledged() {
    let mut nats = NatsCluster::start(3).await.unwrap();
    let url = nats.url();
    let replicated = ["--nats-replicas", "3"];
    let (a, b) = (
        member(&url, "a", &replicated).await,
        member(&url, "b", &replicated).await,
    );
    let run_a = tokio::spawn(delivered(fleet("ra-", 2, 900, &[&a.addr, &b.addr])));
    let run_b = tokio::spawn(delivered(fleet("rb-", 2, 900, &[&b.addr, &a.addr])));
    stored(&a, 300).await;
    // The stream's leader, if the cluster names one, else the first node.
    let leader = nats.stream_leader("telemetry").await.unwrap_or(0);
    nats.nodes[leader].kill().await.unwrap();

    let acked = run_a.await.unwrap() + run_b.await.unwrap();
    assert_eq!(acked, 3_600);
    let rows = stored(&a, acked as usize).await;
    each_once(&rows, acked);
    assert_eq!(stored(&b, rows.len()).await, rows);
}

#[tokio::test]
async fn behind_round_robin_nginx_a_browser_holds_every_reading_once_across_a_killed_hub() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b, c) = three(&url).await;
    let nginx = Nginx::balancing(&[&a.addr, &b.addr, &c.addr])
        .await
        .unwrap();
    let run = tokio::spawn(delivered(fleet("lb-", 6, 600, &[&nginx.addr])));

    // A browser through nginx, reconnecting with Last-Event-ID wherever
    // nginx sends it, as EventSource does.
    let browser = tokio::spawn({
        let addr = nginx.addr.clone();
        async move {
            let mut seen: Vec<i64> = Vec::new();
            let mut reconnects = 0;
            while seen.len() < 3_600 {
                // From the start of the cluster's history at first.
                let last = seen
                    .last()
                    .map_or_else(|| "0".to_owned(), ToString::to_string);
                let headers = [("Last-Event-ID", last.as_str())];
                let Ok(mut live) = SseClient::connect(&addr, "/v1/events", &headers).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while let Ok(Some(event)) = live.next_event().await {
                    if event.event == "reading" {
                        seen.push(event.pos());
                    }
                }
                reconnects += 1;
            }
            (seen, reconnects)
        }
    });

    stored(&b, 600).await;
    a.kill().await.unwrap();
    let acked = run.await.unwrap();
    assert_eq!(acked, 3_600);
    let (seen, _reconnects) = tokio::time::timeout(Duration::from_secs(90), browser)
        .await
        .expect("the browser got every reading")
        .unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order"
    );
    let rows = stored(&b, acked as usize).await;
    each_once(&rows, acked);
    assert_eq!(seen, rows.iter().map(|row| row.0).collect::<Vec<_>>());
}

/// `hub serve` on the database in `dir` with `args`: what it said on
/// standard error as it refused to start.
async fn refused(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(hub_binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join(testkit::hub::DB_FILE))
            .args(args)
            .output(),
    )
    .await
    .expect("the hub gave up in time")
    .unwrap();
    assert!(!output.status.success(), "the hub started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_database_that_is_not_the_streams_is_refused() {
    // A single hub's database, with a reading of its own.
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let mut device = RawDevice::connect(&hub.addr, Some("k")).await.unwrap();
    device.hello("solo-1").await.unwrap();
    device.send_acked(&batch(1, 1_000, 3)).await.unwrap();
    drop(device);
    let (_, dir) = hub.terminate().await.unwrap();
    let nats = NatsServer::start().await.unwrap();
    let stderr = refused(&dir, &["--nats-url", &nats.url()]).await;
    assert!(stderr.contains("outside the cluster"), "{stderr}");

    // A cluster hub's database, and then the stream deleted and created
    // again (a new NATS with new storage): its sequences started over.
    let hub = member(&nats.url(), "a", &[]).await;
    delivered(fleet("e-", 1, 10, &[&hub.addr])).await;
    stored(&hub, 10).await;
    let (_, dir) = hub.terminate().await.unwrap();
    let fresh = NatsServer::start().await.unwrap();
    let stderr = refused(&dir, &["--nats-url", &fresh.url()]).await;
    assert!(stderr.contains("created again"), "{stderr}");
}

#[tokio::test]
async fn a_hub_joining_after_entries_aged_out_tells_browsers_to_reset() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let a = member(&url, "a", &["--nats-max-age", "1s"]).await;
    delivered(fleet("old-", 1, 10, &[&a.addr])).await;
    let first = stored(&a, 10).await[0].0;
    // Past the stream's age, its entries are gone: a hub that starts now
    // cannot have them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = member(&url, "b", &[]).await;
    let resume = first.to_string();
    let mut live = SseClient::connect(&b.addr, "/v1/events", &[("Last-Event-ID", &resume)])
        .await
        .unwrap();
    let reset = live.next_event().await.unwrap().unwrap();
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert_eq!(reset.json()["requested"], first);

    // What comes after is stored and served on both.
    delivered(fleet("new-", 1, 10, &[&b.addr])).await;
    let on_b = stored(&b, 10).await;
    assert_eq!(on_b.len(), 10, "only what came after it joined");
    let next = live.next_of("reading").await.unwrap().pos();
    assert_eq!(next, on_b[0].0);
    assert_eq!(stored(&a, 20).await[10..], on_b[..]);
}

#[tokio::test]
async fn a_hub_cut_off_from_nats_and_healed_catches_up_and_loses_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let link = Relay::start(&format!("127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let a = member(&nats.url(), "a", &[]).await;
    let b = member(&format!("nats://{}", link.addr), "b", &[]).await;
    let run_a = tokio::spawn(delivered(fleet("pa-", 2, 900, &[&a.addr, &b.addr])));
    let run_b = tokio::spawn(delivered(fleet("pb-", 2, 900, &[&b.addr, &a.addr])));
    stored(&b, 300).await;

    // B alone loses NATS: its devices are refused or told to reconnect,
    // and move to A; A's go on.
    link.cut();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while b.get("/healthz").await.unwrap().0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "B never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    link.heal();

    let acked = run_a.await.unwrap() + run_b.await.unwrap();
    assert_eq!(acked, 3_600);
    let rows = stored(&a, acked as usize).await;
    each_once(&rows, acked);
    assert_eq!(stored(&b, rows.len()).await, rows, "B caught up");
}

/// Runs `hub device …` through the cluster at `nats`; its output.
async fn provision(nats: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args.to_vec();
    args.extend(["--nats-url", nats]);
    e2e::cli_on(&dir.path().join("unused.db"), &args)
        .await
        .unwrap()
}

/// Retries `connect` until the hub takes the token (it applies the
/// provisioning a moment after the stream holds it).
async fn connect_when_known(hub: &TestHub, token: &str) -> RawDevice {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match hub.connect(token).await {
            Ok(device) => return device,
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "{err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_device_added_for_the_cluster_connects_anywhere_until_revoked_everywhere() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b) = (member(&url, "a", &[]).await, member(&url, "b", &[]).await);

    let added = provision(&url, &["device", "add", "tok-1", "--name", "boiler"]).await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let token = String::from_utf8(added.stdout).unwrap().trim().to_owned();

    // Its one token works on either hub.
    let mut on_b = connect_when_known(&b, &token).await;
    on_b.hello("tok-1").await.unwrap();
    on_b.send_acked(&batch(1, 1_000, 2)).await.unwrap();
    let mut on_a = connect_when_known(&a, &token).await;
    on_a.hello("tok-1").await.unwrap();
    on_a.send_acked(&batch(2, 2_000, 2)).await.unwrap();
    drop(on_b);
    let (_, devices) = a.get("/v1/devices").await.unwrap();
    assert!(devices.contains(r#""name":"boiler""#), "{devices}");
    assert_eq!(stored(&b, 4).await, stored(&a, 4).await);

    // Revoked through the cluster: the open connection on A is closed,
    // and neither hub takes the token again.
    let revoked = provision(&url, &["device", "revoke", "tok-1"]).await;
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let (closed, _) = on_a.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(protocol::error_code::REVOKED));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while b.connect(&token).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still takes the token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.connect(&token).await.is_err());

    // Without a hub's stream, the command says where it looked.
    let nowhere = format!("nats://127.0.0.1:{}", testkit::free_port());
    let failed = provision(&nowhere, &["device", "add", "tok-2"]).await;
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("--nats-url"));
}

#[tokio::test]
async fn entries_no_hub_wrote_are_skipped_and_harm_no_one() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b) = (member(&url, "a", &[]).await, member(&url, "b", &[]).await);

    // Anyone who may publish on the stream's subjects: bytes that are no
    // entry, a Hello naming another device than its subject, a
    // provisioning change with a hash that is not one, and events that are
    // none (not JSON, a kind no hub knows, a subject that is no device id).
    let client = async_nats::connect(&url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let liar = {
        let mut entry = Vec::new();
        let hello = DeviceFrame::Hello(e2e::hello("other")).encode();
        entry.extend_from_slice(&u32::try_from(hello.len()).unwrap().to_be_bytes());
        entry.extend_from_slice(&hello);
        entry.extend_from_slice(&batch(1, 1_000, 1).encode());
        entry
    };
    for (subject, payload) in [
        ("telemetry.readings.x", b"not an entry".to_vec()),
        ("telemetry.readings.x", liar),
        (
            "telemetry.devices.y",
            br#"{"change":"token","device":"y","token_sha256":[1,2]}"#.to_vec(),
        ),
        ("telemetry.events.z", b"not an event".to_vec()),
        (
            "telemetry.events.z",
            br#"{"ts_ms":1,"event":{"kind":"meteor"}}"#.to_vec(),
        ),
        (
            "telemetry.events.z-\u{2603}",
            br#"{"ts_ms":1,"event":{"kind":"status","online":true}}"#.to_vec(),
        ),
    ] {
        jetstream
            .publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // A real device's readings after them are stored on both hubs, which
    // stay healthy; nothing of the rest is stored.
    delivered(fleet("ok-", 1, 10, &[&a.addr])).await;
    let rows = stored(&b, 10).await;
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|row| row.1 == "ok-1"), "{rows:?}");
    assert_eq!(stored(&a, 10).await, rows);
    for hub in [&a, &b] {
        let (status, body) = hub.get("/healthz").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let (_, devices) = hub.get("/v1/devices").await.unwrap();
        assert!(
            !devices.contains(r#""id":"y""#)
                && !devices.contains(r#""id":"other""#)
                && !devices.contains(r#""id":"z"#),
            "{devices}"
        );
    }
}

/// A batch of one temperature reading of `value`.
fn reading(seq: u64, value: f64) -> DeviceFrame {
    DeviceFrame::Batch(protocol::Batch {
        seq,
        base_ms: 1_000_000 + seq * 1_000,
        readings: vec![protocol::Reading {
            metric: 1,
            offset_ms: 0,
            value,
        }],
    })
}

/// `(pos, alert, rule, state)` of every alert transition a hub stored.
type Transition = (i64, i64, String, String);

const TRANSITIONS: &str = "SELECT pos, alert, rule, state FROM alert_events ORDER BY pos";

#[tokio::test]
async fn each_alert_transition_happens_once_for_the_cluster_and_outlives_the_hub_that_saw_it() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b, c) = three(&url).await;
    // Rules for the whole cluster: one from the command line, one through
    // a hub's API.
    let out = provision(
        &url,
        &[
            "alert",
            "add",
            "warm",
            "--kind",
            "threshold",
            "--metric",
            "temperature",
            "--above",
            "50",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gone = r#"{"name": "gone", "kind": "offline", "device": "al-*", "for": "1s"}"#;
    let (status, body) = b.post("/v1/alert-rules", gone).await.unwrap();
    assert_eq!(status, 201, "{body}");
    for hub in [&a, &b, &c] {
        let rules: Vec<(String,)> =
            at_least(hub, 2, "SELECT name FROM alert_rules ORDER BY name", None).await;
        assert_eq!(rules, [("gone".to_owned(),), ("warm".to_owned(),)]);
    }
    for hub in [&a, &b, &c] {
        hub.until_rules(2).await.unwrap();
    }

    // Three hubs evaluate the reading; the alert fires once, at one id.
    let mut device = RawDevice::connect(&a.addr, Some("k")).await.unwrap();
    let greeting = device.greet(e2e::hello("al-1")).await.unwrap();
    let token = greeting.token.expect("the key registered it");
    device.send_acked(&reading(1, 60.0)).await.unwrap();
    let fired: Vec<Transition> = at_least(&c, 1, TRANSITIONS, None).await;
    let id = fired[0].0;
    // Acknowledged through another hub: once, everywhere.
    let ack = r#"{"by": "ana"}"#;
    let (status, body) = c.post(&format!("/v1/alerts/{id}/ack"), ack).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"acknowledged""#), "{body}");
    let (status, _) = b.post(&format!("/v1/alerts/{id}/ack"), ack).await.unwrap();
    assert_eq!(status, 409);

    // A, where the device was, is killed: B and C record it offline, and
    // the offline rule fires once whichever timer is first.
    a.kill().await.unwrap();
    drop(device);
    at_least::<Transition>(&b, 3, TRANSITIONS, None).await;
    // Back on B, and cool: both alerts resolve, once.
    let mut device = RawDevice::connect(&b.addr, Some(&token)).await.unwrap();
    device.hello("al-1").await.unwrap();
    device.send_acked(&reading(2, 40.0)).await.unwrap();
    let on_b: Vec<Transition> = at_least(&b, 5, TRANSITIONS, None).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // nothing more comes
    let on_b: Vec<Transition> = at_least(&b, on_b.len(), TRANSITIONS, None).await;
    let story: Vec<(String, String)> = on_b
        .iter()
        .map(|(_, _, rule, state)| (rule.clone(), state.clone()))
        .collect();
    let mut warm: Vec<&(String, String)> =
        story.iter().filter(|(rule, _)| rule == "warm").collect();
    let mut away: Vec<&(String, String)> =
        story.iter().filter(|(rule, _)| rule == "gone").collect();
    warm.dedup();
    away.dedup();
    let states = |list: &[&(String, String)]| {
        list.iter()
            .map(|(_, state)| state.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        states(&warm),
        ["firing", "acknowledged", "resolved"],
        "{on_b:?}"
    );
    assert_eq!(states(&away), ["firing", "resolved"], "{on_b:?}");
    assert_eq!(on_b.len(), 5, "each transition once: {on_b:?}");
    let warm_resolved = on_b
        .iter()
        .find(|(_, _, rule, state)| rule == "warm" && state == "resolved");
    assert_eq!(
        warm_resolved.unwrap().1,
        id,
        "resolved as the alert that fired"
    );
    assert_eq!(
        at_least::<Transition>(&c, on_b.len(), TRANSITIONS, None).await,
        on_b
    );
}

/// `GET path` with `key` on `hub`, until it answers `status` (a hub reads
/// its keys again every half second, after applying the stream).
async fn until_answers(hub: &TestHub, key: &str, path: &str, status: u16) -> String {
    let bearer = format!("Bearer {key}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (got, body) = testkit::http::get(&hub.addr, path, &[("Authorization", &bearer)])
            .await
            .unwrap();
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} answers {got}, not {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `GET /v1/me` with `key` on `hub` says `what`.
async fn until_says(hub: &TestHub, key: &str, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (_, body) = testkit::http::get(
            &hub.addr,
            "/v1/me",
            &[("Authorization", &format!("Bearer {key}"))],
        )
        .await
        .unwrap();
        if body.contains(what) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn keys_and_groups_made_on_one_hub_work_on_every_hub() {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b) = (member(&url, "a", &[]).await, member(&url, "b", &[]).await);

    // From the command line, for the cluster.
    let added = provision(&url, &["key", "add", "--role", "admin", "--name", "root"]).await;
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let admin = String::from_utf8(added.stdout).unwrap().trim().to_owned();
    let grouped = provision(&url, &["device", "add", "oven-1", "--group", "kitchen"]).await;
    assert!(
        grouped.status.success(),
        "{}",
        String::from_utf8_lossy(&grouped.stderr)
    );
    for hub in [&a, &b] {
        // Until then the hub has no key and is open to all.
        until_says(hub, &admin, r#""key":"root""#).await;
        let body = until_answers(hub, &admin, "/v1/devices?group=kitchen", 200).await;
        assert!(body.contains("oven-1"), "{body}");
    }

    // Through one hub's admin API: the key works on the other, scoped.
    let (status, body) = testkit::http::request(
        &a.addr,
        "POST",
        "/v1/admin/keys",
        &[("Authorization", &format!("Bearer {admin}"))],
        Some(r#"{"role": "viewer", "name": "wall", "groups": ["kitchen"]}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let viewer = serde_json::from_str::<serde_json::Value>(&body).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    until_says(&b, &viewer, r#""key":"wall""#).await;
    let seen = until_answers(&b, &viewer, "/v1/devices", 200).await;
    assert!(seen.contains("oven-1"), "{seen}");
    assert_eq!(
        testkit::http::get(
            &b.addr,
            "/v1/admin/keys",
            &[("Authorization", &format!("Bearer {viewer}"))]
        )
        .await
        .unwrap()
        .0,
        403
    );
    // A name taken on the cluster is refused, whichever hub is asked.
    let (status, _) = testkit::http::request(
        &b.addr,
        "POST",
        "/v1/admin/keys",
        &[("Authorization", &format!("Bearer {admin}"))],
        Some(r#"{"role": "admin", "name": "wall"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 409);

    // Revoked on B: it stops working on A.
    let (status, _) = testkit::http::request(
        &b.addr,
        "POST",
        "/v1/admin/keys/wall/revoke",
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 204);
    until_answers(&a, &viewer, "/v1/devices", 401).await;
    let revoked = provision(&url, &["key", "revoke", "root"]).await;
    assert!(revoked.status.success());
    until_answers(&b, &admin, "/v1/devices", 401).await;
}

/// A device's configuration as `hub` holds it, once its `state` is `state`.
async fn config_standing(hub: &TestHub, device: &str, state: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
    loop {
        let (_, body) = hub
            .get(&format!("/v1/devices/{device}/config"))
            .await
            .unwrap();
        let config: serde_json::Value = serde_json::from_str(&body).unwrap();
        if config["state"] == state {
            return config;
        }
        assert!(tokio::time::Instant::now() < deadline, "{config}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put_config(hub: &TestHub, device: &str, body: &str, version: &str) -> u16 {
    let headers = [("If-Match", version)];
    testkit::http::request(
        &hub.addr,
        "PUT",
        &format!("/v1/devices/{device}/config"),
        &headers,
        Some(body),
    )
    .await
    .unwrap()
    .0
}

#[tokio::test]
async fn a_configuration_changed_on_one_hub_reaches_its_device_on_another_after_the_first_is_killed()
 {
    let nats = NatsServer::start().await.unwrap();
    let url = nats.url();
    let (a, b) = (member(&url, "a", &[]).await, member(&url, "b", &[]).await);
    let mut tokens = Vec::new();
    for id in ["cfg-1", "cfg-2"] {
        let added = provision(&url, &["device", "add", id]).await;
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
        tokens.push(String::from_utf8(added.stdout).unwrap().trim().to_owned());
    }
    // Known to both hubs before it is configured.
    drop(connect_when_known(&a, &tokens[0]).await);
    drop(connect_when_known(&b, &tokens[0]).await);
    drop(connect_when_known(&a, &tokens[1]).await);
    drop(connect_when_known(&b, &tokens[1]).await);

    // Racing across hubs: one version 1 for the cluster.
    let body = r#"{"sample_interval_ms": 500}"#;
    let (on_a, on_b) = tokio::join!(
        put_config(&a, "cfg-2", body, "\"0\""),
        put_config(&b, "cfg-2", r#"{"sample_interval_ms": 900}"#, "\"0\"")
    );
    let mut statuses = [on_a, on_b];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412]);

    // Changed on A while the device is away; A is killed before delivery.
    assert_eq!(put_config(&a, "cfg-1", body, "\"0\"").await, 200);
    drop(a.kill().await.unwrap());
    let mut device = connect_when_known(&b, &tokens[0]).await;
    device.hello("cfg-1").await.unwrap();
    let HubFrame::Config(config) = device.recv().await.unwrap() else {
        panic!("B sends the configuration A took");
    };
    assert_eq!(config.version, 1);
    assert_eq!(config.json, r#"{"sample_interval_ms":500}"#);
    device
        .send(&DeviceFrame::ConfigResult(protocol::ConfigResult {
            version: 1,
            ok: true,
            detail: "ok".into(),
        }))
        .await
        .unwrap();
    let standing = config_standing(&b, "cfg-1", "applied").await;
    assert_eq!(standing["reported"]["version"], 1);
    // The race's winner stands on B as it did on A.
    let (_, raced) = b.get("/v1/devices/cfg-2/config").await.unwrap();
    let raced: serde_json::Value = serde_json::from_str(&raced).unwrap();
    assert_eq!(raced["version"], 1, "{raced}");
}
