//! Link tuning shared by both ends, and the QUIC transport it becomes.

use std::sync::Arc;
use std::time::Duration;

use portico_proto::{Codec, MAX_FRAME_LIMIT};
use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Who this node is on the backbone (sent in `Hello`/`HelloAck`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node id; a PoP's certificate must name it (checked by the origin).
    pub node_id: String,
    /// The origin's region; a PoP's own location label or empty.
    pub region: String,
}

/// Limits and timers of a backbone link.
///
/// Windows bound memory: a stream never buffers more than `stream_window`
/// unread bytes and a connection never more than `connection_window`, so a
/// peer that stops reading stalls its own streams instead of growing ours.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Concurrent request streams a PoP may open on one link (the origin
    /// enforces it; QUIC makes the PoP wait for credit beyond it).
    pub max_concurrent_streams: u32,
    /// Per-stream receive window in bytes.
    pub stream_window: u32,
    /// Per-connection receive window in bytes (all streams together).
    pub connection_window: u32,
    /// Bytes of unacknowledged data a connection may have in flight.
    pub send_window: u64,
    /// QUIC keep-alive: keeps NAT bindings and liveness while idle.
    pub keep_alive: Duration,
    /// A link with no packets from the peer for this long is dead.
    pub idle_timeout: Duration,
    /// How long a PoP waits for the QUIC and backbone handshakes (an
    /// origin, for each of the two).
    pub handshake_timeout: Duration,
    /// Links an origin handshakes at once, from a QUIC Initial whose
    /// address is proven to the peer's `Hello` accepted; one more is
    /// refused (QUIC `CONNECTION_REFUSED`, the PoP dials again after its
    /// back-off). Bounds what peers that never finish cost: each holds a
    /// connection, TLS state and a task for up to twice
    /// `handshake_timeout`.
    pub max_handshakes: u32,
    /// How long a request stream may take to deliver its head.
    pub head_timeout: Duration,
    /// Largest request head an origin reads (a larger one resets its
    /// stream): what its own header limit could accept, so a PoP cannot
    /// have it buffer a megabyte per stream for heads it would refuse.
    pub max_head_bytes: u32,
    /// First reconnect delay; doubles up to `backoff_max` (with jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// On shutdown, how long in-flight requests may finish before the link closes.
    pub drain_timeout: Duration,
    /// Offer configuration deltas (capability `CONFIG_DELTA`): an origin
    /// sends one after a reload to each PoP that offered it too, instead of
    /// a full snapshot. Off on either end: snapshots only.
    pub config_deltas: bool,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            max_concurrent_streams: 1000,
            stream_window: 2 << 20,
            connection_window: 32 << 20,
            send_window: 16 << 20,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 64,
            head_timeout: Duration::from_secs(30),
            max_head_bytes: portico_proto::DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            config_deltas: true,
        }
    }
}

impl LinkSettings {
    /// The QUIC transport of a link. `accepts_streams`: the origin side,
    /// which accepts request streams; a PoP accepts none.
    pub(crate) fn transport(&self, accepts_streams: bool) -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        // One more than the request limit: the control stream is a stream too.
        let streams = if accepts_streams {
            self.max_concurrent_streams.saturating_add(1)
        } else {
            0
        };
        t.max_concurrent_bidi_streams(VarInt::from_u32(streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            // The backbone sends no DATAGRAM frames: none are buffered.
            .datagram_receive_buffer_size(None)
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(self.send_window)
            .keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok());
        Arc::new(t)
    }

    /// Codec of request streams: default 1 MiB frames.
    pub(crate) fn request_codec(&self) -> Codec {
        Codec::new()
    }

    /// Codec of a request stream's head at the origin: frames of at most
    /// `max_head_bytes` (within the codec's bounds).
    pub(crate) fn head_codec(&self, version: u16) -> Codec {
        let max = self.max_head_bytes.clamp(
            portico_proto::MIN_MAX_FRAME,
            portico_proto::DEFAULT_MAX_FRAME,
        );
        Codec::with_max_frame(max)
            .unwrap_or_default()
            .with_version(version)
    }

    /// Codec of the control stream: large frames, because a configuration
    /// snapshot travels in one frame. Both ends use the same value.
    pub(crate) fn control_codec(&self) -> Codec {
        Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap_or_default()
    }
}

/// Completes once a stop flag is set (or its sender is gone). Holds no
/// watch guard across awaits, so the caller's future stays `Send`.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Exponential back-off with jitter for reconnects.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The next delay: uniformly in `[current/2, current]`, then `current`
    /// doubles (capped). Jitter keeps many PoPs from reconnecting in lockstep
    /// after an origin restart. `unit` is a random number in `[0, 1)`.
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.div_f64(2.0)
            .saturating_add(base.div_f64(2.0).mul_f64(unit.clamp(0.0, 1.0)))
    }

    /// After a link that came up: the next failure starts small again.
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay(0.999)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(*delays.last().unwrap() > Duration::from_millis(4900));
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
    }

    #[test]
    fn transport_limits_streams_per_role() {
        let s = LinkSettings::default();
        // The origin accepts the request streams plus the control stream; a
        // PoP accepts none. (quinn shows its limits only in `Debug`.)
        let limits = |origin| format!("{:?}", s.transport(origin));
        let streams =
            |n| format!("max_concurrent_bidi_streams: {n}, max_concurrent_uni_streams: 0,");
        assert!(limits(true).contains(&streams(1001)), "{}", limits(true));
        assert!(limits(false).contains(&streams(0)), "{}", limits(false));
        assert_eq!(s.control_codec().max_frame(), MAX_FRAME_LIMIT);
        assert!(s.request_codec().max_frame() < s.control_codec().max_frame());
    }
}
