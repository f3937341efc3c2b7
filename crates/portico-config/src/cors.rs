//! An API's CORS configuration, as API Gateway's HTTP APIs have it: the
//! gateway answers browsers' preflight requests itself and adds the CORS
//! headers to every response, in place of whatever the backend sent.
//!
//! Header values are rendered once, here, so a request only copies them.

use http::HeaderValue;

use crate::error::Diag;
use crate::file::{CorsFile, S};
use crate::integration::is_header_name;

/// The longest `max_age_seconds` (a day, as API Gateway allows).
pub const MAX_CORS_AGE: u64 = 86_400;

/// One list of the configuration: the values it names, or any (`"*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsList {
    /// Nothing listed: the header is left out.
    None,
    /// `"*"`: whatever the request asks for is allowed (echoed back).
    Any,
    /// The values, joined with `, `.
    Listed(HeaderValue),
}

/// A compiled `cors` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins, lower case (`scheme://host[:port]`).
    pub origins: Vec<String>,
    /// `"*"` among the origins: every origin, answered with `*`.
    pub any_origin: bool,
    pub methods: CorsList,
    pub headers: CorsList,
    /// `Access-Control-Expose-Headers` (`*` included as written).
    pub expose: Option<HeaderValue>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<HeaderValue>,
    pub credentials: bool,
}

impl Cors {
    /// Whether `origin` (a request's `Origin`) may read responses.
    pub fn allows(&self, origin: &[u8]) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }
}

pub(crate) fn compile_cors(f: &S<CorsFile>, diag: &mut Diag<'_>) -> Option<Cors> {
    let file = f.get_ref();
    let mut ok = true;
    let mut origins = Vec::new();
    let mut any_origin = false;
    if file.allow_origins.get_ref().is_empty() {
        diag.expect(
            file.allow_origins.span(),
            "`allow_origins` is empty",
            "at least one origin, or \"*\"",
        );
        ok = false;
    }
    for o in file.allow_origins.get_ref() {
        let value = o.get_ref();
        if value == "*" {
            any_origin = true;
        } else if let Some(origin) = origin(value) {
            origins.push(origin);
        } else {
            diag.expect(
                o.span(),
                format!("invalid origin `{value}`"),
                "\"*\" or scheme://host[:port] (no path), e.g. https://app.example.com",
            );
            ok = false;
        }
    }
    if any_origin && file.allow_credentials {
        diag.at(
            f.span(),
            "`allow_credentials = true` cannot be used with `allow_origins = [\"*\"]` (list the origins)",
        );
        ok = false;
    }
    let methods = list(&file.allow_methods, "method", is_method_token, diag);
    let headers = list(&file.allow_headers, "header", is_header_name, diag);
    let expose = list(&file.expose_headers, "header", is_header_name, diag);
    if file.allow_credentials && file.expose_headers.iter().any(|h| h.get_ref() == "*") {
        // With credentials a browser reads `*` as a header of that name.
        diag.at(
            f.span(),
            "`expose_headers = [\"*\"]` does not expose every header with `allow_credentials = true` (list them)",
        );
        ok = false;
    }
    let max_age = match &file.max_age_seconds {
        Some(age) if *age.get_ref() > MAX_CORS_AGE => {
            diag.expect(
                age.span(),
                format!("max_age_seconds {} is out of range", age.get_ref()),
                format!("0..={MAX_CORS_AGE}"),
            );
            ok = false;
            None
        }
        Some(age) => Some(HeaderValue::from(*age.get_ref())),
        None => None,
    };
    let (Some(methods), Some(headers), Some(expose)) = (methods, headers, expose) else {
        return None;
    };
    let expose = match expose {
        CorsList::None => None,
        CorsList::Any => Some(HeaderValue::from_static("*")),
        CorsList::Listed(v) => Some(v),
    };
    ok.then_some(Cors {
        origins,
        any_origin,
        methods,
        headers,
        expose,
        max_age,
        credentials: file.allow_credentials,
    })
}

/// A list of names, each valid by `valid`, or `"*"` alone.
fn list(
    items: &[S<String>],
    what: &str,
    valid: fn(&str) -> bool,
    diag: &mut Diag<'_>,
) -> Option<CorsList> {
    let mut ok = true;
    let mut any = false;
    let mut names: Vec<&str> = Vec::new();
    for item in items {
        let value = item.get_ref().as_str();
        if value == "*" {
            any = true;
        } else if valid(value) {
            names.push(value);
        } else {
            diag.expect(
                item.span(),
                format!("invalid {what} `{value}`"),
                match what {
                    "method" => "\"*\" or a method (a token; GET, PUT, ... upper case, as browsers send them)".to_owned(),
                    _ => format!("\"*\" or a {what} name (letters, digits and !#$%&'*+-.^_`|~)"),
                },
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    if any {
        return Some(CorsList::Any);
    }
    if names.is_empty() {
        return Some(CorsList::None);
    }
    // Checked above: tokens only, so always a valid header value.
    HeaderValue::from_str(&names.join(", "))
        .ok()
        .map(CorsList::Listed)
}

/// An HTTP method token (RFC 9110 §9.1: case-sensitive, as sent). Browsers
/// upper-case the standard methods before comparing, so those must be
/// written upper case to ever match.
fn is_method_token(m: &str) -> bool {
    const STANDARD: [&str; 7] = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"];
    is_header_name(m)
        && !STANDARD
            .iter()
            .any(|s| s.eq_ignore_ascii_case(m) && *s != m)
}

/// `scheme://host[:port]` as browsers send it in `Origin`: lower case, and
/// without the scheme's default port (which `Origin` never names); `None`
/// when `value` is not one.
fn origin(value: &str) -> Option<String> {
    let (scheme, authority) = value.split_once("://")?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let parsed: http::uri::Authority = authority.parse().ok()?;
    let host = parsed.host();
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    // Exactly host[:port], the port as a number writes itself: no user
    // info, no `+443` or `0443`, no empty port.
    let written = match parsed.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    if !scheme_ok || !host_ok || written != authority {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let default = matches!(
        (scheme.as_str(), parsed.port_u16()),
        ("https", Some(443)) | ("http", Some(80))
    );
    let host = host.to_ascii_lowercase();
    Some(match parsed.port_u16() {
        Some(port) if !default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{NODE, errors, parse};

    /// An origin with one API whose `[apis.cors]` (line 7) holds `cors`.
    fn api(cors: &str) -> String {
        format!(
            "{NODE}[[apis]]\nname = \"a\"\nendpoint = \"regional\"\n[apis.cors]\n{cors}\n\
             [[apis.routes]]\npath = \"/x\"\nintegration = {{ type = \"mock\" }}\n\
             [[apis.stages]]\nname = \"prod\"\n"
        )
    }

    fn cors(text: &str) -> Cors {
        let c = parse(&api(text)).unwrap();
        c.definitions.apis[0].cors.as_deref().unwrap().clone()
    }

    #[test]
    fn a_cors_table_compiles_to_header_values() {
        let c = cors(
            "allow_origins = [\"https://App.example.com\", \"http://localhost:3000\"]\n\
             allow_methods = [\"GET\", \"PUT\"]\nallow_headers = [\"*\"]\n\
             expose_headers = [\"x-request-id\", \"RateLimit\"]\nmax_age_seconds = 600\n\
             allow_credentials = true",
        );
        assert_eq!(
            c.origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert!(c.allows(b"https://app.EXAMPLE.com"));
        assert!(!c.allows(b"https://evil.example.com"));
        assert!(!c.allows(b"https://app.example.com.evil"));
        // IPv6 literals; a default port is left out, as `Origin` leaves it.
        let v6 = cors(
            "allow_origins = [\"http://[::1]:8080\", \"HTTPS://Api.Test:443\", \"http://a.test:80\"]",
        );
        assert_eq!(
            v6.origins,
            ["http://[::1]:8080", "https://api.test", "http://a.test"]
        );
        assert_eq!(
            c.methods,
            CorsList::Listed(HeaderValue::from_static("GET, PUT"))
        );
        assert_eq!(c.headers, CorsList::Any);
        assert_eq!(c.expose.unwrap(), "x-request-id, RateLimit");
        assert_eq!(c.max_age.unwrap(), "600");
        assert!(c.credentials);
        let c = cors("allow_origins = [\"*\"]");
        assert!(c.any_origin && c.allows(b"https://anything.test"));
        assert_eq!((c.methods, c.headers), (CorsList::None, CorsList::None));
        assert_eq!((c.expose, c.max_age), (None, None));
    }

    #[test]
    fn bad_cors_tables_are_located() {
        assert_eq!(
            errors(&api("allow_origins = []")),
            ["8:17: `allow_origins` is empty"]
        );
        assert_eq!(
            errors(&api(
                "allow_origins = [\"https://a.test/\", \"a.test\", \"https://b.test:99999\"]"
            )),
            [
                "8:18: invalid origin `https://a.test/`",
                "8:37: invalid origin `a.test`",
                "8:47: invalid origin `https://b.test:99999`",
            ]
        );
        assert_eq!(
            errors(&api("allow_origins = [\"*\"]\nallow_credentials = true")),
            [
                "7:1: `allow_credentials = true` cannot be used with `allow_origins = [\"*\"]` (list the origins)"
            ]
        );
        assert_eq!(
            errors(&api(
                "allow_origins = [\"*\"]\nallow_methods = [\"GE T\"]\nexpose_headers = [\"a:b\"]\nmax_age_seconds = 86401"
            )),
            [
                "9:18: invalid method `GE T`",
                "10:19: invalid header `a:b`",
                "11:19: max_age_seconds 86401 is out of range",
            ]
        );
        for bad in [
            "http://[::1]:99999",
            "http://[::1]:abc",
            "https://a:b:80",
            "https://a]:80",
            "https://a.test:+443",
            "https://a.test:0443",
            "https://a.test:",
            "https://u@a.test",
        ] {
            let text = api(&format!("allow_origins = [\"{bad}\"]"));
            assert_eq!(
                errors(&text),
                [format!("8:18: invalid origin `{bad}`")],
                "{bad}"
            );
        }
        assert_eq!(
            errors(&api(
                "allow_origins = [\"*\"]\nallow_methods = [\"put\", \"Get\", \"PURGE\"]"
            )),
            ["9:18: invalid method `put`", "9:25: invalid method `Get`"]
        );
        assert_eq!(
            errors(&api(
                "allow_origins = [\"https://a.test\"]\nexpose_headers = [\"*\"]\nallow_credentials = true"
            )),
            [
                "7:1: `expose_headers = [\"*\"]` does not expose every header with `allow_credentials = true` (list them)"
            ]
        );
        assert_eq!(
            errors(&api("allow_origins = [\"*\"]\nallow_origin = [\"*\"]")),
            ["9:1: unknown field `allow_origin`"]
        );
    }
}
