//! Giving free pages back to the file system. Retention and compaction
//! delete rows; SQLite keeps their pages as free pages for new rows, so the
//! file never shrinks by itself. With `auto_vacuum = INCREMENTAL` (set by
//! [`convert`] at the first start, after the read-only check) the writer frees them while it has
//! nothing else to do, a bounded step at a time, each step its own
//! transaction: a batch that arrives during a step waits for that one step
//! only, and a kill between or inside steps leaves a whole database (a
//! step commits or rolls back like any other transaction).
//!
//! A database made before this was `auto_vacuum = NONE`, which only a full
//! `VACUUM` changes: [`convert`] does that once, before the writer starts,
//! logging how far it has got.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::health::Faults;

/// Pages one step gives back at most: 1 MiB at SQLite's 4 KiB pages, a
/// few milliseconds of the writer's time.
pub(super) const STEP_PAGES: i64 = 256;

/// Free pages left in place: new rows take them without growing the file,
/// and a hub whose retention frees a little all the time does not move
/// pages to the end of the file and back.
pub(super) const KEEP_FREE_PAGES: i64 = 256;

/// SQLite virtual-machine steps between two looks at the clock during the
/// conversion: a few microseconds' work, so a look costs nothing.
const PROGRESS_OPS: std::ffi::c_int = 1_000;

/// How often the conversion says it is still running.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// `PRAGMA auto_vacuum`'s value for INCREMENTAL.
const INCREMENTAL: i64 = 2;

/// Makes an `auto_vacuum = NONE` database incremental with one `VACUUM`,
/// logging its start, its progress every few seconds and its end; does
/// nothing to one that already is. The `VACUUM` is one transaction: killed
/// midway, the database is as it was and the next start converts again.
///
/// # Errors
/// A database failure (a disk without room for the copy `VACUUM` makes,
/// say): the hub does not start, and the file is unchanged.
pub(super) fn convert(conn: &Connection, faults: Faults) -> rusqlite::Result<()> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    let (before, free) = pages(conn)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let mb = |pages: i64| pages * page_size / 1_000_000;
    tracing::info!(
        file_mb = mb(before),
        free_mb = mb(free),
        "converting the database to give free pages back (once: one VACUUM, which needs about \
         twice the file's size free on disk)"
    );
    let began = Instant::now();
    let mut said = began;
    let mut calls = 0_u64;
    conn.progress_handler(
        PROGRESS_OPS,
        Some(move || {
            calls += 1;
            if faults.abort_while_converting && calls == 5 {
                // A test's kill -9 in the middle of the VACUUM.
                std::process::abort();
            }
            if said.elapsed() >= PROGRESS_EVERY {
                said = Instant::now();
                tracing::info!(
                    seconds = began.elapsed().as_secs(),
                    "still converting the database"
                );
            }
            false
        }),
    )?;
    let done = conn
        .pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .and_then(|()| conn.execute_batch("VACUUM"));
    conn.progress_handler(0, None::<fn() -> bool>)?;
    done?;
    // In WAL mode the VACUUM wrote the whole database to the WAL: copied
    // back and emptied now, it does not stay on the disk beside the file.
    if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %err, "cannot empty the WAL after converting; the next checkpoint does");
    }
    let (after, _) = pages(conn)?;
    tracing::info!(
        seconds = began.elapsed().as_secs_f64(),
        file_mb = mb(after),
        "database converted: free pages go back to the file system from now on"
    );
    Ok(())
}

/// The file shrinks only when a checkpoint has copied the steps' pages
/// back from the WAL, and the writer's own waits for 16,384 pages: one is
/// started on a thread and connection of its own, since a checkpoint runs
/// beside commits (PASSIVE: it never waits for readers) but would hold the
/// writer for as long as it copies.
fn checkpoint_beside(conn: &Connection) {
    let Some(path) = conn
        .path()
        .filter(|path| !path.is_empty())
        .map(str::to_owned)
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("hub-checkpoint".into())
        .spawn(move || {
            let checkpoint = Connection::open(&path).and_then(|conn| {
                conn.busy_timeout(Duration::from_secs(10))?;
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            });
            if let Err(err) = checkpoint {
                tracing::warn!(error = %err, "a checkpoint after vacuuming failed; the next one shrinks the file");
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start a checkpoint after vacuuming");
    }
}

/// The database's pages and how many of them are free.
fn pages(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let pages = conn.query_row("PRAGMA page_count", [], |row| row.get(0))?;
    let free = conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
    Ok((pages, free))
}

/// Whether free pages are waiting to be given back: asked only after
/// something deleted rows, so the writer's loop pays a flag's test per
/// round, not a query.
#[derive(Debug)]
pub(super) struct Vacuum {
    /// Rows were deleted since the free pages were last counted.
    dirty: bool,
    /// Pages were given back since the last checkpoint was started.
    stepped: bool,
    faults: Faults,
}

impl Vacuum {
    /// Free pages a hub left (or a conversion did not reach) are looked
    /// for at the start.
    pub(super) fn new(faults: Faults) -> Vacuum {
        Vacuum {
            dirty: true,
            stepped: false,
            faults,
        }
    }

    /// Rows were deleted: free pages may be waiting.
    pub(super) fn deleted(&mut self) {
        self.dirty = true;
    }

    /// Whether a step is worth taking: more than [`KEEP_FREE_PAGES`] are
    /// free. Once they are not, the flag rests until the next delete.
    pub(super) fn due(&mut self, conn: &Connection) -> bool {
        if !self.dirty {
            return false;
        }
        match conn.query_row("PRAGMA freelist_count", [], |row| row.get::<_, i64>(0)) {
            Ok(free) if free > KEEP_FREE_PAGES => true,
            Ok(_) => {
                self.dirty = false;
                if std::mem::take(&mut self.stepped) {
                    checkpoint_beside(conn);
                }
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot count free pages; not vacuuming");
                self.dirty = false;
                false
            }
        }
    }

    /// Gives back at most [`STEP_PAGES`] free pages (never below
    /// [`KEEP_FREE_PAGES`]) in one transaction; returns how many it gave.
    ///
    /// # Errors
    /// A database failure; the step rolls back, and the flag rests until
    /// the next delete, so a failing disk is not tried in a loop.
    pub(super) fn step(&mut self, conn: &mut Connection) -> rusqlite::Result<i64> {
        let stepped = self.freed_in_one_step(conn);
        match stepped {
            // Nothing given back although pages are free: not worth
            // trying again before the next delete (the loop would spin).
            Ok(0) | Err(_) => self.dirty = false,
            Ok(_) => self.stepped = true,
        }
        stepped
    }

    fn freed_in_one_step(&self, conn: &mut Connection) -> rusqlite::Result<i64> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (_, free) = pages(&tx)?;
        let asked = (free - KEEP_FREE_PAGES).clamp(0, STEP_PAGES);
        // The pragma runs as its rows are stepped through.
        {
            let mut vacuum = tx.prepare(&format!("PRAGMA incremental_vacuum({asked})"))?;
            let mut rows = vacuum.query([])?;
            while rows.next()?.is_some() {}
        }
        if self.faults.abort_in_vacuum_step {
            // A test's kill -9 with the step's pages moved, not committed.
            std::process::abort();
        }
        let (_, left) = pages(&tx)?;
        tx.commit()?;
        Ok(free - left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with 20,000 rows of 200 bytes (about 1,000 pages), half of
    /// them then deleted, in the `auto_vacuum` mode given.
    fn with_free_pages(dir: &std::path::Path, mode: &str) -> Connection {
        let conn = Connection::open(dir.join("t.db")).unwrap();
        conn.pragma_update(None, "auto_vacuum", mode).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x BLOB);
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
             INSERT INTO t SELECT randomblob(200) FROM c;
             DELETE FROM t WHERE rowid <= 10000;",
        )
        .unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn an_old_database_converts_once_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let conn = with_free_pages(dir.path(), "NONE");
        let (pages_before, free_before) = pages(&conn).unwrap();
        assert!(free_before > 400, "{free_before} free of {pages_before}");
        convert(&conn, Faults::default()).unwrap();
        let mode: i64 = conn
            .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, INCREMENTAL);
        assert_eq!(rows(&conn), 10_000);
        // The VACUUM gave the free pages back too.
        let (pages_after, free_after) = pages(&conn).unwrap();
        assert_eq!(free_after, 0);
        assert!(pages_after < pages_before - 400);
        // Converting again does nothing.
        convert(&conn, Faults::default()).unwrap();
    }

    #[test]
    fn steps_give_back_free_pages_down_to_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = with_free_pages(dir.path(), "INCREMENTAL");
        let (pages_before, free_before) = pages(&conn).unwrap();
        assert!(free_before > KEEP_FREE_PAGES + STEP_PAGES);
        let mut vacuum = Vacuum::new(Faults::default());
        let mut steps = 0;
        while vacuum.due(&conn) {
            let freed = vacuum.step(&mut conn).unwrap();
            assert!((1..=STEP_PAGES).contains(&freed), "{freed}");
            steps += 1;
        }
        assert!(steps >= 2, "{steps} steps");
        let (pages_after, free_after) = pages(&conn).unwrap();
        assert_eq!(free_after, KEEP_FREE_PAGES);
        // (A pointer-map page may go with them.)
        assert!(pages_after <= pages_before - (free_before - KEEP_FREE_PAGES));
        assert_eq!(rows(&conn), 10_000);
        // Resting until the next delete, then looking again.
        assert!(!vacuum.due(&conn));
        conn.execute("DELETE FROM t WHERE rowid <= 15000", [])
            .unwrap();
        assert!(!vacuum.due(&conn), "not counted before it is told");
        vacuum.deleted();
        assert!(vacuum.due(&conn));
    }
}
