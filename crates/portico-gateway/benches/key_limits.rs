//! A keyed request through `Gateway::handle` (key lookup, throttles, a mock
//! integration), 1 000 keys in turn, its plan with only its own throttle
//! against the same plan with a stage and a route throttle too (three key
//! buckets per request instead of one), kept in keyed buckets (an origin)
//! and in shared ones (a PoP); and a request without a key, in the same run.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use portico_config::{Definitions, NodeThrottleConfig, RateLimit};
use portico_gateway::limits::Limits;
use portico_gateway::{
    Body, ConnInfo, Entry, Gateway, GatewayError, GatewaySettings, Protocol, RequestCtx,
    ServedModes, Upstream,
};

const KEYS: usize = 1_000;

struct Ok200;

impl Upstream for Ok200 {
    async fn forward(
        &self,
        _: &RequestCtx,
        _: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        Ok(Response::new(portico_gateway::body::empty()))
    }
}

fn key(i: usize) -> String {
    format!("bench-key-{i:020}")
}

/// API `a` with a keyed route `GET /x`; plan `p` at a rate nothing reaches,
/// with its stage and route throttles when `narrower`.
fn definitions(narrower: bool) -> Arc<Definitions> {
    let big = "{ rate = 1e9, burst = 100000000 }";
    let stage = match narrower {
        true => format!(
            "[[usage_plans.api_stages]]\napi = \"a\"\nstage = \"prod\"\nthrottle = {big}\n\
             route_throttles = [{{ route = \"GET /x\", throttle = {big} }}]\n"
        ),
        false => "[[usage_plans.api_stages]]\napi = \"a\"\nstage = \"prod\"\n".to_owned(),
    };
    let mut text = format!(
        "[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n\
         [[apis.routes]]\nmethod = \"GET\"\npath = \"/x\"\napi_key_required = true\n\
         integration = {{ type = \"mock\" }}\n\
         [[apis.routes]]\nmethod = \"GET\"\npath = \"/open\"\nintegration = {{ type = \"mock\" }}\n\
         [[apis.stages]]\nname = \"prod\"\n\
         [[usage_plans]]\nname = \"p\"\nthrottle = {big}\n{stage}"
    );
    for i in 0..KEYS {
        text.push_str(&format!(
            "[[api_keys]]\nid = \"k{i}\"\nhash = \"{}\"\nplans = [\"p\"]\n",
            portico_gateway::keys::stored_form(&key(i))
        ));
    }
    Arc::new(Definitions::from_toml_str(&text, "bench").expect("valid bench definitions"))
}

fn gateway(narrower: bool, shared: bool) -> Gateway<Ok200> {
    let defs = definitions(narrower);
    let config = NodeThrottleConfig {
        enabled: true,
        node: RateLimit {
            rate: 1e9,
            burst: 100_000_000,
        },
        per_client_ip: None,
    };
    let limits = Limits::new(&config, &defs, None);
    let limits = if shared {
        limits.with_shared_rates()
    } else {
        limits
    };
    let settings = GatewaySettings {
        node_id: Arc::from("bench"),
        max_body_bytes: 1 << 20,
        max_header_bytes: 16 * 1024,
        upstream_read_timeout: std::time::Duration::from_secs(60),
        upload_timeout: std::time::Duration::from_secs(60),
    };
    Gateway::new(settings, defs, Ok200).with_limits(limits)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conn = Arc::new(ConnInfo {
        client_addr: SocketAddr::from(([192, 0, 2, 7], 40000)),
        local_addr: SocketAddr::from(([127, 0, 0, 1], 443)),
        tls: None,
        protocol: Protocol::Http1,
        default_api: Some("a".into()),
    });
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let request = |path: &str, key: Option<&str>| {
        let mut req = Request::get(path).header("host", "a.example");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.body(portico_gateway::body::empty()).expect("request")
    };
    let mut group = c.benchmark_group("keyed_request");
    let cases = [
        ("plan_throttle_keyed", false, false),
        ("plan_stage_route_throttles_keyed", true, false),
        ("plan_throttle_shared", false, true),
        ("plan_stage_route_throttles_shared", true, true),
    ];
    for (name, narrower, shared) in cases {
        let g = gateway(narrower, shared);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let req = request("/prod/x", Some(&keys[i]));
                let resp = runtime.block_on(g.handle(req, &conn, Entry::Public(ServedModes::EDGE)));
                assert_eq!(resp.status(), 200);
                black_box(resp)
            })
        });
    }
    let g = gateway(false, false);
    group.bench_function("no_key", |b| {
        b.iter(|| {
            let req = request("/prod/open", None);
            let resp = runtime.block_on(g.handle(req, &conn, Entry::Public(ServedModes::EDGE)));
            black_box(resp)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
