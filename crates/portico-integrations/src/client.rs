//! The pooled backend client: keep-alive HTTP/1.1 and HTTP/2 (ALPN for https,
//! prior knowledge for cleartext when asked), verified TLS, hickory DNS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_gateway::Body;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::IntegrationError;
use crate::dns::Resolver;

/// Settings of the backend connection pool.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// An extra CA (PEM) trusted for https backends.
    pub ca_file: Option<PathBuf>,
    /// Trust the Mozilla root set (webpki-roots) for https backends.
    pub use_webpki_roots: bool,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub connect_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge to cleartext backends (and only h2 over TLS).
    pub http2_only: bool,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            ca_file: None,
            use_webpki_roots: true,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            connect_timeout: Duration::from_secs(5),
            http2_only: false,
        }
    }
}

type Connector = HttpsConnector<HttpConnector<Resolver>>;

/// A cloneable handle on one shared connection pool.
#[derive(Clone, Debug)]
pub struct BackendClient {
    client: Client<Connector, Body>,
}

impl BackendClient {
    pub fn new(settings: &ClientSettings, resolver: Resolver) -> Result<Self, IntegrationError> {
        let mut http = HttpConnector::new_with_resolver(resolver);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = tls_config(settings)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if settings.http2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_all_versions().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .http2_only(settings.http2_only)
            .build(connector);
        Ok(Self { client })
    }

    /// Sends a request; the response body streams from the backend.
    pub async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}

fn tls_config(settings: &ClientSettings) -> Result<rustls::ClientConfig, IntegrationError> {
    let mut roots = rustls::RootCertStore::empty();
    if settings.use_webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = &settings.ca_file {
        let pem = std::fs::read(path).map_err(|e| IntegrationError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| IntegrationError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| IntegrationError::Ca {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IntegrationError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
