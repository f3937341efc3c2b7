//! Compiling stages: variables, the deployment they serve, and per-route overrides.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use crate::error::Diag;
use crate::file::{RouteOverrideFile, S, SpannedMap, StageFile};
use crate::model::{RouteSettings, Stage};
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
    let settings = overrides(&file.route_overrides, deployment, default_timeout, diag);
    if let Some(vars) = &variables {
        check_references(file.name.get_ref(), vars, deployment, diag);
    }
    let (variables, (settings, fallback)) = (variables?, settings?);
    Some(Stage {
        name: file.name.get_ref().clone(),
        description: file.description.clone(),
        variables,
        deployment: deployment.deployment.clone(),
        settings,
        fallback,
    })
}

pub(crate) fn is_stage_name(name: &str) -> bool {
    !name.is_empty()
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
        if !is_stage_variable_value(value.get_ref()) {
            let message = format!("invalid stage variable value `{}`", value.get_ref());
            diag.expect(
                value.span(),
                message,
                "one or more of letters, digits and -._~:/?#&=,",
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
    vars: &BTreeMap<String, String>,
    built: &BuiltDeployment,
    diag: &mut Diag<'_>,
) {
    for (route, r) in &built.var_refs {
        if !vars.contains_key(&r.name) {
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

/// Effective settings per route: specific override, then `*`, then the route's own.
fn overrides(
    files: &[RouteOverrideFile],
    deployment: &BuiltDeployment,
    default_timeout: Duration,
    diag: &mut Diag<'_>,
) -> Option<(Vec<RouteSettings>, RouteSettings)> {
    let routes = &deployment.deployment.routes;
    let mut star: Option<&RouteOverrideFile> = None;
    let mut specific: HashMap<usize, &RouteOverrideFile> = HashMap::new();
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    let mut ok = true;
    for o in files {
        let key = o.route.get_ref().as_str();
        if let Some(first) = seen.get(key) {
            let line = diag.line_of(first);
            diag.at(
                o.route.span(),
                format!("duplicate override for `{key}` (first at line {line})"),
            );
            ok = false;
            continue;
        }
        seen.insert(key, o.route.span());
        ok &= o
            .timeout_ms
            .as_ref()
            .is_none_or(|t| check_timeout(t, diag).is_some());
        if key == "*" {
            star = Some(o);
        } else if let Some(&i) = deployment.keys.get(key) {
            specific.insert(i, o);
        } else if !diag.is_broken(&format!("route:{key}")) {
            unknown_route(&o.route, &deployment.deployment.id, diag);
            ok = false;
        }
    }
    let base = |own: &RouteSettings| apply(star, own.clone());
    let settings = routes
        .iter()
        .enumerate()
        .map(|(i, r)| apply(specific.get(&i).copied(), base(&r.settings)))
        .collect();
    let fallback = apply(
        star,
        RouteSettings {
            timeout: default_timeout,
        },
    );
    ok.then_some((settings, fallback))
}

fn unknown_route(route: &S<String>, deployment: &str, diag: &mut Diag<'_>) {
    diag.expect(
        route.span(),
        format!("override names unknown route `{}`", route.get_ref()),
        format!("\"*\" or \"METHOD /path\" of a route in deployment `{deployment}`"),
    );
}

fn apply(o: Option<&RouteOverrideFile>, mut settings: RouteSettings) -> RouteSettings {
    if let Some(t) = o.and_then(|o| o.timeout_ms.as_ref()) {
        let ms = *t.get_ref();
        if crate::route::TIMEOUT_MS.contains(&ms) {
            settings.timeout = Duration::from_millis(ms);
        }
    }
    settings
}
