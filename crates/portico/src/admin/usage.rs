//! Usage-plan routes of the admin API (on the origin that keeps the quota book).
//!
//! | route | answer |
//! |---|---|
//! | `GET /usage?plan=NAME` | every key of the plan: `{"plan", "limit", "period", "period_start", "period_end", "keys": [{"key", "used", "remaining"}]}` |
//! | `GET /usage?plan=NAME&key=ID` | the same with that key only |
//! | `GET /limits/stats` | `{"degraded_allowed": N, "connections_refused": M, "quota_returns_waiting": R}`: requests a `fail_open` plan let through while its quota could not be checked; connections the public listeners refused because their client address held `[limits] max_connections_per_client`; lease returns, and cancels of grants that had no answer, a shared quota book's Redis could not take yet (sent again every second) |
//!
//! `used` counts what was spent plus what PoPs hold in leases (the book's
//! view: never more than the quota). Times are RFC 3339, UTC. A missing
//! `plan` is `400`; an unknown plan or key, or a plan without a quota, `404`.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use portico_gateway::Upstream;
use serde_json::json;

use super::{Admin, json, message, method_not_allowed};

type Resp = Response<Full<Bytes>>;

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch (UTC).
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = portico_quota::period::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(super) async fn usage<U: Upstream>(admin: &Admin<U>, req: &Request<Incoming>) -> Resp {
    if req.method() != Method::GET {
        return method_not_allowed("GET, HEAD");
    }
    let mut plan = None;
    let mut key = None;
    for (name, value) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*name {
            "plan" => plan = Some(value.into_owned()),
            "key" => key = Some(value.into_owned()),
            other => {
                return message(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown query parameter `{other}` (expected `plan`, `key`)"),
                );
            }
        }
    }
    let Some(plan_name) = plan else {
        return message(
            StatusCode::BAD_REQUEST,
            "query parameter `plan` is required",
        );
    };
    let defs = admin.gateway.definitions();
    let Some(plan) = defs.usage_plan(&plan_name) else {
        return message(
            StatusCode::NOT_FOUND,
            &format!("unknown usage plan `{plan_name}`"),
        );
    };
    let Some(spec) = plan.quota else {
        return message(
            StatusCode::NOT_FOUND,
            &format!("usage plan `{plan_name}` has no quota"),
        );
    };
    // A PoP spends leases; the book is its origin's.
    let book = admin
        .gateway
        .limits()
        .quota()
        .filter(|q| q.book().is_some());
    let Some(quotas) = book else {
        return message(StatusCode::NOT_FOUND, "this node keeps no quota book");
    };
    let keys: Vec<_> = defs
        .api_keys
        .iter()
        .filter(|k| k.plans.contains(&plan.name))
        .filter(|k| key.as_ref().is_none_or(|id| &k.id == id))
        .collect();
    if let (Some(id), true) = (&key, keys.is_empty()) {
        return message(
            StatusCode::NOT_FOUND,
            &format!("no API key `{id}` in usage plan `{plan_name}`"),
        );
    }
    let mut rows = Vec::with_capacity(keys.len());
    let mut period = None;
    for k in keys {
        match quotas.usage(&plan.name, &k.id, spec).await {
            Ok(u) => {
                period.get_or_insert((u.period_start_ms, u.period_end_ms));
                rows.push(json!({ "key": k.id, "used": u.used, "remaining": u.remaining }));
            }
            Err(err) => {
                tracing::error!(%err, plan = %plan.name, key = %k.id, "usage read failed");
                return message(StatusCode::SERVICE_UNAVAILABLE, "quota book unavailable");
            }
        }
    }
    let (start, end) = period.unwrap_or_else(|| {
        portico_quota::bounds(spec.period, spec.offset, portico_gateway::limits::now_ms())
    });
    json(
        StatusCode::OK,
        &json!({
            "plan": plan.name,
            "limit": spec.limit,
            "period": spec.period.as_str(),
            "period_start": rfc3339(start),
            "period_end": rfc3339(end),
            "keys": rows,
        }),
    )
}

pub(super) fn stats<U: Upstream>(admin: &Admin<U>, req: &Request<Incoming>) -> Resp {
    if req.method() != Method::GET {
        return method_not_allowed("GET, HEAD");
    }
    let limits = admin.gateway.limits();
    json(
        StatusCode::OK,
        &json!({
            "degraded_allowed": limits.degraded_allowed(),
            "connections_refused": limits.connections_refused(),
            "quota_returns_waiting": limits
                .quota()
                .and_then(|q| q.book())
                .map_or(0, portico_quota::Book::returns_waiting),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_028_800_000), "2025-11-25T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }
}
