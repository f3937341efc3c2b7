//! What `portico up` tells the world about a running topology: the table it
//! prints, and the same as JSON (`--json FILE`) for scripts and `portico probe`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{UpError, file_error};

/// The JSON document. The file appears (atomically) only once every entry has
/// answered a real request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub topology: String,
    pub entries: Vec<EntryInfo>,
    pub admin: Vec<AdminInfo>,
    /// The CA certificate clients should trust.
    pub ca: PathBuf,
    /// An API key for the `/keyed` routes, made at start for this run only
    /// (`x-api-key: KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_key: Option<String>,
    /// Every process the topology runs (all children of the `up` process).
    pub processes: Vec<ProcessInfo>,
    /// The processes that simulate its links: the `up` process, whose relays
    /// they are (for a peer measured behind `portico relay`, those relays).
    /// The probe runs them on a CPU of their own while it measures (see
    /// [`super::placement`]).
    #[serde(default)]
    pub links: Vec<u32>,
    /// Node files, certificates and logs (removed at exit unless `--keep`).
    pub run_dir: PathBuf,
}

/// Where one client site enters one API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntryInfo {
    pub site: String,
    pub api: String,
    /// `edge` or `regional`.
    pub mode: String,
    /// `https://127.0.0.1:PORT/STAGE`: the site's relay towards `node`.
    pub url: String,
    pub h3: bool,
    /// The PoP or origin behind the relay.
    pub node: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminInfo {
    pub node: String,
    /// `http://127.0.0.1:PORT` (operator traffic: no simulated link).
    pub url: String,
    /// The file holding the bearer token (`Authorization: Bearer TOKEN`).
    pub token_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessInfo {
    pub node: String,
    /// `backend`, `origin` or `pop`.
    pub kind: String,
    pub pid: u32,
}

impl EntryInfo {
    /// The relay address in `url`.
    pub fn addr(&self) -> Option<SocketAddr> {
        let rest = self.url.strip_prefix("https://")?;
        rest.split('/').next()?.parse().ok()
    }

    /// The path of `url` (`/STAGE`).
    pub fn stage_path(&self) -> &str {
        let rest = self.url.strip_prefix("https://").unwrap_or(&self.url);
        rest.find('/').map_or("", |i| &rest[i..])
    }
}

impl Manifest {
    /// Writes the JSON to a temporary file beside `path`, then renames it, so a
    /// reader never sees a partial file.
    pub fn write_atomically(&self, path: &Path) -> Result<(), UpError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| UpError::Manifest {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        // Readable by its owner alone: it holds the run's demo API key.
        write_private(path, &json).map_err(file_error("writing", path))
    }

    pub fn read(path: &Path) -> Result<Manifest, UpError> {
        let text = std::fs::read_to_string(path).map_err(file_error("reading", path))?;
        serde_json::from_str(&text).map_err(|e| UpError::Manifest {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The table `portico up` prints: one line per (site, API).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = |f: fn(&EntryInfo) -> &str, title: &str| {
            self.entries
                .iter()
                .map(|e| f(e).chars().count())
                .max()
                .unwrap_or(0)
                .max(title.len())
        };
        let (ws, wa, wn) = (
            width(|e| &e.site, "site"),
            width(|e| &e.api, "api"),
            width(|e| &e.node, "via"),
        );
        let _ = writeln!(
            out,
            "{:ws$}  {:wa$}  {:8}  {:wn$}  url",
            "site", "api", "mode", "via"
        );
        for e in &self.entries {
            let h3 = if e.h3 { "  (+h3)" } else { "" };
            let _ = writeln!(
                out,
                "{:ws$}  {:wa$}  {:8}  {:wn$}  {}{h3}",
                e.site, e.api, e.mode, e.node, e.url
            );
        }
        for a in &self.admin {
            let token = a.token_file.display();
            let _ = writeln!(
                out,
                "admin of {}: {} (bearer token in {token})",
                a.node, a.url
            );
        }
        let _ = writeln!(out, "clients trust the CA in {}", self.ca.display());
        if let Some(key) = &self.demo_key {
            let _ = writeln!(out, "demo API key (x-api-key) for /keyed routes: {key}");
        }
        out
    }
}

/// Writes `bytes` to `path` atomically, readable by its owner alone: into a
/// new file of mode 0600 beside it, renamed over `path`. Never into the old
/// file, which may be readable by others, and which anyone who opened it
/// before would read the new contents through.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    // Left by a run of this pid that died midway: not ours to reuse.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> EntryInfo {
        EntryInfo {
            site: "here".into(),
            api: "echo-edge".into(),
            mode: "edge".into(),
            url: "https://127.0.0.1:4431/prod".into(),
            h3: false,
            node: "pop-local".into(),
        }
    }

    #[test]
    fn entry_url_parts() {
        let e = entry();
        assert_eq!(e.addr(), Some(([127, 0, 0, 1], 4431).into()));
        assert_eq!(e.stage_path(), "/prod");
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.json");
        let m = Manifest {
            topology: "local".into(),
            entries: vec![entry()],
            admin: Vec::new(),
            ca: "/tmp/ca.pem".into(),
            demo_key: Some("k".repeat(40)),
            processes: vec![ProcessInfo {
                node: "pop-local".into(),
                kind: "pop".into(),
                pid: 7,
            }],
            links: vec![6],
            run_dir: "/tmp/run".into(),
        };
        m.write_atomically(&path).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), m);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(json["entries"][0]["mode"], "edge");
        assert_eq!(json["entries"][0]["h3"], false);
        assert!(
            m.table()
                .contains("here  echo-edge  edge      pop-local  https://127.0.0.1:4431/prod")
        );
    }
}
