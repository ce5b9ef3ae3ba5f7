//! Delivery to Prometheus Alertmanager (`--alertmanager-url`), the way
//! Prometheus delivers: every round posts every alert not resolved, and
//! those resolved in the last 15 minutes, to Alertmanager's v2 API
//! (`POST /api/v2/alerts`). Alertmanager does the grouping, silences,
//! inhibition and routing to mail, chat and pagers.
//!
//! What it posts is read from storage each round (the `alerts` view), so
//! nothing is kept here that a restart or an outage could lose: a round
//! runs when the evaluator records a transition and every
//! `--alertmanager-resend`; a round Alertmanager refused or did not answer
//! is tried again after a second, then after longer waits up to the resend
//! interval. An Alertmanager that was away therefore hears, once back, of
//! every alert still firing and of every resolution of the last 15
//! minutes; one away longer lets firing alerts expire by their `endsAt`
//! (four resend intervals ahead, as Prometheus sets it).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::alerts::AlertRow;
use crate::store::{Store, now_ms};

/// How long a resolved alert is still posted: Prometheus's 15 minutes.
const RESOLVED_KEPT: Duration = Duration::from_secs(15 * 60);
/// The first wait after a failed round; it doubles up to the resend
/// interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How long a round may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how often.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Alertmanager's base URL (`http://host:9093`).
    pub url: url::Url,
    /// How often every alert is posted again.
    pub resend: Duration,
}

/// The task that posts alerts to Alertmanager.
#[derive(Debug)]
pub struct Notifier {
    store: Store,
    settings: Settings,
    client: reqwest::Client,
    /// Told by the evaluator after each transition it records.
    changed: Arc<Notify>,
}

impl Notifier {
    pub fn new(store: Store, settings: Settings, changed: Arc<Notify>) -> Notifier {
        Notifier {
            store,
            settings,
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap_or_default(),
            changed,
        }
    }

    /// Posts rounds until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let endpoint = match self.settings.url.join("api/v2/alerts") {
            Ok(endpoint) => endpoint,
            Err(err) => {
                tracing::error!(error = %err, "--alertmanager-url cannot take api/v2/alerts");
                return;
            }
        };
        let mut wait = self.settings.resend;
        let mut failing = false;
        loop {
            match self.round(&endpoint).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("Alertmanager takes alerts again");
                    }
                    failing = false;
                    wait = self.settings.resend;
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "Alertmanager did not take the alerts; trying again");
                    }
                    wait = if failing {
                        (wait * 2).min(self.settings.resend)
                    } else {
                        FIRST_RETRY.min(self.settings.resend)
                    };
                    failing = true;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One post of every alert Alertmanager should know of.
    async fn round(&self, endpoint: &url::Url) -> anyhow::Result<()> {
        let since = now_ms() - i64::try_from(RESOLVED_KEPT.as_millis()).unwrap_or(i64::MAX);
        let alerts = self.store.alerts_to_deliver(since).await?;
        if alerts.is_empty() {
            return Ok(());
        }
        let expires =
            now_ms() + i64::try_from((self.settings.resend * 4).as_millis()).unwrap_or(i64::MAX);
        let body: Vec<Value> = alerts
            .iter()
            .map(|alert| postable(alert, expires))
            .collect();
        let response = self
            .client
            .post(endpoint.clone())
            .header("content-type", "application/json")
            .body(Value::Array(body).to_string())
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "Alertmanager answered {status}");
        Ok(())
    }
}

/// An alert as Alertmanager's v2 API takes it: labels identify it (rule,
/// device, metric, severity, as Prometheus's `alertname` and labels do),
/// annotations describe it.
fn postable(alert: &AlertRow, expires_ms: i64) -> Value {
    let mut labels = Map::new();
    labels.insert("alertname".into(), alert.rule.clone().into());
    labels.insert("rule".into(), alert.rule.clone().into());
    labels.insert("device".into(), alert.device.clone().into());
    if let Some(metric) = &alert.metric {
        labels.insert("metric".into(), metric.clone().into());
    }
    labels.insert("severity".into(), alert.severity.clone().into());
    let mut annotations = Map::new();
    annotations.insert("message".into(), alert.message.clone().into());
    annotations.insert("alert_id".into(), alert.id.to_string().into());
    if let Some(value) = alert.value {
        annotations.insert("value".into(), value.to_string().into());
    }
    if let Some(by) = &alert.acknowledged_by {
        annotations.insert("acknowledged_by".into(), by.clone().into());
    }
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(alert.fired_ms),
        "endsAt": rfc3339(alert.resolved_ms.unwrap_or(expires_ms)),
    })
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commits::AlertState;

    #[test]
    fn an_alert_is_posted_with_its_labels_and_times() {
        let alert = AlertRow {
            id: 42,
            device: "freezer-1".into(),
            rule: "warm".into(),
            metric: Some("temp".into()),
            severity: "critical".into(),
            message: "freezer-1 temp is 9".into(),
            value: Some(9.0),
            state: AlertState::Resolved,
            fired_ms: 1_700_000_000_000,
            acknowledged_ms: None,
            acknowledged_by: None,
            note: None,
            resolved_ms: Some(1_700_000_060_000),
        };
        let posted = postable(&alert, 0);
        assert_eq!(posted["labels"]["alertname"], "warm");
        assert_eq!(posted["labels"]["device"], "freezer-1");
        assert_eq!(posted["labels"]["severity"], "critical");
        assert_eq!(posted["annotations"]["alert_id"], "42");
        assert_eq!(posted["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(posted["endsAt"], "2023-11-14T22:14:20.000Z");
    }
}
