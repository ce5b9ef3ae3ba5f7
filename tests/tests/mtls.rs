//! Devices with client certificates (`--tls-client-ca`), certificates made
//! here with rcgen: a fleet whose devices each got their own certificate at
//! start streams everything; a certificate naming another device gets
//! `Error` 6, one from another CA fails the handshake, a revoked device's
//! is refused, and tokens keep working beside them. Also the served
//! certificate's expiry in `/metrics`.

use std::sync::Arc;

use device_sim::certs::ClientCerts;
use device_sim::device::DeviceSettings;
use device_sim::fleet::{Credential, FleetConfig};
use e2e::TestHub;
use e2e::fleets;
use e2e::tls::https_get_trusting;
use telemetry_device::endpoint;
use telemetry_device::tls::client_config;
use testkit::pki::Pki;

/// 2100-01-01T00:00:00Z.
const NOT_AFTER: i64 = 4_102_444_800;

/// A TLS hub whose certificate `pki` signed, taking device certificates
/// from `pki` too.
async fn mtls_hub(pki: &Pki) -> TestHub {
    let served = pki.server("hub", NOT_AFTER);
    let (cert, key, ca) = (served.cert, served.key, pki.ca());
    TestHub::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        ca.to_str().unwrap(),
        "--provision-key",
        "fleet-key",
    ])
    .await
    .unwrap()
}

fn url(hub: &TestHub) -> String {
    let port = hub.addr.rsplit_once(':').unwrap().1;
    endpoint(&format!("wss://localhost:{port}")).unwrap()
}

/// Connects presenting `certs` as `device_id` (no token) and says Hello as
/// `hello_as`: the Welcome, or the hub's refusal.
async fn hello_with(
    hub: &TestHub,
    pki: &Pki,
    certs: &ClientCerts,
    device_id: &str,
    hello_as: &str,
) -> anyhow::Result<protocol::Welcome> {
    let base = client_config(Some(&pki.ca()), "--ca-cert")?;
    let tls = certs.config_for(&base, device_id)?;
    let mut ws = telemetry_device::link::connect(&url(hub), Some(tls), "").await?;
    telemetry_device::link::hello(&mut ws, e2e::hello(hello_as)).await
}

#[tokio::test]
async fn devices_authenticate_by_certificate_beside_tokens() {
    let pki = Pki::new("fleet CA");
    let hub = mtls_hub(&pki).await;

    // Three devices, each issued its own certificate at start, no token.
    let device = DeviceSettings {
        batch: 5,
        tls: Some(client_config(Some(&pki.ca()), "--ca-cert").unwrap()),
        client_certs: Some(Arc::new(
            ClientCerts::issued_by(&pki.ca(), &pki.ca_key()).unwrap(),
        )),
        ..fleets::quick_device(url(&hub), 100.0, 100)
    };
    let config = FleetConfig::new(3, Credential::Certificate, device);
    let summary = fleets::run_complete(config).await;
    assert_eq!(summary.acked, 300);
    let db = hub.db().await.unwrap();
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT device, count(*) FROM readings GROUP BY device ORDER BY device")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [
            ("sim-1".into(), 100),
            ("sim-2".into(), 100),
            ("sim-3".into(), 100)
        ]
    );

    // One given certificate: its device is welcomed, a Hello as another
    // device is refused as a token for another device is.
    let issued = pki.device("meter-7");
    let one = ClientCerts::one(&issued.cert, &issued.key).unwrap();
    hello_with(&hub, &pki, &one, "meter-7", "meter-7")
        .await
        .unwrap();
    let wrong = hello_with(&hub, &pki, &one, "meter-7", "meter-8")
        .await
        .unwrap_err();
    assert!(format!("{wrong:#}").contains("(code 6)"), "{wrong:#}");
    // The fleet's provisioning key does not reach a device its certificate
    // registered.
    let mut ws = telemetry_device::link::connect(
        &url(&hub),
        Some(client_config(Some(&pki.ca()), "--ca-cert").unwrap()),
        "fleet-key",
    )
    .await
    .unwrap();
    let taken = telemetry_device::link::hello(&mut ws, e2e::hello("meter-7"))
        .await
        .unwrap_err();
    assert!(format!("{taken:#}").contains("(code 6)"), "{taken:#}");

    // A certificate from another CA does not get past the handshake.
    let stranger = Pki::new("another CA");
    let foreign = stranger.device("meter-9");
    let foreign = ClientCerts::one(&foreign.cert, &foreign.key).unwrap();
    let refused = hello_with(&hub, &pki, &foreign, "meter-9", "meter-9")
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}").starts_with("the hub refused this device's client certificate"),
        "{refused:#}"
    );

    // A revoked device's certificate no longer gets in.
    let out = hub.cli(&["device", "revoke", "meter-7"]).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let revoked = hello_with(&hub, &pki, &one, "meter-7", "meter-7")
        .await
        .unwrap_err();
    assert!(format!("{revoked:#}").contains("(code 10)"), "{revoked:#}");

    // Tokens work beside certificates, on the same port.
    let token = hub.add_device("with-token").await.unwrap();
    let base = client_config(Some(&pki.ca()), "--ca-cert").unwrap();
    let mut ws = telemetry_device::link::connect(&url(&hub), Some(base), &token)
        .await
        .unwrap();
    telemetry_device::link::hello(&mut ws, e2e::hello("with-token"))
        .await
        .unwrap();
}

#[tokio::test]
async fn metrics_show_when_the_served_certificate_lapses() {
    let pki = Pki::new("metrics CA");
    let hub = mtls_hub(&pki).await;
    let port = hub.addr.rsplit_once(':').unwrap().1;
    let metrics = https_get_trusting(&pki.ca(), &format!("localhost:{port}"), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics
            .body
            .contains(&format!("hub_tls_cert_expiry_seconds {NOT_AFTER}\n")),
        "{}",
        metrics.body
    );
}
