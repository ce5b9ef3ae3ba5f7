//! A TCP relay on loopback that a test can cut and heal: the link between
//! one hub and NATS, partitioned while the other hubs keep theirs. Cutting
//! resets every relayed connection and refuses new ones until healed, as a
//! link that fails outright would.

use std::sync::Arc;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A relay from a free loopback port to `target`, dropped with its task.
#[derive(Debug)]
pub struct Relay {
    /// Where clients connect: `127.0.0.1:port`.
    pub addr: String,
    cut: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `target` (`host:port`).
    ///
    /// # Errors
    /// No loopback port can be bound.
    pub async fn start(target: &str) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let cut = Arc::new(watch::Sender::new(false));
        let task = tokio::spawn(relay(listener, target.to_owned(), Arc::clone(&cut)));
        Ok(Relay { addr, cut, task })
    }

    /// Resets every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(listener: TcpListener, target: String, cut: Arc<watch::Sender<bool>>) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let mut watch = cut.subscribe();
        if *watch.borrow_and_update() {
            // Refused: a reset, not a connection that hangs.
            let _ = client.set_zero_linger();
            continue;
        }
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&target).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut client, &mut server) => {}
                _ = watch.wait_for(|cut| *cut) => {
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                }
            }
        });
    }
}
