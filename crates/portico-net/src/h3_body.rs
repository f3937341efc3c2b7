//! Bodies between h3 request streams and `http_body`: the request body the
//! handler reads, and the writer of the handler's response.
//!
//! Both directions stream under QUIC flow control: the request body reads
//! from the stream only when the handler polls it (an unread body stops the
//! client once the stream window is full), and the response is written frame
//! by frame as the body yields them, each write waiting for send credit, as
//! long as the client keeps taking some of it within the send timeout.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::RequestStream;
use http::{Response, header};
use http_body::Frame;
use http_body_util::BodyExt;
use portico_gateway::Body;
use tokio::time::Instant;

use crate::h3_flow::Flow;

/// The receiving half of an h3 request stream.
pub(crate) type RecvHalf = RequestStream<crate::h3_quic::RequestRecv, Bytes>;
/// The sending half of an h3 request stream.
pub(crate) type SendHalf = RequestStream<crate::h3_quic::SendStream<Bytes>, Bytes>;

/// Errors writing a response to an h3 stream (logged, never shown to a client).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("HTTP/3 stream: {0}")]
    Stream(#[from] h3::error::StreamError),
    #[error("response body: {0}")]
    Body(portico_gateway::BoxError),
    #[error("the client took no more of the response for the send timeout")]
    Stalled,
}

enum Phase {
    Data,
    Trailers,
    Done,
}

/// A request body streaming from an h3 request stream: DATA frames, then the
/// trailing HEADERS frame if any.
pub(crate) struct RequestBody {
    stream: RecvHalf,
    phase: Phase,
    /// A frame read ahead by [`RequestBody::new`], returned first.
    peeked: Option<Result<Frame<Bytes>, h3::error::StreamError>>,
    /// Told what is read, so that h3 reads no further ahead.
    flow: Arc<Flow>,
}

impl RequestBody {
    /// The body of a request whose head was just read. What the stream
    /// already holds is read at once: a request whose FIN came with its head
    /// (most GETs) is then known to have no body, so the PoP sends its head
    /// and end together in one packet, as it does for HTTP/1.1 and HTTP/2,
    /// instead of the end in a second one that the origin, already
    /// answering, would stop with a STOP_SENDING.
    pub(crate) fn new(stream: RecvHalf, flow: Arc<Flow>) -> Self {
        let mut body = Self {
            stream,
            phase: Phase::Data,
            peeked: None,
            flow,
        };
        // A no-op waker: a pending stream is polled again, with the reader's
        // waker, when the body is read.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Some(frame)) = http_body::Body::poll_frame(Pin::new(&mut body), &mut cx)
        {
            body.peeked = Some(frame);
        }
        body
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.peeked.take() {
            return Poll::Ready(Some(frame));
        }
        loop {
            match this.phase {
                Phase::Data => match ready!(this.stream.poll_recv_data(cx)) {
                    Ok(Some(mut buf)) => {
                        let bytes = buf.copy_to_bytes(buf.remaining());
                        this.flow.taken(bytes.len() as u64);
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Ok(None) => this.phase = Phase::Trailers,
                    Err(err) => return this.fail(err),
                },
                Phase::Trailers => {
                    let trailers = ready!(this.stream.poll_recv_trailers(cx));
                    this.phase = Phase::Done;
                    return match trailers {
                        Ok(Some(map)) => Poll::Ready(Some(Ok(Frame::trailers(map)))),
                        Ok(None) => Poll::Ready(None),
                        Err(err) => Poll::Ready(Some(Err(err))),
                    };
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.peeked.is_none() && matches!(self.phase, Phase::Done)
    }
}

impl RequestBody {
    fn fail(
        &mut self,
        err: h3::error::StreamError,
    ) -> Poll<Option<Result<Frame<Bytes>, h3::error::StreamError>>> {
        self.phase = Phase::Done;
        Poll::Ready(Some(Err(err)))
    }
}

/// A body dropped while its client may still be sending DATA (answered
/// without it: a 408, a 413, an early error) tells the client to stop with
/// `H3_NO_ERROR` (RFC 9114 §4.1: a server may answer before the whole
/// request has come). Dropped as it is, quinn would stop it with code 0,
/// which HTTP/3 does not define. Once its DATA has ended, nothing is sent.
impl Drop for RequestBody {
    fn drop(&mut self) {
        if matches!(self.phase, Phase::Data) {
            self.stream.stop_sending(Code::H3_NO_ERROR);
        }
    }
}

/// Headers HTTP/3 forbids in a message (RFC 9114 §4.2): connection-specific
/// fields make a response malformed, and a strict client would reject it.
const CONNECTION_SPECIFIC: [header::HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
];

/// Writes `response` to the stream: head, then each body frame as the body
/// yields it, then trailers if any, then FIN.
///
/// A body that fails midway resets the stream (`H3_INTERNAL_ERROR`), so the
/// client sees a broken response, never a short one that looks complete. A
/// write of which the client takes nothing for `send_timeout` (a stream
/// window left shut while the connection lives) resets it too
/// (`H3_REQUEST_CANCELLED`), so that the client cannot hold the response,
/// and the upstream work behind it, for ever; a client taking a large write
/// slowly (a slow link, or many streams sharing the connection's window) is
/// never cut off. Only waits on the client count, never the body's.
pub(crate) async fn send_response(
    send: &mut SendHalf,
    response: Response<Body>,
    send_timeout: Duration,
    flow: &Flow,
) -> Result<(), SendError> {
    let sent = write_response(send, response, send_timeout, flow).await;
    if let Err(SendError::Stalled) = sent {
        send.stop_stream(Code::H3_REQUEST_CANCELLED);
    }
    sent
}

async fn write_response(
    send: &mut SendHalf,
    response: Response<Body>,
    limit: Duration,
    flow: &Flow,
) -> Result<(), SendError> {
    let (mut parts, mut body) = response.into_parts();
    for name in &CONNECTION_SPECIFIC {
        parts.headers.remove(name);
    }
    let head = send.send_response(Response::from_parts(parts, ()));
    within(limit, flow, head).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => {
                send.stop_stream(Code::H3_INTERNAL_ERROR);
                return Err(SendError::Body(err));
            }
        };
        match frame.into_data() {
            Ok(data) => within(limit, flow, send.send_data(data)).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    // Trailers end the message: nothing may follow but FIN.
                    within(limit, flow, send.send_trailers(trailers)).await?;
                    break;
                }
            }
        }
    }
    within(limit, flow, send.finish()).await
}

/// A write to the client, given until `limit` passes without the client
/// taking any of it (nginx's `send_timeout`: the time between two
/// successive writes to the client, not the time of a whole one).
/// When a write with no progress since `flow`'s last gives up: `limit`
/// after it (tokio's `Instant + Duration` panics past its range).
fn stalled_at(flow: &Flow, limit: Duration) -> Instant {
    let last = flow.last_progress();
    last.checked_add(limit)
        .unwrap_or_else(|| last + Duration::from_secs(100 * 365 * 24 * 3600))
}

async fn within<T>(
    limit: Duration,
    flow: &Flow,
    write: impl Future<Output = Result<T, h3::error::StreamError>>,
) -> Result<T, SendError> {
    // The wait starts with the write, not at the last progress before it.
    flow.progressed();
    let mut write = pin!(write);
    loop {
        let stalled = tokio::time::sleep_until(stalled_at(flow, limit));
        tokio::select! {
            // The write first: a poll that finds room records progress.
            biased;
            written = &mut write => return Ok(written?),
            () = stalled => {
                if stalled_at(flow, limit) <= Instant::now() {
                    return Err(SendError::Stalled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the client takes `steps` pieces of, `every` apart.
    async fn taken(flow: &Flow, steps: u32, every: Duration) -> Result<(), h3::error::StreamError> {
        for _ in 0..steps {
            tokio::time::sleep(every).await;
            flow.progressed();
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_taken_slowly_is_never_cut_off() {
        let flow = Flow::default();
        let limit = Duration::from_millis(300);
        let start = Instant::now();
        let slow = taken(&flow, 50, Duration::from_millis(200));
        assert!(within(limit, &flow, slow).await.is_ok());
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_past_the_clocks_range_is_no_panic() {
        let flow = Flow::default();
        let quick = taken(&flow, 1, Duration::from_millis(1));
        assert!(within(Duration::MAX, &flow, quick).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_stops_taking_is_cut_off_after_the_limit() {
        let flow = Flow::default();
        let limit = Duration::from_millis(300);
        // Waiting for the body before the write does not count.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        let stopped = async {
            taken(&flow, 3, Duration::from_millis(200)).await?;
            std::future::pending::<Result<(), h3::error::StreamError>>().await
        };
        let cut = within(limit, &flow, stopped).await;
        assert!(matches!(cut, Err(SendError::Stalled)), "{cut:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(900));
    }
}
