//! Alerts against the real hub: each kind of rule fires and resolves at
//! the right reading or time, a dead band holds a flapping value to one
//! alert, acknowledgements, the live stream's `alert` events and their
//! resume, restarts mid-alert, and bad rules refused with the field named.

use std::time::Duration;

use e2e::alertmanager::Alertmanager;
use e2e::{RawDevice, SseClient, SseEvent, TestHub};
use protocol::{Batch, DeviceFrame, Reading};
use serde_json::{Value, json};

/// One temperature reading per value, one second apart from `base_ms`, in
/// one batch.
fn readings(seq: u64, base_ms: u64, values: &[f64]) -> DeviceFrame {
    DeviceFrame::Batch(Batch {
        seq,
        base_ms,
        readings: values
            .iter()
            .enumerate()
            .map(|(i, value)| Reading {
                metric: 1,
                offset_ms: i as u32 * 1_000,
                value: *value,
            })
            .collect(),
    })
}

/// Sends each value as a batch of its own (seq from `first_seq`) and
/// waits for each Ack.
async fn send(device: &mut RawDevice, first_seq: u64, values: &[f64]) {
    for (i, value) in values.iter().enumerate() {
        let seq = first_seq + i as u64;
        device
            .send_acked(&readings(seq, 1_000_000 + seq * 1_000, &[*value]))
            .await
            .unwrap();
    }
}

async fn add_rule(hub: &TestHub, rule: Value) -> Value {
    let (status, body) = hub
        .post("/v1/alert-rules", &rule.to_string())
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Every transition stored, as `alert_events` shows it: (alert, state,
/// value).
async fn history(hub: &TestHub) -> Vec<(i64, String, Option<f64>)> {
    let db = hub.db().await.unwrap();
    let rows = sqlx::query_as("SELECT alert, state, value FROM alert_events ORDER BY pos")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    rows
}

/// Waits until `alert_events` holds `count` transitions.
async fn until_transitions(hub: &TestHub, count: usize) -> Vec<(i64, String, Option<f64>)> {
    let deadline = tokio::time::Instant::now() + 2 * e2e::PATIENCE;
    loop {
        let stored = history(hub).await;
        if stored.len() >= count {
            return stored;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} transitions, have {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_alert(sse: &mut SseClient) -> SseEvent {
    sse.next_of("alert").await.unwrap()
}

#[tokio::test]
async fn a_threshold_fires_holds_through_its_dead_band_is_acknowledged_and_resolves() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("freezer-1").await.unwrap();
    let rule = add_rule(
        &hub,
        json!({"name": "warm", "kind": "threshold", "device": "freezer-*",
               "metric": "temperature", "condition": "above", "limit": 50.0,
               "dead_band": 5.0, "severity": "critical"}),
    )
    .await;
    assert_eq!(
        rule["message"],
        "{device} {metric} is {value} (limit {limit})"
    );
    let mut sse = SseClient::connect(&hub.addr, "/v1/events?types=alert", &[])
        .await
        .unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("freezer-1").await.unwrap();

    send(&mut device, 1, &[10.0, 60.0]).await;
    let firing = next_alert(&mut sse).await;
    let data = firing.json();
    assert_eq!(data["state"], "firing");
    assert_eq!(data["device"], "freezer-1");
    assert_eq!(data["rule"], "warm");
    assert_eq!(data["value"], 60.0);
    assert_eq!(data["severity"], "critical");
    assert_eq!(data["message"], "freezer-1 temperature is 60 (limit 50)");
    assert_eq!(
        data["alert"],
        firing.pos(),
        "an alert's id is its firing event's"
    );
    let id = firing.pos();

    // Acknowledged by a person: once.
    let ack = json!({"by": "ana", "note": "door open"}).to_string();
    let (status, body) = hub
        .post(&format!("/v1/alerts/{id}/ack"), &ack)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let alert: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["state"], "acknowledged");
    assert_eq!(alert["acknowledged_by"], "ana");
    let acknowledged = next_alert(&mut sse).await;
    assert_eq!(acknowledged.json()["state"], "acknowledged");
    assert_eq!(acknowledged.json()["alert"], id);
    let (status, body) = hub
        .post(&format!("/v1/alerts/{id}/ack"), &ack)
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already_acknowledged"), "{body}");
    let (status, body) = hub.post("/v1/alerts/999999/ack", &ack).await.unwrap();
    assert_eq!(status, 404, "{body}");

    // Hovering at the limit, never past the dead band: nothing happens.
    // Then past it: resolved, at that reading.
    send(&mut device, 3, &[49.0, 51.0, 46.0, 55.0, 45.5, 44.0]).await;
    let resolved = next_alert(&mut sse).await;
    assert_eq!(resolved.json()["state"], "resolved");
    assert_eq!(resolved.json()["value"], 44.0);
    assert_eq!(resolved.json()["alert"], id);
    let (status, body) = hub
        .post(&format!("/v1/alerts/{id}/ack"), &ack)
        .await
        .unwrap();
    assert_eq!(status, 409, "a resolved alert is not acknowledged: {body}");

    // Storage: the history and the current state, as sqlite3 users see them.
    let stored = until_transitions(&hub, 3).await;
    assert_eq!(
        stored,
        [
            (id, "firing".into(), Some(60.0)),
            (id, "acknowledged".into(), None),
            (id, "resolved".into(), Some(44.0)),
        ]
    );
    let db = hub.db().await.unwrap();
    let (state, by, note, fired, resolved_ms): (String, String, String, i64, Option<i64>) =
        sqlx::query_as(
            "SELECT state, acknowledged_by, note, fired_ms, resolved_ms FROM alerts WHERE id = ?",
        )
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        (state.as_str(), by.as_str(), note.as_str()),
        ("resolved", "ana", "door open")
    );
    assert!(resolved_ms.is_some_and(|at| at >= fired));
    db.close().await;
    let (_, body) = hub.get("/v1/alerts").await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["alerts"],
        json!([])
    );
    let (_, body) = hub.get("/v1/alerts?state=all").await.unwrap();
    let all: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(all["alerts"][0]["id"], id);
    assert_eq!(all["alerts"][0]["state"], "resolved");

    // A browser that was away resumes after the firing event and gets
    // exactly the rest, alerts only.
    let last = id.to_string();
    let mut resumed = SseClient::connect(
        &hub.addr,
        "/v1/events?types=alert",
        &[("Last-Event-ID", &last)],
    )
    .await
    .unwrap();
    let again = next_alert(&mut resumed).await;
    assert_eq!(
        (again.pos(), again.json()["state"].clone()),
        (acknowledged.pos(), json!("acknowledged"))
    );
    let again = next_alert(&mut resumed).await;
    assert_eq!(again.pos(), resolved.pos());
}

#[tokio::test]
async fn a_windowed_mean_held_for_a_while_fires_on_the_mean_not_a_spike() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("oven").await.unwrap();
    add_rule(
        &hub,
        json!({"name": "hot", "kind": "threshold", "device": "oven", "metric": "temperature",
               "condition": "outside", "low": 0.0, "high": 100.0,
               "aggregate": "mean", "window": "3s", "for": "1s"}),
    )
    .await;
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("oven").await.unwrap();
    // A spike (the mean of 50, 50, 200 is 100: not outside), then the mean
    // of the last three goes past 100 (50, 200, 250: 166.7) and is still
    // past it a second later (50, 250, 250: 183.3): fired; the 10s bring
    // it back inside.
    device
        .send_acked(&readings(
            1,
            1_000_000,
            &[50.0, 50.0, 200.0, 50.0, 250.0, 250.0, 10.0, 10.0, 10.0],
        ))
        .await
        .unwrap();
    let stored = until_transitions(&hub, 2).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0].1, "firing");
    let fired = stored[0].2.unwrap();
    assert!(
        (fired - 550.0 / 3.0).abs() < 1e-9,
        "fired on the mean of 50, 250, 250: {fired}"
    );
    assert_eq!(stored[1].1, "resolved");
}

#[tokio::test]
async fn silence_and_offline_rules_fire_by_the_hubs_clock_and_resolve() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("sensor-1").await.unwrap();
    // Through the command line, while the hub runs.
    for args in [
        &[
            "alert",
            "add",
            "quiet",
            "--kind",
            "silence",
            "--metric",
            "temperature",
            "--for",
            "1s",
        ][..],
        &[
            "alert",
            "add",
            "gone",
            "--kind",
            "offline",
            "--device",
            "sensor-?",
            "--for",
            "1s",
            "--severity",
            "critical",
        ],
    ] {
        let out = hub.cli(args).await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = hub.cli(&["alert", "list", "--json"]).await.unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "gone");
    assert_eq!(listed[1]["name"], "quiet");
    let mut sse = SseClient::connect(&hub.addr, "/v1/events?types=alert", &[])
        .await
        .unwrap();
    hub.until_rules(2).await.unwrap();

    let mut device = hub.connect(&token).await.unwrap();
    device.hello("sensor-1").await.unwrap();
    send(&mut device, 1, &[20.0]).await;
    // Connected, but nothing more: silence.
    let quiet = next_alert(&mut sse).await;
    assert_eq!(
        (quiet.json()["rule"].clone(), quiet.json()["state"].clone()),
        (json!("quiet"), json!("firing"))
    );
    send(&mut device, 2, &[21.0]).await;
    let back = next_alert(&mut sse).await;
    assert_eq!(
        (back.json()["rule"].clone(), back.json()["state"].clone()),
        (json!("quiet"), json!("resolved"))
    );
    assert_eq!(back.json()["alert"], quiet.pos());

    // Disconnected: offline (and silent again), then back.
    drop(device);
    let mut fired = Vec::new();
    while fired.len() < 2 {
        let event = next_alert(&mut sse).await;
        assert_eq!(event.json()["state"], "firing");
        fired.push(event.json()["rule"].as_str().unwrap().to_owned());
    }
    fired.sort();
    assert_eq!(fired, ["gone", "quiet"]);
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("sensor-1").await.unwrap();
    let online_again = next_alert(&mut sse).await;
    assert_eq!(
        (
            online_again.json()["rule"].clone(),
            online_again.json()["state"].clone()
        ),
        (json!("gone"), json!("resolved"))
    );

    // A rule removed resolves its alerts.
    let out = hub.cli(&["alert", "remove", "quiet"]).await.unwrap();
    assert!(out.status.success());
    let removed = next_alert(&mut sse).await;
    assert_eq!(
        (
            removed.json()["rule"].clone(),
            removed.json()["state"].clone()
        ),
        (json!("quiet"), json!("resolved"))
    );
}

#[tokio::test]
async fn after_a_restart_a_firing_alert_does_not_fire_again_and_what_changed_is_recorded() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("tank").await.unwrap();
    add_rule(
        &hub,
        json!({"name": "full", "kind": "threshold", "metric": "temperature",
               "condition": "above", "limit": 90.0}),
    )
    .await;
    add_rule(
        &hub,
        json!({"name": "away", "kind": "offline", "device": "tank", "for": "1s"}),
    )
    .await;
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("tank").await.unwrap();
    send(&mut device, 1, &[95.0]).await;
    drop(device);
    let stored = until_transitions(&hub, 2).await;
    let (full, away) = (stored[0].0, stored[1].0);
    assert_eq!(stored[1].1, "firing");
    let db = hub.db_path();
    let dir = hub.kill().await.unwrap();
    // While the hub is down, a rule with an alert firing goes.
    let out = e2e::cli_on(&db, &["alert", "remove", "away"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Still above after the restart: the alert firing is the same one.
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("tank").await.unwrap();
    send(&mut device, 2, &[97.0, 99.0]).await;
    // Back below, and the hub killed at once: the evaluator may or may not
    // have seen it.
    send(&mut device, 4, &[50.0]).await;
    drop(device);
    let dir = hub.kill().await.unwrap();

    let hub = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    until_transitions(&hub, 4).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // nothing more comes
    assert_eq!(
        history(&hub).await,
        [
            (full, "firing".into(), Some(95.0)),
            (away, "firing".into(), None),
            (away, "resolved".into(), None),
            (full, "resolved".into(), Some(50.0)),
        ]
    );
}

#[tokio::test]
async fn bad_rules_are_refused_naming_the_field() {
    let hub = TestHub::start(&[]).await.unwrap();
    let base = json!({"name": "r", "kind": "threshold", "metric": "t", "condition": "above", "limit": 1.0});
    let with = |key: &str, value: Value| {
        let mut rule = base.clone();
        rule[key] = value;
        rule
    };
    for (rule, field) in [
        (with("kind", json!("meteor")), "kind"),
        (with("condition", json!("outside")), "limit"),
        (
            json!({"name": "b", "kind": "threshold", "metric": "t", "condition": "outside", "low": 5.0, "high": 1.0}),
            "low",
        ),
        (
            json!({"name": "w", "kind": "threshold", "metric": "t", "condition": "above", "limit": 1.0, "aggregate": "max", "window": "0s"}),
            "window",
        ),
        (with("device", json!("freezer-[0-9]")), "device"),
        (with("name", json!("has space")), "name"),
        (with("message", json!("{device} at {when}")), "message"),
        (json!({"name": "s", "kind": "silence"}), "for"),
    ] {
        let (status, body) = hub
            .post("/v1/alert-rules", &rule.to_string())
            .await
            .unwrap();
        assert_eq!(status, 400, "{rule}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["parameter"], field, "{rule}: {body}");
    }
    let (status, body) = hub
        .post(
            "/v1/alert-rules",
            r#"{"name": "r", "kind": "threshold", "colour": 1}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    add_rule(&hub, base.clone()).await;
    let (status, body) = hub
        .post("/v1/alert-rules", &base.to_string())
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    let (status, _) =
        testkit::http::request(&hub.addr, "DELETE", "/v1/alert-rules/nope", &[], None)
            .await
            .unwrap();
    assert_eq!(status, 404);
    let (status, _) = testkit::http::request(&hub.addr, "DELETE", "/v1/alert-rules/r", &[], None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, body) = hub.get("/v1/alerts?state=sleeping").await.unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = hub.get("/v1/events?types=reading,gossip").await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("types"), "{body}");
    let (status, body) = hub.post("/v1/alerts/1/ack", r#"{"by": ""}"#).await.unwrap();
    assert_eq!(status, 400, "{body}");

    // The command line: exit status 2, the flag named.
    for (args, flag) in [
        (
            &[
                "alert",
                "add",
                "x",
                "--kind",
                "threshold",
                "--metric",
                "t",
                "--outside",
                "5:1",
            ][..],
            "--outside",
        ),
        (
            &[
                "alert",
                "add",
                "x",
                "--kind",
                "threshold",
                "--metric",
                "t",
                "--above",
                "1",
                "--aggregate",
                "mean",
                "--window",
                "0s",
            ],
            "--window",
        ),
        (
            &["alert", "add", "x", "--kind", "comet", "--for", "1m"],
            "--kind",
        ),
        (
            &[
                "alert", "add", "x", "--kind", "silence", "--device", "a b", "--for", "1m",
            ],
            "--device",
        ),
    ] {
        let out = hub.cli(args).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let out = hub.cli(&["alert", "remove", "nope"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn every_transition_reaches_alertmanager_across_its_outages() {
    let mut manager = Alertmanager::start().await.unwrap();
    let url = manager.url();
    let hub = TestHub::start(&["--alertmanager-url", &url, "--alertmanager-resend", "1s"])
        .await
        .unwrap();
    let token = hub.add_device("freezer-7").await.unwrap();
    add_rule(
        &hub,
        json!({"name": "warm", "kind": "threshold", "device": "freezer-*",
               "metric": "temperature", "condition": "above", "limit": 50.0,
               "severity": "critical", "message": "{device} is at {value}"}),
    )
    .await;
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("freezer-7").await.unwrap();
    let warm = |status: &'static str| {
        move |alert: &Value| alert["status"] == status && alert["labels"]["alertname"] == "warm"
    };

    // Fired while Alertmanager is away: it hears of it once back.
    manager.stop().await.unwrap();
    send(&mut device, 1, &[60.0]).await;
    until_transitions(&hub, 1).await;
    manager.resume().await.unwrap();
    let firing = manager.until(warm("firing")).await.unwrap();
    assert_eq!(firing["labels"]["device"], "freezer-7");
    assert_eq!(firing["labels"]["metric"], "temperature");
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(firing["annotations"]["message"], "freezer-7 is at 60");

    // Resolved while it is away again: it hears of that too.
    manager.stop().await.unwrap();
    send(&mut device, 2, &[40.0]).await;
    until_transitions(&hub, 2).await;
    manager.resume().await.unwrap();
    let resolved = manager.until(warm("resolved")).await.unwrap();
    assert_eq!(resolved["labels"]["device"], "freezer-7");
    assert_eq!(resolved["startsAt"], firing["startsAt"]);
}
