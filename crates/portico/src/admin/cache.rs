//! Cache routes of the admin API.
//!
//! | route | body | effect |
//! |---|---|---|
//! | `POST /cache/purge/url` | `{"url": "https://HOST/STAGE/PATH?Q"}` or `{"api", "stage", "path": "/PATH?Q"}` | every variant stored for that URL |
//! | `POST /cache/purge/prefix` | `{"api", "stage", "prefix": "/PATH"}` | every path of the stage starting with the prefix |
//! | `POST /cache/purge/tag` | `{"api", "tags": ["t", ...]}` | every entry of the API with one of the tags |
//! | `POST /cache/purge/stage` | `{"api", "stage"}` | the whole stage |
//! | `GET /cache/stats` | — | `{"entries", "weighted_bytes", "max_bytes"}` |
//!
//! A purge answers `200 {"purged": KIND, "id": N}` once lookups at this node no
//! longer find what it removed; it is also handed to the backbone for the PoPs.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use portico_gateway::Upstream;
use portico_gateway::cache::{PurgeScope, purge};
use portico_gateway::router::RoutingTable;
use serde::Deserialize;

use super::{Admin, json, message, method_not_allowed, read_json};

type Resp = Response<Full<Bytes>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlPurge {
    url: Option<String>,
    api: Option<String>,
    stage: Option<String>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefixPurge {
    api: String,
    stage: String,
    prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TagPurge {
    api: String,
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StagePurge {
    api: String,
    stage: String,
}

/// `rest` is the path after `/cache/`.
pub(super) async fn route<U: Upstream>(
    admin: &Admin<U>,
    rest: &str,
    req: Request<Incoming>,
) -> Resp {
    let post = req.method() == Method::POST;
    // A PoP's cache refills from its origin's, which a purge here would
    // leave as it was (and no other PoP would hear of it).
    if rest.starts_with("purge/") && post && admin.is_pop() {
        return message(
            StatusCode::CONFLICT,
            "purges are made on the origin's admin API, which sends them to every PoP",
        );
    }
    match rest {
        "purge/url" if post => purge_with(admin, req, url_scope).await,
        "purge/prefix" if post => {
            purge_with(admin, req, |t, b: PrefixPurge| {
                purge::prefix_scope(t, &b.api, &b.stage, &b.prefix)
            })
            .await
        }
        "purge/tag" if post => {
            purge_with(admin, req, |t, b: TagPurge| {
                purge::tag_scope(t, &b.api, &b.tags)
            })
            .await
        }
        "purge/stage" if post => {
            purge_with(admin, req, |t, b: StagePurge| {
                purge::stage_scope(t, &b.api, &b.stage)
            })
            .await
        }
        "purge/url" | "purge/prefix" | "purge/tag" | "purge/stage" => method_not_allowed("POST"),
        "stats" if req.method() == Method::GET => stats(admin).await,
        "stats" => method_not_allowed("GET, HEAD"),
        _ => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn url_scope(table: &RoutingTable, b: UrlPurge) -> Result<PurgeScope, String> {
    match b {
        UrlPurge {
            url: Some(url),
            api: None,
            stage: None,
            path: None,
        } => purge::url_scope(table, &url),
        UrlPurge {
            url: None,
            api: Some(api),
            stage: Some(stage),
            path: Some(path),
        } => purge::path_scope(table, &api, &stage, &path),
        _ => Err("give either `url`, or `api`, `stage` and `path`".to_owned()),
    }
}

/// Reads the body as `B`, turns it into a scope, purges here and hands the scope to
/// the backbone.
async fn purge_with<U: Upstream, B: serde::de::DeserializeOwned>(
    admin: &Admin<U>,
    req: Request<Incoming>,
    scope: impl FnOnce(&RoutingTable, B) -> Result<PurgeScope, String>,
) -> Resp {
    let body: B = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let scope = match scope(&admin.gateway.routing(), body) {
        Ok(s) => s,
        Err(reason) => return message(StatusCode::BAD_REQUEST, &reason),
    };
    admin.gateway.purge(&scope).await;
    let id = admin.purge_id();
    // No receiver (no backbone, or no PoP connected) is not an error.
    let _ = admin.purges.send(scope.clone());
    json(
        StatusCode::OK,
        &serde_json::json!({ "purged": scope.as_str(), "id": id }),
    )
}

async fn stats<U: Upstream>(admin: &Admin<U>) -> Resp {
    let Some(cache) = admin.gateway.cache() else {
        return json(StatusCode::OK, &serde_json::json!({ "enabled": false }));
    };
    let s = cache.stats().await;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "enabled": true,
            "entries": s.entries,
            "weighted_bytes": s.weighted_bytes,
            "max_bytes": s.max_bytes,
        }),
    )
}
