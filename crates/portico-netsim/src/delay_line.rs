//! The sans-IO heart of the simulation: one direction of a link as a timed queue.
//!
//! A [`DelayLine`] takes the arrival time of each packet as an argument and answers when it
//! may leave; the relays only read sockets, call [`DelayLine::push_datagram`] or
//! [`DelayLine::push_stream`], sleep until [`DelayLine::next_release`] and write what
//! [`DelayLine::pop_due`] returns. Everything about timing is therefore testable with plain
//! `Instant`s and a seeded RNG.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::LinkSpec;

/// Why a datagram did not enter the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss drawn from [`LinkSpec::loss`].
    Loss,
    /// The line already holds [`LinkSpec::queue_limit_bytes`].
    QueueFull,
}

impl DropReason {
    /// The word used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::QueueFull => "queue_full",
        }
    }
}

/// One direction of a link: serialization (bandwidth), propagation (delay ± jitter),
/// random loss and a bounded queue.
///
/// Timeline of a packet of `n` bytes arriving at `now`: it starts occupying the link at
/// `max(now, end of the previous packet's serialization)`, finishes `n * 8 / bandwidth`
/// later, and is released `delay ± jitter` after that. In ordered mode (every stream, and
/// datagrams unless `reorder`), a release is never earlier than the previous one, so jitter
/// delays packets but never reorders them.
#[derive(Debug)]
pub struct DelayLine<T> {
    spec: LinkSpec,
    heap: BinaryHeap<Entry<T>>,
    seq: u64,
    queued_bytes: usize,
    link: LinkClock,
    last_release: Option<Instant>,
    rng: StdRng,
}

/// When a link finishes serializing what it has been given. Delay lines that share one
/// (all TCP connections of a relay) compete for one bandwidth, first come first served;
/// each keeps its own propagation, ordering and queue.
///
/// The clock books one busy period after another, in the order the bookings are made: a
/// packet pushed with a `now` in the future holds the link until then for every packet
/// pushed after it, even one that could go at once. Sharers therefore push a packet only
/// once it can be sent (the TCP relay holds what a connection reads before its simulated
/// handshake ends).
#[derive(Debug, Clone, Default)]
pub struct LinkClock(Arc<Mutex<Option<Instant>>>);

impl LinkClock {
    /// Reserves the link for `tx` starting no earlier than `now`; returns when the
    /// transmission ends.
    fn reserve(&self, now: Instant, tx: Duration) -> Instant {
        let mut free_at = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let start = free_at.map_or(now, |free| free.max(now));
        let end = start + tx;
        *free_at = Some(end);
        end
    }
}

impl<T> DelayLine<T> {
    /// A line with the given characteristics and a seed for jitter and loss, so runs can be
    /// reproduced. The spec is assumed valid (see [`LinkSpec::validate`]).
    pub fn new(spec: LinkSpec, seed: u64) -> Self {
        Self::sharing(spec, seed, LinkClock::default())
    }

    /// Like [`DelayLine::new`], but serializing on a link shared with other lines.
    pub fn sharing(spec: LinkSpec, seed: u64, link: LinkClock) -> Self {
        Self {
            spec,
            heap: BinaryHeap::new(),
            seq: 0,
            queued_bytes: 0,
            link,
            last_release: None,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Offers a datagram of `len` bytes that arrived at `now`. It may be lost (with
    /// probability `loss`) or dropped because the line is full; otherwise returns when it
    /// will be released. Jitter reorders only if the spec allows it.
    pub fn push_datagram(
        &mut self,
        now: Instant,
        len: usize,
        item: T,
    ) -> Result<Instant, DropReason> {
        // `random::<f64>()` is in [0, 1): loss 0.0 never drops and 1.0 always does.
        if self.spec.loss > 0.0 && self.rng.random::<f64>() < self.spec.loss {
            return Err(DropReason::Loss);
        }
        if self.queued_bytes.saturating_add(len) > self.spec.queue_limit_bytes {
            return Err(DropReason::QueueFull);
        }
        let ordered = !self.spec.reorder;
        Ok(self.schedule(now, len, item, ordered))
    }

    /// Enqueues `len` stream bytes (or a zero-length end-of-stream marker) that were read at
    /// `now`. Never drops and always keeps order. The caller enforces the bound by reading
    /// at most [`DelayLine::available`] bytes before pushing.
    pub fn push_stream(&mut self, now: Instant, len: usize, item: T) -> Instant {
        self.schedule(now, len, item, true)
    }

    /// The earliest release time among held packets.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.release_at)
    }

    /// Removes and returns the next packet whose release time is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.next_release()? > now {
            return None;
        }
        let entry = self.heap.pop()?;
        self.queued_bytes -= entry.len;
        Some(entry.item)
    }

    /// Bytes currently held (waiting for the link or propagating).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes that may still be pushed before the queue limit is reached.
    pub fn available(&self) -> usize {
        self.spec
            .queue_limit_bytes
            .saturating_sub(self.queued_bytes)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn schedule(&mut self, now: Instant, len: usize, item: T, ordered: bool) -> Instant {
        let tx = self.spec.serialization_time(len);
        let tx_end = if tx.is_zero() {
            now
        } else {
            self.link.reserve(now, tx)
        };
        let mut release_at = tx_end + self.propagation_delay();
        if ordered {
            release_at = self
                .last_release
                .map_or(release_at, |last| last.max(release_at));
        }
        self.last_release = Some(self.last_release.map_or(release_at, |l| l.max(release_at)));
        self.queued_bytes += len;
        self.seq += 1;
        self.heap.push(Entry {
            release_at,
            seq: self.seq,
            len,
            item,
        });
        release_at
    }

    /// `delay ± jitter`, uniform, clamped at zero.
    fn propagation_delay(&mut self) -> Duration {
        let jitter = self.spec.jitter.as_nanos() as i128;
        if jitter == 0 {
            return self.spec.delay;
        }
        let offset = self.rng.random_range(-jitter..=jitter);
        let nanos = (self.spec.delay.as_nanos() as i128 + offset).max(0);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A held packet. Ordered by release time, then by arrival, reversed so that
/// `BinaryHeap` (a max-heap) pops the earliest first.
#[derive(Debug)]
struct Entry<T> {
    release_at: Instant,
    seq: u64,
    len: usize,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release_at, other.seq).cmp(&(self.release_at, self.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn line(spec: LinkSpec) -> DelayLine<u32> {
        DelayLine::new(spec, 7)
    }

    /// Pops everything, advancing a virtual clock to each release, and returns the items.
    fn drain(line: &mut DelayLine<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(at) = line.next_release() {
            assert!(
                line.pop_due(at - Duration::from_nanos(1)).is_none(),
                "released early"
            );
            out.push(line.pop_due(at).unwrap());
        }
        out
    }

    #[test]
    fn ideal_link_releases_immediately() {
        let t0 = Instant::now();
        let mut l = line(LinkSpec::default());
        assert_eq!(l.push_datagram(t0, 100, 1), Ok(t0));
        assert_eq!(l.pop_due(t0), Some(1));
        assert!(l.is_empty());
    }

    #[test]
    fn fixed_delay_is_exact() {
        let t0 = Instant::now();
        let mut l = line(LinkSpec::with_delay(50 * MS));
        assert_eq!(l.push_stream(t0, 10, 1), t0 + 50 * MS);
        assert_eq!(l.push_stream(t0 + 3 * MS, 10, 2), t0 + 53 * MS);
        assert_eq!(l.queued_bytes(), 20);
        assert_eq!(l.pop_due(t0 + 49 * MS), None);
        assert_eq!(l.pop_due(t0 + 50 * MS), Some(1));
        assert_eq!(l.queued_bytes(), 10);
        assert_eq!(l.next_release(), Some(t0 + 53 * MS));
    }

    #[test]
    fn jitter_stays_within_bounds_and_stream_keeps_order() {
        let t0 = Instant::now();
        let spec = LinkSpec {
            delay: 20 * MS,
            jitter: 10 * MS,
            ..LinkSpec::default()
        };
        let mut l = line(spec);
        let mut last = t0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            let at = l.push_stream(now, 1, i);
            assert!(at >= now + 10 * MS, "jitter below delay - jitter");
            assert!(at >= last, "stream reordered");
            last = at;
        }
        assert_eq!(drain(&mut l), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn datagrams_reorder_only_when_allowed() {
        let t0 = Instant::now();
        for reorder in [false, true] {
            let spec = LinkSpec {
                delay: 20 * MS,
                jitter: 10 * MS,
                reorder,
                ..Default::default()
            };
            let mut l = line(spec);
            for i in 0..200u32 {
                let now = t0 + Duration::from_micros(u64::from(i) * 100);
                let at = l.push_datagram(now, 1, i).unwrap();
                assert!(at >= now + 10 * MS && at <= now + 30 * MS);
            }
            let out = drain(&mut l);
            let in_order = out.windows(2).all(|w| w[0] < w[1]);
            assert_eq!(in_order, !reorder, "reorder={reorder}");
        }
    }

    #[test]
    fn jitter_larger_than_delay_clamps_at_zero() {
        let t0 = Instant::now();
        let spec = LinkSpec {
            delay: MS,
            jitter: 50 * MS,
            reorder: true,
            ..Default::default()
        };
        let mut l = line(spec);
        // Delays are drawn from 1 ± 50 ms: about half fall below zero and
        // leave at once, none later than 51 ms.
        let at: Vec<Instant> = (0..100)
            .map(|i| l.push_datagram(t0, 1, i).unwrap())
            .collect();
        assert!(at.iter().all(|a| *a >= t0 && *a <= t0 + 51 * MS), "{at:?}");
        assert!(at.contains(&t0), "no delay was clamped to zero");
    }

    #[test]
    fn bandwidth_serializes_back_to_back_packets() {
        let t0 = Instant::now();
        // 1250 bytes at 8 Mbit/s = 1.25 ms on the wire.
        let spec = LinkSpec {
            delay: 10 * MS,
            bandwidth_bps: Some(8_000_000),
            ..LinkSpec::default()
        };
        let mut l = line(spec);
        for i in 1..=10u32 {
            let at = l.push_datagram(t0, 1250, i).unwrap();
            assert_eq!(at, t0 + 10 * MS + Duration::from_micros(1250) * i);
        }
        // After the link drains, a new packet pays only its own serialization.
        let later = t0 + Duration::from_secs(1);
        let at = l.push_datagram(later, 1250, 11).unwrap();
        assert_eq!(at, later + 10 * MS + Duration::from_micros(1250));
    }

    #[test]
    fn lines_sharing_a_link_share_its_bandwidth() {
        let t0 = Instant::now();
        let spec = LinkSpec {
            bandwidth_bps: Some(8_000_000),
            ..LinkSpec::default()
        };
        let clock = LinkClock::default();
        let mut a = DelayLine::sharing(spec.clone(), 1, clock.clone());
        let mut b = DelayLine::sharing(spec, 2, clock);
        assert_eq!(a.push_stream(t0, 1250, 1), t0 + Duration::from_micros(1250));
        assert_eq!(b.push_stream(t0, 1250, 2), t0 + Duration::from_micros(2500));
    }

    #[test]
    fn queue_limit_drops_datagrams_until_space_frees() {
        let t0 = Instant::now();
        let spec = LinkSpec {
            delay: 5 * MS,
            queue_limit_bytes: 1000,
            ..LinkSpec::default()
        };
        let mut l = line(spec);
        assert!(l.push_datagram(t0, 600, 1).is_ok());
        assert_eq!(l.available(), 400);
        assert_eq!(l.push_datagram(t0, 401, 2), Err(DropReason::QueueFull));
        assert!(l.push_datagram(t0, 400, 3).is_ok());
        assert_eq!(l.push_datagram(t0, 1, 4), Err(DropReason::QueueFull));
        assert_eq!(l.pop_due(t0 + 5 * MS), Some(1));
        assert!(l.push_datagram(t0 + 5 * MS, 600, 5).is_ok());
    }

    #[test]
    fn loss_zero_and_one_are_exact() {
        let t0 = Instant::now();
        let mut never = line(LinkSpec::default());
        let mut always = line(LinkSpec {
            loss: 1.0,
            ..LinkSpec::default()
        });
        for i in 0..10_000 {
            assert!(never.push_datagram(t0, 1, i).is_ok());
            assert_eq!(always.push_datagram(t0, 1, i), Err(DropReason::Loss));
        }
        assert_eq!(always.queued_bytes(), 0);
    }

    #[test]
    fn loss_rate_is_statistically_right_and_stream_ignores_it() {
        let t0 = Instant::now();
        let spec = LinkSpec {
            loss: 0.3,
            ..LinkSpec::default()
        };
        let mut l = line(spec.clone());
        let lost = (0..10_000)
            .filter(|&i| l.push_datagram(t0, 1, i) == Err(DropReason::Loss))
            .count();
        assert!((2700..3300).contains(&lost), "lost {lost} of 10000");
        let mut s = line(spec);
        for i in 0..1000 {
            s.push_stream(t0, 1, i);
        }
        assert_eq!(s.queued_bytes(), 1000);
    }
}
