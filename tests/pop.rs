//! End-to-end tests of `portico pop`: real processes, real TLS, the real QUIC
//! backbone with certificates from `portico certs`, HTTP/1.1 and HTTP/2
//! clients, the demo backend behind the origin.
//!
//! client → PoP (edge APIs) → backbone → origin → demo backend.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tempfile::TempDir;

/// Bearer token of every node's admin listener.
const ADMIN_TOKEN: &str = "admin-token";

/// A PoP's file with an admin listener (`GET /config`).
fn pop_with_admin(dir: &Path, id: &str, backbone: SocketAddr) -> String {
    let admin = format!("\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n");
    pop_config(dir, id, backbone, "echo") + &admin
}

/// The origin's file: `echo` (edge) and `inside` (regional), both proxying
/// to the demo backend; `extra` goes into `echo`'s routes.
fn origin_config(dir: &Path, backend: SocketAddr, backbone_port: u16, extra: &str) -> String {
    let certs = dir.join("certs");
    format!(
        r#"
[node]
id = "origin-a"
region = "local"

[[listeners]]
address = "127.0.0.1:0"
default_api = "inside"
certificates = [{{ cert = "{public}.pem", key = "{public}.key" }}]

[limits]
max_body_bytes = 104857600

[admin]
address = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"

[backbone]
listen = "127.0.0.1:{backbone_port}"
ca = "{certs}/ca.pem"
cert = "{certs}/origin-a.pem"
key = "{certs}/origin-a.key"

[[apis]]
name = "echo"
endpoint = "edge"
hosts = ["echo.test"]
[[apis.routes]]
method = "ANY"
path = "/{{proxy+}}"
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/{{proxy}}"
{extra}
[[apis.stages]]
name = "prod"
variables = {{ backend = "{backend}" }}

[[apis]]
name = "inside"
endpoint = "regional"
hosts = ["inside.test"]
[[apis.routes]]
method = "ANY"
path = "/{{proxy+}}"
[apis.routes.integration]
type = "http_proxy"
uri = "http://${{stageVariables.backend}}/{{proxy}}"
[[apis.stages]]
name = "prod"
variables = {{ backend = "{backend}" }}
"#,
        public = dir.join("public").display(),
        certs = certs.display(),
    )
}

struct Fixture {
    dir: TempDir,
    backend: SocketAddr,
    _backend_proc: Proc,
    origin: Proc,
    origin_log: PathBuf,
    backbone: SocketAddr,
    pop: Proc,
    pop_log: PathBuf,
    cert: TestCert,
}

impl Fixture {
    fn start() -> Fixture {
        Self::start_with("")
    }

    /// `extra` is added to the `echo` API's routes.
    fn start_with(extra: &str) -> Fixture {
        let dir = TempDir::new().unwrap();
        make_certs(dir.path(), "origin-a,pop-a,pop-b");
        let cert = test_cert(dir.path(), "public", &["localhost", "127.0.0.1"]);
        let (backend_proc, backend) = backend();
        let text = origin_config(dir.path(), backend, 0, extra);
        let (origin, origin_log) = node(dir.path(), "origin", "origin", &text);
        let backbone = origin.addrs("backbone")[0];
        let (pop, pop_log) = node(
            dir.path(),
            "pop",
            "pop-a",
            &pop_with_admin(dir.path(), "pop-a", backbone),
        );
        Fixture {
            dir,
            backend,
            _backend_proc: backend_proc,
            origin,
            origin_log,
            backbone,
            pop,
            pop_log,
            cert,
        }
    }

    fn url(proc: &Proc, path: &str) -> String {
        format!("https://localhost:{}{path}", proc.addrs("https")[0].port())
    }

    fn pop_url(&self, path: &str) -> String {
        Self::url(&self.pop, path)
    }

    fn client(&self, h2: bool) -> HttpsClient {
        https_client(&self.cert.der, h2)
    }

    /// Waits until `pop` serves the edge API (its first snapshot arrived);
    /// on failure the panic shows the nodes' logs.
    async fn wait_served(&self, pop: &Proc) {
        let client = self.client(false);
        let url = Self::url(pop, "/prod/ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Err(String::new());
        while Instant::now() < deadline {
            last = try_get(&client, &url).await.map(|r| r.status);
            if last == Ok(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        panic!(
            "{url} not served: {last:?}\n--- PoP log:\n{}\n--- origin log:\n{}",
            log(&self.pop_log),
            log(&self.origin_log)
        );
    }
}

/// A GET that reports failures instead of panicking (links may be down).
async fn try_get(client: &HttpsClient, url: &str) -> Result<Reply, String> {
    let req = Request::get(url).body(full(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        version: parts.version,
    })
}

fn vias(reply: &Reply) -> String {
    let all: Vec<&str> = reply
        .headers
        .get_all("via")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    all.join(", ")
}

#[tokio::test]
async fn client_pop_origin_backend_over_http1_and_http2() {
    let f = Fixture::start();
    f.wait_served(&f.pop).await;
    for (h2, version) in [
        (false, http::Version::HTTP_11),
        (true, http::Version::HTTP_2),
    ] {
        let body = Bytes::from(vec![b'q'; 100_000]);
        let req = Request::post(f.pop_url("/prod/items/7?x=1"))
            .body(full(body))
            .unwrap();
        let reply = send(&f.client(h2), req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.version, version);
        let json = reply.json();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/items/7");
        assert_eq!(json["query"], "x=1");
        assert_eq!(json["body_length"], 100_000);
        // What the client addressed, port included, over either version
        // (HTTP/2 names it in :authority, which the PoP passes on whole).
        let port = f.pop.addrs("https")[0].port().to_string();
        assert_eq!(json["headers"]["x-forwarded-host"], "localhost", "{h2}");
        assert_eq!(json["headers"]["x-forwarded-port"], port.as_str(), "{h2}");
        let via = vias(&reply);
        assert!(
            via.contains("origin-a") && via.ends_with("1.1 pop-a"),
            "{via}"
        );
    }
}

/// An edge API's CORS is the PoP's: it answers the preflight itself (the
/// request never crosses the backbone) and puts the headers the
/// configuration gives a request's `Origin` on the origin's response.
#[tokio::test]
async fn the_pop_answers_cors_preflights_and_decorates_responses() {
    let cors = "[apis.cors]\nallow_origins = [\"https://app.test\"]\nallow_methods = [\"GET\", \"PUT\"]\nallow_headers = [\"*\"]\nexpose_headers = [\"x-request-id\"]\nmax_age_seconds = 600\nallow_credentials = true\n";
    let f = Fixture::start_with(cors);
    f.wait_served(&f.pop).await;
    for h2 in [false, true] {
        let client = f.client(h2);
        let preflight = Request::options(f.pop_url("/prod/items/7"))
            .header("origin", "https://app.test")
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "content-type, x-trace")
            .body(full(""))
            .unwrap();
        let reply = send(&client, preflight).await;
        assert_eq!(reply.status, 204, "h2 {h2}: {}", reply.text());
        assert!(reply.body.is_empty());
        let h = &reply.headers;
        assert_eq!(h["access-control-allow-origin"], "https://app.test");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-trace");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(vias(&reply), "1.1 pop-a", "answered at the PoP");
        // The request itself goes to the backend; its answer is decorated.
        let get = Request::get(f.pop_url("/prod/items/7"))
            .header("origin", "https://app.test")
            .body(full(""))
            .unwrap();
        let reply = send(&client, get).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["method"], "GET");
        let h = &reply.headers;
        assert_eq!(h["access-control-allow-origin"], "https://app.test");
        assert_eq!(h["access-control-expose-headers"], "x-request-id");
        assert_eq!(h["vary"], "Origin");
        assert!(vias(&reply).contains("origin-a"));
        // Another origin is told nothing, preflight or not.
        let other = Request::options(f.pop_url("/prod/items/7"))
            .header("origin", "https://evil.test")
            .header("access-control-request-method", "PUT")
            .body(full(""))
            .unwrap();
        let reply = send(&client, other).await;
        assert_eq!(reply.status, 204);
        assert!(!reply.headers.contains_key("access-control-allow-origin"));
        assert!(!reply.headers.contains_key("access-control-allow-methods"));
        let get = Request::get(f.pop_url("/prod/items/7"))
            .header("origin", "https://evil.test")
            .body(full(""))
            .unwrap();
        let reply = send(&client, get).await;
        assert_eq!(reply.status, 200);
        assert!(!reply.headers.contains_key("access-control-allow-origin"));
    }
    // A plain OPTIONS (no Origin) is an ordinary request: the backend's.
    let plain = Request::options(f.pop_url("/prod/items/7"))
        .body(full(""))
        .unwrap();
    let reply = send(&f.client(false), plain).await;
    assert_eq!(reply.json()["method"], "OPTIONS");
}

#[tokio::test]
async fn a_pop_sent_sighup_logs_it_and_keeps_serving() {
    let f = Fixture::start();
    f.wait_served(&f.pop).await;
    // By default SIGHUP ends a process; a PoP's APIs come from its origins,
    // so it reads its listeners' certificates again and serves on.
    f.pop.signal("HUP");
    logged(&f.pop_log, "listener certificates reloaded").await;
    let reply = get(&f.client(false), &f.pop_url("/prod/items/1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn regional_apis_are_404_at_the_pop_and_served_at_the_origin() {
    let f = Fixture::start();
    f.wait_served(&f.pop).await;
    let req = || {
        Request::get("https://localhost/prod/x")
            .header("host", "inside.test")
            .body(full(""))
            .unwrap()
    };
    let mut at_pop = req();
    *at_pop.uri_mut() = f.pop_url("/prod/x").parse().unwrap();
    let reply = send(&f.client(false), at_pop).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), r#"{"message":"Not Found"}"#);
    let mut at_origin = req();
    *at_origin.uri_mut() = Fixture::url(&f.origin, "/prod/x").parse().unwrap();
    assert_eq!(send(&f.client(false), at_origin).await.status, 200);
    // And the edge API is not served on the origin's public listener.
    let edge = Request::get(Fixture::url(&f.origin, "/prod/x"))
        .header("host", "echo.test")
        .body(full(""))
        .unwrap();
    assert_error(&send(&f.client(false), edge).await, 404, "Not Found");
}

/// An HTTPS client whose connections come from 127.0.0.2, so the backend
/// can tell the client's address from the PoP's (127.0.0.1).
fn client_from(ip: &str, root: &rustls_pki_types::CertificateDer<'static>) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_local_address(Some(ip.parse().unwrap()));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(std::slice::from_ref(root)))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

#[tokio::test]
async fn client_address_request_id_and_via_end_to_end() {
    let f = Fixture::start();
    f.wait_served(&f.pop).await;
    let client = client_from("127.0.0.2", &f.cert.der);
    let req = Request::get(f.pop_url("/prod/meta"))
        .header("x-request-id", "e2e-rid-1")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(full(""))
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.2");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-request-id"], "e2e-rid-1");
    // Each gateway on the way names itself to the backend too.
    assert_eq!(headers["via"], "1.1 pop-a, 1.1 origin-a");
    assert!(
        headers["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0af7")
    );
    assert_eq!(reply.headers["x-request-id"], "e2e-rid-1");
    assert!(vias(&reply).ends_with("1.1 pop-a"), "{}", vias(&reply));
    // The same id in the PoP's and the origin's access logs.
    let pop_line = access_line(&f.pop_log, "e2e-rid-1").await;
    assert_eq!(pop_line["node"], "pop-a");
    assert_eq!(pop_line["api"], "echo");
    let origin_line = access_line(&f.origin_log, "e2e-rid-1").await;
    assert_eq!(origin_line["node"], "origin-a");
    assert_eq!(origin_line["protocol"], "backbone");
    // Without a client id the PoP makes one, and everyone sees it.
    let reply = send(
        &client,
        Request::get(f.pop_url("/prod/meta"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(reply.json()["headers"]["x-request-id"], id.as_str());
    assert_eq!(
        access_line(&f.origin_log, &id).await["request_id"],
        id.as_str()
    );
}

#[tokio::test]
async fn streams_50_mb_each_way_with_bounded_pop_memory() {
    let f = Fixture::start();
    f.wait_served(&f.pop).await;
    const SIZE: u64 = 50 * 1024 * 1024;
    let resp = f
        .client(true)
        .request(
            Request::get(f.pop_url(&format!("/prod/bytes/{SIZE}")))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut received, mut ok) = (0u64, true);
    while let Some(frame) = body.frame().await {
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
    let chunks = futures_util::stream::iter((0..200).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'z'; 256 * 1024])))
    }));
    let body = BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks));
    let reply = send(
        &f.client(false),
        Request::post(f.pop_url("/prod/upload")).body(body).unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["body_length"], SIZE);
    // Neither body was held whole at the PoP.
    let peak = f.pop.peak_rss();
    eprintln!("PoP peak RSS after 50 MB each way: {} KiB", peak / 1024);
    assert!(peak < 40 * 1024 * 1024, "PoP peak RSS {peak} bytes");
}

/// A route's timeout runs from the end of the request body at the PoP and
/// at the origin alike: an upload slower than the timeout goes through
/// while it keeps moving (before, both nodes counted the upload).
#[tokio::test]
async fn an_upload_slower_than_the_route_timeout_goes_through_a_pop() {
    let route = "[[apis.routes]]\nmethod = \"POST\"\npath = \"/upload/{proxy+}\"\ntimeout_ms = 1000\nintegration = { type = \"http_proxy\", uri = \"http://${stageVariables.backend}/{proxy}\" }\n";
    let f = Fixture::start_with(route);
    f.wait_served(&f.pop).await;
    for h2 in [false, true] {
        // 2.4 s of upload, past the route's 1 s.
        let body = trickled(4, Duration::from_millis(600), false);
        let req = Request::post(f.pop_url("/prod/upload/x"))
            .body(body)
            .unwrap();
        let reply = send(&f.client(h2), req).await;
        assert_eq!(reply.status, 200, "h2 {h2}: {}", reply.text());
        assert_eq!(reply.json()["body_length"], 4096);
    }
}

#[tokio::test]
async fn a_client_leaving_the_pop_cancels_the_backend_request_at_the_origin() {
    use tokio::io::AsyncReadExt;
    // A backend that never answers and reports when its connection closes.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = hang.accept().await.unwrap();
        let _ = accepted_tx.send(());
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = closed_tx.send(());
    });
    let route = format!(
        "[[apis.routes]]\nmethod = \"GET\"\npath = \"/hang\"\nintegration = {{ type = \"http_proxy\", uri = \"http://{hang_addr}/\" }}\n"
    );
    let f = Fixture::start_with(&route);
    f.wait_served(&f.pop).await;
    let client = f.client(true);
    let req = Request::get(f.pop_url("/prod/hang"))
        .body(full(""))
        .unwrap();
    let pending = tokio::spawn(async move { client.request(req).await.map(|r| r.status()) });
    tokio::time::timeout(Duration::from_secs(30), accepted_rx)
        .await
        .expect("the request reached the backend")
        .unwrap();
    // The client gives up: HTTP/2 RST_STREAM to the PoP, a stream reset on
    // the backbone, the origin drops the backend request.
    pending.abort();
    tokio::time::timeout(Duration::from_secs(20), closed_rx)
        .await
        .expect("backend connection was not closed after the client left")
        .unwrap();
}

/// Requests in a loop until told to stop; counts successes as it goes and
/// returns every outcome.
fn background_traffic(
    client: HttpsClient,
    url: String,
    stop: Arc<tokio::sync::Notify>,
    ok: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<Result<u16, String>>> {
    tokio::spawn(async move {
        let mut outcomes = Vec::new();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => return outcomes,
                r = try_get(&client, &url) => {
                    let status = r.map(|r| r.status);
                    if status == Ok(200) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    outcomes.push(status);
                }
            }
        }
    })
}

#[tokio::test]
async fn origin_killed_mid_traffic_503_then_served_again_without_restarting_the_pop() {
    let mut f = Fixture::start();
    f.wait_served(&f.pop).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let ok = Arc::new(AtomicUsize::new(0));
    let url = f.pop_url("/prod/delay/20");
    let traffic = background_traffic(f.client(true), url, Arc::clone(&stop), Arc::clone(&ok));
    eventually(30, || async {
        (ok.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    // Kill the origin outright: no GoAway, no close; the PoP finds out from
    // QUIC's idle timeout.
    let _ = f.origin.child.kill();
    let _ = f.origin.child.wait();
    // Its backbone port is held until the origin starts again on it, so that
    // no other test's endpoint can take it meanwhile.
    let held = std::net::UdpSocket::bind(f.backbone).unwrap();
    let client = f.client(false);
    let url = f.pop_url("/prod/down");
    let reply = eventually(60, || async {
        try_get(&client, &url)
            .await
            .ok()
            .filter(|r| r.status == 503)
    })
    .await;
    assert_eq!(reply.text(), r#"{"message":"Service Unavailable"}"#);
    // Down means at once, not after a timeout (the idle timeout here is
    // 4 s, a handshake's 5 s).
    let started = Instant::now();
    assert_eq!(try_get(&client, &url).await.unwrap().status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Restart the origin on the same backbone port; the PoP reconnects.
    let text = origin_config(f.dir.path(), f.backend, f.backbone.port(), "");
    drop(held);
    let (origin, _log) = node(f.dir.path(), "origin", "origin-2", &text);
    assert_eq!(origin.addrs("backbone")[0], f.backbone);
    f.origin = origin;
    eventually(60, || async {
        (try_get(&client, &url).await.ok()?.status == 200).then_some(())
    })
    .await;
    stop.notify_one();
    let outcomes = traffic.await.unwrap();
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(200 | 502 | 503)),
            "unexpected outcome {outcome:?} in {outcomes:?}"
        );
    }
}

/// An origin told to stop (SIGTERM) says GoAway and lets the requests in
/// flight on its links finish before it closes them.
#[tokio::test]
async fn an_origin_stopping_finishes_the_requests_in_flight_through_a_pop() {
    // A backend that holds every request until the origin has been told
    // to stop, so that they are in flight at the origin when it is.
    let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held_addr = held.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<()>(8);
    let release = Arc::new(tokio::sync::Notify::new());
    let release_all = Arc::clone(&release);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = held.accept().await {
            let (arrived, release) = (arrived_tx.clone(), Arc::clone(&release_all));
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let released = release.notified();
                let _ = arrived.send(()).await;
                released.await;
                let reply =
                    b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld";
                let _ = conn.write_all(reply).await;
            });
        }
    });
    let extra = format!(
        "[[apis.routes]]\nmethod = \"GET\"\npath = \"/held\"\n\
         integration = {{ type = \"http_proxy\", uri = \"http://{held_addr}/held\" }}\n"
    );
    let f = Fixture::start_with(&extra);
    f.wait_served(&f.pop).await;
    let client = f.client(true);
    let url = f.pop_url("/prod/held");
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { try_get(&client, &url).await })
        })
        .collect();
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(30), arrived.recv())
            .await
            .expect("every request reached the backend");
    }
    f.origin.signal("TERM");
    // The PoP heard the origin's GoAway: the requests are in flight on a
    // draining link. Then the backend answers.
    eventually(30, || async {
        let log = std::fs::read_to_string(&f.pop_log).unwrap_or_default();
        log.contains("origin going away").then_some(())
    })
    .await;
    release.notify_waiters();
    for request in in_flight {
        let reply = request.await.unwrap().expect("an answer");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), "held");
    }
}

#[tokio::test]
async fn a_configuration_change_reaches_two_pops() {
    let f = Fixture::start();
    let text = pop_config(f.dir.path(), "pop-b", f.backbone, "echo");
    let (pop_b, _log) = node(f.dir.path(), "pop", "pop-b", &text);
    f.wait_served(&f.pop).await;
    f.wait_served(&pop_b).await;
    let client = f.client(true);
    for pop in [&f.pop, &pop_b] {
        let reply = send(
            &client,
            Request::get(Fixture::url(pop, "/prod/version"))
                .body(full(""))
                .unwrap(),
        )
        .await;
        assert_eq!(
            reply.json()["path"],
            "/version",
            "served by the backend before the change"
        );
    }
    // Edit the origin's file and reload it.
    let route = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/version\"\nintegration = { type = \"mock\", status = 200, body = \"v2\" }\n";
    let text = origin_config(f.dir.path(), f.backend, f.backbone.port(), route);
    std::fs::write(f.dir.path().join("origin.toml"), text).unwrap();
    let changed = Instant::now();
    f.origin.signal("HUP");
    for pop in [&f.pop, &pop_b] {
        let url = Fixture::url(pop, "/prod/version");
        eventually(20, || async {
            let reply = try_get(&client, &url).await.ok()?;
            (reply.text() == "v2").then_some(())
        })
        .await;
    }
    let took = changed.elapsed();
    eprintln!("configuration change reached both PoPs in {took:?}");
    // The issue's goal is 1 s (the test prints the time taken: milliseconds
    // as a rule); allow for a loaded test machine.
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// A reload that changes the origin's `[node] region` takes effect at its
/// next start, as the rest of `[node]` does: the backbone keeps the region
/// the origin started in, so the reloaded APIs stay homed there and the PoP
/// serves them (homed in the new region, every edge request got 503: the
/// PoP had no link to it).
#[tokio::test]
async fn a_reload_that_changes_the_origins_region_keeps_its_edge_apis_served() {
    let f = Fixture::start();
    f.wait_served(&f.pop).await;
    let route = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/version\"\nintegration = { type = \"mock\", status = 200, body = \"v2\" }\n";
    let text = origin_config(f.dir.path(), f.backend, f.backbone.port(), route).replacen(
        "region = \"local\"",
        "region = \"elsewhere\"",
        1,
    );
    std::fs::write(f.dir.path().join("origin.toml"), text).unwrap();
    f.origin.signal("HUP");
    logged(&f.origin_log, "take effect at the next start").await;
    let client = f.client(false);
    let url = f.pop_url("/prod/version");
    eventually(20, || async {
        let reply = try_get(&client, &url).await.ok()?;
        (reply.text() == "v2").then_some(())
    })
    .await;
    for _ in 0..5 {
        let reply = try_get(&client, &f.pop_url("/prod/ready")).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
}

/// `GET /config` on a node's admin listener: status 200 and its JSON.
async fn config_of(client: &HttpsClient, node: &Proc) -> serde_json::Value {
    let url = format!("http://{}/config", node.addrs("admin")[0]);
    let req = Request::get(url)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(full(""))
        .unwrap();
    let reply = send(client, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.json()
}

/// The one origin entry of a PoP's `GET /config`.
async fn origin_entry(client: &HttpsClient, pop: &Proc) -> serde_json::Value {
    let config = config_of(client, pop).await;
    let origins = config["origins"]
        .as_array()
        .expect("a PoP lists its origins");
    assert_eq!(origins.len(), 1, "{config}");
    origins[0].clone()
}

/// The version, hash and counters a PoP reports for its origin.
fn counters(entry: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| {
        entry[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {entry}"))
    };
    (n("snapshots"), n("deltas"), n("refused"), n("requests"))
}

#[tokio::test]
async fn a_reload_reaches_two_pops_as_a_delta_and_a_reconnect_gets_a_snapshot() {
    let mut f = Fixture::start();
    let text = pop_with_admin(f.dir.path(), "pop-b", f.backbone);
    let (pop_b, _log) = node(f.dir.path(), "pop", "pop-b", &text);
    f.wait_served(&f.pop).await;
    f.wait_served(&pop_b).await;
    let client = f.client(false);
    // The admin API answers only with the token, before any route.
    let url = format!("http://{}/config", f.pop.addrs("admin")[0]);
    let reply = send(&client, Request::get(&url).body(full("")).unwrap()).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (401, r#"{"message":"Unauthorized"}"#)
    );
    // Purges are the origin's: one made at a PoP would be undone by the
    // origin's cache at the next miss, and reach no other PoP.
    let purge = Request::post(format!(
        "http://{}/cache/purge/stage",
        f.pop.addrs("admin")[0]
    ))
    .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
    .body(full(r#"{"api":"items","stage":"prod"}"#))
    .unwrap();
    let reply = send(&client, purge).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (
            409,
            r#"{"message":"purges are made on the origin's admin API, which sends them to every PoP"}"#
        )
    );
    let origin = config_of(&client, &f.origin).await;
    assert!(origin.get("origins").is_none(), "{origin}");
    for pop in [&f.pop, &pop_b] {
        let entry = origin_entry(&client, pop).await;
        assert_eq!(counters(&entry), (1, 0, 0, 0), "{entry}");
        assert_eq!(entry["origin"], "origin-a");
        assert_eq!(entry["held"], serde_json::Value::Null, "{entry}");
        // The PoP runs exactly what the origin serves.
        assert_eq!(entry["version"], origin["version"]);
        assert_eq!(entry["sha256"], origin["sha256"]);
        assert_eq!(config_of(&client, pop).await["sha256"], origin["sha256"]);
    }
    // Reload the origin with one API changed (a route added to `echo`).
    let route = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/version\"\nintegration = { type = \"mock\", status = 200, body = \"v2\" }\n";
    let text = origin_config(f.dir.path(), f.backend, f.backbone.port(), route);
    std::fs::write(f.dir.path().join("origin.toml"), text).unwrap();
    let changed = Instant::now();
    f.origin.signal("HUP");
    let h2 = f.client(true);
    for pop in [&f.pop, &pop_b] {
        let url = Fixture::url(pop, "/prod/version");
        eventually(20, || async {
            let reply = try_get(&h2, &url).await.ok()?;
            (reply.text() == "v2").then_some(())
        })
        .await;
    }
    let took = changed.elapsed();
    eprintln!("a one-API delta reached both PoPs in {took:?}");
    // The goal is 1 s; allow for a loaded test machine.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let reloaded = config_of(&client, &f.origin).await;
    assert_ne!(reloaded["version"], origin["version"]);
    for pop in [&f.pop, &pop_b] {
        let entry = origin_entry(&client, pop).await;
        assert_eq!(counters(&entry), (1, 1, 0, 0), "came as a delta: {entry}");
        assert_eq!(entry["version"], reloaded["version"]);
        assert_eq!(entry["sha256"], reloaded["sha256"]);
    }
    // Log lines are written in batches: wait for both, then check no more.
    let sent = eventually(10, || async {
        let sent = std::fs::read_to_string(&f.origin_log).ok()?;
        (sent.matches("configuration delta sent").count() >= 2).then_some(sent)
    })
    .await;
    let deltas = sent.matches("configuration delta sent").count();
    assert_eq!(deltas, 2, "one delta per PoP:\n{sent}");
    // The origin restarts with one more change: the PoPs reconnect and get
    // full snapshots (a new link never starts with a delta), even though a
    // delta from what they run would have done.
    f.origin.signal("TERM");
    let _ = f.origin.child.wait();
    let route = route.replace("v2", "v3");
    let text = origin_config(f.dir.path(), f.backend, f.backbone.port(), &route);
    let (origin, _log) = node(f.dir.path(), "origin", "origin-2", &text);
    f.origin = origin;
    for pop in [&f.pop, &pop_b] {
        let url = Fixture::url(pop, "/prod/version");
        eventually(60, || async {
            let reply = try_get(&h2, &url).await.ok()?;
            (reply.text() == "v3").then_some(())
        })
        .await;
    }
    let restarted = config_of(&client, &f.origin).await;
    for pop in [&f.pop, &pop_b] {
        let entry = origin_entry(&client, pop).await;
        assert_eq!(
            counters(&entry),
            (2, 1, 0, 0),
            "a snapshot after reconnecting: {entry}"
        );
        assert_eq!(entry["sha256"], restarted["sha256"]);
    }
}

/// origin-b's file: `text` (origin-a's) under origin-b's id, certificate
/// and state directory.
fn replica(text: &str) -> String {
    text.replace("origin-a", "origin-b").replace(
        "region = \"local\"",
        "region = \"local\"\nstate_dir = \"state-b\"",
    )
}

/// A region of two origins, `origin-a` and `origin-b`, on the demo
/// backend, and a PoP (with admin) linked to both; `client` trusts the
/// PoP's public certificate and `url` is `/prod/meta` through the PoP.
struct Replicas {
    dir: TempDir,
    backend: SocketAddr,
    _backend_proc: Proc,
    origin_a: Proc,
    origin_b: Proc,
    pop: Proc,
    pop_log: PathBuf,
    client: HttpsClient,
    url: String,
}

/// [`Replicas`], with origin-b's file made from origin-a's by `file_b`.
fn replicas(file_b: impl FnOnce(&str) -> String) -> Replicas {
    let dir = TempDir::new().unwrap();
    make_certs(dir.path(), "origin-a,origin-b,pop-a");
    let cert = test_cert(dir.path(), "public", &["localhost", "127.0.0.1"]);
    let (backend_proc, backend) = backend();
    let text_a = origin_config(dir.path(), backend, 0, "");
    let (origin_a, _) = node(dir.path(), "origin", "origin", &text_a);
    let (origin_b, _) = node(dir.path(), "origin", "origin-b", &file_b(&text_a));
    let second = format!(
        "\n[[origins]]\nregion = \"local\"\naddress = \"{}\"\nserver_name = \"origin-b\"\n",
        origin_b.addrs("backbone")[0]
    );
    let pop_text = pop_with_admin(dir.path(), "pop-a", origin_a.addrs("backbone")[0]) + &second;
    let (pop, pop_log) = node(dir.path(), "pop", "pop-a", &pop_text);
    let client = https_client(&cert.der, false);
    let url = format!(
        "https://localhost:{}/prod/meta",
        pop.addrs("https")[0].port()
    );
    Replicas {
        dir,
        backend,
        _backend_proc: backend_proc,
        origin_a,
        origin_b,
        pop,
        pop_log,
        client,
        url,
    }
}

/// Which of the two replicas served `reply`, from its `Via`.
fn origin_of(reply: &Reply) -> Option<&'static str> {
    let via = vias(reply);
    ["origin-a", "origin-b"]
        .into_iter()
        .find(|o| via.contains(o))
}

/// Waits until both links are up: `tries` requests, one at a time, reach
/// both replicas.
async fn both_replicas_answer(client: &HttpsClient, url: &str, tries: usize) {
    eventually(60, || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..tries {
            let reply = try_get(client, url).await.ok()?;
            (reply.status == 200).then_some(())?;
            seen.extend(origin_of(&reply));
        }
        (seen.len() == 2).then_some(())
    })
    .await;
}

/// A region's replicas share its requests by how many each has in flight:
/// one whose backend answers slowly gets fewer, where turns would give it half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_fewer_of_the_regions_requests() {
    // origin-b: the same API, but its backend takes 600 ms (the demo
    // backend's `/delay/600/...`). The PoP logs that the replicas differ.
    let Replicas { client, url, .. } = &replicas(|text_a| {
        let text_b = replica(text_a).replace("}/{proxy}", "}/delay/600/{proxy}");
        assert!(text_b.contains("/delay/600/"), "{text_b}");
        text_b
    });
    // Both links up: one request at a time, they take turns.
    both_replicas_answer(client, url, 4).await;
    // Two at a time: while origin-b holds one for 600 ms, origin-a has
    // fewer in flight and takes the next.
    const TOTAL: usize = 30;
    use futures_util::StreamExt;
    let requests = (0..TOTAL).map(|_| try_get(client, url));
    let replies: Vec<Reply> = futures_util::stream::iter(requests)
        .buffer_unordered(2)
        .map(|r| r.expect("request through the PoP"))
        .collect()
        .await;
    let mut to_b = 0;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        match origin_of(reply) {
            Some("origin-b") => to_b += 1,
            Some(_) => {}
            None => panic!("no origin in Via: {}", vias(reply)),
        }
    }
    assert!(
        to_b * 3 < TOTAL,
        "the slow replica got {to_b} of {TOTAL} requests (turns alone give it half)"
    );
}

/// Two origins of one region are replicas: the PoP takes the region's
/// definitions from either without a conflict, spreads the region's
/// requests over both links, and follows a reload of both.
#[tokio::test]
async fn two_origins_of_one_region_serve_as_replicas_and_their_reload_reaches_the_pop() {
    let Replicas {
        dir,
        backend,
        origin_a,
        origin_b,
        pop,
        pop_log,
        client,
        url,
        ..
    } = &replicas(replica);
    let backend = *backend;
    // Both links up: requests reach both origins, round robin.
    both_replicas_answer(client, url, 8).await;
    let config = config_of(client, pop).await;
    let origin = config_of(client, origin_a).await;
    assert_eq!(config["sha256"], origin["sha256"], "{config}");
    let entries = config["origins"].as_array().expect("origins").clone();
    assert_eq!(entries.len(), 2, "{config}");
    for entry in &entries {
        assert_eq!(entry["sha256"], origin["sha256"], "{entry}");
        assert_eq!(counters(entry).2, 0, "nothing refused: {entry}");
    }
    // Reload both replicas with one route added: the PoP serves it.
    let route = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/version\"\nintegration = { type = \"mock\", status = 200, body = \"v2\" }\n";
    let text_a = origin_config(
        dir.path(),
        backend,
        origin_a.addrs("backbone")[0].port(),
        route,
    );
    let text_b = replica(&origin_config(
        dir.path(),
        backend,
        origin_b.addrs("backbone")[0].port(),
        route,
    ));
    std::fs::write(dir.path().join("origin.toml"), text_a).unwrap();
    std::fs::write(dir.path().join("origin-b.toml"), text_b).unwrap();
    origin_a.signal("HUP");
    origin_b.signal("HUP");
    let reloaded = eventually(20, || async {
        let origin = config_of(client, origin_a).await;
        (origin["sha256"] != config["sha256"]).then_some(origin)
    })
    .await;
    eventually(20, || async {
        let served = config_of(client, pop).await;
        let entries = served["origins"].as_array()?.clone();
        let all = entries.iter().all(|e| e["sha256"] == reloaded["sha256"]);
        (served["sha256"] == reloaded["sha256"] && all).then_some(())
    })
    .await;
    let version = url.replace("/meta", "/version");
    for _ in 0..4 {
        let reply = try_get(client, &version).await.unwrap();
        assert_eq!(reply.text(), "v2", "{}", vias(&reply));
    }
    let log = std::fs::read_to_string(pop_log).unwrap_or_default();
    assert!(!log.contains("duplicate API"), "{log}");
}
