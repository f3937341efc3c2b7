//! Request streams: bodies both ways, concurrency, cancellation, flow control.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use portico_backbone::LinkState;
use portico_gateway::{Body, BoxError};

async fn pair() -> (Origin, Pop) {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    pop.wait_for_api("echo").await;
    (origin, pop)
}

/// A request body of `chunks` pieces of `size` bytes, each byte its offset mod 251.
fn patterned(chunks: usize, size: usize) -> Body {
    let frames = (0..chunks).map(move |c| {
        let data: Vec<u8> = (0..size).map(|i| ((c * size + i) % 251) as u8).collect();
        Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(data)))
    });
    Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

#[tokio::test]
async fn bodies_stream_both_ways_with_metadata() {
    let (origin, pop) = pair().await;
    // 24 MiB up and back down, in 256 KiB client chunks (the codec re-chunks).
    let req = Request::post("/prod/echo")
        .body(patterned(96, 256 * 1024))
        .unwrap();
    let resp = pop.handle(req).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["via"]
            .to_str()
            .unwrap()
            .ends_with("1.1 pop-a")
    );
    let (mut offset, mut body) = (0usize, resp.into_body());
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, b)| *b == ((offset + i) % 251) as u8)
        );
        offset += data.len();
    }
    assert_eq!(offset, 96 * 256 * 1024);
    // Metadata: client address, request id, TLS, route, query.
    // As HTTP/2 sends it: the host in the URI's authority, no Host header.
    let req = Request::get("https://echo.example/prod/info?a=1&b=2")
        .header("x-request-id", "req-42")
        .body(portico_gateway::body::empty())
        .unwrap();
    let (status, info) = collect(pop.handle(req).await).await;
    let info = String::from_utf8(info.to_vec()).unwrap();
    assert_eq!(status, 200);
    for want in [
        "\"client\":\"192.0.2.7:40000\"",
        "\"request_id\":\"req-42\"",
        "\"tls\":true",
        "\"route\":\"ANY /{proxy+}\"",
        "\"query\":\"a=1&b=2\"",
        "\"host\":\"echo.example\"",
        // A GET's empty body reaches the handler as known-empty, so it is
        // never forwarded chunked.
        "\"empty_body\":true",
    ] {
        assert!(info.contains(want), "{want} not in {info}");
    }
    // Trailers travel in End.
    let resp = pop
        .handle(
            Request::get("/prod/trailers")
                .body(portico_gateway::body::empty())
                .unwrap(),
        )
        .await;
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "body");
    pop.backbone.shutdown().await;
    origin.stop().await;
}

#[tokio::test]
async fn the_caller_a_pop_authenticated_travels_in_the_head() {
    const KEY: &str = "KKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK";
    let keyed = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/keyed/{proxy+}\"\n\
                 api_key_required = true\nintegration = { type = \"mock\", status = 200 }\n";
    let plans = format!(
        "[[usage_plans]]\nname = \"basic\"\napi_stages = [{{ api = \"echo\", stage = \"prod\" }}]\n\
         [[api_keys]]\nid = \"acme\"\nhash = \"{}\"\nplans = [\"basic\"]\n",
        portico_gateway::keys::stored_form(KEY)
    );
    let text = definitions_text(keyed) + &plans;
    let defs = Arc::new(portico_config::Definitions::from_toml_str(&text, "test").unwrap());
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), defs);
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    pop.wait_for_api("echo").await;
    let get = |path: &str, key: Option<&str>| {
        let mut req = Request::get(path);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.body(portico_gateway::body::empty()).unwrap()
    };
    // The PoP checked the key: the origin learns its id, never the key.
    let (status, info) = collect(pop.handle(get("/prod/keyed/info", Some(KEY))).await).await;
    let info = String::from_utf8(info.to_vec()).unwrap();
    assert_eq!(status, 200, "{info}");
    assert!(info.contains("\"principal\":\"api_key:acme\""), "{info}");
    assert!(!info.contains(KEY), "{info}");
    // A route without a key requirement authenticates no one.
    let (_, info) = collect(pop.handle(get("/prod/info", Some(KEY))).await).await;
    let info = String::from_utf8(info.to_vec()).unwrap();
    assert!(info.contains("\"principal\":\"\""), "{info}");
    // No key: refused at the PoP, nothing reaches the origin.
    let before = origin.seen.started.load(Ordering::SeqCst);
    let (status, body) = collect(pop.handle(get("/prod/keyed/info", None)).await).await;
    assert_eq!(
        (status, &body[..]),
        (403, &br#"{"message":"Forbidden"}"#[..])
    );
    assert_eq!(origin.seen.started.load(Ordering::SeqCst), before);
    pop.backbone.shutdown().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_requests_share_one_link() {
    let (origin, pop) = pair().await;
    origin.seen.gate_size.store(1000, Ordering::SeqCst);
    let session = || match pop.backbone.links().pop() {
        Some((_, LinkState::Up(session))) => session,
        other => panic!("link not up: {other:?}"),
    };
    let before = session();
    let pop = Arc::new(pop);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let pop = Arc::clone(&pop);
        tasks.spawn(async move { pop.get("/prod/gate").await });
    }
    // The gate opens only once all 1 000 are inside the origin at once.
    let mut ok = 0;
    while let Some(result) = tokio::time::timeout(Duration::from_secs(60), tasks.join_next())
        .await
        .expect("requests finished")
    {
        let (status, body) = result.unwrap();
        assert_eq!(status, 200, "{body:?}");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    // All on the one connection the link had before: no second one, no reconnect.
    let links = pop.backbone.links();
    assert_eq!(links.len(), 1);
    let LinkState::Up(after) = &links[0].1 else {
        panic!("link not up: {links:?}")
    };
    assert!(Arc::ptr_eq(&before, after), "the link reconnected");
    assert!(after.stats().frame_rx.stream >= 1000, "{:?}", after.stats());
    origin.stop().await;
}

#[tokio::test]
async fn dropping_the_request_cancels_the_handler_at_the_origin() {
    let (origin, pop) = pair().await;
    let pop = Arc::new(pop);
    let p = Arc::clone(&pop);
    let seen = Arc::clone(&origin.seen);
    let cancelled = seen.cancelled_notify.notified();
    tokio::pin!(cancelled);
    cancelled.as_mut().enable();
    let pending = tokio::spawn(async move { p.get("/prod/hang").await });
    eventually(10, "request reached the origin", || async {
        origin.seen.started.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(origin.seen.cancelled.load(Ordering::SeqCst), 0);
    pending.abort();
    tokio::time::timeout(Duration::from_secs(10), cancelled)
        .await
        .expect("the origin dropped the handler");
    assert_eq!(origin.seen.cancelled.load(Ordering::SeqCst), 1);
    // The link keeps serving.
    assert_eq!(pop.get("/prod/info").await.0, 200);
    origin.stop().await;
}

#[tokio::test]
async fn a_body_that_fails_at_the_origin_is_a_body_error_at_the_pop() {
    let (origin, pop) = pair().await;
    let resp = pop
        .handle(
            Request::get("/prod/fail-mid")
                .body(portico_gateway::body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first part");
    let err = body
        .frame()
        .await
        .expect("an error, not a clean end")
        .unwrap_err();
    assert!(err.to_string().contains("upstream_failed"), "{err}");
    assert_eq!(pop.get("/prod/info").await.0, 200);
    origin.stop().await;
}

#[tokio::test]
async fn a_reader_that_stops_reading_does_not_grow_memory() {
    let (origin, pop) = pair().await;
    let resp = pop
        .handle(
            Request::get("/prod/infinite")
                .body(portico_gateway::body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let _ = body.frame().await.unwrap().unwrap();
    // Stop reading. The origin's producer must stall on flow control.
    let produced = || origin.seen.produced.load(Ordering::SeqCst);
    let mut last = produced();
    let mut stable_since = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stable_since.elapsed() < Duration::from_millis(500) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "producer never stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = produced();
        if now != last {
            last = now;
            stable_since = tokio::time::Instant::now();
        }
    }
    // Stream window (2 MiB) plus a few chunks in flight, nowhere near unbounded.
    assert!(last < 4 << 20, "produced {last} bytes while nobody read");
    // Dropping the body cancels the stream; the link keeps serving.
    drop(body);
    eventually(10, "handler body dropped", || async {
        let before = produced();
        tokio::time::sleep(Duration::from_millis(50)).await;
        produced() == before
    })
    .await;
    assert_eq!(pop.get("/prod/info").await.0, 200);
    origin.stop().await;
}

#[tokio::test]
async fn the_link_dying_mid_response_is_a_body_error() {
    let (origin, pop) = pair().await;
    let resp = pop
        .handle(
            Request::get("/prod/infinite")
                .body(portico_gateway::body::empty())
                .unwrap(),
        )
        .await;
    let mut body = resp.into_body();
    let _ = body.frame().await.unwrap().unwrap();
    // Graceful stop: after the drain timeout the origin closes the link.
    let stopping = tokio::spawn(origin.stop());
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Ok(err),
                None => return Err("clean end"),
            }
        }
    })
    .await
    .expect("body ended");
    let err = result.expect("truncation must be an error");
    assert!(!err.to_string().is_empty());
    stopping.await.unwrap();
    assert_eq!(pop.get("/prod/info").await.0, 503);
}

/// hyper drops a response body as soon as its Content-Length is written,
/// without polling it to its end. By then the PoP must have read `End` and
/// the FIN that came with the last chunk, or dropping the stream sends a
/// STOP_SENDING, which also makes the origin ACK at once: four datagrams per
/// small request instead of two.
#[tokio::test]
async fn a_body_dropped_after_its_last_byte_sends_no_stop_sending() {
    let (origin, pop) = pair().await;
    for _ in 0..5 {
        let resp = pop
            .handle(
                Request::get("/prod/info")
                    .body(portico_gateway::body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        // As hyper does: the one data frame (`/info` is one piece), then drop.
        let mut body = resp.into_body();
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(data.starts_with(b"{\"client\""), "{data:?}");
        drop(body);
    }
    let session = match &pop.backbone.links()[0].1 {
        portico_backbone::LinkState::Up(session) => Arc::clone(session),
        other => panic!("link {}", other.as_str()),
    };
    // A STOP_SENDING would leave with the driver's next transmit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(session.stats().frame_tx.stop_sending, 0);
    pop.backbone.shutdown().await;
    origin.stop().await;
}
