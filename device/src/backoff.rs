//! Reconnect delays: exponential backoff with full jitter, capped.
//!
//! Full jitter (a uniformly random delay between zero and the exponential
//! ceiling) spreads a fleet's reconnects out, so ten thousand devices that
//! lost the hub at the same instant do not all come back at the same instant.

use std::time::Duration;

/// The reconnect schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// No delay is longer than this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling before the `attempt`-th retry (0-based): `base · 2^attempt`,
    /// at most `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the `attempt`-th retry, given `unit`, a random number
    /// in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn the_ceiling_doubles_until_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (0..6).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        assert_eq!(
            Backoff::default().ceiling(u32::MAX),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn delays_never_exceed_the_ceiling() {
        let backoff = Backoff::default();
        let mut rng = Rng::new(1);
        for attempt in 0..40 {
            assert!(backoff.delay(attempt, rng.unit()) <= backoff.ceiling(attempt));
        }
    }

    #[test]
    fn a_fleet_reconnecting_at_once_is_spread_over_the_whole_window() {
        // 10,000 devices at their 8th attempt: the delays should cover the
        // window evenly, not bunch up.
        let backoff = Backoff::default();
        let ceiling = backoff.ceiling(8).as_secs_f64();
        let mut rng = Rng::new(7);
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let share = backoff.delay(8, rng.unit()).as_secs_f64() / ceiling;
            buckets[((share * 10.0) as usize).min(9)] += 1;
        }
        for (i, count) in buckets.iter().enumerate() {
            assert!(
                (800..1_200).contains(count),
                "tenth {i} holds {count} of 10,000"
            );
        }
    }
}
