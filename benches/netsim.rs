//! How exactly the link simulator adds its delay: UDP echo round trips
//! through a [`UdpRelay`] with `Timing::Precise`, for 0 ms and 1 ms one-way
//! delay, against the same echo with no relay, in one run.
//!
//! criterion reports each case's time per round trip; the table after it
//! gives the medians of interleaved rounds and what the relay adds beyond
//! the configured delay (for 1 ms: the round trip minus 2 ms minus the
//! relay's own cost at 0 ms). The topology probe's minimums assume this is
//! near zero: a cold request through a PoP crosses a relay ten times.
//!
//! `cargo bench --bench netsim`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use portico_netsim::{Link, LinkSpec, RelayHandle, Timing, UdpRelay};
use tokio::net::UdpSocket;
use tokio::runtime::Runtime;

const DELAYS_MS: [u64; 2] = [0, 1];
const ROUNDS: usize = 5;
const PER_ROUND: usize = 200;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn echo_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = socket.local_addr().expect("echo address");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn relay(target: SocketAddr, delay_ms: u64) -> RelayHandle {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind relay");
    let link = Link::symmetric(LinkSpec::with_delay(Duration::from_millis(delay_ms)));
    UdpRelay::from_socket(socket, target, link)
        .expect("relay")
        .with_timing(Timing::Precise)
        .spawn()
}

/// One round trip from `client` to `to` and back.
async fn ping(client: &UdpSocket, to: SocketAddr) -> Duration {
    let mut buf = [0u8; 64];
    let start = Instant::now();
    client.send_to(b"ping", to).await.expect("send");
    client.recv(&mut buf).await.expect("recv");
    start.elapsed()
}

/// Median round trip of `n` pings, spaced so each finds an idle path (as
/// the probe's requests do).
async fn median_rtt(client: &UdpSocket, to: SocketAddr, n: usize) -> Duration {
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        rtts.push(ping(client, to).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rtts.sort_unstable();
    rtts[n / 2]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let rt = runtime();
    let (echo, client, relays) = rt.block_on(async {
        let echo = echo_server().await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        let mut relays = Vec::new();
        for ms in DELAYS_MS {
            relays.push((ms, relay(echo, ms).await));
        }
        (echo, client, relays)
    });

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("udp_echo");
    let timed = |to: SocketAddr, iters: u64| {
        rt.block_on(async {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += ping(&client, to).await;
            }
            total
        })
    };
    group.bench_function("direct", |b| b.iter_custom(|iters| timed(echo, iters)));
    for (ms, relay) in &relays {
        let to = relay.local_addr();
        group.bench_with_input(BenchmarkId::new("relay_ms", ms), &to, |b, &to| {
            b.iter_custom(|iters| timed(to, iters));
        });
    }
    group.finish();

    let mut direct = Vec::new();
    let mut through: Vec<Vec<Duration>> = vec![Vec::new(); relays.len()];
    for _ in 0..ROUNDS {
        direct.push(rt.block_on(median_rtt(&client, echo, PER_ROUND)));
        for (i, (_, relay)) in relays.iter().enumerate() {
            through[i].push(rt.block_on(median_rtt(&client, relay.local_addr(), PER_ROUND)));
        }
    }
    let direct = median(direct);
    let through: Vec<Duration> = through.into_iter().map(median).collect();
    println!("\n# netsim: UDP echo, median of {ROUNDS} rounds x {PER_ROUND} spaced pings");
    println!(
        "{:<12} {:>10} {:>22}",
        "path", "rtt µs", "added beyond delay µs"
    );
    println!("{:<12} {:>10.0} {:>22}", "direct", micros(direct), "-");
    let relay_cost = through.first().copied().unwrap_or_default();
    for ((ms, _), rtt) in relays.iter().zip(&through) {
        let expected = relay_cost + Duration::from_millis(2 * ms);
        let added = micros(*rtt) - micros(expected);
        println!(
            "{:<12} {:>10.0} {:>22.0}",
            format!("relay {ms} ms"),
            micros(*rtt),
            added
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
