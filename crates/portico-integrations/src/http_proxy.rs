//! `http_proxy`: the request goes to the backend as the client sent it.

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use portico_config::UriTemplate;
use portico_gateway::headers::set_forwarded;
use portico_gateway::{Body, GatewayError, RequestCtx, body};

use crate::client::BackendClient;
use crate::{backend_failed, misconfigured};

/// Renders the backend URI: the template with path parameters and stage
/// variables, plus the client's query string unless the template has its own.
pub(crate) fn target_uri(
    ctx: &RequestCtx,
    template: &UriTemplate,
    query: Option<&str>,
) -> Result<Uri, GatewayError> {
    let mut uri = template.render(&|name| ctx.path_param(name), &ctx.stage.variables);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str(q);
    }
    uri.parse::<Uri>()
        .map_err(|e| misconfigured(format!("integration URI {uri:?}: {e}")))
}

pub(crate) async fn forward(
    client: &BackendClient,
    ctx: &RequestCtx,
    template: &UriTemplate,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = target_uri(ctx, template, parts.uri.query())?;
    // The backend's Host comes from its URI; the client's travels in Forwarded.
    parts.headers.remove(header::HOST);
    set_forwarded(
        &mut parts.headers,
        ctx.conn.client_addr,
        ctx.conn.scheme(),
        &ctx.host,
    );
    parts.version = Version::HTTP_11;
    if let Some(authority) = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, authority);
    }
    let resp = client
        .send(Request::from_parts(parts, body))
        .await
        .map_err(backend_failed)?;
    Ok(resp.map(body::boxed))
}
