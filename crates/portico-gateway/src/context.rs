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

/// How a caller was authenticated. Wire name = [`PrincipalKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An API key (`x-api-key`); the principal's id is the key's `id`,
    /// never the key itself.
    ApiKey,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::ApiKey => "api_key",
        }
    }

    /// The kind a wire name stands for; `None` for one this build does not know.
    pub fn from_name(name: &str) -> Option<PrincipalKind> {
        match name {
            "api_key" => Some(PrincipalKind::ApiKey),
            _ => None,
        }
    }
}

/// Who made a request, once authenticated: where it entered (the limits
/// phase), or at an origin as the PoP that forwarded it said (and as the
/// origin's own key check agrees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub id: String,
}

impl Principal {
    pub fn api_key(id: &str) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            id: id.to_owned(),
        }
    }

    /// The API key id, for an API-key principal (`context.identity.apiKeyId`).
    pub fn api_key_id(&self) -> Option<&str> {
        match self.kind {
            PrincipalKind::ApiKey => Some(&self.id),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// A request after routing: everything an upstream needs to forward it. Cloned
/// (cheaply: shared pointers) for background cache refreshes.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: crate::headers::RequestId,
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
    /// The port in the Host the client addressed, if it named one.
    pub port: Option<u16>,
    /// The authenticated caller (set by the limits phase; `None` before it,
    /// and on routes that authenticate no one).
    pub principal: Option<Principal>,
}

impl RequestCtx {
    /// The port the client addressed: its Host's, else its scheme's.
    pub fn addressed_port(&self) -> u16 {
        let default = if self.conn.scheme() == "https" {
            443
        } else {
            80
        };
        self.port.unwrap_or(default)
    }

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
