//! What an origin pushes to one PoP when its definitions change: a full
//! snapshot, or a delta when the PoP can take one.
//!
//! A link remembers the definitions it last pushed. After a reload it sends
//! a `ConfigDelta` from those to the new ones when the link negotiated
//! `CONFIG_DELTA` at protocol version 2 or later (so the PoP can answer
//! `ConfigRequest`) and the definitions allow one ([`Definitions::delta_to`]:
//! only APIs changed, the order kept, and the changes smaller than the
//! snapshot); otherwise, and always first on a new link, a `ConfigSnapshot`.
//! A PoP that could not apply a delta asks with `ConfigRequest` and gets a
//! snapshot, unless the last thing pushed already was a snapshot of the
//! current version (so a PoP cannot make the origin send snapshots in a loop).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use portico_config::{Definitions, NoDelta};
use portico_proto::{Capabilities, ConfigDelta, ConfigRequest, ConfigSnapshot, Frame, FrameKind};
use sha2::{Digest, Sha256};

use crate::BackboneError;
use crate::framed::FrameWriter;
use crate::sync::Via;

/// A delta between two versions, or why there is none.
type Planned = Arc<Result<ConfigDelta, NoDelta>>;

/// Deltas computed recently, by (from, to) version: every PoP that ran the
/// previous version gets the same frame, computed once per reload.
#[derive(Default)]
pub(crate) struct DeltaCache {
    recent: Mutex<VecDeque<(u64, u64, Planned)>>,
}

/// Versions kept in a [`DeltaCache`] (PoPs may lag by a reload or two).
const CACHED_DELTAS: usize = 4;

impl DeltaCache {
    fn get(&self, from: &Definitions, to: &Definitions) -> Planned {
        let key = (from.version, to.version);
        {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((.., hit)) = recent.iter().find(|(f, t, _)| (*f, *t) == key) {
                return Arc::clone(hit);
            }
        }
        // Computed outside the lock: two links may compute the same one at
        // once, which is only wasted work.
        let delta = from.delta_to(to).map(|changed| ConfigDelta {
            from_version: from.version,
            to_version: to.version,
            changed,
        });
        let delta = Arc::new(delta);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= CACHED_DELTAS {
            recent.pop_front();
        }
        recent.push_back((key.0, key.1, Arc::clone(&delta)));
        delta
    }
}

/// Why a link got a full snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The first push on a link.
    Connect,
    /// The PoP asked (a delta it could not apply).
    Requested,
    /// The link did not negotiate deltas.
    NotNegotiated,
    /// The definitions did not allow one.
    NoDelta(NoDelta),
}

impl Full {
    fn as_str(self) -> &'static str {
        match self {
            Full::Connect => "connect",
            Full::Requested => "requested",
            Full::NotNegotiated => "not_negotiated",
            Full::NoDelta(why) => why.as_str(),
        }
    }
}

/// The configuration state of one link.
pub(crate) struct ConfigPush {
    pop_id: Arc<str>,
    /// Deltas may be sent: `CONFIG_DELTA` negotiated, and a version in
    /// which the PoP can answer with `ConfigRequest`.
    deltas: bool,
    /// What was pushed last, and how.
    pushed: Option<(Arc<Definitions>, Via)>,
    /// The PoP asked for a snapshot that was not sent yet.
    requested: bool,
}

impl ConfigPush {
    pub(crate) fn new(pop_id: &str, capabilities: Capabilities, version: u16) -> Self {
        ConfigPush {
            pop_id: Arc::from(pop_id),
            deltas: capabilities.contains(Capabilities::CONFIG_DELTA)
                && version >= FrameKind::ConfigRequest.since_version(),
            pushed: None,
            requested: false,
        }
    }

    /// Pushes what the PoP needs to run `current`, if anything.
    pub(crate) fn sync(
        &mut self,
        w: &mut FrameWriter,
        current: &Arc<Definitions>,
        cache: &DeltaCache,
    ) -> Result<(), BackboneError> {
        let full = match &self.pushed {
            None => Full::Connect,
            _ if self.requested => Full::Requested,
            Some((defs, _)) if defs.version == current.version => return Ok(()),
            Some(_) if !self.deltas => Full::NotNegotiated,
            Some((defs, _)) => match &*cache.get(defs, current) {
                Ok(delta) => return self.push_delta(w, current, delta),
                Err(why) => Full::NoDelta(*why),
            },
        };
        self.requested = false;
        // Recorded even if the push fails: the next change tries again, and
        // a PoP that did not get it asks.
        self.pushed = Some((Arc::clone(current), Via::Snapshot));
        let snapshot = ConfigSnapshot {
            version: current.version,
            hash: Sha256::digest(current.source.as_bytes()).into(),
            definitions: current.source.clone(),
        };
        tracing::info!(
            pop = %self.pop_id,
            version = format_args!("{:016x}", current.version),
            reason = full.as_str(),
            "configuration snapshot sent"
        );
        w.push(&Frame::ConfigSnapshot(snapshot))
    }

    fn push_delta(
        &mut self,
        w: &mut FrameWriter,
        current: &Arc<Definitions>,
        delta: &ConfigDelta,
    ) -> Result<(), BackboneError> {
        self.pushed = Some((Arc::clone(current), Via::Delta));
        tracing::info!(
            pop = %self.pop_id,
            from = format_args!("{:016x}", delta.from_version),
            to = format_args!("{:016x}", delta.to_version),
            apis = delta.changed.len(),
            "configuration delta sent"
        );
        w.push(&Frame::ConfigDelta(delta.clone()))
    }

    /// The PoP asks for a snapshot. Granted unless a snapshot of what is
    /// current was the last thing pushed (it has all we can give).
    pub(crate) fn on_request(&mut self, request: &ConfigRequest, current: &Definitions) {
        let have = request
            .have_version
            .map_or("none".into(), |v| format!("{v:016x}"));
        let answered = matches!(
            &self.pushed,
            Some((defs, Via::Snapshot)) if defs.version == current.version
        );
        tracing::info!(pop = %self.pop_id, have, reason = %request.reason, granted = !answered, "PoP asks for a configuration snapshot");
        self.requested = !answered;
    }
}
