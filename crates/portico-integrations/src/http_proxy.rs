//! `http_proxy`: the request goes to the backend as the client sent it.

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use portico_config::UriTemplate;
use portico_gateway::headers::set_forwarded;
use portico_gateway::{Body, GatewayError, RequestCtx, body};

use crate::backend_failed;
use crate::client::BackendClient;

/// Renders the backend URI: the template with path parameters and stage
/// variables, then the client's query string. Parameters the template sets
/// itself are the template's: the client's of the same name are left out,
/// so that a backend that takes the last value cannot be handed another.
pub(crate) fn target_uri(
    ctx: &RequestCtx,
    template: &UriTemplate,
    query: Option<&str>,
) -> Result<Uri, GatewayError> {
    let mut uri = template.render(&|name| ctx.path_param(name), &ctx.stage.variables);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        match uri.split_once('?') {
            None => {
                uri.push('?');
                uri.push_str(q);
            }
            Some((_, own)) => {
                let own: Vec<String> = own.split('&').map(param_name).collect();
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|pair| !pair.is_empty() && !own.contains(&param_name(pair)))
                    .collect();
                for pair in kept {
                    uri.push('&');
                    uri.push_str(pair);
                }
            }
        }
    }
    crate::backend_uri(uri, template, &ctx.stage.variables)
}

/// A query pair's name as a backend reads it (percent- and `+`-decoded).
fn param_name(pair: &str) -> String {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
    percent_encoding::percent_decode_str(&name.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) async fn forward(
    client: &BackendClient,
    ctx: &RequestCtx,
    template: &UriTemplate,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    parts.uri = target_uri(ctx, template, parts.uri.query())?;
    let body = crate::framed(&mut parts, body).await?;
    // The backend's Host comes from its URI; the client's travels in Forwarded.
    parts.headers.remove(header::HOST);
    set_forwarded(
        &mut parts.headers,
        ctx.conn.client_addr,
        ctx.conn.scheme(),
        &ctx.host,
        ctx.addressed_port(),
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
    crate::check_transfer_coding(&resp)?;
    Ok(resp.map(body::boxed))
}
