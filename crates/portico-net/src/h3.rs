//! The HTTP/3 listener: a quinn endpoint on UDP, h3 over it, and every
//! request stream turned into the same `http::Request<Body>` that hyper gives
//! the TCP listener, for the same [`Handler`]. This adapter only translates
//! and enforces HTTP/3's limits; it knows nothing of APIs.
//!
//! Limits and their errors, as the protocol prescribes:
//! * concurrent requests per connection: QUIC stream credit (`MAX_STREAMS`);
//!   a client over it waits, nothing is refused;
//! * header section: `SETTINGS_MAX_FIELD_SECTION_SIZE`; h3 answers a larger
//!   one with a bare `431` (RFC 9114 §4.2.2) before we see the request, and
//!   one over twice the limit is refused unread (`H3_EXCESSIVE_LOAD`), as is
//!   any frame that declares more than h3 should buffer (see `h3_frames`);
//! * connections: past `max_connections`, or past a client address's
//!   `max_connections_per_client`, a new one is refused before its handshake
//!   (`CONNECTION_REFUSED`);
//! * idle connections: QUIC's idle timeout, a silent close;
//! * a client that takes no more of a response for the send timeout: its
//!   stream is reset (`H3_REQUEST_CANCELLED`);
//! * early data: unsafe methods get `425 Too Early` (see `h3_early`);
//! * shutdown: GOAWAY naming the stream after the last accepted (later ones
//!   are rejected, `H3_REQUEST_REJECTED`), then each connection closes with
//!   `H3_NO_ERROR` when its last request has finished, within the drain timeout.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h3::error::Code;
use portico_gateway::workers::{WorkerPool, current_thread_runtime};
use portico_gateway::{ConnInfo, ErrorKind, GatewayError, Protocol, TlsInfo, body};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::NetError;
use crate::clients::{ClientConns, ClientSlot};
use crate::h3_body::{RequestBody, SendError, send_response};
use crate::h3_early::{Handshake, allowed_early, mark_early};
use crate::h3_flow::Flows;
use crate::h3_quic::{self, Admission, StreamCaps};
use crate::http::{Handler, HttpLimits, join_cookies};
use crate::quic::QuicSocket;

type H3Connection = h3::server::Connection<h3_quic::Connection, Bytes>;
type Resolver = h3::server::RequestResolver<h3_quic::Connection, Bytes>;
type H3Stream = h3::server::RequestStream<h3_quic::BidiStream<Bytes>, Bytes>;

/// `H3_NO_ERROR` (RFC 9114 §8.1) as a QUIC application close code.
const H3_NO_ERROR: quinn::VarInt = quinn::VarInt::from_u32(0x100);

/// How long a closed endpoint may take to tell its peers (CONNECTION_CLOSE).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One public HTTP/3 listener.
pub struct H3Server<H> {
    /// A bound server endpoint (see [`crate::quic::bind_endpoint`]).
    pub endpoint: quinn::Endpoint,
    pub default_api: Option<Arc<str>>,
    /// `max_header_bytes` becomes the advertised field-section limit;
    /// `handshake_timeout` bounds the wait for a ClientHello; `drain_timeout`
    /// bounds shutdown. `max_concurrent_streams` is HTTP/2's: QUIC's own is
    /// in the endpoint's transport config.
    pub limits: HttpLimits,
    pub handler: Arc<H>,
    /// HTTP/3 grease ([`crate::QuicSettings::grease`]).
    pub grease: bool,
    /// The endpoint's QUIC idle timeout ([`crate::QuicSettings::idle_timeout`]):
    /// a connection without requests is closed after it, or after
    /// `header_read_timeout` if that is longer, twice.
    pub idle_timeout: Duration,
}

/// An HTTP/3 listener whose socket is bound but not yet served.
pub struct H3Listener<H> {
    pub socket: QuicSocket,
    pub default_api: Option<Arc<str>>,
    pub limits: HttpLimits,
    pub handler: Arc<H>,
}

impl<H: Handler> H3Listener<H> {
    /// Serves on the caller's runtime until `shutdown`, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        match self.start() {
            Ok(server) => server.run(shutdown).await,
            Err(err) => tracing::error!(%err, "starting the HTTP/3 endpoint failed"),
        }
    }

    /// Serves on one thread per core (see [`H3Listener::run_on_workers`]).
    pub async fn run_on_thread(self, shutdown: impl Future<Output = ()>) {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        self.run_on_workers(workers, shutdown).await;
    }

    /// Serves on `workers` dedicated threads, each running a current-thread
    /// runtime (the TCP listener's worker model). The first runs the quinn
    /// endpoint (the UDP socket's receive side) and accepts; each connection
    /// is then served by one worker, round robin: its quinn driver, its h3
    /// connection and every request task run there, and it sends on the
    /// shared socket from there. Only the datagrams a connection receives
    /// cross threads, once, from the endpoint to its driver. `workers == 0`
    /// serves on the caller's runtime.
    pub async fn run_on_workers(self, workers: usize, shutdown: impl Future<Output = ()>) {
        if workers == 0 {
            return self.run(shutdown).await;
        }
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let helpers = WorkerPool::start("portico-h3", 1, workers - 1);
        let mut runtimes = helpers.handles().to_vec();
        let serve = move || {
            let runtime = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(err) => return tracing::error!(%err, "HTTP/3 runtime failed to start"),
            };
            runtimes.insert(0, runtime.handle().clone());
            runtime.block_on(async move {
                let server = match self.start() {
                    Ok(server) => server,
                    Err(err) => return tracing::error!(%err, "starting the HTTP/3 endpoint failed"),
                };
                let stop = async move {
                    let _ = stop_rx.wait_for(|s| *s).await;
                };
                server.run_spread(&runtimes, stop).await;
            });
        };
        let thread = match std::thread::Builder::new()
            .name("portico-h3-0".into())
            .spawn(serve)
        {
            Ok(thread) => thread,
            Err(err) => {
                tracing::error!(%err, "starting the HTTP/3 thread failed");
                let _ = tokio::task::spawn_blocking(move || helpers.stop()).await;
                return;
            }
        };
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = thread.join();
            // The helpers' runtimes hold connection drivers until the endpoint
            // is idle: they stop only once the serving thread is done.
            helpers.stop();
        })
        .await;
    }

    fn start(self) -> Result<H3Server<H>, crate::NetError> {
        let grease = self.socket.grease();
        let idle_timeout = self.socket.idle_timeout();
        Ok(H3Server {
            grease,
            idle_timeout,
            endpoint: self.socket.start()?,
            default_api: self.default_api,
            limits: self.limits,
            handler: self.handler,
        })
    }
}

/// What every request task of a connection shares.
struct ConnCtx<H> {
    handler: Arc<H>,
    info: Arc<ConnInfo>,
    handshake: Handshake,
    /// How long a request stream may take to deliver its head.
    head_timeout: Duration,
    /// How often an idle connection is checked (see [`serve`]).
    idle_timeout: Duration,
    /// How long a response may wait with the client taking none of it.
    send_timeout: Duration,
    /// The flows of the connection's request streams.
    flows: Arc<Flows>,
}

impl<H: Handler> H3Server<H> {
    /// Accepts connections until `shutdown` completes, then drains them:
    /// GOAWAY to every client, in-flight requests finish (up to the drain
    /// timeout), and the endpoint closes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_spread(&[], shutdown).await;
    }

    /// [`H3Server::run`], with connections served on `runtimes` in turn
    /// (none: on the caller's runtime). A connection's quinn driver and its
    /// request tasks are spawned where the connection is accepted.
    async fn run_spread(
        self,
        runtimes: &[tokio::runtime::Handle],
        shutdown: impl Future<Output = ()>,
    ) {
        let shared = Arc::new(self);
        let mut turn = runtimes.iter().cycle();
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let clients = ClientConns::new(shared.limits.max_connections_per_client, "h3");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = shared.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let Some((incoming, client)) = shared.admit(incoming, conns.len(), &clients) else {
                            continue;
                        };
                        let conn = Arc::clone(&shared).connection(incoming, drain_rx.clone());
                        // The client's place is held as long as the connection's task.
                        let conn = async move {
                            conn.await;
                            drop(client);
                        };
                        match turn.next() {
                            Some(runtime) => conns.spawn_on(conn, runtime),
                            None => conns.spawn(conn),
                        };
                    }
                    None => break,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        shared.drain(conns, &drain_tx).await;
    }

    /// Whether a connection attempt, with `open` connections already,
    /// goes on to its handshake, and its place under its client's cap.
    /// Refused (QUIC's CONNECTION_REFUSED; the client may try again, or over
    /// TCP): at `max_connections`, or when its client address already holds
    /// `max_connections_per_client` (once that address is proven: the
    /// handler counts those refusals, which forged Initials must not raise). Asked to prove its address first (a
    /// QUIC Retry: one more round trip): past half of either, so that
    /// handshakes from spoofed addresses, never finished, cannot hold the
    /// rest of the node's slots, or of a client's, until they time out.
    fn admit(
        &self,
        incoming: quinn::Incoming,
        open: usize,
        clients: &ClientConns,
    ) -> Option<(quinn::Incoming, Option<ClientSlot>)> {
        let max = self.limits.max_connections;
        if open >= max {
            tracing::debug!(peer = %incoming.remote_address(), "HTTP/3 connection refused: max_connections");
            incoming.refuse();
            return None;
        }
        let Ok(client) = clients.admit(incoming.remote_address().ip()) else {
            // A UDP source address may be forged: one that has not proved
            // itself is asked to (a Retry), so that only a client that can
            // receive at that address is refused and counted.
            if !incoming.remote_address_validated() && incoming.may_retry() {
                if let Err(err) = incoming.retry() {
                    err.into_incoming().refuse();
                }
                return None;
            }
            self.handler.connection_refused();
            incoming.refuse();
            return None;
        };
        let crowded = open >= max / 2
            || client
                .as_ref()
                .is_some_and(|c| c.held() > clients.max() / 2);
        if crowded && !incoming.remote_address_validated() && incoming.may_retry() {
            drop(client);
            if let Err(err) = incoming.retry() {
                err.into_incoming().refuse();
            }
            return None;
        }
        Some((incoming, client))
    }

    async fn drain(&self, mut conns: JoinSet<()>, drain: &watch::Sender<bool>) {
        // New handshakes are refused from here on.
        self.endpoint.set_server_config(None);
        let _ = drain.send(true);
        let all_done = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(self.limits.drain_timeout, all_done)
            .await
            .is_err()
        {
            tracing::warn!("HTTP/3 connections still open after the drain timeout; closing them");
        }
        conns.shutdown().await;
        self.endpoint.close(H3_NO_ERROR, b"shutdown");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming, drain: watch::Receiver<bool>) {
        let Some((conn, ctx)) = self.accept(incoming).await else {
            return;
        };
        let max_field_section = u64::try_from(self.limits.max_header_bytes).unwrap_or(u64::MAX);
        let admission = Arc::new(Admission::default());
        let quic = h3_quic::Connection::new(
            conn.clone(),
            StreamCaps::new(max_field_section),
            Arc::clone(&admission),
            Arc::clone(&ctx.flows),
        );
        let built = h3::server::builder()
            .max_field_section_size(max_field_section)
            .send_grease(self.grease)
            .build::<_, Bytes>(quic)
            .await;
        match built {
            Ok(h3) => serve(h3, &conn, &admission, Arc::new(ctx), drain).await,
            Err(err) => tracing::debug!(%err, "HTTP/3 connection setup failed"),
        }
    }

    /// Accepts a QUIC connection and makes it usable at once, before its
    /// handshake completes (0-RTT; 0.5-RTT for our answers).
    async fn accept(&self, incoming: quinn::Incoming) -> Option<(quinn::Connection, ConnCtx<H>)> {
        let peer = incoming.remote_address();
        let mut connecting = incoming
            .accept()
            .map_err(|err| tracing::debug!(%peer, %err, "QUIC connection refused"))
            .ok()?;
        // 1. The ClientHello (SNI, ALPN); it may span several packets.
        let hello =
            tokio::time::timeout(self.limits.handshake_timeout, connecting.handshake_data());
        let tls = match hello.await {
            Ok(Ok(data)) => tls_info(data),
            Ok(Err(err)) => {
                tracing::debug!(%peer, %err, "QUIC handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "QUIC handshake timed out");
                return None;
            }
        };
        // 2. Usable now: requests that arrive before completion are early data.
        let (conn, handshake) = match connecting.into_0rtt() {
            Ok((conn, completed)) => {
                let handshake = Handshake::pending(completed, conn.clone());
                (conn, handshake)
            }
            Err(connecting) => {
                let done = tokio::time::timeout(self.limits.handshake_timeout, connecting).await;
                (done.ok()?.ok()?, Handshake::completed())
            }
        };
        let info = self.conn_info(&conn, tls);
        let ctx = ConnCtx {
            handler: Arc::clone(&self.handler),
            info: Arc::new(info),
            handshake,
            head_timeout: self.limits.header_read_timeout,
            idle_timeout: self.idle_timeout.max(self.limits.header_read_timeout),
            send_timeout: self.limits.send_timeout,
            flows: Arc::default(),
        };
        Some((conn, ctx))
    }

    fn conn_info(&self, conn: &quinn::Connection, tls: TlsInfo) -> ConnInfo {
        let bound = self.endpoint.local_addr().ok();
        let port = bound.map_or(0, |a| a.port());
        let ip = conn
            .local_ip()
            .or(bound.map(|a| a.ip()))
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        ConnInfo {
            client_addr: conn.remote_address(),
            local_addr: SocketAddr::new(ip, port),
            tls: Some(tls),
            protocol: Protocol::Http3,
            default_api: self.default_api.clone(),
        }
    }
}

/// Serves one connection's requests, each on its own task, until the client
/// leaves, the connection fails, or shutdown has drained it.
///
/// A connection that fails takes its requests with it: their futures (and
/// the upstream work under them) are dropped, as hyper does for h1/h2.
async fn serve<H: Handler>(
    mut h3: H3Connection,
    quic: &quinn::Connection,
    admission: &Admission,
    ctx: Arc<ConnCtx<H>>,
    mut drain: watch::Receiver<bool>,
) {
    let mut requests = JoinSet::new();
    let mut draining = false;
    // A connection with no request for a while is closed, as TCP's are:
    // QUIC's idle timeout never ends one whose client keeps pinging, nor
    // one whose handshake never completes (its 0-RTT half is served).
    // Checked every `idle` (the QUIC idle timeout, or the header read
    // timeout if longer): closed at the second check in a row that finds
    // no request in flight and none accepted since the first.
    let idle = ctx.idle_timeout;
    let check = tokio::time::sleep(idle);
    tokio::pin!(check);
    let mut quiet = false;
    loop {
        tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    quiet = false;
                    // Finished requests are reaped here, not joined as they
                    // finish: that would wake this task once per request.
                    while requests.try_join_next().is_some() {}
                    // Boxed: a task's future is copied whole when it is
                    // spawned, finished and joined, and a request's (the
                    // gateway's included) is large; a box is copied once.
                    requests.spawn(Box::pin(request(resolver, Arc::clone(&ctx))));
                }
                // The client's GOAWAY, and all its requests are done; h3
                // answered with its own, which `h3_quic` made name the
                // stream after the last accepted.
                Ok(None) => break,
                Err(err) => {
                    if !err.is_h3_no_error() {
                        tracing::debug!(%err, "HTTP/3 connection ended with an error");
                    }
                    requests.abort_all();
                    break;
                }
            },
            // Draining: the connection ends with its last request.
            Some(_) = requests.join_next(), if draining && !requests.is_empty() => {
                if requests.is_empty() {
                    break;
                }
            }
            () = &mut check, if !draining => {
                while requests.try_join_next().is_some() {}
                if quiet && requests.is_empty() {
                    tracing::debug!("idle HTTP/3 connection closed");
                    admission.close();
                    let _ = h3.shutdown(0).await;
                    break;
                }
                quiet = requests.is_empty();
                check.as_mut().reset(tokio::time::Instant::now() + idle);
            }
            () = wait_drain(&mut drain), if !draining => {
                draining = true;
                // GOAWAY, naming the stream after the last accepted:
                // requests already accepted finish, later ones are rejected
                // (H3_REQUEST_REJECTED: safe for the client to retry).
                let goaway = admission.close();
                tracing::debug!(goaway, "HTTP/3 connection draining");
                while requests.try_join_next().is_some() {}
                if h3.shutdown(1).await.is_err() || requests.is_empty() {
                    break;
                }
            }
        }
    }
    while requests.join_next().await.is_some() {}
    linger(quic).await;
    // Dropping `h3` closes the connection with H3_NO_ERROR.
}

/// Waits for the last responses to reach the client before we close: a QUIC
/// close is immediate and discards what is still unsent or unacknowledged.
/// Ends early when the client closes first; bounded by a few round trips.
async fn linger(quic: &quinn::Connection) {
    let wait = (quic.rtt() * 3 + Duration::from_millis(10)).min(CLOSE_GRACE);
    let _ = tokio::time::timeout(wait, quic.closed()).await;
}

async fn wait_drain(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// One request: read its head, apply the early-data rule, call the handler,
/// write the response as its body streams.
async fn request<H: Handler>(resolver: Resolver, ctx: Arc<ConnCtx<H>>) {
    // 1. The head, within the header read timeout (a client keeping its
    // connection alive could otherwise hold streams open without one). One
    // over the field-section limit was answered 431 by h3.
    let (mut req, stream) = match read_head(resolver, ctx.head_timeout).await {
        Ok(pair) => pair,
        Err(err) => return tracing::debug!(%err, "HTTP/3 request not read"),
    };
    join_cookies(req.headers_mut());
    let flow = ctx.flows.claim(stream.id()).unwrap_or_default();
    let (mut send, mut recv) = stream.split();
    // 2. Early data: safe methods only (RFC 8470).
    let early = !ctx.handshake.is_confirmed();
    let response = if let Some(name) = connection_specific(req.headers()) {
        // RFC 9114 §4.2: malformed. (Left in, `connection: early-data`
        // would also take the early-data marker off the request.)
        tracing::debug!(
            field = name,
            "HTTP/3 request with a connection-specific field: 400"
        );
        recv.stop_sending(Code::H3_NO_ERROR);
        let err = GatewayError::client(ErrorKind::BadRequest)
            .with_cause(format!("connection-specific field `{name}` in HTTP/3"));
        ctx.handler.refuse(&req, &ctx.info, err)
    } else if early && !allowed_early(req.method()) {
        tracing::debug!(method = %req.method(), path = req.uri().path(), "early data: 425 Too Early");
        // The body will not be read: tell the client to stop sending it.
        recv.stop_sending(Code::H3_NO_ERROR);
        let err = GatewayError::client(ErrorKind::TooEarly);
        ctx.handler.refuse(&req, &ctx.info, err)
    } else {
        let body = RequestBody::new(recv, Arc::clone(&flow));
        let mut req = req.map(|()| body::boxed(body));
        if early {
            mark_early(&mut req);
        }
        let call = ctx.handler.call(req, Arc::clone(&ctx.info));
        match flow.take_stop() {
            Some(stop) => tokio::select! {
                biased;
                response = call => response,
                () = stop.0 => {
                    // Dropped: its backend request (or backbone stream)
                    // goes with it, not on to the route's timeout.
                    return tracing::debug!("HTTP/3 request cancelled by the client");
                }
            },
            None => call.await,
        }
    };
    // 3. The response, frame by frame.
    match send_response(&mut send, response, ctx.send_timeout, &flow).await {
        Ok(()) => {}
        Err(SendError::Stalled) => tracing::info!(
            client = %ctx.info.client_addr,
            "HTTP/3 response reset: the client took no more of it for the send timeout"
        ),
        Err(err) => tracing::debug!(%err, "HTTP/3 response not completed"),
    }
}

/// Reads a request stream's head within `timeout`, as h3's
/// `resolve_request` does, but keeping the stream until the wait ends: one
/// whose head does not come in time is refused with `H3_REQUEST_REJECTED`
/// both ways (RESET_STREAM and STOP_SENDING), not dropped. Dropped, quinn
/// would end our side with a FIN, a clean end where a client should see an
/// error, and stop the client's with code 0, which HTTP/3 does not define.
/// `H3_REQUEST_REJECTED` (RFC 9114 §4.1.1, §8.1): nothing of the request
/// reached the application, so the client may retry it; not
/// `H3_REQUEST_INCOMPLETE`, which answers a client that *ended* its stream
/// without a whole request (h3 sends that one itself).
///
/// h3 0.0.8 reaches the stream only through the resolver's `frame_stream`
/// (public, though hidden from its docs): what `resolve_request` does with
/// it is done here in two steps, the first frame, then the rest of h3's
/// resolution (the 431 for a header section over the limit).
async fn read_head(
    mut resolver: Resolver,
    timeout: Duration,
) -> Result<(http::Request<()>, H3Stream), NetError> {
    use h3::quic::{RecvStream as _, SendStream as _};
    let deadline = tokio::time::Instant::now() + timeout;
    let first = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx));
    let Ok(first) = tokio::time::timeout_at(deadline, first).await else {
        let code = Code::H3_REQUEST_REJECTED.value();
        resolver.frame_stream.reset(code);
        resolver.frame_stream.stream.stop_sending(code);
        return Err(NetError::HeadTimedOut);
    };
    let resolve = resolver.accept_with_frame(first)?.resolve();
    match tokio::time::timeout_at(deadline, resolve).await {
        Ok(resolved) => Ok(resolved?),
        // A 431 the client takes too slowly: dropped with its stream, which
        // h3 holds out of reach by now.
        Err(_) => Err(NetError::HeadTimedOut),
    }
}

/// The first connection-specific field of a request, which HTTP/3 does not
/// allow (RFC 9114 §4.2): `TE` only as `trailers`.
fn connection_specific(headers: &http::HeaderMap) -> Option<&'static str> {
    const FIELDS: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ];
    if let Some(name) = FIELDS.into_iter().find(|n| headers.contains_key(*n)) {
        return Some(name);
    }
    let te_other = headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    te_other.then_some("te")
}

/// TLS facts for logs and the backbone, from quinn's handshake data.
fn tls_info(data: Box<dyn Any>) -> TlsInfo {
    let data = data.downcast::<quinn::crypto::rustls::HandshakeData>().ok();
    TlsInfo {
        sni: data.as_ref().and_then(|d| d.server_name.clone()),
        alpn: data
            .and_then(|d| d.protocol)
            .map(|p| String::from_utf8_lossy(&p).into_owned()),
        // QUIC is TLS 1.3 only (RFC 9001 §4.2).
        version: rustls::ProtocolVersion::TLSv1_3.as_str().map(str::to_owned),
    }
}
