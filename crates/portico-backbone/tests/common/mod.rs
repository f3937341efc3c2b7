//! In-process fixtures: a private CA, an origin backbone server with a
//! scriptable handler, a PoP gateway over the backbone. Real quinn on
//! 127.0.0.1 port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use portico_backbone::pki::Ca;
use portico_backbone::{
    Backbone, BackboneServer, BackboneUpstream, ControlHandler, Handshakes, Identity, LinkSettings,
    LinkState, OriginSpec, RequestHandler, Routed, TlsMaterial,
};
use portico_config::{DefinitionDefaults, Definitions};
use portico_gateway::{
    Body, BoxError, ConnInfo, Entry, Gateway, GatewaySettings, Protocol, ServedModes, TlsInfo,
};
use portico_proto::Role;
use tokio::sync::{Notify, oneshot, watch};

pub const REGION: &str = "test-1";

/// Definitions the test origin serves: an edge API and a regional one.
pub fn definitions(extra_route: &str) -> Arc<Definitions> {
    let text = definitions_text(extra_route);
    Arc::new(Definitions::from_toml_str(&text, "test").unwrap_or_else(|e| panic!("{e}")))
}

/// The text of [`definitions`] (more top-level sections may follow it).
pub fn definitions_text(extra_route: &str) -> String {
    format!(
        r#"
[[apis]]
name = "echo"
endpoint = "edge"
region = "{REGION}"
[[apis.routes]]
method = "ANY"
path = "/{{proxy+}}"
integration = {{ type = "mock", status = 200 }}
{extra_route}
[[apis.stages]]
name = "prod"

[[apis]]
name = "inside"
endpoint = "regional"
region = "{REGION}"
[[apis.routes]]
method = "GET"
path = "/"
integration = {{ type = "mock", status = 200 }}
[[apis.stages]]
name = "prod"
"#
    )
}

/// A CA and the TLS material of nodes it signed.
pub struct Pki {
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            ca: Ca::generate().unwrap(),
        }
    }

    /// `node`'s material, with the backbone role its id begins with
    /// (`pop-…`, `origin-…`; none otherwise).
    pub fn material(&self, node: &str) -> TlsMaterial {
        let role = if node.starts_with("pop-") {
            Some(Role::Pop)
        } else if node.starts_with("origin-") {
            Some(Role::Origin)
        } else {
            None
        };
        self.material_as(node, role)
    }

    pub fn material_as(&self, node: &str, role: Option<Role>) -> TlsMaterial {
        let cert = self.ca.issue(node, role).unwrap();
        TlsMaterial::from_pem(&self.ca.cert_pem(), &cert.cert_pem, &cert.key_pem).unwrap()
    }
}

/// QUIC configs built by hand from `tls`, without the check that a node's
/// own certificate names its role: what a node that skipped it would
/// present, so that only its peer's check can refuse it.
pub mod unchecked {
    use std::sync::Arc;

    use portico_backbone::{ALPN, TlsMaterial};
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(tls: &TlsMaterial) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &tls.ca {
            roots.add(cert.clone()).unwrap();
        }
        Arc::new(roots)
    }

    pub fn client(tls: &TlsMaterial) -> quinn::ClientConfig {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(tls))
            .with_client_auth_cert(tls.chain.clone(), tls.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![ALPN.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).unwrap()))
    }

    pub fn server(tls: &TlsMaterial) -> quinn::ServerConfig {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(tls), provider())
                .build()
                .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(tls.chain.clone(), tls.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![ALPN.to_vec()];
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(config).unwrap()))
    }
}

/// Fast timers for tests; idle detection stays lenient for loaded machines.
pub fn settings() -> LinkSettings {
    LinkSettings {
        keep_alive: Duration::from_millis(250),
        idle_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(250),
        drain_timeout: Duration::from_millis(500),
        ..LinkSettings::default()
    }
}

/// What the scripted handler observed.
#[derive(Default)]
pub struct Observed {
    /// Handler calls started.
    pub started: AtomicUsize,
    /// Handler futures dropped before completing (cancelled requests).
    pub cancelled: AtomicUsize,
    pub cancelled_notify: Notify,
    /// Bytes produced by `/infinite` bodies.
    pub produced: AtomicU64,
    /// Requests currently inside `/gate`, and the gate opening.
    pub in_gate: AtomicUsize,
    pub gate_open: Notify,
    pub gate_size: AtomicUsize,
}

/// The origin's scripted handler, by path inside the stage:
/// `/echo` streams the request body back; `/info` (and `/keyed/info`)
/// reports what it saw;
/// `/hang` never answers; `/infinite` streams forever; `/fail-mid` breaks
/// after one chunk; `/gate` waits until `gate_size` requests are inside.
pub struct Scripted {
    pub seen: Arc<Observed>,
}

struct CancelGuard(Arc<Observed>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
            self.0.cancelled_notify.notify_waiters();
        }
    }
}

fn text(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(portico_gateway::body::full(body.into()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp
}

impl RequestHandler for Scripted {
    async fn handle(
        &self,
        req: Request<Body>,
        conn: Arc<ConnInfo>,
        routed: Routed,
    ) -> Response<Body> {
        let seen = Arc::clone(&self.seen);
        seen.started.fetch_add(1, Ordering::SeqCst);
        let mut guard = CancelGuard(Arc::clone(&seen), false);
        let resp = match req.uri().path() {
            "/echo" => Response::new(req.into_body()),
            "/info" | "/keyed/info" => info(&req, &conn, &routed),
            "/hang" => std::future::pending().await,
            "/infinite" => infinite(seen),
            "/fail-mid" => fail_mid(),
            "/gate" => gate(&seen).await,
            "/trailers" => with_trailers(),
            _ => text(404, "no such test path"),
        };
        guard.1 = true;
        resp
    }
}

fn info(req: &Request<Body>, conn: &ConnInfo, routed: &Routed) -> Response<Body> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let json = format!(
        "{{\"client\":\"{}\",\"protocol\":\"{}\",\"request_id\":\"{}\",\"host\":\"{}\",\"api\":\"{}\",\"stage\":\"{}\",\"route\":\"{}\",\"pop\":\"{}\",\"tls\":{},\"query\":\"{}\",\"empty_body\":{},\"principal\":\"{}\"}}",
        conn.client_addr,
        conn.protocol.as_str(),
        header("x-request-id"),
        header("host"),
        routed.api,
        routed.stage,
        routed.route_key,
        routed.pop_id,
        conn.tls.is_some(),
        req.uri().query().unwrap_or(""),
        http_body::Body::is_end_stream(req.body()),
        routed
            .principal
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    );
    text(200, json)
}

fn infinite(seen: Arc<Observed>) -> Response<Body> {
    let chunks = futures_util::stream::unfold(seen, |seen| async move {
        seen.produced.fetch_add(64 * 1024, Ordering::SeqCst);
        let frame = http_body::Frame::data(Bytes::from(vec![b'x'; 64 * 1024]));
        Some((Ok::<_, BoxError>(frame), seen))
    });
    Response::new(Body::new(http_body_util::StreamBody::new(chunks)))
}

fn fail_mid() -> Response<Body> {
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"first part"))),
        Err("backend connection reset".into()),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    Response::new(Body::new(body))
}

fn with_trailers() -> Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"body"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    Response::new(Body::new(http_body_util::StreamBody::new(
        futures_util::stream::iter(frames),
    )))
}

async fn gate(seen: &Observed) -> Response<Body> {
    let open = seen.gate_open.notified();
    tokio::pin!(open);
    open.as_mut().enable();
    let inside = seen.in_gate.fetch_add(1, Ordering::SeqCst) + 1;
    if inside >= seen.gate_size.load(Ordering::SeqCst) {
        seen.gate_open.notify_waiters();
    } else {
        open.await;
    }
    text(200, format!("{inside}"))
}

/// A running origin backbone server.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Observed>,
    pub defs: watch::Sender<Arc<Definitions>>,
    /// Its links handshaking now.
    pub handshakes: Handshakes,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    pub fn start(tls: &TlsMaterial, bind: SocketAddr, defs: Arc<Definitions>) -> Origin {
        Self::start_with(tls, bind, defs, settings())
    }

    pub fn start_with(
        tls: &TlsMaterial,
        bind: SocketAddr,
        defs: Arc<Definitions>,
        link: LinkSettings,
    ) -> Origin {
        Self::start_full(tls, bind, defs, link, None, Self::identity())
    }

    /// An origin that calls itself `identity` in its handshake, whatever
    /// its certificate says.
    pub fn start_as(tls: &TlsMaterial, identity: Identity) -> Origin {
        let defs = definitions("");
        Self::start_full(tls, localhost0(), defs, settings(), None, identity)
    }

    fn identity() -> Identity {
        Identity {
            node_id: "origin-a".into(),
            region: REGION.into(),
        }
    }

    /// An origin whose control frames go to `control`.
    pub fn start_control(tls: &TlsMaterial, control: Arc<dyn ControlHandler>) -> Origin {
        Self::start_control_with(tls, control, settings())
    }

    /// [`Origin::start_control`] with its own link settings.
    pub fn start_control_with(
        tls: &TlsMaterial,
        control: Arc<dyn ControlHandler>,
        link: LinkSettings,
    ) -> Origin {
        Self::start_full(
            tls,
            localhost0(),
            definitions(""),
            link,
            Some(control),
            Self::identity(),
        )
    }

    fn start_full(
        tls: &TlsMaterial,
        bind: SocketAddr,
        defs: Arc<Definitions>,
        link: LinkSettings,
        control: Option<Arc<dyn ControlHandler>>,
        identity: Identity,
    ) -> Origin {
        let mut server = BackboneServer::bind(bind, tls, identity, link).unwrap();
        if let Some(control) = control {
            server = server.with_control(control);
        }
        let addr = server.local_addr().unwrap();
        let handshakes = server.handshakes();
        let seen = Arc::new(Observed::default());
        let (defs_tx, defs_rx) = watch::channel(defs);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handler = Arc::new(Scripted {
            seen: Arc::clone(&seen),
        });
        let task = tokio::spawn(server.run(handler, defs_rx, async move {
            let _ = stop_rx.await;
        }));
        Origin {
            addr,
            seen,
            defs: defs_tx,
            handshakes,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Graceful stop: GoAway, drain, close; returns once the socket is free.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("origin stopped")
                .unwrap();
        }
    }
}

/// A control handler that does nothing (the default behaviour).
pub struct NoControl;

impl ControlHandler for NoControl {}

/// A PoP: the gateway pipeline with the backbone as its upstream.
pub struct Pop {
    pub backbone: Backbone,
    pub gateway: Arc<Gateway<BackboneUpstream>>,
}

pub fn origin_spec(addr: SocketAddr) -> OriginSpec {
    OriginSpec {
        region: REGION.into(),
        address: addr,
        server_name: "origin-a".into(),
    }
}

impl Pop {
    pub fn start(tls: &TlsMaterial, origins: Vec<OriginSpec>) -> Pop {
        Self::start_with(tls, origins, Arc::new(Definitions::empty()))
    }

    /// A PoP whose gateway starts with `defs` (before any snapshot).
    pub fn start_with(tls: &TlsMaterial, origins: Vec<OriginSpec>, defs: Arc<Definitions>) -> Pop {
        Self::start_full(tls, origins, defs, Arc::new(NoControl), settings())
    }

    /// A PoP with its own link settings.
    pub fn start_link(tls: &TlsMaterial, origins: Vec<OriginSpec>, link: LinkSettings) -> Pop {
        let defs = Arc::new(Definitions::empty());
        Self::start_full(tls, origins, defs, Arc::new(NoControl), link)
    }

    /// A PoP whose control frames go to `control`.
    pub fn start_control(
        tls: &TlsMaterial,
        origins: Vec<OriginSpec>,
        control: Arc<dyn ControlHandler>,
    ) -> Pop {
        let defs = Arc::new(Definitions::empty());
        Self::start_full(tls, origins, defs, control, settings())
    }

    fn start_full(
        tls: &TlsMaterial,
        origins: Vec<OriginSpec>,
        defs: Arc<Definitions>,
        control: Arc<dyn ControlHandler>,
        link: LinkSettings,
    ) -> Pop {
        let identity = Identity {
            node_id: "pop-a".into(),
            region: String::new(),
        };
        let backbone = Backbone::start_with_control(
            identity,
            origins,
            tls,
            link,
            DefinitionDefaults::default(),
            control,
        )
        .unwrap();
        let settings = GatewaySettings {
            node_id: Arc::from("pop-a"),
            max_body_bytes: 1 << 30,
            max_header_bytes: 16 * 1024,
            upstream_read_timeout: std::time::Duration::from_secs(60),
            upload_timeout: std::time::Duration::from_secs(60),
        };
        let gateway = Arc::new(Gateway::new(settings, defs, backbone.upstream()));
        let mut config = backbone.config();
        let g = Arc::clone(&gateway);
        tokio::spawn(async move {
            while config.changed().await.is_ok() {
                let defs = Arc::clone(&config.borrow_and_update().definitions);
                g.swap(defs);
            }
        });
        Pop { backbone, gateway }
    }

    /// Waits until the gateway serves API `name`.
    pub async fn wait_for_api(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.gateway.definitions().api(name).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "API {name} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Serves `req` as if it came from a client of the PoP's public listener.
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let conn = Arc::new(ConnInfo {
            client_addr: "192.0.2.7:40000".parse().unwrap(),
            local_addr: "127.0.0.1:443".parse().unwrap(),
            tls: Some(TlsInfo {
                sni: Some("echo.example".into()),
                alpn: Some("h2".into()),
                version: Some("TLSv1.3".into()),
            }),
            protocol: Protocol::Http2,
            default_api: Some(Arc::from("echo")),
        });
        self.gateway
            .handle(req, &conn, Entry::Public(ServedModes::EDGE))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Bytes) {
        let req = Request::get(path)
            .body(portico_gateway::body::empty())
            .unwrap();
        collect(self.handle(req).await).await
    }
}

pub async fn collect(resp: Response<Body>) -> (u16, Bytes) {
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body complete")
        .to_bytes();
    (status, body)
}

/// Polls `check` every 10 ms until it holds; panics after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn localhost0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits until link 0 reports `Down` and returns its reason.
pub async fn down_reason(pop: &Pop) -> String {
    let mut state = pop.backbone.watch_link(0).unwrap();
    let down = tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(|s| matches!(s, LinkState::Down(_))),
    )
    .await
    .expect("link went down")
    .unwrap()
    .clone();
    match down {
        LinkState::Down(reason) => reason,
        other => panic!("{}", other.as_str()),
    }
}
