//! `portico up TOPOLOGY`: runs a whole topology on this machine until Ctrl-C or
//! SIGTERM, printing its entry points (and writing them as JSON with `--json`).

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::AppError;
use crate::topology::runner::{Options, Running};

/// Runs until `shutdown` completes or a node exits on its own (an error).
pub async fn run(
    topology: &Path,
    json: Option<PathBuf>,
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let topology = portico_config::load_topology_file(topology)?;
    tokio::pin!(shutdown);
    let started = tokio::select! {
        r = Running::start(topology, &opts) => r,
        // Dropping the half-started topology kills what it started.
        () = &mut shutdown => return Ok(()),
    };
    let mut running = started?;
    print!("{}", running.manifest.table());
    if let Some(path) = &json {
        running.manifest.write_atomically(path)?;
    }
    println!(
        "ready: {} (run directory {}); Ctrl-C stops it",
        running.topology.name,
        running.dir().display()
    );
    let failure = tokio::select! {
        () = &mut shutdown => None,
        err = running.failed() => Some(err),
    };
    // The JSON says "this topology serves": not true any more.
    if let Some(path) = &json {
        let _ = std::fs::remove_file(path);
    }
    if opts.keep {
        println!("keeping {}", running.dir().display());
    }
    running.stop().await;
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}
