//! The leader of a flight: fetches from upstream (conditionally when it holds a
//! stale entry) and decides what becomes of the answer: a refreshed entry (304), a
//! new entry streamed while it is stored, a stale answer on error, or a response
//! that only passes through.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderName, Request, Response, StatusCode, header};
use portico_config::CacheSettings;

use super::ResponseCache;
use super::entry::{Exchange, Freshness, Slot, Stored, VaryMarker};
use super::fill::{Budget, Fill, FillResult, FlightEnd, LeaderGuard, Outcome, Role, run_fill};
use super::key::{KeyText, hash_of, path_hash};
use super::phase::{Found, Job, ttl_of};
use super::respond::{Fwd, Member, from_entry, mark};
use super::rules::{self, CacheControl, StoreContext};
use super::store::Stamp;
use crate::body::{Body, empty};
use crate::error::GatewayError;
use crate::gateway::forward_timed;
use crate::log::AccessRecord;
use crate::upstream::Upstream;

/// What a fill reserves beyond its body: its buffer, the pieces' handles
/// (1024 pieces at [`super::entry::PIECE_COST`]), its task and head. A fill
/// whose pieces cost more stops being storable.
pub(crate) const FILL_COST: u64 = 64 * 1024;

/// A body may come in a piece per this many bytes at no cost beyond its
/// reservation: TCP reads and HTTP/2 frames are larger, so a large object
/// is not refused for the number of its pieces, while one sent in tiny
/// chunks still outgrows its room.
const BYTES_PER_FREE_PIECE: u64 = 512;

/// What a fill of a `body`-byte object reserves: the body, [`FILL_COST`],
/// and the pieces it may come in ([`BYTES_PER_FREE_PIECE`]).
pub(crate) fn fill_room(body: u64) -> u64 {
    body.saturating_add(FILL_COST)
        .saturating_add(body / BYTES_PER_FREE_PIECE * super::entry::PIECE_COST)
}

/// Closes the leader's flight with `outcome`, if it leads one.
fn finish(guard: Option<LeaderGuard>, outcome: Outcome) {
    if let Some(g) = guard {
        g.finish(outcome);
    }
}

impl<U: Upstream> Job<'_, U> {
    /// The purges and invalidations of this request's path begun so far.
    pub(crate) fn stamp(&self) -> Stamp {
        let input = self.input();
        self.cache.store.stamp(path_hash(
            &self.cache.store.hasher,
            input.api.as_bytes(),
            input.stage.as_bytes(),
            input.path.as_bytes(),
        ))
    }

    /// Fetches for the cache. `store`: the response may be stored (the client did
    /// not say `no-store`).
    pub(crate) async fn lead(
        &self,
        found: &Found,
        body: Body,
        guard: Option<LeaderGuard>,
        fwd: Fwd,
        store: bool,
        mut record: Option<&mut AccessRecord>,
    ) -> Result<Response<Body>, GatewayError> {
        let stale = found.entry.as_deref();
        let req = self.upstream_request(stale, body, true)?;
        let request_time = SystemTime::now();
        let stamp = self.stamp();
        let (result, latency) =
            forward_timed(&**self.upstream, self.ctx, req, self.cache.waits).await;
        if let Some(r) = record.as_deref_mut() {
            r.integration_latency = Some(latency);
        }
        let failed = match &result {
            Ok(resp) => {
                let s = resp.status();
                s.is_server_error() && !self.settings.statuses.contains(&s.as_u16())
            }
            Err(_) => true,
        };
        if failed {
            let outcome = failure_outcome(&result);
            finish(guard, outcome);
            return self.stale_on_error(found.entry.as_ref(), result, Some(fwd), record);
        }
        let resp = result?;
        match (resp.status(), found.entry.as_ref()) {
            // A 304 for another representation than the one stored may not
            // update it (RFC 9111 §4.3.4): fetch the resource whole instead
            // (that request is unconditional, so this happens once).
            (StatusCode::NOT_MODIFIED, Some(e))
                if !rules::validates(e.etag.as_ref(), resp.headers()) =>
            {
                drop(resp);
                let whole = Found {
                    entry: None,
                    ..found.clone()
                };
                Box::pin(self.lead(&whole, empty(), guard, fwd, store, record)).await
            }
            (StatusCode::NOT_MODIFIED, Some(e)) => {
                let at = (request_time, stamp);
                self.refreshed(resp, e, found, guard, at, store, record)
                    .await
            }
            _ => Ok(self.admit(
                resp,
                found,
                guard,
                fwd,
                store,
                (request_time, stamp),
                record,
            )),
        }
    }

    /// Serves the stale entry when its stale-if-error window allows, else `result`.
    pub(crate) fn stale_on_error(
        &self,
        stale: Option<&Arc<Stored>>,
        result: Result<Response<Body>, GatewayError>,
        fwd: Option<Fwd>,
        record: Option<&mut AccessRecord>,
    ) -> Result<Response<Body>, GatewayError> {
        let status = result.as_ref().ok().map(Response::status);
        let mut record = record;
        if let Some(resp) = self.serve_stale(stale, status, record.as_deref_mut()) {
            return Ok(resp);
        }
        let mut resp = result?;
        if let Some(fwd) = fwd {
            let value = self.member(Member::new(fwd).status(resp.status()), record);
            mark(&mut resp, value);
        }
        Ok(resp)
    }

    /// The stale entry, when its stale-if-error window allows serving it for
    /// an upstream that failed (answering `status`, or not at all).
    pub(crate) fn serve_stale(
        &self,
        stale: Option<&Arc<Stored>>,
        status: Option<StatusCode>,
        record: Option<&mut AccessRecord>,
    ) -> Option<Response<Body>> {
        let now = Instant::now();
        let e = stale.filter(|e| e.within(now, e.stale_if_error))?;
        let mut m = Member::new(Fwd::Stale)
            .ttl(ttl_of(e, now))
            .detail("stale-if-error");
        m.fwd_status = status;
        let value = self.member(m, record);
        Some(from_entry(e, &self.parts.headers, self.head, value))
    }

    /// A 304 for our conditional request: the stored entry is fresh again.
    #[allow(clippy::too_many_arguments)]
    async fn refreshed(
        &self,
        resp: Response<Body>,
        stale: &Arc<Stored>,
        found: &Found,
        guard: Option<LeaderGuard>,
        (request_time, stamp): (SystemTime, Stamp),
        store: bool,
        record: Option<&mut AccessRecord>,
    ) -> Result<Response<Body>, GatewayError> {
        let mut headers = resp.into_parts().0.headers;
        // Cookies a 304 sets are this client's: they go to it, never into
        // the entry every client is served.
        let cookies: Vec<http::HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        let ex = Exchange {
            status: StatusCode::NOT_MODIFIED,
            headers,
            request_time,
            response_time: SystemTime::now(),
            arrived: Instant::now(),
            stamp,
        };
        let entry = Arc::new(stale.freshened(ex, self.settings));
        let mut m = Member::new(Fwd::Stale).status(StatusCode::NOT_MODIFIED);
        // The 304 may also have made the response private, no-store or
        // `Vary: *`: then nothing of it stays shared.
        let cc = CacheControl::parse(&entry.headers);
        // Only what a 304 can change: this request's own Authorization says
        // nothing about an entry an anonymous request stored.
        let ctx = StoreContext {
            authorization: false,
            ..self.store_context()
        };
        match rules::check_storable(entry.status, &entry.headers, &cc, &ctx) {
            // A request that said `no-store` is answered from the refreshed
            // entry, which is not kept (RFC 9111 §5.2.1.5).
            Ok(()) if !store => finish(guard, Outcome::Pass),
            Ok(()) => {
                self.cache
                    .store
                    .insert(found.key, Slot::Entry(Arc::clone(&entry)), stamp)
                    .await;
                finish(guard, Outcome::Entry(Arc::clone(&entry)));
            }
            Err(reason) => {
                self.cache.store.remove(found.key).await;
                finish(guard, Outcome::Pass);
                m = m.detail(reason.as_str());
            }
        }
        let value = self.member(m, record);
        let mut resp = from_entry(&entry, &self.parts.headers, self.head, value);
        for cookie in cookies {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Ok(resp)
    }

    /// A full response: stored while it streams when the rules allow, else passed on.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        resp: Response<Body>,
        found: &Found,
        guard: Option<LeaderGuard>,
        fwd: Fwd,
        store: bool,
        (request_time, stamp): (SystemTime, Stamp),
        record: Option<&mut AccessRecord>,
    ) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let ex = Exchange {
            status: parts.status,
            headers: parts.headers,
            request_time,
            response_time: SystemTime::now(),
            arrived: Instant::now(),
            stamp,
        };
        let verdict = if store {
            self.storable(&ex)
        } else {
            Err("request-no-store")
        };
        let verdict = verdict.and_then(|()| self.reserve(&ex).ok_or("fills-in-flight"));
        let member = Member::new(fwd).status(ex.status);
        let (body, member) = match verdict {
            Ok(reserved) => (
                self.fill(found, &ex, body, guard, reserved),
                member.stored(true),
            ),
            Err(detail) => {
                finish(guard, Outcome::Pass);
                (body, member.detail(detail))
            }
        };
        let body = if self.head { empty() } else { body };
        let mut resp = Response::new(body);
        *resp.status_mut() = ex.status;
        *resp.headers_mut() = ex.headers;
        mark(&mut resp, self.member(member, record));
        resp
    }

    /// `Ok` when the response may be stored; else the reason, for `Cache-Status`.
    fn storable(&self, ex: &Exchange) -> Result<(), &'static str> {
        let cc = CacheControl::parse(&ex.headers);
        rules::check_storable(ex.status, &ex.headers, &cc, &self.store_context())
            .map_err(|r| r.as_str())?;
        if declared_length(&ex.headers).is_some_and(|n| n as u64 > self.object_limit()) {
            return Err(rules::NotStorable::TooLarge.as_str());
        }
        let fresh = Freshness::of(ex, &cc, self.settings);
        let validators =
            ex.headers.contains_key(header::ETAG) || ex.headers.contains_key(header::LAST_MODIFIED);
        let windows = !fresh.stale_if_error.is_zero() || !fresh.stale_while_revalidate.is_zero();
        if fresh.lifetime.is_zero() && !validators && !windows {
            return Err(rules::NotStorable::NoFreshness.as_str());
        }
        Ok(())
    }

    /// What decides, besides the response, whether it may be stored.
    fn store_context(&self) -> StoreContext<'_> {
        StoreContext {
            http_mode: self.settings.mode == portico_config::CacheMode::Http,
            statuses: &self.settings.statuses,
            authorization: self.parts.headers.contains_key(header::AUTHORIZATION),
            authorization_in_key: self
                .settings
                .key_headers
                .iter()
                .any(|h| h == "authorization"),
        }
    }

    /// The largest body this route may store here: its `max_object_bytes`,
    /// but never more than the whole store (a route set above `[cache]
    /// max_bytes` would otherwise reserve more than there is for every body
    /// of unknown length, and cache none).
    fn object_limit(&self) -> u64 {
        self.settings
            .max_object_bytes
            .min(self.cache.store.max_bytes())
    }

    /// The store's room for this response's fill, held until the fill ends:
    /// [`fill_room`] of its declared length, or of the route's largest object
    /// without one (within the store's size).
    fn reserve(&self, ex: &Exchange) -> Option<Reserved> {
        let max = self.object_limit();
        let length = declared_length(&ex.headers).filter(|n| *n as u64 <= max);
        let bytes = fill_room(length.map_or(max, |n| n as u64)).min(self.cache.store.max_bytes());
        self.cache.store.reserve_fill(bytes).then(|| Reserved {
            cache: Arc::clone(self.cache),
            bytes,
            length,
        })
    }

    /// Starts the fill task and returns the leader's own reader of it.
    fn fill(
        &self,
        found: &Found,
        ex: &Exchange,
        body: Body,
        guard: Option<LeaderGuard>,
        reserved: Reserved,
    ) -> Body {
        let vary: Box<[HeaderName]> = rules::vary_names(&ex.headers).into_boxed_slice();
        let input = self.input();
        let hasher = &self.cache.store.hasher;
        let (key, text) = if vary.is_empty() {
            (found.primary, KeyText::build(|t| input.write(t)))
        } else {
            let key = hash_of(hasher, |h| input.write_variant(&vary, h));
            (key, KeyText::build(|t| input.write_variant(&vary, t)))
        };
        // The path hashed when the request went upstream (`lead`).
        let path = ex.stamp.path;
        let budget = Budget {
            limit: self.object_limit(),
            room: reserved.bytes,
        };
        let fill = Fill::new(
            ex.status,
            ex.headers.clone(),
            text.clone(),
            vary.clone(),
            reserved.length,
            budget,
        );
        let reader = if self.head { None } else { fill.reader() };
        let task = FillTask {
            cache: Arc::clone(self.cache),
            settings: Arc::clone(self.settings),
            fill: Arc::clone(&fill),
            key,
            primary: found.primary,
            text,
            path,
            vary,
            ex: ex.clone_head(),
            end: guard.map(|g| g.stream(&fill)),
            reserved,
        };
        tokio::spawn(task.run(body));
        reader.unwrap_or_else(empty)
    }

    /// Starts a background revalidation of a stale entry unless one is running.
    pub(crate) fn refresh_in_background(&self, found: &Found) {
        let Role::Lead(guard) = self.cache.flights.join(found.key, self.stamp()) else {
            return;
        };
        let cache = Arc::clone(self.cache);
        let upstream = Arc::clone(self.upstream);
        let ctx = self.ctx.clone();
        let settings = Arc::clone(self.settings);
        let mut head = Request::new(());
        *head.uri_mut() = self.parts.uri.clone();
        *head.headers_mut() = self.parts.headers.clone();
        let (parts, ()) = head.into_parts();
        let found = found.clone();
        tokio::spawn(async move {
            let job = Job {
                cache: &cache,
                upstream: &upstream,
                ctx: &ctx,
                settings: &settings,
                parts: &parts,
                head: true,
            };
            if let Err(err) = job
                .lead(&found, empty(), Some(guard), Fwd::Stale, true, None)
                .await
            {
                tracing::debug!(%err, "background revalidation failed");
            }
        });
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<usize> {
    let len = crate::headers::content_length(headers).ok().flatten()?;
    usize::try_from(len).ok()
}

fn failure_outcome(result: &Result<Response<Body>, GatewayError>) -> Outcome {
    match result {
        // The leader's own fault (its body too large or cut short): the
        // followers' requests are not at fault, and go again.
        Err(e) if e.source_of == crate::error::ErrorSource::Client => Outcome::Abandoned,
        Err(e) => Outcome::Failed(e.kind.clone(), e.source_of),
        // A 5xx the route does not cache: followers serve their stale entry
        // if they may, else fetch on their own.
        Ok(resp) => Outcome::ServerError(resp.status()),
    }
}

impl Exchange {
    fn clone_head(&self) -> Exchange {
        Exchange {
            status: self.status,
            headers: self.headers.clone(),
            request_time: self.request_time,
            response_time: self.response_time,
            arrived: self.arrived,
            stamp: self.stamp,
        }
    }
}

/// Reads a response body into its fill and stores the result if it is complete.
struct FillTask {
    cache: Arc<ResponseCache>,
    settings: Arc<CacheSettings>,
    fill: Arc<Fill>,
    key: u64,
    primary: u64,
    text: KeyText,
    path: u64,
    vary: Box<[HeaderName]>,
    ex: Exchange,
    /// Ends the flight when dropped: after the entry is stored.
    end: Option<FlightEnd>,
    /// Released once the body turns out too large to store.
    reserved: Reserved,
}

/// Bytes of the store's fill budget a fill holds until it ends.
struct Reserved {
    cache: Arc<ResponseCache>,
    bytes: u64,
    /// The response's declared length, when within the route's largest object.
    length: Option<usize>,
}

impl Reserved {
    /// Gives the budget back now (once: the drop gives back nothing more).
    fn release(&mut self) {
        self.cache
            .store
            .release_fill(std::mem::take(&mut self.bytes));
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.release();
    }
}

impl FillTask {
    async fn run(mut self, body: Body) {
        let fill = Arc::clone(&self.fill);
        // What the budget reserved for a stored object: a fill past it
        // buffers one window at most, and 256 such fills held open by
        // clients that do not read would otherwise take the whole budget.
        let reserved = &mut self.reserved;
        let result = run_fill(&fill, body, || reserved.release()).await;
        if let FillResult::Complete(body) = result {
            // An upstream stream that ended cleanly but short of (or past)
            // its Content-Length: its readers must not see a clean end.
            let len: usize = body.iter().map(bytes::Bytes::len).sum();
            if declared_length(&self.ex.headers).is_some_and(|n| n != len) {
                tracing::debug!(
                    "response body shorter or longer than its Content-Length; not stored"
                );
                return fill.cut_short();
            }
            self.store(body).await;
            fill.close();
        } else {
            tracing::debug!(?result, "response not stored");
        }
    }

    /// Stores a complete body (its readers are told it ended afterwards).
    async fn store(self, body: Box<[bytes::Bytes]>) {
        let FillTask {
            cache,
            settings,
            key,
            primary,
            text,
            path,
            vary,
            ex,
            end,
            ..
        } = self;
        let stamp = ex.stamp;
        let primary_text = text.without_variant();
        let stored = match Stored::new(text, path, ex, body, &settings) {
            Ok(s) => Arc::new(s),
            Err(reason) => return tracing::debug!(reason = reason.as_str(), "response not stored"),
        };
        if !vary.is_empty() {
            let marker = VaryMarker::new(primary_text, path, vary.into_vec(), stored.keep());
            cache
                .store
                .insert(primary, Slot::Vary(Arc::new(marker)), stamp)
                .await;
        }
        if !cache.store.insert(key, Slot::Entry(stored), stamp).await {
            tracing::debug!(
                "a purge or invalidation began while the response was fetched; not stored"
            );
        }
        drop(end);
    }
}
