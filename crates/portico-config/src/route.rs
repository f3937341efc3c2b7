//! Route path templates and deployments: routes grouped into resources behind a
//! matchit router.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{CachePartial, compile_cache};
use crate::error::Diag;
use crate::file::RouteFile;
use crate::integration::{VarRef, compile_integration};
use crate::method::Method;
use crate::model::{Deployment, Resource, Route, RouteSettings};
use crate::plans::compile_throttle;
use crate::template::{Problem, is_param_name};

/// Integration timeouts allowed, in milliseconds (API Gateway's limits).
pub(crate) const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 50..=29_000;

/// Longest route path (bytes). A route's rate travels over the backbone
/// under a scope that holds its path (`route:API/STAGE/METHOD PATH`), so
/// every path the configuration accepts must fit there.
pub const MAX_ROUTE_PATH: usize = 1024;

/// A route path such as `/items/{id}` or `/files/{path+}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

impl PathTemplate {
    pub(crate) fn parse(path: &str) -> Result<PathTemplate, Problem> {
        if path.len() > MAX_ROUTE_PATH {
            let message = format!("route path is {} bytes long", path.len());
            return Err(
                Problem::new(0, message).expecting(format!("at most {MAX_ROUTE_PATH} bytes"))
            );
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(Problem::new(0, "route path must start with `/`")
                .expecting("a path such as /items/{id}"));
        };
        let mut segments = Vec::new();
        if rest.is_empty() {
            return Ok(PathTemplate { segments });
        }
        let mut offset = 1;
        let count = rest.split('/').count();
        for (i, raw) in rest.split('/').enumerate() {
            let segment = parse_segment(raw, i + 1 == count)
                .map_err(|p| Problem::new(offset + p.offset, p.message).with(p.expected))?;
            let name = segment.param_name();
            if name.is_some() && segments.iter().any(|s: &Segment| s.param_name() == name) {
                let name = name.unwrap_or_default();
                let message = format!("duplicate path parameter `{name}`");
                return Err(Problem::new(offset, message));
            }
            segments.push(segment);
            offset += raw.len() + 1;
        }
        Ok(PathTemplate { segments })
    }

    /// The same path in matchit's syntax (`{name+}` becomes `{*name}`).
    pub(crate) fn matchit_path(&self) -> String {
        if self.segments.is_empty() {
            return "/".to_owned();
        }
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(n) => out.push_str(&format!("{{{n}}}")),
                Segment::Greedy(n) => out.push_str(&format!("{{*{n}}}")),
            }
        }
        out
    }

    /// Parameter names, without the `+` of a greedy parameter.
    pub(crate) fn params(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| s.param_name().map(str::to_owned))
            .collect()
    }
}

impl Segment {
    fn param_name(&self) -> Option<&str> {
        match self {
            Segment::Param(n) | Segment::Greedy(n) => Some(n),
            Segment::Literal(_) => None,
        }
    }
}

impl Problem {
    fn with(mut self, expected: Option<String>) -> Self {
        self.expected = expected;
        self
    }
}

fn parse_segment(raw: &str, last: bool) -> Result<Segment, Problem> {
    if raw.is_empty() {
        return Err(Problem::new(0, "empty path segment").expecting("no `//` and no trailing `/`"));
    }
    if let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let (name, greedy) = match inner.strip_suffix('+') {
            Some(n) => (n, true),
            None => (inner, false),
        };
        if !is_param_name(name) {
            return Err(Problem::new(0, format!("invalid path parameter `{raw}`"))
                .expecting("{name} with letters, digits, `_`, `-` or `.`"));
        }
        if greedy && !last {
            return Err(Problem::new(
                0,
                format!("greedy parameter `{raw}` must be the last segment"),
            ));
        }
        let name = name.to_owned();
        return Ok(if greedy {
            Segment::Greedy(name)
        } else {
            Segment::Param(name)
        });
    }
    if let Some(at) = raw.find(|c: char| !is_path_char(c)) {
        return Err(
            Problem::new(at, format!("invalid character in path segment `{raw}`"))
                .expecting("a literal segment or a whole-segment {param}"),
        );
    }
    if let Some(p) = unmatchable(raw) {
        return Err(p);
    }
    Ok(Segment::Literal(raw.to_owned()))
}

/// Why literal segment `raw` can never match, if it cannot: requests are
/// routed in their normal form (dot segments resolved, escaped unreserved
/// characters decoded, other escapes in upper case; malformed ones refused).
fn unmatchable(raw: &str) -> Option<Problem> {
    let never = || format!("path segment `{raw}` can never match");
    if raw == "." || raw == ".." {
        let why = "no `.` or `..` segment: requests are routed with dot segments resolved";
        return Some(Problem::new(0, never()).expecting(why));
    }
    for (at, _) in raw.match_indices('%') {
        let hex = raw
            .get(at + 1..at + 3)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        let why = match hex {
            None => "`%` and two hex digits: requests with other escapes are refused".to_owned(),
            Some(h) => match escaped_unreserved(h) {
                Some(c) => format!(
                    "`{c}` for `%{h}`: requests are routed with escaped unreserved characters decoded"
                ),
                None if h.bytes().any(|b| b.is_ascii_lowercase()) => format!(
                    "`%{}` for `%{h}`: requests are routed with escapes in upper case",
                    h.to_ascii_uppercase()
                ),
                None => continue,
            },
        };
        return Some(Problem::new(at, never()).expecting(why));
    }
    None
}

/// The unreserved character (RFC 3986 §2.3) two hex digits encode, if any:
/// the gateway decodes these before routing, so a route literal holding one
/// escaped could never match. One rule for both.
pub fn escaped_unreserved(hex: &str) -> Option<char> {
    let c = char::from(u8::from_str_radix(hex, 16).ok()?);
    (c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')).then_some(c)
}

/// RFC 3986 `pchar`: unreserved, sub-delims, `:`, `@` and `%` (for pct-encoded).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

/// A compiled deployment plus what stages need to check against it.
pub(crate) struct BuiltDeployment {
    pub deployment: Arc<Deployment>,
    /// Route key -> route index.
    pub keys: HashMap<String, usize>,
    /// (route index, stage variable reference) for every reference in integrations.
    pub var_refs: Vec<(usize, VarRef)>,
    /// Each route's own `cache` table, by route index, for stage overrides to merge into.
    pub cache: Vec<CachePartial>,
}

/// Compiles routes into a deployment; a route with errors is reported and left out.
pub(crate) fn build_deployment(
    id: &str,
    description: Option<String>,
    files: &[RouteFile],
    timeout: Duration,
    diag: &mut Diag<'_>,
) -> BuiltDeployment {
    let mut b = Builder {
        deployment: Deployment {
            id: id.to_owned(),
            description,
            routes: Vec::new(),
            router: matchit::Router::new(),
            resources: Vec::new(),
        },
        keys: HashMap::new(),
        var_refs: Vec::new(),
        cache: Vec::new(),
        first_seen: HashMap::new(),
        by_path: HashMap::new(),
        written: HashMap::new(),
    };
    for file in files {
        if let Some((route, template, refs, cache)) = compile_route(file, timeout, diag) {
            b.add(route, &template, refs, cache, file.path.span(), diag);
        }
    }
    BuiltDeployment {
        deployment: Arc::new(b.deployment),
        keys: b.keys,
        var_refs: b.var_refs,
        cache: b.cache,
    }
}

struct Builder {
    deployment: Deployment,
    keys: HashMap<String, usize>,
    var_refs: Vec<(usize, VarRef)>,
    cache: Vec<CachePartial>,
    first_seen: HashMap<String, Range<usize>>,
    /// Path as written -> resource index.
    by_path: HashMap<String, usize>,
    /// matchit path -> path as written, to name the other side of a conflict.
    written: HashMap<String, String>,
}

impl Builder {
    fn add(
        &mut self,
        route: Route,
        template: &PathTemplate,
        refs: Vec<VarRef>,
        cache: CachePartial,
        span: Range<usize>,
        diag: &mut Diag<'_>,
    ) {
        if let Some(first) = self.first_seen.get(&route.key) {
            let line = diag.line_of(first);
            let message = format!(
                "duplicate route `{}` (first defined at line {line})",
                route.key
            );
            diag.at(span, message);
            return;
        }
        self.first_seen.insert(route.key.clone(), span.clone());
        let index = self.deployment.routes.len();
        self.keys.insert(route.key.clone(), index);
        self.var_refs.extend(refs.into_iter().map(|r| (index, r)));
        self.cache.push(cache);
        let resource = self.resource(&route.path, template, span, diag);
        self.deployment.resources[resource]
            .methods
            .push((route.method, index));
        self.deployment.routes.push(route);
    }

    /// The resource for `path`, created (and routed) on first use.
    fn resource(
        &mut self,
        path: &str,
        template: &PathTemplate,
        span: Range<usize>,
        diag: &mut Diag<'_>,
    ) -> usize {
        if let Some(&r) = self.by_path.get(path) {
            return r;
        }
        let r = self.deployment.resources.len();
        let mpath = template.matchit_path();
        if let Err(e) = self.deployment.router.insert(mpath.clone(), r) {
            report_insert_error(diag, span, path, &e, &self.written);
        }
        self.written.insert(mpath, path.to_owned());
        self.by_path.insert(path.to_owned(), r);
        self.deployment.resources.push(Resource {
            path: path.to_owned(),
            methods: Vec::new(),
        });
        r
    }
}

fn report_insert_error(
    diag: &mut Diag<'_>,
    span: Range<usize>,
    path: &str,
    err: &matchit::InsertError,
    written: &HashMap<String, String>,
) {
    match err {
        matchit::InsertError::Conflict { with } => {
            let other = written.get(with).map_or(with.as_str(), String::as_str);
            diag.expect(
                span,
                format!("route path `{path}` conflicts with `{other}`"),
                "no other route with a differently named {param} or a {param+} at the same position",
            );
        }
        other => diag.at(
            span,
            format!("route path `{path}` is not routable: {other}"),
        ),
    }
}

type CompiledRoute = (Route, PathTemplate, Vec<VarRef>, CachePartial);

/// Compiles one route; `None` when it has errors (all reported).
fn compile_route(
    file: &RouteFile,
    default_timeout: Duration,
    diag: &mut Diag<'_>,
) -> Option<CompiledRoute> {
    let method = match &file.method {
        None => Some(Method::Any),
        Some(m) => m.get_ref().parse::<Method>().ok().or_else(|| {
            let message = format!("unknown method `{}`", m.get_ref());
            diag.expect(m.span(), message, Method::EXPECTED);
            None
        }),
    };
    let path = file.path.get_ref();
    let template = PathTemplate::parse(path)
        .map_err(|p| diag.problem(&file.path.span(), path, p))
        .ok();
    let timeout = match &file.timeout_ms {
        Some(t) => check_timeout(t, diag),
        None => Some(default_timeout),
    };
    let cache = match &file.cache {
        Some(c) => compile_cache(c, true, diag),
        None => Some(CachePartial::default()),
    };
    let throttle = match &file.throttle {
        Some(t) => compile_throttle(t, diag).map(Some),
        None => Some(None),
    };
    let params = template.as_ref().map(PathTemplate::params);
    let integration = match (&file.integration, &params) {
        (Some(i), Some(params)) => compile_integration(i, params, diag),
        _ => None,
    };
    let (method, template, timeout, (integration, refs), cache, throttle) = (
        method?,
        template?,
        timeout?,
        integration?,
        cache?,
        throttle?,
    );
    let route = Route {
        key: format!("{} {}", method.as_str(), path),
        method,
        path: path.clone(),
        integration,
        settings: RouteSettings {
            timeout,
            cache: cache.resolve(),
            throttle,
        },
        api_key_required: file.api_key_required,
    };
    Some((route, template, refs, cache))
}

/// A `timeout_ms` value checked against [`TIMEOUT_MS`].
pub(crate) fn check_timeout(t: &toml::Spanned<u64>, diag: &mut Diag<'_>) -> Option<Duration> {
    let ms = *t.get_ref();
    if TIMEOUT_MS.contains(&ms) {
        return Some(Duration::from_millis(ms));
    }
    diag.expect(
        t.span(),
        format!("timeout_ms {ms} is out of range"),
        "50..=29000 milliseconds",
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_translates_paths() {
        let t = PathTemplate::parse("/items/{id}/files/{path+}").unwrap();
        assert_eq!(t.matchit_path(), "/items/{id}/files/{*path}");
        assert_eq!(t.params(), ["id", "path"]);
        assert_eq!(PathTemplate::parse("/").unwrap().matchit_path(), "/");
    }

    #[test]
    fn rejects_bad_paths_with_offsets() {
        let err = |p: &str| PathTemplate::parse(p).unwrap_err();
        assert_eq!(err("items").offset, 0);
        assert_eq!(err("/a//b").offset, 3);
        assert_eq!(err("/a/").offset, 3);
        assert_eq!(err("/a/{p+}/b").offset, 3);
        assert_eq!(err("/a/{x y}").offset, 3);
        assert_eq!(err("/a/x{y}").offset, 4);
        assert_eq!(err("/{id}/{id}").offset, 6);
        assert_eq!(err("/a b").offset, 2);
        let long = format!("/{}", "a".repeat(MAX_ROUTE_PATH));
        assert_eq!(err(&long).message, "route path is 1025 bytes long");
        assert!(PathTemplate::parse(&long[..MAX_ROUTE_PATH]).is_ok());
    }

    #[test]
    fn matchit_precedence_static_param_catch_all() {
        let mut r = matchit::Router::new();
        for (i, p) in ["/items/special", "/items/{id}", "/{*proxy}"]
            .iter()
            .enumerate()
        {
            let t = PathTemplate::parse(&p.replace("{*proxy}", "{proxy+}")).unwrap();
            r.insert(t.matchit_path(), i).unwrap();
        }
        assert_eq!(*r.at("/items/special").unwrap().value, 0);
        let m = r.at("/items/42").unwrap();
        assert_eq!((*m.value, m.params.get("id")), (1, Some("42")));
        let m = r.at("/items/42/more").unwrap();
        assert_eq!(
            (*m.value, m.params.get("proxy")),
            (2, Some("items/42/more"))
        );
        assert!(r.at("/").is_err());
    }
}
