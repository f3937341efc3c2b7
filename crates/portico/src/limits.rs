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

/// The PEM files of `[quotas] ca`, `cert` and `key`, read and checked
/// here, at start: the Redis client would only find a file without a
/// certificate, or a key that does not load, at each connection, as a store
/// that cannot be reached.
fn store_tls(tls: &RedisTls) -> Result<StoreTls, std::io::Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &std::path::Path, why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("[quotas] {}: {why}", path.display()),
        )
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("[quotas] {}: {e}", path.display())))
    };
    let certs = |path: &std::path::Path, pem: &[u8]| {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e.to_string()))?;
        match certs.is_empty() {
            true => Err(bad(path, "no PEM certificate".into())),
            false => Ok(certs),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = match &tls.ca {
        Some(path) => {
            let pem = read(path)?;
            for cert in certs(path, &pem)? {
                roots.add(cert).map_err(|e| bad(path, e.to_string()))?;
            }
            Some(pem)
        }
        None => None,
    };
    let client = match &tls.client {
        Some(c) => {
            let (cert_pem, key_pem) = (read(&c.cert)?, read(&c.key)?);
            let chain = certs(&c.cert, &cert_pem)?;
            let key =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&c.key, e.to_string()))?;
            // What the client does at each connection, once now.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .and_then(|b| {
                    b.with_root_certificates(roots)
                        .with_client_auth_cert(chain, key)
                })
                .map_err(|e| bad(&c.key, e.to_string()))?;
            Some((cert_pem, key_pem))
        }
        None => None,
    };
    Ok(StoreTls { ca, client })
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
