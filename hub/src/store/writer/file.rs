//! The database file the writer opened, and a check that it is still the
//! one at its path. SQLite keeps writing to an open file that was deleted or
//! replaced: commits would succeed, devices would be acknowledged, and the
//! readings would vanish with the process. So before each commit the writer
//! compares the path's device and inode with those of the file it opened.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The identity of the file opened at `path`.
#[derive(Debug, Clone)]
pub(super) struct DbFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DbFile {
    /// Records which file `path` is now (just after opening it).
    pub fn at(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(DbFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether `path` is still the file that was opened; if not, why not.
    pub fn check(&self) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => Ok(()),
            Ok(_) => Err(format!(
                "the database file {} was replaced while the hub ran; restart the hub",
                self.path.display()
            )),
            Err(err) => Err(format!(
                "the database file {} is gone ({err}); restart the hub",
                self.path.display()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_or_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        std::fs::write(&path, b"x").unwrap();
        let file = DbFile::at(&path).unwrap();
        // Held open, as the writer's connection holds it: its inode cannot
        // be handed to the replacement.
        let _held = std::fs::File::open(&path).unwrap();
        assert_eq!(file.check(), Ok(()));

        std::fs::remove_file(&path).unwrap();
        assert!(file.check().unwrap_err().contains("is gone"));

        std::fs::write(&path, b"y").unwrap();
        assert!(file.check().unwrap_err().contains("replaced"));
    }
}
