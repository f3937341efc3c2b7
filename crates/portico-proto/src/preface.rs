//! The 7-byte preface that opens every backbone stream.
//!
//! ```text
//! +----+----+----+----+---------+---------+------+
//! | 'P'| 'R'| 'T'| 'C'| framing version   | kind |
//! |    magic (4)      | u16 big-endian    | u8   |
//! +----+----+----+----+---------+---------+------+
//! ```
//!
//! Per stream rather than per link: QUIC delivers streams independently, so
//! a request stream may be read before the control stream; a self-describing
//! stream can be checked and dispatched on its own, for 7 bytes.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::ProtoError;
use crate::version::FRAMING_VERSION;

/// Magic that starts every stream.
pub const MAGIC: [u8; 4] = *b"PRTC";

/// Encoded size of a [`Preface`].
pub const PREFACE_LEN: usize = 7;

/// What a stream carries; the last byte of its preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    /// One per link, opened by the dialing side (the PoP): handshake,
    /// configuration, purges, quota, usage, liveness.
    Control = 0,
    /// One per forwarded HTTP request.
    Request = 1,
    /// One per relayed WebSocket connection.
    WebSocket = 2,
}

impl StreamKind {
    /// The kind for a preface byte.
    pub fn from_byte(byte: u8) -> Result<StreamKind, ProtoError> {
        match byte {
            0 => Ok(Self::Control),
            1 => Ok(Self::Request),
            2 => Ok(Self::WebSocket),
            other => Err(ProtoError::UnknownStreamKind(other)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Request => "request",
            Self::WebSocket => "websocket",
        }
    }
}

/// A decoded preface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preface {
    pub framing_version: u16,
    pub kind: StreamKind,
}

impl Preface {
    /// The preface this build writes for a stream of `kind`.
    pub fn new(kind: StreamKind) -> Self {
        Preface {
            framing_version: FRAMING_VERSION,
            kind,
        }
    }
}

/// Appends the preface for a stream of `kind`.
pub fn encode_preface(kind: StreamKind, dst: &mut BytesMut) {
    dst.reserve(PREFACE_LEN);
    dst.put_slice(&MAGIC);
    dst.put_u16(FRAMING_VERSION);
    dst.put_u8(kind as u8);
}

/// Reads a preface from the front of `src`.
///
/// `Ok(None)` means "need more bytes" (nothing is consumed). Bad magic is
/// reported as soon as the first differing byte arrives, so a non-Portico
/// peer is rejected without waiting for 7 bytes. On success exactly
/// [`PREFACE_LEN`] bytes are consumed.
pub fn decode_preface(src: &mut BytesMut) -> Result<Option<Preface>, ProtoError> {
    let seen = src.len().min(MAGIC.len());
    if src[..seen] != MAGIC[..seen] {
        return Err(ProtoError::BadMagic {
            found: src[..seen].to_vec(),
        });
    }
    if src.len() < PREFACE_LEN {
        return Ok(None);
    }
    let version = u16::from_be_bytes([src[4], src[5]]);
    if version != FRAMING_VERSION {
        return Err(ProtoError::VersionMismatch {
            ours: FRAMING_VERSION,
            theirs: version,
        });
    }
    let kind = StreamKind::from_byte(src[6])?;
    src.advance(PREFACE_LEN);
    Ok(Some(Preface {
        framing_version: version,
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(kind: StreamKind) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_preface(kind, &mut buf);
        buf
    }

    #[test]
    fn round_trips_every_kind_and_keeps_following_bytes() {
        for kind in [
            StreamKind::Control,
            StreamKind::Request,
            StreamKind::WebSocket,
        ] {
            let mut buf = encoded(kind);
            assert_eq!(buf.len(), PREFACE_LEN);
            buf.put_slice(b"rest");
            assert_eq!(decode_preface(&mut buf).unwrap(), Some(Preface::new(kind)));
            assert_eq!(&buf[..], b"rest");
        }
    }

    #[test]
    fn every_split_point_needs_more() {
        let full = encoded(StreamKind::Request);
        for cut in 0..PREFACE_LEN {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decode_preface(&mut part).unwrap(), None, "cut {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn bad_magic_fails_on_first_wrong_byte() {
        let mut buf = BytesMut::from(&b"G"[..]);
        assert_eq!(
            decode_preface(&mut buf),
            Err(ProtoError::BadMagic {
                found: b"G".to_vec()
            })
        );
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            decode_preface(&mut buf),
            Err(ProtoError::BadMagic { .. })
        ));
    }

    #[test]
    fn version_mismatch_is_reported() {
        let mut buf = encoded(StreamKind::Control);
        buf[5] = buf[5].wrapping_add(1);
        assert_eq!(
            decode_preface(&mut buf),
            Err(ProtoError::VersionMismatch {
                ours: FRAMING_VERSION,
                theirs: FRAMING_VERSION + 1
            })
        );
    }

    #[test]
    fn unknown_stream_kind_is_reported() {
        let mut buf = encoded(StreamKind::Control);
        buf[6] = 9;
        assert_eq!(
            decode_preface(&mut buf),
            Err(ProtoError::UnknownStreamKind(9))
        );
    }
}
