//! Which devices are connected right now, and a way to make one let go.
//!
//! A device has at most one live session. Registering a second one kicks the
//! first (`Replaced`); the revocation watcher kicks revoked devices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Why a session is told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A newer connection of the same device took over.
    Replaced,
    /// The device's credentials were revoked.
    Revoked,
}

#[derive(Debug)]
struct Entry {
    session: u64,
    kick: oneshot::Sender<Kick>,
}

#[derive(Debug, Default)]
struct Inner {
    next_session: u64,
    live: HashMap<String, Entry>,
}

/// The live sessions, shared by the ingest endpoint, the API and the
/// revocation watcher. A std `Mutex`: every critical section is a map
/// operation and never awaits.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

/// A session's place in the registry; dropping it removes the entry (unless
/// a newer session of the device has replaced it already).
#[derive(Debug)]
pub struct Presence {
    registry: Registry,
    device_id: String,
    session: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a session of `device_id`, kicking any older one. The
    /// receiver fires when this session must end.
    pub fn register(&self, device_id: &str) -> (Presence, oneshot::Receiver<Kick>) {
        let (kick, kicked) = oneshot::channel();
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        if let Some(old) = inner
            .live
            .insert(device_id.to_owned(), Entry { session, kick })
        {
            let _ = old.kick.send(Kick::Replaced);
        }
        let presence = Presence {
            registry: self.clone(),
            device_id: device_id.to_owned(),
            session,
        };
        (presence, kicked)
    }

    /// Tells the device's session, if any, to end. Returns whether there was one.
    pub fn kick(&self, device_id: &str, why: Kick) -> bool {
        let entry = self.lock().live.remove(device_id);
        entry.is_some_and(|entry| entry.kick.send(why).is_ok())
    }

    /// Whether the device has a live session.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.lock().live.contains_key(device_id)
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if inner
            .live
            .get(&self.device_id)
            .is_some_and(|entry| entry.session == self.session)
        {
            inner.live.remove(&self.device_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_session_replaces_the_first() {
        let registry = Registry::default();
        let (_first, mut first_kicked) = registry.register("a");
        let (_second, mut second_kicked) = registry.register("a");
        assert_eq!(first_kicked.try_recv(), Ok(Kick::Replaced));
        assert!(second_kicked.try_recv().is_err());
        assert!(registry.is_online("a"));
    }

    #[test]
    fn the_replaced_session_leaving_keeps_the_new_one_online() {
        let registry = Registry::default();
        let (first, _) = registry.register("a");
        let (_second, _) = registry.register("a");
        drop(first);
        assert!(registry.is_online("a"));
    }

    #[test]
    fn the_last_session_leaving_takes_the_device_offline() {
        let registry = Registry::default();
        let (presence, _) = registry.register("a");
        drop(presence);
        assert!(!registry.is_online("a"));
    }

    #[test]
    fn kick_reaches_the_live_session_only() {
        let registry = Registry::default();
        let (_presence, mut kicked) = registry.register("a");
        assert!(registry.kick("a", Kick::Revoked));
        assert_eq!(kicked.try_recv(), Ok(Kick::Revoked));
        assert!(!registry.kick("b", Kick::Revoked));
    }
}
