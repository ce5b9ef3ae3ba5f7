//! Assembles the hub: opens storage, starts the writer with its commit
//! consumers and the background tasks, binds the listener, serves HTTP and
//! WebSocket, and shuts it all down in order. The only module that knows
//! every other; none of them imports it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Router, middleware};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{KeyWatcher, Keys};
use crate::admission::{Admission, Names};
use crate::alerts::evaluator::Evaluator;
use crate::alerts::{self, Alerts, alertmanager};
use crate::api::{self, access::Gate};
use crate::bridge::{self, Bridge};
use crate::cluster::Cluster;
use crate::commits::{Consumers, InlineConsumer, RetentionCutoff};
use crate::configuration;
use crate::http_error::ApiError;
use crate::ingest::registry::Registry;
use crate::ingest::{self, Ingest, session};
use crate::journal::{self, Journal};
use crate::live::{Live, subscription};
use crate::store::writer::{self, WriterHealth};
use crate::store::{PoolDurability, Store, compaction, retention};
use crate::telemetry::Counters;
use crate::tls::{Tls, TlsFiles};
use crate::{listener, monitor, presence};

/// Everything `hub serve` can be told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// The SQLite file, created with its schema if absent.
    pub db: PathBuf,
    /// Lets unknown devices register themselves by presenting this key.
    pub provision_key: Option<String>,
    /// The groups devices the provisioning key registers join.
    pub provision_groups: Vec<String>,
    pub timing: session::Timing,
    /// What one device may send a second.
    pub device_limits: session::Limits,
    /// Most concurrent device connections.
    pub max_devices: usize,
    /// What an HTTP connection may do before it is served.
    pub http: listener::Limits,
    /// Serve https and wss with this certificate and key.
    pub tls: Option<TlsFiles>,
    pub retention: Option<Retention>,
    /// Readings committed longer ago than this are compacted.
    pub compact_after: Duration,
    /// When set, the monitor API needs this token.
    pub monitor_token: Option<String>,
    /// Without a monitor token: the host names (beside IP addresses and
    /// `localhost`) the monitor API answers to.
    pub allowed_hosts: Vec<String>,
    /// Most concurrent live (SSE) subscribers.
    pub max_subscribers: usize,
    /// Most bytes of recent events kept in memory for live subscribers.
    pub live_buffer_bytes: usize,
    pub live: subscription::Timing,
    /// The MQTT bridge, when `--mqtt-url` is set.
    pub mqtt: Option<bridge::Settings>,
    /// The cluster's NATS JetStream, when `--nats-url` is set.
    pub cluster: Option<journal::Settings>,
    /// Where alerts are posted, when `--alertmanager-url` is set.
    pub alertmanager: Option<alertmanager::Settings>,
}

/// How long readings and their roll-ups are kept, and how often old ones
/// are deleted.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: retention::Keep,
    pub sweep_every: Duration,
}

/// The hub's state as the router holds it. Handlers and middleware take
/// only the parts they use, as axum sub-states (`State<Store>`,
/// `State<Arc<Live>>`, …), so no module below this one depends on it.
#[derive(Debug, Clone, FromRef)]
struct AppState {
    ingest: Arc<Ingest>,
    store: Store,
    registry: Registry,
    counters: Arc<Counters>,
    writer_health: WriterHealth,
    live: Arc<Live>,
    live_timing: subscription::Timing,
    /// Keys, and who is refused for sending wrong ones.
    gate: Gate,
    /// TLS on the listener, when configured.
    tls: Option<Tls>,
    /// The MQTT bridge's status, when it runs.
    mqtt: Option<Arc<bridge::Status>>,
    /// The cluster journal's status, in cluster mode.
    cluster: Option<Arc<journal::Status>>,
    /// Alert rules and acknowledgements.
    alerts: Alerts,
    /// Where the admin API writes.
    admin: api::admin::Admin,
    /// Devices' configurations.
    configs: configuration::Configs,
    /// The hub-wide stop: live streams watch it.
    shutdown: CancellationToken,
}

/// A hub that is bound and ready to serve.
#[derive(Debug)]
pub struct Hub {
    listener: TcpListener,
    state: AppState,
    settings: Settings,
    writer: JoinHandle<()>,
    writer_stop: CancellationToken,
    /// Shared by retention (which raises it) and the live fan-out.
    retention_cutoff: RetentionCutoff,
    bridge: Option<Bridge>,
    /// In cluster mode: the journal and the first entry not stored here.
    journal: Option<(Journal, u64)>,
    /// The alert rules' evaluator.
    evaluator: Evaluator,
    /// Reads the API keys again while the hub runs.
    key_watcher: KeyWatcher,
    /// This hub's hold on its database file, until the writer has stopped.
    _db_lock: crate::store::lock::DbLock,
    hangups: tokio::signal::unix::Signal,
}

impl Hub {
    /// Opens storage, starts the writer and binds the listener.
    ///
    /// # Errors
    /// The database cannot be opened or migrated, or the address not bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Hub> {
        // First: a bad certificate should not wait for the database.
        let tls = settings.tls.clone().map(Tls::new).transpose()?;
        listener::raise_descriptor_limit(
            settings
                .http
                .max_connections
                .saturating_add(settings.max_devices),
        );
        let db_lock = crate::store::lock::lock(&settings.db)?;
        // Watched from here on, before the hub says it listens: SIGHUP's
        // default action would end it without its orderly stop.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("watching SIGHUP")?;
        let store = Store::open(&settings.db, PoolDurability::WithWriter)
            .await
            .with_context(|| format!("opening database {}", settings.db.display()))?;
        let counters = Arc::new(Counters::default());
        let writer = writer::open(&store)
            .await
            .context("opening the writer's connection")?;
        let last_pos = writer.last_pos();
        // The commit consumers, in the order the publisher calls them.
        let consumers = Consumers::new(last_pos);
        let retention = RetentionCutoff::default();
        // Metric rows' names: told by the admission path, read by `live`.
        let names = Arc::new(Names::default());
        let live = Arc::new(Live::new(
            store.clone(),
            Arc::clone(&names),
            consumers.head(),
            retention.clone(),
            settings.max_subscribers,
            settings.live_buffer_bytes,
        ));
        let bridge = match settings.mqtt.clone() {
            Some(mqtt) => Some(
                Bridge::open(mqtt, &store, consumers.head())
                    .await
                    .context("reading the MQTT bridge's cursor")?,
            ),
            None => None,
        };
        let alert_head = consumers.head();
        let (feed, alert_queue) = alerts::feed::Feed::new(consumers.head());
        let registry = Registry::default();
        let config_index = configuration::Index::load(&store)
            .await
            .context("reading the devices' configurations")?;
        let nudge =
            configuration::Nudge::new(Arc::new(registry.clone()), Arc::clone(&config_index));
        let consumers = consumers
            .with_inline(Arc::clone(&live) as Arc<dyn InlineConsumer>)
            .with_inline(Arc::new(feed) as Arc<dyn InlineConsumer>)
            .with_inline(Arc::new(nudge) as Arc<dyn InlineConsumer>);
        let writer_stop = CancellationToken::new();
        let (writer_handle, writer) = writer
            .spawn(Arc::clone(&counters), consumers, writer_stop.clone())
            .context("starting the writer")?;
        let journal = match settings.cluster.clone() {
            Some(cluster) => Some(
                Journal::join(cluster, &store, &writer_handle, last_pos)
                    .await
                    .context("joining the cluster")?,
            ),
            None => None,
        };
        let cluster_journal = journal.as_ref().map(|(journal, _)| journal.clone());
        let (alerts, alert_inbox) = Alerts::new(
            writer_handle.clone(),
            store.clone(),
            cluster_journal.clone(),
        );
        let evaluator = Evaluator::open(
            store.clone(),
            writer_handle.clone(),
            cluster_journal,
            alert_head,
            alert_inbox,
            (alert_queue, Arc::clone(&names)),
        )
        .await
        .context("reading the alerts back")?;
        let (keys, key_watcher) =
            Keys::load(&store, settings.monitor_token.as_deref().map(Arc::from))
                .await
                .context("reading the API keys")?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let shutdown = CancellationToken::new();
        let writer_health = writer_handle.health().clone();
        let sessions = Arc::new(session::Context {
            store: store.clone(),
            admission: Admission::new(store.clone(), writer_handle.clone(), names),
            writer: writer_handle.clone(),
            registry: registry.clone(),
            counters: Arc::clone(&counters),
            timing: settings.timing,
            limits: settings.device_limits,
            journal: journal.as_ref().map(|(journal, _)| journal.clone()),
            configs: configuration::Configs::new(
                store.clone(),
                writer_handle.clone(),
                journal.as_ref().map(|(journal, _)| journal.clone()),
                config_index,
            ),
            shutdown: shutdown.clone(),
        });
        let configs = sessions.configs.clone();
        let admin = api::admin::Admin {
            writer: sessions.writer.clone(),
            store: store.clone(),
            journal: sessions.journal.clone(),
        };
        let state = AppState {
            ingest: Arc::new(Ingest {
                sessions,
                provision_key: settings.provision_key.clone(),
                provision_groups: settings.provision_groups.clone(),
                slots: Arc::new(Semaphore::new(settings.max_devices)),
                tracker: TaskTracker::new(),
            }),
            store,
            registry,
            counters,
            writer_health,
            live,
            live_timing: settings.live,
            gate: Gate {
                keys,
                failures: Arc::default(),
                secure: tls.is_some(),
                allowed_hosts: settings.allowed_hosts.iter().cloned().collect(),
            },
            tls,
            mqtt: bridge.as_ref().map(Bridge::status),
            cluster: journal.as_ref().map(|(journal, _)| journal.status()),
            alerts,
            admin,
            configs,
            shutdown,
        };
        Ok(Hub {
            listener,
            state,
            settings,
            writer,
            writer_stop,
            retention_cutoff: retention,
            bridge,
            journal,
            evaluator,
            key_watcher,
            _db_lock: db_lock,
            hangups,
        })
    }

    /// The hub's database, for what runs beside it in its process
    /// (`hub demo` issues its fleet's tokens).
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The hub's routes over its state, for requests served in-process
    /// (tests), without the listener's connection handling.
    pub fn router(&self) -> Router {
        router(self.state.clone())
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
            state,
            settings,
            writer,
            writer_stop,
            retention_cutoff,
            bridge,
            journal,
            evaluator,
            key_watcher,
            _db_lock: db_lock,
            hangups,
        } = self;
        let cancel = state.shutdown.clone();
        let tracker = state.ingest.tracker.clone();
        let store = state.store.clone();
        let writer_health = state.writer_health.clone();

        tracker.spawn(key_watcher.run(cancel.clone()));
        tracker.spawn(ingest::watch_revocations(
            store.clone(),
            state.registry.clone(),
            cancel.clone(),
        ));
        if let Some(retention) = settings.retention {
            tracker.spawn(retention::run(
                store.clone(),
                state.ingest.sessions.writer.clone(),
                retention.keep,
                retention.sweep_every,
                retention_cutoff,
                cancel.clone(),
            ));
        }
        tracker.spawn(compaction::run(
            store.clone(),
            state.ingest.sessions.writer.clone(),
            settings.compact_after,
            cancel.clone(),
        ));

        // Always: SIGHUP's default action would end the hub at once.
        tracker.spawn(reload_on_hangup(hangups, state.tls.clone(), cancel.clone()));
        // On the tracker: it saves its cursor through the writer, which
        // stops only after the tracked tasks.
        if let Some(bridge) = bridge {
            let parts = bridge::Parts {
                store: store.clone(),
                admission: state.ingest.sessions.admission.clone(),
                writer: state.ingest.sessions.writer.clone(),
                registry: state.registry.clone(),
                configs: state.configs.clone(),
            };
            tracker.spawn(bridge.run(parts, cancel.clone()));
        }
        // On the tracker: it records and saves its cursor through the writer.
        tracker.spawn(evaluator.run(cancel.clone()));
        if let Some(alertmanager) = settings.alertmanager.clone() {
            let notifier = alertmanager::Notifier::new(
                store.clone(),
                alertmanager,
                state.alerts.transitions(),
            );
            tracker.spawn(notifier.run(cancel.clone()));
        }
        let cluster_journal = journal.as_ref().map(|(journal, _)| journal.clone());
        // On the tracker: it stores through the writer.
        if let Some((journal, start)) = journal {
            let parts = journal::apply::Parts {
                admission: state.ingest.sessions.admission.clone(),
                writer: state.ingest.sessions.writer.clone(),
                store: store.clone(),
            };
            let cluster = Cluster::join(journal.clone(), state.registry.clone(), store.clone());
            tracker.spawn(cluster.run(cancel.clone()));
            tracker.spawn(journal::apply::run(journal, start, parts, cancel.clone()));
        }
        // Before the listener accepts: no session's presence is missed. On
        // the tracker: it records through the writer or the stream.
        let log = match &cluster_journal {
            Some(journal) => presence::Log::Stream(Box::new(journal.clone())),
            None => presence::Log::Writer(state.ingest.sessions.writer.clone()),
        };
        let recorder = presence::Recorder::new(
            state.registry.clone(),
            state.ingest.sessions.admission.clone(),
            &store,
            log,
        )
        .await
        .context("reading the devices' last statuses")?;
        tracker.spawn(recorder.run(cancel.clone()));
        let tls = state.tls.clone();
        tokio::spawn({
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = cancel.cancelled() => {}
                }
                tracing::info!("shutting down");
                cancel.cancel();
            }
        });
        // Graceful shutdown waits for HTTP connections only so long: a live
        // stream whose client stopped reading would hold it forever.
        listener::serve(
            listener,
            router(state),
            settings.http,
            tls,
            cancel.clone(),
            HTTP_SHUTDOWN_GRACE,
        )
        .await;
        // Whatever ended serving, the sessions and tasks must stop too.
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        writer_stop.cancel();
        if let Err(err) = writer.await {
            tracing::error!(error = %err, "the writer task failed");
        }
        store.close().await;
        // Only now may another hub open the file.
        drop(db_lock);
        // A hub whose writer died did not do its job: say so in the exit
        // status, for whatever supervises it.
        match writer_health.failure() {
            Some(reason) => anyhow::bail!("the storage writer had stopped: {reason}"),
            None => Ok(()),
        }
    }
}

/// Reloads the certificate at every SIGHUP, until `shutdown`; without TLS
/// there is nothing to reload, and SIGHUP is only logged.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            hangup = hangups.recv() => {
                if hangup.is_none() {
                    return;
                }
                match &tls {
                    Some(tls) => tls.reload(),
                    None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
                }
            }
        }
    }
}

/// Under TLS, tells browsers to use https only from now on.
async fn strict_transport(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        axum::http::HeaderValue::from_static("max-age=31536000"),
    );
    response
}

/// How long open HTTP connections get to finish once the hub stops.
const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The hub's routes.
fn router(state: AppState) -> Router {
    let tls = state.tls.is_some();
    // The monitor API: behind the monitor token when one is set.
    let monitor = Router::new()
        .route("/v1/events", get(api::events::events))
        .route("/v1/devices", get(api::devices))
        .route("/v1/me", get(api::me))
        .route(
            "/v1/devices/{id}/commands",
            post(api::commands::send).layer(DefaultBodyLimit::max(api::commands::MAX_BODY_BYTES)),
        )
        .route("/v1/readings", get(api::readings))
        .route(
            "/v1/alert-rules",
            get(api::alerts::rules)
                .post(api::alerts::add_rule)
                .layer(DefaultBodyLimit::max(api::alerts::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/alert-rules/{name}",
            axum::routing::delete(api::alerts::remove_rule),
        )
        .route("/v1/alerts", get(api::alerts::alerts))
        .route(
            "/v1/devices/{id}/config",
            get(api::config::get_config)
                .put(api::config::put_config)
                .patch(api::config::patch_config)
                .layer(DefaultBodyLimit::max(api::config::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/groups/{group}/config",
            axum::routing::put(api::config::put_group_config)
                .patch(api::config::patch_group_config)
                .layer(DefaultBodyLimit::max(api::config::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/admin/devices",
            post(api::admin::add_device).layer(DefaultBodyLimit::max(api::admin::MAX_BODY_BYTES)),
        )
        .route(
            "/v1/admin/devices/{id}",
            patch(api::admin::update_device)
                .layer(DefaultBodyLimit::max(api::admin::MAX_BODY_BYTES)),
        )
        .route("/v1/admin/devices/{id}/token", post(api::admin::new_token))
        .route(
            "/v1/admin/devices/{id}/revoke",
            post(api::admin::revoke_device),
        )
        .route(
            "/v1/admin/keys",
            get(api::admin::keys)
                .post(api::admin::add_key)
                .layer(DefaultBodyLimit::max(api::admin::MAX_BODY_BYTES)),
        )
        .route("/v1/admin/keys/{name}/revoke", post(api::admin::revoke_key))
        .route("/v1/admin/groups", get(api::admin::groups))
        .route("/v1/admin/audit", get(api::admin::audit))
        .route("/v1/admin/backup", post(api::backup::backup))
        .route(
            "/v1/alerts/{alert}/ack",
            post(api::alerts::acknowledge)
                .layer(DefaultBodyLimit::max(api::alerts::MAX_BODY_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::access::require,
        ));
    let router = Router::new()
        .merge(monitor)
        .route(
            "/",
            get(monitor::page).route_layer(middleware::from_fn_with_state(
                state.clone(),
                api::access::trade_token_for_cookie,
            )),
        )
        .route("/v1/ws", get(ingest::upgrade))
        .route("/healthz", get(api::health))
        .route("/v1/openapi.json", get(api::openapi::document))
        .route("/metrics", get(api::metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        // axum still adds the `Allow` header to this answer.
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see Allow",
            )
        })
        .with_state(state);
    if tls {
        router.layer(middleware::map_response(strict_transport))
    } else {
        router
    }
}
