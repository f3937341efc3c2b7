//! `GET /config`: which definitions this node serves, and on a PoP how each
//! origin's came (full snapshots or deltas).
//!
//! ```json
//! {"version": "16 hex digits", "sha256": "64 hex digits", "apis": 2,
//!  "origins": [{"origin": "origin-a", "region": "us-east-1", "address": "…",
//!               "version": "…", "sha256": "…", "snapshots": 1, "deltas": 3,
//!               "refused": 0, "requests": 0, "held": null}]}
//! ```
//!
//! `held` is an origin's newer definitions the PoP received but does not
//! serve, `{"version", "sha256", "reason"}`: they define an API another
//! region defines too, so the PoP serves that origin's previous ones.
//!
//! `version` is the definitions' version and `sha256` the SHA-256 of their
//! canonical text: what an origin puts in its snapshots, and what a PoP runs
//! (for one origin, the same pair as that origin's; `origins` is a PoP's
//! only). An origin whose definitions have not arrived has `null` version
//! and hash.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use portico_backbone::{ConfigStatus, Running};
use portico_gateway::Upstream;
use serde_json::{Value, json};

use super::{Admin, json, method_not_allowed};

pub(super) fn config<U: Upstream>(
    admin: &Admin<U>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return method_not_allowed("GET, HEAD");
    }
    let defs = admin.gateway.definitions();
    let mut body = json!({
        "version": format!("{:016x}", defs.version),
        "sha256": Running::of(&defs).hash_hex(),
        "apis": defs.apis.len(),
    });
    if let Some(origins) = &admin.origins {
        body["origins"] = origins();
    }
    json(StatusCode::OK, &body)
}

/// A PoP's `origins` list, from its backbone.
pub fn origins(status: &ConfigStatus) -> Value {
    let list: Vec<Value> = status
        .origins()
        .into_iter()
        .map(|(spec, s)| {
            json!({
                "origin": s.origin_id,
                "region": spec.region,
                "address": spec.address.to_string(),
                "version": s.running.map(|r| format!("{:016x}", r.version)),
                "sha256": s.running.map(|r| r.hash_hex()),
                "held": s.held.as_ref().map(|(r, why)| json!({
                    "version": format!("{:016x}", r.version),
                    "sha256": r.hash_hex(),
                    "reason": why,
                })),
                "snapshots": s.snapshots,
                "deltas": s.deltas,
                "refused": s.refused,
                "requests": s.requests,
            })
        })
        .collect();
    Value::Array(list)
}
