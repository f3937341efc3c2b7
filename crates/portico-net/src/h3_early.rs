//! Early data (0-RTT) rules of the HTTP/3 listener, RFC 8470.
//!
//! A resumed client may send requests in its first flight, before the
//! handshake completes. Those bytes can be replayed by anyone who captured
//! them, so a request that arrives before the handshake is confirmed is
//! served only if its method is safe; otherwise it is answered `425 Too
//! Early` and the client retries it once the handshake is done. A served
//! early request carries `Early-Data: 1` upstream, so that backends can
//! apply their own rule.
//!
//! "Before the handshake is confirmed" is exact, not a guess: quinn never
//! processes 1-RTT packets before the handshake completes, and it signals
//! completion (the `ZeroRttAccepted` future) in the same driver step that
//! queues stream events, before any task can see a 1-RTT stream. So a request
//! whose head we read while that signal is still pending came in 0-RTT.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use http::{HeaderValue, Method, Request};

pub use portico_gateway::headers::EARLY_DATA;

/// Whether a connection's handshake has completed, checked without waiting.
pub(crate) struct Handshake {
    /// Set once completion was observed: every later request skips the lock.
    confirmed: AtomicBool,
    /// `None` once completion was observed (or for a connection that only
    /// became usable after its handshake).
    pending: Mutex<Option<quinn::ZeroRttAccepted>>,
}

impl Handshake {
    pub(crate) fn new(pending: Option<quinn::ZeroRttAccepted>) -> Self {
        Self {
            confirmed: AtomicBool::new(pending.is_none()),
            pending: Mutex::new(pending),
        }
    }

    /// True once the handshake has completed (or the connection failed,
    /// after which nothing more can be read from it).
    ///
    /// Polls the completion future once, without a waker that matters; the
    /// lock is held only for that poll, never across an await.
    pub(crate) fn is_confirmed(&self) -> bool {
        if self.confirmed.load(Ordering::Acquire) {
            return true;
        }
        let Ok(mut pending) = self.pending.lock() else {
            // A panic while polling a oneshot cannot happen; be safe anyway.
            return false;
        };
        match pending.as_mut() {
            None => true,
            Some(future) => {
                let done = future.now_or_never().is_some();
                if done {
                    *pending = None;
                    self.confirmed.store(true, Ordering::Release);
                }
                done
            }
        }
    }
}

/// Methods served from early data: the safe methods of RFC 9110 §9.2.1 that
/// an API serves (a replay of them changes nothing). TRACE, safe but never
/// useful to an API, waits for the handshake like everything else.
pub(crate) fn allowed_early(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Marks a request that is served from early data (RFC 8470 §5.1).
pub(crate) fn mark_early<B>(req: &mut Request<B>) {
    req.headers_mut()
        .insert(EARLY_DATA.clone(), HeaderValue::from_static("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_methods_are_served_early() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(allowed_early(&m), "{m}");
        }
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::CONNECT,
            Method::TRACE,
        ] {
            assert!(!allowed_early(&m), "{m}");
        }
    }

    #[test]
    fn a_handshake_with_nothing_pending_is_confirmed() {
        assert!(Handshake::new(None).is_confirmed());
    }

    #[test]
    fn early_requests_are_marked() {
        let mut req = Request::new(());
        mark_early(&mut req);
        assert_eq!(req.headers()["early-data"], "1");
    }
}
