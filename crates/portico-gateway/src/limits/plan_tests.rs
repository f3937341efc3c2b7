//! A usage plan's stage and route throttles (API Gateway's
//! `apiStages[].throttle`), driven through `Gateway::handle`.

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use portico_config::{Definitions, NodeThrottleConfig, RateLimit};

use super::routed_tests::{Ok200, client_conn, ok_gateway};
use super::{Limits, RATELIMIT_POLICY};
use crate::body::full;
use crate::throttle::RateSpec;
use crate::{Entry, Gateway, ServedModes};

const K1: &str = "plan-test-key-one-0123456789";
const K2: &str = "plan-test-key-two-0123456789";

/// API `a` (edge) with routes `GET /x` and `GET /y` in stages `prod` and
/// `dev`; plan `p` (keys `k1`, `k2`): 4 requests per key in all, 3 in
/// `prod`, 1 on `GET /x` in `prod` (every rate a token per 1000 s).
fn definitions() -> Arc<Definitions> {
    let route = |path: &str| {
        format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"{path}\"\napi_key_required = true\n\
             integration = {{ type = \"mock\" }}\n"
        )
    };
    let key = |id: &str, key: &str| {
        format!(
            "[[api_keys]]\nid = \"{id}\"\nhash = \"{}\"\nplans = [\"p\"]\n",
            crate::keys::stored_form(key)
        )
    };
    let text = format!(
        "[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n{}{}\
         [[apis.stages]]\nname = \"prod\"\n[[apis.stages]]\nname = \"dev\"\n\
         [[usage_plans]]\nname = \"p\"\nthrottle = {{ rate = 0.001, burst = 4 }}\n\
         [[usage_plans.api_stages]]\napi = \"a\"\nstage = \"prod\"\n\
         throttle = {{ rate = 0.001, burst = 3 }}\n\
         route_throttles = [{{ route = \"GET /x\", throttle = {{ rate = 0.001, burst = 1 }} }}]\n\
         [[usage_plans.api_stages]]\napi = \"a\"\nstage = \"dev\"\n{}{}",
        route("/x"),
        route("/y"),
        key("k1", K1),
        key("k2", K2),
    );
    Arc::new(Definitions::from_toml_str(&text, "test").unwrap())
}

fn limits(defs: &Definitions, shared: bool) -> Limits {
    let config = NodeThrottleConfig {
        enabled: true,
        node: RateLimit {
            rate: 1000.0,
            burst: 1000,
        },
        per_client_ip: None,
    };
    let limits = Limits::new(&config, defs, None);
    match shared {
        true => limits.with_shared_rates(),
        false => limits,
    }
}

/// A client's request for `/STAGE/PATH` with `key`: status, body and the
/// names in its `RateLimit-Policy`.
async fn get(g: &Gateway<Ok200>, path: &str, key: &str) -> (u16, String, String) {
    let req = Request::get(path)
        .header("host", "a.example")
        .header("x-api-key", key)
        .body(full(""))
        .unwrap();
    let resp = g
        .handle(req, &client_conn(), Entry::Public(ServedModes::EDGE))
        .await;
    let status = resp.status().as_u16();
    let policy = resp
        .headers()
        .get(&RATELIMIT_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), policy)
}

const TOO_MANY: &str = r#"{"message":"Too Many Requests"}"#;

/// The route's, the stage's and the plan's key rates each hold, narrowest
/// first, per key, whether the node keeps keys in keyed buckets (an origin)
/// or in shared ones (a PoP).
async fn stage_and_route_throttles_hold_per_key(shared: bool) {
    let defs = definitions();
    let g = ok_gateway(Arc::clone(&defs), limits(&defs, shared));
    // The route's: one on GET /x in prod.
    let (status, _, policy) = get(&g, "/prod/x", K1).await;
    assert_eq!(status, 200);
    assert!(policy.starts_with("\"key-route\";q=1"), "{policy}");
    let (status, body, policy) = get(&g, "/prod/x", K1).await;
    assert_eq!((status, body.as_str()), (429, TOO_MANY));
    assert!(policy.starts_with("\"key-route\""), "{policy}");
    // Another key has buckets of its own.
    assert_eq!(get(&g, "/prod/x", K2).await.0, 200);
    // The stage's: three in prod, of which /x took one (its refused
    // request took nothing from the wider buckets).
    for _ in 0..2 {
        let (status, _, policy) = get(&g, "/prod/y", K1).await;
        assert_eq!(status, 200);
        assert!(policy.starts_with("\"key-stage\";q=3"), "{policy}");
    }
    let (status, body, policy) = get(&g, "/prod/y", K1).await;
    assert_eq!((status, body.as_str()), (429, TOO_MANY));
    assert!(policy.starts_with("\"key-stage\""), "{policy}");
    // The plan's: four across its stages, three spent in prod.
    let (status, _, policy) = get(&g, "/dev/y", K1).await;
    assert_eq!(status, 200);
    assert!(policy.starts_with("\"key\";q=4"), "{policy}");
    let (status, body, policy) = get(&g, "/dev/x", K1).await;
    assert_eq!((status, body.as_str()), (429, TOO_MANY));
    assert!(policy.starts_with("\"key\""), "{policy}");
}

#[tokio::test]
async fn a_plans_stage_and_route_throttles_hold_per_key_at_an_origin() {
    stage_and_route_throttles_hold_per_key(false).await;
}

#[tokio::test]
async fn a_plans_stage_and_route_throttles_hold_per_key_at_a_pop() {
    stage_and_route_throttles_hold_per_key(true).await;
}

/// A PoP takes shares of a plan's stage and route key rates, for the
/// keys it has seen and as the default of the others, and reports their
/// demand under their families.
#[tokio::test]
async fn shares_of_stage_and_route_key_rates_apply() {
    let defs = definitions();
    let g = ok_gateway(Arc::clone(&defs), limits(&defs, true));
    let limits = g.limits();
    let share = RateSpec {
        rate: 0.0005,
        burst: 1,
    };
    assert!(limits.apply_share("plan:p@a/prod/GET /x", share));
    assert!(limits.apply_share("plan:p@a/prod", share));
    assert!(
        !limits.apply_share("plan:p@a/dev", share),
        "no such throttle"
    );
    // k1 has no bucket yet: its share has nothing to set.
    assert!(!limits.apply_share("key:p@a/prod/GET /x/k1", share));
    assert_eq!(get(&g, "/prod/y", K1).await.0, 200);
    // The stage's default share (burst 1 of 3) holds k1 to one in prod.
    assert_eq!(get(&g, "/prod/y", K1).await.0, 429);
    assert!(limits.apply_share("key:p@a/prod/k1", share));
    // A key's share of a route's rate, once its bucket exists (the scope
    // holds the route key's `/`s before the key id).
    assert_eq!(get(&g, "/prod/x", K2).await.0, 200);
    assert!(limits.apply_share("key:p@a/prod/GET /x/k2", share));
    let mut demand = Vec::new();
    limits.take_demand(|scope, n| demand.push((scope.to_owned(), n)));
    demand.sort();
    let expected = [
        ("key:p/k1", 1),
        ("key:p/k2", 1),
        ("key:p@a/prod/GET /x/k2", 1),
        ("key:p@a/prod/k1", 2),
        ("key:p@a/prod/k2", 1),
    ]
    .map(|(scope, n)| (scope.to_owned(), n));
    assert_eq!(demand, expected);
}
