//! The `portico` command: argument parsing and wiring of the library crates.
#![forbid(unsafe_code)]

mod admin;
mod backbone;
mod backend;
mod certs;
mod check;
mod cli;
mod control;
mod cpus;
mod files;
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
    #[error(transparent)]
    Cpus(#[from] cpus::CpusError),
}

/// Parses the command line, runs the command, and maps failure to exit status 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node's file is read, and the node confined to its `cpus`, before the
    // log writer and the runtime start: their threads inherit the set.
    let prepared = match Prepared::of(cli.command) {
        Ok(prepared) => prepared,
        Err(err) => return fail(&err),
    };
    // Declared before the runtime, so dropped after it: lines logged while
    // its tasks wind down are written too.
    let logs = logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(&AppError::Runtime(err)),
    };
    let outcome = runtime.block_on(run(prepared));
    // The runtime winds down and the queued lines are written before the
    // error that stops the process: it is the last line a supervisor reads.
    drop(runtime);
    drop(logs);
    match outcome {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

/// A command ready to run: a node's with its file read and its CPUs set.
enum Prepared {
    Origin {
        config: portico_config::NodeConfig,
        /// Read again on SIGHUP.
        path: std::path::PathBuf,
    },
    Pop(portico_config::NodeConfig),
    /// Any command but `origin` and `pop`.
    Other(Command),
}

impl Prepared {
    /// Reads `origin`'s and `pop`'s node file and confines this thread (and
    /// every thread it starts later) to the file's `[node] cpus`.
    fn of(command: Command) -> Result<Prepared, AppError> {
        let prepared = match command {
            Command::Origin { config: path } => Prepared::Origin {
                config: portico_config::load_node_file_as(
                    &path,
                    Some(portico_config::Role::Origin),
                )?,
                path,
            },
            Command::Pop { config } => Prepared::Pop(portico_config::load_node_file_as(
                &config,
                Some(portico_config::Role::Pop),
            )?),
            other => return Ok(Prepared::Other(other)),
        };
        if let Prepared::Origin { config, .. } | Prepared::Pop(config) = &prepared {
            cpus::confine(&config.node.cpus)?;
        }
        Ok(prepared)
    }
}

fn fail(err: &AppError) -> ExitCode {
    eprintln!("portico: {err}");
    ExitCode::from(1)
}

/// Runs one command to completion.
async fn run(prepared: Prepared) -> Result<ExitCode, AppError> {
    let command = match prepared {
        Prepared::Origin { config, path } => {
            // Before anything slow (the quota book, certificates, binds): a
            // SIGHUP that comes while the node starts must not end it, and
            // a SIGTERM stops it cleanly once it has started.
            let hup = signals::hangup();
            return origin::run(config, path, hup, signals::shutdown())
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        Prepared::Pop(config) => {
            let hup = signals::hangup();
            return pop::run(config, hup, signals::shutdown())
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        Prepared::Other(command) => command,
    };
    match command {
        // `Prepared::of` keeps these (their CPUs are set before the runtime starts).
        Command::Origin { .. } | Command::Pop { .. } => Err(AppError::Usage(
            "a node's file is read before its runtime starts".into(),
        )),
        Command::Check { file } => Ok(check::run(&file)),
        Command::Certs {
            out,
            origins,
            pops,
            names,
            force,
        } => {
            let nodes = certs::roles(origins, pops, names);
            certs::run(&out, &nodes, force).map(|()| ExitCode::SUCCESS)
        }
        Command::Up {
            topology,
            json,
            keep,
            run_dir,
        } => {
            let opts = topology::runner::Options { run_dir, keep };
            let mut stops = signals::Stops::new();
            up::run(&topology, json, opts, &mut stops)
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
