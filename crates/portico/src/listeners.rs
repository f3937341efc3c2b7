//! Public listeners, shared by origins and PoPs: the same binding, the same
//! TLS handling, the same machine-readable `listening` lines.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use portico_config::{ListenerConfig, NodeConfig};
use portico_gateway::{Body, ConnInfo, Entry, Gateway, GatewayError, ServedModes, Upstream};
use portico_net::{CertFiles, H3Listener, Handler, TcpServer};
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
) -> Result<Vec<Server<H>>, AppError> {
    let mut servers = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| AppError::Bind {
                addr: l.address,
                source,
            })?;
        let local = listener.local_addr()?;
        let tls = if l.tls {
            Some(Arc::new(tls_config(config, &l.certificates)?))
        } else {
            None
        };
        tracing::info!(address = %local, tls = l.tls, default_api = ?l.default_api, "listening");
        // Machine-readable for tests and `portico up` (ports may have been 0).
        println!("listening {} {local}", if l.tls { "https" } else { "http" });
        let h3 = match (&tls, l.http3) {
            (Some(tls), true) => Some(bind_h3(config, l, local, tls, handler)?),
            _ => None,
        };
        servers.push(Server::Tcp(TcpServer {
            listener,
            tls,
            default_api: l.default_api.as_deref().map(Arc::from),
            limits: settings::http_limits(config),
            handler: Arc::clone(handler),
            alt_svc: h3
                .as_ref()
                .map(|(_, port)| portico_net::quic::alt_svc(*port)),
        }));
        servers.extend(h3.map(|(server, _)| Server::H3(server)));
    }
    Ok(servers)
}

/// Binds the UDP side of an HTTP/3 listener (same certificates, same
/// handler) and prints `listening h3 ADDR`. Returns the server and its port,
/// which the TCP side advertises in `Alt-Svc`.
fn bind_h3<H: Handler>(
    config: &NodeConfig,
    l: &ListenerConfig,
    tcp: SocketAddr,
    tls: &rustls::ServerConfig,
    handler: &Arc<H>,
) -> Result<(H3Listener<H>, u16), AppError> {
    let addr = SocketAddr::new(tcp.ip(), l.quic.port.unwrap_or(tcp.port()));
    let socket = portico_net::QuicSocket::bind(addr, tls.clone(), &settings::quic(&l.quic))?;
    let local = socket.local_addr()?;
    tracing::info!(address = %local, congestion = l.quic.congestion.as_str(), "listening (HTTP/3)");
    println!("listening h3 {local}");
    let server = H3Listener {
        socket,
        default_api: l.default_api.as_deref().map(Arc::from),
        limits: settings::http_limits(config),
        handler: Arc::clone(handler),
    };
    Ok((server, local.port()))
}

/// TLS for a public listener: its own certificates plus custom domains' (SNI
/// picks), or a self-signed certificate for the node when none is configured.
///
/// A PoP starts with no definitions, so it serves its listeners' own
/// certificates only (custom-domain certificates are origin paths).
fn tls_config(
    config: &NodeConfig,
    certs: &[portico_config::CertPaths],
) -> Result<rustls::ServerConfig, AppError> {
    let mut files: Vec<CertFiles> = certs
        .iter()
        .map(|c| CertFiles {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    files.extend(
        config
            .definitions
            .domains
            .iter()
            .filter_map(|d| d.certificate.as_ref())
            .map(|c| CertFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            }),
    );
    let names = vec![
        "localhost".to_owned(),
        config.node.id.clone(),
        "127.0.0.1".to_owned(),
    ];
    Ok(portico_net::server_config(&files, &names)?)
}
