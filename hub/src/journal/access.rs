//! API keys and device groups for a whole cluster: `hub key` and `hub
//! device group` with `--nats-url`, and the admin API of any hub, publish
//! the change on `{stream}.access`, and every hub's applier writes it
//! through its writer in stream order, so a key made on one hub works on
//! every other (each reads its keys again within a second).

use serde::{Deserialize, Serialize};

use super::JournalError;
use crate::access::{Role, is_valid_group};
use crate::store::writer::AccessChange;

/// A change to keys or groups, as the stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessEntry {
    /// A new key (its SHA-256 only); a name taken keeps its key.
    AddKey {
        name: String,
        key_sha256: Vec<u8>,
        role: String,
        #[serde(default)]
        groups: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_ms: Option<i64>,
    },
    RevokeKey {
        name: String,
    },
    /// A device's name and groups.
    Device {
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default)]
        join: Vec<String>,
        #[serde(default)]
        leave: Vec<String>,
    },
}

impl AccessEntry {
    /// The write it makes, or why it does not hold together.
    ///
    /// # Errors
    /// An unknown role, a hash that is not 32 bytes, or a name that cannot
    /// be a group's, a key's or a device's.
    pub fn to_write(&self) -> Result<AccessChange, String> {
        let check_groups = |groups: &[String]| match groups.iter().find(|g| !is_valid_group(g)) {
            Some(bad) => Err(format!("{bad:?} is not a group name")),
            None => Ok(()),
        };
        Ok(match self {
            AccessEntry::AddKey {
                name,
                key_sha256,
                role,
                groups,
                expires_ms,
            } => {
                if !is_valid_group(name) {
                    return Err(format!("{name:?} is not a key name"));
                }
                check_groups(groups)?;
                AccessChange::AddKey {
                    name: name.clone(),
                    key_sha256: key_sha256
                        .as_slice()
                        .try_into()
                        .map_err(|_| "a key's hash is 32 bytes".to_owned())?,
                    role: Role::parse(role)
                        .ok_or_else(|| format!("{role:?} is not a role"))?
                        .as_str(),
                    groups: groups.clone(),
                    expires_ms: *expires_ms,
                }
            }
            AccessEntry::RevokeKey { name } => AccessChange::RevokeKey { name: name.clone() },
            AccessEntry::Device {
                device,
                name,
                join,
                leave,
            } => {
                if !protocol::is_valid_device_id(device) {
                    return Err(format!("{device:?} is not a device id"));
                }
                check_groups(join)?;
                check_groups(leave)?;
                AccessChange::Device {
                    device_id: device.clone(),
                    name: name.clone(),
                    join: join.clone(),
                    leave: leave.clone(),
                }
            }
        })
    }
}

/// Publishes an access change to the cluster at `url`, stream `stream`,
/// and waits for the stream to hold it. For the command line.
///
/// # Errors
/// NATS out of reach, or the stream refusing it.
pub async fn announce(url: &str, stream: &str, entry: &AccessEntry) -> Result<(), JournalError> {
    let payload = serde_json::to_vec(entry).map_err(|err| JournalError::Stream {
        stream: stream.to_owned(),
        detail: err.to_string(),
    })?;
    super::publish_once(url, stream, format!("{stream}.access"), payload).await?;
    Ok(())
}

impl super::Journal {
    /// Publishes an access change and waits until this hub's applier has
    /// written it (and every entry before it).
    ///
    /// # Errors
    /// NATS refusing or not answering in time.
    pub async fn change_access(&self, entry: &AccessEntry) -> Result<(), JournalError> {
        self.publish_applied(format!("{}.access", self.settings.stream), entry)
            .await
    }

    /// Whether an entry on `subject` is an access change.
    pub(super) fn is_access(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.settings.stream.as_str())
            .is_some_and(|rest| rest == ".access")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_entry_becomes_a_write_and_a_broken_one_is_refused() {
        let key = AccessEntry::AddKey {
            name: "wall".into(),
            key_sha256: vec![7; 32],
            role: "viewer".into(),
            groups: vec!["floor-2".into()],
            expires_ms: None,
        };
        let text = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<AccessEntry>(&text).unwrap(), key);
        assert!(matches!(
            key.to_write(),
            Ok(AccessChange::AddKey { role: "viewer", .. })
        ));
        for broken in [
            AccessEntry::AddKey {
                name: "wall".into(),
                key_sha256: vec![7; 31],
                role: "viewer".into(),
                groups: Vec::new(),
                expires_ms: None,
            },
            AccessEntry::AddKey {
                name: "wall".into(),
                key_sha256: vec![7; 32],
                role: "root".into(),
                groups: Vec::new(),
                expires_ms: None,
            },
            AccessEntry::Device {
                device: "d1".into(),
                name: None,
                join: vec!["a b".into()],
                leave: Vec::new(),
            },
        ] {
            assert!(broken.to_write().is_err(), "{broken:?}");
        }
    }
}
