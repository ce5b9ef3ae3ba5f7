//! Counters for operators, served as Prometheus text at `GET /metrics`.
//!
//! Plain atomics: every update is one relaxed add, cheap enough for the
//! per-frame path. Names are stable (dashboards depend on them).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the rows-per-commit histogram buckets.
const COMMIT_ROW_BUCKETS: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Upper bounds, in microseconds, of the commit-duration histogram buckets:
/// from one fsync on a fast disk to a checkpoint on a slow one.
const COMMIT_MICROS_BUCKETS: [u64; 10] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A cumulative Prometheus histogram over integer observations.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: [u64; N],
    buckets: [AtomicU64; N],
    sum: AtomicU64,
    count: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: [u64; N]) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if value <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
    }

    /// Writes the histogram as `name`, dividing bounds and sum by `scale`
    /// (1e6 to show microseconds as seconds).
    fn render(&self, out: &mut String, name: &str, help: &str, scale: f64) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let le = *bound as f64 / scale;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", bucket.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum.load(Relaxed) as f64 / scale;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Why a device connection was refused or closed by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Unauthorized,
    Protocol,
    HelloTimeout,
    Replaced,
    Revoked,
    IdleTimeout,
    Storage,
    RateLimited,
    TooManyDevices,
}

impl Reject {
    const ALL: [Reject; 9] = [
        Reject::Unauthorized,
        Reject::Protocol,
        Reject::HelloTimeout,
        Reject::Replaced,
        Reject::Revoked,
        Reject::IdleTimeout,
        Reject::Storage,
        Reject::RateLimited,
        Reject::TooManyDevices,
    ];

    fn label(self) -> &'static str {
        match self {
            Reject::Unauthorized => "unauthorized",
            Reject::Protocol => "protocol",
            Reject::HelloTimeout => "hello_timeout",
            Reject::Replaced => "replaced",
            Reject::Revoked => "revoked",
            Reject::IdleTimeout => "idle_timeout",
            Reject::Storage => "storage",
            Reject::RateLimited => "rate_limited",
            Reject::TooManyDevices => "too_many_devices",
        }
    }
}

/// The hub's counters.
#[derive(Debug)]
pub struct Counters {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    readings_in: AtomicU64,
    rejects: [AtomicU64; Reject::ALL.len()],
    commit_failures: AtomicU64,
    commit_rows: Histogram<{ COMMIT_ROW_BUCKETS.len() }>,
    commit_micros: Histogram<{ COMMIT_MICROS_BUCKETS.len() }>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections_total: AtomicU64::default(),
            connections_open: AtomicU64::default(),
            frames_in: AtomicU64::default(),
            bytes_in: AtomicU64::default(),
            readings_in: AtomicU64::default(),
            rejects: Default::default(),
            commit_failures: AtomicU64::default(),
            commit_rows: Histogram::new(COMMIT_ROW_BUCKETS),
            commit_micros: Histogram::new(COMMIT_MICROS_BUCKETS),
        }
    }
}

impl Counters {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Relaxed);
        self.connections_open.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    pub fn frame_in(&self, bytes: usize) {
        self.frames_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn readings_in(&self, count: usize) {
        self.readings_in.fetch_add(count as u64, Relaxed);
    }

    pub fn reject(&self, why: Reject) {
        self.rejects[why as usize].fetch_add(1, Relaxed);
    }

    /// A writer transaction committed `rows` readings and took `took` from
    /// `BEGIN` to the end of `COMMIT` (its fsync, and any checkpoint).
    pub fn record_commit(&self, rows: usize, took: Duration) {
        self.commit_rows.observe(rows as u64);
        self.commit_micros
            .observe(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn record_commit_failure(&self) {
        self.commit_failures.fetch_add(1, Relaxed);
    }

    /// The counters in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        counter(
            "hub_connections_total",
            "Device connections accepted.",
            "counter",
            self.connections_total.load(Relaxed),
        );
        counter(
            "hub_connections_open",
            "Device connections open now.",
            "gauge",
            self.connections_open.load(Relaxed),
        );
        counter(
            "hub_frames_received_total",
            "Frames received from devices.",
            "counter",
            self.frames_in.load(Relaxed),
        );
        counter(
            "hub_bytes_received_total",
            "Frame bytes received from devices.",
            "counter",
            self.bytes_in.load(Relaxed),
        );
        counter(
            "hub_readings_received_total",
            "Readings received from devices.",
            "counter",
            self.readings_in.load(Relaxed),
        );
        counter(
            "hub_commits_total",
            "Writer transactions committed.",
            "counter",
            self.commit_rows.count.load(Relaxed),
        );
        counter(
            "hub_commit_failures_total",
            "Writer transactions that failed.",
            "counter",
            self.commit_failures.load(Relaxed),
        );
        counter(
            "hub_rows_committed_total",
            "Readings committed to storage.",
            "counter",
            self.commit_rows.sum.load(Relaxed),
        );

        let _ = writeln!(
            out,
            "# HELP hub_rejects_total Device connections refused or closed by the hub, by reason.\n# TYPE hub_rejects_total counter"
        );
        for why in Reject::ALL {
            let _ = writeln!(
                out,
                "hub_rejects_total{{reason=\"{}\"}} {}",
                why.label(),
                self.rejects[why as usize].load(Relaxed)
            );
        }
        self.commit_rows.render(
            &mut out,
            "hub_commit_rows",
            "Readings per writer transaction.",
            1.0,
        );
        self.commit_micros.render(
            &mut out,
            "hub_commit_duration_seconds",
            "Writer transaction time, BEGIN to durable COMMIT.",
            1e6,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_and_scaled() {
        let counters = Counters::default();
        counters.record_commit(5, Duration::from_micros(700));
        counters.record_commit(500, Duration::from_millis(30));
        let text = counters.render();
        for line in [
            "hub_commits_total 2",
            "hub_rows_committed_total 505",
            "hub_commit_rows_bucket{le=\"1\"} 0",
            "hub_commit_rows_bucket{le=\"10\"} 1",
            "hub_commit_rows_bucket{le=\"1000\"} 2",
            "hub_commit_rows_bucket{le=\"+Inf\"} 2",
            "hub_commit_duration_seconds_bucket{le=\"0.0005\"} 0",
            "hub_commit_duration_seconds_bucket{le=\"0.001\"} 1",
            "hub_commit_duration_seconds_bucket{le=\"0.025\"} 1",
            "hub_commit_duration_seconds_bucket{le=\"0.05\"} 2",
            "hub_commit_duration_seconds_sum 0.0307",
            "hub_commit_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
