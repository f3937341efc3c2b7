//! The quinn runtime of backbone endpoints: tokio, with drivers that let
//! the tasks already runnable go first.
//!
//! quinn wakes a connection's driver on every stream write, and tokio runs
//! a task woken by another one next (its LIFO slot). Many small requests
//! would then each leave in a packet and a `sendmsg` of their own: the
//! driver sends request 1 before the task holding request 2 has run. Here
//! every driver wake-up first yields once, to the back of the run queue, so
//! the writes of every task that was already runnable are sent together
//! (Nagle's idea with a scheduler tick instead of a timer). An idle runtime
//! runs the driver again at once: the delay is bounded by the tasks queued
//! before it, never by a clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

/// [`TokioRuntime`] whose spawned drivers yield once per wake-up.
#[derive(Debug)]
pub(crate) struct CoalescingRuntime;

impl CoalescingRuntime {
    pub(crate) fn shared() -> Arc<dyn Runtime> {
        Arc::new(CoalescingRuntime)
    }
}

impl Runtime for CoalescingRuntime {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(YieldFirst {
            inner: future,
            yielded: false,
        });
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> std::time::Instant {
        TokioRuntime.now()
    }
}

/// Polls `inner` only every second time it is woken: the first poll after a
/// wake-up reschedules the task behind those already queued (tokio puts a
/// task that woke itself at the back of the queue, not in the LIFO slot).
struct YieldFirst {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
    yielded: bool,
}

impl Future for YieldFirst {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_futures_run_to_completion() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        CoalescingRuntime.spawn(Box::pin(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        }));
        assert_eq!(rx.await.ok(), Some(7));
    }
}
