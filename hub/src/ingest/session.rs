//! One device connection, from handshake to close.
//!
//! The session reads frames, applies the rules in [`super::state`], hands
//! batches to the writer and sends each `Ack` when the writer reports the
//! commit. It keeps at most [`IN_FLIGHT`] batches unacknowledged; past that
//! it stops reading the socket, so a device that outruns storage is slowed by
//! TCP instead of growing the hub's memory.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use protocol::{
    CommandResult, ConfigResult, DeviceFrame, ErrorFrame, HubFrame, PROTOCOL_VERSION, Welcome,
    error_code, limits,
};

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::destination::Destination;
use super::registry::{COMMAND_QUEUE, Change, Kick, PendingCommand, Presence, Registry};
use super::state::{BatchStream, Budget, KeyAnswer, Violation, check_hello, enrolled, key_answer};
use crate::admission::{Admission, AdmitError};
use crate::auth;
use crate::configuration::Configs;
use crate::configuration::delivery::{self, Due};
use crate::journal::access::AccessEntry;
use crate::journal::provision::DeviceChange;
use crate::journal::{Journal, JournalError};
use crate::store::devices::Credentials;
use crate::store::writer::{
    AccessChange, Origin, Provisioned, WriteError, WriteOutcome, WriterHandle,
};
use crate::store::{Store, StoreError};
use crate::telemetry::{Counters, Reject};

/// Most batches a session has handed to the writer and not yet acknowledged.
const IN_FLIGHT: usize = 32;

/// How long the hub waits for the device's close reply after its own close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long one frame may take to leave. The write buffer is bounded
/// (`ingest::WS_WRITE_BUFFER_LIMIT`), so a device that stops reading makes
/// sends wait: past this it is closed, rather than holding its session.
const SEND_DEADLINE: Duration = Duration::from_secs(10);

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

pub use super::state::Limits;

/// What every session shares.
#[derive(Debug)]
pub struct Context {
    pub store: Store,
    /// Devices and their metrics: found, or registered through the writer.
    pub admission: Admission,
    pub writer: WriterHandle,
    pub registry: Registry,
    pub counters: Arc<Counters>,
    pub timing: Timing,
    /// What one device may send a second.
    pub limits: Limits,
    /// In cluster mode: batches go to the stream, not to the writer.
    pub journal: Option<Journal>,
    /// Devices' configurations: what to send, where answers go.
    pub configs: Configs,
    pub shutdown: CancellationToken,
}

/// Who the handshake says is connecting.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A device token: the `Hello` must name this device.
    Device(Credentials),
    /// The fleet provisioning key: the `Hello` names the device, which is
    /// registered if it is new, into these groups.
    Provisioning { groups: Vec<String> },
    /// A client certificate from `--tls-client-ca` naming this device id:
    /// the `Hello` must name it, and it is registered if it is new (the CA
    /// vouches for it, as the provisioning key does).
    Certificate(std::sync::Arc<str>),
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

    /// Over its budget: a rule broken, counted apart from the others.
    fn rate_limited(violation: Violation) -> Self {
        Ending {
            reject: Some(Reject::RateLimited),
            ..Ending::violation(violation)
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
        Box::pin(finish(&mut socket, ending)).await;
        ctx.counters.connection_closed();
        tracing::debug!("session ended");
    }
    .instrument(span)
    .await;
}

/// One thing read from the socket.
enum Incoming {
    Frame(DeviceFrame),
    /// A ping or pong: proof of life, and a frame of the device's budget.
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

async fn send(socket: &mut WebSocket, frame: &HubFrame) -> Result<(), Unsent> {
    send_message(socket, Message::Binary(frame.encode().into())).await
}

/// A frame that did not leave: the connection failed, or the device has
/// not read for [`SEND_DEADLINE`].
struct Unsent;

async fn send_message(socket: &mut WebSocket, message: Message) -> Result<(), Unsent> {
    match timeout(SEND_DEADLINE, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Unsent),
    }
}

async fn serve(socket: &mut WebSocket, auth: Auth, ctx: &Context) -> Ending {
    // From the first frame on: pings before `Hello` are frames too.
    let budget = Budget::new(ctx.limits, Instant::now());
    // Boxed, like every rare step below: a future is as large as the
    // largest it awaits inline, and the handshake's storage work would
    // otherwise stay part of every connected session's memory.
    let session = match Box::pin(handshake(socket, auth, budget, ctx)).await {
        Ok(session) => session,
        Err(ending) => return ending,
    };
    let device = session.credentials.device_id.clone();
    ctx.registry.announce(&device, Change::Online);
    let ending = session.run(socket, ctx).await;
    // The session (and its place in the registry) is gone now; a
    // replacement connection keeps the device online.
    if !ctx.registry.online_anywhere(&device) {
        ctx.registry.announce(&device, Change::Offline);
    }
    ending
}

/// A device past its handshake: who it is, its place in the registry and
/// the rules its batches must follow.
struct Established {
    credentials: Credentials,
    /// Held for the session's life; dropping it leaves the registry.
    presence: Presence,
    kicked: oneshot::Receiver<Kick>,
    commands: mpsc::Receiver<Box<PendingCommand>>,
    /// Wakes when the device's desired configuration changed.
    config: Arc<Notify>,
    /// The configuration version this connection was sent last.
    config_sent: Option<u64>,
    stream: BatchStream,
    budget: Budget,
    /// What the device said it is: in cluster mode, part of every entry.
    hello: protocol::Hello,
    /// What to write once the device has shown that it holds its
    /// credential (its first batch after a `Token`): until then the
    /// provisioning key may still register it.
    confirm: Option<Provisioned>,
}

/// The handshake: a `Hello` within the deadline, for the right device;
/// the device registered if it is new; its `Welcome` sent.
///
/// # Errors
/// How the session ends instead, with what the device is told.
async fn handshake(
    socket: &mut WebSocket,
    auth: Auth,
    mut budget: Budget,
    ctx: &Context,
) -> Result<Box<Established>, Ending> {
    let first = first_frame(socket, &mut budget, ctx).await?;
    let expected = match &auth {
        Auth::Device(credentials) => Some(credentials.device_id.as_str()),
        Auth::Certificate(device_id) => Some(&**device_id),
        Auth::Provisioning { .. } => None,
    };
    let hello = check_hello(first, expected).map_err(Ending::violation)?;
    let (mut credentials, token) = match auth {
        Auth::Device(credentials) => (credentials, None),
        Auth::Certificate(_) => {
            match bounded(ctx, register_certified(ctx, &hello.device_id)).await? {
                Some(credentials) => (credentials, None),
                None => return Err(Ending::kicked(Kick::Revoked)),
            }
        }
        Auth::Provisioning { groups } => {
            let (credentials, token) = enrol(ctx, &hello.device_id, groups).await?;
            (credentials, Some(token))
        }
    };
    tracing::Span::current().record("device", credentials.device_id.as_str());
    // A device that presented its own token or certificate has shown it
    // holds it: confirm now. One that was just issued a token confirms it
    // with its first batch.
    let confirm = credentials.confirm.take();
    let confirm = match (token.is_some(), confirm) {
        (false, Some(change)) => {
            bounded(ctx, provision(ctx, change)).await?;
            None
        }
        (_, confirm) => confirm,
    };

    // Register before reading last_seq: an older connection of this device
    // is kicked first, and whatever it still had in the writer's queue is
    // recognised as a resend by the writer if the device sends it again.
    let (presence, inbox) = ctx.registry.register(&credentials.device_id);
    let (last_seq, metric_rows) = bounded(ctx, async {
        Ok(ctx.admission.hello(credentials.row, &hello).await?)
    })
    .await?;
    if metric_rows.len() < hello.metrics.len() {
        return Err(Ending::violation(Violation {
            code: error_code::TOO_MANY_METRICS,
            message: format!(
                "this Hello would give the device more than {} metrics",
                limits::MAX_METRICS_PER_DEVICE
            ),
        }));
    }
    if let Some(token) = token {
        // Before Welcome: a device's first batch (sent after Welcome) then
        // shows that it has read its token.
        send(socket, &HubFrame::Token(protocol::Token { token }))
            .await
            .map_err(|_| Ending::gone())?;
    }
    let welcome = HubFrame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        last_seq,
        sample_interval_ms: u32::try_from(ctx.timing.sample_interval.as_millis())
            .unwrap_or(u32::MAX),
    });
    send(socket, &welcome).await.map_err(|_| Ending::gone())?;
    tracing::info!(last_seq, metrics = hello.metrics.len(), "device connected");
    Ok(Box::new(Established {
        credentials,
        presence,
        kicked: inbox.kicked,
        commands: inbox.commands,
        config: inbox.config,
        config_sent: None,
        stream: BatchStream::new(metric_rows, last_seq),
        budget,
        hello,
        confirm,
    }))
}

/// The first frame, within the Hello deadline (pings before it are fine,
/// within the frame budget).
async fn first_frame(
    socket: &mut WebSocket,
    budget: &mut Budget,
    ctx: &Context,
) -> Result<DeviceFrame, Ending> {
    let first = timeout(ctx.timing.hello_timeout, async {
        loop {
            match next_incoming(socket, &ctx.counters).await {
                Incoming::Heartbeat => match budget.spend_control(Instant::now()) {
                    Ok(()) => continue,
                    Err(violation) => break Err(violation),
                },
                other => break Ok(other),
            }
        }
    })
    .await;
    let first = match first {
        Ok(Err(violation)) => return Err(Ending::rate_limited(violation)),
        Ok(Ok(incoming)) => Ok(incoming),
        Err(elapsed) => Err(elapsed),
    };
    match first {
        Err(_) => Err(Ending::told(
            error_code::HELLO_TIMEOUT,
            &format!("no Hello within {:?}", ctx.timing.hello_timeout),
            (close_code::POLICY, "no Hello in time"),
            Reject::HelloTimeout,
        )),
        Ok(Incoming::Frame(frame)) => Ok(frame),
        Ok(Incoming::Bad(violation)) => Err(Ending::violation(violation)),
        Ok(Incoming::Heartbeat | Incoming::Gone) => Err(Ending::gone()),
    }
}

/// Storage work of the handshake, bounded like the Hello itself: a session
/// stuck behind a busy database would not notice its device leave and
/// would hold the socket.
async fn bounded<T>(
    ctx: &Context,
    work: impl Future<Output = Result<T, StorageTrouble>>,
) -> Result<T, Ending> {
    match timeout(ctx.timing.hello_timeout, work).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(err)) => Err(storage_trouble(&err)),
        Err(_) => Err(storage_trouble(&StorageTrouble::TimedOut)),
    }
}

/// Why the handshake's storage work failed: the device is told to come
/// back later, whichever it was.
#[derive(Debug, thiserror::Error)]
enum StorageTrouble {
    #[error(transparent)]
    Read(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Admit(#[from] AdmitError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("no randomness for a token: {0}")]
    Randomness(String),
    #[error("registration timed out")]
    TimedOut,
}

/// An established session's moving parts: batches in flight, commands
/// awaiting results, and the liveness check.
struct Flow {
    /// Where the destination answers each batch handed on.
    outcomes: mpsc::Receiver<WriteOutcome>,
    /// Batches handed to the writer and not yet acknowledged.
    in_flight: usize,
    /// Commands sent and not yet answered. Bounded like the queue: while it
    /// is full, no more commands are taken from the queue.
    awaiting: HashMap<u64, oneshot::Sender<CommandResult>>,
    /// When the device last sent anything the hub read.
    last_heard: Instant,
}

impl Flow {
    fn new(now: Instant, outcomes: mpsc::Receiver<WriteOutcome>) -> Self {
        Flow {
            outcomes,
            in_flight: 0,
            awaiting: HashMap::new(),
            last_heard: now,
        }
    }

    /// Whether the socket is read: not while the window is full.
    fn reading(&self) -> bool {
        self.in_flight < IN_FLIGHT
    }

    /// One batch was answered. If the window was full, the socket was not
    /// read meanwhile: the device's silence was the hub's doing, so its
    /// idle clock starts again.
    fn answered(&mut self, now: Instant) {
        if !self.reading() {
            self.last_heard = now;
        }
        self.in_flight -= 1;
    }

    /// Whether the device has said nothing for two ping intervals while
    /// the hub was listening. A device whose batches wait on a slow writer
    /// is not idle.
    fn is_idle(&self, now: Instant, ping_interval: Duration) -> bool {
        self.reading() && now.duration_since(self.last_heard) >= ping_interval * 2
    }
}

impl Established {
    /// Runs the session until it ends: reads batches and command results,
    /// acknowledges commits, forwards commands and pings. On shutdown,
    /// everything already handed to the writer is committed and acknowledged
    /// before the close. `self` comes boxed: by value it would be held
    /// twice, in `serve`'s frame and in this future's.
    async fn run(mut self: Box<Self>, socket: &mut WebSocket, ctx: &Context) -> Ending {
        // The outcome channel holds the whole window: its senders never wait.
        let (outcome_tx, outcomes) = mpsc::channel(IN_FLIGHT);
        let origin = Origin {
            device_row: self.credentials.row,
            session: self.presence.session(),
        };
        let destination = Destination::choose(
            ctx.journal.as_ref(),
            &ctx.writer,
            &self.hello,
            origin,
            outcome_tx,
            IN_FLIGHT,
        );
        let mut flow = Flow::new(Instant::now(), outcomes);
        let mut ping = tokio::time::interval_at(
            Instant::now() + ctx.timing.ping_interval,
            ctx.timing.ping_interval,
        );
        // Right after Welcome: the latest configuration the device has not
        // answered, if there is one.
        if let Err(ending) = Box::pin(self.offer_config(socket, ctx)).await {
            return ending;
        }
        let config = Arc::clone(&self.config);
        let ending = loop {
            if flow.awaiting.len() >= COMMAND_QUEUE {
                // Callers that gave up waiting free their slots.
                flow.awaiting.retain(|_, reply| !reply.is_closed());
            }
            let step = tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => Err(Ending::shutdown()),
                kick = &mut self.kicked => Err(match kick {
                    Ok(kick) => Ending::kicked(kick),
                    // The registry itself is gone: the hub is stopping.
                    Err(_) => Ending::shutdown(),
                }),
                () = ctx.writer.health().failed() => {
                    Err(storage_lost(ctx.writer.health().failure().unwrap_or_default()))
                }
                Some(outcome) = flow.outcomes.recv() => {
                    flow.answered(Instant::now());
                    report(socket, outcome).await
                }
                Some(pending) = self.commands.recv(), if flow.awaiting.len() < COMMAND_QUEUE => {
                    let PendingCommand { command, reply } = *pending;
                    flow.awaiting.insert(command.id, reply);
                    send(socket, &HubFrame::Command(command)).await.map_err(|_| Ending::gone())
                }
                () = config.notified() => Box::pin(self.offer_config(socket, ctx)).await,
                incoming = next_incoming(socket, &ctx.counters), if flow.reading() => {
                    flow.last_heard = Instant::now();
                    self.on_incoming(incoming, &mut flow, &destination, ctx).await
                }
                _ = ping.tick() => ping_or_drop(socket, &flow, ctx).await,
            };
            if let Err(ending) = step {
                break ending;
            }
        };
        if ending
            .close
            .is_some_and(|(code, _)| code == close_code::GOING_AWAY)
        {
            Box::pin(drain(
                socket,
                &mut flow.outcomes,
                flow.in_flight,
                &ctx.writer,
            ))
            .await;
        }
        ending
    }

    /// Handles one message from the device.
    async fn on_incoming(
        &mut self,
        incoming: Incoming,
        flow: &mut Flow,
        destination: &Destination,
        ctx: &Context,
    ) -> Result<(), Ending> {
        match incoming {
            Incoming::Heartbeat => self
                .budget
                .spend_control(Instant::now())
                .map_err(Ending::rate_limited),
            Incoming::Gone => Err(Ending::gone()),
            Incoming::Bad(violation) => Err(Ending::violation(violation)),
            Incoming::Frame(DeviceFrame::Batch(batch)) => {
                self.budget
                    .spend(batch.readings.len(), Instant::now())
                    .map_err(Ending::rate_limited)?;
                let samples = self.stream.accept(&batch).map_err(Ending::violation)?;
                if let Some(change) = self.confirm.take() {
                    // The device read its Token before its Welcome: from
                    // now on only that token reaches it.
                    Box::pin(bounded(ctx, provision(ctx, change))).await?;
                }
                ctx.counters.readings_in(samples.len());
                destination
                    .hand(batch, samples)
                    .await
                    .map_err(|_| writer_gone(ctx))?;
                flow.in_flight += 1;
                Ok(())
            }
            Incoming::Frame(DeviceFrame::CommandResult(result)) => {
                self.budget
                    .spend(0, Instant::now())
                    .map_err(Ending::rate_limited)?;
                tracing::info!(command = result.id, ok = result.ok, detail = %result.detail, "command result");
                // Whoever asked may have given up waiting; that is fine.
                if let Some(reply) = flow.awaiting.remove(&result.id) {
                    let _ = reply.send(result);
                }
                Ok(())
            }
            Incoming::Frame(DeviceFrame::ConfigResult(result)) => {
                self.budget
                    .spend(0, Instant::now())
                    .map_err(Ending::rate_limited)?;
                Box::pin(self.config_answered(result, ctx)).await;
                Ok(())
            }
            Incoming::Frame(DeviceFrame::Hello(_)) => Err(Ending::violation(Violation {
                code: error_code::UNEXPECTED_FRAME,
                message: "Hello may only be sent once per connection".into(),
            })),
        }
    }
}

impl Established {
    /// Sends the device its desired configuration if it is due
    /// ([`delivery::due`]). Storage trouble here costs the device only
    /// this offer: the next change or connection offers again.
    async fn offer_config(&mut self, socket: &mut WebSocket, ctx: &Context) -> Result<(), Ending> {
        let row = self.credentials.row;
        if !ctx.configs.has(row) {
            return Ok(());
        }
        let standing = match ctx.configs.standing(row).await {
            Ok(Some(standing)) => standing,
            Ok(None) => return Ok(()),
            Err(err) => {
                tracing::warn!(error = %err, "the device's configuration could not be read");
                return Ok(());
            }
        };
        let protocol = self.hello.version;
        match delivery::due(&standing, protocol, self.config_sent) {
            Due::Nothing => Ok(()),
            Due::Unsupported => {
                tracing::info!(protocol, "the device's protocol has no configuration");
                ctx.configs
                    .delivered(row, standing.desired_version, protocol);
                Ok(())
            }
            Due::Send(version) => {
                let frame = HubFrame::Config(protocol::Config {
                    version,
                    json: standing.desired,
                });
                send(socket, &frame).await.map_err(|_| Ending::gone())?;
                tracing::info!(version, "configuration sent");
                self.config_sent = Some(version);
                ctx.configs.delivered(row, version, protocol);
                Ok(())
            }
        }
    }

    /// Stores the device's answer to a configuration. One storage refuses
    /// is logged: the device is sent the version again at its next
    /// connection and answers again.
    async fn config_answered(&self, result: ConfigResult, ctx: &Context) {
        tracing::info!(version = result.version, ok = result.ok, detail = %result.detail, "configuration answered");
        let stored = ctx
            .configs
            .reported(
                self.credentials.row,
                &self.credentials.device_id,
                result.version,
                result.ok,
                result.detail,
            )
            .await;
        if let Err(err) = stored {
            tracing::warn!(error = %err, "the device's answer to its configuration was not stored");
        }
    }
}

/// At each ping interval: drops a device silent for two intervals, else
/// pings it.
async fn ping_or_drop(socket: &mut WebSocket, flow: &Flow, ctx: &Context) -> Result<(), Ending> {
    if flow.is_idle(Instant::now(), ctx.timing.ping_interval) {
        return Err(Ending::told(
            error_code::IDLE_TIMEOUT,
            "no frame or pong for two ping intervals",
            (close_code::POLICY, "idle timeout"),
            Reject::IdleTimeout,
        ));
    }
    send_message(socket, Message::Ping(Default::default()))
        .await
        .map_err(|_| Ending::gone())
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

/// Acknowledges what is in flight before a close; gives up if the writer
/// has stopped, since those answers will never come.
async fn drain(
    socket: &mut WebSocket,
    outcomes: &mut mpsc::Receiver<WriteOutcome>,
    mut in_flight: usize,
    writer: &WriterHandle,
) {
    while in_flight > 0 {
        let outcome = tokio::select! {
            outcome = outcomes.recv() => outcome,
            () = writer.health().failed() => None,
        };
        let Some(outcome) = outcome else {
            return;
        };
        in_flight -= 1;
        if report(socket, outcome).await.is_err() {
            return;
        }
    }
}

/// The device a client certificate names: found, or created by the writer
/// (the CA vouches for it). `None` if it was revoked. A device from before
/// tokens were issued, which the provisioning key could still reach, is
/// confirmed: from now on its certificate is what reaches it.
async fn register_certified(
    ctx: &Context,
    device_id: &str,
) -> Result<Option<Credentials>, StorageTrouble> {
    let found = ctx.store.enrolment(device_id).await?;
    let (row, revoked, confirm) = match found {
        Some(found) => (
            found.row,
            found.revoked,
            found.key_claimable.then(|| Provisioned::Confirmed {
                device_id: device_id.to_owned(),
                token_hash: found.token_hash,
            }),
        ),
        None => {
            let admitted = ctx.admission.find_or_register(device_id).await?;
            (admitted.row, admitted.revoked, None)
        }
    };
    Ok((!revoked).then(|| Credentials {
        row,
        device_id: device_id.to_owned(),
        confirm,
    }))
}

/// The provisioning key's registration: a device that is new (or whose
/// issued token was never confirmed) gets a token of its own, which the
/// device's first batch confirms. Answers its credentials and the token.
///
/// # Errors
/// The key does not reach the device (it has credentials of its own, or
/// was revoked), or storage failed.
async fn enrol(
    ctx: &Context,
    device_id: &str,
    groups: Vec<String>,
) -> Result<(Credentials, String), Ending> {
    let refused = |answer: KeyAnswer| match answer {
        KeyAnswer::Refused(violation) => Ending::violation(violation),
        KeyAnswer::Revoked | KeyAnswer::Enrol => Ending::kicked(Kick::Revoked),
    };
    let found = bounded(ctx, enrolment(ctx, device_id)).await?;
    match key_answer(device_id, found.as_ref()) {
        KeyAnswer::Enrol => {}
        answer => return Err(refused(answer)),
    }
    let token = auth::generate_token()
        .map_err(|err| storage_trouble(&StorageTrouble::Randomness(err.to_string())))?;
    let token_hash = auth::hash_token(&token);
    let change = Provisioned::Enrolled {
        device_id: device_id.to_owned(),
        token_hash,
    };
    bounded(ctx, provision(ctx, change)).await?;
    // Read back: if two connections raced, one hash won, on every hub.
    let found = bounded(ctx, enrolment(ctx, device_id)).await?;
    let row = enrolled(device_id, found.as_ref(), &token_hash).map_err(refused)?;
    if !groups.is_empty() {
        bounded(ctx, join_groups(ctx, device_id, groups)).await?;
    }
    let credentials = Credentials {
        row,
        device_id: device_id.to_owned(),
        confirm: Some(Provisioned::Confirmed {
            device_id: device_id.to_owned(),
            token_hash: Some(token_hash),
        }),
    };
    Ok((credentials, token))
}

async fn enrolment(
    ctx: &Context,
    device_id: &str,
) -> Result<Option<crate::store::devices::Enrolment>, StorageTrouble> {
    Ok(ctx.store.enrolment(device_id).await?)
}

/// Writes a change to a device's enrolment: through the writer, or in a
/// cluster through the stream (every hub applies it in the stream's
/// order; this one has when this returns).
async fn provision(ctx: &Context, change: Provisioned) -> Result<(), StorageTrouble> {
    match (&ctx.journal, DeviceChange::of(&change)) {
        (Some(journal), Some(entry)) => journal.provision(&entry).await?,
        _ => ctx.writer.provision(change).await?,
    }
    Ok(())
}

/// Puts a device the key registered into its groups: through the writer,
/// or in a cluster through the stream.
async fn join_groups(
    ctx: &Context,
    device_id: &str,
    join: Vec<String>,
) -> Result<(), StorageTrouble> {
    let device = device_id.to_owned();
    match &ctx.journal {
        Some(journal) => {
            let entry = AccessEntry::Device {
                device,
                name: None,
                join,
                leave: Vec::new(),
            };
            journal.change_access(&entry).await?;
        }
        None => {
            let change = AccessChange::Device {
                device_id: device,
                name: None,
                join,
                leave: Vec::new(),
            };
            ctx.writer.change_access(change).await?;
        }
    }
    Ok(())
}

/// The writer refused a batch: the hub is stopping, or the writer died.
fn writer_gone(ctx: &Context) -> Ending {
    match ctx.writer.health().failure() {
        Some(reason) => storage_lost(reason),
        None => Ending::shutdown(),
    }
}

/// The writer stopped unexpectedly: nothing more can be stored or
/// acknowledged, so the device had better reconnect (to this hub once it
/// is restarted, or to another).
fn storage_lost(reason: &str) -> Ending {
    tracing::warn!(reason, "closing: the storage writer stopped");
    Ending::told(
        error_code::STORAGE_UNAVAILABLE,
        "the hub's storage writer stopped; reconnect later and resend",
        (close_code::INTERNAL, "storage unavailable"),
        Reject::Storage,
    )
}

fn storage_trouble(err: &StorageTrouble) -> Ending {
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
    if send_message(socket, Message::Close(Some(close)))
        .await
        .is_err()
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(code: u16) -> Violation {
        Violation {
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn a_too_large_frame_closes_with_1009_and_other_violations_with_1008() {
        let too_large = Ending::violation(violation(error_code::TOO_LARGE));
        assert_eq!(too_large.close.map(|c| c.0), Some(close_code::TOO_BIG));
        let malformed = Ending::violation(violation(error_code::MALFORMED));
        assert_eq!(malformed.close.map(|c| c.0), Some(close_code::POLICY));
        for ending in [too_large, malformed] {
            assert_eq!(ending.reject, Some(Reject::Protocol));
            assert!(ending.error.is_some(), "the device is told why");
        }
    }

    #[test]
    fn kicks_tell_the_device_whether_it_was_replaced_or_revoked() {
        let replaced = Ending::kicked(Kick::Replaced);
        let revoked = Ending::kicked(Kick::Revoked);
        assert_eq!(replaced.error.map(|e| e.code), Some(error_code::REPLACED));
        assert_eq!(revoked.error.map(|e| e.code), Some(error_code::REVOKED));
        assert_eq!(revoked.close.map(|c| c.1), Some("revoked"));
    }

    #[test]
    fn shutdown_closes_going_away_and_a_vanished_device_is_not_written_to() {
        let shutdown = Ending::shutdown();
        assert_eq!(shutdown.close.map(|c| c.0), Some(close_code::GOING_AWAY));
        assert!(shutdown.error.is_none() && shutdown.reject.is_none());
        let gone = Ending::gone();
        assert!(gone.close.is_none() && gone.error.is_none());
    }

    #[test]
    fn a_device_is_idle_after_two_silent_ping_intervals() {
        let start = Instant::now();
        let flow = Flow::new(start, mpsc::channel(1).1);
        let ping = Duration::from_secs(20);
        assert!(!flow.is_idle(start + Duration::from_secs(39), ping));
        assert!(flow.is_idle(start + Duration::from_secs(40), ping));
    }

    #[test]
    fn a_device_waiting_on_a_full_window_is_not_idle() {
        let start = Instant::now();
        let ping = Duration::from_secs(20);
        let mut flow = Flow::new(start, mpsc::channel(1).1);
        flow.in_flight = IN_FLIGHT;
        let later = start + Duration::from_secs(300);
        assert!(
            !flow.is_idle(later, ping),
            "the hub is not reading its socket"
        );
        // The writer answers: the hub listens again, and the device gets two
        // whole intervals from then.
        flow.answered(later);
        assert!(!flow.is_idle(later + Duration::from_secs(39), ping));
        assert!(flow.is_idle(later + Duration::from_secs(40), ping));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(10);
        truncate(&mut text, 5);
        assert_eq!(text, "éé");
    }

    /// The size of the future an async fn taking three arguments returns.
    fn future_size<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A connected session is mostly its future: its bytes are every
    /// connection's (ten thousand devices, ten thousand of them). The
    /// handshake's storage work and the rare steps are boxed so that they
    /// are not; this keeps a step that grows the future from slipping in
    /// unseen (measured in debug builds, which are larger than release).
    #[test]
    fn a_connected_session_stays_small() {
        let session = future_size(run);
        assert!(
            session <= 3_000,
            "a device session's future takes {session} bytes: box the new step it awaits"
        );
        let established = future_size(Established::run);
        assert!(
            established <= 1_400,
            "Established::run takes {established} bytes"
        );
    }
}
