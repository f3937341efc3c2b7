//! The one error type of the crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use portico_proto::{ProtoError, ResetCode};

/// Everything that can fail on a backbone link or while preparing one.
///
/// Stream-level variants ([`BackboneError::PeerReset`],
/// [`BackboneError::StreamAborted`], [`BackboneError::Truncated`]) also travel
/// as body errors, so a client's response is aborted rather than ended
/// cleanly when the origin's body broke.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("certificate generation: {0}")]
    Pki(String),
    #[error("backbone TLS configuration: {0}")]
    Tls(String),
    #[error("binding the backbone on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("backbone connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("reading a backbone stream: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("writing a backbone stream: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("backbone protocol: {0}")]
    Proto(#[from] ProtoError),
    /// The peer sent a `Reset` frame: it aborted its half on purpose.
    #[error("peer reset the stream ({}): {reason}", code.as_str())]
    PeerReset { code: ResetCode, reason: String },
    /// The peer aborted the stream at the QUIC level (`RESET_STREAM`).
    #[error("peer aborted the stream ({})", code.as_str())]
    StreamAborted { code: ResetCode },
    /// The stream ended (FIN) inside a frame or before its terminating frame.
    #[error("stream ended early: {0}")]
    Truncated(&'static str),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// No link to the region is up; the caller answers 503 at once.
    #[error("no live backbone link to region `{0}`")]
    NoLink(String),
    /// A head from the peer that cannot become an HTTP message.
    #[error("invalid {what} from the peer: {reason}")]
    BadHead { what: &'static str, reason: String },
    /// A control frame could not be queued: the link's outbox is full.
    #[error("the control stream's outbox is full")]
    LinkBusy,
    /// The link this frame was for is gone.
    #[error("the backbone link is closed")]
    LinkClosed,
    /// Only control-stream frames (other than the handshake) may be sent on
    /// a [`crate::ControlLink`].
    #[error("{0} is not a frame a control subsystem may send")]
    NotControl(&'static str),
    /// A configuration snapshot that failed verification or validation.
    #[error("configuration from {origin}: {reason}")]
    Config { origin: String, reason: String },
}

impl BackboneError {
    /// A short stable word for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ReadFile { .. } => "read_file",
            Self::Pem { .. } => "pem",
            Self::Pki(_) => "pki",
            Self::Tls(_) => "tls",
            Self::Bind { .. } => "bind",
            Self::Endpoint(_) => "endpoint",
            Self::Connect { .. } => "connect",
            Self::Connection(_) => "connection",
            Self::Read(_) => "read",
            Self::Write(_) => "write",
            Self::Proto(_) => "protocol",
            Self::PeerReset { .. } => "peer_reset",
            Self::StreamAborted { .. } => "stream_aborted",
            Self::Truncated(_) => "truncated",
            Self::Handshake(_) => "handshake",
            Self::Timeout(_) => "timeout",
            Self::NoLink(_) => "no_link",
            Self::BadHead { .. } => "bad_head",
            Self::LinkBusy => "link_busy",
            Self::LinkClosed => "link_closed",
            Self::NotControl(_) => "not_control",
            Self::Config { .. } => "config",
        }
    }

    /// Whether the connection itself is gone (as opposed to one stream).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Self::Connection(_)
                | Self::Read(quinn::ReadError::ConnectionLost(_))
                | Self::Write(quinn::WriteError::ConnectionLost(_))
        )
    }

    /// The `Reset` code to send the peer when this error aborts a stream.
    pub fn reset_code(&self) -> ResetCode {
        match self {
            Self::Proto(_) | Self::BadHead { .. } | Self::Truncated(_) => ResetCode::Protocol,
            Self::Timeout(_) => ResetCode::Timeout,
            Self::PeerReset { .. } | Self::StreamAborted { .. } => ResetCode::Cancelled,
            _ => ResetCode::Internal,
        }
    }
}
