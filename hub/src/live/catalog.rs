//! The metric catalog: what the fan-out needs to know about a `metrics.id`
//! row to format and filter its readings, registered by each session before
//! its first batch can be committed.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use protocol::MetricDescriptor;

use super::format;

/// One metric of one device.
#[derive(Debug)]
pub struct MetricMeta {
    pub device: Arc<str>,
    pub name: Arc<str>,
    /// The pre-escaped JSON shared by every reading of this metric.
    pub(super) prefix: String,
}

/// Metrics by `metrics.id` row. Read on every commit, written only when a
/// device connects: an `RwLock`, never held across an await.
#[derive(Debug, Default)]
pub(super) struct Catalog(RwLock<HashMap<i64, Arc<MetricMeta>>>);

impl Catalog {
    /// Records the names behind a connection's metric rows.
    pub fn register(&self, device: &str, metrics: &[MetricDescriptor], rows: &HashMap<u16, i64>) {
        let device: Arc<str> = device.into();
        let mut catalog = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for metric in metrics {
            if let Some(&row) = rows.get(&metric.id) {
                catalog.insert(
                    row,
                    Arc::new(MetricMeta {
                        device: Arc::clone(&device),
                        name: metric.name.as_str().into(),
                        prefix: format::reading_prefix(&device, &metric.name, &metric.unit),
                    }),
                );
            }
        }
    }

    pub fn get(&self, row: i64) -> Option<Arc<MetricMeta>> {
        self.read().get(&row).cloned()
    }

    /// The whole map, for a commit's worth of look-ups under one lock.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i64, Arc<MetricMeta>>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}
