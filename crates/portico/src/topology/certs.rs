//! Certificates of a running topology, made by `portico certs` (the same binary,
//! as a child process): one private CA, and one certificate per node (PoP or
//! origin) valid for its node id, `localhost` and `127.0.0.1`, naming its
//! backbone role. A node uses it on
//! its public listeners (clients trust the CA) and on the backbone (mutual TLS:
//! both ends trust the same CA).
//!
//! Layout of the directory (`portico certs`'s): `ca.pem`, `ca.key`, and
//! `NODE.pem` / `NODE.key` per node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::UpError;

/// A node's certificate chain and private key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCerts {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a topology's PKI.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA certificate clients and nodes trust.
    pub ca: PathBuf,
    nodes: BTreeMap<String, NodeCerts>,
}

impl Certs {
    /// The files of `node`; every node passed to [`generate`] has them.
    pub fn node(&self, node: &str) -> Option<&NodeCerts> {
        self.nodes.get(node)
    }
}

/// Runs `portico certs --out DIR --origins ... --pops ...` and checks that
/// every file it promises exists.
pub async fn generate(dir: &Path, origins: &[String], pops: &[String]) -> Result<Certs, UpError> {
    let exe = std::env::current_exe().map_err(|e| UpError::Certs(e.to_string()))?;
    let mut command = tokio::process::Command::new(exe);
    command.arg("certs").arg("--out").arg(dir);
    for (flag, ids) in [("--origins", origins), ("--pops", pops)] {
        if !ids.is_empty() {
            command.arg(flag).arg(ids.join(","));
        }
    }
    let out = command
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| UpError::Certs(format!("running portico certs: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(UpError::Certs(format!(
            "portico certs failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    let ca = dir.join("ca.pem");
    let mut files = BTreeMap::new();
    for node in origins.iter().chain(pops) {
        let paths = NodeCerts {
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        };
        files.insert(node.clone(), paths);
    }
    let all = std::iter::once(&ca).chain(files.values().flat_map(|f| [&f.cert, &f.key]));
    if let Some(missing) = all.into_iter().find(|p| !p.is_file()) {
        return Err(UpError::Certs(format!(
            "portico certs did not write {}",
            missing.display()
        )));
    }
    Ok(Certs { ca, nodes: files })
}
