//! Control-stream frames: link handshake, configuration, purges, usage and
//! quota state, liveness and shutdown.

use serde::{Deserialize, Serialize};

use crate::version::{Capabilities, VersionRange};

/// Which side of the backbone a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Pop,
    Origin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pop => "pop",
            Self::Origin => "origin",
        }
    }
}

/// First frame on the control stream, sent by the side that opened the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: String,
    pub role: Role,
    pub region: String,
    /// Protocol (frame-set) versions the sender can speak.
    pub versions: VersionRange,
    pub capabilities: Capabilities,
}

/// The acceptor's answer to [`Hello`]: the version and capabilities in force
/// for the rest of the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub chosen_version: u16,
    pub node_id: String,
    pub role: Role,
    pub region: String,
    /// Intersection of both sides' capabilities.
    pub capabilities: Capabilities,
}

/// A complete set of API definitions. PoPs replace their whole snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    pub version: u64,
    /// SHA-256 of `definitions`, so a PoP can verify and report what it runs.
    pub hash: [u8; 32],
    /// TOML text of the API definitions (parsed by portico-config).
    pub definitions: String,
}

/// Changes between two snapshot versions, per API.
///
/// A PoP rebuilds the definitions text of `to_version` from the one it runs:
/// each `Some` replaces the API of that name in place (or is appended when
/// there is none), each `None` removes one. `to_version` is the version of
/// the resulting text (FNV-1a of its bytes, like [`ConfigSnapshot::version`]),
/// so the rebuild is verified byte for byte; the SHA-256 the PoP then
/// reports is the one a snapshot of that version would carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDelta {
    /// A PoP not at exactly this version ignores the delta and asks for
    /// a full snapshot ([`ConfigRequest`]).
    pub from_version: u64,
    pub to_version: u64,
    /// `(api name, Some(TOML of that API))` for added or changed APIs,
    /// `(api name, None)` for removed ones.
    pub changed: Vec<(String, Option<String>)>,
}

/// A PoP asks for a full [`ConfigSnapshot`]: it could not apply a delta
/// (not at its `from_version`, invalid, or rebuilt to another version).
/// Since protocol version 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequest {
    /// The version the PoP runs for this origin (`None`: no snapshot yet).
    pub have_version: Option<u64>,
    /// Why, for the origin's log.
    pub reason: String,
}

/// Invalidate cached responses at a PoP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purge {
    /// Echoed in [`PurgeAck`] so the origin knows which PoPs are done.
    pub purge_id: u64,
    pub scope: PurgeScope,
}

/// What a purge removes. Wire tag = variant index: append only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PurgeScope {
    /// One exact URL (as the cache key's URL part).
    Url(String),
    Prefix {
        api: String,
        stage: String,
        path_prefix: String,
    },
    Tag {
        api: String,
        tags: Vec<String>,
    },
    Stage {
        api: String,
        stage: String,
    },
    All,
}

impl PurgeScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Prefix { .. } => "prefix",
            Self::Tag { .. } => "tag",
            Self::Stage { .. } => "stage",
            Self::All => "all",
        }
    }
}

/// A PoP finished a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeAck {
    pub purge_id: u64,
}

/// Requests a PoP saw per shared rate since `window_start_unix_ms` (its
/// demand, accepted or not): the origin shares each rate out by demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub pop_id: String,
    pub window_start_unix_ms: u64,
    pub entries: Vec<UsageEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    /// The rate's scope, as in [`RateShare::scope`].
    pub scope: String,
    pub used: u64,
}

/// A PoP asks for a block of quota for one key, optionally handing back the
/// unused part of its previous lease in the same message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLeaseRequest {
    pub key_id: String,
    pub plan: String,
    pub want: u64,
    pub lease_id_to_return: Option<u64>,
    /// Unused requests of `lease_id_to_return` (0 if none).
    pub unused: u64,
}

/// The origin grants (part of) a quota request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLease {
    pub lease_id: u64,
    pub key_id: String,
    pub plan: String,
    pub granted: u64,
    /// The PoP must stop using the lease after this instant.
    pub expires_unix_ms: u64,
    /// End of the plan's quota period (day/week/month).
    pub period_end_unix_ms: u64,
    /// The key has no quota left this period: answer 429 until `period_end`.
    pub exhausted: bool,
}

/// A PoP hands back the unused rest of a lease (e.g. on shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaReturn {
    pub lease_id: u64,
    pub unused: u64,
}

/// The origin tells a PoP its share of a throttle limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateShare {
    /// The rate: `stage:API/STAGE`, `route:API/STAGE/METHOD PATH`,
    /// `key:PLAN/KEY_ID` (one key of a plan), or `plan:PLAN` (the share of
    /// every key of the plan that has none of its own).
    pub scope: String,
    /// Requests per second in thousandths (integers keep encoding exact).
    pub rate_milli_per_sec: u64,
    pub burst: u64,
}

/// Liveness probe; the peer answers [`Pong`] with the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
}

/// The sender will open no new streams and asks the peer to do the same;
/// streams already open finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    pub reason: String,
    /// Highest stream id the sender will still process (a hint for logs and
    /// retries; QUIC itself enforces stream limits).
    pub last_stream_hint: u64,
}
