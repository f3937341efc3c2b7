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

    pub fn down(&self, link: &ControlLink) {
        self.lock()
            .retain(|l| l.is_open() && l.peer_id() != link.peer_id());
    }

    /// The links open now.
    pub fn open(&self) -> Vec<ControlLink> {
        let mut links = self.lock();
        links.retain(ControlLink::is_open);
        links.clone()
    }
}
