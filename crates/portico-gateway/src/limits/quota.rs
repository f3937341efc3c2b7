//! Quotas spent against this node's own [`QuotaBook`] (an origin's): one
//! [`Wallet`] per (plan, key), refilled with leases granted by the book.
//!
//! The book counts a lease as used when it grants it, so whatever this process
//! does, accepted ≤ granted ≤ limit. In the steady state a request only takes a
//! mutex for a few instructions: the wallet asks for the next lease at half
//! spent and a background task fetches it; a request waits only when its wallet
//! is empty (the first request of a key, or demand outran the lease).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_quota::wallet::Sizing;
use portico_quota::{LeaseRequest, QuotaBook, QuotaError, QuotaSpec, Spend, Wallet, bounds};
use tokio::sync::Notify;

/// The outcome of spending one request of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    Accepted,
    /// The period's quota is spent; it renews after `retry_after`.
    Exhausted {
        retry_after: Duration,
    },
    /// The book could not be asked (store error or time-out).
    Unavailable,
}

/// A key's usage as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageView {
    pub used: u64,
    pub remaining: u64,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
}

/// Smallest lease asked for: keeps the first second of a busy key (before the
/// wallet has measured its rate) from taking the slow path on every request.
const MIN_LEASE: u64 = 16;
/// Leases end after this long at most (and at the period's end).
const LEASE_TTL_MS: i64 = 60_000;
/// A request waits this long at most for a lease.
const WAIT: Duration = Duration::from_secs(2);

struct Slot {
    state: Mutex<SlotState>,
    refilled: Notify,
}

struct SlotState {
    wallet: Wallet,
    period_end_ms: i64,
}

/// Wallets of every (plan, key) this node spends for, over its quota book.
pub struct LocalQuota {
    book: Arc<QuotaBook>,
    holder: String,
    slots: Mutex<HashMap<String, HashMap<String, Arc<Slot>>>>,
}

impl std::fmt::Debug for LocalQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalQuota")
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalQuota {
    /// Opens the book at `path`. Leases `holder` still held from a previous run
    /// (a crash: nothing says how much of them was spent) are closed with nothing
    /// returned, so their requests stay counted: never overshoot.
    pub fn open(path: &Path, holder: &str) -> Result<Self, QuotaError> {
        let book = QuotaBook::open(path)?;
        for (id, _, _) in book.leases_of(holder)? {
            book.release(id, 0, holder)?;
        }
        Ok(Self {
            book: Arc::new(book),
            holder: holder.to_owned(),
            slots: Mutex::new(HashMap::new()),
        })
    }

    fn slot(&self, plan: &str, key_id: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(plan).and_then(|p| p.get(key_id)) {
            return Arc::clone(s);
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                wallet: Wallet::new(now_ms()),
                period_end_ms: i64::MAX,
            }),
            refilled: Notify::new(),
        });
        slots
            .entry(plan.to_owned())
            .or_default()
            .insert(key_id.to_owned(), Arc::clone(&slot));
        slot
    }

    /// Spends one request of (plan, key)'s quota.
    pub async fn spend(
        self: &Arc<Self>,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
    ) -> QuotaOutcome {
        let slot = self.slot(plan, key_id);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = slot.refilled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (spend, refill) = {
                let mut st = lock(&slot.state);
                let now = now_ms();
                if now >= st.period_end_ms {
                    // A new period: the old wallet's lease belongs to the old one.
                    st.wallet = Wallet::new(now);
                    st.period_end_ms = i64::MAX;
                }
                let spend = st.wallet.spend(now);
                let refill = st.wallet.wants_refill(now).then(|| {
                    st.wallet.begin_refill();
                    size(&st.wallet, spec)
                });
                (spend, refill)
            };
            match (spend, refill) {
                (Spend::Accepted, Some(want)) => {
                    let this = Arc::clone(self);
                    let (plan, key) = (plan.to_owned(), key_id.to_owned());
                    let slot = Arc::clone(&slot);
                    tokio::spawn(async move { this.refill(&slot, &plan, &key, spec, want).await });
                    return QuotaOutcome::Accepted;
                }
                (Spend::Accepted, None) => return QuotaOutcome::Accepted,
                (Spend::Exhausted, _) => return exhausted(spec),
                (Spend::Empty, Some(want)) => self.refill(&slot, plan, key_id, spec, want).await,
                (Spend::Empty, None) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return QuotaOutcome::Unavailable;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return QuotaOutcome::Unavailable;
            }
        }
    }

    /// Asks the book for a lease and installs it; the old lease's unspent part goes back.
    async fn refill(&self, slot: &Slot, plan: &str, key_id: &str, spec: QuotaSpec, want: u64) {
        let book = Arc::clone(&self.book);
        let (p, k, h) = (plan.to_owned(), key_id.to_owned(), self.holder.clone());
        let granted = tokio::task::spawn_blocking(move || {
            let req = LeaseRequest {
                plan: &p,
                key_id: &k,
                spec,
                want,
                holder: &h,
                ttl_ms: LEASE_TTL_MS,
            };
            book.grant(&req, now_ms())
        })
        .await;
        let old = {
            let mut st = lock(&slot.state);
            match granted {
                Ok(Ok(lease)) => {
                    let old = st.wallet.in_hand();
                    st.wallet
                        .install(lease.id, lease.granted, lease.expires_ms, lease.exhausted);
                    st.period_end_ms = lease.period_end_ms;
                    old
                }
                Ok(Err(err)) => {
                    tracing::error!(%err, plan, key = key_id, "quota lease refused by the book");
                    st.wallet.refill_failed();
                    None
                }
                Err(err) => {
                    tracing::error!(%err, "quota lease task failed");
                    st.wallet.refill_failed();
                    None
                }
            }
        };
        slot.refilled.notify_waiters();
        if let Some((id, unused)) = old {
            self.give_back(id, unused).await;
        }
    }

    async fn give_back(&self, id: u64, unused: u64) {
        let book = Arc::clone(&self.book);
        let holder = self.holder.clone();
        let done = tokio::task::spawn_blocking(move || book.release(id, unused, &holder)).await;
        if let Ok(Err(err)) = done {
            tracing::warn!(%err, lease = id, "could not return a quota lease");
        }
    }

    /// Returns every unspent lease to the book (at shutdown).
    pub async fn close(&self) {
        let held: Vec<(u64, u64)> = {
            let slots = lock(&self.slots);
            slots
                .values()
                .flat_map(|p| p.values())
                .filter_map(|s| lock(&s.state).wallet.in_hand())
                .collect()
        };
        for (id, unused) in held {
            self.give_back(id, unused).await;
        }
    }

    /// A key's usage now: what the book counts minus what this node holds unspent.
    pub fn usage(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
    ) -> Result<UsageView, QuotaError> {
        let now = now_ms();
        let u = self.book.usage(plan, key_id, spec, now)?;
        let held = {
            let slots = lock(&self.slots);
            let slot = slots.get(plan).and_then(|p| p.get(key_id)).cloned();
            slot.and_then(|s| {
                let st = lock(&s.state);
                (now < st.period_end_ms)
                    .then(|| st.wallet.in_hand())
                    .flatten()
            })
            .map_or(0, |(_, left)| left)
        };
        let used = u.used.saturating_sub(held);
        Ok(UsageView {
            used,
            remaining: spec.limit.saturating_sub(used),
            period_start_ms: u.period_start_ms,
            period_end_ms: u.period_end_ms,
        })
    }
}

fn size(wallet: &Wallet, spec: QuotaSpec) -> u64 {
    let sizing = Sizing::default();
    wallet.next_size(&sizing).max(MIN_LEASE).min(spec.limit)
}

fn exhausted(spec: QuotaSpec) -> QuotaOutcome {
    let now = now_ms();
    let (_, end) = bounds(spec.period, spec.offset, now);
    let ms = u64::try_from(end.saturating_sub(now)).unwrap_or(0);
    QuotaOutcome::Exhausted {
        retry_after: Duration::from_millis(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_quota::Period;

    const SPEC: QuotaSpec = QuotaSpec {
        limit: 50,
        period: Period::Day,
        offset: 0,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_the_limit_and_counts_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let q = Arc::new(LocalQuota::open(&path, "origin").unwrap());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let q = Arc::clone(&q);
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..30 {
                    if q.spend("p", "k", SPEC).await == QuotaOutcome::Accepted {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.unwrap();
        }
        assert_eq!(accepted, 50);
        assert!(matches!(
            q.spend("p", "k", SPEC).await,
            QuotaOutcome::Exhausted { .. }
        ));
        assert_eq!(q.usage("p", "k", SPEC).unwrap().used, 50);
        assert_eq!(q.usage("p", "other", SPEC).unwrap().used, 0);
        q.close().await;
        drop(q);
        let again = Arc::new(LocalQuota::open(&path, "origin").unwrap());
        assert_eq!(again.usage("p", "k", SPEC).unwrap().remaining, 0);
        assert!(matches!(
            again.spend("p", "k", SPEC).await,
            QuotaOutcome::Exhausted { .. }
        ));
    }

    #[tokio::test]
    async fn unspent_leases_go_back_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let q = Arc::new(LocalQuota::open(&path, "origin").unwrap());
        assert_eq!(q.spend("p", "k", SPEC).await, QuotaOutcome::Accepted);
        q.close().await;
        drop(q);
        let again = LocalQuota::open(&path, "origin").unwrap();
        assert_eq!(again.usage("p", "k", SPEC).unwrap().used, 1);
    }
}
