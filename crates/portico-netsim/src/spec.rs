//! What a simulated link looks like: [`LinkSpec`] per direction, [`Link`] for both.

use std::fmt;
use std::time::Duration;

use crate::NetsimError;

/// Upper bound for `delay` and `jitter`. Anything longer is a configuration mistake (the
/// longest terrestrial one-way paths are a few hundred milliseconds).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Default per-direction memory bound: 4 MiB, enough for the bandwidth-delay product of a
/// 100 ms one-way link at ~320 Mbit/s.
pub const DEFAULT_QUEUE_LIMIT_BYTES: usize = 4 * 1024 * 1024;

/// The characteristics of one direction of a simulated link.
///
/// Build with struct update syntax over [`LinkSpec::default`] (an ideal link: no delay, no
/// loss, unlimited bandwidth) and check with [`LinkSpec::validate`]; relays validate on
/// construction, so an invalid spec never reaches a socket.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Uniform jitter: each packet's delay is drawn from `delay ± jitter` (clamped at zero).
    /// Jitter never reorders TCP bytes, and reorders UDP datagrams only if `reorder` is set;
    /// otherwise a packet is held until the one before it has been released.
    pub jitter: Duration,
    /// Probability that a datagram is lost, `0.0..=1.0`. **UDP only**: TCP is reliable and a
    /// relay cannot model retransmission on a kernel loopback socket, so TCP ignores it.
    pub loss: f64,
    /// Link rate. A packet of `n` bytes occupies the link for `n * 8 / bandwidth_bps`
    /// seconds; packets queue behind each other. `None` is an unlimited link.
    pub bandwidth_bps: Option<u64>,
    /// Bytes this direction may hold (waiting for the link plus propagating; for TCP, per
    /// connection). Over the limit,
    /// UDP datagrams are dropped and counted; TCP stops reading from the sender
    /// (back-pressure). Should be at least the bandwidth-delay product, or it caps
    /// throughput at `queue_limit_bytes / delay`.
    pub queue_limit_bytes: usize,
    /// Whether jitter may reorder UDP datagrams. Ignored for TCP.
    pub reorder: bool,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            bandwidth_bps: None,
            queue_limit_bytes: DEFAULT_QUEUE_LIMIT_BYTES,
            reorder: false,
        }
    }
}

impl LinkSpec {
    /// An otherwise ideal link with the given one-way delay.
    pub fn with_delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Rejects values a link cannot have: loss that is NaN or outside `0.0..=1.0`, a zero
    /// bandwidth or queue limit, and delays or jitter above [`MAX_DELAY`].
    pub fn validate(&self) -> Result<(), NetsimError> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(NetsimError::InvalidLoss(self.loss));
        }
        if self.bandwidth_bps == Some(0) {
            return Err(NetsimError::ZeroBandwidth);
        }
        if self.queue_limit_bytes == 0 {
            return Err(NetsimError::ZeroQueueLimit);
        }
        for (field, value) in [("delay", self.delay), ("jitter", self.jitter)] {
            if value > MAX_DELAY {
                return Err(NetsimError::DurationTooLarge {
                    field,
                    value,
                    max: MAX_DELAY,
                });
            }
        }
        Ok(())
    }

    /// Time a packet of `len` bytes occupies the link (zero on an unlimited link).
    pub fn serialization_time(&self, len: usize) -> Duration {
        match self.bandwidth_bps {
            Some(bps) if bps > 0 => {
                let nanos = (len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(bps));
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => Duration::ZERO,
        }
    }
}

/// Converts a millisecond count from a configuration file into a `Duration`, rejecting
/// negative, NaN and infinite values with an error naming `field`.
pub fn duration_from_millis(field: &'static str, ms: f64) -> Result<Duration, NetsimError> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(NetsimError::InvalidMillis { field, value: ms });
    }
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| NetsimError::InvalidMillis { field, value: ms })
}

/// A bidirectional link. `up` is client → target, `down` is target → client.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Link {
    /// Client → target.
    pub up: LinkSpec,
    /// Target → client.
    pub down: LinkSpec,
}

impl Link {
    /// The same characteristics in both directions.
    pub fn symmetric(spec: LinkSpec) -> Self {
        Self {
            up: spec.clone(),
            down: spec,
        }
    }

    /// Validates both directions; the error names the failing one.
    pub fn validate(&self) -> Result<(), NetsimError> {
        for (direction, spec) in [(Direction::Up, &self.up), (Direction::Down, &self.down)] {
            spec.validate().map_err(|e| NetsimError::InvalidDirection {
                direction,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// The round trip a TCP handshake costs on this link (`up.delay + down.delay`).
    pub fn handshake_rtt(&self) -> Duration {
        self.up.delay + self.down.delay
    }
}

/// One direction of a link, for errors, statistics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → target.
    Up,
    /// Target → client.
    Down,
}

impl Direction {
    /// The word used in logs and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(spec: LinkSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn default_is_valid() {
        LinkSpec::default().validate().unwrap();
        Link::default().validate().unwrap();
    }

    #[test]
    fn loss_out_of_range_is_rejected_with_exact_message() {
        let bad = |loss| {
            err(LinkSpec {
                loss,
                ..LinkSpec::default()
            })
        };
        assert_eq!(
            bad(1.5),
            "loss must be a probability within 0.0..=1.0, got 1.5"
        );
        assert_eq!(
            bad(-0.1),
            "loss must be a probability within 0.0..=1.0, got -0.1"
        );
        assert_eq!(
            bad(f64::NAN),
            "loss must be a probability within 0.0..=1.0, got NaN"
        );
        for ok in [0.0, 1.0, 0.3] {
            LinkSpec {
                loss: ok,
                ..LinkSpec::default()
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn zero_bandwidth_and_queue_are_rejected() {
        let zero_bw = LinkSpec {
            bandwidth_bps: Some(0),
            ..LinkSpec::default()
        };
        assert_eq!(
            err(zero_bw),
            "bandwidth_bps must be greater than zero (use None for an unlimited link)"
        );
        let zero_q = LinkSpec {
            queue_limit_bytes: 0,
            ..LinkSpec::default()
        };
        assert_eq!(err(zero_q), "queue_limit_bytes must be greater than zero");
    }

    #[test]
    fn huge_durations_are_rejected() {
        let spec = LinkSpec {
            jitter: Duration::from_secs(3601),
            ..LinkSpec::default()
        };
        assert_eq!(err(spec), "jitter must be at most 3600s, got 3601s");
    }

    #[test]
    fn link_error_names_the_direction() {
        let link = Link {
            up: LinkSpec::default(),
            down: LinkSpec {
                loss: 2.0,
                ..LinkSpec::default()
            },
        };
        assert_eq!(
            link.validate().unwrap_err().to_string(),
            "down direction: loss must be a probability within 0.0..=1.0, got 2"
        );
    }

    #[test]
    fn millis_parsing_rejects_negative_and_nan() {
        assert_eq!(
            duration_from_millis("delay", 12.5).unwrap(),
            Duration::from_micros(12_500)
        );
        assert_eq!(
            duration_from_millis("delay", -5.0).unwrap_err().to_string(),
            "delay must be a finite, non-negative number of milliseconds, got -5"
        );
        assert!(duration_from_millis("jitter", f64::NAN).is_err());
        assert!(duration_from_millis("jitter", f64::INFINITY).is_err());
    }

    #[test]
    fn serialization_time_is_bits_over_rate() {
        let spec = LinkSpec {
            bandwidth_bps: Some(8_000_000),
            ..LinkSpec::default()
        };
        assert_eq!(spec.serialization_time(1250), Duration::from_micros(1250));
        assert_eq!(
            LinkSpec::default().serialization_time(1_000_000),
            Duration::ZERO
        );
    }
}
