//! The names behind metric rows: which device and metric a `metrics.id`
//! is, and its unit. Written by the admission path before any reading of
//! the metric can be committed; read by every consumer that shows rows by
//! name (the live fan-out formats each reading with them).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// One metric of one device, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricNames {
    pub device: Arc<str>,
    pub name: Arc<str>,
    pub unit: Arc<str>,
}

/// Metric rows' names. Written only when a device's metrics are admitted,
/// read when a consumer first meets a row: an `RwLock`, never held across
/// an await.
#[derive(Debug, Default)]
pub struct Names(RwLock<HashMap<i64, Arc<MetricNames>>>);

impl Names {
    /// Records the names of `rows`: `(row, metric name, unit)` of `device`.
    pub fn tell<'a>(&self, device: &str, rows: impl IntoIterator<Item = (i64, &'a str, &'a str)>) {
        let device: Arc<str> = device.into();
        let mut names = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for (row, name, unit) in rows {
            names.insert(
                row,
                Arc::new(MetricNames {
                    device: Arc::clone(&device),
                    name: name.into(),
                    unit: unit.into(),
                }),
            );
        }
    }

    /// The names of metric `row`, if it was admitted since the hub started.
    pub fn get(&self, row: i64) -> Option<Arc<MetricNames>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&row)
            .cloned()
    }
}
