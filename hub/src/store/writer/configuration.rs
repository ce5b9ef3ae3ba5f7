//! Where each device's configuration stands (`config_state`), kept in the
//! transaction of the `config` event that changes it, so the table and the
//! history never disagree. The rules: a desired change takes the version
//! one above the stored one, or is not stored; an answer is taken only for
//! a version that was desired, and never one older than the last answer.

use rusqlite::{Connection, OptionalExtension};

use crate::commits::event::{ConfigChange, ConfigSide};

/// Writes what `change` changes of the device's standing, if it applies:
/// whether it did (a change that does not is not stored as an event).
pub(super) fn apply(
    conn: &Connection,
    device_row: i64,
    change: &ConfigChange,
    ts_ms: i64,
) -> rusqlite::Result<bool> {
    let stored: Option<(i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT desired_version, answered_version FROM config_state WHERE device = ?1",
        )?
        .query_row([device_row], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (desired_version, answered_version) = stored.unwrap_or((0, None));
    let Ok(version) = i64::try_from(change.version) else {
        return Ok(false);
    };
    match change.side {
        ConfigSide::Desired => {
            if version != desired_version + 1 {
                return Ok(false);
            }
            let desired = change
                .desired
                .as_ref()
                .map_or_else(|| "{}".to_owned(), ToString::to_string);
            conn.prepare_cached(
                "INSERT INTO config_state (device, desired, desired_version, desired_ms, desired_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device) DO UPDATE SET
                     desired = excluded.desired, desired_version = excluded.desired_version,
                     desired_ms = excluded.desired_ms, desired_by = excluded.desired_by,
                     deliveries = 0, delivered_ms = NULL",
            )?
            .execute(rusqlite::params![device_row, desired, version, ts_ms, change.by])?;
            Ok(true)
        }
        ConfigSide::Reported => {
            let stale = answered_version.is_some_and(|answered| version < answered);
            if version < 1 || version > desired_version || stale {
                return Ok(false);
            }
            let ok = change.ok.unwrap_or(false);
            conn.prepare_cached(
                "UPDATE config_state SET
                     answered_version = ?2, answered_ok = ?3, answered_detail = ?4, answered_ms = ?5,
                     reported_version = CASE WHEN ?3 THEN max(reported_version, ?2) ELSE reported_version END,
                     reported_ms = CASE WHEN ?3 THEN ?5 ELSE reported_ms END
                 WHERE device = ?1",
            )?
            .execute(rusqlite::params![device_row, version, ok, change.detail, ts_ms])?;
            Ok(true)
        }
    }
}

/// Notes that this hub sent the device `version` on a connection of
/// protocol `protocol`, or (below the configuration's protocol) that it
/// could not: `deliveries` counts the sends of the desired version only.
pub(super) fn delivered(
    conn: &Connection,
    device_row: i64,
    version: u64,
    protocol: u16,
    ts_ms: i64,
) -> rusqlite::Result<()> {
    let sent = protocol >= protocol::CONFIG_VERSION;
    conn.prepare_cached(
        "UPDATE config_state SET protocol = ?3,
             deliveries = deliveries + ?4,
             delivered_ms = CASE WHEN ?4 THEN ?5 ELSE delivered_ms END
         WHERE device = ?1 AND desired_version = ?2",
    )?
    .execute(rusqlite::params![
        device_row,
        i64::try_from(version).unwrap_or(i64::MAX),
        protocol,
        i64::from(sent),
        ts_ms
    ])?;
    Ok(())
}
