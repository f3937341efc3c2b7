//! A small HTTP/3 client for tests (quinn + h3 + h3-quinn), verifying the
//! server against the roots it is given, with resumption and 0-RTT enabled.
//! Shared by `crates/portico-net/tests/h3.rs` and the end-to-end `tests/h3.rs`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use h3::error::{ConnectionError, StreamError};
use http::{HeaderMap, Request};
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;

pub type Driver = h3::client::Connection<h3_quinn::Connection, Bytes>;
pub type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One client endpoint; its TLS session cache makes later connections resume.
pub struct H3Client {
    pub endpoint: quinn::Endpoint,
    pub server_name: String,
}

/// A response with its body and trailers collected.
#[derive(Debug)]
pub struct H3Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl H3Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// An open HTTP/3 connection. The h3 driver (control streams: SETTINGS,
/// GOAWAY) runs on its own task once started.
pub struct H3Conn {
    pub quic: quinn::Connection,
    pub send: Sender,
    pub driver: Option<Driver>,
    pub closed: Option<JoinHandle<ConnectionError>>,
}

pub fn tls_config(roots: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.enable_early_data = true;
    tls
}

impl H3Client {
    pub fn new(roots: &[CertificateDer<'static>], server_name: &str) -> Self {
        let quic = QuicClientConfig::try_from(tls_config(roots)).expect("QUIC client config");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        Self {
            endpoint,
            server_name: server_name.to_owned(),
        }
    }

    /// A connection after a full (or resumed, 1-RTT) handshake, driver running.
    pub async fn connect(&self, addr: SocketAddr) -> H3Conn {
        let connecting = self
            .endpoint
            .connect(addr, &self.server_name)
            .expect("connect");
        let quic = connecting.await.expect("QUIC handshake");
        let mut conn = H3Conn::new(quic).await;
        conn.start_driver();
        conn
    }

    /// A connection usable at once with 0-RTT keys from a resumed session,
    /// driver not started; `None` when the client holds no ticket.
    pub async fn connect_0rtt(&self, addr: SocketAddr) -> Option<(H3Conn, quinn::ZeroRttAccepted)> {
        let connecting = self
            .endpoint
            .connect(addr, &self.server_name)
            .expect("connect");
        let (quic, accepted) = connecting.into_0rtt().ok()?;
        Some((H3Conn::new(quic).await, accepted))
    }
}

impl H3Conn {
    pub async fn new(quic: quinn::Connection) -> Self {
        let (driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .expect("h3 client");
        Self {
            quic,
            send,
            driver: Some(driver),
            closed: None,
        }
    }

    /// Runs the h3 driver (the server's SETTINGS and GOAWAY are read by it).
    pub fn start_driver(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            self.closed = Some(tokio::spawn(async move { driver.wait_idle().await }));
        }
    }

    /// Sends `req` with `body` (no DATA frame when empty), then reads the response.
    pub async fn request(&self, req: Request<()>, body: &[u8]) -> Result<H3Reply, StreamError> {
        let mut send = self.send.clone();
        let mut stream = send.send_request(req).await?;
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body)).await?;
        }
        stream.finish().await?;
        read_reply(&mut stream).await
    }

    pub async fn get(&self, uri: &str) -> H3Reply {
        let req = Request::get(uri).body(()).expect("request");
        self.request(req, b"").await.expect("HTTP/3 GET")
    }
}

/// Reads the response head, body and trailers of a client request stream.
pub async fn read_reply<S>(
    stream: &mut h3::client::RequestStream<S, Bytes>,
) -> Result<H3Reply, StreamError>
where
    S: h3::quic::RecvStream,
{
    let resp = stream.recv_response().await?;
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    let trailers = stream.recv_trailers().await?;
    Ok(H3Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: body.into(),
        trailers,
    })
}
