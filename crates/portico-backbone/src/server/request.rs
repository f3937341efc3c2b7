//! Request streams at the origin: one bidirectional stream per request.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use portico_gateway::Body;
use portico_proto::stream::{Direction, HalfStream};
use portico_proto::{Codec, End, Frame, RequestHead, Reset, ResetCode, StreamKind};
use quinn::{Connection, RecvStream, SendStream};
use tokio::task::JoinSet;

use super::{RequestHandler, Shared};
use crate::BackboneError;
use crate::body::{SendBodyError, recv_body, send_body};
use crate::framed::{FrameReader, FrameWriter};
use crate::runtime::InFlightGuard;
use crate::wire;

/// Accepts request streams until the link closes or the server stops; then
/// refuses new streams while those in flight finish. Streams still open at
/// the drain timeout are aborted (their halves reset).
///
/// The tasks live in a `JoinSet` owned by this loop: spawning and reaping
/// touch no state shared with other links or streams. Finished tasks are
/// reaped as each new stream comes (`try_join_next`), not waited for: a
/// `join_next` branch in the loop would wake it once more per request, on
/// the link's one thread, only to drop a finished task.
pub(super) async fn accept_streams<H: RequestHandler>(
    conn: &Connection,
    shared: &Arc<Shared<H>>,
    codec: Codec,
) {
    let mut streams = JoinSet::new();
    let mut stop = shared.stop.clone();
    let peer = conn.remote_address();
    loop {
        let accepted = tokio::select! {
            () = crate::settings::stopped(&mut stop) => {
                shared.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            accepted = conn.accept_bi() => accepted,
        };
        let Ok((send, recv)) = accepted else { return };
        while streams.try_join_next().is_some() {}
        // Boxed: the future (the origin's whole pipeline and its backend
        // client) is several kilobytes, and spawning copies it whole; a box
        // is copied as a pointer.
        let in_flight = shared.in_flight.enter();
        streams.spawn(Box::pin(serve_stream(
            send,
            recv,
            Arc::clone(shared),
            codec,
            peer,
            in_flight,
        )));
    }
    if !drain(conn, &mut streams, shared.settings.drain_timeout).await {
        tracing::warn!(
            "requests still in flight (or their responses not yet acknowledged) after the drain timeout; resetting them"
        );
        streams.abort_all();
        while streams.join_next().await.is_some() {}
    }
    // Before the link closes, a few round trips for what is still on its
    // way: the RESET_STREAMs of a drain that timed out (quinn 0.11 holds
    // CONNECTION_CLOSE back while stream data is pending and the congestion
    // window is full, quinn-rs/quinn#2785, and the PoP would then only
    // learn of the close from its idle timeout), and the tails of responses
    // finished just before the stop (those finished during the drain waited
    // for their acknowledgement already).
    let rtt = conn.rtt().saturating_mul(3);
    tokio::time::sleep(rtt.clamp(Duration::from_millis(20), Duration::from_millis(500))).await;
}

/// Refuses new streams until those in flight finish (`true`) or `timeout`
/// passes (`false`).
async fn drain(conn: &Connection, streams: &mut JoinSet<()>, timeout: Duration) -> bool {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            joined = streams.join_next() => if joined.is_none() { return true },
            () = &mut deadline => return false,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => refuse(send, recv),
                Err(_) => return true,
            },
        }
    }
}

/// A stream opened after `GoAway`: the PoP may retry it elsewhere.
fn refuse(mut send: SendStream, mut recv: RecvStream) {
    let code = crate::stream_code(ResetCode::Refused);
    let _ = send.reset(code);
    let _ = recv.stop(code);
}

/// Serves one request stream: head, handler, response. The handler future
/// is raced against the PoP's `STOP_SENDING`, so a client that went away
/// cancels the backend request.
///
/// The PoP's deadline is not enforced here: the route's own timeout applies
/// in the origin's pipeline, and when the PoP's timeout fires first it
/// resets the stream, which cancels the handler like any client that left.
async fn serve_stream<H: RequestHandler>(
    send: SendStream,
    recv: RecvStream,
    shared: Arc<Shared<H>>,
    codec: Codec,
    peer: std::net::SocketAddr,
    _in_flight: InFlightGuard,
) {
    let mut reader = FrameReader::new(recv, shared.settings.head_codec(codec.version()));
    let mut writer = FrameWriter::new(send, codec);
    let stopped = writer.stopped();
    // 1. Preface and head, within the head timeout.
    let head = match read_head_within(&mut reader, shared.settings.head_timeout).await {
        Ok(head) => head,
        Err((code, err)) => return reject(reader, writer, code, &err),
    };
    reader.set_codec(codec);
    // 2. The HTTP request, as the origin's pipeline will see it.
    let (parts, conn, routed) = match wire::request_from_head(*head, peer, shared.local_addr) {
        Ok(split) => split,
        Err(err) => return reject(reader, writer, ResetCode::Protocol, &err),
    };
    // For logs only: a clone of the value is a reference count, not a copy.
    let request_id = parts
        .headers
        .get(&portico_gateway::headers::REQUEST_ID)
        .cloned();
    let body = if reader.buffered_end() {
        portico_gateway::body::empty()
    } else {
        recv_body(reader, started_request_half(), None, None)
    };
    let req = Request::from_parts(parts, body);
    let handler = Arc::clone(&shared.handler);
    let served_by = &shared.identity.node_id;
    // 3. Handler and response, unless the PoP cancels first.
    let work = async {
        let resp = handler.handle(req, Arc::new(conn), routed).await;
        respond(&mut writer, resp, served_by).await
    };
    let outcome = tokio::select! {
        biased;
        () = stopped => None,
        result = work => Some(result),
    };
    let request_id = request_id.as_ref().and_then(|v| v.to_str().ok());
    // Answered while the origin drains: the link closes once every stream
    // task is done, and a close discards what quinn has not yet delivered,
    // so this task lasts until the PoP has acknowledged the whole response
    // (the drain's own deadline bounds it).
    let stopping = shared.stopping.load(std::sync::atomic::Ordering::Relaxed);
    let delivered = (matches!(outcome, Some(Ok(()))) && stopping).then(|| writer.stopped());
    finish(writer, outcome, request_id.unwrap_or("")).await;
    if let Some(delivered) = delivered {
        delivered.await;
    }
}

/// The request half after its head: bodies follow.
fn started_request_half() -> HalfStream {
    let mut half = HalfStream::request(Direction::Request);
    // Cannot fail: a fresh request half accepts its head.
    let _ = half.on_frame(portico_proto::FrameKind::RequestHead);
    half
}

type Rejection = (ResetCode, BackboneError);

/// [`read_head`] within `timeout`. The head has usually arrived with the
/// stream (quinn announces a stream with its first bytes), so the timer is
/// only armed when it has not.
async fn read_head_within(
    reader: &mut FrameReader,
    timeout: Duration,
) -> Result<Box<RequestHead>, Rejection> {
    let read = read_head(reader);
    tokio::pin!(read);
    if let Some(head) = (&mut read).now_or_never() {
        return head;
    }
    let timed_out = (ResetCode::Timeout, BackboneError::Timeout("request head"));
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(timed_out))
}

async fn read_head(reader: &mut FrameReader) -> Result<Box<RequestHead>, Rejection> {
    let proto = |e: BackboneError| (e.reset_code(), e);
    match reader.preface().await.map_err(proto)? {
        StreamKind::Request => {}
        StreamKind::WebSocket => {
            let err = BackboneError::Handshake("WebSocket streams are not served yet".into());
            return Err((ResetCode::Refused, err));
        }
        StreamKind::Control => {
            let err = BackboneError::Handshake("a second control stream".into());
            return Err((ResetCode::Protocol, err));
        }
    }
    let mut half = HalfStream::request(Direction::Request);
    let frame = reader.next().await.map_err(proto)?;
    let frame = frame.ok_or_else(|| proto(BackboneError::Truncated("before the request head")))?;
    half.on_frame(frame.kind())
        .map_err(|e| proto(BackboneError::from(e)))?;
    match frame {
        Frame::RequestHead(head) => Ok(head),
        Frame::Reset(Reset { code, reason }) => Err((
            ResetCode::Cancelled,
            BackboneError::PeerReset { code, reason },
        )),
        other => Err(proto(BackboneError::Handshake(format!(
            "unexpected {} frame",
            other.kind()
        )))),
    }
}

/// Resets both halves: the peer learns the stream failed and why.
fn reject(mut reader: FrameReader, mut writer: FrameWriter, code: ResetCode, err: &BackboneError) {
    if code == ResetCode::Protocol {
        tracing::warn!(%err, "backbone request stream refused");
    } else {
        tracing::debug!(%err, code = code.as_str(), "backbone request stream ended");
    }
    reader.stop(code);
    writer.abort(code);
}

/// Writes the response head, then streams its body.
async fn respond(
    w: &mut FrameWriter,
    resp: Response<Body>,
    served_by: &str,
) -> Result<(), SendBodyError> {
    let (parts, body) = resp.into_parts();
    w.preface(StreamKind::Request);
    w.push_with(|codec, dst| wire::encode_response_head(codec, &parts, served_by, dst))?;
    if http_body::Body::is_end_stream(&body) {
        w.push(&Frame::End(End::default()))?;
        w.finish().await?;
        return Ok(());
    }
    // The head leaves with the first chunk, or alone before waiting for it.
    send_body(w, body, ResetCode::UpstreamFailed).await
}

/// Logs how the stream ended and makes sure an unfinished half is reset.
async fn finish(
    mut writer: FrameWriter,
    outcome: Option<Result<(), SendBodyError>>,
    request_id: &str,
) {
    match outcome {
        None => {
            tracing::debug!(request_id, "PoP cancelled the request");
            writer.abort(ResetCode::Cancelled);
        }
        Some(Ok(())) => {}
        Some(Err(SendBodyError::Body(err))) => {
            tracing::warn!(request_id, %err, "response body failed mid-way; stream reset");
        }
        Some(Err(SendBodyError::Stream(err))) => {
            tracing::debug!(request_id, %err, "response stream failed");
            writer.abort(err.reset_code());
        }
    }
}
