//! The node files `portico up` writes for its origins and PoPs: the same format
//! a user writes by hand (docs/CONFIG.md), serialized from small structs so that
//! no value is ever spliced into TOML text, and checked with the node loader
//! before the node starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portico_config::topology::{Place, Topology};
use portico_config::{EndpointMode, Role};
use serde::Serialize;

use super::certs::{Certs, NodeCerts};
use super::{UpError, file_error};

/// Every listener binds port 0; the node prints the port it got.
const ANY_PORT: &str = "127.0.0.1:0";

#[derive(Serialize)]
struct NodeFile {
    node: NodeSection,
    limits: Limits,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    listeners: Vec<Listener>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<Admin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backbone: Option<Backbone>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    origins: Vec<OriginLink>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    apis: Vec<Api>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    usage_plans: Vec<UsagePlan>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    api_keys: Vec<ApiKey>,
}

/// `[limits]`: every client of a topology reaches its node through a loopback
/// relay, so all of them share the address 127.0.0.1, and the per-client
/// connection cap would cap the whole entry (a load test of more than 256
/// connections through one entry would be reset).
#[derive(Serialize)]
struct Limits {
    max_connections_per_client: u32,
}

const RELAYED_LIMITS: Limits = Limits {
    max_connections_per_client: 0,
};

/// `demo-API`: the quota of an API's `/keyed` route.
#[derive(Serialize)]
struct UsagePlan {
    name: String,
    quota: Quota,
    api_stages: Vec<ApiStage>,
}

#[derive(Serialize)]
struct Quota {
    limit: u64,
    period: &'static str,
    offset: u32,
}

#[derive(Serialize)]
struct ApiStage {
    api: String,
    stage: String,
}

/// The topology's demo key, in every demo plan of the region.
#[derive(Serialize)]
struct ApiKey {
    id: &'static str,
    hash: String,
    plans: Vec<String>,
}

#[derive(Serialize)]
struct NodeSection {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    /// Each node its own (the default is shared by every file of a directory).
    state_dir: String,
}

fn state_dir(node: &str) -> String {
    format!("state/{node}")
}

#[derive(Serialize)]
struct Listener {
    address: String,
    default_api: String,
    http3: bool,
    certificates: Vec<Cert>,
}

#[derive(Serialize)]
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Serialize)]
struct Admin {
    address: String,
    token_file: PathBuf,
}

#[derive(Serialize)]
struct Backbone {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Serialize)]
struct OriginLink {
    region: String,
    address: SocketAddr,
    server_name: String,
}

#[derive(Serialize)]
struct Api {
    name: String,
    endpoint: EndpointMode,
    region: String,
    routes: Vec<Route>,
    stages: Vec<Stage>,
}

#[derive(Serialize)]
struct Route {
    method: &'static str,
    path: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<RouteCache>,
    #[serde(skip_serializing_if = "Option::is_none")]
    throttle: Option<Throttle>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    api_key_required: bool,
    integration: Integration,
}

#[derive(Serialize, Clone, Copy)]
struct Throttle {
    rate: f64,
    burst: u32,
}

/// A demo route's `cache` table (GET and HEAD are cached; other methods pass).
#[derive(Serialize)]
struct RouteCache {
    mode: portico_config::CacheMode,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Integration {
    HttpProxy { uri: String },
}

#[derive(Serialize)]
struct Stage {
    name: String,
}

fn cert(files: &NodeCerts) -> Vec<Cert> {
    vec![Cert {
        cert: files.cert.clone(),
        key: files.key.clone(),
    }]
}

fn node_certs<'a>(certs: &'a Certs, node: &str) -> Result<&'a NodeCerts, UpError> {
    certs
        .node(node)
        .ok_or_else(|| UpError::Certs(format!("no certificate was made for `{node}`")))
}

/// What an origin's file needs besides the topology.
pub struct OriginInputs<'a> {
    pub region: usize,
    /// The relay in front of each of the region's backends, by backend index.
    pub backends: &'a [SocketAddr],
    /// Whether any PoP is homed in the region (the origin then listens on the backbone).
    pub backbone: bool,
    /// The admin API's bearer token (the origin serves `[admin]` on a free port).
    pub admin_token_file: &'a Path,
    /// The stored form (SHA-256) of the topology's demo key, for `/keyed` routes.
    pub demo_key_hash: Option<&'a str>,
}

/// The regional APIs of a region, in file order: one public listener each.
pub fn origin_listener_apis(t: &Topology, region: usize) -> Vec<usize> {
    (0..t.apis.len())
        .filter(|&a| t.apis[a].region == region && t.apis[a].endpoint == EndpointMode::Regional)
        .collect()
}

/// The edge APIs a PoP serves, in file order: one public listener each.
pub fn pop_listener_apis(t: &Topology, pop: usize) -> Vec<usize> {
    (0..t.apis.len())
        .filter(|&a| t.apis[a].endpoint == EndpointMode::Edge)
        .filter(|&a| {
            t.entries
                .iter()
                .any(|e| e.api == a && e.node == Place::Pop(pop))
        })
        .collect()
}

/// Writes the origin's file into `dir` and returns its path.
pub fn write_origin(
    t: &Topology,
    inputs: &OriginInputs<'_>,
    certs: &Certs,
    dir: &Path,
) -> Result<PathBuf, UpError> {
    let region = &t.regions[inputs.region];
    let files = node_certs(certs, &region.origin)?;
    let listeners = origin_listener_apis(t, inputs.region)
        .into_iter()
        .map(|a| Listener {
            address: ANY_PORT.to_owned(),
            default_api: t.apis[a].name.clone(),
            http3: t.http3,
            certificates: cert(files),
        })
        .collect();
    let in_region: Vec<usize> = (0..t.apis.len())
        .filter(|&a| t.apis[a].region == inputs.region)
        .collect();
    let apis = in_region
        .iter()
        .map(|&a| demo_api(t, a, inputs.backends))
        .collect();
    let usage_plans: Vec<UsagePlan> = in_region
        .iter()
        .filter_map(|&a| {
            let (api, quota) = (&t.apis[a], t.apis[a].keyed?);
            Some(UsagePlan {
                name: format!("demo-{}", api.name),
                quota: Quota {
                    limit: quota.limit,
                    period: quota.period.as_str(),
                    offset: quota.offset,
                },
                api_stages: vec![ApiStage {
                    api: api.name.clone(),
                    stage: api.stage.clone(),
                }],
            })
        })
        .collect();
    let api_keys = match (inputs.demo_key_hash, usage_plans.is_empty()) {
        (Some(hash), false) => vec![ApiKey {
            id: "demo",
            hash: hash.to_owned(),
            plans: usage_plans.iter().map(|p| p.name.clone()).collect(),
        }],
        _ => Vec::new(),
    };
    let backbone = inputs.backbone.then(|| Backbone {
        listen: Some(ANY_PORT.to_owned()),
        ca: certs.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
    });
    let file = NodeFile {
        limits: RELAYED_LIMITS,
        node: NodeSection {
            id: region.origin.clone(),
            region: Some(region.name.clone()),
            location: region.location.clone(),
            state_dir: state_dir(&region.origin),
        },
        listeners,
        admin: Some(Admin {
            address: ANY_PORT.to_owned(),
            token_file: inputs.admin_token_file.to_owned(),
        }),
        backbone,
        origins: Vec::new(),
        apis,
        usage_plans,
        api_keys,
    };
    write_checked(&file, &region.origin, Role::Origin, dir)
}

/// `ANY /` and `ANY /{proxy+}` proxied to the API's backend (through its relay).
fn demo_api(t: &Topology, a: usize, backends: &[SocketAddr]) -> Api {
    let api = &t.apis[a];
    let backend = backends
        .get(api.backend)
        .map_or_else(|| "127.0.0.1:1".to_owned(), SocketAddr::to_string);
    let route = |path, target: &str| Route {
        method: "ANY",
        path,
        cache: api.cache.map(|mode| RouteCache { mode }),
        throttle: None,
        api_key_required: false,
        integration: Integration::HttpProxy {
            uri: format!("http://{backend}/{target}"),
        },
    };
    let mut routes = vec![route("/", ""), route("/{proxy+}", "{proxy}")];
    if let Some(r) = api.limited {
        let throttle = Some(Throttle {
            rate: r.rate,
            burst: r.burst,
        });
        routes.push(Route {
            throttle,
            ..route("/limited/{proxy+}", "{proxy}")
        });
    }
    if api.keyed.is_some() {
        routes.push(Route {
            api_key_required: true,
            ..route("/keyed/{proxy+}", "{proxy}")
        });
    }
    Api {
        name: api.name.clone(),
        endpoint: api.endpoint,
        region: t.regions[api.region].name.clone(),
        routes,
        stages: vec![Stage {
            name: api.stage.clone(),
        }],
    }
}

/// Writes a PoP's file; `origins` are the backbone relays towards each home region's
/// origin, in the order of the PoP's `regions`.
pub fn write_pop(
    t: &Topology,
    pop: usize,
    origins: &[SocketAddr],
    certs: &Certs,
    dir: &Path,
) -> Result<PathBuf, UpError> {
    let p = &t.pops[pop];
    let files = node_certs(certs, &p.id)?;
    let listeners = pop_listener_apis(t, pop)
        .into_iter()
        .map(|a| Listener {
            address: ANY_PORT.to_owned(),
            default_api: t.apis[a].name.clone(),
            http3: t.http3,
            certificates: cert(files),
        })
        .collect();
    let origins = p
        .regions
        .iter()
        .zip(origins)
        .map(|(&r, &address)| OriginLink {
            region: t.regions[r].name.clone(),
            address,
            server_name: t.regions[r].origin.clone(),
        })
        .collect();
    let file = NodeFile {
        limits: RELAYED_LIMITS,
        node: NodeSection {
            id: p.id.clone(),
            region: None,
            location: p.location.clone(),
            state_dir: state_dir(&p.id),
        },
        listeners,
        admin: None,
        backbone: Some(Backbone {
            listen: None,
            ca: certs.ca.clone(),
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        origins,
        apis: Vec::new(),
        usage_plans: Vec::new(),
        api_keys: Vec::new(),
    };
    write_checked(&file, &p.id, Role::Pop, dir)
}

/// Serializes, writes and validates a node file, so a mistake here is reported as
/// ours before the node starts.
fn write_checked(file: &NodeFile, node: &str, role: Role, dir: &Path) -> Result<PathBuf, UpError> {
    let text = toml::to_string(file).map_err(|e| UpError::NodeFile {
        node: node.to_owned(),
        errors: portico_config::ConfigErrors::whole_file(node, e.to_string()),
    })?;
    std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(&path, text).map_err(file_error("writing", &path))?;
    portico_config::load_node_file_as(&path, Some(role)).map_err(|errors| UpError::NodeFile {
        node: node.to_owned(),
        errors,
    })?;
    Ok(path)
}
