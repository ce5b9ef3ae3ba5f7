//! The reverse-proxy route, tested: Debian's nginx runs
//! `docs/deploy/nginx.conf` in front of a real hub. Devices stream through
//! it (WebSocket upgrades pass), a live event comes through unbuffered, long
//! before a keep-alive would push it out, and `Last-Event-ID` resumes
//! through it.

use std::time::Duration;

use device_sim::device::DeviceSettings;
use e2e::fleets;
use e2e::nginx::Nginx;
use e2e::{SseClient, TestHub, batch};
use telemetry_device::endpoint;

#[tokio::test]
async fn devices_and_browsers_work_through_the_documented_nginx_config() {
    // Keep-alives a minute apart: an event that waited in nginx's buffers
    // would come only with one.
    let hub = TestHub::start(&["--provision-key", "k", "--keep-alive", "60s"])
        .await
        .unwrap();
    let nginx = Nginx::start(&hub.addr).await.unwrap();

    let mut live = SseClient::connect(&nginx.addr, "/v1/events", &[])
        .await
        .unwrap();
    assert_eq!(live.status, 200);

    // One device's one reading, upgraded through nginx, reaches the browser
    // through nginx at once.
    let token = hub.add_device("dev-1").await.unwrap();
    let mut device = e2e::RawDevice::connect(&nginx.addr, Some(&token))
        .await
        .unwrap();
    device.hello("dev-1").await.unwrap();
    // Its status takes a position among the readings, moments after.
    let online = hub.until_status("dev-1", true).await.unwrap();
    device.send_acked(&batch(1, 1_000, 1)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), live.next_of("reading"))
        .await
        .expect("the event came through nginx unbuffered")
        .unwrap();
    assert_eq!(first.pos(), online + 1);

    // A fleet streams through it; everything is stored.
    let url = endpoint(&format!("ws://{}", nginx.addr)).unwrap();
    let settings = DeviceSettings {
        batch: 5,
        ..fleets::quick_device(url, 100.0, 100)
    };
    let config = fleets::fleet_of(3, settings);
    let summary = fleets::run_complete(config).await;
    assert_eq!(summary.acked, 300);
    let db = hub.db().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM samples")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(stored, 301);

    // A browser that saw up to 250 reconnects with Last-Event-ID and gets
    // exactly 251..=301 through nginx.
    let mut resumed = SseClient::connect(&nginx.addr, "/v1/events", &[("Last-Event-ID", "250")])
        .await
        .unwrap();
    let mut positions = Vec::new();
    while positions.len() < 51 {
        positions.push(resumed.next_of("reading").await.unwrap().pos());
    }
    assert_eq!(positions, (251..=301).collect::<Vec<_>>());
}
