//! The TCP listener against raw TLS clients over loopback: connections that
//! send nothing after their handshake, and HTTP/2 connections left idle, are
//! closed; a response still streaming is not cut off by that. Behind a load
//! balancer (`proxy_protocol`), the PROXY header names the client for the
//! handler and for its connection cap; connections without a valid header,
//! or from a peer not allowed to send one, are closed before TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use portico_gateway::{Body, ConnInfo};
use portico_net::proxy::ProxyProtocol;
use portico_net::{Handler, HttpLimits, TcpServer};
use ppp::v2;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The idle limit of the listeners under test.
const IDLE: Duration = Duration::from_millis(300);

/// `/addresses` answers `CLIENT LOCAL`, the connection's addresses;
/// `/stream` answers a head at once and its one body chunk 4 idle limits
/// later; `/big` answers 64 MiB as fast as it is taken, `/whole` 64 MiB in
/// one chunk; `/cookie` the request's cookie fields; anything else gets an
/// empty 200. Counts the connections refused for their client's cap.
#[derive(Default)]
struct Streams {
    refused: AtomicUsize,
    /// Requests to `/hang` (which are never answered).
    hung: AtomicUsize,
}

impl Handler for Streams {
    async fn call(&self, req: Request<Body>, conn: Arc<ConnInfo>) -> Response<Body> {
        if req.uri().path() == "/hang" {
            self.hung.fetch_add(1, Ordering::SeqCst);
            return std::future::pending().await;
        }
        if req.uri().path() == "/addresses" {
            let text = format!("{} {}", conn.client_addr, conn.local_addr);
            return Response::new(portico_gateway::body::full(text));
        }
        if req.uri().path() == "/whole" {
            // As a cache hit comes: one chunk, which hyper may hold whole
            // after the body has ended.
            let whole = Bytes::from(vec![b'x'; 64 << 20]);
            return Response::new(portico_gateway::body::full(whole));
        }
        if req.uri().path() == "/big" {
            // As a backend's body comes: in chunks.
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            let chunks = futures_util::stream::iter((0..1024).map(move |_| {
                Ok::<_, portico_gateway::BoxError>(http_body::Frame::data(chunk.clone()))
            }));
            return Response::new(StreamBody::new(chunks).boxed_unsync());
        }
        if req.uri().path() == "/cookie" {
            // Each `cookie` field the handler got, between brackets.
            let fields = req.headers().get_all("cookie").iter();
            let fields: String = fields
                .map(|v| format!("[{}]", v.to_str().unwrap_or("?")))
                .collect();
            return Response::new(portico_gateway::body::full(Bytes::from(fields)));
        }
        if req.uri().path() != "/stream" {
            return Response::new(portico_gateway::body::empty());
        }
        let chunk = futures_util::stream::once(async {
            tokio::time::sleep(IDLE * 4).await;
            Ok::<_, portico_gateway::BoxError>(http_body::Frame::data(Bytes::from_static(b"late")))
        });
        Response::new(StreamBody::new(chunk).boxed_unsync())
    }

    fn connection_refused(&self) {
        self.refused.fetch_add(1, Ordering::SeqCst);
    }
}

struct Server {
    addr: std::net::SocketAddr,
    cert: CertificateDer<'static>,
    handler: Arc<Streams>,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Server {
    start_with(HttpLimits::default().max_connections, IDLE).await
}

/// A listener that holds at most `max_connections` connections at once and
/// closes them after `idle`.
async fn start_with(max_connections: usize, idle: Duration) -> Server {
    start_limits(HttpLimits {
        header_read_timeout: idle,
        max_connections,
        ..HttpLimits::default()
    })
    .await
}

/// A listener with `limits`.
async fn start_limits(limits: HttpLimits) -> Server {
    start_server(limits, None).await
}

/// A listener with `limits`, behind a load balancer when `proxy` is given.
async fn start_server(limits: HttpLimits, proxy: Option<ProxyProtocol>) -> Server {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Streams::default());
    let server = TcpServer {
        listener,
        tls: Some(Arc::new(tls)),
        default_api: None,
        limits,
        handler: Arc::clone(&handler),
        alt_svc: None,
        proxy: proxy.map(Arc::new),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Server {
        addr,
        cert,
        handler,
        _stop: stop,
    }
}

/// A TLS connection offering `alpn`, handshake done.
async fn connect(server: &Server, alpn: &[u8]) -> TlsStream<TcpStream> {
    let tls = handshake(server, alpn).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

/// A TCP connection and the TLS handshake over it, not awaited yet.
fn handshake(
    server: &Server,
    alpn: &[u8],
) -> impl std::future::Future<Output = TlsStream<TcpStream>> + use<> {
    let handshake = try_handshake(server, alpn);
    async move { handshake.await.unwrap() }
}

/// [`handshake`], which may fail.
fn try_handshake(
    server: &Server,
    alpn: &[u8],
) -> impl std::future::Future<Output = std::io::Result<TlsStream<TcpStream>>> + use<> {
    let connector = connector(server, alpn);
    let addr = server.addr;
    async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await
    }
}

/// A TLS client trusting `server`'s certificate, offering `alpn`.
fn connector(server: &Server, alpn: &[u8]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Reads until the server closes (or resets) the connection; everything read.
/// Panics if it is still open after 20 s: many times the idle limit.
async fn read_until_closed(tls: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the server closed the idle connection");
    got
}

/// Connects with `alpn`, writes `bytes` and reads until the server closes.
async fn exchange(server: &Server, alpn: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut tls = connect(server, alpn).await;
    tls.write_all(bytes).await.unwrap();
    read_until_closed(&mut tls).await
}

#[tokio::test]
async fn a_connection_that_sends_nothing_after_its_handshake_is_closed() {
    let server = start().await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut tls = connect(&server, alpn).await;
        assert!(read_until_closed(&mut tls).await.is_empty());
    }
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let server = start().await;
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let got = String::from_utf8(exchange(&server, b"http/1.1", request).await).unwrap();
    // Answered, then closed while waiting for the next head.
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("content-length: 0\r\n"), "{got}");
}

#[tokio::test]
async fn a_request_head_trickled_in_is_cut_off() {
    let server = start().await;
    let mut tls = connect(&server, b"http/1.1").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // A header byte every tenth of the idle limit, never the blank line.
    let trickle = async {
        loop {
            tokio::time::sleep(IDLE / 10).await;
            if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), trickle)
        .await
        .expect("the server closed the connection whose head never came");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let server = start().await;
    // The client preface and an empty SETTINGS frame, then nothing.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let got = exchange(&server, b"h2", preface).await;
    // The server's SETTINGS frame came first: HTTP/2 was served, then closed.
    assert_eq!(got.get(3), Some(&4), "{got:?}");
}

/// A connection still busy when the drain timeout passes is closed then,
/// also on the caller's runtime (which goes on after the listener).
#[tokio::test]
async fn a_connection_left_after_the_drain_timeout_is_closed() {
    let server = start_limits(HttpLimits {
        drain_timeout: Duration::from_millis(200),
        ..HttpLimits::default()
    })
    .await;
    let mut tls = connect(&server, b"http/1.1").await;
    tls.write_all(b"GET /hang HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.handler.hung.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(server._stop);
    let closed = tokio::time::timeout(Duration::from_secs(20), read_until_closed(&mut tls)).await;
    assert!(closed.is_ok(), "the connection outlived the drain");
}

#[tokio::test]
async fn a_response_still_streaming_is_not_cut_off_as_idle() {
    let server = start().await;
    let request = b"GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let got = String::from_utf8(exchange(&server, b"http/1.1", request).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("4\r\nlate\r\n0\r\n\r\n"), "{got}");
}

#[tokio::test]
async fn a_listener_at_its_connection_limit_accepts_the_next_when_one_closes() {
    // Idle connections are not closed during the test: only `first` frees
    // its place.
    let server = start_with(2, Duration::from_secs(60)).await;
    let first = connect(&server, b"http/1.1").await;
    let _second = connect(&server, b"http/1.1").await;
    // The third waits in the kernel's backlog: its handshake is not answered.
    let third = tokio::spawn(handshake(&server, b"http/1.1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served at once"
    );
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("served once the first closed")
        .unwrap();
    assert_eq!(third.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

/// Sends a keep-alive GET / on `tls` and reads its answer's head.
async fn get_head(tls: &mut TlsStream<TcpStream>) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await;
        match read.expect("an answer") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// One client address holds at most `max_connections_per_client` of a
/// listener's connections: past it a connection is closed as soon as it is
/// accepted, before its TLS handshake (the handler is told), and one that
/// closes frees its place.
#[tokio::test]
async fn a_client_past_its_connection_cap_is_closed_before_its_handshake() {
    let server = start_limits(HttpLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections_per_client: 2,
        ..HttpLimits::default()
    })
    .await;
    let mut first = connect(&server, b"http/1.1").await;
    let mut second = connect(&server, b"h2").await;
    let third = tokio::time::timeout(Duration::from_secs(20), try_handshake(&server, b"http/1.1"))
        .await
        .expect("the third connection was closed");
    assert!(third.is_err(), "a third connection got its TLS handshake");
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 1);
    // Those it holds are served.
    assert!(get_head(&mut first).await.starts_with("HTTP/1.1 200"));
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    second.write_all(preface).await.unwrap();
    let mut frame = [0u8; 9];
    second.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[3], 4, "the server's SETTINGS");
    // A connection that closes frees its place (once the server has seen
    // it close).
    drop(first);
    let mut next = None;
    for _ in 0..100 {
        if let Ok(tls) = try_handshake(&server, b"http/1.1").await {
            next = Some(tls);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut next = next.expect("no connection served after the first closed");
    assert!(get_head(&mut next).await.starts_with("HTTP/1.1 200"));
}

/// A client that stops reading a response holds its connection (and its
/// place under `max_connections`) only for the send timeout, over HTTP/1.1
/// and HTTP/2 alike.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let server = start_limits(HttpLimits {
        max_connections: 1,
        send_timeout: Duration::from_millis(500),
        header_read_timeout: Duration::from_secs(60),
        ..HttpLimits::default()
    })
    .await;
    // HTTP/2: the client preface, an empty SETTINGS frame and a HEADERS
    // frame for GET /big; then the client reads nothing, so the stream's
    // window (64 KiB) and the socket's buffers fill up.
    let h2_get = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"[..],
        // HEADERS, END_STREAM | END_HEADERS, stream 1: HPACK :method GET
        // (0x82), :scheme https (0x87), :path /big (literal, indexed name 4),
        // :authority localhost (literal, indexed name 1).
        b"\0\0\x13\x01\x05\0\0\0\x01\x82\x87\x44\x04/big\x41\x09localhost",
    ]
    .concat();
    let h1_get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();
    for (alpn, get) in [
        (&b"http/1.1"[..], h1_get("/big")),
        (b"http/1.1", h1_get("/whole")),
        (b"h2", h2_get),
    ] {
        let mut stalled = connect(&server, alpn).await;
        stalled.write_all(&get).await.unwrap();
        // The response is under way: a good part of the 64 KiB a stream's
        // window lets through comes, then the client reads no more.
        let mut got = vec![0u8; 32 * 1024];
        stalled.read_exact(&mut got).await.unwrap();
        // The only connection slot is taken until the server gives up on it.
        let mut next = tokio::time::timeout(Duration::from_secs(30), connect(&server, b"http/1.1"))
            .await
            .expect("the stalled connection was closed");
        next.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = String::from_utf8(read_until_closed(&mut next).await).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        drop(stalled);
    }
}

/// HTTP/2 clients may send each cookie as a field of its own; they reach
/// the handler as one, as HTTP/1.1 needs them (RFC 9113 §8.2.3).
#[tokio::test]
async fn http2_cookie_fields_reach_the_handler_as_one() {
    let server = start().await;
    let tls = connect(&server, b"h2").await;
    let io = hyper_util::rt::TokioIo::new(tls);
    let executor = hyper_util::rt::TokioExecutor::new();
    let (mut send, conn) = hyper::client::conn::http2::handshake(executor, io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/cookie")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "[a=1; b=2]");
}

/// A listener behind a load balancer: PROXY headers from `from` (empty:
/// any peer), at most `per_client` connections per client.
async fn start_proxied(from: &[&str], per_client: usize) -> Server {
    let limits = HttpLimits {
        max_connections_per_client: per_client,
        handshake_timeout: Duration::from_secs(20),
        ..HttpLimits::default()
    };
    let from = from.iter().map(|n| n.parse().unwrap()).collect();
    start_server(limits, Some(ProxyProtocol { from })).await
}

/// A connection that sends `header`, then its TLS handshake.
async fn connect_proxied(server: &Server, header: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
    let mut tcp = TcpStream::connect(server.addr).await?;
    tcp.write_all(header).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let handshake = connector(server, b"http/1.1").connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(20), handshake)
        .await
        .expect("the handshake ended")
}

/// The body of `GET /addresses` on `tls`.
async fn get_addresses(tls: &mut TlsStream<TcpStream>) -> String {
    tls.write_all(b"GET /addresses HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut got));
    let _ = read.await.expect("an answer");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn v2_header(client: &str, vip: &str) -> Vec<u8> {
    let (client, vip): (SocketAddr, SocketAddr) = (client.parse().unwrap(), vip.parse().unwrap());
    v2::Builder::with_addresses(
        v2::Version::Two as u8 | v2::Command::Proxy as u8,
        v2::Protocol::Stream,
        (client, vip),
    )
    .build()
    .unwrap()
}

#[tokio::test]
async fn the_header_names_the_client_and_the_address_it_connected_to() {
    let server = start_proxied(&[], 0).await;
    let v1 = b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n".to_vec();
    let v2 = v2_header("[2001:db8::7]:51000", "[2001:db8::1]:443");
    for (header, expected) in [
        (v1, "203.0.113.7:51000 198.51.100.1:443"),
        (v2, "[2001:db8::7]:51000 [2001:db8::1]:443"),
    ] {
        let mut tls = connect_proxied(&server, &header).await.unwrap();
        assert_eq!(get_addresses(&mut tls).await, expected);
    }
    // The balancer's own connections (health checks) are its own.
    let mut tls = connect_proxied(&server, b"PROXY UNKNOWN\r\n")
        .await
        .unwrap();
    let own = get_addresses(&mut tls).await;
    assert!(own.starts_with("127.0.0.1:"), "{own}");
    assert!(own.ends_with(&server.addr.to_string()), "{own}");
}

#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_before_tls() {
    let server = start_proxied(&[], 0).await;
    for header in [
        &b""[..],
        b"PROXY TCP4 203.0.113.7 198.51.100.1 51000\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let refused = connect_proxied(&server, header).await;
        assert!(
            refused.is_err(),
            "{:?} got a handshake",
            String::from_utf8_lossy(header)
        );
    }
}

#[tokio::test]
async fn only_the_listed_balancers_may_connect() {
    let server = start_proxied(&["10.0.0.0/8"], 0).await;
    let header = b"PROXY TCP4 10.0.0.1 198.51.100.1 51000 443\r\n";
    assert!(
        connect_proxied(&server, header).await.is_err(),
        "127.0.0.1 is not listed"
    );
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 1);
    let server = start_proxied(&["10.0.0.0/8", "127.0.0.1/32"], 0).await;
    let mut tls = connect_proxied(&server, header).await.unwrap();
    assert!(get_addresses(&mut tls).await.starts_with("10.0.0.1:51000"));
}

/// While its header has not come, a connection counts against its peer's
/// cap, unless the peer is a listed balancer: with no list, one host that
/// opens connections and sends nothing holds no more than its share.
#[tokio::test]
async fn a_peer_waiting_to_send_its_header_holds_only_its_share() {
    let header = b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n";
    let server = start_proxied(&[], 1).await;
    let silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        connect_proxied(&server, header).await.is_err(),
        "past the peer's cap"
    );
    drop(silent);
    let mut served = None;
    for _ in 0..100 {
        if let Ok(tls) = connect_proxied(&server, header).await {
            served = Some(tls);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tls = served.expect("served once the silent connection closed");
    assert!(get_addresses(&mut tls).await.starts_with("203.0.113.7:"));
    // A listed balancer's connections wait outside any cap.
    let server = start_proxied(&["127.0.0.1/32"], 1).await;
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    let mut tls = connect_proxied(&server, header).await.unwrap();
    assert!(get_addresses(&mut tls).await.starts_with("203.0.113.7:"));
}

/// The cap counts the clients the headers name, not the balancer.
#[tokio::test]
async fn each_client_behind_the_balancer_has_its_own_connection_cap() {
    let server = start_proxied(&[], 1).await;
    let a = b"PROXY TCP4 203.0.113.7 198.51.100.1 51000 443\r\n";
    let b = b"PROXY TCP4 203.0.113.8 198.51.100.1 51000 443\r\n";
    let _first = connect_proxied(&server, a).await.unwrap();
    assert!(
        connect_proxied(&server, a).await.is_err(),
        "a second from one client"
    );
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 1);
    let mut other = connect_proxied(&server, b).await.unwrap();
    assert!(get_addresses(&mut other).await.starts_with("203.0.113.8:"));
}
