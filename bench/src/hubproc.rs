//! The hub under test: the kit's hub process (so its CPU time and memory can
//! be read from /proc apart from the load generators), started with the
//! harness's provisioning key, and what the harness reads of its `/metrics`.
//! With `--tls` it serves https and wss with a certificate made for the run,
//! and clients reach it as `localhost`, trusting that certificate's CA.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use testkit::hub::HubProcess;
use testkit::pki::{Issued, Pki};

/// The run's certificates when the hub serves TLS.
struct Tls {
    /// Holds the folder the files are in.
    _pki: Pki,
    served: Issued,
    /// What devices and subscribers trust: the run's CA.
    client: Arc<rustls::ClientConfig>,
}

static TLS: OnceLock<Option<Tls>> = OnceLock::new();

/// Whether every hub of this run serves TLS; call once, before any start.
///
/// # Errors
/// The certificates cannot be made.
pub fn use_tls(on: bool) -> anyhow::Result<()> {
    let tls = if on {
        let pki = Pki::new("bench CA");
        // 2100-01-01: the run's certificate outlives the run.
        let served = pki.server("hub", 4_102_444_800);
        let client = telemetry_device::tls::client_config(Some(&pki.ca()), "--ca-cert")?;
        Some(Tls {
            _pki: pki,
            served,
            client,
        })
    } else {
        None
    };
    let _ = TLS.set(tls);
    Ok(())
}

fn tls() -> Option<&'static Tls> {
    TLS.get().and_then(Option::as_ref)
}

/// What devices and subscribers trust, when the hub serves TLS.
pub fn client_tls() -> Option<Arc<rustls::ClientConfig>> {
    tls().map(|tls| Arc::clone(&tls.client))
}

/// The device endpoint: `ws://127.0.0.1:port/v1/ws`, or under TLS
/// `wss://localhost:port/v1/ws` (the certificate's name).
pub fn ws_url(hub: &HubProcess) -> String {
    match tls() {
        Some(_) => {
            let port = hub.addr.rsplit_once(':').map_or("", |(_, port)| port);
            format!("wss://localhost:{port}/v1/ws")
        }
        None => hub.ws_url(),
    }
}

/// The hub binary every run starts: `bench-hub` beside the harness, unless
/// `--hub` named another build (to measure two builds side by side).
static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Chooses the hub binary; `None` keeps `bench-hub` beside the harness.
pub fn use_binary(path: Option<PathBuf>) {
    let _ = BINARY.set(path.unwrap_or_else(|| testkit::binary("bench-hub")));
}

/// The hub binary runs start, for its other commands (`hub backup`).
pub fn binary() -> &'static std::path::Path {
    BINARY.get_or_init(|| testkit::binary("bench-hub"))
}

/// Starts the hub with a provisioning key `bench` and `extra` flags, on a
/// fresh database.
///
/// # Errors
/// The hub does not start.
pub async fn start(extra: &[&str]) -> anyhow::Result<HubProcess> {
    start_in(tempfile::tempdir()?, extra).await
}

/// [`start`] on the database already in `dir`.
///
/// # Errors
/// As for [`start`].
pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> anyhow::Result<HubProcess> {
    let binary = binary();
    // Load devices send far past what one real device should: no budget.
    let mut args = vec![
        "--log",
        "error",
        "--provision-key",
        "bench",
        "--device-max-frames-per-s",
        "0",
        "--device-max-readings-per-s",
        "0",
    ];
    let (cert, key);
    if let Some(tls) = tls() {
        cert = tls.served.cert.display().to_string();
        key = tls.served.key.display().to_string();
        args.extend(["--tls-cert", &cert, "--tls-key", &key]);
    }
    args.extend_from_slice(extra);
    HubProcess::start(binary, dir, "127.0.0.1:0", &args)
        .await
        .with_context(|| {
            format!(
                "starting {} (build both binaries: cargo build --release -p bench --bins)",
                binary.display()
            )
        })
}

/// The hub's `/metrics` text.
///
/// # Errors
/// The hub does not answer.
pub async fn metrics(hub: &HubProcess) -> anyhow::Result<String> {
    let (status, body) = testkit::http::get(&hub.addr, "/metrics", &[]).await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
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
