//! Mosquitto, the system's broker, started on a free loopback port for the
//! side-by-side fan-out measurement, and a QoS 0 publisher for it.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::process::{Child, Command};

use crate::stats::now_us;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A broker process, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> anyhow::Result<Mosquitto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )?;
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {MOSQUITTO} (Debian's mosquitto package)"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Mosquitto {
            port,
            _child: child,
            _dir: dir,
        })
    }
}

/// Publishes `messages` readings to `topic` at QoS 0, in the same JSON as the
/// hub's SSE data, each carrying its send time. `batch` messages are sent
/// back to back, like one device frame; `rate` limits frames per second.
pub async fn publish(
    port: u16,
    topic: &str,
    messages: u64,
    batch: u64,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let mut options = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(options, 1024);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    let mut frame = 0u64;
    while sent < messages {
        if let Some(rate) = rate {
            tokio::time::sleep_until(started + Duration::from_secs_f64(frame as f64 / rate)).await;
        }
        let now = now_us();
        for _ in 0..batch.min(messages - sent) {
            let payload = format!(
                "{{\"device\":\"probe-1\",\"metric\":\"latency\",\"unit\":\"us\",\"ts_ms\":{},\"value\":{now:?}}}",
                (now / 1_000.0) as u64
            );
            client
                .publish(topic, QoS::AtMostOnce, false, payload)
                .await?;
            sent += 1;
        }
        frame += 1;
    }
    // Let the event loop flush what is queued before disconnecting.
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(30), driver).await;
    Ok(())
}
