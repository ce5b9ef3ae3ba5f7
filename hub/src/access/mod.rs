//! Who may see and do what: API keys with a role (`viewer`, `operator`,
//! `admin`), optionally limited to groups of devices, and the monitor token
//! (`--monitor-token`, an admin key of every device).
//!
//! The hub keeps the keys in memory ([`Keys`]), read again from SQLite
//! every half second by [`Keys::watch`], so `hub key add|revoke` from
//! another process takes effect within a second. A request's key becomes
//! its [`Principal`]; a live stream holds its principal and ends when the
//! key is revoked or expires ([`Principal::ended`]). Repeated wrong keys
//! from one address are answered 429 for a while ([`failures`]).

pub mod failures;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::store::access::KeyRecord;
use crate::store::{Store, StoreError, now_ms};

/// What a key may do; each role may do what the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read devices, readings, roll-ups, alerts and the live stream.
    Viewer,
    /// Also send commands and acknowledge alerts.
    Operator,
    /// Also manage devices, groups, keys and alert rules.
    Admin,
}

impl Role {
    pub const NAMES: &'static str = "viewer, operator or admin";

    #[must_use]
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` can be a group's name: 1 to 64 of `A-Z a-z 0-9 - _ . :`,
/// as a device id.
#[must_use]
pub fn is_valid_group(name: &str) -> bool {
    protocol::is_valid_device_id(name)
}

/// A key as the hub holds it in memory.
#[derive(Debug)]
struct Key {
    name: Arc<str>,
    role: Role,
    groups: Option<Arc<[String]>>,
    expires_ms: Option<i64>,
}

/// The keys that work, by hash; whether any key was ever made.
#[derive(Debug, Default)]
struct Table {
    live: HashMap<[u8; 32], Arc<Key>>,
    any: bool,
}

impl Table {
    fn of(records: Vec<KeyRecord>) -> Table {
        let any = !records.is_empty();
        let live = records
            .into_iter()
            .filter(|record| record.revoked_ms.is_none())
            .filter_map(|record| {
                let hash: [u8; 32] = record.key_sha256.try_into().ok()?;
                let Some(role) = Role::parse(&record.role) else {
                    tracing::warn!(key = %record.name, role = %record.role, "a key with an unknown role is ignored");
                    return None;
                };
                let key = Key {
                    name: record.name.into(),
                    role,
                    groups: (!record.groups.is_empty()).then(|| record.groups.into()),
                    expires_ms: record.expires_ms,
                };
                Some((hash, Arc::new(key)))
            })
            .collect();
        Table { live, any }
    }

    /// The key with this hash, if it works at `now_ms`.
    fn working(&self, hash: &[u8; 32], now_ms: i64) -> Option<&Arc<Key>> {
        self.live
            .get(hash)
            .filter(|key| key.expires_ms.is_none_or(|expires| now_ms < expires))
    }

    fn same_as(&self, other: &Table) -> bool {
        self.any == other.any
            && self.live.len() == other.live.len()
            && self.live.iter().all(|(hash, key)| {
                other.live.get(hash).is_some_and(|other| {
                    other.name == key.name
                        && other.role == key.role
                        && other.groups == key.groups
                        && other.expires_ms == key.expires_ms
                })
            })
    }
}

/// Who made a request, and what that lets them do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The key's name; `None` for the monitor token or an open hub.
    pub key: Option<Arc<str>>,
    pub role: Role,
    /// The groups whose devices alone it sees; `None`: every device.
    pub groups: Option<Arc<[String]>>,
    /// For [`Principal::ended`]: the key's hash and the table it is in.
    held: Option<([u8; 32], watch::Receiver<Arc<Table>>)>,
    /// Who it is when it has no key's name: `monitor-token` or `open`.
    keyless: &'static str,
}

impl Principal {
    /// An open hub's (`open`), or the monitor token's (`monitor-token`):
    /// everything.
    fn everything(keyless: &'static str) -> Principal {
        Principal {
            key: None,
            role: Role::Admin,
            groups: None,
            held: None,
            keyless,
        }
    }

    /// Whether it is an admin of every device (who alone sees the audit
    /// trail and manages keys and rules).
    #[must_use]
    pub fn is_admin_of_everything(&self) -> bool {
        self.role == Role::Admin && self.groups.is_none()
    }

    /// Whether its role may do what `role` may.
    #[must_use]
    pub fn may(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Who it is, for the audit trail and logs: the key's name, or
    /// `monitor-token`/`open`. Never the key itself.
    #[must_use]
    pub fn who(&self) -> &str {
        self.key.as_deref().unwrap_or(self.keyless)
    }

    /// Completes when its key stops working (revoked or expired); never
    /// for the monitor token or an open hub.
    pub async fn ended(&self) {
        let Some((hash, table)) = &self.held else {
            return std::future::pending().await;
        };
        let mut table = table.clone();
        loop {
            let expires = {
                let now = now_ms();
                let current = table.borrow_and_update();
                match current.working(hash, now) {
                    None => return,
                    Some(key) => key.expires_ms.map(|at| at - now),
                }
            };
            let until_expiry = async {
                match expires {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms.max(0) as u64)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = table.changed() => {
                    if changed.is_err() {
                        return; // the hub is stopping
                    }
                }
                () = until_expiry => {}
            }
        }
    }
}

/// Why a request has no principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The hub needs a key and none came.
    Missing,
    /// A key came that does not work (unknown, revoked or expired).
    Wrong,
}

/// How often the keys are read again: a change from `hub key` in another
/// process takes effect within this and a request's time.
pub const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// The keys that work, shared by every request.
#[derive(Debug, Clone)]
pub struct Keys {
    table: watch::Receiver<Arc<Table>>,
    /// `--monitor-token`: an admin key of every device.
    monitor_token: Option<Arc<str>>,
}

/// Reads the keys again every [`RELOAD_EVERY`] and tells [`Keys`].
#[derive(Debug)]
pub struct KeyWatcher {
    store: Store,
    table: watch::Sender<Arc<Table>>,
}

impl Keys {
    /// Reads the keys once, for a hub that is starting.
    ///
    /// # Errors
    /// The keys cannot be read.
    pub async fn load(
        store: &Store,
        monitor_token: Option<Arc<str>>,
    ) -> Result<(Keys, KeyWatcher), StoreError> {
        let table = Arc::new(Table::of(store.keys().await?));
        let (sender, receiver) = watch::channel(table);
        Ok((
            Keys {
                table: receiver,
                monitor_token,
            },
            KeyWatcher {
                store: store.clone(),
                table: sender,
            },
        ))
    }

    /// Whether requests need a key: a monitor token is set, or a key was
    /// ever made.
    #[must_use]
    pub fn required(&self) -> bool {
        self.monitor_token.is_some() || self.table.borrow().any
    }

    /// The principal of a request that presented `secret` (or nothing).
    ///
    /// # Errors
    /// A key is needed and missing, or the one presented does not work.
    pub fn resolve(&self, secret: Option<&str>) -> Result<Principal, Refusal> {
        if !self.required() {
            return Ok(Principal::everything("open"));
        }
        let secret = secret.ok_or(Refusal::Missing)?;
        if let Some(token) = &self.monitor_token
            && auth::secrets_match(secret, token)
        {
            return Ok(Principal::everything("monitor-token"));
        }
        // Looked up by hash, as device tokens: the hash of a wrong key says
        // nothing about a right one.
        let hash = auth::hash_token(secret);
        let table = self.table.borrow();
        let key = table.working(&hash, now_ms()).ok_or(Refusal::Wrong)?;
        Ok(Principal {
            key: Some(Arc::clone(&key.name)),
            role: key.role,
            groups: key.groups.clone(),
            held: Some((hash, self.table.clone())),
            keyless: "",
        })
    }

    /// The monitor token or a working key.
    #[must_use]
    pub fn is_valid(&self, secret: &str) -> bool {
        self.required() && self.resolve(Some(secret)).is_ok()
    }
}

impl KeyWatcher {
    /// Until `shutdown`: reads the keys every [`RELOAD_EVERY`], and tells
    /// the holders when they changed (open streams of a revoked key end).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.store.keys().await {
                Ok(records) => {
                    let table = Table::of(records);
                    self.table.send_if_modified(|current| {
                        let changed = !current.same_as(&table);
                        if changed {
                            *current = Arc::new(table);
                        }
                        changed
                    });
                }
                // Keys stay as they were: a revocation waits for the
                // database, and so does everything else.
                Err(err) => tracing::warn!(error = %err, "could not read the API keys"),
            }
        }
    }
}

/// A new key to show once: `hk_` and 64 hex characters (256 random bits),
/// the prefix telling it from a device token in a log or a secret scanner.
///
/// # Errors
/// The operating system has no randomness to give.
pub fn generate_key() -> Result<String, getrandom::Error> {
    Ok(format!("hk_{}", auth::generate_token()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, secret: &str, role: &str, groups: &[&str]) -> KeyRecord {
        KeyRecord {
            name: name.into(),
            role: role.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            created_ms: 0,
            expires_ms: None,
            revoked_ms: None,
            key_sha256: auth::hash_token(secret).to_vec(),
        }
    }

    fn keys(records: Vec<KeyRecord>, monitor_token: Option<&str>) -> Keys {
        let (_sender, receiver) = watch::channel(Arc::new(Table::of(records)));
        Keys {
            table: receiver,
            monitor_token: monitor_token.map(Arc::from),
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_hub_without_keys_or_token_is_open() {
        let keys = keys(Vec::new(), None);
        assert!(!keys.required());
        let principal = keys.resolve(None).unwrap();
        assert!(principal.may(Role::Admin) && principal.groups.is_none());
    }

    #[test]
    fn a_key_resolves_to_its_role_and_groups() {
        let keys = keys(vec![record("wall", "k1", "viewer", &["floor-2"])], None);
        assert_eq!(keys.resolve(None).unwrap_err(), Refusal::Missing);
        assert_eq!(keys.resolve(Some("k2")).unwrap_err(), Refusal::Wrong);
        let principal = keys.resolve(Some("k1")).unwrap();
        assert_eq!(principal.who(), "wall");
        assert!(principal.may(Role::Viewer) && !principal.may(Role::Operator));
        assert_eq!(
            principal.groups.as_deref(),
            Some(&["floor-2".to_owned()][..])
        );
    }

    #[test]
    fn the_monitor_token_is_an_admin_of_everything() {
        let keys = keys(Vec::new(), Some("s3cret-s3cret-s3cret"));
        assert!(keys.required());
        assert!(
            keys.resolve(Some("s3cret-s3cret-s3cret"))
                .unwrap()
                .may(Role::Admin)
        );
        assert_eq!(keys.resolve(Some("nope")).unwrap_err(), Refusal::Wrong);
    }

    #[test]
    fn revoked_and_expired_keys_do_not_work_but_keep_the_hub_closed() {
        let mut revoked = record("old", "k1", "admin", &[]);
        revoked.revoked_ms = Some(1);
        let mut expired = record("temp", "k2", "admin", &[]);
        expired.expires_ms = Some(1);
        let keys = keys(vec![revoked, expired], None);
        assert!(keys.required());
        assert_eq!(keys.resolve(Some("k1")).unwrap_err(), Refusal::Wrong);
        assert_eq!(keys.resolve(Some("k2")).unwrap_err(), Refusal::Wrong);
    }

    #[tokio::test]
    async fn a_principal_ends_when_its_key_is_revoked() {
        let (sender, receiver) = watch::channel(Arc::new(Table::of(vec![record(
            "wall",
            "k1",
            "viewer",
            &[],
        )])));
        let keys = Keys {
            table: receiver,
            monitor_token: None,
        };
        let principal = keys.resolve(Some("k1")).unwrap();
        let ended = tokio::spawn(async move { principal.ended().await });
        tokio::task::yield_now().await;
        assert!(!ended.is_finished());
        let mut revoked = record("wall", "k1", "viewer", &[]);
        revoked.revoked_ms = Some(1);
        sender.send(Arc::new(Table::of(vec![revoked]))).unwrap();
        tokio::time::timeout(Duration::from_secs(1), ended)
            .await
            .expect("ended at the revocation")
            .unwrap();
    }
}
