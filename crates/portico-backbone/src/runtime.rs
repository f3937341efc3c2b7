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
//!
//! Only while another request is in flight on the endpoint ([`InFlight`]):
//! with one, no other task will write in that turn, and the yield only costs
//! time. On a multi-threaded runtime it costs more than a turn: tokio wakes
//! a parked worker for every task that yields, which then steals the driver
//! or the request onto the other CPU. A lone 1 KB request through a PoP
//! (wrk `-c1`, the chain of `scripts/bench-chain.sh`) took 184–197 µs
//! (median) with the yield at every wake-up and 144–149 µs without it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};

/// How many requests an endpoint has in flight (a PoP: exchanges until
/// their response ends; an origin: request tasks).
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts one request until the guard is dropped.
    pub(crate) fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(&self.0), None)
    }

    /// Counts one request here and in `also` (its link's own count) until
    /// the guard is dropped.
    pub(crate) fn enter_with(&self, also: &InFlight) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        also.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(&self.0), Some(Arc::clone(&also.0)))
    }

    /// Requests counted now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether another request may write in the same turn as this one.
    fn concurrent(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 1
    }
}

/// One request of an [`InFlight`] count (and of a second one, with
/// [`InFlight::enter_with`]).
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<AtomicUsize>, Option<Arc<AtomicUsize>>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(also) = &self.1 {
            also.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// [`TokioRuntime`] whose spawned drivers yield once per wake-up while
/// requests are concurrent.
#[derive(Debug)]
pub(crate) struct CoalescingRuntime {
    in_flight: InFlight,
}

impl CoalescingRuntime {
    pub(crate) fn shared(in_flight: InFlight) -> Arc<dyn Runtime> {
        Arc::new(CoalescingRuntime { in_flight })
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
            in_flight: self.in_flight.clone(),
        });
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> std::time::Instant {
        TokioRuntime.now()
    }
}

/// Polls `inner` only every second time it is woken while requests are
/// concurrent: the first poll after a wake-up reschedules the task behind
/// those already queued (tokio puts a task that woke itself at the back of
/// the queue, not in the LIFO slot).
struct YieldFirst {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
    yielded: bool,
    in_flight: InFlight,
}

impl Future for YieldFirst {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.yielded && self.in_flight.concurrent() {
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
        let in_flight = InFlight::default();
        let _concurrent = (in_flight.enter(), in_flight.enter());
        let runtime = CoalescingRuntime { in_flight };
        runtime.spawn(Box::pin(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(7);
        }));
        assert_eq!(rx.await.ok(), Some(7));
    }

    /// Counts its polls; never completes.
    struct Polls(Arc<AtomicUsize>);

    impl Future for Polls {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Pending
        }
    }

    fn yield_first(in_flight: &InFlight) -> (YieldFirst, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let fut = YieldFirst {
            inner: Box::pin(Polls(Arc::clone(&polls))),
            yielded: false,
            in_flight: in_flight.clone(),
        };
        (fut, polls)
    }

    #[test]
    fn a_lone_request_is_driven_at_once_concurrent_ones_after_a_turn() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let in_flight = InFlight::default();
        let (mut driver, polls) = yield_first(&in_flight);
        let one = in_flight.enter();
        let _ = Pin::new(&mut driver).poll(&mut cx);
        assert_eq!(polls.load(Ordering::Relaxed), 1, "one request: no yield");
        let two = in_flight.enter();
        let _ = Pin::new(&mut driver).poll(&mut cx);
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "two: the first poll yields"
        );
        let _ = Pin::new(&mut driver).poll(&mut cx);
        assert_eq!(polls.load(Ordering::Relaxed), 2, "then the driver runs");
        drop((one, two));
        assert!(!in_flight.concurrent());
    }
}
