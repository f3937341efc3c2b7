//! End-to-end tests of `portico origin`: real processes, real TLS, real
//! HTTP/1.1 and HTTP/2 clients, the demo backend behind it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running origin with one TLS listener whose default API is `echo`.
struct Fixture {
    _dir: TempDir,
    _backend: Proc,
    origin: Proc,
    addr: SocketAddr,
    cert: TestCert,
    backend: SocketAddr,
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn h1(&self) -> HttpsClient {
        https_client(&self.cert.der, false)
    }

    fn h2(&self) -> HttpsClient {
        https_client(&self.cert.der, true)
    }
}

/// The standard test API: `echo` proxies everything to the demo backend, and
/// `extra` is appended to the file (more APIs, domains, limits...).
fn config(cert: &TestCert, backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[node]
id = "origin-test"
region = "local"

[[listeners]]
address = "127.0.0.1:0"
default_api = "echo"
certificates = [{{ cert = "{cert}", key = "{key}" }}]

[limits]
max_body_bytes = 104857600
max_header_bytes = 8192
upstream_read_timeout_ms = 500
upload_timeout_ms = 3000

[[apis]]
name = "echo"
endpoint = "regional"

[[apis.routes]]
method = "ANY"
path = "/{{proxy+}}"
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/{{proxy}}"

[[apis.routes]]
method = "GET"
path = "/slow/{{ms}}"
timeout_ms = 1000
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/delay/{{ms}}"

[[apis.routes]]
method = "GET"
path = "/lookup/{{id}}"
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/lookup?id={{id}}"

[[apis.stages]]
name = "prod"
variables = {{ backend = "{backend}" }}

[[apis.stages]]
name = "beta"
variables = {{ backend = "localhost:{port}" }}
{extra}
"#,
        cert = cert.cert.display(),
        key = cert.key.display(),
        port = backend.port(),
    )
}

/// `extra` may name the demo backend's address as `BACKEND`.
fn start(extra: &str) -> Fixture {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let (backend_proc, backend) = backend();
    let extra = extra.replace("BACKEND", &backend.to_string());
    let origin = origin(dir.path(), &config(&cert, backend, &extra));
    let addr = origin.addrs("https")[0];
    Fixture {
        _dir: dir,
        _backend: backend_proc,
        origin,
        addr,
        cert,
        backend,
    }
}

/// A regional API `name` on host `{name}.test` with one `http_proxy` route
/// to `uri`, stage `prod`.
fn proxy_api(name: &str, method: &str, path: &str, uri: &str) -> String {
    format!(
        r#"
[[apis]]
name = "{name}"
endpoint = "regional"
hosts = ["{name}.test"]
[[apis.routes]]
method = "{method}"
path = "{path}"
integration = {{ type = "http_proxy", uri = "{uri}" }}
[[apis.stages]]
name = "prod"
"#
    )
}

fn assert_error(reply: &Reply, status: u16, message: &str) {
    common::assert_error(reply, status, message);
    assert!(reply.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn proxies_over_http1_and_http2() {
    let f = start("");
    for (client, version) in [
        (f.h1(), http::Version::HTTP_11),
        (f.h2(), http::Version::HTTP_2),
    ] {
        // What a client claims under a proxy's names is replaced by what
        // the gateway knows.
        let req = Request::get(f.url("/prod/hello/world?x=1"))
            .header("forwarded", "for=203.0.113.9;host=evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-port", "1")
            .header("x-forwarded-proto", "http")
            .header("x-real-ip", "203.0.113.9")
            .body(full(""))
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.version, version);
        let echo = reply.json();
        assert_eq!(echo["path"], "/hello/world");
        assert_eq!(echo["query"], "x=1");
        let headers = &echo["headers"];
        assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "localhost");
        assert_eq!(headers["x-forwarded-port"], f.addr.port().to_string());
        assert_eq!(headers["x-real-ip"], "127.0.0.1");
        assert_eq!(
            headers["forwarded"],
            "for=127.0.0.1;proto=https;host=localhost"
        );
        let id = reply.headers["x-request-id"].to_str().unwrap();
        assert_eq!(echo["headers"]["x-request-id"], id);
        assert_eq!(reply.headers["via"], "1.1 origin-test");
    }
}

#[tokio::test]
async fn keeps_a_valid_client_request_id() {
    let f = start("");
    let req = get_with(&f, "/prod/x", "x-request-id", "client-id-42");
    let reply = send(&f.h1(), req).await;
    assert_eq!(reply.headers["x-request-id"], "client-id-42");
    assert_eq!(reply.json()["headers"]["x-request-id"], "client-id-42");
}

#[tokio::test]
async fn stage_variables_select_the_backend() {
    let f = start("");
    // `beta` reaches the same backend by name through hickory and /etc/hosts.
    for stage in ["prod", "beta"] {
        let reply = get(&f.h1(), &f.url(&format!("/{stage}/status/201"))).await;
        assert_eq!(reply.status, 201, "stage {stage}: {}", reply.text());
    }
    let echo = get(&f.h1(), &f.url("/beta/x")).await.json();
    assert_eq!(
        echo["headers"]["host"],
        format!("localhost:{}", f.backend.port())
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let f = start("");
    let req = Request::get(f.url("/prod/h"))
        .header("connection", "x-secret")
        .header("x-secret", "1")
        .header("x-kept", "2")
        .body(full(""))
        .unwrap();
    let echo = send(&f.h1(), req).await.json();
    assert_eq!(echo["headers"]["x-kept"], "2");
    assert!(echo["headers"].get("x-secret").is_none(), "{echo}");
}

const ROUTING: &str = r#"
[[apis]]
name = "routing"
endpoint = "regional"
hosts = ["routing.test"]

[[apis.routes]]
method = "GET"
path = "/items/special"
integration = { type = "mock", status = 200, body = "static" }

[[apis.routes]]
method = "GET"
path = "/items/{id}"
integration = { type = "mock", status = 200, body = "param" }

[[apis.routes]]
method = "ANY"
path = "/items/{id}"
integration = { type = "mock", status = 200, body = "any" }

[[apis.routes]]
method = "ANY"
path = "/{proxy+}"
integration = { type = "mock", status = 200, body = "greedy" }

[[apis.routes]]
method = "POST"
path = "/orders"
integration = { type = "mock", status = 201, body = "created", headers = { "x-mock" = "yes" } }

[[apis.stages]]
name = "v1"
"#;

async fn routed(f: &Fixture, method: &str, path: &str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(f.url(path))
        .header("host", "routing.test")
        .body(full(""))
        .unwrap();
    send(&f.h1(), req).await
}

#[tokio::test]
async fn routing_precedence() {
    let f = start(ROUTING);
    assert_eq!(
        routed(&f, "GET", "/v1/items/special").await.text(),
        "static"
    );
    assert_eq!(routed(&f, "GET", "/v1/items/7").await.text(), "param");
    assert_eq!(routed(&f, "DELETE", "/v1/items/7").await.text(), "any");
    assert_eq!(
        routed(&f, "GET", "/v1/items/7/parts").await.text(),
        "greedy"
    );
    assert_eq!(routed(&f, "GET", "/v1/other").await.text(), "greedy");
    let created = routed(&f, "POST", "/v1/orders").await;
    assert_eq!((created.status, created.text().as_str()), (201, "created"));
    assert_eq!(created.headers["x-mock"], "yes");
}

#[tokio::test]
async fn method_not_allowed_lists_allowed_methods() {
    let f = start(ROUTING);
    let reply = routed(&f, "GET", "/v1/orders").await;
    assert_error(&reply, 405, "Method Not Allowed");
    assert_eq!(reply.headers["allow"], "POST");
    // `ANY` is API Gateway's seven methods: no route serves TRACE (it would
    // echo the request back) or a method of its own.
    for method in ["TRACE", "PROPFIND", "ANY"] {
        let reply = routed(&f, method, "/v1/items/7").await;
        assert_error(&reply, 405, "Method Not Allowed");
        assert_eq!(
            reply.headers["allow"], "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
            "{method}"
        );
    }
}

#[tokio::test]
async fn unknown_host_api_stage_or_route_is_404() {
    let f = start(ROUTING);
    assert_error(
        &routed(&f, "GET", "/nostage/items/1").await,
        404,
        "Not Found",
    );
    let no_route = get_with(&f, "/v1/", "host", "routing.test");
    assert_error(&send(&f.h1(), no_route).await, 404, "Not Found");
    // A Host naming no API falls back to the default API, whose stage must exist.
    let unknown_host = get_with(&f, "/v1/x", "host", "nope.test");
    assert_error(&send(&f.h1(), unknown_host).await, 404, "Not Found");
}

#[tokio::test]
async fn custom_domain_base_path_mapping() {
    let extra = r#"
[[domains]]
name = "api.example.com"
[[domains.mappings]]
base_path = "echo"
api = "echo"
stage = "prod"
[[domains.mappings]]
base_path = ""
api = "echo"
stage = "beta"
"#;
    let f = start(extra);
    let mapped = get_with(&f, "/echo/a/b", "host", "api.example.com");
    assert_eq!(send(&f.h1(), mapped).await.json()["path"], "/a/b");
    let root = get_with(&f, "/status/202", "host", "api.example.com");
    assert_eq!(send(&f.h1(), root).await.status, 202);
}

#[tokio::test]
async fn http_integration_maps_parameters() {
    let extra = r#"
[[apis]]
name = "mapped"
endpoint = "regional"
hosts = ["mapped.test"]
[[apis.routes]]
method = "GET"
path = "/pets/{petId}"
[apis.routes.integration]
type = "http"
method = "POST"
uri = "http://BACKEND/store/{id}"
request_parameters = { "integration.request.path.id" = "method.request.path.petId", "integration.request.querystring.q" = "method.request.querystring.search", "integration.request.header.x-static" = "'fixed'", "integration.request.header.x-from" = "method.request.header.x-client" }
response_parameters = { "method.response.header.x-out" = "'mapped'" }
[[apis.stages]]
name = "prod"
"#;
    let f = start(extra);
    let req = Request::get(f.url("/prod/pets/a%20b?search=x%26y&drop=1"))
        .header("host", "mapped.test")
        .header("x-client", "c1")
        .header("x-unmapped", "no")
        .body(full(""))
        .unwrap();
    let reply = send(&f.h1(), req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-out"], "mapped");
    let echo = reply.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/store/a%20b");
    assert_eq!(echo["query"], "q=x%26y");
    assert_eq!(echo["headers"]["x-static"], "fixed");
    assert_eq!(echo["headers"]["x-from"], "c1");
    assert!(echo["headers"].get("x-unmapped").is_none());
    // A value that is not UTF-8 (a Latin-1 form field) reaches the backend
    // as sent, not as U+FFFD.
    let req = Request::get(f.url("/prod/pets/a?search=caf%E9"))
        .header("host", "mapped.test")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&f.h1(), req).await.json()["query"], "q=caf%E9");
}

/// What a mapping sets wins over what the client sent with the body, and a
/// HEAD to the backend answers a client's GET with no body and no length.
#[tokio::test]
async fn http_integration_mappings_win_and_a_head_backend_answers_without_a_length() {
    // The first route goes on the default API's list (HTTP/2 requests
    // name no other host here).
    let extra = r#"
[[apis.routes]]
method = "GET"
path = "/head"
[apis.routes.integration]
type = "http"
method = "HEAD"
uri = "http://BACKEND/bytes/10"

[[apis]]
name = "typed"
endpoint = "regional"
hosts = ["typed.test"]
[[apis.routes]]
method = "POST"
path = "/typed"
[apis.routes.integration]
type = "http"
uri = "http://BACKEND/echo"
request_parameters = { "integration.request.header.content-type" = "'application/json'" }
[[apis.stages]]
name = "prod"
"#;
    let f = start(extra);
    let req = Request::post(f.url("/prod/typed"))
        .header("host", "typed.test")
        .header("content-type", "text/plain")
        .body(full("{}"))
        .unwrap();
    let reply = send(&f.h1(), req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["content-type"], "application/json");
    for client in [f.h1(), f.h2()] {
        let reply = get(&client, &f.url("/prod/head")).await;
        assert_eq!(reply.status, 200, "{:?}", reply.version);
        assert!(reply.body.is_empty(), "{:?}", reply.version);
        assert_ne!(
            reply.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"10"[..]),
            "{:?}",
            reply.version
        );
    }
}

#[tokio::test]
async fn http_integration_path_mappings_keep_paths_whole() {
    let extra = r#"
[[apis]]
name = "files"
endpoint = "regional"
hosts = ["files.test"]
[[apis.routes]]
method = "GET"
path = "/files/{proxy+}"
[apis.routes.integration]
type = "http"
uri = "http://BACKEND/store/{p}/{h}"
request_parameters = { "integration.request.path.p" = "method.request.path.proxy", "integration.request.path.h" = "method.request.header.x-seg" }
[[apis.stages]]
name = "prod"
"#;
    let f = start(extra);
    let url = f.url("/prod/files/a/b.txt%FF");
    let client = f.h1();
    let get = |seg: &str| {
        Request::get(&url)
            .header("host", "files.test")
            .header("x-seg", seg)
            .body(full(""))
            .unwrap()
    };
    // A greedy parameter keeps its slashes and its bytes; a header's value
    // is one segment, unreserved characters as they are.
    let reply = send(&client, get("a b/c-d.e_f~")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/store/a/b.txt%FF/a%20b%2Fc-d.e_f~");
    // Never a segment that moves the path, nor an empty one (`/store/a//`).
    for seg in ["..", ""] {
        common::assert_error(&send(&client, get(seg)).await, 400, "Bad Request");
    }
    // UTF-8 text is a value too, encoded.
    let utf8 = Request::get(&url)
        .header("host", "files.test")
        .header(
            "x-seg",
            http::HeaderValue::from_bytes("Zoë".as_bytes()).unwrap(),
        )
        .body(full(""))
        .unwrap();
    let reply = send(&client, utf8).await;
    assert_eq!(reply.json()["path"], "/store/a/b.txt%FF/Zo%C3%AB");
    // And bytes that are not UTF-8 (obs-text) go on as they are, encoded.
    let latin1 = Request::get(&url)
        .header("host", "files.test")
        .header("x-seg", http::HeaderValue::from_bytes(b"caf\xe9").unwrap())
        .body(full(""))
        .unwrap();
    let reply = send(&client, latin1).await;
    assert_eq!(reply.json()["path"], "/store/a/b.txt%FF/caf%E9");
    // Without the value, the backend would get another path: 400.
    let without = Request::get(&url)
        .header("host", "files.test")
        .body(full(""))
        .unwrap();
    common::assert_error(&send(&client, without).await, 400, "Bad Request");
}

#[tokio::test]
async fn integration_timeout_is_504() {
    let f = start("");
    assert_error(
        &get(&f.h1(), &f.url("/prod/slow/3000")).await,
        504,
        "Endpoint request timed out",
    );
    assert_eq!(get(&f.h1(), &f.url("/prod/slow/10")).await.status, 200);
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_off_after_the_read_timeout() {
    // Sends its head and 5 bytes of 1 000 000, then nothing for a minute.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nhello";
                let _ = sock.write_all(head).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    // A route of the default API `echo` (the extra text goes on its list).
    let f = start(&format!(
        r#"
[[apis.routes]]
method = "GET"
path = "/stall/{{proxy+}}"
timeout_ms = 5000
integration = {{ type = "http_proxy", uri = "http://127.0.0.1:{port}/{{proxy}}" }}
"#
    ));
    for client in [f.h1(), f.h2()] {
        let resp = client
            .get(f.url("/prod/stall/big").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.version());
        // The body fails after `upstream_read_timeout_ms` (500 ms here; h1:
        // the connection closes short of its length; h2: the stream is
        // reset) instead of waiting out the backend's minute.
        let body = http_body_util::BodyExt::collect(resp.into_body());
        let read = tokio::time::timeout(Duration::from_secs(30), body).await;
        assert!(matches!(read, Ok(Err(_))), "the body should fail: {read:?}");
    }
}

/// A route's timeout runs from the end of the request body, as API
/// Gateway's starts once it has the body: an upload slower than the timeout
/// goes through while it keeps moving. A body that stands still for
/// `upload_timeout_ms` (3 s here) ends the request: 408 when the client
/// stopped sending, 504 when the backend stopped reading.
#[tokio::test]
async fn the_route_timeout_runs_from_the_end_of_a_slow_upload() {
    // A backend that accepts connections and never reads from them.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_port = deaf.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = deaf.accept().await {
            held.push(sock);
        }
    });
    let f = start(&format!(
        r#"
[[apis.routes]]
method = "POST"
path = "/upload/{{proxy+}}"
timeout_ms = 1000
integration = {{ type = "http_proxy", uri = "http://${{stageVariables.backend}}/{{proxy}}" }}

[[apis.routes]]
method = "POST"
path = "/deaf"
timeout_ms = 300
integration = {{ type = "http_proxy", uri = "http://127.0.0.1:{deaf_port}/" }}
"#
    ));
    let upload = |client: HttpsClient, body: ReqBody| {
        let req = Request::post(f.url("/prod/upload/x")).body(body).unwrap();
        async move { send(&client, req).await }
    };
    // Four chunks, each after 600 ms: 2.4 s of upload, past the route's
    // 1 s, each gap well inside the upload timeout.
    let gap = Duration::from_millis(600);
    let (a, b) = tokio::join!(
        upload(f.h1(), trickled(4, gap, false)),
        upload(f.h2(), trickled(4, gap, false)),
    );
    for reply in [a, b] {
        assert_eq!(reply.status, 200, "{:?}: {}", reply.version, reply.text());
        assert_eq!(reply.json()["body_length"], 4096, "{:?}", reply.version);
    }
    // The client sends one chunk and then nothing: 408.
    let (a, b) = tokio::join!(
        upload(f.h1(), trickled(1, Duration::ZERO, true)),
        upload(f.h2(), trickled(1, Duration::ZERO, true)),
    );
    assert_error(&a, 408, "Request Timeout");
    assert_error(&b, 408, "Request Timeout");
    assert_eq!(b.headers["x-amzn-errortype"], "RequestTimeoutException");
    // The backend takes none of 32 MiB once its socket buffers are full: 504.
    let chunks = futures_util::stream::iter((0..32).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'd'; 1 << 20])))
    }));
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
    let req = Request::post(f.url("/prod/deaf")).body(body).unwrap();
    assert_error(&send(&f.h2(), req).await, 504, "Endpoint request timed out");
    // A body that keeps the backend waiting for its head is still cut at the
    // route's timeout, counted from the body's end.
    assert_error(
        &get(&f.h1(), &f.url("/prod/slow/3000")).await,
        504,
        "Endpoint request timed out",
    );
}

/// A backend on loopback that answers every request with `reply`.
async fn scripted_backend(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 || sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// What a backend frames wrongly is not relayed as it framed it: an
/// interim answer given as the final one is a 502, and a length beside a
/// chunked coding does not go on as the body's (the client got 5 of 10
/// bytes, on a connection kept alive).
#[tokio::test]
async fn a_backends_misframed_answers_are_not_relayed_as_framed() {
    let switching = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
    )
    .await;
    let both = scripted_backend(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
    )
    .await;
    // A coding under the chunked one: the client would get gzip's bytes as
    // the content, no coding named.
    let coded = scripted_backend(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let extra = proxy_api("switching", "GET", "/", &format!("http://{switching}/"))
        + &proxy_api("both", "GET", "/", &format!("http://{both}/"))
        + &proxy_api("coded", "GET", "/", &format!("http://{coded}/"));
    let f = start(&extra);
    // HTTP/1.1: an HTTP/2 client's `host` would disagree with its
    // `:authority` (what is checked happens after either).
    let client = f.h1();
    for host in ["switching.test", "coded.test"] {
        let req = get_with(&f, "/prod/", "host", host);
        assert_error(&send(&client, req).await, 502, "Bad Gateway");
    }
    let req = get_with(&f, "/prod/", "host", "both.test");
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "0123456789");
    assert_ne!(
        reply.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
}

/// A length listed twice goes on as one, and a 204 or 304 goes on without
/// content whatever came with it: relayed as they were, HTTP/2 clients
/// refuse them (a DATA frame after a 204, `content-length: 5, 5`).
#[tokio::test]
async fn answers_go_on_framed_as_their_status_and_length_say() {
    let twice = scripted_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello").await;
    // On the default API's list (HTTP/2 requests name no other host here).
    let extra = format!(
        r#"
[[apis.routes]]
method = "GET"
path = "/twice"
integration = {{ type = "http_proxy", uri = "http://{twice}/" }}

[[apis.routes]]
method = "GET"
path = "/none"
integration = {{ type = "mock", status = 204, body = "x" }}

[[apis.routes]]
method = "GET"
path = "/same"
integration = {{ type = "mock", status = 304, body = "x" }}
"#
    );
    let f = start(&extra);
    for client in [f.h1(), f.h2()] {
        let reply = get(&client, &f.url("/prod/twice")).await;
        assert_eq!((reply.status, reply.text()), (200, "hello".into()));
        assert_eq!(reply.headers["content-length"], "5", "{:?}", reply.version);
        let reply = get(&client, &f.url("/prod/none")).await;
        assert_eq!(reply.status, 204, "{:?}", reply.version);
        assert!(reply.body.is_empty(), "{:?}", reply.version);
        assert!(
            !reply.headers.contains_key("content-length"),
            "{:?}",
            reply.headers
        );
        let reply = get(&client, &f.url("/prod/same")).await;
        assert_eq!(reply.status, 304, "{:?}", reply.version);
        assert!(reply.body.is_empty(), "{:?}", reply.version);
    }
    // An expectation is answered by the hop, not sent on.
    let req = Request::post(f.url("/prod/echo"))
        .header("expect", "100-continue")
        .body(full("x"))
        .unwrap();
    let reply = send(&f.h1(), req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.json()["headers"].get("expect").is_none(),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn refused_and_reset_backends_are_502() {
    // A port with nothing listening: connection refused. The socket holds
    // the port, bound but not listening, so no other test's backend can
    // take it (one did once, and answered 200).
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    // A backend that accepts and slams the connection shut.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = resetter.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let extra = proxy_api("refused", "GET", "/", &format!("http://{closed}/"))
        + &proxy_api("reset", "GET", "/", &format!("http://{reset_addr}/"));
    let f = start(&extra);
    for host in ["refused.test", "reset.test"] {
        let req = get_with(&f, "/prod/", "host", host);
        assert_error(&send(&f.h1(), req).await, 502, "Bad Gateway");
    }
}

#[tokio::test]
async fn a_get_on_a_keep_alive_connection_the_backend_just_closed_is_sent_again() {
    // A backend that answers one request per connection and closes the
    // connection, unanswered, when the next request arrives on it (its
    // keep-alive timeout running out just then). The client's requests, on
    // one connection, reach one origin thread, which reuses its pooled
    // backend connection each time: each GET fails there and goes again on
    // a new one. A POST with a body is not sent twice: 502.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let mut answered = false;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        if answered {
                            return;
                        }
                        answered = true;
                        seen.clear();
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let extra = proxy_api(
        "closing",
        "ANY",
        "/once",
        &format!("http://{backend_addr}/"),
    );
    let f = start(&extra);
    let client = f.h1();
    for _ in 0..5 {
        let req = get_with(&f, "/prod/once", "host", "closing.test");
        let reply = send(&client, req).await;
        assert_eq!(reply.status, 200, "body: {}", reply.text());
        assert_eq!(reply.text(), "ok");
    }
    let req = Request::post(f.url("/prod/once"))
        .header("host", "closing.test")
        .body(full("data"))
        .unwrap();
    assert_error(&send(&client, req).await, 502, "Bad Gateway");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let extra = r#"
[[apis]]
name = "small"
endpoint = "regional"
hosts = ["small.test"]
[[apis.routes]]
method = "ANY"
path = "/{proxy+}"
integration = { type = "http_proxy", uri = "http://${stageVariables.backend}/{proxy}" }
[[apis.stages]]
name = "prod"
variables = { backend = "127.0.0.1:1" }
"#;
    let f = start(extra);
    // Declared too long: refused before any of the body is read.
    let reply = raw_exchange(
        &f,
        b"POST /prod/upload HTTP/1.1\r\nHost: small.test\r\nContent-Length: 104857601\r\n\r\n",
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{reply}"
    );
    assert!(
        reply.ends_with("{\"message\":\"Request Too Long\"}"),
        "{reply}"
    );
    // Chunked, no length: refused while streaming, once past the limit.
    let chunks = futures_util::stream::iter((0..101).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'y'; 1 << 20])))
    }));
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
    let req = Request::post(f.url("/prod/upload")).body(body).unwrap();
    assert_error(&send(&f.h2(), req).await, 413, "Request Too Long");
}

#[tokio::test]
async fn head_responses_carry_no_body_over_http2() {
    let f = start(ROUTING_MOCK);
    for (path, status, length) in [("/nope/x", 404, "23"), ("/prod/mock", 200, "6")] {
        let req = Request::head(f.url(path)).body(full("")).unwrap();
        let reply = send(&f.h2(), req).await;
        assert_eq!((reply.status, reply.body.len()), (status, 0), "{path}");
        assert_eq!(reply.headers["content-length"], length, "{path}");
    }
}

const ROUTING_MOCK: &str = r#"
[[apis.routes]]
method = "GET"
path = "/mock"
integration = { type = "mock", status = 200, body = "mocked" }
"#;

#[tokio::test]
async fn a_host_header_that_disagrees_with_the_authority_is_400() {
    let f = start("");
    // HTTP/2 names the host twice here: `:authority` (from the URL) and Host.
    let req = get_with(&f, "/prod/x", "host", "other.test");
    let reply = send(&f.h2(), req).await;
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_error(&reply, 400, "Bad Request");
}

#[tokio::test]
async fn oversized_header_section_is_431() {
    // A mock on the default API's list: the demo backend is hyper with its
    // default of 100 fields.
    let f = start(
        "[[apis.routes]]\nmethod = \"GET\"\npath = \"/many\"\n\
         integration = { type = \"mock\", status = 200, body = \"ok\" }\n",
    );
    let req = get_with(&f, "/prod/x", "x-big", &"a".repeat(9000));
    assert_error(
        &send(&f.h1(), req).await,
        431,
        "Request Header Fields Too Large",
    );
    // Many small fields are no oversized section over HTTP/2; HTTP/1.1
    // keeps hyper's limit of 100 fields (its bare 431: a higher cap costs
    // every request two heap allocations, see crates/portico-net/src/http.rs).
    let many = |n: usize| {
        let mut req = Request::get(f.url("/prod/many"));
        for i in 0..n {
            req = req.header(format!("x-{i}"), "1");
        }
        req.body(full("")).unwrap()
    };
    let reply = send(&f.h2(), many(150)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(send(&f.h1(), many(90)).await.status, 200);
    assert_eq!(send(&f.h1(), many(150)).await.status, 431);
}

/// A GET of `path` with one header `name: value`.
fn get_with(f: &Fixture, path: &str, name: &str, value: &str) -> Request<ReqBody> {
    Request::get(f.url(path))
        .header(name, value)
        .body(full(""))
        .unwrap()
}

/// A TLS client that trusts `der` alone and offers `alpn`.
fn connector_trusting(
    der: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Sends raw bytes over TLS and returns what comes back.
async fn raw_exchange(f: &Fixture, request: &[u8]) -> String {
    raw_exchange_alpn(f, &[], request).await
}

/// [`raw_exchange`] offering `alpn` in the handshake.
async fn raw_exchange_alpn(f: &Fixture, alpn: &[&[u8]], request: &[u8]) -> String {
    let connector = connector_trusting(&f.cert.der, alpn);
    let tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A listener behind a load balancer (`proxy_protocol`): the client the
/// PROXY header names is the one the backend is told of and the access log
/// shows; a connection without the header gets no TLS handshake.
#[tokio::test]
async fn a_listener_behind_a_load_balancer_takes_the_client_from_its_proxy_header() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost", "127.0.0.1"]);
    let (_backend, backend) = backend();
    let extra = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\ndefault_api = \"echo\"\n\
         certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.0/8\"]\n",
        cert.cert.display(),
        cert.key.display(),
    );
    let (origin, log) = origin_logging(dir.path(), &config(&cert, backend, &extra));
    let behind = origin.addrs("https")[1];
    let connector = connector_trusting(&cert.der, &[]);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tcp = tokio::net::TcpStream::connect(behind).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n")
        .await
        .unwrap();
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /prod/who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let reply = String::from_utf8_lossy(&out).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-for"], "203.0.113.7");
    assert_eq!(echo["headers"]["x-real-ip"], "203.0.113.7");
    let id = echo["headers"]["x-request-id"].as_str().unwrap();
    let line = access_line(&log, id).await;
    assert_eq!(line["client"], "203.0.113.7:51000", "{line}");
    // Without the header: no handshake, on this listener only.
    let tcp = tokio::net::TcpStream::connect(behind).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp));
    assert!(refused.await.expect("closed").is_err());
    let open = origin.addrs("https")[0];
    let reply = send(
        &https_client(&cert.der, false),
        Request::get(format!("https://localhost:{}/prod/who", open.port()))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let f = start("");
    // Invalid percent-encoding in the path: refused by Portico with a JSON body.
    let reply = raw_exchange(
        &f,
        b"GET /prod/a%zzb HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.ends_with("{\"message\":\"Bad Request\"}"), "{reply}");
    // No Host in HTTP/1.1, or two of them: ours, with a JSON body.
    for request in [
        &b"GET /prod/a HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /prod/a HTTP/1.1\r\nHost: localhost\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    ] {
        let reply = raw_exchange(&f, request).await;
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
        assert!(reply.ends_with("{\"message\":\"Bad Request\"}"), "{reply}");
    }
    // A Host that is no host: what HTTP/1.1's parser lets through (spaces,
    // user info, a comma list) would reach the access log and the backend.
    for host in [
        "a b",
        "echo.test client=10.0.0.1",
        "user@localhost",
        "a.test,b.test",
    ] {
        let request = format!("GET /prod/a HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let reply = raw_exchange(&f, request.as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{host}: {reply}"
        );
        assert!(
            reply.ends_with("{\"message\":\"Bad Request\"}"),
            "{host}: {reply}"
        );
    }
    // A transfer coding other than `chunked` alone (the backend would get
    // the still-gzipped bytes), and a chunked body that is no chunked body
    // (the client's fault, where it was a 502 and a backend failure).
    for request in [
        &b"POST /prod/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"POST /prod/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /prod/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ] {
        let reply = raw_exchange(&f, request).await;
        let sent = String::from_utf8_lossy(request);
        assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{sent}: {reply}");
        assert!(reply.ends_with("{\"message\":\"Bad Request\"}"), "{sent}: {reply}");
    }
    // Nor after negotiating `h2` in the handshake: the request is HTTP/1.1.
    let request = b"GET /prod/a HTTP/1.1\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange_alpn(&f, &[b"h2"], request).await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.ends_with("{\"message\":\"Bad Request\"}"), "{reply}");
    // HTTP/1.0 needs none.
    let reply = raw_exchange(&f, b"GET /prod/a HTTP/1.0\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    // A request line HTTP cannot parse: hyper answers a bare 400 and closes.
    let reply = raw_exchange(&f, b"GARBAGE\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n"), "no body: {reply}");
}

/// The echo backend's JSON from a raw exchange's reply.
fn echoed(reply: &str) -> serde_json::Value {
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

#[tokio::test]
async fn paths_are_normalized_and_never_climb_out_of_the_root() {
    let f = start("");
    let raw =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    // Resolved before routing, encoded or not: the backend sees the result.
    for (sent, seen) in [
        ("/prod/a/../b", "/b"),
        ("/prod/a/%2E%2e/b", "/b"),
        ("/prod/a/./b/.", "/a/b/"),
        ("/prod/a/b/%2e%2E", "/a/"),
        ("/prod/.well-known/x", "/.well-known/x"),
        ("/prod/a/.../b", "/a/.../b"),
        // One form for one path: slashes merged, unreserved characters
        // decoded, the other escapes in upper case.
        ("/prod//a///b", "/a/b"),
        ("/prod/%61%2fb%7E", "/a%2Fb~"),
    ] {
        let reply = raw_exchange(&f, raw(sent).as_bytes()).await;
        assert_eq!(echoed(&reply)["path"], seen, "{sent}");
    }
    // `..` leaves the route's own prefix only to be routed again from the
    // resolved path: here out of stage `prod` into the unknown `lookup`.
    let reply = raw_exchange(&f, raw("/prod/../lookup/1").as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");
    assert!(reply.ends_with("{\"message\":\"Not Found\"}"), "{reply}");
    // Above the root, or a dot segment behind an escaped slash (a backend
    // that decodes first reads `/a/..%2Fb` as `/b`): refused.
    for sent in [
        "/..",
        "/prod/../../b",
        "/%2e%2e/prod/b",
        "/prod/a/..%2Fb",
        "/prod/a/%2E%2E%5cb",
    ] {
        let reply = raw_exchange(&f, raw(sent).as_bytes()).await;
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{sent}: {reply}"
        );
        assert!(
            reply.ends_with("{\"message\":\"Bad Request\"}"),
            "{sent}: {reply}"
        );
    }
}

#[tokio::test]
async fn a_path_parameter_in_the_backend_query_stays_one_value() {
    let f = start("");
    let reply = get(&f.h1(), &f.url("/prod/lookup/1&admin=true")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.json();
    assert_eq!(echo["path"], "/lookup");
    assert_eq!(echo["query"], "id=1%26admin%3Dtrue");
    // The client's query follows, less what the template sets itself.
    let reply = get(&f.h1(), &f.url("/prod/lookup/1?id=2&x=3&%69d=4")).await;
    assert_eq!(reply.json()["query"], "id=1&x=3");
}

#[tokio::test]
async fn a_get_body_of_no_declared_length_reaches_the_backend() {
    let f = start("");
    // Chunked from the client; hyper would send a GET of unknown length as
    // bodiless, so it goes on chunked.
    let reply = raw_exchange(
        &f,
        b"GET /prod/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let echo = echoed(&reply);
    assert_eq!(
        (echo["body_length"].as_u64(), echo["body"].as_str()),
        (Some(5), Some("hello")),
        "{reply}"
    );
    // One that ends at once goes as none.
    let reply = raw_exchange(
        &f,
        b"GET /prod/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    let echo = echoed(&reply);
    assert_eq!(echo["body_length"], 0, "{reply}");
    assert!(
        echo["headers"].get("transfer-encoding").is_none(),
        "{reply}"
    );
}

#[tokio::test]
async fn client_going_away_cancels_the_backend_request() {
    // A backend that never answers and reports when the request arrived and
    // when its connection closed.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = hang.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut arrived = Some(arrived_tx);
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Some(tx) = arrived.take() {
                let _ = tx.send(());
            }
        }
        let _ = closed_tx.send(());
    });
    let extra = proxy_api("hang", "GET", "/", &format!("http://{hang_addr}/"));
    let f = start(&extra);
    let client = f.h1();
    let req = get_with(&f, "/prod/", "host", "hang.test");
    let pending = tokio::spawn(async move { client.request(req).await.map(|r| r.status()) });
    tokio::time::timeout(Duration::from_secs(30), arrived_rx)
        .await
        .expect("the request never reached the backend")
        .unwrap();
    pending.abort();
    tokio::time::timeout(Duration::from_secs(20), closed_rx)
        .await
        .expect("backend connection was not closed after the client left")
        .unwrap();
}

#[tokio::test]
async fn streams_50_mb_each_way_with_bounded_memory() {
    let f = start("");
    const SIZE: u64 = 50 * 1024 * 1024;
    // Download: /bytes/{n} through the origin.
    let resp = f
        .h2()
        .request(
            Request::get(f.url(&format!("/prod/bytes/{SIZE}")))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let (mut received, mut ok) = (0u64, true);
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            ok &= data
                .iter()
                .enumerate()
                .all(|(i, b)| *b == portico_demo::pattern_byte(received + i as u64));
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);
    assert!(ok, "downloaded bytes differ from the pattern");
    // Upload: 50 MiB streamed in 256 KiB chunks; the backend hashes it.
    let chunks = futures_util::stream::iter((0..200).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'z'; 256 * 1024])))
    }));
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
    let reply = send(
        &f.h1(),
        Request::post(f.url("/prod/upload")).body(body).unwrap(),
    )
    .await;
    assert_eq!(reply.json()["body_length"], SIZE);
    // Neither body was held whole: peak RSS stays far below 50 MiB.
    let peak = f.origin.peak_rss();
    assert!(peak < 40 * 1024 * 1024, "origin peak RSS {peak} bytes");
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let dir = TempDir::new().unwrap();
    let a = test_cert(dir.path(), "a", &["a.example"]);
    let b = test_cert(dir.path(), "b", &["b.example"]);
    let (_backend, backend_addr) = backend();
    let text = config(&a, backend_addr, "").replace(
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            a.cert.display(),
            a.key.display()
        ),
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]",
            a.cert.display(),
            a.key.display(),
            b.cert.display(),
            b.key.display()
        ),
    );
    let origin = origin(dir.path(), &text);
    let addr = origin.addrs("https")[0];
    for (name, cert) in [("a.example", &a), ("b.example", &b)] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
        let tls = connector
            .connect(server_name, tcp)
            .await
            .expect("handshake verifies the SNI-selected certificate");
        assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], cert.der);
    }
}

fn mock_config(cert: &TestCert, body: &str) -> String {
    format!(
        r#"
[node]
id = "origin-reload"
region = "local"

[[listeners]]
address = "127.0.0.1:0"
default_api = "m"
certificates = [{{ cert = "{}", key = "{}" }}]

[[apis]]
name = "m"
endpoint = "regional"
[[apis.routes]]
method = "GET"
path = "/v"
integration = {{ type = "mock", status = 200, body = "{body}" }}
[[apis.routes]]
method = "GET"
path = "/slow"
integration = {{ type = "http_proxy", uri = "http://${{stageVariables.backend}}/delay/1500" }}
[[apis.stages]]
name = "prod"
variables = {{ backend = "BACKEND" }}
"#,
        cert.cert.display(),
        cert.key.display()
    )
}

/// Whether a TLS handshake with `sni` to `addr` succeeds trusting only `der`.
async fn handshake_trusting(
    addr: std::net::SocketAddr,
    sni: &str,
    der: &rustls_pki_types::CertificateDer<'static>,
) -> bool {
    let connector = connector_trusting(der, &[]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await.is_ok()
}

/// SIGHUP reads certificates again (a custom domain added with its own, a
/// listener's file renewed in place), and refuses what would break a
/// running listener; a removed `[admin]` shuts the admin API.
#[tokio::test]
async fn sighup_reloads_certificates_and_refuses_what_would_break_a_listener() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let shop = test_cert(dir.path(), "shop", &["shop.test"]);
    let admin = "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"admin-token-0123456789abcd\"\n";
    let base = mock_config(&cert, "one").replace("BACKEND", "127.0.0.1:9");
    let (origin, log) = origin_logging(dir.path(), &format!("{base}{admin}"));
    let addr = origin.addrs("https")[0];
    assert!(handshake_trusting(addr, "localhost", &cert.der).await);
    assert!(!handshake_trusting(addr, "shop.test", &shop.der).await);
    // A custom domain with its own certificate, added by a reload.
    let domain = format!(
        "\n[[domains]]\nname = \"shop.test\"\ncertificate = {{ cert = \"{}\", key = \"{}\" }}\n\
         [[domains.mappings]]\nbase_path = \"\"\napi = \"m\"\nstage = \"prod\"\n",
        shop.cert.display(),
        shop.key.display()
    );
    let file = dir.path().join("origin.toml");
    std::fs::write(&file, format!("{base}{domain}{admin}")).unwrap();
    origin.signal("HUP");
    logged(&log, "configuration reloaded").await;
    assert!(handshake_trusting(addr, "shop.test", &shop.der).await);
    assert!(handshake_trusting(addr, "localhost", &cert.der).await);
    // The listener's certificate renewed in place: the new one is served.
    let renewed = test_cert(dir.path(), "server", &["localhost"]);
    origin.signal("HUP");
    eventually(10, || async {
        handshake_trusting(addr, "localhost", &renewed.der)
            .await
            .then_some(())
    })
    .await;
    // Definitions without the listener's default_api: refused, old ones serve.
    std::fs::write(&file, format!("{}{admin}", base.replace("\"m\"", "\"m2\""))).unwrap();
    origin.signal("HUP");
    logged(&log, "default_api `m` is no longer defined").await;
    let client = https_client(&renewed.der, false);
    let url = format!("https://localhost:{}/prod/v", addr.port());
    assert_eq!(get(&client, &url).await.text(), "one");
    // `[admin]` removed: the admin API lets no one in any more.
    let config = format!("http://{}/config", origin.addrs("admin")[0]);
    let with_token = || {
        Request::get(&config)
            .header("authorization", "Bearer admin-token-0123456789abcd")
            .body(full(""))
            .unwrap()
    };
    assert_eq!(send(&client, with_token()).await.status, 200);
    std::fs::write(&file, &base).unwrap();
    origin.signal("HUP");
    logged(&log, "`[admin]` was removed").await;
    let refused = send(&client, with_token()).await;
    common::assert_error(&refused, 403, "Forbidden");
    let empty = Request::get(&config)
        .header("authorization", "Bearer ")
        .body(full(""))
        .unwrap();
    let unauthorized = send(&client, empty).await;
    common::assert_error(&unauthorized, 401, "Unauthorized");
    // A caller without the token keeps no admin connection open.
    for reply in [&refused, &unauthorized] {
        assert_eq!(reply.headers["connection"], "close");
    }
}

#[tokio::test]
async fn sighup_reloads_without_disruption_and_keeps_the_old_config_on_errors() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let (_backend, backend_addr) = backend();
    let text = |body: &str| mock_config(&cert, body).replace("BACKEND", &backend_addr.to_string());
    let (origin, log) = origin_logging(dir.path(), &text("one"));
    let base = format!("https://localhost:{}/prod", origin.addrs("https")[0].port());
    let client = https_client(&cert.der, false);
    assert_eq!(get(&client, &format!("{base}/v")).await.text(), "one");
    // A request in flight across the reload finishes normally.
    let slow = {
        let (client, url) = (client.clone(), format!("{base}/slow"));
        tokio::spawn(async move { get(&client, &url).await.status })
    };
    std::fs::write(dir.path().join("origin.toml"), text("two")).unwrap();
    origin.signal("HUP");
    eventually(10, || async {
        (get(&client, &format!("{base}/v")).await.text() == "two").then_some(())
    })
    .await;
    assert_eq!(slow.await.unwrap(), 200);
    // An invalid file is rejected, logged, and the last good config keeps serving.
    std::fs::write(
        dir.path().join("origin.toml"),
        text("three").replace("endpoint = \"regional\"", "endpoint = \"sideways\""),
    )
    .unwrap();
    origin.signal("HUP");
    logged(&log, "configuration reload rejected").await;
    assert_eq!(get(&client, &format!("{base}/v")).await.text(), "two");
}

#[tokio::test]
async fn sighup_replaces_the_admin_token() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let text = |token: &str| {
        mock_config(&cert, "m").replace("BACKEND", "127.0.0.1:9")
            + &format!("\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{token}\"\n")
    };
    let (origin, log) = origin_logging(dir.path(), &text("old-token-0123456789"));
    let client = https_client(&cert.der, false);
    let config = format!("http://{}/config", origin.addrs("admin")[0]);
    let with = |token: &str| {
        Request::get(&config)
            .header("authorization", format!("Bearer {token}"))
            .body(full(""))
            .unwrap()
    };
    assert_eq!(
        send(&client, with("old-token-0123456789")).await.status,
        200
    );
    // The operator rotates a leaked token and reloads.
    std::fs::write(dir.path().join("origin.toml"), text("new-token-9876543210")).unwrap();
    origin.signal("HUP");
    logged(&log, "configuration reloaded").await;
    common::assert_error(
        &send(&client, with("old-token-0123456789")).await,
        403,
        "Forbidden",
    );
    assert_eq!(
        send(&client, with("new-token-9876543210")).await.status,
        200
    );
}

#[tokio::test]
async fn access_log_has_one_json_line_per_request() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let (_backend, backend_addr) = backend();
    let (origin, log) = origin_logging(dir.path(), &config(&cert, backend_addr, ""));
    let url = format!(
        "https://localhost:{}/prod/bytes/1234",
        origin.addrs("https")[0].port()
    );
    let req = Request::get(url)
        .header("x-request-id", "log-line-1")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&https_client(&cert.der, false), req).await.status, 200);
    let line = access_line(&log, "log-line-1").await;
    assert_eq!(line["request_id"], "log-line-1");
    assert_eq!(line["api"], "echo");
    assert_eq!(line["stage"], "prod");
    assert_eq!(line["route"], "ANY /{proxy+}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 1234);
    assert_eq!(line["outcome"], "complete");
    assert!(line["total_ms"].as_f64().unwrap() >= line["integration_ms"].as_f64().unwrap());
}

/// A request whose client leaves before the answer (an HTTP/2 stream
/// reset) still has its line: status 499, as nginx logs it. It spent the
/// client's tokens and a backend's time.
#[tokio::test]
async fn a_request_its_client_cancels_is_logged_499() {
    // A backend that says when the request reached it, and never answers.
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_addr = held.local_addr().unwrap();
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = held.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        let _ = reached_tx.send(());
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let (_backend, backend_addr) = backend();
    let extra = format!(
        "[[apis.routes]]\nmethod = \"GET\"\npath = \"/held\"\n\
         integration = {{ type = \"http_proxy\", uri = \"http://{held_addr}/\" }}\n"
    );
    let (origin, log) = origin_logging(dir.path(), &config(&cert, backend_addr, &extra));
    let url = format!(
        "https://localhost:{}/prod/held",
        origin.addrs("https")[0].port()
    );
    let client = https_client(&cert.der, true);
    let req = Request::get(url)
        .header("x-request-id", "cancelled-1")
        .body(full(""))
        .unwrap();
    let call = tokio::spawn(async move { client.request(req).await });
    tokio::time::timeout(Duration::from_secs(30), reached)
        .await
        .expect("the request reaches the backend")
        .unwrap();
    // Dropping the response future resets the stream.
    call.abort();
    let line = access_line(&log, "cancelled-1").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["outcome"], "aborted", "{line}");
    assert_eq!(line["error"], "client_closed_request", "{line}");
    assert_eq!(line["route"], "GET /held", "{line}");
}

/// A CORS preflight the gateway answers itself is logged with the API and
/// stage it was answered for, and no route (none was run).
#[tokio::test]
async fn a_preflight_is_logged_with_its_api_and_stage() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let (_backend, backend_addr) = backend();
    let text = config(&cert, backend_addr, "").replacen(
        "endpoint = \"regional\"\n",
        "endpoint = \"regional\"\n[apis.cors]\nallow_origins = [\"https://app.test\"]\nallow_methods = [\"PUT\"]\n",
        1,
    );
    let (origin, log) = origin_logging(dir.path(), &text);
    let url = format!(
        "https://localhost:{}/prod/items/7",
        origin.addrs("https")[0].port()
    );
    let req = Request::options(url)
        .header("x-request-id", "log-preflight-1")
        .header("origin", "https://app.test")
        .header("access-control-request-method", "PUT")
        .body(full(""))
        .unwrap();
    let reply = send(&https_client(&cert.der, false), req).await;
    assert_eq!(reply.status, 204, "{}", reply.text());
    assert_eq!(reply.headers["access-control-allow-methods"], "PUT");
    let line = access_line(&log, "log-preflight-1").await;
    assert_eq!(line["api"], "echo");
    assert_eq!(line["stage"], "prod");
    assert_eq!(line["route"], "");
    assert_eq!(line["status"], 204);
    assert_eq!(line["method"], "OPTIONS");
}

#[tokio::test]
async fn http2_and_https_backends() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let backend_cert = test_cert(dir.path(), "backend", &["localhost"]);
    let (_tls_backend, tls_addr) = tls_backend(&backend_cert);
    let (_backend, backend_addr) = backend();
    // https verified against the configured CA: HTTP/1.1 by default, as
    // nginx speaks to origins; ALPN h2 when `https_h2` asks for it.
    for (h2, version) in [("", "HTTP/1.1"), ("https_h2 = true\n", "HTTP/2.0")] {
        let text = config(&cert, backend_addr, "").replace(
            "[limits]",
            &format!(
                "[backend_client]\nca_file = \"{}\"\nuse_webpki_roots = false\n{h2}\n[limits]",
                backend_cert.cert.display()
            ),
        ) + &proxy_api(
            "tls",
            "GET",
            "/{proxy+}",
            &format!("https://localhost:{}/{{proxy}}", tls_addr.port()),
        );
        let sub = dir.path().join(if h2.is_empty() { "h1" } else { "h2" });
        std::fs::create_dir_all(&sub).unwrap();
        let origin = origin(&sub, &text);
        let url = format!(
            "https://localhost:{}/prod/x",
            origin.addrs("https")[0].port()
        );
        let req = Request::get(url)
            .header("host", "tls.test")
            .body(full(""))
            .unwrap();
        let reply = send(&https_client(&cert.der, false), req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["version"], version, "{h2:?}");
    }
}

#[tokio::test]
async fn untrusted_https_backend_is_502() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "server", &["localhost"]);
    let backend_cert = test_cert(dir.path(), "backend", &["localhost"]);
    let (_tls_backend, tls_addr) = tls_backend(&backend_cert);
    let (_backend, backend_addr) = backend();
    let text = config(&cert, backend_addr, "")
        .replace("${stageVariables.backend}", "localhost:PORT")
        .replace("http://localhost", "https://localhost")
        .replace("PORT", &tls_addr.port().to_string());
    let origin = origin(dir.path(), &text);
    let url = format!(
        "https://localhost:{}/prod/x",
        origin.addrs("https")[0].port()
    );
    assert_error(
        &get(&https_client(&cert.der, false), &url).await,
        502,
        "Bad Gateway",
    );
}

#[tokio::test]
async fn tls12_and_tls13_are_both_served() {
    let f = start("");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(f.cert.der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(f.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[tokio::test]
async fn without_certificates_a_self_signed_one_is_generated_and_logged() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "unused", &["localhost"]);
    let (_backend, backend_addr) = backend();
    let text = config(&cert, backend_addr, "").replace(
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            cert.cert.display(),
            cert.key.display()
        ),
        "",
    );
    let (origin, log) = origin_logging(dir.path(), &text);
    logged(&log, "self-signed certificate generated at start").await;
    // The listener serves TLS with that certificate, which our client does not trust.
    let url = format!(
        "https://localhost:{}/prod/x",
        origin.addrs("https")[0].port()
    );
    let req = Request::get(url).body(full("")).unwrap();
    let err = https_client(&cert.der, false)
        .request(req)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");
}

#[tokio::test]
async fn plain_http_listener_serves_http1_and_h2c() {
    let dir = TempDir::new().unwrap();
    let cert = test_cert(dir.path(), "unused", &["localhost"]);
    let (_backend, backend_addr) = backend();
    let text = config(&cert, backend_addr, "").replace(
        &format!(
            "certificates = [{{ cert = \"{}\", key = \"{}\" }}]",
            cert.cert.display(),
            cert.key.display()
        ),
        "tls = false",
    );
    let origin = origin(dir.path(), &text);
    let url = format!("http://127.0.0.1:{}/prod/x", origin.addrs("http")[0].port());
    for h2 in [false, true] {
        let client = https_client(&cert.der, h2);
        let reply = get(&client, &url).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "http");
        assert_eq!(
            reply.version,
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
    }
}
