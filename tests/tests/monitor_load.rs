//! How the monitor page holds up under a large fleet: 1,000 devices with
//! five metrics each at one reading a second (5,000 events a second on the
//! page's stream), measured with Chromium's long-task observer. Not part of
//! the suite (it measures):
//!
//! ```sh
//! cargo test -p e2e --test monitor_load -- --ignored --nocapture
//! ```

use std::time::Duration;

use device_sim::fleet;
use e2e::TestHub;
use e2e::browser::Browser;

#[tokio::test]
#[ignore = "a measurement: run it by hand, the README says what it showed"]
async fn the_monitor_under_a_thousand_devices() {
    let key = "load";
    let hub = TestHub::start(&["--provision-key", key]).await.unwrap();
    let config = hub::demo::fleet(
        &hub.addr,
        device_sim::fleet::Credential::ProvisionKey(key.into()),
        telemetry_device::keyring::Keyring::in_memory(),
        1_000,
        Duration::from_secs(5 * 60),
    )
    .unwrap();
    let run = tokio::spawn(fleet::run(config));
    // Let the backfill land, so the page opens on a fleet in its live state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, metrics) = hub.get("/metrics").await.unwrap();
        let stored = metrics
            .lines()
            .find_map(|line| line.strip_prefix("hub_readings_received_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if stored >= 1_000.0 * 5.0 * 300.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backfill took too long: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .eval(
            "window.longTasks = [];
             new PerformanceObserver(list => { for (const e of list.getEntries()) window.longTasks.push(e.duration); })
                 .observe({ type: 'longtask', buffered: true });
             window.seenEvents = 0;
             const s = new EventSource('/v1/events');
             s.addEventListener('reading', () => { window.seenEvents += 1; });
             return true;",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let result = browser
        .eval(
            "const t = window.longTasks.slice().sort((a, b) => a - b);
             return { events: window.seenEvents, count: t.length,
                      total_ms: t.reduce((a, b) => a + b, 0),
                      p50: t[Math.floor(t.length / 2)] || 0, max: t[t.length - 1] || 0,
                      cards: document.querySelectorAll('.card').length,
                      heap_mb: (performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null) };",
        )
        .await
        .unwrap();
    println!("monitor under 1,000 devices × 5 metrics, 30 s: {result}");
    browser.quit().await;
    run.abort();
}
