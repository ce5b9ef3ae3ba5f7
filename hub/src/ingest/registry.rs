//! Which devices are connected right now, and a way to make one let go.
//!
//! A device has at most one live session. Registering a second one kicks the
//! first (`Replaced`); the revocation watcher kicks revoked devices. The
//! registry is also how commands reach a device: each session has a small
//! queue of them, and how consumers that mirror presence elsewhere (the
//! MQTT bridge) hear of connects, disconnects and revocations.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use protocol::{Command, CommandResult};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

pub use super::outcome::{COMMAND_QUEUE, CommandOutcome};

/// A command on its way to a device, and where its result goes.
#[derive(Debug)]
pub struct PendingCommand {
    pub command: Command,
    pub reply: oneshot::Sender<CommandResult>,
}

/// Why a command could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandRefused {
    Offline,
    QueueFull,
}

/// Why a session is told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A newer connection of the same device took over.
    Replaced,
    /// The device's credentials were revoked.
    Revoked,
}

/// Presence changes buffered for each listener. One that lags further
/// misses the oldest and is told so (`Lagged`): it then reads everyone's
/// presence afresh.
const CHANGES: usize = 1024;

/// What happened to a device's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Online,
    Offline,
    /// Revoked (announced by the revocation watcher, whether or not the
    /// device was connected).
    Revoked,
}

/// A presence change: the device and what happened.
pub type PresenceChange = (Arc<str>, Change);

#[derive(Debug)]
struct Entry {
    session: u64,
    kick: oneshot::Sender<Kick>,
    /// Boxed: tokio allocates a channel's first block of 32 slots up front,
    /// and 32 unboxed commands would cost every idle device 2 KiB.
    commands: mpsc::Sender<Box<PendingCommand>>,
    /// Told when the device's desired configuration changed. A `Notify`
    /// keeps one wake-up for a session busy elsewhere, so changes coalesce
    /// and none is missed: the session reads the latest from storage.
    config: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    next_session: u64,
    next_command: u64,
    live: HashMap<String, Entry>,
}

/// What a session receives through the registry.
#[derive(Debug)]
pub struct Inbox {
    /// Fires when the session must end.
    pub kicked: oneshot::Receiver<Kick>,
    /// Commands for the device.
    pub commands: mpsc::Receiver<Box<PendingCommand>>,
    /// Wakes when the device's desired configuration changed.
    pub config: Arc<Notify>,
}

/// The other hubs of a cluster, as the registry sees them: which devices
/// are connected there, and a way to call a command on one of them.
/// Implemented by the `cluster` module; a single hub has none.
pub trait Elsewhere: Send + Sync + fmt::Debug {
    /// Whether another hub has a live session of the device.
    fn is_online(&self, device_id: &str) -> bool;

    /// Calls a command on the device wherever it is connected; `Offline`
    /// when no other hub has it.
    fn call(
        &self,
        device_id: &str,
        name: String,
        args: Vec<protocol::CommandArg>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = CommandOutcome> + Send + '_>>;
}

/// The live sessions, shared by the ingest endpoint, the API and the
/// revocation watcher. A std `Mutex`: every critical section is a map
/// operation and never awaits.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<PresenceChange>,
    /// The rest of the cluster, once it is joined.
    elsewhere: Arc<OnceLock<Arc<dyn Elsewhere>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Arc::default(),
            changes: broadcast::Sender::new(CHANGES),
            elsewhere: Arc::default(),
        }
    }
}

impl crate::configuration::Sessions for Registry {
    fn config_changed(&self, device_id: &str) {
        if let Some(entry) = self.lock().live.get(device_id) {
            entry.config.notify_one();
        }
    }
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

    /// Registers a session of `device_id`, kicking any older one.
    pub fn register(&self, device_id: &str) -> (Presence, Inbox) {
        let (kick, kicked) = oneshot::channel();
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let config = Arc::new(Notify::new());
        let mut inner = self.lock();
        inner.next_session += 1;
        let session = inner.next_session;
        let entry = Entry {
            session,
            kick,
            commands: commands_tx,
            config: Arc::clone(&config),
        };
        if let Some(old) = inner.live.insert(device_id.to_owned(), entry) {
            let _ = old.kick.send(Kick::Replaced);
        }
        let presence = Presence {
            registry: self.clone(),
            device_id: device_id.to_owned(),
            session,
        };
        (
            presence,
            Inbox {
                kicked,
                commands,
                config,
            },
        )
    }

    /// Queues a command for the device's live session; the result arrives on
    /// the returned receiver. The command id is chosen here.
    ///
    /// # Errors
    /// The device is not connected, or its command queue is full.
    pub fn send_command(
        &self,
        device_id: &str,
        name: String,
        args: Vec<protocol::CommandArg>,
    ) -> Result<(u64, oneshot::Receiver<CommandResult>), CommandRefused> {
        let mut inner = self.lock();
        inner.next_command += 1;
        let id = inner.next_command;
        let entry = inner.live.get(device_id).ok_or(CommandRefused::Offline)?;
        let (reply, result) = oneshot::channel();
        let pending = Box::new(PendingCommand {
            command: Command { id, name, args },
            reply,
        });
        entry.commands.try_send(pending).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => CommandRefused::QueueFull,
            mpsc::error::TrySendError::Closed(_) => CommandRefused::Offline,
        })?;
        Ok((id, result))
    }

    /// Tells the device's session, if any, to end. Returns whether there was one.
    pub fn kick(&self, device_id: &str, why: Kick) -> bool {
        let entry = self.lock().live.remove(device_id);
        entry.is_some_and(|entry| entry.kick.send(why).is_ok())
    }

    /// Whether the device has a live session here.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.lock().live.contains_key(device_id)
    }

    /// Whether the device has a live session here or, in a cluster, on
    /// another hub.
    pub fn online_anywhere(&self, device_id: &str) -> bool {
        self.is_online(device_id)
            || self
                .elsewhere()
                .is_some_and(|elsewhere| elsewhere.is_online(device_id))
    }

    /// Whether another hub of the cluster has a live session of the device.
    pub fn online_elsewhere(&self, device_id: &str) -> bool {
        self.elsewhere()
            .is_some_and(|elsewhere| elsewhere.is_online(device_id))
    }

    /// Every device with a live session here.
    pub fn online_here(&self) -> Vec<String> {
        self.lock().live.keys().cloned().collect()
    }

    /// Joins the registry to the rest of a cluster (once).
    pub fn set_elsewhere(&self, elsewhere: Arc<dyn Elsewhere>) {
        let _ = self.elsewhere.set(elsewhere);
    }

    /// The rest of the cluster, if this hub is in one.
    pub fn elsewhere(&self) -> Option<&Arc<dyn Elsewhere>> {
        self.elsewhere.get()
    }

    /// Tells the listeners of a presence change.
    pub fn announce(&self, device_id: &str, change: Change) {
        // No listener is not an error.
        let _ = self.changes.send((device_id.into(), change));
    }

    /// Presence changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<PresenceChange> {
        self.changes.subscribe()
    }
}

impl Presence {
    /// This session's number: sessions are numbered in the order they
    /// register, so a device's newer connection has a larger one.
    pub fn session(&self) -> u64 {
        self.session
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
        let (_first, mut first) = registry.register("a");
        let (_second, mut second) = registry.register("a");
        assert_eq!(first.kicked.try_recv(), Ok(Kick::Replaced));
        assert!(second.kicked.try_recv().is_err());
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
        let (_presence, mut inbox) = registry.register("a");
        assert!(registry.kick("a", Kick::Revoked));
        assert_eq!(inbox.kicked.try_recv(), Ok(Kick::Revoked));
        assert!(!registry.kick("b", Kick::Revoked));
    }

    #[test]
    fn commands_reach_the_live_session_with_fresh_ids() {
        let registry = Registry::default();
        let (_presence, mut inbox) = registry.register("a");
        let (first, _) = registry.send_command("a", "ping".into(), vec![]).unwrap();
        let (second, _) = registry.send_command("a", "ping".into(), vec![]).unwrap();
        assert_ne!(first, second);
        assert_eq!(inbox.commands.try_recv().unwrap().command.id, first);
    }

    #[test]
    fn commands_for_an_offline_device_are_refused() {
        let registry = Registry::default();
        let refused = registry
            .send_command("nobody", "ping".into(), vec![])
            .unwrap_err();
        assert_eq!(refused, CommandRefused::Offline);
    }

    #[test]
    fn a_full_command_queue_refuses_more() {
        let registry = Registry::default();
        let (_presence, _inbox) = registry.register("a");
        for _ in 0..COMMAND_QUEUE {
            registry.send_command("a", "ping".into(), vec![]).unwrap();
        }
        let refused = registry
            .send_command("a", "ping".into(), vec![])
            .unwrap_err();
        assert_eq!(refused, CommandRefused::QueueFull);
    }
}
