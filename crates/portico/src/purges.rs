//! Cache purges over the backbone. The origin sends every purge made on its admin
//! API to every connected PoP as a `Purge` control frame; a PoP applies it to its
//! own cache and answers `PurgeAck`. A PoP that is not connected when a purge is
//! made misses it: purges are not replayed, so a PoP empties its cache when a
//! link to an origin it knew comes back. No purge is dropped on a link that
//! stays up: one that finds the link's outbox full waits for room in the
//! link's backlog (one task per link sends it on), one that finds the
//! backlog full, or that the origin could not keep up with, becomes a purge
//! of everything, and so does a purge that finds the PoP's own queue full.
//!
//! Both ends plug into the backbone's [`ControlHandler`] hook through the node's
//! [`crate::control::Dispatch`], which hands them the frames of [`KINDS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use portico_backbone::{ControlHandler, ControlLink, SyncedConfig};
use portico_gateway::cache::{PurgeScope, purge};
use portico_gateway::{Gateway, Upstream};
use portico_proto::{Frame, Purge, PurgeAck};
use tokio::sync::{Notify, broadcast, mpsc, watch};

/// How long a purge waits for room on a link whose outbox is full.
const SEND_WAIT: Duration = Duration::from_secs(30);

/// Most purges a PoP applies together: those waiting in its queue share one
/// pass over its cache.
const BATCH: usize = 256;

/// Purges waiting for room on one link; one more replaces them all with a
/// purge of everything.
const BACKLOG: usize = 1024;

/// Bytes of encoded purges waiting for room on one link, besides
/// [`BACKLOG`] purges: a purge may name a URL of 128 KiB, so a bound on
/// their number alone would let each link's backlog hold 128 MiB. Past
/// it, as past [`BACKLOG`], the backlog becomes one purge of everything.
const BACKLOG_BYTES: usize = 16 << 20;

/// Bytes of purges a PoP holds queued to apply, besides its 1 024 purges:
/// one may name a URL of 128 KiB, so a bound on their number alone would
/// let the queue hold 128 MiB. A purge past it is not queued: the cache is
/// emptied instead, as when the queue is full.
const QUEUE_BYTES: usize = 16 << 20;

/// What a queued purge holds, in bytes (its strings, and a little for the
/// entry itself).
fn scope_bytes(scope: &PurgeScope) -> usize {
    64 + match scope {
        PurgeScope::Url {
            api,
            stage,
            path,
            query,
        } => api.len() + stage.len() + path.len() + query.len(),
        PurgeScope::Prefix {
            api,
            stage,
            path_prefix,
        } => api.len() + stage.len() + path_prefix.len(),
        PurgeScope::Tag { api, tags } => {
            api.len() + tags.iter().map(|t| t.len() + 24).sum::<usize>()
        }
        PurgeScope::Stage { api, stage } => api.len() + stage.len(),
        PurgeScope::All => 0,
    }
}

/// Control frames of purges.
pub const KINDS: &[portico_proto::FrameKind] = &[
    portico_proto::FrameKind::Purge,
    portico_proto::FrameKind::PurgeAck,
];

/// The wire form of a scope. A URL travels as `api/stage/path?query` (API and stage
/// names never hold `/`).
pub fn to_wire(scope: &PurgeScope) -> portico_proto::PurgeScope {
    use portico_proto::PurgeScope as W;
    match scope.clone() {
        PurgeScope::Url {
            api,
            stage,
            path,
            query,
        } => {
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            W::Url(format!("{api}/{stage}{path}{query}"))
        }
        PurgeScope::Prefix {
            api,
            stage,
            path_prefix,
        } => W::Prefix {
            api,
            stage,
            path_prefix,
        },
        PurgeScope::Tag { api, tags } => W::Tag { api, tags },
        PurgeScope::Stage { api, stage } => W::Stage { api, stage },
        PurgeScope::All => W::All,
    }
}

/// The scope a peer sent, checked as the admin API checks what an operator
/// names (the tags, the paths); or why it is refused. Unchecked, one purge
/// could name thousands of tags, each compared with every entry's.
pub fn from_wire(scope: portico_proto::PurgeScope) -> Result<PurgeScope, String> {
    use portico_proto::PurgeScope as W;
    Ok(match scope {
        W::Url(url) => {
            let malformed = || "a URL purge is `api/stage/path[?query]`".to_owned();
            let (api, rest) = url.split_once('/').ok_or_else(malformed)?;
            let slash = rest.find('/').ok_or_else(malformed)?;
            let (stage, path_query) = rest.split_at(slash);
            let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
            PurgeScope::Url {
                api: api.to_owned(),
                stage: stage.to_owned(),
                path: purge::check_path(path)?.into_owned(),
                query: query.to_owned(),
            }
        }
        W::Prefix {
            api,
            stage,
            path_prefix,
        } => PurgeScope::Prefix {
            path_prefix: purge::check_prefix(&path_prefix)?.into_owned(),
            api,
            stage,
        },
        W::Tag { api, tags } => {
            purge::check_tags(&tags)?;
            PurgeScope::Tag { api, tags }
        }
        W::Stage { api, stage } => PurgeScope::Stage { api, stage },
        W::All => PurgeScope::All,
    })
}

/// The origin's side: the PoP links that are up.
#[derive(Default)]
pub struct OriginPurges {
    links: crate::control::Links,
    next_id: AtomicU64,
    /// Purges waiting for room, by link: each link with a backlog has one
    /// task sending it on.
    backlogs: Arc<std::sync::Mutex<Vec<Backlog>>>,
}

/// Purges waiting for room on one link's outbox, oldest first.
struct Backlog {
    link: ControlLink,
    frames: std::collections::VecDeque<Frame>,
    /// Their encoded size, within [`BACKLOG_BYTES`].
    bytes: usize,
}

impl Backlog {
    fn new(link: ControlLink, frame: Frame) -> Self {
        let mut backlog = Backlog {
            link,
            frames: std::collections::VecDeque::new(),
            bytes: 0,
        };
        backlog.push(frame);
        backlog
    }

    fn push(&mut self, frame: Frame) {
        self.bytes += portico_proto::encoded_len(&frame);
        self.frames.push_back(frame);
    }

    fn pop(&mut self) -> Option<Frame> {
        let frame = self.frames.pop_front()?;
        self.bytes -= portico_proto::encoded_len(&frame);
        Some(frame)
    }

    /// Whether `frame` fits behind the purges waiting.
    fn fits(&self, frame: &Frame) -> bool {
        self.frames.len() < BACKLOG
            && self.bytes + portico_proto::encoded_len(frame) <= BACKLOG_BYTES
    }

    /// Replaces the purges waiting with one purge of everything, under `purge_id`.
    fn purge_all(&mut self, purge_id: u64) {
        self.frames.clear();
        self.bytes = 0;
        self.push(Frame::Purge(Purge {
            purge_id,
            scope: portico_proto::PurgeScope::All,
        }));
    }
}

type Backlogs = std::sync::Mutex<Vec<Backlog>>;

fn lock(backlogs: &Backlogs) -> std::sync::MutexGuard<'_, Vec<Backlog>> {
    backlogs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OriginPurges {
    /// Sends each purge made on the admin API to every PoP until `stop`.
    pub async fn forward(
        self: Arc<Self>,
        mut purges: broadcast::Receiver<PurgeScope>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let scope = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                scope = purges.recv() => match scope {
                    Ok(scope) => scope,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "purges were made faster than they could be sent to PoPs; PoPs empty their caches instead");
                        PurgeScope::All
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            self.send(&scope);
        }
    }

    fn send(&self, scope: &PurgeScope) {
        let purge_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let frame = Frame::Purge(Purge {
            purge_id,
            scope: to_wire(scope),
        });
        for link in self.links.open() {
            // Behind a backlog: in order, after it.
            if self.queue_behind(&link, &frame, purge_id) {
                continue;
            }
            match link.try_send(frame.clone()) {
                Ok(()) => {}
                // The PoP reads slower than purges come: wait for room
                // rather than drop it (the link would stay up and the PoP
                // serve the purged entries until they expire).
                Err(portico_backbone::BackboneError::LinkBusy) => {
                    let backlog = Backlog::new(link.clone(), frame.clone());
                    lock(&self.backlogs).push(backlog);
                    tokio::spawn(drain_backlog(Arc::clone(&self.backlogs), link));
                }
                Err(err) => {
                    tracing::warn!(pop = %link.peer_id(), %err, purge_id, "purge not sent to PoP");
                }
            }
        }
    }

    /// Appends `frame` to `link`'s backlog if it has one; a full backlog
    /// becomes one purge of everything (under `frame`'s id).
    fn queue_behind(&self, link: &ControlLink, frame: &Frame, purge_id: u64) -> bool {
        let mut backlogs = lock(&self.backlogs);
        let Some(backlog) = backlogs.iter_mut().find(|b| b.link.is_same(link)) else {
            return false;
        };
        if backlog.fits(frame) {
            backlog.push(frame.clone());
            return true;
        }
        tracing::warn!(pop = %link.peer_id(), "purges came faster than the PoP took them; it empties its cache instead");
        backlog.purge_all(purge_id);
        true
    }
}

/// Sends `link`'s backlog on as its outbox makes room, then forgets it. A
/// purge that waits [`SEND_WAIT`] in vain turns the backlog into one purge
/// of everything (the PoP takes control frames too slowly to be sent each,
/// and one of them may be an `All` already), which goes on waiting; a link
/// gone drops the backlog (the PoP purges the region when it links again).
async fn drain_backlog(backlogs: Arc<Backlogs>, link: ControlLink) {
    loop {
        let frame = {
            let mut all = lock(&backlogs);
            let Some(backlog) = all.iter_mut().find(|b| b.link.is_same(&link)) else {
                return;
            };
            match backlog.pop() {
                Some(frame) => frame,
                // Sent it all: the next purge tries the outbox first again.
                None => return all.retain(|b| !b.link.is_same(&link)),
            }
        };
        let purge_id = match &frame {
            Frame::Purge(p) => p.purge_id,
            _ => 0,
        };
        let sent = tokio::time::timeout(SEND_WAIT, link.send(frame)).await;
        if sent.is_err() {
            let mut all = lock(&backlogs);
            if let Some(backlog) = all.iter_mut().find(|b| b.link.is_same(&link)) {
                tracing::warn!(pop = %link.peer_id(), "the PoP takes no purges; it empties its cache instead");
                backlog.purge_all(purge_id);
            }
            continue;
        }
        if !matches!(sent, Ok(Ok(()))) {
            let mut all = lock(&backlogs);
            let left: usize = all
                .iter()
                .filter(|b| b.link.is_same(&link))
                .map(|b| b.frames.len())
                .sum();
            all.retain(|b| !b.link.is_same(&link));
            tracing::error!(pop = %link.peer_id(), purges = left + 1, "purges not sent to PoP");
            return;
        }
    }
}

impl ControlHandler for OriginPurges {
    fn link_up(&self, link: &ControlLink) {
        self.links.up(link);
    }

    fn link_down(&self, link: &ControlLink) {
        self.links.down(link);
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        match frame {
            Frame::PurgeAck(ack) => {
                tracing::debug!(pop = %link.peer_id(), purge_id = ack.purge_id, "purge done at PoP");
            }
            other => tracing::debug!(frame = %other.kind(), "control frame ignored"),
        }
    }
}

/// The PoP's side: purges from origins, queued for the task that applies them
/// (the handler may not wait; the gateway exists only after the backbone).
pub struct PopPurges {
    queue: mpsc::Sender<Queued>,
    /// A purge found the queue full: the next one applied empties the cache.
    overflowed: Arc<AtomicBool>,
    /// Bytes of the purges queued ([`scope_bytes`]), at most [`QUEUE_BYTES`].
    queued: Arc<AtomicUsize>,
    /// Wakes the applying task for a purge refused: with nothing queued it
    /// would otherwise empty the cache only when the next purge came.
    refused: Arc<Notify>,
    /// Origins this PoP has had a link to.
    known: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The synced definitions, for the APIs each region is home to.
    config: std::sync::OnceLock<watch::Receiver<Arc<SyncedConfig>>>,
}

/// The id of a purge the PoP makes itself (never acknowledged).
const LOCAL_PURGE: u64 = 0;

/// A checked purge, the link it came on and its id (to acknowledge).
type Queued = (ControlLink, u64, PurgeScope);

/// The purges a PoP has to apply.
pub struct PurgeQueue {
    rx: mpsc::Receiver<Queued>,
    overflowed: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    refused: Arc<Notify>,
}

impl PurgeQueue {
    /// Takes `batch` off the queue's byte count (it was received).
    fn taken(&self, batch: &[Queued]) {
        let bytes: usize = batch.iter().map(|(_, _, scope)| scope_bytes(scope)).sum();
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Whether a purge was dropped since last asked: the cache must be
    /// emptied, as it may hold what that purge would have removed.
    fn dropped_some(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }
}

impl PopPurges {
    pub fn new() -> (Arc<PopPurges>, PurgeQueue) {
        let (queue, rx) = mpsc::channel(1024);
        let known = std::sync::Mutex::default();
        let overflowed = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(Notify::new());
        let purges = PopPurges {
            queue,
            overflowed: Arc::clone(&overflowed),
            queued: Arc::clone(&queued),
            refused: Arc::clone(&refused),
            known,
            config: std::sync::OnceLock::new(),
        };
        let queue = PurgeQueue {
            rx,
            overflowed,
            queued,
            refused,
        };
        (Arc::new(purges), queue)
    }

    /// Completes the wiring once the backbone exists.
    pub fn attach(&self, config: watch::Receiver<Arc<SyncedConfig>>) {
        let _ = self.config.set(config);
    }

    /// Whether `scope` names an API homed in `link`'s region (or none, or
    /// one not known here): an origin of another region that defines an API
    /// of the same name must not purge this one's entries.
    fn sent_from_home(&self, link: &ControlLink, scope: &PurgeScope) -> bool {
        let Some(config) = self.config.get() else {
            return true;
        };
        let api = match scope {
            PurgeScope::Url { api, .. }
            | PurgeScope::Prefix { api, .. }
            | PurgeScope::Tag { api, .. }
            | PurgeScope::Stage { api, .. } => api,
            PurgeScope::All => return true,
        };
        let config = config.borrow();
        config.home_of(api).is_none_or(|home| home == link.region())
    }

    /// What a link back to an origin of `region` must purge: every stage of
    /// the APIs homed there, which are all its purges could have named.
    /// Everything when the definitions are not known yet.
    fn region_scopes(&self, region: &str) -> Vec<PurgeScope> {
        let Some(config) = self.config.get() else {
            return vec![PurgeScope::All];
        };
        let config = config.borrow();
        config
            .definitions
            .apis
            .iter()
            .filter(|api| config.home_of(&api.name) == Some(region))
            .flat_map(|api| {
                api.stages.iter().map(|stage| PurgeScope::Stage {
                    api: api.name.clone(),
                    stage: stage.name.clone(),
                })
            })
            .collect()
    }

    /// Queues a purge, unless the queue holds [`QUEUE_BYTES`] already or
    /// is full: then the cache is emptied before the next purge applied.
    fn queue(&self, link: &ControlLink, id: u64, scope: PurgeScope) {
        let bytes = scope_bytes(&scope);
        // Room is taken only where there is some: a purge refused does not
        // hold any while it is, which could refuse a smaller one meanwhile.
        let reserved = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= QUEUE_BYTES).then_some(held + bytes)
            })
            .is_ok();
        if reserved {
            match self.queue.try_send((link.clone(), id, scope)) {
                Ok(()) => return,
                // The applying task ended: the PoP is stopping, and its
                // cache ends with it.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.queued.fetch_sub(bytes, Ordering::Relaxed);
                    return tracing::debug!(origin = %link.peer_id(), "purge after the stop; the cache ends with the PoP");
                }
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
        // The flag first, then the wake-up: the applying task, woken, must
        // find it set (a permit is kept if it is busy).
        self.overflowed.store(true, Ordering::Relaxed);
        if reserved {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
        }
        self.refused.notify_one();
        tracing::error!(origin = %link.peer_id(), "purge queue full; the whole cache will be emptied instead");
    }
}

impl ControlHandler for PopPurges {
    /// A link back to an origin this PoP had one to before: purges made
    /// while it was down never arrived (they are not replayed), so what the
    /// PoP cached may have been purged. It empties its cache, as it was at
    /// the first link.
    fn link_up(&self, link: &ControlLink) {
        let first = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(link.peer_id().to_owned());
        if first {
            return;
        }
        tracing::warn!(
            origin = %link.peer_id(),
            region = link.region(),
            "backbone link back: purges made while it was down are lost, so its region's entries are purged"
        );
        for scope in self.region_scopes(link.region()) {
            self.queue(link, LOCAL_PURGE, scope);
        }
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        let Frame::Purge(Purge { purge_id, scope }) = frame else {
            return tracing::debug!(frame = %frame.kind(), "control frame ignored");
        };
        match from_wire(scope) {
            Err(reason) => {
                tracing::warn!(origin = %link.peer_id(), purge_id, %reason, "purge refused");
            }
            Ok(scope) if !self.sent_from_home(link, &scope) => {
                tracing::warn!(origin = %link.peer_id(), region = link.region(), purge_id, "purge of an API homed in another region ignored");
            }
            Ok(scope) => self.queue(link, purge_id, scope),
        }
    }
}

/// Applies queued purges to the PoP's cache and acknowledges each. Those
/// that wait together (up to [`BATCH`]) are applied together, in one pass
/// over the cache: a burst of purges costs a few passes, not one each.
pub async fn apply<U: Upstream>(
    mut queue: PurgeQueue,
    gateway: Arc<Gateway<U>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            n = queue.rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            // A purge refused while nothing else is queued.
            () = queue.refused.notified() => {}
        }
        queue.taken(&batch);
        let mut scopes: Vec<PurgeScope> = Vec::with_capacity(batch.len() + 1);
        if queue.dropped_some() {
            scopes.push(PurgeScope::All);
        }
        if scopes.is_empty() && batch.is_empty() {
            continue;
        }
        // The scopes are moved out, not copied: the batch may hold 16 MiB.
        let mut acks = Vec::with_capacity(batch.len());
        for (link, id, scope) in batch.drain(..) {
            scopes.push(scope);
            if id != LOCAL_PURGE {
                acks.push((link, id));
            }
        }
        gateway.purge_many(&scopes).await;
        for (link, id) in acks {
            if let Err(err) = link.try_send(Frame::PurgeAck(PurgeAck { purge_id: id })) {
                tracing::debug!(%err, purge_id = id, "purge ack not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link back to a known origin empties the cache (purges made while
    /// it was down never arrived); a first link does not.
    #[test]
    fn a_link_back_to_a_known_origin_empties_the_cache() {
        let (purges, mut queue) = PopPurges::new();
        let caps = portico_proto::Capabilities(0);
        let (a, _a_out) = ControlLink::new("origin-a", "r", caps);
        let (b, _b_out) = ControlLink::new("origin-b", "r", caps);
        purges.link_up(&a);
        purges.link_up(&b);
        assert!(queue.rx.try_recv().is_err(), "a first link purges nothing");
        let (again, _out) = ControlLink::new("origin-a", "r", caps);
        purges.link_up(&again);
        let (link, id, scope) = queue.rx.try_recv().expect("a purge on the link back");
        assert_eq!(link.peer_id(), "origin-a");
        assert_eq!(id, LOCAL_PURGE);
        assert_eq!(scope, PurgeScope::All);
    }

    /// A purge that finds the PoP's queue full is not lost: the cache is
    /// emptied before the next one is applied.
    #[test]
    fn a_purge_the_queue_cannot_take_empties_the_cache() {
        let (purges, queue) = PopPurges::new();
        let (link, _out) = ControlLink::new("origin-a", "r", portico_proto::Capabilities(0));
        let purge = |id| {
            Frame::Purge(Purge {
                purge_id: id,
                scope: to_wire(&PurgeScope::All),
            })
        };
        for id in 1..=1024 {
            purges.on_frame(&link, purge(id));
        }
        assert!(!queue.dropped_some());
        purges.on_frame(&link, purge(1025));
        assert!(queue.dropped_some());
        assert!(!queue.dropped_some(), "once");
    }

    /// A purge that comes after the applying task ended (the PoP stops) is
    /// dropped quietly: nothing is held for it, and no emptying is asked.
    #[test]
    fn a_purge_after_the_stop_is_dropped() {
        let (purges, queue) = PopPurges::new();
        let (link, _out) = ControlLink::new("origin-a", "r", portico_proto::Capabilities(0));
        let overflowed = Arc::clone(&queue.overflowed);
        drop(queue);
        purges.on_frame(
            &link,
            Frame::Purge(Purge {
                purge_id: 1,
                scope: to_wire(&PurgeScope::All),
            }),
        );
        assert_eq!(purges.queued.load(Ordering::Relaxed), 0);
        assert!(!overflowed.load(Ordering::Relaxed));
    }

    /// The queue holds at most [`QUEUE_BYTES`] of purges, however few: a
    /// purge past it empties the cache, and what is taken off makes room.
    #[tokio::test]
    async fn the_pops_purge_queue_is_bounded_by_bytes() {
        let (purges, mut queue) = PopPurges::new();
        let (link, _out) = ControlLink::new("origin-a", "r", portico_proto::Capabilities(0));
        let scope = |id: u64| PurgeScope::Prefix {
            api: "a".into(),
            stage: "prod".into(),
            path_prefix: format!("/{id}/{}", "p".repeat(128 * 1024 - 16)),
        };
        let long = |id: u64| {
            Frame::Purge(Purge {
                purge_id: id,
                scope: to_wire(&scope(id)),
            })
        };
        let fit = QUEUE_BYTES / (128 * 1024 + 64);
        for id in 1..=fit as u64 {
            purges.on_frame(&link, long(id));
        }
        assert!(!queue.dropped_some(), "{fit} purges fit");
        let held: usize = (1..=fit as u64).map(|id| scope_bytes(&scope(id))).sum();
        assert_eq!(purges.queued.load(Ordering::Relaxed), held);
        purges.on_frame(&link, long(0));
        assert!(queue.dropped_some(), "one more does not");
        assert_eq!(
            purges.queued.load(Ordering::Relaxed),
            held,
            "and holds none"
        );
        // The applying task is woken for it, even with nothing more queued.
        let woken = tokio::time::timeout(Duration::from_secs(5), queue.refused.notified());
        assert!(woken.await.is_ok());
        // Taking purges off makes room again, and gives all of it back.
        let mut batch = Vec::new();
        queue.rx.recv_many(&mut batch, 8).await;
        queue.taken(&batch);
        purges.on_frame(&link, long(1));
        assert!(!queue.dropped_some());
        assert_eq!(queue.rx.len(), fit - 8 + 1);
        batch.clear();
        queue.rx.recv_many(&mut batch, fit).await;
        queue.taken(&batch);
        assert_eq!(purges.queued.load(Ordering::Relaxed), 0);
    }

    /// A purge that finds a link's outbox full waits for room instead of
    /// being dropped (the link stays up, so nothing else would purge).
    #[tokio::test]
    async fn an_origin_waits_for_room_on_a_busy_link() {
        let origin = OriginPurges::default();
        let (link, mut outbox) = ControlLink::new("pop-a", "r", portico_proto::Capabilities(0));
        origin.link_up(&link);
        let scope = PurgeScope::All;
        for _ in 0..1100 {
            origin.send(&scope);
        }
        let mut ids = Vec::new();
        while ids.len() < 1100 {
            let frame = tokio::time::timeout(Duration::from_secs(20), outbox.recv())
                .await
                .expect("every purge comes")
                .unwrap();
            if let Frame::Purge(p) = frame {
                ids.push(p.purge_id);
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=1100).collect::<Vec<u64>>());
    }

    /// An origin's purges with one PoP linked whose outbox is full (of
    /// pings): the link, its outbox and how many frames fill it.
    fn linked_with_a_full_outbox() -> (OriginPurges, ControlLink, portico_backbone::Outbox, usize) {
        let origin = OriginPurges::default();
        let (link, outbox) = ControlLink::new("pop-a", "r", portico_proto::Capabilities(0));
        origin.link_up(&link);
        let mut filled = 0;
        while link
            .try_send(Frame::Ping(portico_proto::Ping { nonce: 0 }))
            .is_ok()
        {
            filled += 1;
        }
        (origin, link, outbox, filled)
    }

    /// A link that stays up but takes no control frame for longer than a
    /// purge waits: its purges are not dropped, they become one purge of
    /// everything, sent when the PoP reads again.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_pop_that_takes_no_purges_for_a_while_gets_a_purge_of_everything() {
        let (origin, _link, mut outbox, filled) = linked_with_a_full_outbox();
        let scope = PurgeScope::Stage {
            api: "a".into(),
            stage: "prod".into(),
        };
        for _ in 0..3 {
            origin.send(&scope);
        }
        // The PoP takes nothing for longer than a purge waits.
        tokio::time::sleep(SEND_WAIT * 2).await;
        for _ in 0..filled {
            outbox.recv().await.unwrap();
        }
        let frame = tokio::time::timeout(Duration::from_secs(20), outbox.recv())
            .await
            .expect("the purges were dropped")
            .unwrap();
        let Frame::Purge(p) = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(p.scope, portico_proto::PurgeScope::All);
    }

    /// Purges that find a link's outbox full wait behind one task, however
    /// many come; past the backlog they become one purge of everything, and
    /// the last purge still arrives.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_link_has_one_waiting_sender() {
        const PURGES: u64 = 10_000;
        let (origin, _link, mut outbox, filled) = linked_with_a_full_outbox();
        let scope = PurgeScope::Stage {
            api: "a".into(),
            stage: "prod".into(),
        };
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for _ in 0..PURGES {
            origin.send(&scope);
        }
        assert!(
            metrics.num_alive_tasks() <= before + 1,
            "{} tasks wait",
            metrics.num_alive_tasks() - before
        );
        let scopes = backlog_sent(&mut outbox, filled, PURGES).await;
        let all = scopes.contains(&portico_proto::PurgeScope::All);
        assert!(all, "the overflow became a purge of everything");
        assert!(scopes.len() <= BACKLOG, "{} purges", scopes.len());
    }

    /// The scopes of the purges that come on `outbox` once the PoP reads
    /// again: after the `filled` frames that filled it, up to purge `last`.
    async fn backlog_sent(
        outbox: &mut portico_backbone::Outbox,
        filled: usize,
        last: u64,
    ) -> Vec<portico_proto::PurgeScope> {
        for _ in 0..filled {
            outbox.recv().await.unwrap();
        }
        let mut scopes = Vec::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), outbox.recv())
                .await
                .expect("the backlog comes")
                .unwrap();
            let Frame::Purge(p) = frame else {
                panic!("{frame:?}")
            };
            scopes.push(p.scope);
            if p.purge_id == last {
                return scopes;
            }
        }
    }

    /// Large purges that find a link's outbox full wait in a backlog that
    /// is bounded by bytes too: past its budget they become one purge of
    /// everything (long before [`BACKLOG`] purges wait), and the last purge
    /// still arrives.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_links_backlog_is_bounded_by_bytes() {
        let (origin, _link, mut outbox, filled) = linked_with_a_full_outbox();
        let scope = |i: usize| PurgeScope::Url {
            api: "a".into(),
            stage: "prod".into(),
            path: format!("/{i}/{}", "x".repeat(64 << 10)),
            query: String::new(),
        };
        let size = portico_proto::encoded_len(&Frame::Purge(Purge {
            purge_id: 1,
            scope: to_wire(&scope(0)),
        }));
        let sent = BACKLOG_BYTES / size * 2;
        assert!(sent < BACKLOG);
        for i in 0..sent {
            origin.send(&scope(i));
            let waiting: usize = lock(&origin.backlogs).iter().map(|b| b.bytes).sum();
            assert!(waiting <= BACKLOG_BYTES, "{} MiB wait", waiting >> 20);
        }
        let scopes = backlog_sent(&mut outbox, filled, sent as u64).await;
        let all = scopes.contains(&portico_proto::PurgeScope::All);
        assert!(all, "the overflow became a purge of everything");
        let urls = scopes
            .iter()
            .filter(|s| matches!(s, portico_proto::PurgeScope::Url(_)))
            .count();
        assert!(urls < sent, "{urls} of {sent} purges waited");
    }

    /// A link back purges the entries of its own region's APIs only: the
    /// other regions' origins never went away.
    #[test]
    fn a_link_back_purges_its_regions_apis_only() {
        let text = "[[apis]]\nname = \"east\"\nendpoint = \"edge\"\n[[apis.stages]]\nname = \"prod\"\n\
                    [[apis.stages]]\nname = \"beta\"\n\
                    [[apis]]\nname = \"west\"\nendpoint = \"edge\"\n[[apis.stages]]\nname = \"prod\"\n";
        let defs = Arc::new(portico_config::Definitions::from_toml_str(text, "t").unwrap());
        let homes = std::collections::HashMap::from([
            ("east".to_owned(), "r-east".to_owned()),
            ("west".to_owned(), "r-west".to_owned()),
        ]);
        let (_tx, rx) = watch::channel(Arc::new(SyncedConfig::new(defs, homes)));
        let (purges, mut queue) = PopPurges::new();
        purges.attach(rx);
        let caps = portico_proto::Capabilities(0);
        let (first, _f) = ControlLink::new("origin-e", "r-east", caps);
        purges.link_up(&first);
        let (again, _a) = ControlLink::new("origin-e", "r-east", caps);
        purges.link_up(&again);
        let mut scopes = Vec::new();
        while let Ok((_, _, scope)) = queue.rx.try_recv() {
            scopes.push(scope);
        }
        let stage = |s: &str| PurgeScope::Stage {
            api: "east".into(),
            stage: s.into(),
        };
        assert_eq!(scopes, [stage("prod"), stage("beta")]);
        // A purge naming another region's API is not this origin's to make.
        let purge = |api: &str| {
            Frame::Purge(Purge {
                purge_id: 7,
                scope: to_wire(&PurgeScope::Stage {
                    api: api.into(),
                    stage: "prod".into(),
                }),
            })
        };
        purges.on_frame(&again, purge("west"));
        assert!(queue.rx.try_recv().is_err());
        purges.on_frame(&again, purge("east"));
        assert!(queue.rx.try_recv().is_ok());
    }

    /// A purge from the wire is checked as the admin API checks an
    /// operator's: one naming too many tags, too long a tag, or a path no
    /// request could have is refused, and never queued.
    #[test]
    fn a_purge_from_the_wire_is_checked_as_the_admin_api_checks_it() {
        use portico_proto::PurgeScope as W;
        let tags = |n: usize, len: usize| W::Tag {
            api: "a".into(),
            tags: (0..n).map(|i| format!("{i:0>len$}")).collect(),
        };
        assert!(from_wire(tags(64, 256)).is_ok());
        let refused = [
            tags(65, 3),
            tags(1, 257),
            tags(0, 1),
            W::Tag {
                api: "a".into(),
                tags: vec!["a,b".into()],
            },
            W::Prefix {
                api: "a".into(),
                stage: "s".into(),
                path_prefix: "no-slash".into(),
            },
            W::Url("a/prod/x y".into()),
        ];
        for scope in refused {
            assert!(from_wire(scope.clone()).is_err(), "{scope:?}");
        }
        let (purges, mut queue) = PopPurges::new();
        let (link, _out) = ControlLink::new("origin-a", "r", portico_proto::Capabilities(0));
        let purge = |purge_id, scope| Frame::Purge(Purge { purge_id, scope });
        purges.on_frame(&link, purge(1, tags(10_000, 8)));
        assert!(queue.rx.try_recv().is_err(), "queued");
        purges.on_frame(&link, purge(2, tags(2, 8)));
        assert!(matches!(queue.rx.try_recv(), Ok((_, 2, _))));
    }

    #[test]
    fn scopes_round_trip_over_the_wire() {
        let scopes = [
            PurgeScope::Url {
                api: "a".into(),
                stage: "prod".into(),
                path: "/x/y".into(),
                query: "q=1&q".into(),
            },
            PurgeScope::Url {
                api: "a".into(),
                stage: "prod".into(),
                path: "/".into(),
                query: String::new(),
            },
            PurgeScope::Prefix {
                api: "a".into(),
                stage: "s".into(),
                path_prefix: "/p".into(),
            },
            PurgeScope::Tag {
                api: "a".into(),
                tags: vec!["t".into()],
            },
            PurgeScope::Stage {
                api: "a".into(),
                stage: "s".into(),
            },
            PurgeScope::All,
        ];
        for s in scopes {
            assert_eq!(from_wire(to_wire(&s)), Ok(s));
        }
        assert!(from_wire(portico_proto::PurgeScope::Url("nostage".into())).is_err());
    }
}
