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
    /// Manage API keys: create one (printed once) or compute a key's stored hash.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run an origin gateway: owns API definitions, runs integrations, serves regional APIs.
    Origin {
        /// The node's TOML configuration (node settings and API definitions).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a whole topology (backends, origins, PoPs, simulated links) on this machine.
    Up {
        /// The topology file (e.g. topology/local.toml).
        topology: PathBuf,
        /// Once every entry serves, write the entry points here as JSON (atomically).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep the run directory (node files, certificates, logs) at exit.
        #[arg(long)]
        keep: bool,
        /// Use this run directory (kept) instead of a temporary one.
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Measure time to first byte from every client site, edge against regional entry.
    Probe {
        /// The topology file (its links give the physical minimum).
        topology: PathBuf,
        /// Probe a topology already running (`portico up --json FILE`) instead of starting one.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Measurements of each kind per entry (the median is reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        runs: u32,
        /// Directory for probe.csv and probe.svg.
        #[arg(long, default_value = "probe-results")]
        out: PathBuf,
        /// Let CPUs enter slow idle states while measuring. By default the probe
        /// holds them to 0 µs wake-up latency through /dev/cpu_dma_latency (PM QoS,
        /// as latency tools do) when it may, so that a virtual machine's wake-up
        /// of a halted CPU is not counted at every hop.
        #[arg(long)]
        allow_idle: bool,
        /// Leave the simulated links and the hosts on shared CPUs. By default,
        /// while it measures, the probe runs the link processes (`up`'s
        /// relays) on one CPU and the hosts and its own client on the others,
        /// so that a relay waiting to release a packet takes no CPU from the
        /// host it is bound for (real links take none).
        #[arg(long)]
        shared_cpus: bool,
    },
    /// Validate a node configuration or a topology; prints every error as file:line:column.
    Check { file: PathBuf },
    /// Run a PoP: serves edge APIs, forwarding over the QUIC backbone to their origins.
    Pop {
        /// The PoP's TOML configuration (node, listeners, `[backbone]`, `[[origins]]`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a private backbone CA and a certificate for each node; each
    /// certificate names its node's backbone role, which the other end checks.
    Certs {
        /// Directory for ca.pem, ca.key and NODE.pem/NODE.key.
        #[arg(long)]
        out: PathBuf,
        /// Origin ids, comma separated (e.g. origin-iad).
        #[arg(long, value_delimiter = ',', required_unless_present_any = ["pops", "names"])]
        origins: Vec<String>,
        /// PoP ids, comma separated (e.g. pop-fra,pop-lhr).
        #[arg(long, value_delimiter = ',')]
        pops: Vec<String>,
        /// Certificates with no backbone role, for public listeners only.
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        /// Replace an existing CA in DIR (all its node certificates stop working).
        #[arg(long)]
        force: bool,
    },
    /// Put one simulated link (delay, jitter, loss, bandwidth each way) in front of any
    /// TCP service, and with --udp any UDP one on the same port: the relay `up` puts
    /// between a topology's nodes.
    Relay {
        /// Address clients connect to, e.g. 127.0.0.1:8443 (port 0 picks one and prints it).
        #[arg(long)]
        listen: SocketAddr,
        /// The service behind the link.
        #[arg(long)]
        to: SocketAddr,
        #[command(flatten)]
        link: crate::relay::LinkArgs,
        /// Relay UDP datagrams on the same port too (QUIC, HTTP/3).
        #[arg(long)]
        udp: bool,
    },
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

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key: prints it once, with the `[[api_keys]]` entry (its SHA-256) to paste into the origin's file.
    Create {
        /// Identifier of the key in configuration and usage reports.
        #[arg(long)]
        id: String,
        /// Usage plans the key belongs to.
        #[arg(long = "plan")]
        plans: Vec<String>,
    },
    /// Print the stored form (`sha256:...`) of a key read from standard input.
    Hash,
}
