//! The one body type every protocol adapter and upstream speaks, and the
//! streaming wrappers the pipeline puts around it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type carried by bodies: the adapters erase protocol-specific errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body shared by h1/h2/h3 adapters, integrations and the backbone.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body with all its bytes in hand.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Wraps any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The error a [`Limited`] body yields once more than its limit has passed.
///
/// The pipeline finds it in an upstream error's source chain and answers 413.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pin_project_lite::pin_project! {
    /// Enforces a byte limit while the body streams, never buffering it.
    pub struct Limited<B> {
        #[pin]
        inner: B,
        remaining: u64,
        limit: u64,
        // The declared length (`Content-Length`) and what is left of it.
        declared: Option<(u64, u64)>,
    }
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            declared: None,
        }
    }

    /// Also fails ([`BodyLengthMismatch`]) when the body carries more or
    /// fewer bytes than `declared`, its `Content-Length`.
    pub fn with_declared(mut self, declared: Option<u64>) -> Self {
        self.declared = declared.map(|len| (len, len));
        self
    }
}

/// The error a [`Limited`] body yields when the body it reads fails: a
/// malformed chunked encoding, a client that reset its stream. The client's
/// doing, not the backend's: the pipeline finds it in an upstream error's
/// source chain and answers 400 (nginx: "client sent invalid chunked
/// body"), where it answered 502 and logged a backend failure.
#[derive(Debug, thiserror::Error)]
#[error("the request body failed: {0}")]
pub struct RequestBodyFailed(#[source] pub BoxError);

/// The error a [`Limited`] body yields when it does not carry the length it
/// declared (RFC 9114 §4.1.2, RFC 9112 §6.3: a malformed request). The
/// pipeline finds it in an upstream error's source chain and answers 400.
#[derive(Debug, thiserror::Error)]
#[error("request body does not match its content-length of {declared} bytes")]
pub struct BodyLengthMismatch {
    pub declared: u64,
}

impl<B> http_body::Body for Limited<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = match std::task::ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            None => {
                return Poll::Ready(match this.declared.take() {
                    Some((declared, left)) if left > 0 => {
                        Some(Err(Box::new(BodyLengthMismatch { declared })))
                    }
                    _ => None,
                });
            }
            Some(Err(err)) => return Poll::Ready(Some(Err(Box::new(RequestBodyFailed(err))))),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > *this.remaining {
                *this.remaining = 0;
                return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *this.limit }))));
            }
            *this.remaining -= len;
            if let Some((declared, left)) = this.declared {
                let Some(rest) = left.checked_sub(len) else {
                    let declared = *declared;
                    *this.declared = None;
                    return Poll::Ready(Some(Err(Box::new(BodyLengthMismatch { declared }))));
                };
                *left = rest;
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error an [`IdleTimeout`] body yields when its source went quiet.
#[derive(Debug, thiserror::Error)]
#[error("no response body data for {0:?}")]
pub struct BodyIdle(pub std::time::Duration);

pin_project_lite::pin_project! {
    /// Fails a body whose source keeps its reader waiting for `idle` (nginx's
    /// `proxy_read_timeout`): a backend that sent its head and then stalls
    /// would otherwise hold the client's connection, and its slot, for ever.
    /// Only the time spent waiting on the source counts, from the poll that
    /// first found it pending: a long download that keeps moving is never
    /// cut, nor one whose client reads slowly.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        // Made at the first wait: most small bodies never wait, and a
        // timer costs a clock read and the runtime's handle.
        #[pin]
        timer: Option<tokio::time::Sleep>,
        idle: std::time::Duration,
        waiting: bool,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        Self {
            inner,
            timer: None,
            idle,
            waiting: false,
        }
    }
}

impl<B> http_body::Body for IdleTimeout<B>
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
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame);
        }
        if !*this.waiting {
            *this.waiting = true;
            let deadline = tokio::time::Instant::now() + *this.idle;
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) => timer.reset(deadline),
                None => this.timer.set(Some(tokio::time::sleep_until(deadline))),
            }
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyIdle(*this.idle))))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Finds an error of type `E` anywhere in `err`'s source chain.
pub fn find_cause<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_that_goes_quiet_fails_but_one_that_keeps_moving_does_not() {
        use std::time::Duration;
        // A chunk every 0.1 s for 1 s: the whole body takes longer than the
        // idle time, no gap comes near it.
        let idle = Duration::from_millis(900);
        let moving = futures_util::stream::unfold(0, |n| async move {
            (n < 10).then_some(())?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let body = IdleTimeout::new(http_body_util::StreamBody::new(moving), idle);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "x".repeat(10));
        // One chunk, then silence.
        let stalled = futures_util::stream::unfold(0, |n| async move {
            if n > 0 {
                std::future::pending::<()>().await;
            }
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let idle = Duration::from_millis(100);
        let body = IdleTimeout::new(http_body_util::StreamBody::new(stalled), idle);
        let err = body.collect().await.err().unwrap();
        assert!(find_cause::<BodyIdle>(err.as_ref()).is_some(), "{err}");
        // A slow reader: 300 ms between its reads, the source 10 ms from
        // each read to its chunk. Only the source's wait counts.
        let quick = futures_util::stream::unfold(0, |n| async move {
            (n < 3).then_some(())?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let mut body = std::pin::pin!(IdleTimeout::new(
            http_body_util::StreamBody::new(quick),
            Duration::from_millis(200),
        ));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let frame = body.frame().await.unwrap();
            assert!(frame.is_ok(), "a slow reader was cut off");
        }
    }

    #[tokio::test]
    async fn limited_passes_bodies_within_the_limit() {
        let body = Limited::new(full("hello"), 5);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_body_must_carry_the_length_it_declared() {
        let exact = Limited::new(full("hello"), 10).with_declared(Some(5));
        assert_eq!(exact.collect().await.unwrap().to_bytes(), "hello");
        for (body, declared) in [("hell", 5), ("hello!", 5), ("", 1)] {
            let err = Limited::new(full(body), 10)
                .with_declared(Some(declared))
                .collect()
                .await
                .err()
                .unwrap();
            assert!(
                find_cause::<BodyLengthMismatch>(err.as_ref()).is_some(),
                "{body:?}"
            );
        }
    }

    #[tokio::test]
    async fn limited_fails_once_over_the_limit() {
        let err = Limited::new(full("hello!"), 5)
            .collect()
            .await
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "request body exceeds the limit of 5 bytes");
        assert!(find_cause::<BodyTooLarge>(err.as_ref()).is_some());
    }
}
