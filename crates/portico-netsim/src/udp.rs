//! UDP relay: one listen socket for clients, one connected upstream socket per client.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, trace};

use crate::clock::{now, wait_until};
use crate::handle::stop_signal;
use crate::{DelayLine, DropReason, Link, NetsimError, RelayHandle, RelayStats, Timing};

/// How long a client mapping lives without traffic in either direction.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most client mappings a UDP relay holds at once; datagrams from further clients are
/// dropped (counted as `dropped_queue`) until one expires.
pub const DEFAULT_MAX_SESSIONS: usize = 4096;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams from upstream sockets waiting for the relay loop. They are timestamped on
/// receipt, so this hop does not skew timing; when full, readers wait (kernel buffers).
const INBOUND_CAPACITY: usize = 1024;

/// Relays UDP datagrams between clients and one target through a simulated [`Link`].
///
/// Each distinct client address gets its own upstream socket connected to the target, so
/// the target sees one peer per client (QUIC connection migration and NAT behave as
/// usual). All clients share the link: one delay line per direction, whose bandwidth and
/// queue limit apply to the relay as a whole.
#[derive(Debug)]
pub struct UdpRelay {
    socket: UdpSocket,
    local_addr: SocketAddr,
    target: SocketAddr,
    link: Link,
    idle_timeout: Duration,
    max_sessions: usize,
    seed: u64,
    timing: Timing,
    stats: Arc<RelayStats>,
}

impl UdpRelay {
    /// Binds `listen` (port 0 picks a free port) and relays to `target`.
    pub async fn bind(
        listen: SocketAddr,
        target: SocketAddr,
        link: Link,
    ) -> Result<Self, NetsimError> {
        link.validate()?;
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|source| NetsimError::Bind {
                addr: listen,
                source,
            })?;
        Self::from_socket(socket, target, link)
    }

    /// Relays from an already-bound socket to `target`.
    pub fn from_socket(
        socket: UdpSocket,
        target: SocketAddr,
        link: Link,
    ) -> Result<Self, NetsimError> {
        link.validate()?;
        let local_addr = socket
            .local_addr()
            .map_err(NetsimError::io("reading the local address"))?;
        Ok(Self {
            socket,
            local_addr,
            target,
            link,
            idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
            seed: rand::random(),
            timing: Timing::default(),
            stats: Arc::default(),
        })
    }

    /// How releases are timed (default [`Timing::Tokio`]).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Sets how long an idle client mapping lives (default 60 s).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout.max(Duration::from_millis(1));
        self
    }

    /// Caps the number of simultaneous client mappings (default 4096).
    pub fn with_max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions;
        self
    }

    /// Seeds jitter and loss so a run can be reproduced (default: random).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The relay's counters, live.
    pub fn stats(&self) -> Arc<RelayStats> {
        Arc::clone(&self.stats)
    }

    /// Runs on a new task until the returned handle is shut down or dropped.
    pub fn spawn(self) -> RelayHandle {
        let (addr, stats) = (self.local_addr, self.stats());
        RelayHandle::spawn(addr, stats, move |stopped| self.run(stop_signal(stopped)))
    }

    /// Relays until `shutdown` resolves; data in flight is then dropped. Fails only if the
    /// listen socket fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), NetsimError> {
        let (inbound_tx, mut inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let mut expiry =
            tokio::time::interval((self.idle_timeout / 4).max(Duration::from_millis(1)));
        expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let timing = self.timing;
        let mut state = UdpState::new(self, inbound_tx);
        let mut shutdown = pin!(shutdown);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (up_due, down_due) = (state.up.next_release(), state.down.next_release());
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                res = state.socket.recv_from(&mut buf) => state.on_client_datagram(res, &buf).await?,
                Some(inbound) = inbound_rx.recv() => state.on_target_datagram(inbound),
                () = wait_until(timing, up_due) => state.flush_up().await,
                () = wait_until(timing, down_due) => state.flush_down().await,
                _ = expiry.tick() => state.expire_idle(),
            }
        }
    }
}

/// A datagram the target sent to one client's upstream socket.
#[derive(Debug)]
struct Inbound {
    client: SocketAddr,
    received_at: Instant,
    data: Bytes,
}

/// One client's mapping. Dropping it stops its reader task and updates the gauge.
#[derive(Debug)]
struct Session {
    upstream: Arc<UdpSocket>,
    last_active: Instant,
    reader: AbortHandle,
    stats: Arc<RelayStats>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        self.stats.on_session_closed();
    }
}

/// The relay loop's state, owned by one task.
#[derive(Debug)]
struct UdpState {
    socket: UdpSocket,
    target: SocketAddr,
    idle_timeout: Duration,
    max_sessions: usize,
    sessions: HashMap<SocketAddr, Session>,
    up: DelayLine<(SocketAddr, Bytes)>,
    down: DelayLine<(SocketAddr, Bytes)>,
    inbound_tx: mpsc::Sender<Inbound>,
    stats: Arc<RelayStats>,
}

impl UdpState {
    fn new(relay: UdpRelay, inbound_tx: mpsc::Sender<Inbound>) -> Self {
        Self {
            socket: relay.socket,
            target: relay.target,
            idle_timeout: relay.idle_timeout,
            max_sessions: relay.max_sessions,
            sessions: HashMap::new(),
            up: DelayLine::new(relay.link.up, relay.seed),
            down: DelayLine::new(relay.link.down, relay.seed.rotate_left(32) ^ 1),
            inbound_tx,
            stats: relay.stats,
        }
    }

    /// A client datagram: find or open its mapping, then offer it to the up line.
    async fn on_client_datagram(
        &mut self,
        res: io::Result<(usize, SocketAddr)>,
        buf: &[u8],
    ) -> Result<(), NetsimError> {
        let (len, client) = match res {
            Ok(received) => received,
            Err(e) if is_transient(&e) => {
                debug!(error = %e, "udp relay: transient receive error");
                return Ok(());
            }
            Err(e) => return Err(NetsimError::io("receiving on the relay socket")(e)),
        };
        let at = now();
        self.stats.up.on_received();
        if !self.ensure_session(client, at).await {
            self.stats.up.on_dropped(DropReason::QueueFull);
            return Ok(());
        }
        let data = Bytes::copy_from_slice(&buf[..len]);
        match self.up.push_datagram(at, len, (client, data)) {
            Ok(_) => self.stats.up.on_queued(self.up.queued_bytes()),
            Err(reason) => self.drop_datagram(true, reason),
        }
        Ok(())
    }

    /// A target datagram (already timestamped by its reader): offer it to the down line.
    fn on_target_datagram(&mut self, inbound: Inbound) {
        self.stats.down.on_received();
        if let Some(session) = self.sessions.get_mut(&inbound.client) {
            session.last_active = session.last_active.max(inbound.received_at);
        }
        let len = inbound.data.len();
        let item = (inbound.client, inbound.data);
        match self.down.push_datagram(inbound.received_at, len, item) {
            Ok(_) => self.stats.down.on_queued(self.down.queued_bytes()),
            Err(reason) => self.drop_datagram(false, reason),
        }
    }

    fn drop_datagram(&self, up: bool, reason: DropReason) {
        let stats = if up { &self.stats.up } else { &self.stats.down };
        stats.on_dropped(reason);
        trace!(
            direction = if up { "up" } else { "down" },
            reason = reason.as_str(),
            "udp relay: dropped"
        );
    }

    /// Returns whether `client` has a mapping now, opening one if allowed.
    async fn ensure_session(&mut self, client: SocketAddr, at: Instant) -> bool {
        if let Some(session) = self.sessions.get_mut(&client) {
            session.last_active = at;
            return true;
        }
        if self.sessions.len() >= self.max_sessions {
            debug!(%client, "udp relay: session limit reached");
            return false;
        }
        match self.open_session(client, at).await {
            Ok(session) => {
                self.sessions.insert(client, session);
                true
            }
            Err(e) => {
                debug!(%client, error = %e, "udp relay: cannot open upstream socket");
                false
            }
        }
    }

    async fn open_session(&self, client: SocketAddr, at: Instant) -> io::Result<Session> {
        let any: SocketAddr = if self.target.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let upstream = UdpSocket::bind(any).await?;
        upstream.connect(self.target).await?;
        let upstream = Arc::new(upstream);
        let reader = tokio::spawn(read_upstream(
            Arc::clone(&upstream),
            client,
            self.inbound_tx.clone(),
        ));
        self.stats.on_session_opened();
        trace!(%client, "udp relay: session opened");
        Ok(Session {
            upstream,
            last_active: at,
            reader: reader.abort_handle(),
            stats: Arc::clone(&self.stats),
        })
    }

    /// Sends every due up datagram through its client's upstream socket. Datagrams whose
    /// mapping expired meanwhile are discarded.
    async fn flush_up(&mut self) {
        let at = now();
        while let Some((client, data)) = self.up.pop_due(at) {
            let Some(session) = self.sessions.get(&client) else {
                continue;
            };
            match session.upstream.send(&data).await {
                Ok(_) => self.stats.up.on_forwarded(data.len()),
                Err(e) => debug!(%client, error = %e, "udp relay: upstream send failed"),
            }
        }
    }

    /// Sends every due down datagram to its client from the listen socket.
    async fn flush_down(&mut self) {
        let at = now();
        while let Some((client, data)) = self.down.pop_due(at) {
            match self.socket.send_to(&data, client).await {
                Ok(_) => self.stats.down.on_forwarded(data.len()),
                Err(e) => debug!(%client, error = %e, "udp relay: client send failed"),
            }
        }
    }

    fn expire_idle(&mut self) {
        let at = now();
        let timeout = self.idle_timeout;
        self.sessions
            .retain(|_, s| at.saturating_duration_since(s.last_active) < timeout);
    }
}

/// Forwards what the target sends to one client's upstream socket into the relay loop.
async fn read_upstream(upstream: Arc<UdpSocket>, client: SocketAddr, tx: mpsc::Sender<Inbound>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(len) => {
                let data = Bytes::copy_from_slice(&buf[..len]);
                let inbound = Inbound {
                    client,
                    received_at: now(),
                    data,
                };
                if tx.send(inbound).await.is_err() {
                    return; // the relay loop is gone
                }
            }
            Err(e) if is_transient(&e) => trace!(%client, error = %e, "udp relay: upstream error"),
            Err(e) => {
                debug!(%client, error = %e, "udp relay: upstream socket failed");
                return;
            }
        }
    }
}

/// Errors a datagram socket reports for one earlier datagram (an ICMP unreachable on a
/// connected socket, for example); the socket itself is still usable.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
