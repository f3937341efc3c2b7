//! Running a topology on one machine (`portico up`) and measuring it
//! (`portico probe`): node processes, link relays, the HTTPS probe client.
//!
//! Every node (demo backend, origin, PoP) is a child process of the same binary,
//! started on port 0; the runner learns its addresses from the `listening ...`
//! lines it prints, then starts the simulated links (netsim relays, tasks of the
//! runner) that point at them. Nodes only ever talk to each other through relays,
//! so every hop has the delay the topology gives it.

pub mod awake;
pub mod certs;
pub mod chart;
pub mod children;
pub mod client;
pub mod entries;
pub mod h3client;
pub mod manifest;
pub mod measure;
pub mod nodes;
pub mod placement;
pub mod relays;
pub mod runner;

use std::path::PathBuf;

use portico_config::ConfigErrors;

/// Why a topology could not be started, kept running or measured.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{0}")]
    Topology(#[from] ConfigErrors),
    #[error(
        "{file}:{line}:{column}: port {port} (entry of site `{site}` for API `{api}`) is \
         already in use: {source}"
    )]
    PortInUse {
        file: String,
        line: usize,
        column: usize,
        port: u16,
        site: String,
        api: String,
        source: std::io::Error,
    },
    #[error("{context} {}: {source}", path.display())]
    File {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating certificates: {0}")]
    Certs(String),
    #[error("starting node `{node}`: {source}")]
    Spawn {
        node: String,
        source: std::io::Error,
    },
    #[error("node `{node}` exited before it was ready ({status}){log}")]
    NotReady {
        node: String,
        status: String,
        log: String,
    },
    #[error("node `{node}` was not ready within {secs} s{log}")]
    ReadyTimeout {
        node: String,
        secs: u64,
        log: String,
    },
    #[error("node `{node}` printed no `listening {kind}` address (expected {expected}, got {got})")]
    MissingAddress {
        node: String,
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("node `{node}` exited unexpectedly ({status}){log}")]
    Exited {
        node: String,
        status: String,
        log: String,
    },
    #[error("stopped by a second signal: nodes were killed, not stopped")]
    Forced,
    #[error("link {from} → {to}: {source}")]
    Relay {
        from: String,
        to: String,
        source: portico_netsim::NetsimError,
    },
    #[error("entry {url} (site `{site}`, API `{api}`) did not serve within {secs} s: {reason}")]
    NotServing {
        url: String,
        site: String,
        api: String,
        secs: u64,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Manifest { path: PathBuf, reason: String },
    #[error("generated node file for `{node}` is invalid (a bug in portico up):\n{errors}")]
    NodeFile { node: String, errors: ConfigErrors },
    #[error("TLS client: {0}")]
    Tls(String),
    /// The probe's client thread (its runtime, its thread or a task on it).
    #[error("probe client: {0}")]
    ProbeClient(String),
}

/// Builds an [`UpError::File`] for `map_err`.
pub fn file_error(
    context: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> UpError {
    let path = path.to_owned();
    move |source| UpError::File {
        context,
        path,
        source,
    }
}
