//! The cache phase driven through `Gateway::handle` with a scripted upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use portico_config::Definitions;

use super::PurgeScope;
use super::entry::{Exchange, PIECE_COST, Stored};
use super::fill::{Budget, Fill, FillResult, OVERFLOW_WINDOW, UNREAD_STALL, run_fill};
use super::key::KeyText;
use super::lead::FILL_COST;
use super::store::{Stamp, Store};
use crate::body::{Body, BoxError, full};
use crate::context::{ConnInfo, Protocol, RequestCtx};
use crate::error::{ErrorKind, ErrorSource, GatewayError};
use crate::{Entry, Gateway, GatewaySettings, ServedModes, Upstream};

/// What the scripted upstream answers: status, headers, body chunks, and whether
/// the body breaks after them.
#[derive(Clone, Default)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    chunks: Vec<&'static str>,
    chunk_delay: Duration,
    breaks: bool,
    error: bool,
    /// Fails as a request's own body would (too large, cut short).
    client_error: bool,
    /// After its chunks, the body stalls for ever, holding this.
    stalls_holding: Option<Arc<()>>,
}

fn ok(cc: &str, body: &'static str) -> Script {
    Script {
        status: 200,
        headers: vec![("cache-control", cc.to_owned())],
        chunks: vec![body],
        ..Script::default()
    }
}

type Handler = dyn Fn(&Request<Body>, usize) -> Script + Send + Sync;

struct Scripted {
    calls: AtomicUsize,
    head_delay: Duration,
    seen: Mutex<Vec<HeaderMap>>,
    handler: Box<Handler>,
}

impl Upstream for Scripted {
    async fn forward(
        &self,
        _: &RequestCtx,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(req.headers().clone());
        let script = (self.handler)(&req, n);
        tokio::time::sleep(self.head_delay).await;
        if script.error {
            return Err(GatewayError::new(
                ErrorKind::BadGateway,
                ErrorSource::Integration,
            ));
        }
        if script.client_error {
            return Err(GatewayError::client(ErrorKind::PayloadTooLarge));
        }
        let mut resp = Response::new(body_of(&script));
        *resp.status_mut() = StatusCode::from_u16(script.status).unwrap();
        for (k, v) in &script.headers {
            resp.headers_mut().append(*k, v.parse().unwrap());
        }
        Ok(resp)
    }
}

fn body_of(script: &Script) -> Body {
    let chunks: Vec<Result<http_body::Frame<Bytes>, BoxError>> = script
        .chunks
        .iter()
        .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c.as_bytes()))))
        .chain(
            script
                .breaks
                .then(|| Err::<http_body::Frame<Bytes>, BoxError>("broken".into())),
        )
        .collect();
    let delay = script.chunk_delay;
    let s = stream::unfold(chunks.into_iter(), move |mut it| async move {
        let item = it.next()?;
        tokio::time::sleep(delay).await;
        Some((item, it))
    });
    let stall = stream::unfold(script.stalls_holding.clone(), |held| async move {
        held.as_ref()?;
        std::future::pending::<()>().await;
        None::<(Result<http_body::Frame<Bytes>, BoxError>, _)>
    });
    StreamBody::new(s.chain(stall)).boxed_unsync()
}

/// A valid API key of stage `prod`.
const KEY: &str = "ValidKeyValidKeyValidKey0000";
/// Another key of the same plan.
const KEY_2: &str = "OtherKeyOtherKeyOtherKey0000";

const DEFS: &str = r#"
[[apis]]
name = "a"
endpoint = "regional"
[[apis.routes]]
method = "GET"
path = "/{proxy+}"
cache = { mode = "http", key_query = ["q"], max_object_bytes = 16, client_invalidation = "allow_with_key_else_forbid" }
integration = { type = "mock" }
[[apis.routes]]
method = "GET"
path = "/errs/{proxy+}"
cache = { mode = "http", statuses = [200, 404] }
integration = { type = "mock" }
[[apis.routes]]
method = "GET"
path = "/ttl/{proxy+}"
cache = { ttl_seconds = 60, stale_if_error_seconds = 60 }
integration = { type = "mock" }
[[apis.routes]]
method = "GET"
path = "/mine/{proxy+}"
api_key_required = true
cache = { ttl_seconds = 60 }
integration = { type = "http", uri = "http://backend/{proxy}", request_parameters = { "integration.request.header.x-key-id" = "context.identity.apiKeyId" } }
[[apis.routes]]
method = "POST"
path = "/{proxy+}"
integration = { type = "mock" }
[[apis.stages]]
name = "prod"
"#;

fn gateway(
    head_delay: Duration,
    handler: impl Fn(&Request<Body>, usize) -> Script + Send + Sync + 'static,
) -> Arc<Gateway<Scripted>> {
    gateway_with_cache(1 << 20, head_delay, handler)
}

/// [`gateway`] with a cache of `bytes`.
fn gateway_with_cache(
    bytes: u64,
    head_delay: Duration,
    handler: impl Fn(&Request<Body>, usize) -> Script + Send + Sync + 'static,
) -> Arc<Gateway<Scripted>> {
    let text = format!(
        "{DEFS}\n[[usage_plans]]\nname = \"p\"\napi_stages = [{{ api = \"a\", stage = \"prod\" }}]\n\
         [[api_keys]]\nid = \"k1\"\nhash = \"{}\"\nplans = [\"p\"]\n\
         [[api_keys]]\nid = \"k2\"\nhash = \"{}\"\nplans = [\"p\"]\n",
        crate::keys::stored_form(KEY),
        crate::keys::stored_form(KEY_2)
    );
    let defs = Arc::new(Definitions::from_toml_str(&text, "test").unwrap());
    let settings = GatewaySettings {
        node_id: Arc::from("n1"),
        max_body_bytes: 1 << 20,
        max_header_bytes: 16 * 1024,
        upstream_read_timeout: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(60),
    };
    let upstream = Scripted {
        calls: AtomicUsize::new(0),
        head_delay,
        seen: Mutex::new(Vec::new()),
        handler: Box::new(handler),
    };
    Arc::new(Gateway::new(settings, defs, upstream).with_cache(bytes))
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, BoxError>,
}

impl Reply {
    fn body(&self) -> Bytes {
        self.body.as_ref().expect("body").clone()
    }

    fn cache_status(&self) -> String {
        let all: Vec<&str> = self
            .headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        all.join(", ")
    }
}

async fn send(g: &Gateway<Scripted>, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_body(g, method, path, headers, "").await
}

/// [`send`] with a request body.
async fn send_body(
    g: &Gateway<Scripted>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", "h");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = g
        .handle(
            req.body(full(body)).unwrap(),
            &conn(),
            Entry::Public(ServedModes::REGIONAL),
        )
        .await;
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.map(|c| c.to_bytes()),
    }
}

/// An HTTP/1.1 client's connection to a listener of API `a`.
fn conn() -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        client_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        local_addr: SocketAddr::from(([127, 0, 0, 1], 2)),
        tls: None,
        protocol: Protocol::Http1,
        default_api: Some(Arc::from("a")),
    })
}

fn calls(g: &Gateway<Scripted>) -> usize {
    g.upstream().calls.load(Ordering::SeqCst)
}

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let g = gateway(Duration::ZERO, |_, _| ok("max-age=60", "hello"));
    let r = send(&g, "GET", "/prod/x", &[]).await;
    assert_eq!(
        (r.status, r.cache_status()),
        (
            200,
            "portico-n1; fwd=miss; fwd-status=200; stored".to_owned()
        )
    );
    assert_eq!(r.body(), "hello");
    let r = send(&g, "GET", "/prod/x", &[]).await;
    assert_eq!(r.cache_status(), "portico-n1; hit");
    assert_eq!(r.headers["age"], "0");
    assert_eq!(r.headers["content-length"], "5");
    assert_eq!(r.body(), "hello");
    assert_eq!(calls(&g), 1);
}

#[tokio::test]
async fn a_request_addressing_another_host_or_port_is_not_served_anothers_entry() {
    let g = gateway(Duration::ZERO, |_, _| ok("max-age=60", "hello"));
    let hit = |r: &Reply| r.cache_status() == "portico-n1; hit";
    assert!(!hit(&send(&g, "GET", "/prod/x", &[]).await));
    assert!(hit(&send(&g, "GET", "/prod/x", &[("host", "H")]).await));
    // The backend is told this port (X-Forwarded-Port) and this host
    // (X-Forwarded-Host) and may link to them: not the entry above.
    assert!(!hit(&send(&g, "GET", "/prod/x", &[("host", "h:1")]).await));
    assert!(!hit(&send(&g, "GET", "/prod/x", &[("host", "other")]).await));
    assert!(hit(&send(&g, "GET", "/prod/x", &[("host", "h:1")]).await));
    assert_eq!(calls(&g), 3);
}

#[tokio::test]
async fn a_get_with_a_body_is_passed_through_and_stores_nothing() {
    let g = gateway(Duration::ZERO, |req, _| {
        // A backend that answers by the body, whatever the method.
        let by_body = !http_body::Body::is_end_stream(req.body());
        ok("max-age=60", if by_body { "for-the-body" } else { "plain" })
    });
    for framing in [("content-length", "4"), ("transfer-encoding", "chunked")] {
        let r = send_body(&g, "GET", "/prod/b", &[framing], "evil").await;
        assert_eq!(r.body(), "for-the-body");
        assert_eq!(r.cache_status(), "portico-n1; fwd=bypass");
    }
    let r = send(&g, "GET", "/prod/b", &[]).await;
    assert_eq!(r.body(), "plain");
    assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
    // A declared empty body is no body.
    let r = send(&g, "GET", "/prod/b", &[("content-length", "0")]).await;
    assert_eq!(r.cache_status(), "portico-n1; hit");
}

#[tokio::test]
async fn a_leaders_own_failure_is_not_its_followers() {
    // The first request fails as its own body would (413); the requests that
    // joined its fetch are not at fault and fetch again.
    let g = gateway(Duration::from_millis(100), |_, n| Script {
        client_error: n == 0,
        ..ok("max-age=60", "hello")
    });
    let leader = {
        let g = Arc::clone(&g);
        tokio::spawn(async move { send(&g, "GET", "/prod/f", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { send(&g, "GET", "/prod/f", &[]).await })
        })
        .collect();
    assert_eq!(leader.await.unwrap().status, 413);
    for f in followers {
        let r = f.await.unwrap();
        assert_eq!((r.status, r.body()), (200, Bytes::from("hello")));
    }
}

#[tokio::test]
async fn concurrent_misses_share_one_streamed_fetch() {
    let g = gateway(Duration::from_millis(50), |_, _| Script {
        chunks: vec!["ab", "cd", "ef"],
        chunk_delay: Duration::from_millis(20),
        ..ok("max-age=60", "")
    });
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { send(&g, "GET", "/prod/c", &[]).await })
        })
        .collect();
    let mut coalesced = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.body(), "abcdef");
        coalesced += usize::from(r.cache_status().ends_with("; fwd=miss; collapsed"));
    }
    assert_eq!(calls(&g), 1);
    assert_eq!(coalesced, 49);
}

#[tokio::test]
async fn not_stored_no_store_private_set_cookie_and_too_large() {
    let g = gateway(Duration::ZERO, |req, _| match req.uri().path() {
        "/ns" => ok("no-store, max-age=60", "x"),
        "/pv" => ok("private, max-age=60", "x"),
        "/big" => Script {
            headers: vec![
                ("cache-control", "max-age=60".into()),
                ("content-length", "19".into()),
            ],
            ..ok("", "0123456789abcdefXYZ")
        },
        "/big2" => ok("max-age=60", "0123456789abcdefXYZ"),
        _ => Script {
            headers: vec![
                ("cache-control", "max-age=60".into()),
                ("set-cookie", "a=b".into()),
            ],
            ..ok("", "x")
        },
    });
    for (path, detail) in [
        ("ns", "no-store"),
        ("pv", "private"),
        ("sc", "set-cookie"),
        ("big", "too-large"),
    ] {
        for _ in 0..2 {
            let r = send(&g, "GET", &format!("/prod/{path}"), &[]).await;
            let status = r.cache_status();
            assert!(
                status.ends_with(&format!("fwd=miss; fwd-status=200; detail={detail}")),
                "{status}"
            );
        }
    }
    // Without Content-Length the size shows only while streaming: the body passes
    // in full, and nothing is stored.
    for _ in 0..2 {
        let r = send(&g, "GET", "/prod/big2", &[]).await;
        assert_eq!(r.body(), "0123456789abcdefXYZ");
        assert!(r.cache_status().contains("fwd=miss"));
    }
    assert_eq!(calls(&g), 10);
}

#[tokio::test]
async fn a_broken_body_leaves_no_entry() {
    let g = gateway(Duration::ZERO, |_, n| Script {
        breaks: n == 0,
        chunks: vec!["part"],
        ..ok("max-age=60", "")
    });
    let r = send(&g, "GET", "/prod/b", &[]).await;
    assert!(r.body.is_err());
    let r = send(&g, "GET", "/prod/b", &[]).await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.body(), "part");
    assert_eq!(
        send(&g, "GET", "/prod/b", &[]).await.cache_status(),
        "portico-n1; hit"
    );
}

/// A body that ends short of its Content-Length (an upstream whose stream
/// ended cleanly but early) ends in an error for its reader, not in a
/// clean end of a short body, and is not stored.
#[tokio::test]
async fn a_body_short_of_its_length_ends_in_an_error() {
    let g = gateway(Duration::ZERO, |_, _| Script {
        headers: vec![
            ("cache-control", "max-age=60".into()),
            ("content-length", "10".into()),
        ],
        chunks: vec!["part"],
        ..ok("", "")
    });
    for _ in 0..2 {
        let r = send(&g, "GET", "/prod/short", &[]).await;
        assert!(r.body.is_err(), "{}", r.cache_status());
        assert!(
            r.cache_status().contains("fwd=miss"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(calls(&g), 2);
}

/// A response fresh for 1 s with ETag "v1"; a 304 fresh for 60 s to a
/// request that names it.
fn revalidated(req: &Request<Body>) -> Script {
    if req
        .headers()
        .get("if-none-match")
        .is_some_and(|v| v == "\"v1\"")
    {
        return Script {
            status: 304,
            headers: vec![("cache-control", "max-age=60".into())],
            ..Script::default()
        };
    }
    Script {
        headers: vec![
            ("cache-control", "max-age=1".into()),
            ("etag", "\"v1\"".into()),
        ],
        ..ok("", "body")
    }
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_304_refreshes() {
    let g = gateway(Duration::ZERO, |req, _| revalidated(req));
    send(&g, "GET", "/prod/r", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&g, "GET", "/prod/r", &[]).await;
    assert_eq!(r.cache_status(), "portico-n1; fwd=stale; fwd-status=304");
    assert_eq!((r.status, r.body()), (200, Bytes::from("body")));
    assert_eq!(r.headers["cache-control"], "max-age=60");
    let r = send(&g, "GET", "/prod/r", &[]).await;
    assert_eq!(r.cache_status(), "portico-n1; hit");
    assert_eq!(calls(&g), 2);
    // The client's own conditional request is answered from the entry.
    let r = send(&g, "GET", "/prod/r", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(
        (r.status, r.cache_status()),
        (304, "portico-n1; hit".to_owned())
    );
    assert_eq!(r.headers["etag"], "\"v1\"");
}

#[tokio::test]
async fn a_request_that_says_no_store_leaves_the_cache_as_it_was() {
    let g = gateway(Duration::ZERO, |req, _| revalidated(req));
    send(&g, "GET", "/prod/ns", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Revalidated for this client, which is answered from the entry the
    // 304 freshened; the cache keeps the stale one.
    let r = send(&g, "GET", "/prod/ns", &[("cache-control", "no-store")]).await;
    assert_eq!((r.status, r.body()), (200, Bytes::from("body")));
    assert_eq!(r.cache_status(), "portico-n1; fwd=stale; fwd-status=304");
    let r = send(&g, "GET", "/prod/ns", &[]).await;
    assert_eq!(r.cache_status(), "portico-n1; fwd=stale; fwd-status=304");
    assert_eq!(calls(&g), 3);
    // Served stale within stale-while-revalidate, with no background
    // refresh: that would store.
    let g = gateway(Duration::ZERO, |_, n| {
        ok(
            "max-age=1, stale-while-revalidate=60",
            if n == 0 { "v0" } else { "v1" },
        )
    });
    send(&g, "GET", "/prod/swr", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&g, "GET", "/prod/swr", &[("cache-control", "no-store")]).await;
    assert_eq!(r.body(), "v0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls(&g), 1);
}

#[tokio::test]
async fn a_stored_error_is_no_304_of_what_the_client_holds() {
    let g = gateway(Duration::ZERO, |_, _| Script {
        status: 404,
        headers: vec![
            ("cache-control", "max-age=60".into()),
            ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT".into()),
            ("etag", "\"gone\"".into()),
        ],
        chunks: vec!["gone"],
        ..Script::default()
    });
    assert_eq!(send(&g, "GET", "/prod/errs/x", &[]).await.status, 404);
    // A client revalidating the 200 it holds is told the resource is gone,
    // not that what it holds is current (RFC 9110 §13.2.1).
    for precondition in [
        ("if-modified-since", "Thu, 01 Jan 2026 00:00:00 GMT"),
        ("if-none-match", "\"gone\""),
    ] {
        let r = send(&g, "GET", "/prod/errs/x", &[precondition]).await;
        assert_eq!(
            (r.status, r.cache_status()),
            (404, "portico-n1; hit".to_owned())
        );
    }
    assert_eq!(calls(&g), 1);
}

#[tokio::test]
async fn a_304_shares_neither_its_cookies_nor_what_it_makes_private() {
    // Each path's 304 carries one thing a shared entry must not take in.
    let g = gateway(Duration::ZERO, |req, _| {
        let revalidation = req.headers().contains_key("if-none-match");
        let extra = match (req.uri().path(), revalidation) {
            (_, false) => {
                return Script {
                    headers: vec![
                        ("cache-control", "max-age=1".into()),
                        ("etag", "\"v1\"".into()),
                    ],
                    ..ok("", "body")
                };
            }
            ("/cookie", true) => ("set-cookie", "sid=alice".to_owned()),
            ("/private", true) => ("cache-control", "private, max-age=60".to_owned()),
            (_, true) => ("vary", "*".to_owned()),
        };
        let mut headers = vec![("cache-control", "max-age=60".to_owned())];
        if extra.0 == "cache-control" {
            headers.clear();
        }
        headers.push(extra);
        Script {
            status: 304,
            headers,
            ..Script::default()
        }
    });
    for path in ["/prod/cookie", "/prod/private", "/prod/star"] {
        send(&g, "GET", path, &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Alice revalidates: her response carries her cookie...
    let r = send(&g, "GET", "/prod/cookie", &[("cookie", "sid=alice")]).await;
    assert_eq!(r.headers["set-cookie"], "sid=alice");
    // ...and Bob, served the refreshed entry, gets none.
    let r = send(&g, "GET", "/prod/cookie", &[]).await;
    assert_eq!(r.cache_status(), "portico-n1; hit");
    assert_eq!(r.headers.get("set-cookie"), None);
    // Made private or `Vary: *` by its 304, the entry is no longer served.
    for (path, detail) in [("/prod/private", "private"), ("/prod/star", "vary-star")] {
        let r = send(&g, "GET", path, &[]).await;
        assert_eq!((r.status, r.body()), (200, Bytes::from("body")), "{path}");
        assert_eq!(
            r.cache_status(),
            format!("portico-n1; fwd=stale; fwd-status=304; detail={detail}")
        );
        let r = send(&g, "GET", path, &[]).await;
        assert_eq!(
            r.cache_status(),
            "portico-n1; fwd=miss; fwd-status=200; stored",
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_304_for_another_representation_is_followed_by_a_whole_fetch() {
    let g = gateway(Duration::ZERO, |req, n| {
        let conditional = req.headers().contains_key("if-modified-since");
        match (n, conditional) {
            (0, _) => Script {
                headers: vec![
                    ("cache-control", "max-age=1".into()),
                    ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT".into()),
                ],
                ..ok("", "old")
            },
            // The stored response had no ETag; this 304 names one.
            (_, true) => Script {
                status: 304,
                headers: vec![("etag", "\"x\"".into())],
                ..Script::default()
            },
            (_, false) => ok("max-age=60", "new"),
        }
    });
    send(&g, "GET", "/prod/lm", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&g, "GET", "/prod/lm", &[]).await;
    assert_eq!((r.status, r.body()), (200, Bytes::from("new")));
    assert_eq!(calls(&g), 3);
    let seen = g.upstream().seen.lock().unwrap();
    assert!(seen[1].contains_key("if-modified-since"), "{:?}", seen[1]);
    assert!(!seen[2].contains_key("if-modified-since"), "{:?}", seen[2]);
}

#[tokio::test]
async fn a_head_answered_without_a_length_is_given_none() {
    // The backend's HEAD answer names no length (its GET would be chunked).
    let g = gateway(Duration::ZERO, |_, _| ok("max-age=60", ""));
    let r = send(&g, "HEAD", "/prod/chunked", &[]).await;
    assert_eq!((r.status, r.body().len()), (200, 0));
    assert_eq!(r.headers.get("content-length"), None);
}

#[tokio::test]
async fn an_authorized_revalidation_keeps_an_entry_an_anonymous_request_stored() {
    let g = gateway(Duration::ZERO, |req, _| revalidated(req));
    send(&g, "GET", "/prod/auth", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&g, "GET", "/prod/auth", &[("authorization", "Bearer x")]).await;
    assert_eq!(r.cache_status(), "portico-n1; fwd=stale; fwd-status=304");
    let r = send(&g, "GET", "/prod/auth", &[]).await;
    assert_eq!(r.cache_status(), "portico-n1; hit");
    assert_eq!(calls(&g), 2);
}

#[tokio::test]
async fn stale_if_error_and_stale_while_revalidate() {
    let g = gateway(Duration::ZERO, |req, n| match (req.uri().path(), n) {
        ("/sie", 0) => ok("max-age=1, stale-if-error=60", "old"),
        ("/sie", _) => Script {
            error: true,
            ..Script::default()
        },
        (_, _) => ok(
            "max-age=1, stale-while-revalidate=60",
            if n <= 1 { "v0" } else { "v1" },
        ),
    });
    send(&g, "GET", "/prod/sie", &[]).await;
    send(&g, "GET", "/prod/swr", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&g, "GET", "/prod/sie", &[]).await;
    assert_eq!(r.body(), "old");
    assert!(
        r.cache_status().starts_with("portico-n1; fwd=stale; ttl=-"),
        "{}",
        r.cache_status()
    );
    assert!(r.cache_status().ends_with("detail=stale-if-error"));
    let r = send(&g, "GET", "/prod/swr", &[]).await;
    assert_eq!(r.body(), "v0");
    assert!(
        r.cache_status().ends_with("detail=stale-while-revalidate"),
        "{}",
        r.cache_status()
    );
    for _ in 0..100 {
        let r = send(&g, "GET", "/prod/swr", &[]).await;
        if r.body() == "v1" {
            assert_eq!(r.cache_status(), "portico-n1; hit");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the background refresh never landed");
}

#[tokio::test]
async fn a_get_with_a_body_is_not_answered_stale_nor_refreshes_the_entry() {
    let g = gateway(Duration::ZERO, |_, n| {
        ok(
            "max-age=1, stale-while-revalidate=60",
            if n == 0 { "v0" } else { "v1" },
        )
    });
    send(&g, "GET", "/prod/swr", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Its answer may depend on its body: it goes upstream with it, and what
    // comes back is its own.
    let r = send_body(&g, "GET", "/prod/swr", &[("content-length", "3")], "abc").await;
    assert_eq!(
        (r.body(), r.cache_status()),
        (Bytes::from("v1"), "portico-n1; fwd=bypass".to_owned())
    );
    assert_eq!(g.upstream().seen.lock().unwrap()[1]["content-length"], "3");
    let r = send(&g, "GET", "/prod/swr", &[]).await;
    assert_eq!(r.body(), "v0");
}

#[tokio::test]
async fn every_request_of_a_flight_gets_the_stale_entry_when_the_origin_answers_5xx() {
    let g = gateway(Duration::from_millis(300), |_, n| match n {
        0 => ok("max-age=1, stale-if-error=60", "old"),
        _ => Script {
            status: 503,
            ..ok("", "down")
        },
    });
    send(&g, "GET", "/prod/sie", &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Five at once: one leads (its fetch takes 300 ms), four follow it.
    let replies =
        futures_util::future::join_all((0..5).map(|_| send(&g, "GET", "/prod/sie", &[]))).await;
    for r in &replies {
        assert_eq!((r.status, r.body()), (200, Bytes::from("old")));
        assert!(
            r.cache_status()
                .starts_with("portico-n1; fwd=stale; fwd-status=503; ttl=-")
                && r.cache_status().ends_with("; detail=stale-if-error"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(calls(&g), 2, "one fetch for the five");
}

#[tokio::test]
async fn a_response_that_depends_on_the_caller_is_each_callers_own() {
    // The route's backend request carries the caller's key id
    // (`context.identity.apiKeyId`): key 2 must not get key 1's answer.
    let g = gateway(Duration::ZERO, |_, n| {
        ok("", if n == 0 { "for k1" } else { "for k2" })
    });
    let as_key = |key| [("x-api-key", key)];
    let r = send(&g, "GET", "/prod/mine/orders", &as_key(KEY)).await;
    assert_eq!(r.body(), "for k1");
    let r = send(&g, "GET", "/prod/mine/orders", &as_key(KEY_2)).await;
    assert_eq!(
        (r.body(), r.cache_status().contains("fwd=miss")),
        (Bytes::from("for k2"), true)
    );
    let r = send(&g, "GET", "/prod/mine/orders", &as_key(KEY)).await;
    assert_eq!(
        (r.body(), r.cache_status()),
        (Bytes::from("for k1"), "portico-n1; hit".to_owned())
    );
    assert_eq!(calls(&g), 2);
}

#[tokio::test]
async fn vary_and_key_parameters() {
    let g = gateway(Duration::ZERO, |req, _| {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        let body: &'static str =
            Box::leak(format!("{lang} {}", req.uri().query().unwrap_or("")).into_boxed_str());
        Script {
            headers: vec![
                ("cache-control", "max-age=60".into()),
                ("vary", "Accept-Language".into()),
            ],
            ..ok("", body)
        }
    });
    let de = [("accept-language", "de")];
    let fr = [("accept-language", "fr")];
    assert_eq!(
        send(&g, "GET", "/prod/v?q=1&z=1", &de).await.body(),
        "de q=1&z=1"
    );
    let r = send(&g, "GET", "/prod/v?q=1&z=2", &fr).await;
    assert!(
        r.cache_status().contains("fwd=vary-miss"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.body(), "fr q=1&z=2");
    let r = send(&g, "GET", "/prod/v?z=3&q=1", &de).await;
    assert_eq!(
        (r.cache_status(), r.body()),
        ("portico-n1; hit".to_owned(), Bytes::from("de q=1&z=1"))
    );
    let r = send(&g, "GET", "/prod/v?q=2", &de).await;
    assert!(r.cache_status().contains("fwd=miss"));
    assert_eq!(calls(&g), 3);
}

/// A resource's Vary marker lives as long as its longest-kept variant: a
/// short-lived variant stored later does not make the others unreachable.
#[tokio::test]
async fn a_short_lived_variant_leaves_the_longer_ones_reachable() {
    let g = gateway(Duration::ZERO, |req, _| {
        let de = req
            .headers()
            .get("accept-language")
            .is_some_and(|v| v == "de");
        let (max_age, body) = if de { (60, "de") } else { (1, "fr") };
        Script {
            headers: vec![
                ("cache-control", format!("max-age={max_age}")),
                ("vary", "Accept-Language".into()),
            ],
            ..ok("", body)
        }
    });
    let de = [("accept-language", "de")];
    let fr = [("accept-language", "fr")];
    assert_eq!(send(&g, "GET", "/prod/v", &de).await.body(), "de");
    assert_eq!(send(&g, "GET", "/prod/v", &fr).await.body(), "fr");
    // The French variant (and what its store made of the marker) expires.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = send(&g, "GET", "/prod/v", &de).await;
    assert_eq!(
        (r.cache_status(), r.body()),
        ("portico-n1; hit".to_owned(), Bytes::from("de"))
    );
    assert_eq!(calls(&g), 2);
}

/// A purge path is keyed as a request's would be: its dot segments resolved,
/// so `/p/./x` purges what `/p/x` stored.
#[tokio::test]
async fn a_purge_path_is_resolved_as_a_requests_is() {
    let g = gateway(Duration::ZERO, |_, _| Script {
        headers: vec![("cache-control", "max-age=60".into())],
        ..ok("", "x")
    });
    let hit = |r: Reply| r.cache_status() == "portico-n1; hit";
    send(&g, "GET", "/prod/p/x?q=1", &[]).await;
    assert!(hit(send(&g, "GET", "/prod/p/x?q=1", &[]).await));
    let table = g.routing();
    let scope = super::purge::path_scope(&table, "a", "prod", "/p/./y/../x?q=1").unwrap();
    g.purge(&scope).await;
    assert!(!hit(send(&g, "GET", "/prod/p/x?q=1", &[]).await));
}

/// An entry whose tags were not all kept (70 tags; the store keeps 64) is
/// removed by any tag purge of its API: it may have carried the tag.
#[tokio::test]
async fn an_entry_with_more_tags_than_are_kept_goes_with_any_tag_purge() {
    let many: Vec<String> = (0..70).map(|i| format!("t{i}")).collect();
    let header = many.join(", ");
    let g = gateway(Duration::ZERO, move |_, _| Script {
        headers: vec![
            ("cache-control", "max-age=60".into()),
            ("cache-tag", header.clone()),
        ],
        ..ok("", "x")
    });
    let hit = |r: Reply| r.cache_status() == "portico-n1; hit";
    send(&g, "GET", "/prod/many", &[]).await;
    assert!(hit(send(&g, "GET", "/prod/many", &[]).await));
    g.purge(&PurgeScope::Tag {
        api: "a".into(),
        tags: vec!["t69".into()],
    })
    .await;
    assert!(!hit(send(&g, "GET", "/prod/many", &[]).await));
}

#[tokio::test]
async fn unsafe_methods_invalidate_and_purges_remove() {
    let g = gateway(Duration::ZERO, |_, _| Script {
        headers: vec![
            ("cache-control", "max-age=60".into()),
            ("cache-tag", "t1, t2".into()),
        ],
        ..ok("", "x")
    });
    send(&g, "GET", "/prod/p?q=1", &[]).await;
    send(&g, "GET", "/prod/p?q=2", &[]).await;
    let r = send(&g, "POST", "/prod/p", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        send(&g, "GET", "/prod/p?q=1", &[])
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    let hit = |r: Reply| r.cache_status() == "portico-n1; hit";
    let settings = g
        .definitions()
        .api("a")
        .unwrap()
        .stage("prod")
        .unwrap()
        .route_settings(0)
        .cache
        .clone()
        .unwrap();
    g.purge(&PurgeScope::url(
        "a",
        "prod",
        "/p",
        Some("z=1&q=1"),
        &settings,
    ))
    .await;
    assert!(!hit(send(&g, "GET", "/prod/p?q=1", &[]).await));
    assert!(hit(send(&g, "GET", "/prod/p?q=1", &[]).await));
    send(&g, "GET", "/prod/dir/a", &[]).await;
    g.purge(&PurgeScope::Prefix {
        api: "a".into(),
        stage: "prod".into(),
        path_prefix: "/dir/".into(),
    })
    .await;
    assert!(!hit(send(&g, "GET", "/prod/dir/a", &[]).await));
    assert!(hit(send(&g, "GET", "/prod/p?q=1", &[]).await));
    g.purge(&PurgeScope::Tag {
        api: "a".into(),
        tags: vec!["t2".into()],
    })
    .await;
    assert!(!hit(send(&g, "GET", "/prod/p?q=1", &[]).await));
    g.purge(&PurgeScope::Stage {
        api: "a".into(),
        stage: "prod".into(),
    })
    .await;
    assert!(!hit(send(&g, "GET", "/prod/p?q=1", &[]).await));
}

/// A GET of `path` whose response head is in and whose body (two chunks
/// 300 ms apart, from the gateway's script) still streams when `overtake`
/// runs: the body may predate what `overtake` did, so when it ends it must
/// not be stored, and the next GET is a miss.
async fn a_fill_overtaken_by(
    g: &Arc<Gateway<Scripted>>,
    path: &'static str,
    overtake: impl Future<Output = ()>,
) {
    let first = tokio::spawn({
        let g = Arc::clone(g);
        async move { send(&g, "GET", path, &[]).await }
    });
    while calls(g) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    overtake.await;
    assert_eq!(first.await.unwrap().status, 200);
    let again = send(g, "GET", path, &[]).await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
}

fn slow_body() -> Script {
    Script {
        chunks: vec!["ab", "cd"],
        chunk_delay: Duration::from_millis(300),
        ..ok("max-age=60", "")
    }
}

#[tokio::test]
async fn a_fill_that_a_purge_overtakes_is_not_stored() {
    // It was stored, and outlived the purge, before purges were counted.
    let g = gateway(Duration::ZERO, |_, _| slow_body());
    let stage = PurgeScope::Stage {
        api: "a".into(),
        stage: "prod".into(),
    };
    a_fill_overtaken_by(&g, "/prod/slow", g.purge(&stage)).await;
    assert_eq!(calls(&g), 2);
}

#[tokio::test]
async fn a_request_after_a_purge_does_not_follow_a_fill_begun_before_it() {
    let g = gateway(Duration::ZERO, |_, _| slow_body());
    let first = tokio::spawn({
        let g = Arc::clone(&g);
        async move { send(&g, "GET", "/prod/slow", &[]).await }
    });
    while calls(&g) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stage = PurgeScope::Stage {
        api: "a".into(),
        stage: "prod".into(),
    };
    g.purge(&stage).await;
    // The first body is still streaming (its chunks come 300 ms apart): had
    // this request joined its flight, it would get the pre-purge response.
    let second = send(&g, "GET", "/prod/slow", &[]).await;
    assert_eq!(
        second.cache_status(),
        "portico-n1; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(calls(&g), 2);
    assert_eq!(first.await.unwrap().status, 200);
    // What the second fetched is what stays.
    let third = send(&g, "GET", "/prod/slow", &[]).await;
    assert_eq!(third.cache_status(), "portico-n1; hit");
}

#[tokio::test]
async fn a_fill_that_an_unsafe_request_overtakes_is_not_stored() {
    // The same race with a POST to the path (RFC 9111 §4.4).
    let g = gateway(Duration::ZERO, |req, _| {
        if req.method() == http::Method::POST {
            ok("", "done")
        } else {
            slow_body()
        }
    });
    let post = async { assert_eq!(send(&g, "POST", "/prod/doc", &[]).await.status, 200) };
    a_fill_overtaken_by(&g, "/prod/doc", post).await;
    assert_eq!(calls(&g), 3);
}

#[tokio::test]
async fn a_route_whose_object_limit_exceeds_the_store_still_caches() {
    // The `/ttl` route keeps the default 1 MiB object limit; the store holds
    // 64 KiB. A body of unknown length reserves what the store can hold.
    let g = gateway_with_cache(64 * 1024, Duration::ZERO, |_, _| ok("", "abcd"));
    let r = send(&g, "GET", "/prod/ttl/unknown-length", &[]).await;
    assert_eq!(
        r.cache_status(),
        "portico-n1; fwd=miss; fwd-status=200; stored"
    );
    let mut hit = false;
    for _ in 0..200 {
        let r = send(&g, "GET", "/prod/ttl/unknown-length", &[]).await;
        hit = r.cache_status() == "portico-n1; hit";
        if hit {
            assert_eq!(r.body(), "abcd");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit, "never stored");
}

#[tokio::test]
async fn fills_in_flight_buffer_no_more_than_the_store_holds() {
    // Room for two fills of the route's largest object (16 bytes; these
    // bodies declare no length, so each reserves that much and a fill's cost).
    let g = gateway_with_cache(2 * (16 + FILL_COST), Duration::ZERO, |req, _| {
        if req.uri().path().ends_with("/slow") {
            slow_body()
        } else {
            ok("max-age=60", "x")
        }
    });
    let slow: Vec<_> = ["/prod/1/slow", "/prod/2/slow"]
        .into_iter()
        .map(|path| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { send(&g, "GET", path, &[]).await })
        })
        .collect();
    while calls(&g) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A third miss while both fill: served, not filled.
    let third = send(&g, "GET", "/prod/3", &[]).await;
    assert_eq!((third.status, third.body()), (200, Bytes::from("x")));
    assert!(
        third
            .cache_status()
            .ends_with("fwd=miss; fwd-status=200; detail=fills-in-flight"),
        "{}",
        third.cache_status()
    );
    for s in slow {
        assert_eq!(s.await.unwrap().body(), Bytes::from("abcd"));
    }
    // Their room comes back when they end: misses fill again.
    let mut stored = false;
    for i in 0..500 {
        let r = send(&g, "GET", &format!("/prod/after/{i}"), &[]).await;
        stored = r.cache_status().ends_with("stored");
        if stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored, "no fill started after the slow ones ended");
}

/// A response whose body is not read: held as a client that stopped reading.
async fn open(g: &Gateway<Scripted>, path: &str) -> Response<Body> {
    let req = Request::get(path)
        .header("host", "h")
        .body(full(""))
        .unwrap();
    g.handle(req, &conn(), Entry::Public(ServedModes::REGIONAL))
        .await
}

#[tokio::test]
async fn a_client_that_stops_reading_an_oversized_fill_holds_up_no_later_one() {
    // 16 bytes may be stored; the body is 1.2 MB, in chunks larger than the
    // window an oversized fill keeps for its slowest reader.
    let chunk: &'static str = Box::leak("x".repeat(300_000).into_boxed_str());
    let g = gateway_with_cache(1 << 20, Duration::ZERO, move |_, _| Script {
        chunks: vec![chunk; 4],
        chunk_delay: Duration::from_millis(20),
        ..ok("max-age=60", "")
    });
    let stuck = open(&g, "/prod/big").await;
    assert_eq!(stuck.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its fill waits for it; a later request fetches on its own.
    let later = tokio::time::timeout(Duration::from_secs(20), send(&g, "GET", "/prod/big", &[]))
        .await
        .expect("the later request was held by the one that does not read");
    assert_eq!(later.body().len(), 1_200_000);
    assert_eq!(calls(&g), 2);
    drop(stuck);
}

/// Clients that start misses and hang up at once leave fills behind (they
/// may still be stored). Each reserves its fill's cost as well as its body,
/// so no more than the store's size over that run at once, however small
/// the bodies they declare; and those whose backend stalls give up after
/// [`UNREAD_STALL`] without a reader, not the whole read timeout (60 s here).
#[tokio::test(start_paused = true)]
async fn abandoned_fills_of_a_stalling_backend_are_few_and_short_lived() {
    let token = Arc::new(());
    let held = Arc::clone(&token);
    let g = gateway_with_cache(1 << 20, Duration::ZERO, move |_, _| Script {
        headers: vec![
            ("cache-control", "max-age=60".into()),
            ("content-length", "1".into()),
        ],
        chunks: vec![],
        stalls_holding: Some(Arc::clone(&held)),
        ..ok("", "")
    });
    // The test's own two.
    let bodies = || Arc::strong_count(&token) - 2;
    for i in 0..100 {
        let resp = open(&g, &format!("/prod/stalls/{i}")).await;
        assert_eq!(resp.status(), 200);
    }
    tokio::task::yield_now().await;
    let most = usize::try_from((1 << 20) / (1 + FILL_COST)).unwrap();
    let held = bodies();
    assert!((1..=most).contains(&held), "{held} backend bodies held");
    tokio::time::sleep(UNREAD_STALL * 2).await;
    assert_eq!(
        bodies(),
        0,
        "fills nobody reads waited on a stalled backend"
    );
    assert_eq!(calls(&g), 100);
}

/// A failed fill (its body broke, or stalled with nobody reading) takes no
/// new reader, which would only get the failure: a follower that comes
/// before its flight ends fetches on its own.
#[tokio::test]
async fn a_failed_fill_takes_no_reader() {
    let fill = bare_fill(
        None,
        Budget {
            limit: 16,
            room: 16 + FILL_COST,
        },
    );
    let body = body_of(&Script {
        chunks: vec!["ab"],
        breaks: true,
        ..Script::default()
    });
    assert_eq!(run_fill(&fill, body, || {}).await, FillResult::Failed);
    assert!(fill.reader().is_none());
}

#[tokio::test]
async fn client_invalidation_needs_a_key() {
    let g = gateway(Duration::ZERO, |_, n| {
        ok("max-age=60", if n == 0 { "a" } else { "b" })
    });
    send(&g, "GET", "/prod/i", &[]).await;
    let r = send(&g, "GET", "/prod/i", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        (r.status, r.body()),
        (403, Bytes::from("{\"message\":\"Forbidden\"}"))
    );
    // An `x-api-key` header is not a key: one the API does not know counts
    // as none.
    let r = send(
        &g,
        "GET",
        "/prod/i",
        &[
            ("cache-control", "max-age=0"),
            ("x-api-key", "NotAKeyOfThisApi0000"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        &g,
        "GET",
        "/prod/i",
        &[("cache-control", "max-age=0"), ("x-api-key", KEY)],
    )
    .await;
    assert_eq!(
        r.cache_status(),
        "portico-n1; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(send(&g, "GET", "/prod/i", &[]).await.body(), "b");
}

#[tokio::test]
async fn ttl_mode_uses_the_route_ttl_and_head_uses_get_entries() {
    let g = gateway(Duration::ZERO, |_, n| {
        if n > 0 {
            return Script {
                error: true,
                ..Script::default()
            };
        }
        ok("max-age=0", "t")
    });
    let r = send(&g, "HEAD", "/prod/ttl/x", &[]).await;
    assert_eq!((r.status, r.body().len()), (200, 0));
    assert!(r.cache_status().ends_with("stored"), "{}", r.cache_status());
    assert_eq!(g.upstream().seen.lock().unwrap().len(), 1);
    // The HEAD's fill may still be finishing: then the GET shares it.
    let r = send(&g, "GET", "/prod/ttl/x", &[]).await;
    assert!(
        ["portico-n1; hit", "portico-n1; fwd=miss; collapsed"].contains(&r.cache_status().as_str()),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.body(), "t");
    let r = send(&g, "GET", "/prod/ttl/x", &[]).await;
    assert_eq!(
        (r.cache_status(), r.body()),
        ("portico-n1; hit".to_owned(), Bytes::from("t"))
    );
    let r = send(&g, "GET", "/prod/ttl/x", &[("range", "bytes=0-1")]).await;
    // Ranges bypass the cache (here into a failing upstream).
    assert_eq!((r.status, r.cache_status()), (502, String::new()));
}

/// The settings of the test API's first route.
fn route_settings() -> Arc<portico_config::CacheSettings> {
    let defs = Definitions::from_toml_str(DEFS, "test").unwrap();
    defs.api("a")
        .unwrap()
        .stage("prod")
        .unwrap()
        .route_settings(0)
        .cache
        .clone()
        .unwrap()
}

/// A 200 fresh for 10 minutes, fetched under `stamp`.
fn exchange(stamp: Stamp) -> Exchange {
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", "max-age=600".parse().unwrap());
    Exchange {
        status: StatusCode::OK,
        headers,
        request_time: std::time::SystemTime::now(),
        response_time: std::time::SystemTime::now(),
        arrived: std::time::Instant::now(),
        stamp,
    }
}

fn key_text(text: &str) -> KeyText {
    KeyText::build(|t| t.extend_from_slice(text.as_bytes()))
}

#[tokio::test]
async fn the_store_stays_within_its_bytes() {
    let store = Store::new(4 << 20);
    let settings = route_settings();
    for i in 0..400u64 {
        let key = key_text(&format!("a\0prod\0G\0/p{i}\0\0"));
        let body: Box<[Bytes]> = vec![Bytes::from(vec![b'x'; 65536])].into_boxed_slice();
        let entry = Stored::new(key, 1, exchange(store.stamp(1)), body, &settings).unwrap();
        store
            .insert(
                i,
                super::entry::Slot::Entry(Arc::new(entry)),
                store.stamp(1),
            )
            .await;
    }
    let stats = store.stats().await;
    assert!(stats.weighted_bytes <= 4 << 20, "{stats:?}");
    // 64 KiB bodies plus their overhead: about 63 of them fit.
    assert!((55..=64).contains(&stats.entries), "{stats:?}");
}

/// A fill of a body of `length` (`None`: not announced) within `budget`.
fn bare_fill(length: Option<usize>, budget: Budget) -> Arc<Fill> {
    Fill::new(
        StatusCode::OK,
        HeaderMap::new(),
        key_text("k"),
        Box::new([]),
        length,
        budget,
    )
}

/// `n` chunks of one byte; `pulled` counts those the reader took.
fn one_byte_chunks(n: usize, pulled: Arc<AtomicUsize>) -> Body {
    let chunks = stream::iter(0..n).map(move |_| {
        pulled.fetch_add(1, Ordering::SeqCst);
        Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"x")))
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Each piece of a fill costs its handle and its share of an allocation:
/// 256 KiB storable, sent as one-byte chunks, would be ~16 MiB of pieces.
/// The fill stops being storable once its pieces cost more than its room.
#[tokio::test]
async fn a_body_in_tiny_chunks_is_counted_by_what_its_pieces_cost() {
    let limit = 256 * 1024;
    let budget = Budget {
        limit,
        room: limit + FILL_COST,
    };
    let fill = bare_fill(None, budget);
    let pulled = Arc::new(AtomicUsize::new(0));
    let mut oversized_at = None;
    let body = one_byte_chunks(1 << 20, Arc::clone(&pulled));
    let result = run_fill(&fill, body, || {
        oversized_at = Some(pulled.load(Ordering::SeqCst));
    })
    .await;
    assert_eq!(result, FillResult::Failed, "oversized with no reader");
    let at = oversized_at.expect("never oversized");
    let most = usize::try_from(budget.room / PIECE_COST).unwrap() + 1;
    assert!(at <= most, "oversized after {at} chunks, not {most}");
}

/// A large object is not refused for the number of its pieces: 16 MiB in
/// 4 KiB reads is 4096 pieces, more than the fill's fixed cost covers.
#[tokio::test]
async fn a_large_body_in_ordinary_chunks_is_stored() {
    let size: usize = 16 << 20;
    let budget = Budget {
        limit: size as u64,
        room: super::lead::fill_room(size as u64),
    };
    let fill = bare_fill(Some(size), budget);
    let chunk = Bytes::from(vec![b'x'; 4096]);
    let chunks = stream::iter(0..size / 4096)
        .map(move |_| Ok::<_, BoxError>(http_body::Frame::data(chunk.clone())));
    let result = run_fill(&fill, StreamBody::new(chunks).boxed_unsync(), || {}).await;
    let FillResult::Complete(body) = result else {
        panic!("not stored: {result:?}");
    };
    assert_eq!(body.iter().map(Bytes::len).sum::<usize>(), size);
}

/// The window an oversized fill keeps for its slowest reader counts each
/// chunk's piece too: 256 KiB of one-byte chunks is ~20 MiB.
#[tokio::test]
async fn a_slow_readers_window_is_counted_by_what_its_pieces_cost() {
    let fill = bare_fill(
        None,
        Budget {
            limit: 16,
            room: 16 + FILL_COST,
        },
    );
    let reader = fill.reader().expect("a reader");
    let pulled = Arc::new(AtomicUsize::new(0));
    let body = one_byte_chunks(1 << 20, Arc::clone(&pulled));
    // The reader reads nothing: the fill waits for it once its window is full.
    let ran = tokio::time::timeout(Duration::from_secs(2), run_fill(&fill, body, || {})).await;
    assert!(ran.is_err(), "the fill ended without its reader");
    let pulled = pulled.load(Ordering::SeqCst);
    let most = usize::try_from(OVERFLOW_WINDOW / PIECE_COST).unwrap() + 2;
    assert!((17..=most).contains(&pulled), "{pulled} chunks read ahead");
    drop(reader);
}

/// A body of unknown length is copied into buffers its pieces share (not an
/// allocation per chunk), and the entry gets an exact copy of a buffer's
/// used part (not the whole 64 KiB buffer kept alive by its pieces).
#[tokio::test]
async fn a_body_of_unknown_length_shares_buffers_and_is_stored_exact() {
    let fill = bare_fill(
        None,
        Budget {
            limit: 1 << 20,
            room: (1 << 20) + FILL_COST,
        },
    );
    let mut reader = fill.reader().expect("a reader");
    let body = body_of(&Script {
        chunks: vec!["ab", "cd", "ef"],
        ..Script::default()
    });
    let FillResult::Complete(stored) = run_fill(&fill, body, || {}).await else {
        panic!("not complete");
    };
    fill.close();
    let mut seen: Vec<Bytes> = Vec::new();
    while let Some(frame) = reader.frame().await {
        seen.push(frame.unwrap().into_data().unwrap());
    }
    assert_eq!(seen, ["ab", "cd", "ef"]);
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].as_ptr(),
            pair[0].as_ptr().wrapping_add(2),
            "one buffer"
        );
    }
    assert_eq!(&*stored, [Bytes::from("abcdef")]);
    assert_ne!(stored[0].as_ptr(), seen[0].as_ptr(), "a copy");
}

/// A body stored in many small pieces is joined into one (each would cost
/// its handle, and be a frame of every hit); large pieces are kept as they are.
#[test]
fn a_stored_body_in_small_pieces_is_joined() {
    let store = Store::new(1 << 20);
    let settings = route_settings();
    let stored = |pieces: Vec<Bytes>| {
        let ex = exchange(store.stamp(1));
        Stored::new(key_text("k"), 1, ex, pieces.into_boxed_slice(), &settings).unwrap()
    };
    let small: Vec<Bytes> = (0..1000u16)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; 10]))
        .collect();
    let whole = small.concat();
    let joined = stored(small);
    assert_eq!((joined.body.len(), joined.body_len), (1, 10_000));
    assert_eq!(joined.body[0], whole);
    let large = vec![
        Bytes::from(vec![b'x'; 65536]),
        Bytes::from(vec![b'y'; 65536]),
    ];
    let at: Vec<*const u8> = large.iter().map(|b| b.as_ptr()).collect();
    let kept: Vec<*const u8> = stored(large).body.iter().map(|b| b.as_ptr()).collect();
    assert_eq!(kept, at, "no copy");
}

/// A store holding `n` entries under keys `0..n`, tagged `t{key}`.
async fn store_of(n: u64) -> Store {
    let store = Store::new(4 << 20);
    let settings = route_settings();
    for i in 0..n {
        let mut ex = exchange(store.stamp(1));
        ex.headers
            .insert("cache-tag", format!("t{i}").parse().unwrap());
        let key = key_text(&format!("a\0prod\0G\0/p{i}\0\0"));
        let body: Box<[Bytes]> = Box::new([Bytes::from_static(b"x")]);
        let entry = Stored::new(key, 1, ex, body, &settings).unwrap();
        let slot = super::entry::Slot::Entry(Arc::new(entry));
        assert!(store.insert(i, slot, store.stamp(1)).await);
    }
    store
}

/// moka kept each purge's predicate until its scan had covered every entry,
/// and checked every one kept on every lookup: thousands of tag purges made
/// each hit cost thousands of checks. A purge now keeps nothing once done.
#[tokio::test]
async fn purges_leave_nothing_for_lookups_to_check() {
    let store = store_of(10).await;
    let checks = Arc::new(AtomicUsize::new(0));
    for _ in 0..10_000 {
        let checks = Arc::clone(&checks);
        store
            .remove_if(move |_| {
                checks.fetch_add(1, Ordering::SeqCst);
                false
            })
            .await;
    }
    assert_eq!(Arc::strong_count(&checks), 1, "purges kept");
    let done = checks.load(Ordering::SeqCst);
    for key in 0..10 {
        assert!(store.get(key).await.is_some(), "{key} purged");
    }
    assert_eq!(
        checks.load(Ordering::SeqCst),
        done,
        "lookups checked purges"
    );
}

/// Purges applied together share one pass, and each removes what it selects.
#[tokio::test]
async fn purges_applied_together_remove_what_each_selects() {
    let g = gateway(Duration::ZERO, |req, _| Script {
        headers: vec![
            ("cache-control", "max-age=60".into()),
            (
                "cache-tag",
                req.uri().path().trim_start_matches("/dir").into(),
            ),
        ],
        ..ok("", "x")
    });
    let paths = ["/prod/t1", "/prod/t2", "/prod/t3", "/prod/dir/x"];
    for path in paths {
        send(&g, "GET", path, &[]).await;
    }
    let hit = |r: Reply| r.cache_status() == "portico-n1; hit";
    let tag = |t: &str| PurgeScope::Tag {
        api: "a".into(),
        tags: vec![t.into()],
    };
    g.purge_many(&[
        tag("/t1"),
        tag("/t2"),
        PurgeScope::Prefix {
            api: "a".into(),
            stage: "prod".into(),
            path_prefix: "/dir/".into(),
        },
        PurgeScope::Stage {
            api: "a".into(),
            stage: "beta".into(),
        },
    ])
    .await;
    let kept: Vec<bool> = futures_util::future::join_all(paths.map(|p| send(&g, "GET", p, &[])))
        .await
        .into_iter()
        .map(hit)
        .collect();
    assert_eq!(kept, [false, false, true, false]);
}
