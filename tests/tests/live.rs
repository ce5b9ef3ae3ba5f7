//! The live SSE stream against the real hub: readings as they are stored,
//! gap-free resume with Last-Event-ID, filters, status events, slow
//! subscribers, retention resets, the monitor token and limits.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use device_sim::fleet::{self, FleetConfig};
use e2e::fleets;
use e2e::{SseClient, TestHub, batch};

fn fleet(hub: &TestHub, devices: usize, rate: f64, count: u64) -> FleetConfig {
    FleetConfig {
        seed: 3,
        ..fleets::fleet_of(devices, hub.quick_device(rate, count))
    }
}

async fn positions(hub: &TestHub, after: i64) -> Vec<i64> {
    let db = hub.db().await.unwrap();
    let rows = sqlx::query_scalar("SELECT pos FROM samples WHERE pos > ? ORDER BY pos")
        .bind(after)
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows
}

#[tokio::test]
async fn a_subscriber_sees_readings_and_status_as_they_happen() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");

    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    let online = sse.next_of("status").await.unwrap();
    assert_eq!(online.json()["device"], "dev-1");
    assert_eq!(online.json()["online"], true);
    assert_eq!(
        online.pos(),
        1,
        "a status is stored, at a position of its own"
    );

    device.send_acked(&batch(1, 1_000, 3)).await.unwrap();
    for i in 0..3 {
        let event = sse.next_of("reading").await.unwrap();
        assert_eq!(event.pos(), i + 2);
        let data = event.json();
        assert_eq!(data["device"], "dev-1");
        assert_eq!(data["metric"], "temperature");
        assert_eq!(data["unit"], "°C");
        assert_eq!(data["ts_ms"], 1_000 + i * 1_000);
        assert_eq!(data["value"], 1_000.0 + i as f64);
    }

    drop(device);
    let offline = sse.next_of("status").await.unwrap();
    assert_eq!(offline.json()["online"], false);
    assert_eq!(offline.pos(), 5);

    // A browser that was away gets the statuses it missed, in order with
    // the readings, as sqlite3 sees them.
    let mut resumed = SseClient::connect(&hub.addr, "/v1/events", &[("Last-Event-ID", "0")])
        .await
        .unwrap();
    let mut replayed = Vec::new();
    while replayed.len() < 5 {
        let event = resumed.next_event().await.unwrap().unwrap();
        if event.event != "message" {
            replayed.push((event.pos(), event.event));
        }
    }
    let kinds: Vec<(i64, &str)> = replayed
        .iter()
        .map(|(pos, kind)| (*pos, kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "status"),
            (2, "reading"),
            (3, "reading"),
            (4, "reading"),
            (5, "status")
        ]
    );
    let db = hub.db().await.unwrap();
    let stored: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT pos, device, body FROM device_events ORDER BY pos")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [
            (1, "dev-1".into(), r#"{"online":true}"#.into()),
            (5, "dev-1".into(), r#"{"online":false}"#.into())
        ]
    );
}

#[tokio::test]
async fn a_device_left_online_by_a_killed_hub_is_recorded_offline_at_the_next_start() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    assert_eq!(sse.next_of("status").await.unwrap().pos(), 1);
    let dir = hub.kill().await.unwrap();
    drop(device);

    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[("Last-Event-ID", "1")])
        .await
        .unwrap();
    let offline = sse.next_of("status").await.unwrap();
    assert_eq!(offline.pos(), 2);
    assert_eq!(offline.json()["device"], "dev-1");
    assert_eq!(offline.json()["online"], false);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_what_it_missed_while_ingest_goes_on() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let run = tokio::spawn(fleet::run(fleet(&hub, 8, 400.0, 1_000)));

    // Read a while, drop the connection mid-stream, stay away, come back.
    let mut seen: Vec<i64> = Vec::new();
    let mut sse = SseClient::connect(&hub.addr, "/v1/events?last_event_id=0", &[])
        .await
        .unwrap();
    while seen.len() < 1_500 {
        seen.push(sse.next_of("reading").await.unwrap().pos());
    }
    drop(sse);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = seen.last().unwrap().to_string();
    let mut sse = SseClient::connect(
        &hub.addr,
        "/v1/events?last_event_id=0",
        &[("Last-Event-ID", &last)],
    )
    .await
    .unwrap();

    let summary = run.await.unwrap();
    assert!(summary.complete(), "{summary:?}");
    let total = 8 * 1_000;
    while seen.len() < total {
        seen.push(sse.next_of("reading").await.unwrap().pos());
    }
    let unique: BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in storage order");
    assert_eq!(
        seen,
        positions(&hub, 0).await,
        "every stored reading, none missing"
    );
}

#[tokio::test]
async fn filters_select_devices_and_metrics() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let summary = fleet::run(fleet(&hub, 3, 200.0, 40)).await;
    assert!(summary.complete());

    let mut sse = SseClient::connect(
        &hub.addr,
        "/v1/events?last_event_id=0&device=sim-1,sim-3&metric=humidity",
        &[],
    )
    .await
    .unwrap();
    let db = hub.db().await.unwrap();
    let expected: Vec<i64> = sqlx::query_scalar(
        "SELECT pos FROM readings WHERE device IN ('sim-1', 'sim-3') AND metric = 'humidity' ORDER BY pos",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(expected.len(), 40);
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let event = sse.next_of("reading").await.unwrap();
        let data = event.json();
        assert_eq!(data["metric"], "humidity");
        assert_ne!(data["device"], "sim-2");
        got.push(event.pos());
    }
    assert_eq!(got, expected);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_subscriber_that_never_reads_stalls_no_one_and_later_gets_everything() {
    // A 1 MiB ring: the stalled subscriber falls out of memory and is caught
    // up from the database.
    let hub = TestHub::start(&["--provision-key", "k", "--live-buffer-mb", "1"])
        .await
        .unwrap();
    let pid = hub.pid();
    // Connected, request sent, never read from: its socket buffers fill up.
    let mut stalled = SseClient::connect(&hub.addr, "/v1/events?last_event_id=0", &[])
        .await
        .unwrap();
    let mut reader = SseClient::connect(&hub.addr, "/v1/events?last_event_id=0", &[])
        .await
        .unwrap();
    let rss_before = vm_rss_kib(pid);

    let mut config = fleet(&hub, 10, 100_000.0, 6_000);
    config.device.batch = 200;
    let run = tokio::spawn(fleet::run(config));
    let total = 10 * 6_000;
    let mut read = 0;
    while read < total {
        reader.next_of("reading").await.unwrap();
        read += 1;
    }
    let summary = run.await.unwrap();
    assert!(
        summary.complete(),
        "ingest finished despite the stalled subscriber: {summary:?}"
    );
    let growth_mib = vm_rss_kib(pid).saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 150, "hub memory grew by {growth_mib} MiB");

    // The stalled subscriber still gets every event, in order, once.
    let mut got = Vec::with_capacity(total);
    while got.len() < total {
        got.push(stalled.next_of("reading").await.unwrap().pos());
    }
    assert_eq!(got, positions(&hub, 0).await);
}

#[tokio::test]
async fn device_filtered_subscribers_follow_live_and_catch_up_when_they_lag() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    // One reads as events come, one stalls long enough for its inbox to
    // overflow (more commits for its device than the inbox holds).
    let mut reader = SseClient::connect(&hub.addr, "/v1/events?device=sim-2", &[])
        .await
        .unwrap();
    let mut stalled = SseClient::connect(&hub.addr, "/v1/events?device=sim-2,sim-3", &[])
        .await
        .unwrap();
    let mut config = fleet(&hub, 3, 2_000.0, 1_000);
    config.device.batch = 5;
    let run = tokio::spawn(fleet::run(config));

    let db = hub.db().await.unwrap();
    let wanted = |devices: &'static [&'static str]| {
        let db = db.clone();
        async move {
            let all: Vec<(i64, String)> =
                sqlx::query_as("SELECT pos, device FROM readings ORDER BY pos")
                    .fetch_all(&db)
                    .await
                    .unwrap();
            all.into_iter()
                .filter(|(_, device)| devices.contains(&device.as_str()))
                .map(|(pos, _)| pos)
                .collect::<Vec<i64>>()
        }
    };
    let mut got = Vec::new();
    while got.len() < 1_000 {
        let event = reader.next_of("reading").await.unwrap();
        assert_eq!(event.json()["device"], "sim-2");
        got.push(event.pos());
    }
    assert!(run.await.unwrap().complete());
    assert_eq!(got, wanted(&["sim-2"]).await);

    let expected = wanted(&["sim-2", "sim-3"]).await;
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(stalled.next_of("reading").await.unwrap().pos());
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn after_a_restart_history_comes_from_storage() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let summary = fleet::run(fleet(&hub, 4, 1_000.0, 500)).await;
    assert!(summary.complete());
    let (_, dir) = hub.terminate().await.unwrap();
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();

    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[("Last-Event-ID", "700")])
        .await
        .unwrap();
    assert_eq!(positions(&hub, 0).await.len(), 4 * 500);
    // Readings only: the devices' statuses hold positions too.
    let expected = positions(&hub, 700).await;
    assert!(expected.len() >= 4 * 500 - 700 - 8, "{}", expected.len());
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(sse.next_of("reading").await.unwrap().pos());
    }
    assert_eq!(got, expected);
}

/// Waits until retention has left `count` readings.
async fn retention_leaves(hub: &TestHub, count: usize) {
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    while positions(hub, 0).await.len() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_id_older_than_retention_or_unknown_gets_a_reset_event() {
    let hub = TestHub::start(&["--retention", "1h", "--retention-sweep", "100ms"])
        .await
        .unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    // Its status takes position 1 and is kept: it is of the hub's time.
    assert_eq!(hub.until_status("dev-1", true).await.unwrap(), 1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    device
        .send_acked(&batch(1, now - 2 * 3_600_000, 5))
        .await
        .unwrap(); // positions 2..=6, expired
    device.send_acked(&batch(2, now, 5)).await.unwrap(); // positions 7..=11
    retention_leaves(&hub, 5).await;

    // Nothing the database no longer holds is served, though the hub still
    // has the expired readings in memory.
    let mut sse = SseClient::connect(&hub.addr, "/v1/events?last_event_id=2", &[])
        .await
        .unwrap();
    let reset = sse.next_event().await.unwrap().unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["reason"], "retention");
    assert_eq!(reset.json()["requested"], 2);
    assert_eq!(reset.json()["oldest"], 1);
    assert_eq!(reset.json()["resume_after"], 2);
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(sse.next_of("reading").await.unwrap().pos());
    }
    assert_eq!(got, [7, 8, 9, 10, 11]);

    // A late batch of old readings gets new positions (12 to 16), and
    // retention deletes them as well: a subscriber at 11 is told, and gets
    // only what comes after.
    device
        .send_acked(&batch(3, now - 2 * 3_600_000, 5))
        .await
        .unwrap();
    retention_leaves(&hub, 5).await;
    let mut sse = SseClient::connect(&hub.addr, "/v1/events?last_event_id=11", &[])
        .await
        .unwrap();
    let reset = sse.next_event().await.unwrap().unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["resume_after"], 11);
    device.send_acked(&batch(4, now, 2)).await.unwrap(); // positions 17, 18
    let next = sse.next_of("reading").await.unwrap().pos();
    assert_eq!(next, 17, "the deleted 12 to 16 are not served");

    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[("Last-Event-ID", "999")])
        .await
        .unwrap();
    let reset = sse.next_event().await.unwrap().unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["reason"], "unknown");
    assert_eq!(reset.json()["resume_after"], 18);

    // Asking for everything retained is not news, and is what is retained.
    let mut sse = SseClient::connect(&hub.addr, "/v1/events?last_event_id=0", &[])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 8 {
        let event = sse.next_event().await.unwrap().unwrap();
        got.push((event.event.clone(), event.pos()));
    }
    let reading = |pos| ("reading".to_owned(), pos);
    let mut expected = vec![("status".to_owned(), 1)];
    expected.extend([7, 8, 9, 10, 11, 17, 18].map(reading));
    assert_eq!(got, expected);
}

#[tokio::test]
async fn the_monitor_token_is_required_when_configured() {
    let hub = TestHub::start(&["--monitor-token", "s3cret/+"])
        .await
        .unwrap();
    for path in ["/v1/events", "/v1/devices", "/v1/readings"] {
        let (status, body) = hub.get(path).await.unwrap();
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body.contains("unauthorized"));
        let (status, _) = testkit::http::get(&hub.addr, path, &[("Authorization", "Bearer wrong")])
            .await
            .unwrap();
        assert_eq!(status, 401, "{path}");
    }
    let (status, _) = testkit::http::get(
        &hub.addr,
        "/v1/devices",
        &[("Authorization", "Bearer s3cret/+")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = testkit::http::get(
        &hub.addr,
        "/v1/readings",
        &[("Cookie", "a=b; hub_token=s3cret/+")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    SseClient::connect(&hub.addr, "/v1/events?token=s3cret%2F%2B", &[])
        .await
        .unwrap();
    // ?token= works on every monitor endpoint, as the README says.
    for path in ["/v1/devices", "/v1/readings"] {
        let (status, body) = hub
            .get(&format!("{path}?token=s3cret%2F%2B"))
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Devices, health and the page do not use the monitor token.
    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let (status, page) = hub.get("/").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("EventSource"));
}

#[tokio::test]
async fn subscribers_past_the_limit_get_503_with_retry_after() {
    let hub = TestHub::start(&["--max-subscribers", "2"]).await.unwrap();
    let _a = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    let _b = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    let third = SseClient::open(&hub.addr, "/v1/events", &[]).await.unwrap();
    assert_eq!(third.status, 503);
    assert_eq!(third.headers["retry-after"], "5");
    drop(_a);
    // The slot comes back once the hub notices the closed connection.
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let status = SseClient::open(&hub.addr, "/v1/events", &[])
            .await
            .unwrap()
            .status;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_streams_get_keep_alives_and_a_retry_hint() {
    let hub = TestHub::start(&["--keep-alive", "200ms", "--sse-retry", "3s"])
        .await
        .unwrap();
    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    let text = sse.read_raw_for(Duration::from_millis(700)).await;
    assert!(text.starts_with("retry: 3000\n\n"), "{text:?}");
    assert!(text.matches(": keep-alive\n\n").count() >= 2, "{text:?}");
}

#[tokio::test]
async fn bad_parameters_get_400_naming_them() {
    let hub = TestHub::start(&[]).await.unwrap();
    for (path, parameter) in [
        ("/v1/events?last_event_id=abc", "last_event_id"),
        ("/v1/events?since=4", "since"),
    ] {
        let (status, body) = hub.get(path).await.unwrap();
        assert_eq!(status, 400, "{path}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["parameter"], parameter);
    }
    let (status, _) = testkit::http::get(&hub.addr, "/v1/events", &[("Last-Event-ID", "x")])
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn streams_end_promptly_when_the_hub_stops() {
    let hub = TestHub::start(&[]).await.unwrap();
    let mut reading = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    let _stalled = SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, _) = hub.terminate().await.unwrap();
    assert!(status.success());
    assert!(
        reading.next_event().await.unwrap().is_none(),
        "the stream ended"
    );
    // Bounded by the hub's 5 s HTTP grace, far below the test's patience.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn the_page_trades_its_token_for_a_strict_cookie_that_other_sites_cannot_use() {
    let hub = TestHub::start(&["--monitor-token", "t0k3n"]).await.unwrap();
    hub.add_device("dev-1").await.unwrap();
    let client = testkit::http::client();
    let response = client.get(hub.url("/?token=t0k3n")).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("hub_token=t0k3n;"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    // A wrong token gets the page, not a cookie.
    let response = client.get(hub.url("/?token=wrong")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("set-cookie").is_none());

    let command = |origin: String| {
        client
            .post(hub.url("/v1/devices/dev-1/commands"))
            .header("cookie", "hub_token=t0k3n")
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(r#"{"name": "ping"}"#)
            .send()
    };
    // From another site, the cookie does not authorize a command...
    let response = command("https://evil.example".into()).await.unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "cross_site");
    // ...from the hub's own page it does (the device is offline: 409).
    let own = format!("http://{}", hub.addr);
    assert_eq!(command(own).await.unwrap().status(), 409);
}
