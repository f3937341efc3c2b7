//! The clock of a request whose body streams upstream.
//!
//! A route's timeout bounds the wait for the response head *after* the
//! request is sent, as API Gateway's 29 s start once it has the whole body.
//! Portico streams the body instead of buffering it, so while it moves the
//! route's clock has not started: each wait for the body to move (for the
//! client to send more, or for the upstream to take more) is bounded by the
//! upload timeout instead (nginx's `client_body_timeout` and
//! `proxy_send_timeout`), and the route's timeout runs from the body's end.
//! A slow but steady upload is never cut; a stalled one is, with 408 when the
//! client stopped sending and 504 when the upstream stopped taking it.
//! Until the upstream first asks for the body (a connection, or a PoP's
//! stream credit, on its way), the route's timeout runs from the start.
//!
//! Who is waiting is told by the body's waker: the body's source (a client
//! connection, a backbone stream) wakes `Upload` when it has more, and from
//! then the wait is the reader's, polled or not (a PoP's backbone writer
//! polls with a no-op waker and then waits for QUIC credit).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use crate::body::BoxError;

/// Where a request body on its way upstream stands, shared by the body and
/// the wait for the response head.
#[derive(Debug)]
pub(crate) struct Upload {
    base: Instant,
    /// Nanoseconds from `base` to the body's last move, or to its first
    /// poll; [`NOT_POLLED`] before that.
    moved: AtomicU64,
    /// Nanoseconds from `base` to the body's end, plus one; 0 while it streams.
    ended: AtomicU64,
    /// Whether the body's last poll waited on its source (the client) rather
    /// than the upstream not asking for more.
    on_client: AtomicBool,
    /// The reader's waker, woken when the body's source wakes `Upload`.
    reader: AtomicWaker,
}

const NOT_POLLED: u64 = u64::MAX;

/// Why a request was given up on before its response head came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Late {
    /// The client sent nothing of its body for the upload timeout (408).
    Client,
    /// The upstream took nothing of the body for the upload timeout (504).
    Upstream,
    /// The whole body went, and no head came within the route's timeout (504).
    Head,
}

impl Upload {
    pub(crate) fn new() -> Arc<Upload> {
        Arc::new(Upload {
            base: Instant::now(),
            moved: AtomicU64::new(NOT_POLLED),
            ended: AtomicU64::new(0),
            on_client: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        })
    }

    fn since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(NOT_POLLED - 1)
    }

    /// The upstream asks for the body: from now on the upload clock runs.
    fn polled(&self) {
        if self.moved.load(Ordering::Relaxed) == NOT_POLLED {
            self.moved.store(self.since_base(), Ordering::Relaxed);
        }
    }

    fn at(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    fn moved(&self) {
        self.moved.store(self.since_base(), Ordering::Relaxed);
        self.on_client.store(false, Ordering::Relaxed);
    }

    fn finish(&self) {
        let now = self.since_base() + 1;
        let _ = self
            .ended
            .compare_exchange(0, now, Ordering::Release, Ordering::Relaxed);
    }

    /// When the wait gives up, as things stand, and why.
    fn deadline(&self, head: Duration, upload: Duration) -> (Instant, Late) {
        match (
            self.ended.load(Ordering::Acquire),
            self.moved.load(Ordering::Relaxed),
        ) {
            (0, NOT_POLLED) => (self.base + head, Late::Head),
            (0, moved) => {
                let why = if self.on_client.load(Ordering::Relaxed) {
                    Late::Client
                } else {
                    Late::Upstream
                };
                (self.at(moved) + upload, why)
            }
            (ended, _) => (self.at(ended - 1) + head, Late::Head),
        }
    }

    /// Runs `exchange` (which sends `body` upstream) until it ends, or until
    /// the body stands still for `upload`, or the head has not come `head`
    /// after the body's end.
    ///
    /// One timer, as a plain timeout has: it first fires at the route's
    /// timeout from the start, and only then is the body's state read and
    /// the timer moved on. Most exchanges end before, at the cost of a plain
    /// timeout; a stall shorter than the route's timeout is noticed at the
    /// route's timeout at the soonest.
    pub(crate) async fn race<F: Future>(
        &self,
        exchange: F,
        head: Duration,
        upload: Duration,
    ) -> Result<F::Output, Late> {
        tokio::pin!(exchange);
        let timer = tokio::time::sleep_until(self.base + head);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                out = &mut exchange => return Ok(out),
                () = &mut timer => {}
            }
            let (deadline, why) = self.deadline(head, upload);
            if deadline <= Instant::now() {
                return Err(why);
            }
            timer.as_mut().reset(deadline);
        }
    }
}

/// The body's source has more: the wait is the reader's now.
impl Wake for Upload {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.on_client.store(false, Ordering::Relaxed);
        self.reader.wake();
    }
}

pin_project_lite::pin_project! {
    /// A request body that tells its [`Upload`] whenever it moves and when
    /// it ends: its last frame, or its drop (a reader stops at a declared
    /// length without asking for the end).
    pub(crate) struct Uploading<B> {
        #[pin]
        inner: B,
        upload: Arc<Upload>,
    }

    impl<B> PinnedDrop for Uploading<B> {
        fn drop(this: Pin<&mut Self>) {
            this.project().upload.finish();
        }
    }
}

impl<B> Uploading<B> {
    pub(crate) fn new(inner: B, upload: Arc<Upload>) -> Self {
        Self { inner, upload }
    }
}

impl<B> http_body::Body for Uploading<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let upload: &Arc<Upload> = this.upload;
        upload.polled();
        upload.reader.register(cx.waker());
        let waker = Waker::from(Arc::clone(upload));
        match this
            .inner
            .as_mut()
            .poll_frame(&mut Context::from_waker(&waker))
        {
            Poll::Pending => {
                upload.on_client.store(true, Ordering::Relaxed);
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                upload.moved();
                // A reader may stop at a body that says it has ended.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    upload.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => {
                upload.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    /// A body of `chunks` one-byte chunks, `gap` apart, then silence when `stall`.
    fn trickle(chunks: usize, gap: Duration, stall: bool) -> crate::body::Body {
        let frames = futures_util::stream::iter(0..chunks)
            .then(move |_| async move {
                tokio::time::sleep(gap).await;
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x")))
            })
            .chain(futures_util::stream::once(async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Frame::data(Bytes::new()))
            }));
        crate::body::Body::new(StreamBody::new(frames))
    }

    /// An upstream that reads the whole body, then answers after `answer`.
    async fn reader(body: Uploading<crate::body::Body>, answer: Duration) -> usize {
        let n = body
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        tokio::time::sleep(answer).await;
        n
    }

    const HEAD: Duration = Duration::from_secs(3);
    const UPLOAD: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn a_slow_steady_upload_outlasts_the_route_timeout() {
        // 10 chunks a second apart: 10 s of upload against a 3 s route
        // timeout, then an answer 2 s after the body's end.
        let upload = Upload::new();
        let body = Uploading::new(trickle(10, Duration::from_secs(1), false), upload.clone());
        let started = Instant::now();
        let got = upload
            .race(reader(body, Duration::from_secs(2)), HEAD, UPLOAD)
            .await;
        assert_eq!(got, Ok(10));
        assert!(started.elapsed() >= Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_runs_from_the_end_of_the_body() {
        let upload = Upload::new();
        let body = Uploading::new(trickle(5, Duration::from_secs(1), false), upload.clone());
        let started = Instant::now();
        let got = upload
            .race(reader(body, Duration::from_secs(60)), HEAD, UPLOAD)
            .await;
        assert_eq!(got, Err(Late::Head));
        // 5 s of body, then the route's 3 s.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(8) && took < Duration::from_secs(9),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_is_told_apart_from_an_upstream_that_stops_reading() {
        let upload = Upload::new();
        let body = Uploading::new(trickle(3, Duration::from_secs(1), true), upload.clone());
        let started = Instant::now();
        let got = upload
            .race(reader(body, Duration::ZERO), HEAD, UPLOAD)
            .await;
        assert_eq!(got, Err(Late::Client));
        // 3 s of body, then 2 s of silence.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(6),
            "{took:?}"
        );

        // An upstream that reads one chunk and then nothing more.
        let upload = Upload::new();
        let mut body = Uploading::new(trickle(3, Duration::from_secs(1), false), upload.clone());
        let stuck = async move {
            let _ = body.frame().await;
            std::future::pending::<()>().await;
        };
        assert_eq!(upload.race(stuck, HEAD, UPLOAD).await, Err(Late::Upstream));
    }

    #[tokio::test(start_paused = true)]
    async fn until_the_upstream_asks_for_the_body_the_route_timeout_runs() {
        // A connection that never comes: the body is never polled.
        let upload = Upload::new();
        let _body = Uploading::new(trickle(3, Duration::from_secs(1), false), upload.clone());
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(upload.race(never, HEAD, UPLOAD).await, Err(Late::Head));
        assert_eq!(started.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_after_its_last_byte_has_ended() {
        // A reader that stops at a declared length never asks for the end:
        // the body's drop ends it, and the route's timeout runs from there.
        let upload = Upload::new();
        let mut body = Uploading::new(trickle(3, Duration::from_secs(1), false), upload.clone());
        let reader = async move {
            for _ in 0..3 {
                let _ = body.frame().await;
            }
            drop(body);
            std::future::pending::<()>().await;
        };
        let started = Instant::now();
        assert_eq!(upload.race(reader, HEAD, UPLOAD).await, Err(Late::Head));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(6) && took < Duration::from_secs(7),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_its_source_woke_is_waiting_on_the_reader() {
        // The reader polls once with a no-op waker (as a PoP's backbone
        // writer does) and then waits for credit that never comes, while
        // the client's next chunk arrives: the upstream's stall, not the
        // client's.
        let upload = Upload::new();
        let mut body = Uploading::new(trickle(3, Duration::from_secs(1), false), upload.clone());
        let reader = async move {
            use futures_util::FutureExt;
            assert!(body.frame().now_or_never().is_none());
            std::future::pending::<()>().await;
        };
        assert_eq!(upload.race(reader, HEAD, UPLOAD).await, Err(Late::Upstream));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_body_ends_is_taken() {
        let upload = Upload::new();
        let _body = Uploading::new(trickle(3, Duration::from_secs(1), true), upload.clone());
        let early = async { 7 };
        assert_eq!(upload.race(early, HEAD, UPLOAD).await, Ok(7));
    }
}
