//! The hub under test as its own process: the real binary, on loopback, with
//! a fresh database in a temporary folder. Its CPU time and memory can be
//! read from /proc apart from the load generators (for the harness).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::PATIENCE;

/// The database file's name in the hub's folder.
pub const DB_FILE: &str = "hub.db";

/// A running hub, killed on drop.
#[derive(Debug)]
pub struct HubProcess {
    /// `host:port` it listens on.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl HubProcess {
    /// Starts `binary serve --listen <listen> --db <dir>/hub.db <args>` and
    /// waits for its "hub listening on" line. The hub's logs go to the
    /// test's stderr when `TEST_LOG` is set.
    ///
    /// # Errors
    /// The binary cannot be started, or it exits or stays silent.
    pub async fn start(
        binary: &Path,
        dir: tempfile::TempDir,
        listen: &str,
        args: &[&str],
    ) -> anyhow::Result<HubProcess> {
        Self::start_with_env(binary, dir, listen, args, &[]).await
    }

    /// [`HubProcess::start`] with environment variables set for the hub
    /// (such as a test fault).
    ///
    /// # Errors
    /// As for [`HubProcess::start`].
    pub async fn start_with_env(
        binary: &Path,
        dir: tempfile::TempDir,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<HubProcess> {
        let mut child = Command::new(binary)
            .envs(env.iter().copied())
            .args(["serve", "--listen", listen, "--db"])
            .arg(dir.path().join(DB_FILE))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("hub stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(2 * PATIENCE, lines.next_line())
            .await
            .context("the hub did not start in time")??
            .context("the hub exited before listening")?;
        let addr = listening_addr(&line)
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        // Keep draining stdout so the hub never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(HubProcess { addr, child, dir })
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join(DB_FILE)
    }

    /// The process id (0 once it has exited).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The device endpoint, `ws://host:port/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// `http://host:port` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits for the exit status; the folder (and its
    /// database) is handed back, to inspect or to start again on.
    ///
    /// # Errors
    /// The hub had exited already, or did not exit in time.
    pub async fn terminate(mut self) -> anyhow::Result<(ExitStatus, tempfile::TempDir)> {
        let pid = self.child.id().context("the hub already exited")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill failed");
        let exit = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("the hub did not exit after SIGTERM")??;
        Ok((exit, self.dir))
    }

    /// Kills the hub with SIGKILL (no shutdown of any kind, as a crash or
    /// the OOM killer would) and hands back its folder.
    ///
    /// # Errors
    /// The hub had exited already.
    pub async fn kill(mut self) -> anyhow::Result<tempfile::TempDir> {
        self.child.kill().await.context("killing the hub")?;
        Ok(self.dir)
    }

    /// Waits for the hub to exit by itself (a test's fault, say) and hands
    /// back its exit status and folder.
    ///
    /// # Errors
    /// The hub was still running after `within`.
    pub async fn exited(
        mut self,
        within: std::time::Duration,
    ) -> anyhow::Result<(ExitStatus, tempfile::TempDir)> {
        let exit = tokio::time::timeout(within, self.child.wait())
            .await
            .context("the hub did not exit")??;
        Ok((exit, self.dir))
    }

    /// User plus system CPU seconds the hub has used.
    pub fn cpu_seconds(&self) -> f64 {
        crate::cpu_seconds(self.pid())
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
}

/// The address in the hub's first line, `hub listening on http://ADDR …`.
pub fn listening_addr(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("hub listening on ")?;
    let rest = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))?;
    rest.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_listening_line() {
        let line = "hub listening on http://127.0.0.1:4242 (devices: ws://127.0.0.1:4242/v1/ws)";
        assert_eq!(listening_addr(line), Some("127.0.0.1:4242"));
        let tls = "hub listening on https://127.0.0.1:4243 (devices: wss://127.0.0.1:4243/v1/ws)";
        assert_eq!(listening_addr(tls), Some("127.0.0.1:4243"));
        assert_eq!(listening_addr("starting"), None);
    }
}
