//! Portico's integrations: what an origin does with a routed request.
//!
//! * `http_proxy` forwards method, path, query, headers and body to a URI
//!   template and passes the response through.
//! * `http` maps request parameters explicitly (API Gateway's non-proxy HTTP
//!   integration) and passes only mapped response headers.
//! * `mock` answers from configuration.
//!
//! Bodies stream both ways; nothing here buffers a whole body.
#![forbid(unsafe_code)]

mod client;
mod dns;
mod http_mapped;
mod http_proxy;

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use portico_config::{Integration, MockIntegration, UriTemplate};
use portico_gateway::{Body, ErrorKind, ErrorSource, GatewayError, RequestCtx, Upstream, body};

pub use client::{BackendClient, ClientSettings};
pub use dns::{DnsSettings, Resolver};

/// Errors of the backend client: building it, and (as the cause of a
/// connect error) resolving and connecting.
#[derive(Debug, thiserror::Error)]
pub enum IntegrationError {
    #[error("DNS resolver: {0}")]
    Dns(String),
    #[error("backend connect (DNS, TCP and TLS) took over {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("backend CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("backend TLS: {0}")]
    Tls(String),
}

/// An origin's upstream: runs the route's integration.
#[derive(Clone, Debug)]
pub struct Integrations {
    client: BackendClient,
}

impl Integrations {
    pub fn new(client: BackendClient) -> Self {
        Self { client }
    }
}

impl Upstream for Integrations {
    async fn forward(
        &self,
        ctx: &RequestCtx,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        match &ctx.route().integration {
            Integration::HttpProxy { uri } => {
                http_proxy::forward(&self.client, ctx, uri, req).await
            }
            Integration::Http(mapping) => {
                http_mapped::forward(&self.client, ctx, mapping, req).await
            }
            Integration::Mock(mock) => mock_response(mock),
        }
    }
}

/// A response built from a `mock` integration.
fn mock_response(mock: &MockIntegration) -> Result<Response<Body>, GatewayError> {
    let mut resp = Response::new(body::full(mock.body.clone()));
    *resp.status_mut() =
        StatusCode::from_u16(mock.status).map_err(|e| misconfigured(e.to_string()))?;
    for (name, value) in &mock.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| misconfigured(e.to_string()))?;
        let value = HeaderValue::from_str(value).map_err(|e| misconfigured(e.to_string()))?;
        resp.headers_mut().append(name, value);
    }
    Ok(resp)
}

/// A configuration that validated but cannot produce a request (e.g. a
/// rendered URI that does not parse): API Gateway answers 500.
fn misconfigured(reason: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::Internal, ErrorSource::Integration).with_cause(reason.into())
}

/// The longest URI the `http` crate holds (`u16::MAX - 1` bytes).
const MAX_URI_LEN: usize = 65_534;

/// `uri`, rendered from `template` with the stage's `vars` and the
/// request's values, as the backend request's URI.
///
/// One too long only because of the client's values (a long path or query,
/// a header mapped into the query) is the client's: 414, logged as a
/// refused request. A URI that does not parse otherwise is
/// misconfiguration (500).
fn backend_uri(
    uri: String,
    template: &UriTemplate,
    vars: &BTreeMap<String, String>,
) -> Result<Uri, GatewayError> {
    if uri.len() > MAX_URI_LEN {
        // Only on this path: what the configuration renders on its own.
        let own = template.render(&|_| None, vars).len();
        if own <= MAX_URI_LEN {
            return Err(
                GatewayError::client(ErrorKind::UriTooLong).with_cause(format!(
                    "the backend URI would be {} bytes, over the {MAX_URI_LEN} a URI can hold",
                    uri.len()
                )),
            );
        }
    }
    uri.parse::<Uri>()
        .map_err(|e| misconfigured(format!("integration URI {uri:?}: {e}")))
}

/// `body` framed so that the backend gets it: hyper sends a GET or HEAD
/// whose body has no declared length as bodiless, so such a body's first
/// frame is read here, and one that carries data goes on chunked. (nginx
/// likewise forwards a GET's body.) A body that ends at once goes as none.
/// `parts` are the backend request's, its method final: a mapping may send
/// a client's POST on as a GET.
async fn framed(parts: &mut http::request::Parts, body: Body) -> Result<Body, GatewayError> {
    use http_body_util::BodyExt;
    let bodiless_by_default = matches!(parts.method, http::Method::GET | http::Method::HEAD);
    let framed = parts.headers.contains_key(http::header::CONTENT_LENGTH)
        || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
    if !bodiless_by_default || framed || http_body::Body::is_end_stream(&body) {
        return Ok(body);
    }
    let mut body = body;
    let Some(first) = body.frame().await else {
        return Ok(body::empty());
    };
    let first = first.map_err(backend_failed)?;
    parts.headers.insert(
        http::header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    let first = futures_util::stream::once(std::future::ready(Ok(first)));
    let rest = http_body_util::BodyStream::new(body);
    Ok(http_body_util::StreamBody::new(futures_util::StreamExt::chain(first, rest)).boxed_unsync())
}

/// A backend's answer whose transfer coding is not `chunked` alone
/// ([`portico_gateway::headers::other_transfer_coding`]) is refused (502),
/// as nginx refuses it ("upstream sent unknown Transfer-Encoding").
fn check_transfer_coding<B>(resp: &http::Response<B>) -> Result<(), GatewayError> {
    match portico_gateway::headers::other_transfer_coding(resp.headers()) {
        None => Ok(()),
        Some(coding) => Err(backend_failed(format!(
            "the backend's transfer coding {coding:?} is not chunked alone"
        ))),
    }
}

/// The backend failed: refused, reset, TLS, DNS, or a broken response.
fn backend_failed(err: impl Into<portico_gateway::BoxError>) -> GatewayError {
    GatewayError::new(ErrorKind::BadGateway, ErrorSource::Integration).with_cause(err)
}

#[cfg(test)]
mod tests {
    use portico_config::TemplatePart;

    use super::*;

    fn literal(s: &str) -> UriTemplate {
        UriTemplate {
            parts: vec![TemplatePart::Literal(s.to_owned())],
        }
    }

    #[tokio::test]
    async fn a_backend_uri_too_long_for_the_clients_values_is_414() {
        use http_body_util::BodyExt;
        let template = literal("http://backend/search?");
        let vars = BTreeMap::new();
        let rendered = |len: usize| format!("http://backend/search?{}", "q".repeat(len - 22));
        let uri = backend_uri(rendered(MAX_URI_LEN), &template, &vars).expect("at the limit");
        assert_eq!(uri.to_string().len(), MAX_URI_LEN);
        let err = backend_uri(rendered(MAX_URI_LEN + 1), &template, &vars).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UriTooLong);
        assert_eq!(err.source_of, ErrorSource::Client);
        let resp = err.to_response();
        assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], br#"{"message":"Request-URI Too Long"}"#);
    }

    #[test]
    fn a_backend_uri_the_configuration_breaks_is_500() {
        // Too long with no request value in it: the stage's variable.
        let template = UriTemplate {
            parts: vec![
                TemplatePart::Literal("http://backend/".to_owned()),
                TemplatePart::StageVariable("path".to_owned()),
            ],
        };
        let vars = BTreeMap::from([("path".to_owned(), "p".repeat(MAX_URI_LEN))]);
        let uri = template.render(&|_| None, &vars);
        let err = backend_uri(uri, &template, &vars).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
        // Short but no URI.
        let err = backend_uri("http://back end/".into(), &literal("http://"), &vars).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
    }
}
