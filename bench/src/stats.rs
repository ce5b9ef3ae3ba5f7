//! Small statistics for repeated measurements and latency samples.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The median and the spread (min, max) of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Repeated {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Repeated {
    pub fn of(values: &[f64]) -> Repeated {
        let mut sorted: Vec<f64> = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Repeated {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }

    /// Of one measure of each run.
    pub fn over<T>(runs: &[T], measure: impl Fn(&T) -> f64) -> Repeated {
        Repeated::of(&runs.iter().map(measure).collect::<Vec<_>>())
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }

    pub fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

/// Latency samples in µs, to 3 significant digits (percentiles within
/// 0.1 %), from 1 µs to a minute; longer ones count as a minute.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records the time from `sent_us` (µs since the epoch) until now.
pub fn record_since(histogram: &mut Histogram<u64>, sent_us: f64) {
    histogram.saturating_record((now_us() - sent_us).max(0.0) as u64);
}

/// Latency percentiles in milliseconds.
pub fn percentiles_ms(histogram: &Histogram<u64>, quantiles: &[f64]) -> Vec<f64> {
    quantiles
        .iter()
        .map(|&q| histogram.value_at_quantile(q) as f64 / 1_000.0)
        .collect()
}

/// Microseconds since the Unix epoch, as an f64 (exact far beyond 2100).
pub fn now_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as f64)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Repeated::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Repeated::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn percentiles_are_within_a_tenth_of_a_percent() {
        let mut histogram = latency_histogram();
        for ms in 1..=100 {
            histogram.record(ms * 1_000).unwrap();
        }
        let p = percentiles_ms(&histogram, &[0.5, 0.99]);
        assert!((50.0..=50.05).contains(&p[0]), "{p:?}");
        assert!((99.0..=99.1).contains(&p[1]), "{p:?}");
    }
}
