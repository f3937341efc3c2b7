//! TCP relay over real loopback sockets. Lower timing bounds are exact; upper bounds are
//! generous so the tests pass on a loaded two-core machine.

use std::net::SocketAddr;
use std::time::Duration;

use portico_netsim::{Link, LinkSpec, RelayHandle, TcpRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

const MS: Duration = Duration::from_millis(1);
/// Slack allowed above a simulated delay for timers, scheduling and a busy machine.
const SLACK: Duration = Duration::from_millis(250);
/// Bound on any single test step, so a bug fails the test instead of hanging it.
const STEP: Duration = Duration::from_secs(30);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn relay(target: SocketAddr, link: Link) -> RelayHandle {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    TcpRelay::from_listener(listener, target, link)
        .unwrap()
        .with_seed(7)
        .spawn()
}

/// A target that echoes every connection until the client half-closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// The byte at position `i` of a test stream: a pattern whose period (251) is not a
/// power of two, so shifted or reordered chunks do not line up by accident.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[tokio::test]
async fn fresh_connection_costs_handshake_plus_request_round_trip() {
    let link = Link::symmetric(LinkSpec::with_delay(25 * MS)); // RTT 50 ms
    let relay = relay(echo_server().await, link).await;
    let start = Instant::now();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    let first = start.elapsed();
    assert!(
        first >= 100 * MS,
        "first response after {first:?}, expected >= 2 RTT"
    );
    assert!(first < 100 * MS + SLACK, "first response after {first:?}");

    let start = Instant::now();
    conn.write_all(b"pong").await.unwrap();
    conn.read_exact(&mut buf).await.unwrap();
    let second = start.elapsed();
    assert!(
        second >= 50 * MS,
        "warm round trip {second:?}, expected >= 1 RTT"
    );
    assert!(second < 50 * MS + SLACK, "warm round trip {second:?}");
}

#[tokio::test]
async fn server_greeting_and_accept_are_timed_like_a_real_handshake() {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let target = listener.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let _ = accepted_tx.send(Instant::now());
        conn.write_all(b"hello").await.unwrap();
        let _ = conn.read(&mut [0u8; 1]).await; // hold the connection open
    });
    let link = Link {
        up: LinkSpec::with_delay(20 * MS),
        down: LinkSpec::with_delay(30 * MS),
    };
    let relay = relay(target, link).await;
    let start = Instant::now();
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let mut buf = [0u8; 5];
    timeout(STEP, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let greeting = start.elapsed();
    let accepted = accepted_rx.await.unwrap() - start;
    // The final ACK reaches the target after RTT + up delay = 70 ms; the greeting needs
    // another down delay: 100 ms in all, two round trips.
    assert!(accepted >= 70 * MS, "target accepted after {accepted:?}");
    assert!(greeting >= 100 * MS, "greeting after {greeting:?}");
    assert!(greeting < 100 * MS + SLACK, "greeting after {greeting:?}");
}

#[tokio::test]
async fn jitter_never_reorders_bytes() {
    let spec = LinkSpec {
        delay: 5 * MS,
        jitter: 5 * MS,
        ..LinkSpec::default()
    };
    let relay = relay(echo_server().await, Link::symmetric(spec)).await;
    let conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    const TOTAL: usize = 200_000;
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..TOTAL).map(pattern).collect();
        // Many small writes of varying size, so the relay sees many separate chunks.
        let mut offset = 0;
        for size in (1..=1500).cycle() {
            let end = (offset + size).min(TOTAL);
            w.write_all(&data[offset..end]).await.unwrap();
            offset = end;
            if offset == TOTAL {
                break;
            }
            tokio::task::yield_now().await;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(TOTAL);
    timeout(STEP, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), TOTAL);
    let first_bad = got.iter().enumerate().position(|(i, &b)| b != pattern(i));
    assert_eq!(first_bad, None, "byte order broken");
}

#[tokio::test]
async fn half_close_propagates_after_the_data() {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let target = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        conn.read_to_end(&mut request).await.unwrap(); // ends only at the client's FIN
        conn.write_all(b"response").await.unwrap();
        conn.shutdown().await.unwrap();
        request
    });
    let relay = relay(target, Link::symmetric(LinkSpec::with_delay(10 * MS))).await;
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    conn.write_all(b"request").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut response = Vec::new();
    timeout(STEP, conn.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response, b"response");
    assert_eq!(server.await.unwrap(), b"request");
}

#[tokio::test]
async fn target_reset_reaches_the_client_as_a_reset() {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(b"bye").await.unwrap();
        conn.read_exact(&mut [0u8; 3]).await.unwrap(); // the client's "ack"
        conn.set_zero_linger().unwrap();
        drop(conn); // RST
    });
    let relay = relay(target, Link::symmetric(LinkSpec::with_delay(10 * MS))).await;
    let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
    let mut buf = [0u8; 3];
    timeout(STEP, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"bye");
    conn.write_all(b"ack").await.unwrap();
    let end = timeout(STEP, conn.read(&mut [0u8; 1])).await.unwrap();
    let kind = end.map_err(|e| e.kind());
    assert_eq!(kind, Err(std::io::ErrorKind::ConnectionReset));
}

/// Counts and checks a patterned stream; returns the byte count.
async fn patterned_sink(listener: TcpListener) -> usize {
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        let bad = buf[..n]
            .iter()
            .enumerate()
            .any(|(i, &b)| b != pattern(total + i));
        assert!(!bad, "corrupted stream near byte {total}");
        total += n;
    }
}

async fn send_patterned(addr: SocketAddr, total: usize) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let chunk: Vec<u8> = (0..251 * 256).map(pattern).collect(); // whole periods
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        conn.write_all(&chunk[..n]).await.unwrap();
        sent += n;
    }
    conn.shutdown().await.unwrap();
}

#[tokio::test]
async fn ten_megabytes_through_a_bounded_queue() {
    const TOTAL: usize = 10 * 1024 * 1024;
    const LIMIT: usize = 64 * 1024;
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let target = listener.local_addr().unwrap();
    let sink = tokio::spawn(patterned_sink(listener));
    let spec = LinkSpec {
        delay: 2 * MS,
        queue_limit_bytes: LIMIT,
        ..LinkSpec::default()
    };
    let relay = relay(target, Link::symmetric(spec)).await;
    timeout(STEP, send_patterned(relay.local_addr(), TOTAL))
        .await
        .unwrap();
    let received = timeout(STEP, sink).await.unwrap().unwrap();
    assert_eq!(received, TOTAL);
    let up = relay.stats().up;
    assert_eq!(up.bytes, TOTAL as u64);
    assert!(
        up.peak_queued_bytes <= LIMIT as u64,
        "peak {} over limit",
        up.peak_queued_bytes
    );
}

#[tokio::test]
async fn bandwidth_limits_throughput() {
    // 500 000 bytes = 4 Mbit at 8 Mbit/s: at least 500 ms.
    const TOTAL: usize = 500_000;
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let target = listener.local_addr().unwrap();
    let sink = tokio::spawn(patterned_sink(listener));
    let spec = LinkSpec {
        bandwidth_bps: Some(8_000_000),
        ..LinkSpec::default()
    };
    let relay = relay(target, Link::symmetric(spec)).await;
    let start = Instant::now();
    send_patterned(relay.local_addr(), TOTAL).await;
    assert_eq!(timeout(STEP, sink).await.unwrap().unwrap(), TOTAL);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= 500 * MS,
        "{TOTAL} bytes in {elapsed:?}, faster than the link"
    );
    assert!(elapsed < 500 * MS + 4 * SLACK, "took {elapsed:?}");
}

#[tokio::test]
async fn refused_target_closes_the_client_and_the_relay_survives() {
    let closed = TcpListener::bind(localhost()).await.unwrap();
    let target = closed.local_addr().unwrap();
    drop(closed);
    let relay = relay(target, Link::symmetric(LinkSpec::with_delay(5 * MS))).await;
    for _ in 0..2 {
        let mut conn = TcpStream::connect(relay.local_addr()).await.unwrap();
        let read = timeout(STEP, conn.read(&mut [0u8; 16])).await.unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected EOF or reset, got {read:?}"
        );
    }
    let stats = relay.stats();
    assert_eq!(stats.sessions_opened, 2);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let relay = relay(echo_server().await, Link::default()).await;
    let addr = relay.local_addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"x").await.unwrap();
    conn.read_exact(&mut [0u8; 1]).await.unwrap();
    relay.shutdown().await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open after shutdown"
    );
    let mut rest = Vec::new();
    let read = timeout(STEP, conn.read_to_end(&mut rest)).await.unwrap();
    assert!(
        read.is_err() || rest.is_empty(),
        "relayed connection not closed"
    );
}

#[tokio::test]
async fn invalid_link_is_rejected() {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let down = LinkSpec {
        bandwidth_bps: Some(0),
        ..LinkSpec::default()
    };
    let link = Link {
        down,
        ..Link::default()
    };
    let err = TcpRelay::from_listener(listener, localhost(), link).unwrap_err();
    assert_eq!(
        err.to_string(),
        "down direction: bandwidth_bps must be greater than zero (use None for an unlimited link)"
    );
}

/// When each chunk reached the target, with the chunk's first byte.
type Arrivals = mpsc::UnboundedReceiver<(u8, Instant)>;

/// A target that reports every chunk it receives, on any connection.
async fn arrival_server() -> (SocketAddr, Arrivals) {
    let listener = TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(1..) = conn.read(&mut buf).await {
                    let _ = tx.send((buf[0], Instant::now()));
                }
            });
        }
    });
    (addr, rx)
}

/// When the next chunk starting with `tag` arrived.
async fn arrival_of(arrivals: &mut Arrivals, tag: u8) -> Instant {
    loop {
        let (first, at) = timeout(STEP, arrivals.recv()).await.unwrap().unwrap();
        if first == tag {
            return at;
        }
    }
}

#[tokio::test]
async fn a_new_connection_does_not_hold_the_shared_link_during_its_handshake() {
    // RTT 400 ms: B's first bytes count as sent 400 ms after B connects.
    // Until then the link is free for A, whose byte should pay only the
    // 200 ms delay (long, so that a loaded machine's stalls stay small
    // beside the margin).
    let spec = LinkSpec {
        delay: 200 * MS,
        bandwidth_bps: Some(8_000_000),
        ..LinkSpec::default()
    };
    let (target, mut arrivals) = arrival_server().await;
    let relay = relay(target, Link::symmetric(spec)).await;
    let mut a = TcpStream::connect(relay.local_addr()).await.unwrap();
    a.write_all(b"a").await.unwrap();
    arrival_of(&mut arrivals, b'a').await; // A's handshake is long over
    let mut b = TcpStream::connect(relay.local_addr()).await.unwrap();
    b.write_all(&[b'b'; 1460]).await.unwrap();
    tokio::time::sleep(10 * MS).await;
    let sent = Instant::now();
    a.write_all(b"A").await.unwrap();
    let one_way = arrival_of(&mut arrivals, b'A').await - sent;
    assert!(one_way >= 200 * MS, "A's byte arrived after {one_way:?}");
    // Behind B's bytes it would arrive after about 590 ms.
    assert!(one_way < 400 * MS, "A's byte arrived after {one_way:?}");
    arrival_of(&mut arrivals, b'b').await;
}
