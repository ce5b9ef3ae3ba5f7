//! Where a hub resumes the cluster's stream, decided from what its
//! database holds and what the stream says of itself: pure, so each case
//! is a sentence in the tests below. `Journal::join` does the I/O around it.

use std::ops::RangeInclusive;

use super::{entry_of, first_position};
use crate::commits::Position;

/// What a joining hub knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The stream's creation time as the database recorded it at the
    /// first start, if it has.
    pub known_epoch: Option<i64>,
    /// The stream's creation time now.
    pub stream_epoch: i64,
    /// The last position the database stored.
    pub last_pos: Position,
    /// The stream's first and last sequence now (`first` past `last` when
    /// it is empty).
    pub first: u64,
    pub last: u64,
}

/// Where to start, and what to record first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The first entry to apply.
    pub start: u64,
    /// The database follows this stream from now on: record its epoch.
    pub record_epoch: bool,
    /// Entries this hub never stored that have aged out of the stream:
    /// subscribers resuming from before `start` must be told `reset`,
    /// through the retention watermark at `first_position(start) - 1`.
    pub missed: Option<RangeInclusive<u64>>,
}

impl Resume {
    /// The retention watermark that tells subscribers what was missed.
    pub fn watermark(&self) -> Option<Position> {
        self.missed.as_ref().map(|_| first_position(self.start) - 1)
    }
}

/// Why the database cannot follow the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// The database holds readings stored outside the cluster.
    ReadingsFromOutside,
    /// The stream was created again since the database followed it: its
    /// sequences started over.
    StreamRecreated,
    /// The database holds entries up to `applied`, past the stream's end.
    AheadOfStream { applied: u64, last: u64 },
}

/// Decides where the hub resumes the stream.
///
/// # Errors
/// The database cannot follow this stream.
pub fn decide(facts: Facts) -> Result<Resume, Divergence> {
    let record_epoch = match facts.known_epoch {
        None if facts.last_pos > 0 => return Err(Divergence::ReadingsFromOutside),
        None => true,
        Some(known) if known != facts.stream_epoch => return Err(Divergence::StreamRecreated),
        Some(_) => false,
    };
    let applied = entry_of(facts.last_pos);
    if applied > facts.last {
        return Err(Divergence::AheadOfStream {
            applied,
            last: facts.last,
        });
    }
    let next = applied + 1;
    let (start, missed) = if next < facts.first {
        (facts.first, Some(next..=facts.first - 1))
    } else {
        (next, None)
    };
    Ok(Resume {
        start,
        record_epoch,
        missed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: i64 = 1_700_000_000;

    fn facts(known_epoch: Option<i64>, last_pos: Position, first: u64, last: u64) -> Facts {
        Facts {
            known_epoch,
            stream_epoch: EPOCH,
            last_pos,
            first,
            last,
        }
    }

    #[test]
    fn a_new_database_starts_at_the_first_entry_and_records_the_epoch() {
        let resume = decide(facts(None, 0, 1, 0)).unwrap();
        assert_eq!(resume.start, 1);
        assert!(resume.record_epoch);
        assert_eq!(resume.missed, None);
        assert_eq!(resume.watermark(), None);
    }

    #[test]
    fn a_restarted_hub_resumes_after_the_entry_of_its_last_position() {
        // Entry 7 stored readings at positions 7 << 12 and up.
        let last_pos = first_position(7) + 3;
        let resume = decide(facts(Some(EPOCH), last_pos, 1, 20)).unwrap();
        assert_eq!(resume.start, 8);
        assert!(!resume.record_epoch);
        assert_eq!(resume.missed, None);
    }

    #[test]
    fn entries_aged_out_before_they_were_stored_are_skipped_and_reported() {
        let last_pos = first_position(7);
        let resume = decide(facts(Some(EPOCH), last_pos, 12, 20)).unwrap();
        assert_eq!(resume.start, 12);
        assert_eq!(resume.missed, Some(8..=11));
        assert_eq!(resume.watermark(), Some(first_position(12) - 1));
    }

    #[test]
    fn a_new_database_on_a_stream_that_aged_out_its_start_reports_what_it_missed() {
        let resume = decide(facts(None, 0, 5, 9)).unwrap();
        assert_eq!(resume.start, 5);
        assert!(resume.record_epoch);
        assert_eq!(resume.missed, Some(1..=4));
    }

    #[test]
    fn a_database_with_readings_from_outside_the_cluster_is_refused() {
        assert_eq!(
            decide(facts(None, 42, 1, 10)),
            Err(Divergence::ReadingsFromOutside)
        );
    }

    #[test]
    fn a_stream_created_again_since_is_refused() {
        assert_eq!(
            decide(facts(Some(EPOCH - 1), first_position(3), 1, 10)),
            Err(Divergence::StreamRecreated)
        );
    }

    #[test]
    fn a_database_ahead_of_the_stream_is_refused() {
        assert_eq!(
            decide(facts(Some(EPOCH), first_position(12), 1, 10)),
            Err(Divergence::AheadOfStream {
                applied: 12,
                last: 10
            })
        );
    }
}
