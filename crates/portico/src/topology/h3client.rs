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

use bytes::{Buf, Bytes};
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
    // No grease: h3 would open a stream of an unknown type and add a
    // reserved frame to the request, extra work at both ends that measures
    // nothing of the server.
    let (mut driver, mut send) = timed(
        h3::client::builder()
            .send_grease(false)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone())),
    )
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
    // Let the connection's driver send the close now (the client thread
    // runs it next), not when the next measurement's first await yields:
    // then its packet went out, and reached the server, with the next
    // connection's first flight, on the clock.
    tokio::task::yield_now().await;
    Ok((resp.status().as_u16(), head))
}

async fn timed<F: std::future::Future>(f: F) -> Result<F::Output, H3Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| H3Error::Timeout(REQUEST_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::client::ClientThread;
    use portico_backbone::pki::Ca;
    use quinn::crypto::rustls::QuicServerConfig;
    use rustls_pki_types::PrivateKeyDer;
    use std::sync::mpsc;

    /// What the test server saw of the probe's one connection.
    #[derive(Debug)]
    enum Seen {
        /// The frame types of the request stream, read to its end.
        RequestFrames(Vec<u64>),
        /// The connection ended, and how.
        Closed(quinn::ConnectionError),
    }

    fn varint(buf: &[u8]) -> Option<(u64, usize)> {
        let first = *buf.first()?;
        let len = 1usize << (first >> 6);
        let bytes = buf.get(..len)?;
        let mut value = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            value = (value << 8) | u64::from(*b);
        }
        Some((value, len))
    }

    /// The frame types in an HTTP/3 stream's bytes.
    fn frame_types(mut buf: &[u8]) -> Vec<u64> {
        let mut types = Vec::new();
        while let Some((kind, n)) = varint(buf) {
            let Some((len, m)) = varint(&buf[n..]) else {
                break;
            };
            types.push(kind);
            buf = buf.get(n + m + len as usize..).unwrap_or_default();
        }
        types
    }

    /// A bare QUIC server speaking just enough HTTP/3 to answer one GET
    /// with 200: it reports the request stream's frames, then how the
    /// connection ended.
    async fn server(ca: &Ca, seen: mpsc::Sender<Seen>) -> SocketAddr {
        let node = ca.issue("pop-test", None).expect("certificate");
        let cert = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server certificate");
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = QuicServerConfig::try_from(tls).expect("QUIC TLS");
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = endpoint.local_addr().expect("address");
        tokio::spawn(async move {
            let Some(incoming) = endpoint.accept().await else {
                return;
            };
            let conn = incoming.await.expect("handshake");
            // Our control stream: its type, then an empty SETTINGS frame.
            let mut control = conn.open_uni().await.expect("control stream");
            control
                .write_all(&[0x00, 0x04, 0x00])
                .await
                .expect("settings");
            let (mut send, mut recv) = conn.accept_bi().await.expect("request stream");
            let request = recv.read_to_end(64 * 1024).await.expect("request");
            let _ = seen.send(Seen::RequestFrames(frame_types(&request)));
            // HEADERS: an empty QPACK prefix and `:status: 200` (static index 25).
            send.write_all(&[0x01, 0x03, 0x00, 0x00, 0xc0 | 25])
                .await
                .expect("response");
            send.finish().expect("finish");
            let _ = seen.send(Seen::Closed(conn.closed().await));
            endpoint.wait_idle().await;
        });
        addr
    }

    /// Runs `cold_get` on the probe's client thread, then blocks that
    /// thread (its runtime runs nothing more) until the server reports the
    /// connection closed: only packets sent before `cold_get` returned can
    /// reach it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cold_request_has_no_grease_and_is_closed_before_it_returns() {
        let ca = Ca::generate().expect("CA");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).expect("CA file");
        let (seen_tx, seen) = mpsc::channel();
        let addr = server(&ca, seen_tx).await;
        let thread = ClientThread::start().expect("client thread");
        let client = H3Client::from_ca_file(&ca_file, thread.handle()).expect("client");
        let (done_tx, done) = tokio::sync::oneshot::channel();
        thread.handle().spawn(async move {
            let reply = client.cold_get(addr, "/prod/x").await.map(|r| r.status);
            let frames = seen.recv_timeout(Duration::from_secs(20));
            let closed = seen.recv_timeout(Duration::from_secs(20));
            let _ = done_tx.send((reply, frames, closed));
        });
        let (reply, frames, closed) = done.await.expect("client task");
        assert_eq!(reply.expect("cold GET"), 200);
        match frames.expect("the request stream") {
            // HEADERS only: no reserved (grease) frame type.
            Seen::RequestFrames(types) => assert_eq!(types, [0x01]),
            other => panic!("expected the request's frames, saw {other:?}"),
        }
        match closed.expect("the close, sent before cold_get returned") {
            Seen::Closed(quinn::ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(close.error_code, 0u32.into());
                assert_eq!(&close.reason[..], b"done");
            }
            other => panic!("expected the client's close, saw {other:?}"),
        }
    }
}
