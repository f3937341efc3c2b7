//! Sans-IO framing: `u32` big-endian length + bincode payload.
//!
//! The codec owns no buffers and no sockets: the driver appends received
//! bytes to a `BytesMut` and calls [`Codec::decode`] until it returns
//! `Ok(None)`; to send, it calls [`Codec::encode`] and writes the buffer out.

use bincode::config::{self, Config};
use bincode::error::DecodeError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtoError;
use crate::frame::{Frame, FrameKind, HeadersRef, RequestHeadRef, ResponseHeadRef};
use crate::version::PROTOCOL_VERSION_MAX;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Default largest frame payload (the length prefix excluded): 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// Smallest maximum a codec accepts: room for any request head worth sending.
pub const MIN_MAX_FRAME: u32 = 1 << 10;

/// Largest maximum a codec accepts (16 MiB). Also the ceiling of bincode's
/// allocation limit while decoding.
pub const MAX_FRAME_LIMIT: u32 = 16 << 20;

/// Bytes a `BodyChunk` adds around its data: 1 tag byte + a length varint of
/// at most 5 bytes (frames are below 2^32 bytes).
pub const BODY_CHUNK_OVERHEAD: usize = 6;

/// Encoder and decoder of frames, with the link's limits.
///
/// Both ends of a link must use the same `max_frame` (or the receiver a
/// larger one): a receiver rejects any length prefix above its own maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    max_frame: u32,
    version: u16,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            max_frame: DEFAULT_MAX_FRAME,
            version: PROTOCOL_VERSION_MAX,
        }
    }
}

impl Codec {
    /// A codec with [`DEFAULT_MAX_FRAME`] speaking the newest protocol version.
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec with a different maximum payload size, which must be within
    /// [`MIN_MAX_FRAME`]`..=`[`MAX_FRAME_LIMIT`].
    pub fn with_max_frame(max_frame: u32) -> Result<Self, ProtoError> {
        if !(MIN_MAX_FRAME..=MAX_FRAME_LIMIT).contains(&max_frame) {
            return Err(ProtoError::InvalidMaxFrame {
                requested: max_frame,
                min: MIN_MAX_FRAME,
                max: MAX_FRAME_LIMIT,
            });
        }
        Ok(Codec {
            max_frame,
            ..Self::default()
        })
    }

    /// Restricts the codec to the version negotiated by `Hello`/`HelloAck`:
    /// frames newer than it are refused both ways.
    pub fn with_version(self, version: u16) -> Self {
        Codec { version, ..self }
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// Largest body slice that fits one `BodyChunk` frame, exactly: one more
    /// byte would not fit. The length varint takes 3 bytes below 2^16 and 5
    /// above (frames are at least [`MIN_MAX_FRAME`], so never 1 byte).
    pub fn max_body_chunk(&self) -> usize {
        let max = self.max_frame as usize;
        let short = usize::from(u16::MAX);
        if max - 4 <= short {
            max - 4
        } else {
            (max - BODY_CHUNK_OVERHEAD).max(short)
        }
    }

    /// Splits a body into `BodyChunk` frames that each fit the frame limit.
    /// Zero-copy: every chunk shares `body`'s allocation. An empty body
    /// yields no chunks.
    pub fn split_body(&self, body: Bytes) -> BodyChunks {
        BodyChunks {
            rest: body,
            max: self.max_body_chunk(),
        }
    }

    /// Appends `frame` (length prefix + payload) to `dst`.
    ///
    /// A frame whose payload would exceed the maximum is refused with
    /// [`ProtoError::FrameTooLarge`], a control frame over [`crate::limits`]
    /// with [`ProtoError::OverLimit`], and `dst` is left as it was.
    pub fn encode(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
        self.check_version(frame.kind())?;
        crate::limits::check(frame)?;
        self.framed(frame.kind(), dst, |dst| match frame {
            Frame::BodyChunk(data) => self.write_body_chunk(data, dst),
            other => write_serde(other, dst),
        })
    }

    /// Appends a `RequestHead` frame from borrowed parts: the same bytes as
    /// [`Codec::encode`] of the owned head.
    pub fn encode_request_head<F>(
        &self,
        head: &RequestHeadRef<'_, F>,
        dst: &mut BytesMut,
    ) -> Result<(), ProtoError>
    where
        HeadersRef<F>: serde::Serialize,
    {
        self.encode_as(FrameKind::RequestHead, head, dst)
    }

    /// Appends a `ResponseHead` frame from borrowed parts: the same bytes as
    /// [`Codec::encode`] of the owned head.
    pub fn encode_response_head<F>(
        &self,
        head: &ResponseHeadRef<'_, F>,
        dst: &mut BytesMut,
    ) -> Result<(), ProtoError>
    where
        HeadersRef<F>: serde::Serialize,
    {
        self.encode_as(FrameKind::ResponseHead, head, dst)
    }

    /// A frame of `kind` whose content is `value`, written as serde writes
    /// the enum variant: tag varint, then the value.
    fn encode_as(
        &self,
        kind: FrameKind,
        value: &impl serde::Serialize,
        dst: &mut BytesMut,
    ) -> Result<(), ProtoError> {
        self.check_version(kind)?;
        self.framed(kind, dst, |dst| {
            let mut tag = [0u8; 5];
            let tag_len = encode_native(kind.tag(), &mut tag)?;
            dst.put_slice(&tag[..tag_len]);
            let mut writer = dst.writer();
            bincode::serde::encode_into_std_write(value, &mut writer, config::standard())
                .map(|_| ())
                .map_err(|e| ProtoError::Encode(e.to_string()))
        })
    }

    /// Length prefix, payload from `write`, then the length checked (against
    /// the frame limit and `kind`'s own) and filled in; on any error `dst` is
    /// left as it was.
    fn framed(
        &self,
        kind: FrameKind,
        dst: &mut BytesMut,
        write: impl FnOnce(&mut BytesMut) -> Result<(), ProtoError>,
    ) -> Result<(), ProtoError> {
        let start = dst.len();
        dst.put_u32(0);
        let written = write(dst);
        let len = dst.len() - start - LENGTH_PREFIX_LEN;
        let result = written
            .and_then(|()| self.check_len(len as u64))
            .and_then(|()| crate::limits::check_payload(kind, len));
        match result {
            Ok(()) => {
                // `check_len` bounds `len` by `max_frame`, a `u32`.
                let prefix = (len as u32).to_be_bytes();
                dst[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&prefix);
                Ok(())
            }
            Err(err) => {
                dst.truncate(start);
                Err(err)
            }
        }
    }

    /// Takes one frame off the front of `src`.
    ///
    /// `Ok(None)`: not a whole frame yet, nothing consumed (room for the
    /// announced length is reserved, which is safe because the length was
    /// checked against the maximum first).
    ///
    /// Errors: a bad length prefix (`EmptyFrame`, `FrameTooLarge`) consumes
    /// nothing and the stream cannot continue. A bad payload (unknown tag,
    /// malformed, trailing bytes, version, over a limit) has been consumed whole, so the
    /// stream is still aligned on the next frame; whether to go on is the
    /// driver's policy (the protocol says: reset the stream).
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if src.len() < LENGTH_PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if len == 0 {
            return Err(ProtoError::EmptyFrame);
        }
        self.check_len(u64::from(len))?;
        let total = LENGTH_PREFIX_LEN + len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_LEN);
        let payload = src.split_to(len as usize).freeze();
        self.decode_payload(payload).map(Some)
    }

    fn check_len(&self, len: u64) -> Result<(), ProtoError> {
        if len > u64::from(self.max_frame) {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(())
    }

    fn check_version(&self, kind: FrameKind) -> Result<(), ProtoError> {
        if kind.since_version() > self.version {
            return Err(ProtoError::FrameNotInVersion {
                kind,
                since: kind.since_version(),
                negotiated: self.version,
            });
        }
        Ok(())
    }

    /// Writes a `BodyChunk` exactly as bincode's serde path would
    /// (tag varint, length varint, bytes), without an intermediate copy.
    fn write_body_chunk(&self, data: &Bytes, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let mut header = [0u8; BODY_CHUNK_OVERHEAD + 4];
        let tag_len = encode_native(FrameKind::BodyChunk.tag(), &mut header)?;
        let len_len = encode_native(data.len() as u64, &mut header[tag_len..])?;
        let header_len = tag_len + len_len;
        self.check_len((header_len + data.len()) as u64)?;
        dst.reserve(header_len + data.len());
        dst.put_slice(&header[..header_len]);
        dst.put_slice(data);
        Ok(())
    }

    /// Decodes a complete payload: tag first (so an unknown tag is its own
    /// error), then the body fast path or bincode.
    fn decode_payload(&self, payload: Bytes) -> Result<Frame, ProtoError> {
        let (tag, tag_len) = bincode::decode_from_slice::<u32, _>(&payload, config::standard())
            .map_err(|e| malformed("frame", &e))?;
        let kind = FrameKind::from_tag(tag).ok_or(ProtoError::UnknownFrameType(tag))?;
        self.check_version(kind)?;
        // Before decoding: decoding allocates for what the payload holds.
        crate::limits::check_payload(kind, payload.len())?;
        if kind == FrameKind::BodyChunk {
            return decode_body_chunk(payload, tag_len);
        }
        let (mut frame, used) =
            decode_limited(&payload, self.max_frame).map_err(|e| malformed(kind.as_str(), &e))?;
        if used != payload.len() {
            return Err(ProtoError::TrailingBytes {
                kind,
                extra: payload.len() - used,
            });
        }
        // A peer built before `Reset` reasons were capped sends its whole
        // error text: cut, not refused, so the stream still ends as reset
        // (with its code) rather than as a protocol error.
        if let Frame::Reset(reset) = &mut frame {
            let reason = std::mem::take(&mut reset.reason);
            reset.reason = crate::limits::truncate_reason(reason, crate::limits::MAX_REASON);
        }
        crate::limits::check(&frame)?;
        Ok(frame)
    }
}

/// Iterator of `BodyChunk` frames; see [`Codec::split_body`].
#[derive(Debug, Clone)]
pub struct BodyChunks {
    rest: Bytes,
    max: usize,
}

impl Iterator for BodyChunks {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.rest.is_empty() {
            return None;
        }
        let n = self.rest.len().min(self.max);
        Some(Frame::BodyChunk(self.rest.split_to(n)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len().div_ceil(self.max);
        (n, Some(n))
    }
}

impl ExactSizeIterator for BodyChunks {}

/// Bytes `frame` takes on the wire, length prefix included, as
/// [`Codec::encode`] writes it (which may still refuse it), counted without
/// writing it: one pass over its fields that copies and allocates nothing.
/// `usize::MAX` for a frame bincode cannot encode.
pub fn encoded_len(frame: &Frame) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    match bincode::serde::encode_into_writer(frame, &mut size, config::standard()) {
        Ok(()) => LENGTH_PREFIX_LEN + size.bytes_written,
        Err(_) => usize::MAX,
    }
}

fn write_serde(frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
    let mut writer = dst.writer();
    bincode::serde::encode_into_std_write(frame, &mut writer, config::standard())
        .map(|_| ())
        .map_err(|e| ProtoError::Encode(e.to_string()))
}

fn encode_native<T: bincode::Encode>(value: T, dst: &mut [u8]) -> Result<usize, ProtoError> {
    bincode::encode_into_slice(value, dst, config::standard())
        .map_err(|e| ProtoError::Encode(e.to_string()))
}

/// The data of a body chunk is sliced out of the frame buffer, not copied.
fn decode_body_chunk(payload: Bytes, tag_len: usize) -> Result<Frame, ProtoError> {
    let rest = payload.get(tag_len..).unwrap_or_default();
    let (len, len_len) = bincode::decode_from_slice::<u64, _>(rest, config::standard())
        .map_err(|e| malformed(FrameKind::BodyChunk.as_str(), &e))?;
    let start = tag_len + len_len;
    let have = (payload.len() - start) as u64;
    if len > have {
        return Err(ProtoError::Malformed {
            kind: FrameKind::BodyChunk.as_str(),
            reason: format!("declares {len} bytes, frame holds {have}"),
        });
    }
    if len < have {
        return Err(ProtoError::TrailingBytes {
            kind: FrameKind::BodyChunk,
            extra: (have - len) as usize,
        });
    }
    Ok(Frame::BodyChunk(payload.slice(start..)))
}

/// bincode's decode limit bounds what a length field inside the payload may
/// make it allocate. The limit is a const generic, so pick the smallest of a
/// few tiers that covers the configured maximum frame.
fn decode_limited(payload: &[u8], max_frame: u32) -> Result<(Frame, usize), DecodeError> {
    const K64: usize = 64 << 10;
    const M1: usize = 1 << 20;
    const M4: usize = 4 << 20;
    const M16: usize = MAX_FRAME_LIMIT as usize;
    let std = config::standard();
    match max_frame as usize {
        n if n <= K64 => decode_with(payload, std.with_limit::<K64>()),
        n if n <= M1 => decode_with(payload, std.with_limit::<M1>()),
        n if n <= M4 => decode_with(payload, std.with_limit::<M4>()),
        _ => decode_with(payload, std.with_limit::<M16>()),
    }
}

fn decode_with<C: Config>(payload: &[u8], cfg: C) -> Result<(Frame, usize), DecodeError> {
    bincode::serde::decode_from_slice(payload, cfg)
}

fn malformed(kind: &'static str, err: &DecodeError) -> ProtoError {
    ProtoError::Malformed {
        kind,
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frame::*;

    fn ping(nonce: u64) -> Frame {
        Frame::Ping(Ping { nonce })
    }

    fn head() -> Frame {
        Frame::ResponseHead(ResponseHead {
            status: 200,
            headers: vec![("content-type".into(), b"text/plain\xff".to_vec())],
            served_by: "origin-eu-1".into(),
        })
    }

    fn encode_all(codec: &Codec, frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        for f in frames {
            codec.encode(f, &mut buf).unwrap();
        }
        buf
    }

    fn decode_all(codec: &Codec, buf: &mut BytesMut) -> Result<Vec<Frame>, ProtoError> {
        let mut out = Vec::new();
        while let Some(f) = codec.decode(buf)? {
            out.push(f);
        }
        Ok(out)
    }

    /// A raw frame: length prefix over `payload`.
    fn raw(payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_slice(payload);
        buf
    }

    #[test]
    fn round_trips_a_sequence() {
        let codec = Codec::new();
        let frames = vec![head(), Frame::BodyChunk(Bytes::from_static(b"hi")), ping(7)];
        let mut buf = encode_all(&codec, &frames);
        assert_eq!(decode_all(&codec, &mut buf).unwrap(), frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_split_point_is_need_more_then_completes() {
        let codec = Codec::new();
        let frames = vec![
            head(),
            Frame::BodyChunk(Bytes::from_static(b"abc")),
            ping(1),
        ];
        let full = encode_all(&codec, &frames);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            let first = decode_all(&codec, &mut buf).unwrap();
            assert!(first.len() < frames.len(), "cut {cut}");
            assert_eq!(first[..], frames[..first.len()], "cut {cut}");
            buf.extend_from_slice(&full[cut..]);
            let rest = decode_all(&codec, &mut buf).unwrap();
            assert_eq!([first, rest].concat(), frames, "cut {cut}");
        }
    }

    #[test]
    fn oversize_length_is_rejected_before_allocating() {
        let codec = Codec::new();
        let mut buf = BytesMut::with_capacity(8);
        buf.put_u32(u32::MAX);
        let err = codec.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            ProtoError::FrameTooLarge {
                len: u64::from(u32::MAX),
                max: DEFAULT_MAX_FRAME
            }
        );
        assert!(buf.capacity() < 1024, "no room reserved for the payload");
        let mut buf = raw(&[]);
        buf[..4].copy_from_slice(&(DEFAULT_MAX_FRAME + 1).to_be_bytes());
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtoError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(
            Codec::new().decode(&mut raw(&[])),
            Err(ProtoError::EmptyFrame)
        );
    }

    #[test]
    fn unknown_tags_are_reported() {
        let codec = Codec::new();
        let n = FrameKind::ALL.len() as u8;
        assert_eq!(
            codec.decode(&mut raw(&[n, 0])),
            Err(ProtoError::UnknownFrameType(n.into()))
        );
        // varint 251 marker + u16 LE 1000
        assert_eq!(
            codec.decode(&mut raw(&[251, 0xe8, 0x03])),
            Err(ProtoError::UnknownFrameType(1000))
        );
        assert!(matches!(
            codec.decode(&mut raw(&[251])),
            Err(ProtoError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let codec = Codec::new();
        for payload in [
            &[FrameKind::Hello as u8][..],
            &[FrameKind::RequestHead as u8, 0xff, 0xff, 0xff],
            &[FrameKind::Reset as u8, 99, 0],
            &[FrameKind::QuotaLease as u8, 1, 2, 3],
            &[FrameKind::GoAway as u8, 2, 0xc3, 0x28, 0], // invalid UTF-8
            &[FrameKind::QuotaLease as u8, 0, 0, 0, 0, 0, 0, 7], // bool = 7
        ] {
            let err = codec.decode(&mut raw(payload)).unwrap_err();
            assert!(
                matches!(err, ProtoError::Malformed { .. }),
                "{payload:?}: {err:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let codec = Codec::new();
        let mut buf = encode_all(&codec, &[ping(3)]);
        buf.put_u8(0);
        let len = (buf.len() - LENGTH_PREFIX_LEN) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            codec.decode(&mut buf),
            Err(ProtoError::TrailingBytes {
                kind: FrameKind::Ping,
                extra: 1
            })
        );
    }

    #[test]
    fn body_chunk_length_must_match_frame() {
        let codec = Codec::new();
        let tag = FrameKind::BodyChunk as u8;
        assert!(matches!(
            codec.decode(&mut raw(&[tag, 5, 1, 2])),
            Err(ProtoError::Malformed { .. })
        ));
        assert_eq!(
            codec.decode(&mut raw(&[tag, 1, 1, 2])),
            Err(ProtoError::TrailingBytes {
                kind: FrameKind::BodyChunk,
                extra: 1
            })
        );
        assert!(matches!(
            codec.decode(&mut raw(&[tag])),
            Err(ProtoError::Malformed { .. })
        ));
    }

    #[test]
    fn encode_refuses_oversize_and_leaves_buffer_intact() {
        let codec = Codec::with_max_frame(MIN_MAX_FRAME).unwrap();
        let mut buf = BytesMut::from(&b"keep"[..]);
        let big = Frame::BodyChunk(Bytes::from(vec![0u8; codec.max_body_chunk() + 1]));
        assert!(matches!(
            codec.encode(&big, &mut buf),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let big_head = Frame::ResponseHead(ResponseHead {
            status: 200,
            headers: Vec::new(),
            served_by: "x".repeat(2000),
        });
        assert!(matches!(
            codec.encode(&big_head, &mut buf),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert_eq!(&buf[..], b"keep");
    }

    /// A frame written without the codec's checks (as a peer could).
    fn unchecked(frame: &Frame) -> BytesMut {
        raw(&bincode::serde::encode_to_vec(frame, config::standard()).unwrap())
    }

    #[test]
    fn an_over_long_plan_is_refused_both_ways() {
        let ask = |plan: String| {
            Frame::QuotaLeaseRequest(crate::QuotaLeaseRequest {
                key_id: "k".into(),
                plan,
                want: 1,
                lease_id_to_return: None,
                unused: 0,
            })
        };
        let codec = Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap();
        let at_limit = ask("p".repeat(crate::limits::MAX_ID));
        let mut buf = encode_all(&codec, std::slice::from_ref(&at_limit));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(at_limit));
        let over = ask("p".repeat(crate::limits::MAX_ID + 1));
        let refused = ProtoError::OverLimit {
            kind: FrameKind::QuotaLeaseRequest,
            field: "plan",
            len: crate::limits::MAX_ID + 1,
            max: crate::limits::MAX_ID,
        };
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(codec.encode(&over, &mut buf), Err(refused.clone()));
        assert_eq!(&buf[..], b"keep");
        let mut buf = unchecked(&over);
        assert_eq!(codec.decode(&mut buf), Err(refused));
        // Consumed whole, like any bad payload.
        assert!(buf.is_empty());
    }

    /// A `Reset` reason over the cap is refused on encode, and cut on
    /// decode (a peer built before the cap sends its whole error text): the
    /// stream still ends as reset, with its code.
    #[test]
    fn a_long_reset_reason_is_refused_on_encode_and_cut_on_decode() {
        let codec = Codec::new();
        let long = Frame::Reset(crate::Reset {
            code: crate::ResetCode::Timeout,
            reason: "r".repeat(crate::limits::MAX_REASON + 100),
        });
        let mut buf = BytesMut::new();
        let err = codec.encode(&long, &mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                ProtoError::OverLimit {
                    field: "reason",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(buf.is_empty());
        let Some(Frame::Reset(reset)) = codec.decode(&mut unchecked(&long)).unwrap() else {
            panic!("not a reset");
        };
        assert_eq!(reset.code, crate::ResetCode::Timeout);
        assert_eq!(reset.reason.len(), crate::limits::MAX_REASON);
    }

    /// A reason cut to fit stays text: at a character boundary.
    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let cut = crate::limits::truncate_reason("é".repeat(600), crate::limits::MAX_REASON);
        assert_eq!(cut.len(), crate::limits::MAX_REASON);
        let cut = crate::limits::truncate_reason(format!("x{}", "é".repeat(600)), 1024);
        assert_eq!((cut.len(), cut.chars().count()), (1023, 512));
        assert_eq!(
            crate::limits::truncate_reason("short".into(), 1024),
            "short"
        );
    }

    #[test]
    fn control_frame_limits_cover_lists_and_reasons() {
        let codec = Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap();
        let tags = |n: usize, len: usize| {
            Frame::Purge(crate::Purge {
                purge_id: 1,
                scope: crate::PurgeScope::Tag {
                    api: "a".into(),
                    tags: vec!["t".repeat(len); n],
                },
            })
        };
        let go_away = Frame::GoAway(GoAway {
            reason: "r".repeat(crate::limits::MAX_REASON + 1),
            last_stream_hint: 0,
        });
        let share = Frame::RateShare(crate::RateShare {
            scope: "s".repeat(crate::limits::MAX_SCOPE + 1),
            rate_milli_per_sec: 1,
            burst: 1,
        });
        // A stream's close reason too: a peer's reason is logged.
        let ws_close = Frame::WsClose(crate::WsClose {
            connection_id: 1,
            code: 1000,
            reason: "r".repeat(crate::limits::MAX_WS_CLOSE_REASON + 1),
        });
        for (frame, field) in [
            (tags(crate::limits::MAX_TAGS + 1, 1), "tags"),
            (tags(1, crate::limits::MAX_TAG_LEN + 1), "tag"),
            (go_away, "reason"),
            (share, "scope"),
            (ws_close, "reason"),
        ] {
            let err = codec.decode(&mut unchecked(&frame)).unwrap_err();
            assert!(
                matches!(err, ProtoError::OverLimit { field: f, .. } if f == field),
                "{err:?}"
            );
            assert_eq!(err.as_str(), "over_limit");
        }
        let fits = tags(crate::limits::MAX_TAGS, crate::limits::MAX_TAG_LEN);
        let mut buf = encode_all(&codec, std::slice::from_ref(&fits));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(fits));
    }

    /// An authorizer decision within its caps (a context that fills its
    /// budget exactly, together with its principal's claims) passes both
    /// ways; one over any cap, a context of many empty entries above all,
    /// is refused both ways.
    #[test]
    fn authorizer_decisions_are_capped_both_ways() {
        use crate::limits::{
            CONTEXT_ENTRY_OVERHEAD, MAX_AUTHORIZER_CACHE_KEY, MAX_AUTHORIZER_CONTEXT, MAX_ID,
            MAX_PRINCIPAL_ID,
        };
        let codec = Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap();
        // Entries of 64 bytes each as counted: key, value and the overhead.
        let entries = |n: usize| {
            let value = "v".repeat(64 - CONTEXT_ENTRY_OVERHEAD - 4);
            (0..n)
                .map(|i| (format!("{i:04}"), value.clone()))
                .collect::<Vec<_>>()
        };
        let per_list = MAX_AUTHORIZER_CONTEXT / 64 / 2;
        let decision = |context, claims| {
            Frame::AuthorizerDecision(AuthorizerDecision {
                cache_key: "k".repeat(MAX_AUTHORIZER_CACHE_KEY),
                principal: Some(crate::Principal {
                    kind: "a".repeat(MAX_ID),
                    id: "p".repeat(MAX_PRINCIPAL_ID),
                    claims,
                }),
                allow: true,
                ttl_ms: 300_000,
                context,
            })
        };
        let fits = decision(entries(per_list), entries(per_list));
        let mut buf = encode_all(&codec, std::slice::from_ref(&fits));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(fits));

        let with = |edit: &dyn Fn(&mut AuthorizerDecision)| {
            let mut frame = decision(Vec::new(), Vec::new());
            if let Frame::AuthorizerDecision(d) = &mut frame {
                edit(d);
            }
            frame
        };
        let many_empty = vec![(String::new(), String::new()); 100_000];
        // (frame, the field refused on encode, the one refused on decode:
        // 100 000 empty entries take more than a decision's frame may, so
        // the decoder refuses them before decoding).
        let over = [
            (
                with(&|d| d.context = many_empty.clone()),
                "context",
                "frame",
            ),
            (
                with(&|d| d.context = entries(per_list * 2 + 1)),
                "context",
                "context",
            ),
            (
                decision(entries(per_list), entries(per_list + 1)),
                "context",
                "context",
            ),
            (with(&|d| d.cache_key.push('k')), "cache_key", "cache_key"),
            (
                with(&|d| d.principal.as_mut().unwrap().id.push('p')),
                "principal_id",
                "principal_id",
            ),
            (
                with(&|d| d.principal.as_mut().unwrap().kind.push('a')),
                "principal_kind",
                "principal_kind",
            ),
        ];
        for (frame, field, decoded) in over {
            let mut buf = BytesMut::from(&b"keep"[..]);
            let err = codec.encode(&frame, &mut buf).unwrap_err();
            assert!(
                matches!(err, ProtoError::OverLimit { kind: FrameKind::AuthorizerDecision, field: f, .. } if f == field),
                "{err:?}"
            );
            assert_eq!(&buf[..], b"keep");
            let mut buf = unchecked(&frame);
            let err = codec.decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, ProtoError::OverLimit { field: f, .. } if f == decoded),
                "{err:?}"
            );
            assert!(buf.is_empty());
        }
    }

    /// A control frame larger than its kind may be is refused before it is
    /// decoded (decoding would allocate for every entry it holds), both
    /// ways; configuration frames take the whole frame limit.
    #[test]
    fn a_control_frame_over_its_kinds_size_is_refused_before_decoding() {
        use crate::limits::{MAX_PURGE_FRAME, MAX_SMALL_FRAME};
        let codec = Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap();
        // 300 000 empty tags: one byte each on the wire, 24 each decoded.
        let purge = Frame::Purge(crate::Purge {
            purge_id: 1,
            scope: crate::PurgeScope::Tag {
                api: "a".into(),
                tags: vec![String::new(); 300_000],
            },
        });
        let ping = Frame::Ping(crate::Ping { nonce: 1 });
        let mut buf = unchecked(&purge);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, ProtoError::OverLimit { kind: FrameKind::Purge, field: "frame", max, .. } if max == MAX_PURGE_FRAME),
            "{err:?}"
        );
        assert!(buf.is_empty(), "consumed whole");
        // Any other small kind: a plan as long as the whole frame may be.
        let ask = Frame::QuotaLeaseRequest(crate::QuotaLeaseRequest {
            key_id: "k".into(),
            plan: "p".repeat(MAX_SMALL_FRAME),
            want: 1,
            lease_id_to_return: None,
            unused: 0,
        });
        let mut buf = unchecked(&ask);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtoError::OverLimit { field: "frame", .. })
        ));
        let mut out = BytesMut::new();
        assert!(codec.encode(&ping, &mut out).is_ok());
        // A snapshot of a large configuration still goes through.
        let snapshot = Frame::ConfigSnapshot(crate::ConfigSnapshot {
            version: 1,
            hash: [0; 32],
            definitions: "#".repeat(4 << 20),
        });
        let mut buf = encode_all(&codec, std::slice::from_ref(&snapshot));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(snapshot));
    }

    #[test]
    fn a_full_size_chunk_fits_exactly_within_max() {
        let maxes = [
            MIN_MAX_FRAME,
            65_536,
            65_539,
            65_540,
            65_541,
            65_542,
            DEFAULT_MAX_FRAME,
        ];
        for max in maxes.into_iter().chain([MAX_FRAME_LIMIT]) {
            let codec = Codec::with_max_frame(max).unwrap();
            let data = Bytes::from(vec![7u8; codec.max_body_chunk()]);
            let mut buf = BytesMut::new();
            codec
                .encode(&Frame::BodyChunk(data.clone()), &mut buf)
                .unwrap();
            assert!(buf.len() - LENGTH_PREFIX_LEN <= max as usize);
            assert_eq!(
                codec.decode(&mut buf).unwrap(),
                Some(Frame::BodyChunk(data))
            );
            let over = Frame::BodyChunk(Bytes::from(vec![7u8; codec.max_body_chunk() + 1]));
            assert!(codec.encode(&over, &mut buf).is_err(), "max {max}");
        }
    }

    #[test]
    fn split_body_covers_the_body_in_fitting_chunks() {
        let codec = Codec::with_max_frame(MIN_MAX_FRAME).unwrap();
        let body = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        let chunks: Vec<_> = codec.split_body(body.clone()).collect();
        assert_eq!(chunks.len(), codec.split_body(body.clone()).len());
        assert_eq!(chunks.len(), body.len().div_ceil(codec.max_body_chunk()));
        let mut joined = Vec::new();
        let mut buf = BytesMut::new();
        for c in &chunks {
            codec.encode(c, &mut buf).unwrap();
            let Frame::BodyChunk(data) = c else {
                panic!("not a chunk")
            };
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, body);
        assert_eq!(decode_all(&codec, &mut buf).unwrap(), chunks);
        assert_eq!(codec.split_body(Bytes::new()).count(), 0);
    }

    #[test]
    fn max_frame_must_be_in_range() {
        assert!(Codec::with_max_frame(MIN_MAX_FRAME - 1).is_err());
        assert!(Codec::with_max_frame(MAX_FRAME_LIMIT + 1).is_err());
        assert_eq!(Codec::with_max_frame(4096).unwrap().max_frame(), 4096);
    }

    #[test]
    fn frames_newer_than_the_link_version_are_refused() {
        let old = Codec::new().with_version(0);
        let mut buf = BytesMut::new();
        let err = old.encode(&ping(1), &mut buf).unwrap_err();
        assert!(matches!(
            err,
            ProtoError::FrameNotInVersion {
                kind: FrameKind::Ping,
                ..
            }
        ));
        let mut buf = encode_all(&Codec::new(), &[ping(1)]);
        assert!(matches!(
            old.decode(&mut buf),
            Err(ProtoError::FrameNotInVersion { .. })
        ));
    }

    #[test]
    fn config_request_is_a_version_2_frame() {
        let frame = Frame::ConfigRequest(crate::ConfigRequest {
            have_version: Some(7),
            reason: "stale".into(),
        });
        let v1 = Codec::new().with_version(1);
        let mut buf = BytesMut::new();
        assert!(matches!(
            v1.encode(&frame, &mut buf),
            Err(ProtoError::FrameNotInVersion {
                kind: FrameKind::ConfigRequest,
                since: 2,
                negotiated: 1
            })
        ));
        let mut buf = encode_all(&Codec::new(), std::slice::from_ref(&frame));
        // Tag 23, Some(7), "stale".
        assert_eq!(&buf[LENGTH_PREFIX_LEN..], b"\x17\x01\x07\x05stale");
        assert!(matches!(
            v1.decode(&mut buf.clone()),
            Err(ProtoError::FrameNotInVersion { .. })
        ));
        assert_eq!(Codec::new().decode(&mut buf).unwrap(), Some(frame));
    }

    #[test]
    fn body_chunk_fast_path_matches_bincode() {
        for len in [0usize, 1, 250, 251, 65_535, 65_536, 300_000] {
            let frame = Frame::BodyChunk(Bytes::from(vec![1u8; len]));
            let mut buf = BytesMut::new();
            Codec::new().encode(&frame, &mut buf).unwrap();
            let reference = bincode::serde::encode_to_vec(&frame, config::standard()).unwrap();
            assert_eq!(&buf[LENGTH_PREFIX_LEN..], &reference[..], "len {len}");
        }
    }

    #[test]
    fn wire_bytes_are_pinned() {
        // Same bytes as the worked examples in docs/PROTOCOL.md.
        let codec = Codec::new();
        let resp = Frame::ResponseHead(ResponseHead {
            status: 404,
            headers: vec![("a".into(), b"b".to_vec())],
            served_by: "o".into(),
        });
        let frames = [ping(42), Frame::BodyChunk(Bytes::from_static(b"hi")), resp];
        let mut buf = BytesMut::new();
        crate::preface::encode_preface(crate::StreamKind::Control, &mut buf);
        let buf = [buf, encode_all(&codec, &frames)].concat();
        let expected: &[u8] = &[
            0x50, 0x52, 0x54, 0x43, 0x00, 0x01, 0x00, // preface
            0, 0, 0, 2, 0x10, 0x2a, // Ping
            0, 0, 0, 4, 0x03, 0x02, b'h', b'i', // BodyChunk
            0, 0, 0, 11, 0x06, 0xfb, 0x94, 0x01, 1, 1, b'a', 1, b'b', 1, b'o', // ResponseHead
        ];
        assert_eq!(buf, expected);
    }

    fn check_tag(frame: &Frame) -> Result<(), TestCaseError> {
        let bytes = bincode::serde::encode_to_vec(frame, config::standard()).unwrap();
        let (tag, _) = bincode::decode_from_slice::<u32, _>(&bytes, config::standard()).unwrap();
        prop_assert_eq!(FrameKind::from_tag(tag), Some(frame.kind()));
        Ok(())
    }

    proptest! {
        #[test]
        fn prop_round_trip(frame in crate::arb::frame()) {
            let codec = Codec::new();
            let mut buf = BytesMut::new();
            codec.encode(&frame, &mut buf).unwrap();
            check_tag(&frame)?;
            prop_assert_eq!(encoded_len(&frame), buf.len());
            prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn prop_split_anywhere(frames in proptest::collection::vec(crate::arb::frame(), 1..6),
                               cut in any::<proptest::sample::Index>()) {
            let codec = Codec::new();
            let full = encode_all(&codec, &frames);
            let cut = cut.index(full.len() + 1);
            let mut buf = BytesMut::from(&full[..cut]);
            let mut got = decode_all(&codec, &mut buf).unwrap();
            buf.extend_from_slice(&full[cut..]);
            got.extend(decode_all(&codec, &mut buf).unwrap());
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let codec = Codec::with_max_frame(MIN_MAX_FRAME).unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = decode_all(&codec, &mut buf);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = crate::preface::decode_preface(&mut buf);
        }

        #[test]
        fn prop_mutated_frames_never_panic(frame in crate::arb::frame(),
                                           flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8)) {
            let codec = Codec::new();
            let mut buf = encode_all(&codec, &[frame]);
            // Keep the length prefix intact so the payload decoder is exercised.
            let body_len = buf.len() - LENGTH_PREFIX_LEN;
            for (at, byte) in flips {
                buf[LENGTH_PREFIX_LEN + at.index(body_len)] ^= byte;
            }
            let _ = decode_all(&codec, &mut buf);
        }
    }
}
