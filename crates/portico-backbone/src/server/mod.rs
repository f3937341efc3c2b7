//! The origin side of the backbone.
//!
//! [`BackboneServer::run`] accepts links from PoPs (mutual TLS is checked by
//! rustls before anything else), answers the handshake on the control
//! stream, pushes a configuration snapshot at once and, whenever the
//! definitions watch changes, a delta or a snapshot (`config`), and serves
//! every request stream with a
//! [`RequestHandler`]. A connection attempt first proves its address (a
//! QUIC Retry), and at most `LinkSettings::max_handshakes` links handshake
//! at once, so attempts that never finish cannot pile up. On shutdown each link gets `GoAway`; requests in flight
//! may finish (up to the drain timeout), new streams are refused, then the
//! link closes.

mod config;
mod control;
mod request;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use portico_config::Definitions;
use portico_gateway::workers::WorkerPool;
use portico_gateway::{Body, ConnInfo};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::control::{ControlHandler, Ignore};
use crate::runtime::InFlight;
use crate::settings::{Identity, LinkSettings};
use crate::tls::TlsMaterial;
use crate::{BackboneError, close};

pub use crate::wire::Routed;

/// What serves a request that arrived over the backbone (the origin's
/// gateway with `Entry::Routed`).
///
/// The future is dropped when the PoP cancels the stream (its client went
/// away): implementations must stop their work when dropped, as the
/// gateway's integrations do.
pub trait RequestHandler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Body>,
        conn: Arc<ConnInfo>,
        routed: Routed,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// A bound backbone listener (one UDP socket). Its quinn endpoint is made
/// when it starts serving, on the thread that will receive its datagrams.
pub struct BackboneServer {
    socket: std::net::UdpSocket,
    config: quinn::ServerConfig,
    identity: Identity,
    settings: LinkSettings,
    control: Arc<dyn ControlHandler>,
    handshakes: Handshakes,
}

/// The links of one server handshaking now: from a connection attempt whose
/// address is proven to the PoP's `Hello` accepted. A clone follows the
/// same server (diagnostics, tests).
#[derive(Debug, Clone)]
pub struct Handshakes {
    slots: Arc<Semaphore>,
    max: usize,
    /// Handshakes in progress per source address: one host with a real
    /// address (a Retry proves only that) and no certificate could
    /// otherwise hold every slot by stalling its handshakes, and lock the
    /// PoPs out. Loopback is not counted: a local topology's PoPs all
    /// dial from it.
    per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// Handshakes one (non-loopback) address may have in progress at once.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 4;

/// A handshake's hold on the server's slots, given back when dropped.
pub(crate) struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    address: Option<(std::net::IpAddr, Handshakes)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, handshakes)) = self.address.take() {
            let mut counts = handshakes.counts();
            if let Some(n) = counts.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

impl Handshakes {
    fn new(max: u32) -> Self {
        let max = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Handshakes {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_address: Arc::default(),
        }
    }

    fn counts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.per_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a handshake from `ip`, if the server and the address both
    /// have room.
    fn take(&self, ip: std::net::IpAddr) -> Option<Slot> {
        let permit = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        let ip = ip.to_canonical();
        let address = match ip.is_loopback() {
            true => None,
            false => {
                let mut counts = self.counts();
                let n = counts.entry(ip).or_default();
                if *n >= MAX_HANDSHAKES_PER_ADDRESS {
                    return None;
                }
                *n += 1;
                Some((ip, self.clone()))
            }
        };
        Some(Slot {
            _permit: permit,
            address,
        })
    }

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }

    /// The most that may be in progress at once.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// What every link of one server shares.
pub(crate) struct Shared<H> {
    pub(crate) handler: Arc<H>,
    pub(crate) identity: Identity,
    pub(crate) settings: LinkSettings,
    pub(crate) definitions: watch::Receiver<Arc<Definitions>>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) control: Arc<dyn ControlHandler>,
    pub(crate) deltas: config::DeltaCache,
    /// Request tasks running on every link (the drivers coalesce while several are).
    pub(crate) in_flight: InFlight,
    /// Set once a link has seen `stop`: read by every request as it ends,
    /// without the watch's lock.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

impl BackboneServer {
    /// Binds `addr` (UDP) and prepares mutual TLS.
    pub fn bind(
        addr: SocketAddr,
        tls: &TlsMaterial,
        identity: Identity,
        settings: LinkSettings,
    ) -> Result<Self, BackboneError> {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|source| BackboneError::Bind { addr, source })?;
        Self::from_socket(socket, tls, identity, settings)
    }

    /// Serves on an already-bound socket (tests bind port 0 themselves).
    pub fn from_socket(
        socket: std::net::UdpSocket,
        tls: &TlsMaterial,
        identity: Identity,
        settings: LinkSettings,
    ) -> Result<Self, BackboneError> {
        let config = tls.server_config(&settings)?;
        // One socket carries every PoP's link: bursts of small responses
        // overflowed the default buffer (datagrams dropped, each a loss to
        // QUIC) at 256 concurrent requests on one link.
        portico_net::quic::grow_udp_buffers(&socket);
        Ok(BackboneServer {
            socket,
            config,
            identity,
            handshakes: Handshakes::new(settings.max_handshakes),
            settings,
            control: Arc::new(Ignore),
        })
    }

    /// Hands the control frames the backbone does not handle itself (usage
    /// reports, quota requests, purge acks...) to `control`, which also
    /// learns of every PoP link coming and going.
    pub fn with_control(mut self, control: Arc<dyn ControlHandler>) -> Self {
        self.control = control;
        self
    }

    pub fn local_addr(&self) -> Result<SocketAddr, BackboneError> {
        self.socket.local_addr().map_err(BackboneError::Endpoint)
    }

    /// The server's handshakes in progress (a handle that stays valid while
    /// it runs).
    pub fn handshakes(&self) -> Handshakes {
        self.handshakes.clone()
    }

    /// Serves links until `shutdown` completes, then drains them.
    /// `definitions` is the origin's current snapshot; every change is
    /// pushed to every connected PoP.
    pub async fn run<H: RequestHandler>(
        self,
        handler: Arc<H>,
        definitions: watch::Receiver<Arc<Definitions>>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.serve(handler, definitions, Vec::new(), shutdown).await;
    }

    /// [`BackboneServer::run`] with every link served on one of `workers`
    /// threads (current-thread runtimes, round robin): the link's quinn
    /// driver, its control stream, its request tasks and the backend
    /// connections they open all run there, so a request wakes no other
    /// thread (on a multi-threaded runtime a fifth of the origin's CPU went
    /// to wake-ups). The endpoint (the socket's receive side) runs on the
    /// first worker: with one link, nothing crosses threads at all; with
    /// more, only datagrams do, once each, and one carries many requests.
    /// One link is served by one core, as one QUIC connection is driven by
    /// one task anyway; links from many PoPs spread over the cores.
    /// `workers == 0` serves on the caller's runtime.
    pub async fn run_on_workers<H: RequestHandler>(
        self,
        workers: usize,
        handler: Arc<H>,
        definitions: watch::Receiver<Arc<Definitions>>,
        shutdown: impl Future<Output = ()>,
    ) {
        let pool = WorkerPool::start("portico-link", 0, workers);
        let runtimes = pool.handles().to_vec();
        let Some(first) = runtimes.first().cloned() else {
            return self.run(handler, definitions, shutdown).await;
        };
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let serving = first.spawn(self.serve(handler, definitions, runtimes, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        tokio::pin!(serving);
        tokio::select! {
            () = shutdown => {
                let _ = stop_tx.send(true);
                let _ = serving.await;
            }
            // Serving ended by itself (the endpoint could not start).
            _ = &mut serving => {}
        }
        // The endpoint is idle (or gave up waiting): nothing of a link is
        // left to run on the workers.
        let _ = tokio::task::spawn_blocking(move || pool.stop()).await;
    }

    /// Makes the endpoint on this thread and serves, each link on one of
    /// `runtimes` in turn (none: on this one).
    async fn serve<H: RequestHandler>(
        self,
        handler: Arc<H>,
        definitions: watch::Receiver<Arc<Definitions>>,
        runtimes: Vec<tokio::runtime::Handle>,
        shutdown: impl Future<Output = ()>,
    ) {
        let in_flight = InFlight::default();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(self.config),
            self.socket,
            crate::runtime::CoalescingRuntime::shared(in_flight.clone()),
        );
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(err) => return tracing::error!(%err, "the backbone endpoint failed to start"),
        };
        let (stop_tx, stop) = watch::channel(false);
        let local_addr = endpoint
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let shared = Arc::new(Shared {
            handler,
            identity: self.identity,
            settings: self.settings,
            definitions,
            stop,
            local_addr,
            control: self.control,
            deltas: config::DeltaCache::default(),
            in_flight,
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let links = TaskTracker::new();
        let mut turn = runtimes.iter().cycle();
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                () = &mut shutdown => break,
                incoming = endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            let Some(slot) = admit(incoming, &self.handshakes) else {
                continue;
            };
            // The link's driver is spawned where the link is accepted.
            let link = control::serve_link(slot, Arc::clone(&shared));
            match turn.next() {
                Some(runtime) => links.spawn_on(link, runtime),
                None => links.spawn(link),
            };
        }
        let _ = stop_tx.send(true);
        links.close();
        let drain = shared.settings.drain_timeout + shared.settings.handshake_timeout;
        if tokio::time::timeout(drain, links.wait()).await.is_err() {
            tracing::warn!("backbone links still busy after the drain timeout; closing them");
        }
        endpoint.close(close::NORMAL, b"origin shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

/// A connection attempt the endpoint may handshake, with the slot it holds
/// until its `Hello` is accepted.
pub(crate) struct Admitted {
    pub(crate) incoming: quinn::Incoming,
    pub(crate) slot: Slot,
}

/// Answers a connection attempt: one from an address not yet proven gets a
/// QUIC Retry (one round trip, which the PoP's quinn client makes by
/// itself; links are dialed rarely), so handshakes from spoofed addresses
/// cost a stateless packet each; one past `max_handshakes` is refused.
fn admit(incoming: quinn::Incoming, handshakes: &Handshakes) -> Option<Admitted> {
    if !incoming.remote_address_validated() {
        // An unproven address may always be sent a Retry (quinn's
        // guarantee); refused should that ever change.
        if let Err(err) = incoming.retry() {
            err.into_incoming().refuse();
        }
        return None;
    }
    match handshakes.take(incoming.remote_address().ip()) {
        Some(slot) => Some(Admitted { incoming, slot }),
        None => {
            tracing::debug!(peer = %incoming.remote_address(), "backbone link refused: too many handshakes in progress");
            incoming.refuse();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_a_few_handshake_slots() {
        let handshakes = Handshakes::new(64);
        let stalled: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        let mut held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| handshakes.take(stalled).expect("room"))
            .collect();
        assert!(handshakes.take(stalled).is_none(), "one address took more");
        // IPv4-mapped is the same address.
        assert!(
            handshakes
                .take("::ffff:203.0.113.9".parse().unwrap())
                .is_none()
        );
        // Others still link up, loopback (a local topology's PoPs) uncounted.
        let other = handshakes.take("198.51.100.1".parse().unwrap());
        assert!(other.is_some());
        let local: Vec<Slot> = (0..10)
            .filter_map(|_| handshakes.take("127.0.0.1".parse().unwrap()))
            .collect();
        assert_eq!(local.len(), 10);
        assert_eq!(handshakes.in_progress(), MAX_HANDSHAKES_PER_ADDRESS + 11);
        // A handshake that ends gives its address room again.
        held.pop();
        assert!(handshakes.take(stalled).is_some());
        drop((held, other, local));
        assert_eq!(handshakes.in_progress(), 0);
        assert!(handshakes.counts().is_empty());
    }
    use crate::pki::Ca;

    #[test]
    fn the_link_socket_gets_big_buffers() {
        let ca = Ca::generate().unwrap();
        let cert = ca
            .issue("origin-a", Some(portico_proto::Role::Origin))
            .unwrap();
        let tls = TlsMaterial::from_pem(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        let identity = Identity {
            node_id: "origin-a".into(),
            region: "test-1".into(),
        };
        let server =
            BackboneServer::from_socket(socket, &tls, identity, LinkSettings::default()).unwrap();
        let after = socket2::SockRef::from(&server.socket)
            .recv_buffer_size()
            .unwrap();
        // Linux reports a granted size doubled, the default as it is.
        assert!(after > before, "receive buffer {before} → {after}");
    }
}
