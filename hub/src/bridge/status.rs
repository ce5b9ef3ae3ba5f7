//! What `/healthz` and `/metrics` show of the bridge: shared between its
//! task, which updates it, and the handlers, which read it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

use crate::commits::{Head, Position};
use crate::store::now_ms;

/// What `/metrics` and `/healthz` show of the bridge.
#[derive(Debug)]
pub struct Status {
    pub(super) connected: AtomicBool,
    cursor: AtomicI64,
    pub(super) published: AtomicU64,
    pub(super) skipped: AtomicU64,
    /// Commands that came in on `{prefix}/{device}/cmd`.
    pub(super) commands: AtomicU64,
    /// Commands dropped unanswered because too many were waiting.
    pub(super) commands_dropped: AtomicU64,
    /// Readings from `--mqtt-ingest` topics committed (a redelivery that
    /// was kept once counts again).
    pub(super) ingested: AtomicU64,
    /// Messages on `--mqtt-ingest` topics that were not stored.
    pub(super) ingest_refused: AtomicU64,
    /// When the cursor was last at the head (ms since the epoch).
    caught_up_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    head: Head,
}

/// The bridge's part of `/healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Connected to the broker now.
    pub connected: bool,
    /// Storage positions past the broker's last acknowledgement (devices'
    /// events, which are not published, count too).
    pub lag: i64,
    /// Why the last connection failed, while it is not connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Status {
    pub(super) fn new(head: Head, cursor: Position) -> Self {
        Status {
            connected: AtomicBool::new(false),
            cursor: AtomicI64::new(cursor),
            published: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            commands_dropped: AtomicU64::new(0),
            ingested: AtomicU64::new(0),
            ingest_refused: AtomicU64::new(0),
            caught_up_ms: AtomicI64::new(now_ms()),
            last_error: Mutex::new(None),
            head,
        }
    }

    fn lag(&self) -> i64 {
        (self.head.peek() - self.cursor.load(Relaxed)).max(0)
    }

    pub(super) fn set_cursor(&self, cursor: Position) {
        self.cursor.store(cursor, Relaxed);
        if cursor >= self.head.peek() {
            self.caught_up_ms.store(now_ms(), Relaxed);
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// For `/healthz`.
    pub fn health(&self) -> Health {
        let connected = self.connected.load(Relaxed);
        Health {
            connected,
            lag: self.lag(),
            error: if connected { None } else { self.last_error() },
        }
    }

    /// The bridge's series in Prometheus text.
    pub fn render(&self) -> String {
        let lag_s = if self.lag() == 0 {
            0.0
        } else {
            (now_ms() - self.caught_up_ms.load(Relaxed)).max(0) as f64 / 1000.0
        };
        format!(
            "# HELP hub_mqtt_connected Whether the bridge is connected to the broker.\n# TYPE hub_mqtt_connected gauge\nhub_mqtt_connected {}\n\
             # HELP hub_mqtt_published_total Readings handed to the broker (a rewind publishes some again).\n# TYPE hub_mqtt_published_total counter\nhub_mqtt_published_total {}\n\
             # HELP hub_mqtt_cursor Every reading at or below this position was acknowledged by the broker.\n# TYPE hub_mqtt_cursor gauge\nhub_mqtt_cursor {}\n\
             # HELP hub_mqtt_lag_positions Storage positions (readings, and devices' events, which are not published) past the broker's last acknowledgement.\n# TYPE hub_mqtt_lag_positions gauge\nhub_mqtt_lag_positions {}\n\
             # HELP hub_mqtt_lag_seconds How long since the bridge was last caught up (0 while it is).\n# TYPE hub_mqtt_lag_seconds gauge\nhub_mqtt_lag_seconds {lag_s:.3}\n\
             # HELP hub_mqtt_skipped_total Positions retention deleted before the bridge read them.\n# TYPE hub_mqtt_skipped_total counter\nhub_mqtt_skipped_total {}\n\
             # HELP hub_mqtt_commands_total Commands received on {{prefix}}/{{device}}/cmd.\n# TYPE hub_mqtt_commands_total counter\nhub_mqtt_commands_total {}\n\
             # HELP hub_mqtt_commands_dropped_total Commands dropped unanswered: too many were waiting for devices.\n# TYPE hub_mqtt_commands_dropped_total counter\nhub_mqtt_commands_dropped_total {}\n\
             # HELP hub_mqtt_ingested_total Readings from --mqtt-ingest topics committed (a redelivery kept once counts again).\n# TYPE hub_mqtt_ingested_total counter\nhub_mqtt_ingested_total {}\n\
             # HELP hub_mqtt_ingest_refused_total Messages on --mqtt-ingest topics that were not stored (unparsable, unknown or revoked device).\n# TYPE hub_mqtt_ingest_refused_total counter\nhub_mqtt_ingest_refused_total {}\n",
            u8::from(self.connected.load(Relaxed)),
            self.published.load(Relaxed),
            self.cursor.load(Relaxed),
            self.lag(),
            self.skipped.load(Relaxed),
            self.commands.load(Relaxed),
            self.commands_dropped.load(Relaxed),
            self.ingested.load(Relaxed),
            self.ingest_refused.load(Relaxed),
        )
    }
}
