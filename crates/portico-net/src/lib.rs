//! Portico's public listeners: TCP with TLS (HTTP/1.1 and HTTP/2 on one port,
//! ALPN, SNI), QUIC with HTTP/3 on the same port number over UDP, and the TLS
//! material they need. Protocol adapters here only
//! translate to `http::Request<Body>` and enforce their protocol's limits.
#![forbid(unsafe_code)]

mod h3;
mod h3_body;
mod h3_early;
mod http;
mod kx;
pub mod quic;
pub mod tls;

use std::path::PathBuf;

pub use crate::h3::{H3Listener, H3Server};
pub use crate::h3_early::EARLY_DATA;
pub use crate::http::{Handler, HttpLimits, TcpServer};
pub use quic::{Congestion, QuicSettings, QuicSocket};
pub use tls::{CertFiles, SniResolver, load_keys, server_config, server_config_for};

/// Errors setting up listeners and their TLS material.
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
}
