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
    /// How the task ended, once [`RelayHandle::ended`] has seen it end (a
    /// finished `JoinHandle` must not be awaited twice).
    outcome: Option<Result<(), NetsimError>>,
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
            outcome: None,
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
        match self.outcome.take() {
            Some(outcome) => outcome,
            None => joined((&mut self.task).await),
        }
    }

    /// Resolves when the relay ends without having been asked to (its socket
    /// failed, or its task panicked), with why; a relay never ends on its own
    /// otherwise. Cancel-safe: a runner can race it with other events and ask
    /// again. The error is handed out once: [`RelayHandle::shutdown`] then
    /// answers `Ok`, and `ended` resolves at once with a generic error.
    pub async fn ended(&mut self) -> NetsimError {
        let outcome = match self.outcome.take() {
            Some(outcome) => outcome,
            None => joined((&mut self.task).await),
        };
        self.outcome = Some(Ok(()));
        match outcome {
            Err(e) => e,
            Ok(()) => NetsimError::Task("the relay stopped on its own".into()),
        }
    }
}

/// A relay task's result, a panic or cancellation as [`NetsimError::Task`].
fn joined(res: Result<Result<(), NetsimError>, tokio::task::JoinError>) -> Result<(), NetsimError> {
    res.map_err(|e| NetsimError::Task(e.to_string()))?
}

/// Resolves when the handle asks for shutdown or is dropped.
pub(crate) async fn stop_signal(stopped: oneshot::Receiver<()>) {
    // Err means the handle was dropped: that is a shutdown request as well.
    let _ = stopped.await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn handle<Fut>(run: impl FnOnce(oneshot::Receiver<()>) -> Fut) -> RelayHandle
    where
        Fut: Future<Output = Result<(), NetsimError>> + Send + 'static,
    {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        RelayHandle::spawn(addr, Arc::new(RelayStats::default()), run)
    }

    #[tokio::test]
    async fn a_relay_that_fails_on_its_own_says_why_once() {
        let mut relay = handle(|_| async {
            Err(NetsimError::Io {
                context: "receiving",
                source: std::io::Error::other("socket gone"),
            })
        });
        assert_eq!(relay.ended().await.to_string(), "receiving: socket gone");
        assert!(matches!(relay.ended().await, NetsimError::Task(_)));
        assert!(relay.shutdown().await.is_ok(), "already reported");
    }

    #[tokio::test]
    async fn a_running_relay_has_not_ended_and_still_shuts_down() {
        let mut relay = handle(|stopped| async move {
            stop_signal(stopped).await;
            Ok(())
        });
        let waited = tokio::time::timeout(Duration::from_millis(50), relay.ended()).await;
        assert!(waited.is_err(), "a relay nobody stopped is still running");
        assert!(relay.shutdown().await.is_ok());
    }

    #[tokio::test]
    async fn a_relay_that_fails_before_its_shutdown_reports_at_shutdown() {
        let relay = handle(|_| async { Err(NetsimError::ZeroBandwidth) });
        assert!(matches!(
            relay.shutdown().await,
            Err(NetsimError::ZeroBandwidth)
        ));
    }
}
