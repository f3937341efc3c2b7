//! Protocol versions, negotiation and capability bits.
//!
//! Two separate numbers exist on purpose:
//!
//! * [`FRAMING_VERSION`] lives in every stream preface. It covers the parts
//!   that must be understood before any frame can be read: the preface
//!   layout, the length prefix and the bincode configuration. It changes only
//!   for an incompatible change of those, and peers must match exactly.
//! * The *protocol version* (frame set) is negotiated once per link by
//!   `Hello`/`HelloAck` on the control stream, from the ranges both sides
//!   support. It decides which frame kinds may be sent (see
//!   [`crate::FrameKind::since_version`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ProtoError;

/// Version of the preface + length prefix + bincode configuration.
pub const FRAMING_VERSION: u16 = 1;

/// Oldest frame-set version this build can speak.
pub const PROTOCOL_VERSION_MIN: u16 = 1;

/// Newest frame-set version this build can speak.
///
/// * 1: the initial frame set (tags 0–22).
/// * 2: `ConfigRequest` (tag 23): a PoP asks for a full snapshot after a
///   `ConfigDelta` it could not apply.
pub const PROTOCOL_VERSION_MAX: u16 = 2;

/// An inclusive range of protocol versions a node supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl VersionRange {
    /// The range this build supports.
    pub const CURRENT: VersionRange = VersionRange {
        min: PROTOCOL_VERSION_MIN,
        max: PROTOCOL_VERSION_MAX,
    };

    /// Whether `version` lies in the range (an inverted range contains nothing).
    pub fn contains(&self, version: u16) -> bool {
        self.min <= version && version <= self.max
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// Picks the highest version both ranges contain.
///
/// Symmetric, so both ends compute the same answer from the two `Hello`
/// ranges; the acceptor still states its choice in `HelloAck` so the opener
/// never has to guess. An inverted range (min > max) never matches.
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<u16, ProtoError> {
    let high = ours.max.min(theirs.max);
    let low = ours.min.max(theirs.min);
    if low <= high && ours.contains(high) && theirs.contains(high) {
        Ok(high)
    } else {
        Err(ProtoError::NoCommonVersion { ours, theirs })
    }
}

/// Optional features a node offers, as bits. Unknown bits from a newer peer
/// are kept and ignored; the effective set of a link is the intersection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// Origin pushes `ConfigDelta` (otherwise only full snapshots); the PoP
    /// answers one it cannot apply with `ConfigRequest` (version 2).
    pub const CONFIG_DELTA: Capabilities = Capabilities(1 << 0);
    /// Quota enforced at PoPs through leases (`QuotaLease*` frames).
    pub const QUOTA_LEASES: Capabilities = Capabilities(1 << 1);
    /// WebSocket streams (`WsOpen`, `WsMessage`, `WsClose`).
    pub const WEBSOCKET: Capabilities = Capabilities(1 << 2);
    /// Origin shares custom-authorizer decisions for PoP caching.
    pub const AUTHORIZER_CACHE: Capabilities = Capabilities(1 << 3);
    /// Origin shares throttle rates (`RateShare`).
    pub const RATE_SHARE: Capabilities = Capabilities(1 << 4);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The features both sides offer.
    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }

    /// The union of two sets.
    pub fn with(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    #[test]
    fn picks_highest_common() {
        assert_eq!(negotiate(r(1, 3), r(2, 5)).unwrap(), 3);
        assert_eq!(negotiate(r(2, 5), r(1, 3)).unwrap(), 3);
        assert_eq!(negotiate(r(1, 1), r(1, 1)).unwrap(), 1);
        assert_eq!(
            negotiate(VersionRange::CURRENT, VersionRange::CURRENT).unwrap(),
            2
        );
        // A version-1 peer still gets a link, without version-2 frames.
        assert_eq!(negotiate(VersionRange::CURRENT, r(1, 1)).unwrap(), 1);
    }

    #[test]
    fn disjoint_ranges_fail() {
        let err = negotiate(r(1, 2), r(3, 4)).unwrap_err();
        assert_eq!(
            err,
            ProtoError::NoCommonVersion {
                ours: r(1, 2),
                theirs: r(3, 4)
            }
        );
        assert!(negotiate(r(3, 4), r(1, 2)).is_err());
    }

    #[test]
    fn inverted_ranges_never_match() {
        assert!(negotiate(r(1, 10), r(5, 3)).is_err());
        assert!(negotiate(r(4, 2), r(1, 10)).is_err());
        assert!(negotiate(r(u16::MAX, 0), r(0, u16::MAX)).is_err());
    }

    #[test]
    fn capabilities_intersect() {
        let ours = Capabilities::WEBSOCKET.with(Capabilities::CONFIG_DELTA);
        let theirs = Capabilities::WEBSOCKET.with(Capabilities(1 << 63));
        let link = ours.intersect(theirs);
        assert!(link.contains(Capabilities::WEBSOCKET));
        assert!(!link.contains(Capabilities::CONFIG_DELTA));
    }
}
