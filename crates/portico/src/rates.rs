//! Rates that span PoPs, shared out by demand.
//!
//! A stage's, a route's and a key's rate limit the sum of what every PoP
//! accepts. Each PoP reports, every [`INTERVAL`], the demand it saw per shared
//! rate (`UsageReport`); the origin ([`OriginRates`]) gives each connected PoP
//! a share of every rate of its edge APIs (`RateShare`) in proportion to its
//! recent demand, with a floor so an idle PoP can still admit its first
//! requests, and the PoP ([`PopRates`]) enforces its share. Shares always sum
//! to the configured rate (and bursts to the configured burst).
//!
//! The error: between two rebalances a PoP whose demand jumped keeps its old
//! share, so the sum of accepted requests stays at or below the configured
//! rate plus the bursts; measured in `tests/limits.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use portico_backbone::{ControlHandler, ControlLink, SyncedConfig};
use portico_config::{Definitions, EndpointMode, RateLimit, parse_family};
use portico_gateway::limits::Limits;
use portico_gateway::throttle::RateSpec;
use portico_proto::{Frame, FrameKind, RateShare, UsageEntry, UsageReport, limits};
use portico_quota::RedisBook;
use tokio::sync::watch;

/// Control frames of shared rates.
pub const KINDS: &[FrameKind] = &[FrameKind::UsageReport, FrameKind::RateShare];

/// How often PoPs report demand and the origin rebalances.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// Demand older than this no longer counts.
const FORGET: Duration = Duration::from_secs(2);
/// A share is sent again after this long even when it did not change: one
/// that reached a PoP before the definitions that make its scope (a reload's
/// delta, a link's first snapshot) was dropped there, and with demand steady
/// it would never change enough to be sent again.
const RESEND: Duration = Duration::from_secs(5);

/// The most key rates an origin publishes its demand for in one exchange
/// with the region's other origins (the busiest; the others' shares then
/// leave it out, as if it had none there), beside every stage and route
/// rate it takes part in.
const MAX_PUBLISHED: usize = 10_000;

/// Part of an equal split every connected PoP keeps whatever its demand.
const FLOOR: f64 = 0.1;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Splits `total` by `weights`: every PoP gets its share of the rate, and of
/// the burst by largest remainder, so that the bursts add up to the total.
/// Each PoP keeps a burst of 1 at least (a bucket of 0 admits nothing ever),
/// taken from the largest share when one can spare it: the bursts exceed
/// the total only when it is smaller than the number of PoPs.
pub fn split(total: RateSpec, weights: &[f64]) -> Vec<RateSpec> {
    let sum: f64 = weights.iter().sum();
    let n = weights.len().max(1) as f64;
    let parts: Vec<f64> = weights
        .iter()
        .map(|w| if sum > 0.0 { w / sum } else { 1.0 / n })
        .collect();
    let exact: Vec<f64> = parts.iter().map(|p| f64::from(total.burst) * p).collect();
    // Each floor is within 0..=total.burst.
    let mut bursts: Vec<u32> = exact.iter().map(|e| e.floor() as u32).collect();
    let mut left = total.burst.saturating_sub(bursts.iter().sum());
    let mut by_remainder: Vec<usize> = (0..bursts.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for i in by_remainder {
        if left == 0 {
            break;
        }
        bursts[i] += 1;
        left -= 1;
    }
    for i in 0..bursts.len() {
        if bursts[i] > 0 {
            continue;
        }
        let largest = (0..bursts.len()).max_by_key(|&j| (bursts[j], std::cmp::Reverse(j)));
        if let Some(j) = largest.filter(|&j| bursts[j] > 1) {
            bursts[j] -= 1;
        }
        bursts[i] = 1;
    }
    parts
        .iter()
        .zip(bursts)
        .map(|(part, burst)| RateSpec {
            rate: total.rate * part,
            burst,
        })
        .collect()
}

/// One shared rate at the origin.
struct Scope {
    total: RateSpec,
    /// PoP id → (requests per second, when reported).
    demand: HashMap<String, (f64, Instant)>,
    /// PoP id → the share last sent.
    sent: HashMap<String, (RateSpec, Instant)>,
    /// This origin's own demand (requests per second, when measured), for
    /// the rates it takes a share of itself (see [`OriginRates::new`]).
    own: Option<(f64, Instant)>,
}

impl Scope {
    fn new(total: RateSpec) -> Self {
        Scope {
            total,
            demand: HashMap::new(),
            sent: HashMap::new(),
            own: None,
        }
    }
}

/// The origin's side: shares every shared rate of its edge APIs among the
/// connected PoPs, and a plan's key rate also with itself when the plan
/// covers one of its regional APIs.
pub struct OriginRates {
    links: crate::control::Links,
    /// Shared rates by scope.
    scopes: Mutex<HashMap<String, Scope>>,
    definitions: watch::Receiver<Arc<Definitions>>,
    /// This origin's limits, when it takes part (see [`OriginRates::new`]).
    own: Option<Arc<Limits>>,
    /// The region's other origins, when they share a store with this one
    /// (see [`OriginRates::with_peers`]).
    peers: Option<Peers>,
}

/// What the region's other origins take of the rates this one takes part
/// in, read from the store they share.
struct Peers {
    store: RedisBook,
    node_id: String,
    /// Their demand, and when it was read.
    demand: Mutex<(DemandByScope, Option<Instant>)>,
}

/// Requests a second by scope, with the other origin's id.
type DemandByScope = HashMap<String, Vec<(String, f64)>>;

/// Plans that cover an API of endpoint mode `mode`. A regional API's
/// requests enter at the origin, whose buckets then spend the plan's key
/// rates; only an edge API's enter at PoPs.
fn plans_with(defs: &Definitions, mode: EndpointMode) -> HashSet<&str> {
    defs.usage_plans
        .iter()
        .filter(|plan| {
            plan.api_stages
                .iter()
                .any(|(api, _)| defs.api(api).is_some_and(|a| a.endpoint == mode))
        })
        .map(|plan| plan.name.as_str())
        .collect()
}

/// The family of a `key:FAMILY/KEY` or `plan:FAMILY` scope: a plan's name,
/// or one of its stage or route throttles (`portico_config::throttle_family`).
fn family_of(scope: &str) -> Option<&str> {
    match scope.split_once(':')? {
        // The key id is last: a route's family holds `/`s of its own.
        ("key", rest) => Some(rest.rsplit_once('/')?.0),
        ("plan", family) => Some(family),
        _ => None,
    }
}

/// The plan a `key:` or `plan:` scope is of, and the API its family
/// throttles in, if it names one.
fn plan_of(scope: &str) -> Option<(&str, Option<&str>)> {
    let (plan, within) = parse_family(family_of(scope)?)?;
    Some((plan, within.map(|(api, _, _)| api)))
}

fn spec(r: RateLimit) -> RateSpec {
    RateSpec {
        rate: r.rate,
        burst: r.burst,
    }
}

/// The stage and route throttles of `defs`' APIs of endpoint mode `mode`,
/// by scope (`stage:API/STAGE`, `route:API/STAGE/ROUTE KEY`).
fn stage_and_route_rates(defs: &Definitions, mode: EndpointMode) -> HashMap<String, RateSpec> {
    let mut out = HashMap::new();
    for api in defs.apis.iter().filter(|a| a.endpoint == mode) {
        for stage in &api.stages {
            let scope = format!("{}/{}", api.name, stage.name);
            if let Some(r) = stage.throttle {
                out.insert(format!("stage:{scope}"), spec(r));
            }
            for (i, route) in stage.deployment.routes.iter().enumerate() {
                if let Some(r) = stage.route_settings(i).throttle {
                    out.insert(format!("route:{scope}/{}", route.key), spec(r));
                }
            }
        }
    }
    out
}

/// The shared rates of `defs`' edge APIs, and each plan's key rate.
fn shared_rates(defs: &Definitions) -> HashMap<String, RateSpec> {
    let mut out = stage_and_route_rates(defs, EndpointMode::Edge);
    for plan in &defs.usage_plans {
        if let Some(r) = plan.throttle {
            out.insert(format!("plan:{}", plan.name), spec(r));
        }
        // A stage's or route's key rate spans PoPs when its API is an edge
        // API; a regional API's stays whole where its requests enter.
        for kt in plan.key_throttles.iter().filter(|kt| defs.is_edge(&kt.api)) {
            out.insert(format!("plan:{}", kt.family(&plan.name)), spec(kt.throttle));
        }
    }
    out
}

/// Whether `scope` names a key's rate of `defs` (`key:FAMILY/KEY`: the
/// plan's own, or one it sets for a stage or route). A stage's or route's
/// of a regional API only when `regional` (the region's origins share it
/// among themselves; PoPs never see that API's requests).
fn key_rate(defs: &Definitions, scope: &str, regional: bool) -> Result<RateSpec, String> {
    let rest = scope.strip_prefix("key:").ok_or("not a key scope")?;
    let (family, key) = rest.rsplit_once('/').ok_or("malformed key scope")?;
    let (plan, within) = parse_family(family).ok_or("malformed key scope")?;
    if let Some((api, _, _)) = within
        && !regional
        && !defs.is_edge(api)
    {
        return Err(format!(
            "`{api}` is not an edge API: its key rates are not shared"
        ));
    }
    let (plan, _) = crate::quotas::plan_and_key(defs, plan, key)?;
    let r = plan
        .family_throttle(within)
        .ok_or_else(|| format!("plan `{}` has no throttle for `{family}`", plan.name))?;
    Ok(spec(r))
}

impl OriginRates {
    /// Shares the rates of `definitions` among the connected PoPs, and with
    /// this origin's `own` limits (which must have shared rates) for key
    /// rates of plans that cover a regional API: such a plan has one key
    /// rate, and requests entering here spend it as much as those entering
    /// at PoPs. The origin counts its own demand for the plan's keys beside
    /// the PoPs' reports and enforces its share, so the key's buckets at the
    /// PoPs and here sum to the plan's rate. A region of several replica
    /// origins has each take a share of its own: their requests stay within
    /// the rate plus one share per replica beyond the first, unless they
    /// share a store ([`OriginRates::with_peers`]).
    pub fn new(
        definitions: watch::Receiver<Arc<Definitions>>,
        own: Option<Arc<Limits>>,
    ) -> Arc<Self> {
        Self::build(definitions, own, None)
    }

    /// [`OriginRates::new`] for an origin whose region's origins share a
    /// store (`[quotas] store`): each publishes there its own demand for the
    /// key rates it takes part in, and splits each rate among the PoPs,
    /// itself and the others by that demand. Every origin computing the same
    /// split, theirs and this one's shares sum to the rate: a region of
    /// replicas keeps a key to its plan's rate, not to the rate plus a share
    /// per replica.
    pub fn with_peers(
        definitions: watch::Receiver<Arc<Definitions>>,
        own: Arc<Limits>,
        store: RedisBook,
        node_id: &str,
    ) -> Arc<Self> {
        let peers = Peers {
            store,
            node_id: node_id.to_owned(),
            demand: Mutex::new((HashMap::new(), None)),
        };
        Self::build(definitions, Some(own), Some(peers))
    }

    fn build(
        definitions: watch::Receiver<Arc<Definitions>>,
        own: Option<Arc<Limits>>,
        peers: Option<Peers>,
    ) -> Arc<Self> {
        Arc::new(Self {
            links: crate::control::Links::default(),
            scopes: Mutex::new(HashMap::new()),
            definitions,
            own,
            peers,
        })
    }

    /// The rates that only the region's origins spend, split among them
    /// when they share a store: the stage and route throttles of regional
    /// APIs, whose requests enter at origins and never at PoPs. Without
    /// peers, none: this origin's buckets hold those rates whole.
    fn origins_only(&self, defs: &Definitions) -> HashMap<String, RateSpec> {
        match (&self.peers, &self.own) {
            (Some(_), Some(_)) => stage_and_route_rates(defs, EndpointMode::Regional),
            _ => HashMap::new(),
        }
    }

    /// The other origins' demand for `scope` (by origin id), while it is
    /// fresh.
    fn peer_demand(&self, scope: &str, now: Instant) -> Vec<(String, f64)> {
        let Some(peers) = &self.peers else {
            return Vec::new();
        };
        let demand = lock(&peers.demand);
        match demand.1 {
            Some(at) if now.duration_since(at) < FORGET => {
                demand.0.get(scope).cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// Publishes this origin's own demand and reads the others', every
    /// [`INTERVAL`] until `stop`.
    async fn exchange(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(peers) = &self.peers else { return };
        let mut tick = tokio::time::interval(INTERVAL);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = Instant::now();
            let mut mine: Vec<(String, f64)> = lock(&self.scopes)
                .iter()
                .filter_map(|(scope, s)| {
                    let (rate, at) = s.own?;
                    (now.duration_since(at) < FORGET).then(|| (scope.clone(), rate))
                })
                .collect();
            // Every stage and route rate (as many as the definitions have),
            // and the busiest keys only, past a bound: each exchange is one
            // script that Redis runs alone.
            let is_key = |scope: &str| scope.starts_with("key:");
            let keys = mine.iter().filter(|(scope, _)| is_key(scope)).count();
            if keys > MAX_PUBLISHED {
                // Keys last, busiest first.
                mine.sort_by(|a, b| (is_key(&a.0).cmp(&is_key(&b.0))).then(b.1.total_cmp(&a.1)));
                mine.truncate(mine.len() - keys + MAX_PUBLISHED);
            }
            match peers
                .store
                .exchange_demand(&peers.node_id, &mine, FORGET)
                .await
            {
                Ok(theirs) => {
                    let mut by_scope = DemandByScope::new();
                    for (origin, rates) in theirs {
                        for (scope, rate) in rates {
                            by_scope
                                .entry(scope)
                                .or_default()
                                .push((origin.clone(), rate));
                        }
                    }
                    *lock(&peers.demand) = (by_scope, Some(Instant::now()));
                    if std::mem::take(&mut failing) {
                        tracing::info!("shared rates: the other origins' demand is read again");
                    }
                }
                // Once per outage: after FORGET each origin takes the whole
                // rate again, as if alone.
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(%err, "shared rates: the other origins' demand cannot be read; each origin enforces its plans' whole key rates until it can");
                }
                Err(_) => {}
            }
        }
    }

    /// Takes this origin's own demand since the last call, for the keys of
    /// `plans` and the rates of `alone` (the other rates its buckets count
    /// are not shared).
    fn own_demand(
        &self,
        defs: &Definitions,
        plans: &HashSet<&str>,
        alone: &HashMap<String, RateSpec>,
        now: Instant,
    ) {
        if let Some(own) = &self.own {
            self.record_own(defs, plans, alone, now, |f| own.take_demand(f));
        }
    }

    /// Records the demand `take` yields (scope, requests) as this origin's,
    /// for the keys of `plans`, each at its plan's rate in `defs`, and for
    /// the rates of `alone` (what [`origins_only`] gives).
    fn record_own(
        &self,
        defs: &Definitions,
        plans: &HashSet<&str>,
        alone: &HashMap<String, RateSpec>,
        now: Instant,
        take: impl FnOnce(&mut dyn FnMut(&str, u64)),
    ) {
        let mut scopes = lock(&self.scopes);
        take(&mut |scope, used| {
            let total = match alone.get(scope) {
                Some(total) => *total,
                None if plan_of(scope).is_some_and(|(p, _)| plans.contains(p)) => {
                    match key_rate(defs, scope, self.peers.is_some()) {
                        Ok(total) => total,
                        Err(_) => return,
                    }
                }
                None => return,
            };
            let s = scopes
                .entry(scope.to_owned())
                .or_insert_with(|| Scope::new(total));
            // A reload may have changed the plan's rate, as in `report`.
            s.total = total;
            s.own = Some((used as f64 / INTERVAL.as_secs_f64(), now));
        });
    }

    /// Takes a PoP's report; entries for rates this origin does not know
    /// change nothing and are logged in one line per report (the first of
    /// them and how many: a report may hold a million).
    pub fn report(&self, pop: &str, report: &UsageReport, now: Instant) {
        let defs = Arc::clone(&self.definitions.borrow());
        let known = shared_rates(&defs);
        let mut scopes = lock(&self.scopes);
        let mut refused: Option<(&str, String)> = None;
        let mut refused_count = 0usize;
        for UsageEntry { scope, used } in &report.entries {
            let total = match known.get(scope) {
                Some(total) => Ok(*total),
                None if scope.starts_with("key:") => key_rate(&defs, scope, false),
                None => Err("unknown shared rate".to_owned()),
            };
            let total = match total {
                Ok(t) => t,
                Err(why) => {
                    refused_count += 1;
                    refused.get_or_insert((scope, why));
                    continue;
                }
            };
            let rate = *used as f64 / INTERVAL.as_secs_f64();
            let s = scopes
                .entry(scope.clone())
                .or_insert_with(|| Scope::new(total));
            s.total = total;
            s.demand.insert(pop.to_owned(), (rate, now));
        }
        drop(scopes);
        if let Some((first, why)) = refused {
            tracing::warn!(%pop, refused = refused_count, %first, "usage report entries refused: {why}");
        }
    }

    /// Recomputes every share and sends those that changed.
    pub fn rebalance(&self, now: Instant) {
        let defs = Arc::clone(&self.definitions.borrow());
        let defined = shared_rates(&defs);
        let regional = match self.own {
            Some(_) => plans_with(&defs, EndpointMode::Regional),
            None => HashSet::new(),
        };
        let edge = plans_with(&defs, EndpointMode::Edge);
        let alone = self.origins_only(&defs);
        self.own_demand(&defs, &regional, &alone, now);
        let links = self.links.open();
        if links.is_empty() && regional.is_empty() && alone.is_empty() {
            return;
        }
        let mut scopes = lock(&self.scopes);
        // Rates of the definitions without demand still get an equal split.
        for (scope, total) in defined.iter().chain(&alone) {
            scopes
                .entry(scope.clone())
                .or_insert_with(|| Scope::new(*total));
        }
        scopes.retain(|scope, s| {
            s.demand
                .retain(|_, (_, at)| now.duration_since(*at) < FORGET);
            s.own = s.own.filter(|(_, at)| now.duration_since(*at) < FORGET);
            match defined.get(scope).or_else(|| alone.get(scope)) {
                Some(total) => {
                    s.total = *total;
                    true
                }
                // A key's rate lives while its PoPs (or this origin) report demand.
                None => scope.starts_with("key:") && (!s.demand.is_empty() || s.own.is_some()),
            }
        });
        for (scope, s) in scopes.iter_mut() {
            // A plan's key rates are the PoPs' when it covers an edge API,
            // and this origin's too when it covers a regional one; a rate it
            // sets in one API stage is the PoPs' for an edge API's, and the
            // region's origins' for a regional API's when they share a
            // store, as are that API's stage and route rates.
            let peers = self.peers.is_some();
            let (at_pops, here) = match plan_of(scope) {
                _ if alone.contains_key(scope) => (false, true),
                Some((_, Some(api))) if peers && !defs.is_edge(api) => (false, true),
                None | Some((_, Some(_))) => (true, false),
                Some((plan, None)) => (edge.contains(plan), regional.contains(plan)),
            };
            let own = self.own.as_ref().filter(|_| here);
            let pops = if at_pops { &links[..] } else { &[][..] };
            // The PoPs' demand, then this origin's when it takes part, then
            // the region's other origins' (their shares are theirs to take).
            let mut demand: Vec<f64> = pops
                .iter()
                .map(|l| s.demand.get(l.peer_id()).map_or(0.0, |(r, _)| *r))
                .collect();
            // Origins in the order of their ids, the same at each of them:
            // every origin then splits alike (a remainder goes to the same one).
            let mut own_at = pops.len();
            if own.is_some() {
                let mut origins = self.peer_demand(scope, now);
                let me = self.peers.as_ref().map_or("", |p| p.node_id.as_str());
                origins.push((me.to_owned(), s.own.map_or(0.0, |(r, _)| r)));
                origins.sort_by(|a, b| a.0.cmp(&b.0));
                own_at += origins.iter().position(|(id, _)| id == me).unwrap_or(0);
                demand.extend(origins.into_iter().map(|(_, rate)| rate));
            }
            if demand.is_empty() {
                continue;
            }
            let sum: f64 = demand.iter().sum();
            let floor = FLOOR * sum.max(1.0) / demand.len() as f64;
            let weights: Vec<f64> = demand.iter().map(|d| d + floor).collect();
            let shares = split(s.total, &weights);
            if let Some(limits) = own
                && let Some(mine) = shares.get(own_at)
            {
                limits.apply_share(scope, *mine);
            }
            for (link, share) in pops.iter().zip(shares) {
                let last = s.sent.get(link.peer_id());
                let same = last.is_some_and(|(l, at)| {
                    l.burst == share.burst
                        && (l.rate - share.rate).abs() <= l.rate * 0.02
                        && now.duration_since(*at) < RESEND
                });
                if same {
                    continue;
                }
                let frame = Frame::RateShare(RateShare {
                    scope: scope.clone(),
                    // At least a thousandth of a request a second: a share
                    // rounded to 0 is refused as empty at the PoP, which
                    // then keeps the larger one it had.
                    rate_milli_per_sec: ((share.rate * 1000.0).round() as u64).max(1),
                    burst: u64::from(share.burst),
                });
                if link.try_send(frame).is_ok() {
                    s.sent.insert(link.peer_id().to_owned(), (share, now));
                }
            }
        }
    }

    /// Rebalances every [`INTERVAL`] until `stop` (and trades demand with
    /// the region's other origins, when they share a store).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.peers.is_some() {
            tokio::spawn(Arc::clone(&self).exchange(stop.clone()));
        }
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => self.rebalance(Instant::now()),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

impl ControlHandler for OriginRates {
    fn link_up(&self, link: &ControlLink) {
        self.links.up(link);
        // Everyone's equal part changed: resend every share.
        for s in lock(&self.scopes).values_mut() {
            s.sent.clear();
        }
    }

    fn link_down(&self, link: &ControlLink) {
        self.links.down(link);
        for s in lock(&self.scopes).values_mut() {
            s.sent.clear();
            s.demand.remove(link.peer_id());
        }
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        match frame {
            Frame::UsageReport(report) => self.report(link.peer_id(), &report, Instant::now()),
            other => tracing::debug!(frame = %other.kind(), "control frame ignored"),
        }
    }
}

/// `entries` as `UsageReport` frames of at most
/// [`limits::USAGE_ENTRIES_PER_FRAME`] entries each, so that each stays
/// under the frame size an origin takes ([`limits::MAX_USAGE_REPORT`]).
fn report_frames(pop_id: &str, window_start_unix_ms: u64, entries: Vec<UsageEntry>) -> Vec<Frame> {
    let mut entries = entries.into_iter().peekable();
    let mut frames = Vec::new();
    while entries.peek().is_some() {
        frames.push(Frame::UsageReport(UsageReport {
            pop_id: pop_id.to_owned(),
            window_start_unix_ms,
            entries: entries
                .by_ref()
                .take(limits::USAGE_ENTRIES_PER_FRAME)
                .collect(),
        }));
    }
    frames
}

/// The PoP's side: applies shares, reports demand to the origins.
#[derive(Default)]
pub struct PopRates {
    limits: OnceLock<Arc<Limits>>,
    config: OnceLock<watch::Receiver<Arc<SyncedConfig>>>,
    links: crate::control::Links,
    node_id: OnceLock<String>,
}

impl PopRates {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Completes the wiring once the gateway and the backbone exist.
    pub fn attach(
        &self,
        node_id: &str,
        limits: Arc<Limits>,
        config: watch::Receiver<Arc<SyncedConfig>>,
    ) {
        let _ = self.node_id.set(node_id.to_owned());
        let _ = self.limits.set(limits);
        let _ = self.config.set(config);
    }

    /// The region whose origin shares `scope`: its API's home, or for a key
    /// or plan, the home of the first API the plan covers (of the API a
    /// plan's stage or route throttle is in, for its rate).
    fn region_of(&self, scope: &str) -> Option<String> {
        let config = self.config.get()?.borrow();
        let (kind, rest) = scope.split_once(':')?;
        let api = match kind {
            "stage" | "route" => rest.split('/').next()?.to_owned(),
            // A rate a plan sets in one API stage: that API's home.
            _ => match plan_of(scope)? {
                (_, Some(api)) => api.to_owned(),
                (plan, None) => {
                    let plan = config.definitions.usage_plan(plan)?;
                    plan.api_stages.first()?.0.clone()
                }
            },
        };
        config.home_of(&api).map(str::to_owned)
    }

    /// Whether `link`'s origin is of the region that shares `scope`: another
    /// region's origin, one defining an API of the same name, must not set
    /// this region's buckets. A stage's or route's scope whose home is not
    /// known here passes (no bucket takes it anyway); a plan's or key's is
    /// `None`, no one's: its share would be kept for a plan this PoP does
    /// not know.
    fn sent_from_home(&self, link: &ControlLink, scope: &str) -> Option<bool> {
        match self.region_of(scope) {
            Some(home) => Some(home == link.region()),
            None if scope.starts_with("plan:") || scope.starts_with("key:") => None,
            None => Some(true),
        }
    }

    /// Sends this interval's demand, each rate to its home region's origins.
    pub fn report(&self) {
        let (Some(limits), Some(node_id)) = (self.limits.get(), self.node_id.get()) else {
            return;
        };
        let mut by_region: HashMap<Option<String>, Vec<UsageEntry>> = HashMap::new();
        limits.take_demand(|scope, used| {
            by_region
                .entry(self.region_of(scope))
                .or_default()
                .push(UsageEntry {
                    scope: scope.to_owned(),
                    used,
                });
        });
        if by_region.is_empty() {
            return;
        }
        let window_start_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
            .saturating_sub(INTERVAL.as_millis() as u64);
        let links = self.links.open();
        for (region, entries) in by_region {
            let to: Vec<&ControlLink> = links
                .iter()
                .filter(|l| region.as_deref().is_none_or(|r| l.region() == r))
                .collect();
            for frame in report_frames(node_id, window_start_unix_ms, entries) {
                for link in &to {
                    if let Err(err) = link.try_send(frame.clone()) {
                        tracing::debug!(origin = %link.peer_id(), %err, "usage report not sent");
                    }
                }
            }
        }
    }

    /// Reports every [`INTERVAL`] until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => self.report(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

impl ControlHandler for PopRates {
    fn link_up(&self, link: &ControlLink) {
        self.links.up(link);
    }

    fn link_down(&self, link: &ControlLink) {
        self.links.down(link);
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        let Frame::RateShare(share) = frame else {
            tracing::debug!(frame = %frame.kind(), "control frame ignored");
            return;
        };
        let Some(from_home) = self.sent_from_home(link, &share.scope) else {
            tracing::debug!(origin = %link.peer_id(), scope = %share.scope, "rate share for a plan not known here");
            return;
        };
        if !from_home {
            tracing::warn!(
                origin = %link.peer_id(),
                region = link.region(),
                scope = %share.scope,
                "rate share from an origin outside the rate's home region ignored"
            );
            return;
        }
        let Some(limits) = self.limits.get() else {
            return;
        };
        let spec = RateSpec {
            rate: share.rate_milli_per_sec as f64 / 1000.0,
            burst: u32::try_from(share.burst).unwrap_or(u32::MAX),
        };
        if spec.rate <= 0.0 || spec.burst == 0 {
            tracing::warn!(origin = %link.peer_id(), scope = %share.scope, "empty rate share ignored");
            return;
        }
        if !limits.apply_share(&share.scope, spec) {
            tracing::debug!(origin = %link.peer_id(), scope = %share.scope, "rate share for a rate not in use here");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the home region's origins set a rate's share at a PoP.
    #[test]
    fn a_share_from_another_region_is_ignored() {
        let text =
            "[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n[[apis.stages]]\nname = \"prod\"\n";
        let defs = Arc::new(portico_config::Definitions::from_toml_str(text, "t").unwrap());
        let homes = HashMap::from([("a".to_owned(), "r1".to_owned())]);
        let (_tx, rx) = watch::channel(Arc::new(SyncedConfig::new(defs, homes)));
        let rates = PopRates::new();
        let _ = rates.config.set(rx);
        let caps = portico_proto::Capabilities(0);
        let (home, _h) = ControlLink::new("origin-1", "r1", caps);
        let (other, _o) = ControlLink::new("origin-2", "r2", caps);
        assert_eq!(rates.sent_from_home(&home, "stage:a/prod"), Some(true));
        assert_eq!(rates.sent_from_home(&other, "stage:a/prod"), Some(false));
        assert_eq!(
            rates.sent_from_home(&other, "stage:unknown/prod"),
            Some(true),
            "no bucket takes it"
        );
        // A plan (or a key of one) this PoP does not know is no one's.
        assert_eq!(rates.sent_from_home(&home, "plan:unknown"), None);
        assert_eq!(rates.sent_from_home(&home, "key:unknown/k"), None);
        // A plan's stage or route throttle is its API's region's.
        for scope in ["plan:p@a/prod", "key:p@a/prod/GET /m/k"] {
            assert_eq!(rates.sent_from_home(&home, scope), Some(true), "{scope}");
            assert_eq!(rates.sent_from_home(&other, scope), Some(false), "{scope}");
        }
    }

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Out(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Out {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                lock(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8_lossy(&lock(&out.0)).into_owned()
    }

    /// A report of 10 000 rates the origin does not know is one log line.
    #[test]
    fn unknown_report_entries_are_logged_once_per_report() {
        let defs = Arc::new(Definitions::empty());
        let (_tx, rx) = watch::channel(defs);
        let rates = OriginRates::new(rx, None);
        let report = UsageReport {
            pop_id: "pop-a".into(),
            window_start_unix_ms: 0,
            entries: (0..10_000)
                .map(|i| UsageEntry {
                    scope: format!("stage:unknown-{i}/prod"),
                    used: 1,
                })
                .collect(),
        };
        let text = logged(|| rates.report("pop-a", &report, Instant::now()));
        assert_eq!(text.lines().count(), 1, "{}", &text[..text.len().min(500)]);
        assert!(text.contains("refused=10000"), "{text}");
        assert!(text.contains("stage:unknown-0/prod"), "{text}");
        assert!(lock(&rates.scopes).is_empty());
    }

    #[test]
    fn shares_sum_to_the_configured_rate() {
        let total = RateSpec {
            rate: 30.0,
            burst: 10,
        };
        let shares = split(total, &[6.0, 2.0, 1.0]);
        let rate: f64 = shares.iter().map(|s| s.rate).sum();
        assert!((rate - 30.0).abs() < 1e-6, "{rate}");
        assert!((shares[0].rate - 20.0).abs() < 1e-9);
        assert!(shares.iter().all(|s| s.burst >= 1));
        let equal = split(total, &[0.0, 0.0]);
        assert_eq!(equal[0].rate, 15.0);
        assert_eq!(equal[0].burst, 5);
    }

    #[test]
    fn bursts_add_up_to_the_configured_one_when_every_pop_can_have_one() {
        let bursts = |total: u32, weights: &[f64]| -> Vec<u32> {
            let spec = RateSpec {
                rate: 5.0,
                burst: total,
            };
            split(spec, weights).iter().map(|s| s.burst).collect()
        };
        // Rounding each share gave 2 + 2 + 2 = 6 of 5.
        assert_eq!(bursts(5, &[1.0, 1.0, 1.0]), [2, 2, 1]);
        assert_eq!(bursts(10, &[6.0, 2.0, 1.0]).iter().sum::<u32>(), 10);
        // One busy PoP of seven: 5 + 6 × 1 = 11 before.
        let busy = bursts(10, &[100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(busy, [4, 1, 1, 1, 1, 1, 1]);
        // Fewer tokens than PoPs: one each, the least that lets each serve.
        assert_eq!(bursts(5, &[1.0; 7]), [1; 7]);
        for weights in [[3.0, 0.5, 0.25, 9.0], [0.0; 4], [1e-9, 1.0, 1e9, 2.0]] {
            for total in [1, 4, 7, 100, 1_000_000] {
                let b = bursts(total, &weights);
                assert!(b.iter().all(|&x| x >= 1), "{b:?}");
                assert_eq!(
                    b.iter().sum::<u32>(),
                    total.max(4),
                    "{total} {weights:?} {b:?}"
                );
            }
        }
    }

    fn defs() -> Arc<Definitions> {
        let text = r#"
[[apis]]
name = "a"
endpoint = "edge"
[[apis.routes]]
method = "GET"
path = "/m"
[apis.routes.integration]
type = "mock"
[[apis.stages]]
name = "prod"
throttle = { rate = 10, burst = 10 }

[[usage_plans]]
name = "gold"
throttle = { rate = 4, burst = 4 }
api_stages = [{ api = "a", stage = "prod" }]

[[api_keys]]
id = "k"
hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
plans = ["gold"]
"#;
        Arc::new(Definitions::from_toml_str(text, "t").unwrap())
    }

    /// Plans of an edge API (`gold`), of a regional one (`solo`) and of
    /// both (`both`), each at `rate` per key, and key `k` of `solo`.
    fn mixed_defs_at(rate: u32) -> Arc<Definitions> {
        let api = |name: &str, mode: &str| {
            format!(
                "[[apis]]\nname = \"{name}\"\nendpoint = \"{mode}\"\n[[apis.stages]]\nname = \"prod\"\n"
            )
        };
        let plan = |name: &str, apis: &[&str]| {
            let stages: Vec<String> = apis
                .iter()
                .map(|a| format!("{{ api = \"{a}\", stage = \"prod\" }}"))
                .collect();
            format!(
                "[[usage_plans]]\nname = \"{name}\"\nthrottle = {{ rate = {rate}, burst = 8 }}\napi_stages = [{}]\n",
                stages.join(", ")
            )
        };
        let key = "[[api_keys]]\nid = \"k\"\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\nplans = [\"solo\"]\n";
        let text = [
            api("e", "edge"),
            api("r", "regional"),
            plan("gold", &["e"]),
            plan("solo", &["r"]),
            plan("both", &["e", "r"]),
            key.to_owned(),
        ]
        .concat();
        Arc::new(Definitions::from_toml_str(&text, "t").unwrap())
    }

    fn mixed_defs() -> Arc<Definitions> {
        mixed_defs_at(8)
    }

    /// An origin of `defs` that takes part in its key rates, with one
    /// PoP's link up (kept alive by the caller) and that link's outbox.
    fn taking_part_with_a_pop(
        defs: &Arc<Definitions>,
    ) -> (Arc<OriginRates>, ControlLink, portico_backbone::Outbox) {
        let (_tx, rx) = watch::channel(Arc::clone(defs));
        let config = portico_config::NodeThrottleConfig::default();
        let own = Arc::new(Limits::new(&config, defs, None).with_shared_rates());
        let rates = OriginRates::new(rx, Some(own));
        let (link, outbox) = ControlLink::new("pop-a", "r", portico_proto::Capabilities(0));
        rates.links.up(&link);
        (rates, link, outbox)
    }

    /// The shares in `outbox`: (scope, rate in thousandths), sorted.
    fn shares_sent(outbox: &mut portico_backbone::Outbox) -> Vec<(String, u64)> {
        let mut sent: Vec<(String, u64)> = std::iter::from_fn(|| outbox.try_recv().ok())
            .filter_map(|f| match f {
                Frame::RateShare(s) => Some((s.scope, s.rate_milli_per_sec)),
                _ => None,
            })
            .collect();
        sent.sort();
        sent
    }

    /// PoPs get shares of the plans they serve keys of; the origin keeps a
    /// part of a plan that also covers its regional API, and all of one
    /// that covers only regional APIs.
    #[test]
    fn the_origin_shares_the_key_rates_of_plans_with_regional_apis() {
        let defs = mixed_defs();
        let (rates, _link, mut outbox) = taking_part_with_a_pop(&defs);
        rates.rebalance(Instant::now());
        let sent = shares_sent(&mut outbox);
        // `both`: half to the one PoP, half kept here; `solo`: nothing sent.
        assert_eq!(
            sent,
            [
                ("plan:both".to_owned(), 4000),
                ("plan:gold".to_owned(), 8000)
            ]
        );
    }

    /// A plan's stage and route throttles are shared by their API's mode
    /// alone: an edge API's wholly among the PoPs, a regional API's not at
    /// all (its requests enter here, where its keyed bucket holds the whole
    /// rate), whatever else the plan covers; a PoP's demand for a key of
    /// one is taken at that throttle's rate.
    #[test]
    fn a_plans_stage_and_route_rates_are_shared_where_their_api_is_served() {
        let text = "[[apis]]\nname = \"e\"\nendpoint = \"edge\"\n\
            [[apis.routes]]\nmethod = \"GET\"\npath = \"/m\"\nintegration = { type = \"mock\" }\n\
            [[apis.stages]]\nname = \"prod\"\n\
            [[apis]]\nname = \"r\"\nendpoint = \"regional\"\n[[apis.stages]]\nname = \"prod\"\n\
            [[usage_plans]]\nname = \"both\"\nthrottle = { rate = 8, burst = 8 }\n\
            [[usage_plans.api_stages]]\napi = \"e\"\nstage = \"prod\"\nthrottle = { rate = 6, burst = 6 }\n\
            route_throttles = [{ route = \"GET /m\", throttle = { rate = 2, burst = 2 } }]\n\
            [[usage_plans.api_stages]]\napi = \"r\"\nstage = \"prod\"\nthrottle = { rate = 4, burst = 4 }\n\
            [[api_keys]]\nid = \"k\"\nplans = [\"both\"]\n\
            hash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n";
        let defs = Arc::new(Definitions::from_toml_str(text, "t").unwrap());
        let (rates, _link, mut outbox) = taking_part_with_a_pop(&defs);
        let now = Instant::now();
        let report = |scope: &str| UsageReport {
            pop_id: "pop-a".into(),
            window_start_unix_ms: 0,
            entries: vec![UsageEntry {
                scope: scope.into(),
                used: 1,
            }],
        };
        for scope in ["key:both@e/prod/GET /m/k", "key:both@e/prod/k"] {
            rates.report("pop-a", &report(scope), now);
        }
        let totals = |scope: &str| lock(&rates.scopes).get(scope).map(|s| s.total.rate);
        assert_eq!(totals("key:both@e/prod/GET /m/k"), Some(2.0));
        assert_eq!(totals("key:both@e/prod/k"), Some(6.0));
        rates.rebalance(now);
        let sent = shares_sent(&mut outbox);
        assert_eq!(
            sent,
            [
                ("key:both@e/prod/GET /m/k".to_owned(), 2000),
                ("key:both@e/prod/k".to_owned(), 6000),
                ("plan:both".to_owned(), 4000),
                ("plan:both@e/prod".to_owned(), 6000),
                ("plan:both@e/prod/GET /m".to_owned(), 2000),
            ]
        );
        // A regional API's family, or one the definitions do not have, is
        // refused.
        for scope in [
            "key:both@r/prod/k",
            "key:both@r/prod/GET /m/k",
            "key:both@e/dev/k",
            "key:both@e/k",
        ] {
            rates.report("pop-a", &report(scope), now);
            assert_eq!(totals(scope), None, "{scope}");
        }
    }

    /// A key the origin alone spends follows its plan's rate across a
    /// reload: the scope its own demand made takes the new rate.
    #[test]
    fn the_origins_own_key_rate_follows_a_reload() {
        let (tx, rx) = watch::channel(mixed_defs());
        let config = portico_config::NodeThrottleConfig::default();
        let own = Arc::new(Limits::new(&config, &mixed_defs(), None).with_shared_rates());
        let rates = OriginRates::new(rx, Some(own));
        let record = |defs: &Definitions| {
            let plans = plans_with(defs, EndpointMode::Regional);
            rates.record_own(defs, &plans, &HashMap::new(), Instant::now(), |f| {
                f("key:solo/k", 10)
            });
        };
        let total = || lock(&rates.scopes).get("key:solo/k").map(|s| s.total.rate);
        record(&mixed_defs());
        assert_eq!(total(), Some(8.0));
        tx.send_replace(mixed_defs_at(80));
        record(&rates.definitions.borrow());
        assert_eq!(total(), Some(80.0));
    }

    /// A PoP's demand goes in frames an origin takes: however many rates
    /// and however long their scopes, each frame is under the size an
    /// origin decodes, and no entry is lost.
    #[test]
    fn a_large_report_is_split_into_frames_an_origin_takes() {
        let scope = |i: usize| format!("key:{i}/{}", "k".repeat(limits::MAX_SCOPE - 16));
        let entries: Vec<UsageEntry> = (0..1000)
            .map(|i| UsageEntry {
                scope: scope(i),
                used: u64::MAX,
            })
            .collect();
        let frames = report_frames("pop-a", 0, entries);
        assert_eq!(frames.len(), 4);
        let codec = portico_proto::Codec::new();
        let mut sent = 0;
        for frame in &frames {
            let mut buf = bytes::BytesMut::new();
            codec.encode(frame, &mut buf).unwrap();
            let Some(Frame::UsageReport(r)) = codec.decode(&mut buf).unwrap() else {
                panic!("not a report");
            };
            sent += r.entries.len();
        }
        assert_eq!(sent, 1000);
        assert!(report_frames("pop-a", 0, Vec::new()).is_empty());
    }

    /// A share goes again after `RESEND` even when unchanged: the PoP may
    /// have dropped it, having received it before the scope's definitions.
    #[test]
    fn an_unchanged_share_is_sent_again_after_a_while() {
        let (_tx, rx) = watch::channel(defs());
        let rates = OriginRates::new(rx, None);
        let (link, mut outbox) = ControlLink::new("pop-a", "r", portico_proto::Capabilities(0));
        rates.links.up(&link);
        let shares = |outbox: &mut portico_backbone::Outbox| {
            std::iter::from_fn(|| outbox.try_recv().ok())
                .filter(|f| matches!(f, Frame::RateShare(s) if s.scope == "stage:a/prod"))
                .count()
        };
        let start = Instant::now();
        rates.rebalance(start);
        assert_eq!(shares(&mut outbox), 1);
        rates.rebalance(start + INTERVAL);
        assert_eq!(shares(&mut outbox), 0, "unchanged: not sent again at once");
        rates.rebalance(start + RESEND);
        assert_eq!(shares(&mut outbox), 1, "sent again after RESEND");
    }

    #[test]
    fn reports_for_unknown_rates_keys_or_plans_change_nothing() {
        let (_tx, rx) = watch::channel(defs());
        let rates = OriginRates::new(rx, None);
        let entry = |scope: &str| UsageEntry {
            scope: scope.into(),
            used: 5,
        };
        let report = UsageReport {
            pop_id: "pop-a".into(),
            window_start_unix_ms: 0,
            entries: vec![
                entry("key:nope/k"),
                entry("key:gold/unknown"),
                entry("key:gold"),
                entry("stage:a/staging"),
                entry("bogus"),
                entry("stage:a/prod"),
                entry("key:gold/k"),
            ],
        };
        rates.report("pop-a", &report, Instant::now());
        let scopes = lock(&rates.scopes);
        let mut known: Vec<_> = scopes.keys().cloned().collect();
        known.sort();
        assert_eq!(known, ["key:gold/k", "stage:a/prod"]);
        let (rate, _) = scopes["stage:a/prod"].demand["pop-a"];
        assert!((rate - 20.0).abs() < 1e-9, "5 requests in 250 ms: {rate}");
    }
}
