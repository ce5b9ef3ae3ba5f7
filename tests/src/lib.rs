//! Helpers for end-to-end tests: the real `hub` binary on port 0 with its
//! own temporary database, and a raw device client that can also misbehave.
//!
//! The hub binary is `hub-under-test`, this package's build of the hub's own
//! `main.rs`, which cargo builds before these tests run.

pub mod browser;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use protocol::{Batch, DeviceFrame, Hello, HubFrame, MetricDescriptor, Reading, Welcome};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Path of a workspace binary built next to the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run these tests with cargo test",
        path.display()
    );
    path
}

/// A running hub process with its own database, killed on drop.
#[derive(Debug)]
pub struct TestHub {
    pub addr: String,
    pub child: Child,
    dir: tempfile::TempDir,
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
        let db = dir.path().join("hub.db");
        let mut child = Command::new(binary("hub-under-test"))
            .args(["serve", "--listen", listen, "--log", "warn", "--db"])
            .arg(&db)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .context("starting hub")?;
        let stdout = child.stdout.take().context("hub stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .context("hub did not start in time")??
            .context("hub exited before listening")?;
        let addr = line
            .strip_prefix("hub listening on http://")
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("unexpected first line {line:?}"))?
            .to_owned();
        // Keep draining stdout so the hub never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(TestHub { addr, child, dir })
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("hub.db")
    }

    /// Runs `hub <args> --db <this hub's db>` and returns its stdout.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        cli_on(&self.db_path(), args).await
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

    /// `GET path` on the hub: status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(&self.addr, path, &[]).await
    }

    /// `POST path` with a JSON body: status and body.
    pub async fn post(&self, path: &str, json: &str) -> anyhow::Result<(u16, String)> {
        http_request(&self.addr, "POST", path, &[], Some(json)).await
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(
        mut self,
    ) -> anyhow::Result<(std::process::ExitStatus, tempfile::TempDir)> {
        let pid = self.child.id().context("hub already exited")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill failed");
        let exit = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("hub did not exit after SIGTERM")??;
        Ok((exit, self.dir))
    }

    /// Opens a device connection with `token`, without sending anything.
    pub async fn connect(&self, token: &str) -> Result<RawDevice, tungstenite::Error> {
        RawDevice::connect(&self.addr, Some(token)).await
    }
}

/// A loopback port that was free a moment ago, for a hub that must come back
/// on the same address after a restart.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Runs the hub CLI on a database file.
pub async fn cli_on(db: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(binary("hub-under-test"))
        .args(args)
        .arg("--db")
        .arg(db)
        .output()
        .await?)
}

/// A minimal HTTP/1.1 GET, enough for the hub's JSON and CSV answers.
pub async fn http_get(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, headers, None).await
}

/// A minimal HTTP/1.1 request with an optional JSON body.
pub async fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = json {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(json.unwrap_or_default());
    stream.write_all(request.as_bytes()).await?;
    tokio::time::timeout(PATIENCE, read_response(&mut stream))
        .await
        .context("no complete HTTP response in time")?
}

/// Reads one response: by Content-Length, chunked, or to the end of the
/// connection (some servers, like ChromeDriver, keep it open).
async fn read_response(stream: &mut TcpStream) -> anyhow::Result<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let mut body = raw.split_off(head_end + 4);
    loop {
        let complete = match length {
            Some(length) => body.len() >= length,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8(body)?;
    let body = if chunked { dechunk(&body)? } else { body };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
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
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
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
        self.send(&DeviceFrame::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            device_id: device_id.into(),
            model: "e2e".into(),
            firmware: "1".into(),
            metrics: vec![temperature()],
        }))
        .await?;
        match self.recv().await? {
            HubFrame::Welcome(welcome) => Ok(welcome),
            other => bail!("expected Welcome, got {other:?}"),
        }
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

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The event's data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }

    /// The id as a storage position.
    pub fn pos(&self) -> i64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("a numeric id")
    }
}

/// A minimal streaming SSE client over HTTP/1.1 (chunked bodies), so tests
/// see exactly what a browser's `EventSource` would.
#[derive(Debug)]
pub struct SseClient {
    stream: TcpStream,
    raw: Vec<u8>,
    text: String,
    pub headers: String,
}

impl SseClient {
    /// `GET path` and read the response head. Fails unless the status is 200.
    pub async fn connect(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<SseClient> {
        let (status, client) = Self::open(addr, path, headers).await?;
        anyhow::ensure!(
            status == 200,
            "expected 200, got {status}: {}",
            client.headers
        );
        Ok(client)
    }

    /// `GET path`: the status and the client (for any status).
    pub async fn open(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, SseClient)> {
        use tokio::io::AsyncWriteExt;
        let mut stream = TcpStream::connect(addr).await?;
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut client = SseClient {
            stream,
            raw: Vec::new(),
            text: String::new(),
            headers: String::new(),
        };
        let head_end = loop {
            if let Some(end) = client.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            client.fill().await?;
        };
        client.headers = String::from_utf8_lossy(&client.raw[..head_end]).into_owned();
        client.raw.drain(..head_end + 4);
        let status = client
            .headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        Ok((status, client))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut buf))
            .await
            .context("no data from the stream in time")??;
        anyhow::ensure!(n > 0, "stream ended");
        self.raw.extend_from_slice(&buf[..n]);
        Ok(())
    }

    /// Moves complete chunks from `raw` to `text`. Returns false at the
    /// terminating zero-size chunk.
    fn dechunk(&mut self) -> anyhow::Result<bool> {
        loop {
            let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return Ok(true);
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..line_end])?.trim(), 16)?;
            if size == 0 {
                return Ok(false);
            }
            if self.raw.len() < line_end + 2 + size + 2 {
                return Ok(true);
            }
            let chunk = self.raw[line_end + 2..line_end + 2 + size].to_vec();
            self.text.push_str(std::str::from_utf8(&chunk)?);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next event (not comments or bare `retry:` blocks). `None` once
    /// the server ended the stream.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.to_owned());
                    } else if let Some(name) = line.strip_prefix("event: ") {
                        event.event = name.to_owned();
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data.push_str(data);
                        has_data = true;
                    }
                }
                if has_data {
                    return Ok(Some(event));
                }
            }
            if !self.dechunk()? {
                return Ok(None);
            }
            if self.text.contains("\n\n") {
                continue;
            }
            match self.fill().await {
                Ok(()) => {}
                Err(err) if err.to_string() == "stream ended" => return Ok(None),
                Err(err) => return Err(err),
            }
        }
    }

    /// The next event of kind `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> anyhow::Result<SseEvent> {
        loop {
            let event = self.next_event().await?.context("stream ended")?;
            if event.event == kind {
                return Ok(event);
            }
        }
    }

    /// Everything received so far, undecoded (for keep-alive comments).
    pub async fn read_raw_for(&mut self, duration: Duration) -> String {
        let _ = tokio::time::timeout(duration, async {
            loop {
                if self.fill().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let _ = self.dechunk();
        self.text.clone()
    }
}
