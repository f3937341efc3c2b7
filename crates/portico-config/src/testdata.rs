//! Shared fixtures for the unit tests.

use std::path::PathBuf;

use crate::{ConfigErrors, NodeConfig, Role, parse_node, parse_node_as};

/// A valid origin file using every section and integration type.
pub(crate) const FULL: &str = r#"
[node]
id = "origin-iad"
region = "us-east-1"
location = "N. Virginia"

[[listeners]]
address = "127.0.0.1:8443"
default_api = "echo"
certificates = [ { cert = "certs/a.pem", key = "certs/a.key" } ]

[[listeners]]
address = "127.0.0.1:8080"
tls = false

[admin]
address = "127.0.0.1:9901"
token = "secret"

[limits]
max_body_bytes = 1048576
max_header_bytes = 8192
default_timeout_ms = 10000

[backend_client]
ca_file = "certs/ca.pem"
pool_idle_timeout_ms = 1000
pool_max_idle_per_host = 8
connect_timeout_ms = 2000
http2_only = true

[dns]
nameservers = ["127.0.0.1:53"]
use_hosts_file = false
cache_size = 16

[backbone]
listen = "127.0.0.1:7443"
ca = "certs/ca.pem"
cert = "certs/a.pem"
key = "certs/a.key"
max_concurrent_streams = 2000

[[apis]]
name = "echo"
endpoint = "regional"
hosts = ["Echo.Example.com"]
description = "echo service"

[[apis.routes]]
method = "GET"
path = "/items/{id}"
timeout_ms = 5000
  [apis.routes.integration]
  type = "http_proxy"
  uri = "http://${stageVariables.backend}/items/{id}"

[[apis.routes]]
path = "/{proxy+}"
  [apis.routes.integration]
  type = "http_proxy"
  uri = "http://${stageVariables.backend}/{proxy}"

[[apis.routes]]
method = "POST"
path = "/pets/{petId}"
  [apis.routes.integration]
  type = "http"
  method = "PUT"
  uri = "http://${stageVariables.backend}/animals/{id}"
  pass_request_body = false
  request_parameters = { "integration.request.path.id" = "method.request.path.petId", "integration.request.querystring.q" = "method.request.querystring.search", "integration.request.header.X-K" = "'static value'", "integration.request.header.x-src" = "method.request.header.x-client", "integration.request.header.x-env" = "stageVariables.env" }
  response_parameters = { "method.response.header.X-Out" = "integration.response.header.x-backend", "method.response.header.x-static" = "'yes'" }

[[apis.routes]]
method = "GET"
path = "/health"
  [apis.routes.integration]
  type = "mock"
  status = 200
  headers = { "Content-Type" = "application/json" }
  body = '{"ok":true}'

[[apis.deployments]]
id = "v1"
description = "first release"
  [[apis.deployments.routes]]
  method = "GET"
  path = "/old"
    [apis.deployments.routes.integration]
    type = "mock"
    status = 410

[[apis.stages]]
name = "prod"
variables = { backend = "127.0.0.1:9000", env = "prod" }
  [[apis.stages.route_overrides]]
  route = "*"
  timeout_ms = 20000
  [[apis.stages.route_overrides]]
  route = "GET /items/{id}"
  timeout_ms = 1000

[[apis.stages]]
name = "v1"
deployment = "v1"

[[apis]]
name = "edge-echo"
endpoint = "edge"
region = "eu-central-1"

[[apis.routes]]
path = "/"
  [apis.routes.integration]
  type = "mock"

[[apis.stages]]
name = "prod"

[[domains]]
name = "API.example.com"
certificate = { cert = "certs/a.pem", key = "certs/a.key" }
  [[domains.mappings]]
  base_path = "v1"
  api = "echo"
  stage = "v1"
  [[domains.mappings]]
  api = "echo"
  stage = "prod"
"#;

/// A directory holding the files `FULL` and docs/CONFIG.md refer to, created once per
/// test process (tests run in parallel and must not rewrite it under each other).
pub(crate) fn fixture_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portico-config-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let files = [
            "certs/a.pem",
            "certs/a.key",
            "certs/ca.pem",
            "certs/api.pem",
            "certs/api.key",
            "ca.pem",
            "node.pem",
            "node.key",
        ];
        for f in files {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        dir
    })
    .clone()
}

pub(crate) fn parse(text: &str) -> Result<NodeConfig, ConfigErrors> {
    parse_node(text, "t.toml", &fixture_dir())
}

pub(crate) fn parse_role(text: &str, role: Role) -> Result<NodeConfig, ConfigErrors> {
    parse_node_as(text, "t.toml", &fixture_dir(), Some(role))
}

/// The errors of an invalid text, as `line:col: message` lines (expected omitted).
pub(crate) fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect(),
    }
}

/// A minimal valid origin prefix for error tests.
pub(crate) const NODE: &str = "[node]\nid = \"o\"\nregion = \"r\"\n";

/// `NODE` plus an API `a` (lines 4-6); `body` starts on line 7.
pub(crate) fn api(body: &str) -> String {
    format!("{NODE}[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n{body}")
}

/// A route with a mock integration (3 lines, path on the first).
pub(crate) fn mock_route(method: &str, path: &str) -> String {
    format!(
        "[[apis.routes]]\nmethod = \"{method}\"\npath = \"{path}\"\n[apis.routes.integration]\ntype = \"mock\"\n"
    )
}
