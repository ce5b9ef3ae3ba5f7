//! Publishing a device's batches to the stream, one at a time and in order.
//!
//! Each session in cluster mode has an [`Appender`]: a task that publishes
//! the batches its session hands it and answers each with the outcome the
//! session turns into an `Ack` (the stream acknowledged it) or an `Error`.
//! One at a time, because every hub drops a batch whose `seq` is at or
//! below the device's last stored one: were batch 5 to fail and batch 6 to
//! be stored, the 5 the device resends would land after 6 and be dropped
//! as a resend. Waiting for each acknowledgement keeps a device's batches
//! in the stream in `seq` order; after a failure the rest are refused and
//! the device reconnects and resends from its `Welcome`.

use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use protocol::{Batch, Hello};
use tokio::sync::mpsc;

use super::{Journal, record};
use crate::store::writer::WriteOutcome;

/// A session's way into the stream. Dropping it lets the task publish
/// what it was handed, then end.
#[derive(Debug)]
pub struct Appender {
    batches: mpsc::Sender<Batch>,
}

/// The appender stopped (its task panicked): nothing more can be published.
#[derive(Debug, thiserror::Error)]
#[error("the journal appender has stopped")]
pub struct AppenderStopped;

impl Journal {
    /// An appender for the device `hello` introduced, answering on
    /// `outcomes`. `window` bounds the batches handed and not yet answered:
    /// the session's own in-flight window, so handing one never waits.
    pub fn appender(
        &self,
        hello: &Hello,
        outcomes: mpsc::Sender<WriteOutcome>,
        window: usize,
    ) -> Appender {
        let (batches, queue) = mpsc::channel(window);
        let publisher = DevicePublisher {
            journal: self.clone(),
            subject: self.subject(&hello.device_id),
            device_id: hello.device_id.clone(),
            hello: record::hello_part(hello),
        };
        tokio::spawn(publisher.run(queue, outcomes));
        Appender { batches }
    }
}

impl Appender {
    /// Hands a batch to be published after those handed before it.
    ///
    /// # Errors
    /// The appender's task has stopped.
    pub async fn append(&self, batch: Batch) -> Result<(), AppenderStopped> {
        // The queue holds the session's whole window, so it is never full
        // in practice; the wait is boxed so that it costs no session
        // memory (this future is part of each device session's).
        match self.batches.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(batch)) => Box::pin(self.batches.send(batch))
                .await
                .map_err(|_| AppenderStopped),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AppenderStopped),
        }
    }
}

struct DevicePublisher {
    journal: Journal,
    subject: String,
    device_id: String,
    hello: Bytes,
}

impl DevicePublisher {
    async fn run(self, mut queue: mpsc::Receiver<Batch>, outcomes: mpsc::Sender<WriteOutcome>) {
        let mut failed = false;
        while let Some(batch) = queue.recv().await {
            let seq = batch.seq;
            let outcome = if failed {
                WriteOutcome::Failed { seq }
            } else {
                match self.publish(batch).await {
                    Ok(sequence) => {
                        self.journal.status.saw(sequence);
                        WriteOutcome::Stored { seq }
                    }
                    Err(err) => {
                        tracing::warn!(device = %self.device_id, seq, error = %err, "the stream did not take a batch");
                        failed = true;
                        WriteOutcome::Failed { seq }
                    }
                }
            };
            // The session may have gone; its device learns from Welcome.
            let _ = outcomes.send(outcome).await;
        }
    }

    /// Publishes one batch and waits for the stream's acknowledgement;
    /// answers the entry's sequence (the first one's, for a duplicate).
    async fn publish(&self, batch: Batch) -> Result<u64, async_nats::Error> {
        // The same id for the same batch on any hub: a resend inside the
        // stream's duplicate window is acknowledged and not stored again.
        let id = format!("{}:{}", self.device_id, batch.seq);
        let entry = record::encode(&self.hello, batch);
        let ack = self
            .journal
            .jetstream
            .send_publish(
                self.subject.clone(),
                PublishMessage::build().payload(entry).message_id(id),
            )
            .await?
            .await?;
        Ok(ack.sequence)
    }
}
