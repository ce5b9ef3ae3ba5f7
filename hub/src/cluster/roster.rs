//! Which devices the other hubs of a cluster have, as their presence
//! messages tell it: pure state, no I/O.
//!
//! Each hub sends its whole list of connected devices every
//! [`super::HEARTBEAT`], in parts that each fit a NATS message (a round),
//! and each change as it happens. A hub not heard for [`EXPIRES_AFTER`]
//! (killed, or cut off from NATS) is taken to have no devices. Every
//! update answers the devices whose "connected to another hub" state it
//! flipped, for the live status events.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// A hub silent this long has lost its devices: three heartbeats and a bit.
pub const EXPIRES_AFTER: Duration = Duration::from_secs(7);

/// A device that came online (`true`) or went offline on the other hubs.
pub type Flip = (String, bool);

#[derive(Debug, Default)]
pub struct Roster {
    hubs: HashMap<String, HubView>,
}

#[derive(Debug)]
struct HubView {
    devices: HashSet<String>,
    /// The round of heartbeat parts being gathered, and what it holds.
    gathering: Option<(u64, HashSet<String>)>,
    heard: Instant,
}

impl Roster {
    /// Whether another hub, heard from lately, has the device.
    pub fn is_online(&self, device: &str, now: Instant) -> bool {
        self.hubs
            .values()
            .any(|hub| hub.is_live(now) && hub.devices.contains(device))
    }

    /// A part of a hub's whole list: round `round`'s list is complete at
    /// its `last` part, and then replaces what the hub said before.
    pub fn heartbeat(
        &mut self,
        hub: &str,
        round: u64,
        devices: Vec<String>,
        last: bool,
        now: Instant,
    ) -> Vec<Flip> {
        let before = self.online(now);
        let view = self.view(hub, now);
        let gathered = match view.gathering.take() {
            Some((gathering, mut set)) if gathering == round => {
                set.extend(devices);
                set
            }
            // A new round: the parts of one cut short are dropped.
            _ => devices.into_iter().collect(),
        };
        if last {
            view.devices = gathered;
        } else {
            view.gathering = Some((round, gathered));
        }
        self.flips(&before, now)
    }

    /// One device of a hub came or went.
    pub fn change(&mut self, hub: &str, device: &str, online: bool, now: Instant) -> Vec<Flip> {
        let before = self.online(now);
        let view = self.view(hub, now);
        if online {
            view.devices.insert(device.to_owned());
        } else {
            view.devices.remove(device);
        }
        self.flips(&before, now)
    }

    /// Forgets hubs not heard from lately: their devices go offline.
    pub fn expire(&mut self, now: Instant) -> Vec<Flip> {
        // Everything they said, live or not: what status events last told.
        let before: HashSet<String> = self
            .hubs
            .values()
            .flat_map(|hub| hub.devices.iter().cloned())
            .collect();
        self.hubs.retain(|_, hub| hub.is_live(now));
        self.flips(&before, now)
    }

    /// The hub's view, heard from now.
    fn view(&mut self, hub: &str, now: Instant) -> &mut HubView {
        let view = self.hubs.entry(hub.to_owned()).or_insert_with(|| HubView {
            devices: HashSet::new(),
            gathering: None,
            heard: now,
        });
        view.heard = now;
        view
    }

    fn online(&self, now: Instant) -> HashSet<String> {
        self.hubs
            .values()
            .filter(|hub| hub.is_live(now))
            .flat_map(|hub| hub.devices.iter().cloned())
            .collect()
    }

    fn flips(&self, before: &HashSet<String>, now: Instant) -> Vec<Flip> {
        let after = self.online(now);
        let mut flips: Vec<Flip> = after
            .difference(before)
            .map(|device| (device.clone(), true))
            .chain(
                before
                    .difference(&after)
                    .map(|device| (device.clone(), false)),
            )
            .collect();
        flips.sort();
        flips
    }
}

impl HubView {
    fn is_live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.heard) < EXPIRES_AFTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(devices: &[&str]) -> Vec<String> {
        devices.iter().map(|d| (*d).to_owned()).collect()
    }

    fn flip(device: &str, online: bool) -> Flip {
        (device.to_owned(), online)
    }

    #[test]
    fn a_heartbeat_brings_its_hubs_devices_online() {
        let now = Instant::now();
        let mut roster = Roster::default();
        assert_eq!(
            roster.heartbeat("a", 1, list(&["d1", "d2"]), true, now),
            [flip("d1", true), flip("d2", true)]
        );
        assert!(roster.is_online("d1", now));
        assert!(!roster.is_online("d3", now));
        assert_eq!(
            roster.heartbeat("a", 2, list(&["d2"]), true, now),
            [flip("d1", false)]
        );
    }

    #[test]
    fn a_list_in_parts_counts_once_its_last_part_is_in() {
        let now = Instant::now();
        let mut roster = Roster::default();
        roster.heartbeat("a", 1, list(&["d1", "d2"]), true, now);
        assert_eq!(
            roster.heartbeat("a", 2, list(&["d2", "d3"]), false, now),
            []
        );
        assert!(
            !roster.is_online("d3", now),
            "not before the round is whole"
        );
        assert_eq!(
            roster.heartbeat("a", 2, list(&["d4"]), true, now),
            [flip("d1", false), flip("d3", true), flip("d4", true)]
        );
        // A round cut short is dropped when the next one starts.
        roster.heartbeat("a", 3, list(&["d9"]), false, now);
        roster.heartbeat("a", 4, list(&["d2"]), true, now);
        assert!(!roster.is_online("d9", now));
        assert!(roster.is_online("d2", now) && !roster.is_online("d3", now));
    }

    #[test]
    fn a_device_moving_between_hubs_stays_online() {
        let now = Instant::now();
        let mut roster = Roster::default();
        roster.change("a", "d1", true, now);
        assert_eq!(roster.change("b", "d1", true, now), []);
        assert_eq!(roster.change("a", "d1", false, now), []);
        assert!(roster.is_online("d1", now));
        assert_eq!(roster.change("b", "d1", false, now), [flip("d1", false)]);
    }

    #[test]
    fn a_silent_hub_loses_its_devices() {
        let start = Instant::now();
        let mut roster = Roster::default();
        roster.heartbeat("a", 1, list(&["d1"]), true, start);
        roster.heartbeat("b", 1, list(&["d2"]), true, start);
        let later = start + EXPIRES_AFTER;
        roster.heartbeat("b", 2, list(&["d2"]), true, later);
        assert!(!roster.is_online("d1", later), "a is past its time");
        assert_eq!(roster.expire(later), [flip("d1", false)]);
        assert!(roster.is_online("d2", later));
    }
}
