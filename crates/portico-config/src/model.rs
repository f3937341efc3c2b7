//! The compiled, immutable runtime model of API definitions. Built only by compiling a
//! validated TOML text ([`Definitions::from_toml_str`] or a node file), so every value
//! here has already been checked.
//!
//! Extension points for later issues (not implemented yet):
//! * cache settings (issue 6) become `Option` fields of [`RouteSettings`], resolved per
//!   stage and route like `timeout` is (route, stage `*` override, stage route override);
//! * throttles (issue 7) likewise in [`RouteSettings`] plus a stage-level default;
//! * usage plans and API keys (issue 7) become a top-level list in [`Definitions`]
//!   beside `apis` and `domains`, shipped in `source` like the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::method::{EndpointMode, Method};
use crate::template::UriTemplate;

/// One versioned snapshot of every API and custom domain. Immutable: a reload builds a
/// new one and the node swaps the `Arc`.
#[derive(Debug)]
pub struct Definitions {
    /// FNV-1a 64 of `source`: equal texts give equal versions on every node.
    pub version: u64,
    pub apis: Vec<Arc<Api>>,
    pub domains: Vec<Domain>,
    /// The `[[apis]]` and `[[domains]]` re-serialized as canonical TOML, with paths
    /// already resolved and defaults that depend on the origin (an API's region) made
    /// explicit. PoPs rebuild the same snapshot from it with
    /// [`Definitions::from_toml_str`].
    pub source: String,
    /// `[[usage_plans]]`, in file order.
    pub usage_plans: Vec<Arc<crate::plans::UsagePlan>>,
    /// `[[api_keys]]`, in file order.
    pub api_keys: Vec<Arc<crate::plans::ApiKey>>,
    pub(crate) plan_index: HashMap<String, usize>,
    pub(crate) key_index: HashMap<[u8; 32], usize>,
    pub(crate) api_index: HashMap<String, usize>,
    pub(crate) host_index: HashMap<String, usize>,
    pub(crate) domain_index: HashMap<String, usize>,
}

impl Definitions {
    pub fn api(&self, name: &str) -> Option<&Arc<Api>> {
        self.api_index.get(name).map(|&i| &self.apis[i])
    }

    /// Whether `name` is an edge API here: its requests enter at PoPs, so
    /// its rates (and a plan's key rates in it) span them.
    pub fn is_edge(&self, name: &str) -> bool {
        self.api(name)
            .is_some_and(|a| a.endpoint == crate::EndpointMode::Edge)
    }

    /// The API that lists `host` (lower case, without port) in its `hosts`.
    pub fn api_for_host(&self, host: &str) -> Option<&Arc<Api>> {
        self.host_index.get(host).map(|&i| &self.apis[i])
    }

    /// The custom domain named `host` (lower case, without port).
    pub fn domain(&self, host: &str) -> Option<&Domain> {
        self.domain_index.get(host).map(|&i| &self.domains[i])
    }

    pub fn usage_plan(&self, name: &str) -> Option<&Arc<crate::plans::UsagePlan>> {
        self.plan_index.get(name).map(|&i| &self.usage_plans[i])
    }

    /// The API key whose SHA-256 is `hash`.
    pub fn api_key_by_hash(&self, hash: &[u8; 32]) -> Option<&Arc<crate::plans::ApiKey>> {
        self.key_index.get(hash).map(|&i| &self.api_keys[i])
    }

    pub fn api_key(&self, id: &str) -> Option<&Arc<crate::plans::ApiKey>> {
        self.api_keys.iter().find(|k| k.id == id)
    }

    /// Adds usage plans and keys (their text is already part of `source`).
    pub(crate) fn with_plans(
        mut self,
        plans: Vec<Arc<crate::plans::UsagePlan>>,
        keys: Vec<Arc<crate::plans::ApiKey>>,
    ) -> Self {
        self.plan_index = plans
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        self.key_index = keys.iter().enumerate().map(|(i, k)| (k.hash, i)).collect();
        self.usage_plans = plans;
        self.api_keys = keys;
        self
    }

    pub(crate) fn index(apis: Vec<Arc<Api>>, domains: Vec<Domain>, source: String) -> Self {
        let api_index = apis
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        let host_index = apis
            .iter()
            .enumerate()
            .flat_map(|(i, a)| a.hosts.iter().map(move |h| (h.clone(), i)))
            .collect();
        let domain_index = domains
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.clone(), i))
            .collect();
        Definitions {
            version: fnv1a64(source.as_bytes()),
            apis,
            domains,
            source,
            usage_plans: Vec::new(),
            api_keys: Vec::new(),
            plan_index: HashMap::new(),
            key_index: HashMap::new(),
            api_index,
            host_index,
            domain_index,
        }
    }
}

/// FNV-1a, 64 bit: stable across processes and versions of Rust (unlike `DefaultHasher`).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[derive(Debug)]
pub struct Api {
    pub name: String,
    pub endpoint: EndpointMode,
    /// Home region: whose origin runs the integrations.
    pub region: Option<String>,
    /// Lower-case Host names selecting this API.
    pub hosts: Vec<String>,
    pub description: Option<String>,
    /// CORS: preflights answered by the gateway, headers on every response.
    pub cors: Option<Arc<crate::Cors>>,
    /// The API's top-level routes (deployment id `current`).
    pub current: Arc<Deployment>,
    /// Named deployments, in file order.
    pub deployments: Vec<Arc<Deployment>>,
    pub stages: Vec<Arc<Stage>>,
}

impl Api {
    pub fn stage(&self, name: &str) -> Option<&Arc<Stage>> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn deployment(&self, id: &str) -> Option<&Arc<Deployment>> {
        if id == CURRENT_DEPLOYMENT {
            return Some(&self.current);
        }
        self.deployments.iter().find(|d| d.id == id)
    }
}

/// The id of the deployment made of an API's top-level routes; reserved.
pub const CURRENT_DEPLOYMENT: &str = "current";

#[derive(Debug)]
pub struct Stage {
    pub name: String,
    pub description: Option<String>,
    pub variables: BTreeMap<String, String>,
    pub deployment: Arc<Deployment>,
    /// The stage's own throttle (all routes of the stage together).
    pub throttle: Option<crate::plans::RateLimit>,
    /// Effective settings per route index of `deployment`.
    pub(crate) settings: Vec<RouteSettings>,
    /// Settings for an index out of range (never happens for indexes from the router).
    pub(crate) fallback: RouteSettings,
}

impl Stage {
    /// Effective settings of route `route_index` of this stage's deployment, with the
    /// stage's overrides applied (specific route override, then `*`, then the route's
    /// own settings, then the node's defaults).
    pub fn route_settings(&self, route_index: usize) -> &RouteSettings {
        self.settings.get(route_index).unwrap_or(&self.fallback)
    }
}

/// A set of routes with its router. Shared by every stage that serves it.
#[derive(Debug)]
pub struct Deployment {
    pub id: String,
    pub description: Option<String>,
    pub routes: Vec<Route>,
    /// matchit syntax (`{*proxy}` for `{proxy+}`) -> index into `resources`.
    pub router: matchit::Router<usize>,
    pub resources: Vec<Resource>,
}

/// All routes sharing one path template.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The template as written, e.g. `/items/{id}`.
    pub path: String,
    pub methods: Vec<(Method, usize)>,
}

impl Resource {
    /// The route serving `method`: an exact match, else GET for HEAD (as HTTP does),
    /// else the `ANY` route. `ANY` means API Gateway's seven methods: TRACE,
    /// CONNECT or any other token is served by no route (405), as nginx
    /// refuses TRACE (it would echo the request's headers back).
    pub fn route_for(&self, method: &str) -> Option<usize> {
        let parsed = method
            .parse::<Method>()
            .ok()
            .filter(|m| *m != Method::Any)?;
        let find = |m: Method| {
            self.methods
                .iter()
                .find(|(have, _)| *have == m)
                .map(|&(_, i)| i)
        };
        find(parsed)
            .or_else(|| (parsed == Method::Head).then(|| find(Method::Get))?)
            .or_else(|| find(Method::Any))
    }

    /// The `Allow` header value for a 405: the methods this resource answers.
    pub fn allow(&self) -> String {
        let has = |m: Method| self.methods.iter().any(|(have, _)| *have == m);
        Method::CONCRETE
            .into_iter()
            .filter(|&m| has(m) || has(Method::Any) || (m == Method::Head && has(Method::Get)))
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `"GET /items/{id}"`, as used in stage overrides and logs.
    pub key: String,
    pub method: Method,
    pub path: String,
    pub integration: Integration,
    /// The route's own settings (before stage overrides).
    pub settings: RouteSettings,
    pub api_key_required: bool,
}

/// Settings that stages may override per route. Later issues add throttle settings
/// here as `Option` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// Integration timeout, 50 ms to 29 s.
    pub timeout: Duration,
    /// Response caching; `None` when it is off for the route.
    pub cache: Option<Arc<crate::cache::CacheSettings>>,
    /// The route's throttle in this stage (route's own, `*` override, route override).
    pub throttle: Option<crate::plans::RateLimit>,
}

#[derive(Debug, Clone)]
pub enum Integration {
    HttpProxy { uri: UriTemplate },
    Http(HttpIntegration),
    Mock(MockIntegration),
}

impl Integration {
    /// Whether the backend request depends on who the caller is (an `http`
    /// integration that maps `context.identity.*`): a cached answer must then
    /// be the caller's own.
    pub fn depends_on_caller(&self) -> bool {
        let Integration::Http(h) = self else {
            return false;
        };
        h.request_parameters
            .iter()
            .any(|(_, source)| matches!(source, ParamSource::Context(_)))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Integration::HttpProxy { .. } => "http_proxy",
            Integration::Http(_) => "http",
            Integration::Mock(_) => "mock",
        }
    }
}

/// API Gateway's non-proxy HTTP integration. In `uri`, `{name}` is the mapped
/// `integration.request.path.name` if `request_parameters` maps one, else the route's
/// path parameter `name`.
#[derive(Debug, Clone)]
pub struct HttpIntegration {
    /// `None`: the client's method.
    pub method: Option<Method>,
    pub uri: UriTemplate,
    pub request_parameters: Vec<(ParamTarget, ParamSource)>,
    /// (lower-case response header name, source)
    pub response_parameters: Vec<(String, ResponseSource)>,
    pub pass_request_body: bool,
}

/// `integration.request.{path|querystring|header}.NAME` (header names lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamTarget {
    Path(String),
    Query(String),
    Header(String),
}

/// `method.request.{path|querystring|header}.NAME`, `'static'`,
/// `stageVariables.NAME` or a `context.` variable (header names lower case;
/// the static value unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamSource {
    Path(String),
    Query(String),
    Header(String),
    Static(String),
    StageVariable(String),
    Context(ContextVariable),
}

/// A request-context variable a mapping may read (API Gateway's `$context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextVariable {
    /// `context.identity.apiKeyId`: the id of the API key that authenticated
    /// the request (where it entered: at a PoP for an edge API), absent when
    /// the route requires no key.
    ApiKeyId,
}

impl ContextVariable {
    /// The mapping expression naming it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContextVariable::ApiKeyId => "context.identity.apiKeyId",
        }
    }
}

/// `integration.response.header.NAME` (lower case) or `'static'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseSource {
    Header(String),
    Static(String),
}

#[derive(Debug, Clone)]
pub struct MockIntegration {
    pub status: u16,
    /// (lower-case name, value), sorted by name.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A custom domain and its base path mappings.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Lower case.
    pub name: String,
    pub certificate: Option<CertPaths>,
    pub mappings: Vec<BasePathMapping>,
}

impl Domain {
    /// The mapping for the first segment of a request path (`""` for the root mapping).
    pub fn mapping(&self, base_path: &str) -> Option<&BasePathMapping> {
        self.mappings.iter().find(|m| m.base_path == base_path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePathMapping {
    /// `""` for the root mapping, else one path segment.
    pub base_path: String,
    pub api: String,
    pub stage: String,
}

/// A PEM certificate chain and its private key, resolved against the config file's
/// directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(methods: &[(Method, usize)]) -> Resource {
        Resource {
            path: "/x".into(),
            methods: methods.to_vec(),
        }
    }

    #[test]
    fn route_for_prefers_exact_then_get_for_head_then_any() {
        let r = resource(&[(Method::Get, 0), (Method::Any, 1), (Method::Post, 2)]);
        assert_eq!(r.route_for("GET"), Some(0));
        assert_eq!(r.route_for("HEAD"), Some(0));
        assert_eq!(r.route_for("POST"), Some(2));
        assert_eq!(r.route_for("DELETE"), Some(1));
        // ANY is the seven methods, not any token.
        assert_eq!(r.route_for("TRACE"), None);
        assert_eq!(r.route_for("ANY"), None);
        let only_post = resource(&[(Method::Post, 0)]);
        assert_eq!(only_post.route_for("GET"), None);
        assert_eq!(only_post.route_for("HEAD"), None);
        let head = resource(&[(Method::Head, 3), (Method::Get, 4)]);
        assert_eq!(head.route_for("HEAD"), Some(3));
    }

    #[test]
    fn allow_lists_methods_in_order() {
        assert_eq!(
            resource(&[(Method::Post, 0), (Method::Get, 1)]).allow(),
            "GET, HEAD, POST"
        );
        assert_eq!(resource(&[(Method::Delete, 0)]).allow(), "DELETE");
        assert_eq!(
            resource(&[(Method::Any, 0)]).allow(),
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        );
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
