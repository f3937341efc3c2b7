//! The response cache: one per node, used by every route whose settings enable it.
//!
//! * [`rules`]: RFC 9111's rules, sans-IO.
//! * `key`: cache keys (API, stage, method class, path, chosen query and headers,
//!   `Vary`), hashed for lookup and kept as text for verification and purges.
//! * `store`: the moka map sized in bytes, with a path index.
//! * `fill`: request coalescing and bodies streamed to several clients while they
//!   are stored.
//! * `phase`/`lead`: the pipeline phase (lookup, hit, stale, revalidation, miss).
//! * `respond`: answers from entries and the `Cache-Status` field.
//!
//! Decisions, in brief (docs/ARCHITECTURE.md has the whole list):
//! * `ttl` mode: the route's TTL is the lifetime; `no-store`, `private`, `Set-Cookie`,
//!   `Vary: *` and the `Authorization` rule still prevent storing.
//! * `http` mode: RFC 9111 for a shared cache, with no heuristic freshness: a response
//!   without explicit lifetime is stored only if it has validators or a stale window
//!   applies, and is then revalidated before every use.
//! * Only GET responses are stored; HEAD is answered from them, and a HEAD miss
//!   fetches with GET so that it fills the cache.

mod entry;
mod fill;
mod key;
mod lead;
mod phase;
pub mod purge;
mod respond;
pub mod rules;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use portico_config::{CacheMode, CacheSettings};

pub use store::CacheStats;

use self::fill::Flights;
use self::key::{path_hash, write_query};
use self::respond::StatusNames;
use self::store::Store;
use crate::gateway::Waits;

/// What a purge removes. Mirrors the backbone's `Purge` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeScope {
    /// One URL: every variant stored for this path with this canonical chosen query
    /// (see [`PurgeScope::url`]).
    Url {
        api: String,
        stage: String,
        path: String,
        query: String,
    },
    /// Every entry of the stage whose path starts with `path_prefix`.
    Prefix {
        api: String,
        stage: String,
        path_prefix: String,
    },
    /// Every entry of the API tagged (`Cache-Tag` / `Surrogate-Key`) with any of `tags`.
    Tag { api: String, tags: Vec<String> },
    /// Every entry of one stage.
    Stage { api: String, stage: String },
    /// Everything.
    All,
}

impl PurgeScope {
    /// The scope of one URL: `path` inside the stage, and the query as a client sends
    /// it, reduced to the route's key parameters (so it matches the stored keys).
    pub fn url(
        api: &str,
        stage: &str,
        path: &str,
        query: Option<&str>,
        settings: &CacheSettings,
    ) -> PurgeScope {
        let mut canonical = Vec::new();
        write_query(query, &settings.key_query, &mut canonical);
        PurgeScope::Url {
            api: api.to_owned(),
            stage: stage.to_owned(),
            path: path.to_owned(),
            query: String::from_utf8_lossy(&canonical).into_owned(),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            PurgeScope::Url { .. } => "url",
            PurgeScope::Prefix { .. } => "prefix",
            PurgeScope::Tag { .. } => "tag",
            PurgeScope::Stage { .. } => "stage",
            PurgeScope::All => "all",
        }
    }
}

/// What the purges of one pass select by the fields of a key (names as the
/// key's bytes, so checking an entry allocates nothing).
#[derive(Default)]
struct Selection {
    /// (API, stage, path prefix).
    prefixes: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// Tags, by API.
    tags: HashMap<Vec<u8>, HashSet<String>>,
    /// Stages, by API.
    stages: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
}

impl Selection {
    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.tags.is_empty() && self.stages.is_empty()
    }

    fn selects(&self, slot: &entry::Slot) -> bool {
        let k = slot.key();
        let (api, stage) = (k.api(), k.stage());
        self.prefixes
            .iter()
            .any(|(a, s, prefix)| a == api && s == stage && k.path().starts_with(prefix))
            || self.tags.get(api).is_some_and(|tags| slot.has_tag(tags))
            || self.stages.get(api).is_some_and(|s| s.contains(stage))
    }
}

/// The node's response cache.
pub struct ResponseCache {
    store: Store,
    flights: Arc<Flights>,
    names: StatusNames,
    /// The gateway's waits on an upstream exchange.
    waits: Waits,
}

impl ResponseCache {
    /// A cache of at most `max_bytes` (bodies, headers and keys) for node
    /// `node_id`, whose exchanges wait as the gateway's do (`waits`).
    pub(crate) fn new(node_id: &str, max_bytes: u64, waits: Waits) -> ResponseCache {
        ResponseCache {
            store: Store::new(max_bytes),
            flights: Arc::default(),
            names: StatusNames::new(node_id),
            waits,
        }
    }

    /// Removes what `scope` selects. Lookups stop finding it before this returns.
    pub async fn purge(&self, scope: &PurgeScope) {
        self.purge_many(std::slice::from_ref(scope)).await;
    }

    /// Removes what any of `scopes` selects; lookups stop finding it before
    /// this returns. URLs go by the path index; prefixes, tags and stages
    /// share one pass over the entries (the tags of an API in one set, so an
    /// entry costs a lookup per tag it carries, whatever the number purged).
    pub async fn purge_many(&self, scopes: &[PurgeScope]) {
        for scope in scopes {
            tracing::info!(scope = scope.as_str(), ?scope, "cache purge");
        }
        self.store.begin_purge();
        if scopes.contains(&PurgeScope::All) {
            return self.store.remove_all();
        }
        let mut selection = Selection::default();
        for scope in scopes {
            match scope {
                PurgeScope::Url {
                    api,
                    stage,
                    path,
                    query,
                } => {
                    let hash = path_hash(
                        &self.store.hasher,
                        api.as_bytes(),
                        stage.as_bytes(),
                        path.as_bytes(),
                    );
                    self.store
                        .remove_path(hash, |slot| slot.key().query() == query.as_bytes())
                        .await;
                }
                PurgeScope::Prefix {
                    api,
                    stage,
                    path_prefix,
                } => selection.prefixes.push((
                    api.clone().into_bytes(),
                    stage.clone().into_bytes(),
                    path_prefix.clone().into_bytes(),
                )),
                PurgeScope::Tag { api, tags } => selection
                    .tags
                    .entry(api.clone().into_bytes())
                    .or_default()
                    .extend(tags.iter().cloned()),
                PurgeScope::Stage { api, stage } => {
                    selection
                        .stages
                        .entry(api.clone().into_bytes())
                        .or_default()
                        .insert(stage.clone().into_bytes());
                }
                PurgeScope::All => {}
            }
        }
        if !selection.is_empty() {
            self.store.remove_if(|slot| selection.selects(slot)).await;
        }
    }

    /// Entry count and weighted size, exact (pending maintenance runs first).
    pub async fn stats(&self) -> CacheStats {
        self.store.stats().await
    }

    /// After a successful unsafe request (RFC 9111 §4.4): drops what `http`-mode
    /// routes stored for the target path (every query and variant: a superset of
    /// the target URI, which is safe).
    async fn invalidate_path(&self, api: &str, stage: &str, path: &str) {
        let hash = path_hash(
            &self.store.hasher,
            api.as_bytes(),
            stage.as_bytes(),
            path.as_bytes(),
        );
        self.store.begin_invalidation(hash);
        self.store
            .remove_path(hash, |slot| match slot {
                entry::Slot::Entry(e) => e.mode == CacheMode::Http,
                entry::Slot::Vary(_) => true,
            })
            .await;
    }
}
