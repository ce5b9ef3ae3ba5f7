//! The MQTT bridge (`--mqtt-url`) against a real Mosquitto that each test
//! starts on a free port: readings on their topics with their payloads, the
//! hub's retained status and last will, a broker stopped and started again
//! mid-stream, a hub killed with SIGKILL that resumes from its cursor, and a
//! broker that refuses the hub.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use device_sim::backoff::Backoff;
use device_sim::device::{DeviceSettings, endpoint};
use device_sim::fleet::{self, Credential, FleetConfig};
use device_sim::sensors::SensorKind;
use e2e::{TestHub, batch};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use testkit::mosquitto::{Mosquitto, Options};

/// What a subscriber has received: (topic, payload, retained).
type Inbox = Arc<Mutex<Vec<(String, String, bool)>>>;

/// A QoS 1 subscriber to `filter`, reconnecting by itself; with
/// `persistent`, its session (and what the broker queued for it) outlives
/// its connection and the broker's restarts.
async fn subscribe(port: u16, id: &str, filter: &str, persistent: bool) -> Inbox {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_session(!persistent)
        .set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let inbox: Inbox = Arc::default();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let filter = filter.to_owned();
    let seen = Arc::clone(&inbox);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    seen.lock().unwrap_or_else(PoisonError::into_inner).push((
                        publish.topic.clone(),
                        String::from_utf8_lossy(&publish.payload).into_owned(),
                        publish.retain,
                    ));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(e2e::PATIENCE, ready)
        .await
        .expect("subscribed in time")
        .unwrap();
    inbox
}

/// The storage positions in an inbox's reading payloads.
fn positions(inbox: &Inbox) -> BTreeSet<i64> {
    inbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(|(_, payload, _)| {
            serde_json::from_str::<serde_json::Value>(payload).ok()?["pos"].as_i64()
        })
        .collect()
}

/// Waits until the inbox holds every position in `1..=count`.
async fn until_all(inbox: &Inbox, count: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = positions(inbox);
        if (1..=count).all(|pos| got.contains(&pos)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker delivered {} of {count}; missing from {:?}",
            got.len(),
            (1..=count).find(|pos| !got.contains(pos))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fleet streaming `count` readings from each of `devices` devices.
fn fleet_of(hub: &TestHub, devices: usize, count: u64) -> FleetConfig {
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        rate: Some(200.0),
        batch: 10,
        flush: Duration::from_millis(50),
        count: Some(count),
        buffer: 10_000,
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(300),
        },
        ..DeviceSettings::new(endpoint(&format!("ws://{}", hub.addr)).unwrap())
    };
    FleetConfig::new(devices, Credential::ProvisionKey("k".into()), device)
}

fn bridged(broker: &Mosquitto) -> String {
    format!("mqtt://127.0.0.1:{}", broker.port)
}

#[tokio::test]
async fn readings_reach_the_broker_on_their_topics_and_the_hub_says_online_then_offline() {
    let broker = Mosquitto::start_with(Options {
        large_queues: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let readings = subscribe(broker.port, "readings", "telemetry/+/+", false).await;
    let url = bridged(&broker);
    let hub = TestHub::start(&["--mqtt-url", &url]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, 10_000, 3)).await.unwrap();
    until_all(&readings, 3).await;
    let got = readings.lock().unwrap().clone();
    let (topic, payload, _) = &got[0];
    assert_eq!(topic, "telemetry/dev-1/temperature");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(payload).unwrap(),
        serde_json::json!({"pos": 1, "ts_ms": 10_000, "value": 1_000.0, "unit": "°C"})
    );

    // The hub's availability, retained: a subscriber arriving now sees it.
    let status = subscribe(broker.port, "status-1", "telemetry/hub/+/status", false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        status
            .lock()
            .unwrap()
            .iter()
            .any(|(_, payload, retained)| payload == "online" && *retained),
        "{:?}",
        status.lock().unwrap()
    );
    let (code, body) = hub.get("/healthz").await.unwrap();
    assert_eq!(code, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["mqtt"],
        serde_json::json!({"connected": true, "lag": 0})
    );

    // Stopped, it says offline (a clean goodbye; the will is for crashes).
    let (exit, _) = hub.terminate().await.unwrap();
    assert!(exit.success());
    let after = subscribe(broker.port, "status-2", "telemetry/hub/+/status", false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = after.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].1, "offline");
}

#[tokio::test]
async fn a_broker_stopped_and_started_mid_stream_still_gets_every_reading() {
    let mut broker = Mosquitto::start_with(Options {
        persistent: true,
        large_queues: true,
        ..Options::default()
    })
    .await
    .unwrap();
    // A subscriber whose session the broker keeps, like Telegraf's.
    let keeper = subscribe(broker.port, "keeper", "telemetry/+/+", true).await;
    let url = bridged(&broker);
    let hub = TestHub::start(&["--provision-key", "k", "--mqtt-url", &url])
        .await
        .unwrap();
    let run = tokio::spawn(fleet::run(fleet_of(&hub, 3, 600)));
    while positions(&keeper).len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Twice down and up while the fleet streams on.
    for _ in 0..2 {
        broker.stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (_, body) = hub.get("/healthz").await.unwrap();
        assert!(body.contains(r#""connected":false"#), "{body}");
        broker.resume().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fleet finished")
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    until_all(&keeper, 1_800).await;
}

#[tokio::test]
async fn a_hub_killed_mid_stream_resumes_from_its_cursor() {
    let broker = Mosquitto::start_with(Options {
        large_queues: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let readings = subscribe(broker.port, "readings", "telemetry/+/+", false).await;
    let url = bridged(&broker);
    let args = ["--provision-key", "k", "--mqtt-url", url.as_str()];
    let hub = TestHub::start(&args).await.unwrap();
    let listen = hub.addr.clone();
    let run = tokio::spawn(fleet::run(fleet_of(&hub, 2, 500)));
    while positions(&readings).len() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = hub.kill().await.unwrap();
    // Its last will says so.
    let status = subscribe(broker.port, "status", "telemetry/hub/+/status", false).await;
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    while !status
        .lock()
        .unwrap()
        .iter()
        .any(|(_, payload, _)| payload == "offline")
    {
        assert!(tokio::time::Instant::now() < deadline, "no last will");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hub = TestHub::start_in(dir, &listen, &args).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fleet finished")
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    until_all(&readings, 1_000).await;
    let (_, metrics) = hub.get("/metrics").await.unwrap();
    assert!(metrics.contains("hub_mqtt_skipped_total 0"), "{metrics}");
}

#[tokio::test]
async fn a_broker_that_refuses_the_hub_is_reported_and_ingest_goes_on() {
    let broker = Mosquitto::start_with(Options {
        refuse_everyone: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let url = bridged(&broker);
    let hub = TestHub::start(&[
        "--mqtt-url",
        &url,
        "--mqtt-username",
        "hub",
        "--mqtt-password",
        "wrong",
    ])
    .await
    .unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, 10_000, 3)).await.unwrap();
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    let body = loop {
        let (code, body) = hub.get("/healthz").await.unwrap();
        assert_eq!(code, 200, "{body}");
        if body.contains("error") {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["mqtt"]["connected"], false);
    assert_eq!(body["mqtt"]["lag"], 3);
    let error = body["mqtt"]["error"].as_str().unwrap();
    assert!(
        error.contains("refused") || error.contains("Refused"),
        "{error}"
    );
    assert!(
        !error.contains("wrong"),
        "the password is never shown: {error}"
    );
}
