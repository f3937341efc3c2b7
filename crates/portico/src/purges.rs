//! Cache purges over the backbone. The origin sends every purge made on its admin
//! API to every connected PoP as a `Purge` control frame; a PoP applies it to its
//! own cache and answers `PurgeAck`. A PoP that is not connected when a purge is
//! made misses it (its entries expire on their own): purges are not replayed.
//!
//! Both ends plug into the backbone's [`ControlHandler`] hook through the node's
//! [`crate::control::Dispatch`], which hands them the frames of [`KINDS`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portico_backbone::{ControlHandler, ControlLink};
use portico_gateway::cache::PurgeScope;
use portico_gateway::{Gateway, Upstream};
use portico_proto::{Frame, Purge, PurgeAck};
use tokio::sync::{broadcast, mpsc, watch};

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

/// The scope a peer sent; `None` for a URL that is not `api/stage/path[?query]`.
pub fn from_wire(scope: portico_proto::PurgeScope) -> Option<PurgeScope> {
    use portico_proto::PurgeScope as W;
    Some(match scope {
        W::Url(url) => {
            let (api, rest) = url.split_once('/')?;
            let slash = rest.find('/')?;
            let (stage, path_query) = rest.split_at(slash);
            let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
            PurgeScope::Url {
                api: api.to_owned(),
                stage: stage.to_owned(),
                path: path.to_owned(),
                query: query.to_owned(),
            }
        }
        W::Prefix {
            api,
            stage,
            path_prefix,
        } => PurgeScope::Prefix {
            api,
            stage,
            path_prefix,
        },
        W::Tag { api, tags } => PurgeScope::Tag { api, tags },
        W::Stage { api, stage } => PurgeScope::Stage { api, stage },
        W::All => PurgeScope::All,
    })
}

/// The origin's side: the PoP links that are up.
#[derive(Default)]
pub struct OriginPurges {
    links: crate::control::Links,
    next_id: AtomicU64,
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
                        tracing::error!(missed = n, "purges were made faster than they could be sent to PoPs");
                        continue;
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
            if let Err(err) = link.try_send(frame.clone()) {
                tracing::warn!(pop = %link.peer_id(), %err, purge_id, "purge not sent to PoP");
            }
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
    queue: mpsc::Sender<(ControlLink, Purge)>,
    /// Origins this PoP has had a link to.
    known: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The id of a purge the PoP makes itself (never acknowledged).
const LOCAL_PURGE: u64 = 0;

impl PopPurges {
    pub fn new() -> (Arc<PopPurges>, mpsc::Receiver<(ControlLink, Purge)>) {
        let (queue, rx) = mpsc::channel(1024);
        let known = std::sync::Mutex::default();
        (Arc::new(PopPurges { queue, known }), rx)
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
            "backbone link back: purges made while it was down are lost, so the cache is emptied"
        );
        let purge = Purge {
            purge_id: LOCAL_PURGE,
            scope: to_wire(&PurgeScope::All),
        };
        if self.queue.try_send((link.clone(), purge)).is_err() {
            tracing::error!(origin = %link.peer_id(), "purge queue full; cache not emptied");
        }
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        match frame {
            Frame::Purge(p) => {
                if self.queue.try_send((link.clone(), p)).is_err() {
                    tracing::error!(origin = %link.peer_id(), "purge queue full; purge dropped");
                }
            }
            other => tracing::debug!(frame = %other.kind(), "control frame ignored"),
        }
    }
}

/// Applies queued purges to the PoP's cache and acknowledges each.
pub async fn apply<U: Upstream>(
    mut queue: mpsc::Receiver<(ControlLink, Purge)>,
    gateway: Arc<Gateway<U>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (link, purge) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            next = queue.recv() => match next { Some(p) => p, None => return },
        };
        let id = purge.purge_id;
        match from_wire(purge.scope) {
            Some(scope) => gateway.purge(&scope).await,
            None => {
                tracing::warn!(origin = %link.peer_id(), purge_id = id, "malformed purge URL ignored")
            }
        }
        if id == LOCAL_PURGE {
            continue;
        }
        if let Err(err) = link.try_send(Frame::PurgeAck(PurgeAck { purge_id: id })) {
            tracing::debug!(%err, purge_id = id, "purge ack not sent");
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
        assert!(queue.try_recv().is_err(), "a first link purges nothing");
        let (again, _out) = ControlLink::new("origin-a", "r", caps);
        purges.link_up(&again);
        let (link, purge) = queue.try_recv().expect("a purge on the link back");
        assert_eq!(link.peer_id(), "origin-a");
        assert_eq!(purge.purge_id, LOCAL_PURGE);
        assert_eq!(from_wire(purge.scope), Some(PurgeScope::All));
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
            assert_eq!(from_wire(to_wire(&s)), Some(s));
        }
        assert_eq!(
            from_wire(portico_proto::PurgeScope::Url("nostage".into())),
            None
        );
    }
}
