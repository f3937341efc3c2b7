//! Backbone wiring shared by `portico origin` and `portico pop`: TLS
//! material and link settings from the node file, and the origin's side of
//! the link (requests arriving from PoPs enter its gateway pre-routed).

use std::sync::Arc;

use http::{Request, Response};
use portico_backbone::{
    BackboneError, BackboneServer, Identity, LinkSettings, RequestHandler, Routed, TlsMaterial,
};
use portico_config::{BackboneConfig, Definitions, NodeConfig};
use portico_gateway::{Body, ConnInfo, Entry, Gateway, ServedModes, Upstream};
use tokio::sync::watch;

use crate::AppError;

/// The node's backbone certificates: `[backbone] ca`, `cert` and `key`.
pub fn material(backbone: &BackboneConfig) -> Result<TlsMaterial, AppError> {
    match (&backbone.ca, &backbone.cert, &backbone.key) {
        (Some(ca), Some(cert), Some(key)) => Ok(TlsMaterial::from_files(ca, cert, key)?),
        _ => Err(BackboneError::Tls(
            "[backbone] needs `ca`, `cert` and `key` (`portico certs` makes them)".into(),
        )
        .into()),
    }
}

/// Link tuning from the node file; the rest keeps the crate's defaults.
pub fn link_settings(backbone: &BackboneConfig, limits: &portico_config::Limits) -> LinkSettings {
    let d = LinkSettings::default();
    // What a head within the header limit can take, with room for the
    // request's other fields and each header's framing.
    let head = limits
        .max_header_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    LinkSettings {
        max_head_bytes: u32::try_from(head).unwrap_or(u32::MAX),
        max_concurrent_streams: backbone.max_concurrent_streams,
        keep_alive: backbone.keep_alive.unwrap_or(d.keep_alive),
        idle_timeout: backbone.idle_timeout.unwrap_or(d.idle_timeout),
        backoff_min: backbone.reconnect_min.unwrap_or(d.backoff_min),
        backoff_max: backbone.reconnect_max.unwrap_or(d.backoff_max),
        config_deltas: backbone.config_deltas,
        ..d
    }
}

pub fn identity(config: &NodeConfig) -> Identity {
    Identity {
        node_id: config.node.id.clone(),
        region: config.node.region.clone().unwrap_or_default(),
    }
}

/// Binds the origin's backbone listener when `[backbone] listen` is set and
/// prints `listening backbone ADDR`.
pub fn bind_origin(config: &NodeConfig) -> Result<Option<BackboneServer>, AppError> {
    let Some(backbone) = &config.backbone else {
        return Ok(None);
    };
    let Some(listen) = backbone.listen else {
        return Ok(None);
    };
    let tls = material(backbone)?;
    let server = BackboneServer::bind(
        listen,
        &tls,
        identity(config),
        link_settings(backbone, &config.limits),
    )?;
    let local = server.local_addr()?;
    tracing::info!(address = %local, "backbone listening");
    println!("listening backbone {local}");
    Ok(Some(server))
}

/// Requests from PoPs: routed by the PoP already, served as edge APIs.
struct FromPops<U> {
    gateway: Arc<Gateway<U>>,
}

impl<U: Upstream> RequestHandler for FromPops<U> {
    async fn handle(
        &self,
        req: Request<Body>,
        conn: Arc<ConnInfo>,
        routed: Routed,
    ) -> Response<Body> {
        let entry = Entry::Routed {
            api: &routed.api,
            stage: &routed.stage,
            modes: ServedModes::EDGE,
            principal: routed.principal.as_ref(),
        };
        self.gateway.handle(req, &conn, entry).await
    }
}

/// Serves the backbone until `stop`, its links spread over `workers`
/// threads; every snapshot sent on `definitions` (initial and each reload)
/// reaches every connected PoP.
pub async fn serve_origin<U: Upstream>(
    server: BackboneServer,
    workers: usize,
    gateway: Arc<Gateway<U>>,
    definitions: watch::Receiver<Arc<Definitions>>,
    mut stop: watch::Receiver<bool>,
) {
    let handler = Arc::new(FromPops { gateway });
    server
        .run_on_workers(workers, handler, definitions, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}
