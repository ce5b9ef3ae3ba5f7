//! Devices provisioned for a whole cluster: `hub device add|revoke
//! --nats-url` publishes the change on `{stream}.devices.{device}`, in the
//! same stream as the readings, and every hub's applier writes it to its
//! own database. A token works on every hub once each has applied it, and
//! a revocation closes the device's connection wherever it is (each hub's
//! revocation watcher sees it in its own database).
//!
//! Entries are JSON; the token travels only as its SHA-256 hash.

use serde::{Deserialize, Serialize};

use super::{JournalError, NATS_TIMEOUT, Settings};
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
}

impl DeviceChange {
    fn device(&self) -> &str {
        match self {
            DeviceChange::Token { device, .. } | DeviceChange::Revoked { device } => device,
        }
    }

    /// What the writer stores, for an entry that holds together.
    ///
    /// # Errors
    /// The id is not a device id, or the hash is not 32 bytes.
    pub fn to_write(&self) -> Result<Provisioned, String> {
        if !protocol::is_valid_device_id(self.device()) {
            return Err(format!(
                "{:?} is not a device id: 1 to 64 characters of A-Z a-z 0-9 - _ . :",
                self.device()
            ));
        }
        Ok(match self {
            DeviceChange::Token {
                device,
                token_sha256,
                name,
            } => Provisioned::Token {
                device_id: device.clone(),
                token_hash: token_sha256
                    .as_slice()
                    .try_into()
                    .map_err(|_| "a token hash is 32 bytes".to_owned())?,
                name: name.clone(),
            },
            DeviceChange::Revoked { device } => Provisioned::Revoked {
                device_id: device.clone(),
            },
        })
    }
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
    let settings = Settings {
        url: url.to_owned(),
        stream: stream.to_owned(),
        hub_id: "cli".into(),
        replicas: 1,
        max_age: NATS_TIMEOUT,
    };
    let client = super::connect(&settings).await?;
    let mut jetstream = async_nats::jetstream::new(client);
    jetstream.set_timeout(NATS_TIMEOUT);
    let refused = |detail: String| JournalError::Stream {
        stream: stream.to_owned(),
        detail,
    };
    let payload = serde_json::to_vec(change).map_err(|err| refused(err.to_string()))?;
    jetstream
        .publish(
            format!("{stream}.devices.{}", change.device()),
            payload.into(),
        )
        .await
        .map_err(|err| refused(err.to_string()))?
        .await
        .map_err(|err| {
            refused(format!(
                "{err} (is a hub with --nats-url running on this stream?)"
            ))
        })?;
    Ok(())
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
}
