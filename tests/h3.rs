//! End-to-end HTTP/3: real `portico` processes with `http3 = true`, a Rust
//! h3 client (quinn + h3 + h3-quinn), hyper clients for h1/h2, the demo
//! backend, and an independent client (aioquic, `tests/interop/h3_client.py`).
//!
//! client ─h3─► origin ─► backend, and client ─h3─► PoP ─backbone─► origin ─► backend.

mod common;

#[path = "../crates/portico-net/tests/support/h3_client.rs"]
mod h3_client;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use h3_client::{H3Client, H3Conn, H3Reply};
use http::Request;
use portico_netsim::{Link, LinkSpec, UdpRelay};
use tempfile::TempDir;

/// An API proxying everything to the demo backend; `mode` is `regional`
/// (served by the origin's listeners) or `edge` (served by PoPs).
fn api(mode: &str, backend: SocketAddr) -> String {
    format!(
        r#"
[[apis]]
name = "echo"
endpoint = "{mode}"
[[apis.routes]]
method = "ANY"
path = "/{{proxy+}}"
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/{{proxy}}"
[[apis.routes]]
method = "POST"
path = "/slow/{{ms}}"
timeout_ms = 300
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/delay/{{ms}}"
[[apis.routes]]
method = "GET"
path = "/mapped/get"
[apis.routes.integration]
type = "http"
uri = "http://${{stageVariables.backend}}/echo"
[[apis.routes]]
method = "GET"
path = "/mapped/post"
[apis.routes.integration]
type = "http"
method = "POST"
uri = "http://${{stageVariables.backend}}/echo"
[[apis.stages]]
name = "prod"
variables = {{ backend = "{backend}" }}
"#
    )
}

/// A public listener on port 0 serving `echo`, with HTTP/3.
fn listener(cert: &TestCert) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
default_api = "echo"
http3 = true
certificates = [{{ cert = "{}", key = "{}" }}]
[listeners.quic]
congestion = "cubic"
max_concurrent_streams = 128
"#,
        cert.cert.display(),
        cert.key.display()
    )
}

fn origin_config(cert: &TestCert, backend: SocketAddr) -> String {
    let node = "[node]\nid = \"origin-h3\"\nregion = \"local\"\n";
    format!("{node}{}{}", listener(cert), api("regional", backend))
}

/// An origin with an HTTP/3 listener in front of the demo backend.
struct OriginFixture {
    _dir: TempDir,
    _backend: Proc,
    origin: Proc,
    cert: TestCert,
}

impl OriginFixture {
    fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let cert = test_cert(dir.path(), "public", &["localhost", "127.0.0.1"]);
        let (backend_proc, backend) = backend();
        let origin = origin(dir.path(), &origin_config(&cert, backend));
        Self {
            _dir: dir,
            _backend: backend_proc,
            origin,
            cert,
        }
    }

    fn h3_addr(&self) -> SocketAddr {
        self.origin.addrs("h3")[0]
    }

    fn client(&self) -> H3Client {
        H3Client::new(std::slice::from_ref(&self.cert.der), "localhost")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.h3_addr().port())
    }
}

fn expected_bytes(n: u64) -> Vec<u8> {
    (0..n).map(portico_demo::pattern_byte).collect()
}

/// A request with a body over h1 or h2, collected.
async fn post_tcp(client: &HttpsClient, url: &str, body: &[u8]) -> Reply {
    let req = Request::post(url)
        .body(full(Bytes::copy_from_slice(body)))
        .unwrap();
    send(client, req).await
}

/// A POST whose body goes out in `chunks` DATA frames.
async fn post_h3(conn: &H3Conn, url: &str, body: &[u8], chunks: usize) -> H3Reply {
    let mut send = conn.send.clone();
    let req = Request::post(url).body(()).unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    for part in body.chunks(body.len().div_ceil(chunks).max(1)) {
        stream
            .send_data(Bytes::copy_from_slice(part))
            .await
            .unwrap();
    }
    stream.finish().await.unwrap();
    h3_client::read_reply(&mut stream).await.unwrap()
}

#[tokio::test]
async fn the_same_request_returns_the_same_bytes_over_h1_h2_and_h3() {
    let f = OriginFixture::start();
    let https = f.origin.addrs("https")[0];
    assert_eq!(
        https.port(),
        f.h3_addr().port(),
        "HTTP/3 on the HTTPS port number"
    );
    let alt_svc = format!("h3=\":{}\"; ma=86400", https.port());
    let h3 = f.client().connect(f.h3_addr()).await;
    let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut bodies = Vec::new();
    for h2 in [false, true] {
        let client = https_client(&f.cert.der, h2);
        let got = get(&client, &f.url("/prod/bytes/300000")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["alt-svc"], alt_svc.as_str(), "h2: {h2}");
        let echoed = post_tcp(&client, &f.url("/prod/echo"), &upload).await;
        bodies.push((got.body, echoed.json()["body_sha256"].clone()));
    }
    let got = h3.get(&f.url("/prod/bytes/300000")).await;
    assert_eq!(got.status, 200);
    assert!(got.headers.get("alt-svc").is_none());
    let echoed = post_h3(&h3, &f.url("/prod/echo"), &upload, 7).await;
    assert_eq!(
        echoed.json()["version"],
        "HTTP/1.1",
        "backend request: {}",
        echoed.text()
    );
    bodies.push((got.body, echoed.json()["body_sha256"].clone()));
    assert_eq!(bodies[0].0, expected_bytes(300_000));
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "h1, h2 and h3 differ"
    );
}

#[tokio::test]
async fn header_sections_over_the_limits_get_431_over_h3() {
    let f = OriginFixture::start();
    let conn = f.client().connect(f.h3_addr()).await;
    // Over the gateway's limit (16 KiB) but under h3's (48 KiB): our JSON 431.
    let req = Request::get(f.url("/prod/echo"))
        .header("x-big", "a".repeat(20_000))
        .body(())
        .unwrap();
    let reply = conn.request(req, b"").await.unwrap();
    assert_eq!(reply.status, 431);
    let message = serde_json::json!({"message": "Request Header Fields Too Large"});
    assert_eq!(reply.json(), message);
    // Under both byte limits (about 9 of 16 KiB, 38 of 48 KiB), but more
    // fields than a request may carry (1 000): our JSON 431 too.
    let mut req = Request::get(f.url("/prod/echo"));
    for i in 0..1001 {
        req = req.header(format!("x-{i}"), "");
    }
    let reply = conn.request(req.body(()).unwrap(), b"").await.unwrap();
    assert_eq!(reply.status, 431);
    assert_eq!(reply.json(), message);
    // Over SETTINGS_MAX_FIELD_SECTION_SIZE: h3's own 431, before the gateway.
    // (A client that read our SETTINGS would refuse to send it; this one has
    // not started its driver, so it has not.)
    let quic = f
        .client()
        .endpoint
        .connect(f.h3_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let lazy = H3Conn::new(quic).await;
    let req = Request::get(f.url("/prod/echo"))
        .header("x-big", "a".repeat(60_000))
        .body(())
        .unwrap();
    let reply = lazy.request(req, b"").await.unwrap();
    assert_eq!((reply.status, reply.body.len()), (431, 0));
}

/// HTTP/3 and HTTP/2 clients may send each cookie as a field of its own;
/// an HTTP/1.1 backend gets them as one line (RFC 9114 §4.2.1, RFC 9113
/// §8.2.3), never as two (which the echo would show joined by ", ").
#[tokio::test]
async fn split_cookies_reach_the_backend_as_one_line() {
    let f = OriginFixture::start();
    let h3 = f.client().connect(f.h3_addr()).await;
    let req = Request::get(f.url("/prod/echo"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let reply = h3.request(req, b"").await.unwrap();
    assert_eq!(reply.json()["headers"]["cookie"], "a=1; b=2", "over h3");
    let h2 = https_client(&f.cert.der, true);
    let req = Request::get(f.url("/prod/echo"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(full(Bytes::new()))
        .unwrap();
    let reply = send(&h2, req).await;
    assert_eq!(reply.json()["headers"]["cookie"], "a=1; b=2", "over h2");
}

#[tokio::test]
async fn a_head_response_carries_no_body_over_h3() {
    let f = OriginFixture::start();
    let conn = f.client().connect(f.h3_addr()).await;
    let req = Request::head(f.url("/nope/x")).body(()).unwrap();
    let reply = conn.request(req, b"").await.unwrap();
    assert_eq!((reply.status, reply.body.len()), (404, 0));
    assert_eq!(reply.headers["content-length"], "23");
}

#[tokio::test]
async fn a_content_length_the_body_does_not_carry_is_400_over_h3() {
    let f = OriginFixture::start();
    let conn = f.client().connect(f.h3_addr()).await;
    let request = |method: &str, length: &str| {
        Request::builder()
            .method(method)
            .uri(f.url("/prod/echo"))
            .header("content-length", length)
            .body(())
            .unwrap()
    };
    // HTTP/3 frames its own bodies, so a length is only a claim (RFC 9114
    // §4.1.2): one its DATA does not match, or that is no length, is refused.
    // Forwarded, a length with no body would have the backend read the next
    // request on its connection as this one's body.
    let bad = serde_json::json!({"message": "Bad Request"});
    for (method, length, body) in [
        ("GET", "20", &b""[..]),
        ("POST", "5", b"abc"),
        ("POST", "3", b"abcdef"),
        ("POST", "+3", b"abc"),
        ("POST", "3, 4", b"abc"),
    ] {
        let reply = conn.request(request(method, length), body).await.unwrap();
        assert_eq!(
            (reply.status, reply.json()),
            (400, bad.clone()),
            "{method} {length}"
        );
    }
    let reply = conn.request(request("POST", "3, 3"), b"abc").await.unwrap();
    assert_eq!(reply.status, 200);
}

/// A route's timeout runs from the end of the request body, and an HTTP/3
/// body of declared length ends with its last byte: the backend's HTTP/1.1
/// client takes those bytes and asks for no more, so the body's end is its
/// drop. A backend that then takes 2 s is cut at the route's 300 ms.
#[tokio::test]
async fn the_route_timeout_runs_from_the_last_byte_of_an_h3_body() {
    let f = OriginFixture::start();
    let conn = f.client().connect(f.h3_addr()).await;
    let req = Request::post(f.url("/prod/slow/2000"))
        .header("content-length", "3")
        .body(())
        .unwrap();
    let reply = conn.request(req, b"abc").await.unwrap();
    assert_eq!(
        (reply.status, reply.json()),
        (
            504,
            serde_json::json!({"message": "Endpoint request timed out"})
        )
    );
}

/// A request answered before its body was read (413: its declared length is
/// over the limit) has the client told to stop sending with `H3_NO_ERROR`,
/// not quinn's undefined code 0.
#[tokio::test]
async fn an_unread_body_is_stopped_with_h3_no_error() {
    let f = OriginFixture::start();
    let conn = f.client().connect(f.h3_addr()).await;
    let mut send = conn.send.clone();
    let req = Request::post(f.url("/prod/upload"))
        .header("content-length", (64u64 << 20).to_string())
        .body(())
        .unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    let chunk = Bytes::from(vec![b's'; 64 * 1024]);
    let mut stopped = None;
    for _ in 0..1024 {
        if let Err(err) = stream.send_data(chunk.clone()).await {
            stopped = Some(err);
            break;
        }
    }
    match stopped {
        Some(h3::error::StreamError::RemoteTerminate { code, .. }) => {
            assert_eq!(code, h3::error::Code::H3_NO_ERROR)
        }
        other => panic!("expected a STOP_SENDING, got {other:?}"),
    }
    let reply = h3_client::read_reply(&mut stream).await.unwrap();
    assert_eq!(reply.status, 413);
}

/// Connection-specific fields make an HTTP/3 request malformed (RFC 9114
/// §4.2); `TE: trailers` is the one allowed.
#[tokio::test]
async fn connection_specific_fields_are_400_over_h3() {
    let f = OriginFixture::start();
    let conn = f.client().connect(f.h3_addr()).await;
    let bad = serde_json::json!({"message": "Bad Request"});
    for (name, value) in [
        ("connection", "early-data"),
        ("keep-alive", "5"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ] {
        let req = Request::get(f.url("/prod/echo"))
            .header(name, value)
            .body(())
            .unwrap();
        let reply = conn.request(req, b"").await.unwrap();
        assert_eq!((reply.status, reply.json()), (400, bad.clone()), "{name}");
    }
    let req = Request::get(f.url("/prod/echo"))
        .header("te", "trailers")
        .body(())
        .unwrap();
    let reply = conn.request(req, b"").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["headers"]["te"],
        "trailers",
        "it reaches the backend"
    );
}

/// 0-RTT through an origin: the server→client path is delayed 2 s, so
/// requests sent in 0-RTT arrive long before the handshake can complete
/// (with 300 ms, an origin process not scheduled for that long on a loaded
/// machine read them after it, as ordinary requests).
#[tokio::test]
async fn early_data_serves_safe_methods_and_425s_the_rest() {
    let f = OriginFixture::start();
    let client = f.client();
    let link = Link {
        up: LinkSpec::default(),
        down: LinkSpec::with_delay(Duration::from_secs(2)),
    };
    let relay = UdpRelay::bind("127.0.0.1:0".parse().unwrap(), f.h3_addr(), link)
        .await
        .unwrap();
    let via = relay.local_addr();
    let _relay = relay.spawn();
    let (mut conn, accepted) = resumed_0rtt(&client, f.h3_addr(), via, &f.url("/prod/echo")).await;
    let get = Request::get(f.url("/prod/echo")).body(()).unwrap();
    let post = Request::post(f.url("/prod/echo")).body(()).unwrap();
    let mapped = |path: &str| Request::get(f.url(path)).body(()).unwrap();
    let (get, post, mapped_get, mapped_post) = tokio::join!(
        conn.request(get, b""),
        conn.request(post, b"order=1"),
        conn.request(mapped("/prod/mapped/get"), b""),
        conn.request(mapped("/prod/mapped/post"), b""),
    );
    let (get, post) = (get.unwrap(), post.unwrap());
    let (mapped_get, mapped_post) = (mapped_get.unwrap(), mapped_post.unwrap());
    assert!(accepted.await, "0-RTT accepted");
    // An `http` integration tells its backend too, and never turns an early
    // GET into a method that changes state.
    assert_eq!(mapped_get.status, 200, "{}", mapped_get.text());
    assert_eq!(mapped_get.json()["headers"]["early-data"], "1");
    assert_eq!(mapped_post.status, 425, "{}", mapped_post.text());
    assert_eq!(
        mapped_post.json(),
        serde_json::json!({"message": "Too Early"})
    );
    // The GET was served, and the backend was told it came in early data.
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.json()["headers"]["early-data"], "1", "{}", get.text());
    assert_eq!(post.status, 425);
    assert_eq!(post.json(), serde_json::json!({"message": "Too Early"}));
    // Answered by the gateway like any refusal: a request id (and an access line).
    assert!(
        post.headers.contains_key("x-request-id"),
        "{:?}",
        post.headers
    );
    // After the handshake the client retries, and the POST is served.
    conn.start_driver();
    let retry = Request::post(f.url("/prod/echo")).body(()).unwrap();
    let retry = conn.request(retry, b"order=1").await.unwrap();
    assert_eq!(retry.status, 200);
    assert_eq!(retry.json()["body"], "order=1");
    assert!(retry.json()["headers"].get("early-data").is_none());
}

/// Connects directly for a session ticket, then opens a 0-RTT connection via `via`.
async fn resumed_0rtt(
    client: &H3Client,
    direct: SocketAddr,
    via: SocketAddr,
    url: &str,
) -> (H3Conn, quinn::ZeroRttAccepted) {
    for _ in 0..3 {
        let conn = client.connect(direct).await;
        assert_eq!(conn.get(url).await.status, 200);
        assert_eq!(conn.get(url).await.status, 200);
        conn.quic.close(0u32.into(), b"done");
        if let Some(pair) = client.connect_0rtt(via).await {
            return pair;
        }
    }
    panic!("no 0-RTT session ticket after three connections");
}

/// client → PoP → backbone → origin → backend: the PoP's listener with
/// `http3 = true` (the same shared listener code as the origin's).
struct PopFixture {
    dir: TempDir,
    _backend: Proc,
    _origin: Proc,
    pop: Proc,
    cert: TestCert,
}

impl PopFixture {
    fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let certs = dir.path().join("certs");
        let status = Command::new(portico_bin())
            .args([
                "certs",
                "--out",
                certs.to_str().unwrap(),
                "--origins",
                "origin-a",
                "--pops",
                "pop-a",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "portico certs");
        let cert = test_cert(dir.path(), "public", &["localhost", "127.0.0.1"]);
        let (backend_proc, backend) = backend();
        let origin = node(
            dir.path(),
            "origin",
            &origin_with_backbone(&certs, &cert, backend),
        );
        let backbone = origin.addrs("backbone")[0];
        let pop = node(dir.path(), "pop", &pop_config(&certs, &cert, backbone));
        Self {
            dir,
            _backend: backend_proc,
            _origin: origin,
            pop,
            cert,
        }
    }

    fn h3_addr(&self) -> SocketAddr {
        self.pop.addrs("h3")[0]
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.h3_addr().port())
    }

    /// An h3 connection once the PoP serves the edge API (its first
    /// snapshot has arrived over the backbone).
    async fn served(&self) -> H3Conn {
        let client = H3Client::new(std::slice::from_ref(&self.cert.der), "localhost");
        let conn = client.connect(self.h3_addr()).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if conn.get(&self.url("/prod/ready")).await.status == 200 {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the PoP did not serve the edge API within 60 s");
    }
}

fn node(dir: &Path, kind: &str, config: &str) -> Proc {
    let path = dir.join(format!("{kind}.toml"));
    std::fs::write(&path, config).unwrap();
    Proc::start(&[kind, "--config", path.to_str().unwrap()], "ready")
}

fn origin_with_backbone(certs: &Path, cert: &TestCert, backend: SocketAddr) -> String {
    let c = certs.display();
    format!(
        "[node]\nid = \"origin-a\"\nregion = \"local\"\n{}\n[backbone]\nlisten = \"127.0.0.1:0\"\n\
         ca = \"{c}/ca.pem\"\ncert = \"{c}/origin-a.pem\"\nkey = \"{c}/origin-a.key\"\n{}",
        // An origin's listeners serve regional APIs: no default for an edge one.
        listener(cert).replace("default_api = \"echo\"\n", ""),
        api("edge", backend)
    )
}

fn pop_config(certs: &Path, cert: &TestCert, backbone: SocketAddr) -> String {
    let c = certs.display();
    format!(
        "[node]\nid = \"pop-a\"\n{}\n[backbone]\nca = \"{c}/ca.pem\"\ncert = \"{c}/pop-a.pem\"\n\
         key = \"{c}/pop-a.key\"\n\n[[origins]]\nregion = \"local\"\naddress = \"{backbone}\"\n\
         server_name = \"origin-a\"\n",
        listener(cert)
    )
}

#[tokio::test]
async fn http3_through_pop_backbone_origin_backend() {
    let f = PopFixture::start();
    let conn = f.served().await;
    let got = conn.get(&f.url("/prod/bytes/200000")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, expected_bytes(200_000));
    let via = got
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>();
    let via = via.join(", ");
    assert!(
        via.contains("pop-a") && via.contains("origin-a"),
        "Via: {via}"
    );
    // Many requests at once on the one connection, bodies streamed both ways.
    let mut tasks = tokio::task::JoinSet::new();
    let conn = std::sync::Arc::new(conn);
    for i in 0..20u32 {
        let (conn, url) = (std::sync::Arc::clone(&conn), f.url("/prod/echo"));
        tasks.spawn(async move {
            let body = format!("request {i} ").repeat(1000);
            let reply = post_h3(&conn, &url, body.as_bytes(), 3).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json()["body"], body.as_str());
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    // The h1/h2 side of the same listener advertises HTTP/3.
    let tcp = get(&https_client(&f.cert.der, true), &f.url("/prod/bytes/10")).await;
    let alt_svc = format!("h3=\":{}\"; ma=86400", f.h3_addr().port());
    assert_eq!(tcp.headers["alt-svc"], alt_svc.as_str());
}

/// aioquic (Python), a QUIC and HTTP/3 stack we did not write, fetches
/// through the PoP. Skips only when python3 or aioquic is missing
/// (`.ci/run` installs aioquic, so CI never skips).
#[tokio::test]
async fn aioquic_fetches_through_the_pop() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/h3_client.py");
    let probe = Command::new("python3")
        .args(["-c", "import aioquic"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED aioquic_fetches_through_the_pop: python3 with aioquic is not available \
             (python3 -m pip install aioquic)"
        );
        return;
    }
    let f = PopFixture::start();
    drop(f.served().await);
    let requests = serde_json::json!([
        {"method": "GET", "path": "/prod/bytes/100000"},
        {"method": "POST", "path": "/prod/echo", "body": "from aioquic",
         "headers": [["content-type", "text/plain"]]},
        {"method": "GET", "path": "/prod/echo", "headers": [["x-big", "a".repeat(60_000)]]},
    ]);
    let authority = format!("localhost:{}", f.h3_addr().port());
    let out = Command::new("python3")
        .arg(&script)
        .args([
            &f.h3_addr().to_string(),
            &authority,
            f.cert.cert.to_str().unwrap(),
        ])
        .arg(requests.to_string())
        .current_dir(f.dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aioquic client failed: {stderr}");
    let replies: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = &replies[0];
    assert_eq!(bytes["status"], 200);
    assert_eq!(bytes["alpn"], "h3");
    assert_eq!(
        bytes["body"].as_str().unwrap().as_bytes(),
        expected_bytes(100_000)
    );
    let echo: serde_json::Value =
        serde_json::from_str(replies[1]["body"].as_str().unwrap()).unwrap();
    assert_eq!(replies[1]["status"], 200);
    assert_eq!(
        (echo["method"].as_str(), echo["body"].as_str()),
        (Some("POST"), Some("from aioquic"))
    );
    assert_eq!(
        (&replies[2]["status"], &replies[2]["body_length"]),
        (&431.into(), &0.into()),
        "field section over the advertised limit: h3's own bare 431"
    );
}
