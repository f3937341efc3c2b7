//! The stage, route and usage-plan buckets of one definitions snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use portico_config::{Definitions, KeyThrottle, RateLimit};

use super::share::SharedThrottle;
use super::spec;
use crate::keys::KeyHash;
use crate::throttle::KeyedThrottle;

/// Buckets by API name, stage name and route; per-key buckets by family
/// (a plan's name, or its stage's or route's: `portico_config::throttle_family`).
#[derive(Debug, Default)]
pub(crate) struct LimiterSet {
    stages: HashMap<String, HashMap<String, StageLimiters>>,
    plans: HashMap<String, Arc<KeyedThrottle<KeyHash>>>,
    /// Plans that cover an edge API: their key rates span PoPs.
    edge_plans: HashSet<String>,
}

#[derive(Debug, Default)]
pub(crate) struct StageLimiters {
    pub stage: Option<Arc<SharedThrottle>>,
    /// By route index of the stage's deployment, with the route's key.
    routes: Vec<Option<(String, Arc<SharedThrottle>)>>,
    /// By route key, to carry buckets over a reload and to apply shares.
    by_key: HashMap<String, Arc<SharedThrottle>>,
    /// By plan name: the per-key throttles a plan sets in this stage.
    plans: HashMap<String, PlanStage>,
}

impl StageLimiters {
    /// The throttle of the route at `index` whose key is `key`. A request
    /// routed on the definitions before a reload carries its route's index
    /// in those; the index may name another route here, whose bucket it
    /// must not spend.
    pub fn route(&self, index: usize, key: &str) -> Option<&Arc<SharedThrottle>> {
        let (route, throttle) = self.routes.get(index)?.as_ref()?;
        (route == key).then_some(throttle)
    }

    pub fn route_by_key(&self, key: &str) -> Option<&Arc<SharedThrottle>> {
        self.by_key.get(key)
    }

    /// The per-key throttles `plan` sets in this stage, if any.
    pub fn plan(&self, plan: &str) -> Option<&PlanStage> {
        self.plans.get(plan)
    }
}

/// A plan's per-key throttles in one stage: the whole stage's, each route's.
#[derive(Debug, Default)]
pub(crate) struct PlanStage {
    pub stage: Option<KeyFamily>,
    /// By route index of the stage's deployment.
    routes: Vec<Option<KeyFamily>>,
}

/// One of a plan's narrower per-key throttles.
#[derive(Debug)]
pub(crate) struct KeyFamily {
    /// `key-stage` or `key-route` (the `RateLimit-Policy` name).
    pub name: &'static str,
    /// What its buckets are kept and shared under (`PLAN@API/STAGE[/ROUTE]`).
    pub family: String,
    /// A route's: its key. A request routed on the definitions before a
    /// reload carries its route's index in those; the index may name
    /// another route here, whose bucket it must not spend.
    pub route: Option<String>,
    /// Its API is an edge API: its rate spans PoPs, and a node with shared
    /// rates keeps its keys in shared buckets; else in `keyed`.
    pub shared: bool,
    pub keyed: Arc<KeyedThrottle<KeyHash>>,
}

impl PlanStage {
    /// The route's throttle for the route at `index` whose key is `key`.
    pub fn route_keyed(&self, index: usize, key: &str) -> Option<&KeyFamily> {
        let f = self.routes.get(index)?.as_ref()?;
        (f.route.as_deref() == Some(key)).then_some(f)
    }
}

impl LimiterSet {
    pub fn stage(&self, api: &str, stage: &str) -> Option<&StageLimiters> {
        self.stages.get(api)?.get(stage)
    }

    /// The keyed bucket of a family: a plan's own (by its name), or one
    /// of its stage or route throttles.
    pub fn plan(&self, family: &str) -> Option<&Arc<KeyedThrottle<KeyHash>>> {
        self.plans.get(family)
    }

    /// Whether `plan`'s key rate is shared (the plan covers an edge API, so
    /// its keys are spent at PoPs): a node with shared rates then keeps its
    /// keys in shared buckets; a plan of regional APIs only keeps the keyed
    /// bucket of this set.
    pub fn shares_keys(&self, plan: &str) -> bool {
        self.edge_plans.contains(plan)
    }

    /// Every stage and route bucket.
    pub fn each(&self, mut f: impl FnMut(&SharedThrottle)) {
        for stage in self.stages.values().flat_map(HashMap::values) {
            stage.stage.iter().for_each(|t| f(t));
            stage.by_key.values().for_each(|t| f(t));
        }
    }

    pub fn retain_recent(&self) {
        for p in self.plans.values() {
            p.retain_recent();
        }
    }

    /// The buckets `definitions` needs; those of `old` with an equal spec are reused.
    pub fn build(definitions: &Definitions, old: Option<&LimiterSet>) -> LimiterSet {
        let mut set = LimiterSet::default();
        for api in &definitions.apis {
            let mut stages = HashMap::new();
            for stage in &api.stages {
                let prev = old.and_then(|o| o.stage(&api.name, &stage.name));
                let scope = format!("{}/{}", api.name, stage.name);
                let mut s = StageLimiters {
                    stage: reuse(
                        "stage",
                        || format!("stage:{scope}"),
                        stage.throttle,
                        prev.and_then(|p| p.stage.as_ref()),
                    ),
                    ..StageLimiters::default()
                };
                for (i, route) in stage.deployment.routes.iter().enumerate() {
                    let throttle = stage.route_settings(i).throttle;
                    let before = prev.and_then(|p| p.by_key.get(&route.key));
                    let name = || format!("route:{scope}/{}", route.key);
                    let t = reuse("route", name, throttle, before);
                    if let Some(t) = &t {
                        s.by_key.insert(route.key.clone(), Arc::clone(t));
                    }
                    s.routes.push(t.map(|t| (route.key.clone(), t)));
                }
                stages.insert(stage.name.clone(), s);
            }
            set.stages.insert(api.name.clone(), stages);
        }
        for plan in &definitions.usage_plans {
            if plan
                .api_stages
                .iter()
                .any(|(api, _)| definitions.is_edge(api))
            {
                set.edge_plans.insert(plan.name.clone());
            }
            for kt in &plan.key_throttles {
                set.add_key_throttle(definitions, old, &plan.name, kt);
            }
            let Some(rate) = plan.throttle else { continue };
            if let Some(t) = keyed(old, &plan.name, "key", rate) {
                set.plans.insert(plan.name.clone(), t);
            }
        }
        set
    }

    /// Makes the buckets of a plan's stage or route throttle and files them
    /// under the stage (a route's by its index in the stage's deployment).
    fn add_key_throttle(
        &mut self,
        definitions: &Definitions,
        old: Option<&LimiterSet>,
        plan: &str,
        kt: &KeyThrottle,
    ) {
        let family = kt.family(plan);
        let name = match kt.route {
            Some(_) => "key-route",
            None => "key-stage",
        };
        let Some(keyed) = keyed(old, &family, name, kt.throttle) else {
            return;
        };
        let api = definitions.api(&kt.api);
        let index = match &kt.route {
            None => None,
            Some(route) => {
                let stage = api.and_then(|a| a.stages.iter().find(|s| s.name == kt.stage));
                let routes = stage.map(|s| &s.deployment.routes);
                let Some(i) = routes.and_then(|r| r.iter().position(|r| r.key == *route)) else {
                    return;
                };
                Some(i)
            }
        };
        // An edge API's requests enter at PoPs: its rate spans them. A
        // regional API's enter here alone, whatever else the plan covers.
        let shared = definitions.is_edge(&kt.api);
        let Some(stage) = self
            .stages
            .get_mut(&kt.api)
            .and_then(|s| s.get_mut(&kt.stage))
        else {
            return;
        };
        self.plans.insert(family.clone(), Arc::clone(&keyed));
        let f = KeyFamily {
            name,
            family,
            route: kt.route.clone(),
            shared,
            keyed,
        };
        let at = stage.plans.entry(plan.to_owned()).or_default();
        match index {
            None => at.stage = Some(f),
            Some(i) => {
                if at.routes.len() <= i {
                    at.routes.resize_with(i + 1, || None);
                }
                at.routes[i] = Some(f);
            }
        }
    }
}

/// The keyed bucket of `family` at `rate`: `old`'s when its spec is the same.
fn keyed(
    old: Option<&LimiterSet>,
    family: &str,
    name: &'static str,
    rate: RateLimit,
) -> Option<Arc<KeyedThrottle<KeyHash>>> {
    let before = old.and_then(|o| o.plan(family));
    match before.filter(|t| t.spec() == spec(rate)) {
        Some(t) => Some(Arc::clone(t)),
        None => KeyedThrottle::new(name, spec(rate)).map(Arc::new),
    }
}

fn reuse(
    name: &'static str,
    scope: impl FnOnce() -> String,
    rate: Option<RateLimit>,
    before: Option<&Arc<SharedThrottle>>,
) -> Option<Arc<SharedThrottle>> {
    let rate = spec(rate?);
    match before.filter(|t| t.spec() == rate) {
        Some(t) => Some(Arc::clone(t)),
        None => SharedThrottle::new(name, scope(), rate).map(Arc::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(route_rate: u32) -> Definitions {
        let text = format!(
            "[[apis]]\nname = \"a\"\nendpoint = \"edge\"\n\
             [[apis.routes]]\nmethod = \"GET\"\npath = \"/m\"\nthrottle = {{ rate = {route_rate}, burst = 1 }}\n\
             [apis.routes.integration]\ntype = \"mock\"\n\
             [[apis.stages]]\nname = \"prod\"\nthrottle = {{ rate = 10, burst = 10 }}\n"
        );
        Definitions::from_toml_str(&text, "t").unwrap()
    }

    #[test]
    fn buckets_with_an_unchanged_spec_survive_a_rebuild() {
        let first = LimiterSet::build(&defs(5), None);
        let same = LimiterSet::build(&defs(5), Some(&first));
        let changed = LimiterSet::build(&defs(6), Some(&same));
        let route =
            |s: &LimiterSet| Arc::clone(s.stage("a", "prod").unwrap().route(0, "GET /m").unwrap());
        let stage =
            |s: &LimiterSet| Arc::clone(s.stage("a", "prod").unwrap().stage.as_ref().unwrap());
        assert!(Arc::ptr_eq(&route(&first), &route(&same)));
        assert!(!Arc::ptr_eq(&route(&same), &route(&changed)));
        assert!(Arc::ptr_eq(&stage(&first), &stage(&changed)));
        // The carried-over bucket keeps its state: burst 1 already spent.
        assert!(!route(&first).check().is_refused());
        assert!(route(&same).check().is_refused());
        // An index that names another route (a request routed before a
        // reload that moved routes) finds none.
        let stage = first.stage("a", "prod").unwrap();
        assert!(stage.route(0, "GET /other").is_none());
    }

    /// Definitions of API `a` (`endpoint`) with routes `GET /m` and `GET
    /// /n` in `order`, and plan `p` with a stage throttle and one on `GET
    /// /n` at `rate`.
    fn plan_defs(endpoint: &str, order: [&str; 2], rate: u32) -> Definitions {
        let route = |path: &str| {
            format!(
                "[[apis.routes]]\nmethod = \"GET\"\npath = \"{path}\"\napi_key_required = true\n\
                 integration = {{ type = \"mock\" }}\n"
            )
        };
        let text = format!(
            "[[apis]]\nname = \"a\"\nendpoint = \"{endpoint}\"\n{}{}[[apis.stages]]\nname = \"prod\"\n\
             [[usage_plans]]\nname = \"p\"\n[[usage_plans.api_stages]]\napi = \"a\"\nstage = \"prod\"\n\
             throttle = {{ rate = 10, burst = 10 }}\n\
             route_throttles = [{{ route = \"GET /n\", throttle = {{ rate = {rate}, burst = 1 }} }}]\n",
            route(order[0]),
            route(order[1]),
        );
        Definitions::from_toml_str(&text, "t").unwrap()
    }

    fn plan_stage(set: &LimiterSet) -> &PlanStage {
        set.stage("a", "prod").unwrap().plan("p").unwrap()
    }

    /// A plan's stage and route buckets survive a reload that keeps their
    /// spec, the route's filed under its new index when routes move; an
    /// index that now names another route finds none.
    #[test]
    fn a_plans_stage_and_route_buckets_follow_a_reload() {
        let first = LimiterSet::build(&plan_defs("edge", ["/m", "/n"], 5), None);
        let moved = LimiterSet::build(&plan_defs("edge", ["/n", "/m"], 5), Some(&first));
        let changed = LimiterSet::build(&plan_defs("edge", ["/n", "/m"], 6), Some(&moved));
        let route = |s: &LimiterSet, i: usize| {
            let f = plan_stage(s).route_keyed(i, "GET /n");
            f.map(|f| Arc::clone(&f.keyed))
        };
        assert!(route(&first, 0).is_none() && route(&first, 1).is_some());
        assert!(Arc::ptr_eq(
            &route(&first, 1).unwrap(),
            &route(&moved, 0).unwrap()
        ));
        assert!(route(&moved, 1).is_none(), "index 1 is `GET /m` now");
        assert!(!Arc::ptr_eq(
            &route(&moved, 0).unwrap(),
            &route(&changed, 0).unwrap()
        ));
        let stage = |s: &LimiterSet| Arc::clone(&plan_stage(s).stage.as_ref().unwrap().keyed);
        assert!(Arc::ptr_eq(&stage(&first), &stage(&changed)));
        // An edge API's are shared where rates are; a regional API's keyed.
        let regional = LimiterSet::build(&plan_defs("regional", ["/m", "/n"], 5), None);
        let shared = |s: &LimiterSet| plan_stage(s).stage.as_ref().unwrap().shared;
        assert!(shared(&first) && !shared(&regional));
    }

    /// A plan's keys are shared when it covers an edge API, whatever else
    /// it covers; a plan of regional APIs only keeps its keyed bucket.
    #[test]
    fn keys_are_shared_for_plans_that_cover_an_edge_api() {
        let api = |name: &str, mode: &str| {
            format!(
                "[[apis]]\nname = \"{name}\"\nendpoint = \"{mode}\"\n[[apis.stages]]\nname = \"prod\"\n"
            )
        };
        let plan = |name: &str, apis: &str| {
            format!(
                "[[usage_plans]]\nname = \"{name}\"\nthrottle = {{ rate = 1, burst = 1 }}\napi_stages = [{apis}]\n"
            )
        };
        let stage = |a: &str| format!("{{ api = \"{a}\", stage = \"prod\" }}");
        let text = [
            api("e", "edge"),
            api("r", "regional"),
            plan("edge", &stage("e")),
            plan("solo", &stage("r")),
            plan("both", &format!("{}, {}", stage("e"), stage("r"))),
        ]
        .concat();
        let defs = Definitions::from_toml_str(&text, "t").unwrap();
        let set = LimiterSet::build(&defs, None);
        assert!(set.shares_keys("edge"));
        assert!(set.shares_keys("both"));
        assert!(!set.shares_keys("solo"));
        assert!(set.plan("solo").is_some());
    }
}
