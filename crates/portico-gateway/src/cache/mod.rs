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

use std::sync::Arc;

use portico_config::{CacheMode, CacheSettings};

pub use store::CacheStats;

use self::fill::Flights;
use self::key::{path_hash, write_query};
use self::respond::StatusNames;
use self::store::Store;

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

/// The node's response cache.
pub struct ResponseCache {
    store: Store,
    flights: Arc<Flights>,
    names: StatusNames,
    /// Longest wait for more of an upstream body (the gateway's setting).
    read_timeout: std::time::Duration,
}

impl ResponseCache {
    /// A cache of at most `max_bytes` (bodies, headers and keys) for node
    /// `node_id`, whose fetches wait at most `read_timeout` for more body.
    pub fn new(node_id: &str, max_bytes: u64, read_timeout: std::time::Duration) -> ResponseCache {
        ResponseCache {
            store: Store::new(max_bytes),
            flights: Arc::default(),
            names: StatusNames::new(node_id),
            read_timeout,
        }
    }

    /// Removes what `scope` selects. Lookups stop finding it before this returns.
    pub async fn purge(&self, scope: &PurgeScope) {
        tracing::info!(scope = scope.as_str(), ?scope, "cache purge");
        self.store.begin_purge();
        match scope.clone() {
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
            } => self.store.remove_if(move |slot| {
                let k = slot.key();
                k.api() == api.as_bytes()
                    && k.stage() == stage.as_bytes()
                    && k.path().starts_with(path_prefix.as_bytes())
            }),
            PurgeScope::Tag { api, tags } => self
                .store
                .remove_if(move |slot| slot.key().api() == api.as_bytes() && slot.has_tag(&tags)),
            PurgeScope::Stage { api, stage } => self.store.remove_if(move |slot| {
                slot.key().api() == api.as_bytes() && slot.key().stage() == stage.as_bytes()
            }),
            PurgeScope::All => self.store.remove_all(),
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
