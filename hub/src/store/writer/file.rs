//! The database file the writer opened, and a check that it is still the
//! one at its path. SQLite keeps writing to an open file that was deleted or
//! replaced: commits would succeed, devices would be acknowledged, and the
//! readings would vanish with the process. So before each commit the writer
//! compares the path's device and inode with those of the file it opened.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The file the writer opened is no longer at its path.
#[derive(Debug, thiserror::Error)]
pub(super) enum FileLost {
    #[error("the database file {} was replaced while the hub ran; restart the hub", .0.display())]
    Replaced(PathBuf),
    #[error("the database file {} is gone ({error}); restart the hub", .path.display())]
    Gone {
        path: PathBuf,
        error: std::io::Error,
    },
}

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
    pub fn check(&self) -> Result<(), FileLost> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => Ok(()),
            Ok(_) => Err(FileLost::Replaced(self.path.clone())),
            Err(error) => Err(FileLost::Gone {
                path: self.path.clone(),
                error,
            }),
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
        assert!(file.check().is_ok());

        std::fs::remove_file(&path).unwrap();
        let gone = file.check().unwrap_err();
        assert!(matches!(gone, FileLost::Gone { .. }), "{gone}");
        assert!(gone.to_string().contains("is gone"), "{gone}");

        std::fs::write(&path, b"y").unwrap();
        let replaced = file.check().unwrap_err();
        assert!(matches!(replaced, FileLost::Replaced(_)), "{replaced}");
        assert!(replaced.to_string().contains("replaced"), "{replaced}");
    }
}
