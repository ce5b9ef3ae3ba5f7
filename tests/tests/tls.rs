//! TLS on the hub itself (`--tls-cert`, `--tls-key`), against the real
//! process with the test certificates: devices over wss straight to the
//! hub, https with HSTS and a Secure monitor cookie, a client that never
//! speaks TLS dropped, and SIGHUP reloads that keep the old certificate
//! when the new files are bad.

use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{Credential, FleetConfig};
use e2e::TestHub;
use e2e::fleets;
use e2e::tls::{fixture, https_get};
use futures_util::{SinkExt, StreamExt};
use protocol::HubFrame;
use telemetry_device::endpoint;
use telemetry_device::tls::client_config;
use tokio_tungstenite::tungstenite::Message;

/// A hub on TLS with copies of the test certificate and key in `files`, so
/// a test can change them under it.
async fn tls_hub(files: &tempfile::TempDir, extra: &[&str]) -> TestHub {
    let cert = files.path().join("hub.pem");
    let key = files.path().join("hub.key");
    std::fs::copy(fixture("hub.pem"), &cert).unwrap();
    std::fs::copy(fixture("hub.key"), &key).unwrap();
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    TestHub::start(&args).await.unwrap()
}

/// The hub's port, for `localhost` URLs (the certificate's name).
fn port(hub: &TestHub) -> &str {
    hub.addr.rsplit_once(':').unwrap().1
}

#[tokio::test]
async fn devices_stream_over_wss_straight_to_the_hub() {
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(&files, &["--provision-key", "k"]).await;
    let url = endpoint(&format!("wss://localhost:{}", port(&hub))).unwrap();
    let device = DeviceSettings {
        batch: 5,
        tls: Some(client_config(Some(&fixture("ca.pem")), "--ca-cert").unwrap()),
        ..fleets::quick_device(url, 100.0, 100)
    };
    let config = fleets::fleet_of(3, device);
    let summary = fleets::run_complete(config).await;
    let db = hub.db().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap();
    // 100 readings from each of three devices, all stored.
    assert_eq!(stored, summary.acked as i64);
    assert_eq!(summary.acked, 3 * 100);
}

#[tokio::test]
async fn https_answers_carry_hsts_and_the_monitor_cookie_is_secure() {
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(&files, &["--monitor-token", "t0k3n"]).await;
    let addr = format!("localhost:{}", port(&hub));
    let health = https_get(&addr, "/healthz").await.unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(
        health.headers["strict-transport-security"],
        "max-age=31536000"
    );
    let page = https_get(&addr, "/?token=t0k3n").await.unwrap();
    assert_eq!(page.status, 303);
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port is not served.
    assert!(
        testkit::http::get(&hub.addr, "/healthz", &[])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_client_that_never_speaks_tls_is_dropped_after_the_header_deadline() {
    use tokio::io::AsyncReadExt;
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(&files, &["--header-read-timeout", "300ms"]).await;
    let mut silent = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(e2e::PATIENCE, silent.read_to_end(&mut rest))
        .await
        .expect("the hub closed the silent connection")
        .ok();
    let addr = format!("localhost:{}", port(&hub));
    assert_eq!(https_get(&addr, "/healthz").await.unwrap().status, 200);
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_to_new_clients_keeps_old_connections_and_survives_a_bad_one()
 {
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(&files, &[]).await;
    let addr = format!("localhost:{}", port(&hub));
    let hangup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &hub.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let reloads = |result: &'static str| {
        let addr = addr.clone();
        async move {
            let metrics = https_get(&addr, "/metrics").await.unwrap().body;
            let series = format!("hub_tls_reloads_total{{result=\"{result}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&series))
                .map(|n| n.parse::<u64>().unwrap())
        }
    };
    let until = |result: &'static str, count: u64| async move {
        let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
        while reloads(result).await != Some(count) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {result} reload counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(reloads("ok").await, Some(0));
    let first = https_get(&addr, "/healthz").await.unwrap().certificate;
    assert_eq!(first, der(&fixture("hub.pem")));

    // A device connected before the renewal.
    let token = hub.add_device("dev-1").await.unwrap();
    let url = endpoint(&format!("wss://{addr}")).unwrap();
    let trust = client_config(Some(&fixture("ca.pem")), "--ca-cert").unwrap();
    let mut device = telemetry_device::link::connect(&url, Some(trust), &token)
        .await
        .unwrap();
    telemetry_device::link::hello(&mut device, e2e::hello("dev-1"))
        .await
        .unwrap();

    // Renewed: a new certificate and key in place, then SIGHUP.
    let renewed = e2e::tls::test_ca().server("renewed", 4_070_908_800);
    std::fs::copy(&renewed.cert, files.path().join("hub.pem")).unwrap();
    std::fs::copy(&renewed.key, files.path().join("hub.key")).unwrap();
    hangup();
    until("ok", 1).await;
    // A new client gets the new certificate …
    let now = https_get(&addr, "/healthz").await.unwrap().certificate;
    assert_eq!(now, der(&renewed.cert));
    // … and the device connected before keeps streaming on its connection.
    for seq in 1..=3 {
        device
            .send(Message::Binary(e2e::batch(seq, 1_000, 5).encode().into()))
            .await
            .unwrap();
        loop {
            let message = device.next().await.unwrap().unwrap();
            if let Message::Binary(bytes) = message
                && let HubFrame::Ack(ack) = HubFrame::decode(&bytes).unwrap()
            {
                assert_eq!(ack.seq, seq);
                break;
            }
        }
    }

    // A broken certificate file: logged, counted, and the old one served.
    std::fs::write(files.path().join("hub.pem"), "not a certificate").unwrap();
    hangup();
    until("failed", 1).await;
    assert_eq!(https_get(&addr, "/healthz").await.unwrap().status, 200);
}

/// The DER of the first certificate in a PEM file.
fn der(pem: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

/// A fleet of one device streaming `count` readings over wss.
async fn stream_over_wss(hub: &TestHub, count: u64) {
    let url = endpoint(&format!("wss://localhost:{}", port(hub))).unwrap();
    let device = DeviceSettings {
        kinds: vec![device_sim::sensors::SensorKind::Temperature],
        rate: Some(200.0),
        batch: 5,
        flush: Duration::from_millis(20),
        count: Some(count),
        tls: Some(client_config(Some(&fixture("ca.pem")), "--ca-cert").unwrap()),
        keyring: hub.keyring(),
        ..DeviceSettings::new(url)
    };
    let config = FleetConfig::new(1, Credential::ProvisionKey("k".into()), device);
    let _summary = fleets::run_complete(config).await;
}

#[tokio::test]
async fn the_live_stream_works_over_http2_resuming_flushing_and_keeping_alive() {
    use http_body_util::{BodyExt, Empty};
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(&files, &["--provision-key", "k", "--keep-alive", "300ms"]).await;
    stream_over_wss(&hub, 10).await;

    // A client that offers only h2 by ALPN gets it.
    let (mut sender, _ended) = h2_connection(&hub).await;
    let request = hyper::Request::get(format!(
        "https://localhost:{}/v1/events?last_event_id=0",
        port(&hub)
    ))
    .body(Empty::<bytes::Bytes>::new())
    .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut read_until = async |done: &dyn Fn(&str) -> bool, text: &mut String| {
        while !done(text) {
            let frame = tokio::time::timeout(e2e::PATIENCE, body.frame())
                .await
                .unwrap_or_else(|_| panic!("not done with {text:?}"))
                .expect("the stream goes on")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    // Resume from storage: the ten stored readings, in order (the device's
    // statuses hold positions among them).
    read_until(&|text| reading_ids(text).len() == 10, &mut text).await;
    let all_ids: Vec<i64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(all_ids.windows(2).all(|w| w[0] < w[1]), "{all_ids:?}");
    // Keep-alive comments are flushed on an idle stream.
    read_until(&|text| text.contains(": keep-alive\n"), &mut text).await;
    // And new readings are pushed as they are committed.
    stream_over_wss(&hub, 5).await;
    read_until(&|text| reading_ids(text).len() == 15, &mut text).await;
}

/// The ids of the `reading` events in a stream's text.
fn reading_ids(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|event| event.contains("\nevent: reading\n"))
        .filter_map(|event| event.strip_prefix("id: ")?.split('\n').next())
        .collect()
}

#[tokio::test]
async fn a_browser_gets_http2_and_many_streams_share_one_origin() {
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(&files, &["--provision-key", "k"]).await;
    // The browser trusts the test CA, as a user who installed it would.
    let browser = e2e::browser::Browser::start_trusting(&fixture("ca.pem"))
        .await
        .unwrap();
    browser
        .goto(&format!("https://localhost:{}/", port(&hub)))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    let protocol = browser
        .eval("return performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await
        .unwrap();
    assert_eq!(protocol, "h2");
    // Eight more streams beside the page's own: over HTTP/1.1 a browser
    // holds six connections per origin and three of them would never open.
    browser
        .eval(
            "window.counts = Array(8).fill(0); window.opened = 0;
             for (let i = 0; i < 8; i++) {
               const s = new EventSource('/v1/events');
               s.onopen = () => { window.opened += 1; };
               s.addEventListener('reading', () => { window.counts[i] += 1; });
             }
             return true;",
        )
        .await
        .unwrap();
    browser
        .wait_for("eight open streams", "return window.opened === 8")
        .await
        .unwrap();
    stream_over_wss(&hub, 20).await;
    browser
        .wait_for(
            "every stream's readings",
            "return window.counts.every(c => c === 20)",
        )
        .await
        .unwrap();
    browser.quit().await;
}

/// An HTTP/2 connection to the hub (a client that offers only `h2` by
/// ALPN), and a task that ends when the connection does.
async fn h2_connection(
    hub: &TestHub,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = (*client_config(Some(&fixture("ca.pem")), "--ca-cert").unwrap()).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&hub.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, ended)
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_one_with_a_live_stream_is_not() {
    let files = tempfile::tempdir().unwrap();
    let hub = tls_hub(
        &files,
        &["--header-read-timeout", "500ms", "--keep-alive", "200ms"],
    )
    .await;
    let get = |path: &str| {
        hyper::Request::get(format!("https://localhost:{}{path}", port(&hub)))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // One request, then nothing: the hub closes the connection (before,
    // an HTTP/2 connection stayed open for as long as the client liked).
    let (mut idle, idle_ended) = h2_connection(&hub).await;
    let response = idle.send_request(get("/healthz")).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    tokio::time::timeout(e2e::PATIENCE, idle_ended)
        .await
        .expect("the hub closed the idle connection")
        .unwrap();

    // A live stream keeps its connection busy well past the deadline.
    let (mut live, live_ended) = h2_connection(&hub).await;
    let response = live.send_request(get("/v1/events")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = String::new();
    let open_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < open_until {
        use http_body_util::BodyExt;
        let frame = tokio::time::timeout(e2e::PATIENCE, body.frame())
            .await
            .expect("keep-alive comments flow")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains(": keep-alive"), "{text}");
    assert!(!live_ended.is_finished(), "a live stream is not idle");
}
