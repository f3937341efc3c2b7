//! The HTTP/3 frames of a stream a client sends, watched as its bytes pass
//! on to h3, sans-IO.
//!
//! h3 0.0.8 buffers every frame but DATA whole before it looks at it, however
//! long the frame says it is, and keeps reading (so QUIC keeps granting the
//! client credit) until it has it all: a reserved frame type on the control
//! stream declaring 2^40 bytes, or a HEADERS frame as long, would grow its
//! buffer for as long as the client sends. Here each frame header (a varint
//! type, a varint length, RFC 9114 §7.1) is read as it passes, across chunks,
//! and a frame that declares more than we will buffer is refused before any
//! of its payload reaches h3. DATA payloads stream through h3 unbuffered
//! (the body limits count them), so only their length is followed.
//!
//! A request stream is also rewritten on its way ([`FrameWatch::reframe`]):
//! a frame header passes only once whole, and the DATA payload of each chunk
//! as one frame, whatever frames the client cut it into.
//!
//! The frames we send on our control stream are watched too
//! ([`ControlWrites`]), for the GOAWAY id h3 names.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::NetError;

/// The DATA frame type (RFC 9114 §7.2.1).
const DATA: u64 = 0x00;
/// The GOAWAY frame type (RFC 9114 §7.2.6).
const GOAWAY: u64 = 0x07;
/// The control stream type (RFC 9114 §6.2.1).
const CONTROL_STREAM: u64 = 0x00;
/// The QPACK encoder and decoder stream types (RFC 9204 §4.2).
const QPACK_ENCODER_STREAM: u64 = 0x02;
const QPACK_DECODER_STREAM: u64 = 0x03;

/// What a stream's frames carrying no body may declare: frames other than
/// DATA, and empty DATA frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameCaps {
    /// Payload bytes of one frame other than DATA.
    pub frame: u64,
    /// Payload bytes of all frames other than DATA on the stream together,
    /// and the header bytes of its empty DATA frames.
    pub stream: u64,
}

impl FrameCaps {
    /// A control stream: SETTINGS, GOAWAY, and extension frames such as
    /// PRIORITY_UPDATE, all a few bytes. No total: a browser sends a
    /// PRIORITY_UPDATE per request for as long as the connection lives.
    pub(crate) const CONTROL: FrameCaps = FrameCaps {
        frame: 16 * 1024,
        stream: u64::MAX,
    };

    /// A request stream of a listener advertising `max_field_section`
    /// (SETTINGS_MAX_FIELD_SECTION_SIZE). One frame may be twice that: a
    /// section somewhat over the limit is still read and answered with h3's
    /// 431 (a client in its first flight has not seen our SETTINGS yet);
    /// beyond it the stream is refused unread. All frames together may be
    /// twice one: a head and trailers each at the cap, or smaller ones and
    /// some grease, but no stream of unknown frames, or of empty DATA
    /// frames, between DATA frames.
    pub(crate) fn request(max_field_section: u64) -> FrameCaps {
        let frame = max_field_section.saturating_mul(2);
        FrameCaps {
            frame,
            stream: frame.saturating_mul(2),
        }
    }
}

/// A stream's frames broke its [`FrameCaps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// One frame declared more than `cap` bytes.
    Frame { ty: u64, len: u64, cap: u64 },
    /// The stream's frames carrying no body declared more than `cap` bytes
    /// together.
    Stream { cap: u64 },
}

impl From<Violation> for NetError {
    fn from(v: Violation) -> Self {
        match v {
            Violation::Frame { ty, len, cap } => NetError::FrameTooLarge { ty, len, cap },
            Violation::Stream { cap } => NetError::FramingTooLarge { cap },
        }
    }
}

/// One QUIC variable-length integer (RFC 9000 §16), read a byte at a time.
#[derive(Debug, Clone, Copy, Default)]
struct VarInt {
    value: u64,
    /// Bytes still to come; `None` before the first.
    left: Option<u8>,
}

impl VarInt {
    /// Takes the next byte; the value once it is complete.
    fn push(&mut self, byte: u8) -> Option<u64> {
        let left = match self.left {
            None => {
                self.value = u64::from(byte & 0x3f);
                (1u8 << (byte >> 6)) - 1
            }
            Some(left) => {
                self.value = (self.value << 8) | u64::from(byte);
                left - 1
            }
        };
        self.left = Some(left);
        (left == 0).then_some(self.value)
    }
}

/// The bytes of a frame header (two varints of eight bytes at most), held
/// until it is complete: it may span chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Held {
    bytes: [u8; 16],
    len: u8,
}

impl Held {
    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(usize::from(self.len)) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// A unidirectional stream's type, which comes before its frames.
    StreamType(VarInt),
    FrameType(VarInt),
    Length {
        ty: u64,
        len: VarInt,
    },
    /// Payload bytes of the current frame still to pass.
    Payload {
        left: u64,
        data: bool,
    },
    /// Not frames: a stream type h3 reads no further (push, reserved).
    Opaque,
    /// A QPACK encoder or decoder stream, which h3 keeps and never reads
    /// (its bytes pass as they are; see [`FrameWatch::is_qpack`]).
    Qpack,
    Refused(Violation),
}

/// A stretch of one chunk, as it passes on to h3.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Bytes of the chunk that pass as they are.
    Verbatim(Range<usize>),
    /// The complete header of a frame other than DATA.
    Header(Held),
    /// DATA payload bytes of the chunk (their frame header is dropped).
    Payload(Range<usize>),
}

/// The frame headers of one receive stream, followed across its chunks.
#[derive(Debug, Clone)]
pub(crate) struct FrameWatch {
    state: State,
    caps: FrameCaps,
    /// Payload bytes declared by the stream's non-DATA frames so far.
    declared: u64,
    /// The header being read.
    header: Held,
}

/// A chunk of a request stream rewritten for h3 ([`FrameWatch::reframe`]).
#[derive(Debug, Default)]
pub(crate) struct Reframed {
    /// What h3 gets, in order.
    pub pieces: Vec<Bytes>,
    /// The DATA payload bytes among them.
    pub payload: u64,
}

/// The stream ended inside a frame (RFC 9114 §7.1: a connection error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated;

impl FrameWatch {
    /// A request stream: frames from its first byte.
    pub(crate) fn request(caps: FrameCaps) -> Self {
        Self::starting(State::FrameType(VarInt::default()), caps)
    }

    /// A unidirectional stream: its type, then frames if it is the control
    /// stream (the only one h3 reads frames from), with `caps`.
    pub(crate) fn unidirectional(caps: FrameCaps) -> Self {
        Self::starting(State::StreamType(VarInt::default()), caps)
    }

    fn starting(state: State, caps: FrameCaps) -> Self {
        Self {
            state,
            caps,
            declared: 0,
            header: Held::default(),
        }
    }

    /// Whether the stream is a QPACK encoder or decoder stream (known once
    /// its type has passed).
    pub(crate) fn is_qpack(&self) -> bool {
        matches!(self.state, State::Qpack)
    }

    /// Why the stream was refused, once it was: nothing more of it may pass.
    pub(crate) fn refused(&self) -> Option<Violation> {
        match self.state {
            State::Refused(v) => Some(v),
            _ => None,
        }
    }

    /// Follows the next bytes of the stream, which pass on as they are.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        self.walk(bytes, |_| {})
    }

    /// Follows the next chunk of a request stream, and rewrites it for h3:
    /// frames other than DATA pass as they are, each once its header is
    /// whole; the DATA payload of the chunk passes as one DATA frame per run
    /// (the stretch between other frames), so that however the client cut
    /// its body into frames, h3 gets each chunk's payload in one frame.
    ///
    /// h3 0.0.8 reads from QUIC on every poll of a body, whether or not it
    /// holds a frame already, and hands on one frame per poll: a body of
    /// one-byte frames made it read far faster than it handed on. A frame
    /// per chunk keeps the two in step, so that the read-ahead bound of
    /// [`crate::h3_quic`] counts what h3 holds: payload, and no frame
    /// headers by the thousand.
    pub(crate) fn reframe(&mut self, chunk: &Bytes) -> Result<Reframed, Violation> {
        let mut out = Reframed::default();
        let mut run: Vec<Range<usize>> = Vec::new();
        self.walk(chunk, |part| match part {
            Part::Payload(range) => run.push(range),
            Part::Verbatim(range) => {
                end_run(chunk, &mut run, &mut out);
                out.pieces.push(chunk.slice(range));
            }
            Part::Header(held) => {
                end_run(chunk, &mut run, &mut out);
                out.pieces.push(Bytes::copy_from_slice(held.as_slice()));
            }
        })?;
        end_run(chunk, &mut run, &mut out);
        Ok(out)
    }

    /// Whether the stream may end here: not inside a frame.
    pub(crate) fn finish(&self) -> Result<(), Truncated> {
        match self.state {
            State::Payload { .. } | State::Length { .. } => Err(Truncated),
            State::FrameType(_) if self.header.len > 0 => Err(Truncated),
            _ => Ok(()),
        }
    }

    /// Follows `bytes`, telling `part` how each stretch passes on.
    fn walk(&mut self, bytes: &[u8], mut part: impl FnMut(Part)) -> Result<(), Violation> {
        let mut at = 0;
        while let Some(&byte) = bytes.get(at) {
            match &mut self.state {
                State::Opaque | State::Qpack => {
                    part(Part::Verbatim(at..bytes.len()));
                    return Ok(());
                }
                State::Refused(v) => return Err(*v),
                State::Payload { left, data } => {
                    let n = (bytes.len() - at).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let range = at..at + n;
                    part(if *data {
                        Part::Payload(range)
                    } else {
                        Part::Verbatim(range)
                    });
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::FrameType(VarInt::default());
                    }
                    at += n;
                    continue;
                }
                State::StreamType(ty) => {
                    part(Part::Verbatim(at..at + 1));
                    if let Some(ty) = ty.push(byte) {
                        self.state = match ty {
                            CONTROL_STREAM => State::FrameType(VarInt::default()),
                            QPACK_ENCODER_STREAM | QPACK_DECODER_STREAM => State::Qpack,
                            _ => State::Opaque,
                        };
                    }
                }
                State::FrameType(ty) => {
                    self.header.push(byte);
                    if let Some(ty) = ty.push(byte) {
                        self.state = State::Length {
                            ty,
                            len: VarInt::default(),
                        };
                    }
                }
                State::Length { ty, len } => {
                    self.header.push(byte);
                    if let Some(len) = len.push(byte) {
                        let ty = *ty;
                        let held = std::mem::take(&mut self.header);
                        self.state = self.frame(ty, len, held.len);
                        if self.refused().is_none() && ty != DATA {
                            part(Part::Header(held));
                        }
                    }
                }
            }
            at += 1;
        }
        self.refused().map_or(Ok(()), Err)
    }

    /// The state after a frame header of `header` bytes declaring `len`
    /// bytes of type `ty`.
    fn frame(&mut self, ty: u64, len: u64, header: u8) -> State {
        let carries_nothing = match (ty, len) {
            // RFC 9114 allows empty DATA frames, and they pass nothing on
            // (see `reframe`): but a stream of them, read for ever, is a
            // stream of unknown frames by another name.
            (DATA, 0) => u64::from(header),
            (DATA, _) => 0,
            _ if len > self.caps.frame => {
                let cap = self.caps.frame;
                return State::Refused(Violation::Frame { ty, len, cap });
            }
            // Headers too: unknown frames of length 0 would otherwise cost
            // nothing, and a stream of them be read for ever.
            _ => len.saturating_add(u64::from(header)),
        };
        self.declared = self.declared.saturating_add(carries_nothing);
        if self.declared > self.caps.stream {
            let cap = self.caps.stream;
            return State::Refused(Violation::Stream { cap });
        }
        match len {
            0 => State::FrameType(VarInt::default()),
            left => State::Payload {
                left,
                data: ty == DATA,
            },
        }
    }
}

/// The writes h3 makes to one of our unidirectional streams, followed to
/// keep every GOAWAY on the control stream at the id our admission names.
///
/// h3 0.0.8 answers a client's GOAWAY with one of its own naming the last
/// request stream it accepted (`shutdown(0)`), which tells the client that
/// request was not processed (RFC 9114 §5.2), when it was, and which is
/// below the id an earlier GOAWAY of ours named (the stream after it). Each
/// write of h3 holds whole frames, the first one the stream type before
/// them (h3's `WriteBuf`), so a write is rewritten on its own.
#[derive(Debug, Default)]
pub(crate) struct ControlWrites {
    stream: Outgoing,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// Nothing written yet: the stream type comes first.
    #[default]
    Start,
    Control,
    /// A QPACK or grease stream: nothing to watch.
    Other,
}

impl ControlWrites {
    /// `write` as it should go: each GOAWAY frame on the control stream
    /// naming `goaway()` instead of h3's id. What does not parse as whole
    /// frames passes as it is.
    pub(crate) fn rewrite(&mut self, write: Bytes, mut goaway: impl FnMut() -> u64) -> Bytes {
        let mut rest = &write[..];
        if self.stream == Outgoing::Start {
            self.stream = match read_varint(&mut rest) {
                Some(CONTROL_STREAM) => Outgoing::Control,
                _ => Outgoing::Other,
            };
        }
        if self.stream != Outgoing::Control {
            return write;
        }
        let mut out = BytesMut::with_capacity(write.len());
        out.extend_from_slice(&write[..write.len() - rest.len()]);
        while !rest.is_empty() {
            let before = rest;
            let frame = read_varint(&mut rest).zip(read_varint(&mut rest));
            let payload = frame.and_then(|(_, len)| rest.get(..usize::try_from(len).ok()?));
            let (Some((ty, _)), Some(payload)) = (frame, payload) else {
                out.extend_from_slice(before);
                break;
            };
            rest = &rest[payload.len()..];
            if ty == GOAWAY {
                let mut id = BytesMut::new();
                put_varint(&mut id, goaway());
                put_varint(&mut out, GOAWAY);
                put_varint(&mut out, id.len() as u64);
                out.extend_from_slice(&id);
            } else {
                out.extend_from_slice(&before[..before.len() - rest.len()]);
            }
        }
        out.freeze()
    }
}

/// Reads one QUIC varint off the front of `bytes`, if it is all there.
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let rest = bytes.get(1..len)?;
    let value = rest
        .iter()
        .fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    *bytes = &bytes[len..];
    Some(value)
}

/// Ends a run of DATA payload: one DATA frame of all of it.
fn end_run(chunk: &Bytes, run: &mut Vec<Range<usize>>, out: &mut Reframed) {
    let len: usize = run.iter().map(ExactSizeIterator::len).sum();
    if len == 0 {
        return;
    }
    let mut header = BytesMut::with_capacity(9 + if run.len() > 1 { len } else { 0 });
    put_varint(&mut header, DATA);
    put_varint(&mut header, len as u64);
    if let [range] = run.as_slice() {
        out.pieces.push(header.freeze());
        out.pieces.push(chunk.slice(range.clone()));
    } else {
        // Payload between frame headers: copied into one piece.
        for range in run.iter() {
            header.extend_from_slice(&chunk[range.clone()]);
        }
        out.pieces.push(header.freeze());
    }
    out.payload += len as u64;
    run.clear();
}

/// Appends `v` as a QUIC varint in its shortest form (RFC 9000 §16).
fn put_varint(out: &mut BytesMut, v: u64) {
    match v {
        0..64 => out.put_u8(v as u8),
        64..16_384 => out.put_u16(v as u16 | 0x4000),
        16_384..1_073_741_824 => out.put_u32(v as u32 | 0x8000_0000),
        _ => out.put_u64(v | 0xc000_0000_0000_0000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: FrameCaps = FrameCaps {
        frame: 100,
        stream: 250,
    };

    /// A QUIC varint in its shortest form.
    fn varint(v: u64) -> Vec<u8> {
        match v {
            0..64 => vec![v as u8],
            64..16_384 => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
            16_384..1_073_741_824 => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
            _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
        }
    }

    fn frame(ty: u64, payload_len: usize) -> Vec<u8> {
        let mut out = varint(ty);
        out.extend(varint(payload_len as u64));
        out.extend(std::iter::repeat_n(0xaa, payload_len));
        out
    }

    /// Feeds `bytes` in chunks of `size`, as QUIC may deliver them.
    fn feed_in(watch: &mut FrameWatch, bytes: &[u8], size: usize) -> Result<(), Violation> {
        bytes.chunks(size).try_for_each(|c| watch.feed(c))
    }

    #[test]
    fn frames_within_the_caps_pass_whatever_the_chunking() {
        // Frames that carry no body, headers included: 103 + 44 + 103 = 250.
        let mut stream = frame(0x01, 100);
        stream.extend(frame(DATA, 100_000));
        stream.extend(frame(0x21, 42));
        stream.extend(frame(DATA, 3));
        stream.extend(frame(0x01, 100));
        for size in [1, 2, 7, 1500, stream.len()] {
            let mut watch = FrameWatch::request(CAPS);
            assert_eq!(
                feed_in(&mut watch, &stream, size),
                Ok(()),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_frame_declaring_more_than_the_cap_is_refused_at_its_header() {
        // No payload needed: the declared length alone refuses it.
        for ty in [0x01, 0x21, 0x04] {
            let mut header = varint(ty);
            header.extend(varint(1 << 40));
            let mut watch = FrameWatch::request(CAPS);
            let refused = feed_in(&mut watch, &header, 1);
            let expected = Violation::Frame {
                ty,
                len: 1 << 40,
                cap: 100,
            };
            assert_eq!(refused, Err(expected));
            assert_eq!(watch.refused(), Some(expected));
            assert_eq!(watch.feed(&[0]), Err(expected), "and stays refused");
        }
        let mut watch = FrameWatch::request(CAPS);
        assert!(watch.feed(&frame(0x01, 101)).is_err());
    }

    #[test]
    fn empty_data_frames_count_against_the_stream() {
        let mut watch = FrameWatch::request(CAPS);
        assert_eq!(watch.feed(&frame(0x01, 100).repeat(2)), Ok(()));
        // 2 x (100 + 3) + 22 x 2 = 250 pass, the next makes 252 > 250.
        let empty = frame(DATA, 0).repeat(22);
        assert_eq!(watch.feed(&empty), Ok(()));
        assert_eq!(watch.feed(&frame(DATA, 1000)), Ok(()), "DATA with a body");
        let refused = watch.feed(&frame(DATA, 0));
        assert_eq!(refused, Err(Violation::Stream { cap: 250 }));
    }

    #[test]
    fn empty_unknown_frames_count_against_the_stream() {
        let mut watch = FrameWatch::request(CAPS);
        // Two bytes each: 125 pass, the next makes 252 > 250.
        assert_eq!(watch.feed(&frame(0x21, 0).repeat(125)), Ok(()));
        let refused = watch.feed(&frame(0x21, 0));
        assert_eq!(refused, Err(Violation::Stream { cap: 250 }));
    }

    #[test]
    fn data_frames_are_never_capped() {
        let mut header = varint(DATA);
        header.extend(varint((1 << 62) - 1));
        let mut watch = FrameWatch::request(CAPS);
        assert_eq!(watch.feed(&header), Ok(()));
        assert_eq!(watch.feed(&[0; 4096]), Ok(()));
    }

    #[test]
    fn unknown_frames_between_data_frames_count_against_the_stream() {
        let mut watch = FrameWatch::request(CAPS);
        assert_eq!(watch.feed(&frame(0x01, 40)), Ok(()));
        let mut refused = None;
        for i in 0..10 {
            assert_eq!(watch.feed(&frame(DATA, 10)), Ok(()));
            if let Err(v) = watch.feed(&frame(0x21, 60)) {
                refused = Some((i, v));
                break;
            }
        }
        // 42 + 3 x 62 = 228 pass, the fourth makes 290 > 250.
        assert_eq!(refused, Some((3, Violation::Stream { cap: 250 })));
    }

    #[test]
    fn only_the_control_stream_is_read_as_frames() {
        let mut control = varint(CONTROL_STREAM);
        control.extend(frame(0x04, 6));
        control.extend(varint(0x21));
        control.extend(varint(1 << 40));
        let mut watch = FrameWatch::unidirectional(FrameCaps::CONTROL);
        let refused = feed_in(&mut watch, &control, 3);
        assert!(
            matches!(refused, Err(Violation::Frame { ty: 0x21, .. })),
            "{refused:?}"
        );
        // QPACK encoder and decoder streams carry instructions, not frames;
        // a reserved stream type (two bytes here) is not read by h3 at all.
        for ty in [0x02, 0x03, 0x01, 0x21] {
            let mut stream = varint(ty);
            stream.extend(varint(0x21));
            stream.extend(varint(1 << 40));
            let mut watch = FrameWatch::unidirectional(FrameCaps::CONTROL);
            assert_eq!(
                feed_in(&mut watch, &stream, 1),
                Ok(()),
                "stream type {ty:#x}"
            );
        }
    }

    /// The frames of `bytes`: type and payload.
    fn frames_of(mut bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        fn varint(bytes: &mut &[u8]) -> u64 {
            let len = 1 << (bytes[0] >> 6);
            let v = bytes[1..len]
                .iter()
                .fold(u64::from(bytes[0] & 0x3f), |v, b| (v << 8) | u64::from(*b));
            *bytes = &bytes[len..];
            v
        }
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let ty = varint(&mut bytes);
            let len = varint(&mut bytes) as usize;
            frames.push((ty, bytes[..len].to_vec()));
            bytes = &bytes[len..];
        }
        frames
    }

    /// The frames of `frames` with consecutive DATA frames joined, empty
    /// ones left out: what a reframed stream must carry.
    fn joined(frames: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (ty, payload) in frames {
            match out.last_mut() {
                Some((DATA, data)) if ty == DATA => data.extend(payload),
                _ if ty == DATA && payload.is_empty() => {}
                _ => out.push((ty, payload)),
            }
        }
        out
    }

    /// Reframes `bytes` in chunks of `size`: what h3 gets, and the payload
    /// counted.
    fn reframe_in(bytes: &[u8], size: usize) -> (Vec<u8>, u64) {
        let mut watch = FrameWatch::request(CAPS);
        let (mut out, mut payload) = (Vec::new(), 0);
        for chunk in bytes.chunks(size) {
            let reframed = watch.reframe(&Bytes::copy_from_slice(chunk)).unwrap();
            reframed.pieces.iter().for_each(|p| out.extend(p));
            payload += reframed.payload;
        }
        assert_eq!(watch.finish(), Ok(()), "chunks of {size}");
        (out, payload)
    }

    #[test]
    fn reframing_keeps_every_frame_but_joins_data_and_drops_empty_data() {
        let mut stream = frame(0x01, 30);
        for len in [1, 1, 0, 5, 1, 2000, 0, 1] {
            stream.extend(frame(DATA, len));
        }
        stream.extend(frame(0x21, 7));
        stream.extend(frame(DATA, 3));
        // A DATA header in non-shortest form: eight bytes of type, eight of length.
        stream.extend(0xc000_0000_0000_0000u64.to_be_bytes());
        stream.extend(0xc000_0000_0000_0002u64.to_be_bytes());
        stream.extend([0xbb; 2]);
        stream.extend(frame(0x01, 10));
        let expected = joined(frames_of(&stream));
        let payload: usize = expected
            .iter()
            .filter(|(ty, _)| *ty == DATA)
            .map(|(_, p)| p.len())
            .sum();
        for size in [1, 2, 3, 7, 100, 1500, stream.len()] {
            let (out, counted) = reframe_in(&stream, size);
            assert_eq!(joined(frames_of(&out)), expected, "chunks of {size}");
            assert_eq!(counted, payload as u64, "chunks of {size}");
        }
    }

    #[test]
    fn a_chunk_of_tiny_data_frames_becomes_one_frame() {
        let stream = frame(DATA, 1).repeat(400);
        let mut watch = FrameWatch::request(CAPS);
        let reframed = watch.reframe(&Bytes::from(stream)).unwrap();
        let out: Vec<u8> = reframed.pieces.concat();
        assert_eq!(frames_of(&out), vec![(DATA, vec![0xaa; 400])]);
        assert_eq!(reframed.payload, 400);
    }

    #[test]
    fn a_frame_header_passes_only_once_whole() {
        let mut watch = FrameWatch::request(CAPS);
        let headers = frame(0x01, 4);
        let first = watch
            .reframe(&Bytes::copy_from_slice(&headers[..1]))
            .unwrap();
        assert!(first.pieces.is_empty());
        let rest = watch
            .reframe(&Bytes::copy_from_slice(&headers[1..]))
            .unwrap();
        assert_eq!(rest.pieces.concat(), headers);
    }

    #[test]
    fn a_stream_may_end_only_between_frames() {
        let stream = [frame(0x01, 4), frame(DATA, 6)].concat();
        for end in 0..=stream.len() {
            let mut watch = FrameWatch::request(CAPS);
            watch.feed(&stream[..end]).unwrap();
            let whole = end == 0 || end == 6 || end == stream.len();
            assert_eq!(watch.finish().is_ok(), whole, "ending after {end} bytes");
        }
    }

    /// A GOAWAY frame naming `id`.
    fn goaway(id: u64) -> Vec<u8> {
        let id = varint(id);
        [varint(GOAWAY), varint(id.len() as u64), id].concat()
    }

    #[test]
    fn goaway_on_our_control_stream_names_the_admissions_id() {
        let mut writes = ControlWrites::default();
        let settings = [varint(CONTROL_STREAM), frame(0x04, 6)].concat();
        let first = writes.rewrite(Bytes::from(settings.clone()), || unreachable!());
        assert_eq!(first, settings, "no GOAWAY: unchanged");
        // h3's shutdown(0) names the last stream accepted (4); the
        // admission, the stream after it (8). A larger id shrinks its varint.
        let raised = writes.rewrite(Bytes::from(goaway(4)), || 8);
        assert_eq!(raised, goaway(8));
        let lowered = writes.rewrite(Bytes::from(goaway(1 << 20)), || 8);
        assert_eq!(lowered, goaway(8));
        let grease = [frame(0x21, 3), goaway(0)].concat();
        let rewritten = writes.rewrite(Bytes::from(grease), || 8);
        assert_eq!(rewritten, [frame(0x21, 3), goaway(8)].concat());
    }

    #[test]
    fn other_streams_and_odd_writes_pass_as_they_are() {
        // A QPACK encoder stream (type 0x02): its bytes are not frames.
        let mut writes = ControlWrites::default();
        let qpack = Bytes::from([varint(0x02), goaway(4)].concat());
        assert_eq!(writes.rewrite(qpack.clone(), || 8), qpack);
        assert_eq!(writes.rewrite(Bytes::from(goaway(4)), || 8), goaway(4));
        // A write that is not whole frames is passed on unread.
        let mut writes = ControlWrites::default();
        writes.rewrite(Bytes::from(varint(CONTROL_STREAM)), || unreachable!());
        let cut = Bytes::from(goaway(4)[..2].to_vec());
        assert_eq!(writes.rewrite(cut.clone(), || 8), cut);
    }

    #[test]
    fn request_caps_leave_room_for_h3s_own_431() {
        let caps = FrameCaps::request(48 * 1024);
        assert_eq!(caps.frame, 96 * 1024);
        assert_eq!(caps.stream, 192 * 1024);
        assert_eq!(FrameCaps::request(u64::MAX).stream, u64::MAX);
    }
}
