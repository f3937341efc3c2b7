//! Bodies over a stream half, both ways.
//!
//! Receiving: a [`Body`] that reads `BodyChunk`s only when polled (QUIC flow
//! control is the back-pressure) and ends cleanly only on `End`. A `Reset`
//! frame, a QUIC reset or a FIN before `End` is a body *error*, so whoever
//! relays it aborts its own message instead of ending it as if complete.
//!
//! Sending: [`send_body`] streams a [`Body`] as chunks no larger than the
//! codec allows, then `End` (with trailers); a body that fails mid-way
//! becomes a `Reset` frame.

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use portico_gateway::body::{BodyTooLarge, find_cause};
use portico_gateway::{Body, BoxError};
use portico_proto::stream::HalfStream;
use portico_proto::{End, Frame, FrameKind, ProtoError, ResetCode};

use crate::BackboneError;
use crate::framed::{FrameReader, FrameWriter};
use crate::runtime::InFlightGuard;
use crate::wire;

/// Something kept alive for as long as a received body is (e.g. the task
/// still sending the request body, aborted when the response is dropped).
pub(crate) type Guard = Box<dyn Send + 'static>;

struct RecvState {
    reader: FrameReader,
    half: HalfStream,
    done: bool,
    _guard: Option<Guard>,
    _in_flight: Option<InFlightGuard>,
}

/// A body streaming the rest of `half` (whose head was already read) from
/// `reader`; the request it belongs to counts as in flight until it is dropped.
pub(crate) fn recv_body(
    reader: FrameReader,
    half: HalfStream,
    guard: Option<Guard>,
    in_flight: Option<InFlightGuard>,
) -> Body {
    let state = RecvState {
        reader,
        half,
        done: false,
        _guard: guard,
        _in_flight: in_flight,
    };
    let frames = futures_util::stream::unfold(state, |mut st| async move {
        let item = st.next_frame().await?;
        Some((item, st))
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

type BodyFrame = Result<http_body::Frame<Bytes>, BoxError>;

impl RecvState {
    async fn next_frame(&mut self) -> Option<BodyFrame> {
        while !self.done {
            let result = match self.reader.next().await {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => Err(self.on_fin()),
                Err(err) => Err(err),
            };
            match result {
                Ok(Some(frame)) => return Some(Ok(frame)),
                Ok(None) => {}
                Err(err) => {
                    self.done = true;
                    if err.reset_code() == ResetCode::Protocol {
                        self.reader.stop(ResetCode::Protocol);
                    }
                    return Some(Err(Box::new(err)));
                }
            }
        }
        None
    }

    /// `Ok(None)`: nothing to yield (an empty chunk, or `End` without trailers).
    fn on_frame(&mut self, frame: Frame) -> Result<Option<http_body::Frame<Bytes>>, BackboneError> {
        self.half.on_frame(frame.kind())?;
        match frame {
            Frame::BodyChunk(data) if data.is_empty() => Ok(None),
            Frame::BodyChunk(data) => {
                // hyper stops polling a body as soon as its Content-Length
                // is written, and drops it. Consume an `End` (and the FIN)
                // already buffered behind this chunk now, or that drop sends
                // a needless STOP_SENDING, which also makes the peer ACK at
                // once: two more datagrams per small response.
                if self.reader.buffered_end() {
                    self.half.on_frame(FrameKind::End)?;
                    self.done = true;
                }
                Ok(Some(http_body::Frame::data(data)))
            }
            Frame::End(End { trailers }) => {
                self.done = true;
                self.reader.fin_if_ready();
                if trailers.is_empty() {
                    return Ok(None);
                }
                let map = wire::header_map(trailers, "trailers")?;
                Ok(Some(http_body::Frame::trailers(map)))
            }
            Frame::Reset(reset) => Err(BackboneError::PeerReset {
                code: reset.code,
                reason: reset.reason,
            }),
            other => Err(ProtoError::UnexpectedFrame {
                expected: self.half.expected(),
                got: other.kind(),
            }
            .into()),
        }
    }

    fn on_fin(&self) -> BackboneError {
        match self.half.on_finish() {
            Ok(()) => BackboneError::Truncated("after the end of the body"),
            Err(_) => BackboneError::Truncated("FIN before End: the body is truncated"),
        }
    }
}

/// Why [`send_body`] stopped early.
#[derive(Debug)]
pub(crate) enum SendBodyError {
    /// The body itself failed; a `Reset` frame was sent.
    Body(BoxError),
    /// The stream failed (peer stopped reading, link lost).
    Stream(BackboneError),
}

impl From<BackboneError> for SendBodyError {
    fn from(err: BackboneError) -> Self {
        SendBodyError::Stream(err)
    }
}

/// Streams `body` then `End` and FIN. A body error is sent as
/// `Reset { fail_code }` (`too_large` when it is our own body limit).
///
/// What is buffered (the head, earlier chunks) is flushed only before
/// waiting for the body, or past 64 KiB: a small response leaves in one
/// write with its head and `End`, a slow one never waits in our buffer.
pub(crate) async fn send_body(
    w: &mut FrameWriter,
    mut body: Body,
    fail_code: ResetCode,
) -> Result<(), SendBodyError> {
    let codec = w.codec();
    loop {
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => {
                w.flush().await?;
                body.frame().await
            }
        };
        let frame = match next {
            None => return end(w, End::default()).await,
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                let code = if find_cause::<BodyTooLarge>(err.as_ref()).is_some() {
                    ResetCode::TooLarge
                } else {
                    fail_code
                };
                w.send_reset(code, err.to_string()).await;
                return Err(SendBodyError::Body(err));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                for chunk in codec.split_body(data) {
                    w.push(&chunk)?;
                    if w.should_flush() {
                        w.flush().await?;
                    }
                }
                if http_body::Body::is_end_stream(&body) {
                    return end(w, End::default()).await;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let trailers = wire::headers_vec(&trailers);
                    return end(w, End { trailers }).await;
                }
            }
        }
    }
}

async fn end(w: &mut FrameWriter, end: End) -> Result<(), SendBodyError> {
    w.push(&Frame::End(end))?;
    w.finish().await?;
    Ok(())
}
