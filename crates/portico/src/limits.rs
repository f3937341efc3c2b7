//! Wiring of the limits phase: the node's throttles from `[throttle]`, the
//! origin's quota book (`<state_dir>/quota.redb`, or the Redis of `[quotas]
//! store` its region's origins share), and the periodic forgetting of idle
//! keyed buckets.

use std::sync::Arc;

use portico_config::{NodeConfig, QuotaStore, RedisTls};
use portico_gateway::limits::{Limits, Quotas, RETAIN_INTERVAL};
use portico_quota::{RedisBook, StoreTls};
use tokio::sync::watch;

use crate::AppError;

/// Opens the origin's quota book: its own file (creating the state
/// directory), or the region's shared store (reached lazily: a Redis that is
/// down is logged and retried, not fatal).
pub async fn open_quota(config: &NodeConfig) -> Result<Arc<Quotas>, AppError> {
    if let QuotaStore::Redis {
        url,
        key_prefix,
        tls,
    } = &config.quotas
    {
        let book = RedisBook::connect_tls(url, key_prefix, &store_tls(tls)?)
            .map_err(|e| std::io::Error::other(format!("[quotas] store: {e}")))?;
        tracing::info!(store = %portico_quota::shared::redacted(url), key_prefix, "quota book shared in redis");
        return Ok(Arc::new(Quotas::shared(book, &config.node.id).await));
    }
    let dir = &config.node.state_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        std::io::Error::new(e.kind(), format!("state directory {}: {e}", dir.display()))
    })?;
    let path = dir.join("quota.redb");
    let quota = Quotas::open(&path, &config.node.id)
        .map_err(|e| std::io::Error::other(format!("quota book {}: {e}", path.display())))?;
    Ok(Arc::new(quota))
}

/// The PEM files of `[quotas] ca`, `cert` and `key`, read.
fn store_tls(tls: &RedisTls) -> Result<StoreTls, std::io::Error> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("[quotas] {}: {e}", path.display())))
    };
    let client = match &tls.client {
        Some(c) => Some((read(&c.cert)?, read(&c.key)?)),
        None => None,
    };
    Ok(StoreTls {
        ca: tls.ca.as_deref().map(read).transpose()?,
        client,
    })
}

/// The node's limits; `quota` holds its usage-plan wallets (an origin's over
/// its own book, a PoP's over leases from its origins).
pub fn limits(config: &NodeConfig, quota: Arc<Quotas>) -> Limits {
    Limits::new(&config.throttle, &config.definitions, Some(quota))
}

/// How often expired quota leases are handed back.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Forgets idle keyed buckets every [`RETAIN_INTERVAL`] and hands back
/// expired quota leases every second, until `stop`.
pub async fn retain(limits: Arc<Limits>, mut stop: watch::Receiver<bool>) {
    let mut forget = tokio::time::interval(RETAIN_INTERVAL);
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        let swept = tokio::select! {
            _ = forget.tick() => { limits.retain_recent(); false }
            _ = sweep.tick() => true,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let (true, Some(q)) = (swept, limits.quota()) {
            q.sweep().await;
        }
    }
}
