//! Per-API changes between two snapshots: what an origin sends a PoP instead
//! of a whole [`Definitions::source`] when only some APIs changed, and how
//! the PoP rebuilds the source from them.
//!
//! The canonical source is one rendering of the file structs ([`render`]),
//! and each API's text is the same rendering of a document holding only
//! that API. A rebuild re-reads the source it starts from, puts every
//! changed API in place of the one of the same name (appending a new one,
//! dropping a removed one) and renders the result. The origin offers a delta
//! only after checking that this rebuild gives exactly the new source, byte
//! for byte: the PoP then checks the same thing against the delta's
//! `to_version` (the FNV-1a of that text) before it installs anything.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::error::{ConfigErrors, Diag};
use crate::file::{ApiFile, ApiKeyFile, DefinitionsFile, DomainFile, UsagePlanFile};
use crate::load::read_definitions;
use crate::model::Definitions;

/// One API's change: its canonical TOML (a document with that one
/// `[[apis]]` element), or `None` when it was removed.
pub type ApiChange = (String, Option<String>);

/// Why two snapshots are not bridged by a delta (a full snapshot is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDelta {
    /// Custom domains, usage plans or API keys changed: a delta carries APIs only.
    OtherSections,
    /// Applying the changes would not give the new source, e.g. because APIs
    /// were reordered or one was inserted before others.
    Order,
    /// The changes are not smaller than the whole new source.
    NotSmaller,
    /// A source could not be read back (never for a source this crate rendered).
    Unreadable,
}

impl NoDelta {
    pub fn as_str(self) -> &'static str {
        match self {
            NoDelta::OtherSections => "other_sections",
            NoDelta::Order => "order",
            NoDelta::NotSmaller => "not_smaller",
            NoDelta::Unreadable => "unreadable",
        }
    }
}

impl fmt::Display for NoDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoDelta::OtherSections => "domains, usage plans or API keys changed",
            NoDelta::Order => "the APIs' order changed",
            NoDelta::NotSmaller => "the changes are not smaller than the snapshot",
            NoDelta::Unreadable => "a source could not be read back",
        })
    }
}

/// The definitions document as rendered: [`DefinitionsFile`]'s fields in its
/// order with its skip rules, borrowing its parts, so that one API or the
/// non-API sections render alone exactly as they do inside the whole.
#[derive(Serialize)]
pub(crate) struct View<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    apis: Vec<&'a ApiFile>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    domains: &'a [DomainFile],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    usage_plans: &'a [UsagePlanFile],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    api_keys: &'a [ApiKeyFile],
}

impl<'a> View<'a> {
    pub(crate) fn whole(file: &'a DefinitionsFile) -> Self {
        View {
            apis: file.apis.iter().collect(),
            ..Self::rest(file)
        }
    }

    /// Everything but the APIs.
    fn rest(file: &'a DefinitionsFile) -> Self {
        View {
            apis: Vec::new(),
            domains: &file.domains,
            usage_plans: &file.usage_plans,
            api_keys: &file.api_keys,
        }
    }

    fn api(api: &'a ApiFile) -> Self {
        View {
            apis: vec![api],
            domains: &[],
            usage_plans: &[],
            api_keys: &[],
        }
    }
}

/// The canonical TOML of a view: the one rendering of definitions.
pub(crate) fn render(view: &View<'_>) -> Result<String, toml::ser::Error> {
    toml::to_string(view)
}

/// Reads a canonical source back into file structs.
fn reread(text: &str) -> Option<DefinitionsFile> {
    let mut diag = Diag::new("source", text);
    let file = read_definitions(text, &mut diag)?;
    diag.finish().ok().map(|()| file)
}

impl Definitions {
    /// The API changes that turn `self` into `next`, checked to rebuild
    /// `next.source` exactly; or why a full snapshot should be sent instead.
    /// Changed and added APIs come in `next`'s order, then removed ones.
    pub fn delta_to(&self, next: &Definitions) -> Result<Vec<ApiChange>, NoDelta> {
        let old = reread(&self.source).ok_or(NoDelta::Unreadable)?;
        let new = reread(&next.source).ok_or(NoDelta::Unreadable)?;
        let text = |v: View<'_>| render(&v).map_err(|_| NoDelta::Unreadable);
        if text(View::rest(&old))? != text(View::rest(&new))? {
            return Err(NoDelta::OtherSections);
        }
        let mut before = HashMap::new();
        for api in &old.apis {
            before.insert(api.name.get_ref().as_str(), text(View::api(api))?);
        }
        let mut changes = Vec::new();
        for api in &new.apis {
            let name = api.name.get_ref();
            let now = text(View::api(api))?;
            if before.get(name.as_str()) != Some(&now) {
                changes.push((name.clone(), Some(now)));
            }
        }
        let kept: HashSet<&str> = new.apis.iter().map(|a| a.name.get_ref().as_str()).collect();
        for api in &old.apis {
            if !kept.contains(api.name.get_ref().as_str()) {
                changes.push((api.name.get_ref().clone(), None));
            }
        }
        let size: usize = changes
            .iter()
            .map(|(name, text)| name.len() + text.as_ref().map_or(0, String::len))
            .sum();
        if size >= next.source.len() {
            return Err(NoDelta::NotSmaller);
        }
        match self.rebuild_source(&changes, "delta check") {
            Ok(rebuilt) if rebuilt == next.source => Ok(changes),
            _ => Err(NoDelta::Order),
        }
    }

    /// The source after `changes`: each `Some` replaces the API of that name
    /// in place (or is appended), each `None` removes one. Only the shape is
    /// checked here (each text is exactly one API of its name, nothing
    /// removed that is not there, no API twice); the caller validates the
    /// result like any snapshot. `origin_name` names the texts in errors.
    pub fn rebuild_source(
        &self,
        changes: &[ApiChange],
        origin_name: &str,
    ) -> Result<String, ConfigErrors> {
        let whole = |message: String| ConfigErrors::whole_file(origin_name, message);
        let mut base = reread(&self.source)
            .ok_or_else(|| whole("the current definitions cannot be read back".into()))?;
        let mut errors = Vec::new();
        let mut seen = HashSet::new();
        for (name, text) in changes {
            if !seen.insert(name.as_str()) {
                errors.extend(whole(format!("API `{name}` is changed twice")).0);
                continue;
            }
            let at = base.apis.iter().position(|a| a.name.get_ref() == name);
            let result = match (text, at) {
                (None, Some(i)) => {
                    base.apis.remove(i);
                    Ok(())
                }
                (None, None) => Err(whole(format!("API `{name}` is removed but not defined"))),
                (Some(text), at) => one_api(name, text, origin_name).map(|api| match at {
                    Some(i) => base.apis[i] = api,
                    None => base.apis.push(api),
                }),
            };
            if let Err(e) = result {
                errors.extend(e.0);
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        render(&View::whole(&base))
            .map_err(|e| whole(format!("cannot render the definitions: {e}")))
    }
}

/// Reads the text of one changed API: exactly one `[[apis]]` element, named
/// `name`, and no other section.
fn one_api(name: &str, text: &str, origin_name: &str) -> Result<ApiFile, ConfigErrors> {
    let label = format!("{origin_name}, API `{name}`");
    let mut diag = Diag::new(&label, text);
    let file = read_definitions(text, &mut diag);
    diag.finish()?;
    let whole = |message: &str| ConfigErrors::whole_file(&label, message);
    let Some(mut file) = file else {
        return Err(whole("cannot read the API's text"));
    };
    let only_apis =
        file.domains.is_empty() && file.usage_plans.is_empty() && file.api_keys.is_empty();
    match file.apis.pop() {
        Some(api) if file.apis.is_empty() && only_apis && api.name.get_ref() == name => Ok(api),
        _ => Err(whole(
            "expected exactly one [[apis]] element of that name and nothing else",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(name: &str, body: &str) -> String {
        format!(
            "[[apis]]\nname = \"{name}\"\nendpoint = \"edge\"\n\
             [[apis.routes]]\nmethod = \"GET\"\npath = \"/\"\n\
             integration = {{ type = \"mock\", status = 200, body = \"{body}\" }}\n\
             [[apis.stages]]\nname = \"prod\"\n"
        )
    }

    fn defs(parts: &[String]) -> Definitions {
        Definitions::from_toml_str(&parts.join("\n"), "test").unwrap_or_else(|e| panic!("{e}"))
    }

    const PLAN: &str = "[[usage_plans]]\nname = \"basic\"\n";

    #[test]
    fn the_whole_view_renders_the_source() {
        let d = defs(&[api("a", "1"), api("b", "2"), PLAN.into()]);
        let file = reread(&d.source).unwrap();
        assert_eq!(render(&View::whole(&file)).unwrap(), d.source);
    }

    #[test]
    fn changes_rebuild_the_next_source_exactly() {
        let old = defs(&[api("a", "1"), api("b", "2"), api("c", "3"), PLAN.into()]);
        let next = defs(&[api("a", "1"), api("b", "two"), api("d", "4"), PLAN.into()]);
        let changes = old.delta_to(&next).unwrap();
        let names: Vec<_> = changes
            .iter()
            .map(|(n, t)| (n.as_str(), t.is_some()))
            .collect();
        assert_eq!(names, [("b", true), ("d", true), ("c", false)]);
        assert_eq!(old.rebuild_source(&changes, "o").unwrap(), next.source);
        // The text of a change is a document of that one API.
        let b = changes[0].1.as_deref().unwrap();
        assert!(b.contains("two") && !b.contains("usage_plans"), "{b}");
    }

    #[test]
    fn a_full_node_file_round_trips_through_a_delta() {
        use crate::testdata::{FULL, parse};
        let old = parse(FULL).unwrap_or_else(|e| panic!("{e}")).definitions;
        let mine = "  type = \"mock\"\n\n[[apis.stages]]";
        assert_eq!(FULL.matches(mine).count(), 1);
        let changed = FULL.replace(mine, "  type = \"mock\"\n  status = 204\n\n[[apis.stages]]");
        let next = parse(&changed)
            .unwrap_or_else(|e| panic!("{e}"))
            .definitions;
        let changes = old.delta_to(&next).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "edge-echo");
        let rebuilt = old.rebuild_source(&changes, "o").unwrap();
        assert_eq!(rebuilt, next.source);
        let again = Definitions::from_toml_str(&rebuilt, "o").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.version, next.version);
    }

    #[test]
    fn when_a_snapshot_is_needed_instead() {
        let many: Vec<String> = (0..6).map(|i| api(&format!("a{i}"), "x")).collect();
        let old = defs(&many);
        let mut plans = many.clone();
        plans.push(PLAN.into());
        assert_eq!(old.delta_to(&defs(&plans)), Err(NoDelta::OtherSections));
        let mut reordered = many.clone();
        reordered.swap(0, 1);
        assert_eq!(old.delta_to(&defs(&reordered)), Err(NoDelta::Order));
        let all_changed: Vec<String> = (0..6).map(|i| api(&format!("a{i}"), "y")).collect();
        assert_eq!(old.delta_to(&defs(&all_changed)), Err(NoDelta::NotSmaller));
        assert_eq!(NoDelta::Order.as_str(), "order");
    }

    #[test]
    fn malformed_changes_are_errors() {
        let base = defs(&[api("a", "1"), api("b", "2")]);
        let err =
            |changes: &[ApiChange]| base.rebuild_source(changes, "o1").unwrap_err().to_string();
        let removed_unknown = err(&[("zz".into(), None)]);
        assert!(
            removed_unknown.contains("`zz` is removed but not defined"),
            "{removed_unknown}"
        );
        let twice = err(&[("a".into(), None), ("a".into(), Some(api("a", "3")))]);
        assert!(twice.contains("changed twice"), "{twice}");
        let misnamed = err(&[("a".into(), Some(api("b", "3")))]);
        assert!(
            misnamed.contains("o1, API `a`:1:1: expected exactly one"),
            "{misnamed}"
        );
        let smuggled = err(&[("a".into(), Some(format!("{}{PLAN}", api("a", "3"))))]);
        assert!(smuggled.contains("nothing else"), "{smuggled}");
        let broken = err(&[("a".into(), Some("[[apis]]\nname = 5\n".into()))]);
        assert!(broken.starts_with("o1, API `a`:2:"), "{broken}");
        // Errors in the text are only the shape: semantics are the caller's.
        assert!(base.rebuild_source(&[("a".into(), None)], "o1").is_ok());
    }
}
