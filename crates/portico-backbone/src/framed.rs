//! Frames over one quinn stream half: the sans-IO codec driven by reads and
//! writes, with bounded buffering.
//!
//! A reader holds at most one frame (the codec checks the length prefix
//! before reserving) plus one read chunk; it reads only when asked for the
//! next frame, so an unread stream stalls the peer through QUIC flow control
//! instead of growing memory here.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use portico_proto::{
    Codec, Frame, ProtoError, Reset, ResetCode, StreamKind, decode_preface, encode_preface,
};
use quinn::{ReadError, RecvStream, SendStream};

use crate::{BackboneError, reset_code, stream_code};

/// Largest piece read from quinn at once.
const READ_CHUNK: usize = 64 * 1024;

/// Writes are flushed once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

/// First allocation of a write buffer: a preface, a typical head, a small
/// body and `End` fit without the buffer growing piecemeal while bincode
/// writes a head field by field.
const WRITE_BUF: usize = 2 * 1024;

/// Receiving half of a stream, decoding frames.
pub(crate) struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    codec: Codec,
    /// A frame (or decoding error) taken from the buffer by
    /// [`FrameReader::buffered_end`] and not yet returned by `next`.
    pending: Option<Result<Frame, BackboneError>>,
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream, codec: Codec) -> Self {
        FrameReader {
            recv,
            buf: BytesMut::new(),
            codec,
            pending: None,
        }
    }

    /// Restricts the codec to the link's negotiated protocol version.
    pub(crate) fn set_version(&mut self, version: u16) {
        self.codec = self.codec.with_version(version);
    }

    /// Reads the frames from now on with `codec` (a request's body after
    /// its head, whose frames are smaller).
    pub(crate) fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
    }

    /// Reads and checks the 7-byte preface; a bad one is a protocol error.
    pub(crate) async fn preface(&mut self) -> Result<StreamKind, BackboneError> {
        loop {
            if let Some(p) = decode_preface(&mut self.buf)? {
                return Ok(p.kind);
            }
            // Whatever follows the preface stays buffered for `next`.
            if !self.fill(READ_CHUNK).await? {
                return Err(BackboneError::Truncated("inside the preface"));
            }
        }
    }

    /// The next frame, or `None` at a clean FIN between frames.
    ///
    /// Cancel-safe: the only await is quinn's cancel-safe `read_chunk`, and
    /// what it returns is buffered before the next await.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, BackboneError> {
        if let Some(pending) = self.pending.take() {
            return pending.map(Some);
        }
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if !self.fill(READ_CHUNK).await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(BackboneError::Truncated("inside a frame"))
                };
            }
        }
    }

    /// Whether the next frame, already buffered, is an `End` without
    /// trailers; if so it is consumed along with the FIN when that arrived
    /// too. No I/O wait: lets an empty body be handed on as known-empty
    /// (so nobody sends it chunked) when the peer wrote head and `End`
    /// together, which both ends of this crate do.
    pub(crate) fn buffered_end(&mut self) -> bool {
        if self.pending.is_none() {
            self.pending = self
                .codec
                .decode(&mut self.buf)
                .map_err(Into::into)
                .transpose();
        }
        let is_end = matches!(&self.pending, Some(Ok(Frame::End(e))) if e.trailers.is_empty());
        if is_end {
            self.pending = None;
            self.fin_if_ready();
        }
        is_end
    }

    /// After the terminating frame: reads the FIN if it is already there, so
    /// dropping the stream does not send a needless `STOP_SENDING`.
    pub(crate) fn fin_if_ready(&mut self) {
        if !self.buf.is_empty() {
            return;
        }
        if let Some(Ok(Some(chunk))) = self.recv.read_chunk(1, true).now_or_never() {
            // Bytes after the end: a peer bug, left unread.
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }

    /// Appends up to `max` bytes; `false` at FIN.
    async fn fill(&mut self, max: usize) -> Result<bool, BackboneError> {
        match self.recv.read_chunk(max.max(1), true).await {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(ReadError::Reset(code)) => Err(BackboneError::StreamAborted {
                code: reset_code(code),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the peer to stop sending (QUIC `STOP_SENDING`).
    pub(crate) fn stop(&mut self, code: ResetCode) {
        let _ = self.recv.stop(stream_code(code));
    }
}

/// Sending half of a stream, encoding frames.
///
/// Dropped before [`FrameWriter::finish`] or [`FrameWriter::abort`], it
/// resets the stream with `cancelled`: quinn's own drop would *finish* it,
/// which the peer would read as a complete (if truncated) message.
pub(crate) struct FrameWriter {
    send: SendStream,
    buf: BytesMut,
    codec: Codec,
    closed: bool,
}

impl FrameWriter {
    pub(crate) fn new(send: SendStream, codec: Codec) -> Self {
        FrameWriter {
            send,
            buf: BytesMut::with_capacity(WRITE_BUF),
            codec,
            closed: false,
        }
    }

    /// Restricts the codec to the link's negotiated protocol version.
    pub(crate) fn set_version(&mut self, version: u16) {
        self.codec = self.codec.with_version(version);
    }

    pub(crate) fn codec(&self) -> Codec {
        self.codec
    }

    /// Buffers this half's preface.
    pub(crate) fn preface(&mut self, kind: StreamKind) {
        encode_preface(kind, &mut self.buf);
    }

    /// Buffers a frame; nothing is sent until [`FrameWriter::flush`].
    pub(crate) fn push(&mut self, frame: &Frame) -> Result<(), BackboneError> {
        self.codec.encode(frame, &mut self.buf)?;
        Ok(())
    }

    /// Buffers a frame a control subsystem queued; one that cannot be
    /// encoded is logged and left out (the stream goes on).
    pub(crate) fn push_queued(&mut self, frame: &Frame) {
        if let Err(err) = self.push(frame) {
            tracing::error!(%err, frame = %frame.kind(), "control frame not sent");
        }
    }

    /// Buffers a frame that `encode` writes with this stream's codec (the
    /// borrowed heads of [`crate::wire`]).
    pub(crate) fn push_with(
        &mut self,
        encode: impl FnOnce(&Codec, &mut BytesMut) -> Result<(), ProtoError>,
    ) -> Result<(), BackboneError> {
        encode(&self.codec, &mut self.buf)?;
        Ok(())
    }

    /// Whether enough is buffered that holding it back any longer would
    /// only add latency.
    pub(crate) fn should_flush(&self) -> bool {
        self.buf.len() >= FLUSH_AT
    }

    /// Sends everything buffered, waiting for flow-control credit.
    pub(crate) async fn flush(&mut self) -> Result<(), BackboneError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data: Bytes = self.buf.split().freeze();
        self.send.write_chunk(data).await?;
        Ok(())
    }

    /// Bytes buffered and not yet sent.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Sends some of what is buffered, as flow control allows. Cancel-safe
    /// (what was not sent stays buffered), so a control loop can race it
    /// against its reads: a loop that only read after its writes completed
    /// would deadlock with a peer doing the same, each waiting for the
    /// other to read.
    pub(crate) async fn send_some(&mut self) -> Result<(), BackboneError> {
        let n = self.send.write(&self.buf).await?;
        self.buf.advance(n);
        Ok(())
    }

    /// Flushes, then ends the half with FIN.
    pub(crate) async fn finish(&mut self) -> Result<(), BackboneError> {
        self.flush().await?;
        self.closed = true;
        // Already reset by the peer's STOP_SENDING: nothing left to finish.
        let _ = self.send.finish();
        Ok(())
    }

    /// Sends a `Reset` frame and FIN: the peer learns why the half ended
    /// early. Best effort; the stream is closed either way.
    pub(crate) async fn send_reset(&mut self, code: ResetCode, reason: String) {
        let reason =
            portico_proto::limits::truncate_reason(reason, portico_proto::limits::MAX_REASON);
        let frame = Frame::Reset(Reset { code, reason });
        if self.push(&frame).is_err() || self.finish().await.is_err() {
            self.abort(code);
        }
    }

    /// Aborts the half at once (QUIC `RESET_STREAM`), discarding unsent data.
    pub(crate) fn abort(&mut self, code: ResetCode) {
        self.closed = true;
        self.buf.clear();
        let _ = self.send.reset(stream_code(code));
    }

    /// Completes when the peer sends `STOP_SENDING` (it no longer wants the
    /// response), when it has acknowledged the whole of a finished half, or
    /// when the connection is lost. `'static`, so it can be raced
    /// against work that borrows the writer.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static + use<> {
        let stopped = self.send.stopped();
        async move {
            let _ = stopped.await;
        }
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.send.reset(stream_code(ResetCode::Cancelled));
        }
    }
}
