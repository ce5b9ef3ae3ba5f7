//! Compacted slabs decoded for cursor consumers. A consumer catching up
//! through compacted history reads a slab a page at a time (1,000 readings
//! for a live subscriber), and each of a slab's blocks spans the whole
//! slab: read through SQL, every page would decode the slab again. Decoded
//! once here, a slab serves every page and every consumer passing through
//! it.
//!
//! An entry is keyed by the slab and by which blocks it held (count, and
//! the sum and maximum of their ids), read in the same snapshot as the
//! page's rows: a slab whose blocks changed since (compaction finishing
//! it, retention deleting one) is decoded again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::blocks::Reading;

/// Decoded slabs kept: enough for consumers in two places at once, each
/// about 5 MB at 100,000 readings (readings and names). When full, the
/// least recently used goes.
const SLABS: usize = 2;

/// Which blocks a slab held when it was decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub slab: i64,
    pub blocks: i64,
    pub id_sum: i64,
    pub id_max: i64,
}

/// A metric's names, as readings carry them.
#[derive(Debug)]
pub struct Names {
    pub device: String,
    pub metric: String,
    pub unit: String,
}

/// One slab's compacted readings in position order, with their metric.
#[derive(Debug)]
pub struct Slab {
    pub identity: Identity,
    pub readings: Vec<(i64, Reading)>,
    pub names: HashMap<i64, Names>,
}

impl Slab {
    /// The readings with `after < pos <= upto`, in position order.
    pub fn range(&self, after: i64, upto: i64) -> &[(i64, Reading)] {
        let from = self.readings.partition_point(|(_, r)| r.pos <= after);
        let to = self.readings.partition_point(|(_, r)| r.pos <= upto);
        &self.readings[from..to.max(from)]
    }
}

/// The decoded slabs, shared by every clone of the store.
#[derive(Debug, Default)]
pub struct SlabCache {
    slabs: Mutex<VecDeque<Arc<Slab>>>,
}

impl SlabCache {
    /// The slab decoded with exactly `identity`, if kept.
    pub fn get(&self, identity: Identity) -> Option<Arc<Slab>> {
        let mut slabs = self.slabs.lock().unwrap_or_else(PoisonError::into_inner);
        let at = slabs.iter().position(|slab| slab.identity == identity)?;
        let slab = slabs.remove(at)?;
        slabs.push_back(Arc::clone(&slab));
        Some(slab)
    }

    /// Keeps `slab`, in place of any other decoding of the same slab.
    pub fn put(&self, slab: Arc<Slab>) {
        let mut slabs = self.slabs.lock().unwrap_or_else(PoisonError::into_inner);
        slabs.retain(|kept| kept.identity.slab != slab.identity.slab);
        if slabs.len() == SLABS {
            slabs.pop_front();
        }
        slabs.push_back(slab);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slab(slab: i64, blocks: i64) -> Arc<Slab> {
        Arc::new(Slab {
            identity: Identity {
                slab,
                blocks,
                id_sum: blocks,
                id_max: blocks,
            },
            readings: (1..=10)
                .map(|pos| {
                    (
                        1,
                        Reading {
                            pos: pos * 2,
                            ts_ms: 0,
                            value: None,
                        },
                    )
                })
                .collect(),
            names: HashMap::new(),
        })
    }

    #[test]
    fn a_range_is_found_by_position() {
        let slab = slab(1, 1);
        let positions: Vec<i64> = slab.range(5, 11).iter().map(|(_, r)| r.pos).collect();
        assert_eq!(positions, [6, 8, 10]);
        assert!(slab.range(30, 40).is_empty());
    }

    #[test]
    fn changed_blocks_miss_and_the_least_recent_slab_goes() {
        let cache = SlabCache::default();
        cache.put(slab(1, 3));
        cache.put(slab(2, 3));
        assert!(cache.get(slab(1, 3).identity).is_some());
        assert!(cache.get(slab(1, 2).identity).is_none(), "blocks changed");
        cache.put(slab(3, 3));
        assert!(cache.get(slab(2, 3).identity).is_none(), "least recent");
        assert!(cache.get(slab(1, 3).identity).is_some());
        cache.put(slab(1, 4));
        assert!(cache.get(slab(1, 3).identity).is_none(), "replaced");
    }
}
