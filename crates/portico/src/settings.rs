//! Translation of compiled configuration into each library crate's own settings.

use std::sync::Arc;

use portico_config::NodeConfig;
use portico_gateway::GatewaySettings;
use portico_integrations::{ClientSettings, DnsSettings};
use portico_net::{HttpLimits, QuicSettings};

pub fn gateway(config: &NodeConfig) -> GatewaySettings {
    GatewaySettings {
        node_id: Arc::from(config.node.id.as_str()),
        max_body_bytes: config.limits.max_body_bytes,
        max_header_bytes: config.limits.max_header_bytes,
        upstream_read_timeout: config.limits.upstream_read_timeout,
        upload_timeout: config.limits.upload_timeout,
    }
}

/// The node's response cache (`[cache]`): attached unless `enabled = false`.
pub fn with_cache<U: portico_gateway::Upstream>(
    gateway: portico_gateway::Gateway<U>,
    config: &NodeConfig,
) -> portico_gateway::Gateway<U> {
    if config.cache.enabled {
        gateway.with_cache(config.cache.max_bytes)
    } else {
        gateway
    }
}

/// Raises the open-file limit for what the node's listeners may hold.
pub fn raise_file_limit(config: &NodeConfig) {
    let listeners = u64::try_from(config.listeners.len()).unwrap_or(u64::MAX);
    let each = u64::try_from(config.limits.max_connections).unwrap_or(u64::MAX);
    crate::files::raise_limit(listeners.saturating_mul(each));
}

pub fn http_limits(config: &NodeConfig) -> HttpLimits {
    // hyper's own cap sits well above ours so that the gateway, not hyper,
    // answers most oversized header sections (with a JSON 431).
    HttpLimits {
        max_header_bytes: config.limits.max_header_bytes * 2 + 16 * 1024,
        max_connections: config.limits.max_connections,
        max_connections_per_client: config.limits.max_connections_per_client,
        send_timeout: config.limits.send_timeout,
        ..HttpLimits::default()
    }
}

/// A listener's QUIC transport settings (`[listeners.quic]`).
pub fn quic(q: &portico_config::QuicConfig) -> QuicSettings {
    use portico_config::Congestion as C;
    QuicSettings {
        congestion: match q.congestion {
            C::Cubic => portico_net::Congestion::Cubic,
            C::Bbr => portico_net::Congestion::Bbr,
            C::NewReno => portico_net::Congestion::NewReno,
        },
        max_concurrent_streams: q.max_concurrent_streams,
        idle_timeout: q.idle_timeout,
        stream_receive_window: q.stream_receive_window,
        receive_window: q.receive_window,
        send_window: q.send_window,
        grease: q.grease,
    }
}

pub fn client(config: &NodeConfig) -> ClientSettings {
    let c = &config.backend_client;
    ClientSettings {
        ca_file: c.ca_file.clone(),
        use_webpki_roots: c.use_webpki_roots,
        pool_idle_timeout: c.pool_idle_timeout,
        pool_max_idle_per_host: c.pool_max_idle_per_host,
        connect_timeout: c.connect_timeout,
        http2_only: c.http2_only,
        https_h2: c.https_h2,
        http2_keep_alive_interval: c.http2_keep_alive_interval,
        http2_keep_alive_timeout: c.http2_keep_alive_timeout,
        pool_max_lifetime: c.pool_max_lifetime,
    }
}

pub fn dns(config: &NodeConfig) -> DnsSettings {
    DnsSettings {
        nameservers: config.dns.nameservers.clone(),
        use_hosts_file: config.dns.use_hosts_file,
        cache_size: config.dns.cache_size as u64,
    }
}

/// Listener worker threads: `PORTICO_WORKERS` if set (0 = serve on the shared
/// work-stealing runtime), else one per core.
pub fn workers(_config: &NodeConfig) -> usize {
    workers_override()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Threads of a PoP's listeners, TCP and HTTP/3: `PORTICO_WORKERS` if set,
/// else 0, the shared runtime. A PoP's misses cross to the backbone link,
/// whose quinn driver runs on that runtime: a request served on a per-core
/// worker would wake the driver on another thread and be woken back from it,
/// which cost the miss path a third of the PoP's CPU over TCP
/// (`scripts/bench-chain.sh`) and over HTTP/3 (33 against 20 µs per 1 KB
/// miss, oha `-c 8 -p 8`). On the shared runtime the driver is woken on the
/// request's own thread. Cache hits pay for it: 12.6–13.9 µs of PoP CPU per
/// 1 KB hit here against 10.6 µs on per-core workers (h2 and h3 alike, oha
/// `-c 8 -p 8`), as a connection's tasks may spread over the runtime's
/// threads. A miss saves about 12 µs and a hit costs about 3, so the shared
/// runtime wins below roughly 80 % hits; `PORTICO_WORKERS=<cores>` picks
/// per-core workers for a PoP that mostly serves its cache.
pub fn pop_listener_workers() -> usize {
    workers_override().unwrap_or(0)
}

/// `PORTICO_WORKERS`, at most [`MAX_WORKERS`] (a number past any machine's
/// cores is a typo, not a reason to fail allocating the threads' table).
fn workers_override() -> Option<usize> {
    std::env::var("PORTICO_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|n| n.min(MAX_WORKERS))
}

/// Most listener worker threads `PORTICO_WORKERS` may ask for.
const MAX_WORKERS: usize = 1024;
