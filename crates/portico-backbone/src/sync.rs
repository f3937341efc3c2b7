//! Configuration sync at the PoP: the snapshots of all origins, merged into
//! the one snapshot the PoP's gateway serves.
//!
//! Nothing from a peer is trusted: every snapshot's SHA-256 is checked and
//! its TOML re-parsed and re-validated with [`Definitions::from_toml_str_with`]
//! (with this PoP's own defaults). Snapshots of several origins are merged
//! by concatenating their canonical sources (TOML arrays of tables append)
//! and validating the result, so an API defined twice is an error like in
//! any file. A snapshot that fails verification, or a merge that fails
//! validation, is logged and the last good merged snapshot keeps serving.
//!
//! An origin's last snapshot is kept while its link is down: its APIs stay
//! routed, and their requests get 503 (no live link) rather than 404.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portico_config::{DefinitionDefaults, Definitions};
use portico_proto::ConfigSnapshot;
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
}

impl SyncedConfig {
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
        }
    }
}

/// The latest verified snapshot of one origin.
struct Slot {
    region: String,
    defs: Arc<Definitions>,
}

pub(crate) struct ConfigSync {
    defaults: DefinitionDefaults,
    slots: Mutex<Vec<Option<Slot>>>,
    tx: watch::Sender<Arc<SyncedConfig>>,
}

impl ConfigSync {
    /// Sync for `origins` links, starting with no APIs.
    pub(crate) fn new(origins: usize, defaults: DefinitionDefaults) -> Self {
        let (tx, _) = watch::channel(Arc::new(SyncedConfig::empty()));
        ConfigSync {
            defaults,
            slots: Mutex::new((0..origins).map(|_| None).collect()),
            tx,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<SyncedConfig>> {
        self.tx.subscribe()
    }

    pub(crate) fn current(&self) -> Arc<SyncedConfig> {
        Arc::clone(&self.tx.borrow())
    }

    /// Verifies and installs origin `index`'s snapshot. `Ok(false)`: the
    /// same version was already installed (a resend after reconnect).
    pub(crate) fn apply(
        &self,
        index: usize,
        region: &str,
        origin_id: &str,
        snapshot: ConfigSnapshot,
    ) -> Result<bool, BackboneError> {
        let config_err = |reason: String| BackboneError::Config {
            origin: origin_id.to_owned(),
            reason,
        };
        let hash: [u8; 32] = Sha256::digest(snapshot.definitions.as_bytes()).into();
        if hash != snapshot.hash {
            return Err(config_err("SHA-256 does not match the definitions".into()));
        }
        let name = format!("snapshot from {origin_id}");
        let defs = Definitions::from_toml_str_with(&snapshot.definitions, &name, &self.defaults)
            .map_err(|e| config_err(e.to_string()))?;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = slots.get_mut(index) else {
            return Err(config_err(format!("no origin link #{index}")));
        };
        if slot
            .as_ref()
            .is_some_and(|s| s.defs.version == defs.version)
        {
            return Ok(false);
        }
        *slot = Some(Slot {
            region: region.to_owned(),
            defs: Arc::new(defs),
        });
        // Published under the lock, so concurrent snapshots from two links
        // cannot publish their merges out of order.
        let merged = merge(&slots, &self.defaults).map_err(|e| config_err(e.to_string()))?;
        self.tx.send_replace(Arc::new(merged));
        Ok(true)
    }
}

/// Merges every origin's definitions into one validated snapshot.
fn merge(
    slots: &[Option<Slot>],
    defaults: &DefinitionDefaults,
) -> Result<SyncedConfig, portico_config::ConfigErrors> {
    let present: Vec<&Slot> = slots.iter().flatten().collect();
    let definitions = match present.as_slice() {
        [] => Arc::new(Definitions::empty()),
        [one] => Arc::clone(&one.defs),
        many => {
            let text: Vec<&str> = many.iter().map(|s| s.defs.source.as_str()).collect();
            let merged =
                Definitions::from_toml_str_with(&text.join("\n"), "merged snapshots", defaults)?;
            Arc::new(merged)
        }
    };
    let mut homes = HashMap::new();
    for slot in &present {
        for api in &slot.defs.apis {
            let home = api.region.clone().unwrap_or_else(|| slot.region.clone());
            homes.entry(api.name.clone()).or_insert(home);
        }
    }
    Ok(SyncedConfig { definitions, homes })
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

    #[test]
    fn merges_origins_and_records_home_regions() {
        let sync = ConfigSync::new(2, DefinitionDefaults::default());
        let rx = sync.subscribe();
        assert!(rx.borrow().definitions.apis.is_empty());
        assert!(
            sync.apply(0, "us-east-1", "o-iad", snapshot(&api("a", None)))
                .unwrap()
        );
        assert!(
            !sync
                .apply(0, "us-east-1", "o-iad", snapshot(&api("a", None)))
                .unwrap()
        );
        let b = snapshot(&api("b", Some("eu-central-1")));
        assert!(sync.apply(1, "eu-west-1", "o-dub", b).unwrap());
        let cur = sync.current();
        assert_eq!(cur.definitions.apis.len(), 2);
        assert_eq!(cur.homes["a"], "us-east-1");
        assert_eq!(cur.homes["b"], "eu-central-1");
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
        // The same API from a second origin: the merge is invalid.
        assert!(
            sync.apply(1, "r2", "o2", snapshot(&api("a", None)))
                .is_err()
        );
        let cur = sync.current();
        assert_eq!(cur.definitions.apis.len(), 1);
        assert_eq!(cur.homes["a"], "r1");
    }
}
