//! Response-cache settings: the node's `[cache]` section and the per-route `cache`
//! table (with the same stage-override precedence as `timeout_ms`).
//!
//! A route's own table, a stage's `*` override and a stage's route override are each
//! checked on their own into a [`CachePartial`] (only the keys they set), then laid
//! over each other field by field (route < `*` < specific) and resolved into the
//! immutable [`CacheSettings`] the gateway reads. So a stage can change one key (say
//! `ttl_seconds`) without restating the others.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Diag;
use crate::file::{CacheFile, NodeCacheFile, S};
use crate::integration::is_header_name;
use crate::method::Method;

/// How a route's responses get their freshness lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// API Gateway semantics: the configured TTL is the lifetime, whatever the
    /// backend says about freshness (`no-store` and `private` are still honoured).
    Ttl,
    /// Shared-cache semantics of RFC 9111: the backend's `Cache-Control`,
    /// `Expires` and friends decide; nothing is stored that a shared cache must not store.
    Http,
}

impl CacheMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Ttl => "ttl",
            CacheMode::Http => "http",
        }
    }
}

/// What a client's `Cache-Control: no-cache` / `max-age=0` may do (API Gateway's
/// "require authorization" plus its "unauthorized request handling").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientInvalidation {
    /// Never refresh; the directive is ignored (the default).
    Ignore,
    /// Never refresh; a request carrying the directive is refused with 403.
    Forbid,
    /// Any client may refresh the entry.
    Allow,
    /// Callers with an API key may refresh; for others the directive is ignored.
    AllowWithKey,
    /// Callers with an API key may refresh; others are refused with 403.
    AllowWithKeyElseForbid,
}

impl ClientInvalidation {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientInvalidation::Ignore => "ignore",
            ClientInvalidation::Forbid => "forbid",
            ClientInvalidation::Allow => "allow",
            ClientInvalidation::AllowWithKey => "allow_with_key",
            ClientInvalidation::AllowWithKeyElseForbid => "allow_with_key_else_forbid",
        }
    }
}

/// The effective cache settings of one route in one stage. Present only when caching
/// is enabled for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub mode: CacheMode,
    /// `ttl` mode: the lifetime of every entry. `http` mode: unused.
    pub ttl: Duration,
    /// Query parameters that are part of the cache key, sorted and unique;
    /// [`EVERY_PARAMETER`] alone: the whole query as sent.
    pub key_query: Vec<String>,
    /// Request headers that are part of the cache key, lower case, sorted and unique.
    pub key_headers: Vec<String>,
    /// Statuses that may be stored, sorted.
    pub statuses: Vec<u16>,
    /// Whether `HEAD` requests are answered from `GET` entries (GET is always cached).
    pub head: bool,
    /// Larger responses stream through and are not stored.
    pub max_object_bytes: u64,
    /// Minimum `stale-while-revalidate` window, whatever the backend sends.
    pub stale_while_revalidate: Duration,
    /// Minimum `stale-if-error` window, whatever the backend sends.
    pub stale_if_error: Duration,
    pub client_invalidation: ClientInvalidation,
}

impl CacheSettings {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 1024 * 1024;
}

/// The node's `[cache]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCacheConfig {
    /// `false` turns every route's caching off on this node.
    pub enabled: bool,
    /// Capacity in bytes: bodies, headers and keys of every entry together.
    pub max_bytes: u64,
}

impl Default for NodeCacheConfig {
    fn default() -> Self {
        NodeCacheConfig {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

const MAX_TTL_SECONDS: u64 = 3600;
const MAX_STALE_SECONDS: u64 = 86_400;
const MAX_OBJECT_BYTES: u64 = 1 << 30;
const MAX_KEY_PARTS: usize = 32;
const NODE_MAX_BYTES: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 40);

/// The keys one `cache` table sets, each already checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CachePartial {
    enabled: Option<bool>,
    mode: Option<CacheMode>,
    ttl: Option<Duration>,
    key_query: Option<Vec<String>>,
    key_headers: Option<Vec<String>>,
    statuses: Option<Vec<u16>>,
    head: Option<bool>,
    max_object_bytes: Option<u64>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    client_invalidation: Option<ClientInvalidation>,
}

impl CachePartial {
    /// `self` with every key that `top` sets replaced by `top`'s value.
    pub(crate) fn overlay(&self, top: &CachePartial) -> CachePartial {
        fn pick<T: Clone>(low: &Option<T>, high: &Option<T>) -> Option<T> {
            high.clone().or_else(|| low.clone())
        }
        CachePartial {
            enabled: pick(&self.enabled, &top.enabled),
            mode: pick(&self.mode, &top.mode),
            ttl: pick(&self.ttl, &top.ttl),
            key_query: pick(&self.key_query, &top.key_query),
            key_headers: pick(&self.key_headers, &top.key_headers),
            statuses: pick(&self.statuses, &top.statuses),
            head: pick(&self.head, &top.head),
            max_object_bytes: pick(&self.max_object_bytes, &top.max_object_bytes),
            stale_while_revalidate: pick(&self.stale_while_revalidate, &top.stale_while_revalidate),
            stale_if_error: pick(&self.stale_if_error, &top.stale_if_error),
            client_invalidation: pick(&self.client_invalidation, &top.client_invalidation),
        }
    }

    /// The effective settings, or `None` when caching is not enabled.
    pub(crate) fn resolve(&self) -> Option<Arc<CacheSettings>> {
        if self.enabled != Some(true) {
            return None;
        }
        Some(Arc::new(CacheSettings {
            mode: self.mode.unwrap_or(CacheMode::Ttl),
            ttl: self.ttl.unwrap_or(CacheSettings::DEFAULT_TTL),
            key_query: self.key_query.clone().unwrap_or_default(),
            key_headers: self.key_headers.clone().unwrap_or_default(),
            statuses: self.statuses.clone().unwrap_or_else(|| vec![200]),
            head: self.head.unwrap_or(true),
            max_object_bytes: self
                .max_object_bytes
                .unwrap_or(CacheSettings::DEFAULT_MAX_OBJECT_BYTES),
            stale_while_revalidate: self.stale_while_revalidate.unwrap_or_default(),
            stale_if_error: self.stale_if_error.unwrap_or_default(),
            client_invalidation: self
                .client_invalidation
                .unwrap_or(ClientInvalidation::Ignore),
        }))
    }
}

/// Checks one `cache` table. A route's own table turns caching on unless it says
/// `enabled = false`; an override's table changes only the keys it sets.
/// `None` when any key is invalid (all reported).
pub(crate) fn compile_cache(
    f: &CacheFile,
    own_route: bool,
    diag: &mut Diag<'_>,
) -> Option<CachePartial> {
    let ttl = seconds(&f.ttl_seconds, MAX_TTL_SECONDS, "ttl_seconds", diag);
    let swr = seconds(
        &f.stale_while_revalidate_seconds,
        MAX_STALE_SECONDS,
        "stale_while_revalidate_seconds",
        diag,
    );
    let sie = seconds(
        &f.stale_if_error_seconds,
        MAX_STALE_SECONDS,
        "stale_if_error_seconds",
        diag,
    );
    let key_query = checked(&f.key_query, |q| {
        names(q, "query parameter", is_query_key, diag)
    });
    let key_headers = checked(&f.key_headers, |h| names(h, "header", is_header_name, diag));
    let statuses = checked(&f.statuses, |s| statuses(s, diag));
    let head = checked(&f.methods, |m| methods(m, diag));
    let max_object_bytes = checked(&f.max_object_bytes, |v| {
        let n = *v.get_ref();
        let ok = (1..=MAX_OBJECT_BYTES).contains(&n);
        if !ok {
            let message = format!("max_object_bytes {n} is out of range");
            diag.expect(v.span(), message, format!("1..={MAX_OBJECT_BYTES}"));
        }
        ok.then_some(n)
    });
    Some(CachePartial {
        enabled: f.enabled.or(own_route.then_some(true)),
        mode: f.mode.as_ref().map(|m| *m.get_ref()),
        ttl: ttl?,
        key_query: key_query?,
        key_headers: key_headers?,
        statuses: statuses?,
        head: head?,
        max_object_bytes: max_object_bytes?,
        stale_while_revalidate: swr?,
        stale_if_error: sie?,
        client_invalidation: f.client_invalidation.as_ref().map(|c| *c.get_ref()),
    })
}

/// `Some(None)`: the key is absent; `Some(Some(v))`: valid; `None`: invalid (reported).
fn checked<F, T>(value: &Option<F>, check: impl FnOnce(&F) -> Option<T>) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(v) => check(v).map(Some),
    }
}

fn seconds(
    value: &Option<S<u64>>,
    max: u64,
    what: &str,
    diag: &mut Diag<'_>,
) -> Option<Option<Duration>> {
    checked(value, |v| {
        let n = *v.get_ref();
        if n > max {
            let message = format!("{what} {n} is out of range");
            diag.expect(v.span(), message, format!("0..={max} seconds"));
            return None;
        }
        Some(Duration::from_secs(n))
    })
}

/// A list of names: each valid, unique (case-insensitively for headers), at most
/// [`MAX_KEY_PARTS`]. Sorted, so equal sets give equal keys.
fn names(
    list: &[S<String>],
    what: &str,
    valid: fn(&str) -> bool,
    diag: &mut Diag<'_>,
) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut ok = list.len() <= MAX_KEY_PARTS;
    if let Some(extra) = list.get(MAX_KEY_PARTS) {
        diag.expect(
            extra.span(),
            format!("too many cache key {what}s"),
            format!("at most {MAX_KEY_PARTS}"),
        );
    }
    for name in list {
        let n = name.get_ref();
        if what == "query parameter" && n == EVERY_PARAMETER {
            if list.len() > 1 {
                let message = format!(
                    "`{EVERY_PARAMETER}` (every query parameter) stands alone in key_query"
                );
                diag.at(name.span(), message);
                ok = false;
            }
            out.push(n.clone());
            continue;
        }
        let norm = if what == "header" {
            n.to_ascii_lowercase()
        } else {
            n.clone()
        };
        if let Some(decoded) = (what == "query parameter")
            .then(|| decoded_query_key(n))
            .flatten()
        {
            let message =
                format!("invalid cache key {what} `{n}`: write the name decoded (`{decoded}`)");
            diag.at(name.span(), message);
            ok = false;
        } else if !valid(n) {
            diag.expect(
                name.span(),
                format!("invalid cache key {what} `{n}`"),
                valid_hint(what),
            );
            ok = false;
        } else if out.contains(&norm) {
            diag.at(name.span(), format!("duplicate cache key {what} `{n}`"));
            ok = false;
        }
        out.push(norm);
    }
    out.sort();
    ok.then_some(out)
}

/// `key_query = ["*"]`: every query parameter is part of the key, the
/// query as the client sent it (as nginx's default key, `$request_uri`,
/// and Varnish's hash of the URL hold it), for a backend that answers by
/// parameters the configuration does not list.
pub const EVERY_PARAMETER: &str = "*";

fn valid_hint(what: &str) -> &'static str {
    if what == "header" {
        "a header name (letters, digits and !#$%&'*+-.^_`|~)"
    } else {
        "a non-empty name, decoded, without `&`, `=`, `#`, `%`, `+` or control characters"
    }
}

/// A query parameter name as the backend reads it, decoded. Not `%` or `+`:
/// the gateway decodes a request's spelling of a name and compares it with the
/// configured one, so an encoded name would never match and its parameter would
/// reach the backend unkeyed.
fn is_query_key(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(|c: char| c.is_control() || matches!(c, '&' | '=' | '#' | '%' | '+'))
}

/// `name` decoded as the gateway decodes a request's parameter names (`+` is a
/// space, `%XX` a byte), when it was written encoded and its decoded form is a
/// name the key can hold.
fn decoded_query_key(name: &str) -> Option<String> {
    if !name.contains(['%', '+']) {
        return None;
    }
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match (b, hex(bytes.get(i)), hex(bytes.get(i + 1))) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
    }
    let decoded = String::from_utf8_lossy(&out).into_owned();
    (decoded != name && is_query_key(&decoded)).then_some(decoded)
}

/// Storable statuses: final, not partial content, not 304 (a 304 refreshes an entry).
fn statuses(list: &S<Vec<S<u16>>>, diag: &mut Diag<'_>) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    let mut ok = !list.get_ref().is_empty();
    if !ok {
        diag.expect(list.span(), "`statuses` must not be empty", "e.g. [200]");
    }
    for s in list.get_ref() {
        let code = *s.get_ref();
        if !(200..=599).contains(&code) || code == 206 || code == 304 {
            diag.expect(
                s.span(),
                format!("status {code} cannot be cached"),
                "200..=599 except 206 and 304",
            );
            ok = false;
        } else if out.contains(&code) {
            diag.at(s.span(), format!("duplicate status {code}"));
            ok = false;
        }
        out.push(code);
    }
    out.sort_unstable();
    ok.then_some(out)
}

/// `["GET"]` or `["GET", "HEAD"]`: whether HEAD is served from GET entries.
fn methods(list: &S<Vec<S<String>>>, diag: &mut Diag<'_>) -> Option<bool> {
    let mut seen = Vec::new();
    let mut ok = true;
    for m in list.get_ref() {
        match m.get_ref().parse::<Method>() {
            Ok(method @ (Method::Get | Method::Head)) if !seen.contains(&method) => {
                seen.push(method)
            }
            Ok(method @ (Method::Get | Method::Head)) => {
                diag.at(m.span(), format!("duplicate method {method}"));
                ok = false;
            }
            _ => {
                let message = format!("method `{}` cannot be cached", m.get_ref());
                diag.expect(m.span(), message, "GET or HEAD");
                ok = false;
            }
        }
    }
    if ok && !seen.contains(&Method::Get) {
        let message = "cached methods must include GET (HEAD is answered from GET entries)";
        diag.expect(list.span(), message, "[\"GET\"] or [\"GET\", \"HEAD\"]");
        ok = false;
    }
    ok.then(|| seen.contains(&Method::Head))
}

/// The node's `[cache]` section.
pub(crate) fn compile_node_cache(
    f: &NodeCacheFile,
    diag: &mut Diag<'_>,
) -> Option<NodeCacheConfig> {
    let d = NodeCacheConfig::default();
    let mut config = NodeCacheConfig {
        enabled: f.enabled.unwrap_or(d.enabled),
        max_bytes: d.max_bytes,
    };
    if let Some(v) = &f.max_bytes {
        if !NODE_MAX_BYTES.contains(v.get_ref()) {
            let message = format!("max_bytes {} is out of range", v.get_ref());
            diag.expect(
                v.span(),
                message,
                "1048576..=1099511627776 (1 MiB to 1 TiB)",
            );
            return None;
        }
        config.max_bytes = *v.get_ref();
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testdata::*;

    const ROUTE: &str = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/m\"\n\
                         [apis.routes.integration]\ntype = \"mock\"\n";

    /// `ROUTE` with an inline `cache = ...` line (line 10).
    fn route_with(cache: &str) -> String {
        format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"/m\"\n{cache}\n[apis.routes.integration]\ntype = \"mock\"\n"
        )
    }

    fn settings(text: &str, stage: &str, route: usize) -> Option<Arc<CacheSettings>> {
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let api = c.definitions.api("a").unwrap();
        api.stage(stage)
            .unwrap()
            .route_settings(route)
            .cache
            .clone()
    }

    #[test]
    fn defaults_of_a_route_table() {
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\n[[apis.stages]]\nname = \"prod\"\n"
        ));
        let s = settings(&text, "prod", 0).unwrap();
        assert_eq!(s.mode, CacheMode::Ttl);
        assert_eq!(s.ttl, Duration::from_secs(300));
        assert_eq!(s.statuses, [200]);
        assert!(s.head);
        assert_eq!(s.max_object_bytes, 1 << 20);
        assert_eq!(s.client_invalidation, ClientInvalidation::Ignore);
        let off = api(&format!("{ROUTE}[[apis.stages]]\nname = \"prod\"\n"));
        assert!(settings(&off, "prod", 0).is_none());
    }

    #[test]
    fn overrides_merge_key_by_key() {
        let text = api(&format!(
            "{}{}[[apis.stages]]\nname = \"prod\"\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\ncache = {{ ttl_seconds = 10 }}\n\
             [[apis.stages.route_overrides]]\nroute = \"GET /m\"\n\
             cache = {{ key_headers = [\"Accept-Language\"], client_invalidation = \"allow_with_key\" }}\n\
             [[apis.stages]]\nname = \"dev\"\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\ncache = {{ enabled = true }}\n\
             [[apis.stages.route_overrides]]\nroute = \"GET /m\"\ncache = {{ enabled = false }}\n",
            route_with("cache = { mode = \"http\", ttl_seconds = 60, key_query = [\"q\", \"a\"] }"),
            mock_route("GET", "/n")
        ));
        let s = settings(&text, "prod", 0).unwrap();
        assert_eq!((s.mode, s.ttl), (CacheMode::Http, Duration::from_secs(10)));
        assert_eq!(s.key_query, ["a", "q"]);
        assert_eq!(s.key_headers, ["accept-language"]);
        assert_eq!(s.client_invalidation, ClientInvalidation::AllowWithKey);
        // `*` tunes but does not enable a route without its own table.
        assert!(settings(&text, "prod", 1).is_none());
        assert!(settings(&text, "dev", 0).is_none());
        let n = settings(&text, "dev", 1).unwrap();
        assert_eq!((n.mode, n.ttl), (CacheMode::Ttl, Duration::from_secs(300)));
        // The definitions PoPs receive carry the tables.
        let c = parse(&text).unwrap();
        assert!(
            c.definitions.source.contains("ttl_seconds = 60"),
            "{}",
            c.definitions.source
        );
    }

    #[test]
    fn bad_values_are_located() {
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\nmode = \"lru\"\nttl_seconds = 3601\nkey_query = [\"a&b\", \"x\", \"x\"]\n\
             key_headers = [\"bad header\"]\nstatuses = [200, 206, 200]\nmethods = [\"GET\", \"POST\"]\n\
             max_object_bytes = 0\nstale_if_error_seconds = 90000\nclient_invalidation = \"maybe\"\n"
        ));
        // serde stops at the first bad variant of a table.
        assert_eq!(errors(&text), ["21:23: unknown variant `maybe`"]);
        let text = api(&format!("{ROUTE}[apis.routes.cache]\nmode = \"lru\"\n"));
        assert_eq!(errors(&text), ["13:8: unknown variant `lru`"]);
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\nttl_seconds = 3601\nkey_query = [\"a&b\", \"x\", \"x\"]\n\
             key_headers = [\"bad header\"]\nstatuses = [200, 206, 200]\nmethods = [\"GET\", \"POST\"]\n\
             max_object_bytes = 0\nstale_if_error_seconds = 90000\n"
        ));
        assert_eq!(
            errors(&text),
            [
                "13:15: ttl_seconds 3601 is out of range",
                "14:14: invalid cache key query parameter `a&b`",
                "14:26: duplicate cache key query parameter `x`",
                "15:16: invalid cache key header `bad header`",
                "16:18: status 206 cannot be cached",
                "16:23: duplicate status 200",
                "17:19: method `POST` cannot be cached",
                "18:20: max_object_bytes 0 is out of range",
                "19:26: stale_if_error_seconds 90000 is out of range",
            ]
        );
    }

    /// The gateway decodes a request's parameter names, never the configured
    /// ones: `q%5B%5D` would never match `?q[]=evil`, which the backend reads,
    /// and the parameter would not be keyed.
    #[test]
    fn encoded_query_names_are_refused() {
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\nkey_query = [\"q%5B%5D\", \"my+q\", \"a%zz\", \"b%26\"]\n"
        ));
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            [
                "t.toml:13:14: invalid cache key query parameter `q%5B%5D`: write the name decoded (`q[]`)",
                "t.toml:13:25: invalid cache key query parameter `my+q`: write the name decoded (`my q`)",
                "t.toml:13:33: invalid cache key query parameter `a%zz` (expected a non-empty name, \
                 decoded, without `&`, `=`, `#`, `%`, `+` or control characters)",
                "t.toml:13:41: invalid cache key query parameter `b%26` (expected a non-empty name, \
                 decoded, without `&`, `=`, `#`, `%`, `+` or control characters)",
            ]
        );
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\nkey_query = [\"q[]\", \"my q\", \"caf\u{e9}\"]\n[[apis.stages]]\nname = \"prod\"\n"
        ));
        assert_eq!(
            settings(&text, "prod", 0).unwrap().key_query,
            ["caf\u{e9}", "my q", "q[]"]
        );
    }

    #[test]
    fn every_query_parameter_is_one_star_alone() {
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\nkey_query = [\"*\"]\n[[apis.stages]]\nname = \"prod\"\n"
        ));
        assert_eq!(settings(&text, "prod", 0).unwrap().key_query, ["*"]);
        let text = api(&format!(
            "{ROUTE}[apis.routes.cache]\nkey_query = [\"q\", \"*\"]\n"
        ));
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:13:19: `*` (every query parameter) stands alone in key_query"
        );
    }

    #[test]
    fn head_alone_and_override_errors() {
        let text = api(&format!(
            "{}[[apis.stages]]\nname = \"prod\"\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\ncache = {{ ttl_seconds = 7200, bogus = 1 }}\n",
            route_with("cache = { methods = [\"HEAD\"] }")
        ));
        let e = errors(&text);
        assert_eq!(
            e[0],
            "10:21: cached methods must include GET (HEAD is answered from GET entries)"
        );
        assert_eq!(e[1], "17:31: unknown field `bogus`");
        let text = api(&format!(
            "{ROUTE}[[apis.stages]]\nname = \"prod\"\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\ncache = {{ ttl_seconds = 7200 }}\n"
        ));
        assert_eq!(errors(&text), ["16:25: ttl_seconds 7200 is out of range"]);
    }

    #[test]
    fn node_cache_section() {
        let c = parse(&format!(
            "{NODE}[cache]\nmax_bytes = 1048576\nenabled = false\n"
        ))
        .unwrap();
        assert_eq!(
            c.cache,
            NodeCacheConfig {
                enabled: false,
                max_bytes: 1 << 20
            }
        );
        assert_eq!(parse(NODE).unwrap().cache, NodeCacheConfig::default());
        assert_eq!(
            errors(&format!("{NODE}[cache]\nmax_bytes = 10\n")),
            ["5:13: max_bytes 10 is out of range"]
        );
    }
}
