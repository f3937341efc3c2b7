//! Validates a topology file and resolves every name it uses. All problems are
//! reported, each at the offending key or value.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use super::file::{ApiFile, HeadFile, LinkFile, PopFile, RawTopology, RegionFile, SiteFile};
use super::model::{
    BasePort, DemoApi, Entry, LinkParams, Place, Pop, Region, SimLink, Site, Topology,
};
use crate::compile::{NODE_ID, is_api_name, is_label, is_node_id};
use crate::error::{Diag, line_col};
use crate::file::S;
use crate::method::EndpointMode;
use crate::stage::is_stage_name;

/// The longest one-way delay or jitter a link may have, in milliseconds (an hour:
/// anything longer is a mistake, and the link simulator refuses it).
const MAX_DELAY_MS: f64 = 3_600_000.0;

const LABEL: &str = "[a-z0-9][a-z0-9-]{0,62}";

const LINK_RULE: &str = "a client site to a PoP or an origin, a PoP to an origin, \
                         or an origin to one of its region's backends";

/// Names declared so far: regions in one namespace, everything a link can join
/// (sites, PoPs, origins, backends) in another, APIs in a third.
#[derive(Default)]
struct Scope {
    regions: HashMap<String, (usize, Range<usize>)>,
    places: HashMap<String, (Place, Range<usize>)>,
    apis: HashMap<String, Range<usize>>,
}

/// Builds the topology; `None` when anything failed (all reported to `diag`).
pub(crate) fn compile(
    raw: &RawTopology,
    default_name: &str,
    text: &str,
    diag: &mut Diag<'_>,
) -> Option<Topology> {
    let mut scope = Scope::default();
    require_sections(raw, diag);
    let regions = compile_regions(&raw.regions, &mut scope, diag);
    let pops = compile_pops(&raw.pops, &mut scope, diag);
    let sites = compile_sites(&raw.sites, &mut scope, diag);
    let links = compile_links(&raw.links, &scope, diag);
    let apis = compile_apis(&raw.apis, &regions, &mut scope, diag);
    let mut topology = Topology {
        file: String::new(),
        name: head_name(&raw.head, default_name),
        description: raw.head.description.clone(),
        base_port: None,
        http3: raw.head.http3.as_ref().is_some_and(|h| *h.get_ref()),
        regions,
        pops,
        sites,
        links,
        apis,
        entries: Vec::new(),
    };
    if diag.has_errors() {
        return None;
    }
    check_pop_links(&topology, &raw.pops, diag);
    topology.entries = plan_entries(&topology, &raw.sites, diag);
    topology.base_port = base_port(&raw.head, topology.entries.len(), text, diag);
    assign_ports(&mut topology);
    (!diag.has_errors()).then_some(topology)
}

fn head_name(head: &HeadFile, default_name: &str) -> String {
    head.name
        .as_ref()
        .map_or_else(|| default_name.to_owned(), |n| n.get_ref().clone())
}

fn require_sections(raw: &RawTopology, diag: &mut Diag<'_>) {
    if raw.regions.is_empty() && !diag.is_broken("section:regions") {
        diag.expect(0..0, "a topology needs at least one region", "[[regions]]");
    }
    if raw.sites.is_empty() && !diag.is_broken("section:sites") {
        diag.expect(
            0..0,
            "a topology needs at least one client site",
            "[[sites]]",
        );
    }
    if raw.apis.is_empty() && !diag.is_broken("section:apis") {
        diag.expect(0..0, "a topology needs at least one API", "[[apis]]");
    }
}

/// Checks a node id or site name and records it in the place namespace.
fn declare_place(name: &S<String>, place: Place, scope: &mut Scope, diag: &mut Diag<'_>) {
    let value = name.get_ref();
    let node = matches!(place, Place::Pop(_) | Place::Origin(_));
    if !is_label(value) || (node && !is_node_id(value)) {
        let message = format!("invalid {} name `{value}`", place.kind());
        diag.expect(name.span(), message, if node { NODE_ID } else { LABEL });
    }
    if let Some((first, at)) = scope.places.get(value) {
        let line = diag.line_of(at);
        let message = format!(
            "duplicate name `{value}`: already the {} at line {line}",
            first.kind()
        );
        diag.at(name.span(), message);
        return;
    }
    scope.places.insert(value.clone(), (place, name.span()));
}

fn compile_regions(files: &[RegionFile], scope: &mut Scope, diag: &mut Diag<'_>) -> Vec<Region> {
    let mut regions = Vec::new();
    for (index, f) in files.iter().enumerate() {
        let name = f.name.get_ref();
        if !is_label(name) {
            diag.expect(f.name.span(), format!("invalid region `{name}`"), LABEL);
        }
        if let Some((_, at)) = scope.regions.get(name) {
            let line = diag.line_of(at);
            diag.at(
                f.name.span(),
                format!("duplicate region `{name}` (first at line {line})"),
            );
        } else {
            scope.regions.insert(name.clone(), (index, f.name.span()));
        }
        declare_place(&f.origin, Place::Origin(index), scope, diag);
        if f.backends.get_ref().is_empty() {
            let message = format!("region `{name}` has no backend");
            diag.expect(f.backends.span(), message, "at least one backend name");
        }
        for (i, b) in f.backends.get_ref().iter().enumerate() {
            let place = Place::Backend {
                region: index,
                index: i,
            };
            declare_place(b, place, scope, diag);
        }
        regions.push(Region {
            name: name.clone(),
            location: f.location.clone(),
            origin: f.origin.get_ref().clone(),
            backends: f
                .backends
                .get_ref()
                .iter()
                .map(|b| b.get_ref().clone())
                .collect(),
        });
    }
    regions
}

/// `one of `a`, `b``, for messages about unknown names.
fn one_of<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let mut names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    names.sort();
    match names.len() {
        0 => "nothing (none is defined)".to_owned(),
        _ => format!("one of {}", names.join(", ")),
    }
}

/// The index of a region a reference names; reports an unknown one with `what`
/// (e.g. "PoP `pop-x` is homed in") in front.
fn region_ref(r: &S<String>, what: &str, scope: &Scope, diag: &mut Diag<'_>) -> Option<usize> {
    let name = r.get_ref();
    if let Some((index, _)) = scope.regions.get(name) {
        return Some(*index);
    }
    if !diag.is_broken(&format!("region:{name}")) {
        let message = format!("{what} unknown region `{name}`");
        diag.expect(r.span(), message, one_of(scope.regions.keys()));
    }
    None
}

fn compile_pops(files: &[PopFile], scope: &mut Scope, diag: &mut Diag<'_>) -> Vec<Pop> {
    let mut pops = Vec::new();
    for (index, f) in files.iter().enumerate() {
        let id = f.id.get_ref();
        declare_place(&f.id, Place::Pop(index), scope, diag);
        if f.regions.get_ref().is_empty() {
            let message = format!("PoP `{id}` is homed in no region");
            diag.expect(f.regions.span(), message, "at least one region name");
        }
        let mut regions = Vec::new();
        for r in f.regions.get_ref() {
            let what = format!("PoP `{id}` is homed in");
            let Some(region) = region_ref(r, &what, scope, diag) else {
                continue;
            };
            if regions.contains(&region) {
                diag.at(r.span(), format!("region `{}` listed twice", r.get_ref()));
            }
            regions.push(region);
        }
        pops.push(Pop {
            id: id.clone(),
            location: f.location.clone(),
            regions,
        });
    }
    pops
}

fn compile_sites(files: &[SiteFile], scope: &mut Scope, diag: &mut Diag<'_>) -> Vec<Site> {
    let mut sites = Vec::new();
    for (index, f) in files.iter().enumerate() {
        declare_place(&f.name, Place::Site(index), scope, diag);
        sites.push(Site {
            name: f.name.get_ref().clone(),
            location: f.location.clone(),
        });
    }
    sites
}

fn compile_links(files: &[LinkFile], scope: &Scope, diag: &mut Diag<'_>) -> Vec<SimLink> {
    let mut links: Vec<(SimLink, Range<usize>)> = Vec::new();
    for f in files {
        let ends = link_ends(f, scope, diag);
        let params = link_params(f, diag);
        let (Some((a, b)), Some(params)) = (ends, params) else {
            continue;
        };
        let duplicate = links
            .iter()
            .find(|(l, _)| (l.a, l.b) == (a, b) || (l.a, l.b) == (b, a));
        if let Some((_, first)) = duplicate {
            let line = diag.line_of(first);
            let names = f.between.get_ref();
            let message = format!(
                "duplicate link between `{}` and `{}` (first at line {line})",
                names[0].get_ref(),
                names[1].get_ref()
            );
            diag.at(f.between.span(), message);
            continue;
        }
        links.push((SimLink { a, b, params }, f.between.span()));
    }
    links.into_iter().map(|(l, _)| l).collect()
}

/// Resolves `between = [A, B]` into two places a link may join.
fn link_ends(f: &LinkFile, scope: &Scope, diag: &mut Diag<'_>) -> Option<(Place, Place)> {
    let names = f.between.get_ref();
    if names.len() != 2 {
        let message = format!("a link joins exactly two places, not {}", names.len());
        diag.expect(f.between.span(), message, "between = [\"A\", \"B\"]");
        return None;
    }
    let mut ends = Vec::new();
    for n in names {
        match scope.places.get(n.get_ref()) {
            Some((place, _)) => ends.push(*place),
            None if diag.is_broken(&format!("place:{}", n.get_ref())) => {}
            None => {
                let message = format!("link between unknown place `{}`", n.get_ref());
                let expected = "the name of a client site, PoP, origin or backend in this file";
                diag.expect(n.span(), message, expected);
            }
        }
    }
    let [a, b] = ends[..] else { return None };
    check_pair(a, b, f, diag).then_some((a, b))
}

/// Whether two places may be linked: only pairs that exchange traffic.
fn check_pair(a: Place, b: Place, f: &LinkFile, diag: &mut Diag<'_>) -> bool {
    let allowed = match (a.min(b), a.max(b)) {
        (Place::Site(_), Place::Pop(_) | Place::Origin(_)) => true,
        (Place::Pop(_), Place::Origin(_)) => true,
        (Place::Origin(r), Place::Backend { region, .. }) => r == region,
        _ => false,
    };
    if !allowed {
        let message = if a == b {
            "a link joins two different places".to_owned()
        } else {
            format!("no traffic flows between {} and {}", a.a_kind(), b.a_kind())
        };
        diag.expect(
            f.between.span(),
            message,
            format!("a link from {LINK_RULE}"),
        );
    }
    allowed
}

/// A millisecond duration field: finite, non-negative, at most an hour.
fn millis(field: &str, value: Option<&S<f64>>, diag: &mut Diag<'_>) -> Option<Duration> {
    let Some(v) = value else {
        return Some(Duration::ZERO);
    };
    let ms = *v.get_ref();
    if !ms.is_finite() || ms < 0.0 {
        let message = format!("{field} must be a non-negative number of milliseconds, got {ms}");
        diag.at(v.span(), message);
        return None;
    }
    if ms > MAX_DELAY_MS {
        let message = format!("{field} must be at most {MAX_DELAY_MS} ms (one hour), got {ms}");
        diag.at(v.span(), message);
        return None;
    }
    Some(Duration::from_secs_f64(ms / 1000.0))
}

fn link_params(f: &LinkFile, diag: &mut Diag<'_>) -> Option<LinkParams> {
    let delay = millis("delay_ms", f.delay_ms.as_ref(), diag);
    let jitter = millis("jitter_ms", f.jitter_ms.as_ref(), diag);
    let loss = f.loss.as_ref().map_or(Some(0.0), |l| {
        let loss = *l.get_ref();
        let ok = (0.0..=1.0).contains(&loss);
        if !ok {
            let message = format!("loss must be a probability within 0.0..=1.0, got {loss}");
            diag.at(l.span(), message);
        }
        ok.then_some(loss)
    });
    let bandwidth_bps = match &f.bandwidth_mbps {
        None => Some(None),
        Some(b) => bandwidth(b, diag).map(Some),
    };
    Some(LinkParams {
        delay: delay?,
        jitter: jitter?,
        loss: loss?,
        bandwidth_bps: bandwidth_bps?,
    })
}

fn bandwidth(b: &S<f64>, diag: &mut Diag<'_>) -> Option<u64> {
    LinkParams::bandwidth_bps_from_mbps(*b.get_ref())
        .map_err(|why| diag.at(b.span(), format!("bandwidth_mbps {why}")))
        .ok()
}

fn compile_apis(
    files: &[ApiFile],
    regions: &[Region],
    scope: &mut Scope,
    diag: &mut Diag<'_>,
) -> Vec<DemoApi> {
    let mut apis = Vec::new();
    for f in files {
        let name = f.name.get_ref();
        if !is_api_name(name) {
            let message = format!("invalid API name `{name}`");
            diag.expect(f.name.span(), message, "[A-Za-z0-9][A-Za-z0-9_-]*");
        }
        if let Some(at) = scope.apis.get(name) {
            let line = diag.line_of(at);
            diag.at(
                f.name.span(),
                format!("duplicate API `{name}` (first at line {line})"),
            );
        } else {
            scope.apis.insert(name.clone(), f.name.span());
        }
        if let Some(api) = compile_api(f, regions, scope, diag) {
            apis.push(api);
        }
    }
    apis
}

fn compile_api(
    f: &ApiFile,
    regions: &[Region],
    scope: &Scope,
    diag: &mut Diag<'_>,
) -> Option<DemoApi> {
    let name = f.name.get_ref();
    let region = api_region(f, regions, scope, diag)?;
    let stage = f.stage.as_ref().map_or("prod", |s| s.get_ref().as_str());
    if !is_stage_name(stage)
        && let Some(s) = &f.stage
    {
        diag.expect(
            s.span(),
            format!("invalid stage name `{stage}`"),
            "[A-Za-z0-9_-]+",
        );
    }
    let backends = &regions.get(region)?.backends;
    let backend = match &f.backend {
        None => 0,
        Some(b) => {
            let Some(i) = backends.iter().position(|x| x == b.get_ref()) else {
                let message = format!(
                    "API `{name}` uses backend `{}`, which is not a backend of region `{}`",
                    b.get_ref(),
                    regions[region].name
                );
                diag.expect(b.span(), message, one_of(backends.iter()));
                return None;
            };
            i
        }
    };
    // Both checked (and reported) before giving up on the API.
    let limited = f
        .limited
        .as_ref()
        .map(|t| crate::plans::compile_throttle(t, diag));
    let keyed = f
        .keyed
        .as_ref()
        .map(|q| crate::plans::compile_quota(q, diag));
    let (limited, keyed) = (
        limited.map_or(Some(None), |t| t.map(Some))?,
        keyed.map_or(Some(None), |q| q.map(Some))?,
    );
    Some(DemoApi {
        limited,
        keyed,
        name: name.clone(),
        endpoint: *f.endpoint.get_ref(),
        region,
        stage: stage.to_owned(),
        backend,
        cache: f.cache.as_ref().map(|c| *c.get_ref()),
    })
}

fn api_region(
    f: &ApiFile,
    regions: &[Region],
    scope: &Scope,
    diag: &mut Diag<'_>,
) -> Option<usize> {
    let name = f.name.get_ref();
    match &f.region {
        Some(r) => region_ref(r, &format!("API `{name}` is in"), scope, diag),
        None if regions.len() == 1 => Some(0),
        None if regions.is_empty() => None,
        None => {
            let message = format!("API `{name}` needs a `region`: the topology has several");
            diag.expect(
                f.name.span(),
                message,
                one_of(regions.iter().map(|r| &r.name)),
            );
            None
        }
    }
}

/// Every PoP must be linked to the origin of each region it is homed in.
fn check_pop_links(t: &Topology, files: &[PopFile], diag: &mut Diag<'_>) {
    for (p, (pop, f)) in t.pops.iter().zip(files).enumerate() {
        for (&region, r) in pop.regions.iter().zip(f.regions.get_ref()) {
            if t.link(Place::Pop(p), Place::Origin(region)).is_none() {
                let message = format!(
                    "PoP `{}` is homed in region `{}` but has no link to its origin `{}`",
                    pop.id, t.regions[region].name, t.regions[region].origin
                );
                let expected = format!(
                    "[[links]] between = [\"{}\", \"{}\"]",
                    pop.id, t.regions[region].origin
                );
                diag.expect(r.span(), message, expected);
            }
        }
    }
}

/// The entry of every (site, API): the nearest linked PoP homed in the API's region
/// for edge APIs, the region's origin for regional APIs.
fn plan_entries(t: &Topology, files: &[SiteFile], diag: &mut Diag<'_>) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (s, f) in files.iter().enumerate() {
        for (a, api) in t.apis.iter().enumerate() {
            match entry_node(t, s, api) {
                Ok(node) => entries.push(Entry {
                    site: s,
                    api: a,
                    node,
                    port: None,
                }),
                Err((message, expected)) => diag.expect(f.name.span(), message, expected),
            }
        }
    }
    entries
}

fn entry_node(t: &Topology, site: usize, api: &DemoApi) -> Result<Place, (String, String)> {
    let region = &t.regions[api.region];
    let from = Place::Site(site);
    let site_name = &t.sites[site].name;
    match api.endpoint {
        EndpointMode::Regional => {
            let origin = Place::Origin(api.region);
            t.link(from, origin).map(|_| origin).ok_or_else(|| {
                let message = format!(
                    "client site `{site_name}` has no link to origin `{}` (needed to enter \
                     regional API `{}`)",
                    region.origin, api.name
                );
                (
                    message,
                    format!(
                        "[[links]] between = [\"{site_name}\", \"{}\"]",
                        region.origin
                    ),
                )
            })
        }
        EndpointMode::Edge => t
            .pops
            .iter()
            .enumerate()
            .filter(|(_, p)| p.regions.contains(&api.region))
            .filter_map(|(i, _)| Some((i, t.link(from, Place::Pop(i))?.params.delay)))
            .min_by_key(|&(i, delay)| (delay, i))
            .map(|(i, _)| Place::Pop(i))
            .ok_or_else(|| {
                let message = format!(
                    "client site `{site_name}` has no link to a PoP homed in region `{}` \
                     (needed to enter edge API `{}`)",
                    region.name, api.name
                );
                (
                    message,
                    format!("a [[links]] entry between `{site_name}` and such a PoP"),
                )
            }),
    }
}

/// `base_port`, checked to leave room for every entry point.
fn base_port(head: &HeadFile, entries: usize, text: &str, diag: &mut Diag<'_>) -> Option<BasePort> {
    let b = head.base_port.as_ref()?;
    let port = *b.get_ref();
    let last = u32::from(port) + entries.saturating_sub(1) as u32;
    if port == 0 || last > u32::from(u16::MAX) {
        let message = format!(
            "base_port {port} leaves no room for {entries} entry point(s) (ports {port}..={last})"
        );
        diag.expect(
            b.span(),
            message,
            "1..=65535, minus one port per entry point",
        );
        return None;
    }
    let (line, column) = line_col(text, b.span().start);
    Some(BasePort { port, line, column })
}

fn assign_ports(t: &mut Topology) {
    if let Some(base) = t.base_port {
        for (i, e) in t.entries.iter_mut().enumerate() {
            e.port = u16::try_from(usize::from(base.port) + i).ok();
        }
    }
}
