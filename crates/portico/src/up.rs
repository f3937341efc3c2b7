//! `portico up TOPOLOGY`: runs a whole topology on this machine until Ctrl-C or
//! SIGTERM, printing its entry points (and writing them as JSON with `--json`).

use std::path::{Path, PathBuf};

use crate::AppError;
use crate::signals::Stops;
use crate::topology::UpError;
use crate::topology::runner::{Options, Running};

/// Runs until the first of `stops` or until a node exits or a link's relay
/// ends on its own (an error). While the nodes stop (each gets
/// [`crate::topology::children::STOP_GRACE`] before it is killed), a second
/// signal kills them all at once.
pub async fn run(
    topology: &Path,
    json: Option<PathBuf>,
    opts: Options,
    stops: &mut Stops,
) -> Result<(), AppError> {
    let topology = portico_config::load_topology_file(topology)?;
    let started = tokio::select! {
        r = Running::start(topology, &opts) => r,
        // Dropping the half-started topology kills what it started.
        () = stops.next() => return Ok(()),
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
        () = stops.next() => None,
        err = running.failed() => Some(err),
    };
    // The JSON says "this topology serves": not true any more.
    if let Some(path) = &json {
        let _ = std::fs::remove_file(path);
    }
    if opts.keep {
        println!("keeping {}", running.dir().display());
    }
    tracing::info!("stopping the topology; a second Ctrl-C or SIGTERM kills every node now");
    tokio::select! {
        () = running.stop() => {}
        () = stops.next() => {
            // Dropping the stop drops every node, which kills it at once
            // (see `children::Node`'s `Drop`); relays end with the runtime.
            tracing::warn!("second signal: killing every node");
            return Err(UpError::Forced.into());
        }
    }
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}
