//! The backend pools are per thread: a request reuses only connections its
//! own thread opened (and drives), never one living on another thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use portico_integrations::{BackendClient, ClientSettings, DnsSettings, Resolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A keep-alive HTTP/1.1 backend on port 0 answering every request `ok`,
/// counting the connections it accepted. Runs on its own thread.
fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    backend_closing_after(usize::MAX)
}

/// [`backend`], but after `replies` replies on a connection it closes it
/// when the next request arrives there, unanswered (and never said
/// `Connection: close`): as a backend does whose keep-alive timeout runs
/// out just as a request comes.
fn backend_closing_after(replies: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    listen(move |conn| serve_ok(conn, replies))
}

/// Answers `ok` to up to `replies` bodiless requests on `conn`, then
/// closes it at the next one; returns when the client closes it.
async fn serve_ok(mut conn: TcpStream, replies: usize) {
    let mut left = replies;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = conn.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        // One reply per blank line.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            if left == 0 || conn.write_all(REPLY).await.is_err() {
                return;
            }
            left -= 1;
        }
    }
}

/// A listener on port 0 that serves each connection with `serve` on its
/// own thread's runtime, counting the connections it accepted.
fn listen<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::task::spawn_local(serve(conn));
            }
        });
    });
    (addr, accepted)
}

/// A current-thread runtime for one test thread's requests.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client() -> BackendClient {
    client_with(&ClientSettings::default())
}

fn client_with(settings: &ClientSettings) -> BackendClient {
    let resolver = Resolver::new(&DnsSettings {
        nameservers: Some(Vec::new()),
        use_hosts_file: true,
        cache_size: 16,
    })
    .expect("resolver");
    BackendClient::new(settings, resolver).expect("client")
}

/// A GET of `/x` on `addr`, answered 200 `ok`.
async fn get_ok(client: &BackendClient, addr: SocketAddr) {
    let req = http::Request::get(format!("http://{addr}/x"))
        .body(portico_gateway::body::empty())
        .expect("request");
    let resp = client.send(req).await.expect("sent");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// `n` GETs one after the other on a current-thread runtime of this thread;
/// then the runtime keeps running (driving its connections) until `hold`
/// completes.
fn get_sequentially(
    client: &BackendClient,
    addr: SocketAddr,
    n: usize,
    hold: impl std::future::Future<Output = ()>,
) {
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..n {
            get_ok(client, addr).await;
        }
        hold.await;
    });
}

#[test]
fn one_thread_reuses_its_connection() {
    let (addr, accepted) = backend();
    let client = client();
    get_sequentially(&client, addr, 3, async {});
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn another_thread_opens_its_own_connection_instead_of_borrowing() {
    let (addr, accepted) = backend();
    let client = client();
    // Thread 1 leaves an idle keep-alive connection in the pool, its runtime
    // still driving it; with one pool for all threads, thread 2 would reuse
    // it (one connection in all).
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let first = client.clone();
    let thread1 = std::thread::spawn(move || {
        get_sequentially(&first, addr, 2, async move {
            let _ = done_tx.send(());
            let _ = release_rx.await;
        })
    });
    done_rx.recv().expect("thread 1 finished its requests");
    let second = client.clone();
    std::thread::spawn(move || get_sequentially(&second, addr, 2, async {}))
        .join()
        .expect("thread 2");
    let _ = release_tx.send(());
    thread1.join().expect("thread 1");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_connection_the_backend_closed_is_not_an_error() {
    // Every request after the first goes on a pooled connection whose
    // backend closes it on reading that request: the GET goes again, on a
    // new connection. (get_sequentially checks that each one is answered.)
    let (addr, _accepted) = backend_closing_after(1);
    let client = client();
    get_sequentially(&client, addr, 5, async {});
}

#[test]
fn a_post_is_not_sent_again() {
    // The same backend, but the second request is a POST with a body: it
    // could have taken effect, so its failure is the client's answer.
    let (addr, _accepted) = backend_closing_after(1);
    let client = client();
    let err = runtime()
        .block_on(async {
            // A GET first on this runtime's pool, so that the POST reuses a connection.
            get_ok(&client, addr).await;
            let post = http::Request::post(format!("http://{addr}/x"))
                .body(portico_gateway::body::full("x"))
                .expect("request");
            client.send(post).await
        })
        .expect_err("the backend closed the connection on the POST");
    assert!(!err.is_connect(), "{err}");
}

#[test]
fn idle_connections_expire() {
    let (addr, accepted) = backend();
    let client = client_with(&ClientSettings {
        pool_idle_timeout: std::time::Duration::from_millis(50),
        ..ClientSettings::default()
    });
    let rt = runtime();
    rt.block_on(async {
        for _ in 0..2 {
            get_ok(&client, addr).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn no_idle_connections_are_kept_when_the_limit_is_zero() {
    let (addr, accepted) = backend();
    let client = client_with(&ClientSettings {
        pool_max_idle_per_host: 0,
        ..ClientSettings::default()
    });
    get_sequentially(&client, addr, 3, async {});
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// An HTTP/2 backend with prior knowledge (h2c) on port 0 answering `ok`,
/// counting its connections.
fn h2c_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    listen(|conn| async move {
        let service = hyper::service::service_fn(|_req| async {
            let body = http_body_util::Full::new(bytes::Bytes::from_static(b"ok"));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
            .await;
    })
}

#[test]
fn http2_backends_share_one_connection() {
    let (addr, accepted) = h2c_backend();
    let client = client_with(&ClientSettings {
        http2_only: true,
        ..ClientSettings::default()
    });
    // One after the other, then ten at once: every request on the one
    // connection the first opened.
    runtime().block_on(async {
        for _ in 0..3 {
            get_ok(&client, addr).await;
        }
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let client = client.clone();
            set.spawn(async move { get_ok(&client, addr).await });
        }
        while let Some(done) = set.join_next().await {
            done.expect("task");
        }
    });
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A TCP relay on port 0 to `backend` that forwards both ways until
/// `frozen` is set; from then on it forwards nothing more and accepts
/// connections it never forwards, but keeps every socket open: a backend
/// host that died without a reset, as far as the client can tell.
fn frozen_relay(backend: SocketAddr, frozen: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let (addr, _accepted) = listen(move |client| {
        let frozen = Arc::clone(&frozen);
        async move {
            if frozen.load(Ordering::SeqCst) {
                return hold(client).await;
            }
            let Ok(server) = TcpStream::connect(backend).await else {
                return;
            };
            let (client_rd, client_wr) = client.into_split();
            let (server_rd, server_wr) = server.into_split();
            tokio::join!(
                relay_until(client_rd, server_wr, Arc::clone(&frozen)),
                relay_until(server_rd, client_wr, frozen),
            );
        }
    });
    addr
}

/// Copies `from` to `to` until `frozen`; then holds both ends open for ever.
async fn relay_until(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
        if frozen.load(Ordering::SeqCst) {
            return hold((from, to)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Keeps `what` (sockets) alive, and silent, for as long as the runtime runs.
async fn hold<T>(what: T) {
    std::future::pending::<()>().await;
    drop(what);
}

#[test]
fn a_silently_dead_http2_backend_is_found_by_keep_alive_pings() {
    let (backend, _accepted) = h2c_backend();
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let relay = frozen_relay(backend, Arc::clone(&frozen));
    let keep_alive = std::time::Duration::from_millis(300);
    let client = client_with(&ClientSettings {
        http2_only: true,
        http2_keep_alive_interval: Some(keep_alive),
        http2_keep_alive_timeout: keep_alive,
        ..ClientSettings::default()
    });
    // Far beyond the pings' few hundred milliseconds (twice: the GET goes
    // once more), so that only a request left hanging reaches it.
    let route_timeout = std::time::Duration::from_secs(20);
    let sent = runtime().block_on(async {
        get_ok(&client, relay).await;
        frozen.store(true, Ordering::SeqCst);
        let req = http::Request::get(format!("http://{relay}/x"))
            .body(portico_gateway::body::empty())
            .expect("request");
        tokio::time::timeout(route_timeout, client.send(req)).await
    });
    let err = sent
        .expect("the dead connection was found before the route timeout")
        .expect_err("the backend no longer answers");
    assert!(!err.is_connect(), "{err}");
}

#[test]
fn a_tls_handshake_that_never_ends_is_a_connect_timeout() {
    // Accepts TCP, never answers the ClientHello.
    let (addr, _accepted) = listen(hold);
    let client = client_with(&ClientSettings {
        connect_timeout: std::time::Duration::from_millis(200),
        ..ClientSettings::default()
    });
    let route_timeout = std::time::Duration::from_secs(20);
    let sent = runtime().block_on(async {
        let req = http::Request::get(format!("https://{addr}/x"))
            .body(portico_gateway::body::empty())
            .expect("request");
        tokio::time::timeout(route_timeout, client.send(req)).await
    });
    let err = sent
        .expect("the connect gave up before the route timeout")
        .expect_err("no TLS handshake");
    assert!(err.is_connect(), "{err:?}");
}

/// A pool that is never idle is still replaced after `pool_max_lifetime`:
/// the next request opens a new connection (resolving the name again) and
/// the old one closes once it is no longer used.
#[test]
fn a_busy_pool_is_retired_after_its_lifetime() {
    let closed = Arc::new(AtomicUsize::new(0));
    let on_close = Arc::clone(&closed);
    let (addr, accepted) = listen(move |conn| {
        let on_close = Arc::clone(&on_close);
        async move {
            serve_ok(conn, usize::MAX).await;
            on_close.fetch_add(1, Ordering::SeqCst);
        }
    });
    let lifetime = std::time::Duration::from_millis(300);
    let client = client_with(&ClientSettings {
        pool_max_lifetime: Some(lifetime),
        ..ClientSettings::default()
    });
    runtime().block_on(async {
        // Never idle for longer than 20 ms, across the lifetime.
        let start = std::time::Instant::now();
        while start.elapsed() < lifetime * 2 {
            get_ok(&client, addr).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(accepted.load(Ordering::SeqCst) >= 2, "the pool was kept");
        // The retired connection closes; the one in use stays open.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while closed.load(Ordering::SeqCst) + 1 < accepted.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "a retired connection stayed open"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}
