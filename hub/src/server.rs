//! Assembles the hub: opens storage, starts the writer and the background
//! tasks, binds the listener, serves HTTP and WebSocket, and shuts it all down
//! in order.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Router, middleware};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, error::ApiError};
use crate::ingest::{self, registry::Registry, session};
use crate::live::{Live, subscription};
use crate::monitor;
use crate::store::writer::OnCommit;
use crate::store::{PoolDurability, Store, retention, writer};
use crate::telemetry::Counters;

/// Everything `hub serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// The SQLite file, created with its schema if absent.
    pub db: PathBuf,
    /// Lets unknown devices register themselves by presenting this key.
    pub provision_key: Option<String>,
    pub timing: session::Timing,
    pub retention: Option<Retention>,
    /// When set, the monitor API needs this token.
    pub monitor_token: Option<String>,
    /// Most concurrent live (SSE) subscribers.
    pub max_subscribers: usize,
    /// Most bytes of recent events kept in memory for live subscribers.
    pub live_buffer_bytes: usize,
    pub live: subscription::Timing,
}

/// How long readings are kept, and how often old ones are deleted.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: Duration,
    pub sweep_every: Duration,
}

/// What the HTTP handlers share.
#[derive(Debug)]
pub struct Shared {
    pub sessions: Arc<session::Context>,
    pub live: Arc<Live>,
    pub live_timing: subscription::Timing,
    pub monitor_token: Option<String>,
    pub provision_key: Option<String>,
    /// Tracks device sessions, which outlive their HTTP upgrade request.
    pub tracker: TaskTracker,
}

/// A hub that is bound and ready to serve.
#[derive(Debug)]
pub struct Hub {
    listener: TcpListener,
    shared: Arc<Shared>,
    settings: Settings,
    writer: JoinHandle<()>,
    writer_stop: CancellationToken,
}

impl Hub {
    /// Opens storage, starts the writer and binds the listener.
    ///
    /// # Errors
    /// The database cannot be opened or migrated, or the address not bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Hub> {
        let store = Store::open(&settings.db, PoolDurability::WithWriter)
            .await
            .with_context(|| format!("opening database {}", settings.db.display()))?;
        let counters = Arc::new(Counters::default());
        let head = store
            .last_pos()
            .await
            .context("reading the last position")?;
        let live = Arc::new(Live::new(
            store.clone(),
            head,
            settings.max_subscribers,
            settings.live_buffer_bytes,
        ));
        let writer_stop = CancellationToken::new();
        let (writer_handle, writer) = writer::spawn(
            &store,
            Arc::clone(&counters),
            Arc::clone(&live) as Arc<dyn OnCommit>,
            writer_stop.clone(),
        )
        .await
        .context("starting the writer")?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let sessions = Arc::new(session::Context {
            store,
            live: Arc::clone(&live),
            writer: writer_handle,
            registry: Registry::default(),
            counters,
            timing: settings.timing,
            shutdown: CancellationToken::new(),
        });
        let shared = Arc::new(Shared {
            sessions,
            live,
            live_timing: settings.live,
            monitor_token: settings.monitor_token.clone(),
            provision_key: settings.provision_key.clone(),
            tracker: TaskTracker::new(),
        });
        Ok(Hub {
            listener,
            shared,
            settings,
            writer,
            writer_stop,
        })
    }

    /// The address the hub listens on, with the real port.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets every
    /// session commit and acknowledge what it received, closes them and
    /// stops the writer last.
    ///
    /// # Errors
    /// The server fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Hub {
            listener,
            shared,
            settings,
            writer,
            writer_stop,
        } = self;
        let cancel = shared.sessions.shutdown.clone();
        let tracker = shared.tracker.clone();
        let store = shared.sessions.store.clone();

        tracker.spawn(ingest::watch_revocations(
            store.clone(),
            shared.sessions.registry.clone(),
            cancel.clone(),
        ));
        if let Some(retention) = settings.retention {
            tracker.spawn(retention::run(
                store.clone(),
                retention.keep,
                retention.sweep_every,
                cancel.clone(),
            ));
        }

        let signal = {
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = cancel.cancelled() => {}
                }
                tracing::info!("shutting down");
                cancel.cancel();
            }
        };
        // Acks, events and pings are small writes that must leave at once:
        // with Nagle's algorithm they wait for the peer's delayed ACK (40 ms).
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::warn!(error = %err, "cannot disable Nagle's algorithm");
            }
        });
        let serving = axum::serve(listener, router(shared))
            .with_graceful_shutdown(signal)
            .into_future();
        // Graceful shutdown waits for every HTTP connection; a live stream
        // whose client stopped reading would hold it forever.
        let served = tokio::select! {
            served = serving => served,
            () = async {
                cancel.cancelled().await;
                tokio::time::sleep(HTTP_SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("HTTP connections still open after {HTTP_SHUTDOWN_GRACE:?}; closing them");
                Ok(())
            }
        };
        // Whatever ended serving, the sessions and tasks must stop too.
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        writer_stop.cancel();
        if let Err(err) = writer.await {
            tracing::error!(error = %err, "the writer task failed");
        }
        store.close().await;
        served.context("serving HTTP")
    }
}

/// How long open HTTP connections get to finish once the hub stops.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The hub's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    // The monitor API: behind the monitor token when one is set.
    let monitor = Router::new()
        .route("/v1/events", get(api::events::events))
        .route("/v1/devices", get(api::devices))
        .route("/v1/devices/{id}/commands", post(api::commands::send))
        .route("/v1/readings", get(api::readings))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            api::monitor_auth::require,
        ));
    Router::new()
        .merge(monitor)
        .route("/", get(monitor::page))
        .route("/v1/ws", get(ingest::upgrade))
        .route("/healthz", get(api::health))
        .route("/metrics", get(api::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(shared)
}
