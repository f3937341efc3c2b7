//! Merging the definitions of several regions into one file, as a PoP that
//! serves them all compiles them.
//!
//! Each region's list entries are kept side by side, so a name two regions
//! both define is reported as the duplicate it is, with one exception: an
//! API key. A customer's key is one credential wherever it is used (an AWS
//! API key is account-wide), so every region that admits it lists it, each
//! with its own usage plans; the entries of one key id are merged into one
//! holding the plans of every region that lists it enabled ([`combine`]).

use toml::{Table, Value};

/// The regions' definition files (`Definitions::source` texts) as one file.
/// A text that does not parse as TOML makes the merge a plain concatenation,
/// which the compiler then reports with that text's own error.
pub(crate) fn merge_sources(sources: &[&str]) -> String {
    let concatenated = || sources.join("\n");
    let mut merged = Table::new();
    // Key ids the regions give different hashes.
    let mut disputed = Vec::new();
    for source in sources {
        let Ok(table) = source.parse::<Table>() else {
            return concatenated();
        };
        for (name, value) in table {
            match (merged.get_mut(&name), value) {
                (None, value) => {
                    merged.insert(name, value);
                }
                (Some(Value::Array(have)), Value::Array(more)) if name == "api_keys" => {
                    merge_keys(have, more, &mut disputed);
                }
                (Some(Value::Array(have)), Value::Array(more)) => have.extend(more),
                // A setting outside the lists twice: left for the compiler to
                // refuse as written.
                (Some(_), _) => return concatenated(),
            }
        }
    }
    toml::to_string(&merged).unwrap_or_else(|_| concatenated())
}

/// Adds `more` keys (one region's) to `have`: a key id already there is
/// one key, whose entry [`combine`] settles. `disputed` holds the ids the
/// regions give different hashes, disabled whatever comes after.
fn merge_keys(have: &mut Vec<Value>, more: Vec<Value>, disputed: &mut Vec<Value>) {
    for key in more {
        let Some(id) = key.get("id").filter(|_| key.is_table()).cloned() else {
            have.push(key);
            continue;
        };
        let Some(known) = have
            .iter_mut()
            .find(|h| h.is_table() && h.get("id") == Some(&id))
        else {
            have.push(key);
            continue;
        };
        if known.get("hash") != key.get("hash") {
            disputed.push(id.clone());
        }
        if disputed.contains(&id) {
            if let Value::Table(known) = known {
                known.insert("enabled".into(), Value::Boolean(false));
            }
        } else {
            combine(known, &key);
        }
    }
}

/// One key listed by two regions with one hash, as one entry. Each
/// region's entry speaks for its own plans: the key is enabled with the
/// plans of the regions that list it enabled, so a region that disables
/// (revokes) it revokes it for its own APIs at once, while the other
/// regions' stay served (the merge failed before, and the PoP kept serving
/// the revoking region's previous definitions, the key enabled). Two
/// secrets under one id (a hash rotated in one region first) are a key the
/// regions disagree on ([`merge_keys`]): disabled for every region until
/// they agree, failing closed, since the old secret must not outlive its
/// rotation anywhere.
fn combine(known: &mut Value, key: &Value) {
    let enabled = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(true);
    let Value::Table(known) = known else { return };
    match (enabled(known.get("enabled")), enabled(key.get("enabled"))) {
        // A disabled listing adds nothing to an enabled key.
        (true, false) => {}
        // The first enabled listing: its plans alone, the disabled ones'
        // dropped.
        (false, true) => {
            known.insert("enabled".into(), Value::Boolean(true));
            known.insert(
                "plans".into(),
                key.get("plans")
                    .cloned()
                    .unwrap_or(Value::Array(Vec::new())),
            );
        }
        (true, true) | (false, false) => {
            let plans = key.get("plans").and_then(Value::as_array);
            let into = known
                .entry("plans")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let (Some(plans), Value::Array(into)) = (plans, into) {
                for plan in plans {
                    if !into.contains(plan) {
                        into.push(plan.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DefinitionDefaults, Definitions};

    const HASH_A: &str = "sha256:a665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3";
    const HASH_B: &str = "sha256:b665a45920422f9d417e4867efdc4fb8a04a1f3fff1fa07e998e86f7f7a27ae3";

    fn region(api: &str, key: &str, hash: &str) -> String {
        format!(
            r#"
[[apis]]
name = "{api}"
endpoint = "edge"
[[apis.routes]]
path = "/x"
method = "GET"
api_key_required = true
integration = {{ type = "mock", status = 200 }}
[[apis.stages]]
name = "prod"

[[usage_plans]]
name = "{api}-plan"
api_stages = [{{ api = "{api}", stage = "prod" }}]

[[api_keys]]
id = "{key}"
hash = "{hash}"
plans = ["{api}-plan"]
"#
        )
    }

    fn compile(sources: &[&str]) -> Result<Definitions, String> {
        let text = merge_sources(sources);
        Definitions::from_toml_str_with(&text, "merged", &DefinitionDefaults::default())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_key_used_in_two_regions_is_one_key_with_both_plans() {
        let (a, b) = (region("a", "acme", HASH_A), region("b", "acme", HASH_A));
        let defs = compile(&[&a, &b]).unwrap();
        assert_eq!(defs.apis.len(), 2);
        let keys: Vec<_> = defs.api_keys.iter().map(|k| (&k.id, &k.plans)).collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].1, &vec!["a-plan".to_owned(), "b-plan".to_owned()]);
    }

    #[test]
    fn a_key_one_region_disables_stays_enabled_for_the_others_only() {
        let a = region("a", "acme", HASH_A);
        let off = region("b", "acme", HASH_A).replace("plans =", "enabled = false\nplans =");
        // Either order: the disabling region's plans are dropped.
        for sources in [[a.as_str(), &off], [&off, &a]] {
            let defs = compile(&sources).unwrap();
            let keys: Vec<_> = defs
                .api_keys
                .iter()
                .map(|k| (k.id.as_str(), k.enabled, k.plans.clone()))
                .collect();
            assert_eq!(keys, [("acme", true, vec!["a-plan".to_owned()])]);
        }
        // Disabled wherever it is listed: disabled.
        let off_a = region("a", "acme", HASH_A).replace("plans =", "enabled = false\nplans =");
        let defs = compile(&[&off_a, &off]).unwrap();
        assert!(!defs.api_keys[0].enabled);
    }

    #[test]
    fn a_key_id_two_regions_give_different_hashes_is_disabled_until_they_agree() {
        let (a, b) = (region("a", "acme", HASH_A), region("b", "acme", HASH_B));
        for sources in [[a.as_str(), &b], [&b, &a]] {
            let defs = compile(&sources).unwrap();
            assert_eq!(defs.api_keys.len(), 1);
            assert!(!defs.api_keys[0].enabled, "neither secret is trusted");
        }
        // A third region agreeing with the first does not settle it.
        let c = region("c", "acme", HASH_A);
        let defs = compile(&[&a, &b, &c]).unwrap();
        assert!(!defs.api_keys[0].enabled, "still disputed");
        // One hash under two ids is still one secret given twice.
        let other = region("b", "other", HASH_A);
        let err = compile(&[&a, &other]).unwrap_err();
        assert!(err.contains("same hash"), "{err}");
    }

    #[test]
    fn a_name_two_regions_define_is_still_a_duplicate() {
        let a = region("a", "k1", HASH_A);
        let again = region("a", "k2", HASH_B);
        let err = compile(&[&a, &again]).unwrap_err();
        assert!(err.contains("duplicate"), "{err}");
    }
}
