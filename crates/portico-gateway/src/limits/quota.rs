//! Quotas spent from leases: one [`Wallet`] per (plan, key), refilled with
//! leases from a [`LeaseSource`]: the origin's [`Book`] on an origin (its own
//! file, or a store its region's origins share), the home origin over the
//! backbone on a PoP.
//!
//! The book counts a lease as used when it grants it, so whatever this process
//! does, accepted ≤ granted ≤ limit. In the steady state a request only takes a
//! mutex for a few instructions: the wallet asks for the next lease at half
//! spent and a background task fetches it; a request waits only when its wallet
//! is empty (the first request of a key, or demand outran the lease).
//!
//! Unspent requests go back to the book when the next lease arrives, when a
//! lease expires ([`Quotas::sweep`]), when the link to the book's origin comes
//! back after a loss ([`Quotas::surrender_home`]) and at shutdown
//! ([`Quotas::close`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_quota::wallet::Sizing;
use portico_quota::{
    Book, Lease, LeaseRequest, Pruned, QuotaBook, QuotaError, QuotaSpec, RedisBook, Spend, Wallet,
    bounds,
};
use tokio::sync::Notify;

/// A boxed future, as [`LeaseSource`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a wallet asks its source for.
#[derive(Debug, Clone)]
pub struct LeaseAsk {
    /// The API the request was for: where a PoP sends the ask (its home origin).
    pub api: Arc<str>,
    pub plan: Arc<str>,
    pub key_id: Arc<str>,
    pub spec: QuotaSpec,
    pub want: u64,
    /// The wallet holds no lease: what it held (if anything) went back
    /// before this ask, surrendered or expired, rather than after it, as a
    /// refill returns the lease it replaces. A source with several ways to
    /// one book sends such an ask the way that return went, behind it.
    pub after_return: bool,
}

/// Where leases come from.
pub trait LeaseSource: Send + Sync + 'static {
    /// Grants a lease, or fails (book error, link down, time-out): the
    /// wallet then spends only what it holds.
    fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>>;

    /// Hands back the unspent part of a lease of `api`'s home.
    fn give_back(&self, api: Arc<str>, lease_id: u64, unused: u64) -> BoxFuture<'_, ()>;
}

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
pub const LEASE_TTL_MS: i64 = 60_000;
/// A request waits this long at most for a lease.
const WAIT: Duration = Duration::from_secs(2);
/// How long a closing node keeps sending the returns a shared book's Redis
/// could not take yet.
const FLUSH_AT_CLOSE: Duration = Duration::from_secs(10);
/// A key's wallet no request has spent from for this long, holding no
/// lease and awaiting none, is forgotten by the sweep (a key deleted, or
/// one used once, kept its wallet for the life of the process). Five
/// lease lives: a key that sends a request every minute or two keeps its
/// wallet and its demand estimate; a forgotten one only asks the book
/// before its next request, as a new key does.
const IDLE_SLOT_MS: i64 = 5 * LEASE_TTL_MS;

/// The wallet of one (plan, key), whatever API its requests are for: a
/// plan covers several.
struct Slot {
    plan: Arc<str>,
    key_id: Arc<str>,
    state: Mutex<SlotState>,
    refilled: Notify,
}

struct SlotState {
    wallet: Wallet,
    period_end_ms: i64,
    /// The API whose ask brought the lease in hand: its home's book granted
    /// it, so the lease goes back there and is surrendered with that home.
    /// Each ask goes out for the API of the request that made it, not for
    /// the first API the key was seen with (which may since have been
    /// removed, or moved to another home).
    held_for: Arc<str>,
    /// When a request last spent (or was refused) here: see [`IDLE_SLOT_MS`].
    used_ms: i64,
}

/// The origin's quota book as a lease source.
pub struct BookSource {
    book: Book,
    holder: String,
}

impl BookSource {
    pub fn new(book: Book, holder: &str) -> Self {
        Self {
            book,
            holder: holder.to_owned(),
        }
    }

    /// Grants `ask` to `holder` (this origin, or a PoP asking over the backbone).
    pub async fn grant_to(
        book: &Book,
        holder: &str,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
        want: u64,
    ) -> Result<Lease, QuotaError> {
        let req = LeaseRequest {
            plan,
            key_id,
            spec,
            want,
            holder,
            ttl_ms: LEASE_TTL_MS,
        };
        book.grant(&req, now_ms()).await
    }

    /// Takes back `unused` requests of lease `id` from `holder`.
    pub async fn release_from(
        book: &Book,
        holder: &str,
        id: u64,
        unused: u64,
    ) -> Result<u64, QuotaError> {
        book.release(id, unused, holder).await
    }
}

impl LeaseSource for BookSource {
    fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
        Box::pin(async move {
            let (plan, key) = (&ask.plan, &ask.key_id);
            Self::grant_to(&self.book, &self.holder, plan, key, ask.spec, ask.want)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn give_back(&self, _api: Arc<str>, lease_id: u64, unused: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let done = Self::release_from(&self.book, &self.holder, lease_id, unused).await;
            if let Err(err) = done {
                tracing::warn!(%err, lease = lease_id, "could not return a quota lease");
            }
        })
    }
}

/// When a lease's period ends for its wallet. A period end already past
/// on this clock means this clock runs ahead of the source's: the source,
/// which keeps the periods, granted from the one it is still in. The lease
/// is then spent for another [`SKEWED_PERIOD_RECHECK_MS`] and asked again,
/// instead of being dropped on arrival and asked again at once, in a loop,
/// until the request gave up (503).
fn period_end_after(period_end_ms: i64, now_ms: i64) -> i64 {
    if period_end_ms > now_ms {
        period_end_ms
    } else {
        now_ms.saturating_add(SKEWED_PERIOD_RECHECK_MS)
    }
}

/// See [`period_end_after`].
const SKEWED_PERIOD_RECHECK_MS: i64 = 1_000;

/// Wallets by plan, then key id.
type Slots = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Slot>>>;

/// Wallets of every (plan, key) this node spends for, over a lease source.
pub struct Quotas {
    source: Arc<dyn LeaseSource>,
    /// The book, on an origin (usage reads).
    book: Option<Book>,
    /// By plan, then key id.
    slots: Mutex<Slots>,
    /// True once closed. Each refill holds a read guard while its lease is
    /// asked for and installed, so [`Quotas::close`] (the writer) waits for
    /// refills in flight and no lease is granted after it handed all back.
    closed: tokio::sync::RwLock<bool>,
    /// Where refills run: the runtime that made this (the node's main one).
    /// A request may be served on a listener's worker thread, whose runtime
    /// ends before [`Quotas::close`]; a refill left on it would be dropped
    /// between the grant and its install, and the lease never handed back.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Quotas")
    }
}

/// Removes what the book no longer needs (see [`QuotaBook::prune`]).
fn prune(book: &QuotaBook) {
    match book.prune(now_ms()) {
        Ok(pruned) if pruned != Pruned::default() => {
            tracing::info!(
                usage = pruned.usage,
                leases = pruned.leases,
                "quota book pruned"
            );
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "could not prune the quota book"),
    }
}

/// Prunes the book once a day while it is open (it is a blocking write).
async fn prune_daily(book: std::sync::Weak<QuotaBook>) {
    let mut every = tokio::time::interval(Duration::from_secs(86_400));
    every.tick().await;
    loop {
        every.tick().await;
        let Some(book) = book.upgrade() else { return };
        if tokio::task::spawn_blocking(move || prune(&book))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The wall clock in milliseconds since the epoch (quota periods are UTC).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Quotas {
    /// An origin's wallets over its own book at `path`. Leases `holder` still
    /// held from a previous run (a crash: nothing says how much of them was
    /// spent) are closed with nothing returned, so their requests stay
    /// counted: never overshoot.
    pub fn open(path: &Path, holder: &str) -> Result<Self, QuotaError> {
        let book = QuotaBook::open(path)?;
        for (id, _, _) in book.leases_of(holder)? {
            book.release(id, 0, holder)?;
        }
        prune(&book);
        let book = Arc::new(book);
        let runtime = tokio::runtime::Handle::try_current().ok();
        if let Some(rt) = &runtime {
            rt.spawn(prune_daily(Arc::downgrade(&book)));
        }
        Ok(Self::over(Book::Local(book), holder, runtime))
    }

    /// An origin's wallets over the book its region's origins share in
    /// Redis. A store that cannot be reached now is logged, not fatal:
    /// grants fail until it is back (wallets spend what they hold, then the
    /// plans' `fail_closed` / `fail_open` apply). Leases a previous run of
    /// this node left open stay counted, as [`Quotas::open`]'s closing leaves
    /// them, and Redis forgets them with their expiry: they are not closed
    /// here, where another live process with this node id (an overlapping
    /// restart) could hold them and still return them.
    pub async fn shared(book: RedisBook, holder: &str) -> Self {
        if let Err(err) = book.check().await {
            tracing::error!(%err, store = ?book, "the shared quota book could not be opened; quotas are unavailable until it can be reached");
        }
        Self::over(
            Book::Shared(book),
            holder,
            tokio::runtime::Handle::try_current().ok(),
        )
    }

    fn over(book: Book, holder: &str, runtime: Option<tokio::runtime::Handle>) -> Self {
        let source = BookSource::new(book.clone(), holder);
        Self {
            source: Arc::new(source),
            book: Some(book),
            slots: Mutex::new(HashMap::new()),
            closed: tokio::sync::RwLock::new(false),
            runtime,
        }
    }

    /// A PoP's wallets, leased from elsewhere (its origins).
    pub fn remote(source: Arc<dyn LeaseSource>) -> Self {
        Self {
            source,
            book: None,
            slots: Mutex::new(HashMap::new()),
            closed: tokio::sync::RwLock::new(false),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The book, on an origin.
    pub fn book(&self) -> Option<&Book> {
        self.book.as_ref()
    }

    fn slot(&self, api: &str, plan: &str, key_id: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(plan).and_then(|p| p.get(key_id)) {
            return Arc::clone(s);
        }
        let slot = Arc::new(Slot {
            plan: Arc::from(plan),
            key_id: Arc::from(key_id),
            state: Mutex::new(SlotState {
                wallet: Wallet::new(now_ms()),
                period_end_ms: i64::MAX,
                held_for: Arc::from(api),
                used_ms: now_ms(),
            }),
            refilled: Notify::new(),
        });
        slots
            .entry(Arc::clone(&slot.plan))
            .or_default()
            .insert(Arc::clone(&slot.key_id), Arc::clone(&slot));
        slot
    }

    /// Spends one request of (plan, key)'s quota for a request to `api`.
    pub async fn spend(
        self: &Arc<Self>,
        api: &str,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
    ) -> QuotaOutcome {
        let slot = self.slot(api, plan, key_id);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = slot.refilled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (spend, refill, period_end_ms) = {
                let mut st = lock(&slot.state);
                let now = now_ms();
                st.used_ms = now;
                if now >= st.period_end_ms {
                    // A new period: the old wallet's lease belongs to the old
                    // one. A refill on its way still lands in the new wallet
                    // (its waiters would otherwise wait for nothing).
                    let refilling = st.wallet.refilling();
                    st.wallet = Wallet::new(now);
                    if refilling {
                        st.wallet.begin_refill();
                    }
                    st.period_end_ms = i64::MAX;
                }
                let spend = st.wallet.spend(now);
                let refill = st.wallet.wants_refill(now).then(|| {
                    st.wallet.begin_refill();
                    size(&st.wallet, spec)
                });
                (spend, refill, st.period_end_ms)
            };
            match (spend, refill) {
                // The next lease is fetched in the background (for an
                // exhausted key: others may have returned some).
                (Spend::Accepted | Spend::Exhausted, Some(want)) => {
                    drop(self.spawn_refill(&slot, api, spec, want));
                    return outcome(spend, spec, period_end_ms);
                }
                (Spend::Accepted | Spend::Exhausted, None) => {
                    return outcome(spend, spec, period_end_ms);
                }
                (Spend::Empty, Some(want)) => {
                    // Awaited, but run apart: a request dropped meanwhile
                    // does not drop a lease the source already granted; and
                    // a source slower than the wait leaves it.
                    let refill = self.spawn_refill(&slot, api, spec, want);
                    let filled = tokio::time::timeout_at(deadline, refill).await;
                    if !matches!(filled, Ok(Ok(true))) {
                        // The source is unreachable: do not wait for it again.
                        return QuotaOutcome::Unavailable;
                    }
                }
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

    /// [`Quotas::refill`] for a request to `api`, as a task of this node's
    /// main runtime (see `runtime`), so it completes whatever happens to the
    /// caller.
    fn spawn_refill(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        api: &str,
        spec: QuotaSpec,
        want: u64,
    ) -> tokio::task::JoinHandle<bool> {
        let this = Arc::clone(self);
        let slot = Arc::clone(slot);
        let api = Arc::from(api);
        let refill = async move { this.refill(&slot, api, spec, want).await };
        match &self.runtime {
            Some(runtime) => runtime.spawn(refill),
            None => tokio::spawn(refill),
        }
    }

    /// Asks the source for a lease for `api` (from its home) and installs
    /// it; the old lease's unspent part goes back. False when no lease came.
    async fn refill(&self, slot: &Slot, api: Arc<str>, spec: QuotaSpec, want: u64) -> bool {
        let closed = self.closed.read().await;
        if *closed {
            lock(&slot.state).wallet.refill_failed();
            slot.refilled.notify_waiters();
            return false;
        }
        let ask = LeaseAsk {
            api: Arc::clone(&api),
            plan: Arc::clone(&slot.plan),
            key_id: Arc::clone(&slot.key_id),
            spec,
            want,
            after_return: lock(&slot.state).wallet.in_hand().is_none(),
        };
        let granted = self.source.grant(ask).await;
        let (old, ok) = {
            let mut st = lock(&slot.state);
            let now = now_ms();
            match granted {
                // Nothing more to grant: what is in hand stays and is spent
                // (the empty lease is closed in the book).
                Ok(lease) if lease.granted == 0 && st.wallet.holds_unspent(now) => {
                    st.wallet.keep_after_empty_grant(now);
                    st.period_end_ms = period_end_after(lease.period_end_ms, now);
                    (Some((api, lease.id, 0)), true)
                }
                Ok(lease) => {
                    let old = st.wallet.surrender();
                    let (id, granted, expires) = (lease.id, lease.granted, lease.expires_ms);
                    st.wallet
                        .install_at(id, granted, expires, lease.exhausted, now);
                    st.period_end_ms = period_end_after(lease.period_end_ms, now);
                    let old_api = std::mem::replace(&mut st.held_for, api);
                    (old.map(|(id, unused)| (old_api, id, unused)), true)
                }
                Err(err) => {
                    tracing::warn!(%err, plan = %slot.plan, key = %slot.key_id, "no quota lease");
                    st.wallet.refill_failed();
                    (None, false)
                }
            }
        };
        slot.refilled.notify_waiters();
        if let Some((api, id, unused)) = old {
            self.source.give_back(api, id, unused).await;
        }
        ok
    }

    /// Hands back the leases that are spent or expired, and those of a
    /// period that ended (the node calls this every second), so the book
    /// hears of them before their holders next ask; then forgets idle
    /// wallets ([`IDLE_SLOT_MS`]).
    pub async fn sweep(&self) {
        self.sweep_at(now_ms()).await;
    }

    /// [`Quotas::sweep`] at `now` (ms, this node's clock).
    async fn sweep_at(&self, now: i64) {
        self.give_back_where(|_, st| st.wallet.is_spent_or_expired(now) || now >= st.period_end_ms)
            .await;
        self.forget_idle(now);
    }

    /// Drops the slots no request has used for [`IDLE_SLOT_MS`] whose
    /// wallets are at rest ([`Wallet::is_at_rest`]) and that nothing else
    /// holds. Whatever spends, waits, refills or returns for a slot holds
    /// its `Arc`, and a new holder can only take one from the map: checked
    /// under the map's lock, a count of one means none holds it or can
    /// until the slot is gone, and a request that comes later makes a new
    /// one. A slot is never dropped under a request that still uses it.
    fn forget_idle(&self, now: i64) {
        let forgettable = |slot: &Arc<Slot>| {
            Arc::strong_count(slot) == 1 && {
                let st = lock(&slot.state);
                st.wallet.is_at_rest() && now.saturating_sub(st.used_ms) >= IDLE_SLOT_MS
            }
        };
        let mut slots = lock(&self.slots);
        slots.retain(|_, keys| {
            keys.retain(|_, slot| !forgettable(slot));
            !keys.is_empty()
        });
    }

    /// Surrenders every lease of `home` (a reconnected origin's APIs): the
    /// unspent rest goes back, and the next requests ask afresh. `home`
    /// decides by API name.
    pub async fn surrender_home(&self, home: impl Fn(&str) -> bool) {
        self.give_back_where(|api, _| home(api)).await;
    }

    /// Returns every unspent lease (at shutdown), once the refills in flight
    /// are installed; no lease is asked for afterwards.
    pub async fn close(&self) {
        *self.closed.write().await = true;
        self.give_back_where(|_, _| true).await;
        // A shared book's returns its Redis could not take yet wait in a
        // queue that ends with this process.
        if let Some(Book::Shared(book)) = &self.book {
            let left = book.flush(FLUSH_AT_CLOSE).await;
            if left > 0 {
                tracing::error!(
                    left,
                    "quota returns the shared book's Redis did not take before exit; their requests stay counted"
                );
            }
        }
    }

    /// Surrenders the leases of the slots `pick` chooses (by API and state)
    /// and hands their unspent rest back to the source.
    ///
    /// A slot asks for no new lease until its return is sent: the source
    /// hears of the return first (a reconnected PoP's next ask would
    /// otherwise race it, and could find the quota spent).
    async fn give_back_where(&self, pick: impl Fn(&str, &SlotState) -> bool) {
        let held: Vec<_> = {
            let slots = lock(&self.slots);
            slots
                .values()
                .flat_map(HashMap::values)
                .filter_map(|s| {
                    let mut st = lock(&s.state);
                    let held = pick(&st.held_for, &st).then(|| st.wallet.surrender_returning());
                    let api = Arc::clone(&st.held_for);
                    held.flatten()
                        .map(|(id, unused)| (Arc::clone(s), api, id, unused))
                })
                .collect()
        };
        let mut pending = Returning(held);
        while let Some((_, api, id, unused)) = pending.0.last() {
            self.source.give_back(Arc::clone(api), *id, *unused).await;
            if let Some((slot, ..)) = pending.0.pop() {
                unmark(&slot);
            }
        }
    }

    /// A key's usage now (on the node with the book): what the book counts
    /// minus what this node holds unspent. Leases PoPs hold count as used.
    pub async fn usage(
        &self,
        plan: &str,
        key_id: &str,
        spec: QuotaSpec,
    ) -> Result<UsageView, QuotaError> {
        let Some(book) = &self.book else {
            return Err(QuotaError::Store("this node keeps no quota book".into()));
        };
        let now = now_ms();
        let u = book.usage(plan, key_id, spec, now).await?;
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

/// The next lease's size: the wallet's demand estimate, at least
/// [`MIN_LEASE`] but never more than a sixteenth of a small quota at first
/// (a quota of 100 a day is not handed out 16 at a time to an idle key).
fn size(wallet: &Wallet, spec: QuotaSpec) -> u64 {
    let sizing = Sizing::default();
    let floor = (spec.limit / 16).clamp(1, MIN_LEASE);
    wallet.next_size(&sizing).max(floor).min(spec.limit)
}

/// The slot's surrendered lease is sent: refills may go again.
fn unmark(slot: &Slot) {
    lock(&slot.state).wallet.returned();
    slot.refilled.notify_waiters();
}

/// Surrendered leases not yet handed back. Dropped with some left (the
/// returning task was cancelled), it unmarks their slots, so a return that
/// never completes does not stop those keys' refills for good.
struct Returning(Vec<(Arc<Slot>, Arc<str>, u64, u64)>);

impl Drop for Returning {
    fn drop(&mut self) {
        self.0.iter().for_each(|(slot, ..)| unmark(slot));
    }
}

/// What an accepted or exhausted spend answers; `period_end_ms` is when the
/// wallet's period ends on this clock (`i64::MAX`: no lease said yet).
fn outcome(spend: Spend, spec: QuotaSpec, period_end_ms: i64) -> QuotaOutcome {
    match spend {
        Spend::Accepted => QuotaOutcome::Accepted,
        _ => exhausted(spec, period_end_ms),
    }
}

/// An exhausted quota renews when the book's period ends, as its last lease
/// said (translated to this clock): this node's own calendar is off by the
/// clocks' skew, and a client told to come back after it would either wait
/// longer than it must or be refused again at once.
fn exhausted(spec: QuotaSpec, period_end_ms: i64) -> QuotaOutcome {
    let now = now_ms();
    let end = match period_end_ms {
        i64::MAX => bounds(spec.period, spec.offset, now).1,
        end => end,
    };
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

    /// Closes `q` and waits until nothing holds it: a refill task that
    /// saw the close may still hold it for a moment, and with it the book's
    /// file, which a second open in the same process would find locked.
    async fn close_and_let_go(q: Arc<Quotas>) {
        q.close().await;
        let mut q = q;
        for _ in 0..1000 {
            match Arc::try_unwrap(q) {
                Ok(inner) => return drop(inner),
                Err(held) => q = held,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a task still holds the quotas 10 s after close");
    }

    /// Spends on one key until the quota says no, and answers how many were
    /// accepted. An `Unavailable` (a book write slower than `WAIT` on a loaded
    /// machine) is asked again, as a client would retry a 503.
    async fn spend_until_exhausted(q: &Arc<Quotas>) -> u64 {
        let mut ok = 0;
        for _ in 0..1000 {
            match q.spend("a", "p", "k", SPEC).await {
                QuotaOutcome::Accepted => ok += 1,
                QuotaOutcome::Exhausted { .. } => return ok,
                QuotaOutcome::Unavailable => {}
            }
        }
        panic!("the quota never ran out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_the_limit_and_counts_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let q = Arc::new(Quotas::open(&path, "origin").unwrap());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let q = Arc::clone(&q);
            tasks.push(tokio::spawn(async move { spend_until_exhausted(&q).await }));
        }
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.unwrap();
        }
        assert_eq!(accepted, 50);
        assert!(matches!(
            q.spend("a", "p", "k", SPEC).await,
            QuotaOutcome::Exhausted { .. }
        ));
        assert_eq!(q.usage("p", "k", SPEC).await.unwrap().used, 50);
        assert_eq!(q.usage("p", "other", SPEC).await.unwrap().used, 0);
        close_and_let_go(q).await;
        let again = Arc::new(Quotas::open(&path, "origin").unwrap());
        assert_eq!(again.usage("p", "k", SPEC).await.unwrap().remaining, 0);
        assert!(matches!(
            again.spend("a", "p", "k", SPEC).await,
            QuotaOutcome::Exhausted { .. }
        ));
    }

    #[tokio::test]
    async fn unspent_leases_go_back_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let q = Arc::new(Quotas::open(&path, "origin").unwrap());
        assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        close_and_let_go(q).await;
        let again = Quotas::open(&path, "origin").unwrap();
        assert_eq!(again.usage("p", "k", SPEC).await.unwrap().used, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pops_leasing_from_one_book_never_exceed_it_together() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Arc::new(Quotas::open(&dir.path().join("q.redb"), "origin").unwrap());
        let book = origin.book().unwrap().clone();
        let pops: Vec<Arc<Quotas>> = ["pop-a", "pop-b", "pop-c"]
            .iter()
            .map(|id| {
                let source = BookSource::new(book.clone(), id);
                Arc::new(Quotas::remote(Arc::new(source)))
            })
            .collect();
        let mut tasks = Vec::new();
        for q in pops.iter().chain([&origin]) {
            let q = Arc::clone(q);
            tasks.push(tokio::spawn(async move { spend_until_exhausted(&q).await }));
        }
        let mut accepted = 0;
        for t in tasks {
            accepted += t.await.unwrap();
        }
        assert_eq!(accepted, 50, "every request of the quota, and no more");
        for q in &pops {
            q.close().await;
        }
        assert_eq!(origin.usage("p", "k", SPEC).await.unwrap().remaining, 0);
    }

    /// At the end of a quota, a holder whose refill comes back empty keeps
    /// spending what it holds: handing it back would answer its clients 429
    /// while the book holds requests that only other holders can ask for.
    #[tokio::test]
    async fn an_empty_refill_leaves_what_is_in_hand_to_spend() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let book = origin.book().unwrap().clone();
        let pop = |id: &str| {
            let source = BookSource::new(book.clone(), id);
            Arc::new(Quotas::remote(Arc::new(source)))
        };
        let (a, b) = (pop("pop-a"), pop("pop-b"));
        let spend = |q: &Arc<Quotas>| {
            let q = Arc::clone(q);
            async move { q.spend("a", "p", "k", SPEC).await }
        };
        // pop-a leases the smallest lease (3 of 50) and spends one.
        assert_eq!(spend(&a).await, QuotaOutcome::Accepted);
        // pop-b spends the rest of the quota, until it is refused.
        let mut by_b = 0;
        while spend(&b).await == QuotaOutcome::Accepted {
            by_b += 1;
        }
        assert_eq!(by_b, 47, "pop-a holds two");
        // pop-a's next request is the second of its lease: it asks for the
        // next lease, which comes back empty.
        let slot = a.slot("a", "p", "k");
        let refilled = slot.refilled.notified();
        tokio::pin!(refilled);
        refilled.as_mut().enable();
        assert_eq!(spend(&a).await, QuotaOutcome::Accepted);
        tokio::time::timeout(Duration::from_secs(10), refilled)
            .await
            .expect("the refill came back");
        // The last request in hand is still pop-a's to accept.
        assert_eq!(spend(&a).await, QuotaOutcome::Accepted);
        assert!(matches!(spend(&a).await, QuotaOutcome::Exhausted { .. }));
        assert!(matches!(spend(&b).await, QuotaOutcome::Exhausted { .. }));
        a.close().await;
        b.close().await;
        assert_eq!(origin.usage("p", "k", SPEC).await.unwrap().used, 50);
    }

    /// A source that logs its grants and returns; a return signals that it
    /// started, then takes a while to arrive.
    struct Ordered {
        book: BookSource,
        log: std::sync::Mutex<Vec<&'static str>>,
        returning: tokio::sync::Notify,
    }

    impl LeaseSource for Ordered {
        fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            Box::pin(async move {
                lock(&self.log).push("grant");
                self.book.grant(ask).await
            })
        }
        fn give_back(&self, api: Arc<str>, id: u64, unused: u64) -> BoxFuture<'_, ()> {
            Box::pin(async move {
                self.returning.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.book.give_back(api, id, unused).await;
                lock(&self.log).push("return");
            })
        }
    }

    /// The book's leases, as an origin whose clock is behind this one's
    /// sends them near a period's end: the period ends before they arrive.
    struct Behind {
        book: BookSource,
        grants: std::sync::atomic::AtomicUsize,
    }

    impl LeaseSource for Behind {
        fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            Box::pin(async move {
                self.grants
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut lease = self.book.grant(ask).await?;
                lease.period_end_ms = now_ms() - 1_000;
                Ok(lease)
            })
        }
        fn give_back(&self, api: Arc<str>, id: u64, unused: u64) -> BoxFuture<'_, ()> {
            self.book.give_back(api, id, unused)
        }
    }

    #[tokio::test]
    async fn a_lease_whose_period_ended_on_this_clock_is_spent_not_asked_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let source = Arc::new(Behind {
            book: BookSource::new(origin.book().unwrap().clone(), "pop-a"),
            grants: std::sync::atomic::AtomicUsize::new(0),
        });
        let q = Arc::new(Quotas::remote(Arc::clone(&source) as Arc<dyn LeaseSource>));
        for _ in 0..5 {
            assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        }
        let grants = source.grants.load(std::sync::atomic::Ordering::SeqCst);
        assert!(grants <= 2, "{grants} leases for 5 requests");
    }

    /// The book, recording the API of each ask and each return, and
    /// whether each ask came after its key's return.
    struct Recorded {
        book: BookSource,
        asks: std::sync::Mutex<Vec<String>>,
        after_return: std::sync::Mutex<Vec<bool>>,
        returns: std::sync::Mutex<Vec<String>>,
    }

    impl LeaseSource for Recorded {
        fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            lock(&self.asks).push(ask.api.to_string());
            lock(&self.after_return).push(ask.after_return);
            self.book.grant(ask)
        }
        fn give_back(&self, api: Arc<str>, id: u64, unused: u64) -> BoxFuture<'_, ()> {
            lock(&self.returns).push(api.to_string());
            self.book.give_back(api, id, unused)
        }
    }

    /// A key's wallet serves every API of its plan, and asks for the API of
    /// the request that needs the lease: the first API it was seen with may
    /// since have been removed, or moved to another home. A lease goes back
    /// for the API it was asked for.
    #[tokio::test]
    async fn each_ask_goes_out_for_the_api_of_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let source = Arc::new(Recorded {
            book: BookSource::new(origin.book().unwrap().clone(), "pop-a"),
            asks: std::sync::Mutex::new(Vec::new()),
            after_return: std::sync::Mutex::new(Vec::new()),
            returns: std::sync::Mutex::new(Vec::new()),
        });
        let q = Arc::new(Quotas::remote(Arc::clone(&source) as Arc<dyn LeaseSource>));
        assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        // Requests to "b" spend the lease in hand (3), then ask for the next.
        for _ in 0..40 {
            if lock(&source.asks).len() >= 2 && !lock(&source.returns).is_empty() {
                break;
            }
            assert_eq!(q.spend("b", "p", "k", SPEC).await, QuotaOutcome::Accepted);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(*lock(&source.asks), ["a", "b"]);
        assert_eq!(*lock(&source.returns), ["a"], "a's lease went back for a");
        q.surrender_home(|api| api == "b").await;
        assert_eq!(*lock(&source.returns), ["a", "b"]);
        // The first ask held nothing, the refill held a lease (returned
        // after it), and the ask after the surrender holds nothing again.
        assert_eq!(q.spend("b", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        assert_eq!(*lock(&source.after_return), [true, false, true]);
    }

    /// A book whose key is spent, and whose period ends in half a second
    /// (on this clock, as the PoP translates it).
    struct SpentUntil(i64);

    impl LeaseSource for SpentUntil {
        fn grant(&self, _: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            let end = self.0;
            Box::pin(async move {
                Ok(Lease {
                    id: portico_quota::EMPTY_LEASE,
                    granted: 0,
                    expires_ms: end,
                    period_end_ms: end,
                    exhausted: true,
                })
            })
        }
        fn give_back(&self, _: Arc<str>, _: u64, _: u64) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    /// A spent key's clients are told to come back when the book's period
    /// ends, not when this node's calendar says (a day away here).
    #[tokio::test]
    async fn an_exhausted_quota_renews_when_the_books_period_ends() {
        let q = Arc::new(Quotas::remote(Arc::new(SpentUntil(now_ms() + 500))));
        let QuotaOutcome::Exhausted { retry_after } = q.spend("a", "p", "k", SPEC).await else {
            panic!("the quota is spent");
        };
        assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
    }

    /// How many wallets `q` keeps.
    fn slots(q: &Quotas) -> usize {
        lock(&q.slots).values().map(HashMap::len).sum()
    }

    /// A key no request spends on any more (deleted, or used once) leaves
    /// no wallet behind once its lease went back and it was idle a while;
    /// one a request still holds stays, and a forgotten key spends again.
    #[tokio::test]
    async fn idle_wallets_are_forgotten_and_those_in_use_kept() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let book = origin.book().unwrap().clone();
        let source = BookSource::new(book.clone(), "pop");
        let pop = Arc::new(Quotas::remote(Arc::new(source)));
        let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
        for key in &keys {
            assert_eq!(pop.spend("a", "p", key, SPEC).await, QuotaOutcome::Accepted);
        }
        assert_eq!(slots(&pop), 50);
        // Leases held and just used: all stay.
        pop.sweep().await;
        assert_eq!(slots(&pop), 50);
        // A request still holds one (as one waiting for its refill does).
        let in_use = pop.slot("a", "p", "k0");
        let later = now_ms() + IDLE_SLOT_MS + LEASE_TTL_MS;
        pop.sweep_at(later).await;
        assert_eq!(slots(&pop), 1);
        for key in &keys {
            let used = book.usage("p", key, SPEC, now_ms()).await.unwrap().used;
            assert_eq!(used, 1, "{key}'s lease went back before its wallet went");
        }
        drop(in_use);
        pop.sweep_at(later).await;
        assert_eq!(slots(&pop), 0);
        assert!(lock(&pop.slots).is_empty(), "the plan's map went too");
        // A forgotten key spends as a new one does.
        assert_eq!(
            pop.spend("a", "p", "k1", SPEC).await,
            QuotaOutcome::Accepted
        );
        assert_eq!(book.usage("p", "k1", SPEC, now_ms()).await.unwrap().used, 4);
    }

    /// A source whose returns never arrive.
    struct Stuck(BookSource);

    impl LeaseSource for Stuck {
        fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            self.0.grant(ask)
        }
        fn give_back(&self, _: Arc<str>, _: u64, _: u64) -> BoxFuture<'_, ()> {
            Box::pin(std::future::pending())
        }
    }

    /// A return whose task is cancelled leaves the key free to ask again.
    #[tokio::test]
    async fn a_cancelled_return_does_not_stop_refills() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let source = Stuck(BookSource::new(origin.book().unwrap().clone(), "pop-a"));
        let q = Arc::new(Quotas::remote(Arc::new(source)));
        assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        let surrender = q.surrender_home(|_| true);
        let cancelled = tokio::time::timeout(Duration::from_millis(50), surrender).await;
        assert!(cancelled.is_err(), "the return never arrives");
        // Not held back by the return that will not come: a new lease.
        assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
    }

    /// After a reconnect, a PoP surrenders its lease and its next request
    /// asks for a new one: the return reaches the source first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_surrendered_lease_goes_back_before_the_next_ask() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let source = Arc::new(Ordered {
            book: BookSource::new(origin.book().unwrap().clone(), "pop-a"),
            log: std::sync::Mutex::new(Vec::new()),
            returning: tokio::sync::Notify::new(),
        });
        let q = Arc::new(Quotas::remote(Arc::clone(&source) as Arc<dyn LeaseSource>));
        assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        let surrender = {
            let q = Arc::clone(&q);
            tokio::spawn(async move { q.surrender_home(|_| true).await })
        };
        // The return is on its way when the next request arrives.
        source.returning.notified().await;
        assert_eq!(q.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        surrender.await.unwrap();
        assert_eq!(*lock(&source.log), ["grant", "return", "grant"]);
        q.close().await;
        assert_eq!(origin.usage("p", "k", SPEC).await.unwrap().used, 2);
    }

    /// The book's grant, then a slow way back (a far origin): the lease is
    /// committed before the asker hears of it.
    struct SlowBack(BookSource);

    impl LeaseSource for SlowBack {
        fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            Box::pin(async move {
                let lease = self.0.grant(ask).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                lease
            })
        }
        fn give_back(&self, api: Arc<str>, id: u64, unused: u64) -> BoxFuture<'_, ()> {
            self.0.give_back(api, id, unused)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refill_outlives_the_worker_runtime_of_the_request_that_asked() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let source = SlowBack(BookSource::new(origin.book().unwrap().clone(), "pop-a"));
        let q = Arc::new(Quotas::remote(Arc::new(source)));
        // A listener worker: its request gives up while the lease is on its
        // way, then the worker's runtime ends (as at shutdown).
        let on_worker = Arc::clone(&q);
        std::thread::spawn(move || {
            let rt = crate::workers::current_thread_runtime().unwrap();
            rt.block_on(async {
                let spend = on_worker.spend("a", "p", "k", SPEC);
                let gave_up = tokio::time::timeout(Duration::from_millis(20), spend).await;
                assert!(gave_up.is_err(), "the lease came back too soon");
            });
        })
        .join()
        .unwrap();
        // The book granted the lease; it is installed and handed back whole.
        q.close().await;
        assert_eq!(origin.usage("p", "k", SPEC).await.unwrap().used, 0);
    }

    struct Down;

    impl LeaseSource for Down {
        fn grant(&self, _: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            Box::pin(async { Err("link down".to_owned()) })
        }
        fn give_back(&self, _: Arc<str>, _: u64, _: u64) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn an_unreachable_source_fails_at_once() {
        let q = Arc::new(Quotas::remote(Arc::new(Down)));
        let started = std::time::Instant::now();
        assert_eq!(
            q.spend("a", "p", "k", SPEC).await,
            QuotaOutcome::Unavailable
        );
        assert!(started.elapsed() < WAIT, "no wait for a source that failed");
    }

    #[tokio::test]
    async fn swept_and_surrendered_leases_go_back_to_the_book() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let book = origin.book().unwrap().clone();
        let pop = Arc::new(Quotas::remote(Arc::new(BookSource::new(
            book.clone(),
            "pop",
        ))));
        assert_eq!(pop.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        let held = book.usage("p", "k", SPEC, now_ms()).await.unwrap().used;
        // A quota of 50: leases of 50 / 16 = 3 at first.
        assert_eq!(held, 3, "the lease counts as used while held");
        pop.sweep().await;
        assert!(
            book.usage("p", "k", SPEC, now_ms()).await.unwrap().used > 1,
            "a live lease stays"
        );
        pop.surrender_home(|api| api == "other").await;
        assert!(book.usage("p", "k", SPEC, now_ms()).await.unwrap().used > 1);
        pop.surrender_home(|api| api == "a").await;
        assert_eq!(book.usage("p", "k", SPEC, now_ms()).await.unwrap().used, 1);
    }

    /// A book reached over a slow link.
    struct Slow(BookSource);

    impl LeaseSource for Slow {
        fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.0.grant(ask).await
            })
        }
        fn give_back(&self, api: Arc<str>, id: u64, unused: u64) -> BoxFuture<'_, ()> {
            self.0.give_back(api, id, unused)
        }
    }

    #[tokio::test]
    async fn close_waits_for_refills_in_flight_and_returns_them_too() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Quotas::open(&dir.path().join("q.redb"), "origin").unwrap();
        let book = origin.book().unwrap().clone();
        let source = Slow(BookSource::new(book.clone(), "pop"));
        let pop = Arc::new(Quotas::remote(Arc::new(source)));
        // A first lease of 3; the second request leaves 1 and starts a refill.
        for _ in 0..2 {
            assert_eq!(pop.spend("a", "p", "k", SPEC).await, QuotaOutcome::Accepted);
        }
        pop.close().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(book.usage("p", "k", SPEC, now_ms()).await.unwrap().used, 2);
        // Closed: nothing more is asked for.
        assert_eq!(
            pop.spend("a", "p", "k", SPEC).await,
            QuotaOutcome::Unavailable
        );
        assert_eq!(book.usage("p", "k", SPEC, now_ms()).await.unwrap().used, 2);
    }
}
