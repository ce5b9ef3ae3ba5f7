//! The outbox on disk: an append-only log of samples and batch boundaries,
//! split into segment files, so that what a device sampled survives the
//! device's crash or power cut until the hub acknowledges it.
//!
//! A folder holds `NNNNNNNNNNNNNNNNNNNN.seg` files, oldest first. Each starts
//! with a header (magic, whether its numbering follows the hub's, the seq
//! of the next batch sealed in it) and holds records, each with a CRC-32C:
//!
//! * a sample: its time (ms), metric id and value (23 bytes);
//! * a seal: the samples since the previous seal form batch `seq` (17 bytes).
//!
//! A batch's boundary is written before the batch is sent, so a resend after
//! a crash carries the same seq and the same readings, which the hub's
//! (device, seq) idempotency stores once. A new segment starts only after a
//! seal once the current one passes an eighth of the bound, so every
//! segment but the newest holds whole batches: once the hub acknowledges
//! a segment's last batch the file is deleted, and when the outbox is full
//! the oldest segment goes (its unacknowledged readings counted as lost).
//! A torn record at the end (a power cut mid-write) fails its CRC and is cut
//! off when the folder is opened again.
//!
//! Why segment files rather than SQLite, which the hub already uses:
//! measured by `bench outbox` (docs/BENCHMARKS.md "Outbox"), a reading
//! costs 0.41 µs written to the operating system against 6.9 µs for a
//! committed insert at `synchronous = NORMAL`, and 131-133 µs flushed to
//! the disk against 139-153 µs at `FULL`; and the hub's idempotency already
//! gives exactly-once, so no transaction is needed here.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crc::{CRC_32_ISCSI, Crc};
use protocol::{Batch, Reading};

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
const MAGIC: &[u8; 8] = b"TLMOUTB1";
const HEADER_LEN: usize = 8 + 1 + 8;
const SAMPLE: u8 = 1;
const SEAL: u8 = 2;
/// Tag, time, metric, value, CRC.
pub const SAMPLE_LEN: usize = 1 + 8 + 2 + 8 + 4;
/// Tag, seq, count, CRC.
const SEAL_LEN: usize = 1 + 8 + 4 + 4;
/// Header flag: batch numbers follow the hub's (see [`crate::outbox`]).
const CONFIRMED: u8 = 1;

/// How far ahead of its records a segment is filled with zeros.
const ALLOCATE_STEP: u64 = 1 << 20;

/// The smallest bound an outbox on disk takes.
pub const MIN_BYTES: u64 = 64 * 1024;

/// A sampled reading not yet sealed into a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub time_ms: u64,
    pub metric: u16,
    pub value: f64,
}

/// What a sample must survive before [`crate::Device::send`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The device's process being killed: each record is written to the
    /// operating system before `send` returns. A power cut may lose the
    /// last seconds.
    Process,
    /// A power cut: each record is flushed to the disk (`fdatasync`) before
    /// `send` returns. Costs a disk flush per sample.
    #[default]
    PowerCut,
}

/// What the folder held when it was opened.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Whether its numbering follows the hub's.
    pub confirmed: bool,
    /// The seq the next sealed batch gets.
    pub next_seq: u64,
    /// Sealed batches, oldest first (some may be acknowledged already:
    /// the hub's `Welcome` says which).
    pub batches: Vec<Batch>,
    /// Samples after the last seal.
    pub unsealed: Vec<Sample>,
    /// Bytes cut off a torn end.
    pub cut_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    number: u64,
    /// Bytes of records (and header): where the next record goes.
    bytes: u64,
    /// The file's length: with [`Durability::PowerCut`], zeros after the
    /// records, written ahead a step at a time, so that most appends do
    /// not grow the file and their flush to the disk need not write its
    /// new length too (measured: a quarter less per reading).
    allocated: u64,
    /// The highest seq sealed in it; 0: none.
    last_seq: u64,
}

/// An open outbox folder.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    durability: Durability,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    current: File,
    confirmed: bool,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

fn header(confirmed: bool, next_seq: u64) -> [u8; HEADER_LEN] {
    let mut bytes = [0; HEADER_LEN];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8] = if confirmed { CONFIRMED } else { 0 };
    bytes[9..].copy_from_slice(&next_seq.to_le_bytes());
    bytes
}

fn sample_record(sample: &Sample) -> [u8; SAMPLE_LEN] {
    let mut bytes = [0; SAMPLE_LEN];
    bytes[0] = SAMPLE;
    bytes[1..9].copy_from_slice(&sample.time_ms.to_le_bytes());
    bytes[9..11].copy_from_slice(&sample.metric.to_le_bytes());
    bytes[11..19].copy_from_slice(&sample.value.to_bits().to_le_bytes());
    let crc = CRC.checksum(&bytes[..19]);
    bytes[19..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn seal_record(seq: u64, count: u32) -> [u8; SEAL_LEN] {
    let mut bytes = [0; SEAL_LEN];
    bytes[0] = SEAL;
    bytes[1..9].copy_from_slice(&seq.to_le_bytes());
    bytes[9..13].copy_from_slice(&count.to_le_bytes());
    let crc = CRC.checksum(&bytes[..13]);
    bytes[13..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn checked(record: &[u8]) -> bool {
    let (body, crc) = record.split_at(record.len() - 4);
    CRC.checksum(body).to_le_bytes() == crc
}

/// The readings of `samples` as one batch numbered `seq`: the earliest
/// sample's time is the base.
pub fn batch_of(seq: u64, samples: &[Sample]) -> Batch {
    let base_ms = samples.iter().map(|s| s.time_ms).min().unwrap_or(0);
    Batch {
        seq,
        base_ms,
        readings: samples
            .iter()
            .map(|s| Reading {
                metric: s.metric,
                offset_ms: u32::try_from(s.time_ms - base_ms).unwrap_or(u32::MAX),
                value: s.value,
            })
            .collect(),
    }
}

/// One segment's content, as far as it is whole.
struct Parsed {
    confirmed: bool,
    next_seq: u64,
    /// Bytes up to the last whole record.
    good: u64,
    /// Where the bytes after it that are not zeros end (a torn record).
    torn_end: u64,
    bytes: u64,
}

/// Reads one segment into `replayed`; `None` when its header is torn (a
/// segment created just before a crash, holding nothing).
///
/// # Errors
/// The file cannot be read, or is not a segment: a file of someone else's
/// in the folder is never deleted.
fn parse(path: &Path, replayed: &mut Replayed, last_seq: &mut u64) -> io::Result<Option<Parsed>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let magic = &bytes[..bytes.len().min(MAGIC.len())];
    if magic != &MAGIC[..magic.len()] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not an outbox segment", path.display()),
        ));
    }
    if bytes.len() < HEADER_LEN {
        return Ok(None);
    }
    let confirmed = bytes[8] & CONFIRMED != 0;
    let mut next_seq = u64_at(&bytes, 9).max(replayed.next_seq);
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let rest = &bytes[at..];
        match rest[0] {
            SAMPLE if rest.len() >= SAMPLE_LEN && checked(&rest[..SAMPLE_LEN]) => {
                replayed.unsealed.push(Sample {
                    time_ms: u64_at(rest, 1),
                    metric: u16::from_le_bytes([rest[9], rest[10]]),
                    value: f64::from_bits(u64_at(rest, 11)),
                });
                at += SAMPLE_LEN;
            }
            SEAL if rest.len() >= SEAL_LEN && checked(&rest[..SEAL_LEN]) => {
                let seq = u64_at(rest, 1);
                let count = u32::from_le_bytes(rest[9..13].try_into().expect("4 bytes")) as usize;
                // The seal's samples are the last `count` unsealed ones;
                // fewer only if an older segment was lost.
                let from = replayed.unsealed.len().saturating_sub(count);
                let samples: Vec<Sample> = replayed.unsealed.drain(from..).collect();
                if !samples.is_empty() {
                    replayed.batches.push(batch_of(seq, &samples));
                }
                *last_seq = seq;
                next_seq = next_seq.max(seq + 1);
                at += SEAL_LEN;
            }
            _ => break,
        }
    }
    let torn_end = bytes[at..]
        .iter()
        .rposition(|b| *b != 0)
        .map_or(at, |last| at + last + 1);
    Ok(Some(Parsed {
        confirmed,
        next_seq,
        good: at as u64,
        torn_end: torn_end as u64,
        bytes: bytes.len() as u64,
    }))
}

impl Journal {
    /// Opens the outbox folder `dir` (created if missing), holding at most
    /// `max_bytes`, and reads back what it holds.
    ///
    /// # Errors
    /// The folder cannot be created, read or written.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        durability: Durability,
    ) -> io::Result<(Journal, Replayed)> {
        fs::create_dir_all(dir)?;
        let mut numbers = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                // A rewrite that did not finish: the segments it was to
                // replace are all still there.
                Some("tmp") => fs::remove_file(&path)?,
                Some("seg") => {
                    if let Some(number) = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        numbers.push(number);
                    }
                }
                _ => {}
            }
        }
        numbers.sort_unstable();
        // A confirmed segment is a finished rewrite: the provisional
        // segments before it are what it replaced.
        let mut headers = Vec::new();
        for &number in &numbers {
            let mut head = [0; HEADER_LEN];
            let read = File::open(segment_path(dir, number))?.read(&mut head)?;
            headers.push(read == HEADER_LEN && &head[..8] == MAGIC && head[8] & CONFIRMED != 0);
        }
        if let Some(first_confirmed) = headers.iter().position(|&c| c) {
            for &number in &numbers[..first_confirmed] {
                fs::remove_file(segment_path(dir, number))?;
            }
            numbers.drain(..first_confirmed);
        }

        let mut replayed = Replayed {
            next_seq: 1,
            ..Replayed::default()
        };
        let mut segments = VecDeque::new();
        let mut confirmed = false;
        let count = numbers.len();
        for (index, &number) in numbers.iter().enumerate() {
            let path = segment_path(dir, number);
            let mut last_seq = 0;
            let Some(parsed) = parse(&path, &mut replayed, &mut last_seq)? else {
                fs::remove_file(&path)?;
                continue;
            };
            if parsed.good < parsed.torn_end {
                replayed.cut_bytes += parsed.torn_end - parsed.good;
                let zeros = vec![0; (parsed.torn_end - parsed.good) as usize];
                let file = OpenOptions::new().write(true).open(&path)?;
                file.write_all_at(&zeros, parsed.good)?;
                file.sync_data()?;
                if index + 1 < count {
                    tracing::warn!(segment = %path.display(), "outbox segment damaged before its end");
                }
            }
            confirmed = parsed.confirmed;
            replayed.next_seq = parsed.next_seq;
            segments.push_back(Segment {
                number,
                bytes: parsed.good,
                allocated: parsed.bytes,
                last_seq,
            });
        }
        replayed.confirmed = confirmed;
        let segment_bytes = (max_bytes / 8).max(4 * 1024);
        let (current, segments) = match segments.back() {
            Some(last) => (
                OpenOptions::new()
                    .write(true)
                    .open(segment_path(dir, last.number))?,
                segments,
            ),
            None => {
                let (file, segment) = create_segment(
                    dir,
                    1,
                    &header(confirmed, replayed.next_seq),
                    durability,
                    false,
                )?;
                (file, VecDeque::from([segment]))
            }
        };
        let journal = Journal {
            dir: dir.to_owned(),
            durability,
            max_bytes,
            segment_bytes,
            segments,
            current,
            confirmed,
        };
        Ok((journal, replayed))
    }

    /// Bytes the folder holds.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes.max(s.allocated)).sum()
    }

    fn write(&mut self, record: &[u8]) -> io::Result<()> {
        let current = self.segments.back_mut().expect("a current segment");
        let end = current.bytes + record.len() as u64;
        if self.durability == Durability::PowerCut && end > current.allocated {
            let step = ALLOCATE_STEP
                .min(self.segment_bytes)
                .max(end - current.allocated);
            self.current
                .write_all_at(&vec![0; step as usize], current.allocated)?;
            current.allocated += step;
        }
        self.current.write_all_at(record, current.bytes)?;
        if self.durability == Durability::PowerCut {
            self.current.sync_data()?;
        }
        current.bytes += record.len() as u64;
        Ok(())
    }

    /// Appends a sample. When that would pass the bound, the oldest
    /// segments go first: returns the highest seq they held (the outbox
    /// drops those batches), if any went.
    ///
    /// # Errors
    /// Writing failed.
    pub fn append_sample(&mut self, sample: &Sample) -> io::Result<Option<u64>> {
        let mut dropped = None;
        while self.bytes() + SAMPLE_LEN as u64 > self.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments.pop_front().expect("more than one");
            fs::remove_file(segment_path(&self.dir, oldest.number))?;
            dropped = Some(oldest.last_seq);
        }
        self.write(&sample_record(sample))?;
        Ok(dropped)
    }

    /// Records that the last `count` samples form batch `seq`; a new
    /// segment starts after it once the current one is large enough.
    ///
    /// # Errors
    /// Writing failed.
    pub fn append_seal(&mut self, seq: u64, count: usize) -> io::Result<()> {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.write(&seal_record(seq, count))?;
        let current = self.segments.back_mut().expect("a current segment");
        current.last_seq = seq;
        if current.bytes >= self.segment_bytes {
            let number = current.number + 1;
            let (file, segment) = create_segment(
                &self.dir,
                number,
                &header(self.confirmed, seq + 1),
                self.durability,
                false,
            )?;
            self.current = file;
            self.segments.push_back(segment);
        }
        Ok(())
    }

    /// The hub holds every batch up to `seq`: segments holding nothing
    /// newer are deleted.
    ///
    /// # Errors
    /// Deleting failed.
    pub fn settle(&mut self, seq: u64) -> io::Result<()> {
        while self.segments.len() > 1
            && let Some(oldest) = self.segments.front()
            && oldest.last_seq <= seq
        {
            fs::remove_file(segment_path(&self.dir, oldest.number))?;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// Replaces everything with one confirmed segment holding `batches`
    /// and `unsealed`, numbered on from `next_seq`: once, when a new
    /// outbox learns the hub's numbering. Written aside and renamed, so a
    /// crash leaves either the old segments or the new one.
    ///
    /// # Errors
    /// Writing failed.
    pub fn rewrite(
        &mut self,
        next_seq: u64,
        batches: &[&Batch],
        unsealed: &[Sample],
    ) -> io::Result<()> {
        let number = self.segments.back().map_or(1, |s| s.number + 1);
        let final_path = segment_path(&self.dir, number);
        let mut bytes = header(true, next_seq).to_vec();
        let mut last_seq = 0;
        for batch in batches {
            for reading in &batch.readings {
                bytes.extend(sample_record(&Sample {
                    time_ms: batch.base_ms + u64::from(reading.offset_ms),
                    metric: reading.metric,
                    value: reading.value,
                }));
            }
            bytes.extend(seal_record(batch.seq, batch.readings.len() as u32));
            last_seq = batch.seq;
        }
        for sample in unsealed {
            bytes.extend(sample_record(sample));
        }
        let (file, mut segment) =
            create_segment(&self.dir, number, &bytes, Durability::PowerCut, true)?;
        segment.last_seq = last_seq;
        fs::rename(final_path.with_extension("tmp"), &final_path)?;
        sync_dir(&self.dir)?;
        for old in self.segments.drain(..) {
            fs::remove_file(segment_path(&self.dir, old.number))?;
        }
        self.segments.push_back(segment);
        self.current = file;
        self.confirmed = true;
        Ok(())
    }
}

/// Makes segment `number` holding `content` (a header, maybe records); a
/// rewrite's (`aside`) under `.tmp`, renamed by [`Journal::rewrite`].
fn create_segment(
    dir: &Path,
    number: u64,
    content: &[u8],
    durability: Durability,
    aside: bool,
) -> io::Result<(File, Segment)> {
    let path = match aside {
        true => segment_path(dir, number).with_extension("tmp"),
        false => segment_path(dir, number),
    };
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.write_all(content)?;
    if durability == Durability::PowerCut {
        file.sync_all()?;
        if !aside {
            sync_dir(dir)?;
        }
    }
    let segment = Segment {
        number,
        bytes: content.len() as u64,
        allocated: content.len() as u64,
        last_seq: 0,
    };
    Ok((file, segment))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time_ms: u64) -> Sample {
        Sample {
            time_ms,
            metric: 1,
            value: time_ms as f64 / 2.0,
        }
    }

    fn open(dir: &Path, max: u64) -> (Journal, Replayed) {
        Journal::open(dir, max, Durability::Process).unwrap()
    }

    #[test]
    fn samples_and_seals_read_back_as_the_same_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, replayed) = open(dir.path(), MIN_BYTES);
        assert_eq!((replayed.next_seq, replayed.confirmed), (1, false));
        for t in 0..5 {
            journal.append_sample(&sample(100 + t)).unwrap();
        }
        journal.append_seal(1, 5).unwrap();
        journal.append_sample(&sample(200)).unwrap();
        drop(journal);
        let (_, replayed) = open(dir.path(), MIN_BYTES);
        let expected = batch_of(1, &(100..105).map(sample).collect::<Vec<_>>());
        assert_eq!(replayed.batches, [expected]);
        assert_eq!(replayed.batches[0].base_ms, 100);
        assert_eq!(replayed.unsealed, [sample(200)]);
        assert_eq!(replayed.next_seq, 2);
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        // Without and with the zeros written ahead of the records.
        for durability in [Durability::Process, Durability::PowerCut] {
            let dir = tempfile::tempdir().unwrap();
            let open = || Journal::open(dir.path(), MIN_BYTES, durability).unwrap();
            let (mut journal, _) = open();
            journal.append_sample(&sample(1)).unwrap();
            journal.append_sample(&sample(2)).unwrap();
            drop(journal);
            // A power cut while the second record was written: its last
            // five bytes never reached the disk.
            let path = segment_path(dir.path(), 1);
            let end = (HEADER_LEN + 2 * SAMPLE_LEN) as u64;
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .write_all_at(&[0; 5], end - 5)
                .unwrap();
            let (mut journal, replayed) = open();
            assert_eq!(replayed.unsealed, [sample(1)], "{durability:?}");
            assert_eq!(replayed.cut_bytes, SAMPLE_LEN as u64 - 5);
            journal.append_sample(&sample(3)).unwrap();
            drop(journal);
            assert_eq!(open().1.unsealed, [sample(1), sample(3)], "{durability:?}");
        }
    }

    #[test]
    fn settled_segments_are_deleted_and_numbering_survives() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), MIN_BYTES);
        let mut seq = 0;
        while journal.segments.len() < 4 {
            seq += 1;
            journal.append_sample(&sample(seq)).unwrap();
            journal.append_seal(seq, 1).unwrap();
        }
        journal.settle(seq).unwrap();
        assert_eq!(journal.segments.len(), 1);
        drop(journal);
        let (_, replayed) = open(dir.path(), MIN_BYTES);
        assert!(replayed.batches.is_empty());
        assert_eq!(replayed.next_seq, seq + 1);
    }

    #[test]
    fn a_full_journal_drops_its_oldest_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), MIN_BYTES);
        let mut dropped = None;
        let mut seq = 0;
        while dropped.is_none() {
            seq += 1;
            dropped = journal.append_sample(&sample(seq)).unwrap();
            journal.append_seal(seq, 1).unwrap();
        }
        assert!(journal.bytes() <= MIN_BYTES);
        let first_kept = dropped.unwrap() + 1;
        drop(journal);
        let (_, replayed) = open(dir.path(), MIN_BYTES);
        assert_eq!(replayed.batches[0].seq, first_kept);
        assert_eq!(replayed.batches.last().unwrap().seq, seq);
    }

    #[test]
    fn a_rewrite_confirms_the_numbering_and_replaces_the_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), MIN_BYTES);
        journal.append_sample(&sample(5)).unwrap();
        journal.append_seal(1, 1).unwrap();
        journal.append_sample(&sample(6)).unwrap();
        let renumbered = batch_of(41, &[sample(5)]);
        journal.rewrite(42, &[&renumbered], &[sample(6)]).unwrap();
        journal.append_sample(&sample(7)).unwrap();
        drop(journal);
        let (_, replayed) = open(dir.path(), MIN_BYTES);
        assert!(replayed.confirmed);
        assert_eq!(replayed.batches, [renumbered]);
        assert_eq!(replayed.unsealed, [sample(6), sample(7)]);
        assert_eq!(replayed.next_seq, 42);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_that_is_no_segment_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("00000000000000000001.seg");
        fs::write(&foreign, b"someone else's data").unwrap();
        let err = Journal::open(dir.path(), MIN_BYTES, Durability::Process).unwrap_err();
        assert!(
            err.to_string().contains("is not an outbox segment"),
            "{err}"
        );
        assert_eq!(fs::read(&foreign).unwrap(), b"someone else's data");
        // A header torn at creation (a prefix of it) is a crash, not a
        // stranger's file: it held nothing and goes.
        fs::write(&foreign, &MAGIC[..3]).unwrap();
        let (_, replayed) = open(dir.path(), MIN_BYTES);
        assert!(replayed.unsealed.is_empty());
    }

    #[test]
    fn an_unfinished_rewrite_leaves_the_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), MIN_BYTES);
        journal.append_sample(&sample(5)).unwrap();
        drop(journal);
        fs::write(dir.path().join("00000000000000000002.tmp"), b"half").unwrap();
        let (_, replayed) = open(dir.path(), MIN_BYTES);
        assert_eq!(replayed.unsealed, [sample(5)]);
        assert!(!replayed.confirmed);
        assert!(!dir.path().join("00000000000000000002.tmp").exists());
    }
}
