//! Translation between HTTP messages and the backbone's heads.
//!
//! Everything read from a peer is validated here (method, URI, header names
//! and values, status); a head that cannot become an HTTP message is a
//! [`BackboneError::BadHead`], answered with a protocol reset, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use portico_gateway::headers::REQUEST_ID;
use portico_gateway::{ConnInfo, Principal, PrincipalKind, Protocol, RequestCtx};
use portico_proto::{
    ClientAddr, Codec, Headers, HeadersRef, PrincipalRef, ProtoError, RequestHead, RequestHeadRef,
    ResponseHead, ResponseHeadRef, TlsInfoRef,
};

use crate::BackboneError;

/// W3C trace context header, carried in `RequestHead::trace_context` too.
const TRACEPARENT: &str = "traceparent";

fn bad(what: &'static str, reason: impl ToString) -> BackboneError {
    BackboneError::BadHead {
        what,
        reason: reason.to_string(),
    }
}

/// Header map → wire list (lowercase names, raw values, repeats kept).
pub(crate) fn headers_vec(map: &HeaderMap) -> Headers {
    map.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

// Every request the gateway forwards fits a header list.
const _: () = assert!(
    portico_gateway::headers::MAX_FIELDS + portico_gateway::headers::ADDED_FIELDS
        <= portico_proto::MAX_HEADER_FIELDS
);

/// Wire list → header map, refusing invalid names or values. The decoder
/// already refused lists over [`portico_proto::MAX_HEADER_FIELDS`]; the map's
/// own limit is checked anyway rather than trusted.
pub(crate) fn header_map(list: Headers, what: &'static str) -> Result<HeaderMap, BackboneError> {
    let mut map = HeaderMap::try_with_capacity(list.len()).map_err(|e| bad(what, e))?;
    for (name, value) in list {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(what, e))?;
        // The decoded buffer becomes the value's: checked, not copied.
        let value = HeaderValue::from_maybe_shared(Bytes::from(value)).map_err(|e| bad(what, e))?;
        map.try_append(name, value).map_err(|e| bad(what, e))?;
    }
    Ok(map)
}

/// Encodes the head a PoP sends for a routed request into `dst`: the
/// prepared request's method, inner URI and headers, plus everything the PoP
/// already decided. Borrowed, not copied (see [`portico_proto::RequestHeadRef`]).
pub(crate) fn encode_request_head(
    codec: &Codec,
    ctx: &RequestCtx,
    parts: &http::request::Parts,
    pop_id: &str,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    // HTTP/2 and HTTP/3 clients name the host in :authority, which the
    // inner URI lost: its host and port, or the backend would be told of
    // the scheme's default port (`X-Forwarded-Port`).
    let host = (!parts.headers.contains_key(http::header::HOST))
        .then(|| match ctx.port {
            Some(port) => {
                HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("{}:{port}", ctx.host)))
                    .ok()
            }
            None => HeaderValue::from_str(&ctx.host).ok(),
        })
        .flatten();
    let host = host
        .as_ref()
        .map(|h| (http::header::HOST.as_str(), h.as_bytes()));
    let headers = || {
        let own = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()));
        own.chain(host)
    };
    let remaining = ctx.settings().timeout.saturating_sub(ctx.started.elapsed());
    let head = RequestHeadRef {
        request_id: ctx.request_id.as_str(),
        method: parts.method.as_str(),
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
        headers: HeadersRef(headers),
        client_addr: Some(ClientAddr::from(ctx.conn.client_addr)),
        tls: ctx.conn.tls.as_ref().map(|t| TlsInfoRef {
            version: t.version.as_deref().unwrap_or_default(),
            cipher: "",
            sni: t.sni.as_deref(),
            alpn: t.alpn.as_deref(),
        }),
        trace_context: parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
        api: &ctx.api.name,
        stage: &ctx.stage.name,
        route_key: &ctx.route().key,
        path_params: &ctx.path_params,
        principal: ctx.principal.as_ref().map(principal_ref),
        pop_id,
        // At least 1 ms: 0 would mean "no deadline".
        deadline_ms: u32::try_from(remaining.as_millis())
            .unwrap_or(u32::MAX)
            .max(1),
    };
    codec.encode_request_head(&head, dst)
}

/// The wire form of the caller the PoP authenticated: kind and id only (an
/// API key's id, never the key).
fn principal_ref(p: &Principal) -> PrincipalRef<'_> {
    PrincipalRef {
        kind: p.kind.as_str(),
        id: &p.id,
        claims: &[],
    }
}

/// A principal from a PoP: a kind this build knows, and an id of an API
/// key's form (`[A-Za-z0-9_-]`, 1 to 128 characters). Claims are not used
/// by API keys and are ignored.
fn principal_from_head(p: portico_proto::Principal) -> Result<Principal, BackboneError> {
    let kind = PrincipalKind::from_name(&p.kind)
        .ok_or_else(|| bad("principal", format!("unknown kind {:?}", p.kind)))?;
    if !portico_config::is_key_id(&p.id) {
        return Err(bad("principal", format!("invalid id {:?}", p.id)));
    }
    Ok(Principal { kind, id: p.id })
}

/// What the origin needs besides the HTTP request: the PoP's routing
/// decision and identity.
#[derive(Debug, Clone)]
pub struct Routed {
    pub api: String,
    pub stage: String,
    /// The route the PoP matched (informational: the origin routes again
    /// within `api`/`stage` with its own snapshot).
    pub route_key: String,
    pub path_params: Vec<(String, String)>,
    pub pop_id: String,
    /// The caller the PoP authenticated (checked: a known kind, a well-formed id).
    pub principal: Option<Principal>,
    /// Time budget the PoP had left when it sent the head.
    pub deadline: Option<Duration>,
}

/// Splits a received head into the HTTP request parts, the connection the
/// origin's pipeline sees (the PoP's client, not the PoP) and the routing.
pub(crate) fn request_from_head(
    head: RequestHead,
    pop_addr: SocketAddr,
    local_addr: SocketAddr,
) -> Result<(http::request::Parts, ConnInfo, Routed), BackboneError> {
    let method = Method::from_bytes(head.method.as_bytes()).map_err(|e| bad("method", e))?;
    let principal = head.principal.map(principal_from_head).transpose()?;
    if !head.uri.starts_with('/') {
        return Err(bad("uri", "expected an origin-form path"));
    }
    // Starting with `/`, it can only parse as a path and query.
    let uri = Uri::from_maybe_shared(Bytes::from(head.uri)).map_err(|e| bad("uri", e))?;
    let mut headers = header_map(head.headers, "headers")?;
    set_if_absent(&mut headers, &REQUEST_ID, &head.request_id);
    if let Some(tp) = &head.trace_context {
        set_if_absent(&mut headers, &HeaderName::from_static(TRACEPARENT), tp);
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let (parts, ()) = builder
        .body(())
        .map_err(|e| bad("request", e))?
        .into_parts();
    let conn = ConnInfo {
        client_addr: head.client_addr.map_or(pop_addr, SocketAddr::from),
        local_addr,
        tls: head.tls.map(|t| portico_gateway::TlsInfo {
            sni: t.sni,
            alpn: t.alpn,
            version: Some(t.version).filter(|v| !v.is_empty()),
        }),
        protocol: Protocol::Backbone,
        default_api: None,
    };
    let routed = Routed {
        api: head.api,
        stage: head.stage,
        route_key: head.route_key,
        path_params: head.path_params,
        pop_id: head.pop_id,
        principal,
        deadline: (head.deadline_ms > 0).then(|| Duration::from_millis(head.deadline_ms.into())),
    };
    Ok((parts, conn, routed))
}

fn set_if_absent(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if headers.contains_key(name) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), v);
    }
}

/// Encodes the head the origin sends back into `dst`, borrowed.
pub(crate) fn encode_response_head(
    codec: &Codec,
    parts: &http::response::Parts,
    served_by: &str,
    dst: &mut BytesMut,
) -> Result<(), ProtoError> {
    let headers = || {
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
    };
    let head = ResponseHeadRef {
        status: parts.status.as_u16(),
        headers: HeadersRef(headers),
        served_by,
    };
    codec.encode_response_head(&head, dst)
}

/// A received response head as HTTP response parts.
pub(crate) fn response_from_head(
    head: ResponseHead,
) -> Result<http::response::Parts, BackboneError> {
    let status = StatusCode::from_u16(head.status).map_err(|e| bad("status", e))?;
    let headers = header_map(head.headers, "response headers")?;
    let mut builder = http::Response::builder().status(status);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    Ok(builder
        .body(())
        .map_err(|e| bad("response", e))?
        .into_parts()
        .0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> RequestHead {
        RequestHead {
            request_id: "rid-1".into(),
            method: "POST".into(),
            uri: "/items/7?x=1".into(),
            headers: vec![
                ("host".into(), b"api.example".to_vec()),
                ("x-multi".into(), b"a".to_vec()),
                ("x-multi".into(), b"b".to_vec()),
            ],
            client_addr: Some(ClientAddr::from(
                "192.0.2.9:5555".parse::<SocketAddr>().unwrap(),
            )),
            tls: Some(portico_proto::TlsInfo {
                version: "TLSv1.3".into(),
                cipher: String::new(),
                sni: Some("api.example".into()),
                alpn: Some("h2".into()),
            }),
            trace_context: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            api: "echo".into(),
            stage: "prod".into(),
            route_key: "POST /items/{id}".into(),
            path_params: vec![("id".into(), "7".into())],
            principal: None,
            pop_id: "pop-fra".into(),
            deadline_ms: 1500,
        }
    }

    #[test]
    fn request_head_becomes_parts_conn_and_routing() {
        let pop: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let (parts, conn, routed) = request_from_head(head(), pop, pop).unwrap();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri, "/items/7?x=1");
        assert_eq!(parts.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(parts.headers["x-request-id"], "rid-1");
        assert!(parts.headers.contains_key("traceparent"));
        assert_eq!(conn.client_addr.to_string(), "192.0.2.9:5555");
        assert_eq!(conn.protocol, Protocol::Backbone);
        assert_eq!(conn.tls.unwrap().version.as_deref(), Some("TLSv1.3"));
        assert_eq!(
            (routed.api.as_str(), routed.stage.as_str()),
            ("echo", "prod")
        );
        assert_eq!(routed.deadline, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn the_principal_travels_by_kind_and_id_and_is_checked() {
        let pop: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let acme = Principal::api_key("acme-1");
        let mut h = head();
        let sent = principal_ref(&acme);
        h.principal = Some(portico_proto::Principal {
            kind: sent.kind.into(),
            id: sent.id.into(),
            claims: sent.claims.to_vec(),
        });
        assert_eq!(
            h.principal,
            Some(portico_proto::Principal {
                kind: "api_key".into(),
                id: "acme-1".into(),
                claims: vec![],
            })
        );
        let (_, _, routed) = request_from_head(h, pop, pop).unwrap();
        assert_eq!(routed.principal, Some(acme));
        let (_, _, routed) = request_from_head(head(), pop, pop).unwrap();
        assert_eq!(routed.principal, None);
        let long = "k".repeat(portico_config::MAX_KEY_ID + 1);
        for (kind, id) in [
            ("jwt", "acme"),
            ("api_key", ""),
            ("api_key", "a b"),
            ("api_key", "a\nb"),
            ("api_key", long.as_str()),
        ] {
            let mut h = head();
            h.principal = Some(portico_proto::Principal {
                kind: kind.into(),
                id: id.into(),
                claims: vec![],
            });
            let err = request_from_head(h, pop, pop).unwrap_err();
            assert_eq!(err.as_str(), "bad_head", "{kind} {id:?}");
        }
    }

    #[test]
    fn bad_heads_are_errors_not_panics() {
        let pop: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let cases: [fn(&mut RequestHead); 5] = [
            |h| h.method = "GE T".into(),
            |h| h.uri = "http://evil/".into(),
            |h| h.uri = "no-slash".into(),
            |h| h.headers.push(("Bad Name".into(), b"v".to_vec())),
            |h| h.headers.push(("x".into(), b"a\nb".to_vec())),
        ];
        for mutate in cases {
            let mut h = head();
            mutate(&mut h);
            let err = request_from_head(h, pop, pop).unwrap_err();
            assert_eq!(err.as_str(), "bad_head");
        }
        let resp = ResponseHead {
            status: 42,
            headers: vec![],
            served_by: "o".into(),
        };
        assert!(response_from_head(resp).is_err());
    }

    #[test]
    fn response_heads_round_trip() {
        let resp = http::Response::builder()
            .status(201)
            .header("a", "1")
            .header("a", "2")
            .body(())
            .unwrap();
        let (parts, ()) = resp.into_parts();
        let codec = Codec::new();
        let mut buf = BytesMut::new();
        encode_response_head(&codec, &parts, "origin-a", &mut buf).unwrap();
        let Some(portico_proto::Frame::ResponseHead(head)) = codec.decode(&mut buf).unwrap() else {
            panic!("not a response head");
        };
        assert_eq!(head.served_by, "origin-a");
        let back = response_from_head(head).unwrap();
        assert_eq!(back.status, 201);
        assert_eq!(back.headers.get_all("a").iter().count(), 2);
    }
}
