//! Early data (0-RTT) rules of the HTTP/3 listener, RFC 8470.
//!
//! A resumed client may send requests in its first flight, before the
//! handshake completes. Those bytes can be replayed by anyone who captured
//! them, so a request that arrives before the handshake is confirmed is
//! served only if its method is safe; otherwise it is answered `425 Too
//! Early` and the client retries it once the handshake is done. A served
//! early request carries `Early-Data: 1` upstream, so that backends can
//! apply their own rule.
//!
//! "Before the handshake is confirmed" is exact, not a guess: quinn never
//! processes 1-RTT packets before the handshake completes, and it signals
//! completion (the `ZeroRttAccepted` future) in the same driver step that
//! queues stream events, before any task can see a 1-RTT stream. So a request
//! whose head we read while that signal is still pending came in 0-RTT. The
//! signal also resolves when the connection ends before completing, and what
//! the client sent stays readable: a signal seen resolved on a closed
//! connection is no completion.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use http::{HeaderValue, Method, Request};

pub use portico_gateway::headers::EARLY_DATA;

/// Whether a connection's handshake has completed, checked without waiting.
pub(crate) struct Handshake {
    /// Set once completion was observed: every later request skips the lock.
    confirmed: AtomicBool,
    /// `None` once the signal was observed (or for a connection that only
    /// became usable after its handshake).
    pending: Mutex<Option<Pending>>,
}

/// A handshake still in progress when its connection became usable.
struct Pending {
    /// Resolves when the handshake completes, and also when the connection
    /// ends before it does (quinn's value tells the two apart on clients
    /// only).
    completed: quinn::ZeroRttAccepted,
    connection: quinn::Connection,
}

impl Handshake {
    /// A connection usable before its handshake completes (0-RTT).
    pub(crate) fn pending(
        completed: quinn::ZeroRttAccepted,
        connection: quinn::Connection,
    ) -> Self {
        Self {
            confirmed: AtomicBool::new(false),
            pending: Mutex::new(Some(Pending {
                completed,
                connection,
            })),
        }
    }

    /// A connection usable only once its handshake completed.
    pub(crate) fn completed() -> Self {
        Self {
            confirmed: AtomicBool::new(true),
            pending: Mutex::new(None),
        }
    }

    /// True once the handshake has completed on a live connection.
    ///
    /// The signal also resolves when the connection ends, handshake or not,
    /// and what the client sent before stays readable: a resolved signal
    /// counts only while the connection is still open (quinn records the
    /// close before it resolves the signal). One that resolved on a closed
    /// connection is never confirmed: its requests are early data. Polls the
    /// signal once, without a waker that matters; the lock is held only for
    /// that poll, never across an await.
    pub(crate) fn is_confirmed(&self) -> bool {
        if self.confirmed.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut pending) = self.pending.lock() else {
            // A panic while polling a oneshot cannot happen; be safe anyway.
            return false;
        };
        let Some(handshake) = pending.as_mut() else {
            // Resolved on a closed connection (or confirmed since the load).
            return self.confirmed.load(Ordering::Acquire);
        };
        if (&mut handshake.completed).now_or_never().is_none() {
            return false;
        }
        let confirmed = handshake.connection.close_reason().is_none();
        *pending = None;
        self.confirmed.store(confirmed, Ordering::Release);
        confirmed
    }
}

/// Methods served from early data: the safe methods of RFC 9110 §9.2.1 that
/// an API serves (a replay of them changes nothing). TRACE, safe but never
/// useful to an API, waits for the handshake like everything else.
pub(crate) fn allowed_early(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Marks a request that is served from early data (RFC 8470 §5.1).
pub(crate) fn mark_early<B>(req: &mut Request<B>) {
    req.headers_mut()
        .insert(EARLY_DATA.clone(), HeaderValue::from_static("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_methods_are_served_early() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(allowed_early(&m), "{m}");
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::CONNECT,
            Method::TRACE,
        ] {
            assert!(!allowed_early(&m), "{m}");
        }
    }

    #[test]
    fn a_handshake_with_nothing_pending_is_confirmed() {
        assert!(Handshake::completed().is_confirmed());
    }

    /// A server endpoint and a client endpoint that trusts it.
    fn endpoints() -> (quinn::Endpoint, quinn::Endpoint) {
        use rustls_pki_types::PrivateKeyDer;
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = generated.cert.der().clone();
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let settings = crate::QuicSettings::default();
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = crate::quic::bind_endpoint(addr, tls, &settings).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![crate::quic::ALPN_H3.to_vec()];
        let tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut client = quinn::Endpoint::client(addr).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(tls)));
        (server, client)
    }

    /// The server side of a connection from `client`, usable at once.
    async fn accept_0rtt(
        server: &quinn::Endpoint,
        client: &quinn::Endpoint,
    ) -> (quinn::Connection, Handshake, quinn::Connecting) {
        let addr = server.local_addr().unwrap();
        let connecting = client.connect(addr, "localhost").unwrap();
        let incoming = server.accept().await.expect("an incoming connection");
        let Ok((conn, completed)) = incoming.accept().unwrap().into_0rtt() else {
            panic!("a server connection is always usable at once");
        };
        let handshake = Handshake::pending(completed, conn.clone());
        (conn, handshake, connecting)
    }

    #[tokio::test]
    async fn a_handshake_that_completes_is_confirmed() {
        let (server, client) = endpoints();
        let (_conn, handshake, connecting) = accept_0rtt(&server, &client).await;
        let _client = connecting.await.expect("handshake");
        let confirmed = async {
            while !handshake.is_confirmed() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        let confirmed = tokio::time::timeout(std::time::Duration::from_secs(20), confirmed);
        confirmed
            .await
            .expect("confirmed once the handshake completed");
    }

    /// quinn resolves the handshake signal when a connection ends, too; a
    /// request read from it then (its bytes stay readable) is still early.
    #[tokio::test]
    async fn a_connection_that_ends_unconfirmed_stays_unconfirmed() {
        let (server, client) = endpoints();
        // Nothing yields until the close: the handshake cannot complete.
        let (conn, handshake, _connecting) = accept_0rtt(&server, &client).await;
        assert!(!handshake.is_confirmed());
        conn.close(0u32.into(), b"gone");
        assert!(!handshake.is_confirmed());
        assert!(!handshake.is_confirmed(), "and stays so");
    }

    #[test]
    fn early_requests_are_marked() {
        let mut req = Request::new(());
        mark_early(&mut req);
        assert_eq!(req.headers()["early-data"], "1");
    }
}
