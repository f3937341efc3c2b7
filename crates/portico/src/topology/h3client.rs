//! The probe's HTTP/3 client (quinn + h3), for entries whose topology enables
//! HTTP/3: a cold request on a new QUIC connection (one round trip of
//! handshake, where TCP + TLS needs two), and a 0-RTT request on a resumed one
//! (none).
//!
//! Its endpoints are made on, and its requests must run on, the probe's
//! [`ClientThread`](super::client::ClientThread), where quinn then drives
//! their connections too. On the probe's multi-threaded runtime, quinn's
//! connection driver ran on one thread while the request task opened h3's
//! streams and wrote its request on another: every write left in a datagram
//! of its own as soon as it was made, and the request went out about 200 µs
//! after the handshake's last flight. On one thread the driver runs when the
//! request task waits, and sends what it wrote together.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use http::Request;
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::UpError;
use super::client::REQUEST_TIMEOUT;

/// Why one HTTP/3 request failed.
#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    #[error("QUIC: {0}")]
    Connect(String),
    #[error("HTTP/3: {0}")]
    Stream(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A status and the time to the response head.
#[derive(Debug, Clone, Copy)]
pub struct H3Reply {
    pub status: u16,
    pub ttfb: Duration,
}

/// An endpoint that never resumes (every connection a full handshake), and
/// the roots and runtime to make resuming endpoints with.
pub struct H3Client {
    full: quinn::Endpoint,
    roots: rustls::RootCertStore,
    runtime: tokio::runtime::Handle,
}

/// An endpoint with its own session cache, sending requests in 0-RTT. Every
/// node's certificate names `localhost`, and a client's tickets are kept per
/// server name: one cache per entry keeps one node's tickets from being tried
/// (and refused) at another.
pub struct Resuming {
    endpoint: quinn::Endpoint,
}

fn tls(roots: &rustls::RootCertStore, resume: bool) -> Result<QuicClientConfig, UpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| UpError::Tls(e.to_string()))?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = resume;
    if !resume {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    QuicClientConfig::try_from(tls).map_err(|e| UpError::Tls(e.to_string()))
}

/// A client endpoint whose driver runs on `runtime`.
fn endpoint(
    runtime: &tokio::runtime::Handle,
    config: QuicClientConfig,
) -> Result<quinn::Endpoint, UpError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let _on = runtime.enter();
    let mut endpoint = quinn::Endpoint::client(any).map_err(|e| UpError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(config));
    // No path MTU probing: quinn sends its first probe right after the
    // handshake, ahead of the request, and a request of a few hundred bytes
    // gains nothing from larger datagrams.
    let mut transport = quinn::TransportConfig::default();
    transport.mtu_discovery_config(None);
    client.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

impl H3Client {
    /// Clients trusting the CA certificates in `ca` (PEM), whose endpoints
    /// run on `runtime` (a [`ClientThread`](super::client::ClientThread)'s).
    pub fn from_ca_file(ca: &Path, runtime: &tokio::runtime::Handle) -> Result<H3Client, UpError> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| UpError::Tls(format!("reading {}: {e}", ca.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| UpError::Tls(format!("reading {}: {e}", ca.display())))?;
            roots
                .add(cert)
                .map_err(|e| UpError::Tls(format!("{}: {e}", ca.display())))?;
        }
        Ok(H3Client {
            full: endpoint(runtime, tls(&roots, false)?)?,
            roots,
            runtime: runtime.clone(),
        })
    }

    /// A fresh resuming endpoint (no tickets yet).
    pub fn resuming(&self) -> Result<Resuming, H3Error> {
        let endpoint = tls(&self.roots, true)
            .and_then(|config| endpoint(&self.runtime, config))
            .map_err(|e| H3Error::Connect(e.to_string()))?;
        Ok(Resuming { endpoint })
    }

    /// `GET path` on a new connection after a full handshake; `ttfb` counts from
    /// before the first packet.
    pub async fn cold_get(&self, addr: SocketAddr, path: &str) -> Result<H3Reply, H3Error> {
        let start = Instant::now();
        let connecting = self
            .full
            .connect(addr, "localhost")
            .map_err(|e| H3Error::Connect(e.to_string()))?;
        let quic = timed(connecting)
            .await?
            .map_err(|e| H3Error::Connect(e.to_string()))?;
        let (status, head) = request(quic, &uri(addr, path)).await?;
        Ok(H3Reply {
            status,
            ttfb: head - start,
        })
    }
}

impl Resuming {
    /// `GET path` sent in 0-RTT on a resumed connection; `None` when no session
    /// ticket is held yet (the request then runs after a full handshake, which
    /// also fetches a ticket for next time).
    pub async fn zero_rtt_get(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<Option<H3Reply>, H3Error> {
        let start = Instant::now();
        let connecting = self
            .endpoint
            .connect(addr, "localhost")
            .map_err(|e| H3Error::Connect(e.to_string()))?;
        let (quic, zero_rtt) = match connecting.into_0rtt() {
            Ok((quic, accepted)) => (quic, Some(accepted)),
            Err(connecting) => {
                let quic = timed(connecting)
                    .await?
                    .map_err(|e| H3Error::Connect(e.to_string()))?;
                (quic, None)
            }
        };
        let attempted = zero_rtt.is_some();
        let result = request(quic, &uri(addr, path)).await;
        let accepted = match zero_rtt {
            Some(accepted) => timed(accepted).await.unwrap_or(false),
            None => false,
        };
        match result {
            Ok((status, head)) if accepted => Ok(Some(H3Reply {
                status,
                ttfb: head - start,
            })),
            Ok(_) => Ok(None),
            // Early data refused: quinn fails streams opened in 0-RTT.
            Err(_) if attempted && !accepted => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// The absolute URI h3 needs for its pseudo-headers (`:authority` as the
/// certificate names it).
fn uri(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

/// Sends `GET uri` on `quic`; returns the status and when the response head
/// arrived. The body is drained and the connection closed after that.
async fn request(quic: quinn::Connection, uri: &str) -> Result<(u16, Instant), H3Error> {
    let stream_err = |e: &dyn std::fmt::Display| H3Error::Stream(e.to_string());
    let (mut driver, mut send) = timed(h3::client::new(h3_quinn::Connection::new(quic.clone())))
        .await?
        .map_err(|e| stream_err(&e))?;
    let drive = tokio::spawn(async move { driver.wait_idle().await });
    let req = Request::get(uri).body(()).map_err(|e| stream_err(&e))?;
    let mut stream = timed(send.send_request(req))
        .await?
        .map_err(|e| stream_err(&e))?;
    timed(stream.finish()).await?.map_err(|e| stream_err(&e))?;
    let resp = timed(stream.recv_response())
        .await?
        .map_err(|e| stream_err(&e))?;
    let head = Instant::now();
    while let Some(mut chunk) = timed(stream.recv_data())
        .await?
        .map_err(|e| stream_err(&e))?
    {
        chunk.advance(chunk.remaining());
    }
    quic.close(0u32.into(), b"done");
    drive.abort();
    Ok((resp.status().as_u16(), head))
}

async fn timed<F: std::future::Future>(f: F) -> Result<F::Output, H3Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| H3Error::Timeout(REQUEST_TIMEOUT))
}
