//! Presence and commands across the hubs of a cluster, on the journal's
//! NATS connection (core NATS: neither is stored).
//!
//! * **Presence.** Each hub publishes on `{stream}.presence` every change
//!   of its devices' connections and, every [`HEARTBEAT`], its whole list.
//!   The others keep a [`roster::Roster`], so `/v1/devices` on any hub
//!   says which devices are online anywhere. Each hub records its own
//!   devices' `status` events in the stream (`presence`); when a hub goes
//!   silent, the others record its devices offline, as one entry each
//!   (the same message id from every hub that notices).
//! * **Commands.** A hub subscribes to `{stream}.cmd.{device}` for every
//!   device connected to it. A command asked of a hub that does not have
//!   the device (`POST …/commands`, the MQTT bridge) becomes a NATS request
//!   on that subject, answered by whichever hub has it; "no responders"
//!   means no hub has it. Routed commands are at most once: while a device
//!   moves between hubs two may answer, and the first answer wins.
//!
//! This module joins the [`Registry`] to the rest of the cluster through
//! [`Elsewhere`]; it never touches storage but to tell an unknown device
//! from an offline one.

pub mod roster;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{Message, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::CommandArg;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::commits::EventKind;
use crate::ingest::command::{self, Answer, Failure};
use crate::ingest::registry::{Change, CommandOutcome, Elsewhere, Registry};
use crate::journal::Journal;
use crate::store::{Store, now_ms};
use roster::{Gone, Roster};

/// How often a hub sends its whole list of connected devices.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Devices in one part of a heartbeat: at most 64 bytes of id each, well
/// inside NATS's 1 MiB message limit however large the fleet.
const HEARTBEAT_PART: usize = 4_096;

/// What a routed command may take beyond its own timeout: the round trips
/// between hubs.
const ROUTING_MARGIN: Duration = Duration::from_secs(2);

/// A hub's presence message.
#[derive(Debug, Serialize, Deserialize)]
struct PresenceMessage {
    hub: String,
    #[serde(flatten)]
    news: News,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum News {
    /// Part of the list of every device connected to the hub: round
    /// `round`'s list is whole at its `last` part.
    Heartbeat {
        round: u64,
        devices: Vec<String>,
        last: bool,
    },
    /// One device came (`true`) or went.
    Change { device: String, online: bool },
}

/// A command asked of the hub that has the device.
#[derive(Debug, Serialize, Deserialize)]
struct CommandRequest {
    name: String,
    args: Vec<CommandArg>,
    timeout_ms: u64,
}

/// That hub's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum CommandReply {
    Answer { id: u64, ok: bool, detail: String },
    Refused { code: String, message: String },
}

/// This hub's part in the cluster's presence and commands.
#[derive(Debug)]
pub struct Cluster {
    journal: Journal,
    registry: Registry,
    store: Store,
    roster: Mutex<Roster>,
}

impl Cluster {
    /// Joins `registry` to the cluster: from now on it knows the other
    /// hubs' devices and routes commands to them.
    pub fn join(journal: Journal, registry: Registry, store: Store) -> Arc<Self> {
        let cluster = Arc::new(Cluster {
            journal,
            registry: registry.clone(),
            store,
            roster: Mutex::default(),
        });
        registry.set_elsewhere(Arc::clone(&cluster) as Arc<dyn Elsewhere>);
        cluster
    }

    fn client(&self) -> &async_nats::Client {
        self.journal.client()
    }

    fn hub_id(&self) -> &str {
        &self.journal.settings().hub_id
    }

    fn subject(&self, what: &str) -> String {
        format!("{}.{what}", self.journal.settings().stream)
    }

    fn roster(&self) -> std::sync::MutexGuard<'_, Roster> {
        self.roster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes this hub's presence, follows the others', and serves
    /// commands for the devices connected here, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut presence = loop {
            match self.client().subscribe(self.subject("presence")).await {
                Ok(subscriber) => break subscriber,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot follow the cluster's presence; trying again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(HEARTBEAT) => {}
                    }
                }
            }
        };
        let mut changes = self.registry.changes();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut served: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut round = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = heartbeat.tick() => {
                    let here = self.registry.online_here();
                    self.serve_exactly(&mut served, &here);
                    round += 1;
                    self.heartbeat(round, &here).await;
                    let gone = self.roster().expire(Instant::now());
                    if !gone.is_empty() {
                        // Not in this loop: a large fleet's entries take a while.
                        tokio::spawn(record_gone(self.journal.clone(), self.registry.clone(), gone));
                    }
                }
                change = changes.recv() => match change {
                    Ok((device, change)) => {
                        let online = change == Change::Online;
                        if online {
                            self.serve(&mut served, &device);
                        } else if !self.registry.is_online(&device)
                            && let Some(server) = served.remove(&*device)
                        {
                            server.abort();
                        }
                        self.publish(News::Change { device: device.to_string(), online }).await;
                    }
                    Err(RecvError::Lagged(_)) => {
                        // The next heartbeat says it all again.
                        heartbeat.reset_immediately();
                    }
                    Err(RecvError::Closed) => break,
                },
                Some(message) = presence.next() => self.heard(&message),
            }
        }
        for server in served.into_values() {
            server.abort();
        }
    }

    /// Sends the whole list of devices connected here, in parts.
    async fn heartbeat(&self, round: u64, here: &[String]) {
        let parts = here.len().div_ceil(HEARTBEAT_PART).max(1);
        let mut chunks = here.chunks(HEARTBEAT_PART);
        for part in 1..=parts {
            let devices = chunks.next().unwrap_or_default().to_vec();
            let last = part == parts;
            self.publish(News::Heartbeat {
                round,
                devices,
                last,
            })
            .await;
        }
    }

    async fn publish(&self, news: News) {
        let message = PresenceMessage {
            hub: self.hub_id().to_owned(),
            news,
        };
        let Ok(payload) = serde_json::to_vec(&message) else {
            return;
        };
        if let Err(err) = self
            .client()
            .publish(self.subject("presence"), payload.into())
            .await
        {
            tracing::debug!(error = %err, "cannot publish presence");
        }
    }

    /// Another hub's presence message.
    fn heard(&self, message: &Message) {
        let Ok(PresenceMessage { hub, news }) = serde_json::from_slice(&message.payload) else {
            tracing::debug!("ignored a presence message that does not decode");
            return;
        };
        if hub == self.hub_id() {
            return;
        }
        let now = Instant::now();
        match news {
            News::Heartbeat {
                round,
                devices,
                last,
            } => self.roster().heartbeat(&hub, round, devices, last, now),
            News::Change { device, online } => self.roster().change(&hub, &device, online, now),
        }
    }

    /// Serves commands for exactly the devices in `here`.
    fn serve_exactly(&self, served: &mut HashMap<String, JoinHandle<()>>, here: &[String]) {
        let here: HashSet<&str> = here.iter().map(String::as_str).collect();
        served.retain(|device, server| {
            let keep = here.contains(device.as_str()) && !server.is_finished();
            if !keep {
                server.abort();
            }
            keep
        });
        for device in here {
            self.serve(served, device);
        }
    }

    /// Starts serving commands for a device connected here.
    fn serve(&self, served: &mut HashMap<String, JoinHandle<()>>, device: &str) {
        if served
            .get(device)
            .is_some_and(|server| !server.is_finished())
        {
            return;
        }
        let server = tokio::spawn(serve_commands(
            self.client().clone(),
            self.subject(&format!("cmd.{device}")),
            self.registry.clone(),
            self.store.clone(),
            device.to_owned(),
        ));
        served.insert(device.to_owned(), server);
    }
}

/// Records offline the devices of a hub that went silent, unless they are
/// back somewhere: each entry's id is the same on every hub that notices,
/// so the stream keeps one (within its duplicate window).
async fn record_gone(journal: Journal, registry: Registry, gone: Vec<Gone>) {
    for Gone { device, hub, round } in gone {
        if registry.online_anywhere(&device) {
            continue;
        }
        let id = format!("gone:{device}:{hub}:{round}");
        let offline = EventKind::Status { online: false };
        if let Err(err) = journal
            .append_event(&device, now_ms(), offline, Some(id))
            .await
        {
            tracing::warn!(%device, %hub, error = %err, "the stream did not take the status of a silent hub's device");
        }
    }
}

/// Answers the requests for one device's commands, each in a task of its
/// own (the device's command queue bounds how many wait), until aborted.
async fn serve_commands(
    client: async_nats::Client,
    subject: String,
    registry: Registry,
    store: Store,
    device: String,
) {
    let mut requests = match client.subscribe(subject).await {
        Ok(requests) => requests,
        Err(err) => {
            tracing::warn!(device, error = %err, "cannot take commands for this device from other hubs");
            return;
        }
    };
    while let Some(request) = requests.next().await {
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let (client, registry, store, device) = (
            client.clone(),
            registry.clone(),
            store.clone(),
            device.clone(),
        );
        tokio::spawn(async move {
            let reply = answer(&registry, &store, &device, &request.payload).await;
            let payload = serde_json::to_vec(&reply).unwrap_or_default();
            if let Err(err) = client.publish(reply_to, payload.into()).await {
                tracing::debug!(device, error = %err, "cannot answer a routed command");
            }
        });
    }
}

async fn answer(registry: &Registry, store: &Store, device: &str, request: &Bytes) -> CommandReply {
    let request: CommandRequest = match serde_json::from_slice(request) {
        Ok(request) => request,
        Err(err) => {
            return CommandReply::Refused {
                code: "bad_command".into(),
                message: format!("not a routed command: {err}"),
            };
        }
    };
    let timeout = Duration::from_millis(request.timeout_ms);
    match command::call_here(registry, store, device, request.name, request.args, timeout).await {
        Ok(Answer { id, ok, detail }) => CommandReply::Answer { id, ok, detail },
        Err(failure) => CommandReply::Refused {
            code: failure.code().to_owned(),
            message: failure.to_string(),
        },
    }
}

impl Elsewhere for Cluster {
    fn is_online(&self, device_id: &str) -> bool {
        self.roster().is_online(device_id, Instant::now())
    }

    fn call(
        &self,
        device_id: &str,
        name: String,
        args: Vec<CommandArg>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = CommandOutcome> + Send + '_>> {
        let device = device_id.to_owned();
        Box::pin(async move {
            let request = CommandRequest {
                name,
                args,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            };
            let payload =
                serde_json::to_vec(&request).map_err(|e| Failure::Cluster(e.to_string()))?;
            let asked = self
                .client()
                .send_request(
                    self.subject(&format!("cmd.{device}")),
                    async_nats::Request::new()
                        .payload(payload.into())
                        .timeout(Some(timeout + ROUTING_MARGIN)),
                )
                .await;
            let reply = match asked {
                Ok(reply) => reply,
                Err(err) => {
                    return Err(match err.kind() {
                        RequestErrorKind::NoResponders => Failure::Offline(device),
                        RequestErrorKind::TimedOut => Failure::TimedOut {
                            device,
                            id: 0,
                            ms: timeout.as_millis(),
                        },
                        _ => Failure::Cluster(err.to_string()),
                    });
                }
            };
            match serde_json::from_slice(&reply.payload) {
                Ok(CommandReply::Answer { id, ok, detail }) => Ok(Answer { id, ok, detail }),
                Ok(CommandReply::Refused { code, message }) => {
                    Err(refusal(&device, &code, message, timeout))
                }
                Err(err) => Err(Failure::Cluster(format!(
                    "an answer that does not decode: {err}"
                ))),
            }
        })
    }
}

/// The failure another hub reported, by its code.
fn refusal(device: &str, code: &str, message: String, timeout: Duration) -> Failure {
    match code {
        "device_offline" => Failure::Offline(device.to_owned()),
        "unknown_device" => Failure::UnknownDevice(device.to_owned()),
        "command_queue_full" => Failure::QueueFull(device.to_owned()),
        "command_timeout" => Failure::TimedOut {
            device: device.to_owned(),
            id: 0,
            ms: timeout.as_millis(),
        },
        _ => Failure::Cluster(message),
    }
}
