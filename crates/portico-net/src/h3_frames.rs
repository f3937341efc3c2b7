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

use crate::NetError;

/// The DATA frame type (RFC 9114 §7.2.1).
const DATA: u64 = 0x00;
/// The control stream type (RFC 9114 §6.2.1).
const CONTROL_STREAM: u64 = 0x00;

/// What a stream's non-DATA frames may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameCaps {
    /// Payload bytes of one frame.
    pub frame: u64,
    /// Payload bytes of all of them on the stream together.
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
    /// some grease, but no stream of unknown frames between DATA frames.
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
    /// The stream's non-DATA frames declared more than `cap` bytes together.
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
    Payload(u64),
    /// Not frames: a QPACK encoder or decoder stream, or a stream type h3
    /// reads no further (push, reserved).
    Opaque,
    Refused(Violation),
}

/// The frame headers of one receive stream, followed across its chunks.
#[derive(Debug, Clone)]
pub(crate) struct FrameWatch {
    state: State,
    caps: FrameCaps,
    /// Payload bytes declared by the stream's non-DATA frames so far.
    declared: u64,
}

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
        }
    }

    /// Why the stream was refused, once it was: nothing more of it may pass.
    pub(crate) fn refused(&self) -> Option<Violation> {
        match self.state {
            State::Refused(v) => Some(v),
            _ => None,
        }
    }

    /// Follows the next bytes of the stream.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.state {
                State::Opaque => return Ok(()),
                State::Refused(v) => return Err(*v),
                State::Payload(left) => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    if *left == 0 {
                        self.state = State::FrameType(VarInt::default());
                    }
                    bytes = &bytes[n..];
                    continue;
                }
                State::StreamType(ty) => {
                    if let Some(ty) = ty.push(byte) {
                        self.state = if ty == CONTROL_STREAM {
                            State::FrameType(VarInt::default())
                        } else {
                            State::Opaque
                        };
                    }
                }
                State::FrameType(ty) => {
                    if let Some(ty) = ty.push(byte) {
                        self.state = State::Length {
                            ty,
                            len: VarInt::default(),
                        };
                    }
                }
                State::Length { ty, len } => {
                    if let Some(len) = len.push(byte) {
                        let ty = *ty;
                        self.state = self.frame(ty, len);
                    }
                }
            }
            bytes = rest;
        }
        self.refused().map_or(Ok(()), Err)
    }

    /// The state after a frame header declaring `len` bytes of type `ty`.
    fn frame(&mut self, ty: u64, len: u64) -> State {
        if ty != DATA {
            let cap = self.caps.frame;
            if len > cap {
                return State::Refused(Violation::Frame { ty, len, cap });
            }
            self.declared = self.declared.saturating_add(len);
            if self.declared > self.caps.stream {
                let cap = self.caps.stream;
                return State::Refused(Violation::Stream { cap });
            }
        }
        match len {
            0 => State::FrameType(VarInt::default()),
            len => State::Payload(len),
        }
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
        let mut stream = frame(0x01, 100);
        stream.extend(frame(DATA, 100_000));
        stream.extend(frame(0x21, 50));
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
        // 40 + 3 x 60 = 220 pass, the fourth makes 280 > 250.
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

    #[test]
    fn request_caps_leave_room_for_h3s_own_431() {
        let caps = FrameCaps::request(48 * 1024);
        assert_eq!(caps.frame, 96 * 1024);
        assert_eq!(caps.stream, 192 * 1024);
        assert_eq!(FrameCaps::request(u64::MAX).stream, u64::MAX);
    }
}
