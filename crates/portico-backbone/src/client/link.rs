//! One PoP → origin link: dial, handshake, control stream, reconnect.

use std::sync::Arc;
use std::time::Duration;

use portico_proto::stream::{ControlSide, ControlStream};
use portico_proto::{
    Capabilities, ConfigDelta, Frame, FrameKind, GoAway, Hello, HelloAck, Role, StreamKind,
    VersionRange,
};
use quinn::Connection;
use tokio::sync::watch;

use super::{Inner, LinkState, Session};
use crate::control::{self, ControlLink, Outbox, Pongs};
use crate::framed::{FrameReader, FrameWriter};
use crate::runtime::InFlight;
use crate::settings::Backoff;
use crate::sync::{Applied, Via};
use crate::{BackboneError, close, tls};

/// The control stream of a link, as the PoP holds it.
struct Control {
    reader: FrameReader,
    writer: FrameWriter,
    checker: ControlStream,
    ack: HelloAck,
    /// What control subsystems hold of this link, and what they queued.
    link: ControlLink,
    outbox: Outbox,
    /// The answer to the origin's latest ping, while it does not fit.
    pongs: Pongs,
}

/// Keeps origin `index`'s link up until `stop`: dial, serve the session
/// until it dies, back off, dial again.
pub(super) async fn run(
    inner: Arc<Inner>,
    endpoint: quinn::Endpoint,
    index: usize,
    mut stop: watch::Receiver<bool>,
) {
    let link = &inner.links[index];
    let s = &inner.settings;
    let mut backoff = Backoff::new(s.backoff_min, s.backoff_max);
    loop {
        link.set_state(LinkState::Connecting);
        let dialed = tokio::select! {
            dialed = tokio::time::timeout(s.handshake_timeout, dial(&inner, &endpoint, index)) => dialed,
            () = crate::settings::stopped(&mut stop) => return,
        };
        match dialed.unwrap_or(Err(BackboneError::Timeout("the backbone handshake"))) {
            Ok((conn, control)) => {
                let began = tokio::time::Instant::now();
                let reason = session(&inner, index, conn, control, &mut stop).await;
                tracing::warn!(origin = %link.spec.address, %reason, "backbone link down");
                // Only a link that lasted starts over from the shortest delay:
                // an origin that accepts and then drops every link at once
                // would otherwise be dialed (handshake, snapshot, and a PoP
                // cache emptied each time) ten times a second for ever.
                if began.elapsed() >= s.backoff_max.max(LASTED) {
                    backoff.reset();
                }
            }
            Err(err) => {
                tracing::warn!(origin = %link.spec.address, %err, "backbone dial failed");
                link.set_state(LinkState::Down(err.to_string()));
            }
        }
        if *stop.borrow() {
            return;
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::settings::stopped(&mut stop) => return,
        }
    }
}

/// How long a link must have been up for the next dial to start from the
/// shortest back-off again.
const LASTED: Duration = Duration::from_secs(10);

/// QUIC handshake (mutual TLS), then `Hello` → `HelloAck` on the control stream.
async fn dial(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    index: usize,
) -> Result<(Connection, Control), BackboneError> {
    let spec = &inner.links[index].spec;
    let connect_err = |reason: String| BackboneError::Connect {
        addr: spec.address,
        reason,
    };
    let connecting = endpoint
        .connect_with(inner.client_config.clone(), spec.address, &spec.server_name)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = connecting.await.map_err(|e| connect_err(e.to_string()))?;
    let (send, recv) = conn.open_bi().await?;
    let codec = inner.settings.control_codec();
    let mut writer = FrameWriter::new(send, codec);
    writer.preface(StreamKind::Control);
    writer.push(&Frame::Hello(Hello {
        node_id: inner.identity.node_id.clone(),
        role: Role::Pop,
        region: inner.identity.region.clone(),
        versions: VersionRange::CURRENT,
        capabilities: offered(inner),
    }))?;
    writer.flush().await?;
    let mut reader = FrameReader::new(recv, codec);
    let mut ack = read_ack(&mut reader, &conn).await?;
    // The origin is who its certificate says, of the region this PoP homes
    // there: an origin's word alone would let it stand in for another
    // (taking its region's quota leases, replacing its link).
    if !tls::peer_is(&conn, &ack.node_id, Role::Origin) {
        let reason = format!(
            "certificate does not name node `{}` as an origin",
            ack.node_id
        );
        conn.close(close::IDENTITY, reason.as_bytes());
        return Err(BackboneError::Handshake(reason));
    }
    if ack.region != spec.region {
        let reason = format!(
            "origin `{}` is of region `{}`, not `{}`",
            ack.node_id, ack.region, spec.region
        );
        conn.close(close::IDENTITY, reason.as_bytes());
        return Err(BackboneError::Handshake(reason));
    }
    ack.capabilities = ack.capabilities.intersect(offered(inner));
    reader.set_version(ack.chosen_version);
    writer.set_version(ack.chosen_version);
    let (link, outbox) = ControlLink::new(&ack.node_id, &ack.region, ack.capabilities);
    let control = Control {
        reader,
        writer,
        checker: handshaken(),
        ack,
        link,
        outbox,
        pongs: Pongs::default(),
    };
    Ok((conn, control))
}

/// What this PoP offers: its control subsystems' features, and configuration
/// deltas, which the backbone handles itself.
fn offered(inner: &Inner) -> Capabilities {
    let mut caps = inner.control.capabilities();
    if inner.settings.config_deltas {
        caps = caps.with(Capabilities::CONFIG_DELTA);
    }
    caps
}

async fn read_ack(reader: &mut FrameReader, conn: &Connection) -> Result<HelloAck, BackboneError> {
    // The origin closes the link instead of answering when it refuses us;
    // its close reason is the useful error then.
    let refused = |err: BackboneError| match conn.close_reason() {
        Some(reason) => BackboneError::Connection(reason),
        None => err,
    };
    if reader.preface().await.map_err(refused)? != StreamKind::Control {
        return Err(BackboneError::Handshake(
            "origin answered on another stream kind".into(),
        ));
    }
    let mut checker = ControlStream::new(ControlSide::Opener);
    let frame = reader.next().await.map_err(refused)?;
    let frame = frame.ok_or(BackboneError::Truncated("before HelloAck"))?;
    checker.on_frame(frame.kind())?;
    let Frame::HelloAck(ack) = frame else {
        return Err(BackboneError::Handshake("expected HelloAck".into()));
    };
    if ack.role != Role::Origin || !VersionRange::CURRENT.contains(ack.chosen_version) {
        return Err(BackboneError::Handshake(format!(
            "origin chose version {} as {}",
            ack.chosen_version,
            ack.role.as_str()
        )));
    }
    Ok(ack)
}

fn handshaken() -> ControlStream {
    let mut checker = ControlStream::new(ControlSide::Opener);
    // Cannot fail: a fresh opener checker accepts HelloAck.
    let _ = checker.on_frame(portico_proto::FrameKind::HelloAck);
    checker
}

/// Serves an established link until it dies or `stop`; returns why it ended.
async fn session(
    inner: &Inner,
    index: usize,
    conn: Connection,
    mut control: Control,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let link = &inner.links[index];
    let origin_id = control.ack.node_id.clone();
    let session = Arc::new(Session {
        conn: conn.clone(),
        codec: inner
            .settings
            .request_codec()
            .with_version(control.ack.chosen_version),
        origin_id: origin_id.clone(),
        region: link.spec.region.clone(),
        control: control.link.clone(),
        in_flight: inner.in_flight.clone(),
        outstanding: inner.replicated(index).then(InFlight::default),
    });
    link.set_state(LinkState::Up(session));
    tracing::info!(origin = %origin_id, address = %link.spec.address, region = %link.spec.region, "backbone link up");
    inner.control.link_up(&control.link);
    let reason = serve_session(inner, index, &conn, &mut control, stop).await;
    // Requests stop choosing the link before control subsystems hear it is gone.
    link.set_state(LinkState::Down(reason.clone()));
    inner.sync.link_down(index);
    inner.control.link_down(&control.link);
    reason
}

/// The control stream of an up link, until the link dies or `stop`.
async fn serve_session(
    inner: &Inner,
    index: usize,
    conn: &Connection,
    control: &mut Control,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let link = &inner.links[index];
    let mut open = true;
    let mut progress = tokio::time::Instant::now();
    // Set once the origin drains the link (GoAway, or its control stream
    // ended): twice the drain timeout later (requests the origin answers
    // within its own drain timeout are done by then) the link is closed and
    // dialed again, so an origin that never closes a drained link cannot
    // keep its region down.
    let mut drained: Option<tokio::time::Instant> = None;
    loop {
        let reading = control.pongs.release(&mut control.writer);
        let pending = control.writer.pending();
        let stall = control::stall_deadline(pending, &mut progress);
        if drained.is_none() && matches!(*link.state.borrow(), LinkState::Draining) {
            drained = Some(tokio::time::Instant::now() + inner.settings.drain_timeout * 2);
        }
        tokio::select! {
            err = conn.closed() => return err.to_string(),
            () = crate::settings::stopped(stop) => return goodbye(conn, control).await,
            sent = control.writer.send_some(), if pending > 0 => {
                if let Err(err) = sent {
                    return err.to_string();
                }
                progress = tokio::time::Instant::now();
            }
            () = tokio::time::sleep_until(stall), if pending > 0 => {
                let reason = "the origin stopped reading the control stream";
                conn.close(close::PROTOCOL, reason.as_bytes());
                return reason.into();
            }
            () = tokio::time::sleep_until(drained.unwrap_or(stall)), if drained.is_some() => {
                let reason = "the origin drained the link and did not close it";
                conn.close(close::NORMAL, reason.as_bytes());
                return reason.into();
            }
            Some(frame) = control.outbox.recv(), if pending < control::SEND_BUFFER => {
                control.writer.push_queued(&frame);
            }
            frame = control.reader.next(), if open && reading => {
                match on_frame(inner, index, control, frame) {
                    Ok(still_open) => open = still_open,
                    Err(err) => {
                        conn.close(close::PROTOCOL, err.to_string().as_bytes());
                        return err.to_string();
                    }
                }
            }
        }
    }
}

/// Handles one control frame from the origin; `Ok(false)` once the origin
/// has finished its control stream.
fn on_frame(
    inner: &Inner,
    index: usize,
    c: &mut Control,
    frame: Result<Option<Frame>, BackboneError>,
) -> Result<bool, BackboneError> {
    let link = &inner.links[index];
    let Some(frame) = frame? else {
        // The origin finished its control stream (after GoAway): no new requests.
        draining(inner, index, c);
        return Ok(false);
    };
    c.checker.on_frame(frame.kind())?;
    match frame {
        Frame::ConfigSnapshot(snapshot) => {
            let result = inner
                .sync
                .apply(index, &link.spec.region, &c.ack.node_id, snapshot);
            log_applied(&c.ack.node_id, Via::Snapshot, result);
        }
        Frame::ConfigDelta(delta) => on_delta(inner, index, c, &delta)?,
        Frame::Ping(p) => c.pongs.on_ping(&mut c.writer, p.nonce),
        Frame::GoAway(g) => {
            tracing::info!(origin = %c.ack.node_id, reason = %g.reason, "origin going away");
            draining(inner, index, c);
        }
        other => inner.control.on_frame(&c.link, other),
    }
    Ok(true)
}

/// The origin drains the link: requests in flight finish on it, new ones
/// go elsewhere, and so does the control traffic: an origin that said
/// `GoAway` reads no more of its control stream, so the subsystems learn
/// the link is down now (a lease asked of it would wait out its timeout,
/// one given back to it would be lost) rather than when it closes.
fn draining(inner: &Inner, index: usize, c: &mut Control) {
    if matches!(*inner.links[index].state.borrow(), LinkState::Draining) {
        return;
    }
    inner.links[index].set_state(LinkState::Draining);
    c.outbox.close();
    inner.control.link_down(&c.link);
}

/// Applies a delta; one that cannot be applied asks the origin for a
/// snapshot (the PoP keeps serving what it had until then).
fn on_delta(
    inner: &Inner,
    index: usize,
    c: &mut Control,
    delta: &ConfigDelta,
) -> Result<(), BackboneError> {
    let region = &inner.links[index].spec.region;
    let (result, request) = inner.sync.apply_delta(index, region, &c.ack.node_id, delta);
    if let Err(err) = &result {
        tracing::warn!(origin = %c.ack.node_id, %err, asking = request.is_some(), "configuration delta not applied");
    }
    log_applied(&c.ack.node_id, Via::Delta, result);
    let Some(request) = request else {
        return Ok(());
    };
    if c.ack.chosen_version < FrameKind::ConfigRequest.since_version() {
        // An origin sends deltas only on links that can ask back.
        tracing::error!(origin = %c.ack.node_id, "cannot ask for a snapshot on a version-1 link");
        return Ok(());
    }
    c.writer.push(&Frame::ConfigRequest(request))
}

fn log_applied(origin: &str, via: Via, result: Result<Applied, BackboneError>) {
    match result {
        Ok(Applied::Installed(running)) => tracing::info!(
            origin,
            via = via.as_str(),
            version = format_args!("{:016x}", running.version),
            sha256 = %running.hash_hex(),
            "configuration applied"
        ),
        Ok(Applied::Unchanged) => {}
        // A delta's failure is logged with its follow-up by the caller.
        Err(_) if via == Via::Delta => {}
        Err(err) => {
            tracing::error!(%err, "configuration snapshot rejected; keeping the previous one")
        }
    }
}

/// PoP shutdown: `GoAway`, then close the link.
async fn goodbye(conn: &Connection, c: &mut Control) -> String {
    // What subsystems queued before the stop goes too (quota leases handed
    // back at shutdown, above all: lost, their requests stay counted as
    // used until the period ends).
    c.outbox.close_into(&mut c.writer);
    let frame = Frame::GoAway(GoAway {
        reason: "pop shutting down".into(),
        last_stream_hint: 0,
    });
    if c.writer.push(&frame).is_ok() && c.writer.finish().await.is_ok() {
        // Closing the connection at once would drop what is still unsent
        // or unacknowledged: the origin ends its control stream once it has
        // read up to ours, so wait for that (or the grace to run out).
        let read_to_end = async { while let Ok(Some(_)) = c.reader.next().await {} };
        let _ = tokio::time::timeout(GOODBYE_GRACE, read_to_end).await;
    }
    conn.close(close::NORMAL, b"pop shutting down");
    "shutting down".into()
}

/// How long a PoP leaving waits for its origin to have read its last
/// control frames (within `Backbone::shutdown`'s grace).
const GOODBYE_GRACE: Duration = Duration::from_secs(1);
