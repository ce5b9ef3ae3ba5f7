//! One group commit's transaction: the registrations it holds, then its
//! batches and events in the order asked, each placed at its positions (or
//! dropped as a resend), the roll-ups of what was placed, and every
//! device's new `last_seq`.

use std::collections::{HashMap, HashSet};

use rusqlite::{Transaction, TransactionBehavior};

use super::jobs::{Dedupe, EventRecord, Job, Registration, WriteRequest};
use super::{Writer, configuration, rollup, statements};
use crate::commits::{Commit, Committed, Event, EventKind, Position};
use crate::store::now_ms;

impl Writer {
    /// Writes `jobs` in one transaction and commits it. `committed` gets
    /// the readings and events stored, at their positions; each
    /// registration and event keeps its answer, to be given once the commit
    /// is published.
    pub(super) fn commit(
        &mut self,
        jobs: &mut [Job],
        committed: &mut Commit,
    ) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Registrations first: a batch in the same commit may depend on them.
        for job in jobs.iter_mut() {
            if let Job::Register(registration) = job {
                register(&tx, registration)?;
            }
        }
        let mut placing = Placing {
            pos: self.next_pos,
            advanced: HashMap::new(),
            timed: HashSet::new(),
        };
        for job in jobs.iter_mut() {
            match job {
                Job::Batch(request) => {
                    let device_row = request.origin.device_row;
                    let last = match placing.advanced.get(&device_row) {
                        Some(&seq) => seq,
                        None => match self.last_seq.get(&device_row) {
                            Some(&seq) => seq,
                            None => statements::last_seq(&tx, device_row)?,
                        },
                    };
                    placing.place(&tx, request, last, &mut committed.readings)?;
                }
                Job::Record(record) => placing.place_events(&tx, record, &mut committed.events)?,
                Job::Register(_) | Job::Retain(_) | Job::Compact(_) | Job::Stop => {}
            }
        }
        statements::insert_samples(&tx, &committed.readings)?;
        statements::insert_events(&tx, &committed.events)?;
        // In the same transaction: no reading is ever stored without its
        // buckets, so retention can delete raw rows at any time.
        for tier in [rollup::MINUTES, rollup::HOURS] {
            let buckets = rollup::aggregate(&committed.readings, tier);
            statements::upsert_rollups(&tx, tier, &buckets)?;
        }
        statements::record_last_seq(&tx, &placing.advanced, now_ms())?;
        tx.commit()?;
        self.next_pos = placing.pos;
        self.last_seq.extend(placing.advanced);
        Ok(())
    }
}

/// Writes one registration and keeps its answer in it.
fn register(tx: &Transaction, registration: &mut Registration) -> rusqlite::Result<()> {
    match registration {
        Registration::Device { device_id, reply } => {
            reply.wrote(statements::insert_device(tx, device_id)?);
        }
        Registration::Hello {
            device_row,
            hello,
            reply,
        } => reply.wrote(statements::write_hello(tx, *device_row, hello)?),
        Registration::Metrics {
            device_row,
            metrics,
            reply,
        } => {
            let named = metrics
                .iter()
                .map(|(name, unit)| (name.as_str(), unit.as_str()));
            reply.wrote(statements::upsert_metrics(tx, *device_row, named)?);
        }
        Registration::Provision { change, reply } => {
            statements::provision(tx, change)?;
            reply.wrote(());
        }
        Registration::State { key, value, reply } => {
            statements::set_state(tx, key, *value)?;
            reply.wrote(());
        }
        Registration::Rule { change, reply } => {
            reply.wrote(statements::change_rule(tx, change)?);
        }
        Registration::Access { change, reply } => {
            reply.wrote(statements::change_access(tx, change)?);
        }
        Registration::ConfigDelivered {
            device_row,
            version,
            protocol,
            reply,
        } => {
            configuration::delivered(tx, *device_row, *version, *protocol, now_ms())?;
            reply.wrote(());
        }
    }
    Ok(())
}

/// Where a commit's batches and events go, decided one after another.
struct Placing {
    /// The position the next stored reading or event gets.
    pos: Position,
    /// Each device's `seq` as this commit leaves it.
    advanced: HashMap<i64, u64>,
    /// `(metric, ts_ms)` of this commit's readings deduplicated by time.
    timed: HashSet<(i64, i64)>,
}

impl Placing {
    /// Places `request`'s readings (the device's last stored `seq` is
    /// `last`) in `committed`, or none of them if it was stored before.
    fn place(
        &mut self,
        tx: &Transaction,
        request: &WriteRequest,
        last: u64,
        committed: &mut Vec<Committed>,
    ) -> rusqlite::Result<()> {
        let device_row = request.origin.device_row;
        if request.dedupe != Dedupe::BySeq {
            // The seq stays; the time seen moves.
            self.advanced.entry(device_row).or_insert(last);
            for sample in &request.samples {
                if request.dedupe == Dedupe::ByTime
                    && (!self.timed.insert((sample.metric, sample.ts_ms))
                        || statements::has_reading_at(tx, sample.metric, sample.ts_ms)?)
                {
                    continue; // a redelivery: acknowledged again, stored once
                }
                self.push(committed, *sample);
            }
            return Ok(());
        }
        if request.seq <= last {
            return Ok(()); // a resend: acknowledged again, stored once
        }
        if let Some(first) = request.at {
            if first < self.pos {
                // Stored before, at these very positions.
                return Ok(());
            }
            self.pos = first;
        }
        self.advanced.insert(device_row, request.seq);
        for sample in &request.samples {
            self.push(committed, *sample);
        }
        Ok(())
    }

    /// Places each event at the next position, or at its own (a journal
    /// entry's) unless that one is behind: stored before. A configuration
    /// change that does not apply to where its device stands (a version
    /// another change took) is not placed either.
    fn place_events(
        &mut self,
        tx: &Transaction,
        record: &mut EventRecord,
        events: &mut Vec<Event>,
    ) -> rusqlite::Result<()> {
        let mut placed = Vec::with_capacity(record.events.len());
        for (event, at) in &record.events {
            if at.is_some_and(|at| at < self.pos) {
                placed.push(None);
                continue;
            }
            if let (EventKind::Config(change), Some(device_row)) = (&event.kind, event.device_row)
                && !configuration::apply(tx, device_row, change, event.ts_ms)?
            {
                placed.push(None);
                continue;
            }
            if let Some(at) = *at {
                self.pos = at;
            }
            events.push(Event {
                pos: self.pos,
                event: event.clone(),
            });
            placed.push(Some(self.pos));
            self.pos += 1;
        }
        record.reply.wrote(placed);
        Ok(())
    }

    fn push(&mut self, committed: &mut Vec<Committed>, sample: crate::commits::Sample) {
        committed.push(Committed {
            pos: self.pos,
            sample,
        });
        self.pos += 1;
    }
}
