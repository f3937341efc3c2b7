//! The file format: serde structs mirroring the TOML, with spans on every value that
//! validation may need to point at. Only this module and `load` know TOML's shape.
//!
//! Arrays of tables that may hold many elements (`routes`, `deployments`, `stages`)
//! and the internally tagged `integration` are skipped by serde here and filled in by
//! `load`, which deserializes each element on its own so that every element's errors
//! are reported, not only the first.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::cache::{CacheMode, ClientInvalidation};
use crate::method::EndpointMode;

pub(crate) type S<T> = Spanned<T>;
pub(crate) type SpannedMap = BTreeMap<S<String>, S<String>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeFile {
    pub id: S<String>,
    pub region: Option<S<String>>,
    pub location: Option<String>,
    /// Directory of the node's persistent state (the quota book).
    pub state_dir: Option<S<String>>,
    /// The CPUs the node's threads may run on.
    pub cpus: Option<S<Vec<S<u64>>>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerFile {
    pub address: S<SocketAddr>,
    #[serde(default = "yes")]
    pub tls: bool,
    pub default_api: Option<S<String>>,
    #[serde(default)]
    pub certificates: Vec<CertFile>,
    pub http3: Option<S<bool>>,
    /// `[listeners.quic]`, compiled by `crate::quic`.
    pub quic: Option<S<crate::quic::QuicFile>>,
    /// Every TCP connection starts with a load balancer's PROXY header.
    pub proxy_protocol: Option<S<bool>>,
    /// The peers (load balancers) that may send it: addresses or CIDRs.
    #[serde(default)]
    pub proxy_protocol_from: Vec<S<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertFile {
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub address: S<SocketAddr>,
    pub token: Option<S<String>>,
    pub token_file: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub max_body_bytes: Option<S<u64>>,
    pub max_header_bytes: Option<S<u64>>,
    pub default_timeout_ms: Option<S<u64>>,
    pub max_connections: Option<S<u64>>,
    pub max_connections_per_client: Option<S<u64>>,
    pub upstream_read_timeout_ms: Option<S<u64>>,
    pub send_timeout_ms: Option<S<u64>>,
    pub upload_timeout_ms: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendClientFile {
    pub ca_file: Option<S<String>>,
    pub use_webpki_roots: Option<S<bool>>,
    pub pool_idle_timeout_ms: Option<S<u64>>,
    pub pool_max_idle_per_host: Option<usize>,
    pub connect_timeout_ms: Option<S<u64>>,
    #[serde(default)]
    pub http2_only: bool,
    #[serde(default)]
    pub https_h2: bool,
    pub http2_keep_alive_interval_ms: Option<S<u64>>,
    pub http2_keep_alive_timeout_ms: Option<S<u64>>,
    pub pool_max_lifetime_ms: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsFile {
    pub nameservers: Option<Vec<SocketAddr>>,
    pub use_hosts_file: Option<bool>,
    pub cache_size: Option<S<u64>>,
}

/// `[quotas]`: where an origin keeps its quota book.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotasFile {
    pub store: Option<S<String>>,
    pub key_prefix: Option<S<String>>,
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackboneFile {
    pub listen: Option<S<SocketAddr>>,
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub max_concurrent_streams: Option<S<u64>>,
    pub keep_alive_ms: Option<S<u64>>,
    pub idle_timeout_ms: Option<S<u64>>,
    pub reconnect_min_ms: Option<S<u64>>,
    pub reconnect_max_ms: Option<S<u64>>,
    pub config_deltas: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OriginFile {
    pub region: S<String>,
    pub address: S<SocketAddr>,
    pub server_name: S<String>,
}

/// The part of a node file that PoPs receive: serialized as `Definitions::source`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct DefinitionsFile {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub apis: Vec<ApiFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usage_plans: Vec<UsagePlanFile>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ApiKeyFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiFile {
    pub name: S<String>,
    pub endpoint: S<EndpointMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<S<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<S<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<S<CorsFile>>,
    #[serde(skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteFile>,
    #[serde(skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<DeploymentFile>,
    #[serde(skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageFile>,
}

/// An API's `cors` table (API Gateway HTTP APIs' CORS configuration).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsFile {
    pub allow_origins: S<Vec<S<String>>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<S<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<S<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<S<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<S<u64>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_credentials: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<S<String>>,
    pub path: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<S<u64>>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub api_key_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<S<ThrottleFile>>,
    /// Filled by `load`; `None` only when the route's integration failed to load.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub integration: Option<IntegrationFile>,
}

/// Serialized with serde's internal tagging; deserialized by `load` (serde's internally
/// tagged enums lose the spans of their fields).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum IntegrationFile {
    HttpProxy(HttpProxyFile),
    Http(HttpFile),
    Mock(MockFile),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpProxyFile {
    pub uri: S<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<S<String>>,
    pub uri: S<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub request_parameters: SpannedMap,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_parameters: SpannedMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_request_body: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MockFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<S<u16>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: SpannedMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeploymentFile {
    pub id: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_deserializing, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StageFile {
    pub name: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<S<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: SpannedMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<S<ThrottleFile>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_overrides: Vec<RouteOverrideFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteOverrideFile {
    pub route: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<S<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<S<ThrottleFile>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainFile {
    pub name: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<MappingFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MappingFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_path: Option<S<String>>,
    pub api: S<String>,
    pub stage: S<String>,
}

/// A route's (or a stage override's) `cache` table: only the keys written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<S<CacheMode>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<S<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_query: Option<Vec<S<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_headers: Option<Vec<S<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statuses: Option<S<Vec<S<u16>>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<S<Vec<S<String>>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_object_bytes: Option<S<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate_seconds: Option<S<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_if_error_seconds: Option<S<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_invalidation: Option<S<ClientInvalidation>>,
}

/// The node's `[cache]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeCacheFile {
    pub enabled: Option<bool>,
    pub max_bytes: Option<S<u64>>,
}

/// `{ rate, burst }` of a node, stage, route, override or usage plan.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThrottleFile {
    pub rate: S<f64>,
    pub burst: S<i64>,
}

/// The node's `[throttle]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeThrottleFile {
    pub enabled: Option<bool>,
    pub rate: Option<S<f64>>,
    pub burst: Option<S<i64>>,
    pub per_client_ip: Option<S<ThrottleFile>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsagePlanFile {
    pub name: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_origin_unreachable: Option<S<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<S<ThrottleFile>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<S<QuotaFile>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_stages: Vec<ApiStageFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuotaFile {
    pub limit: S<i64>,
    pub period: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<S<i64>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiStageFile {
    pub api: S<String>,
    pub stage: S<String>,
    /// Per key of the plan, in this stage (API Gateway's `*/*` entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<S<ThrottleFile>>,
    /// Per key of the plan, on one route of this stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_throttles: Vec<RouteThrottleFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteThrottleFile {
    pub route: S<String>,
    pub throttle: S<ThrottleFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyFile {
    pub id: S<String>,
    pub hash: S<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<S<String>>,
}
