//! Which devices the other hubs of a cluster have, as their presence
//! messages tell it: pure state, no I/O.
//!
//! Each hub sends its whole list of connected devices every
//! [`super::HEARTBEAT`], in parts that each fit a NATS message (a round),
//! and each change as it happens. A hub not heard for [`EXPIRES_AFTER`]
//! (killed, or cut off from NATS) is taken to have no devices: forgetting
//! it answers which of them are now offline everywhere, for their status
//! events (a hub that is alive records its own devices' changes).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// A hub silent this long has lost its devices: three heartbeats and a bit.
pub const EXPIRES_AFTER: Duration = Duration::from_secs(7);

/// A device that went offline everywhere because the hub that had it went
/// silent after its heartbeat `round`: the same facts on every hub that
/// notices, so their status events can be told as one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gone {
    pub device: String,
    pub hub: String,
    pub round: u64,
}

#[derive(Debug, Default)]
pub struct Roster {
    hubs: HashMap<String, HubView>,
}

#[derive(Debug)]
struct HubView {
    devices: HashSet<String>,
    /// The round of heartbeat parts being gathered, and what it holds.
    gathering: Option<(u64, HashSet<String>)>,
    /// The last heartbeat round heard.
    round: u64,
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
    ) {
        let view = self.view(hub, now);
        view.round = round;
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
    }

    /// One device of a hub came or went.
    pub fn change(&mut self, hub: &str, device: &str, online: bool, now: Instant) {
        let view = self.view(hub, now);
        if online {
            view.devices.insert(device.to_owned());
        } else {
            view.devices.remove(device);
        }
    }

    /// Forgets hubs not heard from lately, answering their devices that no
    /// live hub has: offline everywhere now.
    pub fn expire(&mut self, now: Instant) -> Vec<Gone> {
        let (silent, live): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.hubs)
            .into_iter()
            .partition(|(_, view)| !view.is_live(now));
        self.hubs = live;
        let online = self.online(now);
        let mut gone: Vec<Gone> = silent
            .into_iter()
            .flat_map(|(hub, view)| {
                let round = view.round;
                view.devices.into_iter().map(move |device| Gone {
                    device,
                    hub: hub.clone(),
                    round,
                })
            })
            .filter(|gone| !online.contains(&gone.device))
            .collect();
        gone.sort();
        gone
    }

    /// The hub's view, heard from now.
    fn view(&mut self, hub: &str, now: Instant) -> &mut HubView {
        let view = self.hubs.entry(hub.to_owned()).or_insert_with(|| HubView {
            devices: HashSet::new(),
            gathering: None,
            round: 0,
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

    #[test]
    fn a_heartbeat_brings_its_hubs_devices_online() {
        let now = Instant::now();
        let mut roster = Roster::default();
        roster.heartbeat("a", 1, list(&["d1", "d2"]), true, now);
        assert!(roster.is_online("d1", now) && roster.is_online("d2", now));
        assert!(!roster.is_online("d3", now));
        roster.heartbeat("a", 2, list(&["d2"]), true, now);
        assert!(!roster.is_online("d1", now));
    }

    #[test]
    fn a_list_in_parts_counts_once_its_last_part_is_in() {
        let now = Instant::now();
        let mut roster = Roster::default();
        roster.heartbeat("a", 1, list(&["d1", "d2"]), true, now);
        roster.heartbeat("a", 2, list(&["d2", "d3"]), false, now);
        assert!(
            !roster.is_online("d3", now),
            "not before the round is whole"
        );
        roster.heartbeat("a", 2, list(&["d4"]), true, now);
        assert!(!roster.is_online("d1", now));
        assert!(roster.is_online("d3", now) && roster.is_online("d4", now));
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
        roster.change("b", "d1", true, now);
        roster.change("a", "d1", false, now);
        assert!(roster.is_online("d1", now));
        roster.change("b", "d1", false, now);
        assert!(!roster.is_online("d1", now));
    }

    #[test]
    fn a_silent_hub_loses_its_devices_but_not_those_another_hub_has() {
        let start = Instant::now();
        let mut roster = Roster::default();
        roster.heartbeat("a", 7, list(&["d1", "d3"]), true, start);
        roster.heartbeat("b", 1, list(&["d2", "d3"]), true, start);
        let later = start + EXPIRES_AFTER;
        roster.heartbeat("b", 2, list(&["d2", "d3"]), true, later);
        assert!(!roster.is_online("d1", later), "a is past its time");
        let gone = Gone {
            device: "d1".into(),
            hub: "a".into(),
            round: 7,
        };
        assert_eq!(roster.expire(later), [gone]);
        assert_eq!(roster.expire(later), [], "told once");
        assert!(roster.is_online("d2", later) && roster.is_online("d3", later));
    }
}
