//! Configuration sync at the PoP: the snapshots of all origins, merged into
//! the one snapshot the PoP's gateway serves.
//!
//! Nothing from a peer is trusted: every snapshot's SHA-256 is checked and
//! its TOML re-parsed and re-validated with [`Definitions::from_toml_str_with`]
//! (with this PoP's own defaults), and its version must be the one its text
//! compiles to.
//!
//! Origins of one region are replicas: a PoP spreads that region's requests
//! over all of them, so each serves the same definitions, and the PoP takes
//! the region's from the one whose snapshot (or delta) it installed last. Two
//! replicas that disagree (a reload that reached one of them so far) are
//! logged; requests still go to both. The regions' definitions are merged
//! by concatenating their canonical sources (TOML arrays of tables append)
//! and validating the result, so an API defined by two regions is an error
//! like an API defined twice in one file. A snapshot that fails
//! verification, or a merge that fails validation, is logged and the last
//! good merged snapshot keeps serving.
//!
//! A [`ConfigDelta`] applies only to an origin whose slot runs exactly its
//! `from_version`: the slot's source is rebuilt with the changed APIs
//! ([`Definitions::rebuild_source`]) and the result goes through the very
//! path of a snapshot, whose version must be the delta's `to_version` (the
//! rebuilt text is then byte for byte the origin's, and its SHA-256 the one
//! the origin's snapshot would carry). Anything else leaves the slot as it
//! was; the link asks the origin for a snapshot.
//!
//! An origin's last snapshot is kept while its link is down: its APIs stay
//! routed, and their requests get 503 (no live link) rather than 404.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use portico_config::{DefinitionDefaults, Definitions};
use portico_proto::{ConfigDelta, ConfigRequest, ConfigSnapshot, limits};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::BackboneError;

/// The merged configuration a PoP serves.
#[derive(Debug)]
pub struct SyncedConfig {
    pub definitions: Arc<Definitions>,
    /// API name → home region: the API's `region`, else the region of the
    /// origin that sent it.
    pub homes: HashMap<String, String>,
    /// What was merged: each region's definitions, in link order.
    merged: Vec<Running>,
}

impl SyncedConfig {
    /// Definitions and their APIs' home regions, as a PoP's subsystems see
    /// them (for their tests: a PoP's come from [`crate::Backbone`]).
    pub fn new(definitions: Arc<Definitions>, homes: HashMap<String, String>) -> Self {
        SyncedConfig {
            definitions,
            homes,
            merged: Vec::new(),
        }
    }

    /// The home region of API `api`: its declared `region`, else the region
    /// of the origin that sent it.
    pub fn home_of(&self, api: &str) -> Option<&str> {
        let declared = self.definitions.api(api).and_then(|a| a.region.as_deref());
        declared.or_else(|| self.homes.get(api).map(String::as_str))
    }

    fn empty() -> Self {
        SyncedConfig {
            definitions: Arc::new(Definitions::empty()),
            homes: HashMap::new(),
            merged: Vec::new(),
        }
    }
}

/// What a PoP runs of one origin's definitions, and how they came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginConfig {
    /// The origin's node id, from its last configuration frame.
    pub origin_id: String,
    /// Version and SHA-256 of the origin's definitions the PoP serves
    /// (`None`: none yet).
    pub running: Option<Running>,
    /// The origin's newer definitions the PoP holds but does not serve, and
    /// why: they do not merge with another region's (an API both define).
    pub held: Option<(Running, String)>,
    /// Snapshots verified (installed, or already running after a reconnect).
    pub snapshots: u64,
    /// Deltas applied.
    pub deltas: u64,
    /// Snapshots and deltas refused (wrong version, invalid, mismatch).
    pub refused: u64,
    /// Full snapshots asked for after a delta that could not be applied.
    pub requests: u64,
}

/// A version of definitions and the SHA-256 of their canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    pub version: u64,
    pub hash: [u8; 32],
}

impl Running {
    /// The version of `defs` and the SHA-256 of their canonical text (what
    /// a snapshot of them carries).
    pub fn of(defs: &Definitions) -> Running {
        Running {
            version: defs.version,
            hash: Sha256::digest(defs.source.as_bytes()).into(),
        }
    }

    /// The SHA-256 in lower-case hex, for logs and the admin API.
    pub fn hash_hex(&self) -> String {
        self.hash
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// What [`ConfigSync::apply`] or [`ConfigSync::apply_delta`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The origin's slot now runs this.
    Installed(Running),
    /// That version was already running (a resend after a reconnect).
    Unchanged,
}

/// How definitions arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Snapshot,
    Delta,
}

impl Via {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Via::Snapshot => "snapshot",
            Via::Delta => "delta",
        }
    }
}

/// The latest verified definitions of one origin.
#[derive(Clone)]
struct Slot {
    region: String,
    origin_id: String,
    defs: Arc<Definitions>,
    running: Running,
    /// When it was installed, in the order of all installs: of a region's
    /// replicas, the highest serves.
    installed: u64,
}

/// One origin's slot and what happened to it.
#[derive(Default)]
struct Entry {
    slot: Option<Slot>,
    status: OriginConfig,
    /// A snapshot was asked for and has not come yet: further deltas that
    /// fail do not ask again.
    awaiting_snapshot: bool,
    /// Its link went down (and no snapshot came since): a replica whose link
    /// is up serves its region before it.
    down: bool,
    /// The slot last merged with the others. While `slot` does not merge (an
    /// API another region defines too), this one stands in for it, so the
    /// other regions' changes still go through.
    good: Option<Slot>,
    /// `slot` did not merge, and why.
    unmerged: Option<String>,
}

impl Entry {
    /// The slot merged into what the PoP serves.
    fn merged(&self) -> Option<&Slot> {
        if self.unmerged.is_some() {
            self.good.as_ref()
        } else {
            self.slot.as_ref()
        }
    }

    /// Its status, with what it serves and holds as they are now.
    fn status(&self) -> OriginConfig {
        let held = self
            .unmerged
            .as_ref()
            .zip(self.slot.as_ref())
            .map(|(why, slot)| (slot.running, why.clone()));
        OriginConfig {
            running: self.merged().map(|s| s.running),
            held,
            ..self.status.clone()
        }
    }
}

pub(crate) struct ConfigSync {
    defaults: DefinitionDefaults,
    entries: Mutex<Vec<Entry>>,
    /// Installs so far (counted under the `entries` lock).
    installs: AtomicU64,
    tx: watch::Sender<Arc<SyncedConfig>>,
    /// What `tx` holds, for requests: read without a lock (a watch's
    /// `borrow` takes its lock, which every PoP thread would share).
    served: ArcSwap<SyncedConfig>,
}

impl ConfigSync {
    /// Sync for `origins` links, starting with no APIs.
    pub(crate) fn new(origins: usize, defaults: DefinitionDefaults) -> Self {
        let empty = Arc::new(SyncedConfig::empty());
        let (tx, _) = watch::channel(Arc::clone(&empty));
        ConfigSync {
            defaults,
            entries: Mutex::new((0..origins).map(|_| Entry::default()).collect()),
            installs: AtomicU64::new(0),
            tx,
            served: ArcSwap::new(empty),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<SyncedConfig>> {
        self.tx.subscribe()
    }

    #[cfg(test)]
    pub(crate) fn current(&self) -> Arc<SyncedConfig> {
        self.served.load_full()
    }

    /// What is served now, for a moment's look (no reference count).
    pub(crate) fn peek(&self) -> arc_swap::Guard<Arc<SyncedConfig>> {
        self.served.load()
    }

    /// What runs of each origin's definitions, in link order.
    pub(crate) fn status(&self) -> Vec<OriginConfig> {
        self.lock().iter().map(Entry::status).collect()
    }

    /// The version origin `index`'s slot runs.
    #[cfg(test)]
    pub(crate) fn version(&self, index: usize) -> Option<u64> {
        let entries = self.lock();
        entries.get(index)?.slot.as_ref().map(|s| s.running.version)
    }

    /// Origin `index`'s link went down. Of its region's replicas, one whose
    /// link is up serves from now on: a replica that died after a reload
    /// reached it alone would otherwise keep its region on definitions that
    /// no live origin runs.
    pub(crate) fn link_down(&self, index: usize) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(index) else {
            return;
        };
        entry.down = true;
        if let Err(reason) = self.publish(&entries) {
            tracing::warn!(%reason, "definitions of the live replicas do not merge; serving the last good ones");
        } else {
            remember_merged(&mut entries);
            self.retry_held(&mut entries);
        }
    }

    /// Merges what each region serves now and publishes it if it changed. A
    /// merge that fails keeps the last good one.
    fn publish(&self, entries: &[Entry]) -> Result<(), String> {
        let slots: Vec<(&Slot, bool)> = entries
            .iter()
            .filter_map(|e| e.merged().map(|s| (s, !e.down)))
            .collect();
        let served = last_of_each_region(&slots);
        let same = self
            .tx
            .borrow()
            .merged
            .iter()
            .eq(served.iter().map(|s| &s.running));
        if same {
            return Ok(());
        }
        let merged = Arc::new(merge(&served, &self.defaults).map_err(|e| e.to_string())?);
        self.served.store(Arc::clone(&merged));
        self.tx.send_replace(merged);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies and installs origin `index`'s snapshot.
    pub(crate) fn apply(
        &self,
        index: usize,
        region: &str,
        origin_id: &str,
        snapshot: ConfigSnapshot,
    ) -> Result<Applied, BackboneError> {
        let hash: [u8; 32] = Sha256::digest(snapshot.definitions.as_bytes()).into();
        let result = if hash != snapshot.hash {
            Err(config_err(
                origin_id,
                "SHA-256 does not match the definitions",
            ))
        } else {
            let name = format!("snapshot from {origin_id}");
            let text = &snapshot.definitions;
            self.install(index, region, origin_id, &name, text, snapshot.version)
        };
        self.count(index, origin_id, Via::Snapshot, &result);
        if let Some(e) = self.lock().get_mut(index) {
            // Whatever became of it, a snapshot answers any request.
            e.awaiting_snapshot = false;
        }
        result
    }

    /// Applies origin `index`'s delta if its slot runs exactly
    /// `from_version`, validating the rebuilt definitions as a snapshot's.
    /// When it fails and the slot does not run `to_version`, the second value
    /// is the [`ConfigRequest`] the link sends (once, until a snapshot comes).
    pub(crate) fn apply_delta(
        &self,
        index: usize,
        region: &str,
        origin_id: &str,
        delta: &ConfigDelta,
    ) -> (Result<Applied, BackboneError>, Option<ConfigRequest>) {
        let result = self.rebuild(index, origin_id, delta).and_then(|text| {
            let name = format!("delta from {origin_id}");
            self.install(index, region, origin_id, &name, &text, delta.to_version)
        });
        self.count(index, origin_id, Via::Delta, &result);
        let request = match &result {
            Ok(_) => None,
            Err(err) => self.want_snapshot(index, delta.to_version, err),
        };
        (result, request)
    }

    /// The request for a snapshot after a failed delta, unless the slot
    /// runs `to_version` anyway (only the merge failed: a snapshot would not
    /// help) or one was asked for already.
    fn want_snapshot(
        &self,
        index: usize,
        to_version: u64,
        err: &BackboneError,
    ) -> Option<ConfigRequest> {
        let mut entries = self.lock();
        let e = entries.get_mut(index)?;
        let have = e.slot.as_ref().map(|s| s.running.version);
        if have == Some(to_version) || e.awaiting_snapshot {
            return None;
        }
        e.awaiting_snapshot = true;
        e.status.requests += 1;
        let reason = limits::truncate_reason(err.to_string(), limits::MAX_REASON);
        Some(ConfigRequest {
            have_version: have,
            reason,
        })
    }

    /// The source of `delta.to_version`, from the slot at `from_version`.
    fn rebuild(
        &self,
        index: usize,
        origin_id: &str,
        delta: &ConfigDelta,
    ) -> Result<String, BackboneError> {
        let base = {
            let entries = self.lock();
            let slot = entries.get(index).and_then(|e| e.slot.as_ref());
            match slot {
                Some(s) if s.running.version == delta.from_version => Arc::clone(&s.defs),
                other => {
                    let have =
                        other.map_or("none".into(), |s| format!("{:016x}", s.running.version));
                    let reason = format!(
                        "delta from version {:016x}, but this PoP runs {have}",
                        delta.from_version
                    );
                    return Err(config_err(origin_id, reason));
                }
            }
        };
        let name = format!("delta from {origin_id}");
        base.rebuild_source(&delta.changed, &name)
            .map_err(|e| config_err(origin_id, e.to_string()))
    }

    /// Compiles `text` with this PoP's defaults, checks it is version
    /// `version`, and installs it as origin `index`'s definitions.
    fn install(
        &self,
        index: usize,
        region: &str,
        origin_id: &str,
        name: &str,
        text: &str,
        version: u64,
    ) -> Result<Applied, BackboneError> {
        let defs = Definitions::from_toml_str_with(text, name, &self.defaults)
            .map_err(|e| config_err(origin_id, e.to_string()))?;
        if defs.version != version {
            let reason = format!(
                "the definitions are version {:016x}, the frame says {version:016x}",
                defs.version
            );
            return Err(config_err(origin_id, reason));
        }
        let running = Running::of(&defs);
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(index) else {
            return Err(config_err(origin_id, format!("no origin link #{index}")));
        };
        // A snapshot comes over a link that is up.
        let was_down = std::mem::replace(&mut entry.down, false);
        if entry.slot.as_ref().is_some_and(|s| s.running == running) {
            if was_down {
                // Back: its region may be served by it again.
                let _ = self.publish(&entries);
            }
            return Ok(Applied::Unchanged);
        }
        entry.slot = Some(Slot {
            region: region.to_owned(),
            origin_id: origin_id.to_owned(),
            defs: Arc::new(defs),
            running,
            installed: self.installs.fetch_add(1, Ordering::Relaxed),
        });
        if let Some(other) = entries
            .iter()
            .filter_map(|e| e.slot.as_ref())
            .find(|s| s.region == region && s.running != running)
        {
            tracing::warn!(
                region,
                serving = origin_id,
                other = other.origin_id,
                "origins of one region run different definitions; serving those received last"
            );
        }
        // Published under the lock, so concurrent snapshots from two links
        // cannot publish their merges out of order. A merge that fails keeps
        // the slot (it is what the origin runs: its deltas build on it) and
        // merges the others with this origin's last good slot instead.
        if let Some(e) = entries.get_mut(index) {
            e.unmerged = None;
        }
        if let Err(reason) = self.publish(&entries) {
            if let Some(e) = entries.get_mut(index) {
                e.unmerged = Some(reason.clone());
            }
            if self.publish(&entries).is_ok() {
                remember_merged(&mut entries);
            }
            return Err(config_err(origin_id, reason));
        }
        remember_merged(&mut entries);
        // This change may have taken away what another origin's held
        // definitions clashed with.
        self.retry_held(&mut entries);
        Ok(Applied::Installed(running))
    }

    /// Merges each origin's held definitions again (in link order), now
    /// that what they clashed with may be gone; those that still do not
    /// merge stay held, with the reason as it is now.
    fn retry_held(&self, entries: &mut [Entry]) {
        for index in 0..entries.len() {
            let Some(reason) = entries[index].unmerged.take() else {
                continue;
            };
            match self.publish(entries) {
                Ok(()) => {
                    tracing::info!(
                        origin = entries[index].status.origin_id,
                        "held definitions merge now; serving them"
                    );
                    remember_merged(entries);
                }
                // Nothing was published: the last good slot stays served.
                Err(now) => {
                    if now != reason {
                        tracing::debug!(reason = now, "held definitions still do not merge");
                    }
                    entries[index].unmerged = Some(now);
                }
            }
        }
    }

    fn count(
        &self,
        index: usize,
        origin_id: &str,
        via: Via,
        result: &Result<Applied, BackboneError>,
    ) {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(index) else {
            return;
        };
        origin_id.clone_into(&mut e.status.origin_id);
        match (via, result) {
            (_, Err(_)) => e.status.refused += 1,
            (Via::Snapshot, Ok(_)) => e.status.snapshots += 1,
            (Via::Delta, Ok(_)) => e.status.deltas += 1,
        }
    }
}

/// After a merge that succeeded: each slot merged is its origin's last good.
fn remember_merged(entries: &mut [Entry]) {
    for e in entries.iter_mut().filter(|e| e.unmerged.is_none()) {
        e.good.clone_from(&e.slot);
    }
}

fn config_err(origin_id: &str, reason: impl Into<String>) -> BackboneError {
    BackboneError::Config {
        origin: origin_id.to_owned(),
        reason: reason.into(),
    }
}

/// Of each region's slots (with whether their link is up), the one installed
/// last among those whose link is up, or among all when none is; regions in
/// the order of their first slot.
fn last_of_each_region<'a>(slots: &[(&'a Slot, bool)]) -> Vec<&'a Slot> {
    let mut served: Vec<(&Slot, bool)> = Vec::with_capacity(slots.len());
    for &(slot, up) in slots {
        match served.iter_mut().find(|(s, _)| s.region == slot.region) {
            Some(best) if (up, slot.installed) > (best.1, best.0.installed) => *best = (slot, up),
            Some(_) => {}
            None => served.push((slot, up)),
        }
    }
    served.into_iter().map(|(s, _)| s).collect()
}

/// Merges the regions' definitions (one slot each) into one validated snapshot.
fn merge(
    present: &[&Slot],
    defaults: &DefinitionDefaults,
) -> Result<SyncedConfig, portico_config::ConfigErrors> {
    let definitions = match present {
        [] => Arc::new(Definitions::empty()),
        [one] => Arc::clone(&one.defs),
        many => {
            let text: Vec<&str> = many.iter().map(|s| s.defs.source.as_str()).collect();
            let merged = Definitions::merged(&text, "merged snapshots", defaults)?;
            Arc::new(merged)
        }
    };
    let mut homes = HashMap::new();
    for slot in present {
        for api in &slot.defs.apis {
            let home = api.region.clone().unwrap_or_else(|| slot.region.clone());
            homes.entry(api.name.clone()).or_insert(home);
        }
    }
    let merged = present.iter().map(|s| s.running).collect();
    Ok(SyncedConfig {
        definitions,
        homes,
        merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(name: &str, region: Option<&str>) -> String {
        let region = region
            .map(|r| format!("region = \"{r}\"\n"))
            .unwrap_or_default();
        format!(
            "[[apis]]\nname = \"{name}\"\nendpoint = \"edge\"\n{region}\
             [[apis.routes]]\nmethod = \"GET\"\npath = \"/\"\n\
             integration = {{ type = \"mock\", status = 200 }}\n\
             [[apis.stages]]\nname = \"prod\"\n"
        )
    }

    fn snapshot(text: &str) -> ConfigSnapshot {
        let defs = Definitions::from_toml_str(text, "test").unwrap();
        ConfigSnapshot {
            version: defs.version,
            hash: Sha256::digest(defs.source.as_bytes()).into(),
            definitions: defs.source.clone(),
        }
    }

    /// The names of the APIs served, sorted.
    fn served_names(sync: &ConfigSync) -> Vec<String> {
        let mut names: Vec<String> = (sync.current().definitions.apis.iter())
            .map(|a| a.name.clone())
            .collect();
        names.sort();
        names
    }

    fn installed(result: Result<Applied, BackboneError>) -> bool {
        match result.unwrap_or_else(|e| panic!("{e}")) {
            Applied::Installed(_) => true,
            Applied::Unchanged => false,
        }
    }

    #[test]
    fn merges_origins_and_records_home_regions() {
        let sync = ConfigSync::new(2, DefinitionDefaults::default());
        let rx = sync.subscribe();
        assert!(rx.borrow().definitions.apis.is_empty());
        let a = || snapshot(&api("a", None));
        assert!(installed(sync.apply(0, "us-east-1", "o-iad", a())));
        assert!(!installed(sync.apply(0, "us-east-1", "o-iad", a())));
        let b = snapshot(&api("b", Some("eu-central-1")));
        assert!(installed(sync.apply(1, "eu-west-1", "o-dub", b)));
        let cur = sync.current();
        assert_eq!(cur.definitions.apis.len(), 2);
        assert_eq!(cur.homes["a"], "us-east-1");
        assert_eq!(cur.homes["b"], "eu-central-1");
        let status = sync.status();
        assert_eq!((status[0].snapshots, status[0].refused), (2, 0));
        assert_eq!(status[1].origin_id, "o-dub");
    }

    #[test]
    fn replicas_of_a_region_serve_the_definitions_installed_last() {
        let sync = ConfigSync::new(3, DefinitionDefaults::default());
        let rx = sync.subscribe();
        let v1 = || snapshot(&api("a", None));
        let v2 = || snapshot(&api("a", None).replace("200", "204"));
        assert!(installed(sync.apply(0, "r1", "o1", v1())));
        let first = Arc::clone(&rx.borrow().definitions);
        // The second replica sends the same definitions: installed in its
        // slot, nothing new to serve.
        assert!(installed(sync.apply(1, "r1", "o2", v1())));
        assert!(Arc::ptr_eq(&first, &rx.borrow().definitions));
        // Another region's API is merged beside them.
        let b = snapshot(&api("b", None));
        assert!(installed(sync.apply(2, "r2", "o3", b)));
        let status = |i: usize| {
            let s = &sync.status()[i];
            (s.snapshots, s.refused)
        };
        assert_eq!((status(0), status(1), status(2)), ((1, 0), (1, 0), (1, 0)));
        // Whether `a` is served as reloaded (its mock answers 204).
        let reloaded = || {
            let cur = sync.current();
            assert_eq!(cur.definitions.apis.len(), 2, "{}", cur.definitions.source);
            cur.definitions.source.contains("204")
        };
        assert!(!reloaded());
        // A reload that reached one replica so far: its definitions serve.
        assert!(installed(sync.apply(1, "r1", "o2", v2())));
        assert!(reloaded());
        // The other replica resending what it runs changes nothing...
        assert!(!installed(sync.apply(0, "r1", "o1", v1())));
        assert!(reloaded());
        // ...a delta or snapshot it installs serves, as the last one...
        assert!(installed(sync.apply(
            0,
            "r1",
            "o1",
            snapshot(&api("a", None).replace("200", "202"))
        )));
        assert!(!reloaded());
        // ...and so does the reload once it reaches it.
        assert!(installed(sync.apply(0, "r1", "o1", v2())));
        assert!(reloaded());
        let cur = sync.current();
        assert_eq!(cur.homes["a"], "r1");
        assert_eq!(cur.homes["b"], "r2");
        assert_eq!((status(0).1, status(1).1), (0, 0));
    }

    #[test]
    fn a_replica_whose_link_is_down_gives_way_to_one_that_is_up() {
        let sync = ConfigSync::new(2, DefinitionDefaults::default());
        let v1 = || snapshot(&api("a", None));
        let v2 = || snapshot(&api("a", None).replace("200", "204"));
        let reloaded = || sync.current().definitions.source.contains("204");
        assert!(installed(sync.apply(0, "r1", "o1", v1())));
        assert!(installed(sync.apply(1, "r1", "o2", v1())));
        // A reload reaches o1 only, then o1 dies.
        assert!(installed(sync.apply(0, "r1", "o1", v2())));
        assert!(reloaded());
        sync.link_down(0);
        // Its region is served by the replica that is up, as it runs.
        assert!(!reloaded());
        // o2 resends what it runs after a reconnect of its own: still served.
        sync.link_down(1);
        assert!(!installed(sync.apply(1, "r1", "o2", v1())));
        assert!(!reloaded());
        // o1 comes back with what it ran: the last installed serves again.
        assert!(!installed(sync.apply(0, "r1", "o1", v2())));
        assert!(reloaded());
    }

    #[test]
    fn bad_snapshots_keep_the_last_good_one() {
        let sync = ConfigSync::new(2, DefinitionDefaults::default());
        sync.apply(0, "r1", "o1", snapshot(&api("a", None)))
            .unwrap();
        let mut tampered = snapshot(&api("b", None));
        tampered.definitions.push_str("\n# changed in flight\n");
        let err = sync.apply(0, "r1", "o1", tampered).unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
        let mut invalid = snapshot(&api("a", None));
        invalid.definitions = "[[apis]]\nname = 5\n".into();
        invalid.hash = Sha256::digest(invalid.definitions.as_bytes()).into();
        let err = sync.apply(0, "r1", "o1", invalid).unwrap_err();
        assert!(err.to_string().contains("snapshot from o1"), "{err}");
        // A version that is not the one of its text.
        let mut misnumbered = snapshot(&api("b", None));
        misnumbered.version ^= 1;
        let err = sync.apply(0, "r1", "o1", misnumbered).unwrap_err();
        assert!(err.to_string().contains("the frame says"), "{err}");
        // The same API from a second origin: the merge is invalid.
        assert!(
            sync.apply(1, "r2", "o2", snapshot(&api("a", None)))
                .is_err()
        );
        let cur = sync.current();
        assert_eq!(cur.definitions.apis.len(), 1);
        assert_eq!(cur.homes["a"], "r1");
        assert_eq!(sync.status()[0].refused, 3);
    }

    /// One region's definitions that collide with another's are refused
    /// without holding up the other regions' changes.
    #[test]
    fn a_region_whose_definitions_collide_holds_up_no_other() {
        let sync = ConfigSync::new(2, DefinitionDefaults::default());
        let names = || served_names(&sync);
        assert!(installed(sync.apply(
            0,
            "r1",
            "o1",
            snapshot(&api("x", None))
        )));
        assert!(installed(sync.apply(
            1,
            "r2",
            "o2",
            snapshot(&api("y", None))
        )));
        // r2 now defines `x` too: refused, r2's `y` still served.
        let served = sync.status()[1].running;
        let colliding = format!("{}{}", api("y", None), api("x", None));
        assert!(sync.apply(1, "r2", "o2", snapshot(&colliding)).is_err());
        assert_eq!(names(), ["x", "y"]);
        // Its status says what is served of it, and what is held and why.
        let status = &sync.status()[1];
        assert_eq!(status.running, served);
        let (held, why) = status.held.clone().unwrap();
        let colliding = Definitions::from_toml_str(&colliding, "test").unwrap();
        assert_eq!(held, Running::of(&colliding));
        assert!(why.contains("`x`"), "{why}");
        // r1's next change goes through all the same.
        let more = format!("{}{}", api("x", None), api("z", None));
        assert!(installed(sync.apply(0, "r1", "o1", snapshot(&more))));
        assert_eq!(names(), ["x", "y", "z"]);
        assert!(sync.status()[1].held.is_some(), "r2's is still held");
        assert_eq!(sync.status()[0].held, None);
    }

    /// An API moved from one region to another, the new home's definitions
    /// arriving first: held while both define it (a snapshot sent again
    /// meanwhile, as after a reconnect, changes nothing), served as soon as
    /// the old home's no longer do, also while the new home's link is down.
    #[test]
    fn held_definitions_are_served_once_what_they_clashed_with_is_gone() {
        let with_x = || snapshot(&format!("{}{}", api("y", None), api("x", None)));
        for down in [false, true] {
            let sync = ConfigSync::new(2, DefinitionDefaults::default());
            let r1 = |text: &str| sync.apply(0, "r1", "o1", snapshot(text));
            assert!(installed(r1(&api("x", None))));
            assert!(installed(sync.apply(
                1,
                "r2",
                "o2",
                snapshot(&api("y", None))
            )));
            // r2 takes `x` before r1 lets it go: held.
            assert!(sync.apply(1, "r2", "o2", with_x()).is_err());
            assert!(!installed(sync.apply(1, "r2", "o2", with_x())));
            assert!(sync.status()[1].held.is_some());
            assert_eq!(served_names(&sync), ["x", "y"]);
            if down {
                sync.link_down(1);
            }
            assert!(installed(r1(&api("w", None))));
            assert_eq!(served_names(&sync), ["w", "x", "y"], "down: {down}");
            assert_eq!(sync.status()[1].held, None);
            assert_eq!(sync.current().homes["x"], "r2");
        }
    }

    /// Two APIs from origin 0, then the delta that changes `b`'s body to `body`.
    fn synced_with_delta(body: &str) -> (ConfigSync, ConfigDelta, Definitions) {
        let sync = ConfigSync::new(2, DefinitionDefaults::default());
        let text = |b: &str| format!("{}\n{}", api("a", None), api("b", None).replace("200", b));
        let old = Definitions::from_toml_str(&text("200"), "test").unwrap();
        let next = Definitions::from_toml_str(&text(body), "test").unwrap();
        sync.apply(0, "r1", "o1", snapshot(&old.source)).unwrap();
        let delta = ConfigDelta {
            from_version: old.version,
            to_version: next.version,
            changed: old.delta_to(&next).unwrap(),
        };
        (sync, delta, next)
    }

    #[test]
    fn a_delta_rebuilds_the_origins_definitions() {
        let (sync, delta, next) = synced_with_delta("204");
        let rx = sync.subscribe();
        assert_eq!(delta.changed.len(), 1);
        let (result, request) = sync.apply_delta(0, "r1", "o1", &delta);
        let Applied::Installed(running) = result.unwrap() else {
            panic!("not installed")
        };
        assert_eq!(request, None);
        // Version and hash are the ones a snapshot of `next` would carry.
        assert_eq!(running, Running::of(&next));
        assert_eq!(running.version, delta.to_version);
        assert_eq!(sync.version(0), Some(next.version));
        let served = Arc::clone(&rx.borrow().definitions);
        assert_eq!(served.source, next.source);
        assert_eq!(served.apis.len(), 2);
        let status = &sync.status()[0];
        assert_eq!((status.snapshots, status.deltas, status.refused), (1, 1, 0));
        assert_eq!(status.running, Some(running));
        assert_eq!(running.hash_hex().len(), 64);
    }

    #[test]
    fn a_delta_from_another_version_is_ignored_and_a_snapshot_asked_for() {
        let (sync, mut delta, _) = synced_with_delta("204");
        let before = sync.version(0);
        delta.from_version ^= 1;
        let (result, request) = sync.apply_delta(0, "r1", "o1", &delta);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("but this PoP runs"), "{err}");
        assert_eq!(sync.version(0), before);
        let request = request.expect("a snapshot request");
        assert_eq!(request.have_version, before);
        // Asked once: the next failing delta waits for that snapshot.
        assert_eq!(sync.apply_delta(0, "r1", "o1", &delta).1, None);
        assert_eq!(sync.status()[0].requests, 1);
        // A slot with nothing yet asks too.
        let (result, request) = sync.apply_delta(1, "r2", "o2", &delta);
        assert!(result.is_err());
        assert_eq!(request.map(|r| r.have_version), Some(None));
    }

    #[test]
    fn an_invalid_delta_is_ignored_and_a_snapshot_asked_for() {
        let (sync, mut delta, _) = synced_with_delta("204");
        let rx = sync.subscribe();
        let before = Arc::clone(&rx.borrow().definitions);
        // Well formed, but its stage serves a deployment that does not exist.
        let bad =
            api("b", None).replace("name = \"prod\"", "name = \"prod\"\ndeployment = \"nope\"");
        delta.changed = vec![("b".into(), Some(bad))];
        let (result, request) = sync.apply_delta(0, "r1", "o1", &delta);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("delta from o1"), "{err}");
        assert!(request.is_some());
        // Not even the slot moved; the served snapshot is the same one.
        assert_eq!(sync.version(0), Some(before.version));
        assert!(Arc::ptr_eq(&before, &rx.borrow().definitions));
        // A removal of an API the origin never sent is refused the same way.
        delta.changed = vec![("zz".into(), None)];
        assert!(sync.apply_delta(0, "r1", "o1", &delta).0.is_err());
    }

    #[test]
    fn a_delta_that_rebuilds_another_version_asks_for_a_snapshot() {
        let (sync, mut delta, next) = synced_with_delta("204");
        // Valid changes, but they do not give the version the origin named
        // (the PoP would run something the origin does not).
        delta.to_version ^= 1;
        let (result, request) = sync.apply_delta(0, "r1", "o1", &delta);
        let err = result.unwrap_err();
        assert!(err.to_string().contains("the frame says"), "{err}");
        assert_ne!(sync.version(0), Some(next.version));
        let request = request.expect("a snapshot request");
        assert!(
            request.reason.contains("the frame says"),
            "{}",
            request.reason
        );
        // The snapshot that answers it is applied and ends the wait.
        let fixed = snapshot(&next.source);
        assert!(installed(sync.apply(0, "r1", "o1", fixed)));
        assert_eq!(sync.version(0), Some(next.version));
        assert!(sync.apply_delta(0, "r1", "o1", &delta).1.is_some());
        let status = &sync.status()[0];
        assert_eq!(
            (status.snapshots, status.deltas, status.requests),
            (2, 0, 2)
        );
    }
}
