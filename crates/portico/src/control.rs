//! The one [`ControlHandler`] a node gives its backbone, dispatching control
//! frames by kind to the subsystems that use them (purges, quota leases, rate
//! shares). Every subsystem sees every link come and go.

use std::sync::{Arc, Mutex, PoisonError};

use portico_backbone::{ControlHandler, ControlLink};
use portico_proto::{Frame, FrameKind};

/// A subsystem and the frame kinds it takes.
pub struct Route {
    pub kinds: &'static [FrameKind],
    pub handler: Arc<dyn ControlHandler>,
}

/// Dispatches control frames to subsystems by kind.
pub struct Dispatch {
    routes: Vec<Route>,
}

impl Dispatch {
    pub fn new(routes: Vec<Route>) -> Arc<Self> {
        Arc::new(Self { routes })
    }
}

impl ControlHandler for Dispatch {
    fn link_up(&self, link: &ControlLink) {
        for r in &self.routes {
            r.handler.link_up(link);
        }
    }

    fn link_down(&self, link: &ControlLink) {
        for r in &self.routes {
            r.handler.link_down(link);
        }
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        let kind = frame.kind();
        match self.routes.iter().find(|r| r.kinds.contains(&kind)) {
            Some(r) => r.handler.on_frame(link, frame),
            None => tracing::debug!(peer = %link.peer_id(), frame = %kind, "control frame ignored"),
        }
    }
}

/// The open links of one subsystem, kept up to date from its `link_up` and
/// `link_down` (a peer that reconnects replaces its old link).
#[derive(Default)]
pub struct Links(Mutex<Vec<ControlLink>>);

impl Links {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ControlLink>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn up(&self, link: &ControlLink) {
        let mut links = self.lock();
        links.retain(|l| l.is_open() && l.peer_id() != link.peer_id());
        links.push(link.clone());
    }

    /// Forgets `link` itself. A peer that reconnected before its old link
    /// was found down keeps its new link.
    pub fn down(&self, link: &ControlLink) {
        self.lock().retain(|l| l.is_open() && !l.is_same(link));
    }

    /// The links open now.
    pub fn open(&self) -> Vec<ControlLink> {
        let mut links = self.lock();
        links.retain(ControlLink::is_open);
        links.clone()
    }
}

#[cfg(test)]
mod tests {
    use portico_proto::Capabilities;

    use super::*;

    /// Whatever the configuration and the admin API accept fits the
    /// control frames' limits, so no node sends what its peer refuses.
    #[test]
    fn the_wire_limits_hold_what_nodes_send() {
        use portico_config::{MAX_KEY_ID, MAX_NAME, MAX_ROUTE_PATH};
        use portico_gateway::cache::purge;
        use portico_proto::limits as wire;
        assert_eq!((MAX_NAME, MAX_KEY_ID), (wire::MAX_ID, wire::MAX_ID));
        assert_eq!(MAX_ROUTE_PATH, wire::MAX_ROUTE_PATH);
        assert_eq!(
            (purge::MAX_TAGS, purge::MAX_TAG_LEN),
            (wire::MAX_TAGS, wire::MAX_TAG_LEN)
        );
        assert!(!portico_config::is_node_id(&"n".repeat(wire::MAX_ID + 1)));
        // The longest rate scope is a route's.
        let name = "n".repeat(MAX_NAME);
        let path = "/".repeat(MAX_ROUTE_PATH);
        let route = format!("route:{name}/{name}/OPTIONS {path}");
        assert!(route.len() <= wire::MAX_SCOPE, "{}", route.len());
    }

    #[test]
    fn a_reconnected_peer_keeps_its_new_link_when_the_old_one_goes_down() {
        let links = Links::default();
        let (old, _old_rx) = ControlLink::new("pop-a", "", Capabilities(0));
        let (other, _other_rx) = ControlLink::new("pop-b", "", Capabilities(0));
        links.up(&old);
        links.up(&other);
        // pop-a reconnects before its old connection is found dead.
        let (new, _new_rx) = ControlLink::new("pop-a", "", Capabilities(0));
        links.up(&new);
        links.down(&old);
        let open = links.open();
        assert_eq!(open.len(), 2);
        assert!(open.iter().any(|l| l.is_same(&new)), "the new link stays");
        assert!(open.iter().any(|l| l.is_same(&other)));
        links.down(&new);
        assert_eq!(links.open().len(), 1);
    }
}
