//! Debian's nginx on a free loopback port, running `docs/deploy/nginx.conf`
//! itself with only its listen port and the hub's address changed, in a
//! folder of its own (logs, temp files), killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, ensure};
use tokio::process::{Child, Command};

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx process in front of a hub, killed on drop.
#[derive(Debug)]
pub struct Nginx {
    /// Where clients reach it: `127.0.0.1:port`.
    pub addr: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

/// The deployment file the README offers.
pub fn deploy_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/nginx.conf")
}

impl Nginx {
    /// Starts nginx with the deployment config in front of the hub at
    /// `hub` (`host:port`) and waits until it listens.
    ///
    /// # Errors
    /// nginx is not installed, the config does not have the lines it
    /// replaces, or nginx does not start listening in time.
    pub async fn start(hub: &str) -> anyhow::Result<Nginx> {
        Self::balancing(&[hub]).await
    }

    /// Starts nginx with the deployment config in front of several hubs
    /// (a cluster's), round robin without sticky sessions, as the file's
    /// comment says to list them.
    ///
    /// # Errors
    /// As [`Nginx::start`].
    pub async fn balancing(hubs: &[&str]) -> anyhow::Result<Nginx> {
        ensure!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: run `bash scripts/test.sh`, which installs Debian's nginx"
        );
        let port = testkit::free_port();
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("logs"))?;
        let original = std::fs::read_to_string(deploy_config())?;
        let servers = hubs
            .iter()
            .map(|hub| format!("server {hub};"))
            .collect::<Vec<_>>()
            .join("\n        ");
        let config = original
            .replace(
                "        listen 80;\n",
                &format!("        listen 127.0.0.1:{port};\n"),
            )
            .replace("server 127.0.0.1:8080;", &servers);
        ensure!(
            config.contains(&format!("listen 127.0.0.1:{port};")) && config.contains(&servers),
            "docs/deploy/nginx.conf lost its `listen 80;` or `server 127.0.0.1:8080;` line"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config)?;
        // Run in the foreground, with its pid and error log in the folder;
        // as root, workers stay root so they can use the private folder.
        let mut globals = format!(
            "daemon off; pid {}; error_log {} warn;",
            dir.path().join("nginx.pid").display(),
            dir.path().join("logs/error.log").display()
        );
        if is_root() {
            globals.push_str(" user root;");
        }
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .arg("-g")
            .arg(globals)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {NGINX}"))?;
        let addr = format!("127.0.0.1:{port}");
        testkit::wait_until_listening(&addr, "nginx", testkit::PATIENCE).await?;
        Ok(Nginx {
            addr,
            _child: child,
            _dir: dir,
        })
    }
}

/// Whether this process runs as root (uid 0), read from /proc.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            == Some("0")
    })
}
