//! The publisher: the writer's second thread (`hub-publish`), which hands
//! each commit to the commit consumers ([`Consumers::publish`]) and then
//! answers the commit's requests.
//!
//! Formatting a commit's readings as SSE text (the live fan-out, an in-line
//! consumer) costs about a tenth of what storing them does. On the writer's
//! thread it delayed the next commit; here it runs beside it. Commits are
//! published and answered in commit order, and a batch is acknowledged only
//! after its readings are both committed and published.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use super::health::{Faults, WriterHealth, guard, trip};
use super::jobs::{Job, WriteError, WriteOutcome};
use crate::commits::{Commit, Consumers};

/// Commits waiting to be published. When full, the writer waits before its
/// next commit; sessions' requests queue behind it as for a slow disk.
const SETTLED_QUEUE: usize = 16;

/// What became of one group commit.
pub(super) enum Settled {
    Committed { jobs: Vec<Job>, commit: Commit },
    Failed { jobs: Vec<Job>, error: WriteError },
}

/// Starts the publisher. It ends once the sender is dropped and every
/// queued commit is answered.
pub(super) fn spawn(
    consumers: Consumers,
    health: WriterHealth,
    faults: Faults,
) -> std::io::Result<(SyncSender<Settled>, JoinHandle<()>)> {
    let (settled, queue) = sync_channel(SETTLED_QUEUE);
    let thread = std::thread::Builder::new()
        .name("hub-publish".into())
        .spawn(move || {
            guard(&health, "publisher", || {
                publish_all(&queue, &consumers, faults);
            });
        })?;
    Ok((settled, thread))
}

/// Publishes and answers every settled commit, in order, until the writer
/// drops its end of the queue.
fn publish_all(queue: &Receiver<Settled>, consumers: &Consumers, faults: Faults) {
    for (n, commit) in (1..).zip(queue) {
        trip(faults.publisher_panics_at, n, "publisher");
        match commit {
            Settled::Committed { jobs, commit } => {
                consumers.publish(&commit);
                reply_all(jobs, None);
            }
            Settled::Failed { jobs, error } => reply_all(jobs, Some(&error)),
        }
    }
}

/// Answers every job of a commit: batches `Stored`, or `Failed` after a
/// `failure`; registrations with what they wrote, or the `failure`.
fn reply_all(jobs: Vec<Job>, failure: Option<&WriteError>) {
    for job in jobs {
        match job {
            // A closed channel means the session has gone; the device will
            // learn the outcome from Welcome's last_seq when it reconnects.
            Job::Batch(request) => {
                let seq = request.seq;
                let outcome = match failure {
                    None => WriteOutcome::Stored { seq },
                    Some(_) => WriteOutcome::Failed { seq },
                };
                let _ = request.reply.try_send(outcome);
            }
            Job::Register(registration) => registration.settle(failure),
            Job::Record(record) => record.reply.settle(failure),
            // Never part of a group commit (the writer runs them apart).
            Job::Retain(_) | Job::Compact(_) | Job::Stop => {}
        }
    }
}
