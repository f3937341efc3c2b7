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
//! at or above its id is rejected before h3 sees it. What a request stream
//! hands h3 is rewritten ([`FrameWatch::reframe`]) and bounded: h3 holds no
//! more of a body than [`READ_AHEAD`] bytes past what the handler has read
//! ([`Flow`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use crate::NetError;
use crate::h3_frames::{FrameCaps, FrameWatch, Truncated, Violation};

/// The most body a request stream hands h3 beyond what the handler has
/// read. h3 0.0.8 reads from QUIC on every poll of a body and buffers what
/// it reads, however much it holds already, and each read frees QUIC credit:
/// without a bound, a body it hands on slower than it reads (one-byte DATA
/// frames did that) grew its buffer at the client's rate. QUIC's stream
/// window (quinn's buffer) is the body's real window; this only needs to
/// keep h3 going between the handler's reads.
pub(crate) const READ_AHEAD: u64 = 64 * 1024;

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

/// The [`Flow`]s of a connection's request streams, by stream id, from the
/// stream's acceptance until the request it carries claims its flow, or the
/// stream is dropped unclaimed. h3 keeps the streams to itself: the id is
/// the only way from a request back to its stream.
#[derive(Debug, Default)]
pub(crate) struct Flows {
    open: Mutex<HashMap<u64, Arc<Flow>>>,
}

impl Flows {
    /// The flow of a new stream.
    fn open(&self, id: u64) -> Arc<Flow> {
        let flow = Arc::new(Flow::default());
        lock(&self.open).insert(id, Arc::clone(&flow));
        flow
    }

    /// The flow of the request on stream `id`, for its body to report what
    /// it reads; from here on h3 reads no further than [`READ_AHEAD`]
    /// ahead of it. `None` if the stream is gone.
    pub(crate) fn claim(&self, id: StreamId) -> Option<Arc<Flow>> {
        let flow = lock(&self.open).remove(&id.into_inner())?;
        lock(&flow.read_ahead).bounded = true;
        Some(flow)
    }

    fn forget(&self, id: u64) {
        lock(&self.open).remove(&id);
    }
}

/// What a request stream's QUIC side and the request it carries share past
/// h3: how far h3 has read ahead of the request body.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    read_ahead: Mutex<ReadAhead>,
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
    fn wait(&self, cx: &Context<'_>) -> bool {
        let mut read_ahead = lock(&self.read_ahead);
        if !read_ahead.full() {
            return false;
        }
        read_ahead.waker = Some(cx.waker().clone());
        true
    }

    fn handed(&self, payload: u64) {
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
}

/// A lock that a panic elsewhere does not poison for us: what it guards is
/// counters, valid at every step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A QUIC connection for h3 whose incoming streams are watched.
pub(crate) struct Connection {
    inner: h3_quinn::Connection,
    quic: quinn::Connection,
    caps: StreamCaps,
    admission: Arc<Admission>,
    flows: Arc<Flows>,
}

impl Connection {
    pub(crate) fn new(
        quic: quinn::Connection,
        caps: StreamCaps,
        admission: Arc<Admission>,
        flows: Arc<Flows>,
    ) -> Self {
        Self {
            inner: h3_quinn::Connection::new(quic.clone()),
            quic,
            caps,
            admission,
            flows,
        }
    }

    /// The reader of request stream `id`.
    fn reader(&self, id: u64) -> RequestReader {
        RequestReader::new(id, self.caps.request, &self.flows, self.quic.clone())
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
                let reader = self.reader(id);
                return Poll::Ready(Ok(BidiStream { inner, reader }));
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
            quic: self.quic.clone(),
            caps: self.caps.request,
            flows: Arc::clone(&self.flows),
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
        let reader = self.reader(quic::SendStream::<B>::send_id(&inner).into_inner());
        Poll::Ready(Ok(BidiStream { inner, reader }))
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
    quic: quinn::Connection,
    caps: FrameCaps,
    flows: Arc<Flows>,
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type BidiStream = BidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        let inner = ready!(self.inner.poll_open_bidi(cx))?;
        let id = quic::SendStream::<B>::send_id(&inner).into_inner();
        let reader = RequestReader::new(id, self.caps, &self.flows, self.quic.clone());
        Poll::Ready(Ok(BidiStream { inner, reader }))
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
    reader: RequestReader,
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let refused = ready!(self.reader.poll_data(&mut self.inner, cx));
        if refused.is_err() && self.reader.watch.refused().is_some() {
            // Refused both ways: h3 drops the stream, which would
            // otherwise end our side with a FIN, an empty "response".
            quic::SendStream::<B>::reset(&mut self.inner, Code::H3_EXCESSIVE_LOAD.value());
        }
        Poll::Ready(refused)
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
    type RecvStream = RequestRecv;

    fn split(self) -> (h3_quinn::SendStream<B>, RequestRecv) {
        let (send, inner) = self.inner.split();
        let recv = RequestRecv {
            inner,
            reader: self.reader,
        };
        (send, recv)
    }
}

/// The receiving half of a request stream once h3 has split it.
pub(crate) struct RequestRecv {
    inner: h3_quinn::RecvStream,
    reader: RequestReader,
}

impl quic::RecvStream for RequestRecv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.reader.poll_data(&mut self.inner, cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

/// What h3 reads of a request stream: its chunks rewritten
/// ([`FrameWatch::reframe`]), handed on a piece at a time, and no more body
/// than [`READ_AHEAD`] past what the request body has taken ([`Flow`]).
struct RequestReader {
    id: u64,
    watch: FrameWatch,
    /// Pieces of chunks read, not yet handed to h3.
    pieces: VecDeque<Bytes>,
    flow: Arc<Flow>,
    flows: Arc<Flows>,
    quic: quinn::Connection,
}

impl RequestReader {
    fn new(id: u64, caps: FrameCaps, flows: &Arc<Flows>, quic: quinn::Connection) -> Self {
        Self {
            id,
            watch: FrameWatch::request(caps),
            pieces: VecDeque::new(),
            flow: flows.open(id),
            flows: Arc::clone(flows),
            quic,
        }
    }

    fn poll_data<S>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>>
    where
        S: quic::RecvStream<Buf = Bytes>,
    {
        loop {
            if let Some(piece) = self.pieces.pop_front() {
                return Poll::Ready(Ok(Some(piece)));
            }
            if let Some(violation) = self.watch.refused() {
                return Poll::Ready(Err(refuse_request(inner, violation)));
            }
            if self.flow.wait(cx) {
                return Poll::Pending;
            }
            let Some(chunk) = ready!(inner.poll_data(cx))? else {
                return Poll::Ready(match self.watch.finish() {
                    Ok(()) => Ok(None),
                    Err(Truncated) => Err(self.truncated()),
                });
            };
            match self.watch.reframe(&chunk) {
                Ok(reframed) => {
                    self.flow.handed(reframed.payload);
                    self.pieces.extend(reframed.pieces);
                }
                Err(violation) => return Poll::Ready(Err(refuse_request(inner, violation))),
            }
        }
    }

    /// The stream ended inside a frame: a connection error (RFC 9114 §7.1),
    /// which h3 0.0.8 would not see in the frames we hand it.
    fn truncated(&self) -> StreamErrorIncoming {
        let err = NetError::FrameTruncated { stream: self.id };
        close_connection(&self.quic, Code::H3_FRAME_ERROR, &err, b"truncated frame")
    }
}

impl Drop for RequestReader {
    fn drop(&mut self) {
        self.flows.forget(self.id);
    }
}

/// A client's unidirectional stream.
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
        let reason = b"control stream frame over the limit";
        Poll::Ready(Err(close_connection(
            quic,
            Code::H3_EXCESSIVE_LOAD,
            &err,
            reason,
        )))
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

/// Closes the connection with `code`, and tells h3 so: h3 closes a
/// connection itself only for errors of its own making, and just stops for
/// this one.
fn close_connection(
    quic: &quinn::Connection,
    code: Code,
    err: &NetError,
    reason: &[u8],
) -> StreamErrorIncoming {
    tracing::debug!(peer = %quic.remote_address(), %err, "HTTP/3 connection closed");
    let code = code.value();
    quic.close(
        quinn::VarInt::from_u64(code).unwrap_or(quinn::VarInt::MAX),
        reason,
    );
    let connection_error = ConnectionErrorIncoming::ApplicationClose { error_code: code };
    StreamErrorIncoming::ConnectionErrorIncoming { connection_error }
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
