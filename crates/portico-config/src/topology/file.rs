//! The topology file format: serde structs mirroring the TOML, with spans on every
//! value that validation may point at. Only this module and `read` know TOML's shape.

use serde::Deserialize;

use crate::file::S;
use crate::method::EndpointMode;

/// `[topology]`: the run as a whole.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeadFile {
    pub name: Option<S<String>>,
    pub description: Option<String>,
    pub base_port: Option<S<u16>>,
    pub http3: Option<S<bool>>,
}

/// `[[regions]]`: one origin gateway and the demo backends beside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegionFile {
    pub name: S<String>,
    pub location: Option<String>,
    pub origin: S<String>,
    pub backends: S<Vec<S<String>>>,
}

/// `[[pops]]`: a PoP and the regions whose edge APIs it serves.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PopFile {
    pub id: S<String>,
    pub location: Option<String>,
    pub regions: S<Vec<S<String>>>,
}

/// `[[sites]]`: a place clients send requests from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteFile {
    pub name: S<String>,
    pub location: Option<String>,
}

/// `[[links]]`: a simulated network path between two named places, the same in both
/// directions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkFile {
    pub between: S<Vec<S<String>>>,
    pub delay_ms: Option<S<f64>>,
    pub jitter_ms: Option<S<f64>>,
    pub loss: Option<S<f64>>,
    pub bandwidth_mbps: Option<S<f64>>,
}

/// `[[apis]]`: a demo API proxying `/{proxy+}` to one of its region's backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiFile {
    pub name: S<String>,
    pub endpoint: S<EndpointMode>,
    pub region: Option<S<String>>,
    pub stage: Option<S<String>>,
    pub backend: Option<S<String>>,
    /// Response caching of the demo routes (GET and HEAD): `"http"` or `"ttl"`.
    pub cache: Option<S<crate::cache::CacheMode>>,
    /// Adds `ANY /limited/{proxy+}` with this route throttle.
    pub limited: Option<S<crate::file::ThrottleFile>>,
    /// Adds `ANY /keyed/{proxy+}`, which needs the topology's demo API key,
    /// under a usage plan with this quota.
    pub keyed: Option<S<crate::file::QuotaFile>>,
}

/// Everything in a topology file, as written (elements that failed to load are
/// already reported and left out).
#[derive(Debug, Default)]
pub(crate) struct RawTopology {
    pub head: HeadFile,
    pub regions: Vec<RegionFile>,
    pub pops: Vec<PopFile>,
    pub sites: Vec<SiteFile>,
    pub links: Vec<LinkFile>,
    pub apis: Vec<ApiFile>,
}
