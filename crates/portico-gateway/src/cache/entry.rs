//! What the cache stores: complete responses with their freshness facts, and the
//! markers that say which request headers a resource varies on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use portico_config::{CacheMode, CacheSettings};

use super::key::KeyText;
use super::rules::{self, CacheControl, NotStorable};
use super::store::Stamp;
use crate::headers::strip_hop_by_hop;

/// Bytes an entry costs beyond its body, headers, key and tags: the structs, the
/// header map's tables, the moka node and the path index slot. Measured with
/// scripts/bench-cache.sh (RSS per 1 KiB entry beyond its body: ~1.9 KB, of which
/// the rest of the weight counted ~0.6 KB), so capacity means resident bytes.
const ENTRY_OVERHEAD: usize = 1536;
/// Per header field, as HTTP/2 counts it (RFC 9113 §6.5.2).
const FIELD_OVERHEAD: usize = 32;
/// What one piece of a body costs beyond its bytes: its 32-byte handle, and
/// its share of the allocation it lives in and of the reference count a
/// reader's copy of it adds. A fill counts it for every piece it holds, so
/// that a body sent in one-byte chunks costs what it takes in memory.
pub(crate) const PIECE_COST: u64 = 64;
/// Stored bodies whose pieces are smaller than this on average are joined
/// into one: each piece costs [`PIECE_COST`], and every hit sends each as a
/// frame of its own.
const JOIN_BELOW: usize = 4096;
/// How long a stale entry with validators is kept for revalidation.
const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(300);
/// Tags read from one response, and their maximum length.
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 256;

/// One stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    pub key: KeyText,
    /// [`super::key::path_hash`] of the key's API, stage and path.
    pub path_hash: u64,
    /// Unique per insertion, so the index can tell a replaced entry from its successor.
    pub generation: u64,
    pub status: StatusCode,
    /// The response header section as received, minus hop-by-hop fields and `Age`.
    pub headers: HeaderMap,
    /// The body as received, in pieces that share the fill's buffers (see
    /// `fill`), or one piece when they were small ([`JOIN_BELOW`]).
    pub body: Box<[Bytes]>,
    pub body_len: usize,
    /// When the response arrived (the resident time counts from here).
    pub stored_at: Instant,
    /// RFC 9111 `corrected_initial_age`.
    pub initial_age: Duration,
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    pub tags: Box<[Box<str>]>,
    pub mode: CacheMode,
    pub weight: u32,
}

/// The facts of one upstream exchange a [`Stored`] is made from.
pub(crate) struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub arrived: Instant,
    /// `Store::stamp` of its path when the request went upstream: a response
    /// that a purge or an invalidation may have overtaken is not stored
    /// (`Store::insert`).
    pub stamp: Stamp,
}

/// What freshness the route and the response allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub initial_age: Duration,
}

impl Freshness {
    /// `ttl` mode: the route's TTL. `http` mode: the response's explicit lifetime
    /// (none → 0: stored only to be revalidated or served stale). Stale windows are
    /// the larger of the route's and the response's, and none where §4.2.4 forbids
    /// serving stale (`http` mode only).
    pub(crate) fn of(ex: &Exchange, cc: &CacheControl, settings: &CacheSettings) -> Freshness {
        let http = settings.mode == CacheMode::Http;
        let lifetime = match (http, cc.no_cache) {
            (false, _) => settings.ttl,
            (true, true) => Duration::ZERO,
            (true, false) => rules::freshness_lifetime(&ex.headers, cc, ex.response_time)
                .unwrap_or(Duration::ZERO),
        };
        let window = |route: Duration, directive: rules::Seconds| {
            if http && cc.forbids_stale() {
                return Duration::ZERO;
            }
            let own = match directive {
                rules::Seconds::Value(s) => Duration::from_secs(s),
                rules::Seconds::Absent | rules::Seconds::Invalid => Duration::ZERO,
            };
            route.max(own)
        };
        Freshness {
            lifetime,
            stale_while_revalidate: window(
                settings.stale_while_revalidate,
                cc.stale_while_revalidate,
            ),
            stale_if_error: window(settings.stale_if_error, cc.stale_if_error),
            initial_age: rules::initial_age(&ex.headers, ex.request_time, ex.response_time),
        }
    }
}

impl Stored {
    /// Builds an entry from a complete exchange; refuses one nothing could ever use.
    pub(crate) fn new(
        key: KeyText,
        path_hash: u64,
        mut ex: Exchange,
        body: Box<[Bytes]>,
        settings: &CacheSettings,
    ) -> Result<Stored, NotStorable> {
        let body_len: usize = body.iter().map(Bytes::len).sum();
        let body: Box<[Bytes]> =
            if body.len() > 1 && body_len < body.len().saturating_mul(JOIN_BELOW) {
                Box::new([join(&body)])
            } else {
                body
            };
        let cc = CacheControl::parse(&ex.headers);
        let fresh = Freshness::of(&ex, &cc, settings);
        clean_headers(&mut ex.headers, ex.response_time);
        ex.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        let etag = ex.headers.get(header::ETAG).cloned();
        let last_modified = ex.headers.get(header::LAST_MODIFIED).cloned();
        let useless = fresh.lifetime.is_zero()
            && etag.is_none()
            && last_modified.is_none()
            && fresh.stale_if_error.is_zero()
            && fresh.stale_while_revalidate.is_zero();
        if useless {
            return Err(NotStorable::NoFreshness);
        }
        let mut stored = Stored {
            tags: tags(&ex.headers),
            key,
            path_hash,
            generation: next_generation(),
            status: ex.status,
            headers: ex.headers,
            body,
            body_len,
            stored_at: ex.arrived,
            initial_age: fresh.initial_age,
            lifetime: fresh.lifetime,
            stale_while_revalidate: fresh.stale_while_revalidate,
            stale_if_error: fresh.stale_if_error,
            etag,
            last_modified,
            mode: settings.mode,
            weight: 0,
        };
        stored.weight = stored.compute_weight();
        Ok(stored)
    }

    /// The entry freshened by a `304` (RFC 9111 §4.3.4): its fields replace the
    /// stored ones (except `Content-Length`), and freshness starts again.
    pub(crate) fn freshened(&self, mut ex: Exchange, settings: &CacheSettings) -> Stored {
        let mut headers = self.headers.clone();
        ex.headers = owned(&ex.headers);
        strip_hop_by_hop(&mut ex.headers);
        let mut replaced: Vec<HeaderName> = Vec::new();
        for (name, value) in &ex.headers {
            if rules::keep_on_update(name) || *name == header::AGE {
                continue;
            }
            if !replaced.contains(name) {
                headers.remove(name);
                replaced.push(name.clone());
            }
            headers.append(name.clone(), value.clone());
        }
        let age_source = ex.headers;
        ex.headers = headers;
        let cc = CacheControl::parse(&ex.headers);
        let mut fresh = Freshness::of(&ex, &cc, settings);
        // The 304's own Age and Date say how old this validation is.
        fresh.initial_age = rules::initial_age(&age_source, ex.request_time, ex.response_time);
        let mut stored = Stored {
            tags: tags(&ex.headers),
            key: self.key.clone(),
            path_hash: self.path_hash,
            generation: next_generation(),
            status: self.status,
            etag: ex.headers.get(header::ETAG).cloned(),
            last_modified: ex.headers.get(header::LAST_MODIFIED).cloned(),
            headers: ex.headers,
            body: self.body.clone(),
            body_len: self.body_len,
            stored_at: ex.arrived,
            initial_age: fresh.initial_age,
            lifetime: fresh.lifetime,
            stale_while_revalidate: fresh.stale_while_revalidate,
            stale_if_error: fresh.stale_if_error,
            mode: settings.mode,
            weight: 0,
        };
        stored.weight = stored.compute_weight();
        stored
    }

    /// The current age (RFC 9111 §4.2.3).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime
    }

    /// Whether the entry is at most `window` past its lifetime (a stale window applies).
    pub(crate) fn within(&self, now: Instant, window: Duration) -> bool {
        !window.is_zero() && self.age(now) < self.lifetime + window
    }

    pub(crate) fn has_validators(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// How long the cache keeps the entry after it arrived: its remaining lifetime,
    /// then the longest stale window, or a while for revalidation when it has validators.
    pub(crate) fn keep(&self) -> Duration {
        let revalidate = if self.has_validators() {
            KEEP_FOR_REVALIDATION
        } else {
            Duration::ZERO
        };
        let stale = self
            .stale_if_error
            .max(self.stale_while_revalidate)
            .max(revalidate);
        self.lifetime.saturating_sub(self.initial_age) + stale
    }

    fn compute_weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + FIELD_OVERHEAD)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        let pieces = self.body.len() * PIECE_COST as usize;
        let total = self.body_len + pieces + headers + self.key.len() + tags + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// The pieces' bytes in one allocation of exactly their size.
pub(crate) fn join(pieces: &[Bytes]) -> Bytes {
    Bytes::from(pieces.concat())
}

/// Hop-by-hop fields and `Age` (recomputed on every hit) are not stored; a response
/// without `Date` gets one (RFC 9110 §6.6.1: a cache with a clock adds it).
fn clean_headers(headers: &mut HeaderMap, response_time: SystemTime) {
    *headers = owned(headers);
    strip_hop_by_hop(headers);
    headers.remove(header::AGE);
    if !headers.contains_key(header::DATE)
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time))
    {
        headers.insert(header::DATE, v);
    }
}

/// The same fields with values in allocations of their own: a parsed header value
/// is a slice of the connection's receive buffer (kilobytes), which an entry
/// would otherwise keep alive for its whole life.
fn owned(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

/// The tag of an entry whose tags were not all kept (more than
/// [`MAX_TAGS`], one longer than [`MAX_TAG_LEN`], or not text): every tag
/// purge of its API removes it, as it may have carried the tag purged. No
/// tag a backend sends equals it (tags never hold a space).
const SOME_TAGS_DROPPED: &str = " dropped";

/// Tags from `Cache-Tag` (comma separated) and `Surrogate-Key` (space separated).
fn tags(headers: &HeaderMap) -> Box<[Box<str>]> {
    let mut out: Vec<Box<str>> = Vec::new();
    let mut dropped = false;
    for name in ["cache-tag", "surrogate-key"] {
        for value in headers.get_all(name) {
            let Ok(text) = value.to_str() else {
                dropped = true;
                continue;
            };
            for tag in text.split([',', ' ', '\t']).map(str::trim) {
                if tag.is_empty() || out.iter().any(|t| &**t == tag) {
                    continue;
                }
                if tag.len() <= MAX_TAG_LEN && out.len() < MAX_TAGS {
                    out.push(tag.into());
                } else {
                    dropped = true;
                }
            }
        }
    }
    if dropped {
        out.push(SOME_TAGS_DROPPED.into());
    }
    out.into_boxed_slice()
}

fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Stored under a resource's primary key once a response of it carried `Vary`:
/// lookups then add the named request headers to the key.
#[derive(Debug)]
pub(crate) struct VaryMarker {
    pub key: KeyText,
    pub path_hash: u64,
    pub generation: u64,
    pub names: Box<[HeaderName]>,
    pub keep: Duration,
}

impl VaryMarker {
    pub(crate) fn new(
        key: KeyText,
        path_hash: u64,
        names: Vec<HeaderName>,
        keep: Duration,
    ) -> Self {
        VaryMarker {
            key,
            path_hash,
            generation: next_generation(),
            names: names.into_boxed_slice(),
            keep,
        }
    }
}

/// One value of the cache map.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Entry(Arc<Stored>),
    Vary(Arc<VaryMarker>),
}

impl Slot {
    pub(crate) fn key(&self) -> &KeyText {
        match self {
            Slot::Entry(e) => &e.key,
            Slot::Vary(v) => &v.key,
        }
    }

    pub(crate) fn path_hash(&self) -> u64 {
        match self {
            Slot::Entry(e) => e.path_hash,
            Slot::Vary(v) => v.path_hash,
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        match self {
            Slot::Entry(e) => e.generation,
            Slot::Vary(v) => v.generation,
        }
    }

    pub(crate) fn weight(&self) -> u32 {
        match self {
            Slot::Entry(e) => e.weight,
            Slot::Vary(v) => {
                let names: usize = v.names.iter().map(|n| n.as_str().len() + 8).sum();
                u32::try_from(v.key.len() + names + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            }
        }
    }

    pub(crate) fn keep(&self) -> Duration {
        match self {
            Slot::Entry(e) => e.keep(),
            Slot::Vary(v) => v.keep,
        }
    }

    pub(crate) fn has_tag(&self, tags: &HashSet<String>) -> bool {
        match self {
            Slot::Entry(e) => e
                .tags
                .iter()
                .any(|t| &**t == SOME_TAGS_DROPPED || tags.contains(&**t)),
            Slot::Vary(_) => false,
        }
    }
}
