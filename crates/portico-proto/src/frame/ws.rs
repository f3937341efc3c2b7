//! Frames reserved for WebSocket relaying and authorizer-decision sharing.
//! Defined now so the tags are fixed; their behaviour lands in later issues.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::request::{Principal, RequestHead};

/// Opens a WebSocket stream: the client's upgrade request, forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsOpen {
    /// Id of the client connection, unique per PoP; repeated in every
    /// WebSocket frame so frames are self-describing in logs and so the
    /// origin can address a connection (push) by id.
    pub connection_id: u64,
    pub head: RequestHead,
}

/// One WebSocket message, either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsMessage {
    pub connection_id: u64,
    pub kind: WsKind,
    #[serde(with = "super::request::bytes_serde")]
    pub payload: Bytes,
}

/// WebSocket message type. Wire tag = variant index: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WsKind {
    Text,
    Binary,
    Ping,
    Pong,
    Close,
}

impl WsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Binary => "binary",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Close => "close",
        }
    }
}

/// Closes a WebSocket connection with an RFC 6455 close code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsClose {
    pub connection_id: u64,
    pub code: u16,
    pub reason: String,
}

/// A custom authorizer's decision, shared so PoPs can cache it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizerDecision {
    /// The authorizer's identity-source cache key.
    pub cache_key: String,
    pub principal: Option<Principal>,
    pub allow: bool,
    pub ttl_ms: u32,
    /// Authorizer context passed on to integrations.
    pub context: Vec<(String, String)>,
}
