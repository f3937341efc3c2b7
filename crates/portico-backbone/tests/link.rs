//! Link management: mutual TLS, configuration push, down links, reconnects.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use portico_backbone::pki::Ca;
use portico_backbone::{Identity, LinkSettings, LinkState};

#[tokio::test]
async fn mutual_tls_link_comes_up_and_pushes_the_snapshot() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    assert!(pop.backbone.wait_up(REGION, Duration::from_secs(20)).await);
    pop.wait_for_api("echo").await;
    let (spec, state) = &pop.backbone.links()[0];
    assert_eq!(spec.address, origin.addr);
    let LinkState::Up(session) = state else {
        panic!("link is {}", state.as_str())
    };
    assert_eq!(session.origin_id(), "origin-a");
    let (status, body) = pop.get("/prod/info").await;
    assert_eq!(status, 200, "{body:?}");
    let info: String = String::from_utf8(body.to_vec()).unwrap();
    assert!(info.contains("\"protocol\":\"backbone\""), "{info}");
    assert!(info.contains("\"pop\":\"pop-a\""), "{info}");
    pop.backbone.shutdown().await;
    origin.stop().await;
}

#[tokio::test]
async fn rogue_pop_with_a_self_made_certificate_is_refused() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    // A rogue CA that also signs "pop-a", and trusts the real CA so that it
    // can verify the origin: only the origin's check can refuse it.
    let rogue = Ca::generate().unwrap();
    let cert = rogue
        .issue("pop-a", Some(portico_proto::Role::Pop))
        .unwrap();
    let ca_pems = format!("{}{}", pki.ca.cert_pem(), rogue.cert_pem());
    let tls =
        portico_backbone::TlsMaterial::from_pem(&ca_pems, &cert.cert_pem, &cert.key_pem).unwrap();
    let pop = Pop::start(&tls, vec![origin_spec(origin.addr)]);
    let reason = down_reason(&pop).await;
    assert!(
        reason.contains("certificate") || reason.contains("TLS") || reason.contains("closed"),
        "{reason}"
    );
    assert!(
        !pop.backbone
            .wait_up(REGION, Duration::from_millis(300))
            .await
    );
    assert!(
        pop.gateway.definitions().apis.is_empty(),
        "no configuration leaked"
    );
    origin.stop().await;
}

#[tokio::test]
async fn a_pop_whose_certificate_names_another_node_is_refused() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    // Valid for the CA, but issued to pop-b while claiming pop-a in Hello.
    let pop = Pop::start(&pki.material("pop-b"), vec![origin_spec(origin.addr)]);
    let reason = down_reason(&pop).await;
    assert!(reason.contains("does not name node"), "{reason}");
    origin.stop().await;
}

#[tokio::test]
async fn an_origin_the_pop_cannot_verify_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    // Signed by another CA.
    let origin = Origin::start(&other.material("origin-a"), localhost0(), definitions(""));
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    let reason = down_reason(&pop).await;
    assert!(reason.contains("certificate"), "{reason}");
    pop.backbone.shutdown().await;
    origin.stop().await;
    // Right CA, wrong name: the PoP expects "origin-a".
    let origin = Origin::start(&pki.material("origin-z"), localhost0(), definitions(""));
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    let reason = down_reason(&pop).await;
    assert!(reason.contains("certificate"), "{reason}");
    origin.stop().await;
}

/// An origin is who its certificate says, of the region the PoP homes
/// there: its handshake's word alone is not enough.
#[tokio::test]
async fn an_origin_that_claims_another_name_or_region_is_refused() {
    let pki = Pki::new();
    for (node_id, region, expected) in [
        (
            "origin-b",
            REGION,
            "certificate does not name node `origin-b` as an origin",
        ),
        (
            "localhost",
            REGION,
            "certificate does not name node `localhost` as an origin",
        ),
        (
            "origin-a",
            "elsewhere",
            "origin `origin-a` is of region `elsewhere`, not `test-1`",
        ),
    ] {
        let identity = Identity {
            node_id: node_id.into(),
            region: region.into(),
        };
        let origin = Origin::start_as(&pki.material("origin-a"), identity);
        let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
        let reason = down_reason(&pop).await;
        assert!(reason.contains(expected), "{reason}");
        assert!(
            pop.gateway.definitions().apis.is_empty(),
            "nothing taken from it"
        );
        pop.backbone.shutdown().await;
        origin.stop().await;
    }
}

#[tokio::test]
async fn a_down_link_answers_503_at_once() {
    let pki = Pki::new();
    // Nothing listens there: the link never comes up.
    let dead = std::net::UdpSocket::bind(localhost0()).unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let pop = Pop::start_with(
        &pki.material("pop-a"),
        vec![origin_spec(addr)],
        definitions(""),
    );
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = pop.get("/prod/info").await;
        assert_eq!(status, 503);
        assert_eq!(&body[..], br#"{"message":"Service Unavailable"}"#);
        // At once: well under the 5 s a handshake may take here.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn reconnects_after_the_origin_restarts_on_the_same_port() {
    let pki = Pki::new();
    let origin_tls = pki.material("origin-a");
    let origin = Origin::start(&origin_tls, localhost0(), definitions(""));
    let addr = origin.addr;
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(addr)]);
    pop.wait_for_api("echo").await;
    assert_eq!(pop.get("/prod/info").await.0, 200);
    origin.stop().await;
    // While it is down: 503 at once, the API stays known (not 404).
    eventually(20, "503 while the origin is down", || async {
        pop.get("/prod/info").await.0 == 503
    })
    .await;
    let origin = Origin::start(&origin_tls, addr, definitions(""));
    eventually(20, "served again after the restart", || async {
        pop.get("/prod/info").await.0 == 200
    })
    .await;
    pop.backbone.shutdown().await;
    origin.stop().await;
}

#[tokio::test]
async fn configuration_changes_reach_the_pop_and_regional_apis_are_404() {
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    pop.wait_for_api("echo").await;
    // A regional API is known to the PoP but not served there.
    let req = http::Request::get("/prod/")
        .header("host", "inside.execute-api.test")
        .body(portico_gateway::body::empty())
        .unwrap();
    let (status, body) = collect(pop.handle(req).await).await;
    assert_eq!(
        (status, &body[..]),
        (404, &br#"{"message":"Not Found"}"#[..])
    );
    let post = || {
        http::Request::post("/prod/only-get")
            .body(portico_gateway::body::empty())
            .unwrap()
    };
    // Before the change, POST reaches the origin (whose test handler has no such path).
    assert_eq!(pop.handle(post()).await.status(), 404);
    // Reload at the origin: a route that refuses POST.
    let route = "[[apis.routes]]\nmethod = \"GET\"\npath = \"/only-get\"\nintegration = { type = \"mock\", status = 200 }\n";
    let started = Instant::now();
    origin.defs.send_replace(definitions(route));
    eventually(10, "new snapshot applied", || async {
        pop.handle(post()).await.status() == 405
    })
    .await;
    // The goal is 1 s; allow for a loaded test machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    pop.backbone.shutdown().await;
    origin.stop().await;
}

/// A UDP relay to `target` that passes a client's datagrams on and drops
/// every answer, as the replies to a spoofed source address are lost to the
/// sender; returns its address and the answers it dropped.
async fn one_way_relay(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinSet<()>,
) {
    let front = tokio::net::UdpSocket::bind(localhost0()).await.unwrap();
    let back = Arc::new(tokio::net::UdpSocket::bind(localhost0()).await.unwrap());
    let addr = front.local_addr().unwrap();
    let answers = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let out = Arc::clone(&back);
    tasks.spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = front.recv_from(&mut buf).await {
            let _ = out.send_to(&buf[..n], target).await;
        }
    });
    let dropped = Arc::clone(&answers);
    tasks.spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while back.recv_from(&mut buf).await.is_ok() {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, answers, tasks)
}

/// Connection attempts from addresses that never answer (a flood of QUIC
/// Initials with spoofed sources) each get a stateless Retry: none holds a
/// handshake, and a real PoP links up meanwhile.
#[tokio::test]
async fn connection_attempts_from_addresses_that_never_answer_hold_no_handshake() {
    const ATTEMPTS: usize = 200;
    let pki = Pki::new();
    let origin = Origin::start(&pki.material("origin-a"), localhost0(), definitions(""));
    let (relay, answers, _relay) = one_way_relay(origin.addr).await;
    let client = quinn::Endpoint::client(localhost0()).unwrap();
    let config = pki.material("pop-a").client_config(&settings()).unwrap();
    let attempts: Vec<_> = (0..ATTEMPTS)
        .map(|_| {
            client
                .connect_with(config.clone(), relay, "origin-a")
                .unwrap()
        })
        .collect();
    eventually(20, "every attempt answered", || async {
        answers.load(Ordering::SeqCst) >= ATTEMPTS
    })
    .await;
    assert_eq!(origin.handshakes.in_progress(), 0);
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    assert!(pop.backbone.wait_up(REGION, Duration::from_secs(20)).await);
    assert_eq!(origin.handshakes.in_progress(), 0);
    drop(attempts);
    client.close(0u32.into(), b"");
    pop.backbone.shutdown().await;
    origin.stop().await;
}

/// Peers that finish the QUIC handshake and then never say `Hello` hold at
/// most `max_handshakes` slots; further attempts are refused at once, and a
/// PoP links up once the stalled ones time out.
#[tokio::test]
async fn handshakes_past_the_cap_are_refused() {
    const CAP: u32 = 4;
    const ATTEMPTS: usize = 10;
    let pki = Pki::new();
    let link = LinkSettings {
        max_handshakes: CAP,
        ..settings()
    };
    let origin = Origin::start_with(
        &pki.material("origin-a"),
        localhost0(),
        definitions(""),
        link,
    );
    assert_eq!(origin.handshakes.max(), CAP as usize);
    let client = quinn::Endpoint::client(localhost0()).unwrap();
    let config = pki.material("pop-a").client_config(&settings()).unwrap();
    let attempts = (0..ATTEMPTS).map(|_| {
        let connecting = client.connect_with(config.clone(), origin.addr, "origin-a");
        async move { connecting.unwrap().await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let (stalled, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(stalled.len(), CAP as usize);
    assert!(
        refused.iter().all(
            |r| matches!(r, Err(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
        ),
        "{refused:?}"
    );
    assert_eq!(origin.handshakes.in_progress(), CAP as usize);
    // The stalled ones time out (no Hello) and free their slots.
    let pop = Pop::start(&pki.material("pop-a"), vec![origin_spec(origin.addr)]);
    assert!(pop.backbone.wait_up(REGION, Duration::from_secs(20)).await);
    eventually(20, "the slots are free again", || async {
        origin.handshakes.in_progress() == 0
    })
    .await;
    drop(stalled);
    client.close(0u32.into(), b"");
    pop.backbone.shutdown().await;
    origin.stop().await;
}
