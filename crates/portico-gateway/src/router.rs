//! Addressing as API Gateway does it: Host and path select API, stage and route.
//!
//! * A custom domain (`[[domains]]`) maps its first path segment (the base
//!   path) or the root to an API and stage.
//! * Otherwise the Host selects the API: one of its `hosts`, or
//!   `{api}.execute-api.{anything}`, or the listener's `default_api`; the first
//!   path segment is then the stage.
//! * The rest of the path is matched against the stage's deployment
//!   (matchit: static segments beat `{param}` beat `{proxy+}`), then the method.

use std::collections::HashMap;
use std::sync::Arc;

use portico_config::{Api, Definitions, Domain, EndpointMode, Stage};

use crate::error::{ErrorKind, GatewayError};

/// Which endpoint modes a node serves on a given entry path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedModes {
    pub edge: bool,
    pub regional: bool,
}

impl ServedModes {
    /// A PoP's public listeners, and an origin's backbone: edge APIs only.
    pub const EDGE: ServedModes = ServedModes {
        edge: true,
        regional: false,
    };
    /// An origin's public listeners: regional APIs only.
    pub const REGIONAL: ServedModes = ServedModes {
        edge: false,
        regional: true,
    };

    fn allows(self, mode: EndpointMode) -> bool {
        match mode {
            EndpointMode::Edge => self.edge,
            EndpointMode::Regional => self.regional,
        }
    }
}

/// Lookup tables built once per configuration snapshot.
#[derive(Debug)]
pub struct RoutingTable {
    definitions: Arc<Definitions>,
    by_name: HashMap<String, Arc<Api>>,
    by_host: HashMap<String, Arc<Api>>,
    domains: HashMap<String, Domain>,
}

/// The outcome of routing one request.
#[derive(Debug)]
pub struct Resolved {
    pub api: Arc<Api>,
    pub stage: Arc<Stage>,
    pub route_index: usize,
    /// Path parameters, still percent-encoded as received.
    pub path_params: Vec<(String, String)>,
    /// The path inside the stage (what the route template matched).
    pub inner_path: String,
}

impl RoutingTable {
    pub fn new(definitions: Arc<Definitions>) -> Self {
        let by_name = definitions
            .apis
            .iter()
            .map(|a| (a.name.clone(), Arc::clone(a)))
            .collect();
        let by_host = definitions
            .apis
            .iter()
            .flat_map(|a| {
                a.hosts
                    .iter()
                    .map(move |h| (h.to_ascii_lowercase(), Arc::clone(a)))
            })
            .collect();
        let domains = definitions
            .domains
            .iter()
            .map(|d| (d.name.to_ascii_lowercase(), d.clone()))
            .collect();
        Self {
            definitions,
            by_name,
            by_host,
            domains,
        }
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.definitions
    }

    pub fn api(&self, name: &str) -> Option<&Arc<Api>> {
        self.by_name.get(name)
    }

    /// Routes a request. `host` may carry a port; `path` is the raw request path.
    pub fn resolve(
        &self,
        host: &str,
        method: &str,
        path: &str,
        default_api: Option<&str>,
        modes: ServedModes,
    ) -> Result<Resolved, GatewayError> {
        let (api, stage, inner) = self.locate(host, path, default_api, modes)?;
        self.match_route(api, stage, method, inner)
    }

    /// The API and stage a request is addressed to, and the path inside the
    /// stage, whatever its route (a CORS preflight is answered without one).
    pub fn locate<'p>(
        &self,
        host: &str,
        path: &'p str,
        default_api: Option<&str>,
        modes: ServedModes,
    ) -> Result<(Arc<Api>, Arc<Stage>, &'p str), GatewayError> {
        // A fully qualified name's final dot names the same host.
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let located = match self.lookup_domain(host) {
            Some(domain) => self.via_domain(domain, path)?,
            None => self.via_host(host, path, default_api)?,
        };
        if !modes.allows(located.0.endpoint) {
            return Err(not_found());
        }
        Ok(located)
    }

    /// Routes a request whose API and stage were already chosen (by a PoP, for a
    /// request that arrived over the backbone). `path` is the path inside the stage.
    pub fn resolve_in(
        &self,
        api: &str,
        stage: &str,
        method: &str,
        path: &str,
        modes: ServedModes,
    ) -> Result<Resolved, GatewayError> {
        let api = self.by_name.get(api).ok_or_else(not_found)?;
        let stage = api.stage(stage).ok_or_else(not_found)?;
        if !modes.allows(api.endpoint) {
            return Err(not_found());
        }
        self.match_route(Arc::clone(api), Arc::clone(stage), method, path)
    }

    fn lookup_domain(&self, host: &str) -> Option<&Domain> {
        if self.domains.is_empty() {
            return None;
        }
        self.domains
            .get(host)
            .or_else(|| self.domains.get(&lowercase(host)?))
    }

    fn via_domain<'p>(
        &self,
        domain: &Domain,
        path: &'p str,
    ) -> Result<(Arc<Api>, Arc<Stage>, &'p str), GatewayError> {
        let (first, rest) = split_first_segment(path);
        let mapping = domain
            .mappings
            .iter()
            .find(|m| !m.base_path.is_empty() && m.base_path == first)
            .map(|m| (m, rest))
            .or_else(|| {
                domain
                    .mappings
                    .iter()
                    .find(|m| m.base_path.is_empty())
                    .map(|m| (m, path))
            });
        let (mapping, inner) = mapping.ok_or_else(not_found)?;
        let api = self.by_name.get(&mapping.api).ok_or_else(not_found)?;
        let stage = api.stage(&mapping.stage).ok_or_else(not_found)?;
        Ok((Arc::clone(api), Arc::clone(stage), inner))
    }

    fn via_host<'p>(
        &self,
        host: &str,
        path: &'p str,
        default_api: Option<&str>,
    ) -> Result<(Arc<Api>, Arc<Stage>, &'p str), GatewayError> {
        let api = self
            .by_host
            .get(host)
            .or_else(|| match self.by_host.is_empty() {
                true => None,
                false => self.by_host.get(&lowercase(host)?),
            })
            .or_else(|| execute_api_name(host).and_then(|name| self.api_named(name)))
            .or_else(|| default_api.and_then(|name| self.by_name.get(name)))
            .ok_or_else(not_found)?;
        let (stage_name, rest) = split_first_segment(path);
        let stage = api.stage(stage_name).ok_or_else(not_found)?;
        Ok((Arc::clone(api), Arc::clone(stage), rest))
    }

    /// The API `name` in a host name: names are unique regardless of case,
    /// and hosts are usually written in lower case.
    fn api_named(&self, name: &str) -> Option<&Arc<Api>> {
        self.by_name.get(name).or_else(|| {
            self.by_name
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, api)| api)
        })
    }

    fn match_route(
        &self,
        api: Arc<Api>,
        stage: Arc<Stage>,
        method: &str,
        inner: &str,
    ) -> Result<Resolved, GatewayError> {
        let inner = if inner.is_empty() { "/" } else { inner };
        let deployment = &stage.deployment;
        let matched = deployment.router.at(inner).map_err(|_| not_found())?;
        let resource = deployment
            .resources
            .get(*matched.value)
            .ok_or_else(not_found)?;
        let Some(route_index) = resource.route_for(method) else {
            return Err(GatewayError::client(ErrorKind::MethodNotAllowed {
                allow: resource.allow(),
            }));
        };
        let path_params = matched
            .params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(Resolved {
            route_index,
            path_params,
            inner_path: inner.to_owned(),
            api,
            stage,
        })
    }
}

/// `host` in lower case, if it is not already (`None`: nothing to look up again).
fn lowercase(host: &str) -> Option<String> {
    host.bytes()
        .any(|b| b.is_ascii_uppercase())
        .then(|| host.to_ascii_lowercase())
}

fn not_found() -> GatewayError {
    GatewayError::client(ErrorKind::NotFound)
}

/// `"/prod/items/1"` → `("prod", "/items/1")`; `"/prod"` → `("prod", "")`.
fn split_first_segment(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.find('/') {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => (trimmed, ""),
    }
}

/// The API name in an `{api}.execute-api.{region}.{domain}` host.
fn execute_api_name(host: &str) -> Option<&str> {
    let (name, rest) = host.split_once('.')?;
    let label = rest.get(..12)?;
    label.eq_ignore_ascii_case("execute-api.").then_some(name)
}

/// Removes a `:port` suffix, keeping IPv6 literals intact.
pub fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The port a Host names, if it names one.
pub fn port_of(host: &str) -> Option<u16> {
    host.get(strip_port(host).len()..)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_a_host_names() {
        assert_eq!(port_of("api.example.com:8443"), Some(8443));
        assert_eq!(port_of("api.example.com"), None);
        assert_eq!(port_of("[::1]:9443"), Some(9443));
        assert_eq!(port_of("[::1]"), None);
        assert_eq!(port_of("a:99999"), None);
    }

    #[test]
    fn splits_the_first_segment() {
        assert_eq!(split_first_segment("/prod/items/1"), ("prod", "/items/1"));
        assert_eq!(split_first_segment("/prod"), ("prod", ""));
        assert_eq!(split_first_segment("/"), ("", ""));
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn finds_execute_api_names() {
        assert_eq!(execute_api_name("pets.execute-api.local"), Some("pets"));
        assert_eq!(execute_api_name("Pets.EXECUTE-API.local"), Some("Pets"));
        assert_eq!(execute_api_name("pets.example.com"), None);
        assert_eq!(execute_api_name("pets.execute"), None);
    }

    #[test]
    fn hosts_match_whatever_their_case_or_final_dot() {
        let defs = Definitions::from_toml_str(
            r#"
[[apis]]
name = "Pets"
endpoint = "regional"
[[apis.routes]]
method = "GET"
path = "/x"
integration = { type = "mock", body = "pets" }
[[apis.stages]]
name = "prod"

[[apis]]
name = "other"
endpoint = "regional"
hosts = ["api.example.com"]
[[apis.routes]]
method = "GET"
path = "/x"
integration = { type = "mock", body = "other" }
[[apis.stages]]
name = "prod"
"#,
            "test",
        )
        .unwrap();
        let table = RoutingTable::new(Arc::new(defs));
        let api_of = |host: &str| {
            table
                .resolve(host, "GET", "/prod/x", None, ServedModes::REGIONAL)
                .map(|r| r.api.name.clone())
                .ok()
        };
        // No default API: each host must name its own.
        assert_eq!(api_of("pets.execute-api.local").as_deref(), Some("Pets"));
        assert_eq!(api_of("Pets.Execute-Api.local").as_deref(), Some("Pets"));
        assert_eq!(
            api_of("pets.execute-api.local.:443").as_deref(),
            Some("Pets")
        );
        assert_eq!(api_of("API.example.com.").as_deref(), Some("other"));
    }
}
