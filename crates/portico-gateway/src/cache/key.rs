//! Cache keys: API, stage, method class, path, the chosen query parameters and
//! request headers, and (for a resource whose response has `Vary`) the values of
//! the varying headers.
//!
//! A key is written once through a [`KeySink`]: into a keyed hash (the lookup, with
//! no allocation on the hit path), into a [`KeyText`] (stored with the entry on a
//! miss), or into a comparator that checks a request against a stored key (so a
//! 64-bit hash collision can never serve one resource for another).
//!
//! The text is `api \0 stage \0 G \0 path \0 query \0 headers \0 \x1c
//! scheme://host:port [\0 \x1d caller] [\0 \x1e vary]`, where
//! `query` is the canonical chosen query (`a=1&b=2`, names sorted, values in request
//! order, `name` alone for a parameter without `=`; a name matches once
//! percent-decoded, and is written as sent) and each header is
//! `name \x1f value...`. No field can contain `\0` or `\x1f` (URIs and header
//! values never hold control characters), so the encoding is unambiguous.

use std::hash::{BuildHasher, Hasher, RandomState};

use http::{HeaderMap, HeaderName};
use portico_config::CacheSettings;

/// Receives the bytes of a key.
pub(crate) trait KeySink {
    fn put(&mut self, bytes: &[u8]);
}

/// What a request contributes to its key.
pub(crate) struct KeyInput<'a> {
    pub api: &'a str,
    pub stage: &'a str,
    /// The path inside the stage, as received.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub settings: &'a CacheSettings,
    /// The caller (its API key id), for a route whose backend request
    /// depends on it: each caller then has entries of its own.
    pub principal: Option<&'a str>,
    /// How the client addressed the API: the scheme it came in by, the host
    /// it named (without its port) and the port it addressed. A backend
    /// gets them (`X-Forwarded-Proto`, `-Host`, `-Port`, `Forwarded`) and
    /// may build links from them, so a response is only served to requests
    /// that addressed the API alike: otherwise one client's
    /// `Host: api.example:1` would poison the entry for everyone.
    pub addressed: Addressed<'a>,
}

/// The scheme, host and port a request addressed (see [`KeyInput::addressed`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addressed<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
}

const SEP: &[u8] = b"\0";
/// Starts the `Vary` part of a variant key (no field holds `\x1e`).
const VARIANT: &[u8] = b"\0\x1e";
/// Starts the addressed part of a key (no field holds `\x1c`).
const ADDRESSED: &[u8] = b"\0\x1c";
/// Starts the caller's part of a key (no field holds `\x1d`).
const PRINCIPAL: &[u8] = b"\0\x1d";
/// Every cached exchange is a GET (HEAD is answered from GET entries).
const METHOD_CLASS: &[u8] = b"G";

impl KeyInput<'_> {
    /// The primary key: everything but `Vary`.
    pub(crate) fn write(&self, sink: &mut impl KeySink) {
        for part in [self.api.as_bytes(), self.stage.as_bytes(), METHOD_CLASS] {
            sink.put(part);
            sink.put(SEP);
        }
        self.write_path(sink);
        sink.put(SEP);
        write_query(self.query, &self.settings.key_query, sink);
        sink.put(SEP);
        for name in &self.settings.key_headers {
            write_header(self.headers, name, sink);
        }
        self.addressed.write(sink);
        if let Some(principal) = self.principal {
            sink.put(PRINCIPAL);
            sink.put(principal.as_bytes());
        }
    }

    fn write_path(&self, sink: &mut impl KeySink) {
        sink.put(self.path.as_bytes());
    }

    /// The primary key followed by the values of the `Vary` headers `names`.
    pub(crate) fn write_variant(&self, names: &[HeaderName], sink: &mut impl KeySink) {
        self.write(sink);
        sink.put(VARIANT);
        for name in names {
            write_header(self.headers, name.as_str(), sink);
        }
    }
}

impl Addressed<'_> {
    /// `\0\x1c scheme://host:port`, the host in lower case (names are
    /// case-insensitive), written without allocating.
    fn write(&self, sink: &mut impl KeySink) {
        sink.put(ADDRESSED);
        sink.put(self.scheme.as_bytes());
        sink.put(b"://");
        for chunk in self.host.as_bytes().chunks(64) {
            let mut lower = [0u8; 64];
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            sink.put(lower);
        }
        sink.put(b":");
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        let mut port = self.port;
        loop {
            at -= 1;
            digits[at] = b'0' + (port % 10) as u8;
            port /= 10;
            if port == 0 {
                break;
            }
        }
        sink.put(&digits[at..]);
    }
}

/// The chosen query parameters in canonical form (see the module docs); with
/// [`portico_config::EVERY_PARAMETER`], the whole query as sent.
pub(crate) fn write_query(query: Option<&str>, chosen: &[String], sink: &mut impl KeySink) {
    if let [every] = chosen
        && every == portico_config::EVERY_PARAMETER
    {
        sink.put(query.unwrap_or("").as_bytes());
        return;
    }
    let mut first = true;
    for name in chosen {
        for pair in query.unwrap_or("").split('&') {
            let (n, v) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            if !same_name(n, name) {
                continue;
            }
            if !first {
                sink.put(b"&");
            }
            first = false;
            sink.put(n.as_bytes());
            if let Some(v) = v {
                sink.put(b"=");
                sink.put(v.as_bytes());
            }
        }
    }
}

/// Whether the query parameter named `raw` (as sent) is `name` once decoded,
/// as the backend will read it: `%71` and `q` are the same parameter, and a
/// spelling the key did not know would let a request choose what the backend
/// answers without its key changing. Such a pair is keyed as sent.
fn same_name(raw: &str, name: &str) -> bool {
    if raw == name {
        return true;
    }
    if !raw.contains(['%', '+']) {
        return false;
    }
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy() == name
}

/// `name` and its values. Looked up by `&str`, which `http` does without allocating.
fn write_header(headers: &HeaderMap, name: &str, sink: &mut impl KeySink) {
    sink.put(name.as_bytes());
    for v in headers.get_all(name) {
        sink.put(b"\x1f");
        sink.put(v.as_bytes());
    }
    sink.put(SEP);
}

/// The keyed hash a key is looked up by. The key is random per process, so a client
/// cannot construct colliding keys.
pub(crate) struct KeyHasher<H>(pub H);

impl<H: Hasher> KeySink for KeyHasher<H> {
    fn put(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
}

/// Hashes whatever `write` puts.
pub(crate) fn hash_of(
    state: &RandomState,
    write: impl FnOnce(&mut KeyHasher<std::hash::DefaultHasher>),
) -> u64 {
    let mut h = KeyHasher(state.build_hasher());
    write(&mut h);
    h.0.finish()
}

/// A key as stored with its entry, with the positions purges select by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyText {
    text: Box<[u8]>,
}

impl KeySink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl KeyText {
    pub(crate) fn build(write: impl FnOnce(&mut Vec<u8>)) -> KeyText {
        let mut text = Vec::with_capacity(96);
        write(&mut text);
        KeyText {
            text: text.into_boxed_slice(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.text.len()
    }

    /// The `n`th `\0`-separated field (0 api, 1 stage, 2 method class, 3 path, 4 query).
    fn field(&self, n: usize) -> &[u8] {
        self.text.split(|b| *b == 0).nth(n).unwrap_or(b"")
    }

    pub(crate) fn api(&self) -> &[u8] {
        self.field(0)
    }

    pub(crate) fn stage(&self) -> &[u8] {
        self.field(1)
    }

    pub(crate) fn path(&self) -> &[u8] {
        self.field(3)
    }

    pub(crate) fn query(&self) -> &[u8] {
        self.field(4)
    }

    /// The primary key of a variant key (itself when it has no `Vary` part).
    pub(crate) fn without_variant(&self) -> KeyText {
        let end = self
            .text
            .windows(VARIANT.len())
            .position(|w| w == VARIANT)
            .unwrap_or(self.text.len());
        KeyText {
            text: self.text[..end].into(),
        }
    }

    /// Whether `write` produces exactly this key, without allocating.
    pub(crate) fn matches(&self, write: impl FnOnce(&mut Compare<'_>)) -> bool {
        let mut c = Compare {
            rest: &self.text,
            equal: true,
        };
        write(&mut c);
        c.equal && c.rest.is_empty()
    }
}

/// Compares what it is fed with a stored key, byte for byte.
pub(crate) struct Compare<'a> {
    rest: &'a [u8],
    equal: bool,
}

impl KeySink for Compare<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if !self.equal {
            return;
        }
        match self.rest.strip_prefix(bytes) {
            Some(rest) => self.rest = rest,
            None => self.equal = false,
        }
    }
}

/// The key of everything stored for one path of one API stage: unsafe methods and
/// URL purges find entries through it.
pub(crate) fn path_hash(state: &RandomState, api: &[u8], stage: &[u8], path: &[u8]) -> u64 {
    hash_of(state, |h| {
        for part in [api, SEP, stage, SEP, path] {
            h.put(part);
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use portico_config::{CacheMode, ClientInvalidation};

    use super::*;

    fn settings(query: &[&str], headers: &[&str]) -> CacheSettings {
        CacheSettings {
            mode: CacheMode::Http,
            ttl: Duration::from_secs(1),
            key_query: query.iter().map(|s| s.to_string()).collect(),
            key_headers: headers.iter().map(|s| s.to_string()).collect(),
            statuses: vec![200],
            head: true,
            max_object_bytes: 1,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            client_invalidation: ClientInvalidation::Ignore,
        }
    }

    const AT: Addressed<'static> = Addressed {
        scheme: "https",
        host: "api.example",
        port: 443,
    };

    /// A request of API `a`, stage `s`, at [`AT`], with no caller.
    fn input<'a>(
        settings: &'a CacheSettings,
        headers: &'a HeaderMap,
        path: &'a str,
        query: Option<&'a str>,
    ) -> KeyInput<'a> {
        KeyInput {
            api: "a",
            stage: "s",
            path,
            query,
            headers,
            settings,
            principal: None,
            addressed: AT,
        }
    }

    #[test]
    fn a_request_that_addressed_the_api_otherwise_has_another_key() {
        let s = settings(&[], &[]);
        let h = HeaderMap::new();
        let key = |addressed| {
            let input = KeyInput {
                addressed,
                ..input(&s, &h, "/page", None)
            };
            text(&input)
        };
        assert_eq!(key(AT), "a|s|G|/page|||@https://api.example:443");
        // Names are case-insensitive: one entry.
        let upper = Addressed {
            host: "API.Example",
            ..AT
        };
        assert_eq!(key(upper), key(AT));
        // What a backend may build links from is keyed.
        for other in [
            Addressed { port: 1, ..AT },
            Addressed {
                host: "api.execute-api.evil.example",
                ..AT
            },
            Addressed {
                scheme: "http",
                ..AT
            },
        ] {
            assert_ne!(key(other), key(AT), "{other:?}");
        }
        let long = "h".repeat(200);
        let long = Addressed { host: &long, ..AT };
        assert_eq!(
            key(long),
            format!("a|s|G|/page|||@https://{}:443", "h".repeat(200))
        );
        let low = Addressed { port: 0, ..AT };
        assert!(key(low).ends_with("api.example:0"));
        let high = Addressed { port: 65535, ..AT };
        assert!(key(high).ends_with("api.example:65535"));
    }

    fn text(input: &KeyInput<'_>) -> String {
        let k = KeyText::build(|t| input.write(t));
        String::from_utf8(k.text.to_vec())
            .unwrap()
            .replace('\0', "|")
            .replace('\x1f', "~")
            .replace('\x1c', "@")
    }

    #[test]
    fn chosen_query_and_headers_are_canonical() {
        let s = settings(&["a", "q"], &["accept-language"]);
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_static("de"));
        h.insert("x-other", HeaderValue::from_static("1"));
        let input = KeyInput {
            api: "echo",
            stage: "prod",
            path: "/items/1",
            query: Some("z=9&q=2&a=1&q=&a"),
            headers: &h,
            settings: &s,
            principal: None,
            addressed: AT,
        };
        assert_eq!(
            text(&input),
            "echo|prod|G|/items/1|a=1&a&q=2&q=|accept-language~de||@https://api.example:443"
        );
        let k = KeyText::build(|t| input.write(t));
        assert_eq!(
            (k.api(), k.stage(), k.path(), k.query()),
            (
                &b"echo"[..],
                &b"prod"[..],
                &b"/items/1"[..],
                &b"a=1&a&q=2&q="[..]
            )
        );
        // Unchosen parameters and headers do not change the key.
        let same = KeyInput {
            query: Some("a=1&a&q=2&q=&zz=1"),
            ..input
        };
        assert!(k.matches(|c| same.write(c)));
        let other = KeyInput {
            query: Some("a=2"),
            ..input
        };
        assert!(!k.matches(|c| other.write(c)));
        let prefix = KeyInput {
            path: "/items",
            ..input
        };
        assert!(!k.matches(|c| prefix.write(c)));
    }

    #[test]
    fn every_parameter_keys_the_query_as_sent() {
        let s = settings(&["*"], &[]);
        let h = HeaderMap::new();
        let input = input(&s, &h, "/search", Some("q=a&page=2"));
        let k = KeyText::build(|t| input.write(t));
        assert_eq!(k.query(), b"q=a&page=2");
        for (query, same) in [
            (Some("q=a&page=2"), true),
            (Some("q=b&page=2"), false),
            (Some("q=a&page=2&x=1"), false),
            (None, false),
        ] {
            let other = KeyInput { query, ..input };
            assert_eq!(k.matches(|c| other.write(c)), same, "{query:?}");
        }
    }

    #[test]
    fn a_chosen_parameter_spelled_otherwise_is_keyed_as_sent() {
        let s = settings(&["q"], &[]);
        let h = HeaderMap::new();
        let key = |query| text(&input(&s, &h, "/search", Some(query)));
        // The backend reads each of these as a `q`: so does the key.
        assert_eq!(
            key("%71=evil&q=shoes"),
            "a|s|G|/search|%71=evil&q=shoes||@https://api.example:443"
        );
        assert_eq!(
            key("%71=evil"),
            "a|s|G|/search|%71=evil||@https://api.example:443"
        );
        assert_ne!(key("%71=evil&q=shoes"), key("q=shoes"));
        let spaced = settings(&["my q"], &[]);
        assert_eq!(
            text(&input(&spaced, &h, "/", Some("my+q=1&my%20q=2&myq=3"))),
            "a|s|G|/|my+q=1&my%20q=2||@https://api.example:443"
        );
    }

    /// The configuration holds names decoded (it refuses `%` and `+`): a
    /// name with brackets matches however the request spells it.
    #[test]
    fn a_decoded_name_with_brackets_matches_every_spelling() {
        let s = settings(&["q[]"], &[]);
        let h = HeaderMap::new();
        assert_eq!(
            text(&input(&s, &h, "/", Some("q[]=1&q%5B%5D=2&q%5b%5d=3&q=4"))),
            "a|s|G|/|q[]=1&q%5B%5D=2&q%5b%5d=3||@https://api.example:443"
        );
    }

    #[test]
    fn hashes_agree_with_text_and_variants_differ() {
        let s = settings(&[], &[]);
        let mut h = HeaderMap::new();
        h.insert("accept", HeaderValue::from_static("text/html"));
        let input = input(&s, &h, "/", None);
        let state = RandomState::new();
        let primary = hash_of(&state, |k| input.write(k));
        assert_eq!(primary, hash_of(&state, |k| input.write(k)));
        let names = [http::header::ACCEPT];
        let variant = hash_of(&state, |k| input.write_variant(&names, k));
        assert_ne!(primary, variant);
        let stored = KeyText::build(|t| input.write_variant(&names, t));
        assert!(stored.matches(|c| input.write_variant(&names, c)));
        assert!(!stored.matches(|c| input.write(c)));
    }
}
