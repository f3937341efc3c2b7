//! What the pipeline knows about a connection and a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use portico_config::{Api, Definitions, Route, RouteSettings, Stage};

/// The protocol a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
    /// Forwarded by a PoP over the QUIC backbone.
    Backbone,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "h1",
            Protocol::Http2 => "h2",
            Protocol::Http3 => "h3",
            Protocol::Backbone => "backbone",
        }
    }
}

/// TLS facts about a connection, for logs and for the backbone's request head.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub version: Option<String>,
}

/// One accepted client connection, shared by all its requests.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (for backbone requests: the client of the PoP).
    pub client_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub tls: Option<TlsInfo>,
    pub protocol: Protocol,
    /// The API served when the Host header names none (the listener's `default_api`).
    pub default_api: Option<Arc<str>>,
}

impl ConnInfo {
    /// `https` or `http`, as the client sees it.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// A request after routing: everything an upstream needs to forward it. Cloned
/// (cheaply: shared pointers) for background cache refreshes.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub conn: Arc<ConnInfo>,
    /// The configuration snapshot the request started with; it finishes on it.
    pub definitions: Arc<Definitions>,
    pub api: Arc<Api>,
    pub stage: Arc<Stage>,
    pub route_index: usize,
    /// Path parameters as received (still percent-encoded).
    pub path_params: Vec<(String, String)>,
    /// The Host the client addressed (without port).
    pub host: String,
}

impl RequestCtx {
    pub fn route(&self) -> &Route {
        &self.stage.deployment.routes[self.route_index]
    }

    pub fn settings(&self) -> &RouteSettings {
        self.stage.route_settings(self.route_index)
    }

    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.path_params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
