//! What a device has sampled and the hub has not yet acknowledged: samples
//! not yet sealed into a batch, and sealed batches waiting for their `Ack`.
//! In memory, or also on disk ([`crate::journal`]), so that it survives the
//! device's own crash.
//!
//! Good firmware keeps every unacknowledged batch, resends after a
//! reconnect exactly those the hub's `Welcome` says it lacks, and when full
//! drops the oldest and counts the loss.
//!
//! **Numbering.** The hub takes a batch whose seq it already holds as a
//! resend (acknowledged, not stored again). A new outbox does not know
//! where the hub's numbering for its device stands (the device ran before,
//! with an outbox since lost, or a script is started again), so its
//! batches are numbered provisionally until the first `Welcome`, and then
//! moved on past the hub's `last_seq`; none of them has been sent before
//! that. An outbox on disk remembers that its numbering is confirmed.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::time::Instant;

use protocol::Batch;

use crate::journal::{Durability, Journal, Sample, batch_of};

/// A sealed batch and when it was last sent.
#[derive(Debug, Clone)]
struct Pending {
    batch: Batch,
    sent_at: Option<Instant>,
}

/// What an acknowledgement settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    pub batches: usize,
    pub readings: usize,
    /// When the acknowledged batch (the newest settled) was last sent.
    pub sent_at: Option<Instant>,
}

/// The unacknowledged readings of one device, oldest first.
#[derive(Debug)]
pub struct Outbox {
    pending: VecDeque<Pending>,
    /// Readings in `pending`, kept as batches come and go (asked at every
    /// step of a device's loop).
    pending_readings: usize,
    unsealed: Vec<Sample>,
    /// The earliest and latest time among `unsealed`.
    unsealed_span: Option<(u64, u64)>,
    /// Most batches kept in memory (an outbox on disk is bounded by bytes).
    capacity: usize,
    next_seq: u64,
    /// Whether the numbering follows the hub's (see the module's docs).
    confirmed: bool,
    dropped_readings: u64,
    journal: Option<Journal>,
}

impl Outbox {
    /// An empty outbox in memory holding at most `capacity` batches (at
    /// least one).
    pub fn in_memory(capacity: usize) -> Self {
        Outbox {
            pending: VecDeque::new(),
            pending_readings: 0,
            unsealed: Vec::new(),
            unsealed_span: None,
            capacity: capacity.max(1),
            next_seq: 1,
            confirmed: false,
            dropped_readings: 0,
            journal: None,
        }
    }

    /// The outbox kept in the folder `dir`, holding at most `max_bytes`
    /// there, with what it held when the device last stopped.
    ///
    /// # Errors
    /// The folder cannot be read or written.
    pub fn on_disk(dir: &Path, max_bytes: u64, durability: Durability) -> io::Result<Self> {
        let (journal, replayed) = Journal::open(dir, max_bytes, durability)?;
        if replayed.cut_bytes > 0 {
            tracing::warn!(
                outbox = %dir.display(),
                bytes = replayed.cut_bytes,
                "the outbox ended in a torn record (a crash while writing it), cut off"
            );
        }
        let unsealed_span = replayed
            .unsealed
            .iter()
            .fold(None, |span, s| Some(widened(span, s.time_ms)));
        Ok(Outbox {
            pending_readings: replayed.batches.iter().map(|b| b.readings.len()).sum(),
            unsealed_span,
            pending: replayed
                .batches
                .into_iter()
                .map(|batch| Pending {
                    batch,
                    sent_at: None,
                })
                .collect(),
            unsealed: replayed.unsealed,
            capacity: usize::MAX,
            next_seq: replayed.next_seq,
            confirmed: replayed.confirmed,
            dropped_readings: 0,
            journal: Some(journal),
        })
    }

    /// Adds a sample to the batch being filled. On disk, it is written
    /// (and flushed, as the durability says) before this returns; if the
    /// outbox is full, its oldest batches are dropped first and counted.
    ///
    /// # Errors
    /// Writing to the disk failed; the sample is not kept.
    pub fn push(&mut self, sample: Sample) -> io::Result<()> {
        if let Some(journal) = &mut self.journal
            && let Some(upto) = journal.append_sample(&sample)?
        {
            while let Some(front) = self.pending.front()
                && front.batch.seq <= upto
            {
                let lost = self.pop_oldest();
                self.dropped_readings += lost.batch.readings.len() as u64;
            }
        }
        self.unsealed_span = Some(widened(self.unsealed_span, sample.time_ms));
        self.unsealed.push(sample);
        Ok(())
    }

    /// Whether a sample taken at `time_ms` fits the batch being filled: a
    /// batch's offsets count from its earliest reading in u32 ms.
    pub fn fits(&self, time_ms: u64) -> bool {
        let (lo, hi) = widened(self.unsealed_span, time_ms);
        hi - lo <= u64::from(u32::MAX)
    }

    fn pop_oldest(&mut self) -> Pending {
        let oldest = self.pending.pop_front().expect("a pending batch");
        self.pending_readings -= oldest.batch.readings.len();
        oldest
    }

    /// Samples not yet sealed.
    pub fn unsealed(&self) -> &[Sample] {
        &self.unsealed
    }

    /// Seals the unsealed samples into the next batch (nothing if there are
    /// none). In memory, a full outbox drops its oldest batch first.
    /// Returns how many readings were dropped.
    ///
    /// # Errors
    /// Writing the batch's boundary to the disk failed.
    pub fn seal(&mut self) -> io::Result<usize> {
        if self.unsealed.is_empty() {
            return Ok(0);
        }
        let seq = self.next_seq;
        if let Some(journal) = &mut self.journal {
            journal.append_seal(seq, self.unsealed.len())?;
        }
        self.next_seq += 1;
        let mut lost = 0;
        if self.pending.len() >= self.capacity {
            lost = self.pop_oldest().batch.readings.len();
            self.dropped_readings += lost as u64;
        }
        let batch = batch_of(seq, &self.unsealed);
        self.pending_readings += batch.readings.len();
        self.unsealed.clear();
        self.unsealed_span = None;
        self.pending.push_back(Pending {
            batch,
            sent_at: None,
        });
        Ok(lost)
    }

    /// The hub committed every batch up to `seq`.
    ///
    /// # Errors
    /// Deleting settled segments on disk failed.
    pub fn acknowledge(&mut self, seq: u64) -> io::Result<Settled> {
        let mut settled = Settled::default();
        while let Some(front) = self.pending.front()
            && front.batch.seq <= seq
        {
            let done = self.pop_oldest();
            settled.batches += 1;
            settled.readings += done.batch.readings.len();
            settled.sent_at = done.sent_at;
        }
        if let Some(journal) = &mut self.journal {
            journal.settle(seq)?;
        }
        Ok(settled)
    }

    /// After a (re)connect: the hub holds everything up to `hub_last_seq`.
    /// The first time, a new outbox moves its numbering past the hub's;
    /// after that, batches the hub holds are settled. The batches still
    /// pending are then the ones to send, in order.
    ///
    /// # Errors
    /// Writing the outbox on disk failed.
    pub fn resume(&mut self, hub_last_seq: u64) -> io::Result<Settled> {
        for pending in &mut self.pending {
            pending.sent_at = None;
        }
        if !self.confirmed {
            for pending in &mut self.pending {
                pending.batch.seq += hub_last_seq;
            }
            self.next_seq += hub_last_seq;
            if let Some(journal) = &mut self.journal {
                let batches: Vec<&Batch> = self.pending.iter().map(|p| &p.batch).collect();
                journal.rewrite(self.next_seq, &batches, &self.unsealed)?;
            }
            self.confirmed = true;
            return Ok(Settled::default());
        }
        let settled = self.acknowledge(hub_last_seq)?;
        // The hub is ahead of this outbox (restored from elsewhere): number
        // on after it, so new batches are not taken for resends.
        self.next_seq = self.next_seq.max(hub_last_seq + 1);
        Ok(settled)
    }

    /// The oldest batch not yet sent on this connection.
    pub fn next_unsent(&self) -> Option<&Batch> {
        self.pending
            .iter()
            .find(|p| p.sent_at.is_none())
            .map(|p| &p.batch)
    }

    /// Batch `seq` went out on this connection at `now`.
    pub fn mark_sent(&mut self, seq: u64, now: Instant) {
        if let Some(pending) = self.pending.iter_mut().find(|p| p.batch.seq == seq) {
            pending.sent_at = Some(now);
        }
    }

    /// Batches waiting for an acknowledgement.
    pub fn batches(&self) -> usize {
        self.pending.len()
    }

    /// Readings not yet acknowledged, sealed or not.
    pub fn readings(&self) -> usize {
        self.unsealed.len() + self.pending_readings
    }

    /// Whether nothing waits: everything sampled was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.unsealed.is_empty()
    }

    /// Readings lost because the outbox was full.
    pub fn dropped_readings(&self) -> u64 {
        self.dropped_readings
    }

    /// Bytes the outbox holds on disk (0 in memory).
    pub fn disk_bytes(&self) -> u64 {
        self.journal.as_ref().map_or(0, Journal::bytes)
    }
}

/// `span` with `time_ms` in it.
fn widened(span: Option<(u64, u64)>, time_ms: u64) -> (u64, u64) {
    span.map_or((time_ms, time_ms), |(lo, hi)| {
        (lo.min(time_ms), hi.max(time_ms))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(outbox: &mut Outbox, samples: usize) {
        for t in 0..samples {
            outbox
                .push(Sample {
                    time_ms: t as u64,
                    metric: 1,
                    value: 0.0,
                })
                .unwrap();
        }
        outbox.seal().unwrap();
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox.pending.iter().map(|p| p.batch.seq).collect()
    }

    fn confirmed(capacity: usize) -> Outbox {
        let mut outbox = Outbox::in_memory(capacity);
        outbox.resume(0).unwrap();
        outbox
    }

    fn send_all(outbox: &mut Outbox, now: Instant) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(seq) = outbox.next_unsent().map(|b| b.seq) {
            outbox.mark_sent(seq, now);
            sent.push(seq);
        }
        sent
    }

    #[test]
    fn sealed_batches_are_numbered_from_one() {
        let mut outbox = confirmed(10);
        fill(&mut outbox, 1);
        fill(&mut outbox, 1);
        assert_eq!(seqs(&outbox), [1, 2]);
    }

    #[test]
    fn an_ack_settles_that_batch_and_every_earlier_one() {
        let mut outbox = confirmed(10);
        for _ in 0..4 {
            fill(&mut outbox, 3);
        }
        let settled = outbox.acknowledge(3).unwrap();
        assert_eq!((settled.batches, settled.readings), (3, 9));
        assert_eq!(seqs(&outbox), [4]);
    }

    #[test]
    fn a_repeated_ack_settles_nothing() {
        let mut outbox = confirmed(10);
        fill(&mut outbox, 1);
        outbox.acknowledge(1).unwrap();
        assert_eq!(outbox.acknowledge(1).unwrap(), Settled::default());
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_batch_and_counts_its_readings() {
        let mut outbox = confirmed(2);
        fill(&mut outbox, 5);
        fill(&mut outbox, 1);
        outbox
            .push(Sample {
                time_ms: 0,
                metric: 1,
                value: 0.0,
            })
            .unwrap();
        assert_eq!(outbox.seal().unwrap(), 5);
        assert_eq!(seqs(&outbox), [2, 3]);
        assert_eq!(outbox.dropped_readings(), 5);
    }

    #[test]
    fn after_reconnect_only_what_the_hub_lacks_is_resent() {
        let mut outbox = confirmed(10);
        for _ in 0..5 {
            fill(&mut outbox, 1);
        }
        let now = Instant::now();
        assert_eq!(send_all(&mut outbox, now).len(), 5);
        // The hub committed 1..=3 but the acks were lost with the connection.
        let settled = outbox.resume(3).unwrap();
        assert_eq!(settled.batches, 3);
        assert_eq!(send_all(&mut outbox, now), [4, 5]);
    }

    #[test]
    fn sent_batches_are_not_sent_twice_on_one_connection() {
        let mut outbox = confirmed(10);
        fill(&mut outbox, 1);
        let now = Instant::now();
        assert_eq!(send_all(&mut outbox, now), [1]);
        assert!(outbox.next_unsent().is_none());
        fill(&mut outbox, 1);
        assert_eq!(send_all(&mut outbox, now), [2]);
    }

    #[test]
    fn a_new_outbox_numbers_on_past_the_hub_at_its_first_welcome() {
        // Sealed before the first connection: the hub already holds 41
        // batches of this device from an earlier life.
        let mut outbox = Outbox::in_memory(10);
        fill(&mut outbox, 2);
        fill(&mut outbox, 1);
        assert_eq!(outbox.resume(41).unwrap(), Settled::default());
        assert_eq!(seqs(&outbox), [42, 43]);
        fill(&mut outbox, 1);
        assert_eq!(seqs(&outbox), [42, 43, 44]);
        // Later reconnects settle as usual.
        assert_eq!(outbox.resume(43).unwrap().batches, 2);
    }

    #[test]
    fn a_hub_ahead_of_a_confirmed_outbox_moves_numbering_past_it() {
        let mut outbox = confirmed(10);
        outbox.resume(41).unwrap();
        fill(&mut outbox, 1);
        assert_eq!(seqs(&outbox), [42]);
    }

    #[test]
    fn counts_and_spans_follow_seals_drops_and_acks() {
        let mut outbox = confirmed(2);
        for _ in 0..3 {
            fill(&mut outbox, 4);
        }
        assert_eq!((outbox.readings(), outbox.dropped_readings()), (8, 4));
        outbox.acknowledge(2).unwrap();
        assert_eq!(outbox.readings(), 4);
        let sample = |time_ms| Sample {
            time_ms,
            metric: 1,
            value: 0.0,
        };
        outbox.push(sample(1_000)).unwrap();
        assert!(outbox.fits(1_000 + u64::from(u32::MAX)));
        assert!(!outbox.fits(1_001 + u64::from(u32::MAX)));
        assert!(outbox.fits(0));
        outbox.seal().unwrap();
        assert!(outbox.fits(u64::MAX), "a new batch takes any time");
        assert_eq!(outbox.readings(), 5);
    }

    #[test]
    fn on_disk_it_comes_back_with_the_same_batches_and_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Outbox::on_disk(dir.path(), 1 << 20, Durability::Process).unwrap();
        let mut outbox = open();
        fill(&mut outbox, 3);
        outbox.resume(7).unwrap();
        fill(&mut outbox, 2);
        outbox
            .push(Sample {
                time_ms: 9,
                metric: 2,
                value: 1.5,
            })
            .unwrap();
        let before: Vec<Batch> = outbox.pending.iter().map(|p| p.batch.clone()).collect();
        drop(outbox);
        let mut outbox = open();
        let after: Vec<Batch> = outbox.pending.iter().map(|p| p.batch.clone()).collect();
        assert_eq!(after, before);
        assert_eq!(seqs(&outbox), [8, 9]);
        assert_eq!(outbox.unsealed().len(), 1);
        // Confirmed: a Welcome now settles rather than renumbers.
        assert_eq!(outbox.resume(8).unwrap().batches, 1);
        outbox.seal().unwrap();
        assert_eq!(seqs(&outbox), [9, 10]);
    }
}
