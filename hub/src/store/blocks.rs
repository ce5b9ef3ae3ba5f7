//! Compacted blocks: one metric's readings of one slab of storage
//! positions, as the `sample_blocks` table holds them (migration 0004).
//!
//! A block is JSON text that SQLite reads itself (`json_each`, the
//! `compacted_samples` view), so `sqlite3` users see compacted readings in
//! `readings` like any other. Each reading is `[pos residual, time residual,
//! value]` around a straight line through the block (`first + i * step`):
//! devices sample at a steady rate and the fleet interleaves steadily, so
//! the residuals are a few digits and a reading costs about 20 bytes.

/// Storage positions per slab: compaction moves one slab at a time, and
/// every block belongs to one slab, so a read in storage order from any
/// position needs the blocks of at most two slabs.
pub const SLAB: i64 = 100_000;

/// The first position of the slab that holds `pos` (positions start at 1).
pub fn slab_start(pos: i64) -> i64 {
    (pos - 1).div_euclid(SLAB) * SLAB + 1
}

/// The last position of the slab that holds `pos`.
pub fn slab_end(pos: i64) -> i64 {
    slab_start(pos) + SLAB - 1
}

/// One stored reading as compaction moves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub pos: i64,
    pub ts_ms: i64,
    pub value: Option<f64>,
}

/// A `sample_blocks` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub first_pos: i64,
    pub last_pos: i64,
    pub pos_step: i64,
    pub first_ms: i64,
    pub ms_step: i64,
    pub min_ms: i64,
    pub max_ms: i64,
    pub n: i64,
    pub readings: String,
}

impl Block {
    /// The block of `readings`, which are one metric's, in position order,
    /// and not empty.
    pub fn encode(readings: &[Reading]) -> Block {
        let (first, last) = (readings[0], readings[readings.len() - 1]);
        let steps = i64::try_from(readings.len() - 1).unwrap_or(i64::MAX).max(1);
        let pos_step = (last.pos - first.pos) / steps;
        let ms_step = (last.ts_ms - first.ts_ms) / steps;
        let mut text = String::with_capacity(readings.len() * 20 + 2);
        text.push('[');
        let mut expected_pos = first.pos;
        let mut expected_ms = first.ts_ms;
        for (i, reading) in readings.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push('[');
            push_int(&mut text, reading.pos - expected_pos);
            text.push(',');
            push_int(&mut text, reading.ts_ms - expected_ms);
            text.push(',');
            match reading.value {
                // serde_json writes the shortest text that reads back as the
                // same f64 (`21.374`, `1e300`, `2.0`: never a bare integer,
                // which SQLite would give back as an INTEGER).
                Some(value) if value.is_finite() => text
                    .push_str(&serde_json::to_string(&value).expect("a finite f64 is valid JSON")),
                _ => text.push_str("null"),
            }
            text.push(']');
            expected_pos += pos_step;
            expected_ms += ms_step;
        }
        text.push(']');
        Block {
            first_pos: first.pos,
            last_pos: last.pos,
            pos_step,
            first_ms: first.ts_ms,
            ms_step,
            min_ms: readings
                .iter()
                .map(|r| r.ts_ms)
                .min()
                .unwrap_or(first.ts_ms),
            max_ms: readings
                .iter()
                .map(|r| r.ts_ms)
                .max()
                .unwrap_or(first.ts_ms),
            n: i64::try_from(readings.len()).unwrap_or(i64::MAX),
            readings: text,
        }
    }
}

/// A block's readings, as `Block::encode` wrote them and the
/// `compacted_samples` view reads them: the view's arithmetic, for readers
/// that decode whole slabs at once.
///
/// # Errors
/// `text` is not a block's JSON.
pub fn decode(
    first_pos: i64,
    pos_step: i64,
    first_ms: i64,
    ms_step: i64,
    text: &str,
) -> Result<Vec<Reading>, serde_json::Error> {
    let residuals: Vec<(i64, i64, Option<f64>)> = serde_json::from_str(text)?;
    Ok((0..)
        .zip(residuals)
        .map(|(i, (pos, ts, value)): (i64, _)| Reading {
            pos: first_pos + i * pos_step + pos,
            ts_ms: first_ms + i * ms_step + ts,
            value,
        })
        .collect())
}

fn push_int(text: &mut String, value: i64) {
    use std::fmt::Write;
    let _ = write!(text, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_are_aligned_spans_of_positions() {
        assert_eq!((slab_start(1), slab_end(1)), (1, SLAB));
        assert_eq!((slab_start(SLAB), slab_end(SLAB)), (1, SLAB));
        assert_eq!(slab_start(SLAB + 1), SLAB + 1);
        assert_eq!(slab_end(3 * SLAB + 7), 4 * SLAB);
    }

    #[test]
    fn a_steady_metric_costs_little_more_than_its_values() {
        let readings: Vec<Reading> = (0..60)
            .map(|i| Reading {
                pos: 1_000 + i * 5_000 + (i % 3),
                ts_ms: 1_700_000_000_000 + i * 1_000,
                value: Some(21.5 + (i as f64) / 1000.0),
            })
            .collect();
        let block = Block::encode(&readings);
        assert_eq!(block.n, 60);
        assert_eq!(
            (block.first_pos, block.last_pos),
            (1_000, 1_000 + 59 * 5_000 + 2)
        );
        assert_eq!(block.ms_step, 1_000);
        assert!(
            block.readings.starts_with("[[0,0,21.5],[1,0,21.501],"),
            "{}",
            block.readings
        );
        assert!(
            block.readings.len() < 60 * 14,
            "{} bytes",
            block.readings.len()
        );
    }

    #[test]
    fn a_block_decodes_to_what_it_encoded() {
        let readings: Vec<Reading> = (0..500)
            .map(|i: i64| Reading {
                pos: 7 + i * 37 + (i * i) % 11,
                ts_ms: 1_700_000_000_000 + i * 997 - (i % 5) * 3_000,
                value: (i % 9 != 0).then(|| (i as f64).sqrt() * -1e-3),
            })
            .collect();
        let block = Block::encode(&readings);
        let back = decode(
            block.first_pos,
            block.pos_step,
            block.first_ms,
            block.ms_step,
            &block.readings,
        )
        .unwrap();
        assert_eq!(back, readings);
    }

    #[test]
    fn missing_values_are_null_and_whole_values_stay_real() {
        let block = Block::encode(&[
            Reading {
                pos: 7,
                ts_ms: 5,
                value: None,
            },
            Reading {
                pos: 9,
                ts_ms: 1,
                value: Some(2.0),
            },
        ]);
        assert_eq!(block.readings, "[[0,0,null],[0,0,2.0]]");
        assert_eq!(
            (block.pos_step, block.ms_step, block.min_ms, block.max_ms),
            (2, -4, 1, 5)
        );
    }
}
