//! The MQTT bridge (`--mqtt-url`) against a real Mosquitto that each test
//! starts on a free port: readings on their topics with their payloads, the
//! hub's retained status and last will, a broker stopped and started again
//! mid-stream, a hub killed with SIGKILL that resumes from its cursor, a
//! broker that refuses the hub, devices' presence and Home Assistant
//! discovery configs, and commands sent over MQTT.

use std::collections::BTreeSet;
use std::sync::{Arc, LockResult, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, FleetConfig};
use device_sim::sensors::SensorKind;
use e2e::fleets;
use e2e::{TestHub, batch};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use testkit::mosquitto::{Mosquitto, Options};
use tokio::sync::Notify;

/// One message a subscriber received: (topic, payload, retained).
type Received = (String, String, bool);

/// What a subscriber has received, and a signal each time that grows, so
/// a test waits for a message rather than sleeping and looking.
#[derive(Clone, Default)]
struct Inbox {
    messages: Arc<Mutex<Vec<Received>>>,
    grew: Arc<Notify>,
}

impl Inbox {
    fn lock(&self) -> LockResult<MutexGuard<'_, Vec<Received>>> {
        self.messages.lock()
    }

    fn push(&self, message: Received) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
        self.grew.notify_waiters();
    }

    /// Waits until `check` holds of what has arrived; `false` if it still
    /// does not after `patience`.
    async fn holds(&self, patience: Duration, check: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check: a message in between wakes it.
            let grew = self.grew.notified();
            tokio::pin!(grew);
            grew.as_mut().enable();
            if check(&self.lock().unwrap_or_else(PoisonError::into_inner)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                return false;
            }
        }
    }
}

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
    let inbox = Inbox::default();
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let filter = filter.to_owned();
    let seen = inbox.clone();
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
                    seen.push((
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

/// The storage positions in an inbox's reading payloads (one reading, or
/// an `--mqtt-batch` array of them).
fn positions(inbox: &Inbox) -> BTreeSet<i64> {
    positions_in(&inbox.lock().unwrap_or_else(PoisonError::into_inner))
}

fn positions_in(messages: &[Received]) -> BTreeSet<i64> {
    messages
        .iter()
        .filter_map(|(_, payload, _)| serde_json::from_str::<serde_json::Value>(payload).ok())
        .flat_map(|value| match value {
            serde_json::Value::Array(entries) => entries,
            one => vec![one],
        })
        .filter_map(|reading| reading["pos"].as_i64())
        .collect()
}

/// Waits until the inbox holds the position of every reading `hub`
/// stored, `count` of them (devices' statuses take positions too).
async fn until_all(inbox: &Inbox, hub: &TestHub, count: usize) {
    let db = hub.db().await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT pos FROM readings ORDER BY pos")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(
        stored.len(),
        count,
        "the hub stored {} readings",
        stored.len()
    );
    let all = |messages: &[Received]| {
        let got = positions_in(messages);
        stored.iter().all(|pos| got.contains(pos))
    };
    if !inbox.holds(Duration::from_secs(60), all).await {
        let got = positions(inbox);
        panic!(
            "the broker delivered {} of {count}; missing from {:?}",
            got.len(),
            stored.iter().find(|pos| !got.contains(pos))
        );
    }
}

/// Waits until the inbox holds at least `count` positions.
async fn until_some(inbox: &Inbox, count: usize) {
    let enough = |messages: &[Received]| positions_in(messages).len() >= count;
    assert!(
        inbox.holds(e2e::PATIENCE, enough).await,
        "fewer than {count} readings arrived"
    );
}

/// A fleet streaming `count` readings from each of `devices` devices.
fn fleet_of(hub: &TestHub, devices: usize, count: u64) -> FleetConfig {
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        ..hub.quick_device(200.0, count)
    };
    fleets::fleet_of(devices, device)
}

/// Publishes one message at QoS 1 and waits for the broker's ack.
async fn publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let options = MqttOptions::new(format!("pub-{}", std::process::id()), "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
        .await
        .unwrap();
    tokio::time::timeout(e2e::PATIENCE, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("the broker acknowledged the publish");
    let _ = client.disconnect().await;
}

/// What an inbox holds on `topic`, in order.
fn on(inbox: &Inbox, topic: &str) -> Vec<(String, bool)> {
    inbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(t, _, _)| t == topic)
        .map(|(_, payload, retained)| (payload.clone(), *retained))
        .collect()
}

/// Waits until `check` holds for the inbox.
async fn until(inbox: &Inbox, what: &str, check: impl Fn(&[Received]) -> bool) {
    assert!(
        inbox.holds(e2e::PATIENCE, check).await,
        "{what}: {:?}",
        inbox.lock().unwrap()
    );
}

/// The last payload an inbox got on `topic`, parsed.
fn last_json(inbox: &Inbox, topic: &str) -> serde_json::Value {
    let (payload, _) = on(inbox, topic).pop().expect("a message on the topic");
    serde_json::from_str(&payload).unwrap()
}

/// Publishes `payload` on `topic` and returns the next message `results`
/// gets, parsed.
async fn ask(
    results: &Inbox,
    port: u16,
    topic: &str,
    payload: &str,
) -> (String, serde_json::Value) {
    let before = results.lock().unwrap().len();
    publish(port, topic, payload, false).await;
    until(results, topic, |seen| seen.len() > before).await;
    let (topic, payload, _) = results.lock().unwrap()[before].clone();
    (topic, serde_json::from_str(&payload).unwrap())
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
    let online = hub.until_status("dev-1", true).await.unwrap();
    device.send_acked(&batch(1, 10_000, 3)).await.unwrap();
    until_all(&readings, &hub, 3).await;
    let got = readings.lock().unwrap().clone();
    let (topic, payload, _) = got
        .iter()
        .find(|(topic, _, _)| !topic.ends_with("/status"))
        .unwrap();
    assert_eq!(topic, "telemetry/dev-1/temperature");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(payload).unwrap(),
        serde_json::json!({"pos": online + 1, "ts_ms": 10_000, "value": 1_000.0, "unit": "°C"})
    );

    // The hub's availability, retained: a subscriber arriving now sees it.
    let status = subscribe(broker.port, "status-1", "telemetry/hub/+/status", false).await;
    until(&status, "the hub's retained online", |seen| {
        seen.iter()
            .any(|(_, payload, retained)| payload == "online" && *retained)
    })
    .await;
    // The subscriber can see a reading before the hub has read the
    // broker's PUBACK for it: lag reaches 0 moments later.
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let (code, body) = hub.get("/healthz").await.unwrap();
        assert_eq!(code, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        if body["mqtt"] == serde_json::json!({"connected": true, "lag": 0}) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopped, it says offline (a clean goodbye; the will is for crashes).
    let (exit, _) = hub.terminate().await.unwrap();
    assert!(exit.success());
    let after = subscribe(broker.port, "status-2", "telemetry/hub/+/status", false).await;
    until(&after, "the hub's retained status", |seen| !seen.is_empty()).await;
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
    until_some(&keeper, 200).await;
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
    until_all(&keeper, &hub, 1_800).await;
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
    until_some(&readings, 300).await;
    let dir = hub.kill().await.unwrap();
    // Its last will says so.
    let status = subscribe(broker.port, "status", "telemetry/hub/+/status", false).await;
    until(&status, "the hub's last will", |seen| {
        seen.iter().any(|(_, payload, _)| payload == "offline")
    })
    .await;
    let hub = TestHub::start_in(dir, &listen, &args).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fleet finished")
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    until_all(&readings, &hub, 1_000).await;
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
    hub.until_status("dev-1", true).await.unwrap();
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
    // Three readings and the device's status, all of them positions.
    assert_eq!(body["mqtt"]["lag"], 4);
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

#[tokio::test]
async fn devices_presence_and_home_assistant_configs_are_retained_and_cleared_on_revocation() {
    let broker = Mosquitto::start_with(Options {
        large_queues: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let url = bridged(&broker);
    let hub = TestHub::start(&[
        "--provision-key",
        "k",
        "--mqtt-url",
        &url,
        "--mqtt-discovery",
        "homeassistant",
    ])
    .await
    .unwrap();
    let mut fleet = fleet_of(&hub, 2, 1_000_000);
    fleet.device.kinds = vec![SensorKind::Temperature, SensorKind::Humidity];
    let run = tokio::spawn(fleet::run(fleet));

    // Retained, so a subscriber arriving later reads them.
    let config = |device: &str, metric: &str| {
        format!("homeassistant/sensor/telemetry__{device}/{metric}/config")
    };
    let watcher = subscribe(broker.port, "watcher", "#", false).await;
    until(&watcher, "both devices online", |seen| {
        ["sim-1", "sim-2"].iter().all(|device| {
            seen.iter().any(|(topic, payload, _)| {
                *topic == format!("telemetry/{device}/status") && payload == "online"
            })
        })
    })
    .await;
    let late = subscribe(broker.port, "late", "#", false).await;
    until(&late, "retained statuses and configs", |seen| {
        let retained = |topic: &str| seen.iter().any(|(t, _, r)| t == topic && *r);
        retained("telemetry/sim-1/status")
            && retained(&config("sim-1", "temperature"))
            && retained(&config("sim-2", "humidity"))
    })
    .await;
    assert_eq!(
        on(&late, "telemetry/sim-1/status"),
        [("online".into(), true)]
    );
    let temperature = last_json(&late, &config("sim-1", "temperature"));
    assert_eq!(temperature["state_topic"], "telemetry/sim-1/temperature");
    assert_eq!(temperature["device_class"], "temperature");
    assert_eq!(temperature["unit_of_measurement"], "°C");
    assert_eq!(temperature["state_class"], "measurement");
    assert_eq!(temperature["value_template"], "{{ value_json.value }}");
    assert_eq!(temperature["unique_id"], "telemetry__sim-1__temperature");
    assert_eq!(
        temperature["availability"][0]["topic"],
        "telemetry/sim-1/status"
    );
    assert_eq!(temperature["device"]["identifiers"][0], "telemetry__sim-1");
    assert_eq!(temperature["device"]["name"], "sim-1");
    let humidity = last_json(&late, &config("sim-2", "humidity"));
    assert_eq!(humidity["device_class"], "humidity");
    assert_eq!(humidity["unit_of_measurement"], "%");

    // The devices leave: offline, retained.
    run.abort();
    until(&watcher, "both devices offline", |seen| {
        ["sim-1", "sim-2"].iter().all(|device| {
            seen.iter()
                .rev()
                .find(|(topic, _, _)| *topic == format!("telemetry/{device}/status"))
                .is_some_and(|(_, payload, _)| payload == "offline")
        })
    })
    .await;

    // A revoked device's configs and status are cleared.
    let out = hub.cli(&["device", "revoke", "sim-2"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    until(&watcher, "sim-2's configs cleared", |seen| {
        seen.iter()
            .any(|(topic, payload, _)| *topic == config("sim-2", "humidity") && payload.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = subscribe(broker.port, "after", "#", false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = after.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|(topic, _, _)| topic.contains("sim-2")),
        "nothing of sim-2 is retained: {seen:?}"
    );
    assert_eq!(
        on(&after, "telemetry/sim-1/status"),
        [("offline".into(), true)]
    );

    // Home Assistant restarting asks for the configs again.
    let before = on(&watcher, &config("sim-1", "temperature")).len();
    publish(broker.port, "homeassistant/status", "online", false).await;
    until(&watcher, "configs published again", |seen| {
        seen.iter()
            .filter(|(topic, _, _)| *topic == config("sim-1", "temperature"))
            .count()
            > before
    })
    .await;
}

#[tokio::test]
async fn commands_published_on_mqtt_reach_the_device_and_every_one_gets_a_result() {
    let broker = Mosquitto::start_with(Options::default()).await.unwrap();
    let url = bridged(&broker);
    let hub = TestHub::start(&["--provision-key", "k", "--mqtt-url", &url])
        .await
        .unwrap();
    hub.add_device("idle").await.unwrap();
    let run = tokio::spawn(fleet::run(fleet_of(&hub, 1, 1_000_000)));
    let results = subscribe(broker.port, "results", "telemetry/+/cmd/result", false).await;
    hub.until_online("sim-1").await.unwrap();

    let (topic, pong) = ask(
        &results,
        broker.port,
        "telemetry/sim-1/cmd",
        r#"{"id":"c-1","name":"ping"}"#,
    )
    .await;
    assert_eq!(topic, "telemetry/sim-1/cmd/result");
    assert_eq!(
        pong,
        serde_json::json!({"id": "c-1", "ok": true, "detail": "pong"})
    );
    let (_, refused) = ask(
        &results,
        broker.port,
        "telemetry/sim-1/cmd",
        r#"{"id":2,"name":"set_interval","args":{"interval_ms":"0"}}"#,
    )
    .await;
    assert_eq!(refused["id"], 2);
    assert_eq!(refused["ok"], false, "the device refused it: {refused}");
    assert!(refused.get("error").is_none(), "{refused}");

    let (_, garbage) = ask(&results, broker.port, "telemetry/sim-1/cmd", "reboot!").await;
    assert_eq!(garbage["error"], "bad_command");
    assert_eq!(garbage["id"], serde_json::Value::Null);
    let (topic, unknown) = ask(
        &results,
        broker.port,
        "telemetry/nobody/cmd",
        r#"{"id":"c-3","name":"ping"}"#,
    )
    .await;
    assert_eq!(topic, "telemetry/nobody/cmd/result");
    assert_eq!(unknown["error"], "unknown_device");
    assert_eq!(unknown["id"], "c-3");
    let (_, offline) = ask(
        &results,
        broker.port,
        "telemetry/idle/cmd",
        r#"{"id":"c-4","name":"ping"}"#,
    )
    .await;
    assert_eq!(offline["error"], "device_offline");
    let (_, zero) = ask(
        &results,
        broker.port,
        "telemetry/sim-1/cmd",
        r#"{"id":"c-5","name":"ping","timeout_ms":0}"#,
    )
    .await;
    assert_eq!(zero["error"], "bad_command");
    assert_eq!(zero["id"], "c-5");
    let (_, metrics) = hub.get("/metrics").await.unwrap();
    assert!(metrics.contains("hub_mqtt_commands_total 6"), "{metrics}");
    run.abort();
}

/// The number in a `/metrics` line.
async fn metric(hub: &TestHub, name: &str) -> u64 {
    let (_, text) = hub.get("/metrics").await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// Waits until `/metrics` says `name` is at least `at_least`.
async fn until_metric(hub: &TestHub, name: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric(hub, name).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(hub: &TestHub) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&hub.db().await.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn readings_published_on_ingest_topics_are_stored_and_streamed_and_nothing_else_is() {
    let broker = Mosquitto::start_with(Options::default()).await.unwrap();
    let url = bridged(&broker);
    // The second template also matches what the bridge publishes
    // (telemetry/plug-1/power): its own topics are never taken in.
    let hub = TestHub::start(&[
        "--mqtt-url",
        &url,
        "--mqtt-ingest",
        "sensors/{device}/{metric}",
        "--mqtt-ingest",
        "{device}/plug-1/{metric}",
    ])
    .await
    .unwrap();
    hub.add_device("plug-1").await.unwrap();
    let mut sse = e2e::SseClient::connect(&hub.addr, "/v1/events", &[])
        .await
        .unwrap();
    until_metric(&hub, "hub_mqtt_connected", 1).await;

    publish(broker.port, "sensors/plug-1/power", "12.5", false).await;
    let event = sse.next_of("reading").await.unwrap();
    let data = event.json();
    assert_eq!(data["device"], "plug-1");
    assert_eq!(data["metric"], "power");
    assert_eq!(data["value"], 12.5);
    let reading = r#"{"value": 230.1, "ts_ms": 1764300000000, "unit": "V"}"#;
    publish(broker.port, "sensors/plug-1/voltage", reading, false).await;
    let data = sse.next_of("reading").await.unwrap().json();
    assert_eq!(data["metric"], "voltage");
    assert_eq!(data["unit"], "V");
    assert_eq!(data["ts_ms"], 1_764_300_000_000_i64);

    // Garbage, unknown devices and bad ids are counted, never stored, and
    // the bridge goes on.
    publish(broker.port, "sensors/plug-1/power", "ON", false).await;
    publish(broker.port, "sensors/ghost/power", "1", false).await;
    publish(broker.port, "sensors/bad id!/power", "1", false).await;
    until_metric(&hub, "hub_mqtt_ingest_refused_total", 3).await;
    publish(broker.port, "sensors/plug-1/power", "13", false).await;
    assert_eq!(sse.next_of("reading").await.unwrap().json()["value"], 13.0);

    // The bridge republishes them under telemetry/, which it never takes in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored(&hub).await, 3);
    assert_eq!(metric(&hub, "hub_mqtt_ingested_total").await, 3);
    assert_eq!(metric(&hub, "hub_mqtt_ingest_refused_total").await, 3);
    assert!(metric(&hub, "hub_mqtt_published_total").await >= 3);
    let (_, body) = hub
        .get("/v1/readings?device=plug-1&metric=voltage")
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["readings"][0]["value"], 230.1);
}

#[tokio::test]
async fn unknown_devices_register_themselves_with_ingest_register_and_revoked_ones_stay_out() {
    let broker = Mosquitto::start_with(Options::default()).await.unwrap();
    let url = bridged(&broker);
    let hub = TestHub::start(&[
        "--mqtt-url",
        &url,
        "--mqtt-ingest",
        "tele/{metric}/of/{device}",
        "--mqtt-ingest-register",
    ])
    .await
    .unwrap();
    until_metric(&hub, "hub_mqtt_connected", 1).await;
    publish(broker.port, "tele/rssi/of/new-1", "-70", false).await;
    until_metric(&hub, "hub_mqtt_ingested_total", 1).await;
    let out = hub.cli(&["device", "list"]).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("new-1"),
        "{out:?}"
    );

    let out = hub.cli(&["device", "revoke", "new-1"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    // Ingest reads a device's record again within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(broker.port, "tele/rssi/of/new-1", "-71", false).await;
    until_metric(&hub, "hub_mqtt_ingest_refused_total", 1).await;
    assert_eq!(stored(&hub).await, 1);
}

/// A hub whose `thread` fails at its second commit (the first registers
/// the metric, the second would store the reading) is killed and started
/// again: the broker, which never got its ack, delivers the reading again.
async fn crash_between_delivery_and_ack(thread: &str) -> (TestHub, i64) {
    let broker = Mosquitto::start_with(Options::default()).await.unwrap();
    let url = bridged(&broker);
    let args = [
        "--mqtt-url",
        url.as_str(),
        "--mqtt-ingest",
        "sensors/{device}/{metric}",
    ];
    let fault = format!("{thread}-panic-at-commit=2");
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_with_env(dir, "127.0.0.1:0", &args, &[("HUB_TEST_FAULT", &fault)])
        .await
        .unwrap();
    hub.add_device("plug-1").await.unwrap();
    until_metric(&hub, "hub_mqtt_connected", 1).await;
    let reading = r#"{"value": 7, "ts_ms": 1764300000000}"#;
    publish(broker.port, "sensors/plug-1/power", reading, false).await;
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    while hub.get("/healthz").await.unwrap().0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "the fault happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = stored(&hub).await;
    let listen = hub.addr.clone();
    let dir = hub.kill().await.unwrap();
    let hub = TestHub::start_in(dir, &listen, &args).await.unwrap();
    until_metric(&hub, "hub_mqtt_ingested_total", 1).await;
    let _ = broker;
    (hub, before)
}

#[tokio::test]
async fn a_reading_the_hub_died_before_storing_is_delivered_again_and_stored() {
    let (hub, before) = crash_between_delivery_and_ack("writer").await;
    assert_eq!(before, 0);
    assert_eq!(stored(&hub).await, 1);
}

#[tokio::test]
async fn a_reading_stored_but_not_acknowledged_is_delivered_again_and_kept_once() {
    let (hub, before) = crash_between_delivery_and_ack("publisher").await;
    assert_eq!(before, 1, "the commit happened before the publisher died");
    assert_eq!(
        stored(&hub).await,
        1,
        "the redelivery is recognised by its time"
    );
}

#[tokio::test]
async fn an_mqtts_broker_with_a_private_ca_is_trusted_through_mqtt_ca_cert_only() {
    let pki = testkit::pki::Pki::new("broker CA");
    let broker = Mosquitto::start_with(Options {
        tls: Some(pki.server("broker", 4_102_444_800)),
        ..Options::default()
    })
    .await
    .unwrap();
    let tls_url = format!("mqtts://localhost:{}", broker.tls_port.unwrap());
    let readings = subscribe(broker.port, "readings", "telemetry/+/temperature", false).await;
    let ca = pki.ca();
    let hub = TestHub::start(&[
        "--mqtt-url",
        &tls_url,
        "--mqtt-ca-cert",
        ca.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, 10_000, 3)).await.unwrap();
    until_all(&readings, &hub, 3).await;

    // Without the CA the broker is a stranger: said in /healthz, and
    // ingest goes on.
    let stranger = TestHub::start(&["--mqtt-url", &tls_url]).await.unwrap();
    let token = stranger.add_device("dev-1").await.unwrap();
    let mut device = stranger.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, 10_000, 3)).await.unwrap();
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let (_, body) = stranger.get("/healthz").await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(error) = body["mqtt"]["error"].as_str() {
            assert!(
                error.contains("certificate") || error.contains("Certificate"),
                "{error}"
            );
            assert_eq!(body["mqtt"]["connected"], false);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_mqtt_batch_each_message_holds_one_devices_readings_and_none_is_lost() {
    let mut broker = Mosquitto::start_with(Options {
        persistent: true,
        large_queues: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let batches = subscribe(broker.port, "batches", "telemetry/+", true).await;
    let url = bridged(&broker);
    let hub = TestHub::start(&["--provision-key", "k", "--mqtt-url", &url, "--mqtt-batch"])
        .await
        .unwrap();
    let run = tokio::spawn(fleet::run(fleet_of(&hub, 3, 400)));
    until_some(&batches, 200).await;
    broker.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.resume().await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the fleet finished")
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    until_all(&batches, &hub, 1_200).await;
    let seen = batches.lock().unwrap().clone();
    let mut several = false;
    for (topic, payload, _) in &seen {
        let device = topic.strip_prefix("telemetry/").unwrap();
        let entries: Vec<serde_json::Value> = serde_json::from_str(payload).unwrap();
        several |= entries.len() > 1;
        let pos: Vec<i64> = entries.iter().map(|e| e["pos"].as_i64().unwrap()).collect();
        assert!(
            pos.windows(2).all(|w| w[0] < w[1]),
            "in storage order: {pos:?}"
        );
        assert!(
            entries.iter().all(|e| e["metric"] == "temperature"),
            "{payload}"
        );
        let rows: Vec<String> = sqlx::query_scalar("SELECT device FROM readings WHERE pos = ?")
            .bind(pos[0])
            .fetch_all(&hub.db().await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            rows,
            [device.to_owned()],
            "the topic names the readings' device"
        );
    }
    assert!(several, "some messages carry several readings");
}

/// A small deterministic generator (xorshift), for the fuzz pass below:
/// the same names every run, so a failure can be replayed.
struct Names(u64);

impl Names {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A name of 1 to 80 characters: every other one from characters a
    /// metric name may hold (spaces, signs, invisible and right-to-left
    /// marks, multibyte text), the rest with what MQTT and brokers treat
    /// specially besides (separators, wildcards, control characters).
    fn name(&mut self) -> String {
        const ALLOWED: &[char] = &[
            'a', 'Z', '0', '_', '-', '.', ' ', '=', '@', '$', '%', '\u{200b}', '\u{202e}',
            '\u{feff}', 'é', '温', '🌡',
        ];
        const SPECIAL: &[char] = &[
            '/', '+', '#', '\t', '\0', '\r', '\n', '\u{1b}', '\u{7f}', '\u{85}',
        ];
        let special = self.next().is_multiple_of(2);
        let len = 1 + self.next() % 80;
        (0..len)
            .map(|_| {
                let pick = self.next();
                if special && pick.is_multiple_of(4) {
                    SPECIAL[(pick / 4 % SPECIAL.len() as u64) as usize]
                } else {
                    ALLOWED[(pick % ALLOWED.len() as u64) as usize]
                }
            })
            .collect()
    }
}

#[tokio::test]
async fn fuzzed_metric_names_are_refused_at_hello_or_bridged_and_none_stalls_the_bridge() {
    use protocol::{DeviceFrame, Hello, MetricDescriptor, error_code};
    const DEVICES: usize = 8;
    const NAMES: usize = 240;

    // Hello: every name either refused (Error 1) or stored under it.
    let hub = TestHub::start(&[]).await.unwrap();
    let mut tokens = Vec::new();
    for i in 0..DEVICES {
        tokens.push(hub.add_device(&format!("fuzz-{i}")).await.unwrap());
    }
    let mut names = Names(0x5eed_1234_abcd_0001);
    let mut seqs = [0u64; DEVICES];
    let (mut stored, mut refused) = (0i64, 0);
    for i in 0..NAMES {
        let name = names.name();
        let device = i % DEVICES;
        let id = format!("fuzz-{device}");
        let mut client = hub.connect(&tokens[device]).await.unwrap();
        let hello = Hello {
            metrics: vec![MetricDescriptor {
                id: 1,
                name: name.clone(),
                unit: String::new(),
            }],
            ..e2e::hello(&id)
        };
        if protocol::is_valid_metric_name(&name) {
            client.greet(hello).await.unwrap();
            seqs[device] += 1;
            client
                .send_acked(&batch(seqs[device], 1_000_000, 1))
                .await
                .unwrap();
            stored += 1;
        } else {
            client.send(&DeviceFrame::Hello(hello)).await.unwrap();
            let (closed, _) = client.until_closed().await.unwrap();
            assert_eq!(closed.error, Some(error_code::MALFORMED), "{name:?}");
            refused += 1;
        }
    }
    assert!(
        stored > 20 && refused > 20,
        "{stored} stored, {refused} refused"
    );

    // Names a database from before the rule may hold: written as such a
    // hub would have, while no hub runs.
    let (_, dir) = hub.terminate().await.unwrap();
    let path = dir.path().join(testkit::hub::DB_FILE);
    let db = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let legacy = [
        "tab\there",
        "nul\0x",
        "a/b",
        "x+y",
        "#",
        "esc\u{1b}[31m",
        "c1\u{85}",
    ];
    for name in legacy {
        let metric: i64 = sqlx::query_scalar(
            "INSERT INTO metrics (device, name, unit)
             SELECT id, ?, '' FROM devices WHERE device_id = 'fuzz-0' RETURNING id",
        )
        .bind(name)
        .fetch_one(&db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO samples (metric, ts_ms, value) VALUES (?, 5000000, 1.5)")
            .bind(metric)
            .execute(&db)
            .await
            .unwrap();
    }
    db.close().await;
    let stored = stored + legacy.len() as i64;

    // Bridged: every reading, the old names' included, reaches the broker.
    let broker = Mosquitto::start().await.unwrap();
    let readings = subscribe(broker.port, "fuzz", "telemetry/+/+", false).await;
    let url = bridged(&broker);
    let hub = TestHub::start_in(dir, "127.0.0.1:0", &["--mqtt-url", &url])
        .await
        .unwrap();
    until_all(&readings, &hub, stored as usize).await;
    // And the bridge goes on with what comes next.
    let mut client = hub.connect(&tokens[1]).await.unwrap();
    client.hello("fuzz-1").await.unwrap();
    client
        .send_acked(&batch(seqs[1] + 1, 2_000_000, 1))
        .await
        .unwrap();
    until_all(&readings, &hub, stored as usize + 1).await;
    let (_, health) = hub.get("/healthz").await.unwrap();
    assert!(health.contains(r#""connected":true"#), "{health}");
}

/// A batch of one temperature reading of `value`.
fn reading(seq: u64, value: f64) -> protocol::DeviceFrame {
    protocol::DeviceFrame::Batch(protocol::Batch {
        seq,
        base_ms: 1_000_000 + seq * 1_000,
        readings: vec![protocol::Reading {
            metric: 1,
            offset_ms: 0,
            value,
        }],
    })
}

#[tokio::test]
async fn alerts_are_retained_per_rule_with_a_problem_sensor_and_outlive_a_broker_outage() {
    let mut broker = Mosquitto::start_with(Options {
        persistent: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let url = bridged(&broker);
    let hub = TestHub::start(&["--mqtt-url", &url, "--mqtt-discovery", "homeassistant"])
        .await
        .unwrap();
    let rule = r#"{"name": "warm", "kind": "threshold", "metric": "temperature",
                   "condition": "above", "limit": 50.0}"#;
    let (status, body) = hub.post("/v1/alert-rules", rule).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let token = hub.add_device("freezer-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("freezer-1").await.unwrap();
    let topic = "telemetry/freezer-1/alert/warm";
    let watcher = subscribe(broker.port, "watcher", "telemetry/+/alert/+", false).await;

    device.send_acked(&reading(1, 60.0)).await.unwrap();
    until(&watcher, "the alert firing", |seen| {
        seen.iter()
            .any(|(t, payload, _)| t == topic && payload.contains(r#""state":"firing""#))
    })
    .await;
    let firing = last_json(&watcher, topic);
    assert_eq!(firing["rule"], "warm");
    assert_eq!(firing["value"], 60.0);

    // Resolved while the broker is down: once it is back, whoever
    // subscribes reads the resolution, retained.
    broker.stop().await.unwrap();
    device.send_acked(&reading(2, 40.0)).await.unwrap();
    broker.resume().await.unwrap();
    let resolved = |seen: &[Received]| {
        seen.iter()
            .any(|(t, payload, _)| t == topic && payload.contains(r#""state":"resolved""#))
    };
    until(&watcher, "the resolution", resolved).await;
    let later = subscribe(broker.port, "later", "telemetry/+/alert/+", false).await;
    until(&later, "the resolution, retained", |seen| {
        resolved(seen) && seen.iter().all(|(_, _, retained)| *retained)
    })
    .await;
    assert_eq!(last_json(&later, topic)["id"], firing["id"]);

    // Home Assistant sees it as a problem sensor of the device it has.
    let configs = subscribe(
        broker.port,
        "ha",
        "homeassistant/binary_sensor/+/+/config",
        false,
    )
    .await;
    let config_topic = "homeassistant/binary_sensor/telemetry__freezer-1/alert__warm/config";
    until(&configs, "the problem sensor's config", |seen| {
        seen.iter().any(|(t, _, _)| t == config_topic)
    })
    .await;
    let config = last_json(&configs, config_topic);
    assert_eq!(config["device_class"], "problem");
    assert_eq!(config["state_topic"], topic);
    assert_eq!(config["device"]["identifiers"][0], "telemetry__freezer-1");
}

#[tokio::test]
async fn configuration_changes_from_mqtt_reach_the_device_and_its_standing_is_retained() {
    let broker = Mosquitto::start_with(Options::default()).await.unwrap();
    let url = bridged(&broker);
    let hub = TestHub::start(&["--provision-key", "k", "--mqtt-url", &url])
        .await
        .unwrap();
    let run = tokio::spawn(fleet::run(fleet_of(&hub, 1, 1_000_000)));
    let results = subscribe(
        broker.port,
        "cfg-results",
        "telemetry/+/config/set/result",
        false,
    )
    .await;
    hub.until_online("sim-1").await.unwrap();

    let (topic, changed) = ask(
        &results,
        broker.port,
        "telemetry/sim-1/config/set",
        r#"{"sample_interval_ms": 250}"#,
    )
    .await;
    assert_eq!(topic, "telemetry/sim-1/config/set/result");
    assert_eq!(changed, serde_json::json!({"ok": true, "version": 1}));
    let (_, bad) = ask(&results, broker.port, "telemetry/sim-1/config/set", "[1]").await;
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["error"], "bad_config", "{bad}");
    let (_, unknown) = ask(&results, broker.port, "telemetry/nobody/config/set", "{}").await;
    assert_eq!(unknown["error"], "unknown_device", "{unknown}");

    // The standing, retained: a subscriber that comes later reads it as the
    // device applied it.
    let deadline = tokio::time::Instant::now() + 2 * e2e::PATIENCE;
    loop {
        let later = subscribe(broker.port, "cfg-later", "telemetry/sim-1/config", false).await;
        let applied = later
            .holds(Duration::from_millis(500), |seen| {
                seen.iter().any(|(_, payload, retained)| {
                    *retained && payload.contains(r#""state":"applied""#)
                })
            })
            .await;
        if applied {
            let standing = last_json(&later, "telemetry/sim-1/config");
            assert_eq!(standing["version"], 1);
            assert_eq!(standing["desired"]["sample_interval_ms"], 250);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retained as applied"
        );
    }
    // In the history as MQTT's.
    let (_, config) = hub.get("/v1/devices/sim-1/config").await.unwrap();
    assert!(config.contains(r#""desired_by":"mqtt""#), "{config}");
    run.abort();
}
