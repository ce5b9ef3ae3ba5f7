//! The writer: the only task that inserts readings.
//!
//! Sessions hand it [`WriteRequest`]s; it takes everything queued (up to a
//! limit), writes it in one `BEGIN IMMEDIATE … COMMIT`, and only after the
//! commit tells each session its batch is stored. Under load, requests pile
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
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use sqlx::{Acquire, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, now_ms};
use crate::telemetry::Counters;

/// Most rows queued for the writer across all sessions. A session that
/// cannot get permits for its batch waits, and so stops reading its socket:
/// the device sees TCP backpressure and nothing is dropped.
const QUEUED_ROWS: usize = 128 * 1024;

/// Most requests queued for the writer (the rows budget above is usually the
/// tighter bound); when full, `submit` waits, with the same backpressure.
const QUEUED_REQUESTS: usize = 4096;

/// Largest multi-row INSERT, in rows. sqlx hands each statement to its
/// SQLite worker thread, so many rows per statement is what makes it fast;
/// 256 rows × 4 columns stays far below SQLite's 32,766 parameters.
const ROWS_PER_INSERT: usize = 256;

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

/// The writer has stopped (the hub is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct WriterStopped;

/// The sessions' handle on the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    requests: mpsc::Sender<WriteRequest>,
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
        self.requests.send(request).await.map_err(|_| WriterStopped)
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
    async fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>, stop: CancellationToken) {
        let mut pending = Vec::with_capacity(QUEUED_REQUESTS);
        let mut committed = Vec::new();
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
            match self.commit(&pending, &mut committed).await {
                Ok(()) => {
                    self.counters.record_commit(committed.len());
                    self.on_commit.committed(&committed);
                    reply_all(&mut pending, |seq| WriteOutcome::Stored { seq });
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
                    reply_all(&mut pending, |seq| WriteOutcome::Failed { seq });
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
        // With AUTOINCREMENT, sqlite_sequence keeps the largest position ever
        // used, even after retention deleted it.
        let last: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'samples'")
                .fetch_optional(&mut self.conn)
                .await?;
        Ok(last.unwrap_or(0) + 1)
    }

    async fn commit(
        &mut self,
        requests: &[WriteRequest],
        committed: &mut Vec<Committed>,
    ) -> Result<(), StoreError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let conn = tx.acquire().await?;
        let mut advanced: HashMap<i64, u64> = HashMap::new();
        let mut pos = self.next_pos;
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
        let seen = now_ms();
        for (&device_row, &seq) in &advanced {
            sqlx::query("UPDATE devices SET last_seq = ?, last_seen_ms = ? WHERE id = ?")
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
                .bind(seen)
                .bind(device_row)
                .execute(&mut *conn)
                .await?;
        }
        tx.commit().await?;
        self.next_pos = pos;
        self.last_seq.extend(advanced);
        Ok(())
    }
}

fn reply_all(pending: &mut Vec<WriteRequest>, outcome: impl Fn(u64) -> WriteOutcome) {
    for request in pending.drain(..) {
        // A closed channel means the session has gone; the device will learn
        // the outcome from Welcome's last_seq when it reconnects.
        let _ = request.reply.try_send(outcome(request.seq));
    }
}

async fn load_last_seq(conn: &mut SqliteConnection, device_row: i64) -> Result<u64, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM devices WHERE id = ?")
        .bind(device_row)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// `INSERT … VALUES (…),(…)` statements for 1, 2, 4 … [`ROWS_PER_INSERT`]
/// rows: any count is written as full-size statements plus at most one of
/// each smaller power of two, so only nine distinct statements are ever
/// prepared and all stay in the connection's statement cache.
static INSERT_SQL: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut statements = Vec::new();
    let mut rows = 1;
    while rows <= ROWS_PER_INSERT {
        let values = vec!["(?, ?, ?, ?)"; rows].join(", ");
        let sql = format!("INSERT INTO samples (pos, metric, ts_ms, value) VALUES {values}");
        statements.push(&*sql.leak());
        rows *= 2;
    }
    statements
});

async fn insert_samples(
    conn: &mut SqliteConnection,
    committed: &[Committed],
) -> Result<(), StoreError> {
    let mut rest = committed;
    while !rest.is_empty() {
        let take = if rest.len() >= ROWS_PER_INSERT {
            ROWS_PER_INSERT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(take);
        let mut query = sqlx::query(INSERT_SQL[take.ilog2() as usize]);
        for row in chunk {
            query = query
                .bind(row.pos)
                .bind(row.sample.metric)
                .bind(row.sample.ts_ms)
                .bind(row.sample.value);
        }
        query.execute(&mut *conn).await?;
        rest = tail;
    }
    Ok(())
}
