//! The control hook: subsystems exchange their own frames over each link's
//! control stream, both ways, with the peer's verified identity.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use portico_backbone::{ControlHandler, ControlLink};
use portico_proto::{
    Capabilities, Frame, Purge, PurgeAck, PurgeScope, QuotaLease, QuotaReturn, UsageEntry,
    UsageReport,
};
use tokio::sync::mpsc;

/// Records every event and keeps the links it saw come up.
struct Recorder {
    capabilities: Capabilities,
    events: mpsc::UnboundedSender<String>,
    links: Mutex<Vec<ControlLink>>,
    /// The origin answers usage reports with a lease; the PoP acks purges.
    origin: bool,
}

impl Recorder {
    fn new(origin: bool, caps: u64) -> (Arc<Recorder>, mpsc::UnboundedReceiver<String>) {
        let (events, rx) = mpsc::unbounded_channel();
        let recorder = Recorder {
            capabilities: Capabilities(caps),
            events,
            links: Mutex::new(Vec::new()),
            origin,
        };
        (Arc::new(recorder), rx)
    }

    fn link(&self) -> ControlLink {
        self.links.lock().unwrap()[0].clone()
    }
}

impl ControlHandler for Recorder {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn link_up(&self, link: &ControlLink) {
        self.links.lock().unwrap().push(link.clone());
        let caps = link.capabilities().0;
        let _ = self
            .events
            .send(format!("up {} caps {caps}", link.peer_id()));
    }

    fn link_down(&self, link: &ControlLink) {
        let _ = self.events.send(format!("down {}", link.peer_id()));
    }

    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        let _ = self
            .events
            .send(format!("{} from {}", frame.kind(), link.peer_id()));
        let reply = match (&frame, self.origin) {
            (Frame::UsageReport(_), true) => Frame::QuotaLease(QuotaLease {
                lease_id: 1,
                key_id: "k".into(),
                plan: "gold".into(),
                granted: 50,
                expires_unix_ms: 0,
                period_end_unix_ms: 0,
                exhausted: false,
            }),
            (Frame::Purge(p), false) => Frame::PurgeAck(PurgeAck {
                purge_id: p.purge_id,
            }),
            _ => return,
        };
        link.try_send(reply).unwrap();
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("event in time")
        .expect("handler alive")
}

/// An origin and a PoP whose control frames go to recorders.
struct Linked {
    at_origin: Arc<Recorder>,
    origin_events: mpsc::UnboundedReceiver<String>,
    origin: Origin,
    at_pop: Arc<Recorder>,
    pop_events: mpsc::UnboundedReceiver<String>,
    pop: Pop,
}

/// Both see the link come up, with the intersection of the capabilities
/// (plus configuration deltas, bit 0, which both backbones offer).
async fn linked() -> Linked {
    linked_with(settings()).await
}

/// [`linked`], the origin with its own link settings.
async fn linked_with(link: portico_backbone::LinkSettings) -> Linked {
    let pki = Pki::new();
    let (at_origin, mut origin_events) = Recorder::new(true, 0b11);
    let origin = Origin::start_control_with(&pki.material("origin-a"), at_origin.clone(), link);
    let (at_pop, mut pop_events) = Recorder::new(false, 0b110);
    let pop = Pop::start_control(
        &pki.material("pop-a"),
        vec![origin_spec(origin.addr)],
        at_pop.clone(),
    );
    assert_eq!(next(&mut origin_events).await, "up pop-a caps 3");
    assert_eq!(next(&mut pop_events).await, "up origin-a caps 3");
    Linked {
        at_origin,
        origin_events,
        origin,
        at_pop,
        pop_events,
        pop,
    }
}

/// An origin that says `GoAway` reads no more of its control stream: the
/// PoP's subsystems hear the link is down then, while requests still
/// finish on it, and no longer queue frames for it.
#[tokio::test]
async fn a_draining_origins_link_is_down_for_control_at_once() {
    let drain = portico_backbone::LinkSettings {
        drain_timeout: Duration::from_secs(30),
        ..settings()
    };
    let Linked {
        origin,
        at_pop,
        mut pop_events,
        pop,
        ..
    } = linked_with(drain).await;
    pop.wait_for_api("echo").await;
    let link = at_pop.link();
    let pop = Arc::new(pop);
    let in_flight = {
        let pop = Arc::clone(&pop);
        tokio::spawn(async move { pop.get("/prod/hang").await })
    };
    let seen = Arc::clone(&origin.seen);
    eventually(20, "the request reached the origin", || async {
        seen.started.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let stopping = tokio::spawn(origin.stop());
    assert_eq!(next(&mut pop_events).await, "down origin-a");
    assert!(!link.is_open());
    assert!(
        link.try_send(Frame::QuotaReturn(QuotaReturn {
            lease_id: 1,
            unused: 1
        }))
        .is_err()
    );
    assert!(!in_flight.is_finished(), "the request is still in flight");
    in_flight.abort();
    stopping.abort();
}

/// What an origin queued for a PoP just before it stops (purges, lease
/// answers) reaches the PoP before its `GoAway`.
#[tokio::test]
async fn frames_an_origin_queued_at_its_stop_reach_the_pop() {
    let Linked {
        at_origin,
        origin,
        mut pop_events,
        pop,
        ..
    } = linked().await;
    let link = at_origin.link();
    for purge_id in 0..100 {
        let purge = Frame::Purge(Purge {
            purge_id,
            scope: PurgeScope::All,
        });
        link.try_send(purge).unwrap();
    }
    origin.stop().await;
    let mut purged = 0;
    loop {
        match next(&mut pop_events).await.as_str() {
            "purge from origin-a" => purged += 1,
            "down origin-a" => break,
            other => panic!("{other}"),
        }
    }
    assert_eq!(purged, 100);
    drop(pop);
}

/// What a PoP queued on its control stream just before it shuts down (the
/// quota leases it hands back, for one) reaches the origin before the link
/// closes.
#[tokio::test]
async fn frames_queued_at_shutdown_reach_the_origin() {
    let Linked {
        mut origin_events,
        origin,
        pop,
        ..
    } = linked().await;
    let link = pop.backbone.control_link(0).unwrap();
    for i in 0..100 {
        let ret = Frame::QuotaReturn(QuotaReturn {
            lease_id: i,
            unused: 1,
        });
        link.try_send(ret).unwrap();
    }
    pop.backbone.shutdown().await;
    let mut returned = 0;
    loop {
        match next(&mut origin_events).await.as_str() {
            "quota_return from pop-a" => returned += 1,
            "down pop-a" => break,
            other => panic!("{other}"),
        }
    }
    assert_eq!(returned, 100);
    origin.stop().await;
}

#[tokio::test]
async fn control_frames_flow_both_ways_with_verified_peers() {
    let Linked {
        at_origin,
        mut origin_events,
        origin,
        at_pop,
        mut pop_events,
        pop,
    } = linked().await;
    // PoP → origin → PoP: a usage report answered with a lease.
    let report = Frame::UsageReport(UsageReport {
        pop_id: "pop-a".into(),
        window_start_unix_ms: 0,
        entries: vec![UsageEntry {
            scope: "key:gold/k".into(),
            used: 3,
        }],
    });
    pop.backbone
        .control_link(0)
        .unwrap()
        .try_send(report)
        .unwrap();
    assert_eq!(next(&mut origin_events).await, "usage_report from pop-a");
    assert_eq!(next(&mut pop_events).await, "quota_lease from origin-a");
    // Origin → PoP → origin: a purge acknowledged.
    let purge = Frame::Purge(Purge {
        purge_id: 9,
        scope: PurgeScope::All,
    });
    at_origin.link().send(purge).await.unwrap();
    assert_eq!(next(&mut pop_events).await, "purge from origin-a");
    assert_eq!(next(&mut origin_events).await, "purge_ack from pop-a");
    // Only control frames may be sent.
    let err = at_pop
        .link()
        .try_send(Frame::End(Default::default()))
        .unwrap_err();
    assert_eq!(err.as_str(), "not_control");
    // The PoP leaves: both ends hear the link go down, and its handle is dead.
    pop.backbone.shutdown().await;
    assert_eq!(next(&mut pop_events).await, "down origin-a");
    assert_eq!(next(&mut origin_events).await, "down pop-a");
    assert!(!at_pop.link().is_open());
    origin.stop().await;
}
