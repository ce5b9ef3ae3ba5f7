//! Scenario: what the device library's outbox costs per reading. First the
//! append alone (a device that is not polled: `send` and nothing else), for
//! the outbox in memory, on disk at each durability, and, for the choice
//! of storage, SQLite doing the same job (one committed insert per
//! reading, WAL, `synchronous` NORMAL and FULL). Then one device sending
//! flat out to a hub, in memory and on disk: readings per second delivered
//! and send-to-ack times.

use std::path::Path;
use std::time::Instant;

use protocol::MetricDescriptor;
use serde_json::{Value, json};
use telemetry_device::journal::Durability;
use telemetry_device::{Credential, Device, Event, Options, Storage};

use crate::stats::{Repeated, latency_histogram, percentiles_ms};
use crate::{Size, hubproc};

/// Readings per batch, as `device-sim pipe` sends them.
const BATCH: usize = 50;
/// Most readings the flat-out device keeps unacknowledged.
const WINDOW: usize = 5_000;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Disk(Durability),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Disk(Durability::Process) => "disk, process",
            Kind::Disk(Durability::PowerCut) => "disk, power-cut",
        }
    }

    fn storage(self, dir: &Path) -> Storage {
        match self {
            Kind::Memory => Storage::Memory { batches: 1 << 20 },
            Kind::Disk(durability) => Storage::Disk {
                dir: dir.to_owned(),
                max_bytes: 1 << 30,
                durability,
            },
        }
    }
}

fn options(id: &str, url: String, token: &str, kind: Kind, dir: &Path) -> Options {
    let mut options = Options::new(id, url, Credential::Token(token.to_owned()));
    options.metrics = vec![MetricDescriptor {
        id: 1,
        name: "n".into(),
        unit: String::new(),
    }];
    options.batch = BATCH;
    options.storage = kind.storage(dir);
    options
}

/// µs per `send` of `readings` readings into an outbox nobody polls.
fn append(kind: Kind, readings: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut device = Device::open(options(
        "append",
        "ws://127.0.0.1:9/v1/ws".into(),
        "t",
        kind,
        dir.path(),
    ))?;
    let started = Instant::now();
    for n in 0..readings {
        device.send(1, n as f64, 1_700_000_000_000 + n)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / readings as f64)
}

/// µs per reading for SQLite doing the outbox's job: one committed insert
/// per reading.
fn append_sqlite(synchronous: &str, readings: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let db = rusqlite::Connection::open(dir.path().join("outbox.db"))?;
    db.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
         CREATE TABLE outbox (n INTEGER PRIMARY KEY, ts_ms INTEGER, metric INTEGER, value REAL);"
    ))?;
    let mut insert = db.prepare("INSERT INTO outbox (ts_ms, metric, value) VALUES (?1, 1, ?2)")?;
    let started = Instant::now();
    for n in 0..readings {
        insert.execute((1_700_000_000_000 + n as i64, n as f64))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / readings as f64)
}

/// One device sending `readings` flat out to a hub: readings per second
/// and ack p50, p99 (ms).
async fn flat_out(kind: Kind, readings: u64, run: usize) -> anyhow::Result<(f64, f64, f64)> {
    let hub = hubproc::start(&[]).await?;
    let dir = tempfile::tempdir()?;
    let id = format!("outbox-{run}");
    let mut options = options(&id, hubproc::ws_url(&hub), "bench", kind, dir.path());
    options.credential = Credential::ProvisionKey("bench".into());
    options.tls = hubproc::client_tls();
    let mut device = Device::open(options)?;
    let mut rtt = latency_histogram();
    let mut next = 0;
    let started = Instant::now();
    while next < readings || device.unacknowledged() > 0 {
        let room = next < readings && device.unacknowledged() < WINDOW && device.is_connected();
        // The device's work first; a batch's worth of readings whenever it
        // has none to do.
        let event = tokio::select! {
            biased;
            event = device.poll() => Some(event?),
            () = std::future::ready(()), if room => None,
        };
        match event {
            None => {
                for _ in 0..BATCH.min((readings - next) as usize) {
                    device.send(1, next as f64, 1_700_000_000_000 + next)?;
                    next += 1;
                }
                if next == readings {
                    device.seal()?;
                }
            }
            Some(Event::Acknowledged { rtt: Some(t), .. }) => {
                rtt.saturating_record(t.as_micros() as u64);
            }
            Some(Event::Refused(why)) => anyhow::bail!("the device cannot connect: {why}"),
            Some(_) => {}
        }
    }
    let per_s = readings as f64 / started.elapsed().as_secs_f64();
    device.close().await;
    hub.terminate().await?;
    let p = percentiles_ms(&rtt, &[0.5, 0.99]);
    Ok((per_s, p[0], p[1]))
}

pub async fn outbox(size: Size) -> anyhow::Result<Value> {
    let (fast, synced, delivered) = match size {
        Size::Quick => (20_000, 500, 5_000),
        Size::Full => (1_000_000, 20_000, 100_000),
    };
    println!("\n### outbox\n");
    println!(
        "The append alone: `Device::send` into an outbox nobody polls (batches of {BATCH}), µs per reading; {fast} readings, {synced} where each is flushed to the disk. SQLite does the same job beside it: one committed insert per reading, WAL.\n"
    );
    println!("| outbox | µs per reading | readings/s |");
    println!("|---|---:|---:|");
    let kinds = [
        Kind::Memory,
        Kind::Disk(Durability::Process),
        Kind::Disk(Durability::PowerCut),
    ];
    let mut appends = Vec::new();
    let mut show = |name: &str, runs: Vec<f64>| {
        let us = Repeated::of(&runs);
        println!("| {name} | {} | {:.0} |", us.show(3), 1e6 / us.median);
        appends.push(json!({"outbox": name, "us_per_reading": us.json()}));
    };
    for kind in kinds {
        let readings = match kind {
            Kind::Disk(Durability::PowerCut) => synced,
            _ => fast,
        };
        let runs = (0..size.repeats())
            .map(|_| append(kind, readings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        show(kind.name(), runs);
    }
    for (name, synchronous, readings) in [
        ("SQLite, synchronous NORMAL", "NORMAL", fast / 10),
        ("SQLite, synchronous FULL", "FULL", synced),
    ] {
        let runs = (0..size.repeats())
            .map(|_| append_sqlite(synchronous, readings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        show(name, runs);
    }

    println!(
        "\nOne device sending {delivered} readings flat out to a hub on loopback (at most {WINDOW} unacknowledged), medians of {} runs:\n",
        size.repeats()
    );
    println!("| outbox | readings/s delivered | ack p50 ms | ack p99 ms |");
    println!("|---|---:|---:|---:|");
    let mut rows = Vec::new();
    for kind in kinds {
        let mut runs = Vec::new();
        for run in 0..size.repeats() {
            runs.push(flat_out(kind, delivered, run).await?);
        }
        let per_s = Repeated::over(&runs, |r| r.0);
        let p50 = Repeated::over(&runs, |r| r.1);
        let p99 = Repeated::over(&runs, |r| r.2);
        println!(
            "| {} | {} | {} | {} |",
            kind.name(),
            per_s.show(0),
            p50.show(2),
            p99.show(2)
        );
        rows.push(json!({
            "outbox": kind.name(), "readings_per_s": per_s.json(),
            "ack_p50_ms": p50.json(), "ack_p99_ms": p99.json(),
        }));
    }
    Ok(json!({"scenario": "outbox", "append": appends, "delivered": rows}))
}
