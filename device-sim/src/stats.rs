//! Fleet-wide counters and the ack round-trip histogram, shared by every
//! device task. Atomics only: ten thousand devices update them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Histogram buckets per doubling: bucket bounds grow by 2^(1/4) ≈ 19%,
/// which is the precision of the reported percentiles.
const SUB_BUCKETS: f64 = 4.0;
/// Covers 1 µs to about 70 minutes.
const BUCKETS: usize = 128;

/// Counters of a running fleet.
#[derive(Debug)]
pub struct Stats {
    pub connected: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub commands: AtomicU64,
    rtt_us: [AtomicU64; BUCKETS],
    last_error: Mutex<Option<String>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connected: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            rtt_us: std::array::from_fn(|_| AtomicU64::new(0)),
            last_error: Mutex::new(None),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    ((us as f64).log2() * SUB_BUCKETS)
        .ceil()
        .min((BUCKETS - 1) as f64) as usize
}

fn upper_bound_us(bucket: usize) -> f64 {
    (bucket as f64 / SUB_BUCKETS).exp2()
}

/// Round-trip percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RttSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// Remembers the most recent failure, for the progress line and summary.
    pub fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    /// The most recent failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// Records one batch's send-to-ack time.
    pub fn record_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_us[bucket_of(us)].fetch_add(1, Relaxed);
    }

    /// Percentiles of every round trip so far (upper bucket bounds).
    pub fn rtt(&self) -> RttSummary {
        let counts: Vec<u64> = self.rtt_us.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let at = |quantile: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return upper_bound_us(bucket) / 1_000.0;
                }
            }
            0.0
        };
        RttSummary {
            count: total,
            p50_ms: round3(at(0.5)),
            p99_ms: round3(at(0.99)),
            max_ms: round3(at(1.0)),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let stats = Stats::default();
        for ms in 1..=100 {
            stats.record_rtt(Duration::from_millis(ms));
        }
        let rtt = stats.rtt();
        assert_eq!(rtt.count, 100);
        assert!((50.0..=60.0).contains(&rtt.p50_ms), "{rtt:?}");
        assert!((99.0..=118.0).contains(&rtt.p99_ms), "{rtt:?}");
        assert!(rtt.max_ms >= 100.0);
    }

    #[test]
    fn no_samples_means_zeroes() {
        assert_eq!(Stats::default().rtt().p99_ms, 0.0);
    }
}
