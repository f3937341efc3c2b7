//! `portico check FILE`: validate a node configuration or a topology and print
//! every error.

use std::path::Path;
use std::process::ExitCode;

use portico_config::{ConfigErrors, TopologySummary};

pub fn run(file: &Path) -> ExitCode {
    // A topology is told apart by its top-level sections; an unreadable file is
    // reported by the node loader.
    let is_topology = std::fs::read_to_string(file).is_ok_and(|t| portico_config::is_topology(&t));
    if is_topology {
        return match portico_config::load_topology_file(file) {
            Ok(t) => {
                println!("{}: valid {}", file.display(), TopologySummary::of(&t));
                ExitCode::SUCCESS
            }
            Err(errors) => report(file, &errors),
        };
    }
    match portico_config::load_node_file(file) {
        Ok(config) => {
            let defs = &config.definitions;
            let routes: usize = defs
                .apis
                .iter()
                .flat_map(|a| a.stages.iter())
                .map(|s| s.deployment.routes.len())
                .sum();
            println!(
                "{}: valid ({} APIs, {} stage routes, {} listeners, definitions version {:016x})",
                file.display(),
                defs.apis.len(),
                routes,
                config.listeners.len(),
                defs.version
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report(file, &errors),
    }
}

fn report(file: &Path, errors: &ConfigErrors) -> ExitCode {
    for err in errors.iter() {
        println!("{err}");
    }
    println!("{}: {} error(s)", file.display(), errors.len());
    ExitCode::from(1)
}
