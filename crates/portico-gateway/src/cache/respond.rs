//! Answers built from the cache, and the `Cache-Status` field (RFC 9211) that says
//! what this node's cache did.
//!
//! Each node appends one member named `portico-{node id}`. It appends a new field
//! line rather than rewriting the upstream's: lines combine in order, so the first
//! member is the cache closest to the origin and the last the one closest to the
//! client, as §2 requires, and a hit costs no string formatting.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::entry::Stored;
use super::rules;
use crate::body::{Body, BoxError, empty, full};

pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Fields a `304 Not Modified` repeats from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// What the cache did, as the `Cache-Status` parameters say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// Not forwarded: answered from a fresh entry.
    Hit,
    /// Not forwarded: a stale entry served while a background request refreshes it.
    HitStale,
    /// Forwarded together with another request (RFC 9211 `collapsed`): this
    /// one missed and shared the other's fetch.
    Coalesced,
    /// As `Coalesced`, for a stale entry the other request revalidated.
    CoalescedStale,
    /// `fwd=bypass`: the request may not use the cache (Range, preconditions, no-store).
    Bypass,
    /// `fwd=method`: the method is not cached.
    Method,
    /// `fwd=miss`: nothing stored for the key.
    Miss,
    /// `fwd=vary-miss`: stored, but not for these `Vary` header values.
    VaryMiss,
    /// `fwd=stale`: a stale entry was revalidated (or replaced, or served on error).
    Stale,
    /// `fwd=request`: the client asked for a fresh response and may.
    Request,
}

impl Fwd {
    /// The word in logs (`cache` field of the access line).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fwd::Hit => "hit",
            Fwd::HitStale => "hit-stale",
            Fwd::Coalesced => "coalesced",
            Fwd::CoalescedStale => "coalesced-stale",
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::Miss => "miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
        }
    }
}

/// One `Cache-Status` member, built up as the request proceeds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub fwd: Fwd,
    pub fwd_status: Option<StatusCode>,
    pub stored: bool,
    /// Remaining freshness in seconds; negative when stale.
    pub ttl: Option<i64>,
    pub detail: Option<&'static str>,
}

impl Member {
    pub(crate) fn new(fwd: Fwd) -> Member {
        Member {
            fwd,
            fwd_status: None,
            stored: false,
            ttl: None,
            detail: None,
        }
    }

    pub(crate) fn status(mut self, status: StatusCode) -> Member {
        self.fwd_status = Some(status);
        self
    }

    pub(crate) fn stored(mut self, stored: bool) -> Member {
        self.stored = stored;
        self
    }

    pub(crate) fn ttl(mut self, ttl: i64) -> Member {
        self.ttl = Some(ttl);
        self
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> Member {
        self.detail = Some(detail);
        self
    }
}

/// The node's member name and the values that never change.
pub(crate) struct StatusNames {
    name: Box<str>,
    hit: HeaderValue,
    coalesced: HeaderValue,
    coalesced_stale: HeaderValue,
}

impl StatusNames {
    pub(crate) fn new(node_id: &str) -> StatusNames {
        let name: Box<str> = format!("portico-{node_id}").into();
        let value = |params: &str| {
            HeaderValue::from_str(&format!("{name}; {params}"))
                .unwrap_or_else(|_| HeaderValue::from_static("portico; hit"))
        };
        StatusNames {
            hit: value("hit"),
            coalesced: value("fwd=miss; collapsed"),
            coalesced_stale: value("fwd=stale; collapsed"),
            name,
        }
    }

    /// The field value of `m`. A plain hit is a shared, preformatted value.
    pub(crate) fn value(&self, m: &Member) -> HeaderValue {
        let plain = m.ttl.is_none() && m.detail.is_none();
        match m.fwd {
            Fwd::Hit if plain => return self.hit.clone(),
            Fwd::Coalesced => return self.coalesced.clone(),
            Fwd::CoalescedStale => return self.coalesced_stale.clone(),
            _ => {}
        }
        let mut s = String::with_capacity(80);
        s.push_str(&self.name);
        match m.fwd {
            Fwd::Hit | Fwd::HitStale => s.push_str("; hit"),
            fwd => {
                let _ = write!(s, "; fwd={}", fwd.as_str());
            }
        }
        if let Some(status) = m.fwd_status {
            let _ = write!(s, "; fwd-status={}", status.as_u16());
        }
        if m.stored {
            s.push_str("; stored");
        }
        if let Some(ttl) = m.ttl {
            let _ = write!(s, "; ttl={ttl}");
        }
        if let Some(detail) = m.detail {
            let _ = write!(s, "; detail={detail}");
        }
        HeaderValue::from_str(&s).unwrap_or_else(|_| self.hit.clone())
    }
}

/// Adds this node's `Cache-Status` member to a response.
pub(crate) fn mark<B>(resp: &mut Response<B>, value: HeaderValue) {
    resp.headers_mut().append(&CACHE_STATUS, value);
}

/// The answer from a stored entry: `304` for a matching conditional request, else
/// the stored response (headers only for HEAD), with the current `Age`.
pub(crate) fn from_entry(
    entry: &Arc<Stored>,
    request: &HeaderMap,
    head: bool,
    status: HeaderValue,
) -> Response<Body> {
    // Preconditions are evaluated only for a response that would be 2xx
    // (RFC 9110 §13.2.1): a stored 404 or 301 is no "not modified" of the
    // 200 the client holds.
    let not_modified = entry.status.is_success()
        && rules::not_modified(request, entry.etag.as_ref(), entry.last_modified.as_ref());
    let mut resp = if not_modified {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        for name in &NOT_MODIFIED_FIELDS {
            for v in entry.headers.get_all(name) {
                r.headers_mut().append(name, v.clone());
            }
        }
        r
    } else {
        let body = if head { empty() } else { pieces(entry) };
        let mut r = Response::new(body);
        *r.status_mut() = entry.status;
        *r.headers_mut() = entry.headers.clone();
        r
    };
    let age = entry.age(Instant::now()).as_secs();
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(age));
    mark(&mut resp, status);
    resp
}

/// The stored body: one piece as a plain full body, several as [`Pieces`].
fn pieces(entry: &Arc<Stored>) -> Body {
    match &*entry.body {
        [one] => full(one.clone()),
        _ => Body::new(Pieces {
            entry: Arc::clone(entry),
            next: 0,
        }),
    }
}

/// Streams an entry's pieces without copying them or allocating per piece.
struct Pieces {
    entry: Arc<Stored>,
    next: usize,
}

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let piece = self.entry.body.get(self.next).cloned();
        self.next += 1;
        Poll::Ready(piece.map(|p| Ok(http_body::Frame::data(p))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.entry.body.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest: usize = self.entry.body.iter().skip(self.next).map(Bytes::len).sum();
        http_body::SizeHint::with_exact(rest as u64)
    }
}
