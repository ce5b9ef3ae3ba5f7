//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`) on a
//! free loopback port, with its own config and folder, routing every alert
//! at once to a webhook receiver this module runs: what a test reads is
//! what Alertmanager would have sent to mail or chat. It can be stopped
//! and started again on the same port and data.

use std::net::SocketAddr;
use std::process::Stdio;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Notifications the receiver took and not yet read. Far more than a test
/// makes; past it the receiver answers 503 and Alertmanager retries.
const RECEIVED: usize = 1_024;

/// An Alertmanager process, killed on drop, and its webhook's inbox.
#[derive(Debug)]
pub struct Alertmanager {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    received: mpsc::Receiver<Value>,
}

impl Alertmanager {
    /// Starts the receiver and Alertmanager, and waits until it is ready.
    ///
    /// # Errors
    /// Alertmanager is not installed or does not become ready in time.
    pub async fn start() -> anyhow::Result<Alertmanager> {
        let (sender, received) = mpsc::channel(RECEIVED);
        let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let hook_addr: SocketAddr = hook.local_addr()?;
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(sender);
        tokio::spawn(async move { axum::serve(hook, app).await });

        let port = testkit::free_port();
        let dir = tempfile::tempdir()?;
        // No grouping (each alert is its own group) and no waiting: a
        // notification per change, within a second.
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            format!(
                "route:\n  receiver: hook\n  group_by: ['...']\n  group_wait: 0s\n  \
                 group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: hook\n    webhook_configs:\n      \
                 - url: http://{hook_addr}/\n        send_resolved: true\n"
            ),
        )?;
        let mut manager = Alertmanager {
            port,
            child: None,
            dir,
            received,
        };
        manager.resume().await?;
        Ok(manager)
    }

    /// Its base URL, for `--alertmanager-url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Starts it again after [`Alertmanager::stop`], on the same port and
    /// data.
    ///
    /// # Errors
    /// As [`Alertmanager::start`].
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let folder = self.dir.path();
        let child = Command::new(ALERTMANAGER)
            .arg(format!(
                "--config.file={}",
                folder.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", folder.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            // Alone: no gossip port of its own to collide with others'.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("starting {ALERTMANAGER} (Debian's prometheus-alertmanager)")
            })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            let ready =
                testkit::http::get(&format!("127.0.0.1:{}", self.port), "/-/ready", &[]).await;
            if matches!(ready, Ok((200, _))) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "Alertmanager was not ready in time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Stops it as a service manager would (SIGTERM: it saves its
    /// notification log) and waits until it has exited.
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(child) => testkit::terminate(child, "alertmanager").await,
            None => Ok(()),
        }
    }

    /// Waits for the next alert the receiver gets (each notification's
    /// alerts, one by one) that `wanted` accepts, skipping the others.
    ///
    /// # Errors
    /// None came in time.
    pub async fn until(&mut self, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + 4 * crate::PATIENCE;
        loop {
            let notification = tokio::time::timeout_at(deadline, self.received.recv())
                .await
                .context("no such notification in time")?
                .context("the receiver stopped")?;
            if let Some(alert) = notification["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| wanted(a))
            {
                return Ok(alert.clone());
            }
        }
    }
}

async fn receive(
    State(sender): State<mpsc::Sender<Value>>,
    Json(body): Json<Value>,
) -> axum::http::StatusCode {
    match sender.try_send(body) {
        Ok(()) => axum::http::StatusCode::OK,
        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
    }
}
