//! Topology files: a whole multi-region deployment (regions with their origin and
//! demo backends, PoPs, client sites, simulated links, demo APIs) that `portico up`
//! runs on one machine and `portico probe` measures. The reference of the format is
//! `docs/TOPOLOGY.md`; `topology/local.toml` and `topology/world.toml` are examples.
//!
//! Validation is as strict as for node files, and for the same reason: a topology is
//! refused, with every error at its `file:line:column`, before anything starts.

mod compile;
mod file;
mod model;
mod read;

use std::fmt;
use std::path::Path;

pub use model::{
    BasePort, DemoApi, Entry, LinkParams, Place, Pop, Region, SimLink, Site, Topology,
};
pub use read::is_topology;

use crate::ConfigErrors;
use crate::error::Diag;

/// Reads and validates a topology file. Its name (when `[topology] name` is absent)
/// is the file's stem.
pub fn load_topology_file(path: &Path) -> Result<Topology, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read the file: {e}")))?;
    let stem = path.file_stem().map_or_else(
        || "topology".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    parse_topology(&text, &name, &stem)
}

/// Validates a topology's text. `origin_name` names the text in errors;
/// `default_name` is the topology's name when `[topology] name` is absent.
pub fn parse_topology(
    text: &str,
    origin_name: &str,
    default_name: &str,
) -> Result<Topology, ConfigErrors> {
    let mut diag = Diag::new(origin_name, text);
    let topology = read::read_topology(text, &mut diag)
        .and_then(|raw| compile::compile(&raw, default_name, text, &mut diag));
    diag.finish()?;
    let mut topology = topology.ok_or_else(|| {
        ConfigErrors::whole_file(
            origin_name,
            "internal error: topology rejected without a reason",
        )
    })?;
    topology.file = origin_name.to_owned();
    Ok(topology)
}

/// What `portico check` prints for a valid topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologySummary {
    pub name: String,
    pub regions: usize,
    pub pops: usize,
    pub sites: usize,
    pub links: usize,
    pub apis: usize,
    pub entries: usize,
}

impl TopologySummary {
    pub fn of(t: &Topology) -> TopologySummary {
        TopologySummary {
            name: t.name.clone(),
            regions: t.regions.len(),
            pops: t.pops.len(),
            sites: t.sites.len(),
            links: t.links.len(),
            apis: t.apis.len(),
            entries: t.entries.len(),
        }
    }
}

impl fmt::Display for TopologySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topology `{}`: {} region(s), {} PoP(s), {} client site(s), {} link(s), \
             {} API(s), {} entry point(s)",
            self.name, self.regions, self.pops, self.sites, self.links, self.apis, self.entries
        )
    }
}

#[cfg(test)]
mod tests;
