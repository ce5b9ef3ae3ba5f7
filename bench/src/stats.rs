//! Small statistics for repeated measurements and latency samples.

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

/// Latency percentiles in milliseconds from samples in microseconds.
pub fn percentiles_ms(samples: &mut [f64], quantiles: &[f64]) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    quantiles
        .iter()
        .map(|q| {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] / 1_000.0
        })
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
    fn percentiles_pick_by_rank() {
        let mut samples: Vec<f64> = (1..=100).map(|v| v as f64 * 1_000.0).collect();
        assert_eq!(percentiles_ms(&mut samples, &[0.5, 0.99]), vec![50.0, 99.0]);
    }
}
