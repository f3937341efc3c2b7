//! Usage-plan quotas over the backbone.
//!
//! The origin's quota book is the one authority. A PoP spends from leases the
//! book granted it ([`PopLeases`], a [`LeaseSource`]): it sends
//! `QuotaLeaseRequest` on the control stream of its API's home origin and
//! gets a `QuotaLease`; the origin ([`OriginLeases`]) deducts the lease from
//! the book, durably, before answering. Unspent requests come back with the
//! next request, in `QuotaReturn` when a lease expires or at shutdown, and
//! after a reconnect (the PoP surrenders what it held from that origin).
//!
//! A region with several origins: a PoP leases from the one with the lowest
//! node id among those it is connected to (each origin keeps its own book),
//! except that a key's ask right after its lease went back follows that
//! return to its origin ([`PopLeases::link_to_ask`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use portico_backbone::{ControlHandler, ControlLink, SyncedConfig};
use portico_config::{ApiKey, Definitions, UsagePlan};
use portico_gateway::limits::{BookSource, BoxFuture, LEASE_TTL_MS, LeaseAsk, LeaseSource, Quotas};
use portico_proto::{Frame, FrameKind, QuotaLease, QuotaLeaseRequest, QuotaReturn};
use portico_quota::{EMPTY_LEASE, Lease};
use tokio::sync::{mpsc, oneshot, watch};

/// Control frames of quota leases.
pub const KINDS: &[FrameKind] = &[
    FrameKind::QuotaLeaseRequest,
    FrameKind::QuotaLease,
    FrameKind::QuotaReturn,
];

/// How long a PoP waits for a lease before spending only what it holds.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn signed_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Usage plan `plan` of `defs` and its key `key_id`, as a PoP names them;
/// otherwise why they are refused.
pub fn plan_and_key<'a>(
    defs: &'a Definitions,
    plan: &str,
    key_id: &str,
) -> Result<(&'a UsagePlan, &'a ApiKey), String> {
    let plan = defs
        .usage_plan(plan)
        .ok_or_else(|| format!("unknown usage plan `{plan}`"))?;
    let key = defs
        .api_key(key_id)
        .ok_or_else(|| format!("unknown API key `{key_id}`"))?;
    if !key.plans.contains(&plan.name) {
        return Err(format!("key `{}` is not in plan `{}`", key.id, plan.name));
    }
    Ok((plan, key))
}

/// The origin's side: grants leases from its book to PoPs.
///
/// Lease requests and returns are answered one at a time, in the order the
/// links delivered them: a PoP that returns a lease and then asks for the
/// next one (as after a reconnect) must have its return in the book first,
/// or the ask may find the quota spent. A task per frame gave no such order.
pub struct OriginLeases {
    /// The queue of the task that answers quota frames in order, and the
    /// task; `None` once closed.
    answering: Mutex<Option<Answering>>,
}

type Answering = (
    mpsc::Sender<(ControlLink, QuotaFrame)>,
    tokio::task::JoinHandle<()>,
);

/// The control frames [`OriginLeases`] answers.
enum QuotaFrame {
    Ask(QuotaLeaseRequest),
    Return(QuotaReturn),
}

/// Quota frames waiting for the book; beyond this a frame is dropped (a
/// PoP's ask then times out and it spends only what it holds).
const QUEUE: usize = 4096;

struct Granter {
    quotas: Arc<Quotas>,
    definitions: watch::Receiver<Arc<Definitions>>,
}

impl OriginLeases {
    /// Starts the task that answers quota frames, on the node's runtime
    /// (not a link's, which ends with its links at the stop, before what
    /// it queued was answered): call within it.
    pub fn new(quotas: Arc<Quotas>, definitions: watch::Receiver<Arc<Definitions>>) -> Arc<Self> {
        let granter = Granter {
            quotas,
            definitions,
        };
        let (tx, mut rx) = mpsc::channel::<(ControlLink, QuotaFrame)>(QUEUE);
        let task = tokio::spawn(async move {
            while let Some((link, frame)) = rx.recv().await {
                match frame {
                    QuotaFrame::Ask(req) => granter.answer(&link, req).await,
                    QuotaFrame::Return(r) => {
                        granter.release(&link, r.lease_id, r.unused).await;
                    }
                }
            }
        });
        Arc::new(Self {
            answering: Mutex::new(Some((tx, task))),
        })
    }

    /// At the stop, once no link delivers frames any more: answers what is
    /// queued (returns go into the book; a lease for a link that closed goes
    /// straight back) within `within`, and takes no more.
    pub async fn close(&self, within: Duration) {
        let Some((queue, mut task)) = lock(&self.answering).take() else {
            return;
        };
        // Its queue gone, the task ends once it has answered the rest.
        drop(queue);
        if tokio::time::timeout(within, &mut task).await.is_err() {
            tracing::error!("quota frames from PoPs not answered before exit");
            // Ended before the book closes, not left running beside it.
            task.abort();
            let _ = task.await;
        }
    }
}

impl Granter {
    /// Answers one lease request: the returned lease first, then the grant.
    async fn answer(&self, link: &ControlLink, req: QuotaLeaseRequest) {
        let Some(book) = self.quotas.book() else {
            return;
        };
        let pop = link.peer_id();
        if let Some(id) = req.lease_id_to_return {
            self.release(link, id, req.unused).await;
        }
        let refused = |why: &str| {
            tracing::warn!(%pop, plan = %req.plan, key = %req.key_id, "quota lease refused: {why}");
            QuotaLease {
                lease_id: 0,
                key_id: req.key_id.clone(),
                plan: req.plan.clone(),
                granted: 0,
                expires_unix_ms: 0,
                period_end_unix_ms: 0,
                exhausted: false,
            }
        };
        let spec = {
            let defs = self.definitions.borrow();
            plan_and_key(&defs, &req.plan, &req.key_id)
                .and_then(|(plan, _)| plan.quota.ok_or_else(|| "the plan has no quota".into()))
        };
        let answer = match spec {
            Err(why) => refused(&why),
            Ok(spec) => {
                let want = req.want.clamp(1, spec.limit.max(1));
                match BookSource::grant_to(book, pop, &req.plan, &req.key_id, spec, want).await {
                    Ok(lease) => lease_frame(&req, &lease),
                    Err(err) => refused(&err.to_string()),
                }
            }
        };
        // Never waits for the outbox: this one task answers every PoP, and a
        // PoP that stopped reading its control stream must not stall the
        // others. A lease it will never see goes back to the book at once.
        let (lease_id, granted) = (answer.lease_id, answer.granted);
        if let Err(err) = link.try_send(Frame::QuotaLease(answer)) {
            tracing::warn!(%pop, %err, "quota lease not sent");
            if lease_id != 0 {
                self.release(link, lease_id, granted).await;
            }
        }
    }

    async fn release(&self, link: &ControlLink, id: u64, unused: u64) {
        let Some(book) = self.quotas.book() else {
            return;
        };
        if let Err(err) = BookSource::release_from(book, link.peer_id(), id, unused).await {
            tracing::warn!(pop = %link.peer_id(), lease = id, unused, %err, "quota return refused");
        }
    }
}

fn lease_frame(req: &QuotaLeaseRequest, lease: &Lease) -> QuotaLease {
    QuotaLease {
        lease_id: lease.id,
        key_id: req.key_id.clone(),
        plan: req.plan.clone(),
        granted: lease.granted,
        expires_unix_ms: unix_ms(lease.expires_ms),
        period_end_unix_ms: unix_ms(lease.period_end_ms),
        exhausted: lease.exhausted,
    }
}

impl ControlHandler for OriginLeases {
    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        // The handler may not wait: book writes run on the queue's task.
        let frame = match frame {
            Frame::QuotaLeaseRequest(req) => QuotaFrame::Ask(req),
            Frame::QuotaReturn(r) => QuotaFrame::Return(r),
            other => return tracing::debug!(frame = %other.kind(), "control frame ignored"),
        };
        let answering = lock(&self.answering);
        let Some((queue, _)) = answering.as_ref() else {
            return tracing::warn!(pop = %link.peer_id(), "quota frame after the stop: dropped");
        };
        if queue.try_send((link.clone(), frame)).is_err() {
            tracing::warn!(pop = %link.peer_id(), "quota frame dropped: the book is behind");
        }
    }
}

/// Asks in flight by (plan, key id), each with the link it went out on:
/// only that link's answer is its answer.
type Pending = HashMap<(String, String), (ControlLink, oneshot::Sender<QuotaLease>)>;

/// A (plan, key id) pair, as the wallets name them.
type Key = (Arc<str>, Arc<str>);

/// A lease this PoP holds, under the id its wallet knows it by.
struct Granted {
    /// The (plan, key) it was granted for.
    key: Key,
    /// The origin (node id) whose book granted it, and its region.
    origin: String,
    region: String,
    /// Its id in that origin's book (each book draws where its ids start,
    /// and jumps on at every opening: see `QuotaBook::open`).
    origin_id: u64,
    expires_ms: i64,
}

/// The leases a PoP holds, and how many there were when it last pruned.
#[derive(Default)]
struct Held {
    by_id: HashMap<u64, Granted>,
    pruned_at: usize,
}

/// The PoP's side: leases from the home origin of each API.
#[derive(Default)]
pub struct PopLeases {
    /// Open links by origin node id, with their region.
    links: crate::control::Links,
    /// Leases held, by the PoP's own id for each: a lease goes back to the
    /// book that granted it, whichever origin now leases for its API.
    granted: Mutex<Held>,
    next_id: std::sync::atomic::AtomicU64,
    /// Asks in flight, by (plan, key id): a wallet has at most one at a time.
    pending: Mutex<Pending>,
    /// API name → home region, from the synced configuration.
    homes: OnceLock<watch::Receiver<Arc<SyncedConfig>>>,
    /// The wallets, to surrender a reconnected origin's leases.
    quotas: OnceLock<std::sync::Weak<Quotas>>,
    /// How far each origin's clock is ahead of this PoP's (ms; negative:
    /// behind), as its last uncut lease showed: its period ends are on its
    /// clock.
    clocks: Mutex<HashMap<String, i64>>,
    /// Returns waiting for their origin's next link, oldest first.
    unreturned: Mutex<VecDeque<Unreturned>>,
    /// Where each key's last return went (see [`PopLeases::link_to_ask`]).
    followed: Mutex<Followed>,
}

/// The origin each key's last return went to, and when (this PoP's
/// clock), pruned as [`Held`] is.
#[derive(Default)]
struct Followed {
    by_key: HashMap<Key, (String, i64)>,
    pruned_at: usize,
}

/// How long after a key's return its next ask may follow it (see
/// [`PopLeases::link_to_ask`]): well past the time a return waits in an
/// origin's queue while asks there are still answered (2 s). A later ask
/// goes to the lowest node id as any does.
const FOLLOW_MS: i64 = 10_000;

impl PopLeases {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Completes the wiring once the backbone and the wallets exist.
    pub fn attach(&self, config: watch::Receiver<Arc<SyncedConfig>>, quotas: &Arc<Quotas>) {
        let _ = self.homes.set(config);
        let _ = self.quotas.set(Arc::downgrade(quotas));
    }

    fn home(&self, api: &str) -> Option<String> {
        self.homes.get()?.borrow().home_of(api).map(str::to_owned)
    }

    /// Remembers a lease from `link` and names it for the wallet. Entries a
    /// wallet never gave back (it was dropped) go once long expired.
    fn remember(&self, link: &ControlLink, key: Key, origin_id: u64, expires_ms: i64) -> u64 {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let now = portico_gateway::limits::now_ms();
        let mut held = lock(&self.granted);
        // Pruned when it has doubled since: each grant costs O(1) on average.
        if held.by_id.len() >= 2 * held.pruned_at.max(64) {
            held.by_id
                .retain(|_, g| g.expires_ms.saturating_add(LEASE_TTL_MS) > now);
            held.pruned_at = held.by_id.len();
        }
        held.by_id.insert(
            id,
            Granted {
                key,
                origin: link.peer_id().to_owned(),
                region: link.region().to_owned(),
                origin_id,
                expires_ms,
            },
        );
        id
    }

    /// The link that leases for `api`: the lowest node id of its home
    /// region. An API without a known home (removed since, or not synced
    /// yet) has none: any region's origin would lease from a book that is
    /// not the API's, or refuse it.
    fn link_for(&self, api: &str) -> Result<ControlLink, String> {
        let region = self
            .home(api)
            .ok_or_else(|| format!("API {api} has no known home region"))?;
        self.links
            .open()
            .into_iter()
            .filter(|l| l.is_open() && l.region() == region)
            .min_by(|a, b| a.peer_id().cmp(b.peer_id()))
            .ok_or_else(|| format!("no backbone link to the home of API {api} ({region})"))
    }

    /// The link `ask` goes out on: [`PopLeases::link_for`] its API, except
    /// that an ask after its key's lease went back ([`LeaseAsk::after_return`])
    /// goes where that return went, if within [`FOLLOW_MS`] and the link is
    /// still open and of the API's home region. Replicas sharing a book
    /// answer each link in order, but not one link's frames against
    /// another's: after a reconnect the PoP returns a lease to the replica
    /// that granted it, and an ask to the lowest node id could run in the
    /// book first and find the quota spent (429 for a second while it was
    /// not). With books of their own, the ask leases once more from the
    /// book the key's last lease came from; the next refill, which holds a
    /// lease, asks the lowest node id again (asks that followed every
    /// return would swap between two origins for good).
    fn link_to_ask(&self, ask: &LeaseAsk) -> Result<ControlLink, String> {
        let key = (Arc::clone(&ask.plan), Arc::clone(&ask.key_id));
        let now = portico_gateway::limits::now_ms();
        let followed = lock(&self.followed).by_key.remove(&key);
        let followed = followed.filter(|(_, at)| ask.after_return && now - at < FOLLOW_MS);
        if let Some((origin, _)) = followed {
            let region = self.home(&ask.api);
            let link = self.links.open().into_iter().find(|l| {
                l.is_open() && l.peer_id() == origin && Some(l.region()) == region.as_deref()
            });
            if let Some(link) = link {
                return Ok(link);
            }
        }
        self.link_for(&ask.api)
    }

    /// Notes that `key`'s return went out on `link` (see
    /// [`PopLeases::link_to_ask`]).
    fn follow(&self, key: Key, link: &ControlLink) {
        let now = portico_gateway::limits::now_ms();
        let mut followed = lock(&self.followed);
        if followed.by_key.len() >= 2 * followed.pruned_at.max(64) {
            followed.by_key.retain(|_, (_, at)| now - *at < FOLLOW_MS);
            followed.pruned_at = followed.by_key.len();
        }
        followed
            .by_key
            .insert(key, (link.peer_id().to_owned(), now));
    }
}

/// When a lease ends on this PoP's clock. The origin says when on its own
/// clock, and a PoP whose clock ran a minute ahead found every lease expired
/// on arrival. A lease lasts `LEASE_TTL_MS` from its grant, which came after
/// `asked_at`; one the period's end cuts short ends then, translated by how
/// far the origin's clock is `ahead`, and no later.
fn local_expiry(asked_at: i64, lease: &QuotaLease, ahead: i64) -> i64 {
    let full = asked_at.saturating_add(LEASE_TTL_MS);
    if lease.expires_unix_ms < lease.period_end_unix_ms {
        full
    } else {
        signed_ms(lease.expires_unix_ms)
            .saturating_sub(ahead)
            .min(full)
    }
}

impl PopLeases {
    /// How far `origin`'s clock is ahead of this PoP's. A lease the period's
    /// end does not cut short expires `LEASE_TTL_MS` after its grant on the
    /// origin's clock, and was granted between the ask and the answer on
    /// ours: their midpoint, within half a round trip. A cut lease tells
    /// nothing: the origin's last known offset (none yet: 0).
    fn origin_clock(
        &self,
        origin: &str,
        asked_at: i64,
        answered_at: i64,
        lease: &QuotaLease,
    ) -> i64 {
        let mut clocks = lock(&self.clocks);
        if lease.expires_unix_ms < lease.period_end_unix_ms {
            let granted_there = signed_ms(lease.expires_unix_ms).saturating_sub(LEASE_TTL_MS);
            let granted_here = asked_at + (answered_at - asked_at) / 2;
            let ahead = granted_there.saturating_sub(granted_here);
            clocks.insert(origin.to_owned(), ahead);
            return ahead;
        }
        clocks.get(origin).copied().unwrap_or(0)
    }
}

/// What a PoP may spend of a lease: never more than it asked for. An origin
/// that grants more (a bug, or a peer gone wrong) has counted the excess as
/// used in its book, so holding back is the side that cannot overshoot.
fn within_ask(granted: u64, want: u64) -> u64 {
    if granted > want {
        tracing::warn!(
            granted,
            want,
            "origin granted more quota than asked; spending what was asked"
        );
    }
    granted.min(want)
}

impl LeaseSource for PopLeases {
    fn grant(&self, ask: LeaseAsk) -> BoxFuture<'_, Result<Lease, String>> {
        Box::pin(async move {
            let link = self.link_to_ask(&ask)?;
            let id = (ask.plan.to_string(), ask.key_id.to_string());
            let (tx, mut rx) = oneshot::channel();
            let asked_at = portico_gateway::limits::now_ms();
            lock(&self.pending).insert(id.clone(), (link.clone(), tx));
            let frame = Frame::QuotaLeaseRequest(QuotaLeaseRequest {
                key_id: id.1.clone(),
                plan: id.0.clone(),
                want: ask.want,
                lease_id_to_return: None,
                unused: 0,
            });
            if let Err(err) = link.try_send(frame) {
                lock(&self.pending).remove(&id);
                return Err(format!("lease request not sent: {err}"));
            }
            let answer = match tokio::time::timeout(ASK_TIMEOUT, &mut rx).await {
                Ok(answer) => answer.map_err(|_| "lease request dropped"),
                // The answer may have been sent after the receiver was last
                // polled: closed, the receiver keeps what came before (taken
                // here) and refuses what comes after (the sender hands that
                // back as late), so no lease the book counted is held by no
                // one, as it was when the receiver went with the time-out.
                Err(_) => {
                    rx.close();
                    rx.try_recv().map_err(|_| "no lease within 2 s")
                }
            };
            lock(&self.pending).remove(&id);
            match answer {
                Ok(lease) if lease.lease_id == 0 => {
                    Err("the origin refused the lease (see its log)".to_owned())
                }
                Ok(lease) => {
                    let answered_at = portico_gateway::limits::now_ms();
                    let ahead = self.origin_clock(link.peer_id(), asked_at, answered_at, &lease);
                    let expires_ms = local_expiry(asked_at, &lease, ahead);
                    // An empty answer (the key is spent) names no lease in
                    // the book: nothing to remember, nothing to hand back.
                    let (id, granted) = match lease.lease_id {
                        EMPTY_LEASE => (EMPTY_LEASE, 0),
                        id => (
                            self.remember(
                                &link,
                                (ask.plan.clone(), ask.key_id.clone()),
                                id,
                                expires_ms,
                            ),
                            within_ask(lease.granted, ask.want),
                        ),
                    };
                    Ok(Lease {
                        id,
                        granted,
                        expires_ms,
                        period_end_ms: signed_ms(lease.period_end_unix_ms).saturating_sub(ahead),
                        exhausted: lease.exhausted,
                    })
                }
                Err(why) => Err(why.to_owned()),
            }
        })
    }

    fn give_back(&self, api: Arc<str>, lease_id: u64, unused: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // An empty lease was never the book's: a return of it would only
            // load the origin's one answering queue, once a second for every
            // spent key of every PoP.
            if lease_id == EMPTY_LEASE {
                return;
            }
            let Some(g) = lock(&self.granted).by_id.remove(&lease_id) else {
                return tracing::debug!(%api, lease = lease_id, "no such quota lease to return");
            };
            let back = Unreturned {
                origin: g.origin,
                region: g.region.clone(),
                lease_id: g.origin_id,
                unused,
            };
            // To the origin that granted it; while its link is down, to
            // another origin of its region: replicas that share their book
            // (`[quotas] store`) take it there, and an origin with a book of
            // its own finds no such lease and refuses it (each book draws
            // where its ids start: see `QuotaBook::open`), changing nothing.
            // With neither, it waits for the granting origin's next link.
            let open: Vec<ControlLink> = self
                .links
                .open()
                .into_iter()
                .filter(|l| l.is_open())
                .collect();
            let granter = open.iter().find(|l| l.peer_id() == back.origin);
            let sibling = || {
                open.iter()
                    .filter(|l| l.region() == g.region)
                    .min_by(|a, b| a.peer_id().cmp(b.peer_id()))
            };
            match granter.or_else(sibling) {
                Some(link) => {
                    let to_granter = link.peer_id() == back.origin;
                    if self.send_return(link, back) {
                        self.follow(g.key, link);
                        if to_granter {
                            // The link takes frames again: what waited for it goes.
                            self.send_kept(link);
                        }
                    }
                }
                None => self.keep(back, "no link to its origin"),
            }
        })
    }
}

/// Returns that found no way to their origin (no link, or a link too busy
/// to take them), kept at most this many: each waits for its origin's next
/// link, instead of leaving its requests counted as used for good.
const MAX_UNRETURNED: usize = 4096;

/// A return waiting for its origin.
struct Unreturned {
    /// The node id of the origin whose book granted the lease.
    origin: String,
    /// Its region: while the granting origin has no link, another origin
    /// of the region takes the return (see [`PopLeases::give_back`]).
    region: String,
    /// The lease's id in that book.
    lease_id: u64,
    unused: u64,
}

impl PopLeases {
    /// Sends `back` on `link` without waiting (the sweep and the refill that
    /// return leases run on paths requests wait on); kept for its origin's
    /// next link if the link cannot take it now. Whether it was sent.
    fn send_return(&self, link: &ControlLink, back: Unreturned) -> bool {
        let frame = Frame::QuotaReturn(QuotaReturn {
            lease_id: back.lease_id,
            unused: back.unused,
        });
        match link.try_send(frame) {
            Ok(()) => true,
            Err(err) => {
                self.keep(back, &err.to_string());
                false
            }
        }
    }

    /// Keeps `back` until its origin's next link (see [`MAX_UNRETURNED`]).
    /// A return of nothing is not kept: it only ends a lease the book keeps
    /// no longer than its expiry and a while (it lowers no count).
    fn keep(&self, back: Unreturned, why: &str) {
        let (lease, unused) = (back.lease_id, back.unused);
        if unused == 0 {
            return tracing::debug!(lease, why, "empty quota return dropped");
        }
        tracing::warn!(lease, unused, origin = %back.origin, why, "quota return kept for the origin's next link");
        let mut kept = lock(&self.unreturned);
        if kept.len() >= MAX_UNRETURNED
            && let Some(dropped) = kept.pop_front()
        {
            // Counted as used in the book: stranded, never overshot.
            tracing::warn!(
                lease = dropped.lease_id,
                unused = dropped.unused,
                "quota return dropped: {MAX_UNRETURNED} wait already"
            );
        }
        kept.push_back(back);
    }

    /// Sends the returns kept for `link`'s origin on it, and those of other
    /// origins of its region that have no open link (as `give_back` would
    /// have, had a link of the region been up then: a granting origin that
    /// never comes back must not keep them for ever); those it cannot take
    /// now stay.
    fn send_kept(&self, link: &ControlLink) {
        let kept_any = !lock(&self.unreturned).is_empty();
        if !kept_any {
            return;
        }
        let open: Vec<String> = self
            .links
            .open()
            .into_iter()
            .filter(|l| l.is_open())
            .map(|l| l.peer_id().to_owned())
            .collect();
        let waiting: VecDeque<Unreturned> = {
            let mut kept = lock(&self.unreturned);
            let (mine, others): (VecDeque<_>, _) = kept.drain(..).partition(|b| {
                b.origin == link.peer_id()
                    || (b.region == link.region() && !open.contains(&b.origin))
            });
            *kept = others;
            mine
        };
        for back in waiting {
            self.send_return(link, back);
        }
    }
}

impl ControlHandler for PopLeases {
    fn link_up(&self, link: &ControlLink) {
        // Returns that waited for this origin go first: before any ask on
        // the new link, which could otherwise find their requests counted.
        self.send_kept(link);
        self.links.up(link);
        // Reconcile: what this PoP held from that region goes back now (the
        // origin may have restarted; it keeps the leases in its book).
        let Some(quotas) = self.quotas.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let region = link.region().to_owned();
        let homes = self.homes.get().cloned();
        tokio::spawn(async move {
            let home = |api: &str| {
                homes
                    .as_ref()
                    .is_none_or(|h| h.borrow().home_of(api) == Some(region.as_str()))
            };
            quotas.surrender_home(home).await;
        });
    }

    fn link_down(&self, link: &ControlLink) {
        self.links.down(link);
        // Its asks will not be answered: they fail now rather than wait out
        // their time (dropping the sender ends each).
        lock(&self.pending).retain(|_, (asked, _)| !asked.is_same(link));
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        let Frame::QuotaLease(lease) = frame else {
            tracing::debug!(frame = %frame.kind(), "control frame ignored");
            return;
        };
        let id = (lease.plan.clone(), lease.key_id.clone());
        // Only the answer of the origin asked: a late answer from another
        // (asked before, timed out) is not this ask's, and is handed back
        // whole to the book that granted it.
        let waiting = {
            let mut pending = lock(&self.pending);
            match pending.get(&id) {
                Some((asked, _)) if asked.is_same(link) => pending.remove(&id).map(|(_, tx)| tx),
                _ => None,
            }
        };
        let late = match waiting {
            Some(tx) => tx.send(lease).err(),
            None => Some(lease),
        };
        // Nobody waits any more (timed out): hand the whole lease back (a
        // refusal or an empty answer has nothing to hand back).
        if let Some(lease) = late.filter(|l| l.lease_id != 0 && l.lease_id != EMPTY_LEASE) {
            let back = Unreturned {
                origin: link.peer_id().to_owned(),
                region: link.region().to_owned(),
                lease_id: lease.lease_id,
                unused: lease.granted,
            };
            self.send_return(link, back);
        }
    }
}

#[cfg(test)]
mod tests {
    use portico_gateway::keys::stored_form;
    use portico_proto::Capabilities;

    use super::*;

    const DEFINITIONS: &str = r#"
[[apis]]
name = "edge"
endpoint = "edge"
[[apis.routes]]
method = "GET"
path = "/"
integration = { type = "mock", status = 200, body = "ok" }
[[apis.stages]]
name = "prod"
[[usage_plans]]
name = "p"
quota = { limit = 10, period = "DAY" }
api_stages = [{ api = "edge", stage = "prod" }]
[[api_keys]]
id = "k"
hash = "HASH"
plans = ["p"]
"#;

    /// An origin's leases of [`DEFINITIONS`], its book in `dir`.
    fn origin_leases(dir: &std::path::Path) -> Arc<OriginLeases> {
        origin_leases_and_book(dir).0
    }

    /// [`origin_leases`], and the book they grant from; a quota of 10 a day.
    fn origin_leases_and_book(
        dir: &std::path::Path,
    ) -> (
        Arc<OriginLeases>,
        portico_quota::Book,
        portico_quota::QuotaSpec,
    ) {
        let quotas = Arc::new(Quotas::open(&dir.join("q.redb"), "origin").unwrap());
        let book = quotas.book().unwrap().clone();
        let text = DEFINITIONS.replace("HASH", &stored_form("a-key-of-twenty-chars"));
        let defs = Definitions::from_toml_str(&text, "origin").unwrap();
        let (_defs_tx, defs_rx) = watch::channel(Arc::new(defs));
        let spec = portico_quota::QuotaSpec {
            limit: 10,
            period: portico_quota::Period::Day,
            offset: 0,
        };
        (OriginLeases::new(quotas, defs_rx), book, spec)
    }

    /// At the stop, what PoPs sent before their links closed is answered
    /// before the node goes on to close its book: a return queued then is
    /// in the book, and a frame after the close is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn returns_queued_at_the_stop_reach_the_book() {
        let dir = tempfile::tempdir().unwrap();
        let (leases, book, spec) = origin_leases_and_book(dir.path());
        let (link, _outbox) = ControlLink::new("pop-a", "", Capabilities(0));
        let mut returns = Vec::new();
        for _ in 0..5 {
            let held = BookSource::grant_to(&book, "pop-a", "p", "k", spec, 2).await;
            returns.push(held.unwrap().id);
        }
        for lease_id in returns {
            let back = QuotaReturn {
                lease_id,
                unused: 2,
            };
            leases.on_frame(&link, Frame::QuotaReturn(back));
        }
        leases.close(Duration::from_secs(10)).await;
        let again = BookSource::grant_to(&book, "pop-b", "p", "k", spec, 10).await;
        assert_eq!(again.unwrap().granted, 10, "every return reached the book");
        let late = QuotaReturn {
            lease_id: 1,
            unused: 1,
        };
        leases.on_frame(&link, Frame::QuotaReturn(late));
    }

    /// A PoP that stopped reading its control stream (its outbox full) holds
    /// up no other PoP's answer, and the lease it cannot be sent goes back
    /// to the book: the next PoP gets the whole quota.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pop_that_stopped_reading_holds_up_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let leases = origin_leases(dir.path());
        let (stalled, _unread) = ControlLink::new("pop-a", "", Capabilities(0));
        while stalled
            .try_send(Frame::Ping(portico_proto::Ping { nonce: 0 }))
            .is_ok()
        {}
        let (reading, mut outbox) = ControlLink::new("pop-b", "", Capabilities(0));
        let ask = || QuotaLeaseRequest {
            key_id: "k".into(),
            plan: "p".into(),
            want: 10,
            lease_id_to_return: None,
            unused: 0,
        };
        leases.on_frame(&stalled, Frame::QuotaLeaseRequest(ask()));
        leases.on_frame(&reading, Frame::QuotaLeaseRequest(ask()));
        let answer = tokio::time::timeout(Duration::from_secs(10), outbox.recv()).await;
        let Ok(Some(Frame::QuotaLease(lease))) = answer else {
            panic!("pop-b got no answer: {answer:?}");
        };
        // All 10: pop-a's undelivered lease went back before pop-b asked.
        assert_eq!(lease.granted, 10);
    }

    /// A lease request as a PoP could write it, bypassing its codec's
    /// checks: key `k`, a plan of `plan_len` bytes.
    fn raw_ask(plan_len: usize) -> bytes::BytesMut {
        use bytes::BufMut;
        let tag = u8::try_from(FrameKind::QuotaLeaseRequest.tag()).unwrap();
        let mut payload = vec![tag, 1, b'k'];
        match u16::try_from(plan_len) {
            Ok(n) if n < 251 => payload.push(n as u8),
            Ok(n) => {
                payload.push(251);
                payload.extend_from_slice(&n.to_le_bytes());
            }
            Err(_) => {
                payload.push(252);
                payload.extend_from_slice(&u32::try_from(plan_len).unwrap().to_le_bytes());
            }
        }
        payload.resize(payload.len() + plan_len, b'p');
        // want 1, no lease to return, unused 0
        payload.extend_from_slice(&[1, 0, 0]);
        let mut buf = bytes::BytesMut::new();
        buf.put_u32(u32::try_from(payload.len()).unwrap());
        buf.put_slice(&payload);
        buf
    }

    /// An ask for an unknown plan is refused with its plan and key echoed:
    /// the control stream's codec bounds them, so the answer stays small
    /// whatever the PoP sent (a 1 MiB plan does not get past decoding).
    #[tokio::test]
    async fn a_refused_ask_is_answered_in_a_small_frame() {
        let codec = portico_proto::Codec::with_max_frame(portico_proto::MAX_FRAME_LIMIT).unwrap();
        let huge = codec.decode(&mut raw_ask(1 << 20));
        assert!(
            matches!(&huge, Err(e) if e.as_str() == "over_limit"),
            "a 1 MiB plan got through: {}",
            huge.is_ok()
        );
        let dir = tempfile::tempdir().unwrap();
        let leases = origin_leases(dir.path());
        let (link, mut outbox) = ControlLink::new("pop-a", "", Capabilities(0));
        let longest = portico_proto::limits::MAX_ID;
        let ask = codec.decode(&mut raw_ask(longest)).unwrap().unwrap();
        leases.on_frame(&link, ask);
        let answer = tokio::time::timeout(Duration::from_secs(10), outbox.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(&answer, Frame::QuotaLease(l) if l.granted == 0 && l.plan.len() == longest)
        );
        let mut wire = bytes::BytesMut::new();
        codec.encode(&answer, &mut wire).unwrap();
        assert!(wire.len() < 2 * longest + 64, "{} bytes", wire.len());
    }

    /// An origin's answer is spent only up to what the PoP asked for: a
    /// grant of `u64::MAX` (a peer gone wrong) leaves the wallet holding 10.
    #[tokio::test]
    async fn a_pop_spends_no_more_of_a_lease_than_it_asked_for() {
        let leases = homed("");
        let (link, mut outbox) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&link);
        let huge = QuotaLease {
            granted: u64::MAX,
            ..lease(5, u64::MAX)
        };
        let held = granted(&leases, &link, &mut outbox, huge).await;
        assert_eq!(held.granted, 10);
    }

    /// A PoP's leases, API `edge` homed in `region`.
    fn homed(region: &str) -> Arc<PopLeases> {
        let leases = PopLeases::new();
        let homes = HashMap::from([("edge".to_owned(), region.to_owned())]);
        let config = SyncedConfig::new(Arc::new(Definitions::empty()), homes);
        let (_config_tx, config_rx) = watch::channel(Arc::new(config));
        assert!(leases.homes.set(config_rx).is_ok());
        leases
    }

    /// Leases go to the origins of an API's home region only; an API
    /// without a known home (removed, say) has no origin to ask.
    #[tokio::test]
    async fn an_api_without_a_known_home_has_no_origin_to_ask() {
        let leases = homed("eu");
        let (eu, _eu_out) = ControlLink::new("origin-eu", "eu", Capabilities(0));
        let (us, _us_out) = ControlLink::new("origin-a-us", "us", Capabilities(0));
        leases.link_up(&eu);
        leases.link_up(&us);
        assert_eq!(leases.link_for("edge").unwrap().peer_id(), "origin-eu");
        let err = leases.link_for("gone").unwrap_err();
        assert_eq!(err, "API gone has no known home region");
        let asked = leases
            .grant(LeaseAsk {
                api: "gone".into(),
                ..ask()
            })
            .await;
        assert_eq!(asked.unwrap_err(), err);
    }

    fn ask() -> LeaseAsk {
        LeaseAsk {
            after_return: false,
            api: "edge".into(),
            plan: "p".into(),
            key_id: "k".into(),
            spec: portico_quota::QuotaSpec {
                limit: 100,
                period: portico_quota::Period::Day,
                offset: 0,
            },
            want: 10,
        }
    }

    /// Asks `leases` for a lease and answers it on `link` with `lease`.
    async fn granted(
        leases: &Arc<PopLeases>,
        link: &ControlLink,
        outbox: &mut portico_backbone::Outbox,
        lease: QuotaLease,
    ) -> Lease {
        let asking = spawn_ask(leases);
        let sent = tokio::time::timeout(Duration::from_secs(10), outbox.recv()).await;
        let Ok(Some(Frame::QuotaLeaseRequest(req))) = sent else {
            panic!("no lease request: {sent:?}");
        };
        assert_eq!(req.want, 10);
        leases.on_frame(link, Frame::QuotaLease(lease));
        asking.await.unwrap().unwrap()
    }

    /// `leases` asking for [`ask`], in a task of its own.
    fn spawn_ask(leases: &Arc<PopLeases>) -> tokio::task::JoinHandle<Result<Lease, String>> {
        let leases = Arc::clone(leases);
        tokio::spawn(async move { leases.grant(ask()).await })
    }

    /// The lease id and unused count of the return `outbox` carries next
    /// (within 10 s).
    async fn next_return(outbox: &mut portico_backbone::Outbox) -> (u64, u64) {
        let back = tokio::time::timeout(Duration::from_secs(10), outbox.recv()).await;
        let Ok(Some(Frame::QuotaReturn(r))) = back else {
            panic!("no quota return: {back:?}");
        };
        (r.lease_id, r.unused)
    }

    /// The same of the return `outbox` holds now.
    fn queued_return(outbox: &mut portico_backbone::Outbox) -> (u64, u64) {
        let back = outbox.try_recv();
        let Ok(Frame::QuotaReturn(r)) = back else {
            panic!("no quota return queued: {back:?}");
        };
        (r.lease_id, r.unused)
    }

    fn lease(lease_id: u64, expires_unix_ms: u64) -> QuotaLease {
        QuotaLease {
            lease_id,
            key_id: "k".into(),
            plan: "p".into(),
            granted: 10,
            expires_unix_ms,
            period_end_unix_ms: u64::MAX,
            exhausted: false,
        }
    }

    /// A spent key's empty answers, installed one after the other (each
    /// refill hands the previous lease back), send no returns: they name
    /// nothing in the book.
    #[tokio::test]
    async fn empty_leases_are_not_handed_back() {
        let leases = homed("");
        let (link, mut outbox) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&link);
        let empty = || QuotaLease {
            granted: 0,
            exhausted: true,
            ..lease(EMPTY_LEASE, u64::MAX)
        };
        let first = granted(&leases, &link, &mut outbox, empty()).await;
        let second = granted(&leases, &link, &mut outbox, empty()).await;
        assert_eq!((first.granted, second.granted), (0, 0));
        leases.give_back("edge".into(), first.id, 0).await;
        leases.give_back("edge".into(), second.id, 0).await;
        let sent = outbox.try_recv();
        assert!(sent.is_err(), "{sent:?}");
    }

    /// A lease goes back to the origin whose book granted it, even once
    /// another origin of the region (a lower node id) leases for the API.
    #[tokio::test]
    async fn a_lease_goes_back_to_the_book_that_granted_it() {
        let leases = homed("");
        let (b, mut b_out) = ControlLink::new("origin-b", "", Capabilities(0));
        leases.link_up(&b);
        let held = granted(&leases, &b, &mut b_out, lease(5, u64::MAX)).await;
        let (a, mut a_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&a);
        leases.give_back("edge".into(), held.id, 4).await;
        assert_eq!(next_return(&mut b_out).await, (5, 4));
        assert!(
            a_out.try_recv().is_err(),
            "origin-a got another book's lease"
        );
    }

    /// After a reconnect, a lease of a replica goes back to it, and the
    /// key's next ask follows it there, behind the return: asked first,
    /// the lowest node id could find the returned requests still counted
    /// in the book they share. The refill after that, which returns the
    /// lease it replaces after its grant, asks the lowest node id again.
    #[tokio::test]
    async fn an_ask_after_a_return_follows_it_to_its_origin() {
        let leases = homed("");
        let (b, mut b_out) = ControlLink::new("origin-b", "", Capabilities(0));
        leases.link_up(&b);
        let held = granted(&leases, &b, &mut b_out, lease(5, u64::MAX)).await;
        let (a, mut a_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&a);
        leases.give_back("edge".into(), held.id, 4).await;
        let after = || LeaseAsk {
            after_return: true,
            ..ask()
        };
        let asking = {
            let leases = Arc::clone(&leases);
            tokio::spawn(async move { leases.grant(after()).await })
        };
        let back = tokio::time::timeout(Duration::from_secs(10), b_out.recv()).await;
        assert!(matches!(back, Ok(Some(Frame::QuotaReturn(_)))), "{back:?}");
        let sent = tokio::time::timeout(Duration::from_secs(10), b_out.recv()).await;
        let Ok(Some(Frame::QuotaLeaseRequest(_))) = sent else {
            panic!("the ask did not follow the return to origin-b: {sent:?}");
        };
        assert!(a_out.try_recv().is_err(), "origin-a was asked");
        leases.on_frame(&b, Frame::QuotaLease(lease(6, u64::MAX)));
        let held = asking.await.unwrap().unwrap();
        // A refill holding that lease asks origin-a, then returns it to b;
        // the refill after asks origin-a again.
        let refill = granted(&leases, &a, &mut a_out, lease(7, u64::MAX)).await;
        leases.give_back("edge".into(), held.id, 1).await;
        assert!(matches!(b_out.try_recv(), Ok(Frame::QuotaReturn(_))));
        let next = granted(&leases, &a, &mut a_out, lease(8, u64::MAX)).await;
        assert_ne!(refill.id, next.id);
        assert!(b_out.try_recv().is_err(), "origin-b was asked");
    }

    /// While the granting origin's link is down, a lease goes back through
    /// another origin of its region (replicas sharing their book take it
    /// there; one with a book of its own refuses it), never to another
    /// region's.
    #[tokio::test]
    async fn a_lease_whose_origin_is_down_goes_back_through_its_region() {
        let leases = homed("eu");
        let (b, mut b_out) = ControlLink::new("origin-b", "eu", Capabilities(0));
        leases.link_up(&b);
        let held = granted(&leases, &b, &mut b_out, lease(5, u64::MAX)).await;
        let (elsewhere, mut elsewhere_out) = ControlLink::new("origin-x", "us", Capabilities(0));
        leases.link_up(&elsewhere);
        let (c, mut c_out) = ControlLink::new("origin-c", "eu", Capabilities(0));
        leases.link_up(&c);
        // origin-b's link goes down.
        drop(b_out);
        leases.link_down(&b);
        leases.give_back("edge".into(), held.id, 4).await;
        assert_eq!(next_return(&mut c_out).await, (5, 4));
        assert!(elsewhere_out.try_recv().is_err(), "another region got it");
    }

    /// A return made while its origin cannot be reached waits for that
    /// origin's next link (the same node id), and goes on it first.
    #[tokio::test]
    async fn a_return_waits_for_its_origins_next_link() {
        let leases = homed("");
        let (old, mut old_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&old);
        let held = granted(&leases, &old, &mut old_out, lease(5, u64::MAX)).await;
        drop(old_out);
        leases.link_down(&old);
        leases.give_back("edge".into(), held.id, 10).await;
        let (new, mut new_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&new);
        assert_eq!(queued_return(&mut new_out), (5, 10));
        // So does one its link is too busy to take.
        let held = granted(&leases, &new, &mut new_out, lease(6, u64::MAX)).await;
        let ping = || Frame::Ping(portico_proto::Ping { nonce: 0 });
        while new.try_send(ping()).is_ok() {}
        leases.give_back("edge".into(), held.id, 3).await;
        let (again, mut again_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&again);
        assert_eq!(queued_return(&mut again_out), (6, 3));
        // Each is sent once.
        let (last, mut last_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&last);
        assert!(last_out.try_recv().is_err());
        // One whose origin does not come back goes to another origin of its
        // region once one links up, as it would have gone had one been up.
        let held = granted(&leases, &last, &mut last_out, lease(7, u64::MAX)).await;
        drop(last_out);
        leases.link_down(&last);
        leases.give_back("edge".into(), held.id, 2).await;
        let (sibling, mut sibling_out) = ControlLink::new("origin-b", "", Capabilities(0));
        leases.link_up(&sibling);
        assert_eq!(queued_return(&mut sibling_out), (7, 2));
    }

    /// A lease from an origin that was not asked (a late answer to an ask
    /// that timed out there) goes back whole to it, and the ask waits for
    /// its own origin's; an ask whose link drops fails at once.
    #[tokio::test]
    async fn only_the_asked_origins_lease_answers_an_ask() {
        let leases = homed("");
        let (b, mut b_out) = ControlLink::new("origin-b", "", Capabilities(0));
        leases.link_up(&b);
        let asking = spawn_ask(&leases);
        let sent = tokio::time::timeout(Duration::from_secs(10), b_out.recv()).await;
        assert!(
            matches!(sent, Ok(Some(Frame::QuotaLeaseRequest(_)))),
            "{sent:?}"
        );
        let (a, mut a_out) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&a);
        leases.on_frame(&a, Frame::QuotaLease(lease(5, u64::MAX)));
        assert_eq!(next_return(&mut a_out).await, (5, 10));
        leases.on_frame(&b, Frame::QuotaLease(lease(9, u64::MAX)));
        let held = asking.await.unwrap().unwrap();
        leases.give_back("edge".into(), held.id, 4).await;
        assert_eq!(next_return(&mut b_out).await, (9, 4));
        // An ask whose link goes down fails at once.
        let asking = spawn_ask(&leases);
        let _ = tokio::time::timeout(Duration::from_secs(10), a_out.recv()).await;
        leases.link_down(&a);
        leases.link_down(&b);
        let failed = tokio::time::timeout(Duration::from_secs(10), asking)
            .await
            .expect("answered")
            .unwrap();
        // Not "no lease within 2 s": it did not wait out its time.
        assert_eq!(failed.unwrap_err(), "lease request dropped");
    }

    /// An ask that timed out fails, and its answer, arriving after, goes
    /// back whole to the origin that granted it: nobody holds it. (The late
    /// path only: an answer sent between the time-out's last poll and the
    /// receiver's close, which the ask now takes, cannot be timed from a
    /// test; it passed before that fix too.)
    #[tokio::test(start_paused = true)]
    async fn a_lease_after_its_ask_timed_out_goes_back_whole() {
        let leases = homed("");
        let (link, mut outbox) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&link);
        let asking = spawn_ask(&leases);
        let sent = tokio::time::timeout(Duration::from_secs(10), outbox.recv()).await;
        assert!(
            matches!(sent, Ok(Some(Frame::QuotaLeaseRequest(_)))),
            "{sent:?}"
        );
        let failed = asking.await.unwrap();
        assert_eq!(failed.unwrap_err(), "no lease within 2 s");
        leases.on_frame(&link, Frame::QuotaLease(lease(5, u64::MAX)));
        assert_eq!(queued_return(&mut outbox), (5, 10));
    }

    /// A PoP whose clock runs ahead of its origin's still spends its leases:
    /// their lifetime counts from the ask, on the PoP's own clock.
    #[tokio::test]
    async fn a_lease_lives_its_time_whatever_the_origins_clock_says() {
        let leases = homed("");
        let (link, mut outbox) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&link);
        let before = portico_gateway::limits::now_ms();
        // The origin's clock is three minutes behind: by ours, its expiry
        // passed two minutes ago.
        let behind = u64::try_from(before - 120_000).unwrap();
        let held = granted(&leases, &link, &mut outbox, lease(7, behind)).await;
        assert!(
            held.expires_ms >= before + LEASE_TTL_MS,
            "{}",
            held.expires_ms - before
        );
        assert!(held.expires_ms <= portico_gateway::limits::now_ms() + LEASE_TTL_MS);
    }

    /// A PoP whose clock runs ahead of its origin's ends a quota period when
    /// the origin does, on its own clock: it does not drop every lease of the
    /// period's last minutes on arrival.
    #[tokio::test]
    async fn a_period_ends_when_the_origins_clock_says_on_this_ones() {
        let leases = homed("");
        let (link, mut outbox) = ControlLink::new("origin-a", "", Capabilities(0));
        leases.link_up(&link);
        let now = portico_gateway::limits::now_ms();
        let origin_now = u64::try_from(now - 120_000).unwrap();
        // An uncut lease shows the origin two minutes behind; its period
        // ends in five minutes by its clock.
        let mut uncut = lease(7, origin_now + 60_000);
        uncut.period_end_unix_ms = origin_now + 300_000;
        let held = granted(&leases, &link, &mut outbox, uncut).await;
        let in_five = held.period_end_ms - now;
        assert!((299_000..=301_000).contains(&in_five), "{in_five}");
        // Cut short by the period's end, 30 s away by the origin's clock:
        // 30 s away here too, not 90 s ago.
        let mut cut = lease(8, origin_now + 30_000);
        cut.period_end_unix_ms = origin_now + 30_000;
        let held = granted(&leases, &link, &mut outbox, cut).await;
        for end in [held.period_end_ms, held.expires_ms] {
            let left = end - now;
            assert!((29_000..=31_000).contains(&left), "{left}");
        }
    }

    /// A PoP's return and its next ask, read together from its control
    /// stream (as after a reconnect), are answered in that order: the ask
    /// gets what the return gave back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_return_and_the_next_ask_are_answered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (leases, book, spec) = origin_leases_and_book(dir.path());
        let held = BookSource::grant_to(&book, "pop-a", "p", "k", spec, 10).await;
        let mut lease_id = held.unwrap().id;
        let (link, mut outbox) = ControlLink::new("pop-a", "", Capabilities(0));
        for round in 0..20 {
            let back = QuotaReturn {
                lease_id,
                unused: 10,
            };
            let ask = QuotaLeaseRequest {
                key_id: "k".into(),
                plan: "p".into(),
                want: 10,
                lease_id_to_return: None,
                unused: 0,
            };
            leases.on_frame(&link, Frame::QuotaReturn(back));
            leases.on_frame(&link, Frame::QuotaLeaseRequest(ask));
            let answer = tokio::time::timeout(Duration::from_secs(10), outbox.recv()).await;
            let Ok(Some(Frame::QuotaLease(lease))) = answer else {
                panic!("no lease in round {round}: {answer:?}");
            };
            assert_eq!(lease.granted, 10, "round {round}: the ask went first");
            lease_id = lease.lease_id;
        }
    }
}
