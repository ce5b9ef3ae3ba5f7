//! The monitor in a real browser: the page shows live readings, and the
//! browser's own EventSource reconnect after a hub restart resumes with
//! Last-Event-ID, with no gap and no duplicate.

use std::time::Duration;

use device_sim::device::DeviceSettings;
use device_sim::fleet::{self, Credential, FleetConfig};
use device_sim::sensors::SensorKind;
use e2e::TestHub;
use e2e::browser::Browser;
use telemetry_device::endpoint;

fn fleet(hub: &TestHub, count: u64) -> FleetConfig {
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature, SensorKind::Pressure],
        batch: 4,
        ..hub.quick_device(40.0, count)
    };
    FleetConfig {
        seed: 11,
        ..FleetConfig::new(3, Credential::ProvisionKey("k".into()), device)
    }
}

#[tokio::test]
async fn the_monitor_page_shows_live_readings_and_resumes_after_a_hub_restart() {
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--provision-key",
        "k",
        "--sse-retry",
        "200ms",
        "--monitor-token",
        "t0k3n",
    ];
    let hub = TestHub::start_in(dir, &listen, &args).await.unwrap();
    let browser = Browser::start().await.unwrap();
    // The token is traded for a cookie: it leaves the address bar, scripts
    // cannot read it, and the page's requests (and ours below) carry it.
    browser
        .goto(&format!("http://{listen}/?token=t0k3n"))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    assert_eq!(
        browser
            .eval("return [location.search, document.cookie]")
            .await
            .unwrap(),
        serde_json::json!(["", ""]),
        "no token in the address, and an HttpOnly cookie"
    );
    // Beside the page's own stream, record every id a plain EventSource sees.
    browser
        .eval(
            "window.ids = []; const s = new EventSource('/v1/events');
             s.addEventListener('reading', e => window.ids.push(Number(e.lastEventId)));
             window.opened = 0; s.onopen = () => { window.opened += 1; }; return true;",
        )
        .await
        .unwrap();
    browser
        .wait_for("the test stream open", "return window.opened === 1")
        .await
        .unwrap();

    let first = fleet::run(fleet(&hub, 60)).await;
    assert!(first.complete(), "{first:?}");
    browser
        .wait_for("the first readings", "return window.ids.length === 180")
        .await
        .unwrap();
    browser
        .wait_for(
            "a card per device with values, seen just now",
            "return document.querySelectorAll('.card').length === 3 &&
                    [...document.querySelectorAll('.value')].every(v => v.textContent.trim() !== '–') &&
                    [...document.querySelectorAll('.seen')].every(v => v.textContent === 'last seen just now')",
        )
        .await
        .unwrap();

    // Restart the hub; more readings arrive while the browser is reconnecting.
    let (_, dir) = hub.terminate().await.unwrap();
    let hub = TestHub::start_in(dir, &listen, &args).await.unwrap();
    let second = fleet::run(fleet(&hub, 60)).await;
    assert!(second.complete(), "{second:?}");
    browser
        .wait_for("the reconnect", "return window.opened >= 2")
        .await
        .unwrap();
    browser
        .wait_for("every reading", "return window.ids.length >= 360")
        .await
        .unwrap();

    let ids: Vec<i64> =
        serde_json::from_value(browser.eval("return window.ids").await.unwrap()).unwrap();
    let db = hub.db().await.unwrap();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT pos FROM samples ORDER BY pos")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        ids, stored,
        "the browser saw every stored reading once, in order"
    );

    // The restart's refused reconnects are in its console; not checked.
    browser.quit().await;
}

#[tokio::test]
async fn sparklines_show_the_last_fifteen_minutes_as_soon_as_the_page_loads() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    // Twenty minutes of history, one sample a second, then done.
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        rate: Some(1.0),
        batch: 200,
        flush: Duration::from_millis(50),
        count: Some(20 * 60),
        backfill: Duration::from_secs(20 * 60),
        keyring: hub.keyring(),
        ..DeviceSettings::new(endpoint(&format!("ws://{}", hub.addr)).unwrap())
    };
    let summary = fleet::run(FleetConfig::new(
        2,
        Credential::ProvisionKey("k".into()),
        device,
    ))
    .await;
    assert!(summary.complete(), "{summary:?}");

    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/", hub.addr))
        .await
        .unwrap();
    // 15 minutes of 10-second buckets: about 90 points each, placed by time,
    // before any live reading arrives (the devices are done).
    browser
        .wait_for(
            "sparklines with history",
            "const c = [...document.querySelectorAll('.card canvas')];
             return c.length === 2 && c.every(x => Number(x.dataset.points) >= 85);",
        )
        .await
        .unwrap();
    let values = browser
        .eval("return [...document.querySelectorAll('.value')].map(v => v.textContent.trim())")
        .await
        .unwrap();
    assert!(
        values.as_array().unwrap().iter().all(|v| v != "–"),
        "the latest value comes from history too: {values}"
    );
    assert_eq!(
        browser.console_errors().await.unwrap(),
        Vec::<String>::new(),
        "the console stayed clean"
    );
    browser.quit().await;
}

#[tokio::test]
async fn the_device_view_charts_history_switches_ranges_and_sends_commands() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    // One device with half an hour behind it, still connected to answer.
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature, SensorKind::Humidity],
        rate: Some(2.0),
        batch: 200,
        flush: Duration::from_millis(100),
        backfill: Duration::from_secs(30 * 60),
        keyring: hub.keyring(),
        ..DeviceSettings::new(endpoint(&format!("ws://{}", hub.addr)).unwrap())
    };
    let run = tokio::spawn(fleet::run(FleetConfig::new(
        1,
        Credential::ProvisionKey("k".into()),
        device,
    )));
    hub.until_online("sim-1").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Straight to the device's address: it can be bookmarked.
    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/#device=sim-1&range=1h", hub.addr))
        .await
        .unwrap();
    browser
        .wait_for(
            "an hour's chart per metric, with axes",
            "const c = [...document.querySelectorAll('.chart canvas')];
             return c.length === 2 && document.querySelector('#device-view .dot.on')
                 && c.every(x => Number(x.dataset.points) >= 28
                 && x.dataset.xlabels.split('|').length === 5 && x.dataset.xlabels.endsWith('now')
                 && x.dataset.ylabels.split('|').length === 3)
                 && document.querySelector('#cards').hidden;",
        )
        .await
        .unwrap();
    browser
        .eval("document.querySelector('[data-range=\"15m\"]').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "fifteen minutes in 10-second buckets",
            "return location.hash.includes('range=15m')
                 && document.querySelector('[data-range=\"15m\"]').getAttribute('aria-pressed') === 'true'
                 && [...document.querySelectorAll('.chart canvas')].every(x => Number(x.dataset.points) >= 85);",
        )
        .await
        .unwrap();

    // A command from the form reaches the device; its answer shows.
    browser
        .eval(
            "document.getElementById('command-name').value = 'set_interval';
             document.getElementById('command-args').value = 'interval_ms=750';
             document.querySelector('#command button').click(); return true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the device's answer",
            "return document.getElementById('command-result').textContent === 'done: sampling every 750 ms'",
        )
        .await
        .unwrap();
    browser
        .eval(
            "document.getElementById('command-name').value = 'reboot';
             document.getElementById('command-args').value = '';
             document.querySelector('#command button').click(); return true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "a refusal",
            "return document.getElementById('command-result').textContent.startsWith('refused by the device')",
        )
        .await
        .unwrap();

    // Back to every device.
    browser
        .eval("document.querySelector('#device-view nav a').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "the cards again",
            "return !document.querySelector('#cards').hidden && document.querySelectorAll('.card').length === 1",
        )
        .await
        .unwrap();
    assert_eq!(
        browser.console_errors().await.unwrap(),
        Vec::<String>::new(),
        "the console stayed clean"
    );
    browser.quit().await;
    run.abort();
}

#[tokio::test]
async fn a_page_without_the_monitor_token_asks_for_it_and_keeps_it_out_of_the_address() {
    let hub = TestHub::start(&["--monitor-token", "s3cret"])
        .await
        .unwrap();
    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/", hub.addr))
        .await
        .unwrap();
    browser
        .wait_for(
            "the token form",
            "return getComputedStyle(document.getElementById('login')).display !== 'none'",
        )
        .await
        .unwrap();
    // A wrong one is said to be wrong, and leaves the address.
    browser
        .eval(
            "document.getElementById('token-input').value = 'guess';
             document.querySelector('#login button').click(); return true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the wrong token refused",
            "return document.getElementById('banner').textContent.includes('does not work')
                 && location.search === ''",
        )
        .await
        .unwrap();
    browser
        .eval(
            "document.getElementById('token-input').value = 's3cret';
             document.querySelector('#login button').click(); return true",
        )
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    assert_eq!(
        browser.eval("return location.search").await.unwrap(),
        serde_json::json!(""),
        "the token became a cookie and left the address"
    );
    // The one error is the 401 that made the page ask.
    let errors = browser.console_errors().await.unwrap();
    assert!(
        !errors.is_empty() && errors.iter().all(|e| e.contains("401")),
        "{errors:?}"
    );
    browser.quit().await;
}

/// A batch of one temperature reading of `value`, now.
fn reading_now(seq: u64, value: f64) -> protocol::DeviceFrame {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    protocol::DeviceFrame::Batch(protocol::Batch {
        seq,
        base_ms: now,
        readings: vec![protocol::Reading {
            metric: 1,
            offset_ms: 0,
            value,
        }],
    })
}

#[tokio::test]
async fn firing_alerts_stand_out_are_acknowledged_and_shade_the_device_charts() {
    let hub = TestHub::start(&[]).await.unwrap();
    let rule = r#"{"name": "warm", "kind": "threshold", "metric": "temperature",
                   "condition": "above", "limit": 50.0, "severity": "critical"}"#;
    let (status, body) = hub.post("/v1/alert-rules", rule).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let token = hub.add_device("freezer-1").await.unwrap();
    let mut device = hub.connect(&token).await.unwrap();
    device.hello("freezer-1").await.unwrap();
    device.send_acked(&reading_now(1, 20.0)).await.unwrap();
    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "the device's card",
            "return document.querySelectorAll('.card').length === 1",
        )
        .await
        .unwrap();

    device.send_acked(&reading_now(2, 60.0)).await.unwrap();
    browser
        .wait_for(
            "the alert in the header and on the card",
            "return document.getElementById('alert-count').textContent === '1' &&
                    document.getElementById('alerts-button').className === 'firing' &&
                    document.querySelector('.card').classList.contains('alerting') &&
                    document.querySelector('.card .badge').textContent === '1 alert'",
        )
        .await
        .unwrap();
    browser
        .eval("document.getElementById('alerts-button').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "the alert in the list, with its message",
            "const row = document.querySelector('#alert-list .alert.firing');
             return !!row && row.textContent.includes('freezer-1 temperature is 60 (limit 50)')",
        )
        .await
        .unwrap();
    browser
        .eval(
            "document.getElementById('ack-by').value = 'ana';
             document.querySelector('#alert-list .alert.firing button.ack').click(); return true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the alert acknowledged",
            "const row = document.querySelector('#alert-list .alert');
             return !!row && row.classList.contains('acknowledged') && row.textContent.includes('seen by ana')",
        )
        .await
        .unwrap();
    let db = hub.db().await.unwrap();
    let by: String = sqlx::query_scalar("SELECT acknowledged_by FROM alerts")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(by, "ana");
    db.close().await;

    // The device view shades the alert's span on the metric's chart.
    browser
        .eval("document.querySelector('#alert-list .alert a').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "the alert shaded on the chart, and listed",
            "const c = document.querySelector('#charts [data-metric=\"temperature\"] canvas');
             return !!c && c.dataset.alerts === '1' && !document.getElementById('dv-alerts').hidden",
        )
        .await
        .unwrap();

    // Opened from a bookmark, the device view still counts the fleet and
    // its readings in the header.
    browser
        .goto(&format!("http://{}/#device=freezer-1", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    let sending = tokio::spawn(async move {
        for seq in 3..40 {
            device.send_acked(&reading_now(seq, 61.0)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        device
    });
    browser
        .wait_for(
            "the header's counts",
            "return document.getElementById('total').textContent === '1' &&
                    document.getElementById('online').textContent === '1' &&
                    Number(document.getElementById('rate').textContent) > 0",
        )
        .await
        .unwrap();
    sending.await.unwrap();
    assert_eq!(
        browser.console_errors().await.unwrap(),
        Vec::<String>::new()
    );
    browser.quit().await;
}

#[tokio::test]
async fn a_viewer_of_a_group_sees_its_devices_without_controls_and_an_operator_gets_them() {
    let hub = TestHub::start(&[]).await.unwrap();
    let rule = r#"{"name": "warm", "kind": "threshold", "metric": "temperature",
                   "condition": "above", "limit": 50.0}"#;
    let (status, body) = hub.post("/v1/alert-rules", rule).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let mut connected = Vec::new();
    for (id, group) in [("fridge-1", "kitchen"), ("boiler-1", "plant")] {
        let out = hub
            .cli(&["device", "add", id, "--group", group])
            .await
            .unwrap();
        assert!(out.status.success());
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mut device = hub.connect(&token).await.unwrap();
        device.hello(id).await.unwrap();
        device.send_acked(&reading_now(1, 60.0)).await.unwrap();
        connected.push(device);
    }
    let key = |args: &'static [&'static str]| hub.add_key(args);
    let viewer = key(&["--role", "viewer", "--group", "kitchen", "--name", "wall"])
        .await
        .unwrap();
    let operator = key(&["--role", "operator", "--name", "shift"])
        .await
        .unwrap();
    // The hub reads its keys together: the last one made stands for both.
    hub.until_key_works(&operator).await.unwrap();
    let browser = Browser::start().await.unwrap();

    // The viewer: the kitchen's device only, its alert without a button,
    // no command form.
    browser
        .goto(&format!("http://{}/?token={viewer}", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "the kitchen's card only, and who is looking",
            "return document.querySelectorAll('.card').length === 1 &&
                    document.querySelector('.card').dataset.id === 'fridge-1' &&
                    document.getElementById('who').textContent === 'wall · viewer · kitchen' &&
                    document.getElementById('alert-count').textContent === '1'",
        )
        .await
        .unwrap();
    browser
        .eval("document.getElementById('alerts-button').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "the alert, without an acknowledge button",
            "const row = document.querySelector('#alert-list .alert.firing');
             return !!row && !row.querySelector('button.ack')",
        )
        .await
        .unwrap();
    browser
        .goto(&format!("http://{}/#device=fridge-1", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "the device view without a command form",
            "return document.getElementById('who').textContent !== '' &&
                    document.getElementById('command').offsetParent === null",
        )
        .await
        .unwrap();

    // The operator: every device, a group to filter by, the controls.
    browser
        .goto(&format!("http://{}/?token={operator}", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "both cards and the groups to filter by",
            "const groups = [...document.querySelectorAll('#group option')].map(o => o.value);
             return document.querySelectorAll('.card').length === 2 &&
                    groups.includes('kitchen') && groups.includes('plant')",
        )
        .await
        .unwrap();
    browser
        .eval(
            "const g = document.getElementById('group'); g.value = 'plant';
             g.dispatchEvent(new Event('change')); return true",
        )
        .await
        .unwrap();
    browser
        .wait_for(
            "the plant's card only",
            "return document.querySelectorAll('.card').length === 1 &&
                    document.querySelector('.card').dataset.id === 'boiler-1'",
        )
        .await
        .unwrap();
    browser
        .eval("document.getElementById('alerts-button').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "acknowledge buttons",
            "return document.querySelectorAll('#alert-list .alert.firing button.ack').length === 2",
        )
        .await
        .unwrap();
    browser
        .goto(&format!("http://{}/#device=boiler-1", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "the command form, and no activity list",
            "return document.getElementById('who').textContent === 'shift · operator' &&
                    document.getElementById('command').offsetParent !== null &&
                    document.getElementById('activity-button').hidden",
        )
        .await
        .unwrap();

    // An admin of every device follows the activity: what was done before
    // the page opened (the rule, added while the hub was open to all, and
    // a device), then what is done while it is open.
    let admin = key(&["--role", "admin", "--name", "boss"]).await.unwrap();
    hub.until_key_works(&admin).await.unwrap();
    let bearer = format!("Bearer {admin}");
    let add = |id: &'static str| {
        let (addr, bearer) = (hub.addr.clone(), bearer.clone());
        async move {
            let body = format!(r#"{{"id": "{id}"}}"#);
            testkit::http::request(
                &addr,
                "POST",
                "/v1/admin/devices",
                &[("Authorization", &bearer)],
                Some(&body),
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(add("mixer-1").await, 201);
    browser
        .goto(&format!("http://{}/?token={admin}", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "the activity so far",
            "return !document.getElementById('activity-button').hidden &&
                    document.querySelectorAll('#activity .entry').length === 2 &&
                    document.querySelector('#activity .entry:last-child').textContent.includes('open')",
        )
        .await
        .unwrap();
    browser
        .eval("document.getElementById('activity-button').click(); return true")
        .await
        .unwrap();
    assert_eq!(add("mixer-2").await, 201);
    browser
        .wait_for(
            "the new entry on top",
            "const top = document.querySelector('#activity .entry');
             return document.querySelectorAll('#activity .entry').length === 3 &&
                    top.textContent.includes('boss') && top.textContent.includes('device.add mixer-2')",
        )
        .await
        .unwrap();
    assert_eq!(
        browser.console_errors().await.unwrap(),
        Vec::<String>::new()
    );
    browser.quit().await;
    drop(connected);
}

#[tokio::test]
async fn the_device_view_shows_desired_against_what_runs_and_an_operator_changes_it() {
    let hub = TestHub::start(&["--provision-key", "k"]).await.unwrap();
    let device = DeviceSettings {
        kinds: vec![SensorKind::Temperature],
        rate: Some(5.0),
        batch: 1,
        keyring: hub.keyring(),
        ..DeviceSettings::new(endpoint(&format!("ws://{}", hub.addr)).unwrap())
    };
    let run = tokio::spawn(fleet::run(FleetConfig::new(
        1,
        Credential::ProvisionKey("k".into()),
        device,
    )));
    hub.until_online("sim-1").await.unwrap();
    let operator = hub
        .add_key(&["--role", "operator", "--name", "shift"])
        .await
        .unwrap();
    let viewer = hub
        .add_key(&["--role", "viewer", "--name", "wall"])
        .await
        .unwrap();
    // The hub reads its keys together: the last one made stands for both.
    hub.until_key_works(&viewer).await.unwrap();

    let browser = Browser::start().await.unwrap();
    browser
        .goto(&format!("http://{}/?token={operator}", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .goto(&format!("http://{}/#device=sim-1", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "nothing configured yet, and the form to change it",
            "return document.getElementById('config-state').textContent === 'none' &&
                    document.getElementById('config-summary').textContent.startsWith('Nothing set yet') &&
                    document.getElementById('config-edit').offsetParent !== null",
        )
        .await
        .unwrap();

    // A value set in the form reaches the device, which runs it.
    let set = |key: &str, value: &str| {
        format!(
            "document.getElementById('config-key').value = '{key}';
             document.getElementById('config-value').value = '{value}';
             document.querySelector('#config-edit button').click(); return true"
        )
    };
    browser
        .eval(&set("sample_interval_ms", "400"))
        .await
        .unwrap();
    browser
        .wait_for(
            "version 1 applied, desired and run alike",
            "const row = document.querySelector('#config tr[data-key=\"sample_interval_ms\"]');
             return document.getElementById('config-result').textContent.startsWith('Saved as version 1') &&
                    document.getElementById('config-state').textContent === 'applied' &&
                    !!row && row.cells[1].textContent === '400' && row.cells[2].textContent === '400' &&
                    !row.classList.contains('differs') &&
                    document.getElementById('config-summary').textContent.includes('Runs version 1')",
        )
        .await
        .unwrap();

    // A change made elsewhere shows up on the open page by its event.
    let (status, body) = testkit::http::request(
        &hub.addr,
        "PATCH",
        "/v1/devices/sim-1/config",
        &[
            ("Authorization", &format!("Bearer {operator}")),
            ("content-type", "application/json"),
        ],
        Some(r#"{"batch": 2}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    browser
        .wait_for(
            "the other change, applied",
            "const row = document.querySelector('#config tr[data-key=\"batch\"]');
             return !!row && row.cells[2].textContent === '2' &&
                    document.getElementById('config-state').textContent === 'applied'",
        )
        .await
        .unwrap();
    // A page that has not seen the latest version (as when its stream
    // was away) changes nothing over it: it says so and shows the latest.
    browser
        .eval("view.config.version = 1; return true")
        .await
        .unwrap();
    browser
        .eval(&set("sample_interval_ms", "300"))
        .await
        .unwrap();
    browser
        .wait_for(
            "the lost race, told",
            "return document.getElementById('config-result').textContent.startsWith('Someone changed it meanwhile') &&
                    document.querySelector('#config tr[data-key=\"sample_interval_ms\"]').cells[1].textContent === '400' &&
                    view.config.version === 2",
        )
        .await
        .unwrap();

    // A setting the device does not know: refused with its reason, and
    // the table shows what it runs instead.
    browser.eval(&set("colour", "blue")).await.unwrap();
    browser
        .wait_for(
            "the refusal and its reason",
            "const row = document.querySelector('#config tr[data-key=\"colour\"]');
             return document.getElementById('config-state').textContent === 'refused' &&
                    document.getElementById('config-summary').textContent.includes('Refused version 3: unknown key: colour') &&
                    !!row && row.cells[1].textContent === 'blue' && row.cells[2].textContent === '–' &&
                    row.classList.contains('differs')",
        )
        .await
        .unwrap();
    browser
        .eval("document.querySelector('#config tr[data-key=\"colour\"] button.remove').click(); return true")
        .await
        .unwrap();
    browser
        .wait_for(
            "version 4 without it, applied",
            "return document.getElementById('config-state').textContent === 'applied' &&
                    document.getElementById('config-summary').textContent.includes('Runs version 4') &&
                    !document.querySelector('#config tr[data-key=\"colour\"]')",
        )
        .await
        .unwrap();
    // A bad value is the hub's clear refusal, named.
    browser
        .eval(&set("mode", "{\"a\":{\"b\":{\"c\":{\"d\":1}}}}"))
        .await
        .unwrap();
    browser
        .wait_for(
            "the hub's refusal, naming where",
            "const out = document.getElementById('config-result');
             return out.className === 'failed' && out.textContent.includes('config.mode.a.b.c')",
        )
        .await
        .unwrap();

    // A viewer reads the same table, without the means to change it.
    browser
        .goto(&format!("http://{}/?token={viewer}", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .goto(&format!("http://{}/#device=sim-1", hub.addr))
        .await
        .unwrap();
    browser.wait_until_live().await.unwrap();
    browser
        .wait_for(
            "the table only",
            "const rows = [...document.querySelectorAll('#config tr[data-key]')].map(r => r.dataset.key);
             return document.getElementById('who').textContent === 'wall · viewer' &&
                    rows.join() === 'batch,sample_interval_ms' &&
                    document.getElementById('config-edit').offsetParent === null &&
                    !document.querySelector('#config button.remove')",
        )
        .await
        .unwrap();
    // The browser logs the two refusals it was sent; nothing else.
    let errors = browser.console_errors().await.unwrap();
    let expected = [
        "status of 412 (Precondition Failed)",
        "status of 400 (Bad Request)",
    ];
    assert!(
        errors.len() == 2 && errors.iter().zip(expected).all(|(e, x)| e.ends_with(x)),
        "{errors:?}"
    );
    browser.quit().await;
    run.abort();
}
