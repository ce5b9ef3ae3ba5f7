//! Scenario: what a backup costs the devices streaming meanwhile. A hub is
//! backfilled as `storage`'s is (so the file has a size), then paced probes
//! stream for a while twice: alone, and with `hub backup --db` copies made
//! back to back the whole time. An Ack is sent after its commit, so a
//! commit the backup held up shows in the probes' send-to-ack times.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::hub::HubProcess;
use tokio::task::JoinSet;

use crate::probe::{self, Pace, ProbeSpec};
use crate::stats::{latency_histogram, percentiles_ms};
use crate::{Size, hubproc, storage};

/// Probes, each sending batches of `BATCH` readings at `PACE` a second.
const PROBES: usize = 20;
const BATCH: usize = 10;
const PACE: f64 = 50.0;

/// What one streaming run measured.
struct Run {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    backups: Vec<(u64, u64)>,
}

/// Streams for `seconds`; with `backing_up`, copies the file back to back
/// meanwhile. Answers the ack times and each copy's (bytes, ms).
async fn stream(
    hub: &HubProcess,
    run: usize,
    seconds: f64,
    backing_up: bool,
) -> anyhow::Result<Run> {
    let batches = (seconds * PACE) as u64;
    let mut probes = JoinSet::new();
    for d in 0..PROBES {
        probes.spawn(probe::run(ProbeSpec {
            url: hubproc::ws_url(hub),
            // New devices each run: the provisioning key registers only those.
            device_id: format!("probe-{run}-{d}"),
            batch: BATCH,
            batches,
            pace: Some(Pace {
                batches_per_s: PACE,
                offset: Duration::from_secs_f64(d as f64 / PROBES as f64 / PACE),
            }),
        }));
    }
    let mut backups = Vec::new();
    if backing_up {
        let folder = tempfile::tempdir()?;
        let until = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < until {
            let to = folder.path().join(format!("copy-{}.db", backups.len()));
            let started = Instant::now();
            let out = tokio::process::Command::new(hubproc::binary())
                .arg("backup")
                .arg("--db")
                .arg(hub.db_path())
                .arg("--to")
                .arg(&to)
                .output()
                .await?;
            anyhow::ensure!(out.status.success(), "hub backup: {out:?}");
            let bytes = std::fs::metadata(&to)?.len();
            backups.push((bytes, started.elapsed().as_millis() as u64));
            std::fs::remove_file(&to)?;
        }
    }
    let mut rtt = latency_histogram();
    while let Some(done) = probes.join_next().await {
        rtt.add(&done??.rtt_us)?;
    }
    let p = percentiles_ms(&rtt, &[0.5, 0.99, 1.0]);
    Ok(Run {
        p50_ms: p[0],
        p99_ms: p[1],
        max_ms: p[2],
        backups,
    })
}

pub async fn backup(size: Size) -> anyhow::Result<Value> {
    let (devices, span, seconds) = match size {
        Size::Quick => (5, Duration::from_secs(60), 2.0),
        Size::Full => (200, Duration::from_secs(3_600), 20.0),
    };
    println!("\n### backup\n");
    let hub = storage::backfill(devices, Duration::from_secs(1), span, &[]).await?;
    println!(
        "{devices} devices × 5 metrics, {} s backfilled; then {PROBES} probes send {PACE} batches of {BATCH} readings a second each ({} readings/s) for {seconds} s, alone and with `hub backup --db` copies made back to back.\n",
        span.as_secs(),
        PROBES as f64 * PACE * BATCH as f64
    );
    println!("| run | ack p50 ms | ack p99 ms | ack max ms | backups | bytes each | ms each |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let runs = [
        ("alone", false),
        ("backing up", true),
        ("alone again", false),
    ];
    for (index, (name, backing_up)) in runs.into_iter().enumerate() {
        let run = stream(&hub, index, seconds, backing_up).await?;
        let (bytes, ms) = run.backups.last().copied().unwrap_or((0, 0));
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            run.p50_ms,
            run.p99_ms,
            run.max_ms,
            run.backups.len(),
            if backing_up {
                bytes.to_string()
            } else {
                "–".into()
            },
            if backing_up {
                ms.to_string()
            } else {
                "–".into()
            },
        );
        rows.push(json!({
            "run": name, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms, "max_ms": run.max_ms,
            "backups": run.backups.len(), "bytes": bytes, "ms": ms,
        }));
    }
    hub.terminate().await?;
    Ok(json!({"scenario": "backup", "rows": rows}))
}
