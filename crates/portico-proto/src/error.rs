//! The one error type of the crate.
//!
//! Every way the bytes from a peer can be wrong maps to a variant here, so a
//! caller can decide per variant whether to reset one stream or tear down the
//! whole link. Decoding never panics; it returns one of these.

use crate::frame::FrameKind;
use crate::version::VersionRange;

/// Everything that can go wrong while framing, decoding or sequencing frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The stream did not start with the `PRTC` magic: not a Portico peer, or
    /// a desynchronised stream. `found` holds the bytes seen so far (1..=4).
    #[error(
        "bad preface magic {found:02x?}, expected {:02x?}",
        crate::preface::MAGIC
    )]
    BadMagic { found: Vec<u8> },

    /// The preface names a framing version this build does not speak.
    #[error("framing version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },

    /// The stream-kind byte of the preface is not a known [`crate::StreamKind`].
    #[error("unknown stream kind byte {0:#04x}")]
    UnknownStreamKind(u8),

    /// A length prefix (or a frame about to be encoded) exceeds the
    /// configured maximum. Detected before any allocation for the payload.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: u64, max: u32 },

    /// A zero length prefix: no frame encodes to zero bytes.
    #[error("empty frame (length prefix 0)")]
    EmptyFrame,

    /// The frame's variant tag is not one this build knows.
    #[error("unknown frame type tag {0}")]
    UnknownFrameType(u32),

    /// The payload did not decode as the frame its tag announced.
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },

    /// The payload decoded but left bytes unread: the peer encodes a layout
    /// we do not know, which we refuse rather than silently ignore.
    #[error("{extra} trailing bytes after a {kind:?} frame")]
    TrailingBytes { kind: FrameKind, extra: usize },

    /// A control frame's field is longer (or a list holds more) than
    /// [`crate::limits`] allows: refused on encode and on decode.
    #[error("{field} of a {kind} frame is {len} long, over the limit of {max}")]
    OverLimit {
        kind: FrameKind,
        field: &'static str,
        len: usize,
        max: usize,
    },

    /// Serialising a frame failed (should not happen for well-formed frames).
    #[error("cannot encode frame: {0}")]
    Encode(String),

    /// A codec was configured with a maximum frame size outside the
    /// supported range.
    #[error("invalid maximum frame size {requested}: must be within {min}..={max}")]
    InvalidMaxFrame { requested: u32, min: u32, max: u32 },

    /// Version negotiation found no version both peers support.
    #[error("no common protocol version: ours {ours}, theirs {theirs}")]
    NoCommonVersion {
        ours: VersionRange,
        theirs: VersionRange,
    },

    /// A frame kind introduced after the negotiated protocol version.
    #[error("{kind:?} frames need protocol version {since}, link speaks {negotiated}")]
    FrameNotInVersion {
        kind: FrameKind,
        since: u16,
        negotiated: u16,
    },

    /// A frame arrived out of order for the stream it was read from.
    #[error("unexpected {got:?} frame, expected {expected}")]
    UnexpectedFrame {
        expected: &'static str,
        got: FrameKind,
    },

    /// The stream ended (QUIC FIN) before its terminating frame: for a
    /// response this means the body is truncated.
    #[error("stream ended early, expected {expected}")]
    UnexpectedEndOfStream { expected: &'static str },
}

impl ProtoError {
    /// A short stable word for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BadMagic { .. } => "bad_magic",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::UnknownStreamKind(_) => "unknown_stream_kind",
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::EmptyFrame => "empty_frame",
            Self::UnknownFrameType(_) => "unknown_frame_type",
            Self::Malformed { .. } => "malformed",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::OverLimit { .. } => "over_limit",
            Self::Encode(_) => "encode",
            Self::InvalidMaxFrame { .. } => "invalid_max_frame",
            Self::NoCommonVersion { .. } => "no_common_version",
            Self::FrameNotInVersion { .. } => "frame_not_in_version",
            Self::UnexpectedFrame { .. } => "unexpected_frame",
            Self::UnexpectedEndOfStream { .. } => "unexpected_end_of_stream",
        }
    }
}
