//! `portico pop`: a PoP. The same gateway pipeline as an origin, with the
//! backbone as its upstream and the origins as the source of its API
//! definitions.
//!
//! A PoP serves **edge** APIs only. A regional API is known to it (the
//! snapshot carries all definitions) but answered `404 {"message":"Not Found"}`,
//! exactly as an unknown API: a regional API is entered at its origin, and
//! a PoP does not reveal which regional APIs exist. It starts with no APIs
//! and serves each origin's APIs as soon as that origin's first snapshot
//! arrives over the backbone.

use std::future::Future;
use std::sync::Arc;

use portico_backbone::{Backbone, BackboneError, BackboneUpstream, OriginSpec};
use portico_config::{DefinitionDefaults, Definitions, NodeConfig};
use portico_gateway::limits::{LeaseSource, Quotas};
use portico_gateway::{Gateway, ServedModes};
use tokio::sync::watch;

use crate::{AppError, backbone, listeners, settings};

/// Runs a PoP until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    hup: Option<tokio::signal::unix::Signal>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    settings::raise_file_limit(&config);
    let (purges, purge_queue) = crate::purges::PopPurges::new();
    let leases = crate::quotas::PopLeases::new();
    let rates = crate::rates::PopRates::new();
    let control = crate::control::Dispatch::new(vec![
        crate::control::Route {
            kinds: crate::purges::KINDS,
            handler: Arc::clone(&purges) as Arc<dyn portico_backbone::ControlHandler>,
        },
        crate::control::Route {
            kinds: crate::quotas::KINDS,
            handler: Arc::clone(&leases) as Arc<dyn portico_backbone::ControlHandler>,
        },
        crate::control::Route {
            kinds: crate::rates::KINDS,
            handler: Arc::clone(&rates) as Arc<dyn portico_backbone::ControlHandler>,
        },
    ]);
    let backbone = start_backbone(&config, control)?;
    // Quotas are spent from leases of each API's home origin.
    let quota = Arc::new(Quotas::remote(Arc::clone(&leases) as Arc<dyn LeaseSource>));
    leases.attach(backbone.config(), &quota);
    let gateway = Gateway::new(
        settings::gateway(&config),
        Arc::new(Definitions::empty()),
        backbone.upstream(),
    )
    .with_limits(crate::limits::limits(&config, Arc::clone(&quota)).with_shared_rates());
    let gateway = Arc::new(settings::with_cache(gateway, &config));
    let handler = Arc::new(listeners::Public {
        gateway: Arc::clone(&gateway),
        modes: ServedModes::EDGE,
    });
    let (servers, certificates) = listeners::bind(&config, &handler).await?;
    // Every bind before any task starts: one that fails stops the node
    // before it has served anything.
    let admin_listener = crate::admin::bind(&config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    rates.attach(
        &config.node.id,
        Arc::clone(gateway.limits()),
        backbone.config(),
    );
    purges.attach(backbone.config());
    tasks.spawn(Arc::clone(&rates).run(stop_rx.clone()));
    tasks.spawn(crate::limits::retain(
        Arc::clone(gateway.limits()),
        stop_rx.clone(),
    ));
    // TCP and HTTP/3 listeners share the runtime that drives the backbone
    // links (see `settings::pop_listener_workers`): a miss wakes the link's
    // driver on its own thread.
    let workers = settings::pop_listener_workers();
    for server in servers {
        let mut stop = stop_rx.clone();
        tasks.spawn(server.run_on_workers(workers, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    tasks.spawn(crate::purges::apply(
        purge_queue,
        Arc::clone(&gateway),
        stop_rx.clone(),
    ));
    // `[admin]` on a PoP: its cache and limits statistics (`/limits/stats`
    // counts requests a `fail_open` plan allowed while its origin was
    // unreachable, and connections refused for their client's cap) and what it runs of each origin's definitions
    // (`/config`); purges made here clear this PoP's cache only.
    if let (Some(listener), Some(a)) = (admin_listener, &config.admin) {
        let (local_purges, _) = tokio::sync::broadcast::channel(16);
        let (_, token) = watch::channel(a.token.as_bytes().into());
        let admin = crate::admin::Admin::new(Arc::clone(&gateway), token, local_purges)
            .with_origins(backbone.config_status());
        tasks.spawn(crate::admin::serve(
            listener,
            Arc::new(admin),
            stop_rx.clone(),
        ));
    }
    tasks.spawn(reload_certificates(
        hup,
        certificates,
        config.node.id.clone(),
        stop_rx.clone(),
    ));
    tasks.spawn(apply_snapshots(backbone.config(), gateway, stop_rx));
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(node = %config.node.id, origins = config.origins.len(), workers, "pop ready");
    println!("ready");
    shutdown.await;
    // Listeners drain first (their requests still need the links), then the links close.
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    // Unspent quota goes back to the origins while the links are still up.
    quota.close().await;
    backbone.shutdown().await;
    Ok(())
}

/// Starts dialing every `[[origins]]` entry; links come up in the background.
fn start_backbone(
    config: &NodeConfig,
    control: Arc<dyn portico_backbone::ControlHandler>,
) -> Result<Backbone, AppError> {
    let Some(bb) = &config.backbone else {
        let reason = "a PoP needs `[backbone]` with `ca`, `cert` and `key`".to_owned();
        return Err(BackboneError::Tls(reason).into());
    };
    let origins = config
        .origins
        .iter()
        .map(|o| OriginSpec {
            region: o.region.clone(),
            address: o.address,
            server_name: o.server_name.clone(),
        })
        .collect();
    let defaults = DefinitionDefaults {
        timeout: config.limits.default_timeout,
    };
    Ok(Backbone::start_with_control(
        backbone::identity(config),
        origins,
        &backbone::material(bb)?,
        backbone::link_settings(bb, &config.limits),
        defaults,
        control,
    )?)
}

/// Installs every merged snapshot the origins send; requests in flight
/// finish on the snapshot they started with. A snapshot that arrived before
/// this task started is installed first.
async fn apply_snapshots(
    mut config: watch::Receiver<Arc<portico_backbone::SyncedConfig>>,
    gateway: Arc<Gateway<BackboneUpstream>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let defs = Arc::clone(&config.borrow_and_update().definitions);
        if defs.version != gateway.definitions().version {
            tracing::info!(
                version = format_args!("{:016x}", defs.version),
                apis = defs.apis.len(),
                "definitions installed"
            );
            gateway.swap(defs);
        }
        tokio::select! {
            changed = config.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// SIGHUP reads a PoP's listener certificates again (renewed files take
/// effect at the next handshake, as nginx's do). Its APIs come from its
/// origins (a reload there reaches it within a second); the rest of its own
/// file is read at start.
async fn reload_certificates(
    hup: Option<tokio::signal::unix::Signal>,
    certificates: listeners::Certificates,
    node_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let Some(mut hup) = hup else { return };
    let none = portico_config::Definitions::empty();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = hup.recv() => match certificates.reload(&none, &node_id) {
                Ok(count) => tracing::info!(
                    certificates = count,
                    "SIGHUP: listener certificates reloaded (a PoP's APIs come from its origins; \
                     the rest of its file is read at start)"
                ),
                Err(err) => tracing::error!(%err, "SIGHUP: listener certificates not reloaded; the previous ones keep serving"),
            },
        }
    }
}
