//! Portico's authoritative usage-plan quotas.
//!
//! * [`period`]: UTC calendar periods (DAY, WEEK, MONTH) with API Gateway's
//!   offsets, computed from the wall clock so restarts and clock jumps land in
//!   the right period.
//! * [`book`]: the origin's persisted counters (redb) and the leases PoPs
//!   spend from; granting deducts, so accepted requests never exceed a quota
//!   whatever the number of PoPs.
//! * [`wallet`]: a holder's side of a lease (sans-IO): spend, ask for the next
//!   lease before this one runs out, size leases by recent demand.
#![forbid(unsafe_code)]

pub mod book;
pub mod period;
pub mod wallet;

pub use book::{EMPTY_LEASE, Lease, LeaseRequest, Pruned, QuotaBook, RETAIN_MS, Usage};
pub use period::{Period, QuotaSpec, bounds};
pub use wallet::{Spend, Wallet};

/// Errors of the quota book. Bad input from a peer is refused and changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("quota store: {0}")]
    Store(String),
    #[error("unknown lease {0}")]
    UnknownLease(u64),
    #[error("lease {lease} is not held by {holder}")]
    NotHolder { lease: u64, holder: String },
    #[error("lease {lease}: cannot return {unused} of {granted} granted")]
    ReturnTooLarge {
        lease: u64,
        unused: u64,
        granted: u64,
    },
}

impl QuotaError {
    fn store(err: impl std::fmt::Display) -> Self {
        QuotaError::Store(err.to_string())
    }
}
