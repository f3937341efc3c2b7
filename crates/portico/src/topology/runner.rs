//! Starts and stops a whole topology: certificates, node files, node processes
//! and link relays, in dependency order (a relay starts after its target, a
//! node after the relays it is configured to use).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portico_config::topology::{Entry, Place, Topology};
use tokio::sync::mpsc;

use super::children::{self, Exit, Node, Spec};
use super::client::Client;
use super::entries::{self, EntrySockets};
use super::manifest::{AdminInfo, EntryInfo, Manifest, ProcessInfo};
use super::nodes::{self, OriginInputs};
use super::relays::{self, Ends};
use super::{UpError, certs, file_error};

/// How long every entry may take to answer its first request (PoPs first need
/// their configuration from the origins, over simulated links).
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the run's files go.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Use this directory (created if needed, kept) instead of a temporary one.
    pub run_dir: Option<PathBuf>,
    /// Keep the temporary directory at exit.
    pub keep: bool,
}

enum RunDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl RunDir {
    fn new(opts: &Options) -> Result<RunDir, UpError> {
        if let Some(dir) = &opts.run_dir {
            std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
            return Ok(RunDir::Kept(dir.clone()));
        }
        let tmp = tempfile::Builder::new()
            .prefix("portico-up-")
            .tempdir()
            .map_err(file_error("creating", &std::env::temp_dir()))?;
        Ok(if opts.keep {
            RunDir::Kept(tmp.keep())
        } else {
            RunDir::Temp(tmp)
        })
    }

    fn path(&self) -> &Path {
        match self {
            RunDir::Temp(t) => t.path(),
            RunDir::Kept(p) => p,
        }
    }
}

/// A topology that serves: every node ready, every entry answered a request.
pub struct Running {
    pub topology: Topology,
    pub manifest: Manifest,
    started: Started,
    exits: mpsc::Receiver<Exit>,
    dir: RunDir,
}

/// What has been started so far, stopped in reverse order on failure or exit.
struct Started {
    nodes: Vec<(&'static str, Node)>,
    relays: Vec<relays::Relay>,
    exits: mpsc::Sender<Exit>,
}

impl Running {
    /// Starts everything, or nothing: on any failure what was started is stopped
    /// and the first error returned.
    pub async fn start(topology: Topology, opts: &Options) -> Result<Running, UpError> {
        // Entry ports first: a port in use is refused before anything starts.
        let listeners = entries::bind(&topology).await?;
        let dir = RunDir::new(opts)?;
        let (tx, mut exits) = mpsc::channel(64);
        let mut started = Started {
            nodes: Vec::new(),
            relays: Vec::new(),
            exits: tx,
        };
        match started
            .launch(&topology, listeners, dir.path(), &mut exits)
            .await
        {
            Ok(manifest) => Ok(Running {
                topology,
                manifest,
                started,
                exits,
                dir,
            }),
            Err(err) => {
                started.stop().await;
                Err(err)
            }
        }
    }

    /// Resolves when a node exits or a link's relay ends on its own: the
    /// topology is then broken.
    pub async fn failed(&mut self) -> UpError {
        let relays = &mut self.started.relays;
        tokio::select! {
            err = next_exit(&mut self.exits) => err,
            err = first_ended(relays) => err,
        }
    }

    /// The run directory (node files, certificates, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops every node (PoPs, then origins, then backends) and every relay, and
    /// removes the run directory unless it is kept.
    pub async fn stop(mut self) {
        self.started.stop().await;
        drop(self.dir);
    }
}

/// Addresses learnt from the nodes, by region / PoP.
#[derive(Default)]
struct Addrs {
    /// Where each region's origin reaches its backends: their relays, or
    /// the backends themselves over ideal links.
    backend_addrs: Vec<Vec<SocketAddr>>,
    /// Each origin's public listeners (one per regional API, in file order).
    origin_https: Vec<Vec<SocketAddr>>,
    origin_backbone: Vec<Option<SocketAddr>>,
    /// Each PoP's public listeners (one per edge API it serves).
    pop_https: Vec<Vec<SocketAddr>>,
    /// The origins' admin APIs.
    admin: Vec<AdminInfo>,
    /// The demo API key, when an API has a `/keyed` route (made at start,
    /// valid for this run only).
    demo_key: Option<String>,
}

/// The next node that exits on its own, as the error that reports it (with its
/// status and the end of its log); never resolves once every node has stopped.
async fn next_exit(exits: &mut mpsc::Receiver<Exit>) -> UpError {
    match exits.recv().await {
        Some(exit) => UpError::Exited {
            log: children::log_tail(&exit.log),
            node: exit.node,
            status: exit.status,
        },
        None => std::future::pending().await,
    }
}

/// The first relay that ends on its own; never resolves without relays.
async fn first_ended(relays: &mut [relays::Relay]) -> UpError {
    if relays.is_empty() {
        return std::future::pending().await;
    }
    let ended = relays.iter_mut().map(|r| Box::pin(r.ended()));
    futures_util::future::select_all(ended).await.0
}

impl Started {
    /// Starts everything and waits until every entry serves. `exits` reports
    /// nodes that exit after their ready line, while later ones start.
    async fn launch(
        &mut self,
        t: &Topology,
        listeners: Vec<EntrySockets>,
        dir: &Path,
        exits: &mut mpsc::Receiver<Exit>,
    ) -> Result<Manifest, UpError> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(file_error("creating", &logs))?;
        let origins: Vec<String> = t.regions.iter().map(|r| r.origin.clone()).collect();
        let pops: Vec<String> = t.pops.iter().map(|p| p.id.clone()).collect();
        let certs = certs::generate(&dir.join("certs"), &origins, &pops).await?;
        let mut addrs = Addrs {
            demo_key: t
                .apis
                .iter()
                .any(|a| a.keyed.is_some())
                .then(portico_gateway::keys::generate),
            ..Addrs::default()
        };
        self.start_backends(t, &logs, &mut addrs).await?;
        self.start_origins(t, &certs, dir, &mut addrs).await?;
        self.start_pops(t, &certs, dir, &mut addrs).await?;
        let entries = self.start_entries(t, listeners, &addrs).await?;
        let client = Client::from_ca_file(&certs.ca)?;
        for e in &entries {
            verify(&client, e, exits).await?;
        }
        Ok(Manifest {
            topology: t.name.clone(),
            entries,
            admin: addrs.admin,
            ca: certs.ca.clone(),
            demo_key: addrs.demo_key,
            processes: self.processes(),
            links: vec![std::process::id()],
            run_dir: dir.to_owned(),
        })
    }

    fn processes(&self) -> Vec<ProcessInfo> {
        self.nodes
            .iter()
            .map(|(kind, n)| ProcessInfo {
                node: n.node.clone(),
                kind: (*kind).to_owned(),
                pid: n.pid,
            })
            .collect()
    }

    async fn spawn(&mut self, kind: &'static str, spec: Spec<'_>) -> Result<&Node, UpError> {
        tracing::info!(node = %spec.node, kind, "starting");
        let node = children::start(spec, self.exits.clone()).await?;
        self.nodes.push((kind, node));
        let (_, node) = &self.nodes[self.nodes.len() - 1];
        Ok(node)
    }

    /// Demo backends, each behind a relay (the origin ↔ backend link) unless
    /// that link is ideal.
    async fn start_backends(
        &mut self,
        t: &Topology,
        logs: &Path,
        addrs: &mut Addrs,
    ) -> Result<(), UpError> {
        for (r, region) in t.regions.iter().enumerate() {
            let mut reach = Vec::new();
            for (b, id) in region.backends.iter().enumerate() {
                let spec = Spec {
                    node: id.clone(),
                    args: args(&["backend", "--listen", "127.0.0.1:0"]),
                    ready: "listening on",
                    log: logs.join(format!("{id}.log")),
                };
                let node = self.spawn("backend", spec).await?;
                let addr = node
                    .addrs("on")
                    .first()
                    .copied()
                    .ok_or_else(|| missing(id, "on", 1, 0))?;
                let params = t.params(
                    Place::Origin(r),
                    Place::Backend {
                        region: r,
                        index: b,
                    },
                );
                // An ideal link (the default: an origin and its backends
                // share a data centre) is a direct connection; a relay would
                // only add its own hop to every miss.
                if params.is_ideal() {
                    reach.push(addr);
                    continue;
                }
                let ends = Ends {
                    from: &region.origin,
                    to: id,
                };
                let relay = relays::tcp(addr, &params, ends).await?;
                reach.push(relay.local_addr());
                self.relays.push(relay);
            }
            addrs.backend_addrs.push(reach);
        }
        Ok(())
    }

    /// Origins, configured with where they reach their backends.
    async fn start_origins(
        &mut self,
        t: &Topology,
        certs: &certs::Certs,
        dir: &Path,
        addrs: &mut Addrs,
    ) -> Result<(), UpError> {
        for (r, region) in t.regions.iter().enumerate() {
            let backbone = t.pops.iter().any(|p| p.regions.contains(&r));
            let token_file = admin_token(&dir.join("admin"), &region.origin)?;
            let key_hash = addrs
                .demo_key
                .as_deref()
                .map(portico_gateway::keys::stored_form);
            let inputs = OriginInputs {
                demo_key_hash: key_hash.as_deref(),
                region: r,
                backends: &addrs.backend_addrs[r],
                backbone,
                admin_token_file: &token_file,
            };
            let file = nodes::write_origin(t, &inputs, certs, &dir.join("nodes"))?;
            let spec = node_spec("origin", &region.origin, &file, dir);
            let node = self.spawn("origin", spec).await?;
            let https = node.addrs("https");
            let want = nodes::origin_listener_apis(t, r).len();
            if https.len() != want {
                return Err(missing(&region.origin, "https", want, https.len()));
            }
            let bb = node.addrs("backbone").first().copied();
            if backbone && bb.is_none() {
                return Err(missing(&region.origin, "backbone", 1, 0));
            }
            addrs.origin_https.push(https);
            addrs.origin_backbone.push(bb);
            if let Some(admin) = node.addrs("admin").first() {
                addrs.admin.push(AdminInfo {
                    node: region.origin.clone(),
                    url: format!("http://{admin}"),
                    token_file,
                });
            }
        }
        Ok(())
    }

    /// PoPs, configured with backbone relays towards their home origins.
    async fn start_pops(
        &mut self,
        t: &Topology,
        certs: &certs::Certs,
        dir: &Path,
        addrs: &mut Addrs,
    ) -> Result<(), UpError> {
        for (p, pop) in t.pops.iter().enumerate() {
            let mut origins = Vec::new();
            for &r in &pop.regions {
                let target = addrs.origin_backbone[r]
                    .ok_or_else(|| missing(&t.regions[r].origin, "backbone", 1, 0))?;
                let params = t.params(Place::Pop(p), Place::Origin(r));
                let ends = Ends {
                    from: &pop.id,
                    to: &t.regions[r].origin,
                };
                let any: SocketAddr = ([127, 0, 0, 1], 0).into();
                let relay = relays::udp(any, target, &params, ends).await?;
                origins.push(relay.local_addr());
                self.relays.push(relay);
            }
            let file = nodes::write_pop(t, p, &origins, certs, &dir.join("nodes"))?;
            let node = self
                .spawn("pop", node_spec("pop", &pop.id, &file, dir))
                .await?;
            let https = node.addrs("https");
            let want = nodes::pop_listener_apis(t, p).len();
            if https.len() != want {
                return Err(missing(&pop.id, "https", want, https.len()));
            }
            addrs.pop_https.push(https);
        }
        Ok(())
    }

    /// One relay per (site, API) from the entry's port to the node's listener
    /// for that API (so the listener's `default_api` picks the API).
    async fn start_entries(
        &mut self,
        t: &Topology,
        listeners: Vec<EntrySockets>,
        addrs: &Addrs,
    ) -> Result<Vec<EntryInfo>, UpError> {
        let mut out = Vec::new();
        for (e, sockets) in t.entries.iter().zip(listeners) {
            let target = entry_target(t, e, addrs)?;
            let site = &t.sites[e.site].name;
            let node = t.place_name(e.node);
            let params = t.params(Place::Site(e.site), e.node);
            let relay = relays::tcp_on(
                sockets.tcp,
                target,
                &params,
                Ends {
                    from: site,
                    to: node,
                },
            )?;
            let local = relay.local_addr();
            self.relays.push(relay);
            if let Some(udp) = sockets.udp {
                let relay = relays::udp_on(
                    udp,
                    target,
                    &params,
                    Ends {
                        from: site,
                        to: node,
                    },
                )?;
                self.relays.push(relay);
            }
            let api = &t.apis[e.api];
            out.push(EntryInfo {
                site: site.clone(),
                api: api.name.clone(),
                mode: api.endpoint.as_str().to_owned(),
                url: format!("https://{local}/{}", api.stage),
                h3: t.http3,
                node: node.to_owned(),
            });
        }
        Ok(out)
    }

    async fn stop(&mut self) {
        while let Some((_, node)) = self.nodes.pop() {
            node.stop().await;
        }
        for relay in self.relays.drain(..) {
            relay.shutdown().await;
        }
    }
}

/// The listener of the entry's node that serves the entry's API.
fn entry_target(t: &Topology, e: &Entry, addrs: &Addrs) -> Result<SocketAddr, UpError> {
    let (list, apis) = match e.node {
        Place::Pop(p) => (addrs.pop_https.get(p), nodes::pop_listener_apis(t, p)),
        Place::Origin(r) => (addrs.origin_https.get(r), nodes::origin_listener_apis(t, r)),
        Place::Site(_) | Place::Backend { .. } => (None, Vec::new()),
    };
    let list = list.map_or(&[][..], Vec::as_slice);
    apis.iter()
        .position(|&a| a == e.api)
        .and_then(|i| list.get(i).copied())
        .ok_or_else(|| missing(t.place_name(e.node), "https", apis.len(), list.len()))
}

fn node_spec<'a>(command: &str, id: &str, file: &Path, dir: &Path) -> Spec<'a> {
    Spec {
        node: id.to_owned(),
        args: vec![
            command.to_owned(),
            "--config".to_owned(),
            file.display().to_string(),
        ],
        ready: "ready",
        log: dir.join("logs").join(format!("{id}.log")),
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

fn missing(node: &str, kind: &'static str, expected: usize, got: usize) -> UpError {
    UpError::MissingAddress {
        node: node.to_owned(),
        kind,
        expected,
        got,
    }
}

/// Retries `GET /STAGE/` through the entry until it answers 200 (a PoP answers
/// 404 until its origin's definitions arrive), or gives up after [`SERVE_TIMEOUT`].
/// A node that exits (even before this entry's check began) ends the wait at
/// once with its own status and log: what failed is that node, not the entry.
async fn verify(
    client: &Client,
    e: &EntryInfo,
    exits: &mut mpsc::Receiver<Exit>,
) -> Result<(), UpError> {
    tokio::select! {
        // An exit already reported wins over a request that happens to succeed.
        biased;
        err = next_exit(exits) => Err(err),
        served = serves(client, e) => served,
    }
}

/// The retry loop of [`verify`].
async fn serves(client: &Client, e: &EntryInfo) -> Result<(), UpError> {
    let deadline = tokio::time::Instant::now() + SERVE_TIMEOUT;
    let path = format!("{}/", e.stage_path());
    let not_serving = |reason: String| UpError::NotServing {
        url: e.url.clone(),
        site: e.site.clone(),
        api: e.api.clone(),
        secs: SERVE_TIMEOUT.as_secs(),
        reason,
    };
    let addr = e
        .addr()
        .ok_or_else(|| not_serving("not a loopback URL".into()))?;
    loop {
        let reason = match client.cold_get(addr, &path).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(err) => err.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(not_serving(reason));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a fresh random admin token for `node` (owner-readable only).
fn admin_token(dir: &Path, node: &str) -> Result<PathBuf, UpError> {
    let mut bytes = [0u8; 24];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| UpError::Certs("no randomness for the admin token".into()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    let path = dir.join(format!("{node}.token"));
    // Its owner's alone, also when a reused run directory held it already.
    super::manifest::write_private(&path, token.as_bytes())
        .map_err(file_error("writing", &path))?;
    Ok(path)
}
