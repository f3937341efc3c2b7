//! A running relay, as seen by whoever started it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{NetsimError, RelayStats, StatsSnapshot};

/// A relay running on its own task. Dropping the handle shuts the relay down too, so a
/// topology's relays live exactly as long as the handles the runner keeps.
#[derive(Debug)]
pub struct RelayHandle {
    local_addr: SocketAddr,
    stats: Arc<RelayStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NetsimError>>,
}

impl RelayHandle {
    /// Spawns `run(shutdown)` on the current tokio runtime.
    pub(crate) fn spawn<F, Fut>(local_addr: SocketAddr, stats: Arc<RelayStats>, run: F) -> Self
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = Result<(), NetsimError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(stopped));
        Self {
            local_addr,
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's counters right now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stops the relay (closing its sockets and dropping data in flight) and waits for it;
    /// returns the error that stopped it earlier, if any.
    pub async fn shutdown(mut self) -> Result<(), NetsimError> {
        if let Some(stop) = self.stop.take() {
            // The relay may already have ended on its own; its result tells why.
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| NetsimError::Task(e.to_string()))?
    }
}

/// Resolves when the handle asks for shutdown or is dropped.
pub(crate) async fn stop_signal(stopped: oneshot::Receiver<()>) {
    // Err means the handle was dropped: that is a shutdown request as well.
    let _ = stopped.await;
}
