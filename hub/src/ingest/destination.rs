//! Where a session's batches go, chosen once when it starts: the writer,
//! or in cluster mode the journal's stream. Either answers on the
//! session's outcome channel, so the session's loop never asks which.

use protocol::Batch;
use tokio::sync::mpsc;

use crate::commits::Sample;
use crate::journal::Journal;
use crate::journal::append::Appender;
use crate::store::writer::{Origin, WriteOutcome, WriterHandle};

/// A session's destination for its batches.
#[derive(Debug)]
pub enum Destination {
    /// One hub: the writer stores the batch and answers after the commit.
    Writer {
        writer: WriterHandle,
        origin: Origin,
        outcomes: mpsc::Sender<WriteOutcome>,
    },
    /// A cluster: the stream holds the batch, and every hub's applier
    /// stores it; answered on the stream's acknowledgement.
    Stream(Appender),
}

/// The destination has stopped: the hub is stopping, or its writer or
/// appender has failed.
#[derive(Debug, thiserror::Error)]
#[error("the batch's destination has stopped")]
pub struct Stopped;

impl Destination {
    /// The stream when the hub is one of a cluster, the writer otherwise.
    /// `window` is the session's in-flight window, the most batches handed
    /// on and not yet answered.
    pub fn choose(
        journal: Option<&Journal>,
        writer: &WriterHandle,
        hello: &protocol::Hello,
        origin: Origin,
        outcomes: mpsc::Sender<WriteOutcome>,
        window: usize,
    ) -> Self {
        match journal {
            Some(journal) => Destination::Stream(journal.appender(hello, outcomes, window)),
            None => Destination::Writer {
                writer: writer.clone(),
                origin,
                outcomes,
            },
        }
    }

    /// Hands a batch on (its readings as `samples`, for the writer),
    /// waiting while the destination is behind.
    ///
    /// # Errors
    /// The destination has stopped.
    pub async fn hand(&self, batch: Batch, samples: Vec<Sample>) -> Result<(), Stopped> {
        match self {
            Destination::Writer {
                writer,
                origin,
                outcomes,
            } => writer
                .submit(*origin, batch.seq, samples, outcomes.clone())
                .await
                .map_err(|_| Stopped),
            Destination::Stream(appender) => appender.append(batch).await.map_err(|_| Stopped),
        }
    }
}
