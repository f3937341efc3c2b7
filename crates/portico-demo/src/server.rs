//! Accept loops for the demo backend (plain TCP and TLS).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::handler::handle;

/// Errors starting the demo backend.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: no PEM {what} found")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("accept: {0}")]
    Accept(#[from] io::Error),
}

/// PEM files for the demo backend's optional TLS listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Serves plain HTTP/1.1 and h2c on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    serve_with(listener, None, shutdown).await
}

/// Serves HTTPS (ALPN h2 and http/1.1) on `listener` until `shutdown` completes.
pub async fn serve_tls(
    listener: TcpListener,
    files: &TlsFiles,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(files)?));
    serve_with(listener, Some(acceptor), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Per-connection accept errors (e.g. EMFILE, aborted
                // handshakes) must not stop the server, nor spin it.
                Err(err) => {
                    tracing::warn!(%err, "demo backend accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let service =
                service_fn(
                    |req| async move { Ok::<_, std::convert::Infallible>(handle(req).await) },
                );
            let result = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Err(err) => Err(err.into()),
                },
            };
            if let Err(err) = result {
                tracing::debug!(%err, "demo backend connection ended with an error");
            }
        });
    }
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, DemoError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| DemoError::Read {
            path: path.clone(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(DemoError::NoPem {
            path: files.cert.clone(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| DemoError::NoPem {
        path: files.key.clone(),
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
