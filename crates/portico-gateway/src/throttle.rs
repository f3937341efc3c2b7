//! Token-bucket throttles (governor's GCRA) and the headers they put on
//! responses.
//!
//! A request passes every limit that applies to it: node-wide, per client IP,
//! per API stage, per route and per API key (from its usage plan). Each limit
//! is a token bucket with a steady rate and a burst. A refusal carries how long
//! until the refusing bucket has a token again (`Retry-After`), and every
//! decision can describe itself in the IETF httpapi draft's `RateLimit-Policy`
//! and `RateLimit` headers.
//!
//! Limiters are node state (never `static`): keyed ones keep every key until
//! [`KeyedThrottle::retain_recent`] forgets idle ones, which the node calls
//! periodically.

use std::fmt::Write as _;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};

/// A steady rate (requests per second, may be fractional) and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    pub rate: f64,
    pub burst: u32,
}

impl RateSpec {
    /// The governor quota, or `None` for a rate or burst it cannot hold: one
    /// that allows nothing, or a period or a whole bucket's refill (period ×
    /// burst) past 64 bits of nanoseconds, where governor would panic or wrap.
    /// Validation refuses those in files; a peer's rate share may still name one.
    pub fn quota(&self) -> Option<Quota> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return None;
        }
        let period = Duration::try_from_secs_f64(1.0 / self.rate).ok()?;
        u64::try_from(period.as_nanos())
            .ok()?
            .checked_mul(u64::from(self.burst))?;
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(self.burst)?))
    }

    /// The window, in whole seconds, over which `burst` requests are allowed
    /// from empty: what `RateLimit-Policy`'s `w` reports.
    fn window_secs(&self) -> u64 {
        ((f64::from(self.burst) / self.rate).ceil() as u64).max(1)
    }
}

/// The outcome of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed; this many more requests would be allowed right now.
    Allowed { remaining: u32 },
    /// Refused; a token is available again after this long.
    Refused { retry_after: Duration },
}

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;
type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One bucket (node-wide, a stage, a route).
#[derive(Debug)]
pub struct Throttle {
    name: &'static str,
    spec: RateSpec,
    limiter: Direct,
}

impl Throttle {
    /// `name` labels the policy in headers and logs (`node`, `stage`, `route`).
    pub fn new(name: &'static str, spec: RateSpec) -> Option<Self> {
        let limiter =
            RateLimiter::direct(spec.quota()?).with_middleware::<StateInformationMiddleware>();
        Some(Self {
            name,
            spec,
            limiter,
        })
    }

    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    pub fn check(&self) -> Decision {
        Decision {
            name: self.name,
            spec: self.spec,
            outcome: outcome(self.limiter.check()),
        }
    }

    /// Takes `n` tokens at once (as many as there are when fewer): a bucket
    /// that replaces another starts as empty as that one was.
    pub fn drain(&self, n: u32) {
        let Some(n) = NonZeroU32::new(n.min(self.spec.burst)) else {
            return;
        };
        if let Ok(Err(_)) = self.limiter.check_n(n) {
            // Fewer tokens than `n`: take them one at a time until refused.
            while self.limiter.check().is_ok() {}
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// One bucket per key (client IP, API key), all with the same rate.
#[derive(Debug)]
pub struct KeyedThrottle<K: Hash + Eq + Clone> {
    name: &'static str,
    spec: RateSpec,
    limiter: Keyed<K>,
}

impl<K: Hash + Eq + Clone> KeyedThrottle<K> {
    pub fn new(name: &'static str, spec: RateSpec) -> Option<Self> {
        let limiter =
            RateLimiter::dashmap(spec.quota()?).with_middleware::<StateInformationMiddleware>();
        Some(Self {
            name,
            spec,
            limiter,
        })
    }

    pub fn spec(&self) -> RateSpec {
        self.spec
    }

    pub fn check(&self, key: &K) -> Decision {
        Decision {
            name: self.name,
            spec: self.spec,
            outcome: outcome(self.limiter.check_key(key)),
        }
    }

    /// Forgets keys whose buckets are full again (they behave as new keys).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// Gives back memory the key map no longer needs (after many keys went).
    pub fn shrink_to_fit(&self) {
        self.limiter.shrink_to_fit();
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

fn outcome(
    result: Result<governor::middleware::StateSnapshot, NotUntil<<DefaultClock as Clock>::Instant>>,
) -> Outcome {
    match result {
        Ok(snapshot) => Outcome::Allowed {
            remaining: snapshot.remaining_burst_capacity(),
        },
        Err(not_until) => Outcome::Refused {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        },
    }
}

/// One bucket's decision, with what the headers need to describe it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub name: &'static str,
    pub spec: RateSpec,
    pub outcome: Outcome,
}

impl Decision {
    pub fn is_refused(&self) -> bool {
        matches!(self.outcome, Outcome::Refused { .. })
    }
}

/// Most buckets one request meets: node, client IP, stage, route, and the
/// key's in its plan, its plan's stage and its plan's route.
const MAX_DECISIONS: usize = 7;

/// The decisions of every bucket that applied to one request (on the stack:
/// no allocation per request).
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    decisions: [Option<Decision>; MAX_DECISIONS],
    len: usize,
    any_refused: bool,
}

impl Verdict {
    pub fn push(&mut self, decision: Decision) {
        self.any_refused |= decision.is_refused();
        if let Some(slot) = self.decisions.get_mut(self.len) {
            *slot = Some(decision);
            self.len += 1;
        }
    }

    /// Checks one more bucket (`check` takes its token) unless one already
    /// refused: a request its key's or its client's own bucket refuses takes
    /// nothing from the buckets it shares with every other client.
    pub fn then_check(&mut self, check: impl FnOnce() -> Option<Decision>) {
        if !self.any_refused {
            self.extend(check());
        }
    }

    /// Pushes each decision given (e.g. an `Option` of one).
    pub fn extend(&mut self, decisions: impl IntoIterator<Item = Decision>) {
        for d in decisions {
            self.push(d);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().flatten()
    }

    /// The longest wait among refusing buckets, if any refused.
    pub fn refused(&self) -> Option<Duration> {
        self.iter()
            .filter_map(|d| match d.outcome {
                Outcome::Refused { retry_after } => Some(retry_after),
                Outcome::Allowed { .. } => None,
            })
            .max()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `RateLimit-Policy: "route";q=5;w=1, "key";q=100;w=10` (draft-ietf-httpapi-ratelimit-headers).
    pub fn policy_header(&self) -> String {
        let mut out = String::with_capacity(24 * self.len);
        for (i, d) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(
                out,
                "{sep}\"{}\";q={};w={}",
                d.name,
                d.spec.burst,
                d.spec.window_secs()
            );
        }
        out
    }

    /// `RateLimit: "route";r=3;t=0`: remaining requests and seconds until a token returns.
    pub fn state_header(&self) -> String {
        let mut out = String::with_capacity(20 * self.len);
        for (i, d) in self.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let (r, t) = match d.outcome {
                Outcome::Allowed { remaining } => (remaining, 0),
                Outcome::Refused { retry_after } => (
                    0,
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                ),
            };
            let _ = write!(out, "{sep}\"{}\";r={r};t={t}", d.name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: RateSpec = RateSpec {
        rate: 0.5,
        burst: 3,
    };

    #[test]
    fn burst_is_allowed_then_refused_with_a_wait() {
        let t = Throttle::new("route", SLOW).unwrap();
        let remaining: Vec<_> = (0..3).map(|_| t.check().outcome).collect();
        assert_eq!(
            remaining,
            [2, 1, 0]
                .map(|remaining| Outcome::Allowed { remaining })
                .to_vec()
        );
        let refused = t.check();
        let Outcome::Refused { retry_after } = refused.outcome else {
            panic!("{refused:?}")
        };
        assert!(
            retry_after > Duration::from_millis(1000) && retry_after <= Duration::from_secs(2),
            "{retry_after:?}"
        );
    }

    #[test]
    fn rates_the_limiter_cannot_hold_make_no_quota() {
        let spec = |rate, burst| RateSpec { rate, burst };
        assert!(SLOW.quota().is_some());
        assert!(spec(1e9, 100_000_000).quota().is_some());
        assert!(spec(1e-6, 1).quota().is_some());
        // A period past Duration, one past u64 nanoseconds, and a bucket
        // whose refill (period × burst) is.
        for bad in [spec(1e-20, 1), spec(1e-12, 1), spec(0.001, 100_000_000)] {
            assert!(bad.quota().is_none(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_isolated() {
        let t = KeyedThrottle::new(
            "key",
            RateSpec {
                rate: 0.5,
                burst: 1,
            },
        )
        .unwrap();
        assert!(!t.check(&"a").is_refused());
        assert!(t.check(&"a").is_refused());
        assert!(!t.check(&"b").is_refused());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn zero_rates_and_bursts_make_no_limiter() {
        assert!(
            Throttle::new(
                "x",
                RateSpec {
                    rate: 0.0,
                    burst: 5
                }
            )
            .is_none()
        );
        assert!(
            Throttle::new(
                "x",
                RateSpec {
                    rate: 5.0,
                    burst: 0
                }
            )
            .is_none()
        );
        assert!(
            Throttle::new(
                "x",
                RateSpec {
                    rate: f64::NAN,
                    burst: 5
                }
            )
            .is_none()
        );
    }

    #[test]
    fn headers_describe_every_bucket() {
        let route = Throttle::new(
            "route",
            RateSpec {
                rate: 5.0,
                burst: 5,
            },
        )
        .unwrap();
        let key = Throttle::new("key", SLOW).unwrap();
        let mut verdict = Verdict::default();
        verdict.push(route.check());
        verdict.push(key.check());
        assert_eq!(
            verdict.policy_header(),
            "\"route\";q=5;w=1, \"key\";q=3;w=6"
        );
        assert_eq!(verdict.state_header(), "\"route\";r=4;t=0, \"key\";r=2;t=0");
        assert_eq!(verdict.refused(), None);
        for _ in 0..2 {
            key.check();
        }
        verdict.push(key.check());
        assert!(verdict.refused().is_some());
        assert!(
            verdict.state_header().ends_with(";r=0;t=2"),
            "{}",
            verdict.state_header()
        );
    }
}
