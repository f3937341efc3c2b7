//! The HTTP caching rules of RFC 9111 for a shared cache, with no I/O and no clock:
//! callers pass header maps and times in, decisions come out.
//!
//! * `Cache-Control` parsing ([`CacheControl::parse`]): every field line, directive
//!   names case-insensitive, values as token or quoted-string. A directive that
//!   cannot be parsed is ignored (§5.2); a delta-seconds value that is malformed, or
//!   given twice with different values, is *invalid* and makes the response stale
//!   (§4.2.1: "consider responses that have invalid freshness information to be
//!   stale"), the conservative reading of a conflict.
//! * Storability for a shared cache (§3, §3.5): see [`check_storable`].
//! * Freshness lifetime (§4.2.1): `s-maxage` > `max-age` > `Expires` − `Date`;
//!   no heuristic freshness (§4.2.2 allows it; we do not guess).
//! * Age (§4.2.3): [`initial_age`].
//! * Conditional requests a cache answers itself (RFC 9110 §13.2.2):
//!   [`not_modified`].

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode, header};

/// RFC 9111 §1.2.2: delta-seconds too large to represent count as 2^31.
const DELTA_SECONDS_CAP: u64 = 1 << 31;

/// A delta-seconds directive as received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Seconds {
    #[default]
    Absent,
    Value(u64),
    /// Malformed, missing its value, or given twice with different values.
    Invalid,
}

impl Seconds {
    /// The value; `Invalid` counts as 0 (stale at once), `Absent` as `None`.
    pub fn or_zero(self) -> Option<u64> {
        match self {
            Seconds::Absent => None,
            Seconds::Value(v) => Some(v),
            Seconds::Invalid => Some(0),
        }
    }

    /// A new occurrence of the same directive.
    fn merge(self, new: Seconds) -> Seconds {
        match (self, new) {
            (Seconds::Absent, n) => n,
            (Seconds::Value(a), Seconds::Value(b)) if a == b => self,
            _ => Seconds::Invalid,
        }
    }
}

/// The directives of a `Cache-Control` field that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// `no-cache`, qualified or not (a qualified one is treated as unqualified:
    /// stricter, and RFC 9111 §5.2.2.4 allows it).
    pub no_cache: bool,
    /// `private`, qualified or not (likewise).
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Seconds,
    pub s_maxage: Seconds,
    pub stale_while_revalidate: Seconds,
    pub stale_if_error: Seconds,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            for (name, value) in Directives::new(line.as_bytes()) {
                cc.apply(name, value);
            }
        }
        cc
    }

    fn apply(&mut self, name: &[u8], value: Option<&[u8]>) {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("max-age") {
            self.max_age = self.max_age.merge(delta_seconds(value));
        } else if is("s-maxage") {
            self.s_maxage = self.s_maxage.merge(delta_seconds(value));
        } else if is("stale-while-revalidate") {
            let v = delta_seconds(value);
            self.stale_while_revalidate = self.stale_while_revalidate.merge(v);
        } else if is("stale-if-error") {
            self.stale_if_error = self.stale_if_error.merge(delta_seconds(value));
        }
        // Anything else (extensions, min-fresh, ...) is ignored, as §5.2.3 says.
    }

    /// A shared cache may not serve this response stale (§4.2.4): `no-cache`,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage` forbid it.
    pub fn forbids_stale(&self) -> bool {
        self.no_cache
            || self.must_revalidate
            || self.proxy_revalidate
            || self.s_maxage != Seconds::Absent
    }
}

/// `1*DIGIT`, or the same in quotes (§5.2: recipients accept both forms).
fn delta_seconds(value: Option<&[u8]>) -> Seconds {
    let Some(v) = value else {
        return Seconds::Invalid;
    };
    let v = v
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v);
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Seconds::Invalid;
    }
    let n = v.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    Seconds::Value(n.unwrap_or(DELTA_SECONDS_CAP).min(DELTA_SECONDS_CAP))
}

/// Iterates `name[=value]` directives of one field line. Malformed pieces are
/// skipped up to the next comma outside a quoted string.
struct Directives<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Directives<'a> {
    fn new(s: &'a [u8]) -> Self {
        Directives { s, i: 0 }
    }

    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.i)
            .is_some_and(|b| *b == b' ' || *b == b'\t')
        {
            self.i += 1;
        }
    }

    fn token(&mut self) -> &'a [u8] {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|b| is_tchar(*b)) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    /// A quoted string including its quotes; `None` when unterminated.
    fn quoted(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.i += 1;
        while let Some(&b) = self.s.get(self.i) {
            self.i += 1;
            match b {
                b'\\' => self.i += 1,
                b'"' => return self.s.get(start..self.i),
                _ => {}
            }
        }
        None
    }

    /// Skips to just after the next comma outside quotes.
    fn skip_to_comma(&mut self) {
        let mut quoted = false;
        while let Some(&b) = self.s.get(self.i) {
            self.i += 1;
            match b {
                b'\\' if quoted => self.i += 1,
                b'"' => quoted = !quoted,
                b',' if !quoted => return,
                _ => {}
            }
        }
    }

    fn value(&mut self) -> Option<Option<&'a [u8]>> {
        if self.s.get(self.i) != Some(&b'=') {
            return Some(None);
        }
        self.i += 1;
        self.skip_ws();
        if self.s.get(self.i) == Some(&b'"') {
            return self.quoted().map(Some);
        }
        let v = self.token();
        (!v.is_empty()).then_some(Some(v))
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.skip_ws();
            while self.s.get(self.i) == Some(&b',') {
                self.i += 1;
                self.skip_ws();
            }
            if self.i >= self.s.len() {
                return None;
            }
            let name = self.token();
            let value = if name.is_empty() { None } else { self.value() };
            self.skip_ws();
            let at_end = matches!(self.s.get(self.i), None | Some(b','));
            match value {
                Some(value) if at_end => return Some((name, value)),
                _ => self.skip_to_comma(),
            }
        }
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Why a response is not stored. Reaches `Cache-Status` (`detail=`) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Status,
    NoStore,
    Private,
    /// The request had `Authorization` and the response does not allow sharing.
    Authorization,
    VaryStar,
    SetCookie,
    /// No explicit lifetime, no validators, nothing a stale window could serve.
    NoFreshness,
    TooLarge,
}

impl NotStorable {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::VaryStar => "vary-star",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::NoFreshness => "no-freshness",
            NotStorable::TooLarge => "too-large",
        }
    }
}

/// What storability depends on besides the response.
#[derive(Debug, Clone, Copy)]
pub struct StoreContext<'a> {
    /// `true`: RFC 9111 semantics; `false`: `ttl` mode.
    pub http_mode: bool,
    /// Statuses the route allows to be stored.
    pub statuses: &'a [u16],
    /// The request carried `Authorization`.
    pub authorization: bool,
    /// `authorization` is part of the cache key, so every credential has its own entries.
    pub authorization_in_key: bool,
}

/// Whether a shared cache may store this response to a GET (RFC 9111 §3).
///
/// Both modes refuse `no-store`, `private`, `Vary: *` and `Set-Cookie` (storing a
/// cookie in a shared cache would hand one user's session to everyone). The
/// `Authorization` rule (§3.5) applies in both modes unless `authorization` is a key
/// header.
pub fn check_storable(
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    ctx: &StoreContext<'_>,
) -> Result<(), NotStorable> {
    if !ctx.statuses.contains(&status.as_u16()) {
        return Err(NotStorable::Status);
    }
    if cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    let shareable = cc.public || cc.must_revalidate || cc.s_maxage != Seconds::Absent;
    if ctx.authorization && !ctx.authorization_in_key && !shareable {
        return Err(NotStorable::Authorization);
    }
    if vary_star(headers) {
        return Err(NotStorable::VaryStar);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    Ok(())
}

/// `Vary: *`, or a member that is no header name: a response varying on
/// what no request can be matched by is not stored (dropping the member
/// would serve it to requests it does not fit).
fn vary_star(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|n| n == b"*" || !n.is_empty() && http::HeaderName::from_bytes(n).is_err())
}

/// Header names in `Vary`, lower case, sorted and unique.
pub fn vary_names(headers: &HeaderMap) -> Vec<http::HeaderName> {
    let mut names: Vec<http::HeaderName> = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// An `Expires` (or other HTTP-date) field: absent, a time, or invalid (which
/// §5.3 says means "already expired").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateField {
    Absent,
    At(SystemTime),
    Invalid,
}

/// Reads a date field; several lines that disagree are invalid.
pub fn date_field(headers: &HeaderMap, name: header::HeaderName) -> DateField {
    let mut out = DateField::Absent;
    for v in headers.get_all(name) {
        let parsed = v
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
            .map_or(DateField::Invalid, DateField::At);
        out = match out {
            DateField::Absent => parsed,
            same if same == parsed => same,
            _ => DateField::Invalid,
        };
    }
    out
}

fn date_value(headers: &HeaderMap) -> Option<SystemTime> {
    match date_field(headers, header::DATE) {
        DateField::At(t) => Some(t),
        DateField::Absent | DateField::Invalid => None,
    }
}

/// The explicit freshness lifetime (§4.2.1), or `None` when the response gives
/// none. `response_time` stands in for a missing `Date`.
pub fn freshness_lifetime(
    headers: &HeaderMap,
    cc: &CacheControl,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or_zero() {
        return Some(Duration::from_secs(s));
    }
    if let Some(s) = cc.max_age.or_zero() {
        return Some(Duration::from_secs(s));
    }
    match date_field(headers, header::EXPIRES) {
        DateField::Absent => None,
        DateField::Invalid => Some(Duration::ZERO),
        DateField::At(expires) => {
            let date = date_value(headers).unwrap_or(response_time);
            Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
        }
    }
}

/// `corrected_initial_age` of §4.2.3: the age the response already had when it
/// arrived. The current age is this plus the time the entry has been resident.
pub fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, |s| {
            Duration::from_secs(s.min(DELTA_SECONDS_CAP))
        });
    let apparent_age = date_value(headers)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value + response_delay)
}

/// What a client's request `Cache-Control` asks of the cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-cache` or `max-age=0`: the client asks for a response from upstream.
    pub refresh: bool,
    /// `no-store`: nothing about this exchange may be stored.
    pub no_store: bool,
}

impl RequestDirectives {
    pub fn parse(headers: &HeaderMap) -> RequestDirectives {
        let mut out = RequestDirectives::default();
        for line in headers.get_all(header::CACHE_CONTROL) {
            for (name, value) in Directives::new(line.as_bytes()) {
                if name.eq_ignore_ascii_case(b"no-cache") {
                    out.refresh = true;
                } else if name.eq_ignore_ascii_case(b"no-store") {
                    out.no_store = true;
                } else if name.eq_ignore_ascii_case(b"max-age") {
                    out.refresh |= delta_seconds(value) == Seconds::Value(0);
                }
            }
        }
        // HTTP/1.0 `Pragma: no-cache` means the same when Cache-Control is absent (§5.4).
        if !headers.contains_key(header::CACHE_CONTROL) {
            out.refresh |= headers.get_all(header::PRAGMA).iter().any(|v| {
                Directives::new(v.as_bytes()).any(|(n, _)| n.eq_ignore_ascii_case(b"no-cache"))
            });
        }
        out
    }
}

/// Whether the client's conditional GET/HEAD is answered `304 Not Modified` by a
/// stored response with these validators (RFC 9110 §13.2.2: `If-None-Match` wins
/// over `If-Modified-Since`; weak comparison for `If-None-Match`).
pub fn not_modified(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<&HeaderValue>,
) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = etag else {
            return false;
        };
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|v| etag_list_matches(v.as_bytes(), etag.as_bytes()));
    }
    let date = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    };
    let since = request.get(header::IF_MODIFIED_SINCE).and_then(date);
    match (since, last_modified.and_then(date)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// `*` or a list of entity-tags containing one weakly equal to `etag`.
fn etag_list_matches(list: &[u8], etag: &[u8]) -> bool {
    if list.trim_ascii() == b"*" {
        return true;
    }
    let ours = opaque(etag);
    let mut rest = list;
    loop {
        rest = rest.trim_ascii_start();
        rest = rest.strip_prefix(b",").unwrap_or(rest).trim_ascii_start();
        if rest.is_empty() {
            return false;
        }
        let body = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(inner) = body.strip_prefix(b"\"") else {
            return false;
        };
        let Some(end) = inner.iter().position(|b| *b == b'"') else {
            return false;
        };
        if Some(&inner[..end]) == ours {
            return true;
        }
        rest = &inner[end + 1..];
    }
}

/// The opaque part of an entity-tag (between the quotes), ignoring `W/`.
fn opaque(etag: &[u8]) -> Option<&[u8]> {
    let e = etag.trim_ascii();
    let e = e.strip_prefix(b"W/").unwrap_or(e);
    e.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// Whether a `304` from upstream may freshen the stored response (§4.3.4): it names
/// no entity-tag, or the stored one (weakly).
pub fn validates(stored_etag: Option<&HeaderValue>, response: &HeaderMap) -> bool {
    match (response.get(header::ETAG), stored_etag) {
        (None, _) => true,
        (Some(new), Some(old)) => opaque(new.as_bytes()) == opaque(old.as_bytes()),
        (Some(_), None) => false,
    }
}

/// Header fields a 304 may not change in the stored response (§3.2).
pub fn keep_on_update(name: &header::HeaderName) -> bool {
    name == header::CONTENT_LENGTH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn cc(value: &str) -> CacheControl {
        CacheControl::parse(&headers(&[("cache-control", value)]))
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    #[test]
    fn parses_directives_case_insensitively_across_lines() {
        let h = headers(&[
            ("cache-control", "Public, MAX-AGE=60"),
            ("cache-control", "s-maxage=\"30\", stale-while-revalidate=5"),
        ]);
        let c = CacheControl::parse(&h);
        assert!(c.public && !c.private);
        assert_eq!(c.max_age, Seconds::Value(60));
        assert_eq!(c.s_maxage, Seconds::Value(30));
        assert_eq!(c.stale_while_revalidate, Seconds::Value(5));
    }

    #[test]
    fn unparseable_directives_are_ignored() {
        // §5.2: unrecognized or malformed directives are ignored; the rest still count.
        let c = cc("max-age=60, @@junk@@, foo=\"a,b\", private=\"set-cookie, x\", =3, no-store");
        assert_eq!(c.max_age, Seconds::Value(60));
        assert!(c.no_store && c.private);
        let c = cc("max-age=\"unterminated, no-store");
        assert!(!c.no_store, "inside an unterminated quoted string");
        assert_eq!(cc("").max_age, Seconds::Absent);
    }

    #[test]
    fn invalid_and_conflicting_values_make_the_response_stale() {
        assert_eq!(cc("max-age=abc").max_age, Seconds::Invalid);
        assert_eq!(cc("max-age").max_age, Seconds::Invalid);
        assert_eq!(cc("max-age=-1").max_age, Seconds::Invalid);
        assert_eq!(cc("max-age=60, max-age=60").max_age, Seconds::Value(60));
        assert_eq!(cc("max-age=60, max-age=10").max_age, Seconds::Invalid);
        // §1.2.2: overflow counts as 2^31.
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age,
            Seconds::Value(1 << 31)
        );
        let h = headers(&[("cache-control", "max-age=60, max-age=10")]);
        assert_eq!(
            freshness_lifetime(&h, &CacheControl::parse(&h), at(0)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let life = |pairs: &[(&str, &str)]| {
            let h = headers(pairs);
            freshness_lifetime(&h, &CacheControl::parse(&h), at(0))
        };
        let (d0, e100) = (date(0), date(100));
        assert_eq!(
            life(&[
                ("cache-control", "max-age=10, s-maxage=20"),
                ("expires", &e100),
                ("date", &d0)
            ]),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            life(&[
                ("cache-control", "max-age=10"),
                ("expires", &e100),
                ("date", &d0)
            ]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            life(&[("expires", &e100), ("date", &d0)]),
            Some(Duration::from_secs(100))
        );
        // No Date: the response time stands in.
        assert_eq!(life(&[("expires", &e100)]), Some(Duration::from_secs(100)));
        // §5.3: an invalid Expires (e.g. "0") means already expired.
        assert_eq!(life(&[("expires", "0")]), Some(Duration::ZERO));
        assert_eq!(
            life(&[("expires", &d0), ("date", &e100)]),
            Some(Duration::ZERO)
        );
        // Two different Expires lines conflict.
        assert_eq!(
            life(&[("expires", &e100), ("expires", &d0)]),
            Some(Duration::ZERO)
        );
        // No explicit freshness and no heuristics.
        assert_eq!(life(&[("last-modified", &d0)]), None);
    }

    #[test]
    fn initial_age_follows_4_2_3() {
        // Age 10 plus a 2 s response delay beats an apparent age of 5.
        let h = headers(&[("age", "10"), ("date", &date(95))]);
        assert_eq!(initial_age(&h, at(98), at(100)), Duration::from_secs(12));
        // The apparent age (Date 50 s ago) beats a small Age.
        let h = headers(&[("age", "1"), ("date", &date(50))]);
        assert_eq!(initial_age(&h, at(100), at(100)), Duration::from_secs(50));
        // A Date in the future and a bad Age count as 0.
        let h = headers(&[("age", "x"), ("date", &date(500))]);
        assert_eq!(initial_age(&h, at(100), at(100)), Duration::ZERO);
    }

    fn storable(
        status: u16,
        pairs: &[(&str, &str)],
        authorization: bool,
    ) -> Result<(), NotStorable> {
        let h = headers(pairs);
        let ctx = StoreContext {
            http_mode: true,
            statuses: &[200, 404],
            authorization,
            authorization_in_key: false,
        };
        check_storable(
            StatusCode::from_u16(status).unwrap(),
            &h,
            &CacheControl::parse(&h),
            &ctx,
        )
    }

    #[test]
    fn storability_for_a_shared_cache() {
        assert_eq!(
            storable(200, &[("cache-control", "max-age=60")], false),
            Ok(())
        );
        assert_eq!(storable(404, &[], false), Ok(()));
        assert_eq!(
            storable(500, &[("cache-control", "max-age=60")], false),
            Err(NotStorable::Status)
        );
        assert_eq!(
            storable(200, &[("cache-control", "max-age=60, no-store")], false),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            storable(
                200,
                &[("cache-control", "private=\"x\", max-age=60")],
                false
            ),
            Err(NotStorable::Private)
        );
        assert_eq!(
            storable(200, &[("vary", "accept, *")], false),
            Err(NotStorable::VaryStar)
        );
        // A member that is no header name cannot be matched either.
        assert_eq!(
            storable(200, &[("vary", "accept, x(y)")], false),
            Err(NotStorable::VaryStar)
        );
        assert!(storable(200, &[("vary", "accept, ")], false).is_ok());
        assert_eq!(
            storable(200, &[("set-cookie", "a=b")], false),
            Err(NotStorable::SetCookie)
        );
    }

    #[test]
    fn authorization_needs_an_explicit_permission() {
        // §3.5: public, must-revalidate or s-maxage make it shareable.
        let max_age = [("cache-control", "max-age=60")];
        assert_eq!(
            storable(200, &max_age, true),
            Err(NotStorable::Authorization)
        );
        for ok in [
            "public, max-age=60",
            "must-revalidate, max-age=60",
            "s-maxage=60",
        ] {
            assert_eq!(
                storable(200, &[("cache-control", ok)], true),
                Ok(()),
                "{ok}"
            );
        }
        let h = headers(&max_age);
        let ctx = StoreContext {
            http_mode: false,
            statuses: &[200],
            authorization: true,
            authorization_in_key: true,
        };
        assert_eq!(
            check_storable(StatusCode::OK, &h, &CacheControl::parse(&h), &ctx),
            Ok(())
        );
    }

    #[test]
    fn stale_is_forbidden_by_revalidation_directives() {
        assert!(!cc("max-age=1, stale-if-error=60").forbids_stale());
        for d in [
            "no-cache",
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=5",
        ] {
            assert!(cc(d).forbids_stale(), "{d}");
        }
    }

    #[test]
    fn request_directives() {
        let r = |v: &str| RequestDirectives::parse(&headers(&[("cache-control", v)]));
        assert!(r("no-cache").refresh);
        assert!(r("max-age=0").refresh);
        assert!(!r("max-age=5").refresh);
        assert!(r("no-store").no_store);
        assert!(RequestDirectives::parse(&headers(&[("pragma", "no-cache")])).refresh);
        let both = headers(&[("pragma", "no-cache"), ("cache-control", "max-age=5")]);
        assert!(
            !RequestDirectives::parse(&both).refresh,
            "Cache-Control wins over Pragma"
        );
    }

    #[test]
    fn conditional_requests() {
        let etag = HeaderValue::from_static("\"v1\"");
        let inm = |v: &str| not_modified(&headers(&[("if-none-match", v)]), Some(&etag), None);
        assert!(inm("\"v1\""));
        assert!(inm("W/\"v1\""), "weak comparison");
        assert!(inm("\"a,b\", \"v1\""));
        assert!(inm("*"));
        assert!(!inm("\"v2\""));
        assert!(!inm("garbage"));
        let lm = HeaderValue::from_str(&date(0)).unwrap();
        let lm = Some(&lm);
        let ims = |v: &str| not_modified(&headers(&[("if-modified-since", v)]), None, lm);
        assert!(ims(&date(0)) && ims(&date(10)));
        assert!(!ims(&date(0).replace("GMT", "XYZ")));
        // If-None-Match wins even when If-Modified-Since would match.
        let both = headers(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", &date(10)),
        ]);
        assert!(!not_modified(&both, Some(&etag), lm));
    }

    #[test]
    fn a_304_freshens_only_the_same_representation() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(validates(Some(&etag), &headers(&[])));
        assert!(validates(Some(&etag), &headers(&[("etag", "W/\"v1\"")])));
        assert!(!validates(Some(&etag), &headers(&[("etag", "\"v2\"")])));
        assert!(!validates(None, &headers(&[("etag", "\"v2\"")])));
    }

    #[test]
    fn vary_names_are_normalized() {
        let h = headers(&[
            ("vary", "Accept-Language, accept"),
            ("vary", "accept-language"),
        ]);
        let names: Vec<_> = vary_names(&h)
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect();
        assert_eq!(names, ["accept", "accept-language"]);
    }
}
