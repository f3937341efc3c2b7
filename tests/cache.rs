//! End-to-end tests of the response cache: real `portico` processes, a counting
//! backend in the test process (tests/cache/backend.rs), plain HTTP/1.1 clients.
//!
//! client → origin (cache) → counting backend; and client → PoP (cache) → backbone
//! → origin (cache) → counting backend for tiering.

#[path = "cache/backend.rs"]
mod backend;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backend::Backend;
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;

type Plain = Client<HttpConnector, ReqBody>;

const TOKEN: &str = "s3cret-token";
/// A valid API key of stage `prod` (plan `cachers`).
const KEY: &str = "CacheKeyCacheKeyCacheKeyCacheKey00000000";

/// The cache routes of API `c`: everything GET under `http` mode with key
/// parameters `q` and `x-tenant`, a route with a 1 KiB object limit, and the
/// rest (POST, ...) uncached.
fn apis(backend: SocketAddr, endpoint: &str) -> String {
    format!(
        r#"
[[apis]]
name = "c"
endpoint = "{endpoint}"
[[apis.routes]]
method = "GET"
path = "/{{proxy+}}"
cache = {{ mode = "http", key_query = ["q"], key_headers = ["x-tenant"], stale_if_error_seconds = 60, client_invalidation = "allow_with_key_else_forbid" }}
integration = {{ type = "http_proxy", uri = "http://{backend}/{{proxy}}" }}
[[apis.routes]]
method = "GET"
path = "/small/{{proxy+}}"
cache = {{ mode = "http", max_object_bytes = 1024 }}
integration = {{ type = "http_proxy", uri = "http://{backend}/{{proxy}}" }}
[[apis.routes]]
method = "ANY"
path = "/{{proxy+}}"
integration = {{ type = "http_proxy", uri = "http://{backend}/{{proxy}}" }}
[[apis.stages]]
name = "prod"
[[apis.stages]]
name = "dev"

[[usage_plans]]
name = "cachers"
api_stages = [{{ api = "c", stage = "prod" }}]
[[api_keys]]
id = "cacher"
hash = "{hash}"
plans = ["cachers"]
"#,
        hash = portico_gateway::keys::stored_form(KEY),
    )
}

fn origin_config(backend: SocketAddr, max_bytes: u64) -> String {
    format!(
        r#"
[node]
id = "origin-c"
region = "local"

[[listeners]]
address = "127.0.0.1:0"
tls = false
default_api = "c"

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[cache]
max_bytes = {max_bytes}
{}"#,
        apis(backend, "regional")
    )
}

struct Origin {
    _dir: TempDir,
    proc: Proc,
    client: Plain,
}

impl Origin {
    async fn start(backend: &Backend, max_bytes: u64) -> Origin {
        let dir = TempDir::new().unwrap();
        let proc = origin(dir.path(), &origin_config(backend.addr, max_bytes));
        Origin {
            _dir: dir,
            proc,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proc.addrs("http")[0])
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(&self.client, "GET", &self.url(path), headers, "").await
    }

    async fn admin(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Reply {
        let url = format!("http://{}{path}", self.proc.addrs("admin")[0]);
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        request(&self.client, method, &url, &headers, body).await
    }

    async fn purge(&self, kind: &str, body: &str) -> Reply {
        let reply = self
            .admin("POST", &format!("/cache/purge/{kind}"), Some(TOKEN), body)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply
    }
}

async fn request(
    client: &Plain,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

fn cache_status(r: &Reply) -> String {
    let all: Vec<&str> = r
        .headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    all.join(", ")
}

fn age(r: &Reply) -> u64 {
    r.headers["age"].to_str().unwrap().parse().unwrap()
}

const MISS: &str = "portico-origin-c; fwd=miss; fwd-status=200; stored";
const HIT: &str = "portico-origin-c; hit";

#[tokio::test]
async fn an_admin_connection_that_sends_no_request_is_closed() {
    use tokio::io::AsyncReadExt;
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let mut silent = tokio::net::TcpStream::connect(o.proc.addrs("admin")[0])
        .await
        .unwrap();
    // The admin listener's header read timeout is 10 s; hyper then closes
    // (with a bare 408, or at once).
    let mut got = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        silent.read_to_end(&mut got),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the admin listener still holds the connection"
    );
}

#[tokio::test]
async fn misses_then_hits_with_cache_status_and_age() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let r = o.get("/prod/fresh/a", &[]).await;
    assert_eq!((r.status, cache_status(&r)), (200, MISS.to_owned()));
    assert_eq!(r.text(), "/fresh/a #1");
    let r = o.get("/prod/fresh/a", &[]).await;
    assert_eq!(
        (cache_status(&r), r.text()),
        (HIT.to_owned(), "/fresh/a #1".to_owned())
    );
    assert!(age(&r) <= 1);
    // Age grows with the time the entry has been stored.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = o.get("/prod/fresh/a", &[]).await;
    assert!((2..=10).contains(&age(&r)), "age {}", age(&r));
    // Stages are separate caches.
    let r = o.get("/dev/fresh/a", &[]).await;
    assert_eq!(
        (cache_status(&r), r.text()),
        (MISS.to_owned(), "/fresh/a #2".to_owned())
    );
    assert_eq!(backend.count("/fresh/a"), 2);
}

#[tokio::test]
async fn a_hundred_concurrent_cold_requests_reach_the_backend_once() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, url) = (o.client.clone(), o.url("/prod/slow/x"));
            tokio::spawn(async move { request(&client, "GET", &url, &[], "").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.body.len()), (200, 8000));
        assert!(
            r.body[..1000].iter().all(|b| *b == b'a') && r.body[7000..].iter().all(|b| *b == b'h')
        );
        statuses.push(cache_status(&r));
    }
    assert_eq!(backend.count("/slow/x"), 1);
    assert_eq!(
        statuses.iter().filter(|s| *s == MISS).count(),
        1,
        "{statuses:?}"
    );
    // The others shared the fetch (or came after it was stored).
    assert!(
        statuses.iter().all(|s| s == MISS
            || s == "portico-origin-c; fwd=miss; collapsed"
            || s == "portico-origin-c; hit"),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_a_304_refreshes_them() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    assert_eq!(o.get("/prod/etag/a", &[]).await.text(), "/etag/a #1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = o.get("/prod/etag/a", &[]).await;
    assert_eq!(
        cache_status(&r),
        "portico-origin-c; fwd=stale; fwd-status=304"
    );
    assert_eq!((r.status, r.text()), (200, "/etag/a #1".to_owned()));
    let sent = backend.headers("/etag/a");
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["if-none-match"], "\"e1\"");
    assert_eq!(cache_status(&o.get("/prod/etag/a", &[]).await), HIT);
    // A client's conditional request is answered from the cache.
    let r = o.get("/prod/etag/a", &[("if-none-match", "\"e1\"")]).await;
    assert_eq!((r.status, cache_status(&r)), (304, HIT.to_owned()));
    assert!(r.body.is_empty());
    assert_eq!(backend.count("/etag/a"), 2);
}

#[tokio::test]
async fn stale_if_error_answers_when_the_backend_is_gone() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    assert_eq!(o.get("/prod/short/a", &[]).await.text(), "/short/a #1");
    backend.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = o.get("/prod/short/a", &[]).await;
    assert_eq!((r.status, r.text()), (200, "/short/a #1".to_owned()));
    let status = cache_status(&r);
    assert!(
        status.starts_with("portico-origin-c; fwd=stale; ttl=-"),
        "{status}"
    );
    assert!(status.ends_with("; detail=stale-if-error"), "{status}");
    // Without a stored response the failure is the client's 502.
    let r = o.get("/prod/short/never", &[]).await;
    assert_eq!(
        (r.status, r.text()),
        (502, r#"{"message":"Bad Gateway"}"#.to_owned())
    );
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    assert_eq!(o.get("/prod/swr/a", &[]).await.text(), "/swr/a #1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = o.get("/prod/swr/a", &[]).await;
    assert_eq!(r.text(), "/swr/a #1");
    let status = cache_status(&r);
    assert!(
        status.starts_with("portico-origin-c; hit; ttl=-"),
        "{status}"
    );
    assert!(
        status.ends_with("detail=stale-while-revalidate"),
        "{status}"
    );
    let fresh = eventually(10, || async {
        let r = o.get("/prod/swr/a", &[]).await;
        (r.text() == "/swr/a #2").then_some(r)
    })
    .await;
    // A hit (or, on a slow machine, already stale again: max-age is 1 s).
    assert!(
        cache_status(&fresh).starts_with(HIT),
        "{}",
        cache_status(&fresh)
    );
    assert!(backend.count("/swr/a") >= 2);
}

#[tokio::test]
async fn vary_and_cache_key_parameters_select_entries() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let de = [("accept-language", "de")];
    assert_eq!(
        o.get("/prod/vary/a", &de).await.text(),
        "lang=de /vary/a #1"
    );
    let r = o.get("/prod/vary/a", &[("accept-language", "fr")]).await;
    assert_eq!(
        (cache_status(&r), r.text()),
        (
            "portico-origin-c; fwd=vary-miss; fwd-status=200; stored".to_owned(),
            "lang=fr /vary/a #2".to_owned()
        )
    );
    assert_eq!(
        o.get("/prod/vary/a", &de).await.text(),
        "lang=de /vary/a #1"
    );
    // `q` and `x-tenant` are key parameters; other query parameters are not.
    assert_eq!(
        o.get("/prod/fresh/k?q=1&utm=a", &[]).await.text(),
        "/fresh/k #1"
    );
    assert_eq!(
        cache_status(&o.get("/prod/fresh/k?utm=b&q=1", &[]).await),
        HIT
    );
    assert_eq!(o.get("/prod/fresh/k?q=2", &[]).await.text(), "/fresh/k #2");
    assert_eq!(
        o.get("/prod/fresh/k?q=1", &[("x-tenant", "t1")])
            .await
            .text(),
        "/fresh/k #3"
    );
    assert_eq!(
        o.get("/prod/fresh/k?q=1", &[("x-tenant", "t1")])
            .await
            .text(),
        "/fresh/k #3"
    );
    assert_eq!(backend.count("/fresh/k"), 3);
}

#[tokio::test]
async fn no_store_and_private_responses_are_not_stored() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    for (path, detail) in [("/nostore/a", "no-store"), ("/private/a", "private")] {
        for n in 1..=2 {
            let r = o.get(&format!("/prod{path}"), &[]).await;
            assert_eq!(r.text(), format!("{path} #{n}"));
            let expected = format!("portico-origin-c; fwd=miss; fwd-status=200; detail={detail}");
            assert_eq!(cache_status(&r), expected);
        }
    }
    // POST is not cached, and invalidates what GET stored for its path.
    o.get("/prod/fresh/p", &[]).await;
    assert_eq!(cache_status(&o.get("/prod/fresh/p", &[]).await), HIT);
    assert_eq!(
        request(&o.client, "POST", &o.url("/prod/fresh/p"), &[], "x")
            .await
            .status,
        200
    );
    assert_eq!(o.get("/prod/fresh/p", &[]).await.text(), "/fresh/p #3");
}

#[tokio::test]
async fn objects_over_the_limit_stream_through_uncached() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    for _ in 0..2 {
        let r = o.get("/prod/small/big/4096", &[]).await;
        assert_eq!((r.status, r.body.len()), (200, 4096));
        assert_eq!(
            cache_status(&r),
            "portico-origin-c; fwd=miss; fwd-status=200; detail=too-large"
        );
        // Without Content-Length the size shows only while it streams.
        let r = o.get("/prod/small/bigchunked/8192", &[]).await;
        assert_eq!((r.status, r.body.len()), (200, 8192));
    }
    assert_eq!(backend.count("/big/4096"), 2);
    assert_eq!(backend.count("/bigchunked/8192"), 2);
    let r = o.get("/prod/small/big/1000", &[]).await;
    assert!(cache_status(&r).ends_with("stored"));
    assert_eq!(cache_status(&o.get("/prod/small/big/1000", &[]).await), HIT);
}

#[tokio::test]
async fn a_backend_that_breaks_mid_body_leaves_no_entry() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let req = Request::get(o.url("/prod/break/a")).body(full("")).unwrap();
    let resp = o.client.request(req).await.unwrap();
    assert!(
        resp.into_body().collect().await.is_err(),
        "the broken body must reach the client as an error"
    );
    let r = o.get("/prod/break/a", &[]).await;
    assert_eq!(
        (r.status, r.body.len(), cache_status(&r)),
        (200, 4096, MISS.to_owned())
    );
    assert_eq!(cache_status(&o.get("/prod/break/a", &[]).await), HIT);
    assert_eq!(backend.count("/break/a"), 2);
}

#[tokio::test]
async fn client_invalidation_needs_an_api_key() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    o.get("/prod/fresh/i", &[]).await;
    let r = o
        .get("/prod/fresh/i", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(
        (r.status, r.text()),
        (403, r#"{"message":"Forbidden"}"#.to_owned())
    );
    assert_eq!(
        cache_status(&o.get("/prod/fresh/i", &[]).await),
        HIT,
        "an unauthorized request evicts nothing"
    );
    // A key header is not a key: one the API does not know is refused too.
    let r = o
        .get(
            "/prod/fresh/i",
            &[("cache-control", "max-age=0"), ("x-api-key", "k")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(cache_status(&o.get("/prod/fresh/i", &[]).await), HIT);
    let r = o
        .get(
            "/prod/fresh/i",
            &[("cache-control", "max-age=0"), ("x-api-key", KEY)],
        )
        .await;
    assert_eq!(
        cache_status(&r),
        "portico-origin-c; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(r.text(), "/fresh/i #2");
    assert_eq!(o.get("/prod/fresh/i", &[]).await.text(), "/fresh/i #2");
}

#[tokio::test]
async fn purges_of_each_kind() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let paths = [
        "/prod/fresh/u?q=1",
        "/prod/fresh/u?q=2",
        "/prod/fresh/dir/a",
        "/prod/tag/t1/a",
        "/dev/fresh/u?q=1",
    ];
    for p in paths {
        o.get(p, &[]).await;
    }
    let hit = |r: Reply| cache_status(&r) == HIT;
    let url = "http://c.execute-api.local/prod/fresh/u?q=1&utm=x";
    let r = o
        .purge("url", &serde_json::json!({ "url": url }).to_string())
        .await;
    assert_eq!(r.json()["purged"], "url");
    assert!(!hit(o.get("/prod/fresh/u?q=1", &[]).await));
    assert!(hit(o.get("/prod/fresh/u?q=2", &[]).await));
    o.purge("url", r#"{"api":"c","stage":"prod","path":"/fresh/u?q=2"}"#)
        .await;
    assert!(!hit(o.get("/prod/fresh/u?q=2", &[]).await));
    o.purge(
        "prefix",
        r#"{"api":"c","stage":"prod","prefix":"/fresh/dir/"}"#,
    )
    .await;
    assert!(!hit(o.get("/prod/fresh/dir/a", &[]).await));
    assert!(hit(o.get("/prod/tag/t1/a", &[]).await));
    o.purge("tag", r#"{"api":"c","tags":["nope","t1"]}"#).await;
    assert!(!hit(o.get("/prod/tag/t1/a", &[]).await));
    assert!(hit(o.get("/dev/fresh/u?q=1", &[]).await));
    o.purge("stage", r#"{"api":"c","stage":"dev"}"#).await;
    assert!(!hit(o.get("/dev/fresh/u?q=1", &[]).await));
    assert!(
        hit(o.get("/prod/fresh/u?q=1", &[]).await),
        "other stages keep their entries"
    );
}

#[tokio::test]
async fn purge_authentication_and_validation_errors() {
    let backend = Backend::start().await;
    let o = Origin::start(&backend, 64 << 20).await;
    let stage = r#"{"api":"c","stage":"prod"}"#;
    let r = o.admin("POST", "/cache/purge/stage", None, stage).await;
    assert_eq!(
        (r.status, r.text()),
        (401, r#"{"message":"Unauthorized"}"#.to_owned())
    );
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = o
        .admin("POST", "/cache/purge/stage", Some("wrong"), stage)
        .await;
    assert_eq!(
        (r.status, r.text()),
        (403, r#"{"message":"Forbidden"}"#.to_owned())
    );
    let cases: [(&str, &str, u16, &str); 17] = [
        (
            "stage",
            "{",
            400,
            "invalid JSON body: EOF while parsing an object at line 1 column 1",
        ),
        (
            "stage",
            r#"{"api":"c"}"#,
            400,
            "invalid JSON body: missing field `stage` at line 1 column 11",
        ),
        (
            "stage",
            r#"{"api":"c","stage":"prod","x":1}"#,
            400,
            "invalid JSON body: unknown field `x`, expected `api` or `stage` at line 1 column 29",
        ),
        (
            "stage",
            r#"{"api":"nope","stage":"prod"}"#,
            400,
            "unknown API `nope`",
        ),
        (
            "stage",
            r#"{"api":"c","stage":"beta"}"#,
            400,
            "API `c` has no stage `beta`",
        ),
        (
            "prefix",
            r#"{"api":"c","stage":"prod","prefix":"fresh"}"#,
            400,
            "prefix must start with `/`",
        ),
        (
            "tag",
            r#"{"api":"c","tags":[]}"#,
            400,
            "tags must list 1 to 64 tags",
        ),
        (
            "tag",
            r#"{"api":"c","tags":["a b"]}"#,
            400,
            "invalid tag `a b` (1 to 256 visible ASCII characters, no commas)",
        ),
        (
            "url",
            r#"{"url":"/prod/x"}"#,
            400,
            "url must be an absolute http:// or https:// URL",
        ),
        (
            "url",
            r#"{"url":"http://nope.example/prod/x"}"#,
            400,
            "url `http://nope.example/prod/x` matches no API, stage and GET route",
        ),
        (
            "url",
            r#"{"api":"c","stage":"prod"}"#,
            400,
            "give either `url`, or `api`, `stage` and `path`",
        ),
        (
            "url",
            r#"{"api":"c","stage":"prod","path":"x"}"#,
            400,
            "path must start with `/`",
        ),
        // No request could have these paths: no key holds them.
        (
            "url",
            r#"{"api":"c","stage":"prod","path":"/fresh/a b"}"#,
            400,
            "invalid path `/fresh/a b`: percent-encode what is not URI text, as clients send it",
        ),
        (
            "url",
            r#"{"api":"c","stage":"prod","path":"/../fresh"}"#,
            400,
            "invalid path `/../fresh`: a malformed %-escape, or `..` above the root",
        ),
        (
            "prefix",
            r#"{"api":"c","stage":"prod","prefix":"/fresh?x"}"#,
            400,
            "a prefix is of the path: no `?`",
        ),
        ("nope", stage, 404, "Not Found"),
        ("url", &"x".repeat(70_000), 413, "Request Too Long"),
    ];
    for (kind, body, status, message) in cases {
        let r = o
            .admin("POST", &format!("/cache/purge/{kind}"), Some(TOKEN), body)
            .await;
        let expected = serde_json::json!({ "message": message }).to_string();
        assert_eq!(
            (r.status, r.text()),
            (status, expected),
            "{kind} {body:.60}"
        );
    }
    let r = o.admin("GET", "/cache/purge/url", Some(TOKEN), "").await;
    assert_eq!(
        (r.status, r.text()),
        (405, r#"{"message":"Method Not Allowed"}"#.to_owned())
    );
    assert_eq!(r.headers["allow"], "POST");
    // HEAD where GET is served: its head, no body; other methods name both.
    let r = o.admin("HEAD", "/cache/stats", Some(TOKEN), "").await;
    assert_eq!((r.status, r.text()), (200, String::new()));
    assert_eq!(r.headers["content-type"], "application/json");
    let r = o.admin("DELETE", "/cache/stats", Some(TOKEN), "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, HEAD");
}

/// Resident set size now (VmRSS), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// `rounds` × 50 concurrent GETs of distinct 64 KiB objects under `prefix`.
async fn load(o: &Origin, prefix: &str, rounds: usize) {
    for round in 0..rounds {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (client, url) = (o.client.clone(), o.url(&format!("{prefix}/{round}-{i}")));
                tokio::spawn(async move { request(&client, "GET", &url, &[], "").await.body.len() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 64 * 1024);
        }
    }
}

#[tokio::test]
async fn memory_stays_near_the_configured_bytes() {
    const MAX: u64 = 16 << 20;
    // Beyond the cache's own bytes: the read buffers of 50 pooled backend
    // connections (they grow when fills read ahead) and glibc's fragmentation.
    // Measured: about 10 MiB. Once full, the cache must not grow.
    const SLACK: u64 = 24 << 20;
    const STEADY: u64 = 8 << 20;
    let backend = Backend::start().await;
    let o = Origin::start(&backend, MAX).await;
    // The same load on a route that stores nothing (the objects exceed its limit):
    // connections, buffers and allocator arenas reach their steady state first.
    load(&o, "/prod/small/mem/65536/warm", 30).await;
    let before = rss(o.proc.pid());
    // 1500 objects of 64 KiB, about six times the capacity; then 1500 more. The
    // stats call runs moka's pending maintenance (evictions) first.
    load(&o, "/prod/mem/65536/a", 30).await;
    o.admin("GET", "/cache/stats", Some(TOKEN), "").await;
    let first = rss(o.proc.pid());
    load(&o, "/prod/mem/65536/b", 30).await;
    let stats = o.admin("GET", "/cache/stats", Some(TOKEN), "").await.json();
    let second = rss(o.proc.pid());
    eprintln!("RSS {before} -> {first} -> {second}; cache {stats}");
    let weighted = stats["weighted_bytes"].as_u64().unwrap();
    assert!(weighted <= MAX && weighted > MAX / 2, "{stats}");
    for after in [first, second] {
        let grown = after.saturating_sub(before);
        assert!(
            grown < MAX + SLACK,
            "RSS grew by {grown} bytes for a {MAX}-byte cache"
        );
    }
    let steady = second.saturating_sub(first);
    assert!(
        steady < STEADY,
        "RSS grew by {steady} bytes once the cache was full"
    );
}

// ───────────────────────────── through a PoP ─────────────────────────────

fn make_certs(dir: &Path) {
    let out = dir.join("certs");
    let status = Command::new(portico_bin())
        .args([
            "certs",
            "--out",
            out.to_str().unwrap(),
            "--origins",
            "origin-c",
            "--pops",
            "pop-a,pop-b",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

fn tiered_origin(dir: &Path, backend: SocketAddr) -> String {
    let certs = dir.join("certs").display().to_string();
    format!(
        r#"
[node]
id = "origin-c"
region = "local"

[admin]
address = "127.0.0.1:0"
token = "{TOKEN}"

[backbone]
listen = "127.0.0.1:0"
ca = "{certs}/ca.pem"
cert = "{certs}/origin-c.pem"
key = "{certs}/origin-c.key"
{}"#,
        apis(backend, "edge")
    )
}

fn pop(dir: &Path, id: &str, backbone: SocketAddr) -> Proc {
    let certs = dir.join("certs").display().to_string();
    let text = format!(
        r#"
[node]
id = "{id}"

[[listeners]]
address = "127.0.0.1:0"
tls = false
default_api = "c"

[backbone]
ca = "{certs}/ca.pem"
cert = "{certs}/{id}.pem"
key = "{certs}/{id}.key"

[[origins]]
region = "local"
address = "{backbone}"
server_name = "origin-c"
"#
    );
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, text).unwrap();
    Proc::start(&["pop", "--config", path.to_str().unwrap()], "ready")
}

#[tokio::test]
async fn a_pop_miss_is_looked_up_in_the_origin_cache_and_purges_reach_the_pops() {
    let backend = Backend::start().await;
    let dir = TempDir::new().unwrap();
    make_certs(dir.path());
    let origin = origin(dir.path(), &tiered_origin(dir.path(), backend.addr));
    let backbone = origin.addrs("backbone")[0];
    let (a, b) = (
        pop(dir.path(), "pop-a", backbone),
        pop(dir.path(), "pop-b", backbone),
    );
    let client: Plain = Client::builder(TokioExecutor::new()).build_http();
    // Both PoPs addressed as clients reach PoPs: by one name, on the
    // scheme's port. The cache key holds what a client addressed (a backend
    // is told it), so the ports these PoPs listen on here would otherwise
    // keep the origin's entry from the second.
    const HOST: &[(&str, &str)] = &[("host", "c.example")];
    let url = |p: &Proc| format!("http://{}/prod/fresh/t", p.addrs("http")[0]);
    // A PoP serves the API once the origin's snapshot has arrived.
    for p in [&a, &b] {
        eventually(30, || async {
            let r = request(
                &client,
                "GET",
                &url(p).replace("/fresh/t", "/ready"),
                &[],
                "",
            )
            .await;
            (r.status == 200).then_some(())
        })
        .await;
    }
    let r = request(&client, "GET", &url(&a), HOST, "").await;
    assert_eq!(
        cache_status(&r),
        "portico-origin-c; fwd=miss; fwd-status=200; stored, portico-pop-a; fwd=miss; fwd-status=200; stored"
    );
    let r = request(&client, "GET", &url(&a), HOST, "").await;
    // Served by pop-a's cache: from the stored entry, or (when the first
    // response's fill is still being committed) from that fill.
    let status = cache_status(&r);
    assert!(
        [
            "portico-origin-c; fwd=miss; fwd-status=200; stored, portico-pop-a; hit",
            "portico-origin-c; fwd=miss; fwd-status=200; stored, portico-pop-a; fwd=miss; collapsed",
        ]
        .contains(&status.as_str()),
        "{status}"
    );
    let r = request(&client, "GET", &url(&b), HOST, "").await;
    assert_eq!(
        cache_status(&r),
        "portico-origin-c; hit, portico-pop-b; fwd=miss; fwd-status=200; stored"
    );
    assert_eq!(r.text(), "/fresh/t #1");
    assert_eq!(backend.count("/fresh/t"), 1);

    // A purge at the origin reaches both PoPs (the test prints how soon:
    // tens of milliseconds as a rule). Asserted within 15 s, a bound a
    // loaded machine cannot miss and that still tells the purge from the
    // entries' expiry (60 s).
    let admin = format!("http://{}/cache/purge/url", origin.addrs("admin")[0]);
    let auth = format!("Bearer {TOKEN}");
    let body = r#"{"api":"c","stage":"prod","path":"/fresh/t"}"#;
    let started = std::time::Instant::now();
    let r = request(&client, "POST", &admin, &[("authorization", &auth)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for p in [&a, &b] {
        loop {
            let r = request(&client, "GET", &url(p), HOST, "").await;
            if !cache_status(&r).ends_with("hit") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "purge not applied at a PoP within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = started.elapsed();
    eprintln!("purge applied at the origin and both PoPs within {elapsed:?}");
}
