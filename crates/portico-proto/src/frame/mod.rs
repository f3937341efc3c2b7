//! The frame set of the backbone.
//!
//! [`Frame`]'s variant index is its wire tag (bincode writes it as a varint
//! before the variant's fields). **Never reorder, remove or insert
//! variants; add new ones only at the end**, give them a
//! [`FrameKind::since_version`] above the current maximum, and bump
//! [`crate::PROTOCOL_VERSION_MAX`]. Changing the fields of an existing
//! variant is a new variant, not an edit: bincode has no field names, so a
//! layout change is invisible to old peers until it corrupts them.

mod control;
mod head_ref;
mod request;
mod ws;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use control::{
    ConfigDelta, ConfigRequest, ConfigSnapshot, GoAway, Hello, HelloAck, Ping, Pong, Purge,
    PurgeAck, PurgeScope, QuotaLease, QuotaLeaseRequest, QuotaReturn, RateShare, Role, UsageEntry,
    UsageReport,
};
pub use head_ref::{HeadersRef, PrincipalRef, RequestHeadRef, ResponseHeadRef, TlsInfoRef};
pub use request::{
    ClientAddr, End, Headers, MAX_HEADER_FIELDS, Principal, RequestHead, Reset, ResetCode,
    ResponseHead, TlsInfo,
};
pub use ws::{AuthorizerDecision, WsClose, WsKind, WsMessage, WsOpen};

use crate::preface::StreamKind;

/// Declares [`Frame`] and [`FrameKind`] from one list, so that the kinds,
/// their wire order and their log names cannot drift apart.
macro_rules! frames {
    ($($(#[$doc:meta])* $name:ident($(#[$field:meta])* $ty:ty) => $word:literal,)*) => {
        /// One unit on the wire. Variant order is the wire tag: append only.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Frame {
            $($(#[$doc])* $name($(#[$field])* $ty),)*
        }

        /// The variant of a [`Frame`] without its data: for logs, errors and
        /// ordering checks. Same order as [`Frame`], so `kind as u32` is the tag.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FrameKind {
            $($name,)*
        }

        impl Frame {
            /// Which variant this is.
            pub fn kind(&self) -> FrameKind {
                match self {
                    $(Self::$name(_) => FrameKind::$name,)*
                }
            }
        }

        impl FrameKind {
            /// Every kind, in tag order.
            pub const ALL: [FrameKind; [$($word),*].len()] = [$(FrameKind::$name),*];

            /// A stable word for logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$name => $word,)*
                }
            }
        }
    };
}

frames! {
    /// 0
    Hello(Hello) => "hello",
    /// 1
    HelloAck(HelloAck) => "hello_ack",
    /// 2
    RequestHead(Box<RequestHead>) => "request_head",
    /// 3: a piece of a request or response body (any size up to the frame
    /// limit; see [`crate::Codec::split_body`]).
    BodyChunk(#[serde(with = "request::bytes_serde")] Bytes) => "body_chunk",
    /// 4
    End(End) => "end",
    /// 5
    Reset(Reset) => "reset",
    /// 6
    ResponseHead(ResponseHead) => "response_head",
    /// 7
    ConfigSnapshot(ConfigSnapshot) => "config_snapshot",
    /// 8
    ConfigDelta(ConfigDelta) => "config_delta",
    /// 9
    Purge(Purge) => "purge",
    /// 10
    PurgeAck(PurgeAck) => "purge_ack",
    /// 11
    UsageReport(UsageReport) => "usage_report",
    /// 12
    QuotaLeaseRequest(QuotaLeaseRequest) => "quota_lease_request",
    /// 13
    QuotaLease(QuotaLease) => "quota_lease",
    /// 14
    QuotaReturn(QuotaReturn) => "quota_return",
    /// 15
    RateShare(RateShare) => "rate_share",
    /// 16
    Ping(Ping) => "ping",
    /// 17
    Pong(Pong) => "pong",
    /// 18
    GoAway(GoAway) => "go_away",
    /// 19
    WsOpen(Box<WsOpen>) => "ws_open",
    /// 20
    WsMessage(WsMessage) => "ws_message",
    /// 21
    WsClose(WsClose) => "ws_close",
    /// 22
    AuthorizerDecision(AuthorizerDecision) => "authorizer_decision",
    /// 23 (protocol version 2)
    ConfigRequest(ConfigRequest) => "config_request",
}

impl FrameKind {
    /// The wire tag (variant index).
    pub fn tag(self) -> u32 {
        self as u32
    }

    /// The kind for a wire tag, `None` for a tag this build does not know.
    pub fn from_tag(tag: u32) -> Option<FrameKind> {
        usize::try_from(tag)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// First protocol version in which this kind may be sent.
    pub fn since_version(self) -> u16 {
        // New kinds get the version that introduced them here.
        match self {
            FrameKind::ConfigRequest => 2,
            _ => 1,
        }
    }

    /// Whether this kind may appear on a stream of `stream` kind. Ordering
    /// within a stream is checked by [`crate::stream`].
    pub fn allowed_on(self, stream: StreamKind) -> bool {
        use FrameKind as K;
        match stream {
            StreamKind::Request => matches!(
                self,
                K::RequestHead | K::BodyChunk | K::End | K::Reset | K::ResponseHead
            ),
            StreamKind::WebSocket => matches!(
                self,
                K::WsOpen | K::ResponseHead | K::WsMessage | K::WsClose | K::Reset
            ),
            StreamKind::Control => self.is_control(),
        }
    }

    /// Whether this kind travels on the control stream.
    pub(crate) fn is_control(self) -> bool {
        use FrameKind as K;
        !matches!(
            self,
            K::RequestHead
                | K::BodyChunk
                | K::End
                | K::Reset
                | K::ResponseHead
                | K::WsOpen
                | K::WsMessage
                | K::WsClose
        )
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_tag_order() {
        for (i, kind) in FrameKind::ALL.iter().enumerate() {
            assert_eq!(kind.tag() as usize, i);
            assert_eq!(FrameKind::from_tag(i as u32), Some(*kind));
        }
        assert_eq!(FrameKind::from_tag(FrameKind::ALL.len() as u32), None);
        assert_eq!(FrameKind::from_tag(u32::MAX), None);
    }

    /// The wire tags of docs/PROTOCOL.md: a reordered or removed kind fails here.
    #[test]
    fn tags_are_pinned() {
        let names = [
            "hello",
            "hello_ack",
            "request_head",
            "body_chunk",
            "end",
            "reset",
            "response_head",
            "config_snapshot",
            "config_delta",
            "purge",
            "purge_ack",
            "usage_report",
            "quota_lease_request",
            "quota_lease",
            "quota_return",
            "rate_share",
            "ping",
            "pong",
            "go_away",
            "ws_open",
            "ws_message",
            "ws_close",
            "authorizer_decision",
            "config_request",
        ];
        assert_eq!(FrameKind::ALL.map(FrameKind::as_str), names);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = FrameKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FrameKind::ALL.len());
    }

    #[test]
    fn every_kind_belongs_to_some_stream() {
        let streams = [
            StreamKind::Control,
            StreamKind::Request,
            StreamKind::WebSocket,
        ];
        for kind in FrameKind::ALL {
            assert!(streams.iter().any(|s| kind.allowed_on(*s)), "{kind}");
        }
        assert!(FrameKind::Ping.allowed_on(StreamKind::Control));
        assert!(!FrameKind::Ping.allowed_on(StreamKind::Request));
        assert!(!FrameKind::BodyChunk.allowed_on(StreamKind::Control));
    }
}
