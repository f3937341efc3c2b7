//! Public listeners, shared by origins and PoPs: the same binding, the same
//! TLS handling, the same machine-readable `listening` lines.

use std::sync::Arc;

use portico_config::NodeConfig;
use portico_net::{CertFiles, Handler, TcpServer};
use tokio::net::TcpListener;

use crate::{AppError, settings};

/// Binds every listener of `config` before serving any, so a bad address
/// fails the start. Each bound address is printed as
/// `listening https|http ADDR` (ports may have been 0).
pub async fn bind<H: Handler>(
    config: &NodeConfig,
    handler: &Arc<H>,
) -> Result<Vec<TcpServer<H>>, AppError> {
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
            handler: Arc::clone(handler),
        });
    }
    Ok(servers)
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
