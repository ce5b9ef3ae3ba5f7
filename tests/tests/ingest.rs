//! Device ingest against the real hub: acknowledged means stored, resends
//! are stored once, and bad clients are refused without harming others.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::{RawDevice, TestHub, batch};
use protocol::{DeviceFrame, Hello, HubFrame, MetricDescriptor, Reading, error_code, limits};
use tokio_tungstenite::tungstenite;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn count(hub: &TestHub, sql: &'static str) -> i64 {
    let db = hub.db().await.unwrap();
    let n = sqlx::query_scalar(sql).fetch_one(&db).await.unwrap();
    db.close().await;
    n
}

fn status_of(err: tungstenite::Error) -> u16 {
    match err {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn acknowledged_batches_are_stored_with_names_units_and_times() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    let welcome = device.hello("dev-1").await.unwrap();
    assert_eq!(welcome.last_seq, 0);
    assert_eq!(welcome.sample_interval_ms, 1_000);

    let base = 1_700_000_000_000;
    for seq in 1..=5 {
        device
            .send_acked(&batch(seq, base + seq * 100_000, 10))
            .await
            .unwrap();
    }

    let db = hub.db().await.unwrap();
    let rows: Vec<(String, String, String, i64, f64)> =
        sqlx::query_as("SELECT device, metric, unit, ts_ms, value FROM readings ORDER BY pos")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(
        rows[0],
        (
            "dev-1".into(),
            "temperature".into(),
            "°C".into(),
            (base + 100_000) as i64,
            1_000.0
        )
    );
    assert_eq!(rows[49].3, (base + 500_000 + 9_000) as i64);
    assert_eq!(rows[49].4, 5_009.0);
}

#[tokio::test]
async fn the_largest_batch_is_stored_whole_across_many_socket_reads() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    let largest = u32::try_from(limits::MAX_READINGS_PER_BATCH).unwrap();
    let frame = batch(1, 1_000_000, largest);
    // Far larger than the hub's 1 KiB per-connection read buffer.
    assert!(frame.encode().len() > 16 * 1024);
    device.send_acked(&frame).await.unwrap();
    device.send_acked(&batch(2, 2_000_000, 3)).await.unwrap();
    assert_eq!(
        count(&hub, "SELECT count(*) FROM readings").await,
        i64::from(largest) + 3
    );
}

#[tokio::test]
async fn a_resent_batch_is_acknowledged_again_and_stored_once() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    for seq in 1..=5 {
        device.send_acked(&batch(seq, 1_000_000, 10)).await.unwrap();
    }
    drop(device);

    // The device lost the last acks and resends from seq 3.
    let mut device = hub.connect(&token).await.unwrap();
    let welcome = device.hello("dev-1").await.unwrap();
    assert_eq!(
        welcome.last_seq, 5,
        "Welcome tells the device what is committed"
    );
    for seq in 3..=6 {
        device.send_acked(&batch(seq, 1_000_000, 10)).await.unwrap();
    }
    assert_eq!(count(&hub, "SELECT count(*) FROM readings").await, 60);
    assert_eq!(
        count(
            &hub,
            "SELECT count(*) FROM (SELECT value FROM readings GROUP BY value HAVING count(*) > 1)"
        )
        .await,
        0,
        "no reading is stored twice"
    );
}

#[tokio::test]
async fn missing_wrong_or_revoked_tokens_get_401_before_the_upgrade() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();

    let missing = RawDevice::connect(&hub.addr, None).await.unwrap_err();
    assert_eq!(status_of(missing), 401);
    let wrong = hub.connect("not-a-token").await.unwrap_err();
    assert_eq!(status_of(wrong), 401);

    let out = hub.cli(&["device", "revoke", "dev-1"]).await.unwrap();
    assert!(out.status.success());
    let revoked = hub.connect(&token).await.unwrap_err();
    assert_eq!(status_of(revoked), 401);
}

#[tokio::test]
async fn a_401_explains_itself_in_json() {
    let hub = TestHub::start(&[]).await.unwrap();
    let (status, body) = hub.get("/v1/ws").await.unwrap();
    assert_eq!(status, 401);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn a_connection_without_hello_in_time_is_closed() {
    let hub = TestHub::start(&["--hello-timeout", "300ms"]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    let (closed, _) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::HELLO_TIMEOUT));
    assert_eq!(closed.close_code, Some(1008));
}

#[tokio::test]
async fn pings_keep_a_live_device_connected_and_drop_a_silent_one() {
    let hub = TestHub::start(&["--ping-interval", "200ms"]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();

    // Reading its socket, the client answers the hub's pings by itself.
    let mut alive = hub.connect(&token).await.unwrap();
    alive.hello("dev-1").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), alive.recv())
            .await
            .is_err(),
        "no frame, only pings, for five ping intervals"
    );
    alive.send_acked(&batch(1, 0, 1)).await.unwrap();

    // Not reading, it cannot answer: the hub gives up after two intervals.
    let mut silent = hub.connect(&token).await.unwrap();
    silent.hello("dev-1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (closed, _) = silent.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::IDLE_TIMEOUT));
    assert_eq!(closed.close_code, Some(1008));
}

/// What a misbehaving device does after connecting.
enum Misbehaviour {
    Bytes(Vec<u8>),
    Text,
    Frames(Vec<DeviceFrame>),
}

fn hello(device_id: &str) -> DeviceFrame {
    DeviceFrame::Hello(e2e::hello(device_id))
}

#[tokio::test]
async fn bad_frames_get_an_error_and_a_close_while_another_device_keeps_streaming() {
    // The good device sends as fast as acks come back, past any sensible
    // per-device budget: that is not what this test is about.
    let hub = TestHub::start(&["--device-max-frames-per-s", "0"])
        .await
        .unwrap();
    let good_token = hub.add_device("good").await.unwrap();
    let bad_token = hub.add_device("bad").await.unwrap();

    // The good device streams throughout.
    let mut good = hub.connect(&good_token).await.unwrap();
    good.hello("good").await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let streamer = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            seq += 1;
            good.send_acked(&batch(seq, 1_000, 5)).await.unwrap();
            if stop_rx.try_recv().is_ok() {
                return seq;
            }
        }
    });

    let cases = [
        (
            "garbage",
            Misbehaviour::Bytes(vec![0xff; 16]),
            error_code::MALFORMED,
            1008,
        ),
        (
            "trailing bytes",
            Misbehaviour::Bytes({
                let mut b = hello("bad").encode();
                b.push(0);
                b
            }),
            error_code::MALFORMED,
            1008,
        ),
        (
            "over the frame limit",
            Misbehaviour::Bytes(vec![0; limits::MAX_FRAME_BYTES + 100]),
            error_code::TOO_LARGE,
            1009,
        ),
        (
            "a text message",
            Misbehaviour::Text,
            error_code::MALFORMED,
            1008,
        ),
        (
            "batch before hello",
            Misbehaviour::Frames(vec![batch(1, 0, 1)]),
            error_code::UNEXPECTED_FRAME,
            1008,
        ),
        (
            "another device's id",
            Misbehaviour::Frames(vec![hello("good")]),
            error_code::WRONG_DEVICE,
            1008,
        ),
        (
            "a second hello",
            Misbehaviour::Frames(vec![hello("bad"), hello("bad")]),
            error_code::UNEXPECTED_FRAME,
            1008,
        ),
        (
            "seq going backwards",
            Misbehaviour::Frames(vec![hello("bad"), batch(5, 0, 1), batch(4, 0, 1)]),
            error_code::SEQ_NOT_INCREASING,
            1008,
        ),
        (
            "an undeclared metric",
            Misbehaviour::Frames(vec![
                hello("bad"),
                DeviceFrame::Batch(protocol::Batch {
                    seq: 1,
                    base_ms: 0,
                    readings: vec![Reading {
                        metric: 9,
                        offset_ms: 0,
                        value: 1.0,
                    }],
                }),
            ]),
            error_code::UNKNOWN_METRIC,
            1008,
        ),
        (
            "an unsupported version",
            Misbehaviour::Frames(vec![DeviceFrame::Hello(Hello {
                version: 99,
                device_id: "bad".into(),
                model: String::new(),
                firmware: String::new(),
                metrics: vec![],
            })]),
            error_code::UNSUPPORTED_VERSION,
            1008,
        ),
    ];
    for (what, misbehaviour, expected_error, expected_close) in cases {
        let mut bad = hub.connect(&bad_token).await.unwrap();
        match misbehaviour {
            Misbehaviour::Bytes(bytes) => {
                // A refused oversized send may fail on the client side once
                // the hub has closed; the close is what matters.
                let _ = bad.send_raw(bytes).await;
            }
            Misbehaviour::Text => bad.send_text("hello").await.unwrap(),
            Misbehaviour::Frames(frames) => {
                for frame in frames {
                    bad.send(&frame).await.unwrap();
                }
            }
        }
        let (closed, _) = bad.until_closed().await.unwrap();
        assert_eq!(closed.error, Some(expected_error), "{what}: error code");
        assert_eq!(
            closed.close_code,
            Some(expected_close),
            "{what}: close code"
        );
    }

    // A message far over the limit is not even read: the device may still be
    // sending it when the hub gives up, so the Error and close reach it only
    // at best. The connection must end and the hub count the refusal.
    let mut bad = hub.connect(&bad_token).await.unwrap();
    let _ = bad.send_raw(vec![0; 1 << 20]).await;
    let (closed, _) = bad.until_closed().await.unwrap();
    assert!(
        matches!(closed.error, None | Some(error_code::TOO_LARGE)),
        "{closed:?}"
    );
    let (_, metrics) = hub.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("hub_rejects_total{reason=\"protocol\"} 11"),
        "{metrics}"
    );

    stop_tx.send(()).unwrap();
    let sent = streamer.await.unwrap();
    assert_eq!(
        count(&hub, "SELECT count(*) FROM readings WHERE device = 'good'").await,
        sent as i64 * 5
    );
    // Only the valid batch 5 sent before the backwards seq was stored.
    assert_eq!(
        count(&hub, "SELECT count(*) FROM readings WHERE device = 'bad'").await,
        1
    );
}

#[tokio::test]
async fn a_second_connection_of_a_device_replaces_the_first() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut first = hub.connect(&token).await.unwrap();
    first.hello("dev-1").await.unwrap();
    let mut second = hub.connect(&token).await.unwrap();
    second.hello("dev-1").await.unwrap();
    let (closed, _) = first.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::REPLACED));
    second.send_acked(&batch(1, 0, 1)).await.unwrap();
}

#[tokio::test]
async fn revoking_a_device_closes_its_open_connection() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();

    let out = hub.cli(&["device", "revoke", "dev-1"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = std::time::Instant::now();
    let (closed, _) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::REVOKED));
    assert_eq!(closed.close_code, Some(1008));
    // The watcher polls four times a second; this is a bound on behaviour
    // (the "within a second"), with slack for a loaded machine.
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_provisioning_key_registers_unknown_devices_and_a_wrong_key_is_refused() {
    let hub = TestHub::start(&["--provision-key", "fleet-secret"])
        .await
        .unwrap();
    let mut device = hub.connect("fleet-secret").await.unwrap();
    let greeting = device.greet(e2e::hello("fleet-7")).await.unwrap();
    assert_eq!(greeting.welcome.last_seq, 0);
    let token = greeting.token.expect("the hub issues the device its token");
    device.send_acked(&batch(1, 0, 3)).await.unwrap();
    drop(device);

    // The issued token lets it back in, and the hub remembers its seq (the
    // key no longer does: `hostile` tests that).
    let mut device = hub.connect(&token).await.unwrap();
    assert_eq!(device.hello("fleet-7").await.unwrap().last_seq, 1);

    assert_eq!(
        status_of(hub.connect("fleet-secreT").await.unwrap_err()),
        401
    );
    let (_, body) = hub.get("/v1/devices").await.unwrap();
    assert!(body.contains("\"id\":\"fleet-7\""), "{body}");
}

#[tokio::test]
async fn a_revoked_device_cannot_come_back_with_the_provisioning_key() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let mut device = hub.connect("k").await.unwrap();
    device.hello("fleet-1").await.unwrap();
    drop(device);
    assert!(
        hub.cli(&["device", "revoke", "fleet-1"])
            .await
            .unwrap()
            .status
            .success()
    );
    let mut device = hub.connect("k").await.unwrap();
    device.send(&hello("fleet-1")).await.unwrap();
    let (closed, _) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::REVOKED));
}

#[tokio::test]
async fn nan_and_infinity_are_stored_as_null() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    let readings = [f64::NAN, f64::INFINITY, 1.5]
        .into_iter()
        .enumerate()
        .map(|(i, value)| Reading {
            metric: 1,
            offset_ms: i as u32,
            value,
        })
        .collect();
    device
        .send_acked(&DeviceFrame::Batch(protocol::Batch {
            seq: 1,
            base_ms: 0,
            readings,
        }))
        .await
        .unwrap();
    assert_eq!(
        count(&hub, "SELECT count(*) FROM readings WHERE value IS NULL").await,
        2
    );
    assert_eq!(
        count(&hub, "SELECT count(*) FROM readings WHERE value = 1.5").await,
        1
    );
}

#[tokio::test]
async fn the_read_api_returns_what_was_stored() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, 10_000, 10)).await.unwrap(); // ts 10_000 .. 19_000

    let (status, body) = hub
        .get("/v1/readings?device=dev-1&metric=temperature&from=12000&to=15000")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let readings = body["readings"].as_array().unwrap();
    let times: Vec<i64> = readings
        .iter()
        .map(|r| r["ts_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(times, [12_000, 13_000, 14_000]);
    assert_eq!(readings[0]["value"], 1_002.0);
    assert_eq!(readings[0]["unit"], "°C");
    assert_eq!(body["next"], serde_json::Value::Null);

    // Pages of four: `next` and the Link header lead through all ten, once.
    let mut path = "/v1/readings?limit=4".to_owned();
    let mut positions = Vec::new();
    loop {
        let response = testkit::http::client()
            .get(format!("http://{}{path}", hub.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        positions.extend(
            body["readings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["pos"].as_i64().unwrap()),
        );
        let Some(next) = body["next"].as_str() else {
            assert!(headers.get("link").is_none());
            break;
        };
        let link = headers["link"].to_str().unwrap();
        path = link
            .strip_prefix('<')
            .and_then(|link| link.strip_suffix(">; rel=\"next\""))
            .unwrap()
            .to_owned();
        assert!(path.ends_with(&format!("cursor={next}")), "{path}");
    }
    // The ten readings' positions, in storage order, each once (the
    // device's online event takes a position of the same sequence, before
    // or after them as the presence recorder's timing has it).
    let db = hub.db().await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT pos FROM readings ORDER BY pos")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(stored.len(), 10);
    assert_eq!(positions, stored);

    let (status, csv) = hub
        .get("/v1/readings?device=dev-1&format=csv&limit=2")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "pos,device,metric,unit,ts_ms,value");
    assert_eq!(
        lines[1],
        format!("{},dev-1,temperature,°C,10000,1000", stored[0])
    );
    assert_eq!(lines.len(), 3);

    let (status, body) = hub.get("/v1/readings?from=noon").await.unwrap();
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["parameter"], "from");

    let (status, body) = hub.get("/v1/devices").await.unwrap();
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dev = &body["devices"][0];
    assert_eq!(dev["id"], "dev-1");
    assert_eq!(dev["online"], true);
    assert_eq!(dev["last_seq"], 1);
    assert_eq!(dev["metrics"][0]["name"], "temperature");

    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = hub.get("/metrics").await.unwrap();
    assert!(metrics.contains("hub_rows_committed_total 10"), "{metrics}");
    let (status, body) = hub.get("/nowhere").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("not_found"));
}

#[tokio::test]
async fn retention_deletes_old_readings_and_keeps_new_ones() {
    let hub = TestHub::start(&["--retention", "1h", "--retention-sweep", "200ms"])
        .await
        .unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    let now = now_ms();
    device
        .send_acked(&batch(1, now - 2 * 3_600_000, 5))
        .await
        .unwrap();
    device.send_acked(&batch(2, now, 5)).await.unwrap();

    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let total = count(&hub, "SELECT count(*) FROM readings").await;
        if total == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention left {total} readings"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(&hub, "SELECT CAST(min(value) AS INTEGER) FROM readings").await,
        2_000
    );
}

#[tokio::test]
async fn metrics_keep_their_history_by_name_when_a_device_renumbers_them() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(1, 0, 2)).await.unwrap();
    drop(device);

    let mut device = hub.connect(&token).await.unwrap();
    device
        .send(&DeviceFrame::Hello(Hello {
            version: 1,
            device_id: "dev-1".into(),
            model: String::new(),
            firmware: "2".into(),
            metrics: vec![MetricDescriptor {
                id: 40,
                name: "temperature".into(),
                unit: "°C".into(),
            }],
        }))
        .await
        .unwrap();
    assert!(matches!(device.recv().await.unwrap(), HubFrame::Welcome(_)));
    let renumbered = DeviceFrame::Batch(protocol::Batch {
        seq: 2,
        base_ms: 0,
        readings: vec![Reading {
            metric: 40,
            offset_ms: 0,
            value: 7.0,
        }],
    });
    device.send_acked(&renumbered).await.unwrap();
    assert_eq!(
        count(&hub, "SELECT count(DISTINCT metric) FROM samples").await,
        1
    );
    assert_eq!(
        count(
            &hub,
            "SELECT count(*) FROM readings WHERE metric = 'temperature'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn a_device_past_its_frame_budget_is_closed_while_others_stream_on() {
    let hub = TestHub::start(&["--device-max-frames-per-s", "20"])
        .await
        .unwrap();
    let noisy_token = hub.add_device("noisy").await.unwrap();
    let calm_token = hub.add_device("calm").await.unwrap();
    let mut noisy = hub.connect(&noisy_token).await.unwrap();
    noisy.hello("noisy").await.unwrap();
    let mut calm = hub.connect(&calm_token).await.unwrap();
    calm.hello("calm").await.unwrap();

    // A second's worth (20) may come at once; the 21st and later may not.
    let now = now_ms();
    for seq in 1..=40 {
        if noisy
            .send(&batch(seq, now + seq * 10_000, 1))
            .await
            .is_err()
        {
            break;
        }
    }
    let (closed, acks) = noisy.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::RATE_LIMITED));
    assert_eq!(closed.close_code, Some(1008));
    assert!(acks.len() <= 22, "{acks:?}");

    for seq in 1..=5 {
        calm.send_acked(&batch(seq, now + seq * 10_000, 3))
            .await
            .unwrap();
    }
    // What came within the budget was stored (acknowledged or not: the
    // device learns which from its next Welcome); nothing past it was.
    let stored = count(&hub, "SELECT count(*) FROM readings WHERE device = 'noisy'").await;
    assert!((20..=22).contains(&stored), "{stored}");
    let (_, metrics) = hub.get("/metrics").await.unwrap();
    assert!(
        metrics.contains("hub_rejects_total{reason=\"rate_limited\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn devices_past_max_devices_get_503_before_the_upgrade() {
    let hub = TestHub::start(&["--max-devices", "1"]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut first = hub.connect(&token).await.unwrap();
    first.hello("dev-1").await.unwrap();
    assert_eq!(status_of(hub.connect(&token).await.unwrap_err()), 503);
    // The first goes on; when it leaves, the slot is free again.
    first.send_acked(&batch(1, now_ms(), 2)).await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    while hub.connect(&token).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_idle_connections_are_capped_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = TestHub::start(&["--header-read-timeout", "300ms", "--max-handshakes", "3"])
        .await
        .unwrap();
    // A slowloris: part of a request head, then nothing. The hub closes it.
    let mut slow = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(e2e::PATIENCE, slow.read_to_end(&mut rest))
        .await
        .expect("the hub closed the slow connection")
        .ok();

    // Three connections that say nothing fill the cap; a fourth is closed at
    // once, without waiting for the deadline.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&hub.addr).await.unwrap());
    }
    // Accepted in the order they connected: the fourth finds the cap full.
    let mut fourth = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(250), fourth.read(&mut buf))
        .await
        .expect("closed before the header deadline");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Once the idle ones time out, the hub serves again.
    drop(idle);
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        match hub.get("/healthz").await {
            Ok((200, _)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "never served again: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Headers past the limit get 431.
    let big = "x".repeat(32 * 1024);
    let (status, _) = testkit::http::get(&hub.addr, "/healthz", &[("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(status, 431);
}

#[tokio::test]
async fn floods_of_filters_paths_and_parameters_get_clear_answers_while_a_device_streams() {
    let hub = TestHub::start(&["--device-max-frames-per-s", "0"])
        .await
        .unwrap();
    let token = hub.add_device("good").await.unwrap();
    let mut good = hub.connect(&token).await.unwrap();
    good.hello("good").await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
    let streamer = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            seq += 1;
            good.send_acked(&batch(seq, 1_000, 5)).await.unwrap();
            let _ = acked_tx.send(seq);
            if stop_rx.try_recv().is_ok() {
                return seq;
            }
        }
    });

    // A filter naming 100,000 devices does not fit in a request head.
    let devices: Vec<String> = (0..100_000).map(|i| format!("d{i}")).collect();
    let devices = devices.join(",");
    for path in ["/v1/events", "/v1/readings"] {
        let status = raw_status(&hub.addr, &format!("{path}?device={devices}")).await;
        assert_eq!(status, 431, "{path}");
    }
    // Nor does a path of 100,000 segments.
    assert_eq!(raw_status(&hub.addr, &"/v1".repeat(100_000)).await, 431);
    // A long unknown path that fits is a JSON 404; a flood of parameters a
    // 400 naming the first unknown one; a huge limit a 400 naming `limit`.
    let answers = [
        (
            format!("/v1/{}", "x/".repeat(2_000)),
            404,
            "not_found",
            None,
        ),
        (
            format!("/v1/readings?{}", "colour=blue&".repeat(1_000)),
            400,
            "bad_parameter",
            Some("colour"),
        ),
        (
            "/v1/readings?limit=1000000000000".to_owned(),
            400,
            "bad_parameter",
            Some("limit"),
        ),
        (
            format!("/v1/events?{}", "device=a&".repeat(1_000)),
            200,
            "",
            None,
        ),
    ];
    for (path, want, error, parameter) in answers {
        if want == 200 {
            // Repeated filters replace each other; the stream opens.
            let sse = e2e::SseClient::connect(&hub.addr, &path, &[])
                .await
                .unwrap();
            assert_eq!(sse.status, 200);
            continue;
        }
        let (status, body) = hub.get(&path).await.unwrap();
        assert_eq!(status, want, "{}", &path[..40.min(path.len())]);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], error);
        if let Some(parameter) = parameter {
            assert_eq!(body["parameter"], parameter);
        }
    }

    // The device streams on: three more batches are acknowledged after
    // the floods.
    let after_floods = *acked.borrow_and_update();
    tokio::time::timeout(
        e2e::PATIENCE,
        acked.wait_for(|&seq| seq >= after_floods + 3),
    )
    .await
    .expect("the device kept streaming")
    .unwrap();
    stop_tx.send(()).unwrap();
    let sent = streamer.await.unwrap();
    assert_eq!(
        count(&hub, "SELECT count(*) FROM samples").await,
        i64::try_from(sent * 5).unwrap()
    );
}

/// The status the hub answers to `GET target`, sent by hand: HTTP clients
/// refuse to send targets this long.
async fn raw_status(addr: &str, target: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
    // The hub may answer and close before the whole request is written.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(e2e::PATIENCE, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {:?}", &answer[..answer.len().min(200)]))
}
