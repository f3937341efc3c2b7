//! The limits phase of requests that arrived over the backbone, driven
//! through `Gateway::handle`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use portico_config::{Definitions, NodeThrottleConfig, RateLimit};

use super::Limits;
use crate::body::{Body, full};
use crate::context::{ConnInfo, Principal, Protocol, RequestCtx};
use crate::error::GatewayError;
use crate::{Entry, Gateway, GatewaySettings, ServedModes, Upstream};

const KEY: &str = "routed-test-key-0123456789";

/// An upstream that answers every request 200 `ok`.
pub(super) struct Ok200;

impl Upstream for Ok200 {
    async fn forward(
        &self,
        _: &RequestCtx,
        _: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        Ok(Response::new(full("ok")))
    }
}

fn gateway() -> Gateway<Ok200> {
    gateway_with(None)
}

/// [`gateway`] with a per-client-IP bucket of `per_client_ip`.
fn gateway_with(per_client_ip: Option<RateLimit>) -> Gateway<Ok200> {
    let text = format!(
        r#"
[[apis]]
name = "a"
endpoint = "edge"
[[apis.routes]]
method = "GET"
path = "/x"
api_key_required = true
integration = {{ type = "mock" }}
[[apis.stages]]
name = "prod"

[[usage_plans]]
name = "p"
throttle = {{ rate = 0.001, burst = 1 }}
api_stages = [{{ api = "a", stage = "prod" }}]

[[api_keys]]
id = "k1"
hash = "{}"
plans = ["p"]
"#,
        crate::keys::stored_form(KEY)
    );
    let defs = Arc::new(Definitions::from_toml_str(&text, "test").unwrap());
    let config = NodeThrottleConfig {
        enabled: true,
        node: RateLimit {
            rate: 1000.0,
            burst: 1000,
        },
        per_client_ip,
    };
    let limits = Limits::new(&config, &defs, None);
    ok_gateway(defs, limits)
}

/// A gateway of `defs` with `limits` in front of [`Ok200`].
pub(super) fn ok_gateway(defs: Arc<Definitions>, limits: Limits) -> Gateway<Ok200> {
    let settings = GatewaySettings {
        node_id: Arc::from("origin-1"),
        max_body_bytes: 1 << 20,
        max_header_bytes: 16 * 1024,
        upstream_read_timeout: std::time::Duration::from_secs(60),
        upload_timeout: std::time::Duration::from_secs(60),
    };
    Gateway::new(settings, defs, Ok200).with_limits(limits)
}

/// A client's connection (from 192.0.2.7) to a listener of API `a`.
pub(super) fn client_conn() -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        client_addr: SocketAddr::from(([192, 0, 2, 7], 40000)),
        local_addr: SocketAddr::from(([127, 0, 0, 1], 443)),
        tls: None,
        protocol: Protocol::Http1,
        default_api: Some("a".into()),
    })
}

async fn routed(g: &Gateway<Ok200>, claimed: Option<&Principal>) -> u16 {
    let req = Request::get("/x")
        .header("host", "a.example")
        .header("x-api-key", KEY)
        .body(full(""))
        .unwrap();
    let conn = Arc::new(ConnInfo {
        client_addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        local_addr: SocketAddr::from(([127, 0, 0, 1], 2)),
        tls: None,
        protocol: Protocol::Backbone,
        default_api: None,
    });
    let entry = Entry::Routed {
        api: "a",
        stage: "prod",
        modes: ServedModes::EDGE,
        principal: claimed,
    };
    g.handle(req, &conn, entry).await.status().as_u16()
}

#[tokio::test]
async fn a_pop_that_checked_the_key_has_throttled_it_already() {
    let g = gateway();
    let key = Principal::api_key("k1");
    for _ in 0..3 {
        assert_eq!(routed(&g, Some(&key)).await, 200);
    }
}

#[tokio::test]
async fn a_key_the_pop_did_not_check_is_throttled_here() {
    // The PoP served definitions in which the route needed no key (a reload
    // on its way): it throttled no key and spent no quota, so the origin does.
    let g = gateway();
    assert_eq!(routed(&g, None).await, 200);
    assert_eq!(routed(&g, None).await, 429);
}

/// A request from a client, `x-api-key` set to `key` when given: its
/// status and body.
async fn public(g: &Gateway<Ok200>, path: &str, key: Option<&str>) -> (u16, String) {
    public_to(g, "a.example", path, key).await
}

/// [`public`] with `host` for its `Host`.
async fn public_to(g: &Gateway<Ok200>, host: &str, path: &str, key: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt;
    let mut req = Request::get(format!("/prod{path}")).header("host", host);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    let resp = g
        .handle(
            req.body(full("")).unwrap(),
            &client_conn(),
            Entry::Public(ServedModes::EDGE),
        )
        .await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn requests_refused_before_the_throttles_still_cost_the_client_tokens() {
    let per_ip = RateLimit {
        rate: 0.001,
        burst: 2,
    };
    let too_many = (429, r#"{"message":"Too Many Requests"}"#.to_owned());
    // Probing for routes: the client's bucket counts each 404.
    let g = gateway_with(Some(per_ip));
    assert_eq!(public(&g, "/nope", None).await.0, 404);
    assert_eq!(public(&g, "/nope", None).await.0, 404);
    assert_eq!(public(&g, "/nope", None).await, too_many);
    // Guessing keys: each 403 too.
    let g = gateway_with(Some(per_ip));
    assert_eq!(public(&g, "/x", Some("not-a-key-0123456789")).await.0, 403);
    assert_eq!(public(&g, "/x", None).await.0, 403);
    assert_eq!(public(&g, "/x", Some(KEY)).await, too_many);
    // Malformed requests, refused before routing: each 400 too.
    let g = gateway_with(Some(per_ip));
    let bad_request = (400, r#"{"message":"Bad Request"}"#.to_owned());
    assert_eq!(public_to(&g, "a b", "/x", None).await, bad_request);
    assert_eq!(public_to(&g, "a b", "/x", None).await, bad_request);
    assert_eq!(public_to(&g, "a b", "/x", None).await, too_many);
}

/// A CORS preflight the gateway answers itself still costs the client's
/// tokens; one a PoP forwarded routes as any request (the PoP answers its
/// own clients' preflights).
#[tokio::test]
async fn cors_preflights_cost_tokens_and_a_forwarded_one_routes() {
    let text = r#"
[[apis]]
name = "a"
endpoint = "edge"
[apis.cors]
allow_origins = ["https://app.test"]
[[apis.routes]]
method = "ANY"
path = "/x"
integration = { type = "mock" }
[[apis.stages]]
name = "prod"
"#;
    let g = gateway_of(text, 2);
    let preflight = |path: &str| {
        Request::options(path)
            .header("host", "a.example")
            .header("origin", "https://app.test")
            .header("access-control-request-method", "PUT")
            .body(full(""))
            .unwrap()
    };
    let entry = Entry::Public(ServedModes::EDGE);
    for expected in [204, 204, 429] {
        let resp = g.handle(preflight("/prod/x"), &client_conn(), entry).await;
        assert_eq!(resp.status(), expected);
    }
    let routed = Entry::Routed {
        api: "a",
        stage: "prod",
        modes: ServedModes::EDGE,
        principal: None,
    };
    let resp = g.handle(preflight("/x"), &client_conn(), routed).await;
    assert_eq!(resp.status(), 200, "the upstream's answer");
}

/// A request refused before a route matched (no such route, no such
/// method, a client over its tokens) still carries the CORS headers of the
/// API its host and path name, so that a page can read the refusal; an API
/// without CORS gets none.
#[tokio::test]
async fn refusals_before_a_route_carry_the_apis_cors_headers() {
    let text = r#"
[[apis]]
name = "a"
endpoint = "edge"
[apis.cors]
allow_origins = ["https://app.test"]
[[apis.routes]]
method = "GET"
path = "/x"
integration = { type = "mock" }
[[apis.stages]]
name = "prod"

[[apis]]
name = "b"
endpoint = "edge"
[[apis.routes]]
method = "GET"
path = "/x"
integration = { type = "mock" }
[[apis.stages]]
name = "prod"
"#;
    let g = gateway_of(text, 3);
    let conn = client_conn();
    let send = |host: &str, method: &str, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .header("origin", "https://app.test")
            .body(full(""))
            .unwrap();
        g.handle(req, &conn, Entry::Public(ServedModes::EDGE))
    };
    let allowed = |resp: &Response<Body>| {
        resp.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let resp = send("a.execute-api.local", "GET", "/prod/nope").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(allowed(&resp).as_deref(), Some("https://app.test"));
    assert_eq!(resp.headers()["vary"], "Origin");
    let resp = send("a.execute-api.local", "DELETE", "/prod/x").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(allowed(&resp).as_deref(), Some("https://app.test"));
    let resp = send("b.execute-api.local", "GET", "/prod/nope").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(allowed(&resp), None, "an API without CORS");
    // The client's tokens are spent: its 429 is readable too.
    let resp = send("a.execute-api.local", "GET", "/prod/nope").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(allowed(&resp).as_deref(), Some("https://app.test"));
    // And so is a preflight's.
    let preflight = Request::options("/prod/x")
        .header("host", "a.execute-api.local")
        .header("origin", "https://app.test")
        .header("access-control-request-method", "GET")
        .body(full(""))
        .unwrap();
    let resp = g
        .handle(preflight, &conn, Entry::Public(ServedModes::EDGE))
        .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(allowed(&resp).as_deref(), Some("https://app.test"));
}

/// A gateway over the definitions in `text` whose clients each have `burst`
/// requests and no refill.
fn gateway_of(text: &str, burst: u32) -> Gateway<Ok200> {
    let defs = Arc::new(Definitions::from_toml_str(text, "test").unwrap());
    let config = NodeThrottleConfig {
        enabled: true,
        node: RateLimit {
            rate: 1000.0,
            burst: 1000,
        },
        per_client_ip: Some(RateLimit { rate: 0.001, burst }),
    };
    ok_gateway(Arc::clone(&defs), Limits::new(&config, &defs, None))
}
