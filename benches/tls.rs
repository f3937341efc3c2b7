//! A new TLS connection at a listener: the server's work from a client's
//! ClientHello to its first flight (ServerHello to Finished, TLS 1.3,
//! X25519, a P-256 certificate, AES-128-GCM), which a client waits for
//! before it can send its request.
//!
//! * `portico`: a public listener's config (`portico_net::server_config`),
//!   whose X25519 key shares come from a pool made ahead by a background
//!   thread;
//! * `ring`: the same suite, group and kind of certificate with ring's own
//!   provider, which makes each key share inside the handshake.
//!
//! In memory, one thread, no sockets: only the server's part is timed; the
//! client's ClientHello is made before the clock starts. `cargo bench
//! --bench tls` prints criterion's numbers, then medians of interleaved
//! rounds and their ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use portico_net::SniResolver;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;

const ROUNDS: usize = 15;
const PER_ROUND: usize = 200;

/// ring's provider with the one suite both sides use.
fn aes_128_only() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::ring::default_provider()
    })
}

fn client() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(aes_128_only())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}

fn portico() -> Arc<ServerConfig> {
    let config = portico_net::server_config(&[], &["localhost".into()]).expect("listener config");
    Arc::new(config)
}

fn ring() -> Arc<ServerConfig> {
    let key = portico_net::tls::self_signed(&["localhost".into()]).expect("certificate");
    let resolver = SniResolver::new(vec![Arc::new(key)]).expect("resolver");
    let config = ServerConfig::builder_with_provider(aes_128_only())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Arc::new(config)
}

/// One handshake's first flight: the time the server takes from a fresh
/// ClientHello to the last byte of its answer.
fn first_flight(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> Duration {
    let name = ServerName::try_from("localhost").expect("name");
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut hello = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut hello).expect("ClientHello");
    }
    let mut flight = Vec::with_capacity(2048);
    let start = Instant::now();
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut rest = &hello[..];
    while !rest.is_empty() {
        s.read_tls(&mut rest).expect("read");
        s.process_new_packets().expect("ClientHello accepted");
    }
    while s.wants_write() {
        s.write_tls(&mut flight).expect("write");
    }
    let took = start.elapsed();
    assert!(flight.len() > 500, "a whole first flight");
    took
}

fn main() {
    let client = client();
    let servers = [("portico", portico()), ("ring", ring())];
    // Let the pool's thread fill it before anything is timed.
    std::thread::sleep(Duration::from_millis(100));

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("tls_first_flight");
    for (name, server) in &servers {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| first_flight(&client, server)).sum());
        });
    }
    group.finish();

    // Interleaved rounds, medians of each round, then the median of those.
    let mut medians: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for _ in 0..ROUNDS {
        for ((_, server), medians) in servers.iter().zip(&mut medians) {
            let mut round: Vec<f64> = (0..PER_ROUND)
                .map(|_| first_flight(&client, server).as_secs_f64() * 1e6)
                .collect();
            medians.push(median(&mut round));
        }
    }
    let portico = median(&mut medians[0]);
    let ring = median(&mut medians[1]);
    println!("\n# TLS 1.3 first flight at the server, {ROUNDS} interleaved rounds x {PER_ROUND}");
    println!("{:<10} {:>12}", "server", "median µs");
    println!("{:<10} {:>12.1}", "portico", portico);
    println!("{:<10} {:>12.1}", "ring", ring);
    println!("portico / ring: {:.2}×", portico / ring);
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
