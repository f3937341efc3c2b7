//! Public listeners, shared by origins and PoPs: the same binding, the same
//! TLS handling, the same machine-readable `listening` lines.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use portico_config::{Definitions, ListenerConfig, NodeConfig};
use portico_gateway::{Body, ConnInfo, Entry, Gateway, GatewayError, ServedModes, Upstream};
use portico_net::{CertFiles, H3Listener, Handler, SniResolver, TcpServer};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;

use crate::{AppError, settings};

/// The public listeners' handler: the node's gateway, serving the APIs of
/// `modes` (an origin: regional; a PoP: edge).
pub struct Public<U> {
    pub gateway: Arc<Gateway<U>>,
    pub modes: ServedModes,
}

impl<U: Upstream> Handler for Public<U> {
    async fn call(&self, req: Request<Body>, conn: Arc<ConnInfo>) -> Response<Body> {
        self.gateway
            .handle(req, &conn, Entry::Public(self.modes))
            .await
    }

    fn refuse(&self, req: &Request<()>, conn: &Arc<ConnInfo>, err: GatewayError) -> Response<Body> {
        self.gateway.refuse(req, conn, err)
    }

    fn connection_refused(&self) {
        self.gateway.limits().count_connection_refused();
    }
}

/// A bound public listener: TCP (HTTP/1.1 and HTTP/2) or UDP (HTTP/3). Both
/// serve the same handler.
pub enum Server<H> {
    Tcp(TcpServer<H>),
    H3(H3Listener<H>),
}

impl<H: Handler> Server<H> {
    /// Serves until `shutdown`, then drains, spread over `workers` threads
    /// (an HTTP/3 listener keeps one UDP socket and quinn endpoint, each
    /// connection on one of the threads); with 0 it serves on the caller's
    /// runtime.
    pub async fn run_on_workers(self, workers: usize, shutdown: impl Future<Output = ()>) {
        match self {
            Server::Tcp(server) => server.run_on_workers(workers, shutdown).await,
            Server::H3(server) => server.run_on_workers(workers, shutdown).await,
        }
    }
}

/// Binds every listener of `config` before serving any, so a bad address
/// fails the start. Each bound address is printed as
/// `listening https|http|h3 ADDR` (ports may have been 0); an HTTP/3
/// listener's UDP port is the TCP one unless `[listeners.quic] port` says
/// otherwise.
pub async fn bind<H: Handler>(
    config: &NodeConfig,
    handler: &Arc<H>,
) -> Result<(Vec<Server<H>>, Certificates), AppError> {
    let mut servers = Vec::new();
    let mut certificates = Certificates::default();
    for l in &config.listeners {
        let tls = if l.tls {
            let (tls, certs) = tls_config(config, &l.certificates)?;
            certificates.0.push(certs);
            Some(Arc::new(tls))
        } else {
            None
        };
        let (listener, h3) = bind_pair(config, l, tls.as_deref(), handler).await?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, tls = l.tls, default_api = ?l.default_api, "listening");
        // Machine-readable for tests and `portico up` (ports may have been 0).
        println!("listening {} {local}", if l.tls { "https" } else { "http" });
        if let Some((_, udp)) = &h3 {
            tracing::info!(address = %udp, congestion = l.quic.congestion.as_str(), "listening (HTTP/3)");
            println!("listening h3 {udp}");
        }
        if l.proxy_protocol.as_ref().is_some_and(Vec::is_empty) {
            tracing::warn!(
                address = %local,
                "proxy_protocol without proxy_protocol_from: any host that reaches this port \
                 may name any client address (list the load balancers' addresses)"
            );
        }
        servers.push(Server::Tcp(TcpServer {
            listener,
            tls,
            default_api: l.default_api.as_deref().map(Arc::from),
            limits: settings::http_limits(config),
            handler: Arc::clone(handler),
            alt_svc: h3
                .as_ref()
                .map(|(_, udp)| portico_net::quic::alt_svc(udp.port())),
            proxy: l
                .proxy_protocol
                .as_ref()
                .map(|from| Arc::new(portico_net::proxy::ProxyProtocol { from: from.clone() })),
        }));
        servers.extend(h3.map(|(server, _)| Server::H3(server)));
    }
    Ok((servers, certificates))
}

/// The certificates of a node's TLS listeners (HTTP/3 included), which a
/// reload reads again: renewed files and custom domains added or removed
/// take effect at the next handshake, as nginx's do on SIGHUP.
#[derive(Default)]
pub struct Certificates(Vec<ListenerCerts>);

/// One TLS listener's own certificate files and what picks among its set.
struct ListenerCerts {
    own: Vec<CertFiles>,
    resolver: Arc<SniResolver>,
    /// The certificate made at start, served while no file is configured.
    self_signed: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads every listener's own files and the custom domains' of
    /// `definitions` again; installs them only if all load (else nothing
    /// changes). A listener left with no file serves the certificate it made
    /// at start (or a new one for `node_id`).
    pub fn reload(&self, definitions: &Definitions, node_id: &str) -> Result<usize, AppError> {
        let mut loaded = Vec::with_capacity(self.0.len());
        for l in &self.0 {
            let files = with_domains(l.own.clone(), definitions);
            let keys = match (&l.self_signed, files.is_empty()) {
                (Some(key), true) => vec![Arc::clone(key)],
                (None, true) => vec![Arc::new(self_signed(node_id)?)],
                (_, false) => portico_net::load_keys(&files)?,
            };
            loaded.push((&l.resolver, keys));
        }
        let count = loaded.iter().map(|(_, keys)| keys.len()).sum();
        for (resolver, keys) in loaded {
            resolver.replace(keys)?;
        }
        Ok(count)
    }
}

/// How many ports a listener on port 0 tries for its HTTP/3 side.
const PORT_ATTEMPTS: usize = 16;

/// A listener's TCP socket and, with HTTP/3, its UDP socket on the same
/// port number. On port 0 the kernel picks the TCP port, and the same
/// number may already be taken over UDP: then another port is picked, up to
/// [`PORT_ATTEMPTS`] times. A fixed port that is taken fails at once.
async fn bind_pair<H: Handler>(
    config: &NodeConfig,
    l: &ListenerConfig,
    tls: Option<&rustls::ServerConfig>,
    handler: &Arc<H>,
) -> Result<(TcpListener, Option<(H3Listener<H>, SocketAddr)>), AppError> {
    let attempts = if l.address.port() == 0 && l.quic.port.is_none() {
        PORT_ATTEMPTS
    } else {
        1
    };
    twin(
        attempts,
        l.address,
        || TcpListener::bind(l.address),
        |tcp| match tls.filter(|_| l.http3) {
            Some(tls) => bind_h3(config, l, tcp, tls, handler).map(Some),
            None => Ok(None),
        },
    )
    .await
}

/// A TCP listener from `bind_tcp` and what `bind_udp` makes for its address,
/// trying a new TCP listener (up to `attempts` in all) while `bind_udp`
/// finds its port taken.
async fn twin<U, Fut>(
    attempts: usize,
    addr: SocketAddr,
    mut bind_tcp: impl FnMut() -> Fut,
    mut bind_udp: impl FnMut(SocketAddr) -> Result<U, portico_net::NetError>,
) -> Result<(TcpListener, U), AppError>
where
    Fut: std::future::Future<Output = std::io::Result<TcpListener>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listener = bind_tcp()
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        match bind_udp(listener.local_addr()?) {
            Ok(udp) => return Ok((listener, udp)),
            Err(portico_net::NetError::Bind { source, .. })
                if attempt < attempts && source.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Binds the UDP side of an HTTP/3 listener (same certificates, same
/// handler). Returns the server and its address, whose port the TCP side
/// advertises in `Alt-Svc`.
fn bind_h3<H: Handler>(
    config: &NodeConfig,
    l: &ListenerConfig,
    tcp: SocketAddr,
    tls: &rustls::ServerConfig,
    handler: &Arc<H>,
) -> Result<(H3Listener<H>, SocketAddr), portico_net::NetError> {
    let addr = SocketAddr::new(tcp.ip(), l.quic.port.unwrap_or(tcp.port()));
    let socket = portico_net::QuicSocket::bind(addr, tls.clone(), &settings::quic(&l.quic))?;
    let local = socket
        .local_addr()
        .map_err(|source| portico_net::NetError::Bind { addr, source })?;
    let server = H3Listener {
        socket,
        default_api: l.default_api.as_deref().map(Arc::from),
        limits: settings::http_limits(config),
        handler: Arc::clone(handler),
    };
    Ok((server, local))
}

/// TLS for a public listener: its own certificates plus custom domains' (SNI
/// picks), or a self-signed certificate for the node when none is configured.
///
/// A PoP starts with no definitions, so it serves its listeners' own
/// certificates only (custom-domain certificates are origin paths).
fn tls_config(
    config: &NodeConfig,
    certs: &[portico_config::CertPaths],
) -> Result<(rustls::ServerConfig, ListenerCerts), AppError> {
    let own: Vec<CertFiles> = certs
        .iter()
        .map(|c| CertFiles {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    let files = with_domains(own.clone(), &config.definitions);
    let (keys, self_signed) = if files.is_empty() {
        tracing::warn!(
            "no certificate configured: using a self-signed certificate generated at start"
        );
        let key = Arc::new(self_signed(&config.node.id)?);
        (vec![Arc::clone(&key)], Some(key))
    } else {
        (portico_net::load_keys(&files)?, None)
    };
    let resolver = Arc::new(SniResolver::new(keys)?);
    let tls = portico_net::server_config_for(Arc::clone(&resolver))?;
    let certs = ListenerCerts {
        own,
        resolver,
        self_signed,
    };
    Ok((tls, certs))
}

/// A certificate for the node's own names, for a listener given none.
fn self_signed(node_id: &str) -> Result<CertifiedKey, portico_net::NetError> {
    let names = [
        "localhost".to_owned(),
        node_id.to_owned(),
        "127.0.0.1".to_owned(),
    ];
    portico_net::tls::self_signed(&names)
}

/// A listener's own certificate files, then those of `definitions`'
/// custom domains.
fn with_domains(mut files: Vec<CertFiles>, definitions: &Definitions) -> Vec<CertFiles> {
    files.extend(
        definitions
            .domains
            .iter()
            .filter_map(|d| d.certificate.as_ref())
            .map(|c| CertFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            }),
    );
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(addr: SocketAddr) -> Result<std::net::UdpSocket, portico_net::NetError> {
        std::net::UdpSocket::bind(addr)
            .map_err(|source| portico_net::NetError::Bind { addr, source })
    }

    /// The first TCP port offered is one whose UDP twin is taken.
    async fn twin_after_a_taken_port(
        attempts: usize,
    ) -> (Result<(TcpListener, std::net::UdpSocket), AppError>, u16) {
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = holder.local_addr().unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut offers = [taken, any].into_iter().chain(std::iter::repeat(any));
        let bound = twin(
            attempts,
            any,
            || TcpListener::bind(offers.next().unwrap_or(any)),
            udp,
        )
        .await;
        (bound, taken.port())
    }

    #[tokio::test]
    async fn a_port_whose_udp_twin_is_taken_is_given_up_for_another() {
        let (bound, taken) = twin_after_a_taken_port(PORT_ATTEMPTS).await;
        let (tcp, udp) = bound.unwrap();
        let port = tcp.local_addr().unwrap().port();
        assert_ne!(port, taken);
        assert_eq!(udp.local_addr().unwrap().port(), port);
    }

    /// Answers every request with an empty 200.
    struct Ok200;

    impl Upstream for Ok200 {
        async fn forward(
            &self,
            _: &portico_gateway::RequestCtx,
            _: Request<Body>,
        ) -> Result<Response<Body>, GatewayError> {
            Ok(Response::new(portico_gateway::body::empty()))
        }
    }

    /// Whether the server closes `conn` (EOF or reset) within 20 s.
    async fn closed(conn: &mut tokio::net::TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(20), conn.read(&mut buf));
        matches!(read.await, Ok(Ok(0) | Err(_)))
    }

    /// `[limits] max_connections_per_client` reaches the public listeners,
    /// and what they refuse for it is counted in the node's limits (the
    /// admin API's `GET /limits/stats`).
    #[tokio::test]
    async fn connections_past_the_client_cap_are_refused_and_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let text = "[node]\nid = \"o\"\nregion = \"r\"\n\
                    [[listeners]]\naddress = \"127.0.0.1:0\"\ntls = false\n\
                    [limits]\nmax_connections_per_client = 1\n";
        let config = portico_config::parse_node(text, "t.toml", std::path::Path::new(".")).unwrap();
        let gateway = Gateway::new(
            settings::gateway(&config),
            Arc::clone(&config.definitions),
            Ok200,
        );
        let handler = Arc::new(Public {
            gateway: Arc::new(gateway),
            modes: ServedModes::REGIONAL,
        });
        let (servers, _) = bind(&config, &handler).await.unwrap();
        let Some(Server::Tcp(server)) = servers.into_iter().next() else {
            panic!("no TCP listener");
        };
        let addr = server.listener.local_addr().unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_on_workers(0, async move {
            let _ = stopped.await;
        }));
        // The first is served (and so counted before the second comes).
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first
            .write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        first.read_exact(&mut head).await.unwrap();
        assert_eq!(&head[..9], b"HTTP/1.1 ");
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut second).await, "a second connection was kept");
        assert_eq!(handler.gateway.limits().connections_refused(), 1);
        drop(first);
    }

    #[tokio::test]
    async fn a_fixed_port_is_tried_once() {
        let (bound, taken) = twin_after_a_taken_port(1).await;
        let err = bound.expect_err("the taken twin fails the bind");
        let text = err.to_string();
        assert!(
            text.contains(&format!("binding 127.0.0.1:{taken}")),
            "{text}"
        );
    }
}
