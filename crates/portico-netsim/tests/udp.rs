//! UDP relay over real loopback sockets. Lower timing bounds are exact; upper bounds are
//! generous so the tests pass on a loaded two-core machine.

use std::net::SocketAddr;
use std::time::Duration;

use portico_netsim::{Link, LinkSpec, RelayHandle, StatsSnapshot, UdpRelay};
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep, timeout};

const MS: Duration = Duration::from_millis(1);
/// Slack allowed above a simulated delay for timers, scheduling and a busy machine.
const SLACK: Duration = Duration::from_millis(250);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A target that answers every datagram with the address it came from, so tests see which
/// upstream socket the relay used.
async fn peer_echo_server() -> SocketAddr {
    let socket = UdpSocket::bind(localhost()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(peer.to_string().as_bytes(), peer).await;
        }
    });
    addr
}

/// A target that counts what it receives and notes when the last datagram arrived.
async fn sink() -> (
    SocketAddr,
    tokio::sync::watch::Receiver<(usize, Option<Instant>)>,
) {
    let socket = UdpSocket::bind(localhost()).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel((0, None));
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while socket.recv(&mut buf).await.is_ok() {
            tx.send_modify(|(n, last)| {
                *n += 1;
                *last = Some(Instant::now());
            });
        }
    });
    (addr, rx)
}

async fn relay(target: SocketAddr, link: Link) -> RelayHandle {
    let socket = UdpSocket::bind(localhost()).await.unwrap();
    UdpRelay::from_socket(socket, target, link)
        .unwrap()
        .with_seed(42)
        .spawn()
}

async fn client() -> UdpSocket {
    UdpSocket::bind(localhost()).await.unwrap()
}

/// Polls the relay's counters until `done` holds (or fails the test after 10 s).
async fn wait_for(relay: &RelayHandle, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = relay.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting; stats: {stats:?}"
        );
        sleep(2 * MS).await;
    }
}

/// Sends `n` datagrams of `len` bytes in small bursts, waiting for the relay to take each
/// burst, so kernel socket buffers never overflow and every datagram reaches the relay.
async fn send_paced(client: &UdpSocket, relay: &RelayHandle, n: u64, len: usize) {
    let payload = vec![0xAB; len];
    let before = relay.stats().up.received_packets;
    let mut sent = 0;
    while sent < n {
        let burst = (n - sent).min(20);
        for _ in 0..burst {
            client.send_to(&payload, relay.local_addr()).await.unwrap();
        }
        sent += burst;
        wait_for(relay, |s| s.up.received_packets >= before + sent).await;
    }
}

async fn recv_string(socket: &UdpSocket) -> String {
    let mut buf = [0u8; 2048];
    let n = timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test]
async fn echo_round_trip_costs_both_delays() {
    let link = Link::symmetric(LinkSpec::with_delay(50 * MS));
    let relay = relay(peer_echo_server().await, link).await;
    let client = client().await;
    for _ in 0..3 {
        let start = Instant::now();
        client.send_to(b"ping", relay.local_addr()).await.unwrap();
        recv_string(&client).await;
        let rtt = start.elapsed();
        assert!(
            rtt >= 100 * MS,
            "rtt {rtt:?} shorter than the simulated link"
        );
        assert!(rtt < 100 * MS + SLACK, "rtt {rtt:?}");
    }
    let stats = relay.stats();
    assert_eq!((stats.up.packets, stats.down.packets), (3, 3));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_client_gets_its_own_stable_upstream_peer() {
    let relay = relay(peer_echo_server().await, Link::default()).await;
    let (a, b) = (client().await, client().await);
    let mut seen = Vec::new();
    for socket in [&a, &a, &b, &b] {
        socket.send_to(b"who", relay.local_addr()).await.unwrap();
        seen.push(recv_string(socket).await);
    }
    assert_eq!(seen[0], seen[1], "one client, one upstream peer");
    assert_eq!(seen[2], seen[3]);
    assert_ne!(seen[0], seen[2], "two clients must look like two peers");
    assert_eq!(relay.stats().sessions_opened, 2);
}

#[tokio::test]
async fn idle_mappings_expire() {
    let socket = UdpSocket::bind(localhost()).await.unwrap();
    let relay = UdpRelay::from_socket(socket, peer_echo_server().await, Link::default())
        .unwrap()
        .with_idle_timeout(100 * MS)
        .spawn();
    let client = client().await;
    client.send_to(b"1", relay.local_addr()).await.unwrap();
    recv_string(&client).await;
    wait_for(&relay, |s| s.sessions_active == 0).await;
    client.send_to(b"2", relay.local_addr()).await.unwrap();
    recv_string(&client).await;
    let stats = relay.stats();
    assert_eq!((stats.sessions_opened, stats.sessions_active), (2, 1));
}

#[tokio::test]
async fn loss_rate_is_within_statistical_tolerance() {
    let link = Link::symmetric(LinkSpec {
        loss: 0.3,
        ..LinkSpec::default()
    });
    let (target, _sink) = sink().await;
    let relay = relay(target, link).await;
    send_paced(&client().await, &relay, 2000, 64).await;
    let stats = wait_for(&relay, |s| s.up.packets + s.up.dropped_loss == 2000).await;
    let rate = stats.up.dropped_loss as f64 / 2000.0;
    assert!((0.2..0.4).contains(&rate), "loss rate {rate}");
    assert_eq!(stats.up.dropped_queue, 0);
}

#[tokio::test]
async fn loss_zero_and_one_are_exact() {
    for (loss, expect_forwarded) in [(0.0, 200), (1.0, 0)] {
        let link = Link::symmetric(LinkSpec {
            loss,
            ..LinkSpec::default()
        });
        let (target, mut sink) = sink().await;
        let relay = relay(target, link).await;
        send_paced(&client().await, &relay, 200, 64).await;
        let stats = wait_for(&relay, |s| s.up.packets + s.up.dropped_loss == 200).await;
        assert_eq!(stats.up.packets, expect_forwarded, "loss {loss}");
        assert_eq!(stats.up.dropped_loss, 200 - expect_forwarded, "loss {loss}");
        if expect_forwarded > 0 {
            let got = sink.wait_for(|(n, _)| *n == 200);
            timeout(Duration::from_secs(5), got).await.unwrap().unwrap();
        }
    }
}

#[tokio::test]
async fn bandwidth_serializes_datagrams() {
    // 200 × 1250 bytes = 2 Mbit at 8 Mbit/s: at least 250 ms on the wire.
    let spec = LinkSpec {
        bandwidth_bps: Some(8_000_000),
        ..LinkSpec::default()
    };
    let (target, mut sink) = sink().await;
    let relay = relay(target, Link::symmetric(spec)).await;
    let start = Instant::now();
    send_paced(&client().await, &relay, 200, 1250).await;
    let done = timeout(Duration::from_secs(10), sink.wait_for(|(n, _)| *n == 200));
    let last = done.await.unwrap().unwrap().1.unwrap();
    let elapsed = last - start;
    assert!(
        elapsed >= 250 * MS,
        "200 datagrams in {elapsed:?}, faster than the link"
    );
    assert!(elapsed < 250 * MS + 4 * SLACK, "took {elapsed:?}");
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let spec = LinkSpec {
        delay: 300 * MS,
        queue_limit_bytes: 5000,
        ..LinkSpec::default()
    };
    let (target, _sink) = sink().await;
    let relay = relay(target, Link::symmetric(spec)).await;
    send_paced(&client().await, &relay, 20, 1000).await;
    let stats = wait_for(&relay, |s| s.up.packets == 5).await;
    assert_eq!(stats.up.dropped_queue, 15);
    assert_eq!(stats.up.peak_queued_bytes, 5000);
}

#[tokio::test]
async fn invalid_link_is_rejected() {
    let socket = UdpSocket::bind(localhost()).await.unwrap();
    let link = Link {
        up: LinkSpec {
            loss: 1.5,
            ..LinkSpec::default()
        },
        ..Link::default()
    };
    let err = UdpRelay::from_socket(socket, localhost(), link).unwrap_err();
    assert_eq!(
        err.to_string(),
        "up direction: loss must be a probability within 0.0..=1.0, got 1.5"
    );
}
