//! Commands from the HTTP API to a connected device and back.

use e2e::TestHub;
use protocol::{CommandResult, DeviceFrame, HubFrame};

#[tokio::test]
async fn a_command_reaches_the_device_and_its_result_comes_back() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();

    let addr = hub.addr.clone();
    let request = tokio::spawn(async move {
        testkit::http::request(
            &addr,
            "POST",
            "/v1/devices/dev-1/commands",
            &[],
            // Values as people write them: a number and a boolean are
            // sent as their text.
            Some(r#"{"name": "set_interval", "args": {"interval_ms": 500, "persist": true}}"#),
        )
        .await
        .unwrap()
    });
    let HubFrame::Command(command) = device.recv().await.unwrap() else {
        panic!("expected a command");
    };
    assert_eq!(command.name, "set_interval");
    assert_eq!(command.args[0].name, "interval_ms");
    assert_eq!(command.args[0].value, "500");
    assert_eq!(command.args[1].name, "persist");
    assert_eq!(command.args[1].value, "true");
    device
        .send(&DeviceFrame::CommandResult(CommandResult {
            id: command.id,
            ok: true,
            detail: "done".into(),
        }))
        .await
        .unwrap();

    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["detail"], "done");
    assert_eq!(body["id"], command.id);
}

#[tokio::test]
async fn a_device_that_does_not_answer_times_out_with_504() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    let (status, body) = hub
        .post(
            "/v1/devices/dev-1/commands",
            r#"{"name": "ping", "timeout_ms": 200}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("command_timeout"));
}

#[tokio::test]
async fn commands_for_absent_devices_and_bad_bodies_are_refused_in_json() {
    let hub = TestHub::start(&[]).await.unwrap();
    hub.add_device("dev-1").await.unwrap();

    let (status, body) = hub
        .post("/v1/devices/dev-1/commands", r#"{"name": "ping"}"#)
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("device_offline"));

    let (status, body) = hub
        .post("/v1/devices/nobody/commands", r#"{"name": "ping"}"#)
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown_device"));

    let seventeen_args: Vec<String> = (0..17).map(|i| format!(r#""a{i}": "v""#)).collect();
    let seventeen_args = format!(
        r#"{{"name": "x", "args": {{{}}}}}"#,
        seventeen_args.join(", ")
    );
    let long_value = format!(r#"{{"name": "x", "args": {{"a": "{}"}}}}"#, "v".repeat(300));
    for (bad, field) in [
        (r#"{"name": ""}"#, Some("name")),
        (&seventeen_args, Some("args")),
        (&long_value, Some("args")),
        (
            r#"{"name": "x", "args": {"limits": {"high": 3}}}"#,
            Some("args.limits"),
        ),
        (
            r#"{"name": "x", "args": {"steps": [1, 2]}}"#,
            Some("args.steps"),
        ),
        (
            r#"{"name": "x", "args": {"a": "1", "b": null}}"#,
            Some("args.b"),
        ),
        (r#"{"name": "ping", "timeout_ms": 0}"#, Some("timeout_ms")),
        (r#"{"nom": "ping"}"#, None),
        ("not json", None),
    ] {
        let (status, body) = hub.post("/v1/devices/dev-1/commands", bad).await.unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(field) = field {
            assert_eq!(body["parameter"], field, "{bad}");
        } else {
            assert_eq!(body["error"], "bad_body", "{bad}");
        }
    }
    // A body far past any command the protocol allows is refused unread.
    let huge = format!(
        r#"{{"name": "x", "args": {{"a": "{}"}}}}"#,
        "v".repeat(100_000)
    );
    let (status, body) = hub.post("/v1/devices/dev-1/commands", &huge).await.unwrap();
    assert_eq!(status, 413, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "bad_body");
}

#[tokio::test]
async fn wrong_methods_and_undecodable_paths_get_json_errors() {
    let hub = TestHub::start(&[]).await.unwrap();
    let response = testkit::http::client()
        .delete(format!("http://{}/healthz", hub.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "method_not_allowed");

    let (status, body) = hub
        .post("/v1/devices/%FF/commands", r#"{"name":"x"}"#)
        .await
        .unwrap();
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "bad_path");
}
