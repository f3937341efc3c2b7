//! Borrowed views of the request and response heads, for the sender.
//!
//! A PoP forwards data it already holds (the parsed request, its routing
//! decision); copying all of it into an owned [`RequestHead`] only to encode
//! and drop it cost about twenty allocations per request. These views
//! borrow instead and serialize to exactly the bytes of the owned heads
//! (tested), so the receiver decodes them as [`Frame::RequestHead`] and
//! [`Frame::ResponseHead`] like any other. Header values are written as one
//! byte string each, not byte by byte.
//!
//! [`RequestHead`]: super::RequestHead
//! [`Frame::RequestHead`]: super::Frame::RequestHead
//! [`Frame::ResponseHead`]: super::Frame::ResponseHead

use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use super::ClientAddr;

/// Header pairs (lowercase name, raw value) in sending order, written as a
/// [`Headers`](super::Headers) list. The function gives the pairs; it is
/// called twice, once to count and once to write.
pub struct HeadersRef<F>(pub F);

impl<'a, F, I> Serialize for HeadersRef<F>
where
    F: Fn() -> I,
    I: Iterator<Item = (&'a str, &'a [u8])>,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let count = (self.0)().count();
        if count > super::MAX_HEADER_FIELDS {
            let max = super::MAX_HEADER_FIELDS;
            return Err(serde::ser::Error::custom(format_args!(
                "{count} header fields, more than the {max} a list may carry"
            )));
        }
        let mut seq = s.serialize_seq(Some(count))?;
        for (name, value) in (self.0)() {
            seq.serialize_element(&(name, RawBytes(value)))?;
        }
        seq.end()
    }
}

/// A byte string written in one piece (`varint len` + bytes, the same as a
/// `Vec<u8>` element by element).
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// [`TlsInfo`](super::TlsInfo), borrowed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TlsInfoRef<'a> {
    pub version: &'a str,
    pub cipher: &'a str,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a str>,
}

/// [`Principal`](super::Principal), borrowed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PrincipalRef<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub claims: &'a [(String, String)],
}

/// [`RequestHead`](super::RequestHead), borrowed: the same fields in the same
/// order.
#[derive(Serialize)]
#[serde(bound(serialize = "HeadersRef<I>: Serialize"))]
pub struct RequestHeadRef<'a, I> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub headers: HeadersRef<I>,
    pub client_addr: Option<ClientAddr>,
    pub tls: Option<TlsInfoRef<'a>>,
    pub trace_context: Option<&'a str>,
    pub api: &'a str,
    pub stage: &'a str,
    pub route_key: &'a str,
    pub path_params: &'a [(String, String)],
    pub principal: Option<PrincipalRef<'a>>,
    pub pop_id: &'a str,
    pub deadline_ms: u32,
}

/// [`ResponseHead`](super::ResponseHead), borrowed.
#[derive(Serialize)]
#[serde(bound(serialize = "HeadersRef<I>: Serialize"))]
pub struct ResponseHeadRef<'a, I> {
    pub status: u16,
    pub headers: HeadersRef<I>,
    pub served_by: &'a str,
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::*;
    use crate::{Codec, Frame, Headers, RequestHead, ResponseHead};

    fn pairs(headers: &Headers) -> impl Iterator<Item = (&str, &[u8])> {
        headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// `h` encoded through its borrowed view.
    fn encode_borrowed(codec: &Codec, h: &RequestHead, dst: &mut BytesMut) {
        let head = RequestHeadRef {
            request_id: &h.request_id,
            method: &h.method,
            uri: &h.uri,
            headers: HeadersRef(|| pairs(&h.headers)),
            client_addr: h.client_addr,
            tls: h.tls.as_ref().map(|t| TlsInfoRef {
                version: &t.version,
                cipher: &t.cipher,
                sni: t.sni.as_deref(),
                alpn: t.alpn.as_deref(),
            }),
            trace_context: h.trace_context.as_deref(),
            api: &h.api,
            stage: &h.stage,
            route_key: &h.route_key,
            path_params: &h.path_params,
            principal: h.principal.as_ref().map(|p| PrincipalRef {
                kind: &p.kind,
                id: &p.id,
                claims: &p.claims,
            }),
            pop_id: &h.pop_id,
            deadline_ms: h.deadline_ms,
        };
        codec.encode_request_head(&head, dst).unwrap();
    }

    proptest! {
        #[test]
        fn borrowed_request_heads_encode_as_owned_ones(head in crate::arb::request_head()) {
            let codec = Codec::new();
            let mut owned = BytesMut::new();
            codec.encode(&Frame::RequestHead(Box::new(head.clone())), &mut owned).unwrap();
            let mut borrowed = BytesMut::new();
            encode_borrowed(&codec, &head, &mut borrowed);
            prop_assert_eq!(&owned, &borrowed);
            prop_assert_eq!(codec.decode(&mut borrowed).unwrap(), Some(Frame::RequestHead(Box::new(head))));
        }

        #[test]
        fn borrowed_response_heads_encode_as_owned_ones(
            status in any::<u16>(),
            headers in crate::arb::headers(),
            served_by in crate::arb::text(),
        ) {
            let codec = Codec::new();
            let head = ResponseHead { status, headers, served_by };
            let mut owned = BytesMut::new();
            codec.encode(&Frame::ResponseHead(head.clone()), &mut owned).unwrap();
            let borrowed_head = ResponseHeadRef {
                status,
                headers: HeadersRef(|| pairs(&head.headers)),
                served_by: &head.served_by,
            };
            let mut borrowed = BytesMut::new();
            codec.encode_response_head(&borrowed_head, &mut borrowed).unwrap();
            prop_assert_eq!(&owned, &borrowed);
        }
    }

    #[test]
    fn an_oversized_borrowed_head_is_refused_and_leaves_the_buffer_alone() {
        let codec = Codec::with_max_frame(crate::MIN_MAX_FRAME).unwrap();
        let big = vec![b'v'; 4096];
        let head = ResponseHeadRef {
            status: 200,
            headers: HeadersRef(|| std::iter::once(("x-big", big.as_slice()))),
            served_by: "origin-a",
        };
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = codec.encode_response_head(&head, &mut buf).unwrap_err();
        assert!(
            matches!(err, crate::ProtoError::FrameTooLarge { .. }),
            "{err}"
        );
        assert_eq!(&buf[..], b"keep");
    }
}
