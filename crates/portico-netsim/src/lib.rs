//! User-space link simulation, so a whole multi-region Portico deployment (PoPs, origins,
//! backends, clients) can run on one machine over loopback with realistic latency, without
//! kernel `netem`.
//!
//! # Model
//!
//! A topology starts one relay per simulated link. Clients talk to the relay's listen
//! address; the relay talks to the target, and applies a [`LinkSpec`] per direction
//! ([`Link::up`] is client → target, [`Link::down`] is target → client). Each direction is a
//! [`DelayLine`], a sans-IO timed queue. A packet of `n` bytes that the relay reads at `t`:
//!
//! 1. (UDP only) is lost with probability `loss`, or dropped if the direction already holds
//!    `queue_limit_bytes`;
//! 2. occupies the link for `n * 8 / bandwidth_bps` from `max(t, end of the previous
//!    packet)` (serialization; packets queue behind each other);
//! 3. is released `delay ± jitter` (uniform, clamped at zero) after its serialization ends,
//!    but, unless reordering is allowed, never before the packet ahead of it: jitter never
//!    reorders TCP bytes, and reorders UDP datagrams only with [`LinkSpec::reorder`].
//!
//! One task per relay (UDP) or per connection (TCP) sleeps until the head of each line is
//! due and writes everything due: no task per packet, no busy waiting.
//!
//! **UDP** ([`UdpRelay`]): every client address gets its own upstream socket connected to
//! the target, so the target sees one peer per client, as QUIC needs. Mappings expire after
//! an idle timeout. All clients share one line per direction.
//!
//! **TCP** ([`TcpRelay`]): bytes are timestamped when read and written when released (in
//! 1460-byte segments on a bandwidth-limited link, whole reads otherwise); a half-close
//! travels as a marker behind the data, so it arrives after the data and after the delay.
//! When a direction holds `queue_limit_bytes` the relay stops reading that side, and the
//! kernel's flow control pushes back on the sender. `loss` is ignored: TCP is reliable, and
//! retransmission and congestion control cannot be simulated on top of kernel sockets.
//! Connections share the link's bandwidth; each has its own queue and ordering. A failed
//! read (usually a reset) also travels as a marker behind the data; when it arrives the
//! relay closes the connection, resetting the client (the target sees a plain close).
//!
//! ## TCP handshake cost
//!
//! On loopback the kernel completes the client's handshake with the relay at once, so the
//! relay adds it back. With `accepted` the time the relay accepted the connection and
//! `rtt = up.delay + down.delay`:
//!
//! * the client's bytes count as sent no earlier than `accepted + rtt` (when a real
//!   client's `connect` would have returned), so they reach the target no earlier than
//!   `accepted + rtt + up.delay`. Bytes read earlier wait off the link until then, so a
//!   new connection does not hold a bandwidth-limited link, shared by every connection,
//!   for the others in the meantime;
//! * the relay connects to the target at `accepted + rtt + up.delay`, when the client's
//!   final ACK would arrive, so the target's `accept` (and any server-first greeting) is
//!   timed as on a real link.
//!
//! A client that connects and sends a request at once therefore sees its first response
//! byte after `2 × rtt` plus the server's own time: one round trip for the handshake, one
//! for the request, as on a real link. A server-first greeting also arrives after
//! `2 × rtt`. If the target refuses the connection, the client, which already holds an
//! established connection to the relay, sees it reset about 1.5 round trips after
//! connecting, instead of a refused `connect`.
//!
//! # Accuracy and limits
//!
//! * Releases are never early. With [`Timing::Tokio`] (the default) they are late by up
//!   to ~1 ms of tokio timer granularity, so sub-millisecond delays are not meaningful;
//!   [`Timing::Precise`] (`with_timing`) finishes each wait on a high-resolution timer
//!   thread and is late by tens of microseconds. Both add loopback and scheduling
//!   latency (tens of microseconds idle, more on a loaded machine).
//! * `queue_limit_bytes` counts everything a direction holds, queued and propagating, so
//!   it should be at least the bandwidth-delay product; it also bounds the relay's memory.
//!   The kernel socket buffers on both sides of a relay add buffering the model does not
//!   count, so TCP back-pressure reaches a sender later than on a real bottleneck.
//! * Not modelled: TCP loss, retransmission and congestion control, MTU and fragmentation,
//!   ICMP, and jitter or bandwidth on the handshake itself.

#![forbid(unsafe_code)]

mod delay_line;
mod error;
mod handle;
mod precise;
mod spec;
mod stats;
mod tcp;
mod udp;

pub use delay_line::{DelayLine, DropReason, LinkClock};
pub use error::NetsimError;
pub use handle::RelayHandle;
pub use spec::{
    DEFAULT_QUEUE_LIMIT_BYTES, Direction, Link, LinkSpec, MAX_DELAY, duration_from_millis,
};
pub use stats::{DirectionSnapshot, DirectionStats, RelayStats, StatsSnapshot};
pub use tcp::TcpRelay;
pub use udp::{DEFAULT_MAX_SESSIONS, DEFAULT_UDP_IDLE_TIMEOUT, UdpRelay};

/// How a relay waits for a packet's release time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    /// tokio's timer: releases are late by up to ~1 ms (its tick). Follows tokio's
    /// clock, so tests can pause and advance it.
    #[default]
    Tokio,
    /// tokio's timer until shortly before the release, then a dedicated thread with
    /// the OS's high-resolution sleep: late by tens of microseconds. Real time only
    /// (not for tests on a paused clock). For measurements on short links.
    Precise,
}

/// Time as the relays see it: tokio's clock (so tests can pause it) as `std` instants (so
/// [`DelayLine`] stays independent of tokio).
mod clock {
    use std::time::Instant;

    use crate::{Timing, precise};

    pub(crate) fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Sleeps until `at`, or forever if there is nothing to wait for. A deadline that
    /// has already passed returns at once: tokio's timer rounds deadlines up to its next
    /// millisecond tick, which would add up to 1 ms to every packet of an ideal link.
    pub(crate) async fn wait_until(timing: Timing, at: Option<Instant>) {
        let Some(at) = at else {
            return std::future::pending().await;
        };
        let now = now();
        if at <= now {
            return;
        }
        match timing {
            Timing::Tokio => tokio::time::sleep_until(at.into()).await,
            Timing::Precise => {
                if at - now > precise::COARSE_MARGIN {
                    tokio::time::sleep_until((at - precise::COARSE_MARGIN).into()).await;
                }
                precise::sleep_until(at).await;
            }
        }
    }
}
