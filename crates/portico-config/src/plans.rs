//! Throttle specs, usage plans and API keys: the definitions issue 7 adds beside
//! `[[apis]]` and `[[domains]]` (shipped to PoPs in `Definitions::source` like them).
//!
//! Keys are only ever stored as `sha256:<64 hex digits>`; the clear key is shown once
//! by `portico keys create` and never reaches a file.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use portico_quota::{Period, QuotaSpec};

use crate::error::Diag;
use crate::file::{ApiFile, ApiKeyFile, ApiStageFile, QuotaFile, S, ThrottleFile, UsagePlanFile};
use crate::model::Api;
use crate::stage::is_stage_name;

/// A token bucket: a steady rate (requests per second, may be fractional) and a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: f64,
    pub burst: u32,
}

/// Rates are finite and positive (checked at load), so equality is total.
impl Eq for RateLimit {}

/// Largest rate accepted (per second) and largest burst.
const MAX_RATE: f64 = 1e9;
const MAX_BURST: i64 = 100_000_000;
/// Longest time a throttle may take to refill its bucket from empty
/// (`burst / rate`, seconds): about 31 years, so that the limiter's times in
/// nanoseconds fit 64 bits with room to spare.
const MAX_REFILL_SECS: f64 = 1e9;

/// What a PoP does for a quota once it has spent what it holds and the origin is
/// unreachable (origins decide locally and are never in that state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degraded {
    /// Refuse with 429 `Limit Exceeded` (the default: quotas never overshoot).
    FailClosed,
    /// Let requests through, counted by a metric, until the origin is back.
    FailOpen,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::FailClosed => "fail_closed",
            Degraded::FailOpen => "fail_open",
        }
    }
}

/// A usage plan: which API stages it covers, the per-key throttle and quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePlan {
    pub name: String,
    /// Per key of the plan, across all its API stages.
    pub throttle: Option<RateLimit>,
    pub quota: Option<QuotaSpec>,
    /// (API, stage) pairs.
    pub api_stages: Vec<(String, String)>,
    /// Narrower per-key throttles: in one API stage, or on one route of it
    /// (API Gateway's `apiStages[].throttle`). A key's request spends each
    /// that applies to it as well as [`UsagePlan::throttle`].
    pub key_throttles: Vec<KeyThrottle>,
    pub on_origin_unreachable: Degraded,
}

/// A per-key throttle a usage plan sets in one of its API stages
/// (`route: None`) or on one route of that stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyThrottle {
    pub api: String,
    pub stage: String,
    /// The route key (`"GET /pets/{id}"`), or `None` for the whole stage.
    pub route: Option<String>,
    pub throttle: RateLimit,
}

impl KeyThrottle {
    /// The name its buckets are kept under: see [`throttle_family`].
    pub fn family(&self, plan: &str) -> String {
        throttle_family(plan, Some((&self.api, &self.stage, self.route.as_deref())))
    }
}

impl UsagePlan {
    pub fn binds(&self, api: &str, stage: &str) -> bool {
        self.api_stages.iter().any(|(a, s)| a == api && s == stage)
    }

    /// The per-key rate a family of this plan names (`None`: the plan's
    /// own throttle; else an API stage, with or without a route).
    pub fn family_throttle(&self, within: Option<FamilyScope<'_>>) -> Option<RateLimit> {
        let Some((api, stage, route)) = within else {
            return self.throttle;
        };
        self.key_throttles
            .iter()
            .find(|t| t.api == api && t.stage == stage && t.route.as_deref() == route)
            .map(|t| t.throttle)
    }
}

/// Where a plan's narrower key throttle applies: API, stage and maybe route.
pub type FamilyScope<'a> = (&'a str, &'a str, Option<&'a str>);

/// The name a plan's per-key buckets are kept, shared and reported under:
/// the plan's name for its own throttle, `PLAN@API/STAGE` for a stage's,
/// `PLAN@API/STAGE/ROUTE` for a route's (`gold@pets/prod/GET /pets/{id}`).
/// Plan, API and stage names hold no `@` or `/`, so [`parse_family`] reads
/// it back whatever the route key holds; a key's bucket is the family and
/// the key id after one more `/`.
pub fn throttle_family(plan: &str, within: Option<FamilyScope<'_>>) -> String {
    match within {
        None => plan.to_owned(),
        Some((api, stage, None)) => format!("{plan}@{api}/{stage}"),
        Some((api, stage, Some(route))) => format!("{plan}@{api}/{stage}/{route}"),
    }
}

/// The plan and scope of a [`throttle_family`] name.
pub fn parse_family(family: &str) -> Option<(&str, Option<FamilyScope<'_>>)> {
    let Some((plan, within)) = family.split_once('@') else {
        return (!family.contains('/')).then_some((family, None));
    };
    let mut parts = within.splitn(3, '/');
    let (api, stage) = (parts.next()?, parts.next()?);
    if plan.contains('/') || api.is_empty() || stage.is_empty() {
        return None;
    }
    Some((plan, Some((api, stage, parts.next()))))
}

/// An API key as configured: its id, the SHA-256 of the key, and its plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub hash: [u8; 32],
    pub enabled: bool,
    pub plans: Vec<String>,
}

/// Checks a `{ rate, burst }` table.
pub(crate) fn compile_throttle(f: &S<ThrottleFile>, diag: &mut Diag<'_>) -> Option<RateLimit> {
    let t = f.get_ref();
    let rate = *t.rate.get_ref();
    let burst = *t.burst.get_ref();
    let rate_ok = rate.is_finite() && rate > 0.0 && rate <= MAX_RATE;
    if !rate_ok {
        let message = format!("throttle rate {rate} is out of range");
        diag.expect(
            t.rate.span(),
            message,
            "a rate > 0 and <= 1e9 requests per second",
        );
    }
    let burst_ok = (1..=MAX_BURST).contains(&burst);
    if !burst_ok {
        let message = format!("throttle burst {burst} is out of range");
        diag.expect(t.burst.span(), message, format!("1..={MAX_BURST}"));
    }
    let burst = u32::try_from(burst).ok()?;
    let limit = RateLimit { rate, burst };
    (rate_ok && burst_ok && check_refill(limit, t.rate.span(), diag)).then_some(limit)
}

/// Whether a throttle refills its bucket from empty (`burst / rate`) within
/// [`MAX_REFILL_SECS`]; reports the error at `span` if not.
pub(crate) fn check_refill(limit: RateLimit, span: Range<usize>, diag: &mut Diag<'_>) -> bool {
    let RateLimit { rate, burst } = limit;
    let refill = f64::from(burst) / rate;
    if refill <= MAX_REFILL_SECS {
        return true;
    }
    let message = format!("throttle burst {burst} at rate {rate} takes {refill:.0} s to refill");
    let expected = "burst / rate at most 1e9 seconds (a higher rate or a smaller burst)";
    diag.expect(span, message, expected);
    false
}

/// Compiles `[[usage_plans]]` and `[[api_keys]]`, checking every reference.
/// `compiled`: the APIs of `apis` that compiled, whose stages' routes a
/// plan's route throttles must name.
pub(crate) fn compile_plans(
    plans: &[UsagePlanFile],
    keys: &[ApiKeyFile],
    apis: &[ApiFile],
    compiled: &[Arc<Api>],
    diag: &mut Diag<'_>,
) -> (Vec<Arc<UsagePlan>>, Vec<Arc<ApiKey>>) {
    let mut names: HashMap<&str, Range<usize>> = HashMap::new();
    let mut out = Vec::new();
    for p in plans {
        let name = p.name.get_ref();
        if !is_stage_name(name) {
            let message = format!("invalid usage plan name `{name}`");
            diag.expect(p.name.span(), message, crate::compile::NAME_CHARS);
        }
        if let Some(first) = names.get(name.as_str()) {
            let message = format!(
                "duplicate usage plan `{name}` (first at line {})",
                diag.line_of(first)
            );
            diag.at(p.name.span(), message);
        }
        names.insert(name, p.name.span());
        if let Some(plan) = compile_plan(p, apis, compiled, diag) {
            out.push(Arc::new(plan));
        }
    }
    let keys = compile_keys(keys, &out, plans, diag);
    (out, keys)
}

fn compile_plan(
    p: &UsagePlanFile,
    apis: &[ApiFile],
    compiled: &[Arc<Api>],
    diag: &mut Diag<'_>,
) -> Option<UsagePlan> {
    let throttle = p.throttle.as_ref().map(|t| compile_throttle(t, diag));
    let quota = p.quota.as_ref().map(|q| compile_quota(q, diag));
    let degraded = match p
        .on_origin_unreachable
        .as_ref()
        .map(|d| (d, d.get_ref().as_str()))
    {
        None | Some((_, "fail_closed")) => Some(Degraded::FailClosed),
        Some((_, "fail_open")) => Some(Degraded::FailOpen),
        Some((d, other)) => {
            let message = format!("unknown on_origin_unreachable `{other}`");
            diag.expect(d.span(), message, "\"fail_closed\" or \"fail_open\"");
            None
        }
    };
    let mut ok = true;
    let mut seen = Vec::new();
    let mut key_throttles = Vec::new();
    for s in &p.api_stages {
        let exists = check_api_stage(s, apis, diag);
        ok &= exists;
        let pair = (s.api.get_ref().clone(), s.stage.get_ref().clone());
        if seen.contains(&pair) {
            let message = format!("API stage `{}/{}` listed twice", pair.0, pair.1);
            diag.at(s.stage.span(), message);
            ok = false;
        }
        match stage_key_throttles(s, exists.then_some(compiled), diag) {
            Some(mut t) => key_throttles.append(&mut t),
            None => ok = false,
        }
        seen.push(pair);
    }
    let (throttle, quota) = (
        throttle.map_or(Some(None), |t| t.map(Some))?,
        quota.map_or(Some(None), |q| q.map(Some))?,
    );
    ok.then_some(UsagePlan {
        name: p.name.get_ref().clone(),
        throttle,
        quota,
        api_stages: seen,
        key_throttles,
        on_origin_unreachable: degraded?,
    })
}

/// The per-key throttles a plan sets in API stage `s`: its `throttle` for
/// the whole stage, and one per `route_throttles` entry, whose route must
/// be one the stage serves (checked against the `compiled` APIs when the
/// stage exists and its API compiled).
fn stage_key_throttles(
    s: &ApiStageFile,
    compiled: Option<&[Arc<Api>]>,
    diag: &mut Diag<'_>,
) -> Option<Vec<KeyThrottle>> {
    let (api, stage) = (s.api.get_ref(), s.stage.get_ref());
    let served = compiled
        .and_then(|apis| apis.iter().find(|a| a.name == *api))
        .and_then(|a| a.stages.iter().find(|st| st.name == *stage));
    let mut ok = true;
    let mut out = Vec::new();
    if let Some(t) = &s.throttle {
        match compile_throttle(t, diag) {
            Some(throttle) => out.push(KeyThrottle {
                api: api.clone(),
                stage: stage.clone(),
                route: None,
                throttle,
            }),
            None => ok = false,
        }
    }
    let mut routes: HashMap<&str, Range<usize>> = HashMap::new();
    for r in &s.route_throttles {
        let key = r.route.get_ref().as_str();
        if let Some(first) = routes.get(key) {
            let message = format!(
                "duplicate route throttle for `{key}` (first at line {})",
                diag.line_of(first)
            );
            diag.at(r.route.span(), message);
            ok = false;
            continue;
        }
        routes.insert(key, r.route.span());
        if let Some(st) = served
            && !st.deployment.routes.iter().any(|route| route.key == key)
        {
            let message = format!("API stage `{api}/{stage}` serves no route `{key}`");
            diag.expect(
                r.route.span(),
                message,
                "a route key such as \"GET /pets/{id}\"",
            );
            ok = false;
            continue;
        }
        match compile_throttle(&r.throttle, diag) {
            Some(throttle) => out.push(KeyThrottle {
                api: api.clone(),
                stage: stage.clone(),
                route: Some(key.to_owned()),
                throttle,
            }),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

pub(crate) fn compile_quota(q: &S<QuotaFile>, diag: &mut Diag<'_>) -> Option<QuotaSpec> {
    let f = q.get_ref();
    let limit = *f.limit.get_ref();
    let limit_ok = limit >= 1;
    if !limit_ok {
        let message = format!("quota limit {limit} is out of range");
        diag.expect(f.limit.span(), message, "at least 1 request per period");
    }
    let period = match f.period.get_ref().as_str() {
        "DAY" => Some(Period::Day),
        "WEEK" => Some(Period::Week),
        "MONTH" => Some(Period::Month),
        other => {
            let message = format!("unknown quota period `{other}`");
            diag.expect(f.period.span(), message, "\"DAY\", \"WEEK\" or \"MONTH\"");
            None
        }
    }?;
    let offset = f.offset.as_ref().map_or(0, |o| *o.get_ref());
    let max = i64::from(period.max_offset());
    if let Some(o) = f.offset.as_ref().filter(|_| !(0..=max).contains(&offset)) {
        let message = format!(
            "quota offset {offset} is out of range for {}",
            period.as_str()
        );
        diag.expect(
            o.span(),
            message,
            format!("0..={max} (days into the period)"),
        );
        return None;
    }
    let offset = u32::try_from(offset).ok()?;
    let limit = u64::try_from(limit).ok().filter(|_| limit_ok)?;
    Some(QuotaSpec {
        limit,
        period,
        offset,
    })
}

fn check_api_stage(s: &ApiStageFile, apis: &[ApiFile], diag: &mut Diag<'_>) -> bool {
    let name = s.api.get_ref();
    let Some(api) = apis.iter().find(|a| a.name.get_ref() == name) else {
        if !diag.is_broken(&format!("api:{name}")) {
            diag.at(s.api.span(), format!("unknown API `{name}`"));
        }
        return false;
    };
    let stage = s.stage.get_ref();
    let exists = api.stages.iter().any(|st| st.name.get_ref() == stage);
    if !exists && !diag.is_broken(&format!("stage:{stage}")) {
        diag.at(
            s.stage.span(),
            format!("API `{name}` has no stage `{stage}`"),
        );
    }
    exists
}

/// Longest API key id: the backbone carries a caller's id in this form.
pub const MAX_KEY_ID: usize = crate::compile::MAX_NAME;

/// An API key id: 1 to [`MAX_KEY_ID`] letters, digits, `_` and `-`. The same
/// rule holds in configuration, in `portico keys create` and for a caller a
/// PoP names over the backbone, so a key the configuration accepts is never
/// refused on its way to the origin.
pub fn is_key_id(id: &str) -> bool {
    id.len() <= MAX_KEY_ID && is_stage_name(id)
}

fn compile_keys(
    files: &[ApiKeyFile],
    plans: &[Arc<UsagePlan>],
    plan_files: &[UsagePlanFile],
    diag: &mut Diag<'_>,
) -> Vec<Arc<ApiKey>> {
    let mut ids: HashMap<&str, Range<usize>> = HashMap::new();
    let mut hashes: HashMap<[u8; 32], Range<usize>> = HashMap::new();
    let mut out = Vec::new();
    for k in files {
        let id = k.id.get_ref();
        if !is_key_id(id) {
            diag.expect(
                k.id.span(),
                format!("invalid API key id `{id}`"),
                "1 to 128 letters, digits, `_` and `-`",
            );
        }
        if let Some(first) = ids.get(id.as_str()) {
            let message = format!(
                "duplicate API key id `{id}` (first at line {})",
                diag.line_of(first)
            );
            diag.at(k.id.span(), message);
        }
        ids.insert(id, k.id.span());
        let Some(hash) = parse_hash(k.hash.get_ref()) else {
            let message = "invalid API key hash";
            diag.expect(
                k.hash.span(),
                message,
                "\"sha256:\" and 64 lower-case hex digits (portico keys hash)",
            );
            continue;
        };
        if let Some(first) = hashes.get(&hash) {
            let message = format!(
                "API key `{id}` has the same hash as the key at line {}",
                diag.line_of(first)
            );
            diag.at(k.hash.span(), message);
        }
        hashes.insert(hash, k.hash.span());
        if check_key_plans(k, plans, plan_files, diag) {
            out.push(Arc::new(ApiKey {
                id: id.clone(),
                hash,
                enabled: k.enabled.unwrap_or(true),
                plans: k.plans.iter().map(|p| p.get_ref().clone()).collect(),
            }));
        }
    }
    out
}

/// Every plan exists, and no two of the key's plans cover the same API stage (which
/// plan's throttle and quota applied would be ambiguous).
fn check_key_plans(
    k: &ApiKeyFile,
    plans: &[Arc<UsagePlan>],
    plan_files: &[UsagePlanFile],
    diag: &mut Diag<'_>,
) -> bool {
    let mut ok = true;
    let mut covered: Vec<&(String, String)> = Vec::new();
    for p in &k.plans {
        let name = p.get_ref();
        let Some(plan) = plans.iter().find(|x| x.name == *name) else {
            if !plan_files.iter().any(|f| f.name.get_ref() == name) {
                let message = format!("unknown usage plan `{name}`");
                diag.expect(p.span(), message, "the name of a [[usage_plans]] entry");
            }
            ok = false;
            continue;
        };
        for pair in &plan.api_stages {
            if covered.contains(&pair) {
                let message = format!(
                    "usage plan `{name}` covers API stage `{}/{}`, which another plan of key `{}` covers",
                    pair.0,
                    pair.1,
                    k.id.get_ref()
                );
                diag.at(p.span(), message);
                ok = false;
            }
            covered.push(pair);
        }
    }
    ok
}

/// `sha256:` and exactly 64 lower-case hex digits.
pub(crate) fn parse_hash(stored: &str) -> Option<[u8; 32]> {
    let digits = stored.strip_prefix("sha256:")?.as_bytes();
    if digits.len() != 64
        || !digits
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Definitions;
    use crate::testdata::*;

    const HASH: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn with_plans(extra: &str) -> String {
        api(&format!(
            "{}[[apis.stages]]\nname = \"prod\"\nthrottle = {{ rate = 100, burst = 50 }}\n{extra}",
            mock_route("GET", "/m")
        ))
    }

    #[test]
    fn plans_keys_and_throttles_compile_and_round_trip() {
        let text = with_plans(&format!(
            "[[usage_plans]]\nname = \"basic\"\nthrottle = {{ rate = 2.5, burst = 5 }}\n\
             quota = {{ limit = 100, period = \"WEEK\", offset = 2 }}\n\
             api_stages = [{{ api = \"a\", stage = \"prod\" }}]\non_origin_unreachable = \"fail_open\"\n\
             [[api_keys]]\nid = \"k1\"\nhash = \"{HASH}\"\nplans = [\"basic\"]\n\
             [[api_keys]]\nid = \"k2\"\nhash = \"{}\"\nenabled = false\nplans = [\"basic\"]\n",
            HASH.replace("2c", "3c")
        ));
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let d = &c.definitions;
        let plan = d.usage_plan("basic").unwrap();
        assert_eq!(
            plan.throttle,
            Some(RateLimit {
                rate: 2.5,
                burst: 5
            })
        );
        let q = plan.quota.unwrap();
        assert_eq!((q.limit, q.period, q.offset), (100, Period::Week, 2));
        assert_eq!(plan.on_origin_unreachable, Degraded::FailOpen);
        assert!(plan.binds("a", "prod") && !plan.binds("a", "dev"));
        let k = d.api_key_by_hash(&parse_hash(HASH).unwrap()).unwrap();
        assert_eq!((k.id.as_str(), k.enabled), ("k1", true));
        assert!(!d.api_key("k2").unwrap().enabled);
        let stage = d.api("a").unwrap().stage("prod").unwrap();
        assert_eq!(
            stage.throttle,
            Some(RateLimit {
                rate: 100.0,
                burst: 50
            })
        );
        let again = Definitions::from_toml_str(&d.source, "src").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.source, d.source);
        assert_eq!(again.usage_plan("basic"), d.usage_plan("basic"));
        assert_eq!(again.api_keys, d.api_keys);
        assert_eq!(
            again.api("a").unwrap().stage("prod").unwrap().throttle,
            stage.throttle
        );
    }

    #[test]
    fn route_throttle_and_override_precedence() {
        let text = api(&format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"/m\"\nthrottle = {{ rate = 5, burst = 5 }}\n\
             [apis.routes.integration]\ntype = \"mock\"\n{}\
             [[apis.stages]]\nname = \"prod\"\n\
             [[apis.stages.route_overrides]]\nroute = \"*\"\nthrottle = {{ rate = 7, burst = 1 }}\n\
             [[apis.stages.route_overrides]]\nroute = \"GET /n\"\nthrottle = {{ rate = 9, burst = 2 }}\n\
             [[apis.stages]]\nname = \"dev\"\n",
            mock_route("GET", "/n")
        ));
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let a = c.definitions.api("a").unwrap();
        let t = |s: &str, i| {
            a.stage(s)
                .unwrap()
                .route_settings(i)
                .throttle
                .map(|t| (t.rate, t.burst))
        };
        assert_eq!(t("dev", 0), Some((5.0, 5)));
        assert_eq!(t("dev", 1), None);
        assert_eq!(t("prod", 0), Some((7.0, 1)));
        assert_eq!(t("prod", 1), Some((9.0, 2)));
        let again = Definitions::from_toml_str(&c.definitions.source, "s")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.source, c.definitions.source);
    }

    #[test]
    fn bad_values_are_located() {
        let text = with_plans(&format!(
            "[[usage_plans]]\nname = \"p\"\nthrottle = {{ rate = 0, burst = 0 }}\n\
             quota = {{ limit = 0, period = \"YEAR\" }}\n\
             api_stages = [{{ api = \"zz\", stage = \"prod\" }}, {{ api = \"a\", stage = \"dev\" }}]\n\
             on_origin_unreachable = \"maybe\"\n\
             [[usage_plans]]\nname = \"q\"\nquota = {{ limit = 5, period = \"DAY\", offset = 1 }}\n\
             [[api_keys]]\nid = \"k\"\nhash = \"sha256:XYZ\"\n\
             [[api_keys]]\nid = \"k\"\nhash = \"{HASH}\"\nplans = [\"nope\"]\n"
        ));
        assert_eq!(
            errors(&text),
            [
                "17:21: throttle rate 0 is out of range",
                "17:32: throttle burst 0 is out of range",
                "18:19: quota limit 0 is out of range",
                "18:31: unknown quota period `YEAR`",
                "19:23: unknown API `zz`",
                "19:68: API `a` has no stage `dev`",
                "20:25: unknown on_origin_unreachable `maybe`",
                "23:47: quota offset 1 is out of range for DAY",
                "26:8: invalid API key hash",
                "28:6: duplicate API key id `k` (first at line 25)",
                "30:10: unknown usage plan `nope`",
            ]
        );
    }

    /// A plan's stage and route throttles (API Gateway's `apiStages[].throttle`).
    #[test]
    fn a_plans_stage_and_route_throttles_compile_and_round_trip() {
        let text = with_plans(
            "[[usage_plans]]\nname = \"gold\"\nthrottle = { rate = 10, burst = 20 }\n\
             [[usage_plans.api_stages]]\napi = \"a\"\nstage = \"prod\"\n\
             throttle = { rate = 5, burst = 6 }\n\
             route_throttles = [{ route = \"GET /m\", throttle = { rate = 1, burst = 2 } }]\n",
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let plan = c.definitions.usage_plan("gold").unwrap();
        let limit = |rate, burst| Some(RateLimit { rate, burst });
        assert_eq!(plan.family_throttle(None), limit(10.0, 20));
        assert_eq!(
            plan.family_throttle(Some(("a", "prod", None))),
            limit(5.0, 6)
        );
        let route = Some(("a", "prod", Some("GET /m")));
        assert_eq!(plan.family_throttle(route), limit(1.0, 2));
        assert_eq!(plan.family_throttle(Some(("a", "dev", None))), None);
        assert_eq!(plan.key_throttles[1].family("gold"), "gold@a/prod/GET /m");
        let again = Definitions::from_toml_str(&c.definitions.source, "again").unwrap();
        assert_eq!(again.usage_plan("gold"), c.definitions.usage_plan("gold"));
    }

    #[test]
    fn families_read_back_whatever_the_route_holds() {
        for within in [
            None,
            Some(("a", "prod", None)),
            Some(("a", "prod", Some("GET /x/{id}/y@z"))),
        ] {
            let family = throttle_family("gold", within);
            assert_eq!(parse_family(&family), Some(("gold", within)), "{family}");
        }
        assert_eq!(parse_family("gold/x"), None);
        assert_eq!(parse_family("gold@a"), None);
        assert_eq!(parse_family("gold@/prod"), None);
    }

    #[test]
    fn bad_stage_and_route_throttles_are_located() {
        let text = with_plans(
            "[[usage_plans]]\nname = \"p\"\n\
             [[usage_plans.api_stages]]\napi = \"a\"\nstage = \"prod\"\n\
             throttle = { rate = -1, burst = 1 }\n\
             route_throttles = [\n\
             { route = \"GET /nope\", throttle = { rate = 1, burst = 1 } },\n\
             { route = \"GET /m\", throttle = { rate = 1, burst = 0 } },\n\
             { route = \"GET /m\", throttle = { rate = 1, burst = 1 } },\n\
             ]\n",
        );
        assert_eq!(
            errors(&text),
            [
                "20:21: throttle rate -1 is out of range",
                "22:11: API stage `a/prod` serves no route `GET /nope`",
                "23:52: throttle burst 0 is out of range",
                "24:11: duplicate route throttle for `GET /m` (first at line 23)",
            ]
        );
    }

    #[test]
    fn a_key_id_is_at_most_128_characters() {
        let key =
            |id: &str| with_plans(&format!("[[api_keys]]\nid = \"{id}\"\nhash = \"{HASH}\"\n"));
        assert!(parse(&key(&"k".repeat(128))).is_ok());
        assert_eq!(
            errors(&key(&"k".repeat(129))),
            [format!("16:6: invalid API key id `{}`", "k".repeat(129))]
        );
    }

    #[test]
    fn node_throttle_section() {
        let c = parse(NODE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.throttle, crate::NodeThrottleConfig::default());
        assert!(c.node.state_dir.ends_with("portico-state"));
        let text = format!(
            "{NODE}[throttle]\nrate = 200\nburst = 10\nper_client_ip = {{ rate = 1.5, burst = 3 }}\n"
        );
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.throttle.node,
            RateLimit {
                rate: 200.0,
                burst: 10
            }
        );
        assert_eq!(
            c.throttle.per_client_ip,
            Some(RateLimit {
                rate: 1.5,
                burst: 3
            })
        );
        let text = format!("{NODE}[throttle]\nrate = -1\nburst = 0\n");
        assert_eq!(
            errors(&format!("{text}enable = true\n")),
            ["7:1: unknown field `enable`"]
        );
        assert_eq!(
            errors(&text),
            [
                "5:8: throttle rate -1 is out of range",
                "6:9: throttle burst 0 is out of range",
            ]
        );
        // Each in range, but the bucket would take 1e11 s to refill: the
        // limiter's nanoseconds would overflow.
        let text = format!("{NODE}[throttle]\nrate = 0.001\nburst = 100000000\n");
        assert_eq!(
            errors(&text),
            ["5:8: throttle burst 100000000 at rate 0.001 takes 100000000000 s to refill"]
        );
        let text = format!("{NODE}[throttle]\nrate = 1e-20\nburst = 1\n");
        assert_eq!(
            errors(&text),
            [
                "5:8: throttle burst 1 at rate 0.00000000000000000001 takes 100000000000000000000 s to refill"
            ]
        );
    }

    #[test]
    fn two_plans_of_a_key_may_not_cover_one_stage() {
        let text = with_plans(&format!(
            "[[usage_plans]]\nname = \"p\"\napi_stages = [{{ api = \"a\", stage = \"prod\" }}]\n\
             [[usage_plans]]\nname = \"q\"\napi_stages = [{{ api = \"a\", stage = \"prod\" }}]\n\
             [[api_keys]]\nid = \"k\"\nhash = \"{HASH}\"\nplans = [\"p\", \"q\"]\n"
        ));
        assert_eq!(
            errors(&text),
            [
                "24:15: usage plan `q` covers API stage `a/prod`, which another plan of key `k` covers"
            ]
        );
    }
}
