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
//! The same deadline bounds the rest of what a client could drag out: each
//! request's whole body (a body that never finishes gets 408 and the
//! connection closes), and a connection's idle time, HTTP/2's included (a
//! connection with no request or response in progress for that long is
//! closed; a live stream's is in progress, and HTTP/2 pings keep it
//! honest). Past `max_connections` connections being served, whatever
//! their protocol, new ones are closed at once, so descriptors stay for
//! the database and the devices already connected.
//!
//! It knows nothing of routes: it serves whatever `Router` it is given.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::http_error::BodyDeadline;
use crate::tls::{ClientIdentity, HandshakeFailure, Tls};

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
    /// The most connections being served over HTTP (SSE streams included;
    /// a device's connection counts until its WebSocket upgrade, after
    /// which `--max-devices` bounds it).
    pub max_connections: usize,
}

/// How often HTTP/2 pings a connection with a stream open (a live
/// stream's), so a peer that vanished is noticed.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// Descriptors kept for everything but connections: SQLite's files, the
/// writer's, NATS, the MQTT broker, the lock file.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the process's soft limit of open files to its hard limit, and
/// warns when that cannot hold `connections` connections besides the
/// hub's own files: past the limit, accepts fail and so does SQLite.
pub fn raise_descriptor_limit(connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %err, "cannot raise the descriptor limit");
            limit = getrlimit(Resource::Nofile);
        }
    }
    let needed = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_DESCRIPTORS);
    if let Some(available) = limit.current
        && available < needed
    {
        tracing::warn!(
            available,
            needed,
            "the descriptor limit (ulimit -n) is below --max-connections plus --max-devices: \
             lower them, or raise the limit"
        );
    }
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
    let served = Arc::new(Semaphore::new(limits.max_connections));
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
        let Ok(slot) = Arc::clone(&served).try_acquire_owned() else {
            tracing::debug!(%peer, "as many connections as --max-connections; closing");
            continue;
        };
        let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!(%peer, "too many connections without a request yet; closing");
            continue;
        };
        let (router, tls, shutdown) = (router.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            accept(tcp, peer, router, limits, tls, handshake, shutdown).await;
            drop(slot);
        });
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
    peer: std::net::SocketAddr,
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
            peer,
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
                peer,
                identity,
            };
            serve_connection(stream, connection, router, limits, handshake, shutdown).await;
        }
        Ok(Err(err)) => {
            let why = HandshakeFailure::of(&err);
            tls.handshake_failed(why);
            tracing::debug!(%peer, reason = why.label(), error = %err, "TLS handshake failed");
        }
        Err(_) => {
            tls.handshake_failed(HandshakeFailure::Timeout);
            tracing::debug!(%peer, "no TLS handshake within the header deadline");
        }
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
    /// The client's address (axum's `ConnectInfo` on each request: wrong
    /// keys are counted by it).
    peer: std::net::SocketAddr,
    /// The device its client certificate names, if it presented one.
    identity: Option<ClientIdentity>,
}

/// One connection's HTTP, from its first request to close.
async fn serve_connection<Io>(
    io: Io,
    Connection {
        protocols,
        peer,
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
    let activity = Arc::new(Activity::new());
    let requests = Arc::clone(&activity);
    let body_deadline = limits.header_read_timeout;
    let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        first_request
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        if let Some(identity) = &identity {
            request.extensions_mut().insert(identity.clone());
        }
        let in_flight = InFlight::enter(&requests);
        let request = request.map(|body| Body::new(Deadline::new(body, body_deadline)));
        let answer = router.clone().oneshot(request);
        async move {
            let response = answer.await?;
            // In flight until its body is over: a live stream stays so.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(Held {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
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
            drive(
                connection, shut_down, &handshake, &activity, limits, shutdown,
            )
            .await;
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
                .keep_alive_interval(H2_KEEP_ALIVE)
                .keep_alive_timeout(H2_KEEP_ALIVE)
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            let connection = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(connection);
            let shut_down = |connection: Pin<&mut _>| {
                auto::UpgradeableConnection::graceful_shutdown(connection);
            };
            drive(
                connection, shut_down, &handshake, &activity, limits, shutdown,
            )
            .await;
        }
    }
}

/// Runs a connection to its end: asks it to finish and close on shutdown,
/// or once it has been idle (no request or response in progress) for the
/// header deadline, and drops it if no request has come by the header
/// deadline. (HTTP/1.1 bounds each request head by itself; this bounds
/// everything before the first request whatever the protocol: a half-sent
/// HTTP/2 preface, a connection that never opens a stream; and an HTTP/2
/// connection kept open with nothing to do.)
async fn drive<C, E>(
    mut connection: Pin<&mut C>,
    shut_down: impl FnOnce(Pin<&mut C>),
    handshake: &Mutex<Option<OwnedSemaphorePermit>>,
    activity: &Activity,
    limits: Limits,
    shutdown: CancellationToken,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let idle_limit = limits.header_read_timeout;
    let first_deadline = tokio::time::sleep(idle_limit);
    tokio::pin!(first_deadline);
    let mut waiting_first = true;
    let mut idle_check = tokio::time::interval_at(Instant::now() + idle_limit, idle_limit / 4);
    let served = loop {
        tokio::select! {
            served = connection.as_mut() => break served,
            _ = idle_check.tick() => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_limit) {
                    tracing::debug!("idle past the header deadline; closing");
                    shut_down(connection.as_mut());
                    break connection.await;
                }
            }
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

/// A connection's requests in progress: from a request's arrival until its
/// response's body is over (or dropped).
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    /// When the last request in progress ended (or the connection began).
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// How long nothing has been in progress; `None` while something is.
    fn idle_for(&self) -> Option<Duration> {
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (self.open.load(Relaxed) == 0).then(|| since.elapsed())
    }
}

/// One request in progress, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Relaxed);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The clock first: a check that sees nothing open must see a fresh
        // time.
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request in progress while it lasts.
struct Held {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Held {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must be over by its deadline: after it, reading
/// fails with [`BodyDeadline`], the handler answers 408, and the
/// connection closes (its body was not read to the end).
struct Deadline {
    body: hyper::body::Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl Deadline {
    fn new(body: hyper::body::Incoming, limit: Duration) -> Self {
        Deadline {
            body,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyDeadline(self.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
