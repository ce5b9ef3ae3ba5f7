//! One running hub per database file. Two hubs writing one file would each
//! number readings from their own idea of the last position, and every
//! other commit of theirs would fail (`UNIQUE constraint failed:
//! samples.pos`). A hub holds an exclusive lock on `<db>.lock` for its
//! whole life, with its pid inside, so a second one refuses to start and
//! names the first. The kernel drops the lock when the process ends,
//! however it ends, so a killed hub never leaves a stale one.
//!
//! The command line's short writes (`hub device add`) and readers such as
//! `sqlite3` take no part: SQLite's own locking serves them.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock, held while this lives.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

/// Why the database could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{db} is in use by another hub (pid {pid}, which holds {lock}); stop it, or give this hub another --db",
        db = db.display(),
        lock = lock.display()
    )]
    Held {
        db: PathBuf,
        lock: PathBuf,
        pid: String,
    },
    #[error("cannot lock {}: {source}", lock.display())]
    Io {
        lock: PathBuf,
        source: std::io::Error,
    },
}

/// The lock file beside `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the database's lock for this process.
///
/// # Errors
/// Another process holds it, or the lock file cannot be made.
pub fn lock(db: &Path) -> Result<DbLock, LockError> {
    let lock = lock_path(db);
    let io = |source| LockError::Io {
        lock: lock.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(LockError::Held {
                db: db.to_owned(),
                lock,
                pid,
            });
        }
        Err(TryLockError::Error(err)) => return Err(io(err)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DbLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let first = lock(&db).unwrap();
        let err = lock(&db).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        assert!(
            text.contains("t.db.lock") && text.contains("--db"),
            "{text}"
        );
        drop(first);
        assert!(lock(&db).is_ok(), "free once the first holder is gone");
    }
}
