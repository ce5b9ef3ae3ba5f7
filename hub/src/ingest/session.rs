//! One device connection, from handshake to close.
//!
//! The session reads frames, applies the rules in [`super::state`], hands
//! batches to the writer and sends each `Ack` when the writer reports the
//! commit. It keeps at most [`IN_FLIGHT`] batches unacknowledged; past that
//! it stops reading the socket, so a device that outruns storage is slowed by
//! TCP instead of growing the hub's memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use protocol::{
    CommandResult, DeviceFrame, ErrorFrame, HubFrame, PROTOCOL_VERSION, Welcome, error_code, limits,
};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::registry::{COMMAND_QUEUE, Kick, PendingCommand, Registry};
use super::state::{BatchStream, Violation, check_hello};
use crate::live::Live;
use crate::store::Store;
use crate::store::devices::Credentials;
use crate::store::writer::{WriteOutcome, WriterHandle};
use crate::telemetry::{Counters, Reject};

/// Most batches a session has handed to the writer and not yet acknowledged.
const IN_FLIGHT: usize = 32;

/// How long the hub waits for the device's close reply after its own close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// WebSocket close codes (RFC 6455, section 7.4.1).
mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// Timing settings of device sessions.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a new connection has to send `Hello`.
    pub hello_timeout: Duration,
    /// How often the hub pings; a device silent for two intervals is closed.
    pub ping_interval: Duration,
    /// The sampling interval announced in `Welcome`.
    pub sample_interval: Duration,
}

/// What every session shares.
#[derive(Debug)]
pub struct Context {
    pub store: Store,
    pub live: Arc<Live>,
    pub writer: WriterHandle,
    pub registry: Registry,
    pub counters: Arc<Counters>,
    pub timing: Timing,
    pub shutdown: CancellationToken,
}

/// Who the handshake says is connecting.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A device token: the `Hello` must name this device.
    Device(Credentials),
    /// The fleet provisioning key: the `Hello` names the device, which is
    /// registered if it is new.
    Provisioning,
}

/// How a session ends, and what the device is told.
#[derive(Debug)]
struct Ending {
    error: Option<ErrorFrame>,
    close: Option<(u16, &'static str)>,
    reject: Option<Reject>,
}

impl Ending {
    fn violation(violation: Violation) -> Self {
        let close = if violation.code == error_code::TOO_LARGE {
            (close_code::TOO_BIG, "frame too large")
        } else {
            (close_code::POLICY, "protocol violation")
        };
        Ending {
            error: Some(ErrorFrame {
                code: violation.code,
                message: violation.message,
            }),
            close: Some(close),
            reject: Some(Reject::Protocol),
        }
    }

    fn told(code: u16, message: &str, close: (u16, &'static str), reject: Reject) -> Self {
        Ending {
            error: Some(ErrorFrame {
                code,
                message: message.to_owned(),
            }),
            close: Some(close),
            reject: Some(reject),
        }
    }

    fn kicked(kick: Kick) -> Self {
        match kick {
            Kick::Replaced => Ending::told(
                error_code::REPLACED,
                "a newer connection of this device replaced this one",
                (close_code::POLICY, "replaced"),
                Reject::Replaced,
            ),
            Kick::Revoked => Ending::told(
                error_code::REVOKED,
                "this device's credentials were revoked",
                (close_code::POLICY, "revoked"),
                Reject::Revoked,
            ),
        }
    }

    fn shutdown() -> Self {
        Ending {
            error: None,
            close: Some((close_code::GOING_AWAY, "hub shutting down")),
            reject: None,
        }
    }

    /// The device closed or vanished: there is no one left to tell.
    fn gone() -> Self {
        Ending {
            error: None,
            close: None,
            reject: None,
        }
    }
}

/// Runs a device connection to its end.
pub async fn run(mut socket: WebSocket, auth: Auth, ctx: Arc<Context>) {
    // A provisioning device's id is known only from its Hello; the handshake
    // records it then.
    let span = tracing::info_span!("device_session", device = tracing::field::Empty);
    if let Auth::Device(credentials) = &auth {
        span.record("device", credentials.device_id.as_str());
    }
    async {
        ctx.counters.connection_opened();
        let ending = serve(&mut socket, auth, &ctx).await;
        if let Some(reject) = ending.reject {
            ctx.counters.reject(reject);
            tracing::info!(reason = ?ending.error.as_ref().map(|e| &e.message), "closing device connection");
        }
        finish(&mut socket, ending).await;
        ctx.counters.connection_closed();
        tracing::debug!("session ended");
    }
    .instrument(span)
    .await;
}

/// One thing read from the socket.
enum Incoming {
    Frame(DeviceFrame),
    /// A ping or pong: proof of life, nothing to do.
    Heartbeat,
    Bad(Violation),
    Gone,
}

/// Reads the next message. Cancel-safe: a message is either fully handled or
/// left in the socket.
async fn next_incoming(socket: &mut WebSocket, counters: &Counters) -> Incoming {
    match socket.recv().await {
        None | Some(Ok(Message::Close(_))) => Incoming::Gone,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Heartbeat,
        Some(Ok(Message::Text(_))) => Incoming::Bad(Violation {
            code: error_code::MALFORMED,
            message: "text messages are not accepted: send postcard frames as binary messages"
                .into(),
        }),
        Some(Ok(Message::Binary(bytes))) => {
            counters.frame_in(bytes.len());
            match DeviceFrame::decode(&bytes) {
                Ok(frame) => Incoming::Frame(frame),
                Err(err) => Incoming::Bad(Violation {
                    code: err.code(),
                    message: err.to_string(),
                }),
            }
        }
        Some(Err(err)) => read_error(err),
    }
}

fn read_error(err: axum::Error) -> Incoming {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match err.into_inner().downcast::<WsError>() {
        // The message is beyond even the WebSocket layer's limit, which is set
        // above the protocol's, so it was not read: refuse it like any other
        // oversized frame.
        Ok(ws) if matches!(*ws, WsError::Capacity(_)) => Incoming::Bad(Violation {
            code: error_code::TOO_LARGE,
            message: format!(
                "message exceeds the frame limit of {} bytes",
                limits::MAX_FRAME_BYTES
            ),
        }),
        Ok(ws) => {
            tracing::debug!(error = %ws, "device connection failed");
            Incoming::Gone
        }
        Err(other) => {
            tracing::debug!(error = %other, "device connection failed");
            Incoming::Gone
        }
    }
}

async fn send(socket: &mut WebSocket, frame: &HubFrame) -> Result<(), axum::Error> {
    socket.send(Message::Binary(frame.encode().into())).await
}

async fn serve(socket: &mut WebSocket, auth: Auth, ctx: &Context) -> Ending {
    // Handshake: Hello within the deadline, for the right device.
    let first = match timeout(ctx.timing.hello_timeout, async {
        loop {
            match next_incoming(socket, &ctx.counters).await {
                Incoming::Heartbeat => continue,
                other => break other,
            }
        }
    })
    .await
    {
        Err(_) => {
            return Ending::told(
                error_code::HELLO_TIMEOUT,
                &format!("no Hello within {:?}", ctx.timing.hello_timeout),
                (close_code::POLICY, "no Hello in time"),
                Reject::HelloTimeout,
            );
        }
        Ok(Incoming::Frame(frame)) => frame,
        Ok(Incoming::Bad(violation)) => return Ending::violation(violation),
        Ok(Incoming::Heartbeat | Incoming::Gone) => return Ending::gone(),
    };
    let expected = match &auth {
        Auth::Device(credentials) => Some(credentials.device_id.as_str()),
        Auth::Provisioning => None,
    };
    let hello = match check_hello(first, expected) {
        Ok(hello) => hello,
        Err(violation) => return Ending::violation(violation),
    };
    let credentials = match auth {
        Auth::Device(credentials) => credentials,
        Auth::Provisioning => {
            let registering = register_self(ctx, &hello.device_id);
            match timeout(ctx.timing.hello_timeout, registering).await {
                Ok(Ok(Some(credentials))) => credentials,
                Ok(Ok(None)) => return Ending::kicked(Kick::Revoked),
                Ok(Err(err)) => return storage_trouble(&err),
                Err(_) => return storage_trouble("registration timed out"),
            }
        }
    };
    tracing::Span::current().record("device", credentials.device_id.as_str());

    // Register before reading last_seq: an older connection of this device
    // is kicked first, and whatever it still had in the writer's queue is
    // recognised as a resend by the writer if the device sends it again.
    let (presence, inbox) = ctx.registry.register(&credentials.device_id);
    let (mut kicked, mut commands) = (inbox.kicked, inbox.commands);
    // Bounded like the Hello itself: a session stuck behind a busy database
    // would not notice its device leave and would hold the socket.
    let registering = register_hello(ctx, credentials.row, &hello);
    let (last_seq, metric_rows) = match timeout(ctx.timing.hello_timeout, registering).await {
        Ok(Ok(registration)) => registration,
        Ok(Err(err)) => return storage_trouble(&err),
        Err(_) => return storage_trouble("registration timed out"),
    };
    ctx.live
        .register_metrics(&credentials.device_id, &hello.metrics, &metric_rows);
    let welcome = HubFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        last_seq,
        sample_interval_ms: u32::try_from(ctx.timing.sample_interval.as_millis())
            .unwrap_or(u32::MAX),
    });
    if send(socket, &welcome).await.is_err() {
        return Ending::gone();
    }
    ctx.live.device_status(&credentials.device_id, true);
    tracing::info!(last_seq, metrics = hello.metrics.len(), "device connected");

    let mut stream = BatchStream::new(metric_rows);
    let (outcome_tx, mut outcomes) = mpsc::channel(IN_FLIGHT);
    let mut in_flight = 0usize;
    // Commands sent and not yet answered. Bounded like the queue: while it
    // is full, no more commands are taken from the queue.
    let mut awaiting: HashMap<u64, oneshot::Sender<CommandResult>> = HashMap::new();
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + ctx.timing.ping_interval,
        ctx.timing.ping_interval,
    );
    let ending = loop {
        if awaiting.len() >= COMMAND_QUEUE {
            // Callers that gave up waiting free their slots.
            awaiting.retain(|_, reply| !reply.is_closed());
        }
        tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => break Ending::shutdown(),
            kick = &mut kicked => break match kick {
                Ok(kick) => Ending::kicked(kick),
                // The registry itself is gone: the hub is stopping.
                Err(_) => Ending::shutdown(),
            },
            Some(outcome) = outcomes.recv() => {
                in_flight -= 1;
                if let Err(ending) = report(socket, outcome).await {
                    break ending;
                }
            }
            Some(pending) = commands.recv(), if awaiting.len() < COMMAND_QUEUE => {
                let PendingCommand { command, reply } = *pending;
                let id = command.id;
                if send(socket, &HubFrame::Command(command)).await.is_err() {
                    break Ending::gone();
                }
                awaiting.insert(id, reply);
            }
            incoming = next_incoming(socket, &ctx.counters), if in_flight < IN_FLIGHT => {
                last_heard = Instant::now();
                match incoming {
                    Incoming::Heartbeat => {}
                    Incoming::Gone => break Ending::gone(),
                    Incoming::Bad(violation) => break Ending::violation(violation),
                    Incoming::Frame(DeviceFrame::Batch(batch)) => {
                        let samples = match stream.accept(&batch) {
                            Ok(samples) => samples,
                            Err(violation) => break Ending::violation(violation),
                        };
                        ctx.counters.readings_in(samples.len());
                        let submitted = ctx
                            .writer
                            .submit(credentials.row, batch.seq, samples, outcome_tx.clone())
                            .await;
                        if submitted.is_err() {
                            break Ending::shutdown();
                        }
                        in_flight += 1;
                    }
                    Incoming::Frame(DeviceFrame::CommandResult(result)) => {
                        tracing::info!(command = result.id, ok = result.ok, detail = %result.detail, "command result");
                        // Whoever asked may have given up waiting; that is fine.
                        if let Some(reply) = awaiting.remove(&result.id) {
                            let _ = reply.send(result);
                        }
                    }
                    Incoming::Frame(DeviceFrame::Hello(_)) => {
                        break Ending::violation(Violation {
                            code: error_code::UNEXPECTED_FRAME,
                            message: "Hello may only be sent once per connection".into(),
                        });
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= ctx.timing.ping_interval * 2 {
                    break Ending::told(
                        error_code::IDLE_TIMEOUT,
                        "no frame or pong for two ping intervals",
                        (close_code::POLICY, "idle timeout"),
                        Reject::IdleTimeout,
                    );
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break Ending::gone();
                }
            }
        }
    };

    // On shutdown, everything already handed to the writer is committed and
    // acknowledged before the close.
    if ending
        .close
        .is_some_and(|(code, _)| code == close_code::GOING_AWAY)
    {
        drain(socket, &mut outcomes, in_flight).await;
    }
    // A replacement connection keeps the device online.
    drop(presence);
    if !ctx.registry.is_online(&credentials.device_id) {
        ctx.live.device_status(&credentials.device_id, false);
    }
    ending
}

/// Sends the device what the writer said about one of its batches.
async fn report(socket: &mut WebSocket, outcome: WriteOutcome) -> Result<(), Ending> {
    match outcome {
        WriteOutcome::Stored { seq } => send(socket, &HubFrame::Ack(protocol::Ack { seq }))
            .await
            .map_err(|_| Ending::gone()),
        WriteOutcome::Failed { seq } => Err(Ending::told(
            error_code::STORAGE_UNAVAILABLE,
            &format!("batch {seq} could not be stored; reconnect and resend"),
            (close_code::INTERNAL, "storage unavailable"),
            Reject::Storage,
        )),
    }
}

async fn drain(
    socket: &mut WebSocket,
    outcomes: &mut mpsc::Receiver<WriteOutcome>,
    mut in_flight: usize,
) {
    while in_flight > 0 {
        let Some(outcome) = outcomes.recv().await else {
            return;
        };
        in_flight -= 1;
        if report(socket, outcome).await.is_err() {
            return;
        }
    }
}

/// The device presenting the provisioning key: found, or created by the
/// writer. `None` if it was revoked.
async fn register_self(ctx: &Context, device_id: &str) -> Result<Option<Credentials>, String> {
    let found = ctx
        .store
        .find_device(device_id)
        .await
        .map_err(|e| e.to_string())?;
    let (row, revoked) = match found {
        Some(found) => found,
        None => ctx.writer.register_device(device_id).await?,
    };
    Ok((!revoked).then(|| Credentials {
        row,
        device_id: device_id.to_owned(),
    }))
}

/// What the session needs from its `Hello`: the last committed seq and the
/// metric rows, written by the writer only when the `Hello` brings news.
async fn register_hello(
    ctx: &Context,
    device_row: i64,
    hello: &protocol::Hello,
) -> Result<(u64, HashMap<u16, i64>), String> {
    let (last_seq, known) = ctx
        .store
        .known_hello(device_row, hello)
        .await
        .map_err(|e| e.to_string())?;
    let metric_rows = match known {
        Some(rows) => rows,
        None => ctx.writer.register_hello(device_row, hello).await?,
    };
    Ok((last_seq, metric_rows))
}

fn storage_trouble(err: &str) -> Ending {
    tracing::error!(error = %err, "storage failed during handshake");
    Ending::told(
        error_code::STORAGE_UNAVAILABLE,
        "the hub cannot reach its storage; reconnect later",
        (close_code::INTERNAL, "storage unavailable"),
        Reject::Storage,
    )
}

/// Tells the device why (an `Error` frame), closes, and waits briefly for the
/// device's close reply so the connection ends with a FIN: closing with
/// unread data would reset it and could destroy the `Error` frame in flight.
async fn finish(socket: &mut WebSocket, ending: Ending) {
    let Some((code, reason)) = ending.close else {
        return;
    };
    if let Some(mut error) = ending.error {
        truncate(&mut error.message, limits::MAX_TEXT_LEN);
        let _ = send(socket, &HubFrame::Error(error)).await;
    }
    let close = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_err() {
        return;
    }
    let _ = timeout(CLOSE_GRACE, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
                // The read side is broken (say, by an oversized message left
                // unread): hold the connection for the rest of the grace
                // period so the device can read the Error and the close.
                Some(Err(_)) | None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}
