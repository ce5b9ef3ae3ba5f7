//! The evaluator's feed: an in-line consumer that hands each commit to the
//! evaluator's bounded queue while there are rules, so the evaluator meets
//! what was just committed without reading it back from SQLite (a page
//! read back through the pool cost about 3 µs a reading; a copy of the
//! commit, a fraction of that). Nothing here waits: past `QUEUED` commits
//! (the evaluator is behind) a commit is dropped, and the evaluator reads
//! it from SQLite from its cursor, as after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tokio::sync::mpsc;

use crate::commits::{Commit, Head, InlineConsumer, Position};

/// Commits waiting for the evaluator; past it they are dropped (and read
/// from SQLite instead).
const QUEUED: usize = 256;

/// One commit, and the last position published before it: the evaluator
/// takes it as it is only when its cursor stands there.
#[derive(Debug)]
pub struct Fed {
    pub after: Position,
    pub commit: Commit,
}

/// The publisher's end.
#[derive(Debug)]
pub struct Feed {
    /// Set by the evaluator while it has rules: without, commits are not
    /// copied at all.
    active: Arc<AtomicBool>,
    /// The head as it stands before this commit moves it (in-line
    /// consumers run before it moves).
    head: Head,
    sender: mpsc::Sender<Fed>,
}

/// The evaluator's end.
#[derive(Debug)]
pub struct Queue {
    pub(super) active: Arc<AtomicBool>,
    pub(super) receiver: mpsc::Receiver<Fed>,
}

impl Feed {
    pub fn new(head: Head) -> (Feed, Queue) {
        let (sender, receiver) = mpsc::channel(QUEUED);
        let active = Arc::new(AtomicBool::new(false));
        let feed = Feed {
            active: Arc::clone(&active),
            head,
            sender,
        };
        (feed, Queue { active, receiver })
    }
}

impl InlineConsumer for Feed {
    fn committed(&self, commit: &Commit) {
        if !self.active.load(Relaxed) {
            return;
        }
        let fed = Fed {
            after: self.head.peek(),
            commit: commit.clone(),
        };
        // Full: the evaluator reads this commit from SQLite.
        let _ = self.sender.try_send(fed);
    }
}
