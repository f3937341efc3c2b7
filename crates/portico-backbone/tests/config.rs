//! Configuration sync over real links: snapshots at connect, deltas after
//! reloads, and a snapshot whenever a PoP cannot apply a delta.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use http_body_util::BodyExt;
use portico_backbone::{
    ControlHandler, ControlLink, LinkSettings, OriginConfig, Running, TlsMaterial,
};
use portico_config::Definitions;
use portico_proto::{
    Capabilities, Codec, ConfigDelta, ConfigRequest, ConfigSnapshot, Frame, GoAway, Hello,
    HelloAck, MAX_FRAME_LIMIT, PROTOCOL_VERSION_MAX, Ping, Role, StreamKind, UsageEntry,
    UsageReport, VersionRange, decode_preface, encode_preface,
};
use quinn::{RecvStream, SendStream};

const ONLY_GET: &str = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/only-get\"\nintegration = { type = \"mock\", status = 200 }\n";

fn status(pop: &Pop) -> OriginConfig {
    pop.backbone.config_status().origins()[0].1.clone()
}

fn running(defs: &Definitions) -> Running {
    Running {
        version: defs.version,
        hash: sha256(&defs.source),
    }
}

fn sha256(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

async fn wait_status(pop: &Pop, what: &str, check: impl Fn(&OriginConfig) -> bool) {
    eventually(20, what, || async { check(&status(pop)) }).await;
}

#[tokio::test]
async fn a_reload_reaches_the_pop_as_a_delta_and_a_reconnect_gets_a_snapshot() {
    let pki = Pki::new();
    let first = definitions("");
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), Arc::clone(&first));
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    pop.wait_for_api("echo").await;
    wait_status(&pop, "first snapshot", |s| s.snapshots == 1).await;
    assert_eq!(status(&pop).running, Some(running(&first)));
    // Reload: one API changes; the PoP gets only that, as a delta.
    let second = definitions(ONLY_GET);
    origin.defs.send_replace(Arc::clone(&second));
    wait_status(&pop, "delta applied", |s| s.deltas == 1).await;
    let s = status(&pop);
    assert_eq!((s.snapshots, s.deltas, s.refused, s.requests), (1, 1, 0, 0));
    // What it runs is exactly what a snapshot would have carried.
    assert_eq!(s.running, Some(running(&second)));
    assert_eq!(s.origin_id, "origin-a");
    let post = http::Request::post("/prod/only-get")
        .body(portico_gateway::body::empty())
        .unwrap();
    let refused = pop.handle(post).await;
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "GET, HEAD");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"message":"Method Not Allowed"}"#);
    // The origin restarts on the same port: the new link starts with a
    // full snapshot, never a delta.
    let addr = origin.addr;
    origin.stop().await;
    let third = definitions(&ONLY_GET.replace("only-get", "only-get-2"));
    let origin = Origin::start(&pki.material("origin-a"), addr, Arc::clone(&third));
    wait_status(&pop, "snapshot after reconnect", |s| s.snapshots == 2).await;
    let s = status(&pop);
    assert_eq!((s.deltas, s.refused), (1, 0));
    assert_eq!(s.running, Some(running(&third)));
    pop.backbone.shutdown().await;
    origin.stop().await;
}

#[tokio::test]
async fn without_the_delta_capability_reloads_are_snapshots() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let link = LinkSettings {
        config_deltas: false,
        ..settings()
    };
    let pop = Pop::start_link(&pki.material("pop-a"), vec![origin_spec(origin.addr)], link);
    pop.wait_for_api("echo").await;
    let second = definitions(ONLY_GET);
    origin.defs.send_replace(Arc::clone(&second));
    wait_status(&pop, "second snapshot", |s| s.snapshots == 2).await;
    let s = status(&pop);
    assert_eq!((s.deltas, s.running), (0, Some(running(&second))));
    pop.backbone.shutdown().await;
    origin.stop().await;
}

/// One end of a control stream driven by hand.
struct RawControl {
    send: SendStream,
    recv: RecvStream,
    buf: BytesMut,
    preface_read: bool,
}

impl RawControl {
    /// A control stream on `send`/`recv`, with our preface written.
    async fn open(mut send: SendStream, recv: RecvStream) -> RawControl {
        let mut preface = BytesMut::new();
        encode_preface(StreamKind::Control, &mut preface);
        send.write_all(&preface).await.unwrap();
        RawControl {
            send,
            recv,
            buf: BytesMut::new(),
            preface_read: false,
        }
    }

    fn codec() -> Codec {
        Codec::with_max_frame(MAX_FRAME_LIMIT).unwrap()
    }

    async fn send(&mut self, frames: &[Frame]) {
        let mut out = BytesMut::new();
        for f in frames {
            Self::codec().encode(f, &mut out).unwrap();
        }
        self.send.write_all(&out).await.unwrap();
    }

    async fn next(&mut self) -> Frame {
        loop {
            if !self.preface_read {
                self.preface_read = decode_preface(&mut self.buf).unwrap().is_some();
            }
            if self.preface_read
                && let Some(frame) = Self::codec().decode(&mut self.buf).unwrap()
            {
                return frame;
            }
            let read = self.recv.read_chunk(64 * 1024, true);
            let chunk = tokio::time::timeout(Duration::from_secs(20), read)
                .await
                .expect("a frame in time")
                .unwrap()
                .expect("the stream goes on");
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }
}

/// A hand-driven PoP that offers deltas; returns after the first snapshot.
async fn raw_pop(
    tls: &TlsMaterial,
    origin: SocketAddr,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    RawControl,
    ConfigSnapshot,
) {
    raw_pop_offering(tls, origin, Capabilities::CONFIG_DELTA).await
}

/// [`raw_pop`] offering `capabilities`.
async fn raw_pop_offering(
    tls: &TlsMaterial,
    origin: SocketAddr,
    capabilities: Capabilities,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    RawControl,
    ConfigSnapshot,
) {
    let endpoint = quinn::Endpoint::client(localhost0()).unwrap();
    let config = tls.client_config(&settings()).unwrap();
    let conn = endpoint
        .connect_with(config, origin, "origin-a")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut c = RawControl::open(send, recv).await;
    c.send(&[Frame::Hello(Hello {
        node_id: "pop-a".into(),
        role: Role::Pop,
        region: String::new(),
        versions: VersionRange::CURRENT,
        capabilities,
    })])
    .await;
    let Frame::HelloAck(ack) = c.next().await else {
        panic!("expected HelloAck")
    };
    assert_eq!(ack.chosen_version, PROTOCOL_VERSION_MAX);
    assert_eq!(ack.capabilities, capabilities);
    let Frame::ConfigSnapshot(snapshot) = c.next().await else {
        panic!("expected the first snapshot")
    };
    (endpoint, conn, c, snapshot)
}

#[tokio::test]
async fn the_origin_answers_a_snapshot_request_once_per_version() {
    let pki = Pki::new();
    let first = definitions("");
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), Arc::clone(&first));
    let (_endpoint, _conn, mut c, snapshot) = raw_pop(&pki.material("pop-a"), origin.addr).await;
    assert_eq!(snapshot.version, first.version);
    let second = definitions(ONLY_GET);
    origin.defs.send_replace(Arc::clone(&second));
    let Frame::ConfigDelta(delta) = c.next().await else {
        panic!("expected a delta")
    };
    assert_eq!(
        (delta.from_version, delta.to_version),
        (first.version, second.version)
    );
    assert_eq!(delta.changed.len(), 1);
    assert_eq!(delta.changed[0].0, "echo");
    assert!(delta.changed[0].1.as_deref().unwrap().contains("/only-get"));
    // Pretend it could not be applied: the origin answers with a snapshot.
    let ask = || {
        Frame::ConfigRequest(ConfigRequest {
            have_version: Some(first.version),
            reason: "test".into(),
        })
    };
    c.send(&[ask()]).await;
    let Frame::ConfigSnapshot(snapshot) = c.next().await else {
        panic!("expected a snapshot")
    };
    assert_eq!(snapshot.version, second.version);
    assert_eq!(snapshot.hash, sha256(&second.source));
    // Asking again for the same version gets nothing more: the Pong to a
    // later Ping is the next frame.
    c.send(&[ask(), Frame::Ping(Ping { nonce: 9 })]).await;
    assert!(
        matches!(c.next().await, Frame::Pong(p) if p.nonce == 9),
        "a second snapshot of the same version"
    );
    origin.stop().await;
}

/// A hand-driven origin speaking version 2 with deltas: handshake and
/// `first` as its snapshot, then the test drives the stream.
async fn raw_origin(
    tls: TlsMaterial,
    first: Arc<Definitions>,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<RawControl>) {
    let server = tls.server_config(&settings()).unwrap();
    let endpoint = quinn::Endpoint::server(server, localhost0()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut c = RawControl::open(send, recv).await;
        let Frame::Hello(hello) = c.next().await else {
            panic!("expected Hello")
        };
        assert!(hello.capabilities.contains(Capabilities::CONFIG_DELTA));
        c.send(&[ack_as_origin_a(), snapshot_of(&first)]).await;
        let _ = tx.send(c);
        // Keep the connection (and endpoint) alive for the test.
        conn.closed().await;
        drop(endpoint);
    });
    (addr, rx)
}

/// A PoP linked to a [`raw_origin`] that sent it `first`.
async fn pop_on_raw_origin(pki: &Pki, first: &Arc<Definitions>) -> (Pop, RawControl) {
    let (addr, control) = raw_origin(pki.material("origin-a"), Arc::clone(first)).await;
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(addr)]);
    let c = control.await.unwrap();
    pop.wait_for_api("echo").await;
    (pop, c)
}

/// An origin drains a link (GoAway, then the end of its control stream) and
/// never closes it: the PoP closes it after the drain timeout and dials
/// again, instead of keeping the region down for ever.
#[tokio::test]
async fn a_drained_link_the_origin_never_closes_is_closed_and_dialed_again() {
    let pki = Pki::new();
    let first = definitions("");
    let (pop, mut c) = pop_on_raw_origin(&pki, &first).await;
    c.send(&[Frame::GoAway(GoAway {
        reason: "test".into(),
        last_stream_hint: 0,
    })])
    .await;
    c.send.finish().unwrap();
    assert_eq!(
        down_reason(&pop).await,
        "the origin drained the link and did not close it"
    );
    pop.backbone.shutdown().await;
}

/// An origin that takes each link and drops it at once is dialed with a
/// growing back-off, not ten times a second: a finished handshake alone
/// does not start the back-off over.
#[tokio::test]
async fn links_that_die_at_once_are_dialed_with_a_growing_back_off() {
    let pki = Pki::new();
    let first = definitions("");
    let server = pki.material("origin-a").server_config(&settings()).unwrap();
    let endpoint = quinn::Endpoint::server(server, localhost0()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let Ok((send, recv)) = conn.accept_bi().await else {
                continue;
            };
            let mut c = RawControl::open(send, recv).await;
            let Frame::Hello(_) = c.next().await else {
                panic!("expected Hello")
            };
            c.send(&[ack_as_origin_a(), snapshot_of(&first)]).await;
            let _ = tx.send(Instant::now());
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.close(1u32.into(), b"bye");
        }
    });
    let link = LinkSettings {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1600),
        ..settings()
    };
    let pop = Pop::start_link(&pki.material("pop-a"), vec![origin_spec(addr)], link);
    let mut links = Vec::new();
    while links.len() < 6 {
        let at = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the PoP dials again")
            .unwrap();
        links.push(at);
    }
    // Delays of at least 50, 100, 200, 400 and 800 ms between the six.
    let took = links[5] - links[0];
    assert!(took >= Duration::from_millis(1500), "six links in {took:?}");
    pop.backbone.shutdown().await;
}

/// A PoP control subsystem with megabytes to say as soon as a link is up.
struct Chatty;

impl ControlHandler for Chatty {
    fn link_up(&self, link: &ControlLink) {
        let link = link.clone();
        tokio::spawn(async move {
            for i in 0..48 {
                // 60 KB a report, in scopes of the longest kind.
                let entries = (0..30)
                    .map(|j| UsageEntry {
                        scope: format!("{:02000}", i * 30 + j),
                        used: 1,
                    })
                    .collect();
                let report = Frame::UsageReport(UsageReport {
                    pop_id: "pop-a".into(),
                    window_start_unix_ms: 0,
                    entries,
                });
                if link.send(report).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Both ends of a control stream have more to write than the other's
/// window takes, and each reads only after its write is done (the origin
/// here; both of Portico's ends did so): the PoP keeps reading while it
/// writes, so the origin's write completes and both get through.
#[tokio::test]
async fn two_ends_writing_megabytes_at_once_do_not_deadlock() {
    let pki = Pki::new();
    let big = "x".repeat(3 << 20);
    let route = format!(
        "[[apis.routes]]\nmethod = \"GET\"\npath = \"/big\"\nintegration = {{ type = \"mock\", status = 200, body = \"{big}\" }}\n"
    );
    let first = definitions(&route);
    let server = pki.material("origin-a").server_config(&settings()).unwrap();
    let endpoint = quinn::Endpoint::server(server, localhost0()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let defs = Arc::clone(&first);
    tokio::spawn(async move {
        let conn = endpoint.accept().await.unwrap().await.unwrap();
        let (send, recv) = conn.accept_bi().await.unwrap();
        let mut c = RawControl::open(send, recv).await;
        let Frame::Hello(_) = c.next().await else {
            panic!("expected Hello")
        };
        // Written whole before anything is read (3 MiB: more than the
        // PoP's 2 MiB stream window).
        c.send(&[ack_as_origin_a(), snapshot_of(&defs)]).await;
        let mut read = 0;
        while read < 48 {
            if let Frame::UsageReport(_) = c.next().await {
                read += 1;
            }
        }
        let _ = tx.send(read);
        conn.closed().await;
        drop(endpoint);
    });
    let pop = Pop::start_control(
        &pki.material("pop-a"),
        vec![origin_spec(addr)],
        Arc::new(Chatty),
    );
    wait_status(&pop, "the big snapshot", |s| {
        s.running == Some(running(&first))
    })
    .await;
    let read = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the origin reads the PoP's frames")
        .unwrap();
    assert_eq!(read, 48);
    pop.backbone.shutdown().await;
}

/// The `HelloAck` of origin-a, version 2 with deltas.
fn ack_as_origin_a() -> Frame {
    Frame::HelloAck(HelloAck {
        chosen_version: PROTOCOL_VERSION_MAX,
        node_id: "origin-a".into(),
        role: Role::Origin,
        region: REGION.into(),
        capabilities: Capabilities::CONFIG_DELTA,
    })
}

fn snapshot_of(defs: &Definitions) -> Frame {
    Frame::ConfigSnapshot(ConfigSnapshot {
        version: defs.version,
        hash: sha256(&defs.source),
        definitions: defs.source.clone(),
    })
}

#[tokio::test]
async fn a_delta_the_pop_cannot_verify_gets_it_a_snapshot() {
    let pki = Pki::new();
    let first = definitions("");
    let (pop, mut c) = pop_on_raw_origin(&pki, &first).await;
    let second = definitions(ONLY_GET);
    let changed = first.delta_to(&second).unwrap();
    // A delta whose result is not the version it names: the PoP must not
    // run it, and asks for a snapshot instead.
    let wrong = ConfigDelta {
        from_version: first.version,
        to_version: second.version ^ 1,
        changed: changed.clone(),
    };
    c.send(&[Frame::ConfigDelta(wrong)]).await;
    let Frame::ConfigRequest(request) = c.next().await else {
        panic!("expected a snapshot request")
    };
    assert_eq!(request.have_version, Some(first.version));
    assert!(
        request.reason.contains("the frame says"),
        "{}",
        request.reason
    );
    let s = status(&pop);
    assert_eq!((s.refused, s.requests, s.deltas), (1, 1, 0));
    assert_eq!(s.running, Some(running(&first)));
    // A delta from a version the PoP does not run waits for that snapshot
    // without asking twice.
    let stale = ConfigDelta {
        from_version: first.version ^ 1,
        to_version: second.version,
        changed: changed.clone(),
    };
    c.send(&[Frame::ConfigDelta(stale), snapshot_of(&second)])
        .await;
    wait_status(&pop, "the snapshot applied", |s| s.snapshots == 2).await;
    let s = status(&pop);
    assert_eq!((s.refused, s.requests), (2, 1));
    assert_eq!(s.running, Some(running(&second)));
    // A good delta applies.
    let third = definitions(&ONLY_GET.replace("200", "204"));
    let good = ConfigDelta {
        from_version: second.version,
        to_version: third.version,
        changed: second.delta_to(&third).unwrap(),
    };
    c.send(&[Frame::ConfigDelta(good)]).await;
    wait_status(&pop, "the delta applied", |s| s.deltas == 1).await;
    assert_eq!(status(&pop).running, Some(running(&third)));
    pop.backbone.shutdown().await;
}

/// Reloads while a PoP reads nothing are not each buffered for it: the
/// origin pushes configuration only while its control stream's send buffer
/// has room, so when the PoP reads again the latest definitions come after
/// a few snapshots, not after every one made meanwhile.
#[tokio::test]
async fn reloads_for_a_pop_that_reads_nothing_are_not_buffered_each() {
    const RELOADS: usize = 24;
    let pki = Pki::new();
    // Snapshots of about 512 KiB: a mock body of that size.
    let large = |n: usize| {
        let body = format!("{n}{}", "x".repeat(512 << 10));
        let route = format!(
            "[[apis.routes]]\nmethod = \"GET\"\npath = \"/large\"\n\
             integration = {{ type = \"mock\", status = 200, body = \"{body}\" }}\n"
        );
        definitions(&route)
    };
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), large(0));
    let (_endpoint, _conn, mut c, _) =
        raw_pop_offering(&pki.material("pop-a"), origin.addr, Capabilities(0)).await;
    let mut last = 0;
    for n in 1..=RELOADS {
        let defs = large(n);
        last = defs.version;
        origin.defs.send_replace(defs);
        // Each reload seen on its own (the origin would otherwise push only
        // the latest of those that came together).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut snapshots = 0;
    loop {
        let Frame::ConfigSnapshot(snapshot) = c.next().await else {
            continue;
        };
        snapshots += 1;
        if snapshot.version == last {
            break;
        }
    }
    assert!(
        snapshots < RELOADS / 2,
        "{snapshots} snapshots of {RELOADS} reloads were buffered"
    );
    origin.stop().await;
}

/// Writes pings on `send` until a write waits longer than 3 s (flow control
/// holds it back) or `max` bytes went out; returns the bytes written.
async fn flood_pings(send: &mut SendStream, max: usize) -> usize {
    let mut chunk = BytesMut::new();
    while chunk.len() < 64 * 1024 {
        let ping = Frame::Ping(Ping { nonce: u64::MAX });
        RawControl::codec().encode(&ping, &mut chunk).unwrap();
    }
    let chunk = chunk.freeze();
    let mut written = 0;
    while written < max {
        let write = tokio::time::timeout(Duration::from_secs(3), send.write_all(&chunk));
        let Ok(result) = write.await else { break };
        result.unwrap();
        written += chunk.len();
    }
    written
}

/// Most a peer that reads nothing can write in pings: about the other
/// end's stream window, plus its send buffer of answers (1 MiB) and the
/// answers in flight (our stream window), each 2 MiB in the tests.
const FLOOD_HELD: usize = 12 << 20;
/// What the flood tries.
const FLOOD_MAX: usize = 32 << 20;

/// A PoP that floods pings and reads none of the answers is held back by
/// flow control: the origin stops reading while its answers do not fit.
#[tokio::test]
async fn a_pop_that_floods_pings_and_reads_nothing_is_held_back() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let (_endpoint, _conn, mut c, _) = raw_pop(&pki.material("pop-a"), origin.addr).await;
    let written = flood_pings(&mut c.send, FLOOD_MAX).await;
    assert!(written < FLOOD_HELD, "{} MiB of pings taken", written >> 20);
    // The answers are there once it reads.
    assert!(matches!(c.next().await, Frame::Pong(p) if p.nonce == u64::MAX));
    origin.stop().await;
}

/// The same from an origin: the PoP stops reading while its answers do not fit.
#[tokio::test]
async fn an_origin_that_floods_pings_and_reads_nothing_is_held_back() {
    let pki = Pki::new();
    let first = definitions("");
    let (pop, mut c) = pop_on_raw_origin(&pki, &first).await;
    let written = flood_pings(&mut c.send, FLOOD_MAX).await;
    assert!(written < FLOOD_HELD, "{} MiB of pings taken", written >> 20);
    assert!(matches!(c.next().await, Frame::Pong(p) if p.nonce == u64::MAX));
    pop.backbone.shutdown().await;
}
