//! `portico check FILE`: validate a configuration and print every error.

use std::path::Path;
use std::process::ExitCode;

pub fn run(file: &Path) -> ExitCode {
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
        Err(errors) => {
            for err in errors.iter() {
                println!("{err}");
            }
            println!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::from(1)
        }
    }
}
