//! Reads a topology file's TOML into the file structs, one section and one array
//! element at a time, so that errors in different elements are all reported.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::DeValue;

use super::file::RawTopology;
use crate::error::Diag;
use crate::load::{Value, de, each, parse_document};

const SECTIONS: &str = "one of `topology`, `regions`, `pops`, `sites`, `links`, `apis`";

/// Top-level keys that only a topology file has; `apis` is shared with node files.
const TOPOLOGY_KEYS: [&str; 5] = ["topology", "regions", "pops", "sites", "links"];

/// Whether `text` is a topology file rather than a node file: it has one of the
/// top-level sections only topologies have. Broken TOML is judged on what parsed.
pub fn is_topology(text: &str) -> bool {
    let (root, _) = toml::de::DeTable::parse_recoverable(text);
    root.get_ref()
        .keys()
        .any(|k| TOPOLOGY_KEYS.contains(&k.get_ref().as_ref()))
}

pub(crate) fn read_topology(text: &str, diag: &mut Diag<'_>) -> Option<RawTopology> {
    let root = parse_document(text, diag)?;
    let mut raw = RawTopology::default();
    for (key, value) in root {
        section(&mut raw, key, value, diag);
    }
    Some(raw)
}

fn section(raw: &mut RawTopology, key: Spanned<Cow<'_, str>>, value: Value<'_>, d: &mut Diag) {
    // A section that is present but lost all its elements to errors is not
    // reported again as missing.
    d.mark_broken(format!("section:{}", key.get_ref()));
    match key.get_ref().as_ref() {
        "topology" => raw.head = de(value, d).unwrap_or_default(),
        "regions" => raw.regions = each(value, "regions", d, |v, d| element(v, d, &REGION)),
        "pops" => raw.pops = each(value, "pops", d, |v, d| element(v, d, &POP)),
        "sites" => raw.sites = each(value, "sites", d, |v, d| element(v, d, &SITE)),
        "links" => raw.links = each(value, "links", d, de),
        "apis" => raw.apis = each(value, "apis", d, |v, d| element(v, d, &API)),
        other => d.expect(key.span(), format!("unknown section `{other}`"), SECTIONS),
    }
}

/// Which keys of an element hold names other elements refer to, and the namespace
/// those names live in.
struct Names {
    keys: &'static [(&'static str, &'static str)],
}

const REGION: Names = Names {
    keys: &[
        ("name", "region"),
        ("origin", "place"),
        ("backends", "place"),
    ],
};
const POP: Names = Names {
    keys: &[("id", "place")],
};
const SITE: Names = Names {
    keys: &[("name", "place")],
};
const API: Names = Names {
    keys: &[("name", "api")],
};

/// Deserializes one element; when it fails, the names it declares are marked broken
/// so that references to them are not reported again as unknown.
fn element<T: DeserializeOwned>(value: Value<'_>, diag: &mut Diag<'_>, names: &Names) -> Option<T> {
    let declared = match value.get_ref() {
        DeValue::Table(t) => names
            .keys
            .iter()
            .flat_map(|(key, space)| strings(t.get(*key)).into_iter().map(move |s| (*space, s)))
            .collect(),
        _ => Vec::new(),
    };
    let element = de(value, diag);
    if element.is_none() {
        for (space, name) in declared {
            diag.mark_broken(format!("{space}:{name}"));
        }
    }
    element
}

/// The strings of a string value or of an array of strings.
fn strings(value: Option<&Value<'_>>) -> Vec<String> {
    match value.map(Spanned::get_ref) {
        Some(DeValue::String(s)) => vec![s.to_string()],
        Some(DeValue::Array(items)) => items
            .iter()
            .filter_map(|i| match i.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}
