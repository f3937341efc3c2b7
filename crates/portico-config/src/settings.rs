//! The compiled node settings: everything in a node file except API definitions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::NodeCacheConfig;
use crate::method::Role;
use crate::model::{CertPaths, Definitions};

/// One node's whole configuration. `definitions` is the origin's API snapshot (empty
/// on a PoP, which receives its snapshot over the backbone).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node: NodeSettings,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    pub limits: Limits,
    pub backend_client: BackendClientConfig,
    pub dns: DnsConfig,
    pub backbone: Option<BackboneConfig>,
    pub origins: Vec<OriginLink>,
    pub definitions: Arc<Definitions>,
    /// The `[cache]` section (defaults when absent).
    pub cache: NodeCacheConfig,
    /// The `[throttle]` section (defaults when absent).
    pub throttle: NodeThrottleConfig,
    /// The `[quotas]` section: where an origin keeps its quota book.
    pub quotas: QuotaStore,
}

/// Where an origin keeps its quota book (`[quotas] store`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum QuotaStore {
    /// Its own file, `<state_dir>/quota.redb`.
    #[default]
    Local,
    /// A Redis every origin of the region shares, keys under `key_prefix`;
    /// `tls` for a `rediss://` URL.
    Redis {
        url: String,
        key_prefix: String,
        tls: RedisTls,
    },
}

/// TLS to a `rediss://` quota store (`[quotas] ca`, `cert`, `key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The anchors the server's certificate must chain to (PEM); the
    /// webpki roots built in when `None`.
    pub ca: Option<std::path::PathBuf>,
    /// This origin's certificate and key, for a server that asks for one.
    pub client: Option<crate::CertPaths>,
}

/// The node's own throttles: all requests together, and per client IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeThrottleConfig {
    /// `false` turns every throttle of this node off (stage, route and key ones too).
    pub enabled: bool,
    /// Every request this node serves.
    pub node: crate::plans::RateLimit,
    /// Each client IP address.
    pub per_client_ip: Option<crate::plans::RateLimit>,
}

impl Default for NodeThrottleConfig {
    fn default() -> Self {
        NodeThrottleConfig {
            enabled: true,
            node: crate::plans::RateLimit {
                rate: 10_000.0,
                burst: 5_000,
            },
            per_client_ip: None,
        }
    }
}

impl NodeConfig {
    /// The sections of `next` that differ from this running configuration's
    /// and that a reload does not apply (they take effect at the next
    /// start): all but the definitions and the admin token. A changed
    /// `default_timeout_ms` is applied, through the route timeouts.
    pub fn restart_only_changes(&self, next: &NodeConfig) -> Vec<&'static str> {
        let limits = Limits {
            default_timeout: self.limits.default_timeout,
            ..next.limits.clone()
        };
        let admin_address = |c: &NodeConfig| c.admin.as_ref().map(|a| a.address);
        [
            ("[node]", self.node == next.node),
            ("[[listeners]]", self.listeners == next.listeners),
            (
                "[admin] address",
                admin_address(self) == admin_address(next),
            ),
            ("[limits]", self.limits == limits),
            (
                "[backend_client]",
                self.backend_client == next.backend_client,
            ),
            ("[dns]", self.dns == next.dns),
            ("[backbone]", self.backbone == next.backbone),
            ("[[origins]]", self.origins == next.origins),
            ("[cache]", self.cache == next.cache),
            ("[throttle]", self.throttle == next.throttle),
            ("[quotas]", self.quotas == next.quotas),
        ]
        .into_iter()
        .filter_map(|(name, same)| (!same).then_some(name))
        .collect()
    }

    /// A file with `[[origins]]` is a PoP's; any other is an origin's.
    pub fn role(&self) -> Role {
        if self.origins.is_empty() {
            Role::Origin
        } else {
            Role::Pop
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// `[a-z0-9][a-z0-9-]{0,62}`; names the node in logs, `Via` and `Cache-Status`.
    pub id: String,
    /// Required on an origin: the region whose APIs it serves.
    pub region: Option<String>,
    pub location: Option<String>,
    /// Persistent state (the quota book); default `portico-state/` beside the config file.
    pub state_dir: PathBuf,
    /// `cpus`: the CPUs every thread of the node is confined to (as `taskset`
    /// would), its runtimes sized to their number; empty = every CPU the
    /// process may use.
    pub cpus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// `false`: plain HTTP, for development.
    pub tls: bool,
    /// The API served when the Host matches no API or custom domain.
    pub default_api: Option<String>,
    /// Empty with `tls`: a self-signed certificate is generated at start.
    pub certificates: Vec<CertPaths>,
    /// HTTP/3 on the same port over UDP (requires `tls`).
    pub http3: bool,
    /// `[listeners.quic]`: the UDP side of an HTTP/3 listener (defaults when absent).
    pub quic: crate::quic::QuicConfig,
    /// `proxy_protocol = true`: every TCP connection starts with a PROXY
    /// header (v1 or v2) naming the client, sent by one of these peers (a
    /// load balancer; empty: any peer). `None`: off.
    pub proxy_protocol: Option<Vec<ipnet::IpNet>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The bearer token, read from `token_file` at load when that was given.
    pub token: String,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: u64,
    /// Total size of a request's header section.
    pub max_header_bytes: usize,
    /// Integration timeout of routes that set none.
    pub default_timeout: Duration,
    /// Connections open at once on each TCP listener.
    pub max_connections: usize,
    /// Connections one client address (IPv4, or IPv6 /64) may hold open at
    /// once on each public listener, TCP or HTTP/3; 0: no cap.
    pub max_connections_per_client: usize,
    /// Longest wait for more of a response body once its head came (nginx's
    /// `proxy_read_timeout`); the route timeout bounds the head.
    pub upstream_read_timeout: Duration,
    /// Longest a client may take to accept more of a response (nginx's
    /// `send_timeout`): past it the connection is closed.
    pub send_timeout: Duration,
    /// Longest a request body may stand still on its way to the backend
    /// (nginx's `client_body_timeout` and `proxy_send_timeout`): the client
    /// sending nothing (408) or the backend taking nothing (504). The route
    /// timeout runs from the body's end.
    pub upload_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            default_timeout: Duration::from_millis(29_000),
            max_connections: 16_384,
            max_connections_per_client: 256,
            upstream_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendClientConfig {
    /// Extra CA (PEM) trusted for https backends, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub use_webpki_roots: bool,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// For the whole connect: name resolution, TCP and the TLS handshake.
    pub connect_timeout: Duration,
    /// `true`: HTTP/2 with prior knowledge for http, ALPN h2 only for https.
    pub http2_only: bool,
    /// Offer h2 besides http/1.1 in ALPN to https backends. Off by default,
    /// as nginx and CloudFront speak HTTP/1.1 to origins: hyper keeps one
    /// HTTP/2 connection per backend and thread, so the backend's stream
    /// limit (often 100–128) caps the requests in flight to it, and slow
    /// clients holding that one connection's flow-control window stall the
    /// others' downloads.
    pub https_h2: bool,
    /// How long an HTTP/2 backend connection may go without a frame from
    /// the backend, busy or idle, before it is sent a PING (`None`: never).
    /// A backend that vanished without a reset (a crashed host, a dropped
    /// NAT entry) otherwise keeps its one shared connection in the pool
    /// until TCP gives up, some 15 minutes of requests timing out on it.
    pub http2_keep_alive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed
    /// (its requests fail; the next ones open a new connection).
    pub http2_keep_alive_timeout: Duration,
    /// How long a thread's backend connections are reused before they are
    /// retired (`None`: until they close or idle out). A pool that is never
    /// idle never closes a connection, so without it a backend name that
    /// moved (DNS) would keep its old addresses for ever.
    pub pool_max_lifetime: Option<Duration>,
}

impl Default for BackendClientConfig {
    fn default() -> Self {
        BackendClientConfig {
            ca_file: None,
            use_webpki_roots: true,
            pool_idle_timeout: Duration::from_millis(90_000),
            pool_max_idle_per_host: 256,
            connect_timeout: Duration::from_millis(5_000),
            http2_only: false,
            https_h2: false,
            // Together under the default route timeout (29 s): a request on a
            // connection that died just after its last frame fails as a 502
            // (or goes again, when idempotent) before it would time out.
            http2_keep_alive_interval: Some(Duration::from_millis(10_000)),
            http2_keep_alive_timeout: Duration::from_millis(10_000),
            pool_max_lifetime: Some(Duration::from_millis(300_000)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// `None`: the system's resolv.conf if readable, else the hosts file only.
    /// `Some(vec![])`: the hosts file only.
    pub nameservers: Option<Vec<SocketAddr>>,
    pub use_hosts_file: bool,
    pub cache_size: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: None,
            use_hosts_file: true,
            cache_size: 1024,
        }
    }
}

/// The QUIC backbone (issue 3). `listen` is the origin's; PoPs dial `origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackboneConfig {
    pub listen: Option<SocketAddr>,
    /// The private CA both ends verify each other against.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub max_concurrent_streams: u32,
    /// Link timers; `None` keeps the backbone's defaults.
    pub keep_alive: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub reconnect_min: Option<Duration>,
    pub reconnect_max: Option<Duration>,
    /// Configuration changes travel as per-API deltas when both ends allow
    /// it (default true); false: always full snapshots.
    pub config_deltas: bool,
}

/// An origin a PoP dials over the backbone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginLink {
    pub region: String,
    pub address: SocketAddr,
    /// The name the origin's backbone certificate is verified against.
    pub server_name: String,
}
