//! Resend bookkeeping, without I/O: the batches a device has sealed and the
//! hub has not yet acknowledged.
//!
//! Good firmware keeps every unacknowledged batch, resends after a
//! reconnect exactly those the hub's `Welcome` says it lacks, and when its
//! memory is full drops the oldest and counts the loss.

use std::collections::VecDeque;
use std::time::Instant;

use protocol::{Batch, Reading};

/// A sealed batch and when it was last sent.
#[derive(Debug, Clone)]
pub struct Pending {
    pub batch: Batch,
    pub sent_at: Option<Instant>,
}

/// The unacknowledged batches of one device, oldest first.
#[derive(Debug, Clone)]
pub struct Outbox {
    pending: VecDeque<Pending>,
    capacity: usize,
    next_seq: u64,
    dropped_readings: u64,
}

/// What an acknowledgement settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    pub batches: usize,
    pub readings: usize,
    /// When the acknowledged batch (the newest settled) was last sent.
    pub sent_at: Option<Instant>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` batches (at least one).
    pub fn new(capacity: usize) -> Self {
        Outbox {
            pending: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 1,
            dropped_readings: 0,
        }
    }

    /// Seals readings into the next batch. If the outbox is full, the oldest
    /// batch is dropped first; returns how many readings that lost.
    pub fn seal(&mut self, base_ms: u64, readings: Vec<Reading>) -> usize {
        let mut lost = 0;
        if self.pending.len() == self.capacity
            && let Some(oldest) = self.pending.pop_front()
        {
            lost = oldest.batch.readings.len();
            self.dropped_readings += lost as u64;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending {
            batch: Batch {
                seq,
                base_ms,
                readings,
            },
            sent_at: None,
        });
        lost
    }

    /// The hub committed every batch up to `seq`.
    pub fn acknowledge(&mut self, seq: u64) -> Settled {
        let mut settled = Settled::default();
        while let Some(front) = self.pending.front()
            && front.batch.seq <= seq
        {
            let done = self.pending.pop_front().expect("front exists");
            settled.batches += 1;
            settled.readings += done.batch.readings.len();
            settled.sent_at = done.sent_at;
        }
        settled
    }

    /// After a reconnect: the hub holds everything up to `hub_last_seq`.
    /// Settles those batches and returns what settled; the batches still
    /// pending are then the ones to resend, in order.
    ///
    /// If the hub is ahead of this outbox's numbering (the simulator was
    /// restarted with the same device ids), numbering continues after the
    /// hub's, so new batches are not mistaken for resends.
    pub fn resume(&mut self, hub_last_seq: u64) -> Settled {
        let settled = self.acknowledge(hub_last_seq);
        self.next_seq = self.next_seq.max(hub_last_seq + 1);
        for pending in &mut self.pending {
            pending.sent_at = None;
        }
        settled
    }

    /// The batches not yet sent on this connection, marked as sent now.
    pub fn take_unsent(&mut self, now: Instant) -> Vec<Batch> {
        self.pending
            .iter_mut()
            .filter(|p| p.sent_at.is_none())
            .map(|p| {
                p.sent_at = Some(now);
                p.batch.clone()
            })
            .collect()
    }

    /// Batches waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Readings lost because the outbox was full.
    pub fn dropped_readings(&self) -> u64 {
        self.dropped_readings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(n: usize) -> Vec<Reading> {
        vec![
            Reading {
                metric: 1,
                offset_ms: 0,
                value: 0.0
            };
            n
        ]
    }

    fn seqs(outbox: &Outbox) -> Vec<u64> {
        outbox.pending.iter().map(|p| p.batch.seq).collect()
    }

    #[test]
    fn sealed_batches_are_numbered_from_one() {
        let mut outbox = Outbox::new(10);
        outbox.seal(0, readings(1));
        outbox.seal(0, readings(1));
        assert_eq!(seqs(&outbox), [1, 2]);
    }

    #[test]
    fn an_ack_settles_that_batch_and_every_earlier_one() {
        let mut outbox = Outbox::new(10);
        for _ in 0..4 {
            outbox.seal(0, readings(3));
        }
        let settled = outbox.acknowledge(3);
        assert_eq!((settled.batches, settled.readings), (3, 9));
        assert_eq!(seqs(&outbox), [4]);
    }

    #[test]
    fn a_repeated_ack_settles_nothing() {
        let mut outbox = Outbox::new(10);
        outbox.seal(0, readings(1));
        outbox.acknowledge(1);
        assert_eq!(outbox.acknowledge(1), Settled::default());
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_batch_and_counts_its_readings() {
        let mut outbox = Outbox::new(2);
        outbox.seal(0, readings(5));
        outbox.seal(0, readings(1));
        assert_eq!(outbox.seal(0, readings(1)), 5);
        assert_eq!(seqs(&outbox), [2, 3]);
        assert_eq!(outbox.dropped_readings(), 5);
    }

    #[test]
    fn after_reconnect_only_what_the_hub_lacks_is_resent() {
        let mut outbox = Outbox::new(10);
        for _ in 0..5 {
            outbox.seal(0, readings(1));
        }
        let now = Instant::now();
        assert_eq!(outbox.take_unsent(now).len(), 5);
        // The hub committed 1..=3 but the acks were lost with the connection.
        let settled = outbox.resume(3);
        assert_eq!(settled.batches, 3);
        let resend: Vec<u64> = outbox.take_unsent(now).iter().map(|b| b.seq).collect();
        assert_eq!(resend, [4, 5]);
    }

    #[test]
    fn sent_batches_are_not_sent_twice_on_one_connection() {
        let mut outbox = Outbox::new(10);
        outbox.seal(0, readings(1));
        let now = Instant::now();
        assert_eq!(outbox.take_unsent(now).len(), 1);
        assert!(outbox.take_unsent(now).is_empty());
        outbox.seal(0, readings(1));
        assert_eq!(outbox.take_unsent(now)[0].seq, 2);
    }

    #[test]
    fn a_hub_ahead_of_the_device_moves_numbering_past_it() {
        let mut outbox = Outbox::new(10);
        outbox.resume(41);
        outbox.seal(0, readings(1));
        assert_eq!(seqs(&outbox), [42]);
    }
}
