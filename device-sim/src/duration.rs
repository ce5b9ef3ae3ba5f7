//! Durations on the command line (`500ms`, `30s`, `15m`, `2h`, `30d`): the
//! one parser of the workspace's flags, the simulator's and the hub's.

use std::time::Duration;

/// Not a duration; says what one looks like.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0} (for example 500ms, 30s, 15m, 2h or 30d)")]
pub struct BadDuration(humantime::DurationError);

/// Parses a duration, zero included (`0s`).
///
/// # Errors
/// `text` is not a duration.
pub fn parse(text: &str) -> Result<Duration, BadDuration> {
    humantime::parse_duration(text).map_err(BadDuration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("30d"), Ok(Duration::from_secs(2_592_000)));
    }

    #[test]
    fn a_bad_duration_says_what_one_looks_like() {
        for text in ["", "10", "ten seconds", "-5s"] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("for example 500ms"), "{text:?}: {err}");
        }
    }
}
