//! Round trips per second of small requests over ONE backbone connection
//! (64 and 512 concurrent streams), against hyper's HTTP/2 client and server
//! doing the same work over ONE TLS connection, in the same run.
//!
//! Both sides run in one tokio runtime (2 worker threads, like the 2-core
//! machines this project targets), client and server sharing it. Both do the
//! same work per request: a GET with four headers, a 128-byte response body
//! collected by the client, no gateway pipeline on either side — this
//! measures the transports. Each measured iteration is a batch of
//! [`BATCH`] requests spread over `concurrency` tasks, each sending its share
//! one after the other on its own stream.
//!
//! `cargo bench --bench backbone` prints criterion's numbers, then a table of
//! medians over interleaved rounds with the backbone/HTTP/2 ratio (goal ≥ 1).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico_backbone::pki::Ca;
use portico_backbone::{
    Backbone, BackboneServer, BackboneUpstream, Identity, LinkSettings, OriginSpec, RequestHandler,
    Routed, TlsMaterial,
};
use portico_config::{DefinitionDefaults, Definitions};
use portico_gateway::{Body, ConnInfo};
use portico_proto::{RequestHead, Role};
use tokio::runtime::Runtime;

/// The allocator the `portico` binary ships with, for both peers: the
/// transports are measured as they run in a node.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 2048;
const PAYLOAD: &[u8; 128] = &[b'p'; 128];
const REGION: &str = "bench";

struct Fixed;

impl RequestHandler for Fixed {
    async fn handle(&self, _req: Request<Body>, _c: Arc<ConnInfo>, _r: Routed) -> Response<Body> {
        Response::new(portico_gateway::body::full(Bytes::from_static(PAYLOAD)))
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An origin backbone server and a PoP linked to it; returns the PoP side.
async fn backbone() -> (BackboneUpstream, Backbone) {
    let ca = Ca::generate().unwrap();
    let material = |node: &str, role| {
        let cert = ca.issue(node, Some(role)).unwrap();
        TlsMaterial::from_pem(&ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap()
    };
    let identity = |id: &str| Identity {
        node_id: id.into(),
        region: REGION.into(),
    };
    let settings = LinkSettings::default();
    let server = BackboneServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &material("origin-b", Role::Origin),
        identity("origin-b"),
        settings.clone(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (_defs_tx, defs) = tokio::sync::watch::channel(Arc::new(Definitions::empty()));
    tokio::spawn(async move {
        let _keep = _defs_tx;
        server
            .run(Arc::new(Fixed), defs, std::future::pending())
            .await
    });
    let origin = OriginSpec {
        region: REGION.into(),
        address: addr,
        server_name: "origin-b".into(),
    };
    let pop = Backbone::start(
        identity("pop-b"),
        vec![origin],
        &material("pop-b", Role::Pop),
        settings,
        DefinitionDefaults::default(),
    )
    .unwrap();
    assert!(pop.wait_up(REGION, Duration::from_secs(10)).await);
    (pop.upstream(), pop)
}

fn head() -> RequestHead {
    RequestHead {
        request_id: "0f5c2a9e-bench".into(),
        method: "GET".into(),
        uri: "/items/7".into(),
        headers: vec![
            ("host".into(), b"bench.example".to_vec()),
            ("user-agent".into(), b"bench/1".to_vec()),
            ("accept".into(), b"*/*".to_vec()),
            ("x-request-id".into(), b"0f5c2a9e-bench".to_vec()),
        ],
        client_addr: Some("192.0.2.1:50000".parse::<SocketAddr>().unwrap().into()),
        tls: None,
        trace_context: None,
        api: "bench".into(),
        stage: "prod".into(),
        route_key: "GET /items/{id}".into(),
        path_params: vec![("id".into(), "7".into())],
        principal: None,
        pop_id: "pop-b".into(),
        deadline_ms: 29_000,
    }
}

async fn backbone_batch(up: &BackboneUpstream, concurrency: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let up = up.clone();
        tasks.spawn(async move {
            for _ in 0..BATCH / concurrency {
                let empty = portico_gateway::body::empty();
                let resp = up.request(REGION, head(), empty).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), PAYLOAD.len());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// A self-signed TLS pair for the HTTP/2 peer.
fn h2_tls() -> (rustls::ServerConfig, rustls::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = key.cert.der().clone();
    let pkey = rustls_pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], pkey)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    (server, client)
}

/// A hyper HTTP/2 server over TLS and one client connection to it.
async fn h2() -> SendRequest<Empty<Bytes>> {
    let (server_tls, client_tls) = h2_tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(PAYLOAD))))
            });
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.max_concurrent_streams(1024);
            tokio::spawn(builder.serve_connection(TokioIo::new(tls), service));
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2_batch(sender: &SendRequest<Empty<Bytes>>, concurrency: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut sender = sender.clone();
        tasks.spawn(async move {
            for _ in 0..BATCH / concurrency {
                let req = Request::get("https://bench.example/items/7")
                    .header("user-agent", "bench/1")
                    .header("accept", "*/*")
                    .header("x-request-id", "0f5c2a9e-bench")
                    .body(Empty::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), PAYLOAD.len());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

struct Peers {
    rt: Runtime,
    backbone: BackboneUpstream,
    _pop: Backbone,
    h2: SendRequest<Empty<Bytes>>,
}

impl Peers {
    fn new() -> Peers {
        let rt = runtime();
        let (backbone, pop) = rt.block_on(backbone());
        let h2 = rt.block_on(h2());
        Peers {
            rt,
            backbone,
            _pop: pop,
            h2,
        }
    }

    fn time(&self, backbone: bool, concurrency: usize, batches: u64) -> Duration {
        self.rt.block_on(async {
            let start = Instant::now();
            for _ in 0..batches {
                if backbone {
                    backbone_batch(&self.backbone, concurrency).await;
                } else {
                    h2_batch(&self.h2, concurrency).await;
                }
            }
            start.elapsed()
        })
    }
}

fn bench(c: &mut Criterion, peers: &Peers) {
    let mut group = c.benchmark_group("round_trips");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for concurrency in [64, 512] {
        for (name, backbone) in [("backbone", true), ("hyper_h2", false)] {
            group.bench_function(BenchmarkId::new(name, concurrency), |b| {
                b.iter_custom(|iters| peers.time(backbone, concurrency, iters));
            });
        }
    }
    group.finish();
}

/// Medians of interleaved rounds and their ratio, so both peers see the
/// same machine state.
fn summary(peers: &Peers) {
    eprintln!(
        "\nbackbone vs hyper HTTP/2: medians of {ROUNDS} interleaved rounds of {} requests, {} CPUs, {} build",
        BATCH as u64 * BATCHES_PER_ROUND,
        std::thread::available_parallelism().map_or(0, usize::from),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    eprintln!(
        "{:>11} {:>14} {:>14} {:>7}",
        "concurrency", "backbone rt/s", "h2 rt/s", "ratio"
    );
    for concurrency in [64, 512] {
        let (mut bb, mut h2) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bb.push(rate(peers.time(true, concurrency, BATCHES_PER_ROUND)));
            h2.push(rate(peers.time(false, concurrency, BATCHES_PER_ROUND)));
        }
        let (bb, h2) = (median(bb), median(h2));
        eprintln!("{concurrency:>11} {bb:>14.0} {h2:>14.0} {:>7.2}", bb / h2);
    }
}

/// Interleaved rounds of the summary, each of `BATCHES_PER_ROUND` batches.
const ROUNDS: usize = 15;
const BATCHES_PER_ROUND: u64 = 4;

fn rate(elapsed: Duration) -> f64 {
    (BATCH as u64 * BATCHES_PER_ROUND) as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let peers = Peers::new();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &peers);
    if std::env::args().any(|a| a == "--bench") {
        summary(&peers);
    }
    c.final_summary();
}
