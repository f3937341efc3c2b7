//! CORS for APIs that configure it (`[apis.cors]`), as API Gateway's HTTP
//! APIs do it: the gateway answers a browser's preflight itself (204, never
//! forwarded, no API key needed: browsers send none), and every response
//! of the API gets the CORS headers the configuration gives its `Origin`,
//! in place of any the backend sent.
//!
//! The node a client entered adds them: a PoP for edge APIs (the origin
//! leaves a PoP's requests undecorated, so what a PoP caches does not depend
//! on the `Origin` it was fetched for), an origin for regional ones.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use portico_config::{Cors, CorsList};

use crate::body::{Body, empty};

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");

/// Whether a request is a CORS preflight (Fetch §3.2.2: `OPTIONS` with
/// `Origin` and `Access-Control-Request-Method`).
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(ORIGIN)
        && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight: 204, with the allowances when its origin is
/// allowed and none otherwise (the browser then refuses the request).
pub(crate) fn preflight(cors: &Cors, headers: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let out = resp.headers_mut();
    if !allow_origin(cors, headers.get(ORIGIN), out) {
        return resp;
    }
    let echo = |name| headers.get(name).cloned();
    let methods = match &cors.methods {
        CorsList::None => None,
        CorsList::Any => echo(ACCESS_CONTROL_REQUEST_METHOD),
        CorsList::Listed(v) => Some(v.clone()),
    };
    let asked = match &cors.headers {
        CorsList::None => None,
        CorsList::Any => echo(ACCESS_CONTROL_REQUEST_HEADERS),
        CorsList::Listed(v) => Some(v.clone()),
    };
    if let Some(v) = methods {
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if let Some(v) = asked {
        out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(v) = &cors.max_age {
        out.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    resp
}

/// Puts the CORS headers of `origin` (the request's `Origin`, if any) on a
/// response of an API with `cors`, in place of the backend's.
pub(crate) fn decorate(cors: &Cors, origin: Option<&HeaderValue>, out: &mut HeaderMap) {
    for name in [
        ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ACCESS_CONTROL_EXPOSE_HEADERS,
        ACCESS_CONTROL_ALLOW_METHODS,
        ACCESS_CONTROL_ALLOW_HEADERS,
        ACCESS_CONTROL_MAX_AGE,
    ] {
        out.remove(name);
    }
    if allow_origin(cors, origin, out)
        && let Some(v) = &cors.expose
    {
        out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
}

/// `Access-Control-Allow-Origin` (and `-Credentials`) for `origin`, when
/// allowed; `Vary: Origin` whenever the answer depends on it (every origin
/// listed rather than `*`), so that a shared cache downstream keeps one
/// answer per origin.
fn allow_origin(cors: &Cors, origin: Option<&HeaderValue>, out: &mut HeaderMap) -> bool {
    if cors.any_origin {
        // On every response, Origin or not: an answer stored for a request
        // without one (an <img>) then serves a later fetch() as well.
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
        return true;
    }
    vary_on_origin(out);
    let Some(origin) = origin.filter(|o| cors.allows(o.as_bytes())) else {
        return false;
    };
    out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.credentials {
        out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
    }
    true
}

fn vary_on_origin(out: &mut HeaderMap) {
    let named = out.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("origin"))
        })
    });
    if !named {
        out.append(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(any_origin: bool, credentials: bool) -> Cors {
        Cors {
            origins: vec!["https://app.test".into()],
            any_origin,
            methods: CorsList::Listed(HeaderValue::from_static("GET, PUT")),
            headers: CorsList::Any,
            expose: Some(HeaderValue::from_static("x-request-id")),
            max_age: Some(HeaderValue::from_static("600")),
            credentials,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_its_allowances() {
        let req = headers(&[
            ("origin", "https://APP.test"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "content-type, x-api-key"),
        ]);
        assert!(is_preflight(&Method::OPTIONS, &req));
        assert!(!is_preflight(&Method::GET, &req));
        let resp = preflight(&cors(false, true), &req);
        assert_eq!(resp.status(), 204);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://APP.test");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type, x-api-key");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["vary"], "Origin");
        // Another origin: 204 with nothing allowed.
        let other = headers(&[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "PUT"),
        ]);
        let resp = preflight(&cors(false, true), &other);
        assert_eq!(resp.status(), 204);
        assert!(!resp.headers().contains_key("access-control-allow-origin"));
        assert!(!resp.headers().contains_key("access-control-allow-methods"));
        // Any origin: `*`, the same for every origin, so no Vary.
        let resp = preflight(&cors(true, false), &other);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert!(!resp.headers().contains_key("vary"));
        // And on responses to requests without an Origin as well, so that
        // an answer a cache stored for one serves a CORS request too.
        let mut out = HeaderMap::new();
        decorate(&cors(true, false), None, &mut out);
        assert_eq!(out["access-control-allow-origin"], "*");
        assert!(!out.contains_key("vary"));
    }

    #[test]
    fn responses_carry_the_configured_headers_in_place_of_the_backends() {
        let mut out = headers(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "DELETE"),
            ("vary", "accept-encoding"),
        ]);
        let origin = HeaderValue::from_static("https://app.test");
        decorate(&cors(false, false), Some(&origin), &mut out);
        assert_eq!(out["access-control-allow-origin"], "https://app.test");
        assert_eq!(out["access-control-expose-headers"], "x-request-id");
        assert!(!out.contains_key("access-control-allow-methods"));
        assert!(!out.contains_key("access-control-allow-credentials"));
        let vary: Vec<_> = out.get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "Origin"]);
        // Decorating twice (a PoP after an origin) changes nothing.
        let before = out.clone();
        decorate(&cors(false, false), Some(&origin), &mut out);
        assert_eq!(out, before);
        // No Origin, or one not allowed: no allowance, still Vary.
        for origin in [None, Some(HeaderValue::from_static("https://evil.test"))] {
            let mut out = headers(&[("access-control-allow-origin", "*")]);
            decorate(&cors(false, false), origin.as_ref(), &mut out);
            assert!(
                !out.contains_key("access-control-allow-origin"),
                "{origin:?}"
            );
            assert_eq!(out["vary"], "Origin");
        }
    }
}
