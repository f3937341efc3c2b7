//! One link at the origin: handshake, control stream, request streams.

use std::sync::Arc;

use portico_config::Definitions;
use portico_proto::stream::{ControlSide, ControlStream};
use portico_proto::{
    Capabilities, Frame, GoAway, Hello, HelloAck, ResetCode, Role, StreamKind, VersionRange,
    negotiate,
};
use quinn::{Connection, VarInt};

use super::config::ConfigPush;
use super::{RequestHandler, Shared, request};
use crate::control::{self, ControlHandler, ControlLink, Outbox, Pongs};
use crate::framed::{FrameReader, FrameWriter};
use crate::{BackboneError, close, tls};

/// The control stream of an established link.
pub(crate) struct Control {
    reader: FrameReader,
    writer: FrameWriter,
    checker: ControlStream,
    /// What control subsystems hold of this link.
    link: ControlLink,
    /// Frames they queued for the PoP.
    outbox: Outbox,
    /// The answer to the PoP's latest ping, while it does not fit.
    pongs: Pongs,
    version: u16,
    /// Snapshots and deltas for this PoP.
    config: ConfigPush,
}

/// Serves one PoP connection from the TLS handshake to its close.
pub(crate) async fn serve_link<H: RequestHandler>(
    admitted: super::Admitted,
    shared: Arc<Shared<H>>,
) {
    let super::Admitted { incoming, slot } = admitted;
    let peer = incoming.remote_address();
    let timeout = shared.settings.handshake_timeout;
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => return tracing::info!(%peer, %err, "backbone TLS handshake refused"),
        Err(_) => return tracing::info!(%peer, "backbone TLS handshake timed out"),
    };
    if tls::negotiated_alpn(&conn).as_deref() != Some(crate::ALPN) {
        conn.close(close::PROTOCOL, b"wrong ALPN");
        return;
    }
    let control = match tokio::time::timeout(timeout, handshake(&conn, &shared)).await {
        Ok(Ok(control)) => control,
        Ok(Err((code, err))) => {
            tracing::warn!(%peer, %err, "backbone handshake failed");
            conn.close(code, err.to_string().as_bytes());
            return;
        }
        Err(_) => {
            conn.close(close::HANDSHAKE_TIMEOUT, b"handshake timed out");
            return;
        }
    };
    // The PoP's Hello is accepted: another link may handshake.
    drop(slot);
    let link = control.link.clone();
    let pop_id = link.peer_id().to_owned();
    tracing::info!(%peer, pop = %pop_id, version = control.version, "backbone link up");
    shared.control.link_up(&link);
    let codec = shared
        .settings
        .request_codec()
        .with_version(control.version);
    let mut control_task = tokio::spawn(control_loop(control, Arc::clone(&shared), conn.clone()));
    request::accept_streams(&conn, &shared, codec).await;
    // Let the control loop say GoAway before the link closes.
    let grace = std::time::Duration::from_millis(500);
    if tokio::time::timeout(grace, &mut control_task)
        .await
        .is_err()
    {
        control_task.abort();
    }
    conn.close(close::NORMAL, b"origin shutting down");
    shared.control.link_down(&link);
    tracing::info!(%peer, pop = %pop_id, "backbone link closed");
}

type HandshakeError = (VarInt, BackboneError);

fn protocol(err: impl Into<BackboneError>) -> HandshakeError {
    (close::PROTOCOL, err.into())
}

/// Reads `Hello` on the first stream, checks version and identity, and
/// buffers `HelloAck` (sent with the first snapshot).
async fn handshake<H>(conn: &Connection, shared: &Shared<H>) -> Result<Control, HandshakeError> {
    let (send, recv) = conn.accept_bi().await.map_err(protocol)?;
    let codec = shared.settings.control_codec();
    let mut reader = FrameReader::new(recv, codec);
    let mut writer = FrameWriter::new(send, codec);
    if reader.preface().await.map_err(protocol)? != StreamKind::Control {
        let err = BackboneError::Handshake("the first stream is not the control stream".into());
        return Err(protocol(err));
    }
    let mut checker = ControlStream::new(ControlSide::Acceptor);
    let frame = reader.next().await.map_err(protocol)?;
    let frame = frame.ok_or_else(|| protocol(BackboneError::Truncated("before Hello")))?;
    checker.on_frame(frame.kind()).map_err(protocol)?;
    let Frame::Hello(hello) = frame else {
        return Err(protocol(BackboneError::Handshake("expected Hello".into())));
    };
    let version = check_hello(conn, &hello)?;
    writer.preface(StreamKind::Control);
    let mut offered = shared.control.capabilities();
    if shared.settings.config_deltas {
        offered = offered.with(Capabilities::CONFIG_DELTA);
    }
    let capabilities = offered.intersect(hello.capabilities);
    let ack = HelloAck {
        chosen_version: version,
        node_id: shared.identity.node_id.clone(),
        role: Role::Origin,
        region: shared.identity.region.clone(),
        capabilities,
    };
    writer.push(&Frame::HelloAck(ack)).map_err(protocol)?;
    reader.set_version(version);
    writer.set_version(version);
    let (link, outbox) = ControlLink::new(&hello.node_id, &hello.region, capabilities);
    Ok(Control {
        reader,
        writer,
        checker,
        link,
        outbox,
        pongs: Pongs::default(),
        version,
        config: ConfigPush::new(&hello.node_id, capabilities, version),
    })
}

fn check_hello(conn: &Connection, hello: &Hello) -> Result<u16, HandshakeError> {
    if hello.role != Role::Pop {
        let err = BackboneError::Handshake(format!("peer role is {}", hello.role.as_str()));
        return Err(protocol(err));
    }
    let version = negotiate(VersionRange::CURRENT, hello.versions)
        .map_err(|e| (close::NO_COMMON_VERSION, e.into()))?;
    if !tls::peer_is(conn, &hello.node_id, Role::Pop) {
        let reason = format!(
            "certificate does not name node `{}` as a PoP",
            hello.node_id
        );
        return Err((close::IDENTITY, BackboneError::Handshake(reason)));
    }
    Ok(version)
}

/// Pushes configuration, answers pings (reading no more while an answer
/// does not fit), and says `GoAway` on shutdown. A
/// broken control stream closes the whole link (the protocol's rule).
async fn control_loop<H>(mut c: Control, shared: Arc<Shared<H>>, conn: Connection) {
    let mut defs = shared.definitions.clone();
    let mut stop = shared.stop.clone();
    let mut progress = tokio::time::Instant::now();
    // The definitions' sender may end before the backbone's stop is seen
    // (a node's reload task ends on the same signal): no more changes, and
    // the link goes on until the stop says GoAway.
    let mut defs_open = true;
    loop {
        // Every turn: after a change, after the PoP asked for a snapshot,
        // and after some of what is buffered went out. Only while the send
        // buffer has room: a PoP that reads slowly gets the definitions
        // current when there is, not every snapshot made meanwhile (16 MiB
        // each at most) buffered in turn.
        let current = Arc::clone(&defs.borrow_and_update());
        if c.writer.pending() < control::SEND_BUFFER
            && let Err(err) = c.config.sync(&mut c.writer, &current, &shared.deltas)
        {
            tracing::error!(%err, "configuration not sent");
        }
        let reading = c.pongs.release(&mut c.writer);
        let pending = c.writer.pending();
        let stall = control::stall_deadline(pending, &mut progress);
        tokio::select! {
            changed = defs.changed(), if defs_open => defs_open = changed.is_ok(),
            () = crate::settings::stopped(&mut stop) => return say_goaway(&mut c).await,
            sent = c.writer.send_some(), if pending > 0 => {
                if let Err(err) = sent {
                    return tracing::debug!(%err, "control stream closed");
                }
                progress = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(stall), if pending > 0 => {
                let reason = "the PoP stopped reading the control stream";
                tracing::warn!(pop = %c.link.peer_id(), "{reason}; closing the link");
                conn.close(close::PROTOCOL, reason.as_bytes());
                return;
            }
            Some(frame) = c.outbox.recv(), if pending < control::SEND_BUFFER => c.writer.push_queued(&frame),
            frame = c.reader.next(), if reading => match on_frame(&mut c, shared.control.as_ref(), frame, &current) {
                Ok(true) => {}
                // The PoP finished its control stream: it is closing the link.
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(pop = %c.link.peer_id(), %err, "control stream failed; closing the link");
                    conn.close(close::PROTOCOL, err.to_string().as_bytes());
                    return;
                }
            },
        }
    }
}

/// Handles one frame from the PoP; `Ok(false)` when its control stream ended.
fn on_frame(
    c: &mut Control,
    handler: &dyn ControlHandler,
    frame: Result<Option<Frame>, BackboneError>,
    current: &Definitions,
) -> Result<bool, BackboneError> {
    let Some(frame) = frame? else {
        return Ok(false);
    };
    c.checker.on_frame(frame.kind())?;
    match frame {
        Frame::Ping(p) => c.pongs.on_ping(&mut c.writer, p.nonce),
        Frame::GoAway(g) => {
            tracing::info!(pop = %c.link.peer_id(), reason = %g.reason, "PoP going away")
        }
        Frame::ConfigRequest(r) => c.config.on_request(&r, current),
        other => handler.on_frame(&c.link, other),
    }
    Ok(true)
}

/// Sends what the subsystems queued, then `GoAway`, and finishes the
/// control stream.
async fn say_goaway(c: &mut Control) {
    // What subsystems queued before the stop goes first (purges, lease
    // answers); the PoP takes the link as down for them from `GoAway` on,
    // and what they queue later fails at once.
    c.outbox.close_into(&mut c.writer);
    let w = &mut c.writer;
    let frame = Frame::GoAway(GoAway {
        reason: "origin shutting down".into(),
        last_stream_hint: 0,
    });
    if w.push(&frame).is_ok() && w.finish().await.is_ok() {
        // The link closes once this task ends, and a close discards what
        // quinn has not delivered: wait until the PoP has acknowledged all
        // of it (the link's own grace bounds the wait).
        return w.stopped().await;
    }
    w.abort(ResetCode::Cancelled);
}
