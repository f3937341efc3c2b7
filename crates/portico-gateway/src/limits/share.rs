//! Rates that span PoPs: a stage's, a route's, a key's.
//!
//! Every PoP enforces such a rate with a [`SharedThrottle`]: a governor bucket
//! sized to the PoP's **share** of the configured rate, which its origin
//! assigns by recent demand (see `portico::rates`). Each bucket counts its
//! demand (requests checked, accepted or not) for the PoP's periodic usage
//! report. A new share replaces the bucket with one that starts as empty as
//! the old one was, so rebalancing never hands out a fresh burst.
//!
//! Until its first share arrives, a bucket runs at the configured rate (the
//! origin sends shares right after a link comes up).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::throttle::{Decision, Outcome, RateSpec, Throttle};

/// Shares within this fraction of the bucket's rate are not worth a swap.
const SAME: f64 = 0.02;

/// One rate shared across PoPs.
#[derive(Debug)]
pub struct SharedThrottle {
    scope: Arc<str>,
    configured: RateSpec,
    current: ArcSwap<Throttle>,
    demand: AtomicU64,
    /// Tokens left after the last check, per mille of the burst.
    fullness: AtomicU32,
    /// When the last refused check said a token returns (ns after `epoch`).
    next_token: AtomicU64,
    epoch: Instant,
    /// A key's bucket with a share of its own (not its plan's default).
    own: AtomicBool,
    touched: AtomicBool,
    /// When it was last checked (ns after `epoch`).
    last_check: AtomicU64,
}

impl SharedThrottle {
    pub fn new(name: &'static str, scope: String, configured: RateSpec) -> Option<Self> {
        Some(Self {
            scope: Arc::from(scope),
            configured,
            current: ArcSwap::from_pointee(Throttle::new(name, configured)?),
            demand: AtomicU64::new(0),
            fullness: AtomicU32::new(1000),
            next_token: AtomicU64::new(0),
            epoch: Instant::now(),
            own: AtomicBool::new(false),
            touched: AtomicBool::new(false),
            last_check: AtomicU64::new(0),
        })
    }

    /// The configured rate (what headers announce; the share is this PoP's part).
    pub fn spec(&self) -> RateSpec {
        self.configured
    }

    /// The rate this node enforces now.
    pub fn share(&self) -> RateSpec {
        self.current.load().spec()
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn check(&self) -> Decision {
        self.demand.fetch_add(1, Ordering::Relaxed);
        self.touched.store(true, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_check.store(now, Ordering::Relaxed);
        let current = self.current.load();
        let mut decision = current.check();
        let left = match decision.outcome {
            Outcome::Allowed { remaining } => remaining,
            Outcome::Refused { retry_after } => {
                let at = self.epoch.elapsed() + retry_after;
                let ns = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
                self.next_token.store(ns, Ordering::Relaxed);
                0
            }
        };
        let burst = current.spec().burst.max(1);
        let permille = u64::from(left) * 1000 / u64::from(burst);
        self.fullness
            .store(u32::try_from(permille).unwrap_or(1000), Ordering::Relaxed);
        decision.spec = self.configured;
        decision
    }

    /// Enforces `share` from now on (clamped to the configured rate and burst).
    pub fn set_share(&self, share: RateSpec) {
        let share = RateSpec {
            rate: share.rate.min(self.configured.rate),
            burst: share.burst.clamp(1, self.configured.burst),
        };
        let current = self.current.load();
        let old = current.spec();
        if old.burst == share.burst && (old.rate - share.rate).abs() <= old.rate * SAME {
            return;
        }
        let Some(next) = Throttle::new(current.name(), share) else {
            return;
        };
        let full = self.fullness_now(old);
        let mut keep = u64::from(share.burst) * full / 1000;
        if keep == 0 {
            // An empty bucket: its next token may be nearly due. A drained
            // bucket gives one only after a whole period, so let one through
            // now when it was due within half a period (unbiased on average;
            // otherwise every rebalance would cost the PoP part of a token).
            let due = Duration::from_nanos(self.next_token.load(Ordering::Relaxed));
            let wait = due.saturating_sub(self.epoch.elapsed());
            let period = Duration::from_secs_f64(1.0 / share.rate);
            keep = u64::from(wait < period / 2);
        }
        next.drain(u32::try_from(u64::from(share.burst) - keep).unwrap_or(0));
        self.current.store(Arc::new(next));
    }

    /// How full the bucket is now, per mille: as full as the last check
    /// left it, plus what `old`'s rate has refilled since. A share that
    /// arrives after a quiet spell must not empty a bucket that refilled.
    fn fullness_now(&self, old: RateSpec) -> u64 {
        let left = f64::from(self.fullness.load(Ordering::Relaxed).min(1000)) / 1000.0;
        let burst = f64::from(old.burst.max(1));
        let last = Duration::from_nanos(self.last_check.load(Ordering::Relaxed));
        let quiet = self.epoch.elapsed().saturating_sub(last).as_secs_f64();
        let tokens = (left * burst + quiet * old.rate).min(burst);
        // In 0..=1000 by the `min` above.
        (tokens / burst * 1000.0) as u64
    }

    /// Whether the bucket has had time to fill up since it was last checked,
    /// so that forgetting it (and starting the next request on a fresh one)
    /// gives nobody a token the rate had not already given back.
    fn refilled(&self) -> bool {
        let spec = self.current.load().spec();
        let full_in = Duration::from_secs_f64(f64::from(spec.burst) / spec.rate);
        let last = Duration::from_nanos(self.last_check.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last) >= full_in
    }

    /// Requests seen since the last call.
    pub fn take_demand(&self) -> u64 {
        self.demand.swap(0, Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type KeyBuckets = HashMap<String, HashMap<String, Arc<SharedThrottle>>>;

/// A PoP's per-key shared buckets and per-plan default shares.
#[derive(Debug, Default)]
pub(crate) struct KeyShares {
    /// By plan, then key id.
    buckets: Mutex<KeyBuckets>,
    /// Plan → the share of each key without its own.
    defaults: Mutex<HashMap<String, RateSpec>>,
}

impl KeyShares {
    /// The bucket of (family, key), created at the family's default share;
    /// a family (`portico_config::throttle_family`) is a plan's own key
    /// rate, or one it sets for a stage or route; `name` its throttle's
    /// name.
    pub fn bucket(
        &self,
        name: &'static str,
        family: &str,
        key_id: &str,
        configured: RateSpec,
    ) -> Option<Arc<SharedThrottle>> {
        let mut buckets = lock(&self.buckets);
        if let Some(b) = buckets.get(family).and_then(|p| p.get(key_id))
            && b.spec() == configured
        {
            return Some(Arc::clone(b));
        }
        let scope = format!("key:{family}/{key_id}");
        let bucket = Arc::new(SharedThrottle::new(name, scope, configured)?);
        if let Some(default) = lock(&self.defaults).get(family) {
            bucket.set_share(*default);
        }
        buckets
            .entry(family.to_owned())
            .or_default()
            .insert(key_id.to_owned(), Arc::clone(&bucket));
        Some(bucket)
    }

    /// A key's own share (the origin saw its demand).
    pub fn set_key(&self, plan: &str, key_id: &str, share: RateSpec) -> bool {
        let buckets = lock(&self.buckets);
        let Some(b) = buckets.get(plan).and_then(|p| p.get(key_id)) else {
            return false;
        };
        b.own.store(true, Ordering::Relaxed);
        b.set_share(share);
        true
    }

    /// The share of every key of `plan` without its own.
    pub fn set_default(&self, plan: &str, share: RateSpec) {
        lock(&self.defaults).insert(plan.to_owned(), share);
        let buckets = lock(&self.buckets);
        for b in buckets.get(plan).into_iter().flat_map(HashMap::values) {
            if !b.own.load(Ordering::Relaxed) {
                b.set_share(share);
            }
        }
    }

    /// Forgets the default shares of plans `keep` refuses (gone from the
    /// definitions).
    pub fn retain_defaults(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.defaults).retain(|plan, _| keep(plan));
    }

    pub fn each(&self, mut f: impl FnMut(&SharedThrottle)) {
        for b in lock(&self.buckets).values().flat_map(HashMap::values) {
            f(b);
        }
    }

    /// Forgets buckets not used since the last call that have filled up
    /// again: a drained one is kept until it has, or a key could wait out a
    /// sweep or two and start on a full burst, far above a slow plan's rate.
    pub fn retain_recent(&self) {
        let mut buckets = lock(&self.buckets);
        for plan in buckets.values_mut() {
            plan.retain(|_, b| b.touched.swap(false, Ordering::Relaxed) || !b.refilled());
        }
        buckets.retain(|_, p| !p.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: RateSpec = RateSpec {
        rate: 10.0,
        burst: 10,
    };

    fn allowed(t: &SharedThrottle, n: usize) -> usize {
        (0..n).filter(|_| !t.check().is_refused()).count()
    }

    #[test]
    fn a_new_share_starts_as_empty_as_the_old_bucket() {
        let t = SharedThrottle::new("stage", "stage:a/prod".into(), TEN).unwrap();
        assert_eq!(allowed(&t, 8), 8);
        // 2 of 10 tokens left; half the rate and burst keeps 1 of 5.
        t.set_share(RateSpec {
            rate: 5.0,
            burst: 5,
        });
        assert_eq!(t.share().burst, 5);
        assert_eq!(allowed(&t, 5), 1);
        assert_eq!(t.take_demand(), 13);
        assert_eq!(t.take_demand(), 0);
        // Headers announce the configured rate, not the share.
        assert_eq!(t.check().spec, TEN);
    }

    #[test]
    fn a_share_after_a_quiet_spell_keeps_what_the_bucket_refilled() {
        let t = SharedThrottle::new("route", "r".into(), TEN).unwrap();
        assert_eq!(allowed(&t, 12), 10);
        // Refilled whole in 1 s at 10/s; half of it is kept by half the rate.
        std::thread::sleep(Duration::from_millis(1200));
        t.set_share(RateSpec {
            rate: 5.0,
            burst: 5,
        });
        assert_eq!(allowed(&t, 5), 5);
    }

    #[test]
    fn shares_never_exceed_the_configured_rate() {
        let t = SharedThrottle::new("route", "r".into(), TEN).unwrap();
        t.set_share(RateSpec {
            rate: 50.0,
            burst: 50,
        });
        assert_eq!(t.share(), TEN);
    }

    #[test]
    fn a_share_the_limiter_cannot_hold_leaves_the_current_one() {
        let wide = RateSpec {
            rate: 1000.0,
            burst: 100_000_000,
        };
        let t = SharedThrottle::new("route", "r".into(), wide).unwrap();
        // From a peer: 0.001/s with the whole burst takes 1e11 s to refill,
        // past governor's nanoseconds (a panic there before).
        for rate in [0.001, 1e-20] {
            t.set_share(RateSpec {
                rate,
                burst: 100_000_000,
            });
            assert_eq!(t.share(), wide);
        }
    }

    #[test]
    fn keys_take_their_plans_default_until_they_have_their_own() {
        let k = KeyShares::default();
        let half = RateSpec {
            rate: 5.0,
            burst: 5,
        };
        k.set_default("gold", half);
        let a = k.bucket("key", "gold", "a", TEN).unwrap();
        assert_eq!(a.share(), half);
        assert_eq!(a.scope(), "key:gold/a");
        assert!(k.set_key("gold", "a", TEN));
        k.set_default(
            "gold",
            RateSpec {
                rate: 2.0,
                burst: 2,
            },
        );
        assert_eq!(a.share(), TEN, "a key's own share stays");
        assert!(!k.set_key("gold", "unknown", TEN));
        a.check();
        k.retain_recent();
        assert!(Arc::ptr_eq(&a, &k.bucket("key", "gold", "a", TEN).unwrap()));
        // Unused, and full again after 1 s at most (10 a second, burst 10).
        std::thread::sleep(Duration::from_millis(1100));
        k.retain_recent();
        k.retain_recent();
        assert!(!Arc::ptr_eq(
            &a,
            &k.bucket("key", "gold", "a", TEN).unwrap()
        ));
    }

    #[test]
    fn a_drained_key_bucket_is_kept_until_it_has_filled_up() {
        let k = KeyShares::default();
        // A slow plan: 5 at once, then one every 10 s.
        let slow = RateSpec {
            rate: 0.1,
            burst: 5,
        };
        let a = k.bucket("key", "slow", "a", slow).unwrap();
        for _ in 0..5 {
            assert!(!a.check().is_refused());
        }
        // Sweeps while the key waits do not hand it a fresh burst.
        for _ in 0..3 {
            k.retain_recent();
        }
        let again = k.bucket("key", "slow", "a", slow).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(again.check().is_refused());
    }

    /// Definitions with one throttled plan, `name`.
    fn plan_defs(name: &str) -> portico_config::Definitions {
        let text = format!(
            "[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n[[apis.stages]]\nname = \"prod\"\n\
             [[usage_plans]]\nname = \"{name}\"\nthrottle = {{ rate = 10, burst = 10 }}\n\
             api_stages = [{{ api = \"a\", stage = \"prod\" }}]\n"
        );
        portico_config::Definitions::from_toml_str(&text, "t").unwrap()
    }

    /// A PoP keeps a default share only for a throttled plan it defines,
    /// and forgets it when a reload removes the plan: shares an origin sends
    /// for other names leave nothing behind.
    #[test]
    fn default_shares_are_kept_only_for_defined_plans() {
        let limits = super::super::Limits::new(
            &portico_config::NodeThrottleConfig::default(),
            &plan_defs("gold"),
            None,
        )
        .with_shared_rates();
        let defaults = || limits.keys.as_ref().map_or(0, |k| lock(&k.defaults).len());
        for i in 0..10_000 {
            assert!(!limits.apply_share(&format!("plan:unknown-{i}"), TEN));
        }
        assert_eq!(defaults(), 0);
        assert!(limits.apply_share("plan:gold", TEN));
        assert_eq!(defaults(), 1);
        limits.rebuild(&plan_defs("silver"));
        assert_eq!(defaults(), 0);
    }
}
