//! Bounds on the strings and lists of control frames.
//!
//! A control frame may be 16 MiB (a configuration snapshot is one), so a
//! string in one could be too, and every node logs, stores or answers with
//! what its peer sent. [`check`] holds each field to what a node can
//! legitimately send: the codec refuses a frame over them on encode (the
//! frame is not sent) and on decode ([`ProtoError::OverLimit`], a protocol
//! error that closes the link). The names are bounded where they are made
//! too: `portico-config` accepts no API, stage or plan name and no key id
//! longer than [`MAX_ID`], and no route path that would make a scope longer
//! than [`MAX_SCOPE`]; the admin API no purge tag list beyond [`MAX_TAGS`]
//! of [`MAX_TAG_LEN`]. Nothing makes authorizer decisions yet: whatever
//! does must refuse an authorizer's output over [`MAX_PRINCIPAL_ID`] or
//! [`MAX_AUTHORIZER_CONTEXT`] where it reads it (API Gateway answers the
//! client `500 {"message": null}` for an authorizer's bad output), and key
//! a longer cache key by a digest, rather than leave either to the codec.

use crate::error::ProtoError;
use crate::frame::{
    AuthorizerDecision, Frame, FrameKind, Hello, HelloAck, PurgeScope, QuotaLease,
    QuotaLeaseRequest,
};

/// Longest node id, region, API, stage or plan name, key id (bytes).
pub const MAX_ID: usize = 128;

/// Longest rate scope (`route:API/STAGE/METHOD PATH` and the rest), in
/// bytes: two names, a method and a route path of at most
/// [`MAX_ROUTE_PATH`].
pub const MAX_SCOPE: usize = 2048;

/// Longest route path template a scope may carry (bytes).
pub const MAX_ROUTE_PATH: usize = 1024;

/// Longest `GoAway`, `ConfigRequest` or `Reset` reason (bytes).
pub const MAX_REASON: usize = 1024;

/// Longest `WsClose` reason (bytes): what a WebSocket close frame carries
/// (RFC 6455 §5.5: 125 bytes of payload, 2 of them the code).
pub const MAX_WS_CLOSE_REASON: usize = 123;

/// `reason` cut to at most `max` bytes, at a character boundary: what a
/// node sends of an error's text in a reason field.
pub fn truncate_reason(mut reason: String, max: usize) -> String {
    if reason.len() > max {
        let mut end = max;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Most tags in one purge, and the longest tag (bytes).
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 256;

/// Longest purged URL (`api/stage/path?query`) or path prefix (bytes): more
/// than an admin request (64 KiB at most) can name.
pub const MAX_PURGE_PATH: usize = 128 * 1024;

/// Longest cache key of an authorizer decision (bytes): the identity
/// sources it is cached under, as API Gateway caches a Lambda authorizer's
/// result; whoever makes the decision keys longer ones by a digest.
pub const MAX_AUTHORIZER_CACHE_KEY: usize = 8 * 1024;

/// Longest principal id of an authorizer decision (bytes): an authorizer's
/// `principalId` or a token's subject, which nothing else bounds (an e-mail
/// address may take 254 bytes, a URI more).
pub const MAX_PRINCIPAL_ID: usize = 1024;

/// Most an authorizer decision's context may take (bytes), its `context`
/// and its principal's `claims` together, each entry counted by
/// [`authorizer_context_size`]: 8 KiB, API Gateway's quota on a Lambda
/// authorizer's response. A context whose JSON object takes at most that
/// fits, whatever its values' types (flat string, number and boolean
/// values, as API Gateway takes them).
pub const MAX_AUTHORIZER_CONTEXT: usize = 8 * 1024;

/// What an entry of an authorizer context counts beyond its key and value:
/// the least JSON takes around them (`"":` and a comma), so that entries
/// with empty keys and values, which take nothing else, count too.
pub const CONTEXT_ENTRY_OVERHEAD: usize = 4;

/// What `entries` count against [`MAX_AUTHORIZER_CONTEXT`]: each entry's
/// key and value and [`CONTEXT_ENTRY_OVERHEAD`]. For whoever makes a
/// decision, to refuse an authorizer's output over the limit before the
/// codec would.
pub fn authorizer_context_size(entries: &[(String, String)]) -> usize {
    entries.iter().fold(0, |sum, (key, value)| {
        sum.saturating_add(key.len() + value.len() + CONTEXT_ENTRY_OVERHEAD)
    })
}

/// Most bytes a `UsageReport` frame may take (its payload). A PoP sends its
/// demand in frames of at most [`USAGE_ENTRIES_PER_FRAME`] entries, which
/// stay under it whatever their scopes (each at most [`MAX_SCOPE`]).
pub const MAX_USAGE_REPORT: usize = 1 << 20;

/// Most entries a PoP puts in one `UsageReport`.
pub const USAGE_ENTRIES_PER_FRAME: usize = 256;

/// Most bytes a `Purge` frame may take: its URL or prefix
/// ([`MAX_PURGE_PATH`]) or its tags, and names.
pub const MAX_PURGE_FRAME: usize = 256 * 1024;

/// Most bytes any other control frame may take (hellos, quota frames, rate
/// shares, pings, go-aways, authorizer decisions...): all are a few fields
/// bounded above.
pub const MAX_SMALL_FRAME: usize = 64 * 1024;

/// The most a frame of `kind` may take (its payload), where that is less
/// than its stream's frame limit: checked on encode, and on decode *before*
/// the payload is decoded. The field limits above are checked only once a
/// frame is decoded, and decoding itself allocates for what the payload
/// holds: a 16 MiB control frame of empty strings (one byte each on the
/// wire) would decode into 16 million `String`s, 384 MiB, before any check.
/// Configuration frames are as large as the configuration (and come from the
/// origin the PoP takes its definitions from anyway); request and WebSocket
/// stream frames have their streams' own, smaller limits.
pub fn max_payload(kind: FrameKind) -> Option<usize> {
    use FrameKind as K;
    match kind {
        _ if !kind.is_control() => None,
        K::ConfigSnapshot | K::ConfigDelta => None,
        K::UsageReport => Some(MAX_USAGE_REPORT),
        K::Purge => Some(MAX_PURGE_FRAME),
        _ => Some(MAX_SMALL_FRAME),
    }
}

/// Whether a payload of `len` bytes may be a frame of `kind`.
pub(crate) fn check_payload(kind: FrameKind, len: usize) -> Result<(), ProtoError> {
    match max_payload(kind) {
        Some(max) => Check(kind).count("frame", len, max),
        None => Ok(()),
    }
}

/// Whether `frame`'s fields are within the limits above. Frames of the
/// other streams have limits of their own (header counts, the head codec),
/// besides their reasons' here.
pub(crate) fn check(frame: &Frame) -> Result<(), ProtoError> {
    let c = Check(frame.kind());
    match frame {
        Frame::Hello(Hello {
            node_id, region, ..
        })
        | Frame::HelloAck(HelloAck {
            node_id, region, ..
        }) => {
            c.len("node_id", node_id, MAX_ID)?;
            c.len("region", region, MAX_ID)
        }
        Frame::ConfigDelta(d) => d
            .changed
            .iter()
            .try_for_each(|(api, _)| c.len("api", api, MAX_ID)),
        Frame::ConfigRequest(r) => c.len("reason", &r.reason, MAX_REASON),
        Frame::Purge(p) => c.purge(&p.scope),
        Frame::UsageReport(r) => {
            c.len("pop_id", &r.pop_id, MAX_ID)?;
            r.entries
                .iter()
                .try_for_each(|e| c.len("scope", &e.scope, MAX_SCOPE))
        }
        Frame::QuotaLeaseRequest(QuotaLeaseRequest { key_id, plan, .. })
        | Frame::QuotaLease(QuotaLease { key_id, plan, .. }) => {
            c.len("key_id", key_id, MAX_ID)?;
            c.len("plan", plan, MAX_ID)
        }
        Frame::RateShare(s) => c.len("scope", &s.scope, MAX_SCOPE),
        Frame::GoAway(g) => c.len("reason", &g.reason, MAX_REASON),
        Frame::Reset(r) => c.len("reason", &r.reason, MAX_REASON),
        Frame::WsClose(w) => c.len("reason", &w.reason, MAX_WS_CLOSE_REASON),
        Frame::AuthorizerDecision(d) => c.decision(d),
        _ => Ok(()),
    }
}

/// The checks of one frame's fields.
struct Check(FrameKind);

impl Check {
    fn len(&self, field: &'static str, value: &str, max: usize) -> Result<(), ProtoError> {
        self.count(field, value.len(), max)
    }

    fn count(&self, field: &'static str, len: usize, max: usize) -> Result<(), ProtoError> {
        if len > max {
            return Err(ProtoError::OverLimit {
                kind: self.0,
                field,
                len,
                max,
            });
        }
        Ok(())
    }

    fn purge(&self, scope: &PurgeScope) -> Result<(), ProtoError> {
        match scope {
            PurgeScope::Url(url) => self.len("url", url, MAX_PURGE_PATH),
            PurgeScope::Prefix {
                api,
                stage,
                path_prefix,
            } => {
                self.len("api", api, MAX_ID)?;
                self.len("stage", stage, MAX_ID)?;
                self.len("path_prefix", path_prefix, MAX_PURGE_PATH)
            }
            PurgeScope::Tag { api, tags } => {
                self.len("api", api, MAX_ID)?;
                self.count("tags", tags.len(), MAX_TAGS)?;
                tags.iter()
                    .try_for_each(|t| self.len("tag", t, MAX_TAG_LEN))
            }
            PurgeScope::Stage { api, stage } => {
                self.len("api", api, MAX_ID)?;
                self.len("stage", stage, MAX_ID)
            }
            PurgeScope::All => Ok(()),
        }
    }

    fn decision(&self, d: &AuthorizerDecision) -> Result<(), ProtoError> {
        self.len("cache_key", &d.cache_key, MAX_AUTHORIZER_CACHE_KEY)?;
        let mut context = authorizer_context_size(&d.context);
        if let Some(p) = &d.principal {
            self.len("principal_kind", &p.kind, MAX_ID)?;
            self.len("principal_id", &p.id, MAX_PRINCIPAL_ID)?;
            context = context.saturating_add(authorizer_context_size(&p.claims));
        }
        self.count("context", context, MAX_AUTHORIZER_CONTEXT)
    }
}
