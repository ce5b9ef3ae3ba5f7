//! One threshold rule on one device's metric: the readings of its window,
//! how long the condition has held, and whether it fires. Pure; times are
//! the readings' own, so evaluating the same readings again (after a
//! restart, or on another hub) gives the same transitions at the same
//! readings.

use std::collections::VecDeque;

use super::rule::{Aggregate, Threshold};

/// Readings a window keeps at most: past it the oldest go first (a window
/// of a day at 1 Hz would otherwise hold 86,400).
const MAX_WINDOW_READINGS: usize = 4_096;

/// What a reading changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// The condition has held for the rule's `for`: the value that fired it.
    Fire(f64),
    /// The value came back past the dead band.
    Clear(f64),
}

#[derive(Debug, Clone, Default)]
pub struct Series {
    window: VecDeque<(i64, f64)>,
    /// Since when (reading time) the condition has held, while not firing.
    broken_since: Option<i64>,
    firing: bool,
}

impl Series {
    /// A series whose alert is already firing (read back at a restart):
    /// it resolves, rather than fires again.
    pub fn firing() -> Series {
        Series {
            firing: true,
            ..Series::default()
        }
    }

    /// Takes one reading. A NaN or infinite value (stored as NULL) says
    /// nothing and changes nothing.
    pub fn observe(&mut self, rule: &Threshold, ts_ms: i64, value: f64) -> Option<Change> {
        if !value.is_finite() {
            return None;
        }
        let value = self.aggregate(rule, ts_ms, value);
        if self.firing {
            if rule.condition.broken(value, rule.dead_band) {
                return None;
            }
            self.firing = false;
            self.broken_since = None;
            return Some(Change::Clear(value));
        }
        if !rule.condition.broken(value, 0.0) {
            self.broken_since = None;
            return None;
        }
        let since = *self.broken_since.get_or_insert(ts_ms);
        if ts_ms.saturating_sub(since) >= rule.hold_ms {
            self.firing = true;
            self.broken_since = None;
            return Some(Change::Fire(value));
        }
        None
    }

    fn aggregate(&mut self, rule: &Threshold, ts_ms: i64, value: f64) -> f64 {
        if rule.aggregate == Aggregate::Last {
            return value;
        }
        self.window.push_back((ts_ms, value));
        let newest = self.window.iter().map(|&(ts, _)| ts).max().unwrap_or(ts_ms);
        while self.window.len() > MAX_WINDOW_READINGS
            || self
                .window
                .front()
                .is_some_and(|&(ts, _)| ts <= newest - rule.window_ms)
        {
            self.window.pop_front();
        }
        let values = self.window.iter().map(|&(_, v)| v);
        match rule.aggregate {
            Aggregate::Mean => values.sum::<f64>() / self.window.len().max(1) as f64,
            Aggregate::Min => values.fold(f64::INFINITY, f64::min),
            Aggregate::Max => values.fold(f64::NEG_INFINITY, f64::max),
            Aggregate::Last => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rule::Condition;

    fn above(limit: f64, hold_ms: i64, dead_band: f64) -> Threshold {
        Threshold {
            condition: Condition::Above(limit),
            aggregate: Aggregate::Last,
            window_ms: 0,
            hold_ms,
            dead_band,
        }
    }

    fn run(rule: &Threshold, readings: &[(i64, f64)]) -> Vec<(i64, Change)> {
        let mut series = Series::default();
        readings
            .iter()
            .filter_map(|&(ts, v)| series.observe(rule, ts, v).map(|change| (ts, change)))
            .collect()
    }

    #[test]
    fn it_fires_once_held_for_long_enough_and_clears_below_the_limit() {
        let rule = above(5.0, 2_000, 0.0);
        let changes = run(
            &rule,
            &[
                (0, 6.0),
                (1_000, 6.0),
                (1_500, 4.0),
                (2_000, 6.0),
                (3_000, 7.0),
                (4_000, 7.5),
                (5_000, 5.0),
            ],
        );
        assert_eq!(
            changes,
            vec![(4_000, Change::Fire(7.5)), (5_000, Change::Clear(5.0))]
        );
    }

    #[test]
    fn a_dead_band_holds_a_value_hovering_at_the_limit_to_one_alert() {
        let rule = above(5.0, 0, 1.0);
        let hovering: Vec<(i64, f64)> = (0..20)
            .map(|i| (i * 1_000, if i % 2 == 0 { 5.2 } else { 4.8 }))
            .chain([(20_000, 3.9)])
            .collect();
        assert_eq!(
            run(&rule, &hovering),
            vec![(0, Change::Fire(5.2)), (20_000, Change::Clear(3.9))]
        );
    }

    #[test]
    fn a_windowed_mean_fires_on_the_mean_not_a_spike() {
        let rule = Threshold {
            aggregate: Aggregate::Mean,
            window_ms: 3_000,
            ..above(5.0, 0, 0.0)
        };
        let changes = run(
            &rule,
            &[
                (0, 0.0),
                (1_000, 0.0),
                (2_000, 12.0),
                (3_000, 9.0),
                (4_000, 9.0),
                (10_000, 0.0),
            ],
        );
        // At 2 s the mean of 0, 0, 12 is 4; at 3 s the window (after 0 s)
        // holds 0, 12, 9: 7.
        assert_eq!(
            changes,
            vec![(3_000, Change::Fire(7.0)), (10_000, Change::Clear(0.0))]
        );
    }

    #[test]
    fn a_series_read_back_firing_resolves_instead_of_firing_again() {
        let rule = above(5.0, 0, 0.0);
        let mut series = Series::firing();
        assert_eq!(series.observe(&rule, 0, 9.0), None);
        assert_eq!(series.observe(&rule, 1, 1.0), Some(Change::Clear(1.0)));
        assert_eq!(series.observe(&rule, 2, f64::NAN), None);
    }
}
