//! Bad input on real quinn streams: the origin resets the offending stream
//! with a protocol error and keeps serving the others; the PoP turns a
//! truncated response into a body error.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use http_body_util::BodyExt;
use portico_backbone::{LinkSettings, TlsMaterial};
use portico_proto::{
    Capabilities, Codec, ConfigSnapshot, End, Frame, Hello, HelloAck, MAX_FRAME_LIMIT, RequestHead,
    ResetCode, ResponseHead, Role, StreamKind, VersionRange, decode_preface, encode_preface,
};
use quinn::{Connection, ReadError, RecvStream};

fn control_codec() -> Codec {
    Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap()
}

fn hello(versions: VersionRange) -> BytesMut {
    hello_from("pop-a", versions)
}

fn hello_from(node_id: &str, versions: VersionRange) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_preface(StreamKind::Control, &mut buf);
    let frame = Frame::Hello(Hello {
        node_id: node_id.into(),
        role: Role::Pop,
        region: String::new(),
        versions,
        capabilities: Capabilities(0),
    });
    control_codec().encode(&frame, &mut buf).unwrap();
    buf
}

/// A hand-driven PoP connection that completed the handshake.
async fn raw_link(
    tls: &TlsMaterial,
    origin: std::net::SocketAddr,
) -> (quinn::Endpoint, Connection, RecvStream) {
    let endpoint = quinn::Endpoint::client(localhost0()).unwrap();
    let config = tls.client_config(&settings()).unwrap();
    let conn = endpoint
        .connect_with(config, origin, "origin-a")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello(VersionRange::CURRENT)).await.unwrap();
    let mut buf = BytesMut::new();
    let ack = loop {
        let chunk = recv.read_chunk(4096, true).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk.bytes);
        if buf.len() >= 7 && decode_preface(&mut buf).unwrap().is_none() {
            continue;
        }
        if let Some(frame) = control_codec().decode(&mut buf).unwrap() {
            break frame;
        }
    };
    assert!(
        matches!(
            ack,
            Frame::HelloAck(HelloAck {
                chosen_version: portico_proto::PROTOCOL_VERSION_MAX,
                ..
            })
        ),
        "{ack:?}"
    );
    // Keep the control stream open for the life of the test.
    std::mem::forget(send);
    (endpoint, conn, recv)
}

fn request_head(method: &str, path: &str) -> Frame {
    Frame::RequestHead(Box::new(RequestHead {
        request_id: "raw-1".into(),
        method: method.into(),
        uri: path.into(),
        headers: vec![("host".into(), b"raw.test".to_vec())],
        client_addr: None,
        tls: None,
        trace_context: None,
        api: "echo".into(),
        stage: "prod".into(),
        route_key: "ANY /{proxy+}".into(),
        path_params: vec![],
        principal: None,
        pop_id: "pop-a".into(),
        deadline_ms: 0,
    }))
}

/// A request head whose header list holds `count` fields `a:` (more than an
/// encoder writes), built by hand as a rogue PoP would: the encoding of a
/// one-field head with the field repeated and its count raised (bincode's
/// varint: 0xFB and a little-endian u16).
fn head_with_fields(count: u16) -> BytesMut {
    let Frame::RequestHead(mut head) = request_head("GET", "/info") else {
        unreachable!("request_head builds a head")
    };
    head.headers = vec![("a".into(), vec![])];
    let mut one = BytesMut::new();
    Codec::new()
        .encode(&Frame::RequestHead(head), &mut one)
        .unwrap();
    let payload = &one[4..];
    let field = [1, b'a', 0];
    let at = payload
        .windows(4)
        .position(|w| w[0] == 1 && w[1..] == field)
        .expect("the one-field list");
    let mut body = payload[..at].to_vec();
    body.push(0xFB);
    body.extend_from_slice(&count.to_le_bytes());
    for _ in 0..count {
        body.extend_from_slice(&field);
    }
    body.extend_from_slice(&payload[at + 4..]);
    let mut buf = BytesMut::new();
    encode_preface(StreamKind::Request, &mut buf);
    buf.put_u32(u32::try_from(body.len()).unwrap());
    buf.put_slice(&body);
    buf
}

fn request_stream(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_preface(StreamKind::Request, &mut buf);
    for f in frames {
        Codec::new().encode(f, &mut buf).unwrap();
    }
    buf
}

/// Sends `bytes` on a new stream and returns the code the origin reset it with.
async fn reset_code_for(conn: &Connection, bytes: &[u8]) -> u64 {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let read = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("origin answered");
    match read {
        Err(quinn::ReadToEndError::Read(ReadError::Reset(code))) => code.into_inner(),
        other => panic!("expected a reset, got {other:?}"),
    }
}

/// Sends `frames` as a request stream; the response's frames, checked to
/// be origin-a's 200.
async fn exchange_ok(conn: &Connection, frames: &[Frame]) -> Vec<Frame> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request_stream(frames)).await.unwrap();
    send.finish().unwrap();
    let frames = response_frames(&mut recv).await;
    assert!(
        matches!(&frames[0], Frame::ResponseHead(h) if h.status == 200 && h.served_by == "origin-a"),
        "{frames:?}"
    );
    frames
}

/// Reads every frame of a response half until FIN.
async fn response_frames(recv: &mut RecvStream) -> Vec<Frame> {
    let data = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(16 << 20))
        .await
        .expect("response in time")
        .expect("response complete");
    let mut buf = BytesMut::from(&data[..]);
    assert!(decode_preface(&mut buf).unwrap().is_some());
    let mut frames = Vec::new();
    while let Some(f) = Codec::new().decode(&mut buf).unwrap() {
        frames.push(f);
    }
    frames
}

#[tokio::test]
async fn malformed_streams_are_reset_and_the_link_keeps_serving() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let (_endpoint, conn, _control) = raw_link(&pki.material("pop-a"), origin.addr).await;
    let protocol = ResetCode::Protocol as u64;
    let mut oversized = BytesMut::new();
    encode_preface(StreamKind::Request, &mut oversized);
    oversized.put_u32(64 << 20);
    oversized.put_slice(b"whatever");
    let mut unknown_tag = BytesMut::new();
    encode_preface(StreamKind::Request, &mut unknown_tag);
    unknown_tag.put_slice(&[0, 0, 0, 1, 200]);
    let cases: Vec<(&str, BytesMut)> = vec![
        (
            "not a preface",
            BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]),
        ),
        (
            "framing version 2",
            BytesMut::from(&b"PRTC\x00\x02\x01"[..]),
        ),
        ("oversized frame", oversized),
        ("unknown frame tag", unknown_tag),
        (
            "body before head",
            request_stream(&[Frame::BodyChunk("x".into())]),
        ),
        (
            "bad method",
            request_stream(&[request_head("G T", "/info")]),
        ),
        // More fields than a header map holds (24 576): refused while
        // decoding, not a panic while building the request.
        ("25 000 header fields", head_with_fields(25_000)),
        (
            "response head from a PoP",
            request_stream(&[Frame::ResponseHead(ResponseHead {
                status: 200,
                headers: vec![],
                served_by: "me".into(),
            })]),
        ),
    ];
    for (what, bytes) in cases {
        assert_eq!(reset_code_for(&conn, &bytes).await, protocol, "{what}");
    }
    // A well-formed request on the same link still works.
    let frames = exchange_ok(
        &conn,
        &[request_head("GET", "/info"), Frame::End(End::default())],
    )
    .await;
    assert!(matches!(frames.last(), Some(Frame::End(_))), "{frames:?}");
    assert!(conn.close_reason().is_none(), "the link survived");
    origin.stop().await;
}

/// An origin reads request heads only as large as its header limit could
/// take (here 4 KiB): a larger one resets the stream at its length prefix,
/// before the origin buffers it. Bodies after a head keep their own limit.
#[tokio::test]
async fn a_request_head_over_the_origins_limit_resets_its_stream() {
    let pki = Pki::new();
    let link = LinkSettings {
        max_head_bytes: 4096,
        ..settings()
    };
    let origin = Origin::start_with(
        &pki.material("origin-a"),
        localhost0(),
        definitions(""),
        link,
    );
    let (_endpoint, conn, _control) = raw_link(&pki.material("pop-a"), origin.addr).await;
    let head = |value: usize| {
        let Frame::RequestHead(mut head) = request_head("POST", "/echo") else {
            unreachable!("request_head builds a head")
        };
        head.headers.push(("x-big".into(), vec![b'v'; value]));
        Frame::RequestHead(head)
    };
    let too_big = request_stream(&[head(6000), Frame::End(End::default())]);
    assert_eq!(
        reset_code_for(&conn, &too_big).await,
        ResetCode::Protocol as u64
    );
    // Under the limit, with a body chunk larger than it: served.
    let body = vec![b'b'; 64 * 1024];
    let frames = [
        head(2000),
        Frame::BodyChunk(body.into()),
        Frame::End(End::default()),
    ];
    exchange_ok(&conn, &frames).await;
    origin.stop().await;
}

#[tokio::test]
async fn a_truncated_request_body_resets_the_response() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let (_endpoint, conn, _control) = raw_link(&pki.material("pop-a"), origin.addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let bytes = request_stream(&[
        request_head("POST", "/echo"),
        Frame::BodyChunk("abc".into()),
    ]);
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap(); // FIN without End
    let frames = response_frames(&mut recv).await;
    assert!(matches!(&frames[0], Frame::ResponseHead(_)), "{frames:?}");
    assert!(
        matches!(frames.last(), Some(Frame::Reset(r)) if r.code == ResetCode::UpstreamFailed),
        "{frames:?}"
    );
    origin.stop().await;
}

/// Dials `origin` with `config`, sends `hello` on the control stream and
/// returns how the origin closed the link.
async fn closed_after(
    config: quinn::ClientConfig,
    origin: std::net::SocketAddr,
    hello: BytesMut,
) -> quinn::ApplicationClose {
    let endpoint = quinn::Endpoint::client(localhost0()).unwrap();
    let conn = endpoint
        .connect_with(config, origin, "origin-a")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => close,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn no_common_version_closes_the_link_with_a_clear_code() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let config = pki.material("pop-a").client_config(&settings()).unwrap();
    let close = closed_after(config, origin.addr, hello(VersionRange { min: 7, max: 9 })).await;
    assert_eq!(close.error_code, portico_backbone::close::NO_COMMON_VERSION);
    let reason = String::from_utf8_lossy(&close.reason).into_owned();
    assert!(reason.contains("no common protocol version"), "{reason}");
    origin.stop().await;
}

/// A link whose certificate is not a PoP's is closed by the origin with
/// the identity code, even when the certificate names the node its `Hello`
/// claims: an origin's, or one for a public listener only.
#[tokio::test]
async fn an_origin_refuses_a_certificate_that_is_not_a_pops() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    for (node, role) in [("origin-b", Some(Role::Origin)), ("pop-c", None)] {
        let config = unchecked::client(&pki.material_as(node, role));
        let close =
            closed_after(config, origin.addr, hello_from(node, VersionRange::CURRENT)).await;
        assert_eq!(close.error_code, portico_backbone::close::IDENTITY);
        assert_eq!(
            String::from_utf8_lossy(&close.reason),
            format!("handshake: certificate does not name node `{node}` as a PoP")
        );
    }
    origin.stop().await;
}

/// A PoP refuses an origin whose certificate is not an origin's, though it
/// names the origin the PoP dialed: a PoP's, or one with no role.
#[tokio::test]
async fn a_pop_refuses_an_origin_whose_certificate_is_not_an_origins() {
    let pki = Pki::new();
    for role in [Some(Role::Pop), None] {
        let server = unchecked::server(&pki.material_as("origin-a", role));
        let addr = raw_origin_with(server, |_, _| {}).await;
        let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(addr)]);
        let reason = down_reason(&pop).await;
        assert_eq!(
            reason, "handshake: certificate does not name node `origin-a` as an origin",
            "{role:?}"
        );
        assert!(
            pop.gateway.definitions().apis.is_empty(),
            "nothing taken from it"
        );
        pop.backbone.shutdown().await;
    }
}

/// A hand-written origin: handshake, one snapshot, then a response that
/// ends with FIN but without `End` — a truncated body.
/// origin-a's handshake and snapshot on the first link, then `serve` for
/// each request stream (its send and receive halves).
async fn raw_origin_serving<F>(tls: TlsMaterial, serve: F) -> std::net::SocketAddr
where
    F: Fn(quinn::SendStream, RecvStream) + Send + 'static,
{
    raw_origin_with(tls.server_config(&settings()).unwrap(), serve).await
}

async fn raw_origin_with<F>(server: quinn::ServerConfig, serve: F) -> std::net::SocketAddr
where
    F: Fn(quinn::SendStream, RecvStream) + Send + 'static,
{
    let endpoint = quinn::Endpoint::server(server, localhost0()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let _ = recv.read_chunk(4096, true).await.unwrap();
        let defs = definitions("");
        let mut buf = BytesMut::new();
        encode_preface(StreamKind::Control, &mut buf);
        let ack = Frame::HelloAck(HelloAck {
            chosen_version: 1,
            node_id: "origin-a".into(),
            role: Role::Origin,
            region: REGION.into(),
            capabilities: Capabilities(0),
        });
        let snapshot = Frame::ConfigSnapshot(ConfigSnapshot {
            version: defs.version,
            hash: sha256(&defs.source),
            definitions: defs.source.clone(),
        });
        control_codec().encode(&ack, &mut buf).unwrap();
        control_codec().encode(&snapshot, &mut buf).unwrap();
        send.write_all(&buf).await.unwrap();
        while let Ok((s, r)) = conn.accept_bi().await {
            serve(s, r);
        }
        drop((send, endpoint));
    });
    addr
}

/// A replica that refuses every request stream unread (as an origin does
/// while it drains): a request with no body goes to the region's other
/// replica instead of failing; one with a body is never sent twice.
#[tokio::test]
async fn a_refused_request_without_a_body_goes_to_another_replica() {
    let pki = Pki::new();
    let refused = quinn::VarInt::from_u32(ResetCode::Refused as u32);
    let a = raw_origin_serving(pki.material("origin-a"), move |mut s, mut r| {
        let _ = s.reset(refused);
        let _ = r.stop(refused);
    })
    .await;
    let identity = portico_backbone::Identity {
        node_id: "origin-b".into(),
        region: REGION.into(),
    };
    let b = Origin::start_as(&pki.material("origin-b"), identity);
    let mut spec_b = origin_spec(b.addr);
    spec_b.server_name = "origin-b".into();
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(a), spec_b]);
    pop.wait_for_api("echo").await;
    for _ in 0..10 {
        let (status, body) = pop.get("/prod/info").await;
        assert_eq!(status, 200, "{body:?}");
    }
    assert_eq!(
        b.seen.started.load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    // With a body: whatever was refused fails (503), nothing goes twice.
    let mut ok = 0;
    for _ in 0..6 {
        let post = http::Request::post("/prod/echo")
            .body(portico_gateway::body::full("data"))
            .unwrap();
        let (status, _) = collect(pop.handle(post).await).await;
        assert!(status == 200 || status == 503, "{status}");
        ok += usize::from(status == 200);
    }
    assert_eq!(
        b.seen.started.load(std::sync::atomic::Ordering::Relaxed),
        10 + ok
    );
    assert!(ok < 6, "some went to the refusing replica");
    pop.backbone.shutdown().await;
    b.stop().await;
}

async fn truncating_origin(tls: TlsMaterial) -> std::net::SocketAddr {
    raw_origin_serving(tls, |mut s, _r| {
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            encode_preface(StreamKind::Request, &mut out);
            let head = Frame::ResponseHead(ResponseHead {
                status: 200,
                headers: vec![],
                served_by: "raw".into(),
            });
            Codec::new().encode(&head, &mut out).unwrap();
            Codec::new()
                .encode(&Frame::BodyChunk("partial".into()), &mut out)
                .unwrap();
            s.write_all(&out).await.unwrap();
            s.finish().unwrap();
            let _ = s.stopped().await;
        });
    })
    .await
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

#[tokio::test]
async fn fin_without_end_is_a_truncated_body_at_the_pop() {
    let pki = Pki::new();
    let addr = truncating_origin(pki.material("origin-a")).await;
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(addr)]);
    pop.wait_for_api("echo").await;
    let resp = pop
        .handle(
            http::Request::get("/prod/x")
                .body(portico_gateway::body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "partial"
    );
    let err = body
        .frame()
        .await
        .expect("an error, not a clean end")
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
}
