//! Hostile clients, as an attacker would try them with the documented
//! interfaces only: each test answers one of the holes a hostile pass found
//! (SECURITY.md, "Hostile input"), against the real hub, with an honest
//! client working beside the hostile one where it could be harmed.

use std::time::Duration;

use e2e::{RawDevice, TestHub, batch, hello};
use protocol::limits::{MAX_METRICS, MAX_METRICS_PER_DEVICE, MAX_SEQ, MAX_SEQ_JUMP};
use protocol::{
    Batch, CommandResult, DeviceFrame, Hello, HubFrame, MetricDescriptor, Reading, error_code,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite;

fn status_of(err: tungstenite::Error) -> u16 {
    match err {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

/// A `Hello` for `device` sent as it is, and how the hub ended the
/// connection.
async fn refused(hub: &TestHub, credential: &str, hello: Hello) -> e2e::Closed {
    let mut device = hub.connect(credential).await.unwrap();
    device.send(&DeviceFrame::Hello(hello)).await.unwrap();
    device.until_closed().await.unwrap().0
}

async fn count(hub: &TestHub, sql: &'static str) -> i64 {
    let db = hub.db().await.unwrap();
    let n = sqlx::query_scalar(sql).fetch_one(&db).await.unwrap();
    db.close().await;
    n
}

#[tokio::test]
async fn the_provisioning_key_never_reaches_a_device_with_a_token_of_its_own() {
    let hub = TestHub::start(&["--provision-key", "fleet-key"])
        .await
        .unwrap();
    let token = hub.add_device("boiler-3").await.unwrap();
    let mut real = hub.connect(&token).await.unwrap();
    real.hello("boiler-3").await.unwrap();
    real.send_acked(&batch(1, 1_000_000, 3)).await.unwrap();

    // The key holder names the device: refused, and the real one stays.
    let closed = refused(&hub, "fleet-key", hello("boiler-3")).await;
    assert_eq!(closed.error, Some(error_code::WRONG_DEVICE));
    assert_eq!(closed.close_code, Some(1008));
    real.send_acked(&batch(2, 2_000_000, 3)).await.unwrap();

    // An operator's command reaches the real device, and its answer comes
    // back.
    let addr = hub.addr.clone();
    let asked = tokio::spawn(async move {
        testkit::http::request(
            &addr,
            "POST",
            "/v1/devices/boiler-3/commands",
            &[],
            Some(r#"{"name":"ping"}"#),
        )
        .await
        .unwrap()
    });
    let HubFrame::Command(command) = real.recv().await.unwrap() else {
        panic!("the command went elsewhere");
    };
    real.send(&DeviceFrame::CommandResult(CommandResult {
        id: command.id,
        ok: true,
        detail: "the real boiler".into(),
    }))
    .await
    .unwrap();
    let (status, body) = asked.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("the real boiler"), "{body}");
    assert_eq!(count(&hub, "SELECT count(*) FROM readings").await, 6);
}

#[tokio::test]
async fn a_device_the_key_registers_gets_a_token_and_after_its_first_batch_only_that_token_works() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let mut device = hub.connect("k").await.unwrap();
    let first = device.greet(hello("fleet-1")).await.unwrap();
    let lost = first.token.expect("a token comes before Welcome");
    assert_eq!(lost.len(), 64);
    drop(device);

    // The device lost its token before any batch: the key registers it
    // again, with a new token.
    let mut device = hub.connect("k").await.unwrap();
    let again = device.greet(hello("fleet-1")).await.unwrap();
    let token = again.token.expect("a new token");
    assert_ne!(token, lost);
    device.send_acked(&batch(1, 1_000_000, 3)).await.unwrap();
    drop(device);

    // Its first batch showed it holds the token: the key is refused now,
    // the replaced token is unknown, and the kept one works.
    let closed = refused(&hub, "k", hello("fleet-1")).await;
    assert_eq!(closed.error, Some(error_code::WRONG_DEVICE));
    assert_eq!(status_of(hub.connect(&lost).await.unwrap_err()), 401);
    let mut device = hub.connect(&token).await.unwrap();
    let greeting = device.greet(hello("fleet-1")).await.unwrap();
    assert_eq!(greeting.welcome.last_seq, 1);
    assert_eq!(greeting.token, None, "a device with a token gets no other");

    // A device of protocol version 1 could not keep a token.
    let mut old = hello("fleet-2");
    old.version = 1;
    let closed = refused(&hub, "k", old).await;
    assert_eq!(closed.error, Some(error_code::UNSUPPORTED_VERSION));
}

#[tokio::test]
async fn a_device_registered_before_tokens_were_issued_is_claimed_once() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    // What migrations/0005 leaves of a device the key registered before:
    // no token, and the key may still reach it.
    let db = sqlx::SqlitePool::connect(&format!("sqlite:{}", hub.db_path().display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO devices (device_id, created_ms, key_claimable) VALUES ('old-1', 0, 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let mut device = hub.connect("k").await.unwrap();
    let greeting = device.greet(hello("old-1")).await.unwrap();
    let token = greeting.token.expect("its token, at last");
    device.send_acked(&batch(1, 1_000_000, 1)).await.unwrap();
    drop(device);
    let closed = refused(&hub, "k", hello("old-1")).await;
    assert_eq!(closed.error, Some(error_code::WRONG_DEVICE));
    let mut device = hub.connect(&token).await.unwrap();
    assert_eq!(device.hello("old-1").await.unwrap().last_seq, 1);
}

#[tokio::test]
async fn a_seq_far_ahead_or_past_the_range_is_refused_and_nothing_after_it_is_lost() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("dev-1").await.unwrap();
    device.send_acked(&batch(5, 1_000_000, 2)).await.unwrap();
    device
        .send(&batch(5 + MAX_SEQ_JUMP + 1, 2_000_000, 2))
        .await
        .unwrap();
    let (closed, _) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::SEQ_TOO_FAR));

    let mut device = hub.connect(&token).await.unwrap();
    assert_eq!(device.hello("dev-1").await.unwrap().last_seq, 5);
    device
        .send(&DeviceFrame::Batch(Batch {
            seq: MAX_SEQ + 1,
            base_ms: 3_000_000,
            readings: vec![Reading {
                metric: 1,
                offset_ms: 0,
                value: 1.0,
            }],
        }))
        .await
        .unwrap();
    let (closed, _) = device.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::MALFORMED));

    // The device's next batches are stored: nothing was adopted.
    let mut device = hub.connect(&token).await.unwrap();
    assert_eq!(device.hello("dev-1").await.unwrap().last_seq, 5);
    device.send_acked(&batch(6, 4_000_000, 2)).await.unwrap();
    assert_eq!(count(&hub, "SELECT count(*) FROM readings").await, 4);
}

/// Sends pings for `how_long` without reading anything, until the hub
/// stops taking them; returns how many went out.
async fn flood_pings(device: &mut RawDevice, how_long: Duration) -> u64 {
    let until = tokio::time::Instant::now() + how_long;
    let mut sent = 0;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(1), device.ping()).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    sent
}

#[tokio::test]
async fn a_ping_flood_is_closed_for_its_budget_before_and_after_hello() {
    let hub = TestHub::start(&["--provision-key", "k", "--device-max-frames-per-s", "100"])
        .await
        .unwrap();
    let mut before_hello = hub.connect("k").await.unwrap();
    flood_pings(&mut before_hello, Duration::from_secs(2)).await;
    let (closed, _) = before_hello.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::RATE_LIMITED));

    let token = hub.add_device("dev-1").await.unwrap();
    let mut after_hello = hub.connect(&token).await.unwrap();
    after_hello.hello("dev-1").await.unwrap();
    flood_pings(&mut after_hello, Duration::from_secs(2)).await;
    let (closed, _) = after_hello.until_closed().await.unwrap();
    assert_eq!(closed.error, Some(error_code::RATE_LIMITED));
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_costs_the_hub_bounded_memory() {
    // No frame budget at all: only the bounded write side holds memory.
    let hub = TestHub::start(&["--device-max-frames-per-s", "0"])
        .await
        .unwrap();
    let honest = hub.add_device("honest").await.unwrap();
    let flooder = hub.add_device("flooder").await.unwrap();
    let mut device = hub.connect(&honest).await.unwrap();
    device.hello("honest").await.unwrap();
    device.send_acked(&batch(1, 1_000_000, 1)).await.unwrap();
    let before = hub.rss_kib();

    let mut hostile = hub.connect(&flooder).await.unwrap();
    hostile.hello("flooder").await.unwrap();
    let flood = tokio::spawn(async move {
        let sent = flood_pings(&mut hostile, Duration::from_secs(5)).await;
        (sent, hostile)
    });
    let mut peak = before;
    let mut seq = 2;
    while !flood.is_finished() {
        peak = peak.max(hub.rss_kib());
        device
            .send_acked(&batch(seq, 1_000_000 + seq * 1_000, 1))
            .await
            .unwrap();
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, _hostile) = flood.await.unwrap();
    peak = peak.max(hub.rss_kib());
    assert!(sent > 10_000, "a flood: {sent} pings");
    // Before the write side was bounded, this grew by a gigabyte.
    assert!(
        peak < before + 64 * 1024,
        "resident memory went from {before} KiB to {peak} KiB under {sent} pings"
    );
    assert!(seq > 10, "the honest device streamed meanwhile");
}

/// Reads what the hub answers on a raw connection until it closes it.
async fn answer_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(e2e::PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the hub closed the connection")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A command request whose body stops after a few bytes of the 100 it
/// announced.
async fn unfinished_body(addr: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/devices/dev-1/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"na",
        )
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn a_body_that_never_finishes_gets_408_and_connections_past_the_cap_are_closed_at_once() {
    // A deadline far above the wait for the fifth connection below, so a
    // busy machine cannot make one look like the other.
    let hub = TestHub::start(&["--header-read-timeout", "3s", "--max-connections", "4"])
        .await
        .unwrap();
    let mut slow = unfinished_body(&hub.addr).await;
    let answer = answer_until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");

    // Four such requests fill --max-connections; a fifth connection is
    // closed at once, long before the deadline.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(unfinished_body(&hub.addr).await);
    }
    let mut fifth = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(1_500), fifth.read(&mut byte))
        .await
        .expect("closed before the deadline");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Their deadline passes; the hub serves again.
    for stream in &mut held {
        assert!(
            answer_until_closed(stream)
                .await
                .starts_with("HTTP/1.1 408")
        );
    }
    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
}

/// A `Hello` of `device` declaring `names`, with ids from 1.
fn hello_with(device: &str, names: &[String]) -> Hello {
    Hello {
        metrics: names
            .iter()
            .enumerate()
            .map(|(i, name)| MetricDescriptor {
                id: u16::try_from(i + 1).unwrap(),
                name: name.clone(),
                unit: String::new(),
            })
            .collect(),
        ..hello(device)
    }
}

/// One reading of each of a `Hello`'s `metrics` metrics.
fn batch_of_each(seq: u64, metrics: usize) -> DeviceFrame {
    DeviceFrame::Batch(Batch {
        seq,
        base_ms: 1_700_000_000_000 + seq * 1_000,
        readings: (1..=metrics)
            .map(|id| Reading {
                metric: u16::try_from(id).unwrap(),
                offset_ms: 0,
                value: id as f64,
            })
            .collect(),
    })
}

#[tokio::test]
async fn a_device_stops_at_its_metric_cap_and_its_history_still_answers_at_the_cap() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("plc-1").await.unwrap();
    let names: Vec<String> = (0..MAX_METRICS_PER_DEVICE)
        .map(|i| format!("tag-{i:03}"))
        .collect();
    for (seq, chunk) in (1..).zip(names.chunks(MAX_METRICS)) {
        let mut device = hub.connect(&token).await.unwrap();
        device.greet(hello_with("plc-1", chunk)).await.unwrap();
        device
            .send_acked(&batch_of_each(seq, chunk.len()))
            .await
            .unwrap();
    }
    // One more is refused, and says why; what it has still works.
    let closed = refused(&hub, &token, hello_with("plc-1", &["tag-256".to_owned()])).await;
    assert_eq!(closed.error, Some(error_code::TOO_MANY_METRICS));
    assert_eq!(closed.close_code, Some(1008));
    let mut device = hub.connect(&token).await.unwrap();
    device
        .greet(hello_with("plc-1", &names[..8]))
        .await
        .unwrap();

    let (status, body) = hub
        .get("/v1/readings?device=plc-1&limit=1000")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["readings"].as_array().unwrap().len(), 256);
    let (status, body) = hub
        .get("/v1/readings?device=plc-1&step=1m&from=1700000000000&to=1700000600000")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = hub.get("/v1/devices").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn csv_exports_neutralise_formulas_and_hello_refuses_control_characters() {
    let hub = TestHub::start(&[]).await.unwrap();
    let token = hub.add_device("sheet-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device
        .greet(Hello {
            metrics: vec![
                MetricDescriptor {
                    id: 1,
                    name: "=HYPERLINK(\"x\")".into(),
                    unit: "@SUM(1)".into(),
                },
                MetricDescriptor {
                    id: 2,
                    name: "-2*3".into(),
                    unit: "=1".into(),
                },
            ],
            ..hello("sheet-1")
        })
        .await
        .unwrap();
    device.send_acked(&batch_of_each(1, 2)).await.unwrap();
    let (status, csv) = hub
        .get("/v1/readings?device=sheet-1&format=csv")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        csv.contains(r#"sheet-1,"'=HYPERLINK(""x"")","'@SUM(1)","#),
        "{csv}"
    );
    assert!(csv.contains(r#"sheet-1,"'-2*3","'=1","#), "{csv}");
    let (status, csv) = hub
        .get("/v1/readings?device=sheet-1&step=1m&from=1700000000000&to=1700000600000&format=csv")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(csv.contains(r#""'-2*3","'=1","#), "{csv}");

    for name in ["tab\there", "nul\0", "esc\u{1b}[31m"] {
        let closed = refused(&hub, &token, hello_with("sheet-1", &[name.to_owned()])).await;
        assert_eq!(closed.error, Some(error_code::MALFORMED), "{name:?}");
    }
}

#[tokio::test]
async fn sighup_without_tls_is_logged_and_the_hub_serves_on_and_stops_in_order() {
    let hub = TestHub::start(&[]).await.unwrap();
    for _ in 0..3 {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &hub.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    let (exit, _) = hub.terminate().await.unwrap();
    assert!(exit.success(), "an orderly stop: {exit:?}");
}

#[tokio::test]
async fn a_second_hub_on_the_same_database_refuses_to_start_and_names_the_first() {
    let hub = TestHub::start(&[]).await.unwrap();
    let out = tokio::process::Command::new(e2e::hub_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(hub.db_path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&hub.db_path().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pid {}", hub.pid())), "{stderr}");
    let (status, _) = hub.get("/healthz").await.unwrap();
    assert_eq!(status, 200, "the first hub is unharmed");

    // Once the first has stopped, the file is free.
    let (_, dir) = hub.terminate().await.unwrap();
    let again = TestHub::start_in(dir, "127.0.0.1:0", &[]).await.unwrap();
    assert_eq!(again.get("/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn an_open_hub_answers_only_for_its_addresses_localhost_and_listed_names() {
    let hub = TestHub::start(&["--allowed-host", "hub.plant.example"])
        .await
        .unwrap();
    let get = |host: &'static str| {
        let addr = hub.addr.clone();
        async move {
            testkit::http::get(&addr, "/v1/devices", &[("host", host)])
                .await
                .unwrap()
        }
    };
    // A page of attacker.example rebound to 127.0.0.1 sends its own name.
    let (status, body) = get("attacker.example:8080").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");
    for host in ["127.0.0.1:8080", "localhost:8080", "hub.plant.example"] {
        assert_eq!(get(host).await.0, 200, "{host}");
    }

    // A hub with a token: the token decides, whatever the name.
    let guarded = TestHub::start(&["--monitor-token", "s3cret"])
        .await
        .unwrap();
    let (status, _) = testkit::http::get(
        &guarded.addr,
        "/v1/devices",
        &[("host", "any.example"), ("authorization", "Bearer s3cret")],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
}
