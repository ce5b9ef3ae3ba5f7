//! The hub under test, as its own process (so its CPU time and memory can
//! be read from /proc apart from the load generators), on loopback with a
//! fresh database.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A running hub, killed on drop.
#[derive(Debug)]
pub struct HubProcess {
    pub addr: String,
    pub db: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HubProcess {
    /// Starts the hub with a provisioning key `bench` and `extra` flags.
    pub async fn start(extra: &[&str]) -> anyhow::Result<HubProcess> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("bench.db");
        let exe = std::env::current_exe()?;
        let hub = exe.with_file_name("bench-hub");
        let mut child = Command::new(&hub)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "error",
                "--provision-key",
                "bench",
            ])
            .arg("--db")
            .arg(&db)
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build both binaries: cargo build --release -p bench --bins)",
                    hub.display()
                )
            })?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("hub start")??
            .context("hub exited")?;
        let addr = line
            .strip_prefix("hub listening on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .context("listening line")?
            .to_owned();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(HubProcess {
            addr,
            db,
            child,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// User plus system CPU seconds the hub has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start
        // after the last ')': utime and stime are the 12th and 13th there.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
            f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
        });
        ticks / clock_ticks_per_second()
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The hub's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(&self.addr).await?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (_, body) = response
            .split_once("\r\n\r\n")
            .context("no end to the response head")?;
        Ok(body.to_owned())
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }
}

/// Linux reports CPU times in clock ticks, 100 a second on every platform
/// Rust supports there (USER_HZ).
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// A sample's value in Prometheus text: the line that starts with `series`
/// followed by a space.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_found_by_its_whole_series() {
        let text =
            "# HELP x\nhub_commits_total 12\nhub_commit_duration_seconds_bucket{le=\"0.01\"} 7\n";
        assert_eq!(sample(text, "hub_commits_total"), Some(12.0));
        assert_eq!(
            sample(text, "hub_commit_duration_seconds_bucket{le=\"0.01\"}"),
            Some(7.0)
        );
        assert_eq!(sample(text, "hub_commits"), None);
    }
}
