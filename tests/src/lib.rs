//! Helpers for end-to-end tests: the real `hub` binary on port 0 with its
//! own temporary database (the kit's [`HubProcess`]), and a raw device
//! client that can also misbehave.
//!
//! The hub binary is `hub-under-test`, this package's build of the hub's own
//! `main.rs`, which cargo builds before these tests run. The HTTP and SSE
//! clients are the kit's ([`testkit::http`], [`testkit::sse`]); the device
//! handshake is the simulator's ([`device_sim::link`]).

pub mod alertmanager;
pub mod browser;
pub mod fleets;
pub mod nginx;
pub mod partition;
pub mod tls;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::{Batch, DeviceFrame, Hello, HubFrame, MetricDescriptor, Reading, Welcome};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use telemetry_device::keyring::Keyring;
use testkit::hub::HubProcess;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

pub use testkit::PATIENCE;
pub use testkit::sse::{SseClient, SseEvent};

/// A running hub process with its own database, killed on drop. Everything
/// of the kit's [`HubProcess`] (its `addr`, `db_path()`, `pid()`) is
/// reachable through it.
#[derive(Debug)]
pub struct TestHub {
    process: HubProcess,
}

impl Deref for TestHub {
    type Target = HubProcess;

    fn deref(&self) -> &HubProcess {
        &self.process
    }
}

impl TestHub {
    /// Starts `hub serve` on a free port with `extra` flags.
    pub async fn start(extra: &[&str]) -> anyhow::Result<TestHub> {
        let dir = tempfile::tempdir()?;
        Self::start_in(dir, "127.0.0.1:0", extra).await
    }

    /// Starts `hub serve` on the database in `dir` (to restart on the same
    /// data), listening on `listen`.
    pub async fn start_in(
        dir: tempfile::TempDir,
        listen: &str,
        extra: &[&str],
    ) -> anyhow::Result<TestHub> {
        Self::start_with_env(dir, listen, extra, &[]).await
    }

    /// Starts `hub serve` with environment variables set, such as
    /// `HUB_TEST_FAULT`.
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<TestHub> {
        let mut args = vec!["--log", "warn"];
        args.extend_from_slice(extra);
        let process = HubProcess::start_with_env(&hub_binary(), dir, listen, &args, env).await?;
        Ok(TestHub { process })
    }

    /// Runs `hub <args> --db <this hub's db>` and returns its output.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        cli_on(&self.db_path(), args).await
    }

    /// Where this hub's fleets keep the tokens the hub issues their devices
    /// (device-sim's `--token-file`): in the hub's folder, so fleets run
    /// again, and after the hub's restarts, present them.
    pub fn token_file(&self) -> PathBuf {
        self.db_path().with_file_name("device-tokens")
    }

    /// The keyring of [`TestHub::token_file`], for a fleet's
    /// `DeviceSettings::keyring`.
    ///
    /// # Panics
    /// The file holds something else than tokens.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::new(Keyring::open(&self.token_file()).expect("the hub's token file"))
    }

    /// Provisions a device and returns its token.
    pub async fn add_device(&self, id: &str) -> anyhow::Result<String> {
        let out = self.cli(&["device", "add", id]).await?;
        if !out.status.success() {
            bail!(
                "device add failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Provisions a device in `group` and returns its token.
    pub async fn add_device_in(&self, id: &str, group: &str) -> anyhow::Result<String> {
        let out = self.cli(&["device", "add", id, "--group", group]).await?;
        if !out.status.success() {
            bail!(
                "device add failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// `hub key add <args>` on this hub's file: the key it prints.
    pub async fn add_key(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["key", "add"];
        all.extend_from_slice(args);
        let out = self.cli(&all).await?;
        if !out.status.success() {
            bail!("key add failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Waits until the hub knows `key`: it reads its keys every half
    /// second, so each try comes 600 ms after the last (a try before the
    /// hub knows the key counts as a wrong key, and ten of them lock the
    /// address out with 429), until `GET /v1/me` with it answers 200.
    pub async fn until_key_works(&self, key: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let bearer = format!("Bearer {key}");
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            let (status, body) =
                testkit::http::get(&self.addr, "/v1/me", &[("Authorization", &bearer)]).await?;
            if status == 200 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the hub never took the key: {status} {body}");
            }
        }
    }

    /// A read-only view of the database, as a person with sqlite3 would have.
    pub async fn db(&self) -> anyhow::Result<SqlitePool> {
        let options = SqliteConnectOptions::new()
            .filename(self.db_path())
            .read_only(true);
        Ok(SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?)
    }

    /// Waits until the hub's compaction has moved every slab below
    /// `position` into blocks (it looks every 10 s).
    ///
    /// # Errors
    /// The database cannot be read, or compaction does not get there in time.
    pub async fn until_compacted(&self, position: i64) -> anyhow::Result<()> {
        let db = self.db().await?;
        let deadline = tokio::time::Instant::now() + 4 * PATIENCE;
        loop {
            let through: i64 =
                sqlx::query_scalar("SELECT value FROM hub_state WHERE key = 'compacted_through'")
                    .fetch_one(&db)
                    .await?;
            if through >= position {
                db.close().await;
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "compacted through {through}, not {position}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Waits until `/v1/devices` shows `device` online.
    ///
    /// # Errors
    /// The hub does not answer, or the device is not online in time.
    pub async fn until_online(&self, device: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
        loop {
            let (_, body) = self.get("/v1/devices").await?;
            let devices: serde_json::Value = serde_json::from_str(&body)?;
            let online = devices["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["id"] == device && d["online"] == true);
            if online {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{device} never came online"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until the hub has stored `device`'s status as `online` (its
    /// last), and answers that status's position. Statuses take positions
    /// among the readings, moments after the change: a test that counts
    /// positions waits for it before the device sends.
    ///
    /// # Errors
    /// The database cannot be read, or the status is not stored in time.
    pub async fn until_status(&self, device: &str, online: bool) -> anyhow::Result<i64> {
        let db = self.db().await?;
        let wanted = format!(r#"{{"online":{online}}}"#);
        let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
        let pos = loop {
            let last: Option<(i64, String)> = sqlx::query_as(
                "SELECT pos, body FROM device_events WHERE device = ? AND kind = 'status'
                 ORDER BY pos DESC LIMIT 1",
            )
            .bind(device)
            .fetch_optional(&db)
            .await?;
            if let Some((pos, body)) = last
                && body == wanted
            {
                break pos;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{device}'s status {wanted} was never stored"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        db.close().await;
        Ok(pos)
    }

    /// Waits until the hub's alert evaluator runs `count` rules
    /// (`hub_alert_rules` in `/metrics`): rules added through the command
    /// line are read within a second.
    ///
    /// # Errors
    /// The hub does not answer, or not in time.
    pub async fn until_rules(&self, count: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let wanted = format!("\nhub_alert_rules {count}\n");
        loop {
            let (_, body) = self.get("/metrics").await?;
            if body.contains(&wanted) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the hub never ran {count} alert rules"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on the hub: status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        testkit::http::get(&self.addr, path, &[]).await
    }

    /// `POST path` with a JSON body: status and body.
    pub async fn post(&self, path: &str, json: &str) -> anyhow::Result<(u16, String)> {
        testkit::http::request(&self.addr, "POST", path, &[], Some(json)).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(self) -> anyhow::Result<(std::process::ExitStatus, tempfile::TempDir)> {
        self.process.terminate().await
    }

    /// Kills the hub with SIGKILL and hands back its folder.
    pub async fn kill(self) -> anyhow::Result<tempfile::TempDir> {
        self.process.kill().await
    }

    /// Waits up to `within` for the hub to exit by itself.
    ///
    /// # Errors
    /// It did not.
    pub async fn exited(
        self,
        within: std::time::Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, tempfile::TempDir)> {
        self.process.exited(within).await
    }

    /// Opens a device connection with `token`, without sending anything.
    pub async fn connect(&self, token: &str) -> Result<RawDevice, tungstenite::Error> {
        RawDevice::connect(&self.addr, Some(token)).await
    }
}

/// The hub as these tests run it.
pub fn hub_binary() -> PathBuf {
    testkit::binary("hub-under-test")
}

/// Runs the hub CLI on a database file.
pub async fn cli_on(db: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(hub_binary())
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .await?)
}

/// The `Hello` of a test device: `device_id` with the temperature metric.
pub fn hello(device_id: &str) -> Hello {
    Hello {
        version: protocol::PROTOCOL_VERSION,
        device_id: device_id.into(),
        model: "e2e".into(),
        firmware: "1".into(),
        metrics: vec![temperature()],
    }
}

/// The metric every test device declares: id 1, temperature in °C.
pub fn temperature() -> MetricDescriptor {
    MetricDescriptor {
        id: 1,
        name: "temperature".into(),
        unit: "°C".into(),
    }
}

/// A batch of `count` temperature readings, one per second from `base_ms`,
/// with values `seq * 1000 + i` so every reading is recognisable.
pub fn batch(seq: u64, base_ms: u64, count: u32) -> DeviceFrame {
    DeviceFrame::Batch(Batch {
        seq,
        base_ms,
        readings: (0..count)
            .map(|i| Reading {
                metric: 1,
                offset_ms: i * 1_000,
                value: (seq * 1_000 + u64::from(i)) as f64,
            })
            .collect(),
    })
}

/// A WebSocket device client that sends whatever it is told, valid or not.
#[derive(Debug)]
pub struct RawDevice {
    ws: telemetry_device::link::Ws,
}

/// How a connection ended, as the device saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The `Error` frame's code, if the hub sent one.
    pub error: Option<u16>,
    /// The WebSocket close code, if the hub sent a close frame.
    pub close_code: Option<u16>,
}

impl RawDevice {
    /// Connects to `ws://addr/v1/ws`, with a bearer token if given.
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<RawDevice, tungstenite::Error> {
        let mut request = format!("ws://{addr}/v1/ws").into_client_request()?;
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(tungstenite::http::Error::from)?;
            request.headers_mut().insert("authorization", value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(RawDevice { ws })
    }

    /// Sends `Hello` for `device_id` with the temperature metric and returns
    /// the hub's `Welcome`.
    pub async fn hello(&mut self, device_id: &str) -> anyhow::Result<Welcome> {
        telemetry_device::link::hello(&mut self.ws, hello(device_id)).await
    }

    /// Sends `hello` and returns what the hub answered: its `Welcome`, and
    /// the token it issued when the provisioning key registered the device.
    pub async fn greet(
        &mut self,
        hello: Hello,
    ) -> anyhow::Result<telemetry_device::link::Greeting> {
        telemetry_device::link::greet(&mut self.ws, hello).await
    }

    /// Sends a WebSocket ping, and reads nothing.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        self.ws.send(Message::Ping(Vec::new().into())).await?;
        Ok(())
    }

    pub async fn send(&mut self, frame: &DeviceFrame) -> anyhow::Result<()> {
        self.send_raw(frame.encode()).await
    }

    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// The next hub frame, skipping pings.
    pub async fn recv(&mut self) -> anyhow::Result<HubFrame> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("no frame from the hub in time")?
                .context("connection ended")??;
            match message {
                Message::Binary(bytes) => return Ok(HubFrame::decode(&bytes)?),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => bail!("expected a frame, got {other:?}"),
            }
        }
    }

    /// Sends a batch and waits for its `Ack`.
    pub async fn send_acked(&mut self, frame: &DeviceFrame) -> anyhow::Result<()> {
        let DeviceFrame::Batch(batch) = frame else {
            bail!("not a batch")
        };
        self.send(frame).await?;
        match self.recv().await? {
            HubFrame::Ack(ack) if ack.seq == batch.seq => Ok(()),
            other => bail!("expected Ack {}, got {other:?}", batch.seq),
        }
    }

    /// Reads until the connection ends and reports the last `Error` code and
    /// the close code. Acks read on the way are returned too.
    pub async fn until_closed(&mut self) -> anyhow::Result<(Closed, Vec<u64>)> {
        let mut closed = Closed {
            error: None,
            close_code: None,
        };
        let mut acks = Vec::new();
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .context("the hub did not close the connection in time")?;
            match next {
                None | Some(Err(_)) => return Ok((closed, acks)),
                Some(Ok(Message::Binary(bytes))) => match HubFrame::decode(&bytes)? {
                    HubFrame::Error(error) => closed.error = Some(error.code),
                    HubFrame::Ack(ack) => acks.push(ack.seq),
                    _ => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    closed.close_code = frame.map(|f: CloseFrame| u16::from(f.code));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
