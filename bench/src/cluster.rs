//! `bench cluster`: ingest and fan-out through one hub alone, then through
//! clusters of 1, 2 and 3 hubs on one `nats-server` (testkit's, JetStream
//! on a temporary folder). Devices are spread over the hubs, and so are the
//! SSE subscribers, each of which receives every reading of the cluster.
//!
//! Every process shares this machine's two cores, so the rows say what a
//! cluster costs, not how it scales: more hubs here means more processes
//! storing every reading on the same disk and CPUs.

use anyhow::Context;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use testkit::hub::HubProcess;
use testkit::nats::NatsServer;

use crate::Size;
use crate::hubproc;
use crate::probe::{self, Pace, ProbeSpec};
use crate::stats::{Repeated, latency_histogram, now_us, percentiles_ms};
use crate::subscribers;

/// One run's measurements.
struct Run {
    readings_per_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    /// From the first send until the slowest subscriber had every reading.
    delivered_per_s: f64,
    event_p50_ms: f64,
    event_p99_ms: f64,
    hubs_cpu_s_per_million: f64,
    nats_cpu_s_per_million: f64,
}

/// How a run is laid out: a hub on its own, or `n` hubs of a cluster.
#[derive(Debug, Clone, Copy)]
enum Layout {
    Single,
    Cluster(usize),
}

impl Layout {
    fn name(self) -> String {
        match self {
            Layout::Single => "one hub, no NATS".into(),
            Layout::Cluster(n) => format!("cluster of {n}"),
        }
    }

    fn hubs(self) -> usize {
        match self {
            Layout::Single => 1,
            Layout::Cluster(n) => n,
        }
    }
}

/// The load of a run: `devices` probes, each sending `batches` batches of
/// `batch` readings, as fast as acknowledged or `paced` at this many
/// batches a second.
#[derive(Debug, Clone, Copy)]
struct Load {
    devices: usize,
    batch: usize,
    batches: u64,
    paced: Option<f64>,
    subscribers_per_hub: usize,
}

async fn run_once(layout: Layout, load: Load) -> anyhow::Result<Run> {
    let Load {
        devices,
        batch,
        batches,
        paced,
        subscribers_per_hub,
    } = load;
    let nats = match layout {
        Layout::Single => None,
        Layout::Cluster(_) => Some(NatsServer::start().await?),
    };
    let mut hubs: Vec<HubProcess> = Vec::new();
    for n in 0..layout.hubs() {
        let id = format!("hub-{n}");
        let hub = match &nats {
            Some(nats) => hubproc::start(&["--nats-url", &nats.url(), "--hub-id", &id]).await?,
            None => hubproc::start(&[]).await?,
        };
        hubs.push(hub);
    }
    let total = batches * (devices * batch) as u64;
    let stride = (total * (subscribers_per_hub * hubs.len()) as u64 / 100_000).max(1);
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(subscribers_per_hub * hubs.len());
    let mut subs = JoinSet::new();
    for hub in &hubs {
        for _ in 0..subscribers_per_hub {
            subs.spawn(subscribers::sse(
                hub.addr.clone(),
                "metric=latency".into(),
                total,
                stride,
                ready_tx.clone(),
            ));
        }
    }
    drop(ready_tx);
    for _ in 0..subscribers_per_hub * hubs.len() {
        ready.recv().await.context("a subscriber failed to start")?;
    }

    let hubs_cpu = || hubs.iter().map(HubProcess::cpu_seconds).sum::<f64>();
    let nats_cpu = || nats.as_ref().map_or(0.0, NatsServer::cpu_seconds);
    let (hubs_before, nats_before) = (hubs_cpu(), nats_cpu());
    let started = now_us();
    let mut probes = JoinSet::new();
    for d in 0..devices {
        probes.spawn(probe::run(ProbeSpec {
            url: hubproc::ws_url(&hubs[d % hubs.len()]),
            device_id: format!("probe-{d}"),
            batch,
            batches,
            // Spread over the interval, as a real fleet's devices are.
            pace: paced.map(|batches_per_s| Pace {
                batches_per_s,
                offset: std::time::Duration::from_secs_f64(
                    d as f64 / devices as f64 / batches_per_s,
                ),
            }),
        }));
    }
    let mut rtt = latency_histogram();
    let mut readings = 0;
    while let Some(done) = probes.join_next().await {
        let result = done??;
        readings += result.readings;
        rtt.add(&result.rtt_us)?;
    }
    let ingest_s = (now_us() - started) / 1e6;
    let mut events = latency_histogram();
    let mut done_at = started;
    let mut delivered = 0;
    while let Some(done) = subs.join_next().await {
        let received = done??;
        delivered += received.count;
        done_at = done_at.max(received.done_at_us);
        events.add(&received.latency_us)?;
    }
    let millions = readings as f64 / 1e6;
    let ack = percentiles_ms(&rtt, &[0.5, 0.99]);
    let event = percentiles_ms(&events, &[0.5, 0.99]);
    Ok(Run {
        readings_per_s: readings as f64 / ingest_s,
        ack_p50_ms: ack[0],
        ack_p99_ms: ack[1],
        delivered_per_s: delivered as f64 / ((done_at - started) / 1e6),
        event_p50_ms: event[0],
        event_p99_ms: event[1],
        hubs_cpu_s_per_million: (hubs_cpu() - hubs_before) / millions,
        nats_cpu_s_per_million: (nats_cpu() - nats_before) / millions,
    })
}

/// Scenario: the same loads through one hub and through clusters of 1, 2
/// and 3 hubs: as fast as acknowledged (the cost), then at a steady rate
/// far below it (the ack latency JetStream adds).
pub async fn cluster(size: Size) -> anyhow::Result<Value> {
    let (devices, readings, paced_batches, subscribers_per_hub): (usize, u64, u64, usize) =
        match size {
            Size::Quick => (4, 400, 5, 1),
            Size::Full => (100, 200_000, 100, 10),
        };
    let batch = 10;
    let flat_out = Load {
        devices,
        batch,
        batches: (readings / (devices * batch) as u64).max(1),
        paced: None,
        subscribers_per_hub,
    };
    // Ten batches a second each: 10,000 readings/s from 100 devices.
    let steady = Load {
        batches: paced_batches,
        paced: Some(10.0),
        ..flat_out
    };
    let layouts = [
        Layout::Single,
        Layout::Cluster(1),
        Layout::Cluster(2),
        Layout::Cluster(3),
    ];
    println!("\n### cluster\n");
    println!(
        "{devices} devices spread over the hubs, in batches of {batch}: {} readings each as fast as acknowledged, then {} readings each at 10 batches a second ({} readings/s in all); {subscribers_per_hub} SSE subscribers on every hub, each receiving every reading. One nats-server (JetStream, file storage, one replica). Every process shares the machine's two cores: read the rows as cost, not scale. Median (min–max) of {} runs, the layouts interleaved within each.\n",
        flat_out.batches * batch as u64,
        steady.batches * batch as u64,
        devices * batch * 10,
        size.repeats()
    );
    let mut runs: Vec<[Vec<Run>; 2]> = layouts.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for _ in 0..size.repeats() {
        for (layout, runs) in layouts.iter().zip(&mut runs) {
            runs[0].push(run_once(*layout, flat_out).await?);
            runs[1].push(run_once(*layout, steady).await?);
        }
    }
    let mut rows = Vec::new();
    for (load, name) in [(0, "as fast as acknowledged"), (1, "steady")] {
        println!("\n{name}:\n");
        println!(
            "| layout | readings/s | ack p50 ms | ack p99 ms | events delivered/s | event p50 ms | event p99 ms | hubs' CPU s per 1M | NATS CPU s per 1M |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (layout, runs) in layouts.iter().zip(&runs) {
            let runs = &runs[load];
            let measure = |f: fn(&Run) -> f64| Repeated::over(runs, f);
            let columns = [
                ("readings_per_s", measure(|r| r.readings_per_s), 0),
                ("ack_p50_ms", measure(|r| r.ack_p50_ms), 2),
                ("ack_p99_ms", measure(|r| r.ack_p99_ms), 2),
                ("delivered_per_s", measure(|r| r.delivered_per_s), 0),
                ("event_p50_ms", measure(|r| r.event_p50_ms), 1),
                ("event_p99_ms", measure(|r| r.event_p99_ms), 1),
                (
                    "hubs_cpu_s_per_million",
                    measure(|r| r.hubs_cpu_s_per_million),
                    2,
                ),
                (
                    "nats_cpu_s_per_million",
                    measure(|r| r.nats_cpu_s_per_million),
                    2,
                ),
            ];
            let shown: Vec<String> = columns
                .iter()
                .map(|(_, value, digits)| value.show(*digits))
                .collect();
            println!("| {} | {} |", layout.name(), shown.join(" | "));
            let mut row = json!({"load": name, "layout": layout.name(), "hubs": layout.hubs()});
            for (column, value, _) in columns {
                row[column] = value.json();
            }
            rows.push(row);
        }
    }
    Ok(json!({
        "scenario": "cluster", "repeats": size.repeats(), "devices": devices, "batch": batch,
        "subscribers_per_hub": subscribers_per_hub, "rows": rows,
    }))
}
