//! The compiled topology: every name resolved to an index, every link checked.

use std::time::Duration;

use crate::method::EndpointMode;

/// A whole multi-region deployment to run on one machine (`portico up`): regions
/// with their origin gateway and demo backends, PoPs, client sites, the simulated
/// links between them, the demo APIs, and the entry point of every (site, API).
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The file the topology came from, for messages about it.
    pub file: String,
    pub name: String,
    pub description: Option<String>,
    /// Fixed entry ports (`base_port`, `base_port + 1`, … in [`Topology::entries`]
    /// order); `None`: the system picks free ports.
    pub base_port: Option<BasePort>,
    /// Whether public listeners (and the entry relays) also carry HTTP/3 over UDP.
    pub http3: bool,
    pub regions: Vec<Region>,
    pub pops: Vec<Pop>,
    pub sites: Vec<Site>,
    pub links: Vec<SimLink>,
    pub apis: Vec<DemoApi>,
    /// One per (site, API), site-major in file order.
    pub entries: Vec<Entry>,
}

/// `base_port` with its position, so "port in use" can point at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasePort {
    pub port: u16,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    pub location: Option<String>,
    /// The node id of the region's origin gateway.
    pub origin: String,
    /// Node ids of the region's demo backends (at least one).
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop {
    pub id: String,
    pub location: Option<String>,
    /// Indexes into [`Topology::regions`]: the origins this PoP dials.
    pub regions: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub location: Option<String>,
}

/// Something a link can join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Site(usize),
    Pop(usize),
    /// The origin of region `.0`.
    Origin(usize),
    /// Backend `index` of region `region`.
    Backend {
        region: usize,
        index: usize,
    },
}

impl Place {
    /// The kind of place, as messages name it.
    pub fn kind(self) -> &'static str {
        match self {
            Place::Site(_) => "client site",
            Place::Pop(_) => "PoP",
            Place::Origin(_) => "origin",
            Place::Backend { .. } => "backend",
        }
    }

    /// [`Place::kind`] with its indefinite article.
    pub fn a_kind(self) -> &'static str {
        match self {
            Place::Site(_) => "a client site",
            Place::Pop(_) => "a PoP",
            Place::Origin(_) => "an origin",
            Place::Backend { .. } => "a backend",
        }
    }
}

/// The characteristics of a simulated link, the same in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkParams {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay is drawn from `delay ± jitter`.
    pub jitter: Duration,
    /// Datagram loss probability (UDP only; TCP is reliable).
    pub loss: f64,
    /// `None`: unlimited.
    pub bandwidth_bps: Option<u64>,
}

impl LinkParams {
    /// The round trip of this link when idle: twice the one-way delay.
    pub fn rtt(&self) -> Duration {
        self.delay * 2
    }

    /// A bandwidth given in megabits per second, in bits per second: at
    /// least one bit per second and at most a terabit (beyond that it is a
    /// typo). The error says what is wrong, for the caller to name the field.
    pub fn bandwidth_bps_from_mbps(mbps: f64) -> Result<u64, String> {
        if !(mbps.is_finite() && mbps * 1e6 >= 1.0 && mbps <= 1e6) {
            return Err(format!(
                "must be a positive number of megabits per second (at most 1000000), got {mbps}"
            ));
        }
        Ok((mbps * 1e6).round() as u64)
    }

    /// No delay, jitter, loss or bandwidth limit: a direct connection is
    /// this link exactly.
    pub fn is_ideal(&self) -> bool {
        self.delay.is_zero()
            && self.jitter.is_zero()
            && self.loss == 0.0
            && self.bandwidth_bps.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimLink {
    pub a: Place,
    pub b: Place,
    pub params: LinkParams,
}

/// A demo API: `ANY /` and `ANY /{proxy+}` on stage `stage`, proxied to a backend of
/// its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoApi {
    pub name: String,
    pub endpoint: EndpointMode,
    /// Index into [`Topology::regions`].
    pub region: usize,
    pub stage: String,
    /// Index into the region's `backends`.
    pub backend: usize,
    /// Caching of the demo routes, when the topology turns it on.
    pub cache: Option<crate::cache::CacheMode>,
    /// The route throttle of `/limited/{proxy+}`, when the API has that route.
    pub limited: Option<crate::plans::RateLimit>,
    /// The quota of `/keyed/{proxy+}` (demo key only), when the API has that route.
    pub keyed: Option<crate::QuotaSpec>,
}

/// Where one client site enters one API: a PoP for edge APIs (the linked PoP of the
/// API's region with the shortest delay), the region's origin for regional APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub site: usize,
    pub api: usize,
    /// [`Place::Pop`] or [`Place::Origin`].
    pub node: Place,
    /// The fixed port of this entry, when the topology has a `base_port`.
    pub port: Option<u16>,
}

impl Topology {
    /// The link between two places, in either direction.
    pub fn link(&self, a: Place, b: Place) -> Option<&SimLink> {
        self.links
            .iter()
            .find(|l| (l.a == a && l.b == b) || (l.a == b && l.b == a))
    }

    /// The link's parameters, or an ideal link when the topology declares none
    /// (allowed only between an origin and its backends).
    pub fn params(&self, a: Place, b: Place) -> LinkParams {
        self.link(a, b).map(|l| l.params).unwrap_or_default()
    }

    /// The node id or name of a place.
    pub fn place_name(&self, place: Place) -> &str {
        let name = match place {
            Place::Site(i) => self.sites.get(i).map(|s| s.name.as_str()),
            Place::Pop(i) => self.pops.get(i).map(|p| p.id.as_str()),
            Place::Origin(r) => self.regions.get(r).map(|r| r.origin.as_str()),
            Place::Backend { region, index } => self
                .regions
                .get(region)
                .and_then(|r| r.backends.get(index))
                .map(String::as_str),
        };
        name.unwrap_or("?")
    }

    /// The hops a request entering at `entry` takes, from the client site to the
    /// backend: site → PoP → origin → backend, or site → origin → backend.
    pub fn path(&self, entry: &Entry) -> Vec<(Place, Place)> {
        let Some(api) = self.apis.get(entry.api) else {
            return Vec::new();
        };
        let origin = Place::Origin(api.region);
        let backend = Place::Backend {
            region: api.region,
            index: api.backend,
        };
        let site = Place::Site(entry.site);
        match entry.node {
            Place::Pop(_) => vec![(site, entry.node), (entry.node, origin), (origin, backend)],
            _ => vec![(site, origin), (origin, backend)],
        }
    }

    /// The entry of `site` for `api`, if any.
    pub fn entry(&self, site: usize, api: usize) -> Option<&Entry> {
        self.entries.iter().find(|e| e.site == site && e.api == api)
    }
}
