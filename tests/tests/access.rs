//! Keys, roles and device groups against the real hub: every endpoint
//! answers each role and scope as documented (403 for a role short of the
//! action, 404 for a device outside the key's groups, as for an unknown
//! one), a key limited to a group sees only its devices in lists, pages
//! and live streams (resumes too), revoked and expired keys stop working
//! and end their open streams, wrong keys from one address are answered
//! 429, and `--monitor-token` stays an admin key.

use std::time::{Duration, Instant};

use e2e::{RawDevice, SseClient, TestHub};
use serde_json::{Value, json};

/// `hub key add` on the hub's file: the key it prints.
async fn key(hub: &TestHub, args: &[&str]) -> String {
    let key = hub.add_key(args).await.unwrap();
    assert!(key.starts_with("hk_") && key.len() == 67, "{key}");
    key
}

async fn call(
    hub: &TestHub,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let bearer = key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    testkit::http::request(&hub.addr, method, path, &headers, body)
        .await
        .unwrap()
}

/// Connects `id` with `token`, says Hello and sends `count` readings, each
/// acknowledged.
async fn stream(hub: &TestHub, id: &str, token: &str, count: u32) -> RawDevice {
    let mut device = hub.connect(token).await.unwrap();
    device.hello(id).await.unwrap();
    device
        .send_acked(&e2e::batch(1, 1_000_000, count))
        .await
        .unwrap();
    device
}

/// The devices each reading, status and alert of a stream concerns, until
/// `quiet` passes without an event.
async fn devices_in(sse: &mut SseClient, quiet: Duration) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Ok(Ok(Some(event))) = tokio::time::timeout(quiet, sse.next_event()).await {
        if matches!(event.event.as_str(), "reading" | "status" | "alert") {
            let device = event.json()["device"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            seen.push((event.event.clone(), device));
        }
    }
    seen
}

#[tokio::test]
async fn every_endpoint_answers_each_role_and_scope_as_documented() {
    let hub = TestHub::start(&[]).await.unwrap();
    hub.add_device_in("in-1", "floor-2").await.unwrap();
    hub.add_device_in("out-1", "floor-3").await.unwrap();
    let viewer = key(&hub, &["--role", "viewer"]).await;
    let operator = key(&hub, &["--role", "operator"]).await;
    let admin = key(&hub, &["--role", "admin", "--name", "root"]).await;
    let scoped_viewer = key(&hub, &["--role", "viewer", "--group", "floor-2"]).await;
    let scoped_operator = key(&hub, &["--role", "operator", "--group", "floor-2"]).await;
    let scoped_admin = key(&hub, &["--role", "admin", "--group", "floor-2"]).await;
    // The hub reads its keys every half second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // (name, key, role rank, scoped)
    let principals = [
        ("viewer", &viewer, 0, false),
        ("operator", &operator, 1, false),
        ("admin", &admin, 2, false),
        ("scoped viewer", &scoped_viewer, 0, true),
        ("scoped operator", &scoped_operator, 1, true),
        ("scoped admin", &scoped_admin, 2, true),
    ];
    for (who, key, rank, scoped) in principals {
        for device in ["in-1", "out-1"] {
            let hidden = scoped && device == "out-1";
            // (method, path, body, role rank needed, what it answers when allowed)
            let unique = format!("{}-{device}", who.replace(' ', "-"));
            let rule = json!({"name": unique, "kind": "offline", "for": "1m"}).to_string();
            let new_device =
                json!({"id": format!("new-{unique}"), "groups": ["floor-2"]}).to_string();
            let rows: Vec<(&str, String, Option<String>, i32, u16)> = vec![
                ("GET", "/v1/me".into(), None, 0, 200),
                ("GET", "/v1/devices".into(), None, 0, 200),
                ("GET", "/v1/devices?group=floor-2".into(), None, 0, 200),
                (
                    "GET",
                    format!("/v1/readings?device={device}"),
                    None,
                    0,
                    if hidden { 404 } else { 200 },
                ),
                (
                    "GET",
                    format!("/v1/readings?device={device}&step=1m&from=0&to=60000"),
                    None,
                    0,
                    if hidden { 404 } else { 200 },
                ),
                ("GET", "/v1/readings".into(), None, 0, 200),
                ("GET", format!("/v1/alerts?device={device}"), None, 0, 200),
                ("GET", "/v1/alert-rules".into(), None, 0, 200),
                // Offline devices: a command that passes the checks is 409.
                (
                    "POST",
                    format!("/v1/devices/{device}/commands"),
                    Some(json!({"name": "blink"}).to_string()),
                    1,
                    if hidden { 404 } else { 409 },
                ),
                (
                    "POST",
                    "/v1/alerts/999999/ack".into(),
                    Some(json!({"by": "me"}).to_string()),
                    1,
                    404,
                ),
                (
                    "POST",
                    "/v1/alert-rules".into(),
                    Some(rule),
                    2,
                    if scoped { 403 } else { 201 },
                ),
                (
                    "DELETE",
                    "/v1/alert-rules/none-such".into(),
                    None,
                    2,
                    if scoped { 403 } else { 404 },
                ),
                (
                    "GET",
                    format!("/v1/devices/{device}/config"),
                    None,
                    0,
                    if hidden { 404 } else { 200 },
                ),
                (
                    "PATCH",
                    format!("/v1/devices/{device}/config"),
                    Some(json!({"sample_interval_ms": 5000}).to_string()),
                    1,
                    if hidden { 404 } else { 200 },
                ),
                (
                    "PUT",
                    format!("/v1/devices/{device}/config"),
                    Some(json!({"sample_interval_ms": 2000}).to_string()),
                    1,
                    if hidden { 404 } else { 200 },
                ),
                // A scoped key reaches the group's devices it sees.
                (
                    "PATCH",
                    "/v1/groups/floor-2/config".into(),
                    Some(json!({"batch": 5}).to_string()),
                    1,
                    200,
                ),
                ("POST", "/v1/admin/devices".into(), Some(new_device), 2, 201),
                (
                    "PATCH",
                    format!("/v1/admin/devices/{device}"),
                    Some(json!({"name": "Renamed"}).to_string()),
                    2,
                    if hidden { 404 } else { 200 },
                ),
                (
                    "GET",
                    "/v1/admin/keys".into(),
                    None,
                    2,
                    if scoped { 403 } else { 200 },
                ),
                ("GET", "/v1/admin/groups".into(), None, 2, 200),
                (
                    "POST",
                    "/v1/admin/backup".into(),
                    None,
                    2,
                    if scoped { 403 } else { 200 },
                ),
                (
                    "POST",
                    "/v1/admin/keys/none-such/revoke".into(),
                    None,
                    2,
                    if scoped { 403 } else { 404 },
                ),
                (
                    "POST",
                    format!("/v1/admin/devices/{device}/token"),
                    None,
                    2,
                    if hidden { 404 } else { 200 },
                ),
                // Last: the device stays listed, revoked.
                (
                    "POST",
                    format!("/v1/admin/devices/{device}/revoke"),
                    None,
                    2,
                    if hidden { 404 } else { 204 },
                ),
            ];
            for (method, path, body, needs, allowed) in rows {
                // Device-independent rows once.
                if device == "out-1" && !path.contains(device) {
                    continue;
                }
                let expected = if rank < needs { 403 } else { allowed };
                let (status, answer) = call(&hub, Some(key), method, &path, body.as_deref()).await;
                assert_eq!(status, expected, "{who} {method} {path}: {answer}");
                let error: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
                if status == 404 && path.contains("out-1") {
                    // Exactly what an unknown device gets: nothing tells
                    // an id outside the scope from one that is not there.
                    let (_, unknown) = call(
                        &hub,
                        Some(key),
                        method,
                        &path.replace("out-1", "nobody"),
                        body.as_deref(),
                    )
                    .await;
                    let unknown: Value = serde_json::from_str(&unknown).unwrap();
                    assert_eq!(error["error"], unknown["error"], "{who} {path}");
                }
            }
            // The live stream opens for every role; what it carries is
            // the next test's.
            let sse = SseClient::open(
                &hub.addr,
                &format!("/v1/events?device={device}"),
                &[("Authorization", &format!("Bearer {key}"))],
            )
            .await
            .unwrap();
            assert_eq!(sse.status, 200, "{who} events");
        }
    }
    // Without a key, or with a wrong one: 401 everywhere.
    for path in [
        "/v1/devices",
        "/v1/readings",
        "/v1/events",
        "/v1/alerts",
        "/v1/admin/keys",
        "/v1/me",
    ] {
        assert_eq!(call(&hub, None, "GET", path, None).await.0, 401, "{path}");
        assert_eq!(
            call(&hub, Some("hk_wrong"), "GET", path, None).await.0,
            401,
            "{path}"
        );
    }
    // Health, the document and the page stay open.
    for path in ["/healthz", "/v1/openapi.json", "/"] {
        assert_eq!(call(&hub, None, "GET", path, None).await.0, 200, "{path}");
    }
}

#[tokio::test]
async fn a_key_of_a_group_sees_only_its_devices_in_lists_pages_and_streams() {
    let hub = TestHub::start(&[]).await.unwrap();
    let in_token = hub.add_device_in("in-1", "floor-2").await.unwrap();
    let out_token = hub.add_device_in("out-1", "floor-3").await.unwrap();
    let admin = key(&hub, &["--role", "admin"]).await;
    let viewer = key(&hub, &["--role", "viewer", "--group", "floor-2"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/alert-rules",
        Some(
            &json!({"name": "hot", "kind": "threshold", "metric": "temperature", "condition": "above", "limit": -1000.0})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    hub.until_rules(1).await.unwrap();

    // A live stream opened before anything happens, and one that resumes
    // from the start afterwards: both carry floor-2's events only.
    let bearer = format!("Bearer {viewer}");
    let mut live = SseClient::connect(&hub.addr, "/v1/events", &[("Authorization", &bearer)])
        .await
        .unwrap();
    let _in_device = stream(&hub, "in-1", &in_token, 3).await;
    let _out_device = stream(&hub, "out-1", &out_token, 3).await;
    let db = hub.db().await.unwrap();
    // Both devices' alerts are stored before the streams are read.
    let deadline = Instant::now() + e2e::PATIENCE;
    loop {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM alerts")
            .fetch_one(&db)
            .await
            .unwrap();
        if count == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "alerts not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await;
    let live_seen = devices_in(&mut live, Duration::from_millis(1_500)).await;
    let mut resumed = SseClient::connect(
        &hub.addr,
        "/v1/events?last_event_id=0",
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    let resumed_seen = devices_in(&mut resumed, Duration::from_millis(1_500)).await;
    // Asking for another group's device or group narrows to nothing.
    let mut asked_out = SseClient::connect(
        &hub.addr,
        "/v1/events?last_event_id=0&device=out-1",
        &[("Authorization", &bearer)],
    )
    .await
    .unwrap();
    let asked_out_seen = devices_in(&mut asked_out, Duration::from_millis(1_000)).await;
    for (name, seen) in [("live", &live_seen), ("resumed", &resumed_seen)] {
        for kind in ["reading", "status", "alert"] {
            assert!(
                seen.iter().any(|(k, d)| k == kind && d == "in-1"),
                "{name}: no {kind} of in-1 in {seen:?}"
            );
        }
        assert!(
            seen.iter().all(|(_, d)| d == "in-1"),
            "{name}: another group's event in {seen:?}"
        );
    }
    assert!(asked_out_seen.is_empty(), "{asked_out_seen:?}");
    // The admin's stream has both, so the filter is the key's doing.
    let mut everything = SseClient::connect(
        &hub.addr,
        "/v1/events?last_event_id=0",
        &[("Authorization", &format!("Bearer {admin}"))],
    )
    .await
    .unwrap();
    let all_seen = devices_in(&mut everything, Duration::from_millis(1_000)).await;
    assert!(all_seen.iter().any(|(_, d)| d == "out-1"), "{all_seen:?}");

    // Lists and pages.
    let ids = |body: &str, list: &str, field: &str| -> Vec<String> {
        let body: Value = serde_json::from_str(body).unwrap();
        body[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item[field].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, body) = call(&hub, Some(&viewer), "GET", "/v1/devices", None).await;
    assert_eq!(ids(&body, "devices", "id"), ["in-1"]);
    let devices: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(devices["devices"][0]["groups"], json!(["floor-2"]));
    let (_, body) = call(&hub, Some(&admin), "GET", "/v1/devices?group=floor-3", None).await;
    assert_eq!(ids(&body, "devices", "id"), ["out-1"]);
    let (_, body) = call(&hub, Some(&viewer), "GET", "/v1/readings", None).await;
    let readings = ids(&body, "readings", "device");
    assert_eq!(readings, ["in-1"; 3], "{body}");
    let (_, body) = call(&hub, Some(&viewer), "GET", "/v1/readings?format=csv", None).await;
    assert!(!body.contains("out-1"), "{body}");
    let (_, body) = call(&hub, Some(&viewer), "GET", "/v1/alerts", None).await;
    assert_eq!(ids(&body, "alerts", "device"), ["in-1"]);
    // An operator of the group may not acknowledge the other group's
    // alert: it is as unknown as its device.
    let operator = key(&hub, &["--role", "operator", "--group", "floor-2"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, body) = call(&hub, Some(&admin), "GET", "/v1/alerts?device=out-1", None).await;
    let out_alert = serde_json::from_str::<Value>(&body).unwrap()["alerts"][0]["id"].clone();
    let (status, body) = call(
        &hub,
        Some(&operator),
        "POST",
        &format!("/v1/alerts/{out_alert}/ack"),
        Some(&json!({"by": "night shift"}).to_string()),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (_, body) = call(&hub, Some(&viewer), "GET", "/v1/alerts?device=in-1", None).await;
    let in_alert = serde_json::from_str::<Value>(&body).unwrap()["alerts"][0]["id"].clone();
    let (status, body) = call(
        &hub,
        Some(&operator),
        "POST",
        &format!("/v1/alerts/{in_alert}/ack"),
        Some(&json!({"by": "night shift"}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// How long after `start` the stream ended (it must end in time).
async fn ended_after(sse: &mut SseClient, start: Instant) -> Duration {
    loop {
        match sse.next_event().await {
            Ok(None) => return start.elapsed(),
            Ok(Some(_)) => {}
            Err(err) => panic!("the stream did not end: {err}"),
        }
    }
}

#[tokio::test]
async fn a_revoked_key_stops_working_and_its_open_streams_end() {
    let hub = TestHub::start(&[]).await.unwrap();
    let admin = key(&hub, &["--role", "admin", "--name", "boss"]).await;
    let by_cli = key(&hub, &["--role", "viewer", "--name", "wall"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/keys",
        Some(&json!({"role": "viewer", "name": "kiosk", "groups": ["floor-2"]}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let made: Value = serde_json::from_str(&body).unwrap();
    let by_api = made["key"].as_str().unwrap().to_owned();
    assert_eq!(made["groups"], json!(["floor-2"]));
    // A key made by the API works at once: it was committed through the
    // writer, and the next reload has it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = call(&hub, Some(&by_api), "GET", "/v1/me", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"key": "kiosk", "role": "viewer", "groups": ["floor-2"]})
    );

    let mut cli_stream = SseClient::connect(
        &hub.addr,
        "/v1/events",
        &[("Authorization", &format!("Bearer {by_cli}"))],
    )
    .await
    .unwrap();
    let mut api_stream = SseClient::connect(
        &hub.addr,
        "/v1/events",
        &[("Authorization", &format!("Bearer {by_api}"))],
    )
    .await
    .unwrap();
    let start = Instant::now();
    let out = hub.cli(&["key", "revoke", "wall"]).await.unwrap();
    assert!(out.status.success());
    let took = ended_after(&mut cli_stream, start).await;
    assert!(took < Duration::from_secs(2), "ended after {took:?}");
    let start = Instant::now();
    let (status, body) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/keys/kiosk/revoke",
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let took = ended_after(&mut api_stream, start).await;
    assert!(took < Duration::from_secs(2), "ended after {took:?}");
    for key in [&by_cli, &by_api] {
        let (status, body) = call(&hub, Some(key), "GET", "/v1/devices", None).await;
        assert_eq!(status, 401, "{key}: {body}");
    }
    // Listed as revoked, never shown.
    let (_, body) = call(&hub, Some(&admin), "GET", "/v1/admin/keys", None).await;
    assert!(
        !body.contains(&by_api) && !body.contains("sha256"),
        "{body}"
    );
    let keys: Value = serde_json::from_str(&body).unwrap();
    let revoked: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["revoked_ms"].is_i64())
        .map(|key| key["name"].as_str().unwrap())
        .collect();
    assert_eq!(revoked, ["kiosk", "wall"]);
    let out = hub.cli(&["key", "list"]).await.unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(
        listed.contains("wall") && listed.contains("revoked"),
        "{listed}"
    );
}

#[tokio::test]
async fn an_expired_key_stops_working_and_ends_its_stream() {
    let hub = TestHub::start(&[]).await.unwrap();
    let brief = key(&hub, &["--role", "viewer", "--expires", "3s"]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let bearer = format!("Bearer {brief}");
    assert_eq!(
        call(&hub, Some(&brief), "GET", "/v1/devices", None).await.0,
        200
    );
    let mut sse = SseClient::connect(&hub.addr, "/v1/events", &[("Authorization", &bearer)])
        .await
        .unwrap();
    let start = Instant::now();
    ended_after(&mut sse, start).await;
    let (status, body) = call(&hub, Some(&brief), "GET", "/v1/devices", None).await;
    assert_eq!(status, 401, "{body}");
    let out = hub.cli(&["key", "list"]).await.unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("expired"));
}

#[tokio::test]
async fn wrong_keys_from_one_address_are_answered_429_for_a_while() {
    let hub = TestHub::start(&[]).await.unwrap();
    let good = key(&hub, &["--role", "viewer"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let (status, _) = call(
            &hub,
            Some(&format!("hk_guess{i}")),
            "GET",
            "/v1/devices",
            None,
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(&statuses[..9], [401; 9]);
    assert_eq!(&statuses[9..], [429; 3]);
    let response = testkit::http::client()
        .get(hub.url("/v1/devices"))
        .header("Authorization", format!("Bearer {good}"))
        .send()
        .await
        .unwrap();
    // The address is refused whatever it presents, for a while.
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "too_many_wrong_keys");
    // Devices are not behind it.
    assert_eq!(call(&hub, None, "GET", "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn the_monitor_token_stays_an_admin_key_beside_keys() {
    let hub = TestHub::start(&["--monitor-token", "s3cret-s3cret"])
        .await
        .unwrap();
    let viewer = key(&hub, &["--role", "viewer"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = call(&hub, Some("s3cret-s3cret"), "GET", "/v1/me", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"role": "admin"})
    );
    assert_eq!(
        call(&hub, Some("s3cret-s3cret"), "GET", "/v1/admin/keys", None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&hub, Some(&viewer), "GET", "/v1/devices", None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&hub, Some(&viewer), "GET", "/v1/admin/keys", None)
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn the_admin_api_manages_devices_and_groups_from_another_machine() {
    let hub = TestHub::start(&[]).await.unwrap();
    let admin = key(&hub, &["--role", "admin"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, body) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/devices",
        Some(&json!({"id": "boiler-3", "name": "Boiler 3", "groups": ["plant"]}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The token works at once.
    let mut device = stream(&hub, "boiler-3", &token, 1).await;
    let (status, _) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/devices",
        Some(&json!({"id": "boiler-3"}).to_string()),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = call(
        &hub,
        Some(&admin),
        "PATCH",
        "/v1/admin/devices/boiler-3",
        Some(&json!({"join": ["floor-1"], "leave": ["plant"]}).to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"id": "boiler-3", "name": "Boiler 3", "groups": ["floor-1"]})
    );
    let (_, body) = call(&hub, Some(&admin), "GET", "/v1/admin/groups", None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"groups": {"floor-1": 1}})
    );
    // Bad input names its field.
    for (body, field) in [
        (json!({"id": "bad id"}), "id"),
        (json!({"id": "x", "groups": ["bad group"]}), "groups"),
        (json!({"id": "x", "name": ""}), "name"),
    ] {
        let (status, answer) = call(
            &hub,
            Some(&admin),
            "POST",
            "/v1/admin/devices",
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(
            serde_json::from_str::<Value>(&answer).unwrap()["parameter"],
            field
        );
    }
    let (status, answer) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/keys",
        Some(&json!({"role": "root"}).to_string()),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap()["parameter"],
        "role"
    );
    // A new token: the connected device is not cut off, its old token no
    // longer opens a connection.
    let (status, body) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/devices/boiler-3/token",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        hub.connect(&token).await.is_err(),
        "the old token still works"
    );
    // Revoked: its connection closes.
    let (status, _) = call(
        &hub,
        Some(&admin),
        "POST",
        "/v1/admin/devices/boiler-3/revoke",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (closed, _) = device.until_closed().await.unwrap();
    assert_eq!(
        closed.error,
        Some(protocol::error_code::REVOKED),
        "{closed:?}"
    );
    assert_eq!(closed.close_code, Some(1008), "{closed:?}");
}

#[tokio::test]
async fn bad_key_and_group_flags_are_named() {
    let hub = TestHub::start(&[]).await.unwrap();
    for (args, flag) in [
        (&["key", "add", "--role", "root"][..], "--role"),
        (
            &["key", "add", "--role", "viewer", "--group", "no spaces"][..],
            "--group",
        ),
        (
            &["key", "add", "--role", "viewer", "--expires", "soon"][..],
            "--expires",
        ),
        (&["device", "add", "d1", "--group", "a/b"][..], "--group"),
        (&["device", "group", "d1", "--add", ""][..], "--add"),
    ] {
        let out = hub.cli(args).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let out = hub.cli(&["key", "revoke", "nobody"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key"));
}

#[tokio::test]
async fn every_admin_action_and_command_is_audited_and_streamed_to_admins_only() {
    let hub = TestHub::start(&[]).await.unwrap();
    let admin = key(&hub, &["--role", "admin", "--name", "boss"]).await;
    let viewer = key(&hub, &["--role", "viewer", "--name", "wall"]).await;
    let operator = key(&hub, &["--role", "operator", "--name", "shift"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let admin_bearer = format!("Bearer {admin}");
    let viewer_bearer = format!("Bearer {viewer}");
    let mut admin_live = SseClient::connect(
        &hub.addr,
        "/v1/events?types=audit",
        &[("Authorization", &admin_bearer)],
    )
    .await
    .unwrap();
    let mut viewer_live = SseClient::connect(
        &hub.addr,
        "/v1/events",
        &[("Authorization", &viewer_bearer)],
    )
    .await
    .unwrap();
    let (status, _) = SseClient::open(
        &hub.addr,
        "/v1/events?types=audit",
        &[("Authorization", &viewer_bearer)],
    )
    .await
    .map(|sse| (sse.status, ()))
    .unwrap();
    assert_eq!(status, 403, "a viewer asking for the audit trail");

    let post = |key: &str, path: &str, body: Value| {
        let (key, path) = (key.to_owned(), path.to_owned());
        let hub = &hub;
        async move { call(hub, Some(&key), "POST", &path, Some(&body.to_string())).await }
    };
    let (status, body) = post(
        &admin,
        "/v1/admin/devices",
        json!({"id": "oven-1", "groups": ["kitchen"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post(
        &admin,
        "/v1/admin/keys",
        json!({"role": "viewer", "name": "tv"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = post(
        &operator,
        "/v1/devices/oven-1/commands",
        json!({"name": "preheat", "args": {"to": "180"}}),
    )
    .await;
    assert_eq!(status, 409, "oven-1 is not connected");
    let (status, _) = post(
        &admin,
        "/v1/alert-rules",
        json!({"name": "cold", "kind": "offline", "for": "5m"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(&hub, Some(&admin), "POST", "/v1/admin/keys/tv/revoke", None).await;
    assert_eq!(status, 204);

    // (by, action, device) of each audit event, live and resumed.
    let entry = |event: &e2e::SseEvent| {
        let data = event.json();
        (
            data["by"].as_str().unwrap().to_owned(),
            data["action"].as_str().unwrap().to_owned(),
            data["device"].as_str().map(str::to_owned),
        )
    };
    let expected = vec![
        (
            "boss".to_owned(),
            "device.add".to_owned(),
            Some("oven-1".to_owned()),
        ),
        ("boss".into(), "key.add".into(), None),
        ("shift".into(), "command".into(), Some("oven-1".into())),
        ("boss".into(), "rule.add".into(), None),
        ("boss".into(), "key.revoke".into(), None),
    ];
    let mut live = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..expected.len() {
        let event = admin_live.next_of("audit").await.unwrap();
        ids.push(event.pos());
        live.push(entry(&event));
    }
    assert_eq!(live, expected);
    let mut resumed = SseClient::connect(
        &hub.addr,
        &format!("/v1/events?types=audit&last_event_id={}", ids[1]),
        &[("Authorization", &admin_bearer)],
    )
    .await
    .unwrap();
    let mut again = Vec::new();
    for _ in 2..expected.len() {
        again.push(entry(&resumed.next_of("audit").await.unwrap()));
    }
    assert_eq!(again, expected[2..]);
    let viewer_saw = viewer_live.read_raw_for(Duration::from_millis(800)).await;
    assert!(!viewer_saw.contains("event: audit"), "{viewer_saw}");

    // What a person with sqlite3 finds: the command with its arguments and
    // answer, and never a secret.
    let db = hub.db().await.unwrap();
    let rows: Vec<(String, String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT by, action, device, detail FROM audit ORDER BY pos")
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(rows.len(), expected.len());
    let command: Value = serde_json::from_str(rows[2].3.as_deref().unwrap()).unwrap();
    assert_eq!(
        command,
        json!({"name": "preheat", "args": {"to": "180"}, "answer": {"error": "device_offline"}})
    );
    let added: Value = serde_json::from_str(rows[1].3.as_deref().unwrap()).unwrap();
    assert_eq!(added["role"], "viewer");
    assert!(
        rows.iter()
            .all(|row| !row.3.as_deref().unwrap_or("").contains("hk_"))
    );
}

#[tokio::test]
async fn devices_the_provisioning_key_registers_join_its_groups_or_those_they_name() {
    let hub = TestHub::start(&[
        "--provision-key",
        "k",
        "--provision-group",
        "kitchen",
        "--provision-group",
        "new",
    ])
    .await
    .unwrap();
    let viewer = key(&hub, &["--role", "viewer", "--group", "kitchen"]).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // A fleet that names no group joins every group of the key; one that
    // names some (`device-sim --group`) joins those.
    for (prefix, groups) in [("any-", &[][..]), ("named-", &["kitchen"][..])] {
        let config = device_sim::fleet::FleetConfig {
            seed: 5,
            ids: device_sim::fleet::Ids::Numbered(prefix.into()),
            ..device_sim::fleet::FleetConfig::new(
                2,
                device_sim::fleet::Credential::ProvisionKey("k".into()),
                device_sim::device::DeviceSettings {
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                    ..hub.quick_device(50.0, 5)
                },
            )
        };
        let run = device_sim::fleet::run(config).await;
        assert!(run.complete(), "{run:?}");
    }
    let (status, body) = call(&hub, Some(&viewer), "GET", "/v1/devices", None).await;
    assert_eq!(status, 200, "{body}");
    let devices: Value = serde_json::from_str(&body).unwrap();
    let groups: Vec<(String, Value)> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_owned(), d["groups"].clone()))
        .collect();
    assert_eq!(groups.len(), 4, "{groups:?}");
    for (id, in_groups) in &groups {
        let expected = if id.starts_with("any-") {
            json!(["kitchen", "new"])
        } else {
            json!(["kitchen"])
        };
        assert_eq!(in_groups, &expected, "{id}");
    }
    // A group the key may not put devices in is refused, named.
    let refused = telemetry_device::link::connect_into(
        &format!("ws://{}/v1/ws", hub.addr),
        None,
        "k",
        &["garage".to_owned()],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("403")
            && refused.contains("group_not_allowed")
            && refused.contains("garage"),
        "{refused}"
    );
    // A group that cannot be one is named at start.
    let dir = tempfile::tempdir().unwrap();
    let out = e2e::cli_on(
        &dir.path().join("hub.db"),
        &[
            "serve",
            "--provision-key",
            "k",
            "--provision-group",
            "no spaces",
        ],
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--provision-group"));
}
