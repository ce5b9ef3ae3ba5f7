//! Whether the writer's two threads still run. One that stops unexpectedly
//! (a panic) records why; sessions, the device endpoint and `/healthz` watch
//! it, so nothing waits for an answer that cannot come and a supervisor can
//! see what broke.
//!
//! Tests can make a thread fail on purpose: `HUB_TEST_FAULT` (read by debug
//! builds only, never by a release build) names the thread and the commit,
//! `writer-panic-at-commit=2` or `publisher-panic-at-commit=2`; or it kills
//! the process (an abort, as good as a kill -9) in the middle of the
//! database's conversion (`abort-while-converting`) or of a vacuum step
//! (`abort-in-vacuum-step`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio_util::sync::CancellationToken;

/// The writer's health, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WriterHealth(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    stopped: CancellationToken,
    reason: OnceLock<String>,
    /// Set while commits fail (a full disk, say), with the last error.
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl WriterHealth {
    /// Records that a thread stopped; the first reason is kept.
    pub(super) fn fail(&self, reason: String) {
        tracing::error!(%reason, "the storage writer stopped: nothing more can be stored");
        let _ = self.0.reason.set(reason);
        self.0.stopped.cancel();
    }

    /// The last commit failed with `error`.
    pub(super) fn commit_failed(&self, error: String) {
        *self
            .0
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
        self.0.failing.store(true, Ordering::Release);
    }

    /// A commit succeeded: storage works again.
    pub(super) fn commit_succeeded(&self) {
        if self.0.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("commits succeed again");
            *self
                .0
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// Why the last commit failed, while commits keep failing.
    pub fn commit_failure(&self) -> Option<String> {
        if !self.0.failing.load(Ordering::Acquire) {
            return None;
        }
        self.0
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.0.reason.get().map(String::as_str)
    }

    /// Completes once the writer has stopped unexpectedly (never, while it
    /// runs).
    pub async fn failed(&self) {
        self.0.stopped.cancelled().await;
    }
}

/// Runs a thread's `work`, turning a panic into a recorded failure of the
/// `thread` it names.
pub(super) fn guard(health: &WriterHealth, thread: &str, work: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        health.fail(format!("the {thread} thread panicked: {message}"));
    }
}

/// Failures a test asked for, by commit number (from 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Faults {
    pub writer_panics_at: Option<u64>,
    pub publisher_panics_at: Option<u64>,
    pub abort_while_converting: bool,
    pub abort_in_vacuum_step: bool,
}

impl Faults {
    /// What `HUB_TEST_FAULT` asks for, in a debug build; nothing otherwise.
    pub fn from_env() -> Self {
        if cfg!(debug_assertions)
            && let Ok(text) = std::env::var("HUB_TEST_FAULT")
        {
            return Faults::parse(&text);
        }
        Faults::default()
    }

    fn parse(text: &str) -> Self {
        let mut faults = Faults::default();
        let at = |value: &str| value.parse().ok();
        if let Some(n) = text.strip_prefix("writer-panic-at-commit=") {
            faults.writer_panics_at = at(n);
        } else if let Some(n) = text.strip_prefix("publisher-panic-at-commit=") {
            faults.publisher_panics_at = at(n);
        } else if text == "abort-while-converting" {
            faults.abort_while_converting = true;
        } else if text == "abort-in-vacuum-step" {
            faults.abort_in_vacuum_step = true;
        }
        faults
    }
}

/// Panics if `fault` is set for commit `n`: a test's way to kill a thread.
pub(super) fn trip(fault: Option<u64>, n: u64, thread: &str) {
    if fault == Some(n) {
        panic!("HUB_TEST_FAULT: the {thread} fails at commit {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_name_a_thread_and_a_commit() {
        assert_eq!(
            Faults::parse("writer-panic-at-commit=2").writer_panics_at,
            Some(2)
        );
        assert_eq!(
            Faults::parse("publisher-panic-at-commit=3").publisher_panics_at,
            Some(3)
        );
        assert!(Faults::parse("abort-in-vacuum-step").abort_in_vacuum_step);
        assert!(Faults::parse("abort-while-converting").abort_while_converting);
        assert_eq!(Faults::parse("nonsense"), Faults::default());
    }

    #[tokio::test]
    async fn a_panicking_thread_is_recorded_with_its_message() {
        let health = WriterHealth::default();
        assert_eq!(health.failure(), None);
        std::thread::scope(|scope| {
            scope.spawn(|| guard(&health, "writer", || panic!("disk on fire")));
        });
        assert_eq!(
            health.failure(),
            Some("the writer thread panicked: disk on fire")
        );
        health.failed().await;
    }
}
