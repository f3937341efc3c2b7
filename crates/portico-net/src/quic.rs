//! QUIC for public HTTP/3 listeners: the transport settings of a listener and
//! the quinn endpoint built from them and from the listener's TLS config.
//!
//! The TLS config is the one the TCP listener uses (same certificates, same
//! SNI resolver), changed only where QUIC and HTTP/3 require it: ALPN `h3`,
//! early data enabled (QUIC allows only `0` or `u32::MAX`), and a session
//! cache so that a returning client can resume and send 0-RTT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::server::ServerSessionMemoryCache;

use crate::NetError;

/// The ALPN token of HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";

/// Tickets sent after each handshake. More than one lets a client open
/// parallel resumed connections (rustls sends 2 by default; we say so).
const TLS13_TICKETS: usize = 2;

/// Resumable sessions kept per listener (a few hundred bytes each); the
/// oldest are forgotten first, and those clients do a full handshake.
const SESSION_CACHE: usize = 16 * 1024;

/// Kernel buffer asked for each direction of a listener's UDP socket. One
/// socket carries every connection of the listener: the default (about
/// 200 KiB) overflows in bursts, and a datagram dropped there is a loss to
/// QUIC (a retransmission, and a congestion window halved). Linux caps the
/// request at `net.core.rmem_max` / `wmem_max`.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// quinn's congestion controllers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    #[default]
    Cubic,
    Bbr,
    NewReno,
}

impl Congestion {
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
            Congestion::NewReno => "new_reno",
        }
    }
}

/// Transport settings of one HTTP/3 listener.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    pub congestion: Congestion,
    /// Concurrent request streams a client may open on one connection (QUIC
    /// `MAX_STREAMS` for bidirectional streams). Beyond it the client waits
    /// for credit: QUIC's own back-pressure, no error.
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed silently. Also
    /// bounds how long an unfinished handshake may last.
    pub idle_timeout: Duration,
    /// Bytes a client may send on one stream ahead of our reads (per-stream
    /// flow-control window): what an unread request body can cost us.
    pub stream_receive_window: u32,
    /// Bytes a client may send on all streams of a connection ahead of our reads.
    pub receive_window: u32,
    /// Bytes we buffer for sending on one connection before writes wait.
    pub send_window: u64,
    /// HTTP/3 grease (reserved stream, frame and setting types, RFC 9114).
    /// Off by default: a grease stream is one more packet each way on a new
    /// connection, sent as its first request is read, and its
    /// STOP_SENDING one more back.
    pub grease: bool,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            congestion: Congestion::Cubic,
            max_concurrent_streams: 256,
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 1024 * 1024,
            receive_window: 8 * 1024 * 1024,
            send_window: 8 * 1024 * 1024,
            grease: false,
        }
    }
}

impl QuicSettings {
    /// quinn's transport config for these settings.
    pub fn transport(&self) -> Result<TransportConfig, NetError> {
        let mut transport = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            NetError::Quic(format!("idle timeout {:?} is too long", self.idle_timeout))
        })?;
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams))
            // A client opens three (control, QPACK encoder and decoder) plus
            // perhaps a grease stream; we never accept pushes or extensions.
            .max_concurrent_uni_streams(VarInt::from_u32(16))
            .max_idle_timeout(Some(idle))
            // HTTP/3 reads no DATAGRAM frames: unannounced, a peer that sends
            // them is closed, instead of quinn buffering (and pinning the
            // packets of) 1.25 MB of them per connection that nobody reads.
            .datagram_receive_buffer_size(None)
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.receive_window))
            .send_window(self.send_window);
        match self.congestion {
            Congestion::Cubic => {
                transport.congestion_controller_factory(Arc::new(CubicConfig::default()))
            }
            Congestion::Bbr => {
                transport.congestion_controller_factory(Arc::new(BbrConfig::default()))
            }
            Congestion::NewReno => {
                transport.congestion_controller_factory(Arc::new(NewRenoConfig::default()))
            }
        };
        Ok(transport)
    }
}

/// Turns a public listener's TLS config into its HTTP/3 counterpart: ALPN
/// `h3` only, 0-RTT accepted, resumption from a server-side session cache.
///
/// The cache is stateful on purpose: rustls allows early data only with
/// stateful resumption (RFC 8446 §8.1), whose tickets are single-use, so a
/// captured first flight cannot be replayed against this node. (A replay
/// against another node, or a client's own retry, can still repeat early
/// data, hence the adapter serves only safe methods from it, RFC 8470.) A
/// resumed handshake gets fresh tickets, so a client never runs out.
pub fn h3_tls_config(mut tls: rustls::ServerConfig) -> rustls::ServerConfig {
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    tls.max_early_data_size = u32::MAX;
    tls.send_tls13_tickets = TLS13_TICKETS;
    tls.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    tls
}

/// The UDP socket of an HTTP/3 listener, bound but not yet served: binding
/// early fails a start on a busy port and tells the port; the quinn endpoint
/// is started later, on the runtime that will serve it (its driver task and
/// every connection's run where it starts).
pub struct QuicSocket {
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
    grease: bool,
    idle_timeout: Duration,
}

impl QuicSocket {
    /// Binds `addr` for HTTP/3 with `tls` (the TCP listener's config; see
    /// [`h3_tls_config`]) and `settings`.
    pub fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        settings: &QuicSettings,
    ) -> Result<Self, NetError> {
        let crypto = QuicServerConfig::try_from(h3_tls_config(tls))
            .map_err(|e| NetError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(settings.transport()?));
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| NetError::Bind { addr, source })?;
        grow_udp_buffers(&socket);
        Ok(Self {
            socket,
            config,
            grease: settings.grease,
            idle_timeout: settings.idle_timeout,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether HTTP/3 on this socket sends grease ([`QuicSettings::grease`]).
    pub fn grease(&self) -> bool {
        self.grease
    }

    /// Its QUIC idle timeout ([`QuicSettings::idle_timeout`]).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Starts the endpoint on the current tokio runtime.
    pub fn start(self) -> Result<quinn::Endpoint, NetError> {
        let addr = self
            .local_addr()
            .map_err(|e| NetError::Quic(e.to_string()))?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let config = quinn::EndpointConfig::default();
        quinn::Endpoint::new(config, Some(self.config), self.socket, runtime)
            .map_err(|source| NetError::Bind { addr, source })
    }
}

/// Asks for 4 MiB of socket buffer each way; the kernel may
/// give less, which only costs throughput, so failures are logged only. For
/// every socket that carries many QUIC connections or streams: listeners and
/// both ends of the backbone.
pub fn grow_udp_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    if let Err(err) = sock.set_recv_buffer_size(UDP_BUFFER) {
        tracing::debug!(%err, "UDP receive buffer left at its default");
    }
    if let Err(err) = sock.set_send_buffer_size(UDP_BUFFER) {
        tracing::debug!(%err, "UDP send buffer left at its default");
    }
}

/// Binds and starts an HTTP/3 endpoint on the current tokio runtime.
pub fn bind_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    settings: &QuicSettings,
) -> Result<quinn::Endpoint, NetError> {
    QuicSocket::bind(addr, tls, settings)?.start()
}

/// The `Alt-Svc` value HTTP/1.1 and HTTP/2 responses carry on a listener that
/// also serves HTTP/3 on UDP `port` (RFC 7838; one day, as browsers cache it).
pub fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("clear"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_udp_port() {
        assert_eq!(alt_svc(8443), "h3=\":8443\"; ma=86400");
    }

    #[test]
    fn tls_config_speaks_h3_with_early_data() {
        let base = crate::server_config(&[], &["localhost".into()]).unwrap();
        let tls = h3_tls_config(base);
        assert_eq!(tls.alpn_protocols, vec![b"h3".to_vec()]);
        assert_eq!(tls.max_early_data_size, u32::MAX);
        assert!(tls.session_storage.can_cache());
        assert_eq!(tls.send_tls13_tickets, 2);
    }

    /// What Linux reports for a receive buffer the process asked `bytes`
    /// of: capped at `net.core.rmem_max`, then doubled for bookkeeping.
    fn granted(bytes: usize) -> usize {
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(bytes);
        bytes.min(max) * 2
    }

    #[test]
    fn udp_buffers_grow_to_what_the_kernel_allows() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        grow_udp_buffers(&socket);
        let got = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // An untouched socket reports `rmem_default` (not doubled), less than this.
        assert!(got >= granted(UDP_BUFFER), "receive buffer {got}");
    }

    #[test]
    fn every_congestion_controller_builds() {
        for congestion in [Congestion::Cubic, Congestion::Bbr, Congestion::NewReno] {
            let settings = QuicSettings {
                congestion,
                ..QuicSettings::default()
            };
            assert!(settings.transport().is_ok(), "{}", congestion.as_str());
        }
    }
}
