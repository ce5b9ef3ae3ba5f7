//! The test kit: what the end-to-end tests (`tests/`) and the benchmark
//! harness (`bench/`) share, so that both drive the hub the same way.
//!
//! * [`hub`]: the real hub binary as a process on a free port, with its own
//!   temporary database.
//! * [`http`]: requests to the hub (or any local HTTP service) with reqwest.
//! * [`sse`]: a Server-Sent Events client that parses as a browser's
//!   `EventSource` does (eventsource-stream), and keeps the raw text.
//! * [`mosquitto`]: a real Mosquitto on a free port with its own config.
//! * [`nats`]: a real nats-server with JetStream, alone or as a cluster.
//!
//! The device side lives in `device_sim::link` (the simulator's own
//! handshake), which the tests and the harness use too.

pub mod http;
pub mod hub;
pub mod mosquitto;
pub mod nats;
pub mod pki;
pub mod sse;

use std::path::PathBuf;
use std::time::Duration;

/// How long a test waits for anything before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Path of a workspace binary built next to the running executable (a test
/// in `target/<profile>/deps/`, or the harness in `target/<profile>/`).
///
/// # Panics
/// The binary is missing: it was not built by the command that built the
/// caller.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("a target directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with cargo (cargo test, or cargo build --release -p bench --bins)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago, for a service that must come
/// back on the same address after a restart, or that cannot pick its own.
///
/// # Panics
/// No port can be bound on loopback.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until something accepts TCP connections at `addr`.
///
/// # Errors
/// Nothing listens there within `patience`; the error names `what`.
pub async fn wait_until_listening(
    addr: &str,
    what: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} did not start listening on {addr} within {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// User plus system CPU seconds the process `pid` has used (0 if it has
/// gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
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
    // Linux reports CPU times in clock ticks, 100 a second on every
    // platform Rust supports there (USER_HZ).
    ticks / 100.0
}

/// Stops a service as a service manager would (SIGTERM) and waits until it
/// has exited; `what` names it in the error.
///
/// # Errors
/// The signal cannot be sent, or it does not exit in time.
pub async fn terminate(mut child: tokio::process::Child, what: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(pid) = child.id() {
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await?;
    }
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .with_context(|| format!("{what} did not stop"))??;
    Ok(())
}
