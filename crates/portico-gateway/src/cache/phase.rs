//! The cache phase: lookup, then a hit, a stale answer, a revalidation or a miss.
//!
//! ```text
//! serve ─ route not cached / other method ─► forward (unsafe + 2xx/3xx: invalidate path)
//!       ├ Range, If-Match, If-Unmodified-Since, If-Range ─► forward (fwd=bypass)
//!       ├ client no-cache / max-age=0 ─► per `client_invalidation`: ignore, 403, or refresh
//!       └ lookup (primary key; a Vary marker adds the varying headers)
//!           ├ fresh ─► answer (304 for a matching conditional request)
//!           ├ stale within stale-while-revalidate ─► answer stale, refresh in background
//!           └ stale or missing ─► join the key's flight
//!                 ├ leader ─► fetch (conditional if stale) ─► store / refresh / stale-if-error
//!                 └ follower ─► wait for the head, then stream the leader's fill
//! ```

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, header};
use portico_config::{CacheSettings, ClientInvalidation};

use super::ResponseCache;
use super::entry::{Slot, Stored, VaryMarker};
use super::fill::{Flight, Outcome, Role};
use super::key::{Addressed, KeyInput, hash_of};
use super::respond::{Fwd, Member, from_entry, mark};
use super::rules::RequestDirectives;
use crate::body::{Body, empty};
use crate::context::RequestCtx;
use crate::error::{ErrorKind, GatewayError};
use crate::gateway::forward_timed;
use crate::log::AccessRecord;
use crate::upstream::Upstream;

/// Followers retry this often when leaders keep going away before their head.
const MAX_ROUNDS: usize = 4;

/// What a lookup found for a request.
#[derive(Clone)]
pub(crate) struct Found {
    /// The key without `Vary`.
    pub primary: u64,
    /// The key the entry is (or would be) stored under, and its flight's key.
    pub key: u64,
    /// The varying headers, when a response of the resource had `Vary`.
    pub vary: Option<Arc<VaryMarker>>,
    pub entry: Option<Arc<Stored>>,
}

/// Everything one cached exchange needs, borrowed from the request (or owned by a
/// background refresh).
pub(crate) struct Job<'a, U> {
    pub cache: &'a Arc<ResponseCache>,
    pub upstream: &'a Arc<U>,
    pub ctx: &'a RequestCtx,
    pub settings: &'a Arc<CacheSettings>,
    pub parts: &'a Parts,
    /// The client asked with HEAD: answer without a body.
    pub head: bool,
}

impl<U: Upstream> Job<'_, U> {
    pub(crate) fn input(&self) -> KeyInput<'_> {
        KeyInput {
            api: &self.ctx.api.name,
            stage: &self.ctx.stage.name,
            path: self.parts.uri.path(),
            query: self.parts.uri.query(),
            headers: &self.parts.headers,
            settings: self.settings,
            principal: self
                .ctx
                .route()
                .integration
                .depends_on_caller()
                .then(|| self.ctx.principal.as_ref().and_then(|p| p.api_key_id()))
                .flatten(),
            addressed: Addressed {
                scheme: self.ctx.conn.scheme(),
                host: &self.ctx.host,
                port: self.ctx.addressed_port(),
            },
        }
    }

    pub(crate) fn member(&self, m: Member, record: Option<&mut AccessRecord>) -> http::HeaderValue {
        if let Some(r) = record {
            r.cache = m.fwd.as_str();
        }
        self.cache.names.value(&m)
    }
}

impl ResponseCache {
    /// The cache phase. Routes without cache settings (and methods the route does
    /// not cache) are forwarded as they are.
    pub(crate) async fn serve<U: Upstream>(
        self: &Arc<Self>,
        upstream: &Arc<U>,
        ctx: &RequestCtx,
        req: Request<Body>,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let Some(settings) = ctx.settings().cache.as_ref() else {
            return self.uncached(upstream, ctx, req, record).await;
        };
        let head = req.method() == Method::HEAD;
        if !(req.method() == Method::GET || head && settings.head) {
            let mut resp = self.uncached(upstream, ctx, req, record).await?;
            record.cache = Fwd::Method.as_str();
            mark(&mut resp, self.names.value(&Member::new(Fwd::Method)));
            return Ok(resp);
        }
        if bypasses(req.headers()) || sends_a_body(&req) {
            let mut resp = self.uncached(upstream, ctx, req, record).await?;
            record.cache = Fwd::Bypass.as_str();
            mark(&mut resp, self.names.value(&Member::new(Fwd::Bypass)));
            return Ok(resp);
        }
        let directives = RequestDirectives::parse(req.headers());
        let refresh = client_refresh(settings, directives, ctx, req.headers())?;
        let (parts, body) = req.into_parts();
        let job = Job {
            cache: self,
            upstream,
            ctx,
            settings,
            parts: &parts,
            head,
        };
        job.run(body, refresh, directives.no_store, record).await
    }

    /// Forwards a request the cache does not answer; a successful unsafe request
    /// invalidates what is stored for its path.
    async fn uncached<U: Upstream>(
        &self,
        upstream: &Arc<U>,
        ctx: &RequestCtx,
        req: Request<Body>,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let path = is_unsafe(req.method()).then(|| req.uri().path().to_owned());
        let (result, latency) = forward_timed(&**upstream, ctx, req, self.waits).await;
        record.integration_latency = Some(latency);
        let resp = result?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        if let Some(path) = path.filter(|_| ok) {
            self.invalidate_path(&ctx.api.name, &ctx.stage.name, &path)
                .await;
        }
        Ok(resp)
    }

    pub(crate) async fn lookup(&self, input: &KeyInput<'_>) -> Found {
        let hasher = &self.store.hasher;
        let primary = hash_of(hasher, |h| input.write(h));
        let mut found = Found {
            primary,
            key: primary,
            vary: None,
            entry: None,
        };
        match self.store.get(primary).await {
            Some(Slot::Entry(e)) if e.key.matches(|c| input.write(c)) => found.entry = Some(e),
            Some(Slot::Vary(m)) if m.key.matches(|c| input.write(c)) => {
                found.key = hash_of(hasher, |h| input.write_variant(&m.names, h));
                found.entry = match self.store.get(found.key).await {
                    Some(Slot::Entry(e)) if e.key.matches(|c| input.write_variant(&m.names, c)) => {
                        Some(e)
                    }
                    _ => None,
                };
                found.vary = Some(m);
            }
            _ => {}
        }
        found
    }
}

impl<U: Upstream> Job<'_, U> {
    async fn run(
        &self,
        body: Body,
        refresh: bool,
        no_store: bool,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, GatewayError> {
        for _ in 0..MAX_ROUNDS {
            let found = self.cache.lookup(&self.input()).await;
            let fwd = match (&found.entry, &found.vary) {
                _ if refresh => Fwd::Request,
                (Some(e), _) => match self.answer_stored(e, &found, no_store, record) {
                    Some(resp) => return Ok(resp),
                    None => Fwd::Stale,
                },
                (None, Some(_)) => Fwd::VaryMiss,
                (None, None) => Fwd::Miss,
            };
            // A client that may refresh, or forbids storing, gets its own fetch.
            if refresh || no_store {
                return self
                    .lead(&found, body, None, fwd, !no_store, Some(record))
                    .await;
            }
            match self.cache.flights.join(found.key, self.stamp()) {
                Role::Lead(guard) => {
                    return self
                        .lead(&found, body, Some(guard), fwd, true, Some(record))
                        .await;
                }
                Role::Follow(flight) => match self.follow(&flight, &found, record).await {
                    Followed::Answer(resp) => return resp,
                    Followed::Retry => {}
                    Followed::Own => break,
                },
            }
        }
        self.own_fetch(body, record).await
    }

    /// A fresh entry answers; a stale one within its stale-while-revalidate window
    /// answers too and starts a background refresh. `None`: go upstream.
    fn answer_stored(
        &self,
        e: &Arc<Stored>,
        found: &Found,
        no_store: bool,
        record: &mut AccessRecord,
    ) -> Option<Response<Body>> {
        let now = Instant::now();
        if e.is_fresh(now) {
            let status = self.member(Member::new(Fwd::Hit), Some(record));
            return Some(from_entry(e, &self.parts.headers, self.head, status));
        }
        if !e.within(now, e.stale_while_revalidate) {
            return None;
        }
        // Not for a request that said `no-store`: the refresh would store.
        if !no_store {
            self.refresh_in_background(found);
        }
        let ttl = ttl_of(e, now);
        let m = Member::new(Fwd::HitStale)
            .ttl(ttl)
            .detail("stale-while-revalidate");
        let status = self.member(m, Some(record));
        Some(from_entry(e, &self.parts.headers, self.head, status))
    }

    /// Waits for the flight's leader and acts on what it found.
    async fn follow(&self, flight: &Flight, found: &Found, record: &mut AccessRecord) -> Followed {
        let timeout = self.ctx.settings().timeout;
        let Ok(outcome) = tokio::time::timeout(timeout, flight.wait()).await else {
            let err = GatewayError::new(
                ErrorKind::GatewayTimeout,
                crate::error::ErrorSource::Integration,
            );
            return Followed::Answer(Err(err));
        };
        match outcome {
            Outcome::Stream(fill) if fill.fits(&self.input()) => {
                let body = if self.head {
                    Some(empty())
                } else {
                    fill.reader()
                };
                let Some(body) = body else {
                    return Followed::Own;
                };
                let mut resp = Response::new(body);
                *resp.status_mut() = fill.status;
                *resp.headers_mut() = fill.headers.clone();
                mark(
                    &mut resp,
                    self.member(Member::new(Fwd::Coalesced), Some(record)),
                );
                Followed::Answer(Ok(resp))
            }
            Outcome::Entry(e) => {
                let status = self.member(Member::new(Fwd::CoalescedStale), Some(record));
                Followed::Answer(Ok(from_entry(&e, &self.parts.headers, self.head, status)))
            }
            Outcome::Failed(kind, source) => {
                let err = GatewayError::new(kind, source);
                Followed::Answer(self.stale_on_error(
                    found.entry.as_ref(),
                    Err(err),
                    None,
                    Some(record),
                ))
            }
            Outcome::ServerError(status) => {
                match self.serve_stale(found.entry.as_ref(), Some(status), Some(record)) {
                    Some(resp) => Followed::Answer(Ok(resp)),
                    None => Followed::Own,
                }
            }
            Outcome::Stream(_) | Outcome::Pass => Followed::Own,
            Outcome::Abandoned => Followed::Retry,
        }
    }

    /// Forwards the client's request as it is, storing nothing (the shared fetch
    /// could not be used for it).
    async fn own_fetch(
        &self,
        body: Body,
        record: &mut AccessRecord,
    ) -> Result<Response<Body>, GatewayError> {
        let req = self.upstream_request(None, body, false)?;
        let (result, latency) =
            forward_timed(&**self.upstream, self.ctx, req, self.cache.waits).await;
        record.integration_latency = Some(latency);
        let mut resp = result?;
        let m = Member::new(Fwd::Miss)
            .status(resp.status())
            .detail("uncoalesced");
        let status = self.member(m, Some(record));
        mark(&mut resp, status);
        Ok(resp)
    }

    /// The request sent upstream: the client's, with GET for HEAD (so that the
    /// response can be stored) and, when revalidating, our validators instead of
    /// the client's preconditions (the client's are answered from the entry).
    pub(crate) fn upstream_request(
        &self,
        stale: Option<&Stored>,
        body: Body,
        as_get: bool,
    ) -> Result<Request<Body>, GatewayError> {
        let mut req = Request::new(body);
        *req.method_mut() = if as_get {
            Method::GET
        } else {
            self.parts.method.clone()
        };
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        let empty = http_body::Body::is_end_stream(req.body());
        let headers = req.headers_mut();
        *headers = self.parts.headers.clone();
        // A request sent again without the client's body (a refetch)
        // declares none: the backend would wait for it, or read the next
        // request on its connection as this one's.
        if empty {
            headers.remove(header::CONTENT_LENGTH);
            headers.remove(header::TRANSFER_ENCODING);
        }
        if !as_get {
            return Ok(req);
        }
        headers.remove(header::IF_NONE_MATCH);
        headers.remove(header::IF_MODIFIED_SINCE);
        if let Some(e) = stale {
            if let Some(etag) = &e.etag {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = &e.last_modified {
                headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
            }
        }
        Ok(req)
    }
}

pub(crate) enum Followed {
    Answer(Result<Response<Body>, GatewayError>),
    /// The leader left before its head: look up again.
    Retry,
    /// The leader's response cannot serve this request: fetch alone.
    Own,
}

/// Remaining freshness in whole seconds, negative when stale (`ttl` of RFC 9211).
pub(crate) fn ttl_of(e: &Stored, now: Instant) -> i64 {
    let age = e.age(now).as_secs_f64();
    let ttl = e.lifetime.as_secs_f64() - age;
    ttl.floor() as i64
}

/// Requests a cache should not answer or fill: ranges and preconditions that only
/// an origin server evaluates (RFC 9111 §4.3.2 answers only If-None-Match and
/// If-Modified-Since from a cache).
fn bypasses(headers: &HeaderMap) -> bool {
    headers.contains_key(header::RANGE)
        || headers.contains_key(header::IF_MATCH)
        || headers.contains_key(header::IF_UNMODIFIED_SINCE)
        || headers.contains_key(header::IF_RANGE)
}

/// A GET or HEAD that sends a body: the key does not hold it, and a backend
/// that reads it (many do, whatever the method) would answer by it, so
/// storing the answer would serve one client's body to others. Varnish drops
/// such bodies; passing the request through keeps what the client sent. A
/// body is one still to come: a declared length above 0 with no body was
/// already refused (400, `prepare_request`), and a chunked one's
/// `Transfer-Encoding` is gone by now, as a hop-by-hop header.
fn sends_a_body(req: &Request<Body>) -> bool {
    !http_body::Body::is_end_stream(req.body())
}

fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::DELETE | Method::PATCH
    )
}

/// Whether a client's `no-cache` / `max-age=0` refreshes the entry, per the route's
/// `client_invalidation`: "with key" means a valid API key for the API stage
/// (a mere `x-api-key` header is not one). An unauthorized request never
/// evicts anything.
fn client_refresh(
    settings: &CacheSettings,
    directives: RequestDirectives,
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Result<bool, GatewayError> {
    if !directives.refresh {
        return Ok(false);
    }
    let keyed = || crate::limits::holds_valid_key(ctx, headers);
    let forbidden = || {
        Err(GatewayError::client(ErrorKind::Forbidden)
            .with_cause("Cache-Control invalidation is not allowed for this caller"))
    };
    match settings.client_invalidation {
        ClientInvalidation::Ignore => Ok(false),
        ClientInvalidation::Forbid => forbidden(),
        ClientInvalidation::Allow => Ok(true),
        ClientInvalidation::AllowWithKey => Ok(keyed()),
        ClientInvalidation::AllowWithKeyElseForbid if keyed() => Ok(true),
        ClientInvalidation::AllowWithKeyElseForbid => forbidden(),
    }
}
