//! A dying component, against the real hub process: a writer or publisher
//! thread that stops (made to, with the debug build's `HUB_TEST_FAULT`) is
//! reported by `/healthz`, devices are told to reconnect, nothing is
//! acknowledged that was not stored, and SIGTERM still ends the hub.

use std::time::{SystemTime, UNIX_EPOCH};

use e2e::{TestHub, batch};
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
