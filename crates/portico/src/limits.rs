//! Wiring of the limits phase: the node's throttles from `[throttle]`, the
//! origin's quota book at `<state_dir>/quota.redb`, and the periodic forgetting
//! of idle keyed buckets.

use std::sync::Arc;

use portico_config::NodeConfig;
use portico_gateway::limits::{Limits, LocalQuota, RETAIN_INTERVAL};
use tokio::sync::watch;

use crate::AppError;

/// Opens the origin's quota book (creating the state directory).
pub fn open_quota(config: &NodeConfig) -> Result<Arc<LocalQuota>, AppError> {
    let dir = &config.node.state_dir;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("quota.redb");
    let quota = LocalQuota::open(&path, &config.node.id)
        .map_err(|e| std::io::Error::other(format!("quota book {}: {e}", path.display())))?;
    Ok(Arc::new(quota))
}

/// The node's limits; `quota` is the origin's book (PoPs have none: the origin
/// counts their keyed requests when they arrive over the backbone).
pub fn limits(config: &NodeConfig, quota: Option<Arc<LocalQuota>>) -> Limits {
    Limits::new(&config.throttle, &config.definitions, quota)
}

/// Forgets idle keyed buckets every [`RETAIN_INTERVAL`] until `stop`.
pub async fn retain(limits: Arc<Limits>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RETAIN_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => limits.retain_recent(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
