//! The limits phase: API keys, throttles and quotas, in that order, before the
//! response cache (a refused request never gets a cached answer).
//!
//! [`Limits`] is node state, built once and kept across reloads: [`Limits::rebuild`]
//! makes the stage, route and plan buckets of a new snapshot, reusing every bucket
//! whose spec did not change, so a reload neither resets nor forgets a client's
//! budget. A request that started on the previous snapshot may meet the new
//! buckets; that is harmless (same specs, or the new ones).
//!
//! Where each limit runs:
//! * public requests (origin or PoP): key, throttles (node, client IP, stage, route,
//!   key), then the quota, spent from a lease: an origin leases from its own
//!   book, a PoP from its API's home origin over the backbone; every lease is
//!   deducted from the book when granted, so accepted requests never exceed a
//!   quota, whichever PoPs they entered at;
//! * requests arriving over the backbone (the PoP already authorized, throttled
//!   and counted them): the key only.

#[cfg(test)]
mod plan_tests;
mod quota;
#[cfg(test)]
mod routed_tests;
mod set;
mod share;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};
use portico_config::{ApiKey, Definitions, NodeThrottleConfig, RateLimit, UsagePlan};

pub use quota::{
    BookSource, BoxFuture, LEASE_TTL_MS, LeaseAsk, LeaseSource, QuotaOutcome, Quotas, UsageView,
    now_ms,
};

use crate::context::{Principal, RequestCtx};
use crate::error::{ErrorKind, ErrorSource, GatewayError};
use crate::keys::{self, KeyError};
use crate::throttle::{KeyedThrottle, RateSpec, Throttle, Verdict};
use set::LimiterSet;
use share::KeyShares;
pub use share::SharedThrottle;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How long keyed buckets (client IPs, API keys) may sit idle before
/// [`Limits::retain_recent`] may forget them.
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) fn spec(r: RateLimit) -> RateSpec {
    RateSpec {
        rate: r.rate,
        burst: r.burst,
    }
}

/// The node's limiters and quota wallets.
pub struct Limits {
    enabled: bool,
    node: Option<Throttle>,
    per_ip: Option<ClientBuckets>,
    set: ArcSwap<LimiterSet>,
    quota: Option<Arc<Quotas>>,
    degraded: AtomicU64,
    /// Connections the public listeners refused because their client
    /// address already held `[limits] max_connections_per_client`.
    connections_refused: AtomicU64,
    /// A PoP's: key rates as per-key buckets sized to this PoP's share.
    keys: Option<KeyShares>,
    /// Every plan's key rate is shared, also a plan of regional APIs only:
    /// the region's other origins take part in it (see
    /// [`Limits::with_origin_peers`]).
    all_keys_shared: bool,
}

/// What an admitted request carries to its response.
#[derive(Debug, Default)]
pub struct Admitted {
    /// `RateLimit-Policy` and `RateLimit`, on routes with a stage, route or key throttle.
    headers: Option<(HeaderValue, HeaderValue)>,
}

impl Admitted {
    /// Adds the rate-limit headers to a response.
    pub fn decorate(&self, headers: &mut HeaderMap) {
        if let Some((policy, state)) = &self.headers {
            headers.insert(&RATELIMIT_POLICY, policy.clone());
            headers.insert(&RATELIMIT, state.clone());
        }
    }
}

impl Limits {
    /// No limits at all (a gateway built without [`Limits::new`]).
    pub fn none() -> Self {
        Self {
            enabled: false,
            node: None,
            per_ip: None,
            set: ArcSwap::from_pointee(LimiterSet::default()),
            quota: None,
            degraded: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            keys: None,
            all_keys_shared: false,
        }
    }

    /// The node's limiters for `config`; `quota` spends usage-plan quotas.
    pub fn new(
        config: &NodeThrottleConfig,
        definitions: &Definitions,
        quota: Option<Arc<Quotas>>,
    ) -> Self {
        let set = LimiterSet::build(definitions, None);
        Self {
            enabled: config.enabled,
            node: Throttle::new("node", spec(config.node)),
            per_ip: config
                .per_client_ip
                .and_then(|r| KeyedThrottle::new("ip", spec(r)))
                .map(|throttle| ClientBuckets {
                    throttle,
                    max: MAX_CLIENT_BUCKETS,
                    coarse: AtomicBool::new(false),
                    coarse_sweeps: Default::default(),
                }),
            set: ArcSwap::from_pointee(set),
            quota,
            degraded: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            keys: None,
            all_keys_shared: false,
        }
    }

    /// Rates that span PoPs (stage, route, key) run at the share the origin
    /// assigns this node ([`Limits::apply_share`]); a PoP's setting.
    pub fn with_shared_rates(mut self) -> Self {
        self.keys = Some(KeyShares::default());
        self
    }

    /// [`Limits::with_shared_rates`] for an origin whose region's other
    /// origins share its store: a plan's key rates are split with them too,
    /// also those of regional APIs (the plan's own, and those it sets for a
    /// stage or route), as are regional APIs' stage and route rates.
    pub fn with_origin_peers(mut self) -> Self {
        self.keys = Some(KeyShares::default());
        self.all_keys_shared = true;
        self
    }

    /// Applies a share from the origin; false for a scope this node does not
    /// know (yet: a key's bucket exists once the key was seen here).
    pub fn apply_share(&self, scope: &str, share: RateSpec) -> bool {
        let set = self.set.load();
        let Some((kind, rest)) = scope.split_once(':') else {
            return false;
        };
        match kind {
            "stage" => {
                let Some((api, stage)) = rest.split_once('/') else {
                    return false;
                };
                let Some(t) = set.stage(api, stage).and_then(|s| s.stage.as_ref()) else {
                    return false;
                };
                t.set_share(share);
                true
            }
            "route" => {
                let mut parts = rest.splitn(3, '/');
                let (Some(api), Some(stage), Some(route)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return false;
                };
                let Some(t) = set.stage(api, stage).and_then(|s| s.route_by_key(route)) else {
                    return false;
                };
                t.set_share(share);
                true
            }
            // The key id is last: a route's family holds `/`s of its own.
            "key" => match (rest.rsplit_once('/'), &self.keys) {
                (Some((plan, key)), Some(keys)) => keys.set_key(plan, key, share),
                _ => false,
            },
            // Only a throttled plan of the current definitions: a default
            // kept for any name an origin sends would be kept for ever.
            "plan" => match &self.keys {
                Some(keys) if set.plan(rest).is_some() => {
                    keys.set_default(rest, share);
                    true
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Each shared rate's demand since the last call (only those with some).
    pub fn take_demand(&self, mut f: impl FnMut(&str, u64)) {
        let mut each = |t: &SharedThrottle| {
            let n = t.take_demand();
            if n > 0 {
                f(t.scope(), n);
            }
        };
        self.set.load().each(&mut each);
        if let Some(keys) = &self.keys {
            keys.each(&mut each);
        }
    }

    /// Builds the buckets of a new snapshot, keeping those whose spec is unchanged.
    /// Plans no longer throttled lose their default share.
    pub fn rebuild(&self, definitions: &Definitions) {
        let old = self.set.load();
        let set = LimiterSet::build(definitions, Some(&old));
        if let Some(keys) = &self.keys {
            keys.retain_defaults(|plan| set.plan(plan).is_some());
        }
        self.set.store(Arc::new(set));
    }

    /// Forgets idle keyed buckets; the node calls this every [`RETAIN_INTERVAL`].
    pub fn retain_recent(&self) {
        if let Some(ip) = &self.per_ip {
            ip.retain_recent();
        }
        self.set.load().retain_recent();
        if let Some(keys) = &self.keys {
            keys.retain_recent();
        }
    }

    pub fn quota(&self) -> Option<&Arc<Quotas>> {
        self.quota.as_ref()
    }

    /// Requests let through by a `fail_open` plan while its quota could not be checked.
    pub fn degraded_allowed(&self) -> u64 {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Counts a connection refused for its client's connection cap.
    pub fn count_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections the public listeners refused because their client
    /// address already held its cap (`[limits] max_connections_per_client`).
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// What to answer a request refused before the throttles (no such route,
    /// a missing or bad API key): `refusal`, unless the client's or the
    /// node's bucket is empty, then 429. Such requests cost tokens too, as
    /// nginx's `limit_req` counts every request, so a client probing for
    /// routes or keys is throttled like any other; a routed request was
    /// counted by its PoP.
    pub fn charge_refused(
        &self,
        client: IpAddr,
        routed: bool,
        refusal: GatewayError,
    ) -> GatewayError {
        if routed {
            return refusal;
        }
        match self.charge_plain(client) {
            Err(too_many) => too_many,
            Ok(()) => refusal,
        }
    }

    /// What an answer the gateway gives itself (a CORS preflight) costs a
    /// client: its address's and the node's tokens, as any request; 429 when
    /// either bucket is empty.
    pub fn charge_plain(&self, client: IpAddr) -> Result<(), GatewayError> {
        match self.enabled {
            true => self.throttle_plain(client).map(|_| ()),
            false => Ok(()),
        }
    }

    /// Runs the phase. `routed`: the request came over the backbone (see the
    /// module doc), `claimed`: its PoP named a caller. `caller` is set to the
    /// key the request authenticated with as soon as it is known, so that a
    /// request throttled afterwards is still logged as that key's.
    pub async fn admit(
        &self,
        ctx: &RequestCtx,
        headers: &HeaderMap,
        routed: bool,
        claimed: bool,
        caller: &mut Option<Principal>,
    ) -> Result<Admitted, GatewayError> {
        // 1. Authorize: the key (if the route requires one) and its plan for this stage.
        let plan = match ctx.route().api_key_required {
            true => Some(authorize(ctx, headers).map_err(|refusal| {
                self.charge_refused(ctx.conn.client_addr.ip(), routed, refusal)
            })?),
            false => None,
        };
        *caller = plan.as_ref().map(|(key, _)| Principal::api_key(&key.id));
        // A routed request whose PoP checked no key, on a route that needs one
        // here: the PoP served older definitions (a reload on its way), so no
        // one has throttled the key or spent its quota. This node does.
        let routed = routed && (claimed || plan.is_none());
        // 2. Throttles (the PoP that forwarded a routed request already applied them).
        let admitted = match (routed, self.enabled) {
            (false, true) => self.throttle(ctx, plan.as_ref())?,
            _ => Admitted::default(),
        };
        // 3. Quota, counted only for requests every throttle let through, and
        //    only where the request entered (a PoP spent it for a routed one).
        if let (Some((key, plan)), Some(quotas), false) = (&plan, &self.quota, routed) {
            self.spend(quotas, &ctx.api.name, key, plan).await?;
        }
        Ok(admitted)
    }

    fn throttle(
        &self,
        ctx: &RequestCtx,
        plan: Option<&(Arc<ApiKey>, Arc<UsagePlan>)>,
    ) -> Result<Admitted, GatewayError> {
        let set = self.set.load();
        let limiters = set.stage(&ctx.api.name, &ctx.stage.name);
        let route = limiters.and_then(|s| s.route(ctx.route_index, &ctx.route().key));
        let stage = limiters.and_then(|s| s.stage.as_ref());
        // Most plans set no stage or route throttle: an empty map, no hash.
        let narrower = plan.and_then(|(_, p)| limiters?.plan(&p.name));
        let keyed = narrower.is_some() || plan.is_some_and(|(_, p)| p.throttle.is_some());
        let ip = ctx.conn.client_addr.ip();
        if stage.is_none() && route.is_none() && !keyed {
            // Fast path, no headers: only the node's and the client IP's buckets.
            return self.throttle_plain(ip);
        }
        // The narrowest bucket first; the first to refuse ends the checks.
        let mut verdict = Verdict::default();
        if let Some((key, plan)) = plan {
            let route = (ctx.route_index, ctx.route().key.as_str());
            self.check_key(&set, narrower, route, key, plan, &mut verdict);
        }
        verdict.then_check(|| self.per_ip.as_ref().map(|t| t.check(ip)));
        verdict.then_check(|| route.map(|t| t.check()));
        verdict.then_check(|| stage.map(|t| t.check()));
        verdict.then_check(|| self.node.as_ref().map(Throttle::check));
        // From the strings' own buffers: no copy.
        let policy = HeaderValue::try_from(verdict.policy_header());
        let state = HeaderValue::try_from(verdict.state_header());
        let headers = policy.ok().zip(state.ok());
        if let Some(retry_after) = verdict.refused() {
            let mut err = too_many(retry_after);
            if let Some((p, s)) = headers {
                err = err
                    .with_header(RATELIMIT_POLICY.clone(), p)
                    .with_header(RATELIMIT.clone(), s);
            }
            return Err(err);
        }
        Ok(Admitted { headers })
    }

    /// The key's buckets of its plan, narrowest first: the plan's throttle
    /// for the request's route (its index and key), for its stage (what
    /// `narrower` holds: the plan's in the request's stage), then the plan's
    /// own. Shared per key where rates are shared and the rate spans PoPs
    /// (the plan covers an edge API; a stage's or route's is of an edge
    /// API) or the region's origins (every rate of an origin with peers),
    /// keyed otherwise.
    fn check_key(
        &self,
        set: &LimiterSet,
        narrower: Option<&set::PlanStage>,
        route: (usize, &str),
        key: &ApiKey,
        plan: &UsagePlan,
        verdict: &mut Verdict,
    ) {
        if let Some(narrower) = narrower {
            let families = [
                narrower.route_keyed(route.0, route.1),
                narrower.stage.as_ref(),
            ];
            for f in families.into_iter().flatten() {
                verdict.then_check(|| match &self.keys {
                    Some(keys) if f.shared || self.all_keys_shared => {
                        let bucket = keys.bucket(f.name, &f.family, &key.id, f.keyed.spec());
                        Some(bucket?.check())
                    }
                    _ => Some(f.keyed.check(&key.hash)),
                });
            }
        }
        // A plan without a throttle has no key bucket: nothing to look up.
        let Some(rate) = plan.throttle else { return };
        verdict.then_check(|| match &self.keys {
            Some(keys) if self.all_keys_shared || set.shares_keys(&plan.name) => {
                Some(keys.bucket("key", &plan.name, &key.id, spec(rate))?.check())
            }
            _ => Some(set.plan(&plan.name)?.check(&key.hash)),
        });
    }

    fn throttle_plain(&self, ip: IpAddr) -> Result<Admitted, GatewayError> {
        // The client's own bucket first: what it refuses costs the node's nothing.
        let mut verdict = Verdict::default();
        verdict.extend(self.per_ip.as_ref().map(|t| t.check(ip)));
        verdict.then_check(|| self.node.as_ref().map(Throttle::check));
        match verdict.refused() {
            Some(retry_after) => Err(too_many(retry_after)),
            None => Ok(Admitted::default()),
        }
    }

    async fn spend(
        &self,
        quotas: &Arc<Quotas>,
        api: &str,
        key: &ApiKey,
        plan: &UsagePlan,
    ) -> Result<(), GatewayError> {
        let Some(spec) = plan.quota else {
            return Ok(());
        };
        match quotas.spend(api, &plan.name, &key.id, spec).await {
            QuotaOutcome::Accepted => Ok(()),
            QuotaOutcome::Exhausted { retry_after } => {
                Err(GatewayError::client(ErrorKind::LimitExceeded {
                    retry_after,
                }))
            }
            QuotaOutcome::Unavailable
                if plan.on_origin_unreachable == portico_config::Degraded::FailOpen =>
            {
                self.degraded.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plan = %plan.name, key = %key.id, "quota unavailable; allowed (fail_open)");
                Ok(())
            }
            QuotaOutcome::Unavailable => Err(GatewayError::new(
                ErrorKind::ServiceUnavailable,
                ErrorSource::Internal,
            )
            .with_cause("quota book unavailable (fail_closed)")),
        }
    }
}

fn too_many(retry_after: Duration) -> GatewayError {
    GatewayError::client(ErrorKind::TooManyRequests { retry_after })
}

fn forbidden(why: KeyError) -> GatewayError {
    GatewayError::client(ErrorKind::Forbidden).with_cause(why)
}

/// The caller of a request: what this node's own key check found, which the
/// principal a forwarding PoP `claimed` must then name too (a PoP and an
/// origin disagreeing on the key is refused: 403); without a check of our
/// own (the route requires no key here), the PoP's word, which came over a
/// mutually authenticated link.
pub fn principal(
    own: Option<Principal>,
    claimed: Option<&Principal>,
) -> Result<Option<Principal>, GatewayError> {
    match (own, claimed) {
        (Some(own), Some(claimed)) if own != *claimed => Err(GatewayError::client(
            ErrorKind::Forbidden,
        )
        .with_cause(format!(
            "the forwarding PoP authenticated {claimed}, the presented key is {own}"
        ))),
        (Some(own), _) => Ok(Some(own)),
        (None, claimed) => Ok(claimed.cloned()),
    }
}

/// The presented key, and the plan of it that covers the request's API stage.
/// Whether the request names a valid API key for its API stage: its
/// principal when the limits phase checked one, else the key it presents
/// (a route that requires none does not check it there).
pub(crate) fn holds_valid_key(ctx: &RequestCtx, headers: &HeaderMap) -> bool {
    ctx.principal
        .as_ref()
        .is_some_and(|p| p.api_key_id().is_some())
        || (headers.contains_key(keys::HEADER) && authorize(ctx, headers).is_ok())
}

fn authorize(
    ctx: &RequestCtx,
    headers: &HeaderMap,
) -> Result<(Arc<ApiKey>, Arc<UsagePlan>), GatewayError> {
    let hash = keys::presented(headers).map_err(forbidden)?;
    let defs = &ctx.definitions;
    let key = defs
        .api_key_by_hash(&hash)
        .ok_or(forbidden(KeyError::Unknown))?;
    if !key.enabled {
        return Err(forbidden(KeyError::Disabled));
    }
    let plan = key
        .plans
        .iter()
        .filter_map(|p| defs.usage_plan(p))
        .find(|p| p.binds(&ctx.api.name, &ctx.stage.name))
        .ok_or_else(|| {
            GatewayError::client(ErrorKind::Forbidden)
                .with_cause("API key has no usage plan covering this API stage")
        })?;
    Ok((Arc::clone(key), Arc::clone(plan)))
}

/// The address a client's IP bucket is kept under: an IPv4 address itself
/// (IPv4-mapped IPv6 too), an IPv6 address by its /64. One IPv6 host usually
/// holds a whole /64, and would otherwise get a fresh bucket per address.
/// The listeners count a client's connections under the same address.
pub fn client_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// The bucket of a client address (as [`client_bucket`] gave it) while the
/// node tracks too many: its IPv4 /24, its IPv6 /48.
fn coarse_bucket(bucket: IpAddr) -> IpAddr {
    match bucket {
        IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from_bits(v4.to_bits() & !0xff)),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from_bits(
            v6.to_bits() & !((1u128 << 80) - 1),
        )),
    }
}

/// Client addresses tracked one by one before new ones are kept by their
/// network ([`coarse_bucket`]): some 100 bytes each, so about 20 MB. nginx's
/// `limit_req_zone` has a size for the same reason.
pub const MAX_CLIENT_BUCKETS: usize = 200_000;

/// The per-client-IP buckets, bounded: a crowd of addresses (a botnet, an
/// IPv6 /32 walked /64 by /64) would otherwise add a bucket per address
/// faster than idle ones are forgotten. Past `max` buckets at a sweep, clients
/// are kept by their network until the count is back under half of it.
struct ClientBuckets {
    throttle: KeyedThrottle<IpAddr>,
    max: usize,
    coarse: AtomicBool,
    /// Sweeps since lookups went coarse. One address by one is taken up
    /// again only after [`COARSE_SWEEPS`]: the addresses' own buckets, no
    /// longer touched, are forgotten at the next sweep, and a crowd still
    /// there would otherwise have the map flip back and grow again every
    /// other sweep.
    coarse_sweeps: std::sync::atomic::AtomicU32,
}

/// Sweeps (of [`RETAIN_INTERVAL`]) that client buckets stay coarse at least: a minute.
const COARSE_SWEEPS: u32 = 6;

impl ClientBuckets {
    fn check(&self, ip: IpAddr) -> crate::throttle::Decision {
        let bucket = client_bucket(ip);
        match self.coarse.load(Ordering::Relaxed) {
            false => self.throttle.check(&bucket),
            true => self.throttle.check(&coarse_bucket(bucket)),
        }
    }

    /// Forgets idle buckets, and decides how the next clients are kept.
    fn retain_recent(&self) {
        let before = self.throttle.len();
        self.throttle.retain_recent();
        let after = self.throttle.len();
        if after < before / 2 {
            self.throttle.shrink_to_fit();
        }
        let coarse = self.coarse.load(Ordering::Relaxed);
        let sweeps = match coarse {
            true => self.coarse_sweeps.fetch_add(1, Ordering::Relaxed) + 1,
            false => 0,
        };
        if !coarse && after > self.max {
            tracing::warn!(
                buckets = after,
                "too many client addresses to throttle one by one: new ones are \
                 throttled by their network (IPv4 /24, IPv6 /48)"
            );
            self.coarse_sweeps.store(0, Ordering::Relaxed);
            self.coarse.store(true, Ordering::Relaxed);
        } else if coarse && sweeps >= COARSE_SWEEPS && after < self.max / 2 {
            tracing::info!(
                buckets = after,
                "client addresses throttled one by one again"
            );
            self.coarse.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_throttled_by_its_64() {
        let config = NodeThrottleConfig {
            enabled: true,
            node: RateLimit {
                rate: 1e6,
                burst: 1_000_000,
            },
            per_client_ip: Some(RateLimit {
                rate: 0.001,
                burst: 1,
            }),
        };
        let limits = Limits::new(&config, &Definitions::empty(), None);
        let admit = |ip: &str| limits.throttle_plain(ip.parse().unwrap()).is_ok();
        assert!(admit("2001:db8:0:1::1"));
        // Another address of the same /64: the same bucket, now empty.
        assert!(!admit("2001:db8:0:1:ffff::2"));
        assert!(admit("2001:db8:0:2::1"), "the next /64 has its own");
        assert!(admit("192.0.2.1"));
        assert!(
            !admit("::ffff:192.0.2.1"),
            "IPv4-mapped is the IPv4 address"
        );
        assert!(admit("192.0.2.2"));
    }

    #[test]
    fn past_its_cap_clients_are_kept_by_their_network_until_the_crowd_is_gone() {
        let throttle = KeyedThrottle::new(
            "ip",
            RateSpec {
                rate: 5.0,
                burst: 1,
            },
        )
        .unwrap();
        let buckets = ClientBuckets {
            throttle,
            max: 100,
            coarse: AtomicBool::new(false),
            coarse_sweeps: Default::default(),
        };
        // A crowd: 300 addresses of one /24 and of one IPv6 /48.
        for n in 1..=150u32 {
            assert!(
                !buckets
                    .check(IpAddr::from([198, 51, 100, n as u8]))
                    .is_refused()
            );
            let v6 =
                std::net::Ipv6Addr::from_bits((0x2001_0db8_0001u128 << 80) | (u128::from(n) << 64));
            assert!(!buckets.check(IpAddr::V6(v6)).is_refused());
        }
        buckets.retain_recent();
        assert!(buckets.coarse.load(Ordering::Relaxed), "the cap was passed");
        // New addresses now share their network's bucket: one request each.
        let first = buckets.check("198.51.100.200".parse().unwrap());
        let second = buckets.check("198.51.100.201".parse().unwrap());
        assert!(!first.is_refused() && second.is_refused());
        let first = buckets.check("2001:db8:1:ffff::1".parse().unwrap());
        let second = buckets.check("2001:db8:1:eeee::1".parse().unwrap());
        assert!(!first.is_refused() && second.is_refused());
        // Once the crowd's buckets are full again and forgotten (governor
        // forgets a bucket a refill period after it is full), one by one
        // again, but not before a minute of sweeps.
        std::thread::sleep(Duration::from_millis(1000));
        for _ in 1..COARSE_SWEEPS {
            buckets.retain_recent();
            assert!(
                buckets.coarse.load(Ordering::Relaxed),
                "flipped back at once"
            );
        }
        assert_eq!(buckets.throttle.len(), 0);
        buckets.retain_recent();
        assert!(!buckets.coarse.load(Ordering::Relaxed));
        assert!(
            !buckets
                .check("198.51.100.200".parse().unwrap())
                .is_refused()
        );
        assert!(
            !buckets
                .check("198.51.100.201".parse().unwrap())
                .is_refused()
        );
    }

    #[test]
    fn a_client_its_own_bucket_refuses_takes_nothing_from_the_node() {
        let config = NodeThrottleConfig {
            enabled: true,
            node: RateLimit {
                rate: 0.001,
                burst: 5,
            },
            per_client_ip: Some(RateLimit {
                rate: 0.001,
                burst: 1,
            }),
        };
        let limits = Limits::new(&config, &Definitions::empty(), None);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..10).filter(|_| limits.throttle_plain(a).is_ok()).count();
        assert_eq!(admitted, 1);
        // The node's bucket lost one token to a, not ten.
        for n in 2..=5 {
            let other = IpAddr::from([192, 0, 2, n]);
            assert!(limits.throttle_plain(other).is_ok(), "client {n}");
        }
        assert!(limits.throttle_plain("192.0.2.9".parse().unwrap()).is_err());
    }

    #[test]
    fn the_principal_is_our_own_check_which_a_pop_must_agree_with() {
        let acme = Principal::api_key("acme");
        let other = Principal::api_key("other");
        assert_eq!(principal(None, None).unwrap(), None);
        assert_eq!(
            principal(Some(acme.clone()), None).unwrap(),
            Some(acme.clone())
        );
        assert_eq!(
            principal(Some(acme.clone()), Some(&acme)).unwrap(),
            Some(acme.clone())
        );
        // A route that requires no key here: the forwarding PoP's word.
        assert_eq!(principal(None, Some(&acme)).unwrap(), Some(acme.clone()));
        let err = principal(Some(acme), Some(&other)).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::Forbidden), "{err}");
        assert_eq!(err.to_response().status(), 403);
        let cause = err.cause.map(|c| c.to_string()).unwrap_or_default();
        assert!(
            cause.contains("api_key:other") && cause.contains("api_key:acme"),
            "{cause}"
        );
        assert_eq!(other.to_string(), "api_key:other");
        assert_eq!(other.api_key_id(), Some("other"));
    }
}
