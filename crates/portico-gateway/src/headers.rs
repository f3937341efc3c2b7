//! Header rules every hop applies: hop-by-hop removal, forwarding metadata,
//! request ids.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-request-id`, carried end to end and on every response.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers meaningful only for one connection (RFC 9110 §7.6.1), never
/// forwarded. `Trailer` is not one of them (§6.6.2): it names the trailer
/// fields a message carries, and HTTP/1.1 sends only the fields it names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers, including those the `Connection` header
/// names, and a `Content-Length` beside a `Transfer-Encoding`: the transfer
/// coding framed the message, so the length is not what the body is (RFC
/// 9112 §6.3 has an intermediary remove it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their names instead of a
    // lookup for each of the eight.
    if !has_hop_by_hop(headers) {
        return;
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(PROXY_CONNECTION);
}

fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || *name == PROXY_CONNECTION)
}

/// The transfer coding a message names, if it is not `chunked` alone, the
/// one coding every HTTP/1.1 recipient knows (RFC 9112 §6.1). hyper decodes
/// the chunked layer of `gzip, chunked` (and reads `gzip` alone to the
/// connection's end), and the header is hop-by-hop: relayed, the next hop
/// would get the still-coded bytes as the content.
pub fn other_transfer_coding(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (Some(one), None) if one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => None,
        (first, _) => first,
    }
}

/// [`strip_hop_by_hop`] for a request, keeping `TE: trailers` when the
/// client sent it: a gRPC server refuses a request without it, and every
/// hop may send it (RFC 9113 §8.2.2).
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    if !has_hop_by_hop(headers) {
        return;
    }
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let coding = t.split(';').next().unwrap_or("").trim();
            coding.eq_ignore_ascii_case("trailers")
        });
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Forwarding headers a client may send but only a proxy may set: removed
/// from every request, the ones Portico knows set anew. A backend (or a
/// framework's proxy support) that trusts its proxy reads them as facts.
/// Besides the `X-Forwarded-*` family, the client-address headers of other
/// proxies and CDNs, which libraries read before `X-Forwarded-For` (npm's
/// `request-ip` takes `X-Client-IP` first), and Envoy's client certificate.
const CLIENT_FORWARDING: [HeaderName; 13] = [
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    X_REAL_IP,
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-forwarded-client-cert"),
];

// Names as constants: a `&str` name is parsed and validated at every call.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets the forwarding headers of a request to a backend: `X-Forwarded-For`
/// (the client's address appended to what it sent, as API Gateway does),
/// `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port`, `X-Real-IP`
/// and one `Forwarded` element (RFC 7239), replacing whatever the client
/// sent under those names: Portico is where trust begins, and a client's
/// `X-Forwarded-Host: evil.example` would otherwise reach backends that
/// build links from it, and the cache, which does not key on it.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: SocketAddr,
    proto: &str,
    host: &str,
    port: u16,
) {
    let ip = client.ip().to_string();
    let mut xff = String::new();
    for line in headers.get_all(&X_FORWARDED_FOR) {
        let line = line.to_str().unwrap_or("").trim();
        if !line.is_empty() {
            xff.push_str(line);
            xff.push_str(", ");
        }
    }
    xff.push_str(&ip);
    if headers.keys().any(|name| CLIENT_FORWARDING.contains(name)) {
        for name in &CLIENT_FORWARDING {
            headers.remove(name);
        }
    }
    // Values made from strings built here take their buffers (checked, not
    // copied), and the usual schemes are constants.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto_value = match proto {
        "https" => Ok(HeaderValue::from_static("https")),
        "http" => Ok(HeaderValue::from_static("http")),
        other => HeaderValue::from_str(other),
    };
    if let Ok(v) = proto_value {
        headers.insert(X_FORWARDED_PROTO, v);
    }
    if let Ok(v) = HeaderValue::from_str(host)
        && !host.is_empty()
    {
        headers.insert(X_FORWARDED_HOST, v);
    }
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(port));
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(X_REAL_IP, v);
    }
    let node = if client.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    let mut forwarded = format!("for={node};proto={proto}");
    // A token as it is, anything else printable quoted (RFC 7239 §4): a
    // client's `Host: a,for=10.9.9.9` must stay one value of this element,
    // not become a second element a backend would take for the client.
    let printable = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
    if !host.is_empty() && host.bytes().all(printable) {
        forwarded.push_str(";host=");
        if host.bytes().all(is_tchar) {
            forwarded.push_str(host);
        } else {
            forwarded.push('"');
            forwarded.push_str(host);
            forwarded.push('"');
        }
    }
    match HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
        Ok(v) => headers.insert(header::FORWARDED, v),
        Err(_) => headers.remove(header::FORWARDED),
    };
}

/// `Early-Data` (RFC 8470 §5.1): set by a listener on a request it serves
/// from TLS early data.
pub static EARLY_DATA: HeaderName = HeaderName::from_static("early-data");

/// A `Content-Length` that is not one number.
#[derive(Debug)]
pub struct InvalidLength;

/// The length a message declares: every `Content-Length` value must be
/// digits only, and all of them the same (RFC 9110 §8.6: `3, 3` is 3).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidLength> {
    let mut declared = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            let len = (!item.is_empty() && item.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(item).ok()?.parse::<u64>().ok())
                .flatten();
            match (len, declared) {
                (Some(len), None) => declared = Some(len),
                (Some(len), Some(seen)) if len == seen => {}
                _ => return Err(InvalidLength),
            }
        }
    }
    Ok(declared)
}

/// A `token` character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Most header fields a request may carry (431 beyond), applied to every
/// listener alike (HTTP/1.1's parser stops at 100 before it: see
/// `portico-net`'s `http.rs`): under the backbone's limit per header list
/// (`portico_proto::MAX_HEADER_FIELDS`, 1 024), leaving room for the fields
/// a PoP adds before it forwards (request id, `Via`, forwarding headers).
pub const MAX_FIELDS: usize = 1000;

/// Fields a gateway may add to a request before the backbone carries it.
pub const ADDED_FIELDS: usize = 8;

/// A request's id, as the `x-request-id` value it is sent as: cloning it,
/// into the context, the request and the response, counts a reference
/// instead of copying a string each time.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's request id if it is sane (1–128 of `[A-Za-z0-9._-]`),
    /// else a new UUID.
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get(&REQUEST_ID) {
            Some(v) if v.to_str().is_ok_and(is_valid_request_id) => RequestId(v.clone()),
            _ => Self::new(),
        }
    }

    /// A random (v4) UUID from the thread-local generator: no system call
    /// per request, and one allocation, shared by every clone.
    pub fn new() -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut text);
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(text));
        RequestId(value.unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    /// The value to send.
    pub fn value(&self) -> &HeaderValue {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Checked to be of `[A-Za-z0-9._-]` when made.
        self.0.to_str().unwrap_or_default()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_beside_a_transfer_coding_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "5");
    }

    #[test]
    fn a_request_keeps_te_trailers_and_nothing_else_of_te() {
        for (te, kept) in [
            ("trailers", true),
            ("gzip, Trailers", true),
            ("trailers;q=0.5", true),
            ("gzip", false),
            ("trailersx", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_static(te));
            h.insert(header::CONNECTION, HeaderValue::from_static("te"));
            strip_request_hop_by_hop(&mut h);
            assert_eq!(h.get(header::TE).is_some(), kept, "{te}");
            if kept {
                assert_eq!(h[header::TE], "trailers");
            }
            assert!(!h.contains_key(header::CONNECTION));
        }
        // Responses never keep it.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-keep"));
        // End to end: without it, HTTP/1.1 drops the trailer fields.
        assert_eq!(h[header::TRAILER], "x-checksum");
    }

    #[test]
    fn appends_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        set_forwarded(
            &mut h,
            "[::1]:5000".parse().unwrap(),
            "https",
            "api.example.com",
            443,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, ::1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=api.example.com"
        );
    }

    /// What a client claims under a proxy's names never reaches a backend.
    #[test]
    fn a_clients_forwarding_claims_are_replaced() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("forwarded", "for=203.0.113.9;host=evil.example;proto=http"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-scheme", "http"),
            ("x-forwarded-prefix", "/evil"),
            ("x-real-ip", "203.0.113.9"),
            ("x-client-ip", "203.0.113.9"),
            ("true-client-ip", "203.0.113.9"),
            ("cf-connecting-ip", "203.0.113.9"),
            ("fastly-client-ip", "203.0.113.9"),
            ("x-cluster-client-ip", "203.0.113.9"),
            ("x-forwarded-client-cert", "Hash=0;Subject=\"CN=admin\""),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        set_forwarded(
            &mut h,
            "192.0.2.1:5000".parse().unwrap(),
            "https",
            "api.example.com",
            8443,
        );
        assert_eq!(h.get_all("forwarded").iter().count(), 1);
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.1;proto=https;host=api.example.com"
        );
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-port"], "8443");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        for gone in [
            "x-forwarded-scheme",
            "x-forwarded-prefix",
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-cluster-client-ip",
            "x-forwarded-client-cert",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_host_that_is_no_token_is_quoted_in_forwarded() {
        let client = "192.0.2.1:5000".parse().unwrap();
        for (host, expected) in [
            ("a,for=10.9.9.9", "host=\"a,for=10.9.9.9\""),
            ("api.example.com:8443", "host=\"api.example.com:8443\""),
            ("[::1]:443", "host=\"[::1]:443\""),
        ] {
            let mut h = HeaderMap::new();
            set_forwarded(&mut h, client, "https", host, 443);
            assert_eq!(
                h["forwarded"],
                format!("for=192.0.2.1;proto=https;{expected}")
            );
        }
        // Nothing that would need escaping is forwarded at all.
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, client, "https", "a\"b", 443);
        assert_eq!(h["forwarded"], "for=192.0.2.1;proto=https");
    }

    #[test]
    fn keeps_valid_request_ids_only() {
        let mut h = HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(RequestId::of(&h).as_str(), "abc-123");
        h.insert(&REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let new = RequestId::of(&h);
        assert!(uuid::Uuid::parse_str(new.as_str()).is_ok(), "{new}");
        assert_ne!(new.as_str(), RequestId::new().as_str());
        assert_eq!(new.value(), new.as_str());
    }
}
