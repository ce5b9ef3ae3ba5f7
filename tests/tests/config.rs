//! Device configuration against the real hub and device-sim: a change
//! reaches every device of a group, the offline ones when they connect,
//! and their next readings follow it (in the stored timestamps); a refusal
//! is kept with its reason; `If-Match` races have one winner; a change
//! survives a restart before its delivery; a device that never answers is
//! sent a version three times, and one of an older protocol never; bad
//! bodies get 400 naming the problem; the command line changes it too.

use std::sync::Arc;
use std::time::Duration;

use device_sim::device::{self, DeviceSettings, DeviceSpec};
use device_sim::sensors::SensorKind;
use device_sim::stats::Stats;
use e2e::{PATIENCE, RawDevice, SseClient, TestHub};
use protocol::{ConfigResult, DeviceFrame, HubFrame};
use serde_json::{Value, json};
use telemetry_device::backoff::Backoff;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A device-sim device of the hub, sampling temperature at the hub's
/// interval (or its configuration's), one reading a batch, until stopped.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<bool>,
    stats: Arc<Stats>,
}

fn run_device(hub: &TestHub, id: &str, token: &str) -> Running {
    let settings = Arc::new(DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        batch: 1,
        flush: Duration::from_millis(20),
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(300),
        },
        ..DeviceSettings::new(hub.ws_url())
    });
    let spec = DeviceSpec {
        id: id.into(),
        credential: token.into(),
        seed: 7,
        start_delay: Duration::ZERO,
        misbehaves: false,
    };
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(device::run(
        spec,
        settings,
        Arc::clone(&stats),
        stop.clone(),
        CancellationToken::new(),
    ));
    Running { stop, task, stats }
}

impl Running {
    async fn finish(self) {
        self.stop.cancel();
        let delivered = tokio::time::timeout(PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
        assert!(delivered, "the device delivered what it sampled");
    }
}

async fn call(hub: &TestHub, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, text) = testkit::http::request(&hub.addr, method, path, &[], body)
        .await
        .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn config_of(hub: &TestHub, device: &str) -> Value {
    let (status, body) = call(hub, "GET", &format!("/v1/devices/{device}/config"), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the device's configuration stands at `state`.
async fn until_state(hub: &TestHub, device: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
    loop {
        let config = config_of(hub, device).await;
        if config["state"] == state {
            return config;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{device} never stood {state}: {config}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `hub device config ID args…` against the running hub's API.
async fn hub_config(hub: &TestHub, id: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(e2e::hub_binary())
        .args(["device", "config", id])
        .args(args)
        .args(["--hub", &format!("http://{}", hub.addr)])
        .output()
        .await
        .unwrap()
}

/// The gaps between a device's stored temperature readings after
/// `after_ms`, once there are at least `at_least` of them.
async fn gaps_after(hub: &TestHub, device: &str, after_ms: i64, at_least: usize) -> Vec<i64> {
    let db = hub.db().await.unwrap();
    let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
    loop {
        let times: Vec<i64> = sqlx::query_scalar(
            "SELECT ts_ms FROM readings WHERE device = ? AND metric = 'temperature' AND ts_ms > ?
             ORDER BY ts_ms",
        )
        .bind(device)
        .bind(after_ms)
        .fetch_all(&db)
        .await
        .unwrap();
        let gaps: Vec<i64> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
        if gaps.len() >= at_least {
            return gaps;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{device}: only {gaps:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_group_change_reaches_every_device_the_offline_ones_at_reconnect_and_readings_follow_it()
{
    let hub = TestHub::start(&["--sample-interval", "100ms"])
        .await
        .unwrap();
    let mut tokens = Vec::new();
    for id in ["freezer-1", "freezer-2", "freezer-3"] {
        tokens.push(hub.add_device_in(id, "freezers").await.unwrap());
    }
    let online: Vec<Running> = (0..2)
        .map(|i| run_device(&hub, &format!("freezer-{}", i + 1), &tokens[i]))
        .collect();
    for id in ["freezer-1", "freezer-2"] {
        hub.until_online(id).await.unwrap();
    }
    let mut events = SseClient::open(&hub.addr, "/v1/events?types=config", &[])
        .await
        .unwrap();

    let (status, body) = call(
        &hub,
        "PATCH",
        "/v1/groups/freezers/config",
        Some(&json!({"sample_interval_ms": 600}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"].as_array().unwrap().len(), 3, "{body}");
    for id in ["freezer-1", "freezer-2"] {
        let config = until_state(&hub, id, "applied").await;
        assert_eq!(config["version"], 1);
        assert_eq!(config["reported"]["version"], 1);
        assert_eq!(config["desired"], json!({"sample_interval_ms": 600}));
    }
    // Offline: stored, waiting for it.
    let offline = config_of(&hub, "freezer-3").await;
    assert_eq!(offline["state"], "pending", "{offline}");
    assert_eq!(offline["pending"], true);

    // Two changes while it is away: it gets the last, once.
    for interval in [700, 800] {
        let (status, _) = call(
            &hub,
            "PATCH",
            "/v1/devices/freezer-3/config",
            Some(&json!({"sample_interval_ms": interval}).to_string()),
        )
        .await;
        assert_eq!(status, 200);
    }
    let late = run_device(&hub, "freezer-3", &tokens[2]);
    let config = until_state(&hub, "freezer-3", "applied").await;
    assert_eq!(config["reported"]["version"], 3, "{config}");
    assert_eq!(
        late.stats
            .configs_applied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Readings at the new intervals.
    for (id, interval) in [("freezer-1", 600), ("freezer-2", 600), ("freezer-3", 800)] {
        let applied_ms = config_of(&hub, id).await["reported"]["ms"]
            .as_i64()
            .unwrap();
        // The first gap after the answer may be cut short by the old ticker.
        let gaps = gaps_after(&hub, id, applied_ms, 3).await;
        for gap in &gaps[1..] {
            assert!(
                (interval - 50..interval + 300).contains(gap),
                "{id} samples every {interval} ms: {gaps:?}"
            );
        }
    }

    // The stream told both sides of each change.
    let mut seen = Vec::new();
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(Duration::from_millis(500), events.next_event()).await
    {
        let data = event.json();
        seen.push((
            data["device"].as_str().unwrap().to_owned(),
            data["side"].as_str().unwrap().to_owned(),
            data["version"].as_u64().unwrap(),
        ));
    }
    for id in ["freezer-1", "freezer-2"] {
        assert!(seen.contains(&(id.into(), "desired".into(), 1)), "{seen:?}");
        assert!(
            seen.contains(&(id.into(), "reported".into(), 1)),
            "{seen:?}"
        );
    }
    assert!(
        seen.contains(&("freezer-3".into(), "reported".into(), 3)),
        "{seen:?}"
    );
    assert!(
        !seen.contains(&("freezer-3".into(), "reported".into(), 1)),
        "{seen:?}"
    );

    // History for sqlite3 users.
    let db = hub.db().await.unwrap();
    let history: Vec<(String, i64)> = sqlx::query_as(
        "SELECT side, version FROM config_history WHERE device = 'freezer-3' ORDER BY pos",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            ("desired".into(), 1),
            ("desired".into(), 2),
            ("desired".into(), 3),
            ("reported".into(), 3)
        ]
    );
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT device, state FROM device_config ORDER BY device")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(
        states.iter().all(|(_, state)| state == "applied"),
        "{states:?}"
    );
    for device in online.into_iter().chain([late]) {
        device.finish().await;
    }
}

#[tokio::test]
async fn a_refusal_is_kept_with_its_reason_and_the_device_runs_what_it_ran() {
    let hub = TestHub::start(&["--sample-interval", "100ms"])
        .await
        .unwrap();
    let token = hub.add_device("d1").await.unwrap();
    let device = run_device(&hub, "d1", &token);
    hub.until_online("d1").await.unwrap();
    let (status, _) = call(
        &hub,
        "PUT",
        "/v1/devices/d1/config",
        Some(&json!({"sample_interval_ms": 300, "colour": "red"}).to_string()),
    )
    .await;
    assert_eq!(status, 200);
    let config = until_state(&hub, "d1", "refused").await;
    assert_eq!(config["reported"]["version"], 0, "{config}");
    assert!(config["reported"].get("config").is_none(), "{config}");
    assert_eq!(config["reported"]["answer"]["ok"], false);
    assert_eq!(
        config["reported"]["answer"]["detail"],
        "unknown key: colour"
    );
    assert_eq!(config["pending"], false);
    // Refused whole: it still samples at the hub's 100 ms.
    let answered_ms = config["reported"]["answer"]["ms"].as_i64().unwrap();
    let gaps = gaps_after(&hub, "d1", answered_ms, 8).await;
    assert!(gaps.iter().all(|gap| *gap < 250), "{gaps:?}");
    // A corrected configuration goes through.
    let (status, _) = call(
        &hub,
        "PATCH",
        "/v1/devices/d1/config",
        Some(r#"{"colour": null}"#),
    )
    .await;
    assert_eq!(status, 200);
    let config = until_state(&hub, "d1", "applied").await;
    assert_eq!(config["desired"], json!({"sample_interval_ms": 300}));
    assert_eq!(config["reported"]["config"], config["desired"], "{config}");
    // Refused again: the view shows what the device runs beside what it
    // was asked to run.
    let (status, _) = call(
        &hub,
        "PATCH",
        "/v1/devices/d1/config",
        Some(r#"{"colour": "blue"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let config = until_state(&hub, "d1", "refused").await;
    assert_eq!(config["reported"]["version"], 2, "{config}");
    assert_eq!(
        config["reported"]["config"],
        json!({"sample_interval_ms": 300})
    );
    assert_eq!(
        config["desired"],
        json!({"sample_interval_ms": 300, "colour": "blue"})
    );
    device.finish().await;
}

#[tokio::test]
async fn concurrent_changes_with_if_match_have_one_winner_and_the_loser_gets_412() {
    let hub = TestHub::start(&[]).await.unwrap();
    hub.add_device("d1").await.unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/devices/d1/config", hub.addr);
    let put = |value: u32, version: &'static str| {
        client
            .put(&url)
            .header("content-type", "application/json")
            .header("if-match", version)
            .body(json!({"sample_interval_ms": value}).to_string())
            .send()
    };
    let (a, b) = tokio::join!(put(1000, "\"0\""), put(2000, "\"0\""));
    let mut statuses = [a.unwrap().status().as_u16(), b.unwrap().status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412]);
    let answer = client.get(&url).send().await.unwrap();
    assert_eq!(answer.headers()["etag"], "\"1\"");
    // The ETag makes the next change conditional; an old one is refused.
    let next = put(3000, "\"1\"").await.unwrap();
    assert_eq!(next.status().as_u16(), 200);
    assert_eq!(next.headers()["etag"], "\"2\"");
    let stale = put(4000, "\"1\"").await.unwrap();
    assert_eq!(stale.status().as_u16(), 412);
    let body: Value = serde_json::from_str(&stale.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "version_mismatch");
    let bad = put(4000, "soon").await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(
        config_of(&hub, "d1").await["desired"]["sample_interval_ms"],
        3000
    );
}

#[tokio::test]
async fn bad_bodies_get_400_naming_the_problem_and_change_nothing() {
    let hub = TestHub::start(&[]).await.unwrap();
    hub.add_device("d1").await.unwrap();
    let deep = json!({"a": {"b": {"c": {"d": {"e": 1}}}}}).to_string();
    let long_text = json!({"s": "x".repeat(300)}).to_string();
    let big: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("k{i}"), json!("x".repeat(250))))
        .collect();
    let big = Value::Object(big).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("PUT", "[1, 2]".into(), "config"),
        ("PUT", "\"text\"".into(), "config"),
        ("PATCH", "3".into(), "config"),
        ("PUT", deep, "config.a.b.c.d"),
        ("PUT", long_text, "config.s"),
        ("PUT", big, "config"),
        ("PUT", json!({"bad key": 1}).to_string(), "config"),
        ("PUT", json!({"a": null}).to_string(), "config.a"),
    ];
    for (method, body, parameter) in cases {
        let (status, answer) = call(&hub, method, "/v1/devices/d1/config", Some(&body)).await;
        assert_eq!(status, 400, "{method} {body}: {answer}");
        assert_eq!(answer["parameter"], parameter, "{method} {body}: {answer}");
    }
    let (status, answer) = call(&hub, "PUT", "/v1/devices/d1/config", Some("{not json")).await;
    assert_eq!(status, 400, "{answer}");
    let huge = json!({"s": "x".repeat(20_000)}).to_string();
    let (status, _) = call(&hub, "PUT", "/v1/devices/d1/config", Some(&huge)).await;
    assert_eq!(status, 413);
    let (status, answer) = call(&hub, "PUT", "/v1/devices/nobody/config", Some("{}")).await;
    assert_eq!(status, 404, "{answer}");
    let config = config_of(&hub, "d1").await;
    assert_eq!(config["version"], 0, "{config}");
    assert_eq!(config["state"], "none");
    // The command line names the setting at fault.
    let out = hub_config(&hub, "d1", &["no-equals"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-equals"));
}

#[tokio::test]
async fn the_command_line_changes_a_configuration_through_the_running_hub() {
    let hub = TestHub::start(&[]).await.unwrap();
    hub.add_device("d1").await.unwrap();
    let out = hub_config(&hub, "d1", &["sample_interval_ms=5000", "mode=eco"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["version"], 1);
    assert_eq!(
        shown["desired"],
        json!({"sample_interval_ms": 5000, "mode": "eco"})
    );
    let out = hub_config(&hub, "d1", &["mode=null", "--if-version", "1"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hub_config(&hub, "d1", &["mode=x", "--if-version", "1"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("412"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = hub_config(&hub, "d1", &[]).await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["desired"], json!({"sample_interval_ms": 5000}));
    assert_eq!(shown["version"], 2);
    // Audited, with who and what.
    let db = hub.db().await.unwrap();
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_events WHERE kind = 'audit'
         AND json_extract(body, '$.action') = 'config.set'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(audited, 2);
}

/// The hub's next frame to a raw device that has just said Hello.
async fn next_frame(device: &mut RawDevice) -> HubFrame {
    device.recv().await.unwrap()
}

#[tokio::test]
async fn a_change_survives_a_restart_before_its_delivery() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("d1").await.unwrap();
    let (status, _) = call(
        &hub,
        "PUT",
        "/v1/devices/d1/config",
        Some(&json!({"sample_interval_ms": 5000}).to_string()),
    )
    .await;
    assert_eq!(status, 200);
    // Killed right after the answer: the change was stored before it.
    let dir = hub.kill().await.unwrap();
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("d1").await.unwrap();
    let HubFrame::Config(config) = next_frame(&mut device).await else {
        panic!("the configuration comes right after Welcome");
    };
    assert_eq!(config.version, 1);
    assert_eq!(config.json, r#"{"sample_interval_ms":5000}"#);
    // Reconnecting before answering: sent again.
    drop(device);
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("d1").await.unwrap();
    assert!(matches!(next_frame(&mut device).await, HubFrame::Config(_)));
    // An answer to a version never desired changes nothing. The session
    // handles frames in order, so once the batch after it is acknowledged
    // it has been judged.
    device
        .send(&DeviceFrame::ConfigResult(ConfigResult {
            version: 7,
            ok: true,
            detail: "made up".into(),
        }))
        .await
        .unwrap();
    device
        .send_acked(&e2e::batch(1, 1_000_000, 1))
        .await
        .unwrap();
    let config = config_of(&hub, "d1").await;
    assert_eq!(config["state"], "pending", "{config}");
    assert!(config["reported"].get("answer").is_none(), "{config}");
    device
        .send(&DeviceFrame::ConfigResult(ConfigResult {
            version: 1,
            ok: true,
            detail: String::new(),
        }))
        .await
        .unwrap();
    until_state(&hub, "d1", "applied").await;
    // Applied: the next connection is sent nothing.
    drop(device);
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("d1").await.unwrap();
    device
        .send_acked(&e2e::batch(2, 1_001_000, 1))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_device_that_never_answers_is_sent_a_version_three_times_and_an_older_one_never() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("mute").await.unwrap();
    let old_token = hub.add_device("old").await.unwrap();
    for device in ["mute", "old"] {
        let (status, _) = call(
            &hub,
            "PUT",
            &format!("/v1/devices/{device}/config"),
            Some(&json!({"batch": 5}).to_string()),
        )
        .await;
        assert_eq!(status, 200);
    }
    for attempt in 1..=3 {
        let mut device = hub.connect(&token).await.unwrap();
        device.hello("mute").await.unwrap();
        assert!(
            matches!(next_frame(&mut device).await, HubFrame::Config(_)),
            "delivery {attempt}"
        );
        drop(device);
        // The delivery is noted in the background.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while config_of(&hub, "mute").await["deliveries"] != attempt {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("mute").await.unwrap();
    // Not sent a fourth time: the next frame is the batch's Ack.
    device
        .send_acked(&e2e::batch(1, 1_000_000, 1))
        .await
        .unwrap();
    let config = config_of(&hub, "mute").await;
    assert_eq!(config["state"], "unanswered", "{config}");
    assert_eq!(config["pending"], false);

    // Protocol version 2 has no configuration: never sent, shown as such.
    let mut old = hub.connect(&old_token).await.unwrap();
    let mut hello = e2e::hello("old");
    hello.version = 2;
    old.greet(hello).await.unwrap();
    old.send_acked(&e2e::batch(1, 1_000_000, 1)).await.unwrap();
    until_state(&hub, "old", "unsupported").await;
    // A change resets the count: the mute device is sent the new version.
    let (status, _) = call(
        &hub,
        "PATCH",
        "/v1/devices/mute/config",
        Some(r#"{"batch": 6}"#),
    )
    .await;
    assert_eq!(status, 200);
    let HubFrame::Config(config) = next_frame(&mut device).await else {
        panic!("a change is sent to a connected device");
    };
    assert_eq!(config.version, 2);
}
