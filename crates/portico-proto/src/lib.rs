//! Portico backbone wire protocol: frames and a sans-IO codec.
//!
//! A PoP keeps one QUIC connection to each origin it serves. This crate
//! defines what travels on that connection's streams and how it is framed.
//! It performs no I/O: drivers feed it bytes and write out what it encodes,
//! so every rule here is tested without a network. The byte-level
//! specification is `docs/PROTOCOL.md` at the repository root.
//!
//! # Streams and preface
//!
//! Every QUIC stream, in each direction that sends anything, starts with a
//! 7-byte [`Preface`]: magic `b"PRTC"`, the framing version (`u16`
//! big-endian, [`FRAMING_VERSION`]) and a [`StreamKind`] byte
//! (`0` control, `1` request, `2` WebSocket). It is per stream, not per
//! link, because QUIC streams arrive independently and each must be
//! checkable on its own. Bad magic, another framing version or an unknown
//! kind are errors ([`ProtoError::BadMagic`], [`ProtoError::VersionMismatch`],
//! [`ProtoError::UnknownStreamKind`]).
//!
//! * **Control** (one per link, opened by the PoP): `Hello` → `HelloAck`,
//!   then configuration, purges, usage, quota, rate shares, ping, go-away.
//! * **Request** (one per forwarded request, bidirectional).
//! * **WebSocket** (one per relayed client connection).
//!
//! # Framing
//!
//! After the preface: frames, each a `u32` big-endian payload length then
//! the payload, which is `bincode 2` (serde, `config::standard()`: varint
//! integers, little-endian) of a [`Frame`]. The payload starts with the
//! frame's variant index as a varint: the wire tag. A length above the
//! codec's maximum ([`DEFAULT_MAX_FRAME`] = 1 MiB, at most
//! [`MAX_FRAME_LIMIT`]) is rejected from the 4 prefix bytes alone, before
//! anything is allocated; bodies are split into `BodyChunk`s that fit
//! ([`Codec::split_body`]). A buffer holding less than a whole frame
//! decodes to `Ok(None)` ("need more"). Unknown tags, malformed or
//! over-long payloads and trailing bytes are errors, never panics; so are
//! control frames whose strings or lists exceed [`limits`] (both ways).
//!
//! # Ordering
//!
//! [`stream::HalfStream`] checks each half of a request stream:
//! `RequestHead BodyChunk* (End | Reset)` one way and
//! `ResponseHead BodyChunk* (End | Reset)` back; a FIN before `End`/`Reset`
//! is a truncated body. [`stream::ControlStream`] checks that the control
//! stream starts with the handshake.
//!
//! # Versioning
//!
//! The framing version changes only if the preface, the length prefix or
//! the bincode configuration change; peers must match exactly. The frame
//! set has a protocol version negotiated per link ([`negotiate`]: highest
//! version in both `Hello` ranges). The [`Frame`] variant index is the wire
//! tag, so variants are only ever appended, each with
//! [`FrameKind::since_version`]; a [`Codec`] set to the negotiated version
//! refuses to send or accept newer kinds. A changed layout of an existing
//! frame is a new variant.
//!
//! # Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use portico_proto::{Codec, Frame, Ping, StreamKind, decode_preface, encode_preface};
//!
//! let codec = Codec::new();
//! let mut wire = BytesMut::new();
//! encode_preface(StreamKind::Control, &mut wire);
//! codec.encode(&Frame::Ping(Ping { nonce: 42 }), &mut wire)?;
//!
//! // The receiver may see the bytes in any number of pieces.
//! let mut rx = BytesMut::from(&wire[..3]);
//! assert_eq!(decode_preface(&mut rx)?, None); // need more
//! rx.extend_from_slice(&wire[3..]);
//! assert_eq!(decode_preface(&mut rx)?.map(|p| p.kind), Some(StreamKind::Control));
//! assert_eq!(codec.decode(&mut rx)?, Some(Frame::Ping(Ping { nonce: 42 })));
//! assert_eq!(codec.decode(&mut rx)?, None);
//!
//! // Bodies go out as chunks that each fit one frame.
//! let chunks = codec.split_body(Bytes::from(vec![0u8; 3 << 20])).count();
//! assert_eq!(chunks, 4);
//! # Ok::<(), portico_proto::ProtoError>(())
//! ```

#![forbid(unsafe_code)]

mod codec;
mod error;
mod frame;
pub mod limits;
mod preface;
pub mod stream;
mod version;

#[cfg(test)]
mod arb;

pub use codec::{
    BODY_CHUNK_OVERHEAD, BodyChunks, Codec, DEFAULT_MAX_FRAME, LENGTH_PREFIX_LEN, MAX_FRAME_LIMIT,
    MIN_MAX_FRAME, encoded_len,
};
pub use error::ProtoError;
pub use frame::*;
pub use preface::{MAGIC, PREFACE_LEN, Preface, StreamKind, decode_preface, encode_preface};
pub use version::{
    Capabilities, FRAMING_VERSION, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, VersionRange,
    negotiate,
};
