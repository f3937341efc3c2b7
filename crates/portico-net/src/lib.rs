//! Portico's public listeners: TCP with TLS (HTTP/1.1 and HTTP/2 on one port,
//! ALPN, SNI), QUIC with HTTP/3 on the same port number over UDP, and the TLS
//! material they need. Protocol adapters here only
//! translate to `http::Request<Body>` and enforce their protocol's limits.
#![forbid(unsafe_code)]

mod clients;
mod h3;
mod h3_body;
mod h3_early;
mod h3_flow;
mod h3_frames;
mod h3_quic;
mod http;
mod kx;
pub mod proxy;
pub mod quic;
pub mod tls;

use std::path::PathBuf;

pub use crate::h3::{H3Listener, H3Server};
pub use crate::h3_early::EARLY_DATA;
pub use crate::http::{Handler, HttpLimits, TcpServer};
pub use quic::{Congestion, QuicSettings, QuicSocket};
pub use tls::{CertFiles, SniResolver, load_keys, server_config, server_config_for};

/// Errors setting up listeners and their TLS material, why a client's
/// HTTP/3 stream was refused, and why a load balancer's PROXY header was.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("generating a self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("a TLS listener needs at least one certificate")]
    NoCertificate,
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
    #[error("QUIC configuration: {0}")]
    Quic(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/3 frame of type {ty:#x} declares {len} bytes, over the limit of {cap}")]
    FrameTooLarge { ty: u64, len: u64, cap: u64 },
    #[error(
        "HTTP/3 frames carrying no body (frames other than DATA, empty DATA) take over {cap} bytes on one stream"
    )]
    FramingTooLarge { cap: u64 },
    #[error("HTTP/3 request stream {stream} ended inside a frame")]
    FrameTruncated { stream: u64 },
    #[error("HTTP/3 request head not received within the header read timeout")]
    HeadTimedOut,
    #[error("HTTP/3 request: {0}")]
    H3Request(#[from] ::h3::error::StreamError),
    #[error("{0}")]
    Proxy(String),
}
