//! Fleet-wide counters and the ack round-trip histogram, shared by every
//! device task. Counters are atomics (ten thousand devices update them);
//! the histogram is an HDR histogram behind a mutex held for one record.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Significant digits the round-trip histogram keeps: percentiles are
/// within 0.1 % of the truth.
const RTT_DIGITS: u8 = 3;
/// The longest round trip told apart, in µs (an hour); longer ones count
/// as an hour.
const RTT_MAX_US: u64 = 3_600_000_000;

/// Counters of a running fleet.
#[derive(Debug)]
pub struct Stats {
    pub connected: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub dropped: AtomicU64,
    pub reconnects: AtomicU64,
    pub commands: AtomicU64,
    /// Configurations applied and refused, and the highest version any
    /// device of the fleet runs.
    pub configs_applied: AtomicU64,
    pub configs_refused: AtomicU64,
    pub config_version: AtomicU64,
    /// Send-to-ack times, in µs.
    rtt_us: Mutex<Histogram<u64>>,
    last_error: Mutex<Option<Failure>>,
}

/// A device's failure: which device, and why (the same words for every
/// device that fails the same way).
#[derive(Debug, Clone)]
struct Failure {
    device: String,
    reason: String,
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
            configs_applied: AtomicU64::new(0),
            configs_refused: AtomicU64::new(0),
            config_version: AtomicU64::new(0),
            rtt_us: Mutex::new(
                Histogram::new_with_bounds(1, RTT_MAX_US, RTT_DIGITS)
                    .expect("valid histogram bounds"),
            ),
            last_error: Mutex::new(None),
        }
    }
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
    /// Remembers `device`'s failure, for the progress line and summary,
    /// and logs it when its reason is not the one before: once per change
    /// of reason, not once per retry of each of ten thousand devices.
    pub fn set_last_error(&self, device: &str, reason: String) {
        let mut last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_ref().is_none_or(|last| last.reason != reason) {
            tracing::warn!(device, "{reason}");
        }
        *last = Some(Failure {
            device: device.to_owned(),
            reason,
        });
    }

    /// The most recent failure, `device: reason`, if any.
    pub fn last_error(&self) -> Option<String> {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.as_ref().map(|f| format!("{}: {}", f.device, f.reason))
    }

    /// The reason of the most recent failure, if any.
    pub fn last_reason(&self) -> Option<String> {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.as_ref().map(|f| f.reason.clone())
    }

    fn rtt_histogram(&self) -> MutexGuard<'_, Histogram<u64>> {
        self.rtt_us.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one batch's send-to-ack time.
    pub fn record_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        self.rtt_histogram().saturating_record(us);
    }

    /// Percentiles of every round trip so far.
    pub fn rtt(&self) -> RttSummary {
        let histogram = self.rtt_histogram();
        let ms = |us: u64| round3(us as f64 / 1_000.0);
        RttSummary {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            max_ms: ms(histogram.max()),
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
    fn percentiles_are_within_a_tenth_of_a_percent_of_the_truth() {
        let stats = Stats::default();
        for ms in 1..=100 {
            stats.record_rtt(Duration::from_millis(ms));
        }
        let rtt = stats.rtt();
        assert_eq!(rtt.count, 100);
        assert!((50.0..=50.05).contains(&rtt.p50_ms), "{rtt:?}");
        assert!((99.0..=99.1).contains(&rtt.p99_ms), "{rtt:?}");
        assert!((100.0..=100.1).contains(&rtt.max_ms), "{rtt:?}");
    }

    #[test]
    fn no_samples_means_zeroes() {
        assert_eq!(Stats::default().rtt().p99_ms, 0.0);
    }
}
