//! The PoP's gateway upstream: one request, one backbone stream.

use std::sync::Arc;

use http::{Request, Response};
use portico_gateway::{Body, BoxError, ErrorKind, ErrorSource, GatewayError, RequestCtx, Upstream};
use portico_proto::stream::{Direction, HalfStream};
use portico_proto::{End, Frame, RequestHead, ResetCode, ResponseHead, StreamKind};
use tokio::sync::oneshot;

use super::{Inner, Session};
use crate::BackboneError;
use crate::body::{SendBodyError, recv_body, send_body};
use crate::framed::{FrameReader, FrameWriter};
use crate::wire;

/// Forwards routed requests to the home region of their API over the backbone.
///
/// Never waits for a link: with none up in the region the request fails at
/// once with 503. Dropping the returned future or the response body resets
/// the stream both ways, which cancels the request at the origin.
#[derive(Clone)]
pub struct BackboneUpstream {
    inner: Arc<Inner>,
}

impl BackboneUpstream {
    pub(super) fn new(inner: Arc<Inner>) -> Self {
        BackboneUpstream { inner }
    }

    /// The live session of the home region of `ctx`'s API (its `region`,
    /// else the region of the origin that sent it, else the only region
    /// this PoP knows), or the error for a region with no link up.
    fn home_session(&self, ctx: &RequestCtx) -> Result<Arc<Session>, GatewayError> {
        let synced;
        let region = match &ctx.api.region {
            Some(region) => Some(region.as_str()),
            None => {
                synced = self.inner.sync.peek();
                match synced.home_of(&ctx.api.name) {
                    Some(region) => Some(region),
                    None => self.only_region(),
                }
            }
        };
        let region = region.unwrap_or_default();
        self.inner
            .live_session(region, None)
            .ok_or_else(|| unavailable(BackboneError::NoLink(region.to_owned())))
    }

    /// The region of every link, when they all have the same one.
    fn only_region(&self) -> Option<&str> {
        let mut regions = self.inner.links.iter().map(|l| l.spec.region.as_str());
        let first = regions.next()?;
        regions.all(|r| r == first).then_some(first)
    }

    /// Whether a link to `region` is up now.
    pub fn is_up(&self, region: &str) -> bool {
        self.inner.live_session(region, None).is_some()
    }

    /// Sends an already-routed request to an origin of `region` and
    /// returns its response once the head arrived (the body streams).
    /// [`Upstream::forward`] is this with a head built from the gateway's
    /// request context; benchmarks and tools call it directly.
    pub async fn request(
        &self,
        region: &str,
        head: RequestHead,
        body: Body,
    ) -> Result<Response<Body>, GatewayError> {
        let Some(session) = self.inner.live_session(region, None) else {
            return Err(unavailable(BackboneError::NoLink(region.to_owned())));
        };
        let head = Frame::RequestHead(Box::new(head));
        exchange(&session, |w| w.push(&head), body).await
    }
}

impl Upstream for BackboneUpstream {
    async fn forward(
        &self,
        ctx: &RequestCtx,
        req: Request<Body>,
    ) -> Result<Response<Body>, GatewayError> {
        let session = self.home_session(ctx)?;
        let (parts, body) = req.into_parts();
        let pop_id = &self.inner.identity.node_id;
        let push_head = |w: &mut FrameWriter| {
            w.push_with(|codec, dst| wire::encode_request_head(codec, ctx, &parts, pop_id, dst))
        };
        let bodiless = http_body::Body::is_end_stream(&body);
        match exchange(&session, push_head, body).await {
            // An origin refuses a stream unread while it drains (it said
            // GoAway, which may not have arrived yet): nothing was done, so
            // a request with no body goes once more to another replica of
            // its region rather than fail while that one is idle.
            Err(err) if bodiless && refused(&err) => {
                match self.inner.live_session(&session.region, Some(&session)) {
                    Some(other) => {
                        exchange(&other, push_head, portico_gateway::body::empty()).await
                    }
                    None => Err(err),
                }
            }
            done => done,
        }
    }
}

/// Whether the origin refused the request's stream without reading it.
fn refused(err: &GatewayError) -> bool {
    let Some(cause) = err.cause.as_deref() else {
        return false;
    };
    matches!(
        portico_gateway::body::find_cause::<BackboneError>(cause),
        Some(
            BackboneError::StreamAborted {
                code: ResetCode::Refused
            } | BackboneError::PeerReset {
                code: ResetCode::Refused,
                ..
            }
        )
    )
}

fn unavailable(err: impl Into<BoxError>) -> GatewayError {
    GatewayError::new(ErrorKind::ServiceUnavailable, ErrorSource::Backbone).with_cause(err)
}

/// What a failed exchange means for the client.
fn classify(err: BackboneError) -> GatewayError {
    if err.is_connection_lost() {
        return unavailable(err);
    }
    let code = match &err {
        BackboneError::PeerReset { code, .. } | BackboneError::StreamAborted { code } => {
            Some(*code)
        }
        _ => None,
    };
    let kind = match code {
        Some(ResetCode::Timeout) => ErrorKind::GatewayTimeout,
        Some(ResetCode::Refused) => ErrorKind::ServiceUnavailable,
        Some(ResetCode::TooLarge) => ErrorKind::PayloadTooLarge,
        _ => ErrorKind::BadGateway,
    };
    GatewayError::new(kind, ErrorSource::Backbone).with_cause(err)
}

/// The task streaming the request body, aborted (which resets the request
/// half) when the response is dropped.
struct Pump {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Streams `body` in the background; the receiver learns whether the body
/// itself failed (a client error, e.g. over the size limit).
fn spawn_pump(mut writer: FrameWriter, body: Body) -> (Pump, oneshot::Receiver<BoxError>) {
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        match send_body(&mut writer, body, ResetCode::Cancelled).await {
            Ok(()) => {}
            Err(SendBodyError::Body(err)) => {
                let _ = tx.send(err);
            }
            // The origin stopped reading (it answered early) or the link
            // died: the response side reports what matters.
            Err(SendBodyError::Stream(err)) => {
                tracing::debug!(%err, "request body not fully sent");
                writer.abort(ResetCode::Cancelled);
            }
        }
    });
    (Pump { task }, rx)
}

/// Sends the request on a new stream and returns the response once its head
/// arrived; the body streams afterwards.
async fn exchange(
    session: &Session,
    push_head: impl Fn(&mut FrameWriter) -> Result<(), BackboneError>,
    body: Body,
) -> Result<Response<Body>, GatewayError> {
    let in_flight = session.enter();
    let (send, recv) = session.conn.open_bi().await.map_err(unavailable)?;
    let mut writer = FrameWriter::new(send, session.codec);
    writer.preface(StreamKind::Request);
    push_head(&mut writer).map_err(classify)?;
    let mut pump = None;
    if http_body::Body::is_end_stream(&body) {
        writer.push(&Frame::End(End::default())).map_err(classify)?;
        writer.finish().await.map_err(classify)?;
    } else {
        writer.flush().await.map_err(classify)?;
        pump = Some(spawn_pump(writer, body));
    }
    let mut reader = FrameReader::new(recv, session.codec);
    let (pump, failed) = pump.unzip();
    let head = await_head(&mut reader, failed).await?;
    let parts = wire::response_from_head(head).map_err(classify)?;
    if reader.buffered_end() {
        // Complete already: nothing left to stream (the pump, if any, is
        // dropped: the origin answered without needing the rest).
        return Ok(Response::from_parts(parts, portico_gateway::body::empty()));
    }
    let mut half = HalfStream::request(Direction::Response);
    // Cannot fail: a fresh response half accepts its head.
    let _ = half.on_frame(portico_proto::FrameKind::ResponseHead);
    let guard = pump.map(|p| Box::new(p) as crate::body::Guard);
    let body = recv_body(reader, half, guard, Some(in_flight));
    Ok(Response::from_parts(parts, body))
}

/// Waits for the response head, unless the request body fails first.
async fn await_head(
    reader: &mut FrameReader,
    mut failed: Option<oneshot::Receiver<BoxError>>,
) -> Result<ResponseHead, GatewayError> {
    let read = read_head(reader);
    tokio::pin!(read);
    loop {
        tokio::select! {
            head = &mut read => return head.map_err(classify),
            body_err = recv_failure(&mut failed), if failed.is_some() => match body_err {
                // Our own request body failed: the client's error (the
                // gateway turns a size-limit failure into 413).
                Some(err) => {
                    let gw = GatewayError::new(ErrorKind::BadGateway, ErrorSource::Client);
                    return Err(gw.with_cause(err));
                }
                None => failed = None,
            },
        }
    }
}

/// The request body's failure, or `None` once the pump ended without one.
async fn recv_failure(failed: &mut Option<oneshot::Receiver<BoxError>>) -> Option<BoxError> {
    match failed {
        Some(rx) => rx.await.ok(),
        None => None,
    }
}

async fn read_head(reader: &mut FrameReader) -> Result<ResponseHead, BackboneError> {
    if reader.preface().await? != StreamKind::Request {
        return Err(BackboneError::Handshake(
            "response on another stream kind".into(),
        ));
    }
    let mut half = HalfStream::request(Direction::Response);
    let frame = reader
        .next()
        .await?
        .ok_or(BackboneError::Truncated("before the response head"))?;
    half.on_frame(frame.kind())?;
    match frame {
        Frame::ResponseHead(head) => Ok(head),
        Frame::Reset(r) => Err(BackboneError::PeerReset {
            code: r.code,
            reason: r.reason,
        }),
        other => Err(BackboneError::Handshake(format!(
            "unexpected {} frame",
            other.kind()
        ))),
    }
}
