//! Following the stream into this hub's SQLite file.
//!
//! Every hub, the one a device is connected to included, reads the stream
//! in order from the first entry it has not stored and hands each entry to
//! its writer at the entry's positions ([`super::first_position`]). The
//! writer drops a batch whose `seq` is at or below the device's last stored
//! one (a resend that came after the stream's duplicate window), so an
//! entry read twice, after a restart or a failed commit, is stored once.
//!
//! The applier resumes from the database itself: the last position stored
//! names the last entry stored (`sqlite_sequence` never goes back, even
//! after retention), and the entries after it that stored nothing are read
//! again harmlessly.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use protocol::Hello;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::events::EventEntry;
use super::provision::DeviceChange;
use super::{Journal, first_position, record};
use crate::admission::Admission;
use crate::commits::{self, EventKind, NewEvent};
use crate::invalid::Invalid;
use crate::store::Store;
use crate::store::writer::{WriteOutcome, WriterHandle};

/// Entries handed to the writer and not yet answered. When full, the
/// applier reads no further from the stream; the entries wait in NATS.
const IN_FLIGHT: usize = 1024;

/// Pause before following the stream again after a failure: no hot loop
/// against a NATS server or a disk that is down.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long the applier waits for an entry before it asks the stream
/// whether it holds any it has not delivered. An ordered consumer whose
/// server went away in a NATS cluster can go quiet rather than fail (seen
/// when the stream's leader was killed): it is then made again.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// What the applier writes to.
#[derive(Debug, Clone)]
pub struct Parts {
    pub admission: Admission,
    pub writer: WriterHandle,
    /// What an alert transition is judged against.
    pub store: Store,
}

/// A device as this hub's database knows it, for the entries that follow.
struct Known {
    row: i64,
    /// The `Hello` its rows were registered for, as entries carry it:
    /// while the device's entries bring the same bytes, it is not decoded
    /// again.
    hello_part: Vec<u8>,
    metric_rows: HashMap<u16, i64>,
}

/// Stores the stream's entries from `start` on, until `shutdown`.
pub async fn run(journal: Journal, start: u64, parts: Parts, shutdown: CancellationToken) {
    let mut applier = Applier {
        journal,
        parts,
        devices: HashMap::new(),
        next: start,
    };
    loop {
        match applier.follow(&shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, from = applier.next, "following the stream failed; trying again");
                applier.journal.status.failing(format!(
                    "cannot follow the stream {:?}: {err}",
                    applier.journal.settings.stream
                ));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}

struct Applier {
    journal: Journal,
    parts: Parts,
    devices: HashMap<String, Known>,
    /// The first entry not known to be stored.
    next: u64,
}

impl Applier {
    /// Reads the stream from `next` until `shutdown` (`Ok`) or a failure.
    async fn follow(&mut self, shutdown: &CancellationToken) -> Result<(), async_nats::Error> {
        let mut stream = self
            .journal
            .jetstream
            .get_stream(&self.journal.settings.stream)
            .await?;
        let mut entries = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.journal.all_entries(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.next,
                },
                ..Default::default()
            })
            .await?
            .messages()
            .await?;
        let (reply, mut outcomes) = mpsc::channel(IN_FLIGHT);
        // The entries handed to the writer, oldest first; the writer
        // answers in the order it was handed them.
        let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(IN_FLIGHT);
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        stall_check.reset();
        // Whether an entry came since the last check.
        let mut heard = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = stall_check.tick() => {
                    if !std::mem::take(&mut heard) && in_flight.is_empty() {
                        let last = stream.info().await?.state.last_sequence;
                        self.journal.status.saw(last);
                        if last >= self.next {
                            return Err(format!(
                                "the stream holds entries from {} that did not arrive",
                                self.next
                            )
                            .into());
                        }
                    }
                }
                Some(outcome) = outcomes.recv() => {
                    let sequence = in_flight.pop_front().unwrap_or(self.next);
                    match outcome {
                        WriteOutcome::Stored { .. } => self.stored(sequence),
                        WriteOutcome::Failed { .. } => {
                            return Err(format!("the writer could not store entry {sequence}").into());
                        }
                    }
                }
                entry = entries.next(), if in_flight.len() < IN_FLIGHT => {
                    let Some(entry) = entry else {
                        return Err("the stream's consumer ended".into());
                    };
                    let entry = entry?;
                    heard = true;
                    let sequence = entry.info()?.stream_sequence;
                    self.journal.status.saw(sequence);
                    if self.journal.provisions(&entry.subject) {
                        self.provision(sequence, &entry.payload).await?;
                        if in_flight.is_empty() {
                            self.stored(sequence);
                        }
                    } else if self.journal.is_access(&entry.subject) {
                        self.access(sequence, &entry.payload).await?;
                        if in_flight.is_empty() {
                            self.stored(sequence);
                        }
                    } else if let Some(name) = self.journal.rule_name(&entry.subject) {
                        self.rule(sequence, name, &entry.payload).await?;
                        if in_flight.is_empty() {
                            self.stored(sequence);
                        }
                    } else if let Some(device) = self.journal.event_device(&entry.subject) {
                        self.event(sequence, device, &entry.payload).await?;
                        if in_flight.is_empty() {
                            self.stored(sequence);
                        }
                    } else if self.apply(sequence, &entry.subject, &entry.payload, &reply).await? {
                        in_flight.push_back(sequence);
                    } else if in_flight.is_empty() {
                        self.stored(sequence);
                    }
                }
            }
        }
    }

    fn stored(&mut self, sequence: u64) {
        self.next = self.next.max(sequence + 1);
        self.journal.status.applied(sequence);
    }

    /// Hands one entry to the writer; `false` if there was nothing to
    /// store (an entry that does not decode is logged and skipped).
    async fn apply(
        &mut self,
        sequence: u64,
        subject: &str,
        payload: &[u8],
        reply: &mpsc::Sender<WriteOutcome>,
    ) -> Result<bool, async_nats::Error> {
        let skip = |error: &dyn std::fmt::Display| {
            tracing::warn!(sequence, %error, "skipped a stream entry");
            Ok(false)
        };
        let Some(device) = self.journal.reading_device(subject) else {
            return skip(&format!("no device in its subject {subject:?}"));
        };
        let (hello_part, batch) = match record::split(payload) {
            Ok(entry) => entry,
            Err(err) => return skip(&err),
        };
        let fresh = self
            .devices
            .get(device)
            .is_some_and(|known| known.hello_part == hello_part);
        if !fresh {
            match record::hello(hello_part) {
                Ok(hello) if hello.device_id == device => self.learn(hello, hello_part).await?,
                Ok(hello) => {
                    return skip(&format!(
                        "its Hello names {:?} on {device:?}'s subject",
                        hello.device_id
                    ));
                }
                Err(err) => return skip(&err),
            }
        }
        let known = &self.devices[device];
        let samples = match commits::samples_of(&known.metric_rows, &batch) {
            Ok(samples) => samples,
            Err(err) => return skip(&err),
        };
        self.parts
            .writer
            .submit_at(
                known.row,
                batch.seq,
                samples,
                first_position(sequence),
                reply.clone(),
            )
            .await?;
        Ok(true)
    }

    /// Writes a device provisioned for the cluster (after the entries
    /// before it, in the writer's order); one that does not hold together
    /// is logged and skipped.
    async fn provision(&self, sequence: u64, payload: &[u8]) -> Result<(), async_nats::Error> {
        let change = serde_json::from_slice::<DeviceChange>(payload)
            .map_err(|err| Invalid(format!("it does not decode: {err}")))
            .and_then(|change| change.to_write());
        match change {
            Ok(change) => self.parts.writer.provision(change).await?,
            Err(err) => tracing::warn!(sequence, error = %err, "skipped a provisioning entry"),
        }
        Ok(())
    }

    /// Writes a key's or a device's groups' change for the cluster; one
    /// that does not hold together is logged and skipped.
    async fn access(&self, sequence: u64, payload: &[u8]) -> Result<(), async_nats::Error> {
        let change = serde_json::from_slice::<super::access::AccessEntry>(payload)
            .map_err(|err| format!("it does not decode: {err}"))
            .and_then(|entry| entry.to_write());
        match change {
            Ok(change) => {
                self.parts.writer.change_access(change).await?;
            }
            Err(err) => tracing::warn!(sequence, error = %err, "skipped an access entry"),
        }
        Ok(())
    }

    /// Writes a rule change for the cluster; one that does not hold
    /// together is logged and skipped.
    async fn rule(
        &self,
        sequence: u64,
        name: &str,
        payload: &[u8],
    ) -> Result<(), async_nats::Error> {
        match super::rules::change_of(name, payload) {
            Ok(change) => {
                self.parts.writer.change_rule(change).await?;
            }
            Err(err) => tracing::warn!(sequence, error = %err, "skipped a rule entry"),
        }
        Ok(())
    }

    /// Stores a device's event at the entry's position (after the entries
    /// before it, in the writer's order); one that does not decode is
    /// logged and skipped.
    async fn event(
        &self,
        sequence: u64,
        device: &str,
        payload: &[u8],
    ) -> Result<(), async_nats::Error> {
        if !protocol::is_valid_device_id(device) {
            tracing::warn!(
                sequence,
                device,
                "skipped an event entry: its subject names no device id"
            );
            return Ok(());
        }
        let EventEntry { ts_ms, event } = match serde_json::from_slice(payload) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(sequence, error = %err, "skipped an event entry");
                return Ok(());
            }
        };
        // An alert's transition happens once for the cluster, whoever
        // sent it (see `AlertChange::applies`).
        let event = match event {
            EventKind::Alert(change) => {
                let (latest, cause) = self
                    .parts
                    .store
                    .alert_standing(device, &change.rule)
                    .await?;
                match change.applies(latest, cause) {
                    Some(change) => EventKind::Alert(Box::new(change)),
                    None => return Ok(()),
                }
            }
            other => other,
        };
        // An event may come before the device's first readings.
        let row = self.parts.admission.find_or_register(device).await?.row;
        let event = NewEvent {
            device_row: Some(row),
            device: device.into(),
            ts_ms,
            kind: event,
        };
        self.parts
            .writer
            .record_at(event, first_position(sequence))
            .await?;
        Ok(())
    }

    /// Finds (or registers through the writer) the device's row and metric
    /// rows for `hello`, and keeps them for its entries that follow.
    async fn learn(&mut self, hello: Hello, hello_part: &[u8]) -> Result<(), async_nats::Error> {
        let admission = &self.parts.admission;
        // The stream holds only what a hub admitted: register it here too.
        let row = admission.find_or_register(&hello.device_id).await?.row;
        let (_, metric_rows) = admission.hello(row, &hello).await?;
        self.devices.insert(
            hello.device_id,
            Known {
                row,
                hello_part: hello_part.to_vec(),
                metric_rows,
            },
        );
        Ok(())
    }
}
