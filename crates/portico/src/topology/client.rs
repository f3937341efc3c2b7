//! The HTTPS client of `portico up` (readiness checks) and `portico probe`
//! (measurements): HTTP/1.1 over rustls, trusting only the topology's CA, with
//! each connection under the caller's control, so "cold" (a new TCP+TLS
//! connection) and "warm" (a reused one) mean exactly that.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::UpError;

/// Longest wait for any one step (connect, handshake, response, body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request line: {0}")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One response: status, headers, body, and the time from the start of the
/// measured operation to the response head (time to first byte).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub ttfb: Duration,
}

/// Connections trusting one CA.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl Client {
    /// A client trusting the CA certificates in `ca` (PEM).
    pub fn from_ca_file(ca: &Path) -> Result<Client, UpError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| UpError::Tls(format!("reading {}: {e}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| UpError::Tls(format!("reading {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| UpError::Tls(format!("{}: {e}", ca.display())))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every connection is a first-time client's: a full handshake, no
        // session resumption (a resumed handshake skips the certificate and
        // its signature, so it would not measure a cold first request).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a new TCP + TLS connection to `addr` (certificate checked for
    /// `localhost`, a name every node certificate holds).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, ClientError> {
        let tcp = timed(TcpStream::connect(addr))
            .await?
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from("localhost").map_err(|e| {
            ClientError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let tls = timed(self.tls.connect(name, tcp))
            .await?
            .map_err(ClientError::Tls)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            authority: addr.to_string(),
            driver,
        })
    }

    /// A request on a new connection; `ttfb` counts from before the TCP
    /// connect to the response head, everything in between included.
    pub async fn cold_get(&self, addr: SocketAddr, path: &str) -> Result<Reply, ClientError> {
        let start = Instant::now();
        let mut conn = self.connect(addr).await?;
        conn.get_since(path, start).await
    }
}

/// An open HTTP/1.1 connection (keep-alive).
pub struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    authority: String,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    /// `GET path`; `ttfb` counts from the call to the response head.
    pub async fn get(&mut self, path: &str) -> Result<Reply, ClientError> {
        self.get_since(path, Instant::now()).await
    }

    /// `GET path`; `ttfb` counts from `start` to the response head.
    async fn get_since(&mut self, path: &str, start: Instant) -> Result<Reply, ClientError> {
        timed(self.sender.ready()).await??;
        let req = Request::get(path)
            .header(http::header::HOST, &self.authority)
            .body(Empty::new())?;
        let resp = timed(self.sender.send_request(req)).await??;
        let ttfb = start.elapsed();
        let (parts, body) = resp.into_parts();
        let body = timed(body.collect()).await??.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            ttfb,
        })
    }
}

async fn timed<F: std::future::Future>(f: F) -> Result<F::Output, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))
}

/// A thread running a single-threaded runtime until this is dropped, for the
/// probe's clients, as a browser's network stack runs on one thread: a
/// connection's driver then runs when the request task waits, so what the
/// task wrote (a TLS Finished and the request, h3's streams and its request)
/// leaves together instead of write by write from another thread.
pub struct ClientThread {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tid: nix::unistd::Pid,
}

impl ClientThread {
    pub fn start() -> Result<ClientThread, UpError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| UpError::ProbeClient(format!("runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("probe-client".into())
            .spawn(move || {
                let _ = tid_tx.send(nix::unistd::gettid());
                // A dropped sender ends the wait as well.
                let _ = runtime.block_on(stopped);
            })
            .map_err(|e| UpError::ProbeClient(format!("thread: {e}")))?;
        let tid = tid_rx
            .recv()
            .map_err(|e| UpError::ProbeClient(format!("thread: {e}")))?;
        Ok(ClientThread {
            runtime: handle,
            stop: Some(stop),
            tid,
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The OS thread the client runs on (see [`super::placement`]).
    pub fn tid(&self) -> nix::unistd::Pid {
        self.tid
    }
}

impl Drop for ClientThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
