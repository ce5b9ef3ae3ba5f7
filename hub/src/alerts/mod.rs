//! Alerts: rules on readings, on silence and on presence, evaluated as a
//! cursor consumer of the commits, each transition of each alert recorded
//! as an `alert` event in the one sequence of positions.
//!
//! - [`rule`]: what a rule says, checked field by field (pure);
//! - [`series`]: one threshold rule on one metric, window and hold (pure);
//! - [`evaluator`]: the task that follows the head, runs the rules and
//!   records transitions through the writer;
//! - [`alertmanager`]: delivery to Prometheus Alertmanager, read from
//!   storage each round;
//! - [`Alerts`]: the handle the API changes rules and acknowledges through.
//!
//! Acknowledging goes through the evaluator's own queue, so a person's
//! acknowledgement and the evaluator's resolution of the same alert are
//! recorded in one order, never both from a stale view.

pub mod alertmanager;
pub mod evaluator;
pub mod rule;
pub mod series;

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::commits::Position;
use crate::store::writer::{RuleChange, WriteError, WriterHandle};
use rule::{Rule, RuleError, RuleSpec};

/// Acknowledgements waiting for the evaluator. Full (a burst of clicks
/// while the evaluator records), the API answers 503 and the person
/// clicks again.
const QUEUED_REQUESTS: usize = 64;

/// What the API asks the evaluator.
#[derive(Debug)]
pub(crate) struct Ack {
    id: Position,
    by: String,
    note: Option<String>,
    reply: oneshot::Sender<Result<Position, AckError>>,
}

/// Why an acknowledgement was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AckError {
    #[error("no alert {0}")]
    NotFound(Position),
    #[error("alert {0} is resolved")]
    Resolved(Position),
    #[error("alert {0} is already acknowledged")]
    AlreadyAcknowledged(Position),
    #[error("too many acknowledgements are waiting; try again")]
    Busy,
    #[error("the hub is stopping")]
    Stopped,
    #[error("the acknowledgement was not stored: {0}")]
    Write(#[from] WriteError),
    #[error("{IN_A_CLUSTER}")]
    Cluster,
}

/// Why a rule was not added or removed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuleWriteError {
    #[error("{0}")]
    Invalid(#[from] RuleError),
    #[error("a rule named {0:?} exists")]
    Exists(String),
    #[error("no rule named {0:?}")]
    Unknown(String),
    #[error("the rule was not stored: {0}")]
    Write(#[from] WriteError),
    #[error("{IN_A_CLUSTER}")]
    Cluster,
}

/// Why a hub of a cluster refuses alerts, for now.
const IN_A_CLUSTER: &str = "alerts are not evaluated in a cluster yet (--nats-url): \
                            each transition must happen once for the whole cluster";

/// The running hub's way to its rules and its evaluator.
#[derive(Debug, Clone)]
pub struct Alerts {
    writer: WriterHandle,
    /// A hub of a cluster has no evaluator (yet): its own positions
    /// would take the stream's.
    in_cluster: bool,
    requests: mpsc::Sender<Ack>,
    rules_changed: Arc<Notify>,
    /// Told after each transition recorded (deliveries wake on it).
    transitions: Arc<Notify>,
}

impl Alerts {
    /// The handle and the evaluator's end of it.
    pub fn new(writer: WriterHandle, in_cluster: bool) -> (Alerts, evaluator::Inbox) {
        let (requests, inbox) = mpsc::channel(QUEUED_REQUESTS);
        let rules_changed = Arc::new(Notify::new());
        let transitions = Arc::new(Notify::new());
        let alerts = Alerts {
            writer,
            in_cluster,
            requests,
            rules_changed: Arc::clone(&rules_changed),
            transitions: Arc::clone(&transitions),
        };
        (
            alerts,
            evaluator::Inbox {
                requests: inbox,
                rules_changed,
                transitions,
            },
        )
    }

    /// Checks and stores a new rule; the evaluator runs it from the next
    /// readings on.
    ///
    /// # Errors
    /// The rule is refused (naming the field), exists, or was not stored.
    pub async fn add_rule(&self, spec: RuleSpec) -> Result<Rule, RuleWriteError> {
        let rule = spec.check()?;
        if self.in_cluster {
            return Err(RuleWriteError::Cluster);
        }
        let definition = definition_text(&rule);
        let change = RuleChange::Add {
            name: rule.name.clone(),
            definition,
        };
        if !self.writer.change_rule(change).await? {
            return Err(RuleWriteError::Exists(rule.name));
        }
        self.rules_changed.notify_one();
        Ok(rule)
    }

    /// Removes a rule; its open alerts resolve.
    ///
    /// # Errors
    /// There is no such rule, or it was not removed.
    pub async fn remove_rule(&self, name: &str) -> Result<(), RuleWriteError> {
        if self.in_cluster {
            return Err(RuleWriteError::Cluster);
        }
        let change = RuleChange::Remove {
            name: name.to_owned(),
        };
        if !self.writer.change_rule(change).await? {
            return Err(RuleWriteError::Unknown(name.to_owned()));
        }
        self.rules_changed.notify_one();
        Ok(())
    }

    /// Records that `by` has seen alert `id`; answers the transition's
    /// position.
    ///
    /// # Errors
    /// No such alert, not firing, or not recorded.
    pub async fn acknowledge(
        &self,
        id: Position,
        by: String,
        note: Option<String>,
    ) -> Result<Position, AckError> {
        if self.in_cluster {
            return Err(AckError::Cluster);
        }
        let (reply, answer) = oneshot::channel();
        let ack = Ack {
            id,
            by,
            note,
            reply,
        };
        self.requests.try_send(ack).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => AckError::Busy,
            mpsc::error::TrySendError::Closed(_) => AckError::Stopped,
        })?;
        answer.await.map_err(|_| AckError::Stopped)?
    }
}

impl Alerts {
    /// Notified after each transition the evaluator records.
    pub fn transitions(&self) -> Arc<Notify> {
        Arc::clone(&self.transitions)
    }
}

/// A checked rule's definition as stored: its JSON, defaults filled in.
pub fn definition_text(rule: &Rule) -> String {
    serde_json::to_string(&rule.spec).unwrap_or_default()
}
