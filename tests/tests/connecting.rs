//! device-sim run as a new user runs it: openssl's one-line self-signed
//! certificate, given as `--ca-cert`, is trusted; and each reason a device
//! cannot connect (the certificate not trusted, made for another name, a
//! refused token, nothing listening, no answer, the hub's `Error` frame)
//! is on the progress line and in the summary, and logged once however
//! often the device retries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::TestHub;
use e2e::tls::https_get_trusting;
use tokio::process::Command;

/// `openssl req -x509 …` as people paste it: a certificate for the IP
/// address 127.0.0.1 that marks itself a CA, and its key.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// What device-sim prints (stdout, then stderr: the summary, then the
/// progress lines and logs), and whether it exited 0.
async fn device_sim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(testkit::binary("device-sim-under-test"))
        .args(args)
        .env_remove("SIM_TOKEN")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A run of a device that never gets in, for `duration` and the grace
/// after it: its reason is in the summary's `last error`, on the progress
/// line, and logged once though it tried again and again.
async fn fails_with(duration: &str, args: Vec<&str>, reason: String) {
    let reason = reason.as_str();
    let mut all = vec!["--duration", duration, "--rate", "5"];
    all.extend(args);
    let (ok, stdout, stderr) = device_sim(&all).await;
    assert!(
        ok,
        "no --count: a run that delivered nothing still ends well"
    );
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("last error: "))
        .unwrap_or_else(|| panic!("no last error for {reason:?}: {stdout}"));
    assert!(summary.contains(reason), "{summary} (wanted {reason:?})");
    assert!(
        stderr.lines().any(|line| line.starts_with("connected 0/1")
            && line.contains(&format!("| last error: {reason}"))),
        "progress line without {reason:?}: {stderr}"
    );
    let logged = stderr
        .lines()
        .filter(|line| line.contains(" WARN ") && line.contains(reason))
        .count();
    assert_eq!(logged, 1, "logged once for {reason:?}: {stderr}");
}

#[tokio::test]
async fn a_self_signed_certificate_given_as_ca_cert_is_trusted_and_each_refusal_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let hub = TestHub::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let token = hub.add_device("boiler-3").await.unwrap();
    let port = hub.addr.rsplit_once(':').unwrap().1.to_owned();
    let wss_ip = format!("wss://127.0.0.1:{port}");
    let wss_name = format!("wss://localhost:{port}");
    let ca = cert.to_str().unwrap();

    // Trusted as curl --cacert trusts it: every reading gets in.
    let (ok, stdout, stderr) = device_sim(&[
        "--hub",
        &wss_ip,
        "--ca-cert",
        ca,
        "--token",
        &token,
        "--id",
        "boiler-3",
        "--count",
        "20",
        "--rate",
        "50",
        "--batch",
        "5",
    ])
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("acked 20"), "{stdout}");

    tokio::join!(
        // The same hub without --ca-cert: not trusted, and the flag named.
        fails_with(
            "3s",
            vec!["--hub", &wss_ip, "--token", &token, "--id", "boiler-3"],
            "the hub's certificate is not trusted".into(),
        ),
        // Trusted, but reached by a name it is not for.
        fails_with(
            "3s",
            vec![
                "--hub",
                &wss_name,
                "--ca-cert",
                ca,
                "--token",
                &token,
                "--id",
                "boiler-3"
            ],
            "the hub's certificate is not for localhost: it names 127.0.0.1".into(),
        ),
        // In, with a token the hub does not know: its own reason.
        fails_with(
            "3s",
            vec!["--hub", &wss_ip, "--ca-cert", ca, "--token", "not-a-token"],
            "the hub refused the credential (HTTP 401 unauthorized): unknown or revoked token"
                .into(),
        ),
        // A token for another device: the hub's Error frame.
        fails_with(
            "3s",
            vec![
                "--hub",
                &wss_ip,
                "--ca-cert",
                ca,
                "--token",
                &token,
                "--id",
                "boiler-4"
            ],
            "hub refused Hello".into(),
        ),
    );

    // The hub counted the handshakes of the device that did not trust it.
    let metrics = https_get_trusting(&cert, &format!("127.0.0.1:{port}"), "/metrics")
        .await
        .unwrap()
        .body;
    let untrusted = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix("hub_tls_handshake_failures_total{reason=\"untrusted_by_client\"} ")
        })
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(untrusted >= 1, "{metrics}");
}

#[tokio::test]
async fn nothing_listening_and_no_answer_are_told_apart() {
    // A port nobody listens on: the listener is bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // A port that accepts and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let refused_hub = format!("ws://127.0.0.1:{closed_port}");
    let silent_hub = format!("ws://{silent_addr}");
    tokio::join!(
        fails_with(
            "3s",
            vec!["--hub", &refused_hub, "--token", "t"],
            format!("connection refused: nothing listens at 127.0.0.1:{closed_port}"),
        ),
        // Longer than the 10 s a connection may take.
        tokio::time::timeout(
            Duration::from_secs(60),
            fails_with(
                "11s",
                vec!["--hub", &silent_hub, "--token", "t"],
                format!("no answer from {silent_addr} within 10 s"),
            )
        ),
    )
    .1
    .unwrap();
    held.abort();
}
