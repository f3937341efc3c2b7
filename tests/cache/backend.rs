//! A counting backend in the test process: every request is counted by path, and
//! the path picks the behaviour (cache headers, delays, broken bodies, sizes).
//! `stop` closes the listener and every open connection, like a dead backend.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

#[derive(Default)]
struct Seen {
    counts: HashMap<String, usize>,
    headers: HashMap<String, Vec<HeaderMap>>,
}

pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: watch::Sender<bool>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept(listener, Arc::clone(&seen), stopped));
        Backend { addr, seen, stop }
    }

    /// Requests that reached the backend for `path` (without query).
    pub fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .counts
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The request headers of every request for `path`, in order.
    pub fn headers(&self, path: &str) -> Vec<HeaderMap> {
        self.seen
            .lock()
            .unwrap()
            .headers
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Closes the listener and every connection. The port stays taken, by a
    /// socket bound and not listening, so connections to it are refused
    /// until the test ends rather than reach another test's listener.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

async fn accept(listener: TcpListener, seen: Arc<Mutex<Seen>>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            // (The borrow `wait_for` returns is not kept past the branch.)
            () = async { drop(stop.wait_for(|s| *s).await) } => break,
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
        };
        let seen = Arc::clone(&seen);
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let seen = Arc::clone(&seen);
                async move { Ok::<_, Infallible>(handle(req, &seen).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_stop.wait_for(|s| *s) => {}
            }
        });
    }
    hold_port(listener).await;
}

fn record(req: &Request<Incoming>, seen: &Mutex<Seen>) -> usize {
    let path = req.uri().path().to_owned();
    let mut s = seen.lock().unwrap();
    s.headers
        .entry(path.clone())
        .or_default()
        .push(req.headers().clone());
    let n = s.counts.entry(path).or_default();
    *n += 1;
    *n
}

fn full(status: u16, cc: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    if !cc.is_empty() {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
    }
    resp
}

/// `chunks` pieces of `size` bytes each, `delay` apart, then an error if `breaks`.
fn chunked(chunks: usize, size: usize, delay: Duration, breaks: bool) -> Body {
    let items = (0..chunks)
        .map(move |i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size]))))
        .chain(breaks.then(|| Err::<Frame<Bytes>, BoxError>("backend broke".into())));
    let s = stream::unfold(items, move |mut it| async move {
        let item = it.next()?;
        tokio::time::sleep(delay).await;
        Some((item, it))
    });
    StreamBody::new(s).boxed_unsync()
}

async fn handle(req: Request<Incoming>, seen: &Mutex<Seen>) -> Response<Body> {
    let n = record(&req, seen);
    let path = req.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (kind, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let label = format!("{path} #{n}");
    match kind {
        "fresh" => full(200, "public, max-age=60", label),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut r = full(200, "max-age=60", "");
            *r.body_mut() = chunked(8, 1000, Duration::from_millis(25), false);
            r
        }
        "etag" => etag(&req, &label),
        "short" => full(200, "max-age=1", label),
        "swr" => full(200, "max-age=1, stale-while-revalidate=30", label),
        "vary" => {
            let lang = req
                .headers()
                .get("accept-language")
                .map_or("-", |v| v.to_str().unwrap_or("?"));
            let mut r = full(200, "max-age=60", format!("lang={lang} {label}"));
            r.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("Accept-Language"));
            r
        }
        "nostore" => full(200, "no-store", label),
        "private" => full(200, "private, max-age=60", label),
        "big" | "mem" => full(200, "max-age=600", vec![b'x'; arg.parse().unwrap_or(1024)]),
        "bigchunked" => {
            let mut r = full(200, "max-age=60", "");
            *r.body_mut() = chunked(
                arg.parse::<usize>().unwrap_or(1024) / 1024,
                1024,
                Duration::ZERO,
                false,
            );
            r
        }
        "break" => {
            let mut r = full(200, "max-age=60", "");
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(4096));
            *r.body_mut() = chunked(4, 1024, Duration::from_millis(10), n == 1);
            if n == 1 {
                // Promise 4096 bytes, send 3 chunks, then fail.
                *r.body_mut() = chunked(3, 1024, Duration::from_millis(10), true);
            }
            r
        }
        "tag" => {
            let mut r = full(200, "max-age=60", label);
            r.headers_mut()
                .insert("cache-tag", HeaderValue::from_str(arg).unwrap());
            r
        }
        _ => full(200, "", label),
    }
}

fn etag(req: &Request<Incoming>, label: &str) -> Response<Body> {
    let tag = "\"e1\"";
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v == tag);
    // The 304 gives the refreshed entry a minute.
    let mut r = if matches {
        full(304, "max-age=60", "")
    } else {
        full(200, "max-age=1", label.to_owned())
    };
    r.headers_mut()
        .insert(header::ETAG, HeaderValue::from_static(tag));
    r
}

/// Closes `listener` and holds its port with a socket that does not listen
/// (`SO_REUSEADDR` for the closed connections' `TIME_WAIT`), until the
/// test's runtime ends.
async fn hold_port(listener: TcpListener) {
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.set_reuseaddr(true).unwrap();
    // Taken in the moment between (rare): nothing left to hold.
    let _ = held.bind(addr);
    std::future::pending::<()>().await;
}
