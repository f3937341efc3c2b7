//! Relay counters: lock-free, readable at any time through a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::DropReason;

/// Counters for one direction. Updated with relaxed atomics: each counter is exact, but a
/// snapshot taken while traffic flows may mix slightly different moments.
#[derive(Debug, Default)]
pub struct DirectionStats {
    received_packets: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    peak_queued_bytes: AtomicU64,
}

impl DirectionStats {
    pub(crate) fn on_received(&self) {
        self.received_packets.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_forwarded(&self, len: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(crate) fn on_dropped(&self, reason: DropReason) {
        let counter = match reason {
            DropReason::Loss => &self.dropped_loss,
            DropReason::QueueFull => &self.dropped_queue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_queued(&self, queued_bytes: usize) {
        self.peak_queued_bytes
            .fetch_max(queued_bytes as u64, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> DirectionSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionSnapshot {
            received_packets: get(&self.received_packets),
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            peak_queued_bytes: get(&self.peak_queued_bytes),
        }
    }
}

/// Counters of a whole relay, shared between the relay task and its handle.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Client → target.
    pub up: DirectionStats,
    /// Target → client.
    pub down: DirectionStats,
    sessions_opened: AtomicU64,
    sessions_active: AtomicU64,
}

impl RelayStats {
    pub(crate) fn on_session_opened(&self) {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.sessions_active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn on_session_closed(&self) {
        self.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            up: self.up.snapshot(),
            down: self.down.snapshot(),
            sessions_opened: self.sessions_opened.load(Ordering::Relaxed),
            sessions_active: self.sessions_active.load(Ordering::Relaxed),
        }
    }
}

/// Plain copy of [`DirectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionSnapshot {
    /// Datagrams (UDP) or reads (TCP) taken from the sender, before loss and queue checks.
    pub received_packets: u64,
    /// Datagrams (UDP) or segments (TCP) delivered to the receiver.
    pub packets: u64,
    /// Payload bytes delivered to the receiver.
    pub bytes: u64,
    /// Datagrams dropped by simulated loss (always 0 for TCP).
    pub dropped_loss: u64,
    /// Datagrams dropped because the queue was full (always 0 for TCP, which back-pressures).
    pub dropped_queue: u64,
    /// The most bytes one delay line of this direction has held at once (for TCP, the
    /// maximum over connections, each of which has its own line).
    pub peak_queued_bytes: u64,
}

/// Plain copy of [`RelayStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Client → target.
    pub up: DirectionSnapshot,
    /// Target → client.
    pub down: DirectionSnapshot,
    /// UDP client mappings or TCP connections opened since start.
    pub sessions_opened: u64,
    /// UDP client mappings or TCP connections currently open.
    pub sessions_active: u64,
}
