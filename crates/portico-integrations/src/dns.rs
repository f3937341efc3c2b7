//! Backend name resolution through hickory: TTL-respecting cache, /etc/hosts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use hyper_util::client::legacy::connect::dns::Name;

use crate::IntegrationError;

/// How backends' names are resolved.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Name servers to ask. `None`: the system's (`/etc/resolv.conf`) when
    /// readable; `Some(empty)`: the hosts file only.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Consult `/etc/hosts` before DNS.
    pub use_hosts_file: bool,
    /// Entries in the answer cache (answers are kept for their TTL).
    pub cache_size: u64,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            nameservers: None,
            use_hosts_file: true,
            cache_size: 1024,
        }
    }
}

/// A cloneable hickory resolver usable as hyper's DNS service.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    /// Turns the order of each answer: new connections to a name of several
    /// addresses go to each in turn, as nginx's round robin over a name's
    /// addresses does (the connector tries them in order, so the first
    /// address would otherwise take every connection for the whole TTL).
    turn: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    pub fn new(settings: &DnsSettings) -> Result<Self, IntegrationError> {
        let mut builder = builder(settings)?;
        let options = builder.options_mut();
        options.use_hosts_file = if settings.use_hosts_file {
            ResolveHosts::Always
        } else {
            ResolveHosts::Never
        };
        options.cache_size = settings.cache_size;
        let inner = builder
            .build()
            .map_err(|e| IntegrationError::Dns(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(inner),
            turn: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Resolves `host` to addresses (port 0: the connector sets the port),
    /// each lookup starting one address further on in the answer.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, IntegrationError> {
        let answer = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| IntegrationError::Dns(format!("{host}: {e}")))?;
        let mut addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
        if addrs.len() > 1 {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) % addrs.len();
            addrs.rotate_left(turn);
        }
        Ok(addrs)
    }
}

fn builder(
    settings: &DnsSettings,
) -> Result<ResolverBuilder<TokioRuntimeProvider>, IntegrationError> {
    let hosts_only = || {
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(Vec::new()),
            TokioRuntimeProvider::default(),
        )
    };
    let Some(nameservers) = &settings.nameservers else {
        // The system configuration when there is one; hosts file only otherwise.
        return Ok(TokioResolver::builder_tokio().unwrap_or_else(|err| {
            tracing::info!(%err, "no usable system DNS configuration; resolving from the hosts file only");
            hosts_only()
        }));
    };
    if nameservers.is_empty() {
        return Ok(hosts_only());
    }
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut config = NameServerConfig::udp_and_tcp(addr.ip());
            for conn in &mut config.connections {
                conn.port = addr.port();
            }
            config
        })
        .collect();
    Ok(TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    ))
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = IntegrationError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, IntegrationError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), IntegrationError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.lookup(name.as_str()).await.map(Vec::into_iter) })
    }
}
