//! The writer: the only task that inserts readings.
//!
//! Sessions hand it [`WriteRequest`]s; it takes everything queued (up to a
//! limit), writes it in one `BEGIN IMMEDIATE … COMMIT`, and only after the
//! commit tells each session its batch is stored. It also writes what a
//! device's first connection registers ([`Registration`]), in the same group
//! commits: with one writer, nothing in the running hub waits in SQLite's
//! busy handler (which sleeps, rather than waking when the lock frees). Under load, requests pile
//! up while a commit runs and the next commit takes them all: one fsync pays
//! for many batches (group commit) without adding a fixed delay at low load.
//!
//! Idempotency is per batch: the writer knows every device's last committed
//! `seq` (loaded from `devices.last_seq`, kept in memory, written back in the
//! same transaction), so a batch re-sent after a reconnect is acknowledged
//! again and stored once.
//!
//! Storage positions (`samples.pos`, the live event ids) are assigned here,
//! in commit order, so they only grow and a reader that has seen position N
//! has seen every committed position below it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use protocol::Hello;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Acquire, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, devices, now_ms, query};
use crate::telemetry::Counters;

/// Most rows queued for the writer across all sessions. A session that
/// cannot get permits for its batch waits, and so stops reading its socket:
/// the device sees TCP backpressure and nothing is dropped.
const QUEUED_ROWS: usize = 128 * 1024;

/// Most requests queued for the writer (the rows budget above is usually the
/// tighter bound); when full, `submit` waits, with the same backpressure.
const QUEUED_REQUESTS: usize = 4096;

/// Most rows in one INSERT or UPDATE. sqlx hands each statement to its
/// SQLite worker thread, so many rows per statement is what makes it fast;
/// 256 rows × 4 columns stays far below SQLite's 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 256;

/// One reading, ready to store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The `metrics.id` row.
    pub metric: i64,
    /// Device time, ms since the Unix epoch.
    pub ts_ms: i64,
    /// `None` for NaN and infinities.
    pub value: Option<f64>,
}

/// A stored reading, as the writer reports it after commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    /// The storage position (event id).
    pub pos: i64,
    pub sample: Sample,
}

/// Told of every commit, after it is durable and before any session hears
/// of it (the live fan-out).
pub trait OnCommit: Send + Sync {
    /// `rows` are the readings just committed, in position order.
    fn committed(&self, rows: &[Committed]);
}

/// What the writer tells a session about one of its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed now, or committed before (a resend).
    Stored { seq: u64 },
    /// The transaction failed; nothing of the batch was stored.
    Failed { seq: u64 },
}

/// One device batch on its way to the database.
#[derive(Debug)]
pub struct WriteRequest {
    pub device_row: i64,
    pub seq: u64,
    pub samples: Vec<Sample>,
    /// The session's outcome channel. Its capacity is the session's in-flight
    /// window, so the writer's `try_send` never finds it full.
    pub reply: mpsc::Sender<WriteOutcome>,
    /// Held until the request is answered: its share of [`QUEUED_ROWS`].
    _permit: OwnedSemaphorePermit,
}

/// A registration write: what a device's connection brings that the
/// database does not have yet.
#[derive(Debug)]
pub enum Registration {
    /// Create the device if it is unknown (it presented the provisioning
    /// key). Answers its row and whether it is revoked.
    Device {
        device_id: String,
        reply: oneshot::Sender<Result<(i64, bool), String>>,
    },
    /// Record a `Hello`'s model, firmware and metrics. Answers the metric
    /// rows by the device's metric ids.
    Hello {
        device_row: i64,
        hello: Hello,
        reply: oneshot::Sender<Result<HashMap<u16, i64>, String>>,
    },
}

/// What the writer is asked to do.
#[derive(Debug)]
enum Job {
    Batch(WriteRequest),
    Register(Registration),
}

/// What a registration produced, answered after the commit.
enum Registered {
    Device(i64, bool),
    Hello(HashMap<u16, i64>),
}

/// The writer has stopped (the hub is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterStopped;

/// The sessions' handle on the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    requests: mpsc::Sender<Job>,
    rows: Arc<Semaphore>,
}

impl WriterHandle {
    /// Queues a batch, waiting while the writer is behind.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn submit(
        &self,
        device_row: i64,
        seq: u64,
        samples: Vec<Sample>,
        reply: mpsc::Sender<WriteOutcome>,
    ) -> Result<(), WriterStopped> {
        let wanted = samples.len().clamp(1, QUEUED_ROWS);
        let permit = Arc::clone(&self.rows)
            .acquire_many_owned(u32::try_from(wanted).unwrap_or(u32::MAX))
            .await
            .map_err(|_| WriterStopped)?;
        let request = WriteRequest {
            device_row,
            seq,
            samples,
            reply,
            _permit: permit,
        };
        self.requests
            .send(Job::Batch(request))
            .await
            .map_err(|_| WriterStopped)
    }

    /// Creates a device registering itself with the provisioning key, in the
    /// next group commit; answers its row and whether it is revoked.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn register_device(&self, device_id: &str) -> Result<(i64, bool), String> {
        let device_id = device_id.to_owned();
        self.register(|reply| Registration::Device { device_id, reply })
            .await
    }

    /// Writes a `Hello`'s model, firmware and metrics in the next group
    /// commit and returns the metric rows.
    ///
    /// # Errors
    /// The writer has stopped or the transaction failed.
    pub async fn register_hello(
        &self,
        device_row: i64,
        hello: &Hello,
    ) -> Result<HashMap<u16, i64>, String> {
        let hello = hello.clone();
        self.register(|reply| Registration::Hello {
            device_row,
            hello,
            reply,
        })
        .await
    }

    async fn register<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Registration,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Job::Register(job(reply)))
            .await
            .map_err(|_| WriterStopped.to_string())?;
        answer.await.map_err(|_| WriterStopped.to_string())?
    }
}

/// Starts the writer on its own connection. It runs until `stop` is
/// cancelled, then commits what is queued and exits; the hub cancels `stop`
/// only after every session has ended.
///
/// # Errors
/// The connection cannot be opened or its state read.
pub async fn spawn(
    store: &Store,
    counters: Arc<Counters>,
    on_commit: Arc<dyn OnCommit>,
    stop: CancellationToken,
) -> Result<(WriterHandle, tokio::task::JoinHandle<()>), StoreError> {
    let conn = store.dedicated_connection().await?;
    let mut writer = Writer {
        conn,
        last_seq: HashMap::new(),
        next_pos: 0,
        counters,
        on_commit,
    };
    writer.next_pos = writer.load_next_pos().await?;
    let (requests, rx) = mpsc::channel(QUEUED_REQUESTS);
    let handle = WriterHandle {
        requests,
        rows: Arc::new(Semaphore::new(QUEUED_ROWS)),
    };
    let task = tokio::spawn(writer.run(rx, stop));
    Ok((handle, task))
}

struct Writer {
    conn: SqliteConnection,
    /// Last committed seq per `devices.id`, loaded on first use.
    last_seq: HashMap<i64, u64>,
    /// The position the next stored reading gets.
    next_pos: i64,
    counters: Arc<Counters>,
    on_commit: Arc<dyn OnCommit>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
        let mut pending = Vec::with_capacity(QUEUED_REQUESTS);
        let mut committed = Vec::new();
        let mut registered = Vec::new();
        loop {
            let received = tokio::select! {
                received = rx.recv_many(&mut pending, QUEUED_REQUESTS) => received,
                // Refuse new requests; what is queued is still received below.
                () = stop.cancelled(), if !rx.is_closed() => {
                    rx.close();
                    continue;
                }
            };
            // 0 only once the queue is closed and empty.
            if received == 0 {
                break;
            }
            committed.clear();
            registered.clear();
            let began = Instant::now();
            match self.commit(&pending, &mut committed, &mut registered).await {
                Ok(()) => {
                    self.counters
                        .record_commit(committed.len(), began.elapsed());
                    self.on_commit.committed(&committed);
                    reply_all(&mut pending, registered.drain(..).map(Ok), |seq| {
                        WriteOutcome::Stored { seq }
                    });
                }
                Err(err) => {
                    tracing::error!(error = %err, batches = pending.len(), "commit failed; sessions will close and devices resend");
                    self.counters.record_commit_failure();
                    // The in-memory view may be ahead of the database now.
                    self.last_seq.clear();
                    match self.load_next_pos().await {
                        Ok(next) => self.next_pos = next,
                        Err(err) => tracing::error!(error = %err, "cannot reload positions"),
                    }
                    let failed = std::iter::repeat_with(|| Err(err.to_string()));
                    reply_all(&mut pending, failed, |seq| WriteOutcome::Failed { seq });
                    // Do not spin against a failing disk.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let Err(err) = self.conn.close().await {
            tracing::warn!(error = %err, "closing the writer's connection");
        }
        tracing::debug!("writer stopped");
    }

    async fn load_next_pos(&mut self) -> Result<i64, StoreError> {
        Ok(query::last_position(&mut self.conn).await? + 1)
    }

    async fn commit(
        &mut self,
        jobs: &[Job],
        committed: &mut Vec<Committed>,
        registered: &mut Vec<Registered>,
    ) -> Result<(), StoreError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let conn = tx.acquire().await?;
        // Registrations first: a batch in the same commit may depend on them.
        for job in jobs {
            match job {
                Job::Register(Registration::Device { device_id, .. }) => {
                    let (row, revoked) = devices::insert_device(conn, device_id).await?;
                    registered.push(Registered::Device(row, revoked));
                }
                Job::Register(Registration::Hello {
                    device_row, hello, ..
                }) => {
                    let rows = devices::write_hello(conn, *device_row, hello).await?;
                    registered.push(Registered::Hello(rows));
                }
                Job::Batch(_) => {}
            }
        }
        let mut advanced: HashMap<i64, u64> = HashMap::new();
        let mut pos = self.next_pos;
        let requests = jobs.iter().filter_map(|job| match job {
            Job::Batch(request) => Some(request),
            Job::Register(_) => None,
        });
        for request in requests {
            let last = match advanced.get(&request.device_row) {
                Some(&seq) => seq,
                None => match self.last_seq.get(&request.device_row) {
                    Some(&seq) => seq,
                    None => load_last_seq(conn, request.device_row).await?,
                },
            };
            if request.seq <= last {
                continue; // a resend: acknowledged again, stored once
            }
            advanced.insert(request.device_row, request.seq);
            for sample in &request.samples {
                committed.push(Committed {
                    pos,
                    sample: *sample,
                });
                pos += 1;
            }
        }
        insert_samples(conn, committed).await?;
        record_last_seq(conn, &advanced, now_ms()).await?;
        tx.commit().await?;
        self.next_pos = pos;
        self.last_seq.extend(advanced);
        Ok(())
    }
}

/// Answers every job: batches with `outcome`, registrations (in order) with
/// `registered`.
fn reply_all(
    pending: &mut Vec<Job>,
    mut registered: impl Iterator<Item = Result<Registered, String>>,
    outcome: impl Fn(u64) -> WriteOutcome,
) {
    for job in pending.drain(..) {
        match job {
            // A closed channel means the session has gone; the device will
            // learn the outcome from Welcome's last_seq when it reconnects.
            Job::Batch(request) => {
                let _ = request.reply.try_send(outcome(request.seq));
            }
            Job::Register(Registration::Device { reply, .. }) => {
                let answer = match registered.next() {
                    Some(Ok(Registered::Device(row, revoked))) => Ok((row, revoked)),
                    Some(Err(err)) => Err(err),
                    _ => Err("registration out of step".into()),
                };
                let _ = reply.send(answer);
            }
            Job::Register(Registration::Hello { reply, .. }) => {
                let answer = match registered.next() {
                    Some(Ok(Registered::Hello(rows))) => Ok(rows),
                    Some(Err(err)) => Err(err),
                    _ => Err("registration out of step".into()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

async fn load_last_seq(conn: &mut SqliteConnection, device_row: i64) -> Result<u64, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM devices WHERE id = ?")
        .bind(device_row)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// Statements for 1, 2, 4 … [`ROWS_PER_STATEMENT`] rows of `row`
/// placeholders each, made by `sql`: any count is written as full-size
/// statements plus at most one of each smaller power of two, so only nine
/// distinct statements of a kind are ever prepared and all stay in the
/// connection's statement cache. The placeholders are bare `?`, numbered by
/// their place in the text: with numbered ones (`?513`) SQLite looks each
/// name up in a list, and a 1,024-parameter statement binds many times
/// slower.
fn power_of_two_statements(row: &str, sql: impl Fn(&str) -> String) -> Vec<&'static str> {
    let mut statements = Vec::new();
    let mut rows = 1;
    while rows <= ROWS_PER_STATEMENT {
        let values = vec![row; rows].join(", ");
        statements.push(&*sql(&values).leak());
        rows *= 2;
    }
    statements
}

/// Splits `items` into the chunks [`power_of_two_statements`] serves, each
/// with the index of its statement.
fn power_of_two_chunks<T>(mut rest: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let take = if rest.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        Some((take.ilog2() as usize, chunk))
    })
}

static INSERT_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    power_of_two_statements("(?, ?, ?, ?)", |values| {
        format!("INSERT INTO samples (pos, metric, ts_ms, value) VALUES {values}")
    })
});

async fn insert_samples(
    conn: &mut SqliteConnection,
    committed: &[Committed],
) -> Result<(), StoreError> {
    for (statement, chunk) in power_of_two_chunks(committed) {
        let mut query = sqlx::query(INSERT_SQL[statement]);
        for row in chunk {
            query = query
                .bind(row.pos)
                .bind(row.sample.metric)
                .bind(row.sample.ts_ms)
                .bind(row.sample.value);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `UPDATE … FROM (VALUES …)`: every device of a commit in one statement,
/// not one round trip to SQLite's thread per device. The first parameter
/// (it comes first in the text) is the time seen.
static LAST_SEQ_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    power_of_two_statements("(?, ?)", |values| {
        format!(
            "UPDATE devices SET last_seq = v.column2, last_seen_ms = ? \
             FROM (VALUES {values}) AS v WHERE devices.id = v.column1"
        )
    })
});

/// Writes each device's last committed `seq` and when it was last seen.
async fn record_last_seq(
    conn: &mut SqliteConnection,
    advanced: &HashMap<i64, u64>,
    seen_ms: i64,
) -> Result<(), StoreError> {
    let advanced: Vec<(i64, u64)> = advanced.iter().map(|(&row, &seq)| (row, seq)).collect();
    for (statement, chunk) in power_of_two_chunks(&advanced) {
        let mut query = sqlx::query(LAST_SEQ_SQL[statement]).bind(seen_ms);
        for &(device_row, seq) in chunk {
            query = query
                .bind(device_row)
                .bind(i64::try_from(seq).unwrap_or(i64::MAX));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_a_statement_for_every_power_of_two_up_to_the_largest() {
        let statements = power_of_two_statements("(?)", |values| values.to_owned());
        assert_eq!(statements.len(), 9);
        assert_eq!(statements[0], "(?)");
        assert_eq!(statements[1], "(?), (?)");
        assert_eq!(statements[8].matches('?').count(), ROWS_PER_STATEMENT);
    }

    #[test]
    fn any_count_is_covered_by_power_of_two_chunks() {
        for count in [0, 1, 5, 255, 256, 257, 1000] {
            let items: Vec<usize> = (0..count).collect();
            let chunks: Vec<(usize, &[usize])> = power_of_two_chunks(&items).collect();
            assert_eq!(chunks.iter().map(|(_, c)| c.len()).sum::<usize>(), count);
            for (statement, chunk) in chunks {
                assert_eq!(chunk.len(), 1 << statement);
            }
        }
    }
}
