//! The one [`ControlHandler`] a node gives its backbone, dispatching control
//! frames by kind to the subsystems that use them (purges, quota leases, rate
//! shares). Every subsystem sees every link come and go.

use std::sync::Arc;

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
