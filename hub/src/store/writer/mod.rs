//! The writer: the only writer of the running hub.
//!
//! Sessions hand it [`WriteRequest`]s; it takes everything queued (up to a
//! limit), writes it in one `BEGIN IMMEDIATE … COMMIT`, and only after the
//! commit tells each session its batch is stored. It also writes what a
//! device's first connection registers ([`Registration`]), in the same group
//! commits, and retention's deletes, a chunk at a time after a group commit:
//! with one writer, nothing in the running hub waits in SQLite's busy
//! handler (which sleeps, rather than waking when the lock frees). Under load, requests pile
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
//!
//! The writer runs on its own OS thread (`hub-writer`) with its own rusqlite
//! connection ([`statements`]): a commit is one thread's uninterrupted work,
//! with no hand-off to a database thread and back for every statement.
//! Sessions reach it through a bounded channel. Each outcome goes on to the
//! [`publisher`]'s thread, which hands the rows to the commit consumers
//! ([`crate::commits`]) and then answers the sessions, while the writer
//! starts the next commit.

mod commit;
mod configuration;
mod file;
mod handle;
mod health;
mod jobs;
mod publisher;
pub mod rollup;
mod statements;
mod vacuum;

pub use handle::WriterHandle;
pub use health::WriterHealth;
pub use jobs::{
    AccessChange, Dedupe, Origin, Provisioned, Retainable, Retained, RuleChange, WriteError,
    WriteOutcome,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use handle::QUEUED_REQUESTS;
use jobs::{Job, RETAIN_ROWS, RetainChunk};
use publisher::Settled;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};
use crate::commits::{Commit, Consumers, Position};
use crate::telemetry::Counters;

/// The writer's connection, opened but not yet running: it knows the last
/// stored position, which the commit consumers start from.
#[derive(Debug)]
pub struct Opened {
    conn: Connection,
    file: file::DbFile,
    last_pos: Position,
}

/// Opens the writer's own connection and reads where storage stands.
///
/// # Errors
/// The connection cannot be opened or its state read.
pub async fn open(store: &Store) -> Result<Opened, StoreError> {
    let path = store.path().to_owned();
    tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let conn = statements::open(&path)?;
        // SQLite opens a file it may not write read-only, without a word;
        // every commit would then fail. Better not to start.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(StoreError::ReadOnly(path));
        }
        let file = file::DbFile::at(&path)?;
        vacuum::convert(&conn, health::Faults::from_env())?;
        let last_pos = statements::last_position(&conn)?;
        Ok(Opened {
            conn,
            file,
            last_pos,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

impl Opened {
    /// The last position stored: the head the commit consumers start at.
    pub fn last_pos(&self) -> Position {
        self.last_pos
    }

    /// Starts the writer on its own thread, publishing every commit to
    /// `consumers`. It runs until `stop` is cancelled, then commits what is
    /// queued and exits; the hub cancels `stop` only after every session has
    /// ended. The returned task ends when the thread has.
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn spawn(
        self,
        counters: Arc<Counters>,
        consumers: Consumers,
        stop: CancellationToken,
    ) -> Result<(WriterHandle, tokio::task::JoinHandle<()>), StoreError> {
        let Opened {
            conn,
            file,
            last_pos,
        } = self;
        let health = WriterHealth::default();
        let faults = health::Faults::from_env();
        let writer = Writer {
            conn,
            last_seq: HashMap::new(),
            next_pos: last_pos + 1,
            refused: HashMap::new(),
            file,
            counters,
            health: health.clone(),
            faults,
            vacuum: vacuum::Vacuum::new(faults),
        };
        let (requests, rx) = mpsc::channel(QUEUED_REQUESTS);
        let (exited, thread_done) = oneshot::channel::<()>();
        let (publish, publisher) = publisher::spawn(consumers, health.clone(), faults)?;
        let writer_health = health.clone();
        std::thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || {
                health::guard(&writer_health, "writer", || writer.run(rx, &publish));
                // The publisher answers what is queued, then ends.
                drop(publish);
                let _ = publisher.join();
                drop(exited);
            })?;
        // The thread blocks on its queue, so the stop arrives through it.
        let stopper = requests.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            let _ = stopper.send(Job::Stop).await;
        });
        let handle = WriterHandle::new(requests, health);
        let task = tokio::spawn(async move {
            let _ = thread_done.await;
        });
        Ok((handle, task))
    }
}

struct Writer {
    conn: Connection,
    /// Last committed seq per `devices.id`, loaded on first use.
    last_seq: HashMap<i64, u64>,
    /// The position the next stored reading gets.
    next_pos: Position,
    /// Devices with a batch in a failed commit, and the newest session
    /// that sent one: later batches of that session or an older one are
    /// refused, so nothing is stored past the gap the failure left (and a
    /// `Welcome`'s `last_seq` never covers a batch that was not stored). A
    /// newer session (the device reconnected and resends from that
    /// `last_seq`) lifts it.
    refused: HashMap<i64, u64>,
    /// The file the connection writes: checked before every commit.
    file: file::DbFile,
    counters: Arc<Counters>,
    health: WriterHealth,
    faults: health::Faults,
    vacuum: vacuum::Vacuum,
}

impl Writer {
    /// Commits what `rx` brings until it is closed and empty, handing each
    /// outcome to the publisher.
    fn run(mut self, mut rx: mpsc::Receiver<Job>, publish: &SyncSender<Settled>) {
        let mut pending = Vec::new();
        let mut commits = 0;
        let mut stopping = false;
        loop {
            // Free pages go back only while nothing waits, a step at a
            // time, and not once the hub is stopping.
            if !stopping && rx.is_empty() && self.vacuum.due(&self.conn) {
                if let Err(err) = self.vacuum.step(&mut self.conn) {
                    tracing::warn!(error = %err, "a vacuum step failed; free pages stay until the next delete");
                }
                continue;
            }
            // 0 only once the queue is closed and empty.
            if rx.blocking_recv_many(&mut pending, QUEUED_REQUESTS) == 0 {
                break;
            }
            if pending.iter().any(|job| matches!(job, Job::Stop)) {
                // Refuse new requests; what is queued is still received.
                rx.close();
                stopping = true;
                pending.retain(|job| !matches!(job, Job::Stop));
            }
            let mut jobs = std::mem::take(&mut pending);
            let upkeep = |job: &Job| matches!(job, Job::Retain(_) | Job::Compact(_));
            let retains: Vec<Job> = if jobs.iter().any(upkeep) {
                let (retains, batches) = jobs.into_iter().partition(upkeep);
                jobs = batches;
                retains
            } else {
                Vec::new()
            };
            let jobs = self.refuse_after_failures(jobs);
            if !jobs.is_empty() {
                commits += 1;
                health::trip(self.faults.writer_panics_at, commits, "writer");
                if !self.group_commit(jobs, publish) {
                    break;
                }
            }
            // Retention and compaction after the batches: they never delay
            // a queued Ack.
            for job in retains {
                match job {
                    Job::Retain(chunk) => self.retain(chunk),
                    Job::Compact(step) => {
                        let moved = statements::compact(&mut self.conn, &step.metrics)
                            .map_err(WriteError::from);
                        let _ = step.reply.send(moved);
                    }
                    _ => {}
                }
                self.vacuum.deleted();
            }
        }
        if let Err((_, err)) = self.conn.close() {
            tracing::warn!(error = %err, "closing the writer's connection");
        }
        tracing::debug!("writer stopped");
    }

    /// Commits `jobs` in one transaction and hands the outcome to the
    /// publisher. `false` if the publisher has gone.
    fn group_commit(&mut self, mut jobs: Vec<Job>, publish: &SyncSender<Settled>) -> bool {
        if let Err(lost) = self.file.check() {
            let reason = lost.to_string();
            // Commits would go to a file nobody can read again: answer
            // these as failed and stop, rather than acknowledge them.
            let _ = publish.send(Settled::Failed {
                jobs,
                error: WriteError::Failed(reason.as_str().into()),
            });
            self.health.fail(reason);
            return false;
        }
        let mut commit = Commit::default();
        let began = Instant::now();
        let settled = match self.commit(&mut jobs, &mut commit) {
            Ok(()) => {
                self.counters
                    .record_commit(commit.readings.len(), began.elapsed());
                self.health.commit_succeeded();
                Settled::Committed { jobs, commit }
            }
            Err(err) => {
                tracing::error!(error = %err, batches = jobs.len(), "commit failed; sessions will close and devices resend");
                self.counters.record_commit_failure();
                self.health.commit_failed(err.to_string());
                self.remember_failed(&jobs);
                // The in-memory view may be ahead of the database now.
                self.last_seq.clear();
                match statements::last_position(&self.conn) {
                    Ok(last) => self.next_pos = last + 1,
                    Err(err) => tracing::error!(error = %err, "cannot reload positions"),
                }
                Settled::Failed {
                    jobs,
                    error: err.into(),
                }
            }
        };
        let failed = matches!(settled, Settled::Failed { .. });
        if publish.send(settled).is_err() {
            // Nothing could be answered any more: stop taking requests, so
            // sessions see the writer gone rather than wait.
            self.health.fail("the publisher thread has stopped".into());
            return false;
        }
        if failed {
            // Do not spin against a failing disk.
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// Deletes one chunk of old readings, in its own transaction: a failure
    /// here fails no batch.
    fn retain(&mut self, chunk: RetainChunk) {
        let RetainChunk {
            what,
            metrics,
            before_ms,
            reply,
        } = chunk;
        let result = match what {
            Retainable::Readings => {
                statements::delete_old(&mut self.conn, &metrics, before_ms, RETAIN_ROWS)
            }
            Retainable::Events => {
                statements::delete_old_events(&mut self.conn, before_ms, RETAIN_ROWS)
            }
            Retainable::Buckets(tier) => statements::delete_old_buckets(
                &mut self.conn,
                tier,
                &metrics,
                before_ms,
                RETAIN_ROWS,
            ),
        };
        let result = result
            .map(|(deleted, finished)| Retained { deleted, finished })
            .map_err(WriteError::from);
        let _ = reply.send(result);
    }

    /// Answers `Failed` at once to the batches of sessions that had a batch
    /// fail, and returns the other jobs.
    fn refuse_after_failures(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        if self.refused.is_empty() {
            return jobs;
        }
        jobs.into_iter()
            .filter_map(|job| {
                let Job::Batch(request) = &job else {
                    return Some(job);
                };
                // Without a seq, nothing later can skip past a gap; the
                // journal's applier reads again from its cursor itself.
                if request.dedupe != Dedupe::BySeq || request.at.is_some() {
                    return Some(job);
                }
                let Origin {
                    device_row,
                    session,
                } = request.origin;
                match self.refused.get(&device_row) {
                    Some(&failed) if session <= failed => {
                        let _ = request
                            .reply
                            .try_send(WriteOutcome::Failed { seq: request.seq });
                        None
                    }
                    Some(_) => {
                        self.refused.remove(&device_row);
                        Some(job)
                    }
                    None => Some(job),
                }
            })
            .collect()
    }

    /// Records the sessions whose batches were in a failed commit.
    fn remember_failed(&mut self, jobs: &[Job]) {
        for job in jobs {
            if let Job::Batch(request) = job
                && request.dedupe == Dedupe::BySeq
                && request.at.is_none()
            {
                let Origin {
                    device_row,
                    session,
                } = request.origin;
                let failed = self.refused.entry(device_row).or_insert(session);
                *failed = (*failed).max(session);
            }
        }
    }
}

/// Compacts every slab of the database at `path` at once, as the running
/// hub would once they are old: for tests of what reads compacted blocks.
#[cfg(test)]
pub(crate) fn compact_everything(path: &std::path::Path) {
    let mut conn = statements::open(path).unwrap();
    let rows: Vec<(i64, i64)> = conn
        .prepare("SELECT pos, metric FROM samples ORDER BY pos")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let mut slabs: std::collections::BTreeMap<i64, std::collections::BTreeMap<i64, Vec<i64>>> =
        std::collections::BTreeMap::new();
    for (pos, metric) in rows {
        let slab = crate::store::blocks::slab_start(pos);
        slabs
            .entry(slab)
            .or_default()
            .entry(metric)
            .or_default()
            .push(pos);
    }
    for metrics in slabs.into_values() {
        let metrics: Vec<(i64, Vec<i64>)> = metrics.into_iter().collect();
        statements::compact(&mut conn, &metrics).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use protocol::Hello;

    use super::*;
    use crate::commits::{Committed, Event, EventKind, InlineConsumer, NewEvent, Sample};
    use crate::store::PoolDurability;

    /// Keeps every committed row (and apart, every event), as the live
    /// fan-out would see them.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Committed>>, Mutex<Vec<Event>>);

    impl InlineConsumer for Seen {
        fn committed(&self, commit: &Commit) {
            self.0.lock().unwrap().extend_from_slice(&commit.readings);
            self.1.lock().unwrap().extend_from_slice(&commit.events);
        }
    }

    fn consumers(seen: &Arc<Seen>) -> Consumers {
        Consumers::new(0).with_inline(Arc::clone(seen) as Arc<dyn InlineConsumer>)
    }

    fn hello() -> Hello {
        crate::fixtures::hello("dev-1")
    }

    /// A running writer on a fresh database, with `dev-1` registered with
    /// one metric, recording what it publishes.
    struct Rig {
        store: Store,
        writer: WriterHandle,
        task: tokio::task::JoinHandle<()>,
        stop: CancellationToken,
        seen: Arc<Seen>,
        counters: Arc<Counters>,
        device: i64,
        metric: i64,
        _dir: tempfile::TempDir,
    }

    impl Rig {
        async fn start() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("hub.db"), PoolDurability::WithWriter)
                .await
                .unwrap();
            let seen = Arc::new(Seen::default());
            let stop = CancellationToken::new();
            let counters = Arc::new(Counters::default());
            let (writer, task) = open(&store)
                .await
                .unwrap()
                .spawn(Arc::clone(&counters), consumers(&seen), stop.clone())
                .unwrap();
            let (device, revoked) = writer.register_device("dev-1").await.unwrap();
            assert!(!revoked);
            let metric = writer.register_hello(device, &hello()).await.unwrap()[&1];
            Rig {
                store,
                writer,
                task,
                stop,
                seen,
                counters,
                device,
                metric,
                _dir: dir,
            }
        }

        /// Submits a batch from `session` of dev-1.
        async fn submit(
            &self,
            session: u64,
            seq: u64,
            samples: Vec<Sample>,
            reply: &mpsc::Sender<WriteOutcome>,
        ) {
            self.writer
                .submit(
                    Origin {
                        device_row: self.device,
                        session,
                    },
                    seq,
                    samples,
                    reply.clone(),
                )
                .await
                .unwrap();
        }

        /// Stores `samples` as dev-1's batches of 4,000, each acknowledged.
        async fn store_all(&self, samples: &[Sample]) {
            let (reply, mut outcomes) = mpsc::channel(1);
            for (seq, batch) in (1..).zip(samples.chunks(4_000)) {
                self.submit(1, seq, batch.to_vec(), &reply).await;
                assert!(matches!(
                    outcomes.recv().await,
                    Some(WriteOutcome::Stored { .. })
                ));
            }
        }

        async fn count(&self, sql: &'static str) -> i64 {
            sqlx::query_scalar(sql)
                .fetch_one(self.store.pool())
                .await
                .unwrap()
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap();
        }
    }

    fn samples(metric: i64, times: std::ops::Range<i64>) -> Vec<Sample> {
        times
            .map(|ts_ms| Sample {
                metric,
                ts_ms,
                value: Some(1.5),
            })
            .collect()
    }

    #[tokio::test]
    async fn batches_are_stored_once_in_position_order_and_the_thread_stops() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        for seq in [1, 2, 2] {
            let from = seq as i64 * 1000;
            rig.submit(1, seq, samples(rig.metric, from..from + 300), &reply)
                .await;
            assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq }));
        }

        let rows = rig.seen.0.lock().unwrap().clone();
        assert_eq!(rows.len(), 600, "the resent batch is not stored again");
        assert!(rows.iter().zip(1..).all(|(row, pos)| row.pos == pos));
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 600);
        assert_eq!(rig.count("SELECT last_seq FROM devices").await, 2);

        let (writer, device, metric) = (rig.writer.clone(), rig.device, rig.metric);
        rig.stop().await;
        let origin = Origin {
            device_row: device,
            session: 1,
        };
        assert!(
            writer
                .submit(origin, 3, samples(metric, 0..1), reply)
                .await
                .is_err(),
            "a stopped writer refuses batches"
        );
    }

    #[tokio::test]
    async fn journal_batches_take_their_positions_and_a_resend_is_stored_once() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(8);
        // Journal entries 3 and 5 (position 4,096 × entry), then entry 7
        // bringing seq 2 again (a resend past the journal's own window),
        // then entry 9 at positions already passed.
        for (seq, first_pos, from) in [
            (1, 3 << 12, 0),
            (2, 5 << 12, 100),
            (2, 7 << 12, 200),
            (3, 4 << 12, 300),
        ] {
            rig.writer
                .submit_at(
                    rig.device,
                    seq,
                    samples(rig.metric, from..from + 3),
                    first_pos,
                    reply.clone(),
                )
                .await
                .unwrap();
            assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq }));
        }
        let positions: Vec<i64> = rig
            .seen
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|row| row.pos)
            .collect();
        let (a, b) = (3 << 12, 5 << 12);
        assert_eq!(positions, [a, a + 1, a + 2, b, b + 1, b + 2]);
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 6);
        assert_eq!(rig.count("SELECT last_seq FROM devices").await, 2);
        rig.stop().await;
    }

    /// What every reader shows of dev-1: the `readings` view, a cursor
    /// consumer's walk, the API's pages by time, raw buckets.
    async fn everything_read(
        rig: &Rig,
    ) -> (
        Vec<(i64, i64, Option<u64>)>,
        Vec<(i64, i64, Option<u64>)>,
        Vec<(i64, i64)>,
        String,
    ) {
        let view: Vec<(i64, i64, Option<f64>)> =
            sqlx::query_as("SELECT pos, ts_ms, value FROM readings ORDER BY pos")
                .fetch_all(rig.store.pool())
                .await
                .unwrap();
        let view = view
            .into_iter()
            .map(|(pos, ts, value)| (pos, ts, value.map(f64::to_bits)))
            .collect();
        let head = rig.store.head_pos().await.unwrap();
        let walk = |devices: Option<Vec<String>>, metrics: Option<Vec<String>>| async move {
            let (mut walked, mut after) = (Vec::new(), 0);
            while after < head {
                let page = rig
                    .store
                    .readings_page(after, head, devices.as_deref(), metrics.as_deref(), 7_000)
                    .await
                    .unwrap();
                walked.extend(
                    page.rows
                        .iter()
                        .map(|row| (row.pos, row.ts_ms, row.value.map(f64::to_bits))),
                );
                after = page.read_through;
            }
            walked
        };
        let walked = walk(None, None).await;
        let everything = walk(Some(vec!["dev-1".into()]), Some(vec!["temperature".into()])).await;
        assert!(walked == everything, "a filter that takes everything");
        assert!(walk(None, Some(vec!["nothing".into()])).await.is_empty());
        let mut filter = crate::store::query::ReadingFilter {
            device: Some("dev-1".into()),
            limit: 9_000,
            ..Default::default()
        };
        let mut by_time = Vec::new();
        loop {
            let page = rig.store.readings(&filter).await.unwrap();
            by_time.extend(page.rows.iter().map(|row| (row.ts_ms, row.pos)));
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        let buckets = rig
            .store
            .buckets(&crate::store::buckets::BucketQuery {
                device: "dev-1".into(),
                metric: None,
                from_ms: 0,
                to_ms: 200_000_000,
                step_ms: 10_000,
            })
            .await
            .unwrap();
        (view, walked, by_time, format!("{buckets:?}"))
    }

    #[tokio::test]
    async fn a_compacted_slab_reads_back_the_same_everywhere_and_retention_deletes_it() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(64);
        // 120,000 readings: a full slab and part of the next. Times step
        // by a second with jitter; one value in 97 is missing, and one
        // SQLite would read back from JSON as a neighbouring f64.
        let odd = 2.364_662_401_457_127_4e-157;
        let all: Vec<Sample> = (1..=120_000i64)
            .map(|i| Sample {
                metric: rig.metric,
                ts_ms: i * 1_000 + (i * 7_919) % 400,
                value: match i {
                    50_000 => Some(odd),
                    i if i % 97 == 0 => None,
                    i => Some(i as f64 / 7.0),
                },
            })
            .collect();
        rig.store_all(&all).await;
        let before = everything_read(&rig).await;
        assert_eq!(before.0.len(), 120_000);

        let moved = crate::store::compaction::compact_slab(&rig.store, &rig.writer, 1)
            .await
            .unwrap();
        assert_eq!(moved, 99_999, "all of the first slab but the odd value");
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 20_001);
        assert_eq!(rig.count("SELECT count(*) FROM sample_blocks").await, 1);
        assert_eq!(
            rig.store.state("compacted_through").await.unwrap(),
            Some(100_000)
        );
        let after = everything_read(&rig).await;
        assert!(before.0 == after.0, "the readings view changed");
        assert!(before.1 == after.1, "a cursor consumer's walk changed");
        assert!(before.2 == after.2, "pages by time changed");
        assert_eq!(before.3, after.3, "buckets changed");

        // A redelivery by time of a compacted reading is still known.
        rig.writer
            .submit_unsequenced(
                rig.device,
                1,
                Dedupe::ByTime,
                all[10..11].to_vec(),
                reply.clone(),
            )
            .await
            .unwrap();
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq: 1 }));
        assert_eq!(rig.count("SELECT count(*) FROM readings").await, 120_000);

        // Retention takes the block once all of it is older.
        let block_max = rig.count("SELECT max_ms FROM sample_blocks").await;
        let retained = rig
            .writer
            .retain(Retainable::Readings, vec![rig.metric], block_max)
            .await
            .unwrap();
        assert_eq!(
            rig.count("SELECT count(*) FROM sample_blocks").await,
            1,
            "not yet"
        );
        assert!(retained.deleted > 0, "hot rows older than the cut went");
        rig.writer
            .retain(Retainable::Readings, vec![rig.metric], block_max + 1)
            .await
            .unwrap();
        assert_eq!(rig.count("SELECT count(*) FROM sample_blocks").await, 0);
        assert!(rig.store.retention_watermark().await.unwrap() >= 100_000);
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_slab_compacted_again_after_a_partial_pass_moves_only_the_rest() {
        let rig = Rig::start().await;
        let level = rig
            .writer
            .register_metrics(rig.device, vec![("level".into(), "cm".into())])
            .await
            .unwrap()[0];
        // 100,000 readings of two metrics, interleaved: one full slab.
        let all: Vec<Sample> = (0..100_000i64)
            .map(|i| Sample {
                metric: if i % 2 == 0 { rig.metric } else { level },
                ts_ms: i * 500,
                value: Some(i as f64 * 0.25),
            })
            .collect();
        rig.store_all(&all).await;
        let view = "SELECT count(*), count(DISTINCT pos), sum(value) FROM readings";
        let before: (i64, i64, f64) = sqlx::query_as(view)
            .fetch_one(rig.store.pool())
            .await
            .unwrap();
        // A pass that stopped after its first step (a crash, say): one
        // metric moved, the other not, the slab not yet recorded.
        let temperature: Vec<i64> = (1..=100_000).step_by(2).collect();
        assert_eq!(
            rig.writer
                .compact(vec![(rig.metric, temperature)])
                .await
                .unwrap(),
            50_000
        );
        assert_eq!(rig.store.state("compacted_through").await.unwrap(), Some(0));
        let moved = crate::store::compaction::compact_slab(&rig.store, &rig.writer, 1)
            .await
            .unwrap();
        assert_eq!(moved, 50_000, "only the metric still in samples");
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 0);
        assert_eq!(rig.count("SELECT count(*) FROM sample_blocks").await, 2);
        let after: (i64, i64, f64) = sqlx::query_as(view)
            .fetch_one(rig.store.pool())
            .await
            .unwrap();
        assert_eq!(before, after);
        rig.stop().await;
    }

    #[tokio::test]
    async fn readings_without_a_seq_are_kept_once_by_their_time_when_they_have_one() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        let rows = rig
            .writer
            .register_metrics(rig.device, vec![("level".into(), "cm".into())])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        let level = rows[0];
        // A redelivery of 0..3 in the same commit as 2..5, and again later.
        let mut first = samples(level, 0..3);
        first.extend(samples(level, 2..5));
        for (tag, batch) in [(1, first), (2, samples(level, 0..5))] {
            rig.writer
                .submit_unsequenced(rig.device, tag, Dedupe::ByTime, batch, reply.clone())
                .await
                .unwrap();
            assert_eq!(
                outcomes.recv().await,
                Some(WriteOutcome::Stored { seq: tag })
            );
        }
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 5);
        // Timed by the hub, nothing tells a redelivery: both stay.
        for tag in [3, 4] {
            rig.writer
                .submit_unsequenced(
                    rig.device,
                    tag,
                    Dedupe::Never,
                    samples(level, 9..10),
                    reply.clone(),
                )
                .await
                .unwrap();
            assert_eq!(
                outcomes.recv().await,
                Some(WriteOutcome::Stored { seq: tag })
            );
        }
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 7);
        // The device's seq is left alone; its time seen moves.
        assert_eq!(rig.count("SELECT last_seq FROM devices").await, 0);
        assert_eq!(
            rig.count("SELECT last_seen_ms IS NOT NULL FROM devices")
                .await,
            1
        );
        rig.stop().await;
    }

    #[tokio::test]
    async fn readings_are_rolled_up_in_their_commit_and_late_ones_join_their_bucket() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        // 0..120 s, one a second, and one NaN in the first minute.
        let mut batch: Vec<Sample> = (0..120)
            .map(|s| Sample {
                metric: rig.metric,
                ts_ms: s * 1_000,
                value: Some(s as f64),
            })
            .collect();
        batch[10].value = None;
        rig.submit(1, 1, batch, &reply).await;
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq: 1 }));
        let bucket = |sql: &'static str| {
            sqlx::query_as::<_, (i64, i64, f64, f64, f64, i64, i64)>(sql)
                .fetch_one(rig.store.pool())
        };
        let first = "SELECT n, n_values, sum, min, max, first_ms, last_ms FROM rollups_1m WHERE bucket_ms = 0";
        let (n, n_values, sum, min, max, first_ms, last_ms) = bucket(first).await.unwrap();
        assert_eq!((n, n_values), (60, 59));
        assert_eq!(
            (sum, min, max),
            ((0..60).sum::<i64>() as f64 - 10.0, 0.0, 59.0)
        );
        assert_eq!((first_ms, last_ms), (0, 59_000));
        assert_eq!(rig.count("SELECT count(*) FROM rollups_1m").await, 2);
        assert_eq!(rig.count("SELECT n FROM rollups_1h").await, 120);
        // A late reading (a backfill, a resend after an outage) lands in
        // its old bucket.
        let late = vec![Sample {
            metric: rig.metric,
            ts_ms: 30_500,
            value: Some(-5.0),
        }];
        rig.submit(1, 2, late, &reply).await;
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq: 2 }));
        let (n, _, _, min, _, _, _) = bucket(first).await.unwrap();
        assert_eq!((n, min), (61, -5.0));
        let mean: f64 = sqlx::query_scalar("SELECT mean FROM readings_1m WHERE ts_ms = 60000")
            .fetch_one(rig.store.pool())
            .await
            .unwrap();
        assert_eq!(mean, (60..120).sum::<i64>() as f64 / 60.0);
        rig.stop().await;
    }

    fn online(rig: &Rig) -> NewEvent {
        NewEvent {
            device_row: Some(rig.device),
            device: "dev-1".into(),
            ts_ms: 42,
            kind: EventKind::Status { online: true },
        }
    }

    #[tokio::test]
    async fn events_take_positions_of_the_readings_sequence() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        rig.submit(1, 1, samples(rig.metric, 1..3), &reply).await;
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq: 1 }));
        assert_eq!(rig.writer.record(vec![online(&rig)]).await.unwrap(), [3]);
        rig.submit(1, 2, samples(rig.metric, 3..4), &reply).await;
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq: 2 }));

        let seen = rig.seen.1.lock().unwrap().clone();
        assert_eq!(
            seen,
            [Event {
                pos: 3,
                event: online(&rig)
            }]
        );
        let positions: Vec<Position> = rig.seen.0.lock().unwrap().iter().map(|r| r.pos).collect();
        assert_eq!(positions, [1, 2, 4]);
        let stored: (i64, String, String) =
            sqlx::query_as("SELECT pos, kind, body FROM device_events WHERE device = 'dev-1'")
                .fetch_one(rig.store.pool())
                .await
                .unwrap();
        assert_eq!(stored, (3, "status".into(), r#"{"online":true}"#.into()));

        // An event last: the last position, which a restarted writer goes
        // on from, is past it.
        assert_eq!(rig.writer.record(vec![online(&rig)]).await.unwrap(), [5]);
        assert_eq!(open(&rig.store).await.unwrap().last_pos, 5);
        rig.stop().await;
    }

    #[tokio::test]
    async fn an_event_at_a_position_already_taken_was_stored_before() {
        let rig = Rig::start().await;
        assert_eq!(
            rig.writer.record_at(online(&rig), 4096).await.unwrap(),
            Some(4096)
        );
        assert_eq!(
            rig.writer.record_at(online(&rig), 4096).await.unwrap(),
            None
        );
        assert_eq!(rig.count("SELECT count(*) FROM events").await, 1);
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_failed_commit_is_reported_stores_nothing_and_the_writer_goes_on() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        // No such metric row: the foreign key fails the whole transaction.
        rig.submit(1, 1, samples(rig.metric + 1000, 1..2), &reply)
            .await;
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Failed { seq: 1 }));
        // The device's next connection resends it, and it is stored: nothing
        // of the failed one was counted as committed.
        rig.submit(2, 1, samples(rig.metric, 1..2), &reply).await;
        assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq: 1 }));

        let rows = rig.seen.0.lock().unwrap().clone();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].pos, 1, "the failed commit used no position");
        assert_eq!(rows[0].sample.metric, rig.metric);
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 1);
        assert!(
            rig.counters
                .render()
                .contains("hub_commit_failures_total 1")
        );
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_registration_whose_commit_fails_gets_the_error_and_the_next_one_succeeds() {
        let rig = Rig::start().await;
        // No device row 404: the metrics' foreign key fails the commit.
        let err = rig.writer.register_hello(404, &hello()).await.unwrap_err();
        assert!(matches!(err, WriteError::Database(_)), "{err}");
        assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
        let (device, _) = rig.writer.register_device("dev-2").await.unwrap();
        let metrics = rig.writer.register_hello(device, &hello()).await.unwrap();
        assert_eq!(metrics.len(), 1);
        rig.stop().await;
    }

    #[tokio::test]
    async fn after_a_failed_commit_later_batches_of_that_session_are_not_stored() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        // Batch 1 fails (no such metric row); batch 2 of the same connection,
        // behind it, must not be stored: last_seq would then say 2 and the
        // device would drop batch 1 as acknowledged.
        rig.submit(7, 1, samples(rig.metric + 1000, 1..2), &reply)
            .await;
        rig.submit(7, 2, samples(rig.metric, 1..2), &reply).await;
        // In one commit or two: both are answered Failed.
        let mut failed = Vec::new();
        for _ in 0..2 {
            match outcomes.recv().await {
                Some(WriteOutcome::Failed { seq }) => failed.push(seq),
                other => panic!("expected a failure, got {other:?}"),
            }
        }
        failed.sort_unstable();
        assert_eq!(failed, [1, 2]);
        let last_seq = "SELECT last_seq FROM devices";
        assert_eq!(rig.count(last_seq).await, 0, "nothing past the failure");

        // The device reconnects and resends from last_seq + 1.
        for seq in [1, 2] {
            rig.submit(8, seq, samples(rig.metric, 1..2), &reply).await;
            assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq }));
        }
        assert_eq!(rig.count(last_seq).await, 2);
        assert_eq!(rig.seen.0.lock().unwrap().len(), 2);
        rig.stop().await;
    }

    #[tokio::test]
    async fn retention_deletes_through_the_writer_chunk_by_chunk() {
        let rig = Rig::start().await;
        let (reply, mut outcomes) = mpsc::channel(4);
        // More old readings than one chunk deletes, then a few new ones.
        let old = 2 * RETAIN_ROWS + 10;
        let batches = [(1, 0..old as i64), (2, 10_000..10_010)];
        for (seq, times) in batches {
            rig.submit(1, seq, samples(rig.metric, times), &reply).await;
            assert_eq!(outcomes.recv().await, Some(WriteOutcome::Stored { seq }));
        }

        let sweep = || crate::store::retention::sweep(&rig.store, &rig.writer, 5_000);
        assert_eq!(sweep().await.unwrap(), old);
        assert_eq!(rig.count("SELECT count(*) FROM samples").await, 10);
        let watermark = rig.store.retention_watermark().await.unwrap();
        assert_eq!(watermark, old as i64);
        // Nothing due: nothing to ask the writer.
        let due = rig.store.metrics_with_readings_before(5_000).await.unwrap();
        assert!(due.is_empty());
        assert_eq!(sweep().await.unwrap(), 0);
        rig.stop().await;
    }

    #[tokio::test]
    async fn retention_deletes_old_events_and_says_so_in_the_watermark() {
        let rig = Rig::start().await;
        let at = |ts_ms| NewEvent {
            ts_ms,
            ..online(&rig)
        };
        let old: Vec<NewEvent> = (0..RETAIN_ROWS as i64 + 5).map(at).collect();
        rig.writer.record(old).await.unwrap();
        let kept = rig.writer.record(vec![at(10_000)]).await.unwrap()[0];

        let sweep = crate::store::retention::sweep_events(&rig.writer, 5_000);
        assert_eq!(sweep.await.unwrap(), RETAIN_ROWS + 5);
        assert_eq!(rig.count("SELECT count(*) FROM events").await, 1);
        let watermark = rig.store.retention_watermark().await.unwrap();
        assert_eq!(watermark, kept - 1);
        assert_eq!(rig.store.oldest_pos().await.unwrap(), kept);
        rig.stop().await;
    }
}
