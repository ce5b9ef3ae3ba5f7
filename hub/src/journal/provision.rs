//! Devices provisioned for a whole cluster: `hub device add|revoke
//! --nats-url` publishes the change on `{stream}.devices.{device}`, in the
//! same stream as the readings, and every hub's applier writes it to its
//! own database. A token works on every hub once each has applied it, and
//! a revocation closes the device's connection wherever it is (each hub's
//! revocation watcher sees it in its own database).
//!
//! Entries are JSON; the token travels only as its SHA-256 hash.

use serde::{Deserialize, Serialize};

use super::JournalError;
use crate::invalid::Invalid;
use crate::store::writer::Provisioned;

/// A provisioning entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum DeviceChange {
    /// The device may connect with the token of this hash.
    Token {
        device: String,
        token_sha256: Vec<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// The device is revoked.
    Revoked { device: String },
    /// A hub's provisioning key registered the device and issued it the
    /// token of this hash (see `Provisioned::Enrolled`).
    Enrolled {
        device: String,
        token_sha256: Vec<u8>,
    },
    /// The device showed a hub that it holds its credential: the token of
    /// this hash, or none (a certificate vouched for it).
    Confirmed {
        device: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_sha256: Option<Vec<u8>>,
    },
}

impl DeviceChange {
    /// The entry for what a hub's session writes about a device's
    /// enrolment; `None` for a change that is not a session's.
    pub fn of(change: &Provisioned) -> Option<DeviceChange> {
        match change {
            Provisioned::Enrolled {
                device_id,
                token_hash,
            } => Some(DeviceChange::Enrolled {
                device: device_id.clone(),
                token_sha256: token_hash.to_vec(),
            }),
            Provisioned::Confirmed {
                device_id,
                token_hash,
            } => Some(DeviceChange::Confirmed {
                device: device_id.clone(),
                token_sha256: token_hash.map(|hash| hash.to_vec()),
            }),
            Provisioned::Token { .. } | Provisioned::Revoked { .. } => None,
        }
    }

    fn device(&self) -> &str {
        match self {
            DeviceChange::Token { device, .. }
            | DeviceChange::Revoked { device }
            | DeviceChange::Enrolled { device, .. }
            | DeviceChange::Confirmed { device, .. } => device,
        }
    }

    /// What the writer stores, for an entry that holds together.
    ///
    /// # Errors
    /// The id is not a device id, or the hash is not 32 bytes.
    pub fn to_write(&self) -> Result<Provisioned, Invalid> {
        if !protocol::is_valid_device_id(self.device()) {
            return Err(format!(
                "{:?} is not a device id: 1 to 64 characters of A-Z a-z 0-9 - _ . :",
                self.device()
            )
            .into());
        }
        let hash = |bytes: &[u8]| -> Result<[u8; 32], Invalid> {
            bytes
                .try_into()
                .map_err(|_| Invalid::from("a token hash is 32 bytes"))
        };
        Ok(match self {
            DeviceChange::Token {
                device,
                token_sha256,
                name,
            } => Provisioned::Token {
                device_id: device.clone(),
                token_hash: hash(token_sha256)?,
                name: name.clone(),
            },
            DeviceChange::Enrolled {
                device,
                token_sha256,
            } => Provisioned::Enrolled {
                device_id: device.clone(),
                token_hash: hash(token_sha256)?,
            },
            DeviceChange::Confirmed {
                device,
                token_sha256,
            } => Provisioned::Confirmed {
                device_id: device.clone(),
                token_hash: token_sha256.as_deref().map(hash).transpose()?,
            },
            DeviceChange::Revoked { device } => Provisioned::Revoked {
                device_id: device.clone(),
            },
        })
    }
}

/// Where a device's provisioning entries go.
fn device_subject(stream: &str, device: &str) -> String {
    format!("{stream}.devices.{device}")
}

/// Publishes `change` to the cluster at `url`, stream `stream`, and waits
/// for the stream to hold it. For the command line.
///
/// # Errors
/// The change would be skipped by every hub (checked before anything is
/// sent), NATS cannot be reached, or the stream does not exist or refuses
/// it.
pub async fn announce(url: &str, stream: &str, change: &DeviceChange) -> Result<(), JournalError> {
    change.to_write().map_err(JournalError::BadChange)?;
    let payload = serde_json::to_vec(change).map_err(|err| JournalError::Stream {
        stream: stream.to_owned(),
        detail: err.to_string(),
    })?;
    super::publish_once(
        url,
        stream,
        device_subject(stream, change.device()),
        payload,
    )
    .await?;
    Ok(())
}

impl super::Journal {
    fn device_subject(&self, device: &str) -> String {
        device_subject(&self.settings.stream, device)
    }

    /// Publishes a session's change to a device's enrolment and waits
    /// until this hub's applier has stored it: every hub applies the
    /// stream's entries in one order, so what this database says of the
    /// device then (whose enrolment took, if two hubs raced) is what every
    /// hub's says.
    ///
    /// # Errors
    /// NATS refuses or does not answer in time.
    pub async fn provision(&self, change: &DeviceChange) -> Result<(), JournalError> {
        self.publish_applied(self.device_subject(change.device()), change)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_entry_becomes_a_write_and_a_broken_one_is_refused() {
        let entry = DeviceChange::Token {
            device: "dev-1".into(),
            token_sha256: vec![7; 32],
            name: None,
        };
        let json = serde_json::to_string(&entry).unwrap();
        let back: DeviceChange = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.to_write().unwrap(),
            Provisioned::Token {
                device_id: "dev-1".into(),
                token_hash: [7; 32],
                name: None
            }
        );
        let short = DeviceChange::Token {
            device: "dev-1".into(),
            token_sha256: vec![7; 31],
            name: None,
        };
        assert!(short.to_write().is_err());
        let bad_id = DeviceChange::Revoked {
            device: "a b".into(),
        };
        assert!(bad_id.to_write().is_err());
    }

    #[test]
    fn a_sessions_enrolment_and_confirmation_travel_and_come_back_whole() {
        for change in [
            Provisioned::Enrolled {
                device_id: "dev-1".into(),
                token_hash: [9; 32],
            },
            Provisioned::Confirmed {
                device_id: "dev-1".into(),
                token_hash: Some([9; 32]),
            },
            Provisioned::Confirmed {
                device_id: "dev-1".into(),
                token_hash: None,
            },
        ] {
            let entry = DeviceChange::of(&change).unwrap();
            let json = serde_json::to_vec(&entry).unwrap();
            let back: DeviceChange = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.to_write().unwrap(), change);
        }
    }
}
