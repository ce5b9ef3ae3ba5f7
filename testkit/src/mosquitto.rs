//! A real Mosquitto (Debian's `mosquitto`) on a free loopback port, with a
//! config and a folder of its own, killed on drop. For the harness's
//! side-by-side fan-out and for tests that need a broker.

use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::PATIENCE;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A broker process, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts an anonymous, non-persistent broker and waits until it
    /// listens.
    ///
    /// # Errors
    /// Mosquitto is not installed, or does not start listening in time.
    pub async fn start() -> anyhow::Result<Mosquitto> {
        let port = crate::free_port();
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
        crate::wait_until_listening(&format!("127.0.0.1:{port}"), "mosquitto", PATIENCE).await?;
        Ok(Mosquitto {
            port,
            _child: child,
            _dir: dir,
        })
    }
}
