//! When a device is sent its configuration, and how its standing reads:
//! pure rules over what `config_state` holds and what the connection is.

use serde::Serialize;

use crate::store::configuration::ConfigRow;

/// Times a version is sent to a device that does not answer (once a
/// connection) before the hub waits for the next change.
pub const MAX_DELIVERIES: u32 = 3;

/// What a session does about the device's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send this version.
    Send(u64),
    /// The device speaks a protocol without configuration: note it, once.
    Unsupported,
    Nothing,
}

/// What to do for a device standing at `row`, connected with `protocol`,
/// that this connection has already been sent `sent` (if anything).
pub fn due(row: &ConfigRow, protocol: u16, sent: Option<u64>) -> Due {
    let version = row.desired_version;
    let answered = row.answered.as_ref().map_or(0, |a| a.version);
    if version == 0 || row.reported_version >= version || answered >= version {
        return Due::Nothing;
    }
    if protocol < protocol::CONFIG_VERSION {
        return if row.protocol == Some(protocol) {
            Due::Nothing
        } else {
            Due::Unsupported
        };
    }
    if sent.is_some_and(|sent| sent >= version) || row.deliveries >= MAX_DELIVERIES {
        return Due::Nothing;
    }
    Due::Send(version)
}

/// Where a device's configuration stands, as the API and the view say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ConfigState)]
pub enum State {
    /// Nothing was ever desired.
    None,
    /// The device runs the desired version.
    Applied,
    /// It refused the desired version (its answer says why).
    Refused,
    /// It speaks a protocol older than configuration: it is never sent.
    Unsupported,
    /// It was sent the desired version three times and never answered.
    Unanswered,
    /// On its way: the device has not answered the desired version yet.
    Pending,
}

/// The standing of `row`, as the `device_config` view computes it.
pub fn state(row: &ConfigRow) -> State {
    let version = row.desired_version;
    if version == 0 {
        return State::None;
    }
    if row.reported_version >= version {
        return State::Applied;
    }
    if row
        .answered
        .as_ref()
        .is_some_and(|a| a.version >= version && !a.ok)
    {
        return State::Refused;
    }
    if row.protocol.is_some_and(|p| p < protocol::CONFIG_VERSION) {
        return State::Unsupported;
    }
    if row.deliveries >= MAX_DELIVERIES {
        return State::Unanswered;
    }
    State::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::configuration::Answered;

    fn standing(desired: u64, reported: u64) -> ConfigRow {
        ConfigRow {
            desired: "{}".into(),
            desired_version: desired,
            desired_ms: None,
            desired_by: None,
            reported_version: reported,
            reported_ms: None,
            answered: None,
            protocol: None,
            deliveries: 0,
            delivered_ms: None,
        }
    }

    fn answered(version: u64, ok: bool) -> Option<Answered> {
        Some(Answered {
            version,
            ok,
            detail: String::new(),
            ts_ms: 0,
        })
    }

    #[test]
    fn a_device_behind_the_desired_version_is_sent_the_latest_once_a_connection() {
        let row = standing(5, 2);
        assert_eq!(due(&row, 3, None), Due::Send(5));
        assert_eq!(due(&row, 3, Some(5)), Due::Nothing);
        // A change while connected is sent again.
        assert_eq!(due(&standing(6, 2), 3, Some(5)), Due::Send(6));
    }

    #[test]
    fn a_device_that_runs_or_refused_the_desired_version_is_not_sent_it() {
        assert_eq!(due(&standing(5, 5), 3, None), Due::Nothing);
        let refused = ConfigRow {
            answered: answered(5, false),
            ..standing(5, 4)
        };
        assert_eq!(due(&refused, 3, None), Due::Nothing);
        assert_eq!(state(&refused), State::Refused);
        assert_eq!(due(&standing(0, 0), 3, None), Due::Nothing);
    }

    #[test]
    fn an_older_device_is_never_sent_a_configuration_and_is_shown_as_such() {
        let row = standing(1, 0);
        assert_eq!(due(&row, 2, None), Due::Unsupported);
        let noted = ConfigRow {
            protocol: Some(2),
            ..row
        };
        assert_eq!(due(&noted, 2, None), Due::Nothing, "noted once");
        assert_eq!(state(&noted), State::Unsupported);
        // The same device after a firmware update.
        assert_eq!(due(&noted, 3, None), Due::Send(1));
    }

    #[test]
    fn a_device_that_never_answers_is_sent_a_version_three_times() {
        let mut row = standing(2, 1);
        row.protocol = Some(3);
        for sent in 0..MAX_DELIVERIES {
            row.deliveries = sent;
            assert_eq!(due(&row, 3, None), Due::Send(2));
            assert_eq!(state(&row), State::Pending);
        }
        row.deliveries = MAX_DELIVERIES;
        assert_eq!(due(&row, 3, None), Due::Nothing);
        assert_eq!(state(&row), State::Unanswered);
    }

    #[test]
    fn a_device_that_applied_the_desired_version_stands_applied() {
        assert_eq!(state(&standing(3, 3)), State::Applied);
        assert_eq!(state(&standing(3, 2)), State::Pending);
        assert_eq!(state(&standing(0, 0)), State::None);
    }
}
