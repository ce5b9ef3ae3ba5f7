//! The HTTP API attacked by schemathesis, a standard OpenAPI fuzzer, with
//! the hub's own document (`/v1/openapi.json`): no 5xx, every answer matches
//! the document, every error is the JSON error shape, bad input is refused
//! and good input accepted (tests/schemathesis/schemathesis.toml says where
//! a rule spans parameters). `scripts/test.sh` installs schemathesis, pinned,
//! in a virtual environment and names it in `SCHEMATHESIS`.

use std::path::PathBuf;
use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, Credential, FleetConfig};
use e2e::TestHub;
use telemetry_device::endpoint;

/// Both the monitor token and the provisioning key: schemathesis sends one
/// `Authorization` header to every endpoint, so `/v1/ws` is reached too.
const SECRET: &str = "schemathesis-secret";

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS").map(PathBuf::from);
    match path {
        Some(path) if path.exists() => path,
        _ => panic!(
            "schemathesis is not installed: run `bash scripts/test.sh`, which installs it \
             in a virtual environment, or set SCHEMATHESIS to its `st` program"
        ),
    }
}

#[tokio::test]
async fn schemathesis_finds_nothing_against_the_document() {
    let st = schemathesis();
    let hub = TestHub::start(&["--monitor-token", SECRET, "--provision-key", SECRET])
        .await
        .unwrap();
    hub.add_device("registered-but-offline").await.unwrap();
    // A device that answers commands for as long as schemathesis sends them.
    let device = DeviceSettings {
        rate: Some(1.0),
        ..DeviceSettings::new(endpoint(&format!("ws://{}", hub.addr)).unwrap())
    };
    let fleet = tokio::spawn(fleet::run(FleetConfig::new(
        1,
        Credential::ProvisionKey(SECRET.into()),
        device,
    )));
    let deadline = tokio::time::Instant::now() + e2e::PATIENCE;
    loop {
        let (_, body) = testkit::http::get(
            &hub.addr,
            "/v1/devices",
            &[("authorization", &format!("Bearer {SECRET}"))],
        )
        .await
        .unwrap();
        if body.contains(r#""id":"sim-1""#) && body.contains(r#""online":true"#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sim-1 never came online: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis/schemathesis.toml");
    let reports = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(&st)
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", hub.addr))
        .args(["-H", &format!("Authorization: Bearer {SECRET}")])
        // Its own files (caches, reports) stay out of the source tree.
        .current_dir(reports.path())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    fleet.abort();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It tested every operation it selected, and selected all there are.
    let count = |label: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .map(|rest| rest.trim().to_owned())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"))
    };
    let selected = count("Selected:");
    let (selected, total) = selected.split_once('/').unwrap();
    assert_eq!(selected, total, "{report}");
    assert_eq!(count("Tested:"), selected, "{report}");
}
