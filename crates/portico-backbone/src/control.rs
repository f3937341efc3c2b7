//! The control stream, opened to other subsystems.
//!
//! The backbone itself handles the handshake, configuration snapshots,
//! `Ping`/`Pong` ([`Pongs`]) and `GoAway`. Every other control frame (purges, usage
//! reports, quota leases and returns, rate shares, authorizer decisions,
//! config deltas) goes to a [`ControlHandler`], on either end, together with
//! a [`ControlLink`] to answer on. The same trait serves the origin (one link
//! per PoP) and the PoP (one link per origin).

use std::sync::Arc;

use portico_proto::{Capabilities, Frame, FrameKind, Pong, StreamKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};

use crate::BackboneError;
use crate::framed::FrameWriter;

/// Frames waiting to be written on one control stream. Bounded, so a
/// subsystem that floods a slow peer sees `try_send` fail instead of
/// growing memory.
const OUTBOX: usize = 1024;

/// Bytes of encoded frames waiting in one outbox, besides [`OUTBOX`]
/// frames: a control frame may take 16 MiB, so a bound on their number
/// alone would let a link hold 16 GiB for a peer that reads nothing. As
/// much as the largest frame, which no legitimate burst comes near (frames
/// leave the outbox whenever the stream's send buffer holds less than
/// [`SEND_BUFFER`]); a frame larger than the whole budget waits for an
/// empty outbox.
///
/// An outbox full by either bound is the same to a sender: `try_send`
/// fails with `LinkBusy`, `send` waits. What the node's subsystems then do
/// with each kind (`crates/portico`): a `Purge` waits in the origin's
/// backlog for that link (bounded too; past it, or after 30 s without
/// room, the backlog becomes one purge of everything, so no purge is lost
/// while the link stays up); a `QuotaLease` not sent goes back to the
/// book; a `QuotaLeaseRequest` fails its ask at once; a `QuotaReturn` not
/// sent leaves the lease counted as used (stranded, never overshot); a
/// `RateShare` not sent is sent again at the next rebalance; a
/// `UsageReport` not sent is replaced by the next one (every 250 ms); a
/// `PurgeAck` not sent is only missing from the origin's debug log.
pub(crate) const OUTBOX_BYTES: usize = portico_proto::MAX_FRAME_LIMIT as usize;

/// Queued frames are taken into a control stream's send buffer only while
/// it holds less than this: a peer that reads slowly holds them back in the
/// bounded outbox instead of in memory.
pub(crate) const SEND_BUFFER: usize = 1 << 20;

/// A control stream whose buffered frames made no progress for this long
/// closes its link (to be dialed again): the peer stopped reading it, and
/// configuration, purges and quota would otherwise freeze while requests
/// still flow.
pub(crate) const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// When a control stream's writes count as stalled: [`STALL`] after the
/// last progress, which is now while nothing is buffered.
pub(crate) fn stall_deadline(
    pending: usize,
    progress: &mut tokio::time::Instant,
) -> tokio::time::Instant {
    if pending == 0 {
        *progress = tokio::time::Instant::now();
    }
    *progress + STALL
}

/// The `Pong` a control loop owes its peer.
///
/// A `Ping` is answered at once while the send buffer holds less than
/// [`SEND_BUFFER`]; past it only the latest nonce is kept, and the loop stops
/// reading the control stream until that answer fits: a peer that floods
/// pings and reads none of the answers is held back by QUIC flow control
/// instead of growing our send buffer.
#[derive(Debug, Default)]
pub(crate) struct Pongs {
    owed: Option<u64>,
}

impl Pongs {
    /// Answers a `Ping` with `nonce`, or owes the answer.
    pub(crate) fn on_ping(&mut self, writer: &mut FrameWriter, nonce: u64) {
        self.owed = Some(nonce);
        self.release(writer);
    }

    /// Buffers the owed `Pong` if there is room now; whether the loop may
    /// read (nothing is owed any more).
    pub(crate) fn release(&mut self, writer: &mut FrameWriter) -> bool {
        if writer.pending() < SEND_BUFFER
            && let Some(nonce) = self.owed.take()
        {
            writer.push_queued(&Frame::Pong(Pong { nonce }));
        }
        self.owed.is_none()
    }
}

/// Receives the control frames the backbone does not handle itself.
///
/// Methods run on the link's control task: they must not block. Work that
/// waits (storage, other links) belongs in a task of the handler's own,
/// which answers later through the [`ControlLink`] it kept.
pub trait ControlHandler: Send + Sync + 'static {
    /// Features this node offers in the handshake; a link runs with the
    /// intersection of both ends' ([`ControlLink::capabilities`]).
    fn capabilities(&self) -> Capabilities {
        Capabilities(0)
    }

    /// A link finished its handshake. Keep `link` to send on it.
    fn link_up(&self, link: &ControlLink) {
        let _ = link;
    }

    /// The link is gone (closed, lost, or this node is shutting down).
    /// Frames sent on it from now on fail.
    fn link_down(&self, link: &ControlLink) {
        let _ = link;
    }

    /// A control frame from the peer (already checked for order and kind).
    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        let _ = (link, frame);
    }
}

/// No subsystem listens: frames the backbone does not handle are logged
/// and dropped.
pub(crate) struct Ignore;

impl ControlHandler for Ignore {
    fn on_frame(&self, link: &ControlLink, frame: Frame) {
        tracing::debug!(peer = %link.peer_id(), frame = %frame.kind(), "control frame ignored");
    }
}

/// A queued frame and the share of [`OUTBOX_BYTES`] it holds until it is
/// taken out.
type Queued = (Frame, OwnedSemaphorePermit);

/// One established link, as a control subsystem sees it.
#[derive(Debug, Clone)]
pub struct ControlLink {
    peer_id: Arc<str>,
    region: Arc<str>,
    capabilities: Capabilities,
    outbox: mpsc::Sender<Queued>,
    /// The bytes the outbox may still take: one permit a byte.
    room: Arc<Semaphore>,
}

/// The receiving end of a link's outbox. A frame taken out gives back the
/// bytes it held; dropped or closed, the link is down and its senders fail.
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::Receiver<Queued>,
    room: Arc<Semaphore>,
}

impl Outbox {
    /// The next frame, `None` once the outbox is closed and empty.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.rx.recv().await.map(|(frame, _room)| frame)
    }

    /// The next frame if one is queued.
    pub fn try_recv(&mut self) -> Result<Frame, mpsc::error::TryRecvError> {
        self.rx.try_recv().map(|(frame, _room)| frame)
    }

    /// Takes no more frames (those queued can still be taken); senders
    /// waiting for room fail.
    pub fn close(&mut self) {
        self.rx.close();
        self.room.close();
    }

    /// Closes the outbox and queues what it held on `writer`: a link
    /// leaving sends what the subsystems queued before it did.
    pub(crate) fn close_into(&mut self, writer: &mut FrameWriter) {
        self.close();
        while let Ok(frame) = self.try_recv() {
            writer.push_queued(&frame);
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.room.close();
    }
}

/// The bytes `frame` holds of its outbox's [`OUTBOX_BYTES`]: its encoded
/// size, and no more than the whole budget.
fn cost(frame: &Frame) -> u32 {
    let bytes = portico_proto::encoded_len(frame).min(OUTBOX_BYTES);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl ControlLink {
    /// A link and the receiving end of its outbox. The backbone's control
    /// task drains the outbox of the links it makes; a test of a
    /// [`ControlHandler`] reads the frames its handler sends from it.
    pub fn new(peer_id: &str, region: &str, capabilities: Capabilities) -> (ControlLink, Outbox) {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let room = Arc::new(Semaphore::new(OUTBOX_BYTES));
        let link = ControlLink {
            peer_id: Arc::from(peer_id),
            region: Arc::from(region),
            capabilities,
            outbox,
            room: Arc::clone(&room),
        };
        (link, Outbox { rx, room })
    }

    /// The peer's node id. On the origin it is verified: the PoP's
    /// certificate names it.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The peer's region (an origin's; a PoP's may be empty).
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Features both ends offered.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Whether the link is still up (its control task still runs).
    pub fn is_open(&self) -> bool {
        !self.outbox.is_closed()
    }

    /// Whether `other` is this same link (a clone of it), not merely one to
    /// the same peer: a peer that reconnects has a new link while its old one
    /// may not be known to be down yet.
    pub fn is_same(&self, other: &ControlLink) -> bool {
        self.outbox.same_channel(&other.outbox)
    }

    /// Queues a frame for the peer without waiting. Fails when the frame is
    /// not a control frame, the link is gone, or its outbox is full (of
    /// frames or of bytes; see [`OUTBOX_BYTES`]).
    pub fn try_send(&self, frame: Frame) -> Result<(), BackboneError> {
        check_sendable(frame.kind())?;
        let room = match Arc::clone(&self.room).try_acquire_many_owned(cost(&frame)) {
            Ok(room) => room,
            Err(TryAcquireError::NoPermits) => return Err(BackboneError::LinkBusy),
            Err(TryAcquireError::Closed) => return Err(BackboneError::LinkClosed),
        };
        self.outbox.try_send((frame, room)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackboneError::LinkBusy,
            mpsc::error::TrySendError::Closed(_) => BackboneError::LinkClosed,
        })
    }

    /// Queues a frame, waiting while the outbox is full (senders get room
    /// in the order they asked).
    pub async fn send(&self, frame: Frame) -> Result<(), BackboneError> {
        check_sendable(frame.kind())?;
        let room = Arc::clone(&self.room)
            .acquire_many_owned(cost(&frame))
            .await
            .map_err(|_| BackboneError::LinkClosed)?;
        self.outbox
            .send((frame, room))
            .await
            .map_err(|_| BackboneError::LinkClosed)
    }
}

/// Only frames of the control stream, and never a second handshake.
fn check_sendable(kind: FrameKind) -> Result<(), BackboneError> {
    let handshake = matches!(kind, FrameKind::Hello | FrameKind::HelloAck);
    if handshake || !kind.allowed_on(StreamKind::Control) {
        return Err(BackboneError::NotControl(kind.as_str()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portico_proto::{Ping, Purge, PurgeAck, PurgeScope, encoded_len, limits};

    use super::*;

    /// Large frames for a peer that reads nothing (nobody takes them out of
    /// the outbox): the outbox holds no more than its byte budget, far
    /// fewer frames than its count bound. A sender waiting for room gets it
    /// once a frame is taken, and fails once the link is down.
    #[tokio::test]
    async fn an_outbox_holds_no_more_bytes_than_its_budget() {
        let (link, mut rx) = ControlLink::new("pop-a", "", Capabilities(0));
        let purge = |purge_id| {
            Frame::Purge(Purge {
                purge_id,
                scope: PurgeScope::Url("u".repeat(limits::MAX_PURGE_PATH)),
            })
        };
        let size = encoded_len(&purge(0));
        let mut queued = 0;
        for id in 0.. {
            match link.try_send(purge(id)) {
                Ok(()) => queued += size,
                Err(err) => {
                    assert_eq!(err.as_str(), "link_busy");
                    break;
                }
            }
        }
        assert!(queued <= OUTBOX_BYTES, "{} MiB queued", queued >> 20);
        assert!(
            queued + size > OUTBOX_BYTES,
            "room left: {queued} bytes queued"
        );
        let mut waiting = tokio::spawn({
            let link = link.clone();
            async move { link.send(purge(u64::MAX)).await }
        });
        let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(early.is_err(), "sent into a full outbox");
        assert_eq!(rx.recv().await, Some(purge(0)));
        waiting.await.unwrap().unwrap();
        let err = link.try_send(purge(0)).unwrap_err();
        assert_eq!(err.as_str(), "link_busy");
        // Down: a sender waiting for room fails.
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { link.send(purge(u64::MAX)).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        let err = waiting.await.unwrap().unwrap_err();
        assert_eq!(err.as_str(), "link_closed");
    }

    #[tokio::test]
    async fn links_queue_control_frames_only() {
        let (link, mut rx) = ControlLink::new("pop-a", "", Capabilities(0));
        assert_eq!(link.peer_id(), "pop-a");
        link.try_send(Frame::PurgeAck(PurgeAck { purge_id: 7 }))
            .unwrap();
        let err = link.try_send(Frame::End(Default::default())).unwrap_err();
        assert_eq!(err.as_str(), "not_control");
        assert_eq!(
            rx.recv().await,
            Some(Frame::PurgeAck(PurgeAck { purge_id: 7 }))
        );
        drop(rx);
        assert!(!link.is_open());
        let err = link.send(Frame::Ping(Ping { nonce: 1 })).await.unwrap_err();
        assert_eq!(err.as_str(), "link_closed");
    }
}
