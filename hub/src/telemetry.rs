//! Counters for operators, served as Prometheus text at `GET /metrics`.
//!
//! Plain atomics: every update is one relaxed add, cheap enough for the
//! per-frame path. Names are stable (dashboards depend on them).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the rows-per-commit histogram buckets.
const COMMIT_ROW_BUCKETS: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

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
}

impl Reject {
    const ALL: [Reject; 7] = [
        Reject::Unauthorized,
        Reject::Protocol,
        Reject::HelloTimeout,
        Reject::Replaced,
        Reject::Revoked,
        Reject::IdleTimeout,
        Reject::Storage,
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
        }
    }
}

/// The hub's counters.
#[derive(Debug, Default)]
pub struct Counters {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    readings_in: AtomicU64,
    rejects: [AtomicU64; Reject::ALL.len()],
    commits: AtomicU64,
    commit_failures: AtomicU64,
    rows_committed: AtomicU64,
    commit_rows_buckets: [AtomicU64; COMMIT_ROW_BUCKETS.len()],
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

    pub fn record_commit(&self, rows: usize) {
        let rows = rows as u64;
        self.commits.fetch_add(1, Relaxed);
        self.rows_committed.fetch_add(rows, Relaxed);
        for (bound, bucket) in COMMIT_ROW_BUCKETS.iter().zip(&self.commit_rows_buckets) {
            if rows <= *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
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
            self.commits.load(Relaxed),
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
            self.rows_committed.load(Relaxed),
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
        let _ = writeln!(
            out,
            "# HELP hub_commit_rows Readings per writer transaction.\n# TYPE hub_commit_rows histogram"
        );
        for (bound, bucket) in COMMIT_ROW_BUCKETS.iter().zip(&self.commit_rows_buckets) {
            let _ = writeln!(
                out,
                "hub_commit_rows_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let commits = self.commits.load(Relaxed);
        let _ = writeln!(out, "hub_commit_rows_bucket{{le=\"+Inf\"}} {commits}");
        let _ = writeln!(
            out,
            "hub_commit_rows_sum {}",
            self.rows_committed.load(Relaxed)
        );
        let _ = writeln!(out, "hub_commit_rows_count {commits}");
        out
    }
}
