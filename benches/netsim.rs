//! How exactly the link simulator adds its delay: echo round trips through a
//! [`UdpRelay`] and a [`TcpRelay`] with `Timing::Precise`, for 0, 1 and 5 ms
//! one-way delay, against the same echo with no relay, in one run.
//!
//! criterion reports each case's time per round trip; the table after it
//! gives the medians of interleaved rounds and what the relay adds beyond
//! the configured delay (the round trip minus twice the delay minus the
//! relay's own cost at 0 ms). The topology probe's minimums assume this is
//! near zero: a cold request through a PoP crosses a relay eight times. 5 ms
//! is there because waits longer than the precise timer's coarse margin
//! start on tokio's timer, whose lateness the margin must cover.
//!
//! `cargo bench --bench netsim`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use portico_netsim::{Link, LinkSpec, RelayHandle, TcpRelay, Timing, UdpRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Runtime;

const DELAYS_MS: [u64; 3] = [0, 1, 5];
const ROUNDS: usize = 5;
const PER_ROUND: usize = 100;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn link(delay_ms: u64) -> Link {
    Link::symmetric(LinkSpec::with_delay(Duration::from_millis(delay_ms)))
}

async fn udp_echo() -> SocketAddr {
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

async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// One client of one path: its own socket or connection.
enum Client {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

impl Client {
    async fn udp(to: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        Client::Udp(socket, to)
    }

    async fn tcp(to: SocketAddr) -> Self {
        let stream = TcpStream::connect(to).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut client = Client::Tcp(stream);
        // The first exchange pays the simulated TCP handshake.
        client.ping().await;
        client
    }

    /// One round trip.
    async fn ping(&mut self) -> Duration {
        let mut buf = [0u8; 64];
        let start = Instant::now();
        match self {
            Client::Udp(socket, to) => {
                socket.send_to(b"ping", *to).await.expect("send");
                socket.recv(&mut buf).await.expect("recv");
            }
            Client::Tcp(stream) => {
                stream.write_all(b"ping").await.expect("send");
                stream.read_exact(&mut buf[..4]).await.expect("recv");
            }
        }
        start.elapsed()
    }

    /// Round trips of `n` pings, spaced so each finds an idle path (as the
    /// probe's requests do) and starts at a different phase of tokio's 1 ms
    /// timer tick (as requests of a topology do): a relay's wait that starts
    /// on tokio's timer is late or not depending on that phase.
    async fn spaced_rtts(&mut self, n: usize) -> Vec<Duration> {
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n {
            rtts.push(self.ping().await);
            tokio::time::sleep(Duration::from_millis(2)).await;
            let phase = Duration::from_micros((i as u64 * 397) % 1000);
            let until = Instant::now() + phase;
            while Instant::now() < until {
                tokio::task::yield_now().await;
            }
        }
        rtts
    }
}

/// A measured path: its name, the one-way delay it adds, and its client.
struct Path {
    name: String,
    delay_ms: u64,
    client: Client,
}

/// Direct and relayed paths to a UDP and a TCP echo; the relays are kept
/// alive by the returned handles.
async fn paths() -> (Vec<Path>, Vec<RelayHandle>) {
    let (udp, tcp) = (udp_echo().await, tcp_echo().await);
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut paths = vec![
        Path {
            name: "udp direct".into(),
            delay_ms: 0,
            client: Client::udp(udp).await,
        },
        Path {
            name: "tcp direct".into(),
            delay_ms: 0,
            client: Client::tcp(tcp).await,
        },
    ];
    let mut relays = Vec::new();
    for ms in DELAYS_MS {
        let udp_relay = UdpRelay::bind(any, udp, link(ms)).await.expect("udp relay");
        let tcp_relay = TcpRelay::bind(any, tcp, link(ms)).await.expect("tcp relay");
        let udp_relay = udp_relay.with_timing(Timing::Precise).spawn();
        let tcp_relay = tcp_relay.with_timing(Timing::Precise).spawn();
        let clients = [
            ("udp", Client::udp(udp_relay.local_addr()).await),
            ("tcp", Client::tcp(tcp_relay.local_addr()).await),
        ];
        for (proto, client) in clients {
            let name = format!("{proto} relay {ms} ms");
            paths.push(Path {
                name,
                delay_ms: ms,
                client,
            });
        }
        relays.extend([udp_relay, tcp_relay]);
    }
    (paths, relays)
}

fn main() {
    let rt = runtime();
    let (mut paths, _relays) = rt.block_on(paths());

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("echo");
    for path in &mut paths {
        let name = path.name.replace(' ', "_");
        let client = &mut path.client;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += client.ping().await;
                    }
                    total
                })
            });
        });
    }
    group.finish();

    // Interleaved rounds, every sample kept: the p90 shows late releases
    // that a median of medians would hide.
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
    for _ in 0..ROUNDS {
        for (path, samples) in paths.iter_mut().zip(&mut samples) {
            samples.extend(rt.block_on(path.client.spaced_rtts(PER_ROUND)));
        }
    }
    for s in &mut samples {
        s.sort_unstable();
    }
    let at = |s: &[Duration], q: usize| s[s.len() * q / 100];
    println!(
        "\n# netsim: echo round trips, {ROUNDS} interleaved rounds x {PER_ROUND} spaced pings"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>24}",
        "path", "median µs", "p90 µs", "added: median, p90 µs"
    );
    // The relay's own cost, per protocol: the median of its 0 ms path.
    let cost = |proto: &str| {
        paths
            .iter()
            .zip(&samples)
            .find(|(p, _)| p.name == format!("{proto} relay 0 ms"))
            .map_or(Duration::ZERO, |(_, s)| at(s, 50))
    };
    for (path, s) in paths.iter().zip(&samples) {
        let (p50, p90) = (at(s, 50), at(s, 90));
        let added = if path.name.contains("relay") && path.delay_ms > 0 {
            let proto = &path.name[..3];
            let expected = micros(cost(proto) + Duration::from_millis(2 * path.delay_ms));
            format!(
                "{:.0}, {:.0}",
                micros(p50) - expected,
                micros(p90) - expected
            )
        } else {
            "-".into()
        };
        println!(
            "{:<16} {:>10.0} {:>10.0} {:>24}",
            path.name,
            micros(p50),
            micros(p90),
            added
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
