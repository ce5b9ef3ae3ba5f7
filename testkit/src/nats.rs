//! A real `nats-server` (Debian's, with JetStream) on free loopback ports,
//! with a config and a folder of its own, killed on drop: one server, or a
//! cluster of them with routes. Tests stop, kill and start nodes again on
//! the same ports and data.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::PATIENCE;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// One `nats-server` process.
#[derive(Debug)]
pub struct NatsServer {
    /// The client port.
    pub port: u16,
    /// The HTTP monitoring port (`/healthz`).
    monitor_port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a single JetStream server and waits until JetStream answers.
    ///
    /// # Errors
    /// nats-server is not installed, or does not become healthy in time.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let mut server = Self::configure("n1", None)?;
        server.resume().await?;
        server.until_healthy().await?;
        Ok(server)
    }

    /// Writes a node's config; `cluster` is its route port and every
    /// node's route port.
    fn configure(name: &str, cluster: Option<(u16, &[u16])>) -> anyhow::Result<NatsServer> {
        let port = crate::free_port();
        let monitor_port = crate::free_port();
        let dir = tempfile::tempdir()?;
        let mut config = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
             jetstream {{\n  store_dir: \"{}\"\n}}\n",
            dir.path().join("jetstream").display()
        );
        if let Some((route_port, routes)) = cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|port| format!("nats-route://127.0.0.1:{port}"))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: hubs\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        std::fs::write(dir.path().join("nats.conf"), config)?;
        Ok(NatsServer {
            port,
            monitor_port,
            child: None,
            dir,
        })
    }

    /// User plus system CPU seconds the server has used.
    pub fn cpu_seconds(&self) -> f64 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .map_or(0.0, crate::cpu_seconds)
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, after [`NatsServer::stop`] or
    /// [`NatsServer::kill`]) on the same ports and data, and waits until it
    /// listens.
    ///
    /// # Errors
    /// It cannot be started, or does not listen in time.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {NATS_SERVER} (Debian's nats-server package)"))?;
        self.child = Some(child);
        crate::wait_until_listening(&format!("127.0.0.1:{}", self.port), "nats-server", PATIENCE)
            .await
    }

    /// Waits until the server's `/healthz` says it and JetStream are ready
    /// (in a cluster: a JetStream leader is known).
    ///
    /// # Errors
    /// Not healthy within the kit's patience.
    pub async fn until_healthy(&self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.monitor_port);
        let deadline = tokio::time::Instant::now() + 2 * PATIENCE;
        loop {
            if let Ok((200, _)) = crate::http::get(&addr, "/healthz", &[]).await {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "nats-server on port {} did not become healthy",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server as a service manager would (SIGTERM) and waits
    /// until it has exited.
    ///
    /// # Errors
    /// The signal cannot be sent, or it does not exit in time.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(child) => crate::terminate(child, "nats-server").await,
            None => Ok(()),
        }
    }

    /// Kills the server (SIGKILL), as a crash would.
    ///
    /// # Errors
    /// It cannot be killed.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

/// Several `nats-server`s routed into one cluster (JetStream replicated
/// across them).
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to each other and waits until each is
    /// healthy.
    ///
    /// # Errors
    /// A node does not start or become healthy in time.
    pub async fn start(size: usize) -> anyhow::Result<NatsCluster> {
        let route_ports: Vec<u16> = (0..size).map(|_| crate::free_port()).collect();
        let mut nodes = Vec::with_capacity(size);
        for (n, &route_port) in route_ports.iter().enumerate() {
            nodes.push(NatsServer::configure(
                &format!("n{}", n + 1),
                Some((route_port, &route_ports)),
            )?);
        }
        for node in &mut nodes {
            node.resume().await?;
        }
        for node in &nodes {
            node.until_healthy().await?;
        }
        Ok(NatsCluster { nodes })
    }

    /// The index of the node that leads `stream`, as the nodes' monitoring
    /// (`/jsz`) tells it; `None` if none says.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        for node in &self.nodes {
            let addr = format!("127.0.0.1:{}", node.monitor_port);
            let Ok((200, body)) =
                crate::http::get(&addr, "/jsz?accounts=true&streams=true", &[]).await
            else {
                continue;
            };
            let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let leader = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
                .find(|detail| detail["name"] == stream)
                .and_then(|detail| detail["cluster"]["leader"].as_str().map(str::to_owned));
            // Nodes are named n1, n2, …
            if let Some(index) = leader
                .and_then(|name| name.strip_prefix('n')?.parse::<usize>().ok())
                .and_then(|n| n.checked_sub(1))
            {
                return Some(index);
            }
        }
        None
    }

    /// Every node's URL, comma-separated: what `--nats-url` takes.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
