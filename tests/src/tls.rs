//! A TLS front for the hub, as a reverse proxy would put before it: it ends
//! TLS with the test certificate for `localhost` (see
//! `tests/fixtures/tls/README.md`) and passes the bytes on to the hub.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A file of the test certificates.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

/// Listens on a free loopback port until dropped.
#[derive(Debug)]
pub struct TlsFront {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// The accept loop; aborting it drops every connection it forwards.
    tasks: JoinSet<()>,
}

impl TlsFront {
    /// Ends TLS on a new port and forwards every connection to `backend`.
    ///
    /// # Errors
    /// The certificate cannot be loaded or no port is free.
    pub async fn start(backend: &str) -> anyhow::Result<Self> {
        let certs =
            CertificateDer::pem_file_iter(fixture("hub.pem"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(fixture("hub.key"))?;
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the test certificate")?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let backend = backend.to_owned();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(forward(acceptor.clone(), client, backend.clone()));
            }
        });
        Ok(Self { addr, tasks })
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn forward(acceptor: TlsAcceptor, client: TcpStream, backend: String) {
    // A client that refuses the certificate ends the handshake: nothing to do.
    let Ok(mut tls) = acceptor.accept(client).await else {
        return;
    };
    let Ok(mut hub) = TcpStream::connect(&backend).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut hub).await;
}
