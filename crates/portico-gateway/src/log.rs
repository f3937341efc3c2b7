//! The access log: one structured line per request, emitted when the response
//! body has been sent (or abandoned), so bytes and total latency are real.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use http_body::Body as _;

use portico_config::{Api, Stage};

use crate::body::{Body, BoxError};

/// Everything the access log line says about one request.
///
/// Fields are kept in the cheapest form (shared pointers, copies of
/// refcounted `http` types) and only formatted if the line is written.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub request_id: crate::headers::RequestId,
    pub node: Arc<str>,
    pub protocol: &'static str,
    pub client: Option<SocketAddr>,
    pub method: http::Method,
    pub uri: http::Uri,
    pub host: String,
    /// API, stage and route index, once routed; a CORS preflight the
    /// gateway answered itself has its API and stage but no route.
    pub target: Option<(Arc<Api>, Arc<Stage>, Option<usize>)>,
    pub status: u16,
    pub error: &'static str,
    /// Why a client's request was refused (`unknown API key`, ...): the
    /// error's cause, for refusals only; empty otherwise.
    pub reason: String,
    /// What the response cache did (`hit`, `miss`, `stale`, ...); empty when not involved.
    pub cache: &'static str,
    /// The authenticated caller (`api_key:ID`), once known.
    pub principal: Option<crate::context::Principal>,
    pub integration_latency: Option<Duration>,
    pub started: Option<Instant>,
}

impl AccessRecord {
    fn names(&self) -> (&str, &str, &str) {
        match &self.target {
            Some((api, stage, route)) => {
                let key = route
                    .and_then(|i| stage.deployment.routes.get(i))
                    .map_or("", |r| r.key.as_str());
                (api.name.as_str(), stage.name.as_str(), key)
            }
            None => ("", "", ""),
        }
    }

    fn emit(&self, bytes: u64, outcome: &'static str) {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let (api, stage, route) = self.names();
        let client = self.client.map(|c| c.to_string()).unwrap_or_default();
        let principal = self
            .principal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let total_ms = self
            .started
            .map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0);
        let integration_ms = self
            .integration_latency
            .map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            node = %self.node,
            protocol = self.protocol,
            client = %client,
            method = %self.method,
            host = %self.host,
            path = %self.uri.path(),
            api,
            stage,
            route,
            status = self.status,
            error = self.error,
            reason = %self.reason,
            bytes,
            total_ms,
            integration_ms,
            cache = self.cache,
            principal = %principal,
            outcome,
        );
    }
}

/// The record of a request not answered yet. Dropped so, the client left
/// before its response head (an HTTP/2 or HTTP/3 stream reset, a closed
/// connection: the server drops the pipeline's future), and the line is
/// still written, with nginx's 499 ("client closed request"): every
/// request has its line, those that spent tokens, quota and a backend's
/// time included.
pub(crate) struct Unanswered {
    record: AccessRecord,
    answered: bool,
}

impl Unanswered {
    pub(crate) fn new(record: AccessRecord) -> Self {
        Self {
            record,
            answered: false,
        }
    }

    pub(crate) fn record(&mut self) -> &mut AccessRecord {
        &mut self.record
    }

    /// The record, for the response that answers it.
    pub(crate) fn answered(mut self) -> AccessRecord {
        self.answered = true;
        std::mem::take(&mut self.record)
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Unwound by a panic in the pipeline, not left by its client.
        if std::thread::panicking() {
            self.record.status = 500;
            self.record.error = "internal";
        } else {
            self.record.status = 499;
            self.record.error = "client_closed_request";
        }
        self.record.emit(0, "aborted");
    }
}

/// A response body that counts bytes and writes the access log line when done.
///
/// The line is written when the body ends, fails, or is dropped unfinished (the
/// client went away); a body that was empty from the start counts as complete.
pub struct Logged {
    inner: Body,
    record: AccessRecord,
    bytes: u64,
    /// The declared length (`Content-Length` or the body's exact size hint).
    length: Option<u64>,
    done: bool,
}

impl Logged {
    pub fn new(inner: Body, record: AccessRecord) -> Self {
        let length = inner.size_hint().exact();
        Self {
            inner,
            record,
            bytes: 0,
            length,
            done: false,
        }
    }

    /// Sets the declared length when the headers know it and the body does not.
    pub fn with_length(mut self, length: Option<u64>) -> Self {
        self.length = length.or(self.length);
        self
    }

    fn delivered(&self) -> bool {
        self.inner.is_end_stream() || self.length.is_some_and(|n| self.bytes >= n)
    }

    fn finish(&mut self, outcome: &'static str) {
        if !self.done {
            self.done = true;
            self.record.emit(self.bytes, outcome);
        }
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let outcome = if self.delivered() {
            "complete"
        } else {
            "aborted"
        };
        self.finish(outcome);
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => self.bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(_)) => self.finish("upstream_error"),
            None => self.finish("complete"),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    /// A body that sent `bytes` and never ends (its end frame is still on the way).
    fn open_body(bytes: &'static [u8]) -> Body {
        let chunks =
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(bytes)))])
                .chain(futures_util::stream::pending());
        crate::body::boxed(StreamBody::new(chunks))
    }

    #[tokio::test]
    async fn a_body_of_declared_length_is_delivered_once_its_bytes_went_out() {
        let mut logged =
            Logged::new(open_body(b"hello"), AccessRecord::default()).with_length(Some(5));
        assert!(!logged.delivered());
        let frame = logged.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(logged.delivered(), "all 5 declared bytes went out");
        let mut short =
            Logged::new(open_body(b"hel"), AccessRecord::default()).with_length(Some(5));
        short.frame().await.unwrap().unwrap();
        assert!(!short.delivered(), "2 bytes missing: aborted");
        let mut unknown = Logged::new(open_body(b"hello"), AccessRecord::default());
        unknown.frame().await.unwrap().unwrap();
        assert!(
            !unknown.delivered(),
            "no declared length: only the end says"
        );
    }
}
