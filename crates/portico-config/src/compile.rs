//! Compiling `[[apis]]` and `[[domains]]` into a [`Definitions`] snapshot, checking
//! every name and cross-reference.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Diag;
use crate::file::{
    ApiFile, DefinitionsFile, DeploymentFile, DomainFile, MappingFile, S, StageFile,
};
use crate::model::{Api, BasePathMapping, CURRENT_DEPLOYMENT, CertPaths, Definitions, Domain};
use crate::plans::compile_plans;
use crate::route::{BuiltDeployment, build_deployment};
use crate::stage::{compile_stage, is_stage_name};

/// Values the definitions take from the node that compiles them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionDefaults {
    /// Integration timeout of routes that set none (the node's `limits.default_timeout_ms`).
    pub timeout: Duration,
}

impl Default for DefinitionDefaults {
    fn default() -> Self {
        DefinitionDefaults {
            timeout: Duration::from_millis(29_000),
        }
    }
}

/// Compiles the definitions and renders their canonical source; `None` on any error
/// (all reported to `diag`).
pub(crate) fn build_definitions(
    file: &DefinitionsFile,
    defaults: &DefinitionDefaults,
    diag: &mut Diag<'_>,
) -> Option<Definitions> {
    let apis = compile_apis(&file.apis, defaults, diag);
    let domains = compile_domains(&file.domains, &file.apis, diag);
    let (plans, keys) = compile_plans(&file.usage_plans, &file.api_keys, &file.apis, &apis, diag);
    if diag.has_errors() {
        return None;
    }
    match crate::delta::render(&crate::delta::View::whole(file)) {
        Ok(source) => Some(Definitions::index(apis, domains, source).with_plans(plans, keys)),
        Err(e) => {
            diag.at(0..0, format!("cannot serialize the definitions: {e}"));
            None
        }
    }
}

/// Reports a repeated name at its second occurrence.
fn unique(
    seen: &mut HashMap<String, Range<usize>>,
    name: &S<String>,
    what: &str,
    diag: &mut Diag<'_>,
) -> bool {
    let key = name.get_ref().to_ascii_lowercase();
    if let Some(first) = seen.get(&key) {
        let line = diag.line_of(first);
        let message = format!(
            "duplicate {what} `{}` (first at line {line})",
            name.get_ref()
        );
        diag.at(name.span(), message);
        return false;
    }
    seen.insert(key, name.span());
    true
}

fn compile_apis(
    files: &[ApiFile],
    defaults: &DefinitionDefaults,
    diag: &mut Diag<'_>,
) -> Vec<Arc<Api>> {
    let mut names = HashMap::new();
    let mut hosts = HashMap::new();
    let mut apis = Vec::new();
    for f in files {
        let name = f.name.get_ref();
        if !is_api_name(name) {
            let message = format!("invalid API name `{name}`");
            diag.expect(f.name.span(), message, NAME);
        }
        unique(&mut names, &f.name, "API name", diag);
        for h in &f.hosts {
            if check_host(h, diag) {
                unique(&mut hosts, h, "host", diag);
            }
        }
        if let Some(api) = compile_api(f, defaults, diag) {
            apis.push(Arc::new(api));
        }
    }
    apis
}

fn compile_api(f: &ApiFile, defaults: &DefinitionDefaults, diag: &mut Diag<'_>) -> Option<Api> {
    if let Some(r) = &f.region {
        check_region(r, diag);
    }
    let cors = f.cors.as_ref().map(|c| crate::cors::compile_cors(c, diag));
    let current = build_deployment(CURRENT_DEPLOYMENT, None, &f.routes, defaults.timeout, diag);
    let deployments = compile_deployments(&f.deployments, defaults.timeout, diag);
    let mut names = HashMap::new();
    let mut stages = Vec::new();
    for s in &f.stages {
        if !is_stage_name(s.name.get_ref()) {
            let message = format!("invalid stage name `{}`", s.name.get_ref());
            diag.expect(s.name.span(), message, NAME_CHARS);
        }
        unique(&mut names, &s.name, "stage", diag);
        let Some(deployment) = served_deployment(s, &current, &deployments, diag) else {
            continue;
        };
        if let Some(stage) = compile_stage(s, deployment, defaults.timeout, diag) {
            stages.push(Arc::new(stage));
        }
    }
    Some(Api {
        name: f.name.get_ref().clone(),
        endpoint: *f.endpoint.get_ref(),
        region: f.region.as_ref().map(|r| r.get_ref().clone()),
        hosts: f
            .hosts
            .iter()
            .map(|h| h.get_ref().to_ascii_lowercase())
            .collect(),
        description: f.description.clone(),
        cors: cors.flatten().map(Arc::new),
        current: current.deployment,
        deployments: deployments.into_iter().map(|d| d.deployment).collect(),
        stages,
    })
}

fn compile_deployments(
    files: &[DeploymentFile],
    timeout: Duration,
    diag: &mut Diag<'_>,
) -> Vec<BuiltDeployment> {
    let mut ids = HashMap::new();
    let mut out = Vec::new();
    for d in files {
        let id = d.id.get_ref();
        if id == CURRENT_DEPLOYMENT {
            let message = "deployment id `current` is reserved for the API's top-level routes";
            diag.at(d.id.span(), message);
        } else if !is_stage_name(id) {
            let message = format!("invalid deployment id `{id}`");
            diag.expect(d.id.span(), message, NAME_CHARS);
        }
        unique(&mut ids, &d.id, "deployment", diag);
        out.push(build_deployment(
            id,
            d.description.clone(),
            &d.routes,
            timeout,
            diag,
        ));
    }
    out
}

/// The deployment a stage pins, or the API's top-level routes.
fn served_deployment<'a>(
    stage: &StageFile,
    current: &'a BuiltDeployment,
    deployments: &'a [BuiltDeployment],
    diag: &mut Diag<'_>,
) -> Option<&'a BuiltDeployment> {
    let Some(id) = &stage.deployment else {
        return Some(current);
    };
    let found = deployments
        .iter()
        .find(|d| d.deployment.id == *id.get_ref());
    if found.is_none() && !diag.is_broken(&format!("deployment:{}", id.get_ref())) {
        let known: Vec<String> = deployments
            .iter()
            .map(|d| format!("`{}`", d.deployment.id))
            .collect();
        let expected = if known.is_empty() {
            "no `deployment` (this API declares no deployments)".to_owned()
        } else {
            format!("one of {}", known.join(", "))
        };
        diag.expect(
            id.span(),
            format!("unknown deployment `{}`", id.get_ref()),
            expected,
        );
    }
    found
}

fn compile_domains(files: &[DomainFile], apis: &[ApiFile], diag: &mut Diag<'_>) -> Vec<Domain> {
    let mut names = HashMap::new();
    let hosts: HashMap<String, &str> = apis
        .iter()
        .flat_map(|a| {
            a.hosts
                .iter()
                .map(move |h| (h.get_ref().to_ascii_lowercase(), a.name.get_ref().as_str()))
        })
        .collect();
    let mut out = Vec::new();
    for f in files {
        let name = f.name.get_ref().to_ascii_lowercase();
        let fresh = check_host(&f.name, diag) && unique(&mut names, &f.name, "domain", diag);
        if let Some(api) = hosts.get(&name).filter(|_| fresh) {
            let message = format!("domain `{name}` is also a host of API `{api}`");
            diag.at(f.name.span(), message);
        }
        let mappings = compile_mappings(&f.mappings, apis, diag);
        out.push(Domain {
            name,
            certificate: f.certificate.as_ref().map(|c| CertPaths {
                cert: c.cert.get_ref().into(),
                key: c.key.get_ref().into(),
            }),
            mappings,
        });
    }
    out
}

fn compile_mappings(
    files: &[MappingFile],
    apis: &[ApiFile],
    diag: &mut Diag<'_>,
) -> Vec<BasePathMapping> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for m in files {
        let base_path = m.base_path.as_ref().map_or("", |b| b.get_ref().as_str());
        if let Some(b) = &m.base_path {
            if !is_base_path(base_path) {
                let message = format!("invalid base path `{base_path}`");
                diag.expect(b.span(), message, "\"\" or one path segment without `/`");
            } else if base_path == "." || base_path == ".." {
                let message = format!("invalid base path `{base_path}`");
                let why = "a segment other than `.` and `..`: requests are routed with dot segments resolved";
                diag.expect(b.span(), message, why);
            } else {
                unique(&mut seen, b, "base path", diag);
            }
        } else if seen.contains_key("") {
            diag.at(m.api.span(), "duplicate root mapping (base_path \"\")");
        } else {
            seen.insert(String::new(), m.api.span());
        }
        check_mapping_target(m, apis, diag);
        out.push(BasePathMapping {
            base_path: base_path.to_owned(),
            api: m.api.get_ref().clone(),
            stage: m.stage.get_ref().clone(),
        });
    }
    out
}

fn check_mapping_target(m: &MappingFile, apis: &[ApiFile], diag: &mut Diag<'_>) {
    let api_name = m.api.get_ref();
    let Some(api) = apis.iter().find(|a| a.name.get_ref() == api_name) else {
        if !diag.is_broken(&format!("api:{api_name}")) {
            let known: Vec<String> = apis
                .iter()
                .map(|a| format!("`{}`", a.name.get_ref()))
                .collect();
            diag.expect(
                m.api.span(),
                format!("unknown API `{api_name}`"),
                format!("one of {}", known.join(", ")),
            );
        }
        return;
    };
    let stage = m.stage.get_ref();
    let exists = api.stages.iter().any(|s| s.name.get_ref() == stage);
    if !exists && !diag.is_broken(&format!("stage:{stage}")) {
        let known: Vec<String> = api
            .stages
            .iter()
            .map(|s| format!("`{}`", s.name.get_ref()))
            .collect();
        diag.expect(
            m.stage.span(),
            format!("API `{api_name}` has no stage `{stage}`"),
            format!("one of {}", known.join(", ")),
        );
    }
}

/// Longest API, stage or usage plan name, deployment or key id (bytes):
/// the backbone carries names in frames that bound them to this, so a name
/// the configuration accepts is never refused on its way to a peer.
pub const MAX_NAME: usize = 128;

/// What an API name must look like, for messages.
pub(crate) const NAME: &str = "[A-Za-z0-9][A-Za-z0-9_-]*, at most 128 bytes";
/// What a stage or plan name or a deployment id must look like, for messages.
pub(crate) const NAME_CHARS: &str = "1 to 128 letters, digits, `_` and `-`";

pub(crate) fn is_api_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_base_path(p: &str) -> bool {
    p.is_empty()
        || p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// A node id: a label, but not `ca`, which would name its certificate and
/// key files (`NODE.pem`, `NODE.key`) as the backbone CA's, nor
/// `localhost`, a name every node certificate holds for local topologies
/// (so any node could claim it).
pub fn is_node_id(s: &str) -> bool {
    is_label(s) && s != "ca" && s != "localhost"
}

/// What a node id must look like, for messages.
pub const NODE_ID: &str = "[a-z0-9][a-z0-9-]{0,62}, not `ca` or `localhost`";

/// `[a-z0-9][a-z0-9-]{0,62}`: node ids and region names.
pub(crate) fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

pub(crate) fn check_region(r: &S<String>, diag: &mut Diag<'_>) -> bool {
    let ok = is_label(r.get_ref());
    if !ok {
        diag.expect(
            r.span(),
            format!("invalid region `{}`", r.get_ref()),
            "[a-z0-9][a-z0-9-]{0,62}",
        );
    }
    ok
}

/// A DNS host name (letters, digits, `-`, dots), without port.
pub(crate) fn is_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_host(h: &S<String>, diag: &mut Diag<'_>) -> bool {
    let ok = is_hostname(h.get_ref());
    if !ok {
        let message = format!("invalid host name `{}`", h.get_ref());
        diag.expect(
            h.span(),
            message,
            "a DNS name such as api.example.com, without port",
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::MAX_NAME;
    use crate::testdata::*;

    #[test]
    fn duplicate_and_invalid_api_names() {
        let text = format!(
            "{NODE}[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n\
             [[apis]]\nname = \"-b\"\nendpoint = \"edge\"\n"
        );
        assert_eq!(
            errors(&text),
            [
                "8:8: duplicate API name `a` (first at line 5)",
                "11:8: invalid API name `-b`"
            ]
        );
    }

    /// Names travel over the backbone in frames that hold them to
    /// [`MAX_NAME`] bytes: a longer one is refused here, not there.
    #[test]
    fn names_are_at_most_128_bytes() {
        let name = |n: usize| "n".repeat(n);
        let text = |n: usize| {
            format!(
                "{NODE}[[apis]]\nname = \"{}\"\nendpoint = \"edge\"\n[[apis.stages]]\nname = \"{}\"\n\
                 [[usage_plans]]\nname = \"{}\"\n",
                name(n),
                name(n),
                name(n)
            )
        };
        // Other errors (a plan that covers no stage...) are not the point.
        let invalid = |n: usize| match parse(&text(n)) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .iter()
                .filter(|e| e.message.starts_with("invalid"))
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        };
        assert_eq!(invalid(MAX_NAME), Vec::<String>::new());
        let long = name(MAX_NAME + 1);
        assert_eq!(
            invalid(MAX_NAME + 1),
            [
                format!("5:8: invalid API name `{long}`"),
                format!("8:8: invalid stage name `{long}`"),
                format!("10:8: invalid usage plan name `{long}`"),
            ]
        );
    }

    #[test]
    fn duplicate_and_invalid_hosts() {
        let text = format!(
            "{NODE}[[apis]]\nname = \"a\"\nendpoint = \"edge\"\nhosts = [\"x.example.com\", \"bad host\"]\n\
             [[apis]]\nname = \"b\"\nendpoint = \"edge\"\nhosts = [\"X.example.com\"]\n"
        );
        assert_eq!(
            errors(&text),
            [
                "7:27: invalid host name `bad host`",
                "11:10: duplicate host `X.example.com` (first at line 7)"
            ]
        );
    }

    #[test]
    fn duplicate_routes() {
        let text = api(&(mock_route("GET", "/x") + &mock_route("GET", "/x")));
        assert_eq!(
            errors(&text),
            ["14:8: duplicate route `GET /x` (first defined at line 9)"]
        );
    }

    #[test]
    fn route_conflicts_that_matchit_rejects() {
        let routes = [
            mock_route("GET", "/items/{id}"),
            mock_route("POST", "/items/{x}"),
            mock_route("ANY", "/{p+}"),
            mock_route("ANY", "/{q}"),
        ];
        assert_eq!(
            errors(&api(&routes.concat())),
            [
                "14:8: route path `/items/{x}` conflicts with `/items/{id}`",
                "24:8: route path `/{q}` conflicts with `/{p+}`",
            ]
        );
    }

    #[test]
    fn bad_path_templates_point_inside_the_path() {
        let routes = [
            mock_route("GET", "/a//b"),
            mock_route("GET", "/{p+}/x"),
            mock_route("GET", "items"),
            mock_route("GET", "/a/{id}/{id}"),
        ];
        assert_eq!(
            errors(&api(&routes.concat())),
            [
                "9:12: empty path segment",
                "14:10: greedy parameter `{p+}` must be the last segment",
                "19:9: route path must start with `/`",
                "24:17: duplicate path parameter `id`",
            ]
        );
    }

    /// Requests are routed in their normal form: a literal that is not in
    /// it would never match.
    #[test]
    fn literals_no_normal_path_holds_are_refused() {
        let routes = [
            mock_route("GET", "/a/../b"),
            mock_route("GET", "/a/."),
            mock_route("GET", "/%61dmin"),
            mock_route("GET", "/a/%2e%2e"),
            mock_route("GET", "/a/b%2fc"),
            mock_route("GET", "/a/b%zz"),
            mock_route("GET", "/a/b%2"),
            mock_route("GET", "/a%2F%C3%A9/.well-known/a..b"),
        ];
        let e = parse(&api(&routes.concat())).unwrap_err().to_string();
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            [
                "t.toml:9:12: path segment `..` can never match (expected no `.` or `..` segment: \
                 requests are routed with dot segments resolved)",
                "t.toml:14:12: path segment `.` can never match (expected no `.` or `..` segment: \
                 requests are routed with dot segments resolved)",
                "t.toml:19:10: path segment `%61dmin` can never match (expected `a` for `%61`: \
                 requests are routed with escaped unreserved characters decoded)",
                "t.toml:24:12: path segment `%2e%2e` can never match (expected `.` for `%2e`: \
                 requests are routed with escaped unreserved characters decoded)",
                "t.toml:29:13: path segment `b%2fc` can never match (expected `%2F` for `%2f`: \
                 requests are routed with escapes in upper case)",
                "t.toml:34:13: path segment `b%zz` can never match (expected `%` and two hex \
                 digits: requests with other escapes are refused)",
                "t.toml:39:13: path segment `b%2` can never match (expected `%` and two hex \
                 digits: requests with other escapes are refused)",
            ]
        );
    }

    #[test]
    fn unknown_method_and_timeout_range() {
        let text = api(
            "[[apis.routes]]\nmethod = \"get\"\npath = \"/\"\ntimeout_ms = 30000\n\
             [apis.routes.integration]\ntype = \"mock\"\n",
        );
        assert_eq!(
            errors(&text),
            [
                "8:10: unknown method `get`",
                "10:14: timeout_ms 30000 is out of range"
            ]
        );
    }

    #[test]
    fn deployments_and_stage_references() {
        let text = api(
            "[[apis.deployments]]\nid = \"current\"\n[[apis.deployments]]\nid = \"v1\"\n\
             [[apis.deployments]]\nid = \"v1\"\n\
             [[apis.stages]]\nname = \"prod\"\ndeployment = \"v9\"\n\
             [[apis.stages]]\nname = \"prod\"\n[[apis.stages]]\nname = \"a b\"\n",
        );
        assert_eq!(
            errors(&text),
            [
                "8:6: deployment id `current` is reserved for the API's top-level routes",
                "12:6: duplicate deployment `v1` (first at line 10)",
                "15:14: unknown deployment `v9`",
                "17:8: duplicate stage `prod` (first at line 14)",
                "19:8: invalid stage name `a b`",
            ]
        );
    }

    #[test]
    fn domain_mappings() {
        let text = api(
            "hosts = [\"h.example.com\"]\n[[apis.stages]]\nname = \"prod\"\n\
             [[domains]]\nname = \"d.example.com\"\n\
             [[domains.mappings]]\napi = \"b\"\nstage = \"prod\"\n\
             [[domains.mappings]]\napi = \"a\"\nstage = \"dev\"\n\
             [[domains.mappings]]\nbase_path = \"v1\"\napi = \"a\"\nstage = \"prod\"\n\
             [[domains.mappings]]\nbase_path = \"v1\"\napi = \"a\"\nstage = \"prod\"\n\
             [[domains.mappings]]\nbase_path = \"a/b\"\napi = \"a\"\nstage = \"prod\"\n\
             [[domains.mappings]]\nbase_path = \"..\"\napi = \"a\"\nstage = \"prod\"\n\
             [[domains]]\nname = \"H.example.com\"\n[[domains]]\nname = \"d.example.com\"\n",
        );
        assert_eq!(
            errors(&text),
            [
                "13:7: unknown API `b`",
                "16:7: duplicate root mapping (base_path \"\")",
                "17:9: API `a` has no stage `dev`",
                "23:13: duplicate base path `v1` (first at line 19)",
                "27:13: invalid base path `a/b`",
                "31:13: invalid base path `..`",
                "35:8: domain `h.example.com` is also a host of API `a`",
                "37:8: duplicate domain `d.example.com` (first at line 11)",
            ]
        );
    }
}
