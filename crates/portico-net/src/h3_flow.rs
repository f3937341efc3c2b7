//! What a request stream's QUIC side ([`crate::h3_quic`]) and the request it
//! carries ([`crate::h3_body`]) share past h3, which keeps its streams to
//! itself: how far h3 has read ahead of the request body, and when the
//! client last took some of the response.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};

use h3::quic::StreamId;
use tokio::time::Instant;

/// The most body a request stream hands h3 beyond what the handler has
/// read. h3 0.0.8 reads from QUIC on every poll of a body and buffers what
/// it reads, however much it holds already, and each read frees QUIC credit:
/// without a bound, a body it hands on slower than it reads (one-byte DATA
/// frames did that) grew its buffer at the client's rate. QUIC's stream
/// window (quinn's buffer) is the body's real window; this only needs to
/// keep h3 going between the handler's reads.
pub(crate) const READ_AHEAD: u64 = 64 * 1024;

/// The [`Flow`]s of a connection's request streams, by stream id, from the
/// stream's acceptance until the request it carries claims its flow, or the
/// stream is dropped unclaimed. The id is the only way from a request back
/// to its stream.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    open: Mutex<HashMap<u64, Arc<Flow>>>,
}

impl Flows {
    /// The flow of a new stream.
    pub(crate) fn open(&self, id: u64) -> Arc<Flow> {
        let flow = Arc::new(Flow::default());
        lock(&self.open).insert(id, Arc::clone(&flow));
        flow
    }

    /// The flow of the request on stream `id`, for its body to report what
    /// it reads (from here on h3 reads no further than [`READ_AHEAD`] ahead
    /// of it, plus the one read of at most 16 KiB that crosses it) and its
    /// response to see its progress. `None` if the stream is
    /// gone.
    pub(crate) fn claim(&self, id: StreamId) -> Option<Arc<Flow>> {
        let flow = lock(&self.open).remove(&id.into_inner())?;
        lock(&flow.read_ahead).bounded = true;
        Some(flow)
    }

    /// Drops the flow of a stream that was never claimed.
    pub(crate) fn forget(&self, id: u64) {
        lock(&self.open).remove(&id);
    }
}

/// One request stream's flow.
#[derive(Debug)]
pub(crate) struct Flow {
    read_ahead: Mutex<ReadAhead>,
    /// When the stream last took response bytes, or a write began.
    progress: Mutex<Instant>,
    /// Resolves when the client stops the response (`STOP_SENDING`, sent
    /// when it cancels the request) or the connection is gone; taken by the
    /// request, which then drops its handler (and the backend or backbone
    /// work behind it), as hyper does for an HTTP/2 `RST_STREAM`.
    stop: Mutex<Option<Stop>>,
}

/// See [`Flow::stop`].
pub(crate) struct Stop(pub(crate) Pin<Box<dyn Future<Output = ()> + Send + Sync>>);

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stop")
    }
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            read_ahead: Mutex::default(),
            progress: Mutex::new(Instant::now()),
            stop: Mutex::new(None),
        }
    }
}

#[derive(Debug, Default)]
struct ReadAhead {
    /// DATA payload bytes handed to h3.
    handed: u64,
    /// DATA payload bytes the request body has read out of h3.
    taken: u64,
    /// Whether a request body counts what it takes. Until then h3 reads the
    /// head only, which the frame caps bound.
    bounded: bool,
    /// The task waiting for the body to take more.
    waker: Option<Waker>,
}

impl ReadAhead {
    fn full(&self) -> bool {
        self.bounded && self.handed.saturating_sub(self.taken) >= READ_AHEAD
    }
}

impl Flow {
    /// Whether h3 holds enough: then `cx` is woken once the body has taken
    /// more. h3 can always go on without another read when it does: all it
    /// was handed is whole frames (a partial header is held back), and the
    /// payload it holds is more than nothing.
    pub(crate) fn wait(&self, cx: &Context<'_>) -> bool {
        let mut read_ahead = lock(&self.read_ahead);
        if !read_ahead.full() {
            return false;
        }
        read_ahead.waker = Some(cx.waker().clone());
        true
    }

    /// Counts `payload` bytes handed to h3.
    pub(crate) fn handed(&self, payload: u64) {
        let mut read_ahead = lock(&self.read_ahead);
        read_ahead.handed = read_ahead.handed.saturating_add(payload);
    }

    /// Counts `payload` bytes the request body has read.
    pub(crate) fn taken(&self, payload: u64) {
        let waker = {
            let mut read_ahead = lock(&self.read_ahead);
            read_ahead.taken = read_ahead.taken.saturating_add(payload);
            if read_ahead.full() {
                None
            } else {
                read_ahead.waker.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Records progress of the response: QUIC took some of it, or a write
    /// begins (the wait for the body before it does not count).
    pub(crate) fn progressed(&self) {
        *lock(&self.progress) = Instant::now();
    }

    /// When the response last made progress.
    pub(crate) fn last_progress(&self) -> Instant {
        *lock(&self.progress)
    }

    /// Sets what resolves when the client stops the response.
    pub(crate) fn watch_stop(&self, stop: impl Future<Output = ()> + Send + Sync + 'static) {
        *lock(&self.stop) = Some(Stop(Box::pin(stop)));
    }

    /// What resolves when the client stops the response (once).
    pub(crate) fn take_stop(&self) -> Option<Stop> {
        lock(&self.stop).take()
    }
}

/// A lock that a panic elsewhere does not poison for us: what it guards is
/// valid at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Counts its wakes.
    struct Wakes(AtomicU64);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn h3_waits_for_the_body_once_it_holds_the_read_ahead() {
        let flows = Flows::default();
        let flow = flows.open(0);
        let wakes = Arc::new(Wakes(AtomicU64::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let cx = Context::from_waker(&waker);
        // Unbounded until a body claims the flow: h3 reads only the head.
        flow.handed(READ_AHEAD);
        assert!(!flow.wait(&cx));
        let claimed = flows.claim(StreamId::try_from(0).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&flow, &claimed));
        assert!(flows.claim(StreamId::try_from(0).unwrap()).is_none());
        assert!(flow.wait(&cx));
        flow.taken(1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken once below");
        assert!(!flow.wait(&cx));
        flow.handed(1);
        assert!(flow.wait(&cx));
    }
}
