//! `portico backend`: the built-in demo backend.

use std::net::SocketAddr;
use std::path::PathBuf;

use portico_demo::TlsFiles;
use tokio::net::TcpListener;

use crate::AppError;

pub async fn run(
    listen: SocketAddr,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
) -> Result<(), AppError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr()?;
    // Scripts and tests read this line to learn the port when they passed port 0.
    println!("listening on {local}");
    tracing::info!(%local, tls = tls_cert.is_some(), "demo backend listening");
    match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => {
            portico_demo::serve_tls(
                listener,
                &TlsFiles { cert, key },
                crate::signals::shutdown(),
            )
            .await?
        }
        _ => portico_demo::serve(listener, crate::signals::shutdown()).await?,
    }
    Ok(())
}
