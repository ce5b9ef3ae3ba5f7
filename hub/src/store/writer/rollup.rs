//! Roll-ups as the writer keeps them: a commit's readings aggregated in
//! memory into one-minute and one-hour buckets per metric, so the commit
//! touches each bucket once (one UPSERT), whatever number of its readings
//! fall in it. Late readings land in their own (old) bucket like any other.

use std::collections::BTreeMap;

use crate::commits::Committed;

/// A roll-up tier: its table and its bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub table: &'static str,
    pub width_ms: i64,
}

pub const MINUTES: Tier = Tier {
    table: "rollups_1m",
    width_ms: 60_000,
};
pub const HOURS: Tier = Tier {
    table: "rollups_1h",
    width_ms: 3_600_000,
};

/// What a commit adds to one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Every reading, NULL values included.
    pub n: i64,
    /// Readings with a value.
    pub n_values: i64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl Bucket {
    fn of(ts_ms: i64, value: Option<f64>) -> Bucket {
        Bucket {
            n: 1,
            n_values: i64::from(value.is_some()),
            sum: value,
            min: value,
            max: value,
            first_ms: ts_ms,
            last_ms: ts_ms,
        }
    }

    fn add(&mut self, ts_ms: i64, value: Option<f64>) {
        self.n += 1;
        self.first_ms = self.first_ms.min(ts_ms);
        self.last_ms = self.last_ms.max(ts_ms);
        if let Some(value) = value {
            self.n_values += 1;
            self.sum = Some(self.sum.unwrap_or(0.0) + value);
            self.min = Some(self.min.map_or(value, |min| min.min(value)));
            self.max = Some(self.max.map_or(value, |max| max.max(value)));
        }
    }
}

/// A commit's buckets of one tier, by `(metric, bucket start)`, in key
/// order (which is the table's: neighbouring upserts touch neighbouring
/// pages).
pub fn aggregate(rows: &[Committed], tier: Tier) -> BTreeMap<(i64, i64), Bucket> {
    let mut buckets: BTreeMap<(i64, i64), Bucket> = BTreeMap::new();
    for row in rows {
        let sample = &row.sample;
        let start = sample.ts_ms - sample.ts_ms.rem_euclid(tier.width_ms);
        buckets
            .entry((sample.metric, start))
            .and_modify(|bucket| bucket.add(sample.ts_ms, sample.value))
            .or_insert_with(|| Bucket::of(sample.ts_ms, sample.value));
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commits::Sample;

    fn row(metric: i64, ts_ms: i64, value: Option<f64>) -> Committed {
        Committed {
            pos: 0,
            sample: Sample {
                metric,
                ts_ms,
                value,
            },
        }
    }

    #[test]
    fn readings_fall_in_their_buckets_and_nulls_count_only_in_n() {
        let rows = [
            row(1, 60_000, Some(2.0)),
            row(1, 119_999, Some(4.0)),
            row(1, 90_000, None),
            row(1, 120_000, Some(1.0)),
            row(2, 60_500, Some(-3.0)),
        ];
        let minutes = aggregate(&rows, MINUTES);
        assert_eq!(minutes.len(), 3);
        let first = minutes[&(1, 60_000)];
        assert_eq!((first.n, first.n_values), (3, 2));
        assert_eq!(
            (first.sum, first.min, first.max),
            (Some(6.0), Some(2.0), Some(4.0))
        );
        assert_eq!((first.first_ms, first.last_ms), (60_000, 119_999));
        assert_eq!(minutes[&(1, 120_000)].n, 1);
        assert_eq!(minutes[&(2, 60_000)].min, Some(-3.0));
        let hours = aggregate(&rows, HOURS);
        assert_eq!(hours.len(), 2);
        assert_eq!(hours[&(1, 0)].n, 4);
    }

    #[test]
    fn a_bucket_of_nulls_has_no_value_statistics() {
        let minutes = aggregate(&[row(1, 5, None), row(1, 6, None)], MINUTES);
        let bucket = minutes[&(1, 0)];
        assert_eq!((bucket.n, bucket.n_values), (2, 0));
        assert_eq!((bucket.sum, bucket.min, bucket.max), (None, None, None));
    }
}
