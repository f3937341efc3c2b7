//! Portico's QUIC backbone: the long-lived, mutually authenticated links from
//! each PoP to each origin it serves.
//!
//! * [`pki`]: a private CA and node certificates (rcgen), for `portico certs`.
//! * [`tls`]: the rustls/quinn configurations of both ends (mutual TLS, ALPN
//!   [`ALPN`], the ring provider explicitly).
//! * [`server`]: the origin side. Accepts links, answers the handshake, pushes
//!   configuration snapshots and deltas, and turns every request stream into an
//!   `http::Request<Body>` for a [`server::RequestHandler`].
//! * [`client`]: the PoP side. Dials every origin, reconnects with back-off,
//!   keeps per-region link state, merges the origins' snapshots
//!   ([`sync`]) and forwards requests as a gateway [`client::BackboneUpstream`].
//!
//! * `runtime`: both ends drive quinn on tokio with connection drivers that
//!   yield once per wake-up, so the writes of many concurrent streams leave
//!   in a few packets instead of one `sendmsg` each.
//!
//! * [`ControlHandler`]: the hook through which other subsystems (purges,
//!   usage, quota leases, rate shares) use the control stream of each link,
//!   on both ends.
//!
//! Frames, preface and ordering rules are `portico-proto`'s (sans-IO); this
//! crate only drives them over quinn streams. One request is one
//! bidirectional stream; bodies stream both ways under QUIC flow control,
//! and nothing here reads ahead of what its consumer asked for.
//!
//! # Stream error codes
//!
//! A QUIC `RESET_STREAM`/`STOP_SENDING` carries the [`ResetCode`] index
//! (`0` cancelled … `5` protocol, `6` internal), so a stream aborted without a
//! `Reset` frame still says why. Connection close codes are in [`close`].
#![forbid(unsafe_code)]

mod body;
pub mod client;
mod control;
mod error;
mod framed;
pub mod pki;
mod runtime;
pub mod server;
mod settings;
pub mod sync;
pub mod tls;
mod wire;

pub use client::{Backbone, BackboneUpstream, ConfigStatus, LinkState, OriginSpec};
pub use control::{ControlHandler, ControlLink, Outbox};
pub use error::BackboneError;
pub use server::{BackboneServer, Handshakes, RequestHandler, Routed};
pub use settings::{Identity, LinkSettings};
pub use sync::{OriginConfig, Running, SyncedConfig};
pub use tls::{ALPN, TlsMaterial};

use portico_proto::ResetCode;
use quinn::VarInt;

/// Application error codes of `CONNECTION_CLOSE` on a backbone link.
pub mod close {
    use quinn::VarInt;

    /// Orderly shutdown of either end.
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The peer broke the protocol on the control stream.
    pub const PROTOCOL: VarInt = VarInt::from_u32(1);
    /// `Hello` and our versions have nothing in common.
    pub const NO_COMMON_VERSION: VarInt = VarInt::from_u32(2);
    /// The peer's certificate does not name the node id it claims.
    pub const IDENTITY: VarInt = VarInt::from_u32(3);
    /// The handshake did not complete in time.
    pub const HANDSHAKE_TIMEOUT: VarInt = VarInt::from_u32(4);
}

/// The QUIC stream error code for a [`ResetCode`]: its wire index.
pub fn stream_code(code: ResetCode) -> VarInt {
    VarInt::from_u32(code as u32)
}

/// The [`ResetCode`] a QUIC stream error code stands for (`Internal` when unknown).
pub fn reset_code(code: VarInt) -> ResetCode {
    const ALL: [ResetCode; 7] = [
        ResetCode::Cancelled,
        ResetCode::Timeout,
        ResetCode::UpstreamFailed,
        ResetCode::TooLarge,
        ResetCode::Refused,
        ResetCode::Protocol,
        ResetCode::Internal,
    ];
    usize::try_from(code.into_inner())
        .ok()
        .and_then(|i| ALL.get(i).copied())
        .unwrap_or(ResetCode::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_codes_round_trip() {
        for code in [
            ResetCode::Cancelled,
            ResetCode::Timeout,
            ResetCode::UpstreamFailed,
            ResetCode::TooLarge,
            ResetCode::Refused,
            ResetCode::Protocol,
            ResetCode::Internal,
        ] {
            assert_eq!(reset_code(stream_code(code)), code);
        }
        assert_eq!(reset_code(VarInt::from_u32(99)), ResetCode::Internal);
        assert_eq!(stream_code(ResetCode::Protocol).into_inner(), 5);
    }
}
