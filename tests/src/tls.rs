//! TLS for the tests: certificates made with rcgen, a front for the hub,
//! as a reverse proxy would put before it (it ends TLS with the test
//! certificate for `localhost` and passes the bytes on), and an https
//! client that trusts the test CA, for the hub's own TLS.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use testkit::pki::Pki;

/// The test certificates, made with rcgen once per test process: a CA
/// (`ca.pem`, `ca.key`) and the hub's certificate for `localhost` and
/// `127.0.0.1` it signed (`hub.pem`, `hub.key`), valid until 2100. (A
/// static is never dropped: the folder outlives the process, a few KB.)
static CERTS: LazyLock<Pki> = LazyLock::new(|| {
    let pki = Pki::new("telemetry-hub test CA");
    pki.server("hub", 4_102_444_800);
    pki
});

/// A file of the test certificates.
pub fn fixture(name: &str) -> PathBuf {
    CERTS.dir.path().join(name)
}

/// The test CA, to issue more certificates (a renewal, say).
pub fn test_ca() -> &'static Pki {
    &CERTS
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

/// What an https request got: status, headers and body.
#[derive(Debug)]
pub struct HttpsAnswer {
    /// The certificate the hub presented (DER).
    pub certificate: Vec<u8>,
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// `GET https://{addr}{path}` (`localhost:{port}`: the test certificate's
/// name), trusting the test CA, over a new connection (so it sees the
/// certificate the hub serves now).
///
/// # Errors
/// The TLS handshake (an untrusted certificate) or the request fails.
pub async fn https_get(addr: &str, path: &str) -> anyhow::Result<HttpsAnswer> {
    https_get_trusting(&fixture("ca.pem"), addr, path).await
}

/// [`https_get`], trusting the CA in the PEM file `ca`.
///
/// # Errors
/// As [`https_get`].
pub async fn https_get_trusting(ca: &Path, addr: &str, path: &str) -> anyhow::Result<HttpsAnswer> {
    use http_body_util::{BodyExt, Empty};
    let config = telemetry_device::tls::client_config(Some(ca), "--ca-cert")?;
    let tcp = TcpStream::connect(addr).await?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(HttpsAnswer {
        certificate,
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
