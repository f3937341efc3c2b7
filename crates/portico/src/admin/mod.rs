//! The admin listener (`[admin] address`): HTTP/1.1 with JSON bodies, every
//! request authenticated with `Authorization: Bearer TOKEN`.
//!
//! * missing or malformed credentials: `401 {"message":"Unauthorized"}` with
//!   `WWW-Authenticate: Bearer`; a wrong token: `403 {"message":"Forbidden"}`
//!   (checked before routing, so unauthenticated callers learn nothing of the routes);
//! * a bad request: `400 {"message":"<reason>"}`; a body over 64 KiB: 413;
//!   an unknown path: 404; a known path with another method: 405 with `Allow`.
//!
//! Routes live in submodules (`cache`: purges and statistics; `usage`: quota
//! usage per key and the degraded-mode counter; `config`: the definitions
//! served, and on a PoP how each origin's arrived); [`Admin::route`]
//! dispatches on the path prefix, so other areas add their own module and one arm.

mod cache;
mod config;
mod usage;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portico_config::NodeConfig;
use portico_gateway::cache::PurgeScope;
use portico_gateway::{Gateway, Upstream};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::AppError;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// How long a connection may take to send a request head, and stay idle
/// between requests.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin API serves with.
pub struct Admin<U> {
    pub gateway: Arc<Gateway<U>>,
    /// The bearer token; an origin's reload (SIGHUP) replaces it.
    token: tokio::sync::watch::Receiver<Box<[u8]>>,
    /// Every purge done here is sent on this channel too: the backbone forwards it
    /// to the connected PoPs (a receiver subscribes; none yet means origin only).
    pub purges: broadcast::Sender<PurgeScope>,
    next_purge_id: AtomicU64,
    /// A PoP's: the configuration each origin sent (for `GET /config`).
    origins: Option<Box<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl<U: Upstream> Admin<U> {
    pub fn new(
        gateway: Arc<Gateway<U>>,
        token: tokio::sync::watch::Receiver<Box<[u8]>>,
        purges: broadcast::Sender<PurgeScope>,
    ) -> Self {
        Admin {
            gateway,
            token,
            purges,
            next_purge_id: AtomicU64::new(1),
            origins: None,
        }
    }

    /// Whether this is a PoP's admin API.
    fn is_pop(&self) -> bool {
        self.origins.is_some()
    }

    /// A PoP's admin API: `GET /config` also lists its origins' definitions;
    /// purges are refused (they are the origin's).
    pub fn with_origins(mut self, status: portico_backbone::ConfigStatus) -> Self {
        self.origins = Some(Box::new(move || config::origins(&status)));
        self
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match self.refusal(req.headers()) {
            None => self.route(req).await,
            Some(resp) => resp,
        }
    }

    /// Bearer token check (constant time in the token's bytes): the answer to a
    /// caller without the token, `None` for one with it.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes());
        // A caller without the token keeps no connection (nor one of the
        // listener's slots) open by asking again and again on it.
        let refuse = |status, text| {
            let mut resp = message(status, text);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        };
        let Some(presented) = presented else {
            let mut resp = refuse(StatusCode::UNAUTHORIZED, "Unauthorized");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Some(resp);
        };
        let token = self.token.borrow();
        let same_len = presented.len() == token.len();
        let diff = presented
            .iter()
            .zip(token.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // No token (its `[admin]` removed by a reload): nothing is let in.
        let ok = !token.is_empty() && same_len && diff == 0;
        (!ok).then(|| refuse(StatusCode::FORBIDDEN, "Forbidden"))
    }

    async fn route(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        // HEAD is GET without the body (RFC 9110 §9.3.2), which hyper leaves
        // out: monitoring probes often use it.
        if req.method() == http::Method::HEAD {
            *req.method_mut() = http::Method::GET;
        }
        let path = req.uri().path().to_owned();
        if let Some(rest) = path.strip_prefix("/cache/") {
            return cache::route(self, rest, req).await;
        }
        match path.as_str() {
            "/usage" => usage::usage(self, &req).await,
            "/limits/stats" => usage::stats(self, &req),
            "/config" => config::config(self, &req),
            _ => message(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    fn purge_id(&self) -> u64 {
        self.next_purge_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// `{"message": text}` with `status`.
pub fn message(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "message": text }))
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// 405 with `Allow`.
pub fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes into `T`; the error is the
/// response to send.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Box<Response<Full<Bytes>>>> {
    let refuse = |status, text: &str| Box::new(message(status, text));
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long"));
        }
        Err(_) => return Err(refuse(StatusCode::BAD_REQUEST, "the request body failed")),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")))
}

/// Binds `[admin] address` when configured and prints `listening admin ADDR`.
pub async fn bind(config: &NodeConfig) -> Result<Option<TcpListener>, AppError> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    let listener = TcpListener::bind(admin.address)
        .await
        .map_err(|source| AppError::Bind {
            addr: admin.address,
            source,
        })?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, "admin listening");
    for warning in risks(admin) {
        tracing::warn!("{warning}");
    }
    println!("listening admin {local}");
    Ok(Some(listener))
}

/// Shortest admin token that is not called out as guessable.
const STRONG_TOKEN: usize = 24;

/// What makes an admin API easy to take over: a short token (nothing slows
/// down guessing), or plain HTTP beyond this machine.
fn risks(admin: &portico_config::AdminConfig) -> Vec<String> {
    let mut out = Vec::new();
    if admin.token.len() < STRONG_TOKEN {
        out.push(format!(
            "the admin token has {} characters: use {STRONG_TOKEN} or more random ones \
             (`openssl rand -hex 16`), as nothing slows down guessing",
            admin.token.len()
        ));
    }
    if !admin.address.ip().is_loopback() {
        out.push(format!(
            "the admin API listens on {} in plain HTTP: its token crosses the network \
             readable; keep it on loopback or behind a TLS proxy",
            admin.address
        ));
    }
    out
}

/// What an admin listener holds for its callers.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    /// Connections served at once; the next waits in the kernel's backlog.
    max_connections: usize,
    /// Longest a connection stays open, whatever it does: one that sends
    /// requests and never reads the answers would otherwise hold its
    /// descriptor for ever (hyper waits on the write with no timer), and
    /// the node's descriptors are its public listeners' too.
    lifetime: Duration,
    /// How long, past `lifetime`, the request in progress may take to be
    /// answered before the connection is cut.
    grace: Duration,
}

const ADMIN_LIMITS: ConnLimits = ConnLimits {
    max_connections: 64,
    lifetime: Duration::from_secs(60),
    grace: Duration::from_secs(30),
};

/// Serves the admin API until `stop` turns true.
pub async fn serve<U: Upstream>(
    listener: TcpListener,
    admin: Arc<Admin<U>>,
    stop: watch::Receiver<bool>,
) {
    let handle = move |req| {
        let admin = Arc::clone(&admin);
        async move { admin.handle(req).await }
    };
    serve_connections(listener, stop, ADMIN_LIMITS, handle).await;
}

/// Serves HTTP/1.1 connections with `handle` until `stop` turns true.
async fn serve_connections<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    handle: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        // A slot first: at the limit, the next caller waits in the backlog.
        let slot = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning,
                // as the public listeners do.
                tracing::warn!(%err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        // Connections finish on their own; the process exits soon after `stop`.
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            // Without a timer hyper has no header read timeout: a caller that
            // never finishes its head would hold the connection for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            // At the lifetime the request in progress (a purge's pass over
            // the cache, say) may finish and be answered; then the
            // connection closes. Only one still busy after the grace is cut.
            let ended = match tokio::time::timeout(limits.lifetime, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.grace, conn.as_mut()).await {
                        Ok(ended) => ended,
                        Err(_) => {
                            tracing::debug!("admin connection closed: open too long");
                            return;
                        }
                    }
                }
            };
            if let Err(err) = ended {
                tracing::debug!(%err, "admin connection ended");
            }
        });
    }
}

#[cfg(test)]
mod risk_tests {
    use super::*;

    #[test]
    fn short_tokens_and_open_addresses_are_called_out() {
        let admin = |token: &str, address: &str| portico_config::AdminConfig {
            address: address.parse().unwrap(),
            token: token.to_owned(),
            token_file: None,
        };
        assert!(risks(&admin("0123456789abcdef01234567", "127.0.0.1:9901")).is_empty());
        let short = risks(&admin("s3cret", "127.0.0.1:9901"));
        assert_eq!(short.len(), 1);
        assert!(
            short[0].starts_with("the admin token has 6 characters"),
            "{short:?}"
        );
        let open = risks(&admin("0123456789abcdef01234567", "0.0.0.0:9901"));
        assert_eq!(open.len(), 1);
        assert!(
            open[0].starts_with("the admin API listens on 0.0.0.0:9901"),
            "{open:?}"
        );
    }
}

#[cfg(test)]
mod conn_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const BODY: usize = 10 * 1024;

    /// An admin-shaped listener on port 0 answering every request with
    /// `BODY` bytes; stops when the returned sender is dropped.
    async fn start(limits: ConnLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let handle = |_req| async { Response::new(Full::new(Bytes::from(vec![b'x'; BODY]))) };
        tokio::spawn(serve_connections(listener, stopped, limits, handle));
        (addr, stop)
    }

    const GET: &[u8] = b"GET /usage HTTP/1.1\r\nhost: admin\r\n\r\n";

    /// Whether a GET on a new connection is answered within `wait`.
    async fn answered(addr: std::net::SocketAddr, wait: Duration) -> (bool, TcpStream) {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(GET).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(wait, conn.read(&mut buf)).await;
        (matches!(read, Ok(Ok(n)) if n > 0), conn)
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_one_to_close() {
        let (addr, _stop) = start(ConnLimits {
            max_connections: 2,
            lifetime: Duration::from_secs(60),
            grace: Duration::from_secs(30),
        })
        .await;
        let first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        // Both slots held by connections that send nothing.
        let (served, third) = answered(addr, Duration::from_millis(300)).await;
        assert!(!served, "a third connection was served past the limit");
        drop(first);
        let mut third = third;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(20), third.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(n)) if n > 0), "{read:?}");
    }

    #[tokio::test]
    async fn a_request_in_progress_at_the_lifetime_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let limits = ConnLimits {
            max_connections: 64,
            lifetime: Duration::from_millis(100),
            grace: Duration::from_secs(20),
        };
        // As a purge's pass over a large cache: longer than the lifetime.
        let slow = |_req| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            Response::new(Full::new(Bytes::from_static(b"done")))
        };
        tokio::spawn(serve_connections(listener, stopped, limits, slow));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(GET).await.unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the connection stayed open");
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("done"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn a_caller_that_never_reads_its_answers_is_cut_off() {
        let (addr, _stop) = start(ConnLimits {
            max_connections: 64,
            lifetime: Duration::from_millis(300),
            grace: Duration::from_millis(300),
        })
        .await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let conn = socket.connect(addr).await.unwrap();
        let (mut read, mut write) = conn.into_split();
        // Far more answers than any socket buffers hold, asked for at once.
        const REQUESTS: usize = 2000;
        tokio::spawn(async move {
            let _ = write.write_all(&GET.repeat(REQUESTS)).await;
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got += n;
            }
        })
        .await;
        assert!(drained.is_ok(), "the connection stayed open");
        assert!(got < REQUESTS * BODY, "every answer was sent: {got} bytes");
    }
}
