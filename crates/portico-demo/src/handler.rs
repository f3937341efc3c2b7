//! The demo backend's request handler: deterministic answers for tests and benchmarks.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use sha2::{Digest, Sha256};

type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_DELAY_MS: u64 = 60_000;
const MAX_BYTES: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;
/// Request bodies up to this size are echoed inline (when UTF-8).
const ECHO_INLINE_LIMIT: usize = 64 * 1024;
/// A fixed Last-Modified keeps `/cache/{s}` answers byte-for-byte deterministic.
const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// The byte at offset `i` of every `/bytes/{n}` body, so clients can verify content.
pub fn pattern_byte(i: u64) -> u8 {
    b"0123456789abcdefghijklmnopqrstuvwxyz"[(i % 36) as usize]
}

/// Answers one request; never fails (errors become 4xx answers).
pub async fn handle<B>(req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(3, '/');
    let (first, second) = (segments.next().unwrap_or(""), segments.next());
    match (first, second.map(str::parse::<u64>)) {
        ("status", Some(Ok(code))) => status(code),
        ("delay", Some(Ok(ms))) => {
            tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
            echo(req).await
        }
        ("bytes", Some(Ok(n))) if n <= MAX_BYTES => bytes(n),
        ("cache", Some(Ok(seconds))) => cache(&req, &path, seconds),
        _ => echo(req).await,
    }
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn status(code: u64) -> Response<Body> {
    match u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) if (200..=599).contains(&status.as_u16()) => {
            let body = serde_json::json!({ "status": status.as_u16() }).to_string();
            full(status, "application/json", body)
        }
        _ => full(
            StatusCode::BAD_REQUEST,
            "application/json",
            r#"{"message":"status must be 200..=599"}"#,
        ),
    }
}

fn bytes(n: u64) -> Response<Body> {
    let chunks = stream::unfold(0u64, move |offset| async move {
        if offset >= n {
            return None;
        }
        let len = (n - offset).min(CHUNK as u64);
        let chunk: Bytes = (offset..offset + len).map(pattern_byte).collect();
        Some((Ok::<_, Infallible>(Frame::data(chunk)), offset + len))
    });
    let mut resp = Response::new(StreamBody::new(chunks).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

fn cache<B>(req: &Request<B>, path: &str, seconds: u64) -> Response<Body> {
    let etag = format!(
        "\"{}\"",
        &hex::encode(Sha256::digest(path.as_bytes()))[..16]
    );
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if matches {
        let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let body = serde_json::json!({ "path": path, "max_age": seconds }).to_string();
        full(StatusCode::OK, "application/json", body)
    };
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={seconds}")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static(LAST_MODIFIED),
    );
    resp
}

async fn echo<B>(req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = req.into_parts();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), value.into());
            }
        }
    }
    let summary = match consume(body).await {
        Ok(summary) => summary,
        Err(err) => {
            let msg = serde_json::json!({ "message": format!("request body: {err}") });
            return full(StatusCode::BAD_REQUEST, "application/json", msg.to_string());
        }
    };
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query().unwrap_or(""),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_length": summary.length,
        "body_sha256": summary.sha256,
        "body": summary.inline,
    });
    full(StatusCode::OK, "application/json", json.to_string())
}

struct BodySummary {
    length: u64,
    sha256: String,
    inline: Option<String>,
}

/// Reads a body as a stream, keeping only a hash and a short prefix.
async fn consume<B>(body: B) -> Result<BodySummary, String>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let mut prefix = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            length += data.len() as u64;
            if prefix.len() + data.len() <= ECHO_INLINE_LIMIT {
                prefix.extend_from_slice(&data);
            }
        }
    }
    let inline = if length as usize == prefix.len() {
        String::from_utf8(prefix).ok()
    } else {
        None
    };
    Ok(BodySummary {
        length,
        sha256: hex::encode(hasher.finalize()),
        inline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(path: &str) -> Response<Body> {
        handle(Request::get(path).body(Full::new(Bytes::new())).unwrap()).await
    }

    async fn body_of(resp: Response<Body>) -> Bytes {
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn status_answers_the_code() {
        assert_eq!(get("/status/503").await.status(), 503);
        for code in ["42", "700"] {
            let bad = get(&format!("/status/{code}")).await;
            assert_eq!(bad.status(), 400);
            assert_eq!(
                body_of(bad).await,
                r#"{"message":"status must be 200..=599"}"#
            );
        }
    }

    #[tokio::test]
    async fn bytes_streams_the_pattern() {
        let resp = get("/bytes/70000").await;
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "70000");
        let body = body_of(resp).await;
        assert_eq!(body.len(), 70_000);
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, b)| *b == pattern_byte(i as u64))
        );
    }

    #[tokio::test]
    async fn cache_is_deterministic_and_revalidates() {
        let first = get("/cache/60").await;
        assert_eq!(first.headers()[header::CACHE_CONTROL], "public, max-age=60");
        let etag = first.headers()[header::ETAG].clone();
        // The same path answers the same tag and bytes every time.
        let again = get("/cache/60").await;
        assert_eq!(again.headers()[header::ETAG], etag);
        assert_eq!(body_of(first).await, body_of(again).await);
        let cond = Request::get("/cache/60")
            .header(header::IF_NONE_MATCH, etag)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(handle(cond).await.status(), 304);
    }

    #[tokio::test]
    async fn echo_reports_the_request() {
        let req = Request::post("/a/b?x=1")
            .header("x-test", "yes")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&body_of(handle(req).await).await).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/a/b");
        assert_eq!(json["query"], "x=1");
        assert_eq!(json["headers"]["x-test"], "yes");
        assert_eq!(json["body"], "hello");
        assert_eq!(json["body_length"], 5);
    }
}
