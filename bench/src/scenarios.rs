//! The harness's scenarios but storage (`crate::storage`). Each repeats its
//! measurement, prints a Markdown table and returns one JSON object.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use testkit::hub::HubProcess;
use testkit::mosquitto::Mosquitto;

use crate::hubproc;
use crate::machine::CpuTimes;
use crate::mosquitto;
use crate::probe::{self, Pace, ProbeSpec};
use crate::stats::{Repeated, latency_histogram, now_us, percentiles_ms};
use crate::subscribers;
use crate::{Size, ceiling};

/// One ingest run: `devices` probes sending `batches` batches of `batch`.
struct IngestRun {
    readings_per_s: f64,
    cpu_s_per_million: f64,
    rtt_p50_ms: f64,
    rtt_p99_ms: f64,
}

async fn ingest_once(devices: usize, batch: usize, batches: u64) -> anyhow::Result<IngestRun> {
    let hub = hubproc::start(&[]).await?;
    crate::alerts::load_ingest_rules(&hub, devices).await?;
    let mut probes = JoinSet::new();
    let cpu_before = hub.cpu_seconds();
    let started = now_us();
    for d in 0..devices {
        probes.spawn(probe::run(ProbeSpec {
            url: hubproc::ws_url(&hub),
            device_id: format!("probe-{d}"),
            batch,
            batches,
            pace: None,
        }));
    }
    let mut rtt = latency_histogram();
    let mut readings = 0;
    while let Some(done) = probes.join_next().await {
        let result = done??;
        readings += result.readings;
        rtt.add(&result.rtt_us)?;
    }
    let elapsed_s = (now_us() - started) / 1e6;
    crate::alerts::until_evaluated(&hub).await?;
    let cpu = hub.cpu_seconds() - cpu_before;
    let p = percentiles_ms(&rtt, &[0.5, 0.99]);
    Ok(IngestRun {
        readings_per_s: readings as f64 / elapsed_s,
        cpu_s_per_million: cpu / (readings as f64 / 1e6),
        rtt_p50_ms: p[0],
        rtt_p99_ms: p[1],
    })
}

/// Scenario 1: sustained ingest for device counts × batch sizes, beside
/// SQLite's ceiling for the same rows.
pub async fn ingest(size: Size) -> anyhow::Result<Value> {
    let (device_counts, batch_sizes, readings_per_run): (&[usize], &[usize], u64) = match size {
        Size::Quick => (&[4], &[1, 10], 400),
        Size::Full => (&[100, 1_000], &[1, 10, 100], 300_000),
    };
    println!("\n### ingest\n");
    println!(
        "{readings_per_run} readings per run, median (min–max) of {} runs; ceilings: same rows, same schema, one process, 10,000-row transactions, a prepared statement per row (plain) or 256 rows to a statement with non-integral values, as the hub's writer (best).\n",
        size.repeats()
    );
    println!(
        "| devices | batch | readings/s | ceiling rows/s | ingest ÷ ceiling | best ceiling rows/s | ingest ÷ best | ack p50 ms | ack p99 ms | hub CPU s per 1M readings |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &devices in device_counts {
        for &batch in batch_sizes {
            let batches = (readings_per_run / (devices * batch) as u64).max(1);
            let mut runs = Vec::new();
            let mut ceilings = Vec::new();
            let mut best = Vec::new();
            for _ in 0..size.repeats() {
                runs.push(ingest_once(devices, batch, batches).await?);
                let total = batches * (devices * batch) as u64;
                let metrics = devices as u64;
                ceilings.push(
                    tokio::task::spawn_blocking(move || ceiling::rows_per_second(total, metrics))
                        .await??,
                );
                best.push(
                    tokio::task::spawn_blocking(move || {
                        ceiling::best_rows_per_second(total, metrics)
                    })
                    .await??,
                );
            }
            let rate = Repeated::over(&runs, |r| r.readings_per_s);
            let ceiling = Repeated::of(&ceilings);
            let ratio = Repeated::of(
                &runs
                    .iter()
                    .zip(&ceilings)
                    .map(|(r, c)| r.readings_per_s / c)
                    .collect::<Vec<_>>(),
            );
            let best_ceiling = Repeated::of(&best);
            let best_ratio = Repeated::of(
                &runs
                    .iter()
                    .zip(&best)
                    .map(|(r, c)| r.readings_per_s / c)
                    .collect::<Vec<_>>(),
            );
            let p50 = Repeated::over(&runs, |r| r.rtt_p50_ms);
            let p99 = Repeated::over(&runs, |r| r.rtt_p99_ms);
            let cpu = Repeated::over(&runs, |r| r.cpu_s_per_million);
            println!(
                "| {devices} | {batch} | {} | {} | {} | {} | {} | {} | {} | {} |",
                rate.show(0),
                ceiling.show(0),
                ratio.show(2),
                best_ceiling.show(0),
                best_ratio.show(2),
                p50.show(2),
                p99.show(2),
                cpu.show(2)
            );
            rows.push(json!({
                "devices": devices, "batch": batch, "readings": batches * (devices * batch) as u64,
                "readings_per_s": rate.json(), "ceiling_rows_per_s": ceiling.json(), "ratio": ratio.json(),
                "best_ceiling_rows_per_s": best_ceiling.json(), "best_ratio": best_ratio.json(),
                "ack_p50_ms": p50.json(), "ack_p99_ms": p99.json(), "hub_cpu_s_per_million": cpu.json(),
            }));
        }
    }
    Ok(json!({"scenario": "ingest", "repeats": size.repeats(), "rows": rows}))
}

struct FanoutRun {
    delivered_per_s: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn summarize(received: Vec<subscribers::Received>, started: f64) -> FanoutRun {
    let delivered: u64 = received.iter().map(|r| r.count).sum();
    let done = received
        .iter()
        .map(|r| r.done_at_us)
        .fold(started, f64::max);
    let mut latency = latency_histogram();
    for r in &received {
        latency
            .add(&r.latency_us)
            .expect("histograms of the same bounds");
    }
    let p = percentiles_ms(&latency, &[0.5, 0.99, 0.999]);
    FanoutRun {
        delivered_per_s: delivered as f64 / ((done - started) / 1e6),
        p50: p[0],
        p99: p[1],
        p999: p[2],
    }
}

/// One device's `messages` readings to `subscribers` SSE subscribers, sent
/// as fast as acknowledged, or at `batches_per_s`.
async fn fanout_hub(
    subscribers: usize,
    messages: u64,
    batch: usize,
    batches_per_s: Option<f64>,
) -> anyhow::Result<FanoutRun> {
    let hub = hubproc::start(&[]).await?;
    let stride = (messages * subscribers as u64 / 100_000).max(1);
    let subs = sse_subscribers(&hub, subscribers, messages, stride).await?;
    let started = now_us();
    probe::run(ProbeSpec {
        url: hubproc::ws_url(&hub),
        device_id: "probe-1".into(),
        batch,
        batches: messages / batch as u64,
        pace: batches_per_s.map(|batches_per_s| Pace {
            batches_per_s,
            offset: Duration::ZERO,
        }),
    })
    .await?;
    let received = collect(subs).await?;
    Ok(summarize(received, started))
}

async fn fanout_mosquitto(
    subscribers: usize,
    messages: u64,
    batch: usize,
) -> anyhow::Result<FanoutRun> {
    let broker = Mosquitto::start().await?;
    let stride = (messages * subscribers as u64 / 100_000).max(1);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(subscribers);
    let mut subs = JoinSet::new();
    // One at a time: Mosquitto listens with a backlog of 100, and a burst of
    // a thousand connections overflows it.
    for i in 0..subscribers {
        subs.spawn(subscribers::mqtt(
            broker.port,
            format!("sub-{i}"),
            "bench/readings".into(),
            messages,
            stride,
            ready_tx.clone(),
        ));
        ready_or_failure(&mut ready, &mut subs).await?;
    }
    let started = now_us();
    mosquitto::publish(broker.port, "bench/readings", messages, batch as u64, None).await?;
    let received = collect(subs).await?;
    Ok(summarize(received, started))
}

/// Opens `count` unfiltered-by-device SSE subscribers to the probes' metric,
/// each reading until `expected` events arrived; returns once all are open.
async fn sse_subscribers(
    hub: &HubProcess,
    count: usize,
    expected: u64,
    stride: u64,
) -> anyhow::Result<JoinSet<anyhow::Result<subscribers::Received>>> {
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(count);
    let mut subs = JoinSet::new();
    for _ in 0..count {
        let query = "metric=latency".into();
        subs.spawn(subscribers::sse(
            hub.addr.clone(),
            query,
            expected,
            stride,
            ready_tx.clone(),
        ));
    }
    drop(ready_tx);
    for _ in 0..count {
        ready_or_failure(&mut ready, &mut subs).await?;
    }
    Ok(subs)
}

/// Waits for one subscriber to be ready, or reports the one that failed.
async fn ready_or_failure(
    ready: &mut tokio::sync::mpsc::Receiver<()>,
    subs: &mut JoinSet<anyhow::Result<subscribers::Received>>,
) -> anyhow::Result<()> {
    tokio::select! {
        signal = ready.recv() => signal.context("every subscriber has stopped"),
        Some(done) = subs.join_next() => match done? {
            Err(err) => Err(err.context("a subscriber failed to start")),
            Ok(_) => anyhow::bail!("a subscriber finished before it started"),
        },
    }
}

async fn collect(
    mut subs: JoinSet<anyhow::Result<subscribers::Received>>,
) -> anyhow::Result<Vec<subscribers::Received>> {
    let mut received = Vec::new();
    while let Some(done) = subs.join_next().await {
        received.push(done??);
    }
    Ok(received)
}

/// Scenario 2: one stream to S live subscribers, the hub beside Mosquitto.
pub async fn fanout(size: Size) -> anyhow::Result<Value> {
    // The same number of deliveries at every subscriber count.
    let (counts, deliveries, batch): (&[usize], u64, usize) = match size {
        Size::Quick => (&[5], 1_000, 10),
        Size::Full => (&[100, 1_000], 2_000_000, 10),
    };
    println!("\n### fan-out\n");
    println!(
        "{deliveries} deliveries per run: {deliveries} ÷ S readings from one device (frames of {batch}) to each of S subscribers, sent as fast as acknowledged, then paced at half the hub's median delivery rate; Mosquitto: the same payloads published at QoS 0 to S subscribers at QoS 0. Median (min–max) of {} runs.\n",
        size.repeats()
    );
    println!(
        "| system | subscribers | events delivered/s | p50 ms | p99 ms | p999 ms | hub ÷ Mosquitto |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for &subscribers in counts {
        let messages = deliveries / subscribers as u64;
        let mut hub_runs = Vec::new();
        let mut mqtt_runs = Vec::new();
        for _ in 0..size.repeats() {
            hub_runs.push(fanout_hub(subscribers, messages, batch, None).await?);
            mqtt_runs.push(fanout_mosquitto(subscribers, messages, batch).await?);
        }
        let ratio = Repeated::of(
            &hub_runs
                .iter()
                .zip(&mqtt_runs)
                .map(|(h, m)| h.delivered_per_s / m.delivered_per_s)
                .collect::<Vec<_>>(),
        );
        let mut entry =
            json!({"subscribers": subscribers, "messages": messages, "ratio": ratio.json()});
        for (name, runs) in [("hub", &hub_runs), ("mosquitto", &mqtt_runs)] {
            let rate = Repeated::over(runs, |r| r.delivered_per_s);
            let p50 = Repeated::over(runs, |r| r.p50);
            let p99 = Repeated::over(runs, |r| r.p99);
            let p999 = Repeated::over(runs, |r| r.p999);
            let shown_ratio = if name == "hub" {
                ratio.show(2)
            } else {
                String::new()
            };
            println!(
                "| {name} | {subscribers} | {} | {} | {} | {} | {shown_ratio} |",
                rate.show(0),
                p50.show(2),
                p99.show(2),
                p999.show(2)
            );
            entry[name] = json!({"delivered_per_s": rate.json(), "p50_ms": p50.json(), "p99_ms": p99.json(), "p999_ms": p999.json()});
        }
        // Paced at half the flat-out delivery rate: the latency a fleet
        // feels below the ceiling, not the queueing at it.
        let half = Repeated::over(&hub_runs, |r| r.delivered_per_s).median / 2.0;
        let batches_per_s = half / subscribers as f64 / batch as f64;
        let mut paced_runs = Vec::new();
        for _ in 0..size.repeats() {
            paced_runs.push(fanout_hub(subscribers, messages, batch, Some(batches_per_s)).await?);
        }
        let rate = Repeated::over(&paced_runs, |r| r.delivered_per_s);
        let p50 = Repeated::over(&paced_runs, |r| r.p50);
        let p99 = Repeated::over(&paced_runs, |r| r.p99);
        let p999 = Repeated::over(&paced_runs, |r| r.p999);
        println!(
            "| hub, paced at half ({half:.0}/s) | {subscribers} | {} | {} | {} | {} | |",
            rate.show(0),
            p50.show(2),
            p99.show(2),
            p999.show(2)
        );
        entry["hub_paced_at_half"] = json!({"target_per_s": half, "delivered_per_s": rate.json(), "p50_ms": p50.json(), "p99_ms": p99.json(), "p999_ms": p999.json()});
        rows.push(entry);
    }
    Ok(json!({"scenario": "fanout", "repeats": size.repeats(), "rows": rows}))
}

/// Scenario 3: many connected devices at one reading a second, plus idle
/// subscribers: memory per connection, CPU at rest, and that every reading
/// arrives; then quiet devices ([`crate::quiet`]).
pub async fn connections(size: Size) -> anyhow::Result<Value> {
    use device_sim::device::DeviceSettings;
    use device_sim::fleet::{self, Credential, FleetConfig, Ids};
    use device_sim::sensors::SensorKind;

    let (devices, idle, readings): (usize, usize, u64) = match size {
        Size::Quick => (50, 10, 3),
        Size::Full => (10_000, 1_000, 30),
    };
    println!("\n### connections\n");
    println!(
        "{devices} devices (device-sim, one reading a second each, frames of 1) and {idle} idle subscribers (a filter nothing matches), {readings} readings per device; the live ring held to 1 MiB (`--live-buffer-mb 1`). Median (min–max) of {} runs.\n",
        size.repeats()
    );
    println!(
        "| hub RSS before | RSS with everything connected | per connection | hub CPU at rest (cores) | readings stored / sent | fleet run time s (ideal {readings} + ≤5 ramp) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut before = Vec::new();
    let mut during = Vec::new();
    let mut per = Vec::new();
    let mut cpu = Vec::new();
    let mut delivered = Vec::new();
    let mut elapsed = Vec::new();
    for _ in 0..size.repeats() {
        // The live ring fills with the fleet's readings (up to 32 MiB by
        // default) however few connections bring them: it is data, not
        // connections, so it is held to 1 MiB here.
        let hub = hubproc::start(&["--max-subscribers", "100000", "--live-buffer-mb", "1"]).await?;
        let rss_before = hub.rss_kib();
        let (ready_tx, mut ready) = tokio::sync::mpsc::channel(idle.max(1));
        let mut subs = JoinSet::new();
        for _ in 0..idle {
            // Never satisfied: the subscriber stays connected and idle.
            subs.spawn(subscribers::sse(
                hub.addr.clone(),
                "device=__idle__".into(),
                u64::MAX,
                1,
                ready_tx.clone(),
            ));
        }
        for _ in 0..idle {
            ready.recv().await.context("an idle subscriber failed")?;
        }
        let device = DeviceSettings {
            kinds: vec![SensorKind::Temperature],
            rate: Some(1.0),
            batch: 1,
            count: Some(readings),
            ..DeviceSettings::new(hub.ws_url())
        };
        let config = FleetConfig {
            ids: Ids::Numbered("dev-".into()),
            grace: Duration::from_secs(10),
            ..FleetConfig::new(devices, Credential::ProvisionKey("bench".into()), device)
        };
        let fleet = tokio::spawn(fleet::run(config));
        // The fleet ramps up over five seconds; measure in the steady middle.
        let settle = Duration::from_secs(if matches!(size, Size::Quick) { 1 } else { 10 });
        tokio::time::sleep(settle).await;
        let cpu_start = hub.cpu_seconds();
        let window = Duration::from_secs(if matches!(size, Size::Quick) { 1 } else { 10 });
        tokio::time::sleep(window).await;
        let cores = (hub.cpu_seconds() - cpu_start) / window.as_secs_f64();
        let rss = hub.rss_kib();
        let summary = fleet.await?;
        subs.abort_all();
        let stored = stored_readings(&hub).await?;
        before.push(rss_before as f64);
        during.push(rss as f64);
        per.push((rss.saturating_sub(rss_before)) as f64 * 1024.0 / (devices + idle) as f64);
        cpu.push(cores);
        delivered.push(stored as f64 / (devices as u64 * readings) as f64);
        elapsed.push(summary.elapsed_s);
        anyhow::ensure!(
            summary.complete(),
            "not every reading was delivered: {summary:?}"
        );
    }
    let [before, during, per, cpu, delivered, elapsed] =
        [before, during, per, cpu, delivered, elapsed].map(|v| Repeated::of(&v));
    println!(
        "| {} MiB | {} MiB | {} KiB | {} | {} | {} |",
        Repeated {
            median: before.median / 1024.0,
            min: before.min / 1024.0,
            max: before.max / 1024.0
        }
        .show(1),
        Repeated {
            median: during.median / 1024.0,
            min: during.min / 1024.0,
            max: during.max / 1024.0
        }
        .show(1),
        Repeated {
            median: per.median / 1024.0,
            min: per.min / 1024.0,
            max: per.max / 1024.0
        }
        .show(1),
        cpu.show(3),
        delivered.show(4),
        elapsed.show(1),
    );
    let quiet = crate::quiet::quiet(size).await?;
    Ok(json!({
        "scenario": "connections", "devices": devices, "idle_subscribers": idle, "repeats": size.repeats(),
        "rss_before_kib": before.json(), "rss_connected_kib": during.json(), "bytes_per_connection": per.json(),
        "cpu_cores_at_rest": cpu.json(), "stored_over_sent": delivered.json(), "fleet_elapsed_s": elapsed.json(),
        "quiet": quiet,
    }))
}

async fn stored_readings(hub: &HubProcess) -> anyhow::Result<u64> {
    let db = hub.db_path();
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let conn = rusqlite::Connection::open(db)?;
        Ok(conn.query_row("SELECT count(*) FROM samples", [], |row| {
            row.get::<_, i64>(0)
        })? as u64)
    })
    .await?
}

/// What the hub's `/metrics` says about its writer over a run.
struct Commits {
    rows_per_commit: f64,
    mean_ms: f64,
    /// Share of commits that took longer than 10 ms.
    over_10ms: f64,
}

impl Commits {
    async fn of(hub: &HubProcess) -> anyhow::Result<Commits> {
        let text = hubproc::metrics(hub).await?;
        let read = |series: &str| {
            hubproc::sample(&text, series).with_context(|| format!("{series} in /metrics"))
        };
        let count = read("hub_commit_duration_seconds_count")?.max(1.0);
        Ok(Commits {
            rows_per_commit: read("hub_commit_rows_sum")? / count,
            mean_ms: read("hub_commit_duration_seconds_sum")? * 1e3 / count,
            over_10ms: 1.0 - read("hub_commit_duration_seconds_bucket{le=\"0.01\"}")? / count,
        })
    }
}

/// Scenario 4: latency from device send to subscriber receipt while ingest
/// runs at half of `max_rate` readings per second.
pub async fn latency(size: Size, max_rate: f64) -> anyhow::Result<Value> {
    let (devices, batch, seconds, subscribers) = match size {
        Size::Quick => (2usize, 10usize, 1.0, 2usize),
        Size::Full => (100, 100, 20.0, 1),
    };
    let target = max_rate / 2.0;
    let batches_per_s_per_device = target / (devices * batch) as f64;
    let batches = (batches_per_s_per_device * seconds).ceil() as u64;
    println!("\n### end-to-end latency under load\n");
    println!(
        "{devices} devices sending frames of {batch} at {target:.0} readings/s in all (half the measured maximum) for {seconds} s, their schedules spread evenly over the interval; {subscribers} unfiltered SSE subscribers. Median (min–max) of {} runs.\n",
        size.repeats()
    );
    println!(
        "| readings/s | p50 ms | p99 ms | p999 ms | ack p50 ms | ack p99 ms | rows per commit | commit mean ms | commits over 10 ms | machine busy % | steal % |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs = Vec::new();
    let mut acks = Vec::new();
    let mut commits = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..size.repeats() {
        let hub = hubproc::start(&[]).await?;
        let machine_before = CpuTimes::now();
        let expected = batches * (devices * batch) as u64;
        let stride = (expected * subscribers as u64 / 200_000).max(1);
        let subs = sse_subscribers(&hub, subscribers, expected, stride).await?;
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
        let mut rtt = latency_histogram();
        while let Some(done) = probes.join_next().await {
            rtt.add(&done??.rtt_us)?;
        }
        cpu.push(CpuTimes::now().since(&machine_before));
        acks.push(percentiles_ms(&rtt, &[0.5, 0.99]));
        let started = now_us();
        runs.push(summarize(collect(subs).await?, started));
        commits.push(Commits::of(&hub).await?);
    }
    let p50 = Repeated::over(&runs, |r| r.p50);
    let p99 = Repeated::over(&runs, |r| r.p99);
    let p999 = Repeated::over(&runs, |r| r.p999);
    let ack50 = Repeated::of(&acks.iter().map(|p| p[0]).collect::<Vec<_>>());
    let ack99 = Repeated::of(&acks.iter().map(|p| p[1]).collect::<Vec<_>>());
    let rows = Repeated::of(
        &commits
            .iter()
            .map(|c| c.rows_per_commit)
            .collect::<Vec<_>>(),
    );
    let mean = Repeated::over(&commits, |c| c.mean_ms);
    let slow = Repeated::of(
        &commits
            .iter()
            .map(|c| c.over_10ms * 100.0)
            .collect::<Vec<_>>(),
    );
    let busy = Repeated::over(&cpu, |c| c.busy);
    let steal = Repeated::over(&cpu, |c| c.steal);
    println!(
        "| {target:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        p50.show(2),
        p99.show(2),
        p999.show(2),
        ack50.show(2),
        ack99.show(2),
        rows.show(0),
        mean.show(2),
        slow.show(1),
        busy.show(0),
        steal.show(0),
    );
    Ok(json!({
        "scenario": "latency", "repeats": size.repeats(), "readings_per_s": target, "devices": devices,
        "batch": batch, "subscribers": subscribers, "p50_ms": p50.json(), "p99_ms": p99.json(), "p999_ms": p999.json(),
        "ack_p50_ms": ack50.json(), "ack_p99_ms": ack99.json(), "rows_per_commit": rows.json(), "commit_mean_ms": mean.json(), "commits_over_10ms_percent": slow.json(),
        "machine_busy_percent": busy.json(), "steal_percent": steal.json(),
    }))
}

/// One bridge run: probes ingest as fast as acknowledged into a hub
/// bridging to Mosquitto; how fast readings reach the broker.
struct BridgeRun {
    ingest_per_s: f64,
    bridged_per_s: f64,
    max_lag: f64,
}

async fn bridge_once(
    batched: bool,
    devices: usize,
    batch: usize,
    batches: u64,
) -> anyhow::Result<BridgeRun> {
    let broker = Mosquitto::start().await?;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut extra = vec!["--mqtt-url", url.as_str()];
    if batched {
        extra.push("--mqtt-batch");
    }
    let hub = hubproc::start(&extra).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hubproc::sample(&hubproc::metrics(&hub).await?, "hub_mqtt_connected") != Some(1.0) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the bridge did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = batches * (devices * batch) as u64;
    let started = now_us();
    let mut probes = JoinSet::new();
    for d in 0..devices {
        probes.spawn(probe::run(ProbeSpec {
            url: hubproc::ws_url(&hub),
            device_id: format!("probe-{d}"),
            batch,
            batches,
            pace: None,
        }));
    }
    let ingest = tokio::spawn(async move {
        while let Some(done) = probes.join_next().await {
            done??;
        }
        anyhow::Ok(now_us())
    });
    let mut max_lag: f64 = 0.0;
    let bridged_at = loop {
        let metrics = hubproc::metrics(&hub).await?;
        max_lag = max_lag.max(hubproc::sample(&metrics, "hub_mqtt_lag_positions").unwrap_or(0.0));
        if hubproc::sample(&metrics, "hub_mqtt_cursor").unwrap_or(0.0) >= total as f64 {
            break now_us();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ingested_at = ingest.await??;
    Ok(BridgeRun {
        ingest_per_s: total as f64 / ((ingested_at - started) / 1e6),
        bridged_per_s: total as f64 / ((bridged_at - started) / 1e6),
        max_lag,
    })
}

/// A reading as the bridge publishes it, one per message or `per_message`
/// in a `--mqtt-batch` array.
fn bridge_payload(per_message: usize) -> Vec<u8> {
    let reading = |pos: usize| {
        format!(
            r#"{{"pos":{},"ts_ms":1764300000000,"value":21.53,"unit":"°C"}}"#,
            1_000_000 + pos
        )
    };
    if per_message == 1 {
        return reading(0).into_bytes();
    }
    let entries: Vec<String> = (0..per_message)
        .map(|i| reading(i).replacen("{", r#"{"metric":"temperature","#, 1))
        .collect();
    format!("[{}]", entries.join(",")).into_bytes()
}

/// Scenario 5: how fast the MQTT bridge gets stored readings to the
/// broker, one message per reading and with `--mqtt-batch`, beside what
/// Mosquitto takes from one QoS 1 publisher of the same payloads.
pub async fn bridge(size: Size) -> anyhow::Result<Value> {
    let (devices, batch, batches): (usize, usize, u64) = match size {
        Size::Quick => (4, 10, 50),
        Size::Full => (100, 100, 30),
    };
    let total = batches * (devices * batch) as u64;
    println!("\n### bridge\n");
    println!(
        "{total} readings per run from {devices} devices in frames of {batch}, sent as fast as acknowledged, into a hub bridging to Mosquitto at QoS 1 (no subscribers); bridged: stored readings acknowledged by the broker (the bridge's cursor) per second from the first frame. Mosquitto alone: one QoS 1 publisher, 100 in flight like the bridge, of the same payloads (for batches: arrays of {batch}). Median (min–max) of {} runs.\n",
        size.repeats()
    );
    println!(
        "| mode | hub ingest readings/s | bridged readings/s | max lag (readings) | Mosquitto alone, readings/s | bridged ÷ Mosquitto |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (mode, batched, per_message) in [
        ("one reading per message", false, 1),
        ("--mqtt-batch", true, batch),
    ] {
        let mut runs = Vec::new();
        let mut alone = Vec::new();
        for _ in 0..size.repeats() {
            runs.push(bridge_once(batched, devices, batch, batches).await?);
            let broker = Mosquitto::start().await?;
            let messages = total / per_message as u64;
            let seconds = mosquitto::publish_acked(
                broker.port,
                "telemetry/probe-1",
                bridge_payload(per_message),
                messages,
                100,
            )
            .await?;
            alone.push(total as f64 / seconds);
        }
        let ingest = Repeated::over(&runs, |r| r.ingest_per_s);
        let bridged = Repeated::over(&runs, |r| r.bridged_per_s);
        let lag = Repeated::over(&runs, |r| r.max_lag);
        let mosquitto = Repeated::of(&alone);
        let ratio = Repeated::of(
            &runs
                .iter()
                .zip(&alone)
                .map(|(run, alone)| run.bridged_per_s / alone)
                .collect::<Vec<_>>(),
        );
        println!(
            "| {mode} | {} | {} | {} | {} | {} |",
            ingest.show(0),
            bridged.show(0),
            lag.show(0),
            mosquitto.show(0),
            ratio.show(2)
        );
        rows.push(json!({
            "mode": mode, "readings": total, "ingest_per_s": ingest.json(), "bridged_per_s": bridged.json(),
            "max_lag": lag.json(), "mosquitto_per_s": mosquitto.json(), "ratio": ratio.json(),
        }));
    }
    Ok(json!({"scenario": "bridge", "repeats": size.repeats(), "rows": rows}))
}
