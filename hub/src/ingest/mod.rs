//! Ingest: the device WebSocket endpoint `GET /v1/ws`.
//!
//! The handshake is authenticated before the upgrade (a bad token is an HTTP
//! 401, never a WebSocket), then [`session`] runs the connection. The
//! [`registry`] knows which devices are online; [`watch_revocations`] closes
//! the sessions of devices revoked by `hub device revoke` in another process.

pub mod command;
mod destination;
pub mod outcome;
pub mod registry;
pub mod session;
pub mod state;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::limits::MAX_FRAME_BYTES;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::http_error::ApiError;
use crate::store::{Store, now_ms};
use crate::telemetry::Reject;
use crate::tls::ClientIdentity;
use registry::{Change, Kick, Registry};
use session::Auth;

/// The WebSocket layer refuses messages above this unread; below it, the
/// protocol's own limit answers with a typed `Error` frame.
const WS_MESSAGE_LIMIT: usize = 2 * MAX_FRAME_BYTES;

/// Per-connection read buffer: what one socket read takes at most. Ten
/// thousand idle devices pay it each (tokio-tungstenite's default, 128 KiB,
/// would be over a gigabyte). A frame larger than this is still read whole:
/// the buffer grows to the frame's announced length, in reads of this size.
const WS_READ_BUFFER: usize = 1024;

/// Most bytes a connection's frames may wait in its write buffer: two
/// frames. Past it a frame (the hub's Ack, say) waits for the device to
/// read, and tungstenite keeps one pending pong however many pings come,
/// so a client that sends and never reads costs at most this much.
pub const WS_WRITE_BUFFER_LIMIT: usize = 2 * MAX_FRAME_BYTES;

/// How often the registry is checked for revoked devices.
const REVOCATION_POLL: Duration = Duration::from_millis(250);

/// What the device endpoint needs.
#[derive(Debug)]
pub struct Ingest {
    /// What every session shares.
    pub sessions: Arc<session::Context>,
    /// Lets unknown devices register themselves by presenting this key.
    pub provision_key: Option<String>,
    /// The groups the provisioning key puts devices in (`--provision-group`):
    /// all of them, or those a device names in its upgrade's
    /// `X-Device-Groups`.
    pub provision_groups: Vec<String>,
    /// One permit per device connection (`--max-devices`).
    pub slots: Arc<Semaphore>,
    /// Tracks device sessions, which outlive their HTTP upgrade request.
    pub tracker: TaskTracker,
}

/// The device endpoint: authenticates and upgrades to a WebSocket that
/// carries binary postcard frames (docs/protocol.md).
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "devices",
    security(("device_token" = [])),
    responses(
        (status = 101, description = "Switching to the device protocol"),
        (status = 401, description = "No token, or an unknown or revoked one", body = ApiError),
        (status = 403, description = "The provisioning key with `X-Device-Groups` naming a group it may not put devices in (`group_not_allowed`)", body = ApiError),
        (status = 426, description = "Not a WebSocket upgrade", body = ApiError),
        (status = 503, description = "Past `--max-devices` (with `Retry-After`), or the hub cannot store (its writer stopped, or in a cluster NATS is unreachable)", body = ApiError),
    ),
)]
pub async fn upgrade(
    State(ingest): State<Arc<Ingest>>,
    certificate: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(reason) = ingest.sessions.writer.health().failure() {
        // A session could store nothing: say so before the upgrade.
        ingest.sessions.counters.reject(Reject::Storage);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("this hub cannot store readings: {reason}"),
        )
        .into_response();
    }
    if let Some(journal) = &ingest.sessions.journal
        && !journal.status().connected()
    {
        // Nothing could be acknowledged: the device had better try another
        // hub, or this one later. (An applier that is catching up again
        // does not stop this hub from publishing.)
        ingest.sessions.counters.reject(Reject::Storage);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            "this hub cannot reach NATS: readings are not accepted; retry shortly",
        )
        .into_response();
    }
    let Ok(slot) = Arc::clone(&ingest.slots).try_acquire_owned() else {
        ingest.sessions.counters.reject(Reject::TooManyDevices);
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_devices",
            "the hub serves as many device connections as it is allowed to; retry shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    };
    let certificate = certificate.map(|Extension(ClientIdentity(id))| id);
    let auth = match authenticate(&ingest, &headers, certificate).await {
        Ok(auth) => auth,
        Err(err) => {
            ingest.sessions.counters.reject(Reject::Unauthorized);
            return err.into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "websocket_required",
                format!("this endpoint speaks WebSocket only: {rejection}"),
            )
            .into_response();
        }
    };
    let ctx = Arc::clone(&ingest.sessions);
    let tracker = ingest.tracker.clone();
    ws.read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_WRITE_BUFFER_LIMIT)
        .max_message_size(WS_MESSAGE_LIMIT)
        .max_frame_size(WS_MESSAGE_LIMIT)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                session::run(socket, auth, ctx).await;
                drop(slot);
            })
        })
}

/// A bearer token if the device sent one, else its client certificate.
async fn authenticate(
    ingest: &Ingest,
    headers: &HeaderMap,
    certificate: Option<Arc<str>>,
) -> Result<Auth, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(auth::bearer);
    let token = match (token, certificate) {
        (Some(token), _) => token,
        (None, Some(device_id)) => return Ok(Auth::Certificate(device_id)),
        (None, None) => {
            return Err(ApiError::unauthorized(
                "send Authorization: Bearer <device token>, or a client certificate",
            ));
        }
    };
    if let Some(key) = &ingest.provision_key
        && auth::secrets_match(token, key)
    {
        let groups = enrolment_groups(&ingest.provision_groups, headers)?;
        return Ok(Auth::Provisioning { groups });
    }
    match ingest.sessions.store.authenticate(token).await? {
        Some(credentials) => Ok(Auth::Device(credentials)),
        None => Err(ApiError::unauthorized("unknown or revoked token")),
    }
}

/// The groups a device the provisioning key registers joins: those its
/// `X-Device-Groups` names (`device-sim --group`), each one the key may
/// put devices in (`allowed`), or without the header all of `allowed`.
fn enrolment_groups(allowed: &[String], headers: &HeaderMap) -> Result<Vec<String>, ApiError> {
    let Some(asked) = headers.get(DEVICE_GROUPS) else {
        return Ok(allowed.to_vec());
    };
    let refused = |asked: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "group_not_allowed",
            format!(
                "X-Device-Groups: the provisioning key puts devices only in {allowed:?} \
                 (--provision-group), not {asked:?}"
            ),
        )
    };
    let asked = asked.to_str().map_err(|_| refused("(not text)"))?;
    asked
        .split(',')
        .map(str::trim)
        .map(|group| {
            if allowed.iter().any(|a| a == group) {
                Ok(group.to_owned())
            } else {
                Err(refused(group))
            }
        })
        .collect()
}

/// The header in which a device enrolling with the provisioning key names
/// the groups it joins.
pub const DEVICE_GROUPS: &str = "x-device-groups";

/// Closes the sessions of devices revoked while the hub runs, within one
/// poll interval, until `shutdown`.
pub async fn watch_revocations(store: Store, registry: Registry, shutdown: CancellationToken) {
    let mut since = now_ms();
    // Announced once each, though the polls overlap (at most every device).
    let mut announced: HashSet<String> = HashSet::new();
    let mut poll = tokio::time::interval(REVOCATION_POLL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = poll.tick() => {}
        }
        // Overlap the windows a little: kicking twice is harmless, missing a
        // revocation written in the same millisecond as the last poll is not.
        let now = now_ms();
        match store.revoked_since(since - 1_000).await {
            Ok(revoked) => {
                for device in revoked {
                    if !announced.contains(&device) {
                        registry.announce(&device, Change::Revoked);
                        announced.insert(device.clone());
                    }
                    if registry.kick(&device, Kick::Revoked) {
                        tracing::info!(device = %device, "closed the session of a revoked device");
                    }
                }
                since = now;
            }
            Err(err) => tracing::warn!(error = %err, "cannot check for revoked devices"),
        }
    }
}
