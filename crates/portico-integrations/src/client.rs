//! The pooled backend client: keep-alive HTTP/1.1 and HTTP/2 (ALPN for https,
//! prior knowledge for cleartext when asked), verified TLS, hickory DNS.

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_gateway::Body;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

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
    /// Longest a new connection may take: name resolution, TCP connect and
    /// the TLS handshake together.
    pub connect_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge to cleartext backends (and only h2 over TLS).
    pub http2_only: bool,
    /// Offer h2 besides http/1.1 to https backends (ALPN); else HTTP/1.1.
    pub https_h2: bool,
    /// How long an HTTP/2 connection may go without a frame from the
    /// backend, busy or idle, before it is sent a PING (`None`: never).
    /// All of a thread's requests to an h2 backend share one connection: one
    /// that died without a reset would otherwise stay pooled until TCP gives
    /// up (some 15 minutes), every request on it timing out.
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed:
    /// its requests fail, and the next ones open a new connection.
    pub http2_keep_alive_timeout: Duration,
    /// How long a thread's pool is used before it is replaced by a new one
    /// (`None`: never). Requests in flight finish on the old pool's
    /// connections, which then close; later ones open new connections,
    /// resolving the backend's name again. A pool that is never idle would
    /// otherwise keep its connections, and a name's old addresses, for ever.
    pub pool_max_lifetime: Option<Duration>,
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
            https_h2: false,
            http2_keep_alive_interval: Some(Duration::from_secs(10)),
            http2_keep_alive_timeout: Duration::from_secs(10),
            pool_max_lifetime: Some(Duration::from_secs(300)),
        }
    }
}

type Connector = TimedConnector<HttpsConnector<HttpConnector<Resolver>>>;

type Pool = Client<Connector, Body>;

/// A connector whose whole connect (name resolution, TCP, TLS handshake)
/// must finish within `timeout`.
///
/// `HttpConnector`'s own connect timeout covers the TCP connect only: a
/// backend that accepted TCP and never sent its ServerHello held the
/// request for the whole route timeout (a 504, not the 502 of a failed
/// connect), and a connect hyper-util finishes in the background (after
/// the request it was for took a pooled connection) waited for ever.
#[derive(Clone, Debug)]
struct TimedConnector<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for TimedConnector<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<portico_gateway::BoxError>,
{
    type Response = C::Response;
    type Error = portico_gateway::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(IntegrationError::ConnectTimeout(timeout).into()),
            }
        })
    }
}

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
    /// What every thread's pool is built from.
    builder: hyper_util::client::legacy::Builder,
    connector: Connector,
    max_lifetime: Option<Duration>,
}

/// A thread's pool of one [`BackendClient`].
struct ThreadPool {
    id: u64,
    owner: Weak<Shared>,
    pool: Pool,
    /// When it is to be replaced (`pool_max_lifetime`).
    retire_at: Option<Instant>,
}

/// Ids of [`BackendClient`]s, for the per-thread pools.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's pool of every live [`BackendClient`]; entries whose
    /// client is gone are dropped when another is added.
    static POOLS: RefCell<Vec<ThreadPool>> = const { RefCell::new(Vec::new()) };
}

impl BackendClient {
    pub fn new(settings: &ClientSettings, resolver: Resolver) -> Result<Self, IntegrationError> {
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        // Shared among a name's addresses, so that the next is tried in
        // time; the whole connect, TLS included, is bounded by `TimedConnector`.
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls_config(settings)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        // HTTP/1.1 unless asked: one HTTP/2 connection per backend and
        // thread caps requests in flight at the backend's stream limit, and
        // its shared window lets slow clients stall others' downloads.
        let https = if settings.http2_only {
            builder.enable_http2().wrap_connector(http)
        } else if settings.https_h2 {
            builder.enable_all_versions().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let connector = TimedConnector {
            inner: https,
            timeout: settings.connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .http2_only(settings.http2_only)
            // Idle ones too: a dead connection is found before a request
            // is put on it, not after that request's wait.
            .http2_keep_alive_interval(settings.http2_keep_alive_interval)
            .http2_keep_alive_timeout(settings.http2_keep_alive_timeout)
            .http2_keep_alive_while_idle(true);
        let shared = Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            builder,
            connector,
            max_lifetime: settings.pool_max_lifetime,
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Sends a request on this thread's pool; the response body streams from
    /// the backend.
    ///
    /// A request that fails before any response, on a connection that was
    /// open, goes once more when that is safe: it has an idempotent method
    /// and no body (RFC 9110, 9.2.2). A backend that closes an idle
    /// keep-alive connection just as it is reused (its keep-alive timeout
    /// ran out) then costs the client nothing; hyper-util retries only a
    /// request it had not yet written, and such a GET got 502. A failed
    /// connect is not retried, and nothing with a body is sent twice
    /// (bodies stream, they are never buffered for a second try).
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let replay = replayable(&req);
        match self.send_once(req).await {
            Err(err) if !err.is_connect() => match replay {
                Some(req) => {
                    tracing::debug!(%err, "the backend failed a replayable request; sending it again");
                    self.send_once(req).await
                }
                None => Err(err),
            },
            sent => sent,
        }
    }

    async fn send_once(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        // The future owns what it needs: the thread's list is not borrowed
        // across the await (the task may even move to another thread).
        let sent = POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            let shared = &self.shared;
            if let Some(entry) = pools.iter_mut().find(|entry| entry.id == shared.id) {
                if entry.retire_at.is_some_and(|at| Instant::now() >= at) {
                    // The old pool goes when its last request is answered.
                    entry.pool = shared.builder.build(shared.connector.clone());
                    entry.retire_at = shared.retire_at();
                }
                return entry.pool.request(req);
            }
            // This thread's first request for this client.
            pools.retain(|entry| entry.owner.strong_count() > 0);
            let pool = shared.builder.build(shared.connector.clone());
            let sent = pool.request(req);
            pools.push(ThreadPool {
                id: shared.id,
                owner: Arc::downgrade(shared),
                pool,
                retire_at: shared.retire_at(),
            });
            sent
        });
        sent.await
    }
}

impl Shared {
    /// When a pool made now is to be replaced: its lifetime, give or take a
    /// tenth at random, so that threads whose pools were made together (at
    /// start) do not all reconnect to every backend at the same moment.
    fn retire_at(&self) -> Option<Instant> {
        let jitter = rand::random_range(0.9..1.1);
        self.max_lifetime
            .map(|lifetime| Instant::now() + lifetime.mul_f64(jitter))
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

/// The TLS client configuration for https backends.
///
/// A CA file must hold at least one PEM certificate, and some root must be
/// trusted: a file that is empty, DER, or a key loaded nothing, and the
/// client then started only to fail every https backend with 502. (The
/// client serves whatever integrations a reload brings, so any https one
/// may come to need the roots.)
fn tls_config(settings: &ClientSettings) -> Result<rustls::ClientConfig, IntegrationError> {
    let mut roots = rustls::RootCertStore::empty();
    if settings.use_webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &settings.ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(IntegrationError::Tls(
            "no CA to verify https backends against: give a ca_file or use_webpki_roots = true"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IntegrationError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Adds the PEM certificates of `path` to `roots`; a file without any is
/// an error.
fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), IntegrationError> {
    let ca_error = |reason: String| IntegrationError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
    let mut added = 0usize;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_error(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(ca_error(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ca_file: Option<PathBuf>, use_webpki_roots: bool) -> ClientSettings {
        ClientSettings {
            ca_file,
            use_webpki_roots,
            ..ClientSettings::default()
        }
    }

    /// A CA file holding `contents` in a fresh directory.
    fn ca_file(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, contents).expect("write CA file");
        (dir, path)
    }

    #[test]
    fn pools_retire_at_their_lifetime_give_or_take_a_tenth() {
        let resolver = Resolver::new(&crate::DnsSettings {
            nameservers: Some(Vec::new()),
            use_hosts_file: false,
            cache_size: 1,
        })
        .expect("resolver");
        let lifetime = Duration::from_secs(100);
        let client = BackendClient::new(
            &ClientSettings {
                pool_max_lifetime: Some(lifetime),
                ..ClientSettings::default()
            },
            resolver,
        )
        .expect("client");
        let now = Instant::now();
        let at: Vec<Duration> = (0..20)
            .filter_map(|_| client.shared.retire_at())
            .map(|at| at.duration_since(now))
            .collect();
        assert_eq!(at.len(), 20);
        assert!(
            at.iter()
                .all(|d| *d >= lifetime.mul_f64(0.9) && *d <= lifetime.mul_f64(1.11))
        );
        let spread = at
            .iter()
            .max()
            .unwrap_or(&lifetime)
            .saturating_sub(*at.iter().min().unwrap_or(&lifetime));
        assert!(
            spread > Duration::from_secs(1),
            "every pool retires at once: {at:?}"
        );
    }

    #[test]
    fn a_ca_file_with_a_certificate_is_trusted() {
        let ca = rcgen::generate_simple_self_signed(vec!["backend.test".into()]).expect("CA");
        let (_dir, path) = ca_file(ca.cert.pem().as_bytes());
        assert!(tls_config(&settings(Some(path), false)).is_ok());
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let ca = rcgen::generate_simple_self_signed(vec!["backend.test".into()]).expect("CA");
        let der = ca.cert.der().to_vec();
        let key = ca.signing_key.serialize_pem();
        for (what, contents) in [
            ("empty", Vec::new()),
            ("DER", der),
            ("a key", key.into_bytes()),
        ] {
            let (_dir, path) = ca_file(&contents);
            for webpki in [false, true] {
                match tls_config(&settings(Some(path.clone()), webpki)) {
                    Err(IntegrationError::Ca { path: p, .. }) => assert_eq!(p, path, "{what}"),
                    other => panic!("{what} (webpki roots {webpki}): {:?}", other.err()),
                }
            }
        }
    }

    #[test]
    fn some_root_must_be_trusted() {
        assert!(matches!(
            tls_config(&settings(None, false)),
            Err(IntegrationError::Tls(_))
        ));
        assert!(tls_config(&settings(None, true)).is_ok());
    }
}
