//! The TCP listener: TLS (or plain for development), then HTTP/1.1 and HTTP/2
//! from one hyper-util service. Requests become `Request<Body>` and go to a
//! [`Handler`]; this module knows nothing of APIs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::ALT_SVC;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use portico_gateway::{Body, ConnInfo, Protocol, TlsInfo, body};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::clients::{AtCap, ClientConns, ClientSlot};
use crate::proxy::{Prefixed, ProxyProtocol};

/// What serves requests once a protocol adapter has decoded them.
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Body>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Body>> + Send;

    /// The answer to a request the adapter refuses itself, without calling
    /// [`Handler::call`] (HTTP/3 early data with an unsafe method: 425). A
    /// gateway overrides it to give the answer its request id and an access
    /// log line like any other.
    fn refuse(
        &self,
        req: &Request<()>,
        conn: &Arc<ConnInfo>,
        err: portico_gateway::GatewayError,
    ) -> Response<Body> {
        let _ = (req, conn);
        err.to_response()
    }

    /// Told of each connection a listener refused, before any handshake,
    /// because its client address already held
    /// [`HttpLimits::max_connections_per_client`]. A gateway counts them for
    /// its admin API.
    fn connection_refused(&self) {}
}

/// Bytes of a response HTTP/2 queues per stream ahead of the client's
/// flow-control window.
const MAX_SEND_BUF: usize = 64 * 1024;

/// Protocol limits of a listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Hard cap of the request header section hyper will buffer. The gateway
    /// answers 431 with a JSON body below this; hyper's own bare 431 is the
    /// backstop for anything larger.
    pub max_header_bytes: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Idle connections are closed after this long: any connection,
    /// HTTP/1.1 or HTTP/2, that sends no whole request head after its
    /// handshake, or has had none in flight and none new for this long (a
    /// keep-alive connection waiting for its next head, or one trickling a
    /// head in). Checked every `header_read_timeout`, so it closes within
    /// twice that.
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// How long shutdown waits for connections to finish their requests.
    pub drain_timeout: Duration,
    /// Connections open at once on a TCP listener (all its worker threads
    /// together); at the limit it accepts the next only when one closes, and
    /// new clients wait in the kernel's backlog (nginx's `worker_connections`).
    pub max_connections: usize,
    /// Connections one client address (an IPv6 /64) may hold open at once
    /// on a listener; 0: no cap. Past it a TCP connection is closed as soon
    /// as it is accepted, before its TLS handshake, and a QUIC one is
    /// refused (nginx's `limit_conn`, HAProxy's `src_conn_cur`), so that one
    /// host cannot take every one of `max_connections`.
    pub max_connections_per_client: usize,
    /// Longest a response head or body chunk may wait for the client to
    /// take it (nginx's `send_timeout`); past it a TCP connection is closed
    /// (checked every `send_timeout / 2`), and an HTTP/3 stream is reset
    /// (`H3_REQUEST_CANCELLED`) once the client has taken no byte of it for
    /// that long. Time waiting on the upstream never counts.
    pub send_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
            drain_timeout: Duration::from_secs(10),
            max_connections: 16_384,
            max_connections_per_client: 256,
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// What a TCP listener's connections hold while open, shared by its worker
/// threads: one of `max_connections` permits, and a place under their
/// client's cap.
#[derive(Clone)]
struct Slots {
    permits: Arc<Semaphore>,
    clients: ClientConns,
}

impl Slots {
    fn new(limits: &HttpLimits) -> Self {
        Slots {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            clients: ClientConns::new(limits.max_connections_per_client, "tcp"),
        }
    }
}

/// One public TCP listener.
pub struct TcpServer<H> {
    pub listener: TcpListener,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub default_api: Option<Arc<str>>,
    pub limits: HttpLimits,
    pub handler: Arc<H>,
    /// `Alt-Svc` added to every response when this listener's port also
    /// serves HTTP/3 (see [`crate::quic::alt_svc`]), so clients can switch.
    /// It replaces a backend's own: the alternative offered is ours.
    pub alt_svc: Option<HeaderValue>,
    /// Every connection starts with a load balancer's PROXY header, which
    /// names the client (see [`crate::proxy`]).
    pub proxy: Option<Arc<ProxyProtocol>>,
}

impl<H: Handler> TcpServer<H> {
    /// Accepts connections until `shutdown` completes, then lets open
    /// connections finish (up to the drain timeout).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Slots::new(&self.limits);
        self.run_with(slots, shutdown).await;
    }

    /// [`TcpServer::run`], each connection holding one of `slots` (shared by
    /// the worker threads of one listener).
    async fn run_with(self, slots: Slots, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let acceptor = self.tls.clone().map(TlsAcceptor::from);
        let shared = Arc::new(self);
        // Held here, so that those left after the drain are ended with this
        // function (on a shared runtime they would outlive the listener).
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&slots.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = shared.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            while conns.try_join_next().is_some() {}
            if shared.proxy.is_some() {
                // The client's cap is taken once its header names it.
                let conn = shared.clone().proxied(
                    stream,
                    peer,
                    slots.clients.clone(),
                    acceptor.clone(),
                    graceful.watcher(),
                );
                conns.spawn(async move {
                    conn.await;
                    drop(permit);
                });
                continue;
            }
            let Ok(client) = shared.admit(&slots.clients, &stream, peer) else {
                continue;
            };
            let local_addr = stream.local_addr().unwrap_or(peer);
            let conn = shared.clone().connection(
                stream,
                peer,
                local_addr,
                acceptor.clone(),
                graceful.watcher(),
                shared.limits.handshake_timeout,
            );
            conns.spawn(async move {
                conn.await;
                drop((permit, client));
            });
        }
        let drain = shared.limits.drain_timeout;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain timeout; closing them");
            conns.abort_all();
        }
        while conns.join_next().await.is_some() {}
    }

    /// Serves on `workers` dedicated threads, each running its own
    /// current-thread runtime that accepts from a clone of the same socket.
    ///
    /// A connection then lives on one thread for its whole life, with the
    /// tasks it spawns (backend connections included): no cross-thread wakeups
    /// on the request path, which on small machines costs more than the work
    /// itself (nginx's model; pingora's "no steal" runtime). `workers == 0`
    /// serves on the caller's runtime instead.
    pub async fn run_on_workers(self, workers: usize, shutdown: impl Future<Output = ()>) {
        if workers == 0 {
            return self.run(shutdown).await;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let threads = match self.spawn_workers(workers, &stop_rx) {
            Ok(threads) => threads,
            Err(err) => return tracing::error!(%err, "starting listener worker threads failed"),
        };
        shutdown.await;
        let _ = stop_tx.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }

    fn spawn_workers(
        self,
        workers: usize,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let TcpServer {
            listener,
            tls,
            default_api,
            limits,
            handler,
            alt_svc,
            proxy,
        } = self;
        let listener = listener.into_std()?;
        let slots = Slots::new(&limits);
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let listener = listener.try_clone()?;
            let (tls, default_api, limits, handler, alt_svc, proxy) = (
                tls.clone(),
                default_api.clone(),
                limits.clone(),
                Arc::clone(&handler),
                alt_svc.clone(),
                proxy.clone(),
            );
            let mut stop = stop.clone();
            let slots = slots.clone();
            let worker = move || {
                let runtime = match portico_gateway::workers::current_thread_runtime() {
                    Ok(rt) => rt,
                    Err(err) => {
                        return tracing::error!(%err, index, "worker runtime failed to start");
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(err) => return tracing::error!(%err, index, "worker cannot register the listener"),
                    };
                    let server = TcpServer { listener, tls, default_api, limits, handler, alt_svc, proxy };
                    server.run_with(slots, async move { let _ = stop.wait_for(|s| *s).await; }).await;
                });
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("portico-worker-{index}"))
                    .spawn(worker)?,
            );
        }
        Ok(threads)
    }

    /// A place under `peer`'s connection cap (`None`: no cap), or [`AtCap`]
    /// with the connection set to reset when dropped (before its TLS
    /// handshake: no TIME_WAIT is left here per refused connection) and
    /// counted.
    fn admit(
        &self,
        clients: &ClientConns,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> Result<Option<ClientSlot>, AtCap> {
        clients.admit(peer.ip()).inspect_err(|_| {
            self.handler.connection_refused();
            let _ = stream.set_zero_linger();
        })
    }

    /// A connection from a load balancer: its PROXY header names the
    /// client, whose cap it then takes, and the address it connected to;
    /// then TLS and HTTP as any connection, the header and the TLS
    /// handshake within one handshake timeout. A peer not allowed to send
    /// one is reset and counted as refused; a bad header and one that does
    /// not come in time close the connection.
    async fn proxied(
        self: Arc<Self>,
        mut stream: TcpStream,
        balancer: SocketAddr,
        clients: ClientConns,
        acceptor: Option<TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let Some(proxy) = self.proxy.as_deref() else {
            return;
        };
        if !proxy.allows(balancer.ip()) {
            self.handler.connection_refused();
            let _ = stream.set_zero_linger();
            return tracing::debug!(%balancer, "PROXY protocol peer not in proxy_protocol_from");
        }
        // Until its header names a client, a connection counts against its
        // peer's cap, unless the peer is one of the listed balancers: with
        // no list any host may connect, and one that sends nothing must not
        // hold more of the listener than its share.
        let waiting = match proxy.from.is_empty() {
            true => match self.admit(&clients, &stream, balancer) {
                Ok(slot) => slot,
                Err(AtCap) => return,
            },
            false => None,
        };
        let started = Instant::now();
        let timeout = self.limits.handshake_timeout;
        let read = tokio::time::timeout(timeout, crate::proxy::read_header(&mut stream)).await;
        let (proxied, rest) = match read {
            Ok(Ok(header)) => header,
            Ok(Err(err)) => return tracing::debug!(%balancer, %err, "connection refused"),
            Err(_) => return tracing::debug!(%balancer, "PROXY header timed out"),
        };
        drop(waiting);
        let own = (balancer, stream.local_addr().unwrap_or(balancer));
        let (peer, local_addr) = proxied.unwrap_or(own);
        let Ok(_client) = self.admit(&clients, &stream, peer) else {
            return;
        };
        let left = timeout.saturating_sub(started.elapsed());
        let stream = Prefixed::new(rest, stream);
        self.connection(stream, peer, local_addr, acceptor, watcher, left)
            .await;
    }

    async fn connection<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        local_addr: SocketAddr,
        acceptor: Option<TlsAcceptor>,
        watcher: hyper_util::server::graceful::Watcher,
        handshake: Duration,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(acceptor) = acceptor else {
            let info = self.conn_info(peer, local_addr, None);
            return self.serve(stream, info, watcher).await;
        };
        let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => return tracing::debug!(%peer, %err, "TLS handshake failed"),
            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
        };
        let info = {
            let (_, session) = tls.get_ref();
            let tls_info = TlsInfo {
                sni: session.server_name().map(str::to_owned),
                alpn: session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                version: session
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
            };
            self.conn_info(peer, local_addr, Some(tls_info))
        };
        self.serve(tls, info, watcher).await;
    }

    fn conn_info(
        &self,
        peer: SocketAddr,
        local_addr: SocketAddr,
        tls: Option<TlsInfo>,
    ) -> ConnInfo {
        let protocol = match tls.as_ref().and_then(|t| t.alpn.as_deref()) {
            Some("h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        ConnInfo {
            client_addr: peer,
            local_addr,
            tls,
            protocol,
            default_api: self.default_api.clone(),
        }
    }

    async fn serve<S>(&self, io: S, info: ConnInfo, watcher: hyper_util::server::graceful::Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handler = Arc::clone(&self.handler);
        let alt_svc = self.alt_svc.clone();
        let activity = Arc::new(Activity::default());
        let active = Arc::clone(&activity);
        let client = info.client_addr;
        // The protocol is what each request came in, not what ALPN said:
        // hyper tells HTTP/1.1 from HTTP/2 by the first bytes, so a client
        // may negotiate `h2` and speak HTTP/1.1 (and must then send Host).
        let info_h2 = Arc::new(ConnInfo {
            protocol: Protocol::Http2,
            ..info.clone()
        });
        let info = Arc::new(ConnInfo {
            protocol: Protocol::Http1,
            ..info
        });
        let service = service_fn(move |mut req: Request<Incoming>| {
            let handler = Arc::clone(&handler);
            let alt_svc = alt_svc.clone();
            let in_flight = Activity::enter(&active);
            let info = if req.version() == http::Version::HTTP_2 {
                join_cookies(req.headers_mut());
                Arc::clone(&info_h2)
            } else {
                Arc::clone(&info)
            };
            async move {
                let mut resp = handler.call(req.map(body::boxed), info).await;
                if let Some(value) = alt_svc {
                    resp.headers_mut().insert(ALT_SVC, value);
                }
                // In flight until its body has been sent (or dropped); the
                // head is now with hyper, waiting for the client.
                in_flight.handed(true);
                Ok::<_, std::convert::Infallible>(resp.map(|inner| Tracked { inner, in_flight }))
            }
        });
        let builder = self.builder();
        let io = Watched {
            io,
            activity: Arc::clone(&activity),
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let (idle, send) = (self.limits.header_read_timeout, self.limits.send_timeout);
        tokio::select! {
            served = watcher.watch(conn.into_owned()) => if let Err(err) = served {
                tracing::debug!(%err, "connection ended with an error");
            },
            closed = activity.watch(idle, send) => match closed {
                Closed::Idle => tracing::debug!("idle connection closed"),
                Closed::Stalled => tracing::info!(
                    %client,
                    "connection closed: the client took no more of a response for the send timeout"
                ),
            },
        }
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // Not hyper's header read timeout: it boxes and registers a new
            // timer for every request head, where the connection's own
            // watcher (`Activity::watch`) already closes a connection whose
            // head does not come, at one timer per connection.
            .header_read_timeout(None)
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        // Not `max_headers`: hyper's default, 100 fields, stays, and an
        // HTTP/1.1 request with more gets hyper's bare 431. Any cap above
        // it makes hyper allocate its parse arrays on the heap for every
        // request (two of 32 KiB at the gateway's 1 000): measured in
        // session 29, about 4 % of the 1 KB chain's throughput.
        builder
            .http2()
            .timer(TokioTimer::new())
            // Pings find a peer that vanished with streams still open.
            .keep_alive_interval(self.limits.header_read_timeout)
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(self.limits.max_concurrent_streams)
            // What hyper queues per stream for a slow client (its default,
            // 400 KiB, is 100 MiB over 256 streams of one connection).
            .max_send_buf_size(MAX_SEND_BUF);
        builder
    }
}

/// Joins the `cookie` fields of an HTTP/2 or HTTP/3 request into one, as
/// those protocols require before a request goes on over HTTP/1.1 (RFC 9113
/// §8.2.3, RFC 9114 §4.2.1): their clients may send each cookie as a field
/// of its own (it compresses better), and an HTTP/1.1 server expects one
/// `Cookie` line (RFC 6265 §5.4), which forwarded as is they would not get.
pub(crate) fn join_cookies(headers: &mut http::HeaderMap) {
    let cookies = headers.get_all(http::header::COOKIE);
    if cookies.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    let mut sensitive = false;
    for value in cookies {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
        sensitive |= value.is_sensitive();
    }
    // Valid values joined by "; " make a valid value: this cannot fail.
    if let Ok(mut value) = HeaderValue::from_bytes(&joined) {
        value.set_sensitive(sensitive);
        headers.insert(http::header::COOKIE, value);
    }
}

/// What a connection has in flight, for closing idle ones and ones whose
/// client stopped reading: hyper closes an HTTP/1.1 connection idle between
/// requests, but nothing closes one that never sends a request (its first
/// bytes are awaited to tell HTTP/1.1 from HTTP/2, with no timer), an HTTP/2
/// connection with no streams, or one whose client takes no more of a
/// response (a full TCP window, an HTTP/2 window left at 0: hyper waits for
/// it for ever, with the response's upstream request open).
#[derive(Debug)]
struct Activity {
    /// Requests started on the connection.
    started: std::sync::atomic::AtomicU64,
    /// Requests whose response body has not ended (or been dropped), each
    /// with when hyper was handed its head or latest chunk and has not asked
    /// for more since (`None` while hyper waits on the body, not the client).
    in_flight: std::sync::Mutex<slab::Slab<Option<Instant>>>,
    /// When a write to the client's socket last found it full, with no
    /// write that went through since, in milliseconds after `since` plus one
    /// (0: writes go through). hyper may hold a whole response in its own
    /// buffers, its body long finished.
    blocked: std::sync::atomic::AtomicU64,
    /// When the connection began.
    since: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: std::sync::atomic::AtomicU64::default(),
            in_flight: std::sync::Mutex::default(),
            blocked: std::sync::atomic::AtomicU64::default(),
            since: Instant::now(),
        }
    }
}

/// Why [`Activity::watch`] closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Idle,
    Stalled,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, slab::Slab<Option<Instant>>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enter(this: &Arc<Activity>) -> InFlight {
        use std::sync::atomic::Ordering::Relaxed;
        this.started.fetch_add(1, Relaxed);
        let key = this.lock().insert(None);
        InFlight {
            activity: Arc::clone(this),
            key,
        }
    }

    /// Completes when the connection should close: a whole `idle` period
    /// passed with no request in flight and none started, or a response
    /// head or chunk has waited for the client longer than `send`.
    async fn watch(&self, idle: Duration, send: Duration) -> Closed {
        use std::sync::atomic::Ordering::Relaxed;
        let tick = idle.min(send / 2).max(Duration::from_millis(1));
        let mut seen = self.started.load(Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            let blocked = self.blocked.load(Relaxed);
            let blocked_for = now
                .duration_since(self.since)
                .saturating_sub(Duration::from_millis(blocked.saturating_sub(1)));
            if blocked != 0 && blocked_for >= send {
                return Closed::Stalled;
            }
            let (busy, stalled) = {
                let in_flight = self.lock();
                let stalled = in_flight
                    .iter()
                    .any(|(_, at)| at.is_some_and(|at| now.duration_since(at) >= send));
                (!in_flight.is_empty(), stalled)
            };
            if stalled {
                return Closed::Stalled;
            }
            let started = self.started.load(Relaxed);
            if busy || started != seen {
                seen = started;
                quiet_since = now;
            } else if now.duration_since(quiet_since) >= idle {
                return Closed::Idle;
            }
        }
    }
}

/// The client's connection, recording in its [`Activity`] when writes to it
/// stop going through.
struct Watched<S> {
    io: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    /// Notes a write's outcome: a full socket (from when it first was) or
    /// progress.
    fn wrote<T>(&self, polled: &std::task::Poll<std::io::Result<T>>) {
        use std::sync::atomic::Ordering::Relaxed;
        let blocked = &self.activity.blocked;
        match (polled.is_pending(), blocked.load(Relaxed) != 0) {
            (true, false) => {
                let ms = self.activity.since.elapsed().as_millis();
                blocked.store(u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1, Relaxed);
            }
            (false, true) => blocked.store(0, Relaxed),
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(&polled);
        polled
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request of an [`Activity`], until dropped with its response body.
#[derive(Debug)]
struct InFlight {
    activity: Arc<Activity>,
    key: usize,
}

impl InFlight {
    /// Whether hyper now holds something of the response for the client
    /// (`false`: it asked the body for more).
    fn handed(&self, handed: bool) {
        let at = handed.then(Instant::now);
        if let Some(slot) = self.activity.lock().get_mut(self.key) {
            *slot = at;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.lock().try_remove(self.key);
    }
}

/// A response body that keeps its request counted as in flight, and marks
/// when hyper holds a chunk of it for the client.
struct Tracked {
    inner: Body,
    in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = portico_gateway::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.in_flight.handed(false);
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = &polled {
            self.in_flight.handed(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&'static str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for v in values {
            headers.append(http::header::COOKIE, HeaderValue::from_static(v));
        }
        join_cookies(&mut headers);
        headers
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let joined = cookies(&["a=1", "b=2", "c=3"]);
        let values: Vec<_> = joined.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(values, ["a=1; b=2; c=3"]);
        assert_eq!(cookies(&["a=1"])[http::header::COOKIE], "a=1");
        assert!(cookies(&[]).is_empty());
    }

    #[test]
    fn a_sensitive_cookie_keeps_the_joined_field_sensitive() {
        let mut headers = http::HeaderMap::new();
        let mut secret = HeaderValue::from_static("sid=1");
        secret.set_sensitive(true);
        headers.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(http::header::COOKIE, secret);
        join_cookies(&mut headers);
        assert!(headers[http::header::COOKIE].is_sensitive());
    }
}
