//! What `portico probe` measures for one entry, and the physical minimum the
//! topology's links allow for it.
//!
//! * **cold**: a first-time client's request on a new connection, timed from
//!   before the TCP connect to the response head: TCP handshake, full TLS 1.3
//!   handshake (no session resumption), request.
//! * **warm miss**: a request on an open connection that the entry node cannot
//!   answer itself: a path never asked before (`/probe/NONCE/miss-N`, echoed by
//!   the demo backend). Unique paths, not unique queries: a cache key need not
//!   hold the query string.
//! * **cold h3** (entries with HTTP/3): a request on a new QUIC connection
//!   after a full handshake, timed from before the first packet.
//! * **0-RTT h3**: a request sent in 0-RTT on a resumed QUIC connection.
//! * **warm hit**: a request on an open connection for a cacheable resource
//!   (`/cache/60`) after it was fetched once. Without a cache at the entry
//!   node this is one more miss, and the report says so (`Cache-Status`).
//!
//! Each kind starts with one request that is not counted, as benchmarks
//! warm up: a cold one on a connection of its own (a new connection like
//! every sample), a warm one on the connection the samples use. Without
//! it, on Frankfurt's path, the first cold TCP + TLS sample of an entry was
//! above the median of its nine in 5 of 6 probes (by up to 0.55 ms), after
//! the previous entry's work; the first cold QUIC sample in 2 of 6.

use std::time::Duration;

use portico_config::topology::{Entry, Topology};

use super::client::{Client, ClientError, Reply};
use super::h3client::{H3Client, H3Error, H3Reply};
use super::manifest::EntryInfo;

/// The three measures, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Cold,
    ColdH3,
    ZeroRttH3,
    WarmMiss,
    WarmHit,
}

impl Measure {
    pub const ALL: [Measure; 5] = [
        Measure::Cold,
        Measure::ColdH3,
        Measure::ZeroRttH3,
        Measure::WarmMiss,
        Measure::WarmHit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Cold => "cold",
            Measure::ColdH3 => "cold_h3",
            Measure::ZeroRttH3 => "0rtt_h3",
            Measure::WarmMiss => "warm_miss",
            Measure::WarmHit => "warm_hit",
        }
    }
}

/// The lower bound of each measure over the topology's links: propagation
/// only, no processing, no jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Minimum {
    pub cold: Duration,
    pub cold_h3: Duration,
    pub warm_miss: Duration,
    pub warm_hit: Duration,
}

impl Minimum {
    pub fn of(&self, m: Measure) -> Duration {
        match m {
            Measure::Cold => self.cold,
            Measure::ColdH3 => self.cold_h3,
            // The request travels with the first flight: a round trip, as warm.
            Measure::ZeroRttH3 | Measure::WarmMiss => self.warm_miss,
            Measure::WarmHit => self.warm_hit,
        }
    }
}

/// With `entry` the round trip between the client site and the node it enters
/// at, and `upstream` the round trips of the rest of the path (PoP ↔ origin over
/// the open backbone, origin ↔ backend over a pooled connection):
///
/// * cold = 3 × entry (TCP handshake, TLS 1.3 handshake, request) + upstream;
/// * cold h3 = 2 × entry (QUIC handshake with TLS 1.3, request) + upstream;
/// * warm miss = 0-RTT h3 = entry + upstream;
/// * warm hit = entry (answered from the entry node's cache).
pub fn minimum(t: &Topology, e: &Entry) -> Minimum {
    let path = t.path(e);
    let rtt = |(a, b)| t.params(a, b).rtt();
    let entry = path.first().map_or(Duration::ZERO, |&hop| rtt(hop));
    let upstream: Duration = path.iter().skip(1).map(|&hop| rtt(hop)).sum();
    Minimum {
        cold: entry * 3 + upstream,
        cold_h3: entry * 2 + upstream,
        warm_miss: entry + upstream,
        warm_hit: entry,
    }
}

/// The samples of one entry.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub cold: Vec<Duration>,
    pub cold_h3: Vec<Duration>,
    pub zero_rtt_h3: Vec<Duration>,
    pub warm_miss: Vec<Duration>,
    pub warm_hit: Vec<Duration>,
    /// 0-RTT requests sent: a sample is kept only of those whose early data the
    /// server accepted, so `zero_rtt_h3` may hold fewer, or none.
    pub zero_rtt_runs: usize,
    /// Whether every measured warm hit said `hit` in its `Cache-Status`.
    pub cached: bool,
}

impl Samples {
    pub fn of(&self, m: Measure) -> &[Duration] {
        match m {
            Measure::Cold => &self.cold,
            Measure::ColdH3 => &self.cold_h3,
            Measure::ZeroRttH3 => &self.zero_rtt_h3,
            Measure::WarmMiss => &self.warm_miss,
            Measure::WarmHit => &self.warm_hit,
        }
    }

    /// Whether the entry was measured this way, even if no sample was kept (every
    /// 0-RTT run refused). HTTP/3 measures are taken only with HTTP/3.
    pub fn measured(&self, m: Measure) -> bool {
        match m {
            Measure::ZeroRttH3 => self.zero_rtt_runs > 0,
            _ => !self.of(m).is_empty(),
        }
    }
}

/// Why one entry could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    H3(#[from] H3Error),
    #[error("GET {path} answered {status}")]
    Status { path: String, status: u16 },
    #[error("bad entry URL `{0}`")]
    Url(String),
}

fn check(status: u16, path: &str) -> Result<(), ProbeError> {
    if status == 200 {
        Ok(())
    } else {
        Err(ProbeError::Status {
            path: path.to_owned(),
            status,
        })
    }
}

fn ok(reply: Reply, path: &str) -> Result<Reply, ProbeError> {
    check(reply.status, path).map(|()| reply)
}

fn ok_h3(reply: H3Reply, path: &str) -> Result<Duration, ProbeError> {
    check(reply.status, path).map(|()| reply.ttfb)
}

/// The HTTP/3 samples of an entry: cold (full handshake) and 0-RTT (after one
/// connection that fetches a session ticket; a run whose early data the server
/// refused is left out).
async fn h3_samples(
    h3: &H3Client,
    entry: &EntryInfo,
    runs: u32,
    nonce: u64,
    s: &mut Samples,
) -> Result<(), ProbeError> {
    let addr = entry
        .addr()
        .ok_or_else(|| ProbeError::Url(entry.url.clone()))?;
    let stage = entry.stage_path();
    let path = format!("{stage}/probe/{nonce}/h3-cold-warmup");
    ok_h3(h3.cold_get(addr, &path).await?, &path)?;
    for i in 0..runs {
        let path = format!("{stage}/probe/{nonce}/h3-cold-{i}");
        s.cold_h3
            .push(ok_h3(h3.cold_get(addr, &path).await?, &path)?);
    }
    let resuming = h3.resuming()?;
    let path = format!("{stage}/probe/{nonce}/h3-ticket");
    resuming.zero_rtt_get(addr, &path).await?;
    for i in 0..runs {
        let path = format!("{stage}/probe/{nonce}/h3-0rtt-{i}");
        s.zero_rtt_runs += 1;
        if let Some(reply) = resuming.zero_rtt_get(addr, &path).await? {
            s.zero_rtt_h3.push(ok_h3(reply, &path)?);
        }
    }
    Ok(())
}

/// Measures `runs` samples of each kind through `entry`. `nonce` keeps the miss
/// paths of this probe unique (no cache may answer them).
pub async fn entry(
    client: &Client,
    h3: Option<&H3Client>,
    entry: &EntryInfo,
    runs: u32,
    nonce: u64,
) -> Result<Samples, ProbeError> {
    let addr = entry
        .addr()
        .ok_or_else(|| ProbeError::Url(entry.url.clone()))?;
    let stage = entry.stage_path();
    let mut s = Samples::default();
    let path = format!("{stage}/probe/{nonce}/cold-warmup");
    ok(client.cold_get(addr, &path).await?, &path)?;
    for i in 0..runs {
        let path = format!("{stage}/probe/{nonce}/cold-{i}");
        s.cold
            .push(ok(client.cold_get(addr, &path).await?, &path)?.ttfb);
    }
    if let (Some(h3), true) = (h3, entry.h3) {
        h3_samples(h3, entry, runs, nonce, &mut s).await?;
    }
    let mut conn = client.connect(addr).await?;
    // The first request on a connection may also pay for lazily set-up state.
    let path = format!("{stage}/probe/{nonce}/warmup");
    ok(conn.get(&path).await?, &path)?;
    for i in 0..runs {
        let path = format!("{stage}/probe/{nonce}/miss-{i}");
        s.warm_miss.push(ok(conn.get(&path).await?, &path)?.ttfb);
    }
    let path = format!("{stage}/cache/60");
    ok(conn.get(&path).await?, &path)?;
    s.cached = true;
    for _ in 0..runs {
        let reply = ok(conn.get(&path).await?, &path)?;
        s.cached &= is_hit(&reply);
        s.warm_hit.push(reply.ttfb);
    }
    Ok(s)
}

/// RFC 9211: `Cache-Status: node; hit`. Each cache appends its member, so
/// the one the client talked to is the last member of the last field line.
fn is_hit(reply: &Reply) -> bool {
    let members = reply
        .headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    members
        .last()
        .is_some_and(|last| last.split(';').skip(1).any(|p| p.trim() == "hit"))
}

/// The median of `samples` (the mean of the middle two for an even count).
pub fn median(samples: &[Duration]) -> Option<Duration> {
    let mut v = samples.to_vec();
    v.sort();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SITES: &str = r#"
[[regions]]
name = "r"
origin = "origin-r"
backends = ["backend-r"]
[[pops]]
id = "pop-far"
regions = ["r"]
[[sites]]
name = "far"
[[links]]
between = ["far", "pop-far"]
delay_ms = 5
[[links]]
between = ["pop-far", "origin-r"]
delay_ms = 40
[[links]]
between = ["far", "origin-r"]
delay_ms = 45
[[links]]
between = ["origin-r", "backend-r"]
delay_ms = 0.5
[[apis]]
name = "e"
endpoint = "edge"
[[apis]]
name = "g"
endpoint = "regional"
"#;

    #[test]
    fn minimum_counts_handshakes_on_the_entry_hop_only() {
        let t = portico_config::parse_topology(TWO_SITES, "t", "t").unwrap();
        let ms = Duration::from_millis;
        let edge = minimum(&t, t.entry(0, 0).unwrap());
        assert_eq!(edge.cold, ms(3 * 10 + 80 + 1));
        assert_eq!(edge.cold_h3, ms(2 * 10 + 80 + 1));
        assert_eq!(edge.of(Measure::ZeroRttH3), ms(10 + 80 + 1));
        assert_eq!(edge.warm_miss, ms(10 + 80 + 1));
        assert_eq!(edge.warm_hit, ms(10));
        let regional = minimum(&t, t.entry(0, 1).unwrap());
        assert_eq!(regional.cold, ms(3 * 90 + 1));
        assert_eq!(regional.warm_miss, ms(90 + 1));
        assert_eq!(regional.warm_hit, ms(90));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(5), ms(1), ms(3)]), Some(ms(3)));
        assert_eq!(
            median(&[ms(4), ms(1), ms(3), ms(2)]),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn cache_status_hit_is_read_from_the_nearest_cache() {
        let reply = |v: &str| Reply {
            status: 200,
            headers: [(
                http::header::HeaderName::from_static("cache-status"),
                v.parse().unwrap(),
            )]
            .into_iter()
            .collect(),
            body: bytes::Bytes::new(),
            ttfb: Duration::ZERO,
        };
        assert!(is_hit(&reply("portico-pop-fra; hit")));
        assert!(is_hit(&reply(
            "portico-origin; fwd=miss; stored, portico-pop-fra; hit"
        )));
        assert!(!is_hit(&reply(
            "portico-origin; hit, portico-pop-fra; fwd=miss"
        )));
        assert!(!is_hit(&reply("hit")));
        let mut two = reply("portico-origin; fwd=miss; stored");
        two.headers
            .append("cache-status", "portico-pop-fra; hit".parse().unwrap());
        assert!(is_hit(&two), "the last field line is the nearest cache");
    }
}
