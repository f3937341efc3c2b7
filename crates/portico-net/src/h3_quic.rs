//! h3's QUIC transport: quinn, through h3-quinn for the client's
//! unidirectional streams and directly for the rest, with the frames of
//! every stream a client sends watched on their way to h3
//! ([`crate::h3_frames`]).
//!
//! A frame over its cap is refused as soon as its header is read, before
//! h3 buffers any of it: on a request stream with `H3_EXCESSIVE_LOAD` both
//! ways (RESET_STREAM and STOP_SENDING) and no request for the handler; on
//! the control stream, which cannot be refused alone (RFC 9114 §6.2.1), by
//! closing the connection with `H3_EXCESSIVE_LOAD`.
//!
//! Request streams are admitted here too ([`Admission`]): after GOAWAY, one
//! at or above its id is rejected before h3 sees it, and every GOAWAY h3
//! writes names that id ([`ControlWrites`]).
//!
//! What a request stream hands h3 is rewritten ([`FrameWatch::reframe`])
//! and bounded: h3 holds no more of a body than [`READ_AHEAD`] bytes past
//! what the handler has read. Its sending side records each time QUIC takes
//! some of the response, for the send timeout. Both go through the stream's
//! [`Flow`]. Request streams and our own streams are quinn's, not
//! h3-quinn's, which hide their reads, their writes and what they write.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::Stream;
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

use crate::NetError;
#[cfg(doc)]
use crate::h3_flow::READ_AHEAD;
use crate::h3_flow::{Flow, Flows};
use crate::h3_frames::{ControlWrites, FrameCaps, FrameWatch, Truncated, Violation};

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
/// be above every stream accepted (h3's `shutdown(0)`, its answer to the
/// client's GOAWAY, names the last one, whose request, a POST perhaps, would
/// then run twice; every GOAWAY h3 writes is rewritten to name
/// [`Admission::close`]), and a stream at or above it that still arrives
/// must be rejected, never served (h3 rejects only those above its id).
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
    /// Admits no more streams from here on: the id GOAWAY names, the
    /// stream after the last accepted (0 when there was none), the same
    /// however often it is asked.
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

/// Request streams as the client opens them.
type Incoming = Pin<
    Box<
        dyn Stream<Item = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>
            + Send
            + Sync,
    >,
>;

/// A QUIC connection for h3 whose incoming streams are watched.
pub(crate) struct Connection {
    /// The client's unidirectional streams.
    inner: h3_quinn::Connection,
    incoming: Incoming,
    /// Our unidirectional streams.
    opener: OpenStreams,
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
        let incoming = futures_util::stream::unfold(quic.clone(), |quic| async move {
            let accepted = quic.accept_bi().await;
            Some((accepted, quic))
        });
        Self {
            inner: h3_quinn::Connection::new(quic.clone()),
            incoming: Box::pin(incoming),
            opener: OpenStreams::new(&quic, &admission),
            quic,
            caps,
            admission,
            flows,
        }
    }

    /// The admitted request stream `id`, opened by the client as `send` and
    /// `recv`.
    fn request_stream<B: Buf>(
        &self,
        id: StreamId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BidiStream<B> {
        let raw = id.into_inner();
        let flow = self.flows.open(raw);
        // `stopped` also ends when the stream is finished and acknowledged,
        // or the connection ends: after the response, or with no client.
        let stopped = send.stopped();
        flow.watch_stop(async move {
            let _ = stopped.await;
        });
        let reader = RequestReader::new(raw, self.caps.request, &flow, &self.flows, &self.quic);
        BidiStream {
            send: SendStream {
                stream: send,
                writing: None,
                id,
                flow,
            },
            recv: QuinnRecv { stream: recv, id },
            reader,
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
            id: quic::RecvStream::recv_id(&inner),
            inner: Some(inner),
            watch: FrameWatch::unidirectional(self.caps.control),
            critical: Some(self.quic.clone()),
        }))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, ConnectionErrorIncoming>> {
        loop {
            let accepted = ready!(self.incoming.as_mut().poll_next(cx));
            let Some((mut send, mut recv)) = accepted.transpose().map_err(connection_error)? else {
                let ended = "the stream of request streams ended".to_owned();
                return Poll::Ready(Err(ConnectionErrorIncoming::InternalError(ended)));
            };
            let raw = u64::from(send.id());
            match StreamId::try_from(raw) {
                Ok(id) if self.admission.admit(raw) => {
                    return Poll::Ready(Ok(self.request_stream(id, send, recv)));
                }
                _ => {}
            }
            // Not processed, safe to retry elsewhere (RFC 9114 §8.1).
            let rejected = varint(Code::H3_REQUEST_REJECTED.value());
            let _ = recv.stop(rejected);
            let _ = send.reset(rejected);
        }
    }

    fn opener(&self) -> OpenStreams {
        OpenStreams::new(&self.quic, &self.admission)
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = UniStream;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<UniStream, StreamErrorIncoming>> {
        self.opener.poll_open(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        quic::OpenStreams::<B>::close(&mut self.opener, code, reason);
    }
}

/// Our unidirectional streams as they open.
type Opening =
    Pin<Box<dyn Stream<Item = Result<quinn::SendStream, quinn::ConnectionError>> + Send + Sync>>;

/// Opens streams of a [`Connection`]: unidirectional ones only (control,
/// QPACK, grease), which carry nothing in.
pub(crate) struct OpenStreams {
    quic: quinn::Connection,
    /// Made at the first open.
    opening: Option<Opening>,
    admission: Arc<Admission>,
}

impl OpenStreams {
    fn new(quic: &quinn::Connection, admission: &Arc<Admission>) -> Self {
        Self {
            quic: quic.clone(),
            opening: None,
            admission: Arc::clone(admission),
        }
    }

    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Result<UniStream, StreamErrorIncoming>> {
        let quic = &self.quic;
        let opening = self.opening.get_or_insert_with(|| {
            let opening = futures_util::stream::unfold(quic.clone(), |quic| async move {
                let opened = quic.open_uni().await;
                Some((opened, quic))
            });
            Box::pin(opening)
        });
        let internal = |err: String| StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: ConnectionErrorIncoming::InternalError(err),
        };
        let stream = match ready!(opening.as_mut().poll_next(cx)) {
            Some(Ok(stream)) => stream,
            Some(Err(err)) => {
                let connection_error = connection_error(err);
                return Poll::Ready(Err(StreamErrorIncoming::ConnectionErrorIncoming {
                    connection_error,
                }));
            }
            None => return Poll::Ready(Err(internal("no more streams to open".into()))),
        };
        let id = StreamId::try_from(u64::from(stream.id()));
        let id = id.map_err(|err| internal(err.to_string()))?;
        Poll::Ready(Ok(UniStream {
            stream,
            writing: Bytes::new(),
            id,
            writes: ControlWrites::default(),
            admission: Arc::clone(&self.admission),
        }))
    }
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type BidiStream = BidiStream<B>;
    type SendStream = UniStream;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream<B>, StreamErrorIncoming>> {
        Poll::Ready(Err(no_bidi()))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<UniStream, StreamErrorIncoming>> {
        self.poll_open(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.quic.close(varint(code.value()), reason);
    }
}

/// One of our unidirectional streams. On the control stream, every GOAWAY
/// h3 writes names our admission's id ([`ControlWrites`]).
pub(crate) struct UniStream {
    stream: quinn::SendStream,
    /// What is left of h3's write.
    writing: Bytes,
    id: StreamId,
    writes: ControlWrites,
    admission: Arc<Admission>,
}

impl<B: Buf> quic::SendStream<B> for UniStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        poll_write_all(&mut self.stream, cx, &mut self.writing, |_| {})
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if !self.writing.is_empty() {
            return Err(overlapping_write());
        }
        // Frames of a few bytes (SETTINGS, GOAWAY, grease): copied whole.
        let mut data = data.into();
        let write = data.copy_to_bytes(data.remaining());
        self.writing = self.writes.rewrite(write, || self.admission.close());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(finish(&mut self.stream))
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        self.id
    }
}

/// h3 asked a server to open a bidirectional stream, which HTTP/3 has none
/// of (RFC 9114 §6.1); h3 0.0.8's server never does.
fn no_bidi() -> StreamErrorIncoming {
    let connection_error =
        ConnectionErrorIncoming::InternalError("an HTTP/3 server opens no request streams".into());
    StreamErrorIncoming::ConnectionErrorIncoming { connection_error }
}

/// h3 began a write before the last was done: its bug, not the client's.
/// Writes all of `data` to `stream`, calling `progressed` with each part
/// QUIC takes (never 0 bytes).
fn poll_write_all(
    stream: &mut quinn::SendStream,
    cx: &mut Context<'_>,
    data: &mut impl Buf,
    mut progressed: impl FnMut(usize),
) -> Poll<Result<(), StreamErrorIncoming>> {
    while data.has_remaining() {
        let write = Pin::new(&mut *stream).poll_write(cx, data.chunk());
        let written = ready!(write).map_err(write_error)?;
        data.advance(written);
        if written > 0 {
            progressed(written);
        }
    }
    Poll::Ready(Ok(()))
}

/// Ends `stream` (h3's `poll_finish`).
fn finish(stream: &mut quinn::SendStream) -> Result<(), StreamErrorIncoming> {
    stream
        .finish()
        .map_err(|err| StreamErrorIncoming::Unknown(Box::new(err)))
}

fn overlapping_write() -> StreamErrorIncoming {
    let connection_error =
        ConnectionErrorIncoming::InternalError("a write while one is under way".into());
    StreamErrorIncoming::ConnectionErrorIncoming { connection_error }
}

/// A request stream, both ways, before h3 splits it.
pub(crate) struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: QuinnRecv,
    reader: RequestReader,
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let refused = ready!(self.reader.poll_data(&mut self.recv, cx));
        if refused.is_err() && self.reader.watch.refused().is_some() {
            // Refused both ways: h3 drops the stream, which would
            // otherwise end our side with a FIN, an empty "response".
            quic::SendStream::<B>::reset(&mut self.send, Code::H3_EXCESSIVE_LOAD.value());
        }
        Poll::Ready(refused)
    }

    fn stop_sending(&mut self, error_code: u64) {
        quic::RecvStream::stop_sending(&mut self.recv, error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.id
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.send.id
    }
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RequestRecv;

    fn split(self) -> (SendStream<B>, RequestRecv) {
        let recv = RequestRecv {
            inner: self.recv,
            reader: self.reader,
        };
        (self.send, recv)
    }
}

/// The sending half of a request stream, which records whenever the client
/// takes any of a write ([`Flow::progressed`]): a client slowly taking a
/// large write is not a client that stopped.
pub(crate) struct SendStream<B: Buf> {
    stream: quinn::SendStream,
    /// What h3 is writing.
    writing: Option<WriteBuf<B>>,
    id: StreamId,
    flow: Arc<Flow>,
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = &mut self.writing {
            let flow = &self.flow;
            ready!(poll_write_all(&mut self.stream, cx, data, |_| flow.progressed()))?;
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(overlapping_write());
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(finish(&mut self.stream))
    }

    fn reset(&mut self, reset_code: u64) {
        let _ = self.stream.reset(varint(reset_code));
    }

    fn send_id(&self) -> StreamId {
        self.id
    }
}

/// The receiving side of a request stream, a chunk at a time.
struct QuinnRecv {
    stream: quinn::RecvStream,
    id: StreamId,
}

/// The most one read takes from quinn (see `QuinnRecv::poll_data`).
const READ_PIECE: usize = 16 * 1024;

impl quic::RecvStream for QuinnRecv {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        // Cancel-safe, and holding nothing past a poll: a read made for
        // each poll leaves the stream here, for `stop_sending`. At most
        // `READ_PIECE` at a time (quinn splits a chunk without copying): a
        // request's read-ahead is checked before each read, and quinn may
        // hold the whole stream window as one chunk (it defragments tiny
        // STREAM frames), which one read would hand h3 at once.
        let read = pin!(self.stream.read_chunk(READ_PIECE, true)).poll(cx);
        let chunk = ready!(read).map_err(read_error)?;
        Poll::Ready(Ok(chunk.map(|chunk| chunk.bytes)))
    }

    fn stop_sending(&mut self, error_code: u64) {
        let _ = self.stream.stop(varint(error_code));
    }

    fn recv_id(&self) -> StreamId {
        self.id
    }
}

/// The receiving half of a request stream once h3 has split it.
pub(crate) struct RequestRecv {
    inner: QuinnRecv,
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
        quic::RecvStream::stop_sending(&mut self.inner, error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.id
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
    fn new(
        id: u64,
        caps: FrameCaps,
        flow: &Arc<Flow>,
        flows: &Arc<Flows>,
        quic: &quinn::Connection,
    ) -> Self {
        Self {
            id,
            watch: FrameWatch::request(caps),
            pieces: VecDeque::new(),
            flow: Arc::clone(flow),
            flows: Arc::clone(flows),
            quic: quic.clone(),
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
    id: StreamId,
    /// `None` once a QPACK stream was handed to [`drain_qpack`].
    inner: Option<h3_quinn::RecvStream>,
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
        // A QPACK stream h3 will not read again: it is read by its drain.
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Pending;
        };
        let violation = match ready!(watched(inner, &mut self.watch, cx)) {
            Ok(data) => {
                if self.watch.is_qpack()
                    && let (Some(stream), Some(quic)) = (self.inner.take(), &self.critical)
                {
                    tokio::spawn(drain_qpack(stream, quic.clone()));
                }
                return Poll::Ready(Ok(data));
            }
            Err(Refusal::Read(err)) => return Poll::Ready(Err(err)),
            Err(Refusal::Caps(violation)) => violation,
        };
        let Some(quic) = &self.critical else {
            return Poll::Ready(Err(refuse_request(inner, violation)));
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
        if let Some(inner) = self.inner.as_mut() {
            inner.stop_sending(error_code);
        }
    }

    fn recv_id(&self) -> StreamId {
        self.id
    }
}

/// What a client's QPACK encoder or decoder stream may carry: the dynamic
/// table is off (capacity 0), so an encoder has nothing to insert and a
/// decoder nothing to acknowledge; a few instructions at most.
const QPACK_STREAM_CAP: usize = 4096;

/// Reads a client's QPACK stream after its type, which h3 keeps and never
/// reads: unread, up to a stream window of it would stay buffered for the
/// connection's life. Past [`QPACK_STREAM_CAP`] the connection is closed
/// (`H3_EXCESSIVE_LOAD`), and so it is when the client closes the stream
/// (`H3_CLOSED_CRITICAL_STREAM`, RFC 9204 §4.2).
async fn drain_qpack(mut stream: h3_quinn::RecvStream, conn: quinn::Connection) {
    let mut seen = 0usize;
    loop {
        let read = std::future::poll_fn(|cx| quic::RecvStream::poll_data(&mut stream, cx)).await;
        match read {
            Ok(Some(bytes)) => {
                seen = seen.saturating_add(bytes.len());
                if seen > QPACK_STREAM_CAP {
                    let reason = b"a QPACK stream past what a table of capacity 0 needs";
                    return conn.close(varint(Code::H3_EXCESSIVE_LOAD.value()), reason);
                }
            }
            Ok(None) => {
                let reason = b"a QPACK stream closed";
                return conn.close(varint(Code::H3_CLOSED_CRITICAL_STREAM.value()), reason);
            }
            // The connection or the stream ended: nothing left to hold.
            Err(_) => return,
        }
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

/// `code` as a QUIC varint (h3's codes are all below its maximum).
fn varint(code: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(code).unwrap_or(quinn::VarInt::MAX)
}

fn connection_error(err: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into_inner(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        err => ConnectionErrorIncoming::Undefined(Arc::new(err)),
    }
}

fn read_error(err: quinn::ReadError) -> StreamErrorIncoming {
    match err {
        quinn::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::ReadError::ConnectionLost(err) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(err),
        },
        err => StreamErrorIncoming::Unknown(Box::new(err)),
    }
}

fn write_error(err: quinn::WriteError) -> StreamErrorIncoming {
    match err {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(err) => StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: connection_error(err),
        },
        err => StreamErrorIncoming::Unknown(Box::new(err)),
    }
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
}
