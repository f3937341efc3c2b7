//! Compiling integrations: URI templates, AWS-style parameter mapping expressions and
//! mock responses.

use std::ops::Range;

use crate::error::Diag;
use crate::file::{HttpFile, HttpProxyFile, IntegrationFile, MockFile, S, SpannedMap};
use crate::method::Method;
use crate::model::{
    ContextVariable, HttpIntegration, Integration, MockIntegration, ParamSource, ParamTarget,
    ResponseSource,
};
use crate::template::{Problem, TemplatePart, UriTemplate, is_param_name, is_stage_variable_name};

/// A stage variable used by a route, located at the reference, so that a stage
/// lacking it can be reported there.
#[derive(Debug, Clone)]
pub(crate) struct VarRef {
    pub name: String,
    pub at: Range<usize>,
}

/// Compiles one integration against the route's path parameters; `None` when it has
/// errors (all reported).
pub(crate) fn compile_integration(
    file: &IntegrationFile,
    params: &[String],
    diag: &mut Diag<'_>,
) -> Option<(Integration, Vec<VarRef>)> {
    match file {
        IntegrationFile::HttpProxy(f) => http_proxy(f, params, diag),
        IntegrationFile::Http(f) => http(f, params, diag),
        IntegrationFile::Mock(f) => mock(f, diag).map(|m| (Integration::Mock(m), Vec::new())),
    }
}

fn http_proxy(
    f: &HttpProxyFile,
    params: &[String],
    diag: &mut Diag<'_>,
) -> Option<(Integration, Vec<VarRef>)> {
    let (uri, refs) = uri_template(&f.uri, &|n| params.iter().any(|p| p == n), params, diag)?;
    Some((Integration::HttpProxy { uri }, refs))
}

/// Parses a URI template, checking each `{param}` with `known` and collecting stage
/// variable references.
fn uri_template(
    uri: &S<String>,
    known: &dyn Fn(&str) -> bool,
    params: &[String],
    diag: &mut Diag<'_>,
) -> Option<(UriTemplate, Vec<VarRef>)> {
    let text = uri.get_ref();
    let span = uri.span();
    let template = match UriTemplate::parse(text) {
        Ok(t) => t,
        Err(p) => {
            diag.problem(&span, text, p);
            return None;
        }
    };
    let mut refs = Vec::new();
    let mut ok = true;
    for (offset, part) in UriTemplate::reference_offsets(text) {
        match part {
            TemplatePart::PathParam(name) if !known(&name) => {
                let p = Problem::new(
                    offset,
                    format!("uri references unknown path parameter `{name}`"),
                )
                .expecting(param_list(params));
                diag.problem(&span, text, p);
                ok = false;
            }
            TemplatePart::StageVariable(name) => {
                let at = diag.inside(&span, text, offset);
                refs.push(VarRef { name, at });
            }
            _ => {}
        }
    }
    ok.then_some((template, refs))
}

fn param_list(params: &[String]) -> String {
    if params.is_empty() {
        return "no parameter: the route path has none".to_owned();
    }
    let names: Vec<String> = params.iter().map(|p| format!("`{p}`")).collect();
    format!("a parameter of the route path: {}", names.join(", "))
}

fn http(
    f: &HttpFile,
    params: &[String],
    diag: &mut Diag<'_>,
) -> Option<(Integration, Vec<VarRef>)> {
    let method = integration_method(f.method.as_ref(), diag);
    let mut refs = Vec::new();
    let request = request_parameters(&f.request_parameters, params, &mut refs, diag);
    let response = response_parameters(&f.response_parameters, diag);
    // Targets are read from the keys directly so that one bad mapping does not turn
    // every `{name}` of the uri into a second error.
    let mapped: Vec<String> = f
        .request_parameters
        .keys()
        .filter_map(|k| match parse_target(k.get_ref()) {
            Ok(ParamTarget::Path(n)) => Some(n),
            _ => None,
        })
        .collect();
    let known = |n: &str| params.iter().chain(&mapped).any(|p| p == n);
    let uri = uri_template(&f.uri, &known, params, diag);
    let (method, request, response, (uri, uri_refs)) = (method?, request?, response?, uri?);
    refs.extend(uri_refs);
    let integration = HttpIntegration {
        method,
        uri,
        request_parameters: request,
        response_parameters: response,
        pass_request_body: f.pass_request_body.unwrap_or(true),
    };
    Some((Integration::Http(integration), refs))
}

/// `Some(None)`: no method given (the client's is used); `None`: invalid.
fn integration_method(m: Option<&S<String>>, diag: &mut Diag<'_>) -> Option<Option<Method>> {
    let Some(m) = m else { return Some(None) };
    match m.get_ref().parse::<Method>() {
        Ok(Method::Any) | Err(_) => {
            let message = format!("invalid integration method `{}`", m.get_ref());
            diag.expect(
                m.span(),
                message,
                "GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS",
            );
            None
        }
        Ok(method) => Some(Some(method)),
    }
}

const TARGET_FORMS: &str = "integration.request.path.NAME, integration.request.querystring.NAME \
                            or integration.request.header.NAME";
const SOURCE_FORMS: &str = "method.request.path.NAME, method.request.querystring.NAME, \
                            method.request.header.NAME, stageVariables.NAME, \
                            context.identity.apiKeyId or 'static value'";

fn request_parameters(
    map: &SpannedMap,
    params: &[String],
    refs: &mut Vec<VarRef>,
    diag: &mut Diag<'_>,
) -> Option<Vec<(ParamTarget, ParamSource)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in map {
        let target = parse_target(key.get_ref()).map_err(|p| report(key, p, diag));
        let source = parse_source(value.get_ref(), params).map_err(|p| report(value, p, diag));
        let (Ok(target), Ok(source)) = (target, source) else {
            ok = false;
            continue;
        };
        if !check_static_for_header(&target, &source, value, diag)
            || duplicate(&out, &target, key, diag)
        {
            ok = false;
            continue;
        }
        if let ParamSource::StageVariable(name) = &source {
            let at = value.span();
            refs.push(VarRef {
                name: name.clone(),
                at,
            });
        }
        out.push((target, source));
    }
    ok.then_some(out)
}

/// Reports a problem with a whole key or value.
fn report(at: &S<String>, p: Problem, diag: &mut Diag<'_>) {
    diag.expect(at.span(), p.message, p.expected.unwrap_or_default());
}

fn check_static_for_header(
    target: &ParamTarget,
    source: &ParamSource,
    value: &S<String>,
    diag: &mut Diag<'_>,
) -> bool {
    match (target, source) {
        (ParamTarget::Header(_), ParamSource::Static(v)) if !is_header_value(v) => {
            diag.expect(
                value.span(),
                "invalid header value",
                "no control characters",
            );
            false
        }
        _ => true,
    }
}

fn duplicate(
    out: &[(ParamTarget, ParamSource)],
    target: &ParamTarget,
    key: &S<String>,
    diag: &mut Diag<'_>,
) -> bool {
    let dup = out.iter().any(|(t, _)| t == target);
    if dup {
        diag.at(
            key.span(),
            format!(
                "`{}` is mapped twice (header names ignore case)",
                key.get_ref()
            ),
        );
    }
    dup
}

/// Headers that frame a message or concern one connection: the gateway
/// writes them from what it sends, so no mock or mapping may set them (a
/// `Content-Length` that is not the body's would desynchronise the
/// connection it goes out on).
const FRAMING: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers the gateway alone sets for a backend, besides [`FRAMING`].
const REQUEST_RESERVED: [&str; 2] = ["expect", "host"];

/// Whether a mock or a mapping may set header `name` (lower case).
fn settable(name: &str, request: bool) -> bool {
    !(FRAMING.contains(&name) || (request && REQUEST_RESERVED.contains(&name)))
}

fn reserved(name: &str) -> String {
    format!("header `{name}` is the gateway's to set")
}

fn parse_target(key: &str) -> Result<ParamTarget, Problem> {
    let bad = || Problem::new(0, format!("invalid mapping target `{key}`")).expecting(TARGET_FORMS);
    let rest = key.strip_prefix("integration.request.").ok_or_else(bad)?;
    let (kind, name) = rest.split_once('.').ok_or_else(bad)?;
    match kind {
        "header" if is_header_name(name) && !settable(&name.to_ascii_lowercase(), true) => {
            Err(Problem::new(0, reserved(&name.to_ascii_lowercase())).expecting("another header"))
        }
        "path" if is_param_name(name) => Ok(ParamTarget::Path(name.to_owned())),
        "querystring" if is_query_name(name) => Ok(ParamTarget::Query(name.to_owned())),
        "header" if is_header_name(name) => Ok(ParamTarget::Header(name.to_ascii_lowercase())),
        _ => Err(bad()),
    }
}

fn parse_source(value: &str, params: &[String]) -> Result<ParamSource, Problem> {
    let bad =
        || Problem::new(0, format!("invalid mapping expression `{value}`")).expecting(SOURCE_FORMS);
    if let Some(s) = static_value(value) {
        return Ok(ParamSource::Static(s.to_owned()));
    }
    if let Some(name) = value.strip_prefix("stageVariables.") {
        return if is_stage_variable_name(name) {
            Ok(ParamSource::StageVariable(name.to_owned()))
        } else {
            Err(bad())
        };
    }
    if value.starts_with("context.") {
        return [ContextVariable::ApiKeyId]
            .into_iter()
            .find(|v| v.as_str() == value)
            .map(ParamSource::Context)
            .ok_or_else(bad);
    }
    let rest = value.strip_prefix("method.request.").ok_or_else(bad)?;
    let (kind, name) = rest.split_once('.').ok_or_else(bad)?;
    match kind {
        "path" if params.iter().any(|p| p == name) => Ok(ParamSource::Path(name.to_owned())),
        "path" => Err(Problem::new(0, format!("unknown path parameter `{name}`"))
            .expecting(param_list(params))),
        "querystring" if is_query_name(name) => Ok(ParamSource::Query(name.to_owned())),
        "header" if is_header_name(name) => Ok(ParamSource::Header(name.to_ascii_lowercase())),
        _ => Err(bad()),
    }
}

/// The content of a `'quoted'` static value.
fn static_value(value: &str) -> Option<&str> {
    value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
}

fn response_parameters(
    map: &SpannedMap,
    diag: &mut Diag<'_>,
) -> Option<Vec<(String, ResponseSource)>> {
    const TARGET: &str = "method.response.header.NAME";
    const SOURCE: &str = "integration.response.header.NAME or 'static value'";
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut ok = true;
    for (key, value) in map {
        let name = key
            .get_ref()
            .strip_prefix("method.response.header.")
            .filter(|n| is_header_name(n));
        let source = if let Some(s) = static_value(value.get_ref()).filter(|s| is_header_value(s)) {
            Some(ResponseSource::Static(s.to_owned()))
        } else {
            let h = value.get_ref().strip_prefix("integration.response.header.");
            h.filter(|n| is_header_name(n))
                .map(|n| ResponseSource::Header(n.to_ascii_lowercase()))
        };
        let name = match name.map(str::to_ascii_lowercase) {
            Some(n) if !settable(&n, false) => {
                diag.expect(key.span(), reserved(&n), "another header");
                ok = false;
                None
            }
            Some(n) => Some(n),
            None => {
                diag.expect(
                    key.span(),
                    format!("invalid mapping target `{}`", key.get_ref()),
                    TARGET,
                );
                None
            }
        };
        if source.is_none() {
            diag.expect(
                value.span(),
                format!("invalid mapping expression `{}`", value.get_ref()),
                SOURCE,
            );
        }
        let twice = name.as_ref().is_some_and(|n| seen.contains(n));
        if twice {
            let message = format!(
                "`{}` is mapped twice (header names ignore case)",
                key.get_ref()
            );
            diag.at(key.span(), message);
        }
        seen.extend(name.clone());
        match (name, source) {
            (Some(n), Some(s)) if !twice => out.push((n, s)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn mock(f: &MockFile, diag: &mut Diag<'_>) -> Option<MockIntegration> {
    let status = f.status.as_ref().map_or(200, |s| *s.get_ref());
    // No 1xx: an interim answer would go out as the final one.
    let bad_status = f
        .status
        .as_ref()
        .filter(|s| !(200..=599).contains(s.get_ref()));
    if let Some(s) = bad_status {
        let message = format!("status {} is out of range", s.get_ref());
        diag.expect(s.span(), message, "200..=599");
    }
    let headers = mock_headers(&f.headers, diag);
    let body = f.body.clone().unwrap_or_default();
    let headers = headers.filter(|_| bad_status.is_none())?;
    Some(MockIntegration {
        status,
        headers,
        body,
    })
}

/// Lower-cased, checked header names and values; `None` on any error.
fn mock_headers(map: &SpannedMap, diag: &mut Diag<'_>) -> Option<Vec<(String, String)>> {
    let mut ok = true;
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in map {
        let lower = name.get_ref().to_ascii_lowercase();
        if !is_header_name(&lower) {
            let message = format!("invalid header name `{}`", name.get_ref());
            diag.expect(name.span(), message, "an HTTP token");
            ok = false;
        } else if !settable(&lower, false) {
            diag.expect(name.span(), reserved(&lower), "another header");
            ok = false;
        } else if headers.iter().any(|(n, _)| *n == lower) {
            diag.at(
                name.span(),
                format!("header `{lower}` is given twice (names ignore case)"),
            );
            ok = false;
        }
        if !is_header_value(value.get_ref()) {
            diag.expect(
                value.span(),
                "invalid header value",
                "no control characters",
            );
            ok = false;
        }
        headers.push((lower, value.get_ref().clone()));
    }
    ok.then_some(headers)
}

/// RFC 9110 `token`.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible characters, space and tab; no other control characters.
pub(crate) fn is_header_value(value: &str) -> bool {
    value.chars().all(|c| c == '\t' || !c.is_control())
}

fn is_query_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(|c: char| c.is_whitespace() || c.is_control() || "&=#".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::*;

    #[test]
    fn http_integration_errors() {
        let text = api(
            "[[apis.routes]]\npath = \"/p/{petId}\"\n[apis.routes.integration]\ntype = \"http\"\n\
             method = \"ANY\"\nuri = \"http://h/{id}/{nope}\"\n\
             [apis.routes.integration.request_parameters]\n\
             \"integration.request.path.id\" = \"method.request.path.petId\"\n\
             \"integration.request.body.x\" = \"method.request.path.petId\"\n\
             \"integration.request.header.x\" = \"method.request.path.zz\"\n\
             \"integration.request.header.y\" = \"'bad\\u0001'\"\n\
             \"integration.request.header.A\" = \"'1'\"\n\
             \"integration.request.header.a\" = \"stageVariables.v\"\n\
             [apis.routes.integration.response_parameters]\n\
             \"method.response.x\" = \"integration.response.header.a\"\n\
             \"method.response.header.b\" = \"integration.request.header.a\"\n\
             \"method.response.header.X-A\" = \"'1'\"\n\
             \"method.response.header.x-a\" = \"'2'\"\n",
        );
        assert_eq!(
            errors(&text),
            [
                "11:10: invalid integration method `ANY`",
                "12:22: uri references unknown path parameter `nope`",
                "15:1: invalid mapping target `integration.request.body.x`",
                "16:34: unknown path parameter `zz`",
                "17:34: invalid header value",
                "19:1: `integration.request.header.a` is mapped twice (header names ignore case)",
                "21:1: invalid mapping target `method.response.x`",
                "22:30: invalid mapping expression `integration.request.header.a`",
                "24:1: `method.response.header.x-a` is mapped twice (header names ignore case)",
            ]
        );
    }

    #[test]
    fn mock_integration_errors() {
        let text = api(
            "[[apis.routes]]\npath = \"/\"\n[apis.routes.integration]\ntype = \"mock\"\nstatus = 700\n\
             headers = { \"bad name\" = \"v\", \"X-A\" = \"1\", \"x-a\" = \"2\", ok = \"a\\nb\" }\n",
        );
        assert_eq!(
            errors(&text),
            [
                "11:10: status 700 is out of range",
                "12:13: invalid header name `bad name`",
                "12:44: header `x-a` is given twice (names ignore case)",
                "12:62: invalid header value",
            ]
        );
    }

    /// Framing and connection headers are the gateway's: a mock's or a
    /// mapping's `Content-Length` would not be its body's. No mock is 1xx.
    #[test]
    fn mocks_and_mappings_may_not_set_the_gateways_headers() {
        let text = api(
            "[[apis.routes]]\npath = \"/\"\n[apis.routes.integration]\ntype = \"mock\"\nstatus = 101\n\
             headers = { \"Content-Length\" = \"100\", upgrade = \"x\" }\n",
        );
        assert_eq!(
            errors(&text),
            [
                "11:10: status 101 is out of range",
                "12:13: header `content-length` is the gateway's to set",
                "12:39: header `upgrade` is the gateway's to set",
            ]
        );
        let text = api(
            "[[apis.routes]]\npath = \"/\"\n[apis.routes.integration]\ntype = \"http\"\n\
             uri = \"http://h/\"\n[apis.routes.integration.request_parameters]\n\
             \"integration.request.header.content-length\" = \"method.request.header.x\"\n\
             \"integration.request.header.Host\" = \"'evil'\"\n\
             \"integration.request.header.x-ok\" = \"'fine'\"\n\
             [apis.routes.integration.response_parameters]\n\
             \"method.response.header.transfer-encoding\" = \"'chunked'\"\n\
             \"method.response.header.host\" = \"'a response may say it'\"\n",
        );
        assert_eq!(
            errors(&text),
            [
                "13:1: header `content-length` is the gateway's to set",
                "14:1: header `host` is the gateway's to set",
                "17:1: header `transfer-encoding` is the gateway's to set",
            ]
        );
    }

    #[test]
    fn http_proxy_template_errors() {
        let route = |uri: &str| {
            format!(
                "[[apis.routes]]\npath = \"/{{id}}\"\n[apis.routes.integration]\n\
                 type = \"http_proxy\"\nuri = \"{uri}\"\n"
            )
        };
        let text = api(&[
            route("http://h/{idd}"),
            route("http://${env.x}/"),
            route("h/x"),
        ]
        .concat());
        assert_eq!(
            errors(&text),
            [
                "11:17: uri references unknown path parameter `idd`",
                "16:15: unknown variable `${env.x}`",
                "21:8: integration uri must be an absolute URL",
            ]
        );
    }

    #[test]
    fn mapping_expressions() {
        let params = vec!["petId".to_owned()];
        assert_eq!(
            parse_target("integration.request.header.X-K"),
            Ok(ParamTarget::Header("x-k".into()))
        );
        assert_eq!(
            parse_target("integration.request.querystring.q"),
            Ok(ParamTarget::Query("q".into()))
        );
        assert!(parse_target("integration.request.body.x").is_err());
        assert!(parse_target("method.request.path.x").is_err());
        assert_eq!(
            parse_source("method.request.path.petId", &params),
            Ok(ParamSource::Path("petId".into()))
        );
        assert_eq!(
            parse_source("'v'", &params),
            Ok(ParamSource::Static("v".into()))
        );
        assert_eq!(
            parse_source("stageVariables.b", &params),
            Ok(ParamSource::StageVariable("b".into()))
        );
        assert_eq!(
            parse_source("method.request.path.nope", &params)
                .unwrap_err()
                .message,
            "unknown path parameter `nope`"
        );
        assert!(parse_source("method.request.body", &params).is_err());
        assert_eq!(
            parse_source("context.identity.apiKeyId", &params),
            Ok(ParamSource::Context(ContextVariable::ApiKeyId))
        );
        let unknown = parse_source("context.identity.apiKey", &params).unwrap_err();
        assert!(
            unknown
                .expected
                .as_deref()
                .is_some_and(|e| e.contains("context.identity.apiKeyId")),
            "{unknown:?}"
        );
    }

    #[test]
    fn header_rules() {
        assert!(is_header_name("content-type"));
        assert!(!is_header_name("bad header"));
        assert!(!is_header_name(""));
        assert!(is_header_value("text/plain; charset=utf-8\tx"));
        assert!(!is_header_value("a\nb"));
    }
}
