//! h3's QUIC transport: h3-quinn, with the frames of every stream a client
//! sends watched on their way to h3 ([`crate::h3_frames`]).
//!
//! A frame over its cap is refused as soon as its header is read, before
//! h3 buffers any of it: on a request stream with `H3_EXCESSIVE_LOAD` both
//! ways (RESET_STREAM and STOP_SENDING) and no request for the handler; on
//! the control stream, which cannot be refused alone (RFC 9114 §6.2.1), by
//! closing the connection with `H3_EXCESSIVE_LOAD`.
//!
//! Request streams are admitted here too ([`Admission`]): after GOAWAY, one
//! at or above its id is rejected before h3 sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use crate::NetError;
use crate::h3_frames::{FrameCaps, FrameWatch, Violation};

/// The caps of a connection's streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamCaps {
    pub request: FrameCaps,
    pub control: FrameCaps,
}

impl StreamCaps {
    /// The caps of a listener advertising `max_field_section`
    /// (SETTINGS_MAX_FIELD_SECTION_SIZE).
    pub(crate) fn new(max_field_section: u64) -> Self {
        Self {
            request: FrameCaps::request(max_field_section),
            control: FrameCaps::CONTROL,
        }
    }
}

/// Which request streams of a connection are served: every one until
/// GOAWAY, then only those below the id it names.
///
/// A GOAWAY id tells the client that no request at or above it was
/// processed, so that it may retry them elsewhere (RFC 9114 §5.2): it must
/// be above every stream accepted (h3's `shutdown(0)` names the last one,
/// whose request, a POST perhaps, would then run twice), and a stream at or
/// above it that still arrives must be rejected, never served (h3 rejects
/// only those above its id).
#[derive(Debug)]
pub(crate) struct Admission {
    /// The id of the client's next request stream after those accepted.
    next: AtomicU64,
    /// The id GOAWAY named; `u64::MAX` before it.
    goaway: AtomicU64,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            goaway: AtomicU64::new(u64::MAX),
        }
    }
}

impl Admission {
    /// Admits no more streams from here on: the id GOAWAY names. h3's
    /// `shutdown(1)` sends the same one (the stream after the last it
    /// accepted, which is the last accepted here; 0 when there was none).
    pub(crate) fn close(&self) -> u64 {
        let next = self.next.load(Ordering::Relaxed);
        self.goaway.fetch_min(next, Ordering::Relaxed);
        next
    }

    /// Whether request stream `id` may be served; it is counted if so.
    fn admit(&self, id: u64) -> bool {
        if id >= self.goaway.load(Ordering::Relaxed) {
            return false;
        }
        // Client request streams are 0, 4, 8, ... (RFC 9000 §2.1).
        self.next.fetch_max(id.saturating_add(4), Ordering::Relaxed);
        true
    }
}

/// A QUIC connection for h3 whose incoming streams are watched.
pub(crate) struct Connection {
    inner: h3_quinn::Connection,
    quic: quinn::Connection,
    caps: StreamCaps,
    admission: Arc<Admission>,
}

impl Connection {
    pub(crate) fn new(
        quic: quinn::Connection,
        caps: StreamCaps,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            inner: h3_quinn::Connection::new(quic.clone()),
            quic,
            caps,
            admission,
        }
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvStream, ConnectionErrorIncoming>> {
        let inner = ready!(quic::Connection::<B>::poll_accept_recv(&mut self.inner, cx))?;
        Poll::Ready(Ok(RecvStream {
            inner,
            watch: FrameWatch::unidirectional(self.caps.control),
            critical: Some(self.quic.clone()),
        }))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        loop {
            let mut inner = ready!(quic::Connection::<B>::poll_accept_bidi(&mut self.inner, cx))?;
            let id = quic::SendStream::<B>::send_id(&inner).into_inner();
            if self.admission.admit(id) {
                return Poll::Ready(Ok(BidiStream::new(inner, self.caps.request)));
            }
            // Not processed, safe to retry elsewhere (RFC 9114 §8.1).
            let rejected = Code::H3_REQUEST_REJECTED.value();
            quic::RecvStream::stop_sending(&mut inner, rejected);
            quic::SendStream::<B>::reset(&mut inner, rejected);
        }
    }

    fn opener(&self) -> OpenStreams {
        OpenStreams {
            inner: quic::Connection::<B>::opener(&self.inner),
            caps: self.caps.request,
        }
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        let inner = ready!(self.inner.poll_open_bidi(cx))?;
        Poll::Ready(Ok(BidiStream::new(inner, self.caps.request)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<h3_quinn::SendStream<B>, StreamErrorIncoming>> {
        self.inner.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.inner, code, reason);
    }
}

/// Opens streams of a [`Connection`] (h3 asks for it; a server opens only
/// unidirectional ones, which carry nothing in).
pub(crate) struct OpenStreams {
    inner: h3_quinn::OpenStreams,
    caps: FrameCaps,
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type BidiStream = BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        let inner = ready!(self.inner.poll_open_bidi(cx))?;
        Poll::Ready(Ok(BidiStream::new(inner, self.caps)))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<h3_quinn::SendStream<B>, StreamErrorIncoming>> {
        self.inner.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.inner, code, reason);
    }
}

/// A request stream, both ways, before h3 splits it.
pub(crate) struct BidiStream<B: Buf> {
    inner: h3_quinn::BidiStream<B>,
    watch: FrameWatch,
}

impl<B: Buf> BidiStream<B> {
    fn new(inner: h3_quinn::BidiStream<B>, caps: FrameCaps) -> Self {
        Self {
            inner,
            watch: FrameWatch::request(caps),
        }
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        match ready!(watched(&mut self.inner, &mut self.watch, cx)) {
            Ok(data) => Poll::Ready(Ok(data)),
            Err(Refusal::Read(err)) => Poll::Ready(Err(err)),
            Err(Refusal::Caps(violation)) => {
                // Refused both ways: h3 drops the stream, which would
                // otherwise end our side with a FIN, an empty "response".
                quic::SendStream::<B>::reset(&mut self.inner, Code::H3_EXCESSIVE_LOAD.value());
                Poll::Ready(Err(refuse_request(&mut self.inner, violation)))
            }
        }
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = h3_quinn::SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (h3_quinn::SendStream<B>, RecvStream) {
        let (send, inner) = self.inner.split();
        let recv = RecvStream {
            inner,
            watch: self.watch,
            critical: None,
        };
        (send, recv)
    }
}

/// A receive stream: a client's unidirectional stream, or the receiving half
/// of a request stream once h3 has split it.
pub(crate) struct RecvStream {
    inner: h3_quinn::RecvStream,
    watch: FrameWatch,
    /// The connection, for a stream that cannot be refused alone (the
    /// control stream: the only unidirectional stream read as frames).
    critical: Option<quinn::Connection>,
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let violation = match ready!(watched(&mut self.inner, &mut self.watch, cx)) {
            Ok(data) => return Poll::Ready(Ok(data)),
            Err(Refusal::Read(err)) => return Poll::Ready(Err(err)),
            Err(Refusal::Caps(violation)) => violation,
        };
        let Some(quic) = &self.critical else {
            return Poll::Ready(Err(refuse_request(&mut self.inner, violation)));
        };
        let err = NetError::from(violation);
        tracing::debug!(peer = %quic.remote_address(), %err, "HTTP/3 connection closed");
        let code = Code::H3_EXCESSIVE_LOAD.value();
        quic.close(
            quinn::VarInt::from_u64(code).unwrap_or(quinn::VarInt::MAX),
            b"control stream frame over the limit",
        );
        // Closed already, with our code: h3 closes a connection itself only
        // for errors of its own making, and just stops for this one.
        let connection_error = ConnectionErrorIncoming::ApplicationClose { error_code: code };
        Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error,
        }))
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

/// Why a watched read yields no data.
enum Refusal {
    /// The read itself failed.
    Read(StreamErrorIncoming),
    /// The stream broke its caps.
    Caps(Violation),
}

/// Reads the next chunk of `inner` past `watch`; once refused, the stream
/// is not read again.
fn watched<S>(
    inner: &mut S,
    watch: &mut FrameWatch,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Bytes>, Refusal>>
where
    S: quic::RecvStream<Buf = Bytes>,
{
    if let Some(violation) = watch.refused() {
        return Poll::Ready(Err(Refusal::Caps(violation)));
    }
    let data = ready!(inner.poll_data(cx)).map_err(Refusal::Read)?;
    if let Some(bytes) = &data {
        watch.feed(bytes).map_err(Refusal::Caps)?;
    }
    Poll::Ready(Ok(data))
}

/// Stops a request stream's client from sending more of it, and tells h3
/// why: a head not yet read is dropped with its stream (nothing reaches the
/// handler); a body being read fails.
fn refuse_request<S: quic::RecvStream>(inner: &mut S, violation: Violation) -> StreamErrorIncoming {
    let err = NetError::from(violation);
    tracing::debug!(%err, "HTTP/3 request stream refused");
    inner.stop_sending(Code::H3_EXCESSIVE_LOAD.value());
    StreamErrorIncoming::Unknown(Box::new(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goaway_names_the_stream_after_the_last_admitted() {
        let admission = Admission::default();
        assert!(admission.admit(0) && admission.admit(4));
        assert_eq!(admission.close(), 8);
        assert!(!admission.admit(8) && !admission.admit(12));
        assert_eq!(admission.close(), 8, "a second GOAWAY names the same");
        let idle = Admission::default();
        assert_eq!(idle.close(), 0);
        assert!(!idle.admit(0));
    }
}
