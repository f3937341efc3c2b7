//! `http`: API Gateway's non-proxy HTTP integration. Only what is mapped
//! reaches the backend (path, query, headers from the method request, static
//! values, stage variables, `context.identity.apiKeyId`), and only mapped
//! response headers come back.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use portico_config::{ContextVariable, HttpIntegration, ParamSource, ParamTarget, ResponseSource};
use portico_gateway::headers::{EARLY_DATA, set_forwarded};
use portico_gateway::{Body, ErrorKind, GatewayError, RequestCtx, body};

use crate::client::BackendClient;
use crate::{backend_failed, misconfigured};

/// Response headers that describe the body and always pass.
const BODY_HEADERS: [HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
];

pub(crate) async fn forward(
    client: &BackendClient,
    ctx: &RequestCtx,
    mapping: &HttpIntegration,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = req.into_parts();
    let (mut backend, body) = build_request(ctx, mapping, &parts, body)?.into_parts();
    // Framed for the method the backend gets, not the client's: a POST's
    // body of unknown length (chunked, or HTTP/2 or /3 without a length)
    // mapped to a GET would otherwise go as none.
    let body = crate::framed(&mut backend, body).await?;
    // A HEAD to the backend answers a client's GET with no body: the length
    // it names is the body the client does not get.
    let bodiless = backend.method == Method::HEAD && parts.method != Method::HEAD;
    let backend_req = Request::from_parts(backend, body);
    let resp = client.send(backend_req).await.map_err(backend_failed)?;
    crate::check_transfer_coding(&resp)?;
    let (resp_parts, resp_body) = resp.into_parts();
    let mut out = Response::new(body::boxed(resp_body));
    *out.status_mut() = resp_parts.status;
    *out.headers_mut() = map_response_headers(&mapping.response_parameters, &resp_parts.headers);
    if bodiless {
        out.headers_mut().remove(header::CONTENT_LENGTH);
    }
    Ok(out)
}

fn build_request(
    ctx: &RequestCtx,
    mapping: &HttpIntegration,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Request<Body>, GatewayError> {
    let source = |src: &ParamSource| lookup(ctx, parts, src);
    let mut path_values: Vec<(&str, String)> = Vec::new();
    let mut query = String::new();
    let mut headers = HeaderMap::new();
    for (target, src) in &mapping.request_parameters {
        // A path parameter of the route goes on as received (still encoded,
        // `/` kept in a greedy one), as `http_proxy` inserts it.
        if let (ParamTarget::Path(name), ParamSource::Path(from)) = (target, src) {
            if let Some(raw) = ctx.path_param(from) {
                path_values.push((name, raw.to_owned()));
            }
            continue;
        }
        let Some(value) = source(src) else {
            // A header or query value the request lacks is left out; a path
            // segment cannot be (the backend would get another path).
            if let ParamTarget::Path(name) = target {
                return Err(GatewayError::client(ErrorKind::BadRequest)
                    .with_cause(format!("no value for the backend path's `{name}`")));
            }
            continue;
        };
        match target {
            ParamTarget::Path(name) => path_values.push((name, path_segment(&value)?)),
            ParamTarget::Query(name) => append_query(&mut query, name, &value),
            ParamTarget::Header(name) => insert_header(&mut headers, name, &value)?,
        }
    }
    let params = |name: &str| {
        path_values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .or_else(|| ctx.path_param(name))
    };
    let mut uri = mapping.uri.render(&params, &ctx.stage.variables);
    if !query.is_empty() {
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str(&query);
    }
    let uri = crate::backend_uri(uri, &mapping.uri, &ctx.stage.variables)?;
    let method = mapping.method.map_or_else(
        || parts.method.clone(),
        |m| Method::from_bytes(m.as_str().as_bytes()).unwrap_or(Method::GET),
    );
    set_forwarded(
        &mut headers,
        ctx.conn.client_addr,
        ctx.conn.scheme(),
        &ctx.host,
        ctx.addressed_port(),
    );
    // The body's own headers go with it, unless a mapping set one (only
    // `Content-Type` can be a target): the mapping wins.
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        if let (true, Some(v)) = (mapping.pass_request_body, parts.headers.get(&name))
            && !headers.contains_key(&name)
        {
            headers.insert(name, v.clone());
        }
    }
    if let Some(v) = parts.headers.get(&portico_gateway::headers::REQUEST_ID) {
        headers.insert(&portico_gateway::headers::REQUEST_ID, v.clone());
    }
    // A request served from TLS early data says so to the backend (RFC 8470
    // §5.1), and may not become one that changes state: early data can be
    // replayed.
    if let Some(v) = parts.headers.get(&EARLY_DATA) {
        if !method.is_safe() {
            return Err(GatewayError::client(ErrorKind::TooEarly)
                .with_cause(format!("early data mapped to {method}")));
        }
        headers.insert(&EARLY_DATA, v.clone());
    }
    let body = if mapping.pass_request_body {
        body
    } else {
        body::empty()
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Unreserved characters (RFC 3986 §2.3) stay as they are in a path segment.
const SEGMENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` (a header, query or static value) as one path segment: encoded,
/// and never empty, `.` or `..`, which would move the backend path
/// (`/users//profile` is another resource, or `/users/profile` to a server
/// that merges slashes).
fn path_segment(value: &[u8]) -> Result<String, GatewayError> {
    if matches!(value, b"" | b"." | b"..") {
        return Err(
            GatewayError::client(ErrorKind::BadRequest).with_cause(format!(
                "{:?} as a path segment",
                String::from_utf8_lossy(value)
            )),
        );
    }
    Ok(percent_encode(value, SEGMENT).to_string())
}

/// The value of a mapping source, as bytes (a value need not be UTF-8: a
/// Latin-1 form field `caf%E9` reaches the backend as sent); `None` when
/// the client did not send it.
fn lookup(ctx: &RequestCtx, parts: &http::request::Parts, src: &ParamSource) -> Option<Vec<u8>> {
    match src {
        ParamSource::Path(name) => ctx
            .path_param(name)
            .map(|v| percent_decode_str(v).collect()),
        ParamSource::Query(name) => query_param(parts.uri.query().unwrap_or(""), name),
        ParamSource::Header(name) => parts
            .headers
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec()),
        ParamSource::Static(value) => Some(value.as_bytes().to_vec()),
        ParamSource::StageVariable(name) => {
            ctx.stage.variables.get(name).map(|v| v.as_bytes().to_vec())
        }
        ParamSource::Context(ContextVariable::ApiKeyId) => ctx
            .principal
            .as_ref()
            .and_then(|p| p.api_key_id())
            .map(|id| id.as_bytes().to_vec()),
    }
}

/// The first value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(k).decode_utf8_lossy();
        (key == name).then(|| percent_decode_str(&v.replace('+', " ")).collect())
    })
}

fn append_query(query: &mut String, name: &str, value: &[u8]) {
    if !query.is_empty() {
        query.push('&');
    }
    query.extend(percent_encode(name.as_bytes(), NON_ALPHANUMERIC));
    query.push('=');
    query.extend(percent_encode(value, NON_ALPHANUMERIC));
}

fn insert_header(headers: &mut HeaderMap, name: &str, value: &[u8]) -> Result<(), GatewayError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| misconfigured(e.to_string()))?;
    // A client value that is not a legal header value is dropped, not fatal.
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
    Ok(())
}

/// The client's response headers: the body's own, then what the mappings
/// set. A header mapped from the backend's keeps all its values (each
/// `Set-Cookie`); a `Content-Length` beside a `Transfer-Encoding` is not
/// the body's length and stays behind.
fn map_response_headers(params: &[(String, ResponseSource)], backend: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let chunked = backend.contains_key(header::TRANSFER_ENCODING);
    for name in &BODY_HEADERS {
        if chunked && *name == header::CONTENT_LENGTH {
            continue;
        }
        if let Some(v) = backend.get(name) {
            out.insert(name.clone(), v.clone());
        }
    }
    for (name, src) in params {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        match src {
            ResponseSource::Header(from) => {
                let mut values = backend.get_all(from.as_str()).iter();
                if let Some(first) = values.next() {
                    out.insert(name.clone(), first.clone());
                    for v in values {
                        out.append(name.clone(), v.clone());
                    }
                }
            }
            ResponseSource::Static(value) => {
                if let Ok(v) = HeaderValue::from_str(value) {
                    out.insert(name, v);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_response_headers_keep_every_value_and_no_stale_length() {
        let mut backend = HeaderMap::new();
        backend.append(header::SET_COOKIE, HeaderValue::from_static("session=1"));
        backend.append(header::SET_COOKIE, HeaderValue::from_static("csrf=2"));
        backend.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        backend.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        backend.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let params = [
            (
                "set-cookie".to_owned(),
                ResponseSource::Header("set-cookie".into()),
            ),
            (
                "content-type".to_owned(),
                ResponseSource::Header("x-missing".into()),
            ),
        ];
        let out = map_response_headers(&params, &backend);
        let cookies: Vec<_> = out.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["session=1", "csrf=2"]);
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            out[header::CONTENT_TYPE],
            "text/plain",
            "a missing source changes nothing"
        );
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("a=1&search=hello%20world", "search").as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(query_param("a=1&b=x+y", "b").as_deref(), Some(&b"x y"[..]));
        assert_eq!(
            query_param("q=caf%E9", "q").as_deref(),
            Some(&b"caf\xe9"[..])
        );
        assert_eq!(query_param("a=1", "b"), None);
    }

    #[test]
    fn query_values_are_encoded() {
        let mut q = String::new();
        append_query(&mut q, "q", b"a b&c");
        append_query(&mut q, "n", b"1");
        assert_eq!(q, "q=a%20b%26c&n=1");
    }
}
