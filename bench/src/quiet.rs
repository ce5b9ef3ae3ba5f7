//! Part of scenario 3: devices that are connected and say nothing (the
//! hub's pings, their pongs): the hub's CPU while they idle, and how long
//! SIGTERM takes to end a hub with all of them connected (each is told
//! 1001 and its connection closed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use protocol::{Hello, MetricDescriptor, PROTOCOL_VERSION};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::stats::Repeated;
use crate::{Size, hubproc};

/// Handshakes at once while connecting: the hub registers each new device
/// in a writer transaction.
const CONNECTING: usize = 200;

/// One quiet device: shakes hands, then only reads (tungstenite answers
/// the hub's pings) until the hub closes.
async fn quiet_device(url: String, id: String, opened: Arc<Semaphore>) -> anyhow::Result<()> {
    let permit = opened.acquire().await?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        device_id: id,
        model: "bench".into(),
        firmware: String::new(),
        metrics: vec![MetricDescriptor {
            id: 1,
            name: "quiet".into(),
            unit: String::new(),
        }],
    };
    let (mut ws, _) = telemetry_device::link::handshake(
        url,
        hubproc::client_tls(),
        "bench".into(),
        Arc::from([]),
        hello,
    )
    .await?;
    drop(permit);
    while let Some(message) = ws.next().await {
        if message.is_err() {
            break;
        }
    }
    Ok(())
}

pub async fn quiet(size: Size) -> anyhow::Result<Value> {
    let (devices, window) = match size {
        Size::Quick => (50, Duration::from_secs(1)),
        Size::Full => (10_000, Duration::from_secs(10)),
    };
    println!(
        "\n{devices} quiet devices (connected, sending nothing; the hub pings each every 20 s, `--ping-interval`): the hub's CPU over {} s once all are connected, and from SIGTERM to its exit. Median (min–max) of {} runs.\n",
        window.as_secs(),
        size.repeats()
    );
    println!("| connect all s | hub CPU idle (cores) | RSS MiB | SIGTERM to exit ms |");
    println!("|---:|---:|---:|---:|");
    let (mut connect, mut cpu, mut rss, mut stop) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..size.repeats() {
        let hub = hubproc::start(&["--max-devices", "100000"]).await?;
        let opened = Arc::new(Semaphore::new(CONNECTING));
        let started = Instant::now();
        let mut quiet = JoinSet::new();
        for i in 0..devices {
            quiet.spawn(quiet_device(
                hubproc::ws_url(&hub),
                format!("quiet-{i}"),
                Arc::clone(&opened),
            ));
        }
        // All connected: every permit was taken and given back.
        loop {
            let connected =
                crate::hubproc::sample(&hubproc::metrics(&hub).await?, "hub_connections_open")
                    .unwrap_or(0.0);
            if connected as usize >= devices {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "only {connected} of {devices} quiet devices connected"
            );
            if let Some(done) = quiet.try_join_next() {
                done?.context("a quiet device")?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        connect.push(started.elapsed().as_secs_f64());
        // Settled: the last handshakes' work is done.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = hub.cpu_seconds();
        tokio::time::sleep(window).await;
        cpu.push((hub.cpu_seconds() - before) / window.as_secs_f64());
        rss.push(hub.rss_kib() as f64 / 1024.0);
        let signalled = Instant::now();
        let (exit, _) = hub.terminate().await?;
        stop.push(signalled.elapsed().as_secs_f64() * 1_000.0);
        anyhow::ensure!(exit.success(), "the hub exited with {exit}");
        quiet.abort_all();
    }
    let [connect, cpu, rss, stop] = [connect, cpu, rss, stop].map(|v| Repeated::of(&v));
    println!(
        "| {} | {} | {} | {} |",
        connect.show(1),
        cpu.show(3),
        rss.show(1),
        stop.show(0)
    );
    Ok(json!({
        "devices": devices, "connect_s": connect.json(), "cpu_cores_idle": cpu.json(),
        "rss_mib": rss.json(), "sigterm_to_exit_ms": stop.json(),
    }))
}
