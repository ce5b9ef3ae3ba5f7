//! What alert rules cost and how soon they tell: rules for the `ingest`
//! scenario's probes (`--alert-rules N`: threshold rules that never fire,
//! so every reading of the probes' metric is evaluated and nothing else
//! changes), and the `alerts` scenario: rules whose limits the probes'
//! readings cross one after another during a paced run, each crossing
//! timed from the reading's send time (its value) to the `alert` event on
//! a subscriber.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::hub::HubProcess;
use testkit::sse::SseClient;
use tokio::task::JoinSet;

use crate::probe::{self, Pace, ProbeSpec};
use crate::stats::{Repeated, latency_histogram, now_us, percentiles_ms};
use crate::{Size, hubproc};

/// How many never-firing rules each `ingest` run loads (`--alert-rules`).
static RULES: AtomicUsize = AtomicUsize::new(0);

/// Sets `--alert-rules` for this run.
pub fn use_rules(count: usize) {
    RULES.store(count, Relaxed);
}

/// Posts a rule to the hub.
async fn add(hub: &HubProcess, rule: Value) -> anyhow::Result<()> {
    let (status, body) = testkit::http::request(
        &hub.addr,
        "POST",
        "/v1/alert-rules",
        &[],
        Some(&rule.to_string()),
    )
    .await?;
    anyhow::ensure!(
        status == 201,
        "adding an alert rule: {status} {body} (a hub without alerts?)"
    );
    Ok(())
}

/// Loads `--alert-rules` threshold rules on the probes' metric, spread
/// over `devices` probes, none of which a probe's reading (its send time
/// in µs) ever breaks.
pub async fn load_ingest_rules(hub: &HubProcess, devices: usize) -> anyhow::Result<()> {
    for index in 0..RULES.load(Relaxed) {
        let rule = json!({
            "name": format!("never-{index}"), "kind": "threshold",
            "device": format!("probe-{}", index % devices.max(1)), "metric": "latency",
            "condition": "above", "limit": 1e18,
        });
        add(hub, rule).await?;
    }
    Ok(())
}

/// With rules loaded: waits until the evaluator has evaluated everything
/// stored, so the hub's CPU time counts its work.
pub async fn until_evaluated(hub: &HubProcess) -> anyhow::Result<()> {
    if RULES.load(Relaxed) == 0 {
        return Ok(());
    }
    let mut last = -1.0;
    loop {
        let metrics = hubproc::metrics(hub).await?;
        let cursor = hubproc::sample(&metrics, "hub_alert_cursor").unwrap_or(0.0);
        if cursor == last {
            return Ok(());
        }
        last = cursor;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The `alerts` scenario: crossing latency under a paced load.
pub async fn alerts(size: Size, max_rate: f64) -> anyhow::Result<Value> {
    let (devices, batch, seconds, crossings) = match size {
        Size::Quick => (2usize, 10usize, 2.0, 4usize),
        Size::Full => (100, 100, 20.0, 200),
    };
    let target = max_rate / 2.0;
    let batches_per_s_per_device = target / (devices * batch) as f64;
    let batches = (batches_per_s_per_device * seconds).ceil().max(1.0) as u64;
    println!("\n### alerts: from a reading that crosses a limit to the alert event\n");
    println!(
        "{devices} devices sending frames of {batch} at {target:.0} readings/s in all for {seconds} s; {crossings} threshold rules whose limits the readings cross one after another during the run; one SSE subscriber to `?types=alert`. Time from the crossing reading's send to its `firing` event. Median (min–max) of {} runs.\n",
        size.repeats()
    );
    println!("| readings/s | crossings | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|");
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut maxes = Vec::new();
    for _ in 0..size.repeats() {
        let hub = hubproc::start(&[]).await?;
        // Limits a readings' send time (µs) crosses, spread over the run
        // after a second of warm-up.
        let start = now_us() + 1e6;
        let span = (seconds - 1.5).max(0.5) * 1e6;
        for index in 0..crossings {
            let limit = start + span * index as f64 / crossings as f64;
            let rule = json!({
                "name": format!("cross-{index}"), "kind": "threshold",
                "device": format!("probe-{}", index % devices), "metric": "latency",
                "condition": "above", "limit": limit.round(),
            });
            add(&hub, rule).await?;
        }
        let mut sse = SseClient::connect(&hub.addr, "/v1/events?types=alert", &[]).await?;
        // The evaluator runs them (added through the API: at once).
        let wanted = format!("hub_alert_rules {crossings}");
        while !hubproc::metrics(&hub).await?.contains(&wanted) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut probes = JoinSet::new();
        for d in 0..devices {
            probes.spawn(probe::run(ProbeSpec {
                url: hubproc::ws_url(&hub),
                device_id: format!("probe-{d}"),
                batch,
                batches,
                pace: Some(Pace {
                    batches_per_s: batches_per_s_per_device,
                    offset: Duration::from_secs_f64(
                        d as f64 / devices as f64 / batches_per_s_per_device,
                    ),
                }),
            }));
        }
        let mut delays = latency_histogram();
        for _ in 0..crossings {
            let event = sse.next_of("alert").await?;
            let received = now_us();
            let sent = event.json()["value"].as_f64().unwrap_or(received);
            delays.record(((received - sent).max(0.0)) as u64)?;
        }
        while let Some(done) = probes.join_next().await {
            done??;
        }
        let p = percentiles_ms(&delays, &[0.5, 0.99]);
        p50s.push(p[0]);
        p99s.push(p[1]);
        maxes.push(delays.max() as f64 / 1_000.0);
    }
    let (p50, p99, max) = (
        Repeated::of(&p50s),
        Repeated::of(&p99s),
        Repeated::of(&maxes),
    );
    println!(
        "| {target:.0} | {crossings} | {} | {} | {} |",
        p50.show(2),
        p99.show(2),
        max.show(2)
    );
    Ok(json!({
        "scenario": "alerts", "readings_per_s": target, "crossings": crossings,
        "p50_ms": p50.json(), "p99_ms": p99.json(), "max_ms": max.json(),
    }))
}
