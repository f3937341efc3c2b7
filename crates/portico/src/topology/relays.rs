//! The simulated links of a running topology: netsim relays, as tasks of the
//! runner. TCP for HTTPS (client → entry, origin → backend), UDP for QUIC (the
//! backbone, and HTTP/3 entries when the topology enables it).
//!
//! Every relay uses [`Timing::Precise`]: a cold request through a PoP crosses ten
//! relay hops, and tokio's 1 ms timer tick would add several milliseconds to what
//! the probe compares with the physical minimum.

use std::net::SocketAddr;

use portico_config::topology::LinkParams;
use portico_netsim::{Link, LinkSpec, RelayHandle, TcpRelay, Timing, UdpRelay};
use tokio::net::{TcpListener, UdpSocket};

use super::UpError;

/// The same characteristics in both directions, as topology links are.
pub fn link(params: &LinkParams) -> Link {
    Link::symmetric(LinkSpec {
        delay: params.delay,
        jitter: params.jitter,
        loss: params.loss,
        bandwidth_bps: params.bandwidth_bps,
        ..LinkSpec::default()
    })
}

/// Names of a link's ends, for errors.
pub struct Ends<'a> {
    pub from: &'a str,
    pub to: &'a str,
}

impl Ends<'_> {
    fn error(&self, source: portico_netsim::NetsimError) -> UpError {
        UpError::Relay {
            from: self.from.to_owned(),
            to: self.to.to_owned(),
            source,
        }
    }

    fn relay(&self, handle: RelayHandle) -> Relay {
        Relay {
            from: self.from.to_owned(),
            to: self.to.to_owned(),
            handle,
        }
    }
}

/// A running relay and the link it simulates.
pub struct Relay {
    from: String,
    to: String,
    handle: RelayHandle,
}

impl Relay {
    /// The address the link's near end connects to.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Resolves when the relay ends without being asked to (a socket failed,
    /// its task panicked): the link is gone, so the topology is broken.
    /// Cancel-safe.
    pub async fn ended(&mut self) -> UpError {
        let source = self.handle.ended().await;
        UpError::Relay {
            from: self.from.clone(),
            to: self.to.clone(),
            source,
        }
    }

    /// Stops the relay and waits for it.
    pub async fn shutdown(self) {
        if let Err(err) = self.handle.shutdown().await {
            tracing::warn!(from = %self.from, to = %self.to, %err, "link relay had failed");
        }
    }
}

/// A TCP relay on a free loopback port.
pub async fn tcp(
    target: SocketAddr,
    params: &LinkParams,
    ends: Ends<'_>,
) -> Result<Relay, UpError> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let relay = TcpRelay::bind(any, target, link(params))
        .await
        .map_err(|e| ends.error(e))?;
    Ok(ends.relay(relay.with_timing(Timing::Precise).spawn()))
}

/// A TCP relay on a listener bound earlier (entry points: bound before anything
/// starts, so a port in use is refused first).
pub fn tcp_on(
    listener: TcpListener,
    target: SocketAddr,
    params: &LinkParams,
    ends: Ends<'_>,
) -> Result<Relay, UpError> {
    let relay =
        TcpRelay::from_listener(listener, target, link(params)).map_err(|e| ends.error(e))?;
    Ok(ends.relay(relay.with_timing(Timing::Precise).spawn()))
}

/// A UDP relay listening on `listen` (port 0: a free one).
pub async fn udp(
    listen: SocketAddr,
    target: SocketAddr,
    params: &LinkParams,
    ends: Ends<'_>,
) -> Result<Relay, UpError> {
    let relay = UdpRelay::bind(listen, target, link(params))
        .await
        .map_err(|e| ends.error(e))?;
    Ok(ends.relay(relay.with_timing(Timing::Precise).spawn()))
}

/// A UDP relay on a socket bound earlier (HTTP/3 entries: the port number of
/// the entry's TCP relay).
pub fn udp_on(
    socket: UdpSocket,
    target: SocketAddr,
    params: &LinkParams,
    ends: Ends<'_>,
) -> Result<Relay, UpError> {
    let relay = UdpRelay::from_socket(socket, target, link(params)).map_err(|e| ends.error(e))?;
    Ok(ends.relay(relay.with_timing(Timing::Precise).spawn()))
}
