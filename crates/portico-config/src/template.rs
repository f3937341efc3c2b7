//! Integration URI templates: `http://${stageVariables.host}/items/{id}`.

use std::collections::BTreeMap;

/// A problem found while parsing a template or expression, at a byte offset inside
/// the string value (the caller maps it to a line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub offset: usize,
    pub message: String,
    pub expected: Option<String>,
}

impl Problem {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> Self {
        Problem {
            offset,
            message: message.into(),
            expected: None,
        }
    }

    pub(crate) fn expecting(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }
}

/// A parsed integration URI. Rendering never fails: a missing parameter or variable
/// renders as the empty string (validation has already proved every reference can be
/// resolved for the stages that serve the route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `{name}` or `{name+}`; the name is stored without the `+`.
    PathParam(String),
    /// `${stageVariables.name}`; the name is stored without the prefix.
    StageVariable(String),
}

impl UriTemplate {
    /// Renders the URI. `params` yields path parameter values exactly as received
    /// (still percent-encoded); in the path they are inserted verbatim, in the
    /// query with `&`, `=` and `+` escaped, so that a value stays one value
    /// (`/items/1&admin=true` cannot add a parameter to `?id={id}`).
    pub fn render<'v>(
        &self,
        params: &impl Fn(&str) -> Option<&'v str>,
        vars: &BTreeMap<String, String>,
    ) -> String {
        let mut out = String::with_capacity(self.len_hint());
        let mut in_query = false;
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => {
                    in_query |= s.contains('?');
                    out.push_str(s)
                }
                TemplatePart::PathParam(name) => {
                    let value = params(name).unwrap_or("");
                    if in_query {
                        push_query_value(&mut out, value);
                    } else {
                        out.push_str(value);
                    }
                }
                TemplatePart::StageVariable(name) => {
                    let value = vars.get(name).map_or("", String::as_str);
                    in_query |= value.contains('?');
                    out.push_str(value)
                }
            }
        }
        out
    }

    /// Names of the path parameters the template uses.
    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::PathParam(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Names of the stage variables the template uses.
    pub fn stage_variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TemplatePart::StageVariable(n) => Some(n.as_str()),
            _ => None,
        })
    }

    fn len_hint(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                TemplatePart::Literal(s) => s.len(),
                _ => 16,
            })
            .sum()
    }

    /// Parses an absolute `http://` or `https://` template.
    pub(crate) fn parse(s: &str) -> Result<UriTemplate, Problem> {
        let parts = parse_parts(s)?;
        let scheme_ok = matches!(parts.first(), Some(TemplatePart::Literal(l))
            if starts_with_ignore_case(l, "http://") || starts_with_ignore_case(l, "https://"));
        if !scheme_ok {
            return Err(Problem::new(0, "integration uri must be an absolute URL")
                .expecting("http://... or https://..."));
        }
        if let Some(offset) = userinfo(s) {
            return Err(Problem::new(
                offset,
                "integration uri may not carry a user name or password",
            )
            .expecting("http://HOST/... (credentials belong in a header)"));
        }
        if let Some(offset) = empty_host(s) {
            return Err(Problem::new(offset, "integration uri has no host")
                .expecting("http://HOST/... or https://HOST/..."));
        }
        if let Some(offset) = param_in_authority(s) {
            return Err(Problem::new(
                offset,
                "path parameters may only be used in the uri's path and query, not in its host",
            )
            .expecting("a fixed host or ${stageVariables.NAME}"));
        }
        Ok(UriTemplate { parts })
    }

    /// Positions (byte offsets) of each reference, for locating validation errors.
    pub(crate) fn reference_offsets(s: &str) -> Vec<(usize, TemplatePart)> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(rel) = s[i..].find('{') {
            let at = i + rel;
            let start = if at > 0 && s.as_bytes()[at - 1] == b'$' {
                at - 1
            } else {
                at
            };
            let end = s[at..].find('}').map_or(s.len(), |e| at + e + 1);
            if let Some(part) = parse_parts(&s[start..end]).ok().and_then(|mut p| p.pop()) {
                out.push((start, part));
            }
            i = end.max(at + 1);
        }
        out
    }
}

/// `value` (a raw path segment) as one query value: the characters that
/// would split or change it there are percent-encoded.
fn push_query_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("%26"),
            '=' => out.push_str("%3D"),
            '+' => out.push_str("%2B"),
            c => out.push(c),
        }
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Where the authority of `s` (an absolute URL template) starts and ends.
fn authority(s: &str) -> Option<(usize, usize)> {
    let start = s.find("://")? + 3;
    let end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    Some((start, end))
}

/// Where `s` (an absolute URL template) carries userinfo (`user:pass@`):
/// the backend's Host and HTTP/2 `:authority` are taken from the URI's
/// authority, so the credentials would reach the backend's logs in clear,
/// and RFC 9113 §8.3.1 forbids userinfo there. (A stage variable cannot
/// add one: its values hold no `@`.)
fn userinfo(s: &str) -> Option<usize> {
    let (start, end) = authority(s)?;
    s[start..end].contains('@').then_some(start)
}

/// Where the host of `s` (an absolute URL template) should be and is not.
fn empty_host(s: &str) -> Option<usize> {
    let (start, end) = authority(s)?;
    let host = &s[start..end];
    (host.is_empty() || host.starts_with(':')).then_some(start)
}

/// Where a `{param}` appears before the path of `s` (an absolute URL
/// template): a client must not choose the backend's host or port.
fn param_in_authority(s: &str) -> Option<usize> {
    let (start, end) = authority(s)?;
    UriTemplate::reference_offsets(s)
        .into_iter()
        .find(|(at, part)| (start..end).contains(at) && matches!(part, TemplatePart::PathParam(_)))
        .map(|(at, _)| at)
}

/// A character a URI may hold as it is (RFC 3986 unreserved and reserved
/// characters, and `%` of an escape), but not `#`: a backend is sent no
/// fragment.
fn is_uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?[]@!$&'()*+,;=%".contains(c)
}

fn parse_parts(s: &str) -> Result<Vec<TemplatePart>, Problem> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let reference = rest.starts_with("${") || rest.starts_with('{');
        if reference {
            let (part, len) = parse_reference(rest).map_err(|p| Problem {
                offset: p.offset + i,
                ..p
            })?;
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            i += len;
            continue;
        }
        let c = rest.chars().next().unwrap_or('\0');
        if c == '}' {
            return Err(Problem::new(i, "unmatched `}` in template"));
        }
        if c.is_whitespace() || c.is_control() {
            return Err(Problem::new(i, "whitespace or control character in uri"));
        }
        if !is_uri_char(c) {
            return Err(Problem::new(i, format!("`{c}` cannot appear in a uri"))
                .expecting("RFC 3986 characters; percent-encode others (%3C for <)"));
        }
        literal.push(c);
        i += c.len_utf8();
    }
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(parts)
}

/// Parses `${stageVariables.x}` or `{name}` / `{name+}` at the start of `s`,
/// returning the part and its length in bytes.
fn parse_reference(s: &str) -> Result<(TemplatePart, usize), Problem> {
    let Some(close) = s.find('}') else {
        return Err(Problem::new(0, "unclosed `{` in template").expecting("`}`"));
    };
    if let Some(inner) = s[..close].strip_prefix("${") {
        let Some(name) = inner.strip_prefix("stageVariables.") else {
            return Err(Problem::new(0, format!("unknown variable `${{{inner}}}`"))
                .expecting("${stageVariables.NAME}"));
        };
        if !is_stage_variable_name(name) {
            return Err(
                Problem::new(0, format!("invalid stage variable name `{name}`"))
                    .expecting("a name of letters, digits and `_`"),
            );
        }
        return Ok((TemplatePart::StageVariable(name.to_owned()), close + 1));
    }
    let inner = &s[1..close];
    let name = inner.strip_suffix('+').unwrap_or(inner);
    if !is_param_name(name) {
        return Err(Problem::new(0, format!("invalid parameter `{{{inner}}}`"))
            .expecting("{name} with letters, digits, `_`, `-` or `.`"));
    }
    Ok((TemplatePart::PathParam(name.to_owned()), close + 1))
}

/// AWS's rule for stage variable names.
pub(crate) fn is_stage_variable_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// AWS's rule for stage variable values, less `#`: a value is rendered into a
/// backend URI, and the URI would end at it (a backend is sent no fragment).
pub(crate) fn is_stage_variable_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?&=,".contains(&b))
}

/// Path parameter names: letters, digits, `_`, `-`, `.`.
pub(crate) fn is_param_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_params_and_stage_variables() {
        let t =
            UriTemplate::parse("http://${stageVariables.backend}/items/{id}/x/{proxy+}").unwrap();
        assert_eq!(t.path_params().collect::<Vec<_>>(), ["id", "proxy"]);
        assert_eq!(t.stage_variables().collect::<Vec<_>>(), ["backend"]);
        let params = |n: &str| match n {
            "id" => Some("a%2Fb"),
            "proxy" => Some("deep/path"),
            _ => None,
        };
        let out = t.render(&params, &vars(&[("backend", "127.0.0.1:9000")]));
        assert_eq!(out, "http://127.0.0.1:9000/items/a%2Fb/x/deep/path");
    }

    #[test]
    fn a_value_in_the_query_stays_one_value() {
        let t = UriTemplate::parse("http://h/items/{id}?id={id}&x=1").unwrap();
        let out = t.render(&|_| Some("1&admin=true+x"), &BTreeMap::new());
        assert_eq!(
            out,
            "http://h/items/1&admin=true+x?id=1%26admin%3Dtrue%2Bx&x=1"
        );
        // A stage variable that starts the query counts as well.
        let t = UriTemplate::parse("http://h/${stageVariables.p}{id}").unwrap();
        let out = t.render(&|_| Some("a=b"), &vars(&[("p", "p?q=")]));
        assert_eq!(out, "http://h/p?q=a%3Db");
    }

    #[test]
    fn path_parameters_may_not_choose_the_host() {
        for bad in [
            "http://{host}/x",
            "https://api.{tenant}.internal/x",
            "http://h:{port}/x",
            "http://${stageVariables.b}{id}",
        ] {
            let err = UriTemplate::parse(bad).unwrap_err();
            assert_eq!(
                err.message,
                "path parameters may only be used in the uri's path and query, not in its host",
                "{bad}"
            );
            assert_eq!(&bad[err.offset..err.offset + 1], "{", "{bad}");
        }
        assert!(UriTemplate::parse("http://${stageVariables.b}/{id}?q={id}").is_ok());
    }

    /// A uri no request could be sent to is a config error, not a 500 on
    /// every request.
    #[test]
    fn uris_that_cannot_be_sent_are_refused() {
        for (bad, message, at) in [
            ("http:///items/{id}", "integration uri has no host", 7),
            ("https://:8443/x", "integration uri has no host", 8),
            ("http://h/search?q=<x>", "`<` cannot appear in a uri", 18),
            ("http://h/a\\b", "`\\` cannot appear in a uri", 10),
            ("http://h/x#top", "`#` cannot appear in a uri", 10),
            ("http://h/caf\u{e9}", "`\u{e9}` cannot appear in a uri", 12),
            // Credentials would travel in Host/:authority to the backend's logs.
            (
                "https://user:secret@h/x",
                "integration uri may not carry a user name or password",
                8,
            ),
            (
                "http://user@${stageVariables.host}/x",
                "integration uri may not carry a user name or password",
                7,
            ),
            (
                "http://@h/x",
                "integration uri may not carry a user name or password",
                7,
            ),
        ] {
            let err = UriTemplate::parse(bad).unwrap_err();
            assert_eq!((err.message.as_str(), err.offset), (message, at), "{bad}");
        }
        for good in [
            "http://h/a%20b/{id}?x=1&y=[2]",
            "http://h:8080/x",
            "https://${stageVariables.host}/x",
            // An `@` in the path or query is not userinfo.
            "http://h/users/a@b?to=c@d",
        ] {
            assert!(UriTemplate::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn missing_values_render_empty() {
        let t = UriTemplate::parse("https://h/{id}?v=${stageVariables.v}").unwrap();
        assert_eq!(t.render(&|_| None, &BTreeMap::new()), "https://h/?v=");
    }

    #[test]
    fn rejects_bad_templates_with_offsets() {
        let err = |s: &str| UriTemplate::parse(s).unwrap_err();
        assert_eq!(err("http://h/{id").offset, 9);
        assert_eq!(
            err("http://h/${env.x}").message,
            "unknown variable `${env.x}`"
        );
        assert_eq!(err("http://h/${env.x}").offset, 9);
        assert_eq!(err("http://h/}").offset, 9);
        assert_eq!(err("http://h/{a b}").offset, 9);
        assert_eq!(err("ftp://h/").offset, 0);
        assert_eq!(err("/relative").offset, 0);
    }

    #[test]
    fn reference_offsets_locate_each_reference() {
        let refs = UriTemplate::reference_offsets("http://${stageVariables.b}/x/{id}");
        assert_eq!(
            refs,
            vec![
                (7, TemplatePart::StageVariable("b".into())),
                (29, TemplatePart::PathParam("id".into()))
            ]
        );
    }

    #[test]
    fn stage_variable_rules() {
        assert!(is_stage_variable_name("backend_1"));
        assert!(!is_stage_variable_name("back-end"));
        assert!(is_stage_variable_value("127.0.0.1:9000/a?b=c&d=e,f~h"));
        assert!(!is_stage_variable_value("c#"));
        assert!(!is_stage_variable_value("has space"));
        assert!(!is_stage_variable_value(""));
    }
}
