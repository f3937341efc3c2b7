//! Compiling stages: variables, the deployment they serve, and per-route overrides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::time::Duration;

use crate::cache::{CachePartial, compile_cache};
use crate::error::Diag;
use crate::file::{RouteOverrideFile, S, SpannedMap, StageFile};
use crate::model::{RouteSettings, Stage};
use crate::plans::compile_throttle;
use crate::route::{BuiltDeployment, check_timeout};
use crate::template::{is_stage_variable_name, is_stage_variable_value};

/// Compiles one stage against the deployment it serves; `None` when it has errors.
pub(crate) fn compile_stage(
    file: &StageFile,
    deployment: &BuiltDeployment,
    default_timeout: Duration,
    diag: &mut Diag<'_>,
) -> Option<Stage> {
    let variables = variables(&file.variables, diag);
    let throttle = match &file.throttle {
        Some(t) => compile_throttle(t, diag).map(Some),
        None => Some(None),
    };
    let settings = overrides(&file.route_overrides, deployment, default_timeout, diag);
    let defined: BTreeSet<&str> = file
        .variables
        .keys()
        .map(|k| k.get_ref().as_str())
        .collect();
    check_references(file.name.get_ref(), &defined, deployment, diag);
    let (variables, (settings, fallback), throttle) = (variables?, settings?, throttle?);
    Some(Stage {
        name: file.name.get_ref().clone(),
        description: file.description.clone(),
        variables,
        deployment: deployment.deployment.clone(),
        throttle,
        settings,
        fallback,
    })
}

/// 1 to [`crate::MAX_NAME`] letters, digits, `_` and `-`: stage names,
/// deployment ids, usage plan names and (with the same bound) key ids.
pub(crate) fn is_stage_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn variables(map: &SpannedMap, diag: &mut Diag<'_>) -> Option<BTreeMap<String, String>> {
    let mut ok = true;
    for (name, value) in map {
        if !is_stage_variable_name(name.get_ref()) {
            let message = format!("invalid stage variable name `{}`", name.get_ref());
            diag.expect(name.span(), message, "letters, digits and `_`");
            ok = false;
        }
        if value.get_ref().contains('#') {
            let message = format!(
                "`#` cannot appear in stage variable value `{}`: a backend is sent no fragment",
                value.get_ref()
            );
            diag.at(value.span(), message);
            ok = false;
        } else if !is_stage_variable_value(value.get_ref()) {
            let message = format!("invalid stage variable value `{}`", value.get_ref());
            diag.expect(
                value.span(),
                message,
                "one or more of letters, digits and -._~:/?&=,",
            );
            ok = false;
        }
    }
    ok.then(|| {
        map.iter()
            .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
            .collect()
    })
}

/// Every stage variable the served routes use must be defined by the stage; reported
/// at the reference.
fn check_references(
    stage: &str,
    defined: &BTreeSet<&str>,
    built: &BuiltDeployment,
    diag: &mut Diag<'_>,
) {
    for (route, r) in &built.var_refs {
        if !defined.contains(r.name.as_str()) {
            let key = &built.deployment.routes[*route].key;
            diag.expect(
                r.at.clone(),
                format!(
                    "stage variable `{}` is not defined in stage `{stage}`, which serves route `{key}`",
                    r.name
                ),
                format!("`{}` in the variables of stage `{stage}`", r.name),
            );
        }
    }
}

/// One override, its `cache` table already checked.
struct Override<'f> {
    file: &'f RouteOverrideFile,
    cache: CachePartial,
}

/// Effective settings per route: specific override, then `*`, then the route's own.
fn overrides(
    files: &[RouteOverrideFile],
    deployment: &BuiltDeployment,
    default_timeout: Duration,
    diag: &mut Diag<'_>,
) -> Option<(Vec<RouteSettings>, RouteSettings)> {
    let (star, specific) = resolve_overrides(files, deployment, diag)?;
    let no_cache = CachePartial::default();
    let star_cache = star.as_ref().map_or(&no_cache, |s| &s.cache);
    let settings = deployment
        .deployment
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let own = deployment.cache.get(i).unwrap_or(&no_cache);
            let both = apply(star.as_ref(), own, r.settings.clone());
            let specific = specific.get(&i);
            apply(specific, &own.overlay(star_cache), both)
        })
        .collect();
    let fallback = RouteSettings {
        timeout: default_timeout,
        cache: None,
        throttle: None,
    };
    let fallback = apply(star.as_ref(), &no_cache, fallback);
    Some((settings, fallback))
}

type Resolved<'f> = (Option<Override<'f>>, HashMap<usize, Override<'f>>);

/// The `*` override and the overrides per route index; `None` on any error.
fn resolve_overrides<'f>(
    files: &'f [RouteOverrideFile],
    deployment: &BuiltDeployment,
    diag: &mut Diag<'_>,
) -> Option<Resolved<'f>> {
    let (mut star, mut specific) = (None, HashMap::new());
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    let mut ok = true;
    for o in files {
        let key = o.route.get_ref().as_str();
        if let Some(first) = seen.get(key) {
            let message = format!(
                "duplicate override for `{key}` (first at line {})",
                diag.line_of(first)
            );
            diag.at(o.route.span(), message);
            ok = false;
            continue;
        }
        seen.insert(key, o.route.span());
        ok &= o
            .timeout_ms
            .as_ref()
            .is_none_or(|t| check_timeout(t, diag).is_some());
        ok &= o
            .throttle
            .as_ref()
            .is_none_or(|t| compile_throttle(t, diag).is_some());
        let cache = match &o.cache {
            Some(c) => compile_cache(c, false, diag),
            None => Some(CachePartial::default()),
        };
        let Some(cache) = cache else {
            ok = false;
            continue;
        };
        let compiled = Override { file: o, cache };
        if key == "*" {
            star = Some(compiled);
        } else if let Some(&i) = deployment.keys.get(key) {
            specific.insert(i, compiled);
        } else if !diag.is_broken(&format!("route:{key}")) {
            unknown_route(&o.route, &deployment.deployment.id, diag);
            ok = false;
        }
    }
    ok.then_some((star, specific))
}

fn unknown_route(route: &S<String>, deployment: &str, diag: &mut Diag<'_>) {
    diag.expect(
        route.span(),
        format!("override names unknown route `{}`", route.get_ref()),
        format!("\"*\" or \"METHOD /path\" of a route in deployment `{deployment}`"),
    );
}

/// Applies override `o` to `settings`: its timeout, and its cache keys laid over `below`
/// (the cache keys of every level under `o`).
fn apply(
    o: Option<&Override<'_>>,
    below: &CachePartial,
    mut settings: RouteSettings,
) -> RouteSettings {
    let Some(o) = o else {
        return settings;
    };
    if let Some(t) = o.file.timeout_ms.as_ref() {
        let ms = *t.get_ref();
        if crate::route::TIMEOUT_MS.contains(&ms) {
            settings.timeout = Duration::from_millis(ms);
        }
    }
    if o.file.cache.is_some() {
        settings.cache = below.overlay(&o.cache).resolve();
    }
    if let Some(t) = &o.file.throttle {
        let t = t.get_ref();
        let burst = u32::try_from(*t.burst.get_ref()).unwrap_or(1);
        settings.throttle = Some(crate::plans::RateLimit {
            rate: *t.rate.get_ref(),
            burst,
        });
    }
    settings
}

#[cfg(test)]
mod tests {
    use crate::testdata::*;

    const ROUTE: &str = "[[apis.routes]]\npath = \"/i/{id}\"\n[apis.routes.integration]\n\
                         type = \"http_proxy\"\nuri = \"http://${stageVariables.host}/{id}\"\n";

    #[test]
    fn stage_variables_and_overrides() {
        let text = api(&format!(
            "{ROUTE}[[apis.stages]]\nname = \"prod\"\n\
             variables = {{ \"bad-name\" = \"x\", ok = \"has space\" }}\n\
             [[apis.stages.route_overrides]]\nroute = \"GET /nope\"\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\ntimeout_ms = 10\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\n"
        ));
        assert_eq!(
            errors(&text),
            [
                "11:15: stage variable `host` is not defined in stage `prod`, which serves route `ANY /i/{id}`",
                "14:15: invalid stage variable name `bad-name`",
                "14:38: invalid stage variable value `has space`",
                "16:9: override names unknown route `GET /nope`",
                "19:14: timeout_ms 10 is out of range",
                "21:9: duplicate override for `*` (first at line 18)",
            ]
        );
    }

    /// The http crate drops a URI's fragment: `?tag=${stageVariables.tag}`
    /// with `c#` would send `?tag=c`.
    #[test]
    fn a_fragment_in_a_variable_value_is_refused() {
        let text = api(&format!(
            "{ROUTE}[[apis.stages]]\nname = \"prod\"\nvariables = {{ host = \"h:1/search?tag=c#x\" }}\n"
        ));
        assert_eq!(
            errors(&text),
            [
                "14:22: `#` cannot appear in stage variable value `h:1/search?tag=c#x`: a backend is sent no fragment"
            ]
        );
    }

    #[test]
    fn each_stage_serving_a_route_must_define_its_variables() {
        let text = api(&format!(
            "{ROUTE}[[apis.stages]]\nname = \"prod\"\nvariables = {{ host = \"h:1\" }}\n\
             [[apis.stages]]\nname = \"dev\"\n\
             [[apis.deployments]]\nid = \"v1\"\n[[apis.stages]]\nname = \"old\"\ndeployment = \"v1\"\n"
        ));
        assert_eq!(
            errors(&text),
            [
                "11:15: stage variable `host` is not defined in stage `dev`, which serves route `ANY /i/{id}`"
            ]
        );
    }

    #[test]
    fn override_precedence() {
        let text = api(&format!(
            "{ROUTE}{}[[apis.stages]]\nname = \"prod\"\nvariables = {{ host = \"h:1\" }}\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\ntimeout_ms = 3000\n\
             [[apis.stages.route_overrides]]\nroute = \"GET /m\"\ntimeout_ms = 100\n",
            mock_route("GET", "/m")
        ));
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let stage = c
            .definitions
            .api("a")
            .unwrap()
            .stage("prod")
            .unwrap()
            .clone();
        let ms = |i| stage.route_settings(i).timeout.as_millis();
        assert_eq!((ms(0), ms(1), ms(99)), (3000, 100, 3000));
    }
}
