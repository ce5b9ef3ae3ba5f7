//! What the bridge still owes the broker about devices: each one's presence
//! (`{prefix}/{device}/status`) and, with discovery, its configs. A
//! device's later change overwrites an earlier one not yet published, so
//! this holds at most one entry per device however fast they come and go.
//! Likewise each alert's state ([`AlertNews`]): at most one entry per
//! device and rule, published as what storage holds when its turn comes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::ingest::registry::Change;

/// One device's news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    pub change: Change,
    /// Its discovery configs are due too.
    pub configs: bool,
}

/// Devices with news, oldest first.
#[derive(Debug, Default)]
pub struct News {
    owed: HashMap<Arc<str>, Owed>,
    order: VecDeque<Arc<str>>,
}

impl News {
    /// Notes a device's change, merging it with what is still owed.
    pub fn note(&mut self, device: Arc<str>, change: Change, configs: bool) {
        match self.owed.get_mut(&device) {
            Some(owed) => {
                // A revocation is final: nothing after it is published.
                if owed.change != Change::Revoked {
                    owed.change = change;
                }
                owed.configs |= configs;
            }
            None => {
                self.order.push_back(Arc::clone(&device));
                self.owed.insert(device, Owed { change, configs });
            }
        }
    }

    /// The oldest news, taken.
    pub fn take(&mut self) -> Option<(Arc<str>, Owed)> {
        let device = self.order.pop_front()?;
        let owed = self.owed.remove(&device)?;
        Some((device, owed))
    }
}

/// The (device, rule) pairs whose alert state is owed, oldest first.
#[derive(Debug, Default)]
pub struct AlertNews {
    owed: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl AlertNews {
    pub fn note(&mut self, device: &str, rule: &str) {
        let key = (device.to_owned(), rule.to_owned());
        if self.owed.insert(key.clone()) {
            self.order.push_back(key);
        }
    }

    /// The oldest owed pair, taken.
    pub fn take(&mut self) -> Option<(String, String)> {
        let key = self.order.pop_front()?;
        self.owed.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_owed_once_however_often_it_changes() {
        let mut news = AlertNews::default();
        news.note("a", "warm");
        news.note("b", "warm");
        news.note("a", "warm");
        assert_eq!(news.take(), Some(("a".into(), "warm".into())));
        assert_eq!(news.take(), Some(("b".into(), "warm".into())));
        assert_eq!(news.take(), None);
    }

    #[test]
    fn a_later_change_replaces_an_unpublished_one() {
        let mut news = News::default();
        news.note("a".into(), Change::Online, true);
        news.note("b".into(), Change::Online, false);
        news.note("a".into(), Change::Offline, false);
        assert_eq!(
            news.take(),
            Some((
                "a".into(),
                Owed {
                    change: Change::Offline,
                    configs: true
                }
            ))
        );
        assert_eq!(news.take().map(|(d, _)| d), Some("b".into()));
        assert!(news.take().is_none());
    }

    #[test]
    fn a_revocation_stays() {
        let mut news = News::default();
        news.note("a".into(), Change::Revoked, true);
        news.note("a".into(), Change::Offline, false);
        assert_eq!(news.take().unwrap().1.change, Change::Revoked);
    }
}

/// The devices whose configuration's standing is owed, oldest first: at
/// most one entry each, published as storage holds it when its turn comes.
#[derive(Debug, Default)]
pub struct ConfigNews {
    owed: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl ConfigNews {
    pub fn note(&mut self, device: &Arc<str>) {
        if self.owed.insert(Arc::clone(device)) {
            self.order.push_back(Arc::clone(device));
        }
    }

    pub fn take(&mut self) -> Option<Arc<str>> {
        let device = self.order.pop_front()?;
        self.owed.remove(&device);
        Some(device)
    }
}
