//! The README's pictures of the monitor, made from the real page over a
//! real fleet. Not part of the suite (it only draws):
//!
//! ```sh
//! cargo test -p e2e --test screenshots -- --ignored
//! ```
//!
//! writes `docs/img/monitor.png` (every device), `docs/img/device.png`
//! (one device's hour) and `docs/img/device-config.png` (its configuration).

use std::path::Path;
use std::time::Duration;

use device_sim::fleet;
use e2e::TestHub;
use e2e::browser::Browser;
use telemetry_device::keyring::Keyring;

#[tokio::test]
#[ignore = "writes docs/img; run it by hand to refresh the README's screenshots"]
async fn regenerate_the_readme_screenshots() {
    let key = "screenshots";
    let hub = TestHub::start(&["--provision-key", key]).await.unwrap();
    let config = hub::demo::fleet(
        &hub.addr,
        fleet::Credential::ProvisionKey(key.into()),
        Keyring::in_memory(),
        6,
        Duration::from_secs(3_600),
    )
    .unwrap();
    let run = tokio::spawn(fleet::run(config));
    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/", hub.addr))
        .await
        .unwrap();
    browser
        .wait_for(
            "six cards with full sparklines",
            "const c = [...document.querySelectorAll('.card canvas')];
             return document.querySelectorAll('.card').length === 6
                 && c.every(x => Number(x.dataset.points) >= 85);",
        )
        .await
        .unwrap();
    // A few live seconds too, for the header's counters.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("monitor.png"),
        browser.screenshot_png().await.unwrap(),
    )
    .unwrap();

    browser
        .goto(&format!("http://{}/#device=sim-1&range=1h", hub.addr))
        .await
        .unwrap();
    browser
        .wait_for(
            "the device's charts",
            "const c = [...document.querySelectorAll('.chart canvas')];
             return c.length === 5 && c.every(x => Number(x.dataset.points) >= 55);",
        )
        .await
        .unwrap();
    std::fs::write(
        folder.join("device.png"),
        browser.screenshot_png().await.unwrap(),
    )
    .unwrap();

    // Its configuration, one setting applied and one the device refused.
    for (body, state) in [
        (r#"{"sample_interval_ms": 1000}"#, "applied"),
        (r#"{"led": "amber"}"#, "refused"),
    ] {
        let (status, answer) = testkit::http::request(
            &hub.addr,
            "PATCH",
            "/v1/devices/sim-1/config",
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{answer}");
        browser
            .wait_for(
                "the configuration's state",
                &format!(
                    "return document.getElementById('config-state').textContent === '{state}'"
                ),
            )
            .await
            .unwrap();
    }
    browser
        .eval("document.getElementById('config').scrollIntoView({block: 'center'}); return true")
        .await
        .unwrap();
    std::fs::write(
        folder.join("device-config.png"),
        browser.screenshot_png().await.unwrap(),
    )
    .unwrap();
    browser.quit().await;
    run.abort();
}
