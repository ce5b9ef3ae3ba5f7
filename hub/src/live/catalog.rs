//! The metric catalog: what the fan-out needs to know about a `metrics.id`
//! row to format and filter its readings. Built from the admission path's
//! [`Names`] the first time the fan-out meets a row: the names are told
//! before any of the metric's readings can be committed.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use super::format;
use crate::admission::Names;

/// One metric of one device.
#[derive(Debug)]
pub struct MetricMeta {
    pub device: Arc<str>,
    pub name: Arc<str>,
    /// The pre-escaped JSON shared by every reading of this metric.
    pub(super) prefix: String,
}

/// Metrics by `metrics.id` row. Read on every commit, written the first
/// time a row is met: an `RwLock`, never held across an await.
#[derive(Debug)]
pub(super) struct Catalog {
    names: Arc<Names>,
    known: RwLock<HashMap<i64, Arc<MetricMeta>>>,
}

impl Catalog {
    pub fn new(names: Arc<Names>) -> Self {
        Catalog {
            names,
            known: RwLock::default(),
        }
    }

    pub fn get(&self, row: i64) -> Option<Arc<MetricMeta>> {
        if let Some(meta) = self.read().get(&row) {
            return Some(Arc::clone(meta));
        }
        let meta = self.learn(row)?;
        self.keep(std::iter::once((row, Arc::clone(&meta))));
        Some(meta)
    }

    /// The rows met so far, for a commit's worth of look-ups under one
    /// lock; a row it lacks is [`learn`](Self::learn)ed and then kept.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<i64, Arc<MetricMeta>>> {
        self.known.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds a row's entry from its names, if it was admitted.
    pub fn learn(&self, row: i64) -> Option<Arc<MetricMeta>> {
        let names = self.names.get(row)?;
        Some(Arc::new(MetricMeta {
            prefix: format::reading_prefix(&names.device, &names.name, &names.unit),
            device: Arc::clone(&names.device),
            name: Arc::clone(&names.name),
        }))
    }

    /// Keeps entries built by `learn`.
    pub fn keep(&self, learned: impl IntoIterator<Item = (i64, Arc<MetricMeta>)>) {
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(learned);
    }
}
