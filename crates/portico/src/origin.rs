//! `portico origin`: an origin gateway serving regional APIs on its own listeners.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Request, Response};
use portico_config::NodeConfig;
use portico_gateway::{Body, ConnInfo, Entry, Gateway, ServedModes};
use portico_integrations::{BackendClient, Integrations, Resolver};
use portico_net::{CertFiles, Handler, TcpServer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{AppError, settings};

/// The origin's public-listener handler: regional APIs only.
struct PublicHandler {
    gateway: Arc<Gateway<Integrations>>,
}

impl Handler for PublicHandler {
    async fn call(&self, req: Request<Body>, conn: Arc<ConnInfo>) -> Response<Body> {
        self.gateway
            .handle(req, &conn, Entry::Public(ServedModes::REGIONAL))
            .await
    }
}

/// Runs an origin until `shutdown` completes.
pub async fn run(path: &Path, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
    let config = portico_config::load_node_file(path)?;
    let resolver = Resolver::new(&settings::dns(&config))?;
    let client = BackendClient::new(&settings::client(&config), resolver)?;
    let gateway = Arc::new(Gateway::new(
        settings::gateway(&config),
        Arc::clone(&config.definitions),
        Integrations::new(client),
    ));
    let servers = bind_listeners(&config, &gateway).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for server in servers {
        let mut stop = stop_rx.clone();
        tasks.spawn(server.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    tasks.spawn(reload_on_sighup(
        path.to_owned(),
        Arc::clone(&gateway),
        stop_rx.clone(),
    ));
    tracing::info!(node = %config.node.id, apis = config.definitions.apis.len(), "origin ready");
    println!("ready");
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Binds every listener before serving any, so a bad address fails the start.
async fn bind_listeners(
    config: &NodeConfig,
    gateway: &Arc<Gateway<Integrations>>,
) -> Result<Vec<TcpServer<PublicHandler>>, AppError> {
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
        servers.push(TcpServer {
            listener,
            tls,
            default_api: l.default_api.as_deref().map(Arc::from),
            limits: settings::http_limits(config),
            handler: Arc::new(PublicHandler {
                gateway: Arc::clone(gateway),
            }),
        });
    }
    Ok(servers)
}

/// TLS for a public listener: its own certificates plus custom domains' (SNI
/// picks), or a self-signed certificate for the node when none is configured.
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

/// Reloads API definitions on SIGHUP; a bad file is logged and the old snapshot keeps serving.
async fn reload_on_sighup(
    path: PathBuf,
    gateway: Arc<Gateway<Integrations>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; configuration reload is unavailable");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = hup.recv() => {}
        }
        match portico_config::load_node_file(&path) {
            Ok(config) => {
                let version = config.definitions.version;
                gateway.swap(Arc::clone(&config.definitions));
                tracing::info!(
                    version = format_args!("{version:016x}"),
                    "configuration reloaded"
                );
            }
            Err(errors) => {
                for err in errors.iter() {
                    tracing::error!(%err, "configuration reload rejected");
                }
                tracing::error!(
                    errors = errors.len(),
                    "configuration reload rejected; the previous configuration keeps serving"
                );
            }
        }
    }
}
