//! Command-line interface (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Portico: an API gateway shaped like a CDN.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an origin gateway: owns API definitions, runs integrations, serves regional APIs.
    Origin {
        /// The node's TOML configuration (node settings and API definitions).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file; prints every error as file:line:column.
    Check { file: PathBuf },
    /// Run the built-in demo backend (echo, /status, /delay, /bytes, /cache).
    Backend {
        /// Address to listen on, e.g. 127.0.0.1:9000 (port 0 picks one and prints it).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Serve HTTPS with this PEM certificate chain.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}
