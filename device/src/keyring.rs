//! Tokens the hub issued to devices that registered with the provisioning
//! key. A device presents its own token once it has one: the hub refuses
//! the key for it after its first batch. Kept in memory, and in a file
//! when the fleet is given one (`--token-file`), so that a fleet run again
//! against the same hub (or a device that restarts) still gets in.
//!
//! The file holds one `device-id token` line per issued token, appended
//! and flushed to disk before the device sends anything; a later line for
//! the same device replaces an earlier one. It holds secrets: it is
//! created readable by its owner only.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context;

/// Devices' own tokens, by device id.
#[derive(Debug, Default)]
pub struct Keyring {
    tokens: Mutex<HashMap<String, String>>,
    file: Option<PathBuf>,
}

impl Keyring {
    /// A keyring kept in memory only: issued tokens are lost when the
    /// process ends.
    pub fn in_memory() -> Self {
        Keyring::default()
    }

    /// A keyring of tokens given beforehand (an operator's, or `hub
    /// demo`'s), in memory only.
    pub fn with_tokens(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        Keyring {
            tokens: Mutex::new(tokens.into_iter().collect()),
            file: None,
        }
    }

    /// The keyring kept in `path`: read if it exists, created (mode 0600)
    /// when the first token is kept.
    ///
    /// # Errors
    /// The file exists but cannot be read, or a line is not `id token`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut tokens = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (number, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let (id, token) = line.trim().split_once(' ').with_context(|| {
                        format!(
                            "{}: line {} is not `device-id token`",
                            path.display(),
                            number + 1
                        )
                    })?;
                    tokens.insert(id.to_owned(), token.trim().to_owned());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        }
        Ok(Keyring {
            tokens: Mutex::new(tokens),
            file: Some(path.to_owned()),
        })
    }

    /// The device's own token, if it has one.
    pub fn token(&self, device_id: &str) -> Option<String> {
        self.lock().get(device_id).cloned()
    }

    /// Keeps the token the hub issued to `device_id`, on disk first if the
    /// keyring has a file.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn keep(&self, device_id: &str, token: &str) -> io::Result<()> {
        if let Some(path) = &self.file {
            let mut file = open_private(path)?;
            writeln!(file, "{device_id} {token}")?;
            file.sync_all()?;
        }
        self.lock().insert(device_id.to_owned(), token.to_owned());
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_tokens_survive_a_restart_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let keyring = Keyring::open(&path).unwrap();
        assert_eq!(keyring.token("sim-1"), None);
        keyring.keep("sim-1", "first").unwrap();
        keyring.keep("sim-2", "other").unwrap();
        keyring.keep("sim-1", "second").unwrap();
        let reopened = Keyring::open(&path).unwrap();
        assert_eq!(reopened.token("sim-1").as_deref(), Some("second"));
        assert_eq!(reopened.token("sim-2").as_deref(), Some("other"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "a file of secrets");
        }
    }

    #[test]
    fn a_broken_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "sim-1 ok\nnonsense\n").unwrap();
        let err = Keyring::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
