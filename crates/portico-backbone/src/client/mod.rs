//! The PoP side of the backbone.
//!
//! [`Backbone::start`] dials every origin at once and keeps one link per
//! origin: QUIC keep-alives while idle, a reconnect with exponential
//! back-off and jitter when the link dies, a full configuration snapshot
//! after every (re)connect and deltas after the origin's reloads. Each link's state is a watch channel, so a
//! request never waits for a link: [`BackboneUpstream`] takes a live link of
//! the API's home region or fails at once with 503.

mod link;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use portico_config::DefinitionDefaults;
use portico_proto::Codec;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::control::{ControlHandler, ControlLink, Ignore};
use crate::runtime::{InFlight, InFlightGuard};
use crate::settings::{Identity, LinkSettings};
use crate::sync::{ConfigSync, OriginConfig, SyncedConfig};
use crate::tls::TlsMaterial;
use crate::{BackboneError, close};

pub use upstream::BackboneUpstream;

/// An origin a PoP dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSpec {
    /// The region whose APIs this origin serves.
    pub region: String,
    pub address: SocketAddr,
    /// The name the origin's certificate must carry.
    pub server_name: String,
}

/// An established link, shared by the requests that use it.
#[derive(Debug)]
pub struct Session {
    conn: quinn::Connection,
    codec: Codec,
    origin_id: String,
    /// The region of the link's origin.
    region: String,
    control: ControlLink,
    /// Requests in flight on the endpoint (every link).
    in_flight: InFlight,
    /// Requests in flight on this link, counted when its region has several
    /// origins (replicas): the PoP sends the region's next request to the
    /// one with the fewest. A region's only link counts nothing more.
    outstanding: Option<InFlight>,
}

impl Session {
    /// Counts one request on the endpoint (and on this link, if counted)
    /// until the guard is dropped.
    fn enter(&self) -> InFlightGuard {
        match &self.outstanding {
            Some(link) => self.in_flight.enter_with(link),
            None => self.in_flight.enter(),
        }
    }

    /// Requests in flight on this link (0 if not counted).
    fn outstanding(&self) -> usize {
        self.outstanding.as_ref().map_or(0, InFlight::count)
    }

    /// The origin's node id, from its `HelloAck`.
    pub fn origin_id(&self) -> &str {
        &self.origin_id
    }

    /// The link's control stream, for control subsystems.
    pub fn control(&self) -> &ControlLink {
        &self.control
    }

    /// The link's current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// QUIC counters of the link (packets, frames, bytes, congestion), for
    /// diagnostics and benchmarks.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }
}

/// Where one link stands.
#[derive(Debug, Clone)]
pub enum LinkState {
    /// Dialing (first attempt or after a failure).
    Connecting,
    /// Handshake done: requests may use it.
    Up(Arc<Session>),
    /// The origin said `GoAway`: in-flight requests finish, new ones go elsewhere.
    Draining,
    /// The last attempt failed or the link died; a retry is scheduled.
    Down(String),
}

impl LinkState {
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up(_) => "up",
            LinkState::Draining => "draining",
            LinkState::Down(_) => "down",
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self, LinkState::Up(_))
    }
}

pub(crate) struct Link {
    spec: OriginSpec,
    state: watch::Sender<LinkState>,
    /// The session of `state` while it is `Up`, for requests: read without
    /// a lock (a watch's `borrow` takes its lock, which every PoP thread
    /// would share). Set only by [`Link::set_state`], with `state`.
    up: ArcSwapOption<Session>,
}

impl Link {
    fn new(spec: OriginSpec) -> Self {
        Link {
            spec,
            state: watch::channel(LinkState::Connecting).0,
            up: ArcSwapOption::empty(),
        }
    }

    /// The link's session while it is up.
    fn session(&self) -> Option<Arc<Session>> {
        self.up.load_full()
    }

    fn is_up(&self) -> bool {
        self.up.load().is_some()
    }

    /// Moves the link to `state`, telling its watchers.
    fn set_state(&self, state: LinkState) {
        let session = match &state {
            LinkState::Up(session) => Some(Arc::clone(session)),
            _ => None,
        };
        self.up.store(session);
        self.state.send_replace(state);
    }
}

/// Everything the link tasks and the upstream share.
pub(crate) struct Inner {
    identity: Identity,
    settings: LinkSettings,
    client_config: quinn::ClientConfig,
    links: Vec<Link>,
    sync: ConfigSync,
    next: AtomicUsize,
    control: Arc<dyn ControlHandler>,
    /// Requests in flight on every link (the drivers coalesce while several are).
    in_flight: InFlight,
}

impl Inner {
    /// Whether link `index`'s region has other origins (replicas) too.
    fn replicated(&self, index: usize) -> bool {
        let Some(link) = self.links.get(index) else {
            return false;
        };
        let region = &link.spec.region;
        self.links
            .iter()
            .filter(|l| &l.spec.region == region)
            .count()
            > 1
    }

    /// A live session to `region`: of several origins there (replicas), the
    /// one with the fewest requests in flight on its link, rotating among
    /// those with equally few (least outstanding requests, as load balancers
    /// do: a replica that answers slowly, or is busy, gets fewer). With one
    /// origin, that one. Allocation-free: it runs once per forwarded request.
    /// A session of `region` whose link is up (not `except`'s).
    fn live_session(&self, region: &str, except: Option<&Arc<Session>>) -> Option<Arc<Session>> {
        let other = |s: &Arc<Session>| except.is_none_or(|e| !Arc::ptr_eq(e, s));
        let in_region = || self.links.iter().filter(|l| l.spec.region == region);
        let live = || in_region().filter_map(Link::session).filter(other);
        let count = match except {
            None => in_region().filter(|l| l.is_up()).count(),
            Some(_) => live().count(),
        };
        match count {
            0 => None,
            1 => live().next(),
            _ => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
                least_outstanding(live().map(|s| (s.outstanding(), s)), count, start)
            }
        }
    }
}

/// Of `links` (each with its requests in flight), the one with the fewest;
/// among equals, the first from position `start` on, in turn (`count` links
/// were live when `start` was drawn; states may have changed since).
fn least_outstanding<T>(
    links: impl Iterator<Item = (usize, T)>,
    count: usize,
    start: usize,
) -> Option<T> {
    let count = count.max(1);
    let mut best: Option<((usize, usize), T)> = None;
    for (i, (load, link)) in links.enumerate() {
        let key = (load, (i % count + count - start % count) % count);
        if best.as_ref().is_none_or(|(least, _)| key < *least) {
            best = Some((key, link));
        }
    }
    best.map(|(_, link)| link)
}

/// What a PoP runs of each origin's definitions.
#[derive(Clone)]
pub struct ConfigStatus {
    inner: Arc<Inner>,
}

impl ConfigStatus {
    /// Each origin and the version and SHA-256 this PoP runs of its
    /// definitions, with how many snapshots and deltas came, in `start`'s order.
    pub fn origins(&self) -> Vec<(OriginSpec, OriginConfig)> {
        let status = self.inner.sync.status();
        self.inner
            .links
            .iter()
            .zip(status)
            .map(|(l, s)| (l.spec.clone(), s))
            .collect()
    }
}

/// The PoP's links to its origins.
pub struct Backbone {
    inner: Arc<Inner>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    tasks: TaskTracker,
}

impl Backbone {
    /// Binds a client endpoint and starts dialing every origin. Returns at
    /// once: links come up in the background.
    pub fn start(
        identity: Identity,
        origins: Vec<OriginSpec>,
        tls: &TlsMaterial,
        settings: LinkSettings,
        defaults: DefinitionDefaults,
    ) -> Result<Backbone, BackboneError> {
        let control: Arc<dyn ControlHandler> = Arc::new(Ignore);
        Self::start_with_control(identity, origins, tls, settings, defaults, control)
    }

    /// [`Backbone::start`], handing the control frames the backbone does not
    /// handle itself (purges, quota leases, rate shares...) to `control`,
    /// which also learns of every origin link coming and going.
    pub fn start_with_control(
        identity: Identity,
        origins: Vec<OriginSpec>,
        tls: &TlsMaterial,
        settings: LinkSettings,
        defaults: DefinitionDefaults,
        control: Arc<dyn ControlHandler>,
    ) -> Result<Backbone, BackboneError> {
        let client_config = tls.client_config(&settings)?;
        let v6 = origins.iter().any(|o| o.address.is_ipv6());
        let bind: SocketAddr = if v6 {
            "[::]:0".parse().unwrap_or(SocketAddr::from(([0u16; 8], 0)))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let socket = std::net::UdpSocket::bind(bind).map_err(BackboneError::Endpoint)?;
        portico_net::quic::grow_udp_buffers(&socket);
        let in_flight = InFlight::default();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            crate::runtime::CoalescingRuntime::shared(in_flight.clone()),
        )
        .map_err(BackboneError::Endpoint)?;
        let links = origins.into_iter().map(Link::new).collect::<Vec<_>>();
        let inner = Arc::new(Inner {
            identity,
            settings,
            client_config,
            sync: ConfigSync::new(links.len(), defaults),
            links,
            next: AtomicUsize::new(0),
            control,
            in_flight,
        });
        let (stop, _) = watch::channel(false);
        let tasks = TaskTracker::new();
        for index in 0..inner.links.len() {
            let task = link::run(
                Arc::clone(&inner),
                endpoint.clone(),
                index,
                stop.subscribe(),
            );
            tasks.spawn(task);
        }
        Ok(Backbone {
            inner,
            endpoint,
            stop,
            tasks,
        })
    }

    /// The gateway upstream forwarding over these links.
    pub fn upstream(&self) -> BackboneUpstream {
        BackboneUpstream::new(Arc::clone(&self.inner))
    }

    /// The merged configuration; changes whenever an origin's snapshot does.
    pub fn config(&self) -> watch::Receiver<Arc<SyncedConfig>> {
        self.inner.sync.subscribe()
    }

    /// What this PoP runs of each origin's definitions, as a handle that
    /// may outlive the backbone (the admin API keeps one).
    pub fn config_status(&self) -> ConfigStatus {
        ConfigStatus {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Each origin and the state of its link.
    pub fn links(&self) -> Vec<(OriginSpec, LinkState)> {
        self.inner
            .links
            .iter()
            .map(|l| (l.spec.clone(), l.state.borrow().clone()))
            .collect()
    }

    /// The control stream of origin `index`'s link while it is up.
    pub fn control_link(&self, index: usize) -> Option<ControlLink> {
        match &*self.inner.links.get(index)?.state.borrow() {
            LinkState::Up(session) => Some(session.control.clone()),
            _ => None,
        }
    }

    /// Watches the state of origin `index`'s link (in `start`'s order).
    pub fn watch_link(&self, index: usize) -> Option<watch::Receiver<LinkState>> {
        self.inner.links.get(index).map(|l| l.state.subscribe())
    }

    /// Waits until some link to `region` is up, or `timeout` passes.
    pub async fn wait_up(&self, region: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut states: Vec<_> = self
            .inner
            .links
            .iter()
            .filter(|l| l.spec.region == region)
            .map(|l| l.state.subscribe())
            .collect();
        if states.is_empty() {
            return false;
        }
        loop {
            if states.iter().any(|rx| rx.borrow().is_up()) {
                return true;
            }
            let changed = futures_util::future::select_all(
                states.iter_mut().map(|rx| Box::pin(rx.changed())),
            );
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Closes every link (after telling origins `GoAway`) and stops dialing.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.tasks.close();
        let grace = Duration::from_secs(2);
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.endpoint.close(close::NORMAL, b"pop shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::least_outstanding;

    fn pick(loads: &[usize], start: usize) -> Option<&'static str> {
        let names = ["a", "b", "c"];
        let links = loads.iter().copied().zip(names);
        least_outstanding(links, loads.len(), start)
    }

    #[test]
    fn the_link_with_the_fewest_requests_in_flight_is_chosen() {
        assert_eq!(pick(&[3, 1, 2], 0), Some("b"));
        assert_eq!(pick(&[0, 5], 1), Some("a"));
        assert_eq!(pick(&[4, 4, 0], 2), Some("c"));
        assert_eq!(pick(&[], 0), None);
    }

    #[test]
    fn equally_loaded_links_take_turns() {
        assert_eq!(pick(&[0, 0], 0), Some("a"));
        assert_eq!(pick(&[0, 0], 1), Some("b"));
        assert_eq!(pick(&[2, 1, 1], 0), Some("b"));
        assert_eq!(pick(&[2, 1, 1], 2), Some("c"));
        assert_eq!(pick(&[1, 2, 1], 1), Some("c"), "from `start` on, wrapping");
    }

    #[test]
    fn a_link_that_came_up_between_the_passes_is_still_a_candidate() {
        // Two were live when `start` was drawn; three are now.
        let links = [(1, "a"), (1, "b"), (0, "c")].into_iter();
        assert_eq!(least_outstanding(links, 2, 1), Some("c"));
        let links = [(0, "a"), (0, "b"), (0, "c")].into_iter();
        assert_eq!(least_outstanding(links, 2, 1), Some("b"));
    }
}
