//! The HTTP/3 adapter against a real quinn + h3 client over loopback, with a
//! test handler: streaming and trailers both ways, stream limits, the header
//! section limit, idle timeout, GOAWAY on shutdown, 0-RTT rules.

#[path = "support/h3_client.rs"]
mod h3_client;
#[path = "support/raw_h3.rs"]
mod raw_h3;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use h3_client::{H3Client, H3Conn, read_reply};
use http::{HeaderMap, HeaderValue, Request, Response};
use portico_gateway::{Body, ConnInfo};
use portico_net::{H3Listener, H3Server, Handler, HttpLimits, QuicSettings, QuicSocket};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Notify, oneshot};

/// Echoes the request body (data and trailers) as the response body, with
/// facts about the connection in headers. `/wait` holds until released;
/// `/slow` counts how many run at once; `/big` answers 64 MiB, and counts
/// when its body is dropped, `/sized?N` N bytes; `/trickle?N` reads N bytes
/// of its body slowly, then holds the rest unread until released.
#[derive(Default)]
struct TestHandler {
    release: Notify,
    waiting: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    calls: AtomicUsize,
    big_dropped: Arc<AtomicUsize>,
    trickled: AtomicUsize,
    /// `/wait` calls ended, released or dropped.
    wait_ended: Arc<AtomicUsize>,
    /// Connections refused for their client's connection cap.
    refused: AtomicUsize,
}

/// Counts its drop in the handler's `big_dropped`.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `chunks` chunks of 64 KiB, as a backend's body comes.
fn big_body(chunks: usize, dropped: Arc<AtomicUsize>) -> Body {
    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
    let guard = DropCount(dropped);
    let chunks = futures_util::stream::iter((0..chunks).map(move |_| {
        let _ = &guard;
        Ok::<_, portico_gateway::BoxError>(http_body::Frame::data(chunk.clone()))
    }));
    http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(chunks))
}

impl Handler for TestHandler {
    async fn call(&self, req: Request<Body>, conn: Arc<ConnInfo>) -> Response<Body> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match req.uri().path() {
            "/big" => return Response::new(big_body(1024, Arc::clone(&self.big_dropped))),
            "/sized" => {
                let n: usize = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
                let dropped = Arc::default();
                return Response::new(big_body(n.div_ceil(64 << 10), dropped));
            }
            "/trickle" => {
                let n = req.uri().query().and_then(|q| q.parse().ok()).unwrap_or(0);
                return self.trickle(req.into_body(), n).await;
            }
            "/wait" => {
                let _ended = DropCount(Arc::clone(&self.wait_ended));
                let released = self.release.notified();
                self.waiting.fetch_add(1, Ordering::SeqCst);
                released.await;
            }
            "/slow" => {
                let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
                self.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                self.running.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
        let early = req.headers().get("early-data").cloned();
        let cookies = cookie_fields(req.headers());
        let body_ended = if http_body::Body::is_end_stream(req.body()) {
            "1"
        } else {
            "0"
        };
        let mut resp = Response::new(req.into_body());
        let h = resp.headers_mut();
        h.insert(
            "x-protocol",
            HeaderValue::from_static(conn.protocol.as_str()),
        );
        let tls = conn.tls.clone().unwrap_or_default();
        let sni = tls.sni.unwrap_or_default();
        h.insert("x-sni", HeaderValue::from_str(&sni).unwrap());
        h.insert(
            "x-alpn",
            HeaderValue::from_str(&tls.alpn.unwrap_or_default()).unwrap(),
        );
        h.insert("x-early", early.unwrap_or(HeaderValue::from_static("0")));
        h.insert("x-cookie", HeaderValue::from_str(&cookies).unwrap());
        h.insert("x-body-ended", HeaderValue::from_static(body_ended));
        resp
    }

    fn connection_refused(&self) {
        self.refused.fetch_add(1, Ordering::SeqCst);
    }
}

impl TestHandler {
    /// Reads `body` a frame at a time, pausing after each, up to `n` bytes;
    /// then holds it, unread, until released.
    async fn trickle(&self, mut body: Body, n: usize) -> Response<Body> {
        let mut read = 0;
        while read < n {
            match http_body_util::BodyExt::frame(&mut body).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let released = self.release.notified();
        self.trickled.store(read, Ordering::SeqCst);
        released.await;
        drop(body);
        Response::new(portico_gateway::body::empty())
    }
}

/// The request's `cookie` fields, each between brackets.
fn cookie_fields(headers: &HeaderMap) -> String {
    let fields = headers.get_all("cookie").iter();
    fields
        .map(|v| format!("[{}]", v.to_str().unwrap()))
        .collect()
}

struct TestServer {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

fn tls_config() -> (rustls::ServerConfig, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    (tls, cert)
}

fn start(settings: QuicSettings, limits: HttpLimits) -> TestServer {
    let (tls, cert) = tls_config();
    let endpoint =
        portico_net::quic::bind_endpoint("127.0.0.1:0".parse().unwrap(), tls, &settings).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let handler = Arc::new(TestHandler::default());
    let server = H3Server {
        endpoint,
        default_api: None,
        limits,
        handler: Arc::clone(&handler),
        grease: settings.grease,
        idle_timeout: settings.idle_timeout,
    };
    let (stop, stopped) = oneshot::channel();
    let done = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        cert,
        handler,
        stop: Some(stop),
        done,
    }
}

/// A listener served on `workers` threads of its own (the node's model).
fn start_on_workers(workers: usize) -> TestServer {
    let (tls, cert) = tls_config();
    let settings = QuicSettings::default();
    let socket = QuicSocket::bind("127.0.0.1:0".parse().unwrap(), tls, &settings).unwrap();
    let addr = socket.local_addr().unwrap();
    let handler = Arc::new(TestHandler::default());
    let listener = H3Listener {
        socket,
        default_api: None,
        limits: HttpLimits::default(),
        handler: Arc::clone(&handler),
    };
    let (stop, stopped) = oneshot::channel();
    let done = tokio::spawn(listener.run_on_workers(workers, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        cert,
        handler,
        stop: Some(stop),
        done,
    }
}

fn start_default() -> TestServer {
    start(QuicSettings::default(), HttpLimits::default())
}

impl TestServer {
    fn client(&self) -> H3Client {
        H3Client::new(std::slice::from_ref(&self.cert), "localhost")
    }

    /// A QUIC connection of `client` to the server, for HTTP/3 by hand.
    async fn raw(&self, client: &H3Client) -> quinn::Connection {
        let connecting = client.endpoint.connect(self.addr, "localhost").unwrap();
        connecting.await.unwrap()
    }

    /// [`TestServer::raw`] with the client's control stream opened (kept
    /// open by holding its returned sending side).
    async fn raw_session(&self, client: &H3Client) -> (quinn::Connection, quinn::SendStream) {
        let quic = self.raw(client).await;
        let mut control = quic.open_uni().await.unwrap();
        control
            .write_all(&raw_h3::control_stream_start())
            .await
            .unwrap();
        (quic, control)
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

#[tokio::test]
async fn bodies_and_trailers_stream_both_ways() {
    let server = start_default();
    let conn = server.client().connect(server.addr).await;
    let req = Request::post(server.url("/echo")).body(()).unwrap();
    let mut send = conn.send.clone();
    let mut stream = send.send_request(req).await.unwrap();
    // Each chunk comes back before the next is sent: nothing is buffered whole.
    stream
        .send_data(Bytes::from_static(b"first "))
        .await
        .unwrap();
    let resp = stream.recv_response().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-protocol"], "h3");
    assert_eq!(resp.headers()["x-alpn"], "h3");
    assert_eq!(resp.headers()["x-sni"], "localhost");
    assert_eq!(resp.headers()["x-early"], "0");
    let mut got = stream.recv_data().await.unwrap().expect("first chunk");
    assert_eq!(got.copy_to_bytes(got.remaining()), "first ");
    stream
        .send_data(Bytes::from_static(b"second"))
        .await
        .unwrap();
    let mut got = stream.recv_data().await.unwrap().expect("second chunk");
    assert_eq!(got.copy_to_bytes(got.remaining()), "second");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    stream.send_trailers(trailers).await.unwrap();
    stream.finish().await.unwrap();
    assert!(stream.recv_data().await.unwrap().is_none());
    let back = stream.recv_trailers().await.unwrap().expect("trailers");
    assert_eq!(back["x-checksum"], "abc");
}

/// A request whose FIN came with its head reaches the handler with a body
/// known to be empty (the PoP then sends its head and end in one packet); a
/// body that came with the head is read ahead and not lost.
#[tokio::test]
async fn a_request_without_a_body_is_known_to_be_empty_at_once() {
    let server = start_default();
    let conn = server.client().connect(server.addr).await;
    let get = conn.get(&server.url("/echo")).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.headers["x-body-ended"], "1");
    assert_eq!(get.text(), "");
    let post = Request::post(server.url("/echo")).body(()).unwrap();
    let post = conn.request(post, b"hello").await.unwrap();
    assert_eq!(post.status, 200);
    assert_eq!(post.headers["x-body-ended"], "0");
    assert_eq!(post.text(), "hello");
}

/// HTTP/3 clients may send each cookie as a field of its own; they reach
/// the handler as one, as HTTP/1.1 needs them (RFC 9114 §4.2.1).
#[tokio::test]
async fn cookie_fields_reach_the_handler_as_one() {
    let server = start_default();
    let conn = server.client().connect(server.addr).await;
    let req = Request::get(server.url("/echo"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let reply = conn.request(req, b"").await.unwrap();
    assert_eq!(reply.headers["x-cookie"], "[a=1; b=2]");
}

/// Grease (reserved stream types) is off unless configured: with it on, the
/// server opens one more unidirectional stream on a new connection.
#[tokio::test]
async fn grease_is_sent_only_when_configured() {
    let mut received = Vec::new();
    for grease in [false, true] {
        let settings = QuicSettings {
            grease,
            ..QuicSettings::default()
        };
        let server = start(settings, HttpLimits::default());
        let conn = server.client().connect(server.addr).await;
        assert_eq!(conn.get(&server.url("/echo")).await.status, 200);
        received.push(conn.quic.stats().frame_rx.stream);
    }
    assert!(
        received[1] > received[0],
        "STREAM frames received without and with grease: {received:?}"
    );
}

#[tokio::test]
async fn many_streams_share_a_connection_within_the_limit() {
    let settings = QuicSettings {
        max_concurrent_streams: 4,
        ..QuicSettings::default()
    };
    let server = start(settings, HttpLimits::default());
    let conn = Arc::new(server.client().connect(server.addr).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (conn, url) = (Arc::clone(&conn), server.url("/slow"));
        tasks.spawn(async move {
            let req = Request::post(url).body(()).unwrap();
            let body = format!("request {i}");
            let reply = conn.request(req, body.as_bytes()).await.unwrap();
            assert_eq!((reply.status, reply.text()), (200, body));
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let max = server.handler.max_running.load(Ordering::SeqCst);
    assert!(
        (2..=4).contains(&max),
        "at most 4 at once, and really concurrent: {max}"
    );
}

#[tokio::test]
async fn the_listener_takes_no_datagrams() {
    // HTTP/3 reads no DATAGRAM frames: a listener that announced them would
    // buffer what a client sends (quinn keeps 1.25 MB per connection).
    let server = start_default();
    let conn = server.client().connect(server.addr).await;
    assert_eq!(conn.quic.max_datagram_size(), None);
    assert!(
        conn.quic
            .send_datagram(bytes::Bytes::from_static(b"x"))
            .is_err()
    );
}

/// A request stream whose head does not come within the header read
/// timeout is refused both ways with `H3_REQUEST_REJECTED` (its request was
/// never processed: the client may retry it), not ended with a FIN the
/// client would take for a complete, empty response.
#[tokio::test]
async fn a_request_stream_that_never_finishes_its_head_is_rejected() {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let conn = server.client().connect(server.addr).await;
    // A request stream with the first byte of a HEADERS frame, then nothing:
    // the connection stays alive (its driver answers pings), the head never
    // comes.
    let (mut send, mut recv) = conn.quic.open_bi().await.unwrap();
    send.write_all(&[0x01]).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), recv.read_to_end(1024)).await;
    let rejected = quinn::VarInt::from_u32(raw_h3::H3_REQUEST_REJECTED);
    assert!(
        matches!(&ended, Ok(Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))) if *code == rejected),
        "the response side ended otherwise: {ended:?}"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(20), send.stopped()).await;
    assert!(
        matches!(&stopped, Ok(Ok(Some(code))) if *code == rejected),
        "the request side ended otherwise: {stopped:?}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    // The connection itself still serves.
    assert_eq!(conn.get(&server.url("/echo")).await.status, 200);
}

/// A connection on which no request comes is closed (H3_NO_ERROR) after
/// about twice its idle timeout, as a TCP one is: QUIC's own idle timeout
/// would never end it, as its client keeps pinging.
#[tokio::test]
async fn a_connection_without_requests_is_closed_though_its_client_pings() {
    let limits = HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let settings = QuicSettings {
        idle_timeout: Duration::from_millis(300),
        ..QuicSettings::default()
    };
    let server = start(settings, limits);
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(h3_client::tls_config(
        std::slice::from_ref(&server.cert),
    ))
    .unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(50)));
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, server.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("closed by the server");
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("{closed:?}")
    };
    assert_eq!(close.error_code, quinn::VarInt::from_u32(0x100));
}

/// Four handshakes that never finish (through a relay that passes the
/// client's packets to the server and drops the server's, as with a
/// spoofed address), then a real client from the same address: it must
/// still get in and be served.
async fn a_real_client_gets_past_stalled_handshakes(limits: HttpLimits) -> TestServer {
    let server = start(QuicSettings::default(), limits);
    let hole = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let target = server.addr;
    let relay = tokio::spawn(async move {
        let out = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = hole.recv_from(&mut buf).await {
            let _ = out.send_to(&buf[..n], target).await;
        }
    });
    let blocked = server.client();
    let stuck: Vec<_> = (0..4)
        .map(|_| blocked.endpoint.connect(hole_addr, "localhost").unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = server.client();
    let conn = tokio::time::timeout(Duration::from_secs(10), client.connect(server.addr)).await;
    let conn = conn.expect("a real client was kept out");
    assert_eq!(conn.get(&server.url("/echo")).await.status, 200);
    drop(stuck);
    relay.abort();
    server
}

/// Two of the stalled handshakes hold slots; past half the limit the rest
/// were asked to prove their address, and could not.
#[tokio::test]
async fn handshakes_that_never_finish_cannot_hold_every_slot() {
    let limits = HttpLimits {
        max_connections: 4,
        ..HttpLimits::default()
    };
    a_real_client_gets_past_stalled_handshakes(limits).await;
}

/// Handshakes from a client's address that never finish (spoofed, from
/// the client's network) hold at most half of its cap: past that an
/// address proves itself first.
#[tokio::test]
async fn handshakes_that_never_finish_cannot_use_up_a_clients_cap() {
    let limits = HttpLimits {
        max_connections_per_client: 4,
        ..HttpLimits::default()
    };
    let server = a_real_client_gets_past_stalled_handshakes(limits).await;
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_until_one_closes() {
    let limits = HttpLimits {
        max_connections: 1,
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let client = server.client();
    let first = client.connect(server.addr).await;
    assert_eq!(first.get(&server.url("/echo")).await.status, 200);
    assert_refused(&client, server.addr).await;
    first.quic.close(0u32.into(), b"done");
    connect_once_one_closed(&client, server.addr).await;
}

/// A new connection of `client` to `addr` is refused (CONNECTION_REFUSED).
async fn assert_refused(client: &H3Client, addr: SocketAddr) {
    let refused = client.endpoint.connect(addr, "localhost").unwrap().await;
    assert!(
        matches!(refused, Err(quinn::ConnectionError::ConnectionClosed(ref c)) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{refused:?}"
    );
}

/// A connection of `client` to `addr`, tried until the server has noticed
/// that one closed and reaped it (for 10 s at most).
async fn connect_once_one_closed(client: &H3Client, addr: SocketAddr) -> quinn::Connection {
    for _ in 0..100 {
        if let Ok(quic) = client.endpoint.connect(addr, "localhost").unwrap().await {
            return quic;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection served after one closed");
}

/// One client address holds at most `max_connections_per_client` of a
/// listener's connections: past it a new one is refused before its
/// handshake (the handler is told), and one that closes frees its place.
#[tokio::test]
async fn a_client_past_its_connection_cap_is_refused_until_one_closes() {
    let limits = HttpLimits {
        max_connections_per_client: 2,
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let client = server.client();
    // The second is past half the cap: it proves its address first (a
    // Retry the client follows by itself).
    let first = client.connect(server.addr).await;
    let second = client.connect(server.addr).await;
    assert_refused(&client, server.addr).await;
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 1);
    // Those it holds are served.
    assert_eq!(first.get(&server.url("/echo")).await.status, 200);
    assert_eq!(second.get(&server.url("/echo")).await.status, 200);
    first.quic.close(0u32.into(), b"done");
    let next = connect_once_one_closed(&client, server.addr).await;
    let mut next = H3Conn::new(next).await;
    next.start_driver();
    assert_eq!(next.get(&server.url("/echo")).await.status, 200);
}

/// An Initial from an address already at its cap that has not proved it
/// can receive there (a forged source, or one that never answers) is asked
/// to prove it (a Retry) and neither refused nor counted: otherwise anyone
/// could inflate the refusals a node reports, in a client's name.
#[tokio::test]
async fn an_unproven_address_past_its_cap_gets_a_retry_and_is_not_counted() {
    let limits = HttpLimits {
        max_connections_per_client: 2,
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let client = server.client();
    let _first = client.connect(server.addr).await;
    let _second = client.connect(server.addr).await;
    // A client Initial, caught on a socket of ours, then sent to the server
    // from that socket (127.0.0.1 too, so past the cap) by a sender that
    // follows nothing.
    let tap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let catcher = server.client();
    let _connecting = catcher
        .endpoint
        .connect(tap.local_addr().unwrap(), "localhost")
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(Duration::from_secs(10), tap.recv(&mut buf))
        .await
        .expect("the client's Initial")
        .unwrap();
    let initial = buf[..n].to_vec();
    assert_eq!(initial[0] & 0xb0, 0x80, "a long-header Initial");
    for _ in 0..3 {
        tap.send_to(&initial, server.addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), tap.recv(&mut buf))
            .await
            .expect("the server's answer")
            .unwrap();
        // Long header, packet type 3 (Retry; RFC 9000 §17.2.5).
        assert_eq!(buf[0] & 0x80, 0x80, "{:x?}", &buf[..n.min(8)]);
        assert_eq!((buf[0] >> 4) & 0x3, 3, "a Retry, not a refusal");
    }
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 0);
    // A real client, which follows the Retry, is refused and counted.
    assert_refused(&client, server.addr).await;
    assert_eq!(server.handler.refused.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_header_section_over_the_limit_gets_431() {
    let limits = HttpLimits {
        max_header_bytes: 4096,
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let client = server.client();
    let quic = client
        .endpoint
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    // The driver is not started, so the client has not read our SETTINGS and
    // sends what a client ignoring SETTINGS_MAX_FIELD_SECTION_SIZE would.
    let conn = H3Conn::new(quic).await;
    let req = Request::get(server.url("/echo"))
        .header("x-big", "a".repeat(8000))
        .body(())
        .unwrap();
    let reply = conn.request(req, b"").await.unwrap();
    assert_eq!((reply.status, reply.body.len()), (431, 0), "h3's own, bare");
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    // A client that knows our SETTINGS refuses to send it at all.
    let conn = client.connect(server.addr).await;
    let ok = conn.get(&server.url("/echo")).await;
    assert_eq!(ok.status, 200);
    let req = Request::get(server.url("/echo"))
        .header("x-big", "a".repeat(8000))
        .body(())
        .unwrap();
    let refused = conn.request(req, b"").await.unwrap_err();
    assert!(
        matches!(
            refused,
            h3::error::StreamError::HeaderTooBig { max_size: 4096, .. }
        ),
        "{refused:?}"
    );
}

/// What a flood of a stream may write: 16 MiB, when QUIC lets a client run
/// only 1 MiB (the stream window) ahead of what the server reads.
const FLOOD: usize = 16 * 1024 * 1024;
/// Past this, the server read what it should have refused.
const READ_AHEAD: usize = 2 * 1024 * 1024;

/// Floods `send` with `chunk` (20 s at most) until the server stops it.
async fn flood(send: &mut quinn::SendStream, chunk: &[u8]) -> (usize, Option<quinn::WriteError>) {
    let flood = raw_h3::flood(send, chunk, FLOOD);
    tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("the server neither reads nor refuses")
}

fn stopped_for_load(err: &Option<quinn::WriteError>) -> bool {
    matches!(err, Some(quinn::WriteError::Stopped(code)) if *code == raw_h3::H3_EXCESSIVE_LOAD.into())
}

/// A reserved frame on the control stream declaring 2^40 bytes, then bytes
/// for ever: h3 alone would buffer all of them (and QUIC grant credit for
/// more as it read). The connection is closed at the frame's header.
/// A client's QPACK encoder or decoder stream, which h3 never reads, is
/// read here: more than a table of capacity 0 needs closes the connection
/// (H3_EXCESSIVE_LOAD), and so does closing the stream
/// (H3_CLOSED_CRITICAL_STREAM), instead of a stream window of it held
/// for the connection's life.
#[tokio::test]
async fn a_qpack_stream_is_read_and_held_to_what_it_needs() {
    let server = start_default();
    let client = server.client();
    for (ty, flood_it, code) in [(0x02u8, true, 0x107u32), (0x03, false, 0x104)] {
        let quic = server.raw(&client).await;
        let mut stream = quic.open_uni().await.unwrap();
        stream.write_all(&[ty]).await.unwrap();
        if flood_it {
            let _ =
                tokio::time::timeout(Duration::from_secs(20), flood(&mut stream, &[0; 16 * 1024]))
                    .await;
        } else {
            stream.finish().unwrap();
        }
        let closed = tokio::time::timeout(Duration::from_secs(20), quic.closed())
            .await
            .expect("the server closed the connection");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == code.into()),
            "{closed:?}"
        );
    }
}

#[tokio::test]
async fn a_control_frame_declaring_too_much_closes_the_connection() {
    let server = start_default();
    let client = server.client();
    let quic = server.raw(&client).await;
    let mut control = quic.open_uni().await.unwrap();
    let mut start = raw_h3::control_stream_start();
    start.extend(raw_h3::frame_header(raw_h3::RESERVED, 1 << 40));
    control.write_all(&start).await.unwrap();
    let (written, err) = flood(&mut control, &[0; 16 * 1024]).await;
    assert!(
        err.is_some() && written < READ_AHEAD,
        "{written} bytes taken"
    );
    let closed = quic.closed().await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == raw_h3::H3_EXCESSIVE_LOAD.into()),
        "{closed:?}"
    );
}

/// A HEADERS frame declaring more than twice the field-section limit (what
/// h3 still reads to answer 431) is refused unread, and only its stream.
#[tokio::test]
async fn a_headers_frame_declaring_too_much_is_refused_unread() {
    let limits = HttpLimits {
        max_header_bytes: 4096,
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let client = server.client();
    let quic = server.raw(&client).await;
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    let header = raw_h3::frame_header(raw_h3::HEADERS, 1 << 40);
    send.write_all(&header).await.unwrap();
    let (written, err) = flood(&mut send, &[0; 16 * 1024]).await;
    assert!(
        stopped_for_load(&err) && written < READ_AHEAD,
        "{written} bytes taken, {err:?}"
    );
    let read = recv.read_to_end(1024).await;
    assert!(
        matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == raw_h3::H3_EXCESSIVE_LOAD.into()),
        "{read:?}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 0);
    // The connection still serves.
    assert_serves(&quic, server.addr.port()).await;
}

/// Frames of unknown types between DATA frames carry nothing, and count
/// against no body limit: a stream of them is cut off.
#[tokio::test]
async fn unknown_frames_in_a_body_are_capped() {
    assert_body_flood_is_capped(&raw_h3::frame(raw_h3::RESERVED, &[0; 1000])).await;
}

/// Sends a body of `a` and then `junk` again and again, which carries
/// nothing: the stream is stopped (H3_EXCESSIVE_LOAD) before the read-ahead
/// bound's worth of it is taken.
async fn assert_body_flood_is_capped(junk: &[u8]) {
    let limits = HttpLimits {
        max_header_bytes: 4096,
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let client = server.client();
    let quic = server.raw(&client).await;
    let (mut send, _recv) = quic.open_bi().await.unwrap();
    let mut start = raw_h3::request("POST", "/echo", server.addr.port());
    start.extend(raw_h3::frame(raw_h3::DATA, b"a"));
    send.write_all(&start).await.unwrap();
    let (written, err) = flood(&mut send, junk).await;
    assert!(
        stopped_for_load(&err) && written < READ_AHEAD,
        "{written} bytes taken, {err:?}"
    );
}

/// A request answered on `quic`: the connection serves.
async fn assert_serves(quic: &quinn::Connection, port: u16) {
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    send.write_all(&raw_h3::request("GET", "/echo", port))
        .await
        .unwrap();
    send.finish().unwrap();
    let (ty, _) = raw_h3::read_frame(&mut recv).await.expect("a response");
    assert_eq!(ty, raw_h3::HEADERS);
}

/// Sends a request to `/trickle?{trickle}`, then `chunk` (DATA frames) again
/// and again; once the handler has read `trickle` bytes and stopped, and the
/// client is stopped too: the body bytes the client wrote.
async fn trickle_flood(server: &TestServer, trickle: usize, chunk: &[u8]) -> usize {
    let client = server.client();
    let quic = server.raw(&client).await;
    let (mut send, _recv) = quic.open_bi().await.unwrap();
    let path = format!("/trickle?{trickle}");
    let head = raw_h3::request("POST", &path, server.addr.port());
    send.write_all(&head).await.unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let chunk = chunk.to_vec();
    let flood = tokio::spawn({
        let written = Arc::clone(&written);
        async move {
            while written.load(Ordering::SeqCst) < FLOOD && send.write_all(&chunk).await.is_ok() {
                written.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        }
    });
    let trickled = async {
        while server.handler.trickled.load(Ordering::SeqCst) < trickle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), trickled)
        .await
        .expect("the handler read its body");
    // The handler reads no more: the client is stopped once the server's
    // read-ahead and the stream window are full (or at the flood's cap).
    let stopped = async {
        let mut last = usize::MAX;
        loop {
            let now = written.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let written = tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("the client was stopped");
    flood.abort();
    written
}

/// A body sent as DATA frames of one byte each (three on the wire), to a
/// handler that reads it slowly: h3 0.0.8 read one or two QUIC chunks per
/// frame it handed on, freeing QUIC credit for each, so what it buffered grew
/// as fast as the client could send.
#[tokio::test]
async fn a_body_of_tiny_data_frames_is_not_read_ahead_of_the_handler() {
    let server = start_default();
    let tiny = raw_h3::frame(raw_h3::DATA, b"x").repeat(4096);
    let written = trickle_flood(&server, 4096, &tiny).await;
    assert!(written < READ_AHEAD, "{written} bytes taken");
}

/// h3 0.0.8 reads a QUIC chunk each time it looks for a frame and each time
/// it looks for its payload: a handler reading a body of small frames slowly
/// has it read ahead as much again as the handler has read, or more. It
/// reads no further than a bounded read-ahead.
#[tokio::test]
async fn a_slow_body_reader_bounds_what_h3_reads_ahead() {
    let server = start_default();
    let tiny = raw_h3::frame(raw_h3::DATA, b"x").repeat(4096);
    let written = trickle_flood(&server, 1024 * 1024, &tiny).await;
    let read = server.handler.trickled.load(Ordering::SeqCst) * 3;
    let ahead = written - read;
    assert!(
        ahead < READ_AHEAD,
        "{ahead} bytes taken beyond the {read} read"
    );
}

/// A stream that ends inside a DATA frame ends with a truncated frame, a
/// connection error (RFC 9114 §7.1); h3 0.0.8 took it, when the end came
/// alone, for the end of the body, and then panicked on its own assertion.
#[tokio::test]
async fn a_body_cut_short_inside_a_data_frame_is_a_frame_error() {
    let server = start_default();
    let client = server.client();
    let quic = server.raw(&client).await;
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    let mut start = raw_h3::request("POST", "/echo", server.addr.port());
    start.extend(raw_h3::frame_header(raw_h3::DATA, 10));
    start.extend_from_slice(b"12345");
    send.write_all(&start).await.unwrap();
    // The five bytes come back: the server read them before the end came.
    let (ty, _) = raw_h3::read_frame(&mut recv).await.expect("a response");
    assert_eq!(ty, raw_h3::HEADERS);
    let (ty, payload) = raw_h3::read_frame(&mut recv).await.expect("the echo");
    assert_eq!((ty, &payload[..]), (raw_h3::DATA, &b"12345"[..]));
    send.finish().unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), quic.closed())
        .await
        .expect("the connection closed");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == raw_h3::H3_FRAME_ERROR.into()),
        "{closed:?}"
    );
}

/// Empty DATA frames in the middle of a body are allowed (RFC 9114 §7.2.1):
/// h3 0.0.8 took the first for the end of the body, then the next DATA frame
/// for an unexpected frame, and closed the whole connection.
#[tokio::test]
async fn empty_data_frames_in_a_body_are_skipped() {
    let server = start_default();
    let client = server.client();
    let quic = server.raw(&client).await;
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    let mut request = raw_h3::request("POST", "/echo", server.addr.port());
    for data in [&b"a"[..], b"", b"b"] {
        request.extend(raw_h3::frame(raw_h3::DATA, data));
    }
    send.write_all(&request).await.unwrap();
    // An empty frame's header split across writes, and one at the very end.
    let empty = raw_h3::frame(raw_h3::DATA, b"");
    for part in [
        &empty[..1],
        &empty[1..],
        &raw_h3::frame(raw_h3::DATA, b"c"),
        &empty,
    ] {
        send.write_all(part).await.unwrap();
        tokio::task::yield_now().await;
    }
    send.finish().unwrap();
    let (ty, _) = raw_h3::read_frame(&mut recv).await.expect("a response");
    assert_eq!(ty, raw_h3::HEADERS);
    let mut body = Vec::new();
    while let Some((ty, payload)) = raw_h3::read_frame(&mut recv).await {
        assert_eq!(ty, raw_h3::DATA);
        body.extend(payload);
    }
    assert_eq!(String::from_utf8_lossy(&body), "abc");
    // The connection still serves.
    assert_serves(&quic, server.addr.port()).await;
}

/// Empty DATA frames carry nothing and count against no body limit: a
/// stream of them is cut off like one of unknown frames.
#[tokio::test]
async fn empty_data_frames_in_a_body_are_capped() {
    assert_body_flood_is_capped(&raw_h3::frame(raw_h3::DATA, b"").repeat(1000)).await;
}

/// A client that never opens its stream window while keeping the connection
/// alive holds a response (and the upstream work behind it) only for the
/// send timeout: the stream is then reset, and the body dropped.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let limits = HttpLimits {
        send_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    let conn = server.client().connect(server.addr).await;
    let mut send = conn.send.clone();
    let req = Request::get(server.url("/big")).body(()).unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    // The client reads nothing more: its stream window fills and stays full.
    let dropped = async {
        while server.handler.big_dropped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), dropped)
        .await
        .expect("the response was given up");
    let ended = loop {
        match stream.recv_data().await {
            Ok(Some(_)) => {}
            other => break other.map(|_| ()),
        }
    };
    assert!(
        matches!(ended, Err(h3::error::StreamError::RemoteTerminate { code, .. }) if code == h3::error::Code::H3_REQUEST_CANCELLED),
        "{ended:?}"
    );
    // The connection still serves.
    assert_eq!(conn.get(&server.url("/echo")).await.status, 200);
}

/// A client on a slow link, taking a response a little at a time but
/// steadily, is never cut off: the send timeout is the longest it may take
/// none of it (nginx's time between two successive writes), not the time
/// it may take for each 64 KiB of it.
#[tokio::test]
async fn a_client_that_reads_slowly_but_steadily_gets_the_whole_response() {
    let limits = HttpLimits {
        send_timeout: Duration::from_secs(1),
        ..HttpLimits::default()
    };
    let server = start(QuicSettings::default(), limits);
    // A stream window of 16 KiB: the server can write only as fast as the
    // client reads, 4 KiB every 100 ms (64 KiB take 1.6 s).
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(16 * 1024));
    let tls = h3_client::tls_config(std::slice::from_ref(&server.cert));
    let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    config.transport_config(Arc::new(transport));
    let client = server.client();
    let connecting = client
        .endpoint
        .connect_with(config, server.addr, "localhost");
    let quic = connecting.unwrap().await.unwrap();
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    let size = 128 * 1024;
    let path = format!("/sized?{size}");
    send.write_all(&raw_h3::request("GET", &path, server.addr.port()))
        .await
        .unwrap();
    send.finish().unwrap();
    let mut got = 0;
    let mut buf = [0; 4096];
    let ended = loop {
        match recv.read(&mut buf).await {
            Ok(Some(n)) => got += n,
            other => break other,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(matches!(ended, Ok(None)), "{ended:?} after {got} bytes");
    assert!(got > size, "{got} bytes");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let settings = QuicSettings {
        idle_timeout: Duration::from_millis(500),
        ..QuicSettings::default()
    };
    let server = start(settings, HttpLimits::default());
    let mut conn = server.client().connect(server.addr).await;
    assert_eq!(conn.get(&server.url("/echo")).await.status, 200);
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed.take().unwrap())
        .await
        .expect("closed by the idle timeout")
        .unwrap();
    let closed = format!("{closed:?}");
    assert!(
        closed.contains("Timeout") || closed.contains("TimedOut"),
        "{closed}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_requests_finish() {
    let mut server = start_default();
    let mut conn = server.client().connect(server.addr).await;
    let pending = {
        let req = Request::get(server.url("/wait")).body(()).unwrap();
        let mut send = conn.send.clone();
        tokio::spawn(async move {
            let mut stream = send.send_request(req).await.unwrap();
            stream.finish().await.unwrap();
            read_reply(&mut stream).await
        })
    };
    while server.handler.waiting.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let _ = server.stop.take().unwrap().send(());
    // After GOAWAY, new requests on the connection are refused...
    let refused = async {
        loop {
            let req = Request::get(server.url("/echo")).body(()).unwrap();
            if conn.request(req, b"").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("refused after GOAWAY");
    // ...while the one in flight completes, and then the connection closes cleanly.
    server.handler.release.notify_waiters();
    let reply = pending.await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    let closed = conn.closed.take().unwrap().await.unwrap();
    assert!(closed.is_h3_no_error(), "{closed:?}");
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("server stopped")
        .unwrap();
}

/// GOAWAY names the first request stream that was not processed (RFC 9114
/// §5.2), so it must be above the one in flight, or the client would retry
/// that request (a POST twice); a stream at that id that still arrives is
/// rejected, not served. HTTP/3 by hand: the h3 client keeps the id to itself.
#[tokio::test]
async fn goaway_names_a_stream_above_every_accepted_request() {
    let mut server = start_default();
    let client = server.client();
    let (quic, _control) = server.raw_session(&client).await;
    let port = server.addr.port();
    let mut server_control = raw_h3::server_control_stream(&quic).await;
    let (mut send, mut in_flight) = quic.open_bi().await.unwrap();
    let in_flight_id = u64::from(send.id());
    send.write_all(&raw_h3::request("POST", "/wait", port))
        .await
        .unwrap();
    send.finish().unwrap();
    while server.handler.waiting.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let _ = server.stop.take().unwrap().send(());
    let goaway = raw_h3::goaway_id(&mut server_control);
    let goaway = tokio::time::timeout(Duration::from_secs(10), goaway)
        .await
        .expect("GOAWAY within 10 s")
        .expect("a GOAWAY frame");
    assert!(
        goaway > in_flight_id,
        "GOAWAY({goaway}) with stream {in_flight_id} in flight"
    );
    // The next stream, at the GOAWAY id, arrives after it: rejected.
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    assert_eq!(u64::from(send.id()), goaway);
    send.write_all(&raw_h3::request("POST", "/echo", port))
        .await
        .unwrap();
    send.finish().unwrap();
    let read = recv.read_to_end(1024).await;
    assert!(
        matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code == raw_h3::H3_REQUEST_REJECTED.into()),
        "{read:?}"
    );
    assert_eq!(server.handler.calls.load(Ordering::SeqCst), 1);
    // The request in flight is answered.
    server.handler.release.notify_waiters();
    let (ty, _) = raw_h3::read_frame(&mut in_flight)
        .await
        .expect("the response");
    assert_eq!(ty, raw_h3::HEADERS);
}

/// A client that cancels its request (STOP_SENDING, as clients do with
/// H3_REQUEST_CANCELLED) has its handler dropped, and the backend or
/// backbone work behind it with it, not left to run to its timeout.
#[tokio::test]
async fn a_request_the_client_cancels_has_its_handler_dropped() {
    let server = start_default();
    let client = server.client();
    let (quic, _control) = server.raw_session(&client).await;
    let port = server.addr.port();
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    send.write_all(&raw_h3::request("GET", "/wait", port))
        .await
        .unwrap();
    send.finish().unwrap();
    while server.handler.waiting.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(server.handler.wait_ended.load(Ordering::SeqCst), 0);
    recv.stop(raw_h3::H3_REQUEST_CANCELLED.into()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.handler.wait_ended.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the handler still runs 10 s after the client cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The connection serves on.
    assert_serves(&quic, port).await;
}

/// A client's own GOAWAY is answered with ours, which must also name a
/// stream above every request accepted: h3 0.0.8 answers with
/// `shutdown(0)`, naming the last request accepted, as if it had not been
/// processed (and below the id of any GOAWAY a drain sent before).
#[tokio::test]
async fn goaway_answering_the_clients_names_a_stream_above_every_accepted_request() {
    let server = start_default();
    let client = server.client();
    let (quic, mut control) = server.raw_session(&client).await;
    let port = server.addr.port();
    let mut server_control = raw_h3::server_control_stream(&quic).await;
    let (mut send, mut recv) = quic.open_bi().await.unwrap();
    let answered = u64::from(send.id());
    send.write_all(&raw_h3::request("POST", "/echo", port))
        .await
        .unwrap();
    send.finish().unwrap();
    recv.read_to_end(64 * 1024).await.expect("the response");
    // The client goes away (a client's GOAWAY names a push id).
    let goaway = raw_h3::frame(raw_h3::GOAWAY, &raw_h3::varint(0));
    control.write_all(&goaway).await.unwrap();
    let goaway = raw_h3::goaway_id(&mut server_control);
    let goaway = tokio::time::timeout(Duration::from_secs(10), goaway)
        .await
        .expect("GOAWAY within 10 s")
        .expect("a GOAWAY frame");
    assert!(
        goaway > answered,
        "GOAWAY({goaway}) after stream {answered} was answered"
    );
}

/// A resumed client sends a GET and a POST in 0-RTT. The server→client path
/// is delayed (a UDP relay), so both arrive long before the handshake can
/// complete: the GET is served and marked, the POST gets 425 and never
/// reaches the handler; once the handshake is done, the POST is served.
#[tokio::test]
async fn early_data_serves_only_safe_methods() {
    use portico_netsim::{Link, LinkSpec, UdpRelay};
    let server = start_default();
    let client = server.client();
    let link = Link {
        up: LinkSpec::default(),
        down: LinkSpec::with_delay(Duration::from_millis(300)),
    };
    let relay = UdpRelay::bind("127.0.0.1:0".parse().unwrap(), server.addr, link)
        .await
        .unwrap();
    let via = relay.local_addr();
    let _relay = relay.spawn();
    let (mut conn, accepted) = resumed_0rtt(&client, server.addr, via).await;
    let calls_before = server.handler.calls.load(Ordering::SeqCst);
    let get = Request::get(server.url("/echo")).body(()).unwrap();
    let post = Request::post(server.url("/echo")).body(()).unwrap();
    let (get, post) = tokio::join!(conn.request(get, b""), conn.request(post, b"payload"));
    let (get, post) = (get.unwrap(), post.unwrap());
    assert!(accepted.await, "the server accepted 0-RTT");
    assert_eq!(
        (get.status, get.headers["x-early"].to_str().unwrap()),
        (200, "1")
    );
    assert_eq!(post.status, 425);
    assert_eq!(post.json(), serde_json::json!({"message": "Too Early"}));
    let calls = server.handler.calls.load(Ordering::SeqCst) - calls_before;
    assert_eq!(calls, 1, "only the GET reached the handler");
    conn.start_driver();
    let retry = Request::post(server.url("/echo")).body(()).unwrap();
    let retry = conn.request(retry, b"payload").await.unwrap();
    assert_eq!((retry.status, retry.text()), (200, "payload".to_owned()));
    assert_eq!(retry.headers["x-early"], "0");
}

/// Connects once for a session ticket, then returns a 0-RTT connection to `via`.
async fn resumed_0rtt(
    client: &H3Client,
    direct: SocketAddr,
    via: SocketAddr,
) -> (H3Conn, quinn::ZeroRttAccepted) {
    for _ in 0..3 {
        let conn = client.connect(direct).await;
        let url = format!("https://localhost:{}/echo", direct.port());
        assert_eq!(conn.get(&url).await.status, 200);
        // Tickets travel right after the handshake; one round trip more makes sure.
        assert_eq!(conn.get(&url).await.status, 200);
        conn.quic.close(0u32.into(), b"done");
        if let Some(pair) = client.connect_0rtt(via).await {
            return pair;
        }
    }
    panic!("no session ticket after three connections");
}

/// Connections spread over worker threads are all served, and shutdown
/// drains every one of them: GOAWAY, the request in flight completes, a clean
/// close, and the listener stops.
#[tokio::test]
async fn worker_threads_serve_every_connection_and_drain_on_shutdown() {
    let mut server = start_on_workers(3);
    let client = server.client();
    let mut conns = Vec::new();
    for _ in 0..5 {
        let conn = client.connect(server.addr).await;
        let req = Request::post(server.url("/echo")).body(()).unwrap();
        let reply = conn.request(req, b"spread").await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, &b"spread"[..]);
        conns.push(conn);
    }
    let pending = {
        let req = Request::get(server.url("/wait")).body(()).unwrap();
        let mut send = conns[4].send.clone();
        tokio::spawn(async move {
            let mut stream = send.send_request(req).await.unwrap();
            stream.finish().await.unwrap();
            read_reply(&mut stream).await
        })
    };
    while server.handler.waiting.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let _ = server.stop.take().unwrap().send(());
    // The idle connections close at once; the busy one once its request is done.
    for conn in &mut conns[..4] {
        let closed = conn.closed.take().unwrap().await.unwrap();
        assert!(closed.is_h3_no_error(), "{closed:?}");
    }
    server.handler.release.notify_waiters();
    let reply = pending.await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    let closed = conns[4].closed.take().unwrap().await.unwrap();
    assert!(closed.is_h3_no_error(), "{closed:?}");
    tokio::time::timeout(Duration::from_secs(5), server.done)
        .await
        .expect("listener stopped")
        .unwrap();
}
