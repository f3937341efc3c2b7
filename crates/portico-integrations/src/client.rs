//! The pooled backend client: keep-alive HTTP/1.1 and HTTP/2 (ALPN for https,
//! prior knowledge for cleartext when asked), verified TLS, hickory DNS.
//!
//! hyper-util's connector opens connections (DNS, TCP, TLS) and hyper's
//! client connections speak HTTP on them; the pool that keeps them is this
//! module's. A request looks in its thread's pool first and builds nothing
//! when an idle connection is there: hyper-util's legacy `Client` prepared a
//! connect future for every request and raced it against its pool, and
//! spawned a task per HTTP/1.1 response to return the connection, which
//! cost the origin about a tenth of its CPU per small proxied request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use portico_gateway::Body;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tower_service::Service;

use crate::IntegrationError;
use crate::dns::Resolver;

/// Settings of the backend connection pool.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// An extra CA (PEM) trusted for https backends.
    pub ca_file: Option<PathBuf>,
    /// Trust the Mozilla root set (webpki-roots) for https backends.
    pub use_webpki_roots: bool,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge to cleartext backends (and only h2 over TLS).
    pub http2_only: bool,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            use_webpki_roots: true,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            connect_timeout: Duration::from_secs(5),
            http2_only: false,
        }
    }
}

type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// A cloneable handle on the backend connection pools: one per thread.
///
/// hyper runs each backend connection as a task on the runtime that opened
/// it. With one pool shared by every listener thread, a request on one
/// thread would often reuse a connection living on another, and wake that
/// thread to write and be woken back by it to read: two cross-thread
/// wake-ups per request. So each thread gets its own pool (as each nginx
/// worker keeps its own upstream keep-alive connections), and a request
/// only ever uses connections driven by its own thread.
/// `pool_max_idle_per_host` applies per thread.
#[derive(Clone, Debug)]
pub struct BackendClient {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Tells this client's pools apart in a thread's list.
    id: u64,
    connector: Connector,
    idle_timeout: Duration,
    max_idle_per_backend: usize,
    http2_only: bool,
}

/// Ids of [`BackendClient`]s, for the per-thread pools.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's pool of every live [`BackendClient`]; entries whose
    /// client is gone are dropped when another is added.
    static POOLS: RefCell<Vec<(u64, Weak<Shared>, Pool)>> = const { RefCell::new(Vec::new()) };
}

impl BackendClient {
    pub fn new(settings: &ClientSettings, resolver: Resolver) -> Result<Self, IntegrationError> {
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls_config(settings)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if settings.http2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_all_versions().wrap_connector(http)
        };
        let shared = Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector,
            idle_timeout: settings.pool_idle_timeout,
            max_idle_per_backend: settings.pool_max_idle_per_host,
            http2_only: settings.http2_only,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Sends a request (absolute URI) on a connection of this thread's pool,
    /// or on a new one; the response body streams from the backend.
    ///
    /// A request that failed on a pooled connection before any response
    /// came goes once more, on a new connection, when that is safe: hyper
    /// handed it back unsent (the backend had closed the connection), or it
    /// has an idempotent method and no body (RFC 9110, 9.2.2), so that a
    /// backend closing an idle keep-alive connection just as it is reused
    /// does not fail the client's request.
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, IntegrationError> {
        let backend = Backend::of(req.uri())?;
        let pooled = self.with_pool(|pool, shared| pool.checkout(&backend, shared));
        let (mut sender, replay) = match pooled {
            Some(sender) => (sender, Some(replayable(&req))),
            None => (self.connect(&backend).await?, None),
        };
        sender.shape(&mut req, &backend);
        let err = match sender.send(req).await {
            Ok(resp) => {
                self.checkin(backend, sender);
                return Ok(resp);
            }
            Err(err) => err,
        };
        let mut err = err;
        let Some(mut req) = err.take_message().or(replay.flatten()) else {
            return Err(IntegrationError::Backend(err.into_error()));
        };
        tracing::debug!(error = %err.error(), "a pooled backend connection failed; sending again on a new one");
        let mut sender = self.connect(&backend).await?;
        sender.shape(&mut req, &backend);
        let resp = sender
            .send(req)
            .await
            .map_err(|e| IntegrationError::Backend(e.into_error()))?;
        self.checkin(backend, sender);
        Ok(resp)
    }

    /// Runs `f` on this thread's pool of this client (made on first use).
    fn with_pool<R>(&self, f: impl FnOnce(&mut Pool, &Shared) -> R) -> R {
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some((.., pool)) = pools.iter_mut().find(|(id, ..)| *id == self.shared.id) {
                return f(pool, &self.shared);
            }
            // This thread's first request for this client.
            pools.retain(|(_, owner, _)| owner.strong_count() > 0);
            let mut pool = Pool::default();
            let out = f(&mut pool, &self.shared);
            pools.push((self.shared.id, Arc::downgrade(&self.shared), pool));
            out
        })
    }

    /// A new connection to `backend`, its HTTP connection task spawned on
    /// this thread's runtime. HTTP/2 when TLS negotiated it (or the client
    /// speaks only HTTP/2); an HTTP/2 connection joins the pool at once,
    /// since other requests may share it.
    async fn connect(&self, backend: &Backend) -> Result<Sender, IntegrationError> {
        let mut connector = self.shared.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(IntegrationError::Connect)?;
        let io = connector
            .call(backend.uri()?)
            .await
            .map_err(IntegrationError::Connect)?;
        if self.shared.http2_only || io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(IntegrationError::Handshake)?;
            tokio::spawn(drive(conn));
            let shared = Sender::H2(sender.clone());
            self.with_pool(|pool, settings| pool.keep(backend.clone(), shared, settings));
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(IntegrationError::Handshake)?;
            tokio::spawn(drive(conn));
            Ok(Sender::H1(sender))
        }
    }

    /// Returns an HTTP/1.1 connection to the pool once its response head is
    /// in: it is taken again only when ready, after the body is read. An
    /// HTTP/2 one is a clone of a pooled connection (pooled when opened).
    fn checkin(&self, backend: Backend, sender: Sender) {
        if let Sender::H1(_) = sender {
            self.with_pool(|pool, shared| pool.keep(backend, sender, shared));
        }
    }
}

/// A copy of `req` to send again if its first try fails before any
/// response: only for an idempotent method and no body.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    let body = req.body();
    let empty = body.is_end_stream() || body.size_hint().exact() == Some(0);
    if !empty || !req.method().is_idempotent() {
        return None;
    }
    let mut copy = Request::new(portico_gateway::body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Drives a client connection until it closes.
async fn drive<F: std::future::Future<Output = hyper::Result<()>>>(conn: F) {
    if let Err(err) = conn.await {
        tracing::debug!(%err, "backend connection closed");
    }
}

/// Where a request goes: its URI's scheme and authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Backend {
    scheme: Scheme,
    authority: Authority,
}

impl Backend {
    fn of(uri: &Uri) -> Result<Backend, IntegrationError> {
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => Ok(Backend {
                scheme: scheme.clone(),
                authority: authority.clone(),
            }),
            _ => Err(IntegrationError::Uri(uri.to_string())),
        }
    }

    /// What the connector is given: scheme and authority.
    fn uri(&self) -> Result<Uri, IntegrationError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static("/"))
            .build()
            .map_err(|e| IntegrationError::Uri(e.to_string()))
    }
}

/// One connection's request handle.
enum Sender {
    /// Not `Clone` in hyper: one request at a time, so in the pool or in use.
    H1(http1::SendRequest<Body>),
    /// Shared: stays in the pool while requests use clones of it.
    H2(http2::SendRequest<Body>),
}

type Sent = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>;

impl Sender {
    /// HTTP/1.1 sends the origin form (`/path?query`; `Host` says the rest),
    /// HTTP/2 the absolute URI (its `:scheme` and `:authority`).
    fn shape(&self, req: &mut Request<Body>, backend: &Backend) {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        match self {
            Sender::H1(_) => *req.uri_mut() = Uri::from(path),
            Sender::H2(_) if req.uri().scheme().is_none() => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(backend.scheme.clone());
                parts.authority = Some(backend.authority.clone());
                parts.path_and_query = Some(path);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            Sender::H2(_) => {}
        }
    }

    async fn send(&mut self, req: Request<Body>) -> Sent {
        match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// One thread's connections of one client, by backend.
#[derive(Default)]
struct Pool {
    backends: HashMap<Backend, Vec<Pooled>>,
    /// When idle connections of every backend were last looked over.
    swept: Option<Instant>,
}

struct Pooled {
    sender: Sender,
    /// When it was last handed out or returned.
    used: Instant,
}

impl Pooled {
    /// Closed, or ready and unused for longer than the idle timeout.
    fn expired(&self, now: Instant, idle_timeout: Duration) -> bool {
        self.sender.is_closed()
            || (self.sender.is_ready() && now.saturating_duration_since(self.used) > idle_timeout)
    }
}

impl Pool {
    /// A ready connection to `backend`, newest first; drops closed and
    /// expired ones on the way.
    fn checkout(&mut self, backend: &Backend, shared: &Shared) -> Option<Sender> {
        let now = Instant::now();
        self.sweep(now, shared.idle_timeout);
        let list = self.backends.get_mut(backend)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if list[i].expired(now, shared.idle_timeout) {
                list.swap_remove(i);
            } else if list[i].sender.is_ready() {
                list[i].used = now;
                return Some(match &list[i].sender {
                    Sender::H2(s) => Sender::H2(s.clone()),
                    Sender::H1(_) => list.swap_remove(i).sender,
                });
            }
        }
        None
    }

    /// Keeps a connection for later requests, unless `backend` already
    /// has its fill.
    fn keep(&mut self, backend: Backend, sender: Sender, shared: &Shared) {
        let list = self.backends.entry(backend).or_default();
        if list.len() < shared.max_idle_per_backend {
            list.push(Pooled {
                sender,
                used: Instant::now(),
            });
        }
    }

    /// Every `idle_timeout`, drops the closed and expired connections of
    /// every backend, and backends left with none.
    fn sweep(&mut self, now: Instant, idle_timeout: Duration) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < idle_timeout)
        {
            return;
        }
        self.swept = Some(now);
        for list in self.backends.values_mut() {
            list.retain(|p| !p.expired(now, idle_timeout));
        }
        self.backends.retain(|_, list| !list.is_empty());
    }
}

fn tls_config(settings: &ClientSettings) -> Result<rustls::ClientConfig, IntegrationError> {
    let mut roots = rustls::RootCertStore::empty();
    if settings.use_webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|e| IntegrationError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| IntegrationError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| IntegrationError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IntegrationError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
