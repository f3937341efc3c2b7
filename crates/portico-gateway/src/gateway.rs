//! The request pipeline: one orchestrator, the same in PoPs and origins.
//!
//! A PoP is a gateway whose upstream is the backbone; an origin is a gateway
//! whose upstream runs integrations. Routing, limits, response shaping and the
//! access log are this code in both roles.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use portico_config::{Api, Definitions, Stage};

use crate::body::{
    Body, BodyLengthMismatch, BodyTooLarge, IdleTimeout, Limited, RequestBodyFailed, find_cause,
};
use crate::cache::{PurgeScope, ResponseCache};
use crate::context::{ConnInfo, Principal, RequestCtx};
use crate::error::{ErrorKind, ErrorSource, GatewayError};
use crate::headers::{REQUEST_ID, RequestId, strip_hop_by_hop, strip_request_hop_by_hop};
use crate::limits::Limits;
use crate::log::{AccessRecord, Logged, Unanswered};
use crate::router::{RoutingTable, ServedModes};
use crate::upload::{Late, Upload, Uploading};
use crate::upstream::Upstream;

/// Node-wide settings of the pipeline.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// This node's id, named in `Via` and in logs.
    pub node_id: Arc<str>,
    /// Request bodies over this many bytes are refused with 413 (checked while streaming).
    pub max_body_bytes: u64,
    /// Request header sections over this many bytes (names + values), or of
    /// more than [`crate::headers::MAX_FIELDS`] fields, get 431.
    pub max_header_bytes: usize,
    /// Longest wait for more of a response body (`[limits]
    /// upstream_read_timeout_ms`).
    pub upstream_read_timeout: Duration,
    /// Longest a request body may stand still on its way upstream (`[limits]
    /// upload_timeout_ms`); the route's timeout runs from its end.
    pub upload_timeout: Duration,
}

impl GatewaySettings {
    pub(crate) fn waits(&self) -> Waits {
        Waits {
            read: self.upstream_read_timeout,
            upload: self.upload_timeout,
        }
    }
}

/// How a request entered the node, which decides how it is routed.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    /// From a client on a public listener: Host and path select API and stage.
    Public(ServedModes),
    /// Over the backbone: the PoP already chose API and stage; the request's
    /// path is the path inside the stage. `principal` is the caller the PoP
    /// authenticated, if any.
    Routed {
        api: &'a str,
        stage: &'a str,
        modes: ServedModes,
        principal: Option<&'a Principal>,
    },
}

/// The request pipeline of one node.
pub struct Gateway<U> {
    settings: GatewaySettings,
    via: HeaderValue,
    table: ArcSwap<RoutingTable>,
    /// API keys, throttles and quotas (node state, kept across reloads).
    limits: Arc<Limits>,
    /// Shared with background cache refreshes, which outlive the request.
    upstream: Arc<U>,
    /// The node's response cache (`None`: `[cache] enabled = false`).
    cache: Option<Arc<ResponseCache>>,
}

impl<U: Upstream> Gateway<U> {
    pub fn new(settings: GatewaySettings, definitions: Arc<Definitions>, upstream: U) -> Self {
        let via = HeaderValue::from_str(&format!("1.1 {}", settings.node_id))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 portico"));
        let table = ArcSwap::from_pointee(RoutingTable::new(definitions));
        Self {
            settings,
            via,
            table,
            limits: Arc::new(Limits::none()),
            upstream: Arc::new(upstream),
            cache: None,
        }
    }

    /// Gives the gateway a response cache of `max_bytes` (routes opt in with their
    /// `cache` settings). Without one, nothing is cached.
    pub fn with_cache(mut self, max_bytes: u64) -> Self {
        self.cache = Some(Arc::new(ResponseCache::new(
            &self.settings.node_id,
            max_bytes,
            self.settings.waits(),
        )));
        self
    }

    pub fn cache(&self) -> Option<&Arc<ResponseCache>> {
        self.cache.as_ref()
    }

    /// Removes cached responses; effective for lookups when this returns. (At an
    /// origin, the caller also sends the scope to the PoPs.)
    pub async fn purge(&self, scope: &PurgeScope) {
        self.purge_many(std::slice::from_ref(scope)).await;
    }

    /// Removes what any of `scopes` selects, in one pass over the cache for
    /// those that need one (see [`ResponseCache::purge_many`]).
    pub async fn purge_many(&self, scopes: &[PurgeScope]) {
        if let Some(cache) = &self.cache {
            cache.purge_many(scopes).await;
        }
    }

    /// Gives the gateway its limits (without them: no keys checked, no throttles).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Installs a new configuration snapshot. Requests in flight finish on the old one.
    pub fn swap(&self, definitions: Arc<Definitions>) {
        self.limits.rebuild(&definitions);
        self.table.store(Arc::new(RoutingTable::new(definitions)));
    }

    /// The routing tables new requests use (purge scopes are checked against them).
    pub fn routing(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// The snapshot new requests are routed with.
    pub fn definitions(&self) -> Arc<Definitions> {
        Arc::clone(self.table.load().definitions())
    }

    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    pub fn upstream(&self) -> &U {
        &self.upstream
    }

    fn record<B>(&self, req: &Request<B>, conn: &ConnInfo) -> AccessRecord {
        AccessRecord {
            request_id: RequestId::of(req.headers()),
            node: Arc::clone(&self.settings.node_id),
            protocol: conn.protocol.as_str(),
            client: Some(conn.client_addr),
            method: req.method().clone(),
            uri: req.uri().clone(),
            started: Some(Instant::now()),
            ..AccessRecord::default()
        }
    }

    /// The answer to a request a protocol adapter refused before the
    /// pipeline (HTTP/3 early data: 425), shaped and access-logged like any.
    pub fn refuse<B>(
        &self,
        req: &Request<B>,
        conn: &ConnInfo,
        err: GatewayError,
    ) -> Response<Body> {
        let mut record = self.record(req, conn);
        record.error = err.kind.as_str();
        let mut resp = err.to_response();
        self.shape_response(&mut resp, &record.request_id);
        record.status = resp.status().as_u16();
        resp.map(|body| Body::new(Logged::new(body, record)))
    }

    /// Serves one request from any protocol adapter. Never fails: errors become responses.
    pub async fn handle(
        &self,
        req: Request<Body>,
        conn: &Arc<ConnInfo>,
        entry: Entry<'_>,
    ) -> Response<Body> {
        // 1. Identify the request and start its access record (written
        // with 499 if the client leaves before the answer).
        let mut unanswered = Unanswered::new(self.record(&req, conn));
        // For CORS, the `Origin` of a request the client sent this node;
        // `None` for one a PoP forwarded (the PoP decorates its answer).
        let cors_origin = match entry {
            Entry::Public(_) => Some(req.headers().get(header::ORIGIN).cloned()),
            Entry::Routed { .. } => None,
        };
        // 2. Run the phases; any error goes to the one error sink.
        let result = self.process(req, conn, entry, unanswered.record()).await;
        let mut record = unanswered.answered();
        let refused = result.is_err();
        let mut resp = result.unwrap_or_else(|err| {
            record.error = err.kind.as_str();
            if let (ErrorSource::Client, Some(cause)) = (err.source_of, &err.cause) {
                record.reason = cause.to_string();
            }
            log_error(&record, &err);
            err.to_response()
        });
        // 3. Shape the response and attach the access log to its body.
        self.shape_response(&mut resp, &record.request_id);
        if let Some(origin) = &cors_origin {
            let named;
            let api = match &record.target {
                // A preflight's own answer carries its allowances already.
                Some((_, _, None)) if !refused => None,
                Some((api, _, _)) => Some(&**api),
                // Refused before a route matched (no such route or method, a
                // client over its tokens): the API its host and path name
                // still decides what a browser may read, so that a page sees
                // the 404 or 429 rather than an opaque CORS failure. Looked
                // up on this path only.
                None if refused => {
                    named = self.api_named(entry, conn, &record);
                    named.as_deref()
                }
                None => None,
            };
            if let Some(cors) = api.and_then(|a| a.cors.as_ref()) {
                crate::cors::decorate(cors, origin.as_ref(), resp.headers_mut());
            }
        }
        if record.method == http::Method::HEAD
            || matches!(
                resp.status(),
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            )
        {
            resp = without_body(resp);
        }
        record.status = resp.status().as_u16();
        // With the access log off, no layer to count bytes for it.
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return resp;
        }
        // A body of declared length is complete once that many bytes went
        // out, whether or not its end was polled before the client left.
        let length = match http_body::Body::size_hint(resp.body()).exact() {
            Some(n) => Some(n),
            None => crate::headers::content_length(resp.headers())
                .ok()
                .flatten(),
        };
        resp.map(|body| Body::new(Logged::new(body, record).with_length(length)))
    }

    async fn process(
        &self,
        req: Request<Body>,
        conn: &Arc<ConnInfo>,
        entry: Entry<'_>,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, GatewayError> {
        // A request refused for what it is, before the throttles, still
        // costs its client's and the node's tokens (none for one a PoP
        // forwards: it paid there), so that probing ends in 429.
        let routed = matches!(entry, Entry::Routed { .. });
        let refused = |err: GatewayError| {
            self.limits
                .charge_refused(conn.client_addr.ip(), routed, err)
        };
        check_header_size(&req, self.settings.max_header_bytes).map_err(refused)?;
        check_host_fields(&req, conn).map_err(refused)?;
        check_transfer_coding(&req).map_err(refused)?;
        record.host = host_of(&req).map_err(refused)?.to_owned();
        // Routing, path parameters and the backend see the path in one
        // form, so `/public/../admin`, `//admin` or `/%61dmin` cannot reach
        // another route than `/admin` does.
        let path = routed_path(record.uri.path()).map_err(refused)?;
        let path = &*path;
        // Route with the snapshot current now; the request keeps its
        // definitions to the end. The table itself is only looked at (no
        // reference count taken, which every thread would share).
        let table = self.table.load();
        if let Entry::Public(modes) = entry
            && crate::cors::is_preflight(&record.method, req.headers())
            && let Some((resp, api, stage)) =
                preflight(&table, modes, &req, &record.host, path, conn)
        {
            // Logged with its API and stage, answered or refused; no route
            // answered it.
            record.target = Some((api, stage, None));
            // Not free: it costs the client's and the node's tokens.
            self.limits.charge_plain(conn.client_addr.ip())?;
            return Ok(resp);
        }
        let resolved = match entry {
            Entry::Public(modes) => {
                let default_api = conn.default_api.as_deref();
                table.resolve(
                    &record.host,
                    record.method.as_str(),
                    path,
                    default_api,
                    modes,
                )
            }
            Entry::Routed {
                api, stage, modes, ..
            } => table.resolve_in(api, stage, record.method.as_str(), path, modes),
        };
        let claimed = match entry {
            Entry::Routed { principal, .. } => principal,
            Entry::Public(_) => None,
        };
        let resolved = resolved.map_err(refused)?;
        let mut ctx = RequestCtx {
            request_id: record.request_id.clone(),
            started: record.started.unwrap_or_else(Instant::now),
            conn: Arc::clone(conn),
            definitions: Arc::clone(table.definitions()),
            host: crate::router::strip_port(&record.host).to_owned(),
            port: crate::router::port_of(&record.host),
            api: resolved.api,
            stage: resolved.stage,
            route_index: resolved.route_index,
            path_params: resolved.path_params,
            principal: None,
        };
        // Not held across the waits below.
        drop(table);
        record.target = Some((
            Arc::clone(&ctx.api),
            Arc::clone(&ctx.stage),
            Some(ctx.route_index),
        ));
        let req = self
            .prepare_request(req, &resolved.inner_path, &ctx)
            .map_err(refused)?;
        // API keys, throttles, quotas: before the cache, so that a refused request
        // never gets a cached answer.
        let mut own = None;
        let admitted = self
            .limits
            .admit(&ctx, req.headers(), routed, claimed.is_some(), &mut own)
            .await;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(err) => {
                // Logged as the key's request even when a throttle refused it.
                record.principal = own;
                return Err(err);
            }
        };
        // Who the caller is: our own key check, which a PoP's claim must match.
        ctx.principal = crate::limits::principal(own, claimed)?;
        record.principal.clone_from(&ctx.principal);
        let mut resp = match &self.cache {
            Some(cache) => cache.serve(&self.upstream, &ctx, req, record).await,
            None => self.forward(&ctx, req, record).await,
        }?;
        admitted.decorate(resp.headers_mut());
        Ok(resp)
    }

    /// Checks the declared length, streams the body through the limit and
    /// rewrites the URI to the path inside the stage.
    fn prepare_request(
        &self,
        req: Request<Body>,
        inner_path: &str,
        ctx: &RequestCtx,
    ) -> Result<Request<Body>, GatewayError> {
        let limit = self.settings.max_body_bytes;
        let declared = crate::headers::content_length(req.headers()).map_err(|_| {
            GatewayError::client(ErrorKind::BadRequest)
                .with_cause("invalid or conflicting content-length")
        })?;
        match declared {
            Some(len) if len > limit => {
                return Err(GatewayError::client(ErrorKind::PayloadTooLarge));
            }
            // A length with no body (an HTTP/3 or backbone request whose
            // stream ended with its head): forwarded, the backend would read
            // the next request on its connection as this one's body.
            Some(len) if len > 0 && http_body::Body::is_end_stream(req.body()) => {
                return Err(GatewayError::client(ErrorKind::BadRequest)
                    .with_cause(format!("content-length {len} but no body")));
            }
            _ => {}
        }
        let (mut parts, body) = req.into_parts();
        // A routed request's URI is already the path inside its stage.
        if parts.uri.path() != inner_path || parts.uri.scheme().is_some() {
            let inner_uri = match parts.uri.query() {
                Some(q) => format!("{inner_path}?{q}"),
                None => inner_path.to_owned(),
            };
            parts.uri = Uri::from_maybe_shared(Bytes::from(inner_uri))
                .map_err(|e| GatewayError::client(ErrorKind::BadRequest).with_cause(e))?;
        }
        strip_request_hop_by_hop(&mut parts.headers);
        // An expectation is the hop's (RFC 9110 §10.1.1): the client's
        // `100-continue` was answered here, as nginx answers it.
        parts.headers.remove(header::EXPECT);
        one_length(&mut parts.headers);
        parts
            .headers
            .insert(&REQUEST_ID, ctx.request_id.value().clone());
        // Each gateway the request passes names itself (RFC 9110 §7.6.3).
        parts.headers.append(header::VIA, self.via.clone());
        Ok(Request::from_parts(
            parts,
            Body::new(Limited::new(body, limit).with_declared(declared)),
        ))
    }

    /// Calls the upstream under the route's timeout.
    async fn forward(
        &self,
        ctx: &RequestCtx,
        req: Request<Body>,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let (result, latency) =
            forward_timed(&*self.upstream, ctx, req, self.settings.waits()).await;
        record.integration_latency = Some(latency);
        result
    }

    fn shape_response(&self, resp: &mut Response<Body>, request_id: &RequestId) {
        let headers = resp.headers_mut();
        strip_hop_by_hop(headers);
        one_length(headers);
        headers.insert(&REQUEST_ID, request_id.value().clone());
        headers.append(header::VIA, self.via.clone());
    }
}

impl<U: Upstream> Gateway<U> {
    /// The API a public request's host and path name, whether or not one of
    /// its routes matched.
    fn api_named(
        &self,
        entry: Entry<'_>,
        conn: &ConnInfo,
        record: &AccessRecord,
    ) -> Option<Arc<Api>> {
        let Entry::Public(modes) = entry else {
            return None;
        };
        let table = self.table.load();
        let default_api = conn.default_api.as_deref();
        // As routing sees it (`/pub/../int/x` is API `int`'s).
        let path = routed_path(record.uri.path()).ok()?;
        let (api, _, _) = table.locate(&record.host, &path, default_api, modes).ok()?;
        Some(api)
    }
}

/// The gateway's own answer to a CORS preflight a client sent it, for an API
/// that configures CORS; `None` lets the request route as any other. A
/// preflight a PoP forwarded routes as any other too: a PoP that knows CORS
/// answers its own, and one that does not would not decorate the request
/// that follows, so allowing it here would only fail later.
fn preflight(
    table: &RoutingTable,
    modes: ServedModes,
    req: &Request<Body>,
    host: &str,
    path: &str,
    conn: &ConnInfo,
) -> Option<(Response<Body>, Arc<Api>, Arc<Stage>)> {
    let default_api = conn.default_api.as_deref();
    let (api, stage, _) = table.locate(host, path, default_api, modes).ok()?;
    let resp = crate::cors::preflight(api.cors.as_ref()?, req.headers());
    Some((resp, api, stage))
}

/// A list of equal lengths (`5, 5`, which hyper accepts) as the one it
/// means (RFC 9110 §8.6), in requests and responses alike: relayed as sent,
/// a strict peer refuses it.
fn one_length(headers: &mut http::HeaderMap) {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let listed = match (lengths.next(), lengths.next()) {
        (Some(_), Some(_)) => true,
        (Some(one), None) => one.as_bytes().contains(&b','),
        _ => false,
    };
    if listed && let Ok(Some(len)) = crate::headers::content_length(headers) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// A response that carries no content: one to HEAD (its head only, with the
/// length its body would have had, RFC 9110 §9.3.2), a 204 or a 304
/// (§15.3.5, §15.4.5), whatever a backend or a mock sent with it. HTTP/1.1
/// drops such a body itself; HTTP/2 and HTTP/3 would send it, and a strict
/// client resets the stream. A 204 has no length; a 304's is the one a 200
/// would have, and stays.
fn without_body(resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let no_content = matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    if parts.status == StatusCode::NO_CONTENT {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    // Only a body of our own (an error, a mock) says what GET would carry: a
    // backend's answer to HEAD is already bodiless and keeps its own fields.
    let ours = !http_body::Body::is_end_stream(&body) && !no_content;
    if ours
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(n) = http_body::Body::size_hint(&body).exact()
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Response::from_parts(parts, crate::body::empty())
}

/// Calls `upstream` under the route's timeout; also says how long it took. Used by
/// the pipeline and by the cache (whose background refreshes have no record).
/// A request body streams upstream under `waits.upload` (each wait for it to
/// move), and the route's timeout runs from its end (`crate::upload`). Once
/// the head is in, each wait for more of the response body is bounded by
/// `waits.read`.
pub(crate) async fn forward_timed<U: Upstream>(
    upstream: &U,
    ctx: &RequestCtx,
    req: Request<Body>,
    waits: Waits,
) -> (Result<Response<Body>, GatewayError>, Duration) {
    let timeout: Duration = ctx.settings().timeout;
    let started = Instant::now();
    let result = if http_body::Body::is_end_stream(req.body()) {
        tokio::time::timeout(timeout, upstream.forward(ctx, req))
            .await
            .map_err(|_| Late::Head)
    } else {
        let upload = Upload::new();
        let req = req.map(|body| Body::new(Uploading::new(body, Arc::clone(&upload))));
        upload
            .race(upstream.forward(ctx, req), timeout, waits.upload)
            .await
    };
    let result = match result {
        // An interim (1xx) answer as the final one: a 101 with nothing to
        // switch to (no upgrade is ever forwarded), or a backend's mistake.
        Ok(Ok(resp)) if resp.status().is_informational() => Err(GatewayError::new(
            ErrorKind::BadGateway,
            ErrorSource::Integration,
        )
        .with_cause(format!("the upstream answered {}", resp.status()))),
        // The route's timeout covers the head; then the read timeout each
        // wait for more of the body, as nginx's proxy_read_timeout does.
        Ok(Ok(resp)) => Ok(resp.map(|body| Body::new(IdleTimeout::new(body, waits.read)))),
        Ok(Err(err)) => Err(reclassify(err)),
        Err(Late::Client) => Err(GatewayError::client(ErrorKind::RequestTimeout).with_cause(
            format!("the request body stood still for {:?}", waits.upload),
        )),
        Err(Late::Upstream) => Err(GatewayError::new(
            ErrorKind::GatewayTimeout,
            ErrorSource::Integration,
        )
        .with_cause(format!(
            "the upstream took none of the request body for {:?}",
            waits.upload
        ))),
        Err(Late::Head) => Err(GatewayError::new(
            ErrorKind::GatewayTimeout,
            ErrorSource::Integration,
        )),
    };
    (result, started.elapsed())
}

/// How long a request's exchange with its upstream may wait, beside the
/// route's timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// For more of the response body (`[limits] upstream_read_timeout_ms`).
    pub read: Duration,
    /// For the request body to move (`[limits] upload_timeout_ms`).
    pub upload: Duration,
}

/// An upstream failure caused by our own request-body limit is the client's
/// 413; by a body that did not carry its declared length, or that failed
/// as the client sent it, the client's 400.
fn reclassify(err: GatewayError) -> GatewayError {
    let too_large = err
        .cause
        .as_deref()
        .is_some_and(|c| find_cause::<BodyTooLarge>(c).is_some());
    let malformed = err.cause.as_deref().is_some_and(|c| {
        find_cause::<BodyLengthMismatch>(c).is_some()
            || find_cause::<RequestBodyFailed>(c).is_some()
    });
    if too_large {
        GatewayError::client(ErrorKind::PayloadTooLarge).with_cause(err)
    } else if malformed {
        GatewayError::client(ErrorKind::BadRequest).with_cause(err)
    } else {
        err
    }
}

fn check_header_size<B>(req: &Request<B>, limit: usize) -> Result<(), GatewayError> {
    if req.headers().len() > crate::headers::MAX_FIELDS {
        return Err(GatewayError::client(ErrorKind::HeaderTooLarge));
    }
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > limit {
        return Err(GatewayError::client(ErrorKind::HeaderTooLarge));
    }
    Ok(())
}

/// `path` as requests are routed and keyed by: absolute, escapes well
/// formed, in its normal form ([`normal_path`]).
pub(crate) fn routed_path(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    check_path(path)?;
    normal_path(path)
}

/// A path must be absolute and its percent-escapes well formed.
fn check_path(path: &str) -> Result<(), GatewayError> {
    let bytes = path.as_bytes();
    let escapes_ok = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| {
            bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !path.starts_with('/') || !escapes_ok {
        return Err(GatewayError::client(ErrorKind::BadRequest)
            .with_cause(format!("malformed path {path:?}")));
    }
    Ok(())
}

/// `path` in the one form routing, path parameters, cache keys and the
/// backend see, so that spellings of one path cannot reach different routes
/// (a route's key requirement, throttles and cache settings belong to the
/// route): percent-encoded unreserved characters decoded (`%61dmin` is
/// `admin`, RFC 3986 §6.2.2.2) and the other escapes' hex digits in upper
/// case (§6.2.2.1); runs of `/` merged into one, as nginx's `merge_slashes`
/// does; `.` and `..` segments resolved (§5.2.4), also when encoded
/// (`%2e`), as nginx does before it matches locations; a `..` above the
/// root is refused (400), as nginx refuses it. Borrowed when the path is in
/// that form already, which is nearly always.
fn normal_path(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    let bytes = path.as_bytes();
    let recoded = bytes.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().any(u8::is_ascii_lowercase) || unreserved(h).is_some())
    });
    let merged = path.contains("//");
    let dotted = path
        .split('/')
        .skip(1)
        .any(|seg| matches!(dots(seg), Some(1 | 2)));
    if hides_dot_segment(path) {
        return Err(
            GatewayError::client(ErrorKind::BadRequest).with_cause(format!(
                "path {path:?} has a dot segment behind an escaped slash"
            )),
        );
    }
    if !recoded && !merged && !dotted {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if recoded {
        Cow::Owned(recode(path))
    } else {
        Cow::Borrowed(path)
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/').skip(1) {
        trailing = true;
        match dots(seg) {
            // An empty segment (`//`, or the last one of `/a/`) and `.`.
            Some(0 | 1) => {}
            Some(2) => {
                if kept.pop().is_none() {
                    return Err(GatewayError::client(ErrorKind::BadRequest)
                        .with_cause(format!("path {path:?} climbs above the root")));
                }
            }
            _ => {
                trailing = false;
                kept.push(seg);
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether a segment of `path` hides a `.` or `..` that a backend would
/// resolve and routing here does not: behind an escaped slash (`%2F`, and
/// `%5C` or a raw `\`, a slash to some servers: a backend that decodes
/// before it resolves, nginx among them, reads `/public/..%2Fadmin` as
/// `/admin`), or before a `;` (Tomcat and Spring drop a segment's
/// `;parameters` first: `/public/..;/admin` is their `/admin`). Refused
/// rather than resolved: no client has a reason to send one.
fn hides_dot_segment(path: &str) -> bool {
    const SLASHES: [&str; 5] = ["%2F", "%2f", "%5C", "%5c", "\\"];
    path.contains(['%', ';', '\\'])
        && path.split('/').any(|seg| {
            if !seg.contains(';') && !SLASHES.iter().any(|slash| seg.contains(slash)) {
                return false;
            }
            let mut pieces = seg.to_owned();
            for slash in SLASHES {
                pieces = pieces.replace(slash, "/");
            }
            pieces.split('/').any(|piece| {
                let bare = piece.split(';').next().unwrap_or(piece);
                matches!(dots(bare), Some(1 | 2))
            })
        })
}

/// The unreserved character (RFC 3986 §2.3) two hex digits encode, if any.
fn unreserved(hex: &[u8]) -> Option<char> {
    portico_config::escaped_unreserved(std::str::from_utf8(hex).ok()?)
}

/// `path` (its escapes well formed) with encoded unreserved characters
/// decoded and every other escape's hex digits in upper case.
fn recode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let hex = rest.get(at + 1..at + 3).unwrap_or_default();
        match unreserved(hex.as_bytes()) {
            Some(c) => out.push(c),
            None => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
        }
        rest = rest.get(at + 3..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// How many dots `seg` spells (`.`, `%2e`, `%2E` each count one), if it
/// spells nothing else.
fn dots(seg: &str) -> Option<usize> {
    let mut rest = seg.as_bytes();
    let mut n = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return None,
        };
        n += 1;
    }
    Some(n)
}

/// A request's transfer coding, if it names one, is `chunked` alone
/// ([`crate::headers::other_transfer_coding`]); otherwise 400 (RFC 9112
/// suggests 501, nginx's answer; one status for every malformed request
/// keeps the error set API Gateway's).
fn check_transfer_coding<B>(req: &Request<B>) -> Result<(), GatewayError> {
    match crate::headers::other_transfer_coding(req.headers()) {
        None => Ok(()),
        Some(coding) => Err(GatewayError::client(ErrorKind::BadRequest)
            .with_cause(format!("transfer coding {coding:?} is not chunked alone"))),
    }
}

/// One `Host` at most, and an HTTP/1.1 request must name its host (RFC 9112
/// §3.2): either failing is 400. With two, we and a server behind us could
/// each route by a different one.
fn check_host_fields<B>(req: &Request<B>, conn: &ConnInfo) -> Result<(), GatewayError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    let missing = first.is_none()
        && conn.protocol == crate::context::Protocol::Http1
        && req.version() == http::Version::HTTP_11
        && req.uri().authority().is_none();
    if hosts.next().is_some() || missing {
        return Err(GatewayError::client(ErrorKind::BadRequest)
            .with_cause("an HTTP/1.1 request needs exactly one Host"));
    }
    Ok(())
}

/// The host the client addressed: HTTP/2's `:authority` or HTTP/1.1's `Host`.
/// Both present and different is malformed (RFC 9113 §8.3.1).
/// It must be a host as [`is_host`] reads one: HTTP/1.1's parser takes any
/// visible text and spaces in `Host`, which would go on into the access log
/// and to the backend (`X-Forwarded-Host`).
fn host_of<B>(req: &Request<B>) -> Result<&str, GatewayError> {
    let authority = req.uri().authority().map(|a| a.as_str());
    let host = req.headers().get(header::HOST).map(|h| h.to_str());
    let named = match (authority, host) {
        (_, Some(Err(_))) => return Err(bad_host()),
        (Some(a), Some(Ok(h))) if !a.eq_ignore_ascii_case(h) => return Err(bad_host()),
        (Some(a), _) => a,
        (None, Some(Ok(h))) => h,
        (None, None) => "",
    };
    match is_host(named.as_bytes()) {
        true => Ok(named),
        false => Err(bad_host()),
    }
}

/// Whether `h` is empty or a host a client may address, with an optional
/// port: a name of letters, digits, `-`, `.`, `_` and `~`, or an IP address
/// in brackets (hex digits, `:` and `.`), then `:` and up to five digits.
/// Narrower than RFC 3986's reg-name, which also takes `%`, `!`, `,`, `;`…
/// and no DNS name has; no user info (`user@host`).
fn is_host(h: &[u8]) -> bool {
    let (name, port) = match h.first() {
        Some(b'[') => {
            let Some(end) = h.iter().position(|&c| c == b']') else {
                return false;
            };
            let inside = &h[1..end];
            let literal = !inside.is_empty()
                && (inside.iter()).all(|c| c.is_ascii_hexdigit() || matches!(c, b':' | b'.'));
            if !literal {
                return false;
            }
            (None, &h[end + 1..])
        }
        _ => {
            let end = h.iter().position(|&c| c == b':').unwrap_or(h.len());
            (Some(&h[..end]), &h[end..])
        }
    };
    let name_ok = name.is_none_or(|n| {
        (!n.is_empty() || h.is_empty())
            && n.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~'))
    });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits).is_ok_and(|d| d.parse::<u16>().is_ok())
        }
        Some(_) => false,
    };
    name_ok && port_ok
}

fn bad_host() -> GatewayError {
    GatewayError::client(ErrorKind::BadRequest)
        .with_cause("Host and :authority disagree, or Host is not a host")
}

fn log_error(record: &AccessRecord, err: &GatewayError) {
    match err.source_of {
        ErrorSource::Client => {
            tracing::debug!(request_id = %record.request_id, error = %err, "request refused")
        }
        ErrorSource::Backbone | ErrorSource::Integration => {
            tracing::warn!(request_id = %record.request_id, error = %err, "upstream failed")
        }
        ErrorSource::Internal => {
            tracing::error!(request_id = %record.request_id, error = %err, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{is_host, routed_path};

    #[test]
    fn a_path_has_one_normal_form() {
        for (sent, normal) in [
            ("/prod/%61dmin", "/prod/admin"),
            ("/prod/%41%7e%2D%5f%2e%30", "/prod/A~-_.0"),
            ("/prod//admin", "/prod/admin"),
            ("//prod///a//", "/prod/a/"),
            ("/prod/a%2fb%3f", "/prod/a%2Fb%3F"),
            ("/prod/%c3%a9", "/prod/%C3%A9"),
            ("/prod/a/%2e%2E/b", "/prod/b"),
            ("/prod/%2E/b/.", "/prod/b/"),
            ("/", "/"),
            ("//", "/"),
        ] {
            assert_eq!(routed_path(sent).ok().as_deref(), Some(normal), "{sent}");
        }
        // Already normal: the path itself, not a copy.
        for sent in [
            "/prod/admin",
            "/prod/a/",
            "/prod/a%2Fb",
            "/prod/a%2F...%2Fb",
            "/prod/a;b/c;d=..",
            "/prod/.well-known/x",
            "/",
        ] {
            assert!(matches!(routed_path(sent), Ok(Cow::Borrowed(_))), "{sent}");
        }
        for bad in [
            "/%61%2e/..//..",
            "/prod/%zz",
            "/prod/%4",
            "prod/a",
            "/prod/public/..%2Fadmin",
            "/prod/public/%2e%2e%2fadmin",
            "/prod/public/..%5cadmin",
            "/prod/public/x%2F.",
            "/prod/public/%2F..%2F",
            "/prod/public/..;/admin",
            "/prod/public/.;x/admin",
            "/prod/public/x\\..\\admin",
        ] {
            assert!(routed_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_is_a_name_or_a_bracketed_address_with_an_optional_port() {
        for good in [
            "",
            "localhost",
            "api.example.com",
            "api.example.com:9443",
            "a-b_c~d.test",
            "127.0.0.1:8443",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]",
        ] {
            assert!(is_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "a b",
            "pets.execute-api.x client=10.0.0.1:1",
            "a\tb",
            "user@host",
            "a,b",
            "a:b",
            "a:",
            ":80",
            "a:123456",
            "a:99999",
            "[zz::1]",
            "[]",
            "[::1",
            "[::1]x",
            "a/b",
            "é.test",
        ] {
            assert!(!is_host(bad.as_bytes()), "{bad}");
        }
    }
}
