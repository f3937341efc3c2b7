//! Merging the definitions of several regions into one file, as a PoP that
//! serves them all compiles them.
//!
//! Each region's list entries are kept side by side, so a name two regions
//! both define is reported as the duplicate it is, with one exception: an
//! API key. A customer's key is one credential wherever it is used (an AWS
//! API key is account-wide), so every region that admits it lists it, each
//! with its own usage plans; the same key (same id, hash and state) is
//! merged into one entry holding every region's plans.

use toml::{Table, Value};

/// The regions' definition files (`Definitions::source` texts) as one file.
/// A text that does not parse as TOML makes the merge a plain concatenation,
/// which the compiler then reports with that text's own error.
pub(crate) fn merge_sources(sources: &[&str]) -> String {
    let concatenated = || sources.join("\n");
    let mut merged = Table::new();
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
                    merge_keys(have, more);
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

/// Adds `more` keys to `have`, a key already there taking the new one's plans.
fn merge_keys(have: &mut Vec<Value>, more: Vec<Value>) {
    for key in more {
        match have.iter_mut().find(|h| same_key(h, &key)) {
            Some(Value::Table(known)) => {
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
            _ => have.push(key),
        }
    }
}

/// One key listed twice: the same id, hash and state.
fn same_key(a: &Value, b: &Value) -> bool {
    let field = |v: &Value, name: &str| v.get(name).cloned();
    let enabled = |v: &Value| v.get("enabled").and_then(Value::as_bool).unwrap_or(true);
    a.is_table()
        && b.is_table()
        && field(a, "id").is_some()
        && field(a, "id") == field(b, "id")
        && field(a, "hash") == field(b, "hash")
        && enabled(a) == enabled(b)
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
    fn a_key_id_two_regions_give_different_hashes_or_states_is_refused() {
        let (a, b) = (region("a", "acme", HASH_A), region("b", "acme", HASH_B));
        let err = compile(&[&a, &b]).unwrap_err();
        assert!(err.contains("duplicate API key id `acme`"), "{err}");
        let off = region("b", "acme", HASH_A).replace("plans =", "enabled = false\nplans =");
        let err = compile(&[&a, &off]).unwrap_err();
        assert!(err.contains("duplicate API key id `acme`"), "{err}");
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
