//! The evaluator: a cursor consumer of the commits (ARCHITECTURE.md,
//! "Commit consumers") that runs every rule over the readings and statuses
//! in position order, and a timer for silence and offline rules, by the
//! hub's clock. Nothing waits for it: an Ack never does. It meets commits
//! in memory as they are published ([`super::feed`]) and reads from
//! SQLite only what the feed dropped or it has not seen (at a start).
//!
//! Each transition is an `alert` event recorded through the writer before
//! the evaluator moves on, so what it has recorded is what storage holds.
//! Its cursor is saved in `hub_state` (`alert_cursor`) every half second
//! while it has rules, and at its stop. After a restart it reads back the alerts not yet resolved
//! (none fires again: a firing alert's series starts firing, and only
//! resolves) and each series' last reading that caused a transition, then
//! evaluates again from its saved cursor: readings it had evaluated but
//! not yet saved the cursor past give the same transitions at the same
//! readings (threshold rules run on the readings' own times), and those at
//! or before a stored cause are not recorded twice; readings it never saw
//! are evaluated as they would have been. Silence and offline rules start
//! from the last reading's and the last status's stored times, so what
//! went quiet while the hub was down fires at the first tick.
//!
//! What a restart loses: a threshold's window and the time its condition
//! had held before the saved cursor (they build again from the readings
//! after it, as Prometheus's `for` does without its saved state).
//!
//! In a cluster every hub evaluates the same log, and appends each
//! transition to the stream as an event of its device instead (with a
//! message id of the rule, device, state and causing reading, so the
//! stream keeps one of those); every hub's applier keeps only those that
//! change the alert as storage holds it (`AlertChange::applies`), so each
//! happens once for the whole cluster, whichever hubs run.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::feed::{Fed, Queue};
use super::rule::{Kind, Rule, RuleSpec};
use super::series::{Change, Series};
use super::{Ack, AckError};
use crate::admission::{MetricNames, Names};
use crate::commits::{AlertChange, AlertState, EventKind, Head, NewEvent, Position};
use crate::journal::{Journal, first_position};
use crate::store::query::{EventRow, ReadingRow};
use crate::store::writer::{WriteError, WriterHandle};
use crate::store::{Store, StoreError, now_ms};

/// Where the evaluator's cursor is kept in `hub_state`.
const CURSOR_KEY: &str = "alert_cursor";
/// Readings (and as many events) read per catch-up query.
const PAGE_ROWS: u32 = 4_096;
/// How often silence and offline rules are looked at, the rules read
/// again (the CLI changes them in the file) and the cursor saved.
const TICK: Duration = Duration::from_millis(500);
/// After a failed read or write, the wait before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// The evaluator's end of [`super::Alerts`].
#[derive(Debug)]
pub struct Inbox {
    pub(super) requests: mpsc::Receiver<Ack>,
    pub(super) rules_changed: Arc<Notify>,
    pub(super) transitions: Arc<Notify>,
    pub(super) cursor: Arc<AtomicI64>,
    pub(super) rules: Arc<AtomicUsize>,
}

/// One alert's identity: a rule on a device, and the metric for rules
/// that watch one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    rule: String,
    device: String,
    metric: Option<String>,
}

/// An alert not yet resolved, and the rule as it fired (a rule changed
/// or removed since resolves it).
#[derive(Debug, Clone)]
struct Open {
    id: Position,
    state: AlertState,
    definition: serde_json::Value,
}

/// A (device, metric) that has been quiet since (the hub's time).
type Quiet<'a> = (&'a String, Option<&'a String>, i64);

/// A transition the rules asked for.
#[derive(Debug)]
struct Transition {
    rule: Arc<Rule>,
    key: Key,
    state: AlertState,
    value: Option<f64>,
    cause: Option<Position>,
}

/// Why a round of evaluation stopped short.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Read(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

pub struct Evaluator {
    store: Store,
    writer: WriterHandle,
    /// In a cluster: transitions go to the stream.
    journal: Option<Journal>,
    /// Commits as they are published, while there are rules.
    queue: Queue,
    /// Metric rows' names, for the commits the queue brings.
    names: Arc<Names>,
    head: Head,
    inbox: Inbox,
    rules: Vec<Arc<Rule>>,
    /// Each rule's stored definition, to notice changes.
    texts: HashMap<String, String>,
    /// Threshold series: device, then rule name. Nested so that a reading
    /// finds its own by `&str`, without building a key.
    series: HashMap<String, HashMap<String, Series>>,
    open: HashMap<Key, Open>,
    last_cause: HashMap<Key, Position>,
    /// The hub's time of each (device, metric)'s last reading.
    seen: HashMap<String, HashMap<String, i64>>,
    /// The hub's time of each device's last reading.
    device_seen: HashMap<String, i64>,
    /// Devices offline, since (the hub's time of the status).
    offline_since: HashMap<String, i64>,
    /// Metric rows' names met so far (from `names`).
    row_names: HashMap<i64, Arc<MetricNames>>,
    /// Which rules watch a (device, metric): indices into `rules`.
    watching: HashMap<String, HashMap<String, Arc<[usize]>>>,
    /// Devices with an alert not resolved, and how many.
    alerting: HashMap<String, usize>,
    device_rows: HashMap<String, i64>,
    cursor: Position,
    saved: Position,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("rules", &self.rules.len())
            .field("open", &self.open.len())
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Evaluator {
    /// Reads back the cursor, the rules and the alerts not yet resolved.
    ///
    /// # Errors
    /// A database failure.
    pub async fn open(
        store: Store,
        writer: WriterHandle,
        journal: Option<Journal>,
        mut head: Head,
        inbox: Inbox,
        (queue, names): (Queue, Arc<Names>),
    ) -> Result<Evaluator, StoreError> {
        // The first start evaluates from now on.
        let cursor = match store.state(CURSOR_KEY).await? {
            Some(cursor) => cursor,
            None => head.current(),
        };
        let mut evaluator = Evaluator {
            store,
            writer,
            journal,
            queue,
            names,
            head,
            inbox,
            rules: Vec::new(),
            texts: HashMap::new(),
            series: HashMap::new(),
            open: HashMap::new(),
            last_cause: HashMap::new(),
            seen: HashMap::new(),
            device_seen: HashMap::new(),
            offline_since: HashMap::new(),
            watching: HashMap::new(),
            alerting: HashMap::new(),
            row_names: HashMap::new(),
            device_rows: HashMap::new(),
            cursor,
            saved: cursor,
        };
        evaluator.read_back().await?;
        Ok(evaluator)
    }

    /// Evaluates until `shutdown`, then saves the cursor.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rules_changed = Arc::clone(&self.inbox.rules_changed);
        loop {
            if let Err(err) = self.take_queued().await {
                tracing::warn!(error = %err, "alert evaluation failed; trying again");
                self.recover(&shutdown).await;
                continue;
            }
            if let Err(err) = self.catch_up().await {
                tracing::warn!(error = %err, "alert evaluation failed; trying again");
                self.recover(&shutdown).await;
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                moved = self.head.moved() => if !moved { break },
                Some(fed) = self.queue.receiver.recv() => {
                    if let Err(err) = self.take(fed).await {
                        tracing::warn!(error = %err, "alert evaluation failed; trying again");
                        self.recover(&shutdown).await;
                    }
                }
                () = rules_changed.notified() => self.reload_rules().await,
                Some(ack) = self.inbox.requests.recv() => self.acknowledge(ack).await,
                _ = tick.tick() => {
                    self.reload_rules().await;
                    if let Err(err) = self.timers().await {
                        tracing::warn!(error = %err, "alert timers failed");
                    }
                    self.save_cursor().await;
                }
            }
        }
        self.save_cursor().await;
    }

    /// After a failure: wait, then read back what storage holds, so that
    /// what the failed write lost is evaluated again.
    async fn recover(&mut self, shutdown: &CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
        if let Err(err) = self.read_back().await {
            tracing::warn!(error = %err, "reading alerts back failed");
        }
    }

    /// The rules, the open alerts, each series' last cause, and where
    /// silence and offline rules start: all from storage.
    async fn read_back(&mut self) -> Result<(), StoreError> {
        self.series.clear();
        self.open.clear();
        self.alerting.clear();
        self.last_cause.clear();
        for open in self.store.open_alerts().await? {
            let key = Key {
                rule: open.rule,
                device: open.device,
                metric: open.metric,
            };
            let definition = serde_json::from_str(&open.definition).unwrap_or_default();
            let open = Open {
                id: open.id,
                state: open.state,
                definition,
            };
            self.note_open(key, open);
        }
        for cause in self.store.last_alert_causes().await? {
            let key = Key {
                rule: cause.rule,
                device: cause.device,
                metric: cause.metric,
            };
            self.last_cause.insert(key, cause.cause);
        }
        self.read_quiet().await?;
        // Read the rules again, and resolve what fired under a rule that
        // has changed or gone since.
        self.texts.clear();
        self.reload_rules().await;
        Ok(())
    }

    /// Where silence and offline rules start: each metric's last reading
    /// and each device's last status, as stored.
    async fn read_quiet(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        self.seen.clear();
        self.device_seen.clear();
        for (device, metric, ts_ms) in self.store.last_readings().await? {
            let at = ts_ms.min(now);
            let last = self.device_seen.entry(device.clone()).or_insert(at);
            *last = (*last).max(at);
            self.seen.entry(device).or_default().insert(metric, at);
        }
        self.offline_since.clear();
        for (device, online, ts_ms) in self.store.last_statuses().await? {
            if !online {
                self.offline_since.insert(device, ts_ms.min(now));
            }
        }
        Ok(())
    }

    /// Reads the rules; if they changed, runs the new ones from here on
    /// and resolves the alerts of rules changed or removed.
    async fn reload_rules(&mut self) {
        let stored = match self.store.alert_rules().await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(error = %err, "reading the alert rules failed");
                return;
            }
        };
        let texts: HashMap<String, String> = stored.into_iter().collect();
        if texts == self.texts && !self.texts.is_empty() {
            return;
        }
        let mut rules = Vec::with_capacity(texts.len());
        for (name, text) in &texts {
            // A row edited by hand into something else is skipped, loudly.
            match serde_json::from_str::<RuleSpec>(text)
                .map_err(|err| err.to_string())
                .and_then(|spec| spec.check().map_err(|err| err.to_string()))
            {
                Ok(rule) => rules.push(Arc::new(rule)),
                Err(err) => {
                    tracing::warn!(rule = %name, error = %err, "skipped an alert rule that does not read back")
                }
            }
        }
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        if self.rules.is_empty() && !rules.is_empty() {
            // Without rules nothing was read: start from what is stored.
            if let Err(err) = self.read_quiet().await {
                tracing::warn!(error = %err, "reading the last readings and statuses failed");
                return;
            }
        }
        self.texts = texts;
        self.rules = rules;
        self.queue.active.store(!self.rules.is_empty(), Relaxed);
        self.inbox.rules.store(self.rules.len(), Relaxed);
        self.watching.clear();
        let current: HashMap<&str, serde_json::Value> = self
            .rules
            .iter()
            .map(|rule| {
                (
                    rule.name.as_str(),
                    serde_json::to_value(&rule.spec).unwrap_or_default(),
                )
            })
            .collect();
        for rules in self.series.values_mut() {
            rules.retain(|rule, _| current.contains_key(rule.as_str()));
        }
        let stale: Vec<Key> = self
            .open
            .iter()
            .filter(|(key, open)| current.get(key.rule.as_str()) != Some(&open.definition))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            let Some(open) = self.open.get(&key) else {
                continue;
            };
            let definition = open.definition.clone();
            let resolved = self
                .record(
                    &key,
                    AlertState::Resolved,
                    None,
                    None,
                    Some(definition),
                    None,
                )
                .await;
            if let Err(err) = resolved {
                tracing::warn!(error = %err, rule = %key.rule, "resolving an alert of a changed rule failed");
                // Tried again at the next change; the alert stays open.
                self.texts.clear();
            }
        }
    }

    /// Evaluates the commits the queue holds.
    async fn take_queued(&mut self) -> Result<(), Failure> {
        while let Ok(fed) = self.queue.receiver.try_recv() {
            self.take(fed).await?;
        }
        Ok(())
    }

    /// Evaluates one commit from the queue: what the cursor has not passed
    /// of it, after reading from SQLite whatever lies between the cursor
    /// and it (commits the queue dropped).
    async fn take(&mut self, fed: Fed) -> Result<(), Failure> {
        let Fed { after, commit } = fed;
        if self.rules.is_empty() {
            return Ok(());
        }
        if self.cursor < after {
            self.read_stored(after).await?;
        }
        let mut rows = Vec::with_capacity(commit.readings.len());
        for row in commit.readings.iter().filter(|row| row.pos > self.cursor) {
            let names = match self.row_names.get(&row.sample.metric) {
                Some(names) => Arc::clone(names),
                None => match self.names.get(row.sample.metric) {
                    Some(names) => {
                        self.row_names.insert(row.sample.metric, Arc::clone(&names));
                        names
                    }
                    // Metrics are named before their readings commit; if
                    // not, storage has the names.
                    None => return self.read_stored(commit.last_pos().unwrap_or(after)).await,
                },
            };
            rows.push(ReadingRow {
                pos: row.pos,
                device: names.device.to_string(),
                metric: names.name.to_string(),
                unit: String::new(),
                ts_ms: row.sample.ts_ms,
                value: row.sample.value,
            });
        }
        let events: Vec<EventRow> = commit
            .events
            .iter()
            .filter(|event| event.pos > self.cursor)
            .map(|event| EventRow {
                pos: event.pos,
                device: event.event.device.to_string(),
                ts_ms: event.event.ts_ms,
                kind: event.event.kind.clone(),
            })
            .collect();
        self.evaluate(&rows, &events).await?;
        self.cursor = self.cursor.max(commit.last_pos().unwrap_or(after));
        self.inbox.cursor.store(self.cursor, Relaxed);
        Ok(())
    }

    /// Evaluates everything committed after the cursor.
    async fn catch_up(&mut self) -> Result<(), Failure> {
        let upto = self.head.current();
        self.read_stored(upto).await
    }

    /// Evaluates what SQLite holds after the cursor, up to `upto`.
    async fn read_stored(&mut self, upto: Position) -> Result<(), Failure> {
        while self.cursor < upto {
            if self.rules.is_empty() {
                // Nothing to evaluate; where silence and offline rules
                // start is read back from storage when rules arrive.
                self.cursor = upto;
                break;
            }
            let metrics = self.metrics_wanted();
            let page = self
                .store
                .readings_page(self.cursor, upto, None, metrics.as_deref(), PAGE_ROWS)
                .await?;
            self.evaluate(&page.rows, &page.events).await?;
            self.cursor = page.read_through;
        }
        self.inbox.cursor.store(self.cursor, Relaxed);
        Ok(())
    }

    /// The metrics every rule's readings are among, or `None` if some rule
    /// needs all of them (silence on any metric).
    fn metrics_wanted(&self) -> Option<Vec<String>> {
        let mut names = HashSet::new();
        for rule in &self.rules {
            match (&rule.kind, &rule.metric) {
                (Kind::Offline { .. }, _) => {}
                (_, Some(metric)) => {
                    names.insert(metric.clone());
                }
                (_, None) => return None,
            }
        }
        Some(names.into_iter().collect())
    }

    /// One page's readings and events, in position order.
    async fn evaluate(&mut self, rows: &[ReadingRow], events: &[EventRow]) -> Result<(), Failure> {
        let now = now_ms();
        let (mut rows, mut events) = (rows.iter().peekable(), events.iter().peekable());
        loop {
            let reading_first = match (rows.peek(), events.peek()) {
                (Some(row), Some(event)) => row.pos < event.pos,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return Ok(()),
            };
            let transitions = if reading_first {
                let row = rows.next().expect("peeked");
                self.reading(row, now)
            } else {
                let event = events.next().expect("peeked");
                self.event(event)
            };
            for transition in transitions {
                self.apply(transition).await?;
            }
        }
    }

    /// What one reading changes. The common case (a reading that changes
    /// nothing) allocates nothing: every map is looked up by `&str`.
    fn reading(&mut self, row: &ReadingRow, now: i64) -> Vec<Transition> {
        match self.seen.get_mut(row.device.as_str()) {
            Some(metrics) => match metrics.get_mut(row.metric.as_str()) {
                Some(at) => *at = now,
                None => {
                    metrics.insert(row.metric.clone(), now);
                }
            },
            None => {
                let metrics = HashMap::from([(row.metric.clone(), now)]);
                self.seen.insert(row.device.clone(), metrics);
            }
        }
        match self.device_seen.get_mut(row.device.as_str()) {
            Some(at) => *at = now,
            None => {
                self.device_seen.insert(row.device.clone(), now);
            }
        }
        let alerting = self.alerting.contains_key(row.device.as_str());
        let mut transitions = Vec::new();
        for index in self.watching(&row.device, &row.metric).iter() {
            let rule = &self.rules[*index];
            let key = || Key {
                rule: rule.name.clone(),
                device: row.device.clone(),
                metric: rule.metric.clone(),
            };
            let (state, value) = match &rule.kind {
                Kind::Threshold(threshold) => {
                    let Some(value) = row.value else { continue };
                    let series = match self
                        .series
                        .get_mut(row.device.as_str())
                        .and_then(|rules| rules.get_mut(rule.name.as_str()))
                    {
                        Some(series) => series,
                        None => {
                            // First met: one whose alert is open resolves.
                            let series = if alerting && self.open.contains_key(&key()) {
                                Series::firing()
                            } else {
                                Series::default()
                            };
                            self.series
                                .entry(row.device.clone())
                                .or_default()
                                .entry(rule.name.clone())
                                .or_insert(series)
                        }
                    };
                    match series.observe(threshold, row.ts_ms, value) {
                        Some(Change::Fire(value)) => (AlertState::Firing, value),
                        Some(Change::Clear(value)) => (AlertState::Resolved, value),
                        None => continue,
                    }
                }
                Kind::Silence { .. } if alerting && self.open.contains_key(&key()) => {
                    (AlertState::Resolved, row.value.unwrap_or(f64::NAN))
                }
                Kind::Silence { .. } | Kind::Offline { .. } => continue,
            };
            transitions.push(Transition {
                rule: Arc::clone(rule),
                key: key(),
                state,
                value: Some(value).filter(|v| v.is_finite()),
                cause: Some(row.pos),
            });
        }
        transitions
    }

    /// The rules that a reading of `device`'s `metric` concerns: threshold
    /// rules on it, silence rules on it or on any metric of the device.
    fn watching(&mut self, device: &str, metric: &str) -> Arc<[usize]> {
        if let Some(found) = self.watching.get(device).and_then(|m| m.get(metric)) {
            return Arc::clone(found);
        }
        let found: Arc<[usize]> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| match rule.kind {
                Kind::Threshold(_) => rule.watches(device, Some(metric)),
                Kind::Silence { .. } => {
                    rule.devices.matches(device)
                        && rule.metric.as_deref().is_none_or(|m| m == metric)
                }
                Kind::Offline { .. } => false,
            })
            .map(|(index, _)| index)
            .collect();
        self.watching
            .entry(device.to_owned())
            .or_default()
            .insert(metric.to_owned(), Arc::clone(&found));
        found
    }

    /// Notes an alert not resolved.
    fn note_open(&mut self, key: Key, open: Open) {
        if self.open.insert(key.clone(), open).is_none() {
            *self.alerting.entry(key.device).or_default() += 1;
        }
    }

    /// Notes an alert resolved.
    fn note_resolved(&mut self, key: &Key) {
        if self.open.remove(key).is_some()
            && let Some(count) = self.alerting.get_mut(key.device.as_str())
        {
            *count -= 1;
            if *count == 0 {
                self.alerting.remove(key.device.as_str());
            }
        }
    }

    /// What one event changes: a device back online resolves its offline
    /// alerts; one gone offline starts their clocks.
    fn event(&mut self, event: &EventRow) -> Vec<Transition> {
        let online = match &event.kind {
            EventKind::Status { online } => online,
            EventKind::Alert(change) => {
                // Another hub's transition (in a cluster) or this one's:
                // no reading at or before its cause is judged again.
                if let Some(cause) = change.cause {
                    let key = Key {
                        rule: change.rule.clone(),
                        device: event.device.clone(),
                        metric: change.metric.clone(),
                    };
                    let last = self.last_cause.entry(key).or_insert(cause);
                    *last = (*last).max(cause);
                }
                return Vec::new();
            }
            EventKind::Audit(_) | EventKind::Config(_) => return Vec::new(),
        };
        if !online {
            self.offline_since.insert(event.device.clone(), event.ts_ms);
            return Vec::new();
        }
        self.offline_since.remove(&event.device);
        self.rules
            .iter()
            .filter(|rule| matches!(rule.kind, Kind::Offline { .. }))
            .filter_map(|rule| {
                let key = Key {
                    rule: rule.name.clone(),
                    device: event.device.clone(),
                    metric: None,
                };
                self.open.contains_key(&key).then(|| Transition {
                    rule: Arc::clone(rule),
                    key,
                    state: AlertState::Resolved,
                    value: None,
                    cause: Some(event.pos),
                })
            })
            .collect()
    }

    /// What a silence or offline rule counts from: how long it waits, and
    /// each (device, metric) with the hub's time it went quiet since.
    /// `None` for threshold rules.
    fn quiet<'a>(&'a self, rule: &Rule) -> Option<(i64, Vec<Quiet<'a>>)> {
        Some(match (&rule.kind, &rule.metric) {
            (Kind::Silence { after_ms }, Some(metric)) => (
                *after_ms,
                self.seen
                    .iter()
                    .filter_map(|(d, metrics)| {
                        metrics
                            .get_key_value(metric.as_str())
                            .map(|(m, at)| (d, Some(m), *at))
                    })
                    .collect(),
            ),
            (Kind::Silence { after_ms }, None) => (
                *after_ms,
                self.device_seen
                    .iter()
                    .map(|(d, at)| (d, None, *at))
                    .collect(),
            ),
            (Kind::Offline { after_ms }, _) => (
                *after_ms,
                self.offline_since
                    .iter()
                    .map(|(d, at)| (d, None, *at))
                    .collect(),
            ),
            (Kind::Threshold(_), _) => return None,
        })
    }

    /// Silence and offline rules, by the hub's clock.
    async fn timers(&mut self) -> Result<(), WriteError> {
        let now = now_ms();
        let mut due = Vec::new();
        for rule in &self.rules {
            let (after_ms, quiet) = match self.quiet(rule) {
                Some(found) => found,
                None => continue,
            };
            for (device, metric, since) in quiet {
                if now - since < after_ms || !rule.devices.matches(device) {
                    continue;
                }
                let key = Key {
                    rule: rule.name.clone(),
                    device: device.clone(),
                    metric: metric.cloned(),
                };
                if !self.open.contains_key(&key) {
                    due.push(Transition {
                        rule: Arc::clone(rule),
                        key,
                        state: AlertState::Firing,
                        value: None,
                        cause: None,
                    });
                }
            }
        }
        for transition in due {
            self.apply(transition).await?;
        }
        Ok(())
    }

    /// Records a transition the rules asked for, unless storage holds it
    /// already (evaluated again after a restart) or it changes nothing.
    async fn apply(&mut self, transition: Transition) -> Result<(), WriteError> {
        let Transition {
            rule,
            key,
            state,
            value,
            cause,
        } = transition;
        let recorded =
            cause.is_some_and(|cause| self.last_cause.get(&key).is_some_and(|&last| cause <= last));
        let open = self.open.contains_key(&key);
        let changes = match state {
            AlertState::Firing => !open,
            AlertState::Resolved => open,
            AlertState::Acknowledged => false,
        };
        if recorded || !changes {
            return Ok(());
        }
        let definition = serde_json::to_value(&rule.spec).unwrap_or_default();
        let message = rule.render(&key.device, key.metric.as_deref(), value);
        self.record(
            &key,
            state,
            value,
            cause,
            Some(definition),
            Some((message, rule.severity)),
        )
        .await
        .map(|_| ())
    }

    /// Stores one transition of the alert `key` and notes it; answers its
    /// position.
    async fn record(
        &mut self,
        key: &Key,
        state: AlertState,
        value: Option<f64>,
        cause: Option<Position>,
        definition: Option<serde_json::Value>,
        text: Option<(String, &'static str)>,
    ) -> Result<Position, WriteError> {
        let open = self.open.get(key).cloned();
        let definition = definition
            .or_else(|| open.as_ref().map(|open| open.definition.clone()))
            .unwrap_or_default();
        let (message, severity) = match text {
            Some((message, severity)) => (message, severity.to_owned()),
            None => (
                format!(
                    "{} on {}: the rule changed or was removed",
                    key.rule, key.device
                ),
                definition["severity"]
                    .as_str()
                    .unwrap_or("warning")
                    .to_owned(),
            ),
        };
        let change = AlertChange {
            alert: open.as_ref().map(|open| open.id),
            rule: key.rule.clone(),
            state,
            metric: key.metric.clone(),
            value,
            cause,
            severity,
            message,
            by: None,
            note: None,
            definition: definition.clone(),
        };
        let id = change
            .cause
            .map(|cause| format!("alert:{}:{}:{}:{cause}", key.rule, key.device, state.name()));
        let pos = self.store_change(&key.device, change, id).await?;
        if let Some(cause) = cause {
            self.last_cause.insert(key.clone(), cause);
        }
        match state {
            AlertState::Firing => {
                let open = Open {
                    id: pos,
                    state,
                    definition,
                };
                self.note_open(key.clone(), open);
            }
            AlertState::Acknowledged => {
                if let Some(open) = self.open.get_mut(key) {
                    open.state = state;
                }
            }
            AlertState::Resolved => self.note_resolved(key),
        }
        Ok(pos)
    }

    /// Stores one `alert` event of `device`: through the writer, or in a
    /// cluster as a stream entry (with the message id `id`, if any), whose
    /// position it answers.
    async fn store_change(
        &mut self,
        device: &str,
        change: AlertChange,
        id: Option<String>,
    ) -> Result<Position, WriteError> {
        if let Some(journal) = &self.journal {
            let event = EventKind::Alert(Box::new(change));
            let sequence = journal
                .append_event(device, now_ms(), event, id)
                .await
                .map_err(|err| WriteError::Failed(err.to_string().into()))?;
            self.inbox.transitions.notify_one();
            return Ok(first_position(sequence));
        }
        let device_row = match self.device_rows.get(device) {
            Some(&row) => row,
            None => {
                let rows = self
                    .store
                    .device_rows(&[device])
                    .await
                    .map_err(|err| WriteError::Failed(err.to_string().into()))?;
                let Some(&row) = rows.get(device) else {
                    return Err(WriteError::Failed(format!("no device {device:?}").into()));
                };
                self.device_rows.insert(device.to_owned(), row);
                row
            }
        };
        let event = NewEvent {
            device_row: Some(device_row),
            device: Arc::from(device),
            ts_ms: now_ms(),
            kind: EventKind::Alert(Box::new(change)),
        };
        let stored = self.writer.record(vec![event]).await?;
        self.inbox.transitions.notify_one();
        stored
            .first()
            .copied()
            .ok_or_else(|| WriteError::Failed("an event without a position".into()))
    }

    /// A person's acknowledgement, in order with the evaluator's own.
    async fn acknowledge(&mut self, ack: Ack) {
        let Ack {
            id,
            by,
            note,
            reply,
        } = ack;
        let found = self
            .open
            .iter()
            .find(|(_, open)| open.id == id)
            .map(|(key, open)| (key.clone(), open.clone()));
        let answer = match found {
            Some((_, open)) if open.state == AlertState::Acknowledged => {
                Err(AckError::AlreadyAcknowledged(id))
            }
            Some((key, open)) => {
                let change = AlertChange {
                    alert: Some(open.id),
                    rule: key.rule.clone(),
                    state: AlertState::Acknowledged,
                    metric: key.metric.clone(),
                    value: None,
                    cause: None,
                    severity: open.definition["severity"]
                        .as_str()
                        .unwrap_or("warning")
                        .to_owned(),
                    message: format!("acknowledged by {by}"),
                    by: Some(by),
                    note,
                    definition: open.definition.clone(),
                };
                match self.store_change(&key.device, change, None).await {
                    Ok(pos) => {
                        if let Some(open) = self.open.get_mut(&key) {
                            open.state = AlertState::Acknowledged;
                        }
                        Ok(pos)
                    }
                    Err(err) => Err(AckError::Write(err)),
                }
            }
            None => match self.store.alert(id).await {
                Ok(Some(_)) => Err(AckError::Resolved(id)),
                Ok(None) => Err(AckError::NotFound(id)),
                Err(err) => Err(AckError::Write(WriteError::Failed(err.to_string().into()))),
            },
        };
        // The asker may have gone (its request was cancelled).
        let _ = reply.send(answer);
    }

    /// Saves the cursor through the writer if it moved while rules ran.
    /// Without rules it follows the head unsaved: a hub without rules
    /// commits nothing for alerts, and rules apply from when they arrive.
    async fn save_cursor(&mut self) {
        if self.cursor == self.saved || self.rules.is_empty() {
            return;
        }
        match self.writer.set_state(CURSOR_KEY, self.cursor).await {
            Ok(()) => self.saved = self.cursor,
            Err(err) => tracing::debug!(error = %err, "saving the alert cursor failed"),
        }
    }
}
