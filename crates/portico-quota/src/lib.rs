//! Portico's authoritative usage-plan quotas.
//!
//! * [`period`]: UTC calendar periods (DAY, WEEK, MONTH) with API Gateway's
//!   offsets, computed from the wall clock so restarts and clock jumps land in
//!   the right period.
//! * [`book`]: the origin's persisted counters (redb) and the leases PoPs
//!   spend from; granting deducts, so accepted requests never exceed a quota
//!   whatever the number of PoPs.
//! * [`shared`]: the same book in Redis, shared by the origins of a region;
//!   [`Book`] is either.
//! * [`wallet`]: a holder's side of a lease (sans-IO): spend, ask for the next
//!   lease before this one runs out, size leases by recent demand.
#![forbid(unsafe_code)]

pub mod book;
pub mod period;
pub mod shared;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod wallet;

pub use book::{EMPTY_LEASE, Lease, LeaseRequest, Pruned, QuotaBook, RETAIN_MS, Usage};
pub use period::{Period, QuotaSpec, bounds};
pub use shared::{RedisBook, StoreTls};
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

/// Where an origin keeps its quota book: its own file, or a store every
/// origin of its region shares. The operations of both, off the runtime's
/// threads where they block.
#[derive(Debug, Clone)]
pub enum Book {
    /// redb at `<state_dir>/quota.redb` (the default).
    Local(std::sync::Arc<QuotaBook>),
    /// Redis, shared by the region's origins (`[quotas] store`).
    Shared(RedisBook),
}

impl Book {
    /// Runs `f` on the local book off the runtime (redb commits to disk).
    async fn blocking<T: Send + 'static>(
        book: &std::sync::Arc<QuotaBook>,
        f: impl FnOnce(&QuotaBook) -> Result<T, QuotaError> + Send + 'static,
    ) -> Result<T, QuotaError> {
        let book = std::sync::Arc::clone(book);
        tokio::task::spawn_blocking(move || f(&book))
            .await
            .map_err(|e| QuotaError::Store(format!("quota book task: {e}")))?
    }

    /// Grants up to `req.want` requests, counted as used before returning.
    pub async fn grant(&self, req: &LeaseRequest<'_>, now_ms: i64) -> Result<Lease, QuotaError> {
        match self {
            Book::Local(book) => {
                let (plan, key, holder) = (
                    req.plan.to_owned(),
                    req.key_id.to_owned(),
                    req.holder.to_owned(),
                );
                let (spec, want, ttl_ms) = (req.spec, req.want, req.ttl_ms);
                Self::blocking(book, move |b| {
                    let req = LeaseRequest {
                        plan: &plan,
                        key_id: &key,
                        spec,
                        want,
                        holder: &holder,
                        ttl_ms,
                    };
                    b.grant(&req, now_ms)
                })
                .await
            }
            Book::Shared(book) => book.grant(req, now_ms).await,
        }
    }

    /// Ends lease `id` of `holder`, giving back `unused` requests.
    pub async fn release(&self, id: u64, unused: u64, holder: &str) -> Result<u64, QuotaError> {
        match self {
            Book::Local(book) => {
                let holder = holder.to_owned();
                Self::blocking(book, move |b| b.release(id, unused, &holder)).await
            }
            Book::Shared(book) => book.release(id, unused, holder).await,
        }
    }

    /// Returns the store could not take yet, waiting to be sent again (a
    /// local book has none).
    pub fn returns_waiting(&self) -> usize {
        match self {
            Book::Local(_) => 0,
            Book::Shared(book) => book.returns_waiting(),
        }
    }

    /// The key's usage in the period containing `now_ms`.
    pub async fn usage(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
        now_ms: i64,
    ) -> Result<Usage, QuotaError> {
        match self {
            // A read: no commit, no need to leave the runtime.
            Book::Local(book) => book.usage(plan, key_id, spec, now_ms),
            Book::Shared(book) => book.usage(plan, key_id, spec, now_ms).await,
        }
    }
}
