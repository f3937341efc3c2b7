//! The node's cache map: a moka cache sized in bytes (its weigher counts body,
//! headers, key and a fixed overhead per entry), entries expiring when nothing could
//! use them any more, and an index from (API, stage, path) to the keys stored for
//! it, so that unsafe methods and URL purges find every variant without a scan.

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;

use super::entry::Slot;

/// Keys stored per path, each with the generations of the slots inserted
/// under it and not yet removed (two inserts under one key may race; each
/// slot is forgotten only when it goes). Keyed both ways, so forgetting one
/// costs the same whatever the number of variants a path has: a purge of a
/// path with n variants is n removals, not n² comparisons.
type PathIndex = HashMap<u64, HashMap<u64, Vec<u64>>>;

/// Numbers for the admin API and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: u64,
    /// Sum of the entries' weights, in bytes.
    pub weighted_bytes: u64,
    pub max_bytes: u64,
}

pub(crate) struct Store {
    map: Cache<u64, Slot>,
    index: Arc<Mutex<PathIndex>>,
    pub(crate) hasher: RandomState,
    max_bytes: u64,
    /// Purges begun so far. A response fetched before a purge may be stale
    /// by it, and can finish streaming after it: such a fill must not store.
    purges: AtomicU64,
    /// The same for the invalidations of unsafe requests (RFC 9111 §4.4),
    /// counted per stripe of paths: a POST stops the fills of its own path
    /// (and the few that share its stripe), not every fill in flight.
    paths: Box<[AtomicU64]>,
    /// Bytes the fills in flight may still buffer, reserved when each starts
    /// (its declared length, or the largest object when it declares none).
    /// At most `max_bytes`: a fill runs on after its client leaves, so
    /// clients that start misses and go away could otherwise make a node
    /// buffer without bound.
    filling: AtomicU64,
}

/// Stripes of [`Store::paths`].
const PATH_STRIPES: u64 = 256;

/// Entries [`Store::remove_if`] checks between two yields to the runtime.
const SCAN_BATCH: usize = 1024;

/// A fill's path and the purges and invalidations of it begun when its
/// request went upstream ([`Store::stamp`]), given back to [`Store::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The path's hash (`key::path_hash`), as its slots carry it.
    pub path: u64,
    count: u64,
}

struct KeepFor;

impl Expiry<u64, Slot> for KeepFor {
    fn expire_after_create(&self, _: &u64, value: &Slot, _: Instant) -> Option<Duration> {
        Some(value.keep())
    }

    /// An entry replaced is kept for what the new one says. A Vary marker
    /// is re-stored with every variant and must outlive each of them (a
    /// lookup finds variants through it), so it keeps the longer of what it
    /// had left and what the new variant needs.
    fn expire_after_update(
        &self,
        _: &u64,
        value: &Slot,
        _: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        match value {
            Slot::Entry(_) => Some(value.keep()),
            Slot::Vary(_) => Some(value.keep().max(left.unwrap_or_default())),
        }
    }
}

impl Store {
    pub(crate) fn new(max_bytes: u64) -> Store {
        let index: Arc<Mutex<PathIndex>> = Arc::default();
        let on_removal = Arc::clone(&index);
        let map = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, slot: &Slot| slot.weight())
            .expire_after(KeepFor)
            .eviction_listener(move |key: Arc<u64>, slot: Slot, _: RemovalCause| {
                unindex(&on_removal, slot.path_hash(), *key, slot.generation());
            })
            .build();
        Store {
            map,
            index,
            hasher: RandomState::new(),
            max_bytes,
            purges: AtomicU64::new(0),
            paths: (0..PATH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            filling: AtomicU64::new(0),
        }
    }

    /// The most the store holds.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Reserves `bytes` for a fill; `false` when the fills in flight hold
    /// the store's size already (the response then passes uncached).
    pub(crate) fn reserve_fill(&self, bytes: u64) -> bool {
        self.filling
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|n| *n <= self.max_bytes)
            })
            .is_ok()
    }

    /// Gives back what [`Store::reserve_fill`] reserved.
    pub(crate) fn release_fill(&self, bytes: u64) {
        self.filling.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn stripe(&self, path_hash: u64) -> &AtomicU64 {
        // In bounds: the remainder is below the slice's length.
        &self.paths[(path_hash % PATH_STRIPES) as usize]
    }

    /// Purges and invalidations of `path`'s stripe begun so far: read
    /// before a request goes upstream, and given back to [`Store::insert`]
    /// with its response. Both counts only grow, so their sum changes
    /// whenever either does.
    pub(crate) fn stamp(&self, path: u64) -> Stamp {
        let count = self
            .purges
            .load(Ordering::SeqCst)
            .wrapping_add(self.stripe(path).load(Ordering::SeqCst));
        Stamp { path, count }
    }

    /// Called by a purge before it removes anything: fills in flight will
    /// not store what they fetched.
    pub(crate) fn begin_purge(&self) {
        self.purges.fetch_add(1, Ordering::SeqCst);
    }

    /// Called by an unsafe request's invalidation before it removes
    /// anything: fills in flight for its path will not store.
    pub(crate) fn begin_invalidation(&self, path_hash: u64) {
        self.stripe(path_hash).fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) async fn get(&self, key: u64) -> Option<Slot> {
        self.map.get(&key).await
    }

    /// Stores `slot` under `key` and indexes it by its path, unless a purge
    /// or an invalidation of its path began since `stamp` was read (before
    /// its request went upstream): then the response may predate it, and
    /// nothing is stored. One that begins while the slot goes in removes it
    /// again, here or itself (it counts before it removes). Returns whether
    /// the slot stays.
    pub(crate) async fn insert(&self, key: u64, slot: Slot, stamp: Stamp) -> bool {
        if self.stamp(stamp.path) != stamp {
            return false;
        }
        {
            let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            index
                .entry(slot.path_hash())
                .or_default()
                .entry(key)
                .or_default()
                .push(slot.generation());
        }
        self.map.insert(key, slot).await;
        if self.stamp(stamp.path) != stamp {
            self.map.invalidate(&key).await;
            return false;
        }
        true
    }

    /// Removes whatever is stored under `key`.
    pub(crate) async fn remove(&self, key: u64) {
        self.map.invalidate(&key).await;
    }

    /// Removes the slots stored for one path that `select` picks; returns how many.
    pub(crate) async fn remove_path(
        &self,
        path_hash: u64,
        select: impl Fn(&Slot) -> bool,
    ) -> usize {
        let keys: Vec<u64> = {
            let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
            index
                .get(&path_hash)
                .map(|keys| keys.keys().copied().collect())
                .unwrap_or_default()
        };
        let mut removed = 0;
        for key in keys {
            let selected = self
                .map
                .get(&key)
                .await
                .is_some_and(|slot| slot.path_hash() == path_hash && select(&slot));
            if selected {
                self.map.invalidate(&key).await;
                removed += 1;
            }
        }
        removed
    }

    /// Removes every slot `select` picks, in one pass over the map (yielding
    /// now and then): none is found by a lookup once this returns. Not
    /// moka's invalidation closures: moka keeps each until its own scan has
    /// covered every entry, and checks every one it keeps on every lookup, so
    /// a burst of purges would make each hit pay for all of them.
    pub(crate) async fn remove_if(&self, select: impl Fn(&Slot) -> bool) {
        for (seen, (key, slot)) in self.map.iter().enumerate() {
            if select(&slot) {
                self.map.invalidate(&*key).await;
            }
            if seen % SCAN_BATCH == SCAN_BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
    }

    pub(crate) fn remove_all(&self) {
        self.map.invalidate_all();
    }

    /// Exact numbers: runs moka's pending maintenance first.
    pub(crate) async fn stats(&self) -> CacheStats {
        self.map.run_pending_tasks().await;
        CacheStats {
            entries: self.map.entry_count(),
            weighted_bytes: self.map.weighted_size(),
            max_bytes: self.max_bytes,
        }
    }
}

/// Forgets one (key, generation) of a path; a successor under the same key keeps
/// its own index slot.
fn unindex(index: &Mutex<PathIndex>, path_hash: u64, key: u64, generation: u64) {
    let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(keys) = index.get_mut(&path_hash) else {
        return;
    };
    if let Some(generations) = keys.get_mut(&key) {
        generations.retain(|&g| g != generation);
        if generations.is_empty() {
            keys.remove(&key);
        }
    }
    if keys.is_empty() {
        index.remove(&path_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_with(entries: &[(u64, u64, u64)]) -> Mutex<PathIndex> {
        let mut index = PathIndex::new();
        for &(path, key, generation) in entries {
            index
                .entry(path)
                .or_default()
                .entry(key)
                .or_default()
                .push(generation);
        }
        Mutex::new(index)
    }

    /// Each slot is forgotten when it goes, and only it: two slots raced in
    /// under one key stay indexed until both are gone.
    #[test]
    fn a_slot_is_forgotten_alone() {
        let index = index_with(&[(1, 10, 100), (1, 10, 101), (1, 11, 102), (2, 20, 103)]);
        unindex(&index, 1, 10, 101);
        let keys = |path| {
            let index = index.lock().unwrap();
            let mut keys: Vec<(u64, Vec<u64>)> = index
                .get(&path)
                .map(|k| k.iter().map(|(k, g)| (*k, g.clone())).collect())
                .unwrap_or_default();
            keys.sort();
            keys
        };
        assert_eq!(keys(1), [(10, vec![100]), (11, vec![102])]);
        unindex(&index, 1, 10, 999);
        assert_eq!(
            keys(1),
            [(10, vec![100]), (11, vec![102])],
            "another generation stays"
        );
        unindex(&index, 1, 10, 100);
        unindex(&index, 1, 11, 102);
        assert!(keys(1).is_empty());
        assert!(
            !index.lock().unwrap().contains_key(&1),
            "an empty path goes"
        );
        assert_eq!(keys(2), [(20, vec![103])]);
    }
}
