//! Portico's configuration: the typed API-definition model and node settings, loaded
//! from TOML, validated with `file:line:column` errors, compiled into immutable
//! snapshots.
//!
//! * [`load_node_file`] / [`parse_node`]: a node's file (`portico origin|pop --config`).
//! * [`Definitions::from_toml_str`]: a definitions snapshot shipped to PoPs as
//!   [`Definitions::source`]; [`Definitions::delta_to`] and
//!   [`Definitions::rebuild_source`]: the per-API changes shipped instead when
//!   only some APIs changed.
//! * [`check_file`]: `portico check FILE`.
//! * [`load_topology_file`] / [`parse_topology`]: a topology for `portico up` and
//!   `portico probe` (module [`topology`]).
//!
//! Every error that can be found is reported, not only the first: each top-level
//! section and each element of `[[apis]]`, `[[apis.routes]]`, `[[apis.deployments]]`,
//! `[[apis.stages]]` and `[[domains]]` is read on its own, then every semantic rule
//! is checked. The reference of the format is `docs/CONFIG.md`.
//!
//! This crate knows nothing of sockets, async runtimes or HTTP crates.
#![forbid(unsafe_code)]

mod cache;
mod compile;
mod cors;
mod delta;
mod error;
mod file;
mod integration;
mod load;
mod merge;
mod method;
mod model;
mod node;
mod plans;
mod quic;
mod route;
mod settings;
mod stage;
mod template;
pub mod topology;

use std::fmt;
use std::path::Path;

pub use cache::{CacheMode, CacheSettings, ClientInvalidation, EVERY_PARAMETER, NodeCacheConfig};
pub use compile::{DefinitionDefaults, MAX_NAME, NODE_ID, is_node_id};
pub use cors::{Cors, CorsList, MAX_CORS_AGE};
pub use delta::{ApiChange, NoDelta};
pub use error::{ConfigError, ConfigErrors};
pub use method::{EndpointMode, Method, Role, UnknownMethod};
pub use model::{
    Api, BasePathMapping, CURRENT_DEPLOYMENT, CertPaths, ContextVariable, Definitions, Deployment,
    Domain, HttpIntegration, Integration, MockIntegration, ParamSource, ParamTarget, Resource,
    ResponseSource, Route, RouteSettings, Stage,
};
pub use plans::{
    ApiKey, Degraded, FamilyScope, KeyThrottle, MAX_KEY_ID, RateLimit, UsagePlan, is_key_id,
    parse_family, throttle_family,
};
pub use portico_quota::{Period as QuotaPeriod, QuotaSpec};
pub use quic::{Congestion, QuicConfig};
pub use route::{MAX_ROUTE_PATH, escaped_unreserved};
pub use settings::{
    AdminConfig, BackboneConfig, BackendClientConfig, DnsConfig, Limits, ListenerConfig,
    NodeConfig, NodeSettings, NodeThrottleConfig, OriginLink, QuotaStore, RedisTls,
};
pub use template::{TemplatePart, UriTemplate};
pub use topology::{Topology, TopologySummary, is_topology, load_topology_file, parse_topology};

use error::Diag;

/// Reads and compiles a node file; relative paths in it are resolved against the
/// file's directory. The role is inferred (a file with `[[origins]]` is a PoP's).
pub fn load_node_file(path: &Path) -> Result<NodeConfig, ConfigErrors> {
    load_node_file_as(path, None)
}

/// Like [`load_node_file`], checking the file against the rules of `role` when given
/// (e.g. an origin's `[node]` needs a `region`; a PoP's file holds no `[[apis]]`).
pub fn load_node_file_as(path: &Path, role: Option<Role>) -> Result<NodeConfig, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read the file: {e}")))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    parse_node_as(&text, &name, base_dir, role)
}

/// Compiles a node file's text. `origin_name` names the text in errors; relative
/// paths are resolved against `base_dir`.
pub fn parse_node(
    text: &str,
    origin_name: &str,
    base_dir: &Path,
) -> Result<NodeConfig, ConfigErrors> {
    parse_node_as(text, origin_name, base_dir, None)
}

/// [`parse_node`] with an explicit role (`None`: inferred).
pub fn parse_node_as(
    text: &str,
    origin_name: &str,
    base_dir: &Path,
    role: Option<Role>,
) -> Result<NodeConfig, ConfigErrors> {
    compile_node_text(text, origin_name, base_dir, role, None)
}

/// Reads a running node's file again, for a reload: checked against the
/// running node's role, and its APIs that name no region homed in the running
/// node's region, not in the file's `[node] region`. A node's region is bound
/// at start (its backbone identity, which PoPs find an API's origins by), so
/// a changed `[node]` takes effect at the next start, like the node's other
/// sections ([`NodeConfig::restart_only_changes`] names it): definitions
/// homed in a region the running node does not answer for would leave every
/// edge API without an origin.
pub fn reload_node_file(path: &Path, running: &NodeConfig) -> Result<NodeConfig, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::whole_file(&name, format!("cannot read the file: {e}")))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    reparse_node(&text, &name, base_dir, running)
}

/// [`reload_node_file`] on a text.
pub fn reparse_node(
    text: &str,
    origin_name: &str,
    base_dir: &Path,
    running: &NodeConfig,
) -> Result<NodeConfig, ConfigErrors> {
    let home = running.node.region.as_deref();
    compile_node_text(text, origin_name, base_dir, Some(running.role()), home)
}

fn compile_node_text(
    text: &str,
    origin_name: &str,
    base_dir: &Path,
    role: Option<Role>,
    home: Option<&str>,
) -> Result<NodeConfig, ConfigErrors> {
    let mut diag = Diag::new(origin_name, text);
    let paths = node::Paths { base_dir };
    let config = load::read_node(text, &mut diag)
        .and_then(|raw| node::compile_node(raw, &paths, role, home, &mut diag));
    diag.finish()?;
    config.ok_or_else(|| internal(origin_name))
}

fn internal(name: &str) -> ConfigErrors {
    ConfigErrors::whole_file(
        name,
        "internal error: configuration rejected without a reason",
    )
}

impl Definitions {
    /// Compiles `[[apis]]` and `[[domains]]` (typically another node's `source`) with
    /// the default route timeout of 29 s. `origin_name` names the text in errors.
    pub fn from_toml_str(text: &str, origin_name: &str) -> Result<Definitions, ConfigErrors> {
        Self::from_toml_str_with(text, origin_name, &DefinitionDefaults::default())
    }

    /// [`Definitions::from_toml_str`] with this node's defaults (a PoP passes its own
    /// `limits.default_timeout`).
    pub fn from_toml_str_with(
        text: &str,
        origin_name: &str,
        defaults: &DefinitionDefaults,
    ) -> Result<Definitions, ConfigErrors> {
        let mut diag = Diag::new(origin_name, text);
        let defs = load::read_definitions(text, &mut diag)
            .and_then(|file| compile::build_definitions(&file, defaults, &mut diag));
        diag.finish()?;
        defs.ok_or_else(|| internal(origin_name))
    }

    /// The definitions of several regions (their `source` texts) as one, as
    /// a PoP serving them all compiles them: lists side by side, one API key
    /// that several regions admit merged into one with all their plans.
    pub fn merged(
        sources: &[&str],
        origin_name: &str,
        defaults: &DefinitionDefaults,
    ) -> Result<Definitions, ConfigErrors> {
        Self::from_toml_str_with(&merge::merge_sources(sources), origin_name, defaults)
    }

    /// No APIs: what a PoP serves before its first snapshot arrives.
    pub fn empty() -> Definitions {
        Definitions::index(Vec::new(), Vec::new(), String::new())
    }
}

/// What `portico check` prints for a valid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub node_id: String,
    pub role: Role,
    pub listeners: usize,
    pub apis: usize,
    pub routes: usize,
    pub stages: usize,
    pub domains: usize,
    pub version: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} node `{}`: {} listener(s), {} API(s), {} route(s), {} stage(s), {} domain(s); \
             definitions version {:016x}",
            self.role,
            self.node_id,
            self.listeners,
            self.apis,
            self.routes,
            self.stages,
            self.domains,
            self.version
        )
    }
}

impl Summary {
    pub fn of(config: &NodeConfig) -> Summary {
        let defs = &config.definitions;
        let routes = defs
            .apis
            .iter()
            .map(|a| {
                a.current.routes.len() + a.deployments.iter().map(|d| d.routes.len()).sum::<usize>()
            })
            .sum();
        Summary {
            node_id: config.node.id.clone(),
            role: config.role(),
            listeners: config.listeners.len(),
            apis: defs.apis.len(),
            routes,
            stages: defs.apis.iter().map(|a| a.stages.len()).sum(),
            domains: defs.domains.len(),
            version: defs.version,
        }
    }
}

/// Validates a node file for `portico check FILE`.
pub fn check_file(path: &Path) -> Result<Summary, ConfigErrors> {
    load_node_file(path).map(|c| Summary::of(&c))
}

#[cfg(test)]
mod testdata;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::testdata::*;
    use super::*;

    fn full() -> NodeConfig {
        parse(FULL).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The running node's region is its backbone identity until it restarts:
    /// a reload that changes `[node] region` homes no API in the new one
    /// (PoPs would look for links to it and answer 503), and says that
    /// `[node]` takes effect at the next start.
    #[test]
    fn a_reload_homes_apis_in_the_running_region() {
        let text = api("[[apis]]\nname = \"b\"\nendpoint = \"edge\"\nregion = \"far\"\n");
        let running = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let moved = text.replace("region = \"r\"", "region = \"r2\"");
        let next = reparse_node(&moved, "t.toml", &fixture_dir(), &running)
            .unwrap_or_else(|e| panic!("{e}"));
        let region = |name| next.definitions.api(name).unwrap().region.clone();
        assert_eq!(region("a").as_deref(), Some("r"));
        assert_eq!(region("b").as_deref(), Some("far"));
        assert!(next.definitions.source.contains("region = \"r\""));
        assert_eq!(next.node.region.as_deref(), Some("r2"));
        assert_eq!(running.restart_only_changes(&next), ["[node]"]);
        // At its next start the node is in the new region.
        let started = parse(&moved).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            started.definitions.api("a").unwrap().region.as_deref(),
            Some("r2")
        );
    }

    #[test]
    fn full_example_node_settings() {
        let c = full();
        assert_eq!(c.node.id, "origin-iad");
        assert_eq!(c.node.region.as_deref(), Some("us-east-1"));
        assert_eq!(c.role(), Role::Origin);
        assert_eq!(c.listeners.len(), 2);
        assert!(c.listeners[0].tls && !c.listeners[1].tls);
        assert_eq!(c.listeners[0].default_api.as_deref(), Some("echo"));
        assert!(c.listeners[0].certificates[0].cert.ends_with("certs/a.pem"));
        assert!(c.listeners[0].certificates[0].cert.is_absolute());
        assert_eq!(c.admin.as_ref().map(|a| a.token.as_str()), Some("secret"));
        assert_eq!(c.limits.max_body_bytes, 1_048_576);
        assert_eq!(c.limits.max_header_bytes, 8192);
        assert_eq!(c.limits.default_timeout, Duration::from_secs(10));
        assert!(c.backend_client.http2_only && c.backend_client.https_h2);
        assert!(
            !crate::BackendClientConfig::default().https_h2,
            "HTTP/1.1 by default"
        );
        assert_eq!(c.backend_client.pool_max_idle_per_host, 8);
        assert_eq!(c.dns.nameservers.as_ref().map(Vec::len), Some(1));
        assert!(!c.dns.use_hosts_file);
        let bb = c.backbone.as_ref().unwrap();
        assert_eq!(bb.max_concurrent_streams, 2000);
        assert!(bb.listen.is_some());
    }

    #[test]
    fn full_example_definitions() {
        let c = full();
        let defs = &c.definitions;
        let echo = defs.api("echo").unwrap();
        assert_eq!(echo.endpoint, EndpointMode::Regional);
        assert_eq!(echo.region.as_deref(), Some("us-east-1"));
        assert_eq!(echo.hosts, ["echo.example.com"]);
        assert!(Arc::ptr_eq(
            defs.api_for_host("echo.example.com").unwrap(),
            echo
        ));
        assert_eq!(echo.current.routes.len(), 4);
        let prod = echo.stage("prod").unwrap();
        assert!(Arc::ptr_eq(&prod.deployment, &echo.current));
        let items = echo
            .current
            .routes
            .iter()
            .position(|r| r.key == "GET /items/{id}")
            .unwrap();
        assert_eq!(
            echo.current.routes[items].settings.timeout,
            Duration::from_secs(5)
        );
        assert_eq!(prod.route_settings(items).timeout, Duration::from_secs(1));
        let health = echo
            .current
            .routes
            .iter()
            .position(|r| r.path == "/health")
            .unwrap();
        assert_eq!(prod.route_settings(health).timeout, Duration::from_secs(20));
        let v1 = echo.stage("v1").unwrap();
        assert_eq!(v1.deployment.id, "v1");
        assert_eq!(v1.route_settings(0).timeout, Duration::from_secs(10));
        let edge = defs.api("edge-echo").unwrap();
        assert_eq!(edge.endpoint.as_str(), "edge");
        assert_eq!(edge.region.as_deref(), Some("eu-central-1"));
        let domain = defs.domain("api.example.com").unwrap();
        assert_eq!(domain.mapping("").map(|m| m.stage.as_str()), Some("prod"));
        assert_eq!(domain.mapping("v1").map(|m| m.stage.as_str()), Some("v1"));
    }

    #[test]
    fn full_example_integrations() {
        let c = full();
        let echo = c.definitions.api("echo").unwrap();
        let route = |key: &str| {
            &echo.current.routes[echo
                .current
                .routes
                .iter()
                .position(|r| r.key == key)
                .unwrap()]
        };
        let Integration::Http(h) = &route("POST /pets/{petId}").integration else {
            panic!("not http")
        };
        assert_eq!(h.method, Some(Method::Put));
        assert!(!h.pass_request_body);
        assert!(h.request_parameters.contains(&(
            ParamTarget::Path("id".into()),
            ParamSource::Path("petId".into())
        )));
        assert!(h.request_parameters.contains(&(
            ParamTarget::Header("x-k".into()),
            ParamSource::Static("static value".into())
        )));
        assert!(h.response_parameters.contains(&(
            "x-out".to_owned(),
            ResponseSource::Header("x-backend".into())
        )));
        let Integration::Mock(m) = &route("GET /health").integration else {
            panic!("not mock")
        };
        assert_eq!(
            m.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!((m.status, m.body.as_str()), (200, r#"{"ok":true}"#));
    }

    #[test]
    fn router_finds_resources() {
        let c = full();
        let d = &c.definitions.api("echo").unwrap().current;
        let m = d.router.at("/items/7").unwrap();
        let res = &d.resources[*m.value];
        assert_eq!(res.path, "/items/{id}");
        assert_eq!(res.route_for("HEAD"), Some(0));
        assert_eq!(res.allow(), "GET, HEAD");
        let m = d.router.at("/a/b/c").unwrap();
        assert_eq!(m.params.get("proxy"), Some("a/b/c"));
        assert_eq!(d.resources[*m.value].route_for("DELETE"), Some(1));
    }

    #[test]
    fn source_round_trips() {
        let c = full();
        let defs = &c.definitions;
        let again = Definitions::from_toml_str(&defs.source, "origin-iad")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.version, defs.version);
        assert_eq!(again.source, defs.source);
        assert_eq!(again.apis.len(), 2);
        assert_eq!(
            again.api("echo").unwrap().region.as_deref(),
            Some("us-east-1")
        );
        assert_eq!(again.domains[0].certificate, defs.domains[0].certificate);
        // What a PoP receives keeps the API's CORS.
        let cors = again.api("echo").unwrap().cors.as_deref().unwrap();
        assert_eq!(Some(cors), defs.api("echo").unwrap().cors.as_deref());
        assert!(cors.credentials && cors.allows(b"http://localhost:3000"));
    }

    #[test]
    fn pop_file_has_no_definitions() {
        let text = "[node]\nid = \"pop-fra\"\n[[origins]]\nregion = \"us-east-1\"\naddress = \"127.0.0.1:7443\"\nserver_name = \"origin-iad\"\n\
                    [backbone]\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n";
        let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.role(), Role::Pop);
        assert!(c.definitions.apis.is_empty());
        assert_eq!(c.definitions.version, Definitions::empty().version);
        let e = parse_role(
            &format!("{text}[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n"),
            Role::Pop,
        )
        .unwrap_err();
        assert_eq!(
            e.0[0].message,
            "API definitions are not allowed in a PoP's file"
        );
        assert_eq!((e.0[0].line, e.0[0].column), (11, 3));
        // Without its backbone a PoP could not start: `portico check` says so.
        let e = parse("[node]\nid = \"pop-fra\"\n[[origins]]\nregion = \"r\"\naddress = \"127.0.0.1:7443\"\nserver_name = \"o\"\n")
            .unwrap_err();
        assert_eq!(
            e.0[0].message,
            "a PoP needs `[backbone]` (its links to the origins)"
        );
    }

    #[test]
    fn check_file_summarizes() {
        let dir = fixture_dir();
        let s = check_file(&dir.join("origin.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.apis, s.routes, s.stages, s.domains), (2, 6, 3, 1));
        assert!(s.to_string().starts_with("origin node `origin-iad`"));
        let e = check_file(&dir.join("missing.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing.toml:1:1: cannot read the file")
        );
    }

    #[test]
    fn error_display_has_file_line_column() {
        let errs = errors(&format!("{NODE}bogus = 1\n"));
        assert_eq!(errs, ["4:1: unknown field `bogus`"]);
    }

    #[test]
    fn reference_example_in_docs_is_valid() {
        let doc = include_str!("../../../docs/CONFIG.md");
        let start = doc.find("```toml\n").unwrap() + 8;
        let text = &doc[start..start + doc[start..].find("```").unwrap()];
        let c = parse_node(text, "CONFIG.md", &fixture_dir()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.definitions.apis[0].current.routes.len(), 3);
    }
}
