//! A real Mosquitto (Debian's `mosquitto`) on a free loopback port, with a
//! config and a folder of its own, killed on drop. For the harness's
//! side-by-side fan-out and for tests that need a broker, which can stop it
//! and start it again on the same port and data.

use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::PATIENCE;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// How a broker is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep sessions and queued messages across a restart (saved when it
    /// stops).
    pub persistent: bool,
    /// Refuse every client: no anonymous access and no user known.
    pub refuse_everyone: bool,
    /// Queues far larger than Mosquitto's defaults (1,000 messages, 20 in
    /// flight per client), which drop QoS 1 messages to a subscriber that
    /// lags, silently.
    pub large_queues: bool,
    /// A second listener, over TLS with this certificate and key
    /// ([`Mosquitto::tls_port`]), beside the plain one.
    pub tls: Option<crate::pki::Issued>,
}

/// A broker process, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    /// The TLS listener's port, with [`Options::tls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts an anonymous, non-persistent broker and waits until it
    /// listens.
    ///
    /// # Errors
    /// Mosquitto is not installed, or does not start listening in time.
    pub async fn start() -> anyhow::Result<Mosquitto> {
        Self::start_with(Options::default()).await
    }

    /// Starts a broker set up as `options` says.
    ///
    /// # Errors
    /// As [`Mosquitto::start`].
    pub async fn start_with(options: Options) -> anyhow::Result<Mosquitto> {
        let port = crate::free_port();
        let dir = tempfile::tempdir()?;
        // Started as root, Mosquitto drops to its own user, which must be
        // able to save its state here.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        let access = if options.refuse_everyone {
            "allow_anonymous false\n"
        } else {
            "allow_anonymous true\n"
        };
        let persistence = if options.persistent {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        let queues = if options.large_queues {
            "max_queued_messages 1000000\nmax_inflight_messages 0\n"
        } else {
            ""
        };
        // Mosquitto started as root runs as the `mosquitto` user: it reads
        // its own copies of the certificate and key, in its folder.
        let (tls_port, tls) = match &options.tls {
            Some(issued) => {
                let tls_port = crate::free_port();
                for (from, to) in [(&issued.cert, "server.pem"), (&issued.key, "server.key")] {
                    let to = dir.path().join(to);
                    std::fs::copy(from, &to)?;
                    std::fs::set_permissions(
                        &to,
                        std::os::unix::fs::PermissionsExt::from_mode(0o644),
                    )?;
                }
                let folder = dir.path().display();
                let listener = format!(
                    "listener {tls_port} 127.0.0.1\ncertfile {folder}/server.pem\nkeyfile {folder}/server.key\n"
                );
                (Some(tls_port), listener)
            }
            None => (None, String::new()),
        };
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\n{tls}{access}{persistence}{queues}log_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )?;
        let mut broker = Mosquitto {
            port,
            tls_port,
            child: None,
            dir,
        };
        broker.resume().await?;
        Ok(broker)
    }

    /// Starts the broker again after [`Mosquitto::stop`], on the same port
    /// and data.
    ///
    /// # Errors
    /// As [`Mosquitto::start`].
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {MOSQUITTO} (Debian's mosquitto package)"))?;
        self.child = Some(child);
        crate::wait_until_listening(&format!("127.0.0.1:{}", self.port), "mosquitto", PATIENCE)
            .await
    }

    /// Stops the broker as a service manager would (SIGTERM: it saves its
    /// persistent state) and waits until it has exited.
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(child) => crate::terminate(child, "mosquitto").await,
            None => Ok(()),
        }
    }
}
