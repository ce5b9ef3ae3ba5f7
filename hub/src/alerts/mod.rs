//! Alerts: rules on readings, on silence and on presence, evaluated as a
//! cursor consumer of the commits, each transition of each alert recorded
//! as an `alert` event in the one sequence of positions.
//!
//! - [`rule`]: what a rule says, checked field by field (pure);
//! - [`series`]: one threshold rule on one metric, window and hold (pure);
//! - [`evaluator`]: the task that follows the head, runs the rules and
//!   records transitions through the writer;
//! - [`feed`]: the commits handed to it in memory as they are published;
//! - [`alertmanager`]: delivery to Prometheus Alertmanager, read from
//!   storage each round;
//! - [`Alerts`]: the handle the API changes rules and acknowledges through.
//!
//! Acknowledging goes through the evaluator's own queue, so a person's
//! acknowledgement and the evaluator's resolution of the same alert are
//! recorded in one order, never both from a stale view.

pub mod alertmanager;
pub mod evaluator;
pub mod feed;
pub mod rule;
pub mod series;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::commits::{AlertChange, AlertState, EventKind, Position};
use crate::journal::{Journal, first_position};
use crate::store::writer::{RuleChange, WriteError, WriterHandle};
use crate::store::{Store, now_ms};
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
    #[error("the acknowledgement was not stored: {0}")]
    Unavailable(String),
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
    #[error("the rule was not stored: {0}")]
    Unavailable(String),
}

/// The running hub's way to its rules and its evaluator.
#[derive(Debug, Clone)]
pub struct Alerts {
    writer: WriterHandle,
    store: Store,
    /// In a cluster, rules and acknowledgements are entries of the
    /// stream, applied by every hub.
    journal: Option<Journal>,
    requests: mpsc::Sender<Ack>,
    rules_changed: Arc<Notify>,
    /// Told after each transition recorded (deliveries wake on it).
    transitions: Arc<Notify>,
    /// Every position up to here has been evaluated (`/metrics`).
    cursor: Arc<AtomicI64>,
    /// How many rules the evaluator runs (`/metrics`).
    rules: Arc<AtomicUsize>,
}

impl Alerts {
    /// The handle and the evaluator's end of it.
    pub fn new(
        writer: WriterHandle,
        store: Store,
        journal: Option<Journal>,
    ) -> (Alerts, evaluator::Inbox) {
        let (requests, inbox) = mpsc::channel(QUEUED_REQUESTS);
        let rules_changed = Arc::new(Notify::new());
        let transitions = Arc::new(Notify::new());
        let cursor = Arc::new(AtomicI64::new(0));
        let rules = Arc::new(AtomicUsize::new(0));
        let alerts = Alerts {
            writer,
            store,
            journal,
            requests,
            rules_changed: Arc::clone(&rules_changed),
            transitions: Arc::clone(&transitions),
            cursor: Arc::clone(&cursor),
            rules: Arc::clone(&rules),
        };
        (
            alerts,
            evaluator::Inbox {
                requests: inbox,
                rules_changed,
                transitions,
                cursor,
                rules,
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
        let definition = definition_text(&rule);
        if let Some(journal) = &self.journal {
            let unavailable =
                |err: &dyn std::fmt::Display| RuleWriteError::Unavailable(err.to_string());
            let exists = self
                .store
                .alert_rules()
                .await
                .map_err(|err| unavailable(&err))?;
            if exists.iter().any(|(name, _)| *name == rule.name) {
                return Err(RuleWriteError::Exists(rule.name));
            }
            journal
                .change_rule(&rule.name, Some(definition))
                .await
                .map_err(|err| unavailable(&err))?;
            self.rules_changed.notify_one();
            return Ok(rule);
        }
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
        if let Some(journal) = &self.journal {
            let unavailable =
                |err: &dyn std::fmt::Display| RuleWriteError::Unavailable(err.to_string());
            let exists = self
                .store
                .alert_rules()
                .await
                .map_err(|err| unavailable(&err))?;
            if !exists.iter().any(|(known, _)| known == name) {
                return Err(RuleWriteError::Unknown(name.to_owned()));
            }
            journal
                .change_rule(name, None)
                .await
                .map_err(|err| unavailable(&err))?;
            self.rules_changed.notify_one();
            return Ok(());
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
        if let Some(journal) = &self.journal {
            return self.acknowledge_in_cluster(journal, id, by, note).await;
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
    /// In a cluster an acknowledgement is an entry of the stream, judged
    /// by every hub's applier as it comes (`AlertChange::applies`): it
    /// takes only if the alert still fires when it is applied.
    async fn acknowledge_in_cluster(
        &self,
        journal: &Journal,
        id: Position,
        by: String,
        note: Option<String>,
    ) -> Result<Position, AckError> {
        let unavailable = |err: &dyn std::fmt::Display| AckError::Unavailable(err.to_string());
        let alert = self
            .store
            .alert(id)
            .await
            .map_err(|err| unavailable(&err))?;
        let alert = match alert {
            None => return Err(AckError::NotFound(id)),
            Some(alert) => match alert.state {
                AlertState::Resolved => return Err(AckError::Resolved(id)),
                AlertState::Acknowledged => return Err(AckError::AlreadyAcknowledged(id)),
                AlertState::Firing => alert,
            },
        };
        let open = self
            .store
            .open_alerts()
            .await
            .map_err(|err| unavailable(&err))?;
        let definition = open
            .iter()
            .find(|open| open.id == id)
            .and_then(|open| serde_json::from_str(&open.definition).ok())
            .unwrap_or_default();
        let change = AlertChange {
            alert: Some(id),
            rule: alert.rule,
            state: AlertState::Acknowledged,
            metric: alert.metric,
            value: None,
            cause: None,
            severity: alert.severity,
            message: format!("acknowledged by {by}"),
            by: Some(by),
            note,
            definition,
        };
        let sequence = journal
            .append_event(
                &alert.device,
                now_ms(),
                EventKind::Alert(Box::new(change)),
                Some(format!("ack:{id}")),
            )
            .await
            .map_err(|err| unavailable(&err))?;
        journal.until_applied(sequence).await;
        match self
            .store
            .alert(id)
            .await
            .map_err(|err| unavailable(&err))?
        {
            Some(now) if now.state == AlertState::Acknowledged => Ok(first_position(sequence)),
            Some(now) if now.state == AlertState::Resolved => Err(AckError::Resolved(id)),
            _ => Err(AckError::AlreadyAcknowledged(id)),
        }
    }

    /// The evaluator's cursor and rules, for `/metrics`.
    pub fn render(&self) -> String {
        format!(
            "# HELP hub_alert_cursor Every position up to this one has been evaluated by the alert rules.\n\
             # TYPE hub_alert_cursor gauge\nhub_alert_cursor {}\n\
             # HELP hub_alert_rules The alert rules the evaluator runs.\n\
             # TYPE hub_alert_rules gauge\nhub_alert_rules {}\n",
            self.cursor.load(Relaxed),
            self.rules.load(Relaxed)
        )
    }

    /// Notified after each transition the evaluator records.
    pub fn transitions(&self) -> Arc<Notify> {
        Arc::clone(&self.transitions)
    }
}

/// A checked rule's definition as stored: its JSON, defaults filled in.
pub fn definition_text(rule: &Rule) -> String {
    serde_json::to_string(&rule.spec).unwrap_or_default()
}
