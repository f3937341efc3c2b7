//! Frames of a forwarded HTTP request: one bidirectional stream per request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Header list in arrival order. Names are lowercase (as h2/h3 require);
/// values are raw bytes because HTTP/1.1 allows non-UTF-8 (obs-text) values.
/// Repeated names stay repeated entries.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Most fields one header list (request head, response head or trailers)
/// may carry. A list over it neither encodes nor decodes: the `http` crate's
/// header map panics past 24 576 entries, and a frame of empty fields can
/// name far more than that within its size limit. Both listeners answer a
/// request with more fields 431 before it is forwarded.
pub const MAX_HEADER_FIELDS: usize = 1024;

/// The head of a request a PoP forwards, with everything the PoP already
/// decided (route, principal, throttle identity) so the origin need not
/// decide it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    /// Id that follows the request through logs on both nodes.
    pub request_id: String,
    pub method: String,
    /// Path and query exactly as received (not normalised, not decoded).
    pub uri: String,
    #[serde(with = "headers_serde")]
    pub headers: Headers,
    pub client_addr: Option<ClientAddr>,
    pub tls: Option<TlsInfo>,
    /// W3C `traceparent` of the PoP span, if tracing is on.
    pub trace_context: Option<String>,
    pub api: String,
    pub stage: String,
    /// Matched route, e.g. `GET /items/{id}`.
    pub route_key: String,
    pub path_params: Vec<(String, String)>,
    /// Who the PoP authenticated, if the route requires auth.
    pub principal: Option<Principal>,
    pub pop_id: String,
    /// Time budget left when the PoP sent the head, in milliseconds
    /// (relative, so no clock agreement is needed). 0 = no deadline.
    pub deadline_ms: u32,
}

/// A client socket address in a fixed layout: IPv4 is stored IPv4-mapped
/// (`::ffff:a.b.c.d`) so every address is 16 + 2 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClientAddr {
    pub ip: [u8; 16],
    pub port: u16,
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        let v6 = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        ClientAddr {
            ip: v6.octets(),
            port: addr.port(),
        }
    }
}

impl From<ClientAddr> for SocketAddr {
    fn from(addr: ClientAddr) -> Self {
        let v6 = Ipv6Addr::from(addr.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, addr.port)
    }
}

/// What the PoP saw of the client's TLS session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// IANA cipher suite name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    pub sni: Option<String>,
    pub alpn: Option<String>,
}

/// An authenticated caller, as decided by the node that authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// How it was authenticated: `api_key`, `jwt`, `authorizer`, ...
    pub kind: String,
    /// The key id, JWT subject or authorizer principal id.
    pub id: String,
    /// Claims or authorizer context the integration may map into the request.
    pub claims: Vec<(String, String)>,
}

/// Terminates a body successfully, optionally with trailers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    #[serde(with = "headers_serde")]
    pub trailers: Headers,
}

/// Aborts one direction of a stream. After a `Reset` in the response
/// direction the PoP knows the body it relayed is truncated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    pub code: ResetCode,
    /// Human-readable detail for logs; never shown to clients.
    pub reason: String,
}

/// Why a stream was aborted. Wire tag = variant index: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResetCode {
    /// The sender no longer wants the stream (client went away).
    Cancelled,
    /// The deadline passed.
    Timeout,
    /// The backend failed mid-stream.
    UpstreamFailed,
    /// A body exceeded a configured size limit.
    TooLarge,
    /// The receiver refused the stream (overloaded, shutting down).
    Refused,
    /// The peer broke the protocol on this stream.
    Protocol,
    /// Anything else; see `reason`.
    Internal,
}

impl ResetCode {
    /// A short stable word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::UpstreamFailed => "upstream_failed",
            Self::TooLarge => "too_large",
            Self::Refused => "refused",
            Self::Protocol => "protocol",
            Self::Internal => "internal",
        }
    }
}

/// The head of the response the origin sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    #[serde(with = "headers_serde")]
    pub headers: Headers,
    /// Node id of the origin that produced the response.
    pub served_by: String,
}

/// Serde adapter for [`Headers`]: each value is written as one byte string
/// and read back in one copy. The bytes are those of the derived form (a
/// `Vec<u8>` is `varint len` + its bytes either way), which went byte by
/// byte through serde in both directions.
pub(crate) mod headers_serde {
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

    use super::{Headers, MAX_HEADER_FIELDS};
    use crate::frame::HeadersRef;

    pub fn serialize<S: Serializer>(headers: &Headers, s: S) -> Result<S::Ok, S::Error> {
        HeadersRef(|| headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))).serialize(s)
    }

    /// One `(name, value)` pair, the value read as one byte string.
    #[derive(Deserialize)]
    struct Pair(String, #[serde(deserialize_with = "value")] Vec<u8>);

    fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        super::bytes_serde::deserialize(d).map(Vec::from)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Headers, D::Error> {
        d.deserialize_seq(PairsVisitor)
    }

    /// The pairs of a list, refused past [`MAX_HEADER_FIELDS`] before the
    /// next one is read.
    struct PairsVisitor;

    impl<'de> de::Visitor<'de> for PairsVisitor {
        type Value = Headers;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_HEADER_FIELDS} header fields")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Headers, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > MAX_HEADER_FIELDS {
                return Err(de::Error::invalid_length(announced, &self));
            }
            let mut headers = Headers::with_capacity(announced);
            while let Some(Pair(name, value)) = seq.next_element()? {
                if headers.len() == MAX_HEADER_FIELDS {
                    return Err(de::Error::invalid_length(headers.len() + 1, &self));
                }
                headers.push((name, value));
            }
            Ok(headers)
        }
    }
}

/// Serde adapter so a `Bytes` payload is written as one byte string
/// (`varint len` + raw bytes) and read back in one copy, not byte by byte.
pub(crate) mod bytes_serde {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> de::Visitor<'de> for BytesVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Headers as plain serde derives them (the first wire form).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Derived(Headers);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Adapted(#[serde(with = "headers_serde")] Headers);

    fn encode(value: &impl Serialize) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    proptest! {
        #[test]
        fn header_lists_keep_the_derived_wire_form(headers in crate::arb::headers()) {
            let derived = encode(&Derived(headers.clone()));
            prop_assert_eq!(&encode(&Adapted(headers.clone())), &derived);
            let cfg = bincode::config::standard();
            let (back, used): (Adapted, usize) =
                bincode::serde::decode_from_slice(&derived, cfg).unwrap();
            prop_assert_eq!(used, derived.len());
            prop_assert_eq!(back.0, headers);
        }
    }

    #[test]
    fn a_header_list_over_the_limit_neither_decodes_nor_encodes() {
        let cfg = bincode::config::standard();
        let fields = |n: usize| vec![("a".to_owned(), Vec::new()); n];
        let at_limit = encode(&Derived(fields(MAX_HEADER_FIELDS)));
        let (back, _): (Adapted, usize) =
            bincode::serde::decode_from_slice(&at_limit, cfg).unwrap();
        assert_eq!(back.0.len(), MAX_HEADER_FIELDS);
        let over = encode(&Derived(fields(MAX_HEADER_FIELDS + 1)));
        let err = bincode::serde::decode_from_slice::<Adapted, _>(&over, cfg).unwrap_err();
        assert!(
            err.to_string().contains("at most 1024 header fields"),
            "{err}"
        );
        let err =
            bincode::serde::encode_to_vec(Adapted(fields(MAX_HEADER_FIELDS + 1)), cfg).unwrap_err();
        assert!(
            err.to_string()
                .contains("1025 header fields, more than the 1024 a list may carry"),
            "{err}"
        );
    }

    #[test]
    fn client_addr_round_trips_v4_and_v6() {
        for s in ["192.0.2.7:443", "[2001:db8::1]:8443", "[::1]:1"] {
            let addr: SocketAddr = s.parse().unwrap();
            assert_eq!(SocketAddr::from(ClientAddr::from(addr)), addr);
        }
    }

    #[test]
    fn reset_codes_have_distinct_names() {
        let all = [
            ResetCode::Cancelled,
            ResetCode::Timeout,
            ResetCode::UpstreamFailed,
            ResetCode::TooLarge,
            ResetCode::Refused,
            ResetCode::Protocol,
            ResetCode::Internal,
        ];
        let mut names: Vec<_> = all.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
