//! The stage, route and usage-plan buckets of one definitions snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use portico_config::{Definitions, EndpointMode, KeyThrottle, RateLimit};

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
    /// By route index of the stage's deployment.
    routes: Vec<Option<Arc<SharedThrottle>>>,
    /// By route key, to carry buckets over a reload and to apply shares.
    by_key: HashMap<String, Arc<SharedThrottle>>,
    /// By plan name: the per-key throttles a plan sets in this stage.
    plans: HashMap<String, PlanStage>,
}

impl StageLimiters {
    pub fn route(&self, index: usize) -> Option<&Arc<SharedThrottle>> {
        self.routes.get(index)?.as_ref()
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

impl PlanStage {
    pub fn route(&self, index: usize) -> Option<&KeyFamily> {
        self.routes.get(index)?.as_ref()
    }
}

/// One of a plan's narrower per-key throttles.
#[derive(Debug)]
pub(crate) struct KeyFamily {
    /// `key-stage` or `key-route` (the `RateLimit-Policy` name).
    pub name: &'static str,
    /// What its buckets are kept and shared under (`PLAN@API/STAGE[/ROUTE]`).
    pub family: String,
    pub keyed: Arc<KeyedThrottle<KeyHash>>,
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
                    s.routes.push(t);
                }
                stages.insert(stage.name.clone(), s);
            }
            set.stages.insert(api.name.clone(), stages);
        }
        for plan in &definitions.usage_plans {
            let edge = plan.api_stages.iter().any(|(api, _)| {
                definitions
                    .api(api)
                    .is_some_and(|a| a.endpoint == EndpointMode::Edge)
            });
            if edge {
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
        let index = match &kt.route {
            None => None,
            Some(route) => {
                let stage = definitions
                    .api(&kt.api)
                    .and_then(|a| a.stages.iter().find(|s| s.name == kt.stage));
                let routes = stage.map(|s| &s.deployment.routes);
                let Some(i) = routes.and_then(|r| r.iter().position(|r| r.key == *route)) else {
                    return;
                };
                Some(i)
            }
        };
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
        let route = |s: &LimiterSet| Arc::clone(s.stage("a", "prod").unwrap().route(0).unwrap());
        let stage =
            |s: &LimiterSet| Arc::clone(s.stage("a", "prod").unwrap().stage.as_ref().unwrap());
        assert!(Arc::ptr_eq(&route(&first), &route(&same)));
        assert!(!Arc::ptr_eq(&route(&same), &route(&changed)));
        assert!(Arc::ptr_eq(&stage(&first), &stage(&changed)));
        // The carried-over bucket keeps its state: burst 1 already spent.
        assert!(!route(&first).check().is_refused());
        assert!(route(&same).check().is_refused());
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
