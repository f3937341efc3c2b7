//! The `portico` command: argument parsing and wiring of the library crates.
#![forbid(unsafe_code)]

mod admin;
mod backbone;
mod backend;
mod certs;
mod check;
mod cli;
mod control;
mod keys;
mod limits;
mod listeners;
mod logging;
mod origin;
mod pop;
mod probe;
mod purges;
mod quotas;
mod rates;
mod relay;
mod settings;
mod signals;
mod topology;
mod up;

use std::process::ExitCode;

use clap::Parser;

pub use cli::{Cli, Command};

/// Errors that stop a `portico` command.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] portico_config::ConfigErrors),
    #[error(transparent)]
    Net(#[from] portico_net::NetError),
    #[error(transparent)]
    Integration(#[from] portico_integrations::IntegrationError),
    #[error(transparent)]
    Demo(#[from] portico_demo::DemoError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Up(#[from] topology::UpError),
    #[error(transparent)]
    Backbone(#[from] portico_backbone::BackboneError),
    #[error("{0}")]
    Certs(String),
    #[error(transparent)]
    Netsim(#[from] portico_netsim::NetsimError),
    #[error("{0}")]
    Usage(String),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Parses the command line, runs the command, and maps failure to exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Declared before the runtime, so dropped after it: lines logged while
    // its tasks wind down are written too.
    let _logs = logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(&AppError::Runtime(err)),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

fn fail(err: &AppError) -> ExitCode {
    eprintln!("portico: {err}");
    ExitCode::from(1)
}

/// Runs one command to completion.
pub async fn run(command: Command) -> Result<ExitCode, AppError> {
    match command {
        Command::Origin { config } => origin::run(&config, signals::shutdown())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Check { file } => Ok(check::run(&file)),
        Command::Pop { config } => pop::run(&config, signals::shutdown())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Certs { out, nodes, force } => {
            certs::run(&out, &nodes, force).map(|()| ExitCode::SUCCESS)
        }
        Command::Up {
            topology,
            json,
            keep,
            run_dir,
        } => {
            let opts = topology::runner::Options { run_dir, keep };
            up::run(&topology, json, opts, signals::shutdown())
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Probe {
            topology,
            json,
            runs,
            out,
            allow_idle,
            shared_cpus,
        } => {
            let opts = probe::ProbeOptions {
                runs,
                out,
                allow_idle,
                shared_cpus,
            };
            probe::run(&topology, json.as_deref(), &opts, signals::shutdown())
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Keys(command) => Ok(keys::run(command)),
        Command::Relay {
            listen,
            to,
            link,
            udp,
        } => relay::run(listen, to, udp, link, signals::shutdown())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Backend {
            listen,
            tls_cert,
            tls_key,
        } => backend::run(listen, tls_cert, tls_key)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}
