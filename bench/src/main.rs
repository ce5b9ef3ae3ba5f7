//! The benchmark harness: `cargo build --release -p bench --bins`, then
//! `./target/release/bench <scenario>` (it starts `bench-hub`, its build of
//! the hub, from the same folder).
//!
//! Starts the real hub as a process on loopback with a fresh database for
//! every run, drives it with load devices, the simulator library, SSE and
//! MQTT clients, and prints a Markdown table and one JSON line per scenario.
//! This machine is shared and noisy: only ratios measured in the same run
//! mean much, so every comparison (SQLite's ceiling, Mosquitto) runs beside
//! the hub, and every number is the median of repeated runs with its spread.

mod alerts;
mod backup;
mod ceiling;
mod cluster;
mod hubproc;
mod machine;
mod mosquitto;
mod outbox;
mod probe;
mod quiet;
mod scenarios;
mod stats;
mod storage;
mod subscribers;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Ingest,
    Fanout,
    Connections,
    Latency,
    Bridge,
    Storage,
    Cluster,
    Alerts,
    Backup,
    Outbox,
    All,
}

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Tiny parameters and one repeat: checks that every scenario works.
    Quick,
    /// The parameters docs/BENCHMARKS.md reports, three repeats.
    Full,
}

impl Size {
    pub fn repeats(self) -> usize {
        match self {
            Size::Quick => 1,
            Size::Full => 3,
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    scenario: Scenario,
    /// Tiny parameters, one repeat (what CI runs).
    #[arg(long)]
    quick: bool,
    /// For `latency` alone: the maximum ingest rate to take half of, in
    /// readings per second (`all` measures it first).
    #[arg(long, default_value_t = 100_000.0)]
    max_rate: f64,
    /// The hub binary to measure, instead of `bench-hub` beside this one:
    /// another build, for a side-by-side comparison in one session.
    #[arg(long, value_name = "PATH")]
    hub: Option<std::path::PathBuf>,
    /// The hub serves https and wss (a certificate made for the run);
    /// devices and SSE subscribers connect over TLS. For `ingest` and
    /// `fanout`.
    #[arg(long)]
    tls: bool,
    /// For `ingest`: load this many threshold rules (none ever fires) on
    /// the probes' metric before each run, so every reading is evaluated.
    #[arg(long, default_value_t = 0)]
    alert_rules: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(hub) = &args.hub {
        anyhow::ensure!(hub.is_file(), "--hub {}: no such file", hub.display());
    }
    hubproc::use_binary(args.hub.clone());
    anyhow::ensure!(
        !args.tls || matches!(args.scenario, Scenario::Ingest | Scenario::Fanout),
        "--tls measures ingest and fanout only"
    );
    hubproc::use_tls(args.tls)?;
    alerts::use_rules(args.alert_rules);
    if args.alert_rules > 0 {
        println!(
            "\nEach ingest run loads {} threshold rules on the probes' metric first (none fires).",
            args.alert_rules
        );
    }
    if args.tls {
        println!(
            "\nThe hub serves TLS (https, wss; a P-256 certificate made for the run); devices and SSE subscribers connect over it."
        );
    }
    let size = if args.quick { Size::Quick } else { Size::Full };
    let mut results = Vec::new();
    let mut max_rate = args.max_rate;
    if matches!(args.scenario, Scenario::Ingest | Scenario::All) {
        let ingest = scenarios::ingest(size).await?;
        // The best median of the run is the maximum the latency scenario halves.
        max_rate = ingest["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row["readings_per_s"]["median"].as_f64())
            .fold(0.0, f64::max);
        results.push(ingest);
    }
    if matches!(args.scenario, Scenario::Fanout | Scenario::All) {
        results.push(scenarios::fanout(size).await?);
    }
    if matches!(args.scenario, Scenario::Connections | Scenario::All) {
        results.push(scenarios::connections(size).await?);
    }
    if matches!(args.scenario, Scenario::Latency | Scenario::All) {
        results.push(scenarios::latency(size, max_rate).await?);
    }
    if matches!(args.scenario, Scenario::Bridge | Scenario::All) {
        results.push(scenarios::bridge(size).await?);
    }
    if matches!(args.scenario, Scenario::Storage | Scenario::All) {
        results.push(storage::storage(size).await?);
    }
    if matches!(args.scenario, Scenario::Cluster | Scenario::All) {
        results.push(cluster::cluster(size).await?);
    }
    if matches!(args.scenario, Scenario::Alerts | Scenario::All) {
        results.push(alerts::alerts(size, max_rate).await?);
    }
    if matches!(args.scenario, Scenario::Backup | Scenario::All) {
        results.push(backup::backup(size).await?);
    }
    if matches!(args.scenario, Scenario::Outbox | Scenario::All) {
        results.push(outbox::outbox(size).await?);
    }
    println!();
    for result in results {
        println!("JSON {result}");
    }
    Ok(())
}
