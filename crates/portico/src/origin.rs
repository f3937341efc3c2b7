//! `portico origin`: an origin gateway serving regional APIs on its own listeners.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portico_config::{Definitions, EndpointMode, NodeConfig};
use portico_gateway::{Gateway, ServedModes};
use portico_integrations::{BackendClient, Integrations, Resolver};
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::{AppError, settings};

/// Runs an origin until `shutdown` completes.
pub async fn run(
    config: NodeConfig,
    path: PathBuf,
    hup: Option<Signal>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    settings::raise_file_limit(&config);
    let resolver = Resolver::new(&settings::dns(&config))?;
    let client = BackendClient::new(&settings::client(&config), resolver)?;
    let quota = crate::limits::open_quota(&config).await?;
    // A book the region's origins share is also where they split key rates.
    let shared = match quota.book() {
        Some(portico_quota::Book::Shared(store)) => Some(store.clone()),
        _ => None,
    };
    let gateway = Gateway::new(
        settings::gateway(&config),
        Arc::clone(&config.definitions),
        Integrations::new(client),
    )
    .with_limits({
        let limits = crate::limits::limits(&config, Arc::clone(&quota));
        // With PoPs, a plan's key rate is shared with them (`rates`); with
        // the region's other origins, with them.
        match (&config.backbone, &shared) {
            (_, Some(_)) => limits.with_origin_peers(),
            (Some(_), None) => limits.with_shared_rates(),
            (None, None) => limits,
        }
    });
    let gateway = Arc::new(settings::with_cache(gateway, &config));
    let handler = Arc::new(crate::listeners::Public {
        gateway: Arc::clone(&gateway),
        modes: ServedModes::REGIONAL,
    });
    let (servers, certificates) = crate::listeners::bind(&config, &handler).await?;
    // PoPs get the definitions at connect and again after every reload.
    let (defs_tx, defs_rx) = watch::channel(Arc::clone(&config.definitions));
    let backbone = crate::backbone::bind_origin(&config)?;
    let admin = crate::admin::bind(&config).await?;
    // Purges made at this origin; the backbone forwards them to PoPs (a subscriber).
    let (purges, _) = tokio::sync::broadcast::channel(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::limits::retain(
        Arc::clone(gateway.limits()),
        stop_rx.clone(),
    ));
    let workers = settings::workers(&config);
    for server in servers {
        let mut stop = stop_rx.clone();
        tasks.spawn(server.run_on_workers(workers, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
    }
    let (token_tx, token_rx) = watch::channel(Box::<[u8]>::default());
    if let Some(a) = &config.admin {
        token_tx.send_replace(a.token.as_bytes().into());
    }
    let reload = Reload {
        running: config.clone(),
        path,
        gateway: Arc::clone(&gateway),
        definitions: defs_tx,
        admin_token: token_tx,
        certificates,
    };
    tasks.spawn(reload.on_sighup(hup, stop_rx.clone()));
    // Stage, route and key rates of edge APIs are shared among the PoPs, key
    // rates of plans with regional APIs with this origin too, and with the
    // region's other origins when they share a store.
    let rates = match &shared {
        Some(store) => {
            let own = Arc::clone(gateway.limits());
            crate::rates::OriginRates::with_peers(
                defs_rx.clone(),
                own,
                store.clone(),
                &config.node.id,
            )
        }
        None => crate::rates::OriginRates::new(defs_rx.clone(), Some(Arc::clone(gateway.limits()))),
    };
    if backbone.is_some() || shared.is_some() {
        tasks.spawn(Arc::clone(&rates).run(stop_rx.clone()));
    }
    let mut leases = None;
    if let Some(server) = backbone {
        // Purges made on the admin API reach every connected PoP.
        let to_pops = Arc::new(crate::purges::OriginPurges::default());
        tasks.spawn(Arc::clone(&to_pops).forward(purges.subscribe(), stop_rx.clone()));
        // PoPs lease quotas from this origin's book.
        let to_book = crate::quotas::OriginLeases::new(Arc::clone(&quota), defs_rx.clone());
        leases = Some(Arc::clone(&to_book));
        let server = server.with_control(crate::control::Dispatch::new(vec![
            crate::control::Route {
                kinds: crate::purges::KINDS,
                handler: to_pops,
            },
            crate::control::Route {
                kinds: crate::quotas::KINDS,
                handler: to_book,
            },
            crate::control::Route {
                kinds: crate::rates::KINDS,
                handler: rates,
            },
        ]));
        let serve = crate::backbone::serve_origin(
            server,
            workers,
            Arc::clone(&gateway),
            defs_rx,
            stop_rx.clone(),
        );
        tasks.spawn(serve);
    }
    if let Some(listener) = admin {
        let admin = crate::admin::Admin::new(Arc::clone(&gateway), token_rx, purges.clone());
        tasks.spawn(crate::admin::serve(
            listener,
            Arc::new(admin),
            stop_rx.clone(),
        ));
    }
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(node = %config.node.id, apis = config.definitions.apis.len(), workers, "origin ready");
    println!("ready");
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    // The links are closed: what PoPs sent of their leases before is
    // answered, then what this origin holds of its own goes back.
    if let Some(leases) = leases {
        leases.close(Duration::from_secs(5)).await;
    }
    quota.close().await;
    Ok(())
}

/// What a running origin reloads on SIGHUP: its API definitions (APIs,
/// plans, keys, custom domains), the certificates of its listeners and
/// custom domains (read again: renewed files take effect), and its admin
/// token. A bad file, a certificate that does not load, or definitions
/// without a running listener's `default_api` are logged and the old
/// configuration keeps serving. The node's other settings (`[node]`,
/// listeners, backbone, limits, throttle, cache...) take effect at its next
/// start; APIs that name no region stay homed in the running node's.
struct Reload {
    /// The configuration the node started with: what a reload cannot change.
    running: NodeConfig,
    path: PathBuf,
    gateway: Arc<Gateway<Integrations>>,
    definitions: watch::Sender<Arc<Definitions>>,
    admin_token: watch::Sender<Box<[u8]>>,
    certificates: crate::listeners::Certificates,
}

impl Reload {
    async fn on_sighup(self, hup: Option<Signal>, mut stop: watch::Receiver<bool>) {
        let Some(mut hup) = hup else {
            return tracing::warn!("configuration reload is unavailable");
        };
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = hup.recv() => {}
            }
            match self.apply() {
                Ok(running) => tracing::info!(
                    version = format_args!("{:016x}", running.version),
                    sha256 = %running.hash_hex(),
                    "configuration reloaded"
                ),
                Err(errors) => {
                    for err in &errors {
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

    /// Reads the file and applies it whole, or nothing and why.
    fn apply(&self) -> Result<portico_backbone::Running, Vec<String>> {
        // Compiled in the running node's region: `[node]` (id and region,
        // the node's backbone identity) takes effect at the next start.
        let config = portico_config::reload_node_file(&self.path, &self.running)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let missing = unserved_defaults(&self.running, &config.definitions);
        if !missing.is_empty() {
            return Err(missing);
        }
        let certificates = self
            .certificates
            .reload(&config.definitions, &self.running.node.id)
            .map_err(|err| vec![format!("certificates: {err}")])?;
        let running = portico_backbone::Running::of(&config.definitions);
        self.gateway.swap(Arc::clone(&config.definitions));
        self.definitions
            .send_replace(Arc::clone(&config.definitions));
        match &config.admin {
            Some(a) => {
                self.admin_token.send_replace(a.token.as_bytes().into());
            }
            None => {
                self.admin_token.send_replace(Box::default());
                tracing::warn!(
                    "`[admin]` was removed: the admin API refuses every request until the next start"
                );
            }
        }
        tracing::debug!(certificates, "listener certificates reloaded");
        let later = self.running.restart_only_changes(&config);
        if !later.is_empty() {
            tracing::warn!(
                sections = later.join(", "),
                "changed settings that take effect at the next start, not with this reload"
            );
        }
        Ok(running)
    }
}

/// Why the running listeners' `default_api`s (kept until a restart) could
/// not be served from `definitions`: an API no longer defined, or one that
/// became an edge API (an origin's listeners serve regional APIs only).
fn unserved_defaults(running: &NodeConfig, definitions: &Definitions) -> Vec<String> {
    let defaults = running
        .listeners
        .iter()
        .filter_map(|l| l.default_api.as_ref());
    defaults
        .filter_map(|name| match definitions.api(name) {
            None => Some(format!(
                "a running listener's default_api `{name}` is no longer defined (change listeners with a restart)"
            )),
            Some(api) if api.endpoint == EndpointMode::Edge => Some(format!(
                "a running listener's default_api `{name}` is now an edge API, which an origin's listeners do not serve (change listeners with a restart)"
            )),
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::unserved_defaults;

    /// An origin with API `a` of `endpoint` and a listener with `default`.
    fn config(endpoint: &str, default: &str) -> portico_config::NodeConfig {
        let text = format!(
            "[node]\nid = \"o\"\nregion = \"r\"\n\
             [[listeners]]\naddress = \"127.0.0.1:0\"\ntls = false\n{default}\
             [[apis]]\nname = \"a\"\nendpoint = \"{endpoint}\"\n"
        );
        portico_config::parse_node(&text, "t.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A reloaded file whose listeners no longer name the running default
    /// (listeners change at the next start) may not leave it unserved.
    #[test]
    fn a_reload_keeps_the_running_default_api_served() {
        let running = config("regional", "default_api = \"a\"\n");
        assert!(unserved_defaults(&running, &running.definitions).is_empty());
        let edge = config("edge", "");
        assert_eq!(
            unserved_defaults(&running, &edge.definitions),
            [
                "a running listener's default_api `a` is now an edge API, which an origin's \
                 listeners do not serve (change listeners with a restart)"
            ]
        );
        let none = portico_config::Definitions::empty();
        assert_eq!(
            unserved_defaults(&running, &none),
            [
                "a running listener's default_api `a` is no longer defined (change listeners \
                 with a restart)"
            ]
        );
    }
}
