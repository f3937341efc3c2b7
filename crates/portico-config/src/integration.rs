//! Compiling integrations: URI templates, AWS-style parameter mapping expressions and
//! mock responses.

use std::ops::Range;

use crate::error::Diag;
use crate::file::{HttpFile, HttpProxyFile, IntegrationFile, MockFile, S, SpannedMap};
use crate::method::Method;
use crate::model::{
    HttpIntegration, Integration, MockIntegration, ParamSource, ParamTarget, ResponseSource,
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
    let method = match &f.method {
        None => Some(None),
        Some(m) => match m.get_ref().parse::<Method>() {
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
        },
    };
    let mut refs = Vec::new();
    let request = request_parameters(&f.request_parameters, params, &mut refs, diag);
    let response = response_parameters(&f.response_parameters, diag);
    let mapped: Vec<&str> = request
        .iter()
        .flatten()
        .filter_map(|(t, _)| match t {
            ParamTarget::Path(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let known = |n: &str| params.iter().any(|p| p == n) || mapped.contains(&n);
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

const TARGET_FORMS: &str = "integration.request.path.NAME, integration.request.querystring.NAME \
                            or integration.request.header.NAME";
const SOURCE_FORMS: &str = "method.request.path.NAME, method.request.querystring.NAME, \
                            method.request.header.NAME, stageVariables.NAME or 'static value'";

fn request_parameters(
    map: &SpannedMap,
    params: &[String],
    refs: &mut Vec<VarRef>,
    diag: &mut Diag<'_>,
) -> Option<Vec<(ParamTarget, ParamSource)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in map {
        let target = parse_target(key.get_ref());
        let source = parse_source(value.get_ref(), params);
        if let Err(p) = &target {
            diag.expect(
                key.span(),
                p.message.clone(),
                p.expected.clone().unwrap_or_default(),
            );
        }
        if let Err(p) = &source {
            diag.expect(
                value.span(),
                p.message.clone(),
                p.expected.clone().unwrap_or_default(),
            );
        }
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
            refs.push(VarRef {
                name: name.clone(),
                at: value.span(),
            });
        }
        out.push((target, source));
    }
    ok.then_some(out)
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

fn parse_target(key: &str) -> Result<ParamTarget, Problem> {
    let bad = || Problem::new(0, format!("invalid mapping target `{key}`")).expecting(TARGET_FORMS);
    let rest = key.strip_prefix("integration.request.").ok_or_else(bad)?;
    let (kind, name) = rest.split_once('.').ok_or_else(bad)?;
    match kind {
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
        if name.is_none() {
            diag.expect(
                key.span(),
                format!("invalid mapping target `{}`", key.get_ref()),
                TARGET,
            );
        }
        if source.is_none() {
            diag.expect(
                value.span(),
                format!("invalid mapping expression `{}`", value.get_ref()),
                SOURCE,
            );
        }
        match (name, source) {
            (Some(n), Some(s)) => out.push((n.to_ascii_lowercase(), s)),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn mock(f: &MockFile, diag: &mut Diag<'_>) -> Option<MockIntegration> {
    let mut ok = true;
    let status = f.status.as_ref().map_or(200, |s| *s.get_ref());
    if let Some(s) = f
        .status
        .as_ref()
        .filter(|s| !(100..=599).contains(s.get_ref()))
    {
        let message = format!("status {} is out of range", s.get_ref());
        diag.expect(s.span(), message, "100..=599");
        ok = false;
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in &f.headers {
        let lower = name.get_ref().to_ascii_lowercase();
        if !is_header_name(&lower) {
            diag.expect(
                name.span(),
                format!("invalid header name `{}`", name.get_ref()),
                "an HTTP token",
            );
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
    let body = f.body.clone().unwrap_or_default();
    ok.then_some(MockIntegration {
        status,
        headers,
        body,
    })
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
