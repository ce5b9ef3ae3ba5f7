//! The accept loop: every TCP connection of the hub, before HTTP routing.
//!
//! It serves HTTP/1.1, and under TLS HTTP/2 to clients that choose `h2` by
//! ALPN. It owns what axum's `serve` does not let one set and a hub open to
//! the network needs (Mosquitto and ntfy set the same): a deadline for a
//! request's headers (a client that opens a connection and trickles bytes
//! — slowloris — is dropped), a maximum header size (431 past it), and a
//! cap on connections that have not yet sent their first request's headers
//! (past it, new connections are closed at once, so a flood of idle
//! connections costs a bounded number of sockets and never the accept loop
//! itself). It disables Nagle's algorithm (acks and events are small writes
//! that must leave at once), lets WebSocket upgrades go, and shuts down
//! gracefully: it stops accepting, tells every connection to finish its
//! request and close, and gives them `grace` before it drops the rest.
//!
//! With TLS, the handshake counts as part of a connection's first request:
//! it holds a handshake permit and must end within the header deadline, so
//! a client that opens TCP and never speaks TLS is dropped like a slowloris.
//!
//! It knows nothing of routes: it serves whatever `Router` it is given.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::tls::{ClientIdentity, Tls};

/// What a connection may do before it is served.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request's headers may take to arrive (the first request's
    /// counts from the connection's accept).
    pub header_read_timeout: Duration,
    /// The most bytes of request headers; past it, 431.
    pub max_header_bytes: usize,
    /// The most connections still waiting for their first request's
    /// headers.
    pub max_handshakes: usize,
}

/// Serves `router` on `listener` until `shutdown`, then shuts connections
/// down gracefully, dropping those still open after `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Tls>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait rather than
                    // spin, and keep serving the connections we have.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!(%peer, "too many connections without a request yet; closing");
            continue;
        };
        connections.spawn(accept(
            tcp,
            router.clone(),
            limits,
            tls.clone(),
            handshake,
            shutdown.clone(),
        ));
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after {grace:?}; closing them");
    }
}

/// One accepted connection: TLS first if configured, then HTTP.
async fn accept(
    tcp: TcpStream,
    router: Router,
    limits: Limits,
    tls: Option<Tls>,
    handshake: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::warn!(error = %err, "cannot disable Nagle's algorithm");
    }
    let Some(tls) = tls else {
        let connection = Connection {
            protocols: Protocols::Http1,
            identity: None,
        };
        return serve_connection(tcp, connection, router, limits, handshake, shutdown).await;
    };
    let handshaking = tokio::time::timeout(limits.header_read_timeout, tls.acceptor().accept(tcp));
    match handshaking.await {
        Ok(Ok(stream)) => {
            // rustls verified any certificate the client sent.
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(crate::tls::client_identity)
                .map(|id| ClientIdentity(id.into()));
            let protocols = Protocols::Http1Or2;
            let connection = Connection {
                protocols,
                identity,
            };
            serve_connection(stream, connection, router, limits, handshake, shutdown).await;
        }
        Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
        Err(_) => tracing::debug!("no TLS handshake within the header deadline"),
    }
}

/// Which HTTP a connection may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocols {
    /// Plain connections: HTTP/1.1, on hyper's own HTTP/1 server.
    Http1,
    /// TLS connections: HTTP/2 when the client chose `h2` by ALPN (it then
    /// starts with the HTTP/2 preface), HTTP/1.1 otherwise.
    Http1Or2,
}

/// What a connection brings to each of its requests.
#[derive(Debug)]
struct Connection {
    protocols: Protocols,
    /// The device its client certificate names, if it presented one.
    identity: Option<ClientIdentity>,
}

/// One connection's HTTP, from its first request to close.
async fn serve_connection<Io>(
    io: Io,
    Connection {
        protocols,
        identity,
    }: Connection,
    router: Router,
    limits: Limits,
    handshake: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The permit goes back when the first request's headers are in.
    let handshake = Arc::new(Mutex::new(Some(handshake)));
    let first_request = Arc::clone(&handshake);
    let service = router.map_request(move |mut request: Request<hyper::body::Incoming>| {
        first_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        request.map(axum::body::Body::new)
    });
    let service = TowerToHyperService::new(service);
    let io = TokioIo::new(io);
    match protocols {
        Protocols::Http1 => {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes);
            let connection = builder.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            let shut_down = |connection: Pin<&mut _>| {
                hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(connection);
            };
            drive(connection, shut_down, &handshake, limits, shutdown).await;
        }
        Protocols::Http1Or2 => {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            let shut_down = |connection: Pin<&mut _>| {
                auto::UpgradeableConnection::graceful_shutdown(connection);
            };
            drive(connection, shut_down, &handshake, limits, shutdown).await;
        }
    }
}

/// Runs a connection to its end: asks it to finish and close on shutdown,
/// and drops it if no request has come by the header deadline. (HTTP/1.1
/// bounds each request head by itself; this bounds everything before the
/// first request whatever the protocol: a half-sent HTTP/2 preface, a
/// connection that never opens a stream.)
async fn drive<C, E>(
    mut connection: Pin<&mut C>,
    shut_down: impl FnOnce(Pin<&mut C>),
    handshake: &Mutex<Option<OwnedSemaphorePermit>>,
    limits: Limits,
    shutdown: CancellationToken,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let first_deadline = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(first_deadline);
    let mut waiting_first = true;
    let served = loop {
        tokio::select! {
            served = connection.as_mut() => break served,
            () = &mut first_deadline, if waiting_first => {
                waiting_first = false;
                let still_waiting = handshake
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some();
                if still_waiting {
                    tracing::debug!("no request within the header deadline; closing");
                    return;
                }
            }
            () = shutdown.cancelled() => {
                shut_down(connection.as_mut());
                break connection.await;
            }
        }
    };
    if let Err(err) = served {
        tracing::debug!(error = %err, "HTTP connection ended with an error");
    }
}
