//! The crate's single error type.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::spec::Direction;

/// Everything that can go wrong in `portico-netsim`: an invalid link description, or an
/// I/O failure that stops a relay. Per-packet and per-connection failures never surface
/// here; they are counted in the relay statistics and logged at `debug`.
#[derive(Debug, thiserror::Error)]
pub enum NetsimError {
    /// The loss probability is NaN or outside `0.0..=1.0`.
    #[error("loss must be a probability within 0.0..=1.0, got {0}")]
    InvalidLoss(f64),
    /// `bandwidth_bps` is `Some(0)`, which would never deliver anything.
    #[error("bandwidth_bps must be greater than zero (use None for an unlimited link)")]
    ZeroBandwidth,
    /// `queue_limit_bytes` is zero, which would drop (UDP) or stall (TCP) everything.
    #[error("queue_limit_bytes must be greater than zero")]
    ZeroQueueLimit,
    /// A delay or jitter above [`crate::MAX_DELAY`]; such values are configuration mistakes
    /// and would overflow instant arithmetic if taken literally.
    #[error("{field} must be at most {max:?}, got {value:?}")]
    DurationTooLarge {
        /// Which field (`delay` or `jitter`).
        field: &'static str,
        /// The offending value.
        value: Duration,
        /// The allowed maximum.
        max: Duration,
    },
    /// A duration given in milliseconds was negative, NaN or infinite.
    #[error("{field} must be a finite, non-negative number of milliseconds, got {value}")]
    InvalidMillis {
        /// Which field the number was meant for.
        field: &'static str,
        /// The offending value.
        value: f64,
    },
    /// One direction of a [`crate::Link`] is invalid.
    #[error("{direction} direction: {source}")]
    InvalidDirection {
        /// The direction whose spec failed validation.
        direction: Direction,
        /// What is wrong with it.
        #[source]
        source: Box<NetsimError>,
    },
    /// Binding the relay's listen address failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Any other socket operation that a relay cannot continue without.
    #[error("{context}: {source}")]
    Io {
        /// What the relay was doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The relay task panicked or was cancelled before it could report.
    #[error("relay task ended abnormally: {0}")]
    Task(String),
}

impl NetsimError {
    /// Wraps an I/O error with what the relay was doing, for `map_err`.
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}
