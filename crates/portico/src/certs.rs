//! `portico certs --out DIR --origins a,... --pops b,... [--names c,...]`: a
//! private CA for the backbone and one certificate per node naming its
//! backbone role (`--names`: none, for public listeners only), for local
//! topologies.
//!
//! Writes `ca.pem`, `ca.key` and `NODE.pem`/`NODE.key` for every node; keys
//! are readable by the owner only. When `DIR` already holds a CA, the nodes
//! are issued by it (adding nodes to a running deployment); it is replaced
//! only with `--force`, which every node certificate signed by it would not
//! survive.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use portico_backbone::pki::Ca;
use portico_config::{NODE_ID, is_node_id};
use portico_proto::Role;

use crate::AppError;

/// The command line's lists as one, each id with its role.
pub fn roles(
    origins: Vec<String>,
    pops: Vec<String>,
    names: Vec<String>,
) -> Vec<(String, Option<Role>)> {
    let with = |ids: Vec<String>, role| ids.into_iter().map(move |id| (id, role));
    with(origins, Some(Role::Origin))
        .chain(with(pops, Some(Role::Pop)))
        .chain(with(names, None))
        .collect()
}

pub fn run(out: &Path, nodes: &[(String, Option<Role>)], force: bool) -> Result<(), AppError> {
    if let Some((bad, _)) = nodes.iter().find(|(n, _)| !is_node_id(n)) {
        return Err(AppError::Certs(format!(
            "invalid node id `{bad}`: expected {NODE_ID}"
        )));
    }
    // One file per id: a second role would overwrite the first.
    let mut seen = std::collections::HashSet::new();
    if let Some((twice, _)) = nodes.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(AppError::Certs(format!("`{twice}` is named twice")));
    }
    std::fs::create_dir_all(out)?;
    let (ca_pem, ca_key) = (out.join("ca.pem"), out.join("ca.key"));
    let ca = if !force && (ca_pem.exists() || ca_key.exists()) {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                AppError::Certs(format!(
                    "{}: {e} (pass --force to replace the CA)",
                    p.display()
                ))
            })
        };
        let ca = Ca::load(&read(&ca_pem)?, &read(&ca_key)?)
            .map_err(|e| AppError::Certs(format!("{}: {e}", ca_pem.display())))?;
        println!("using the CA in {}", ca_pem.display());
        ca
    } else {
        let ca = Ca::generate()?;
        // The key first: a certificate is never left without its key.
        write(&ca_key, &ca.key_pem(), 0o600)?;
        write(&ca_pem, &ca.cert_pem(), 0o644)?;
        println!("wrote {}", ca_pem.display());
        ca
    };
    for (node, role) in nodes {
        let cert = ca.issue(node, *role)?;
        let pem = out.join(format!("{node}.pem"));
        write(&out.join(format!("{node}.key")), &cert.key_pem, 0o600)?;
        write(&pem, &cert.cert_pem, 0o644)?;
        println!("wrote {}", pem.display());
    }
    Ok(())
}

/// Writes `path` whole or not at all, with exactly `mode`: a new file beside
/// it, synced, then renamed over it. Writing in place would keep an old
/// file's mode (a fresh private key in a world-readable file), fail half-way
/// on a read-only one, and leave half a file after a crash.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), AppError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The process's umask may have taken bits off `mode`.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pops(ids: &[&str]) -> Vec<(String, Option<Role>)> {
        roles(
            vec![],
            ids.iter().map(|&id| id.to_owned()).collect(),
            vec![],
        )
    }

    /// Each certificate names the role it was issued for, and an id is
    /// issued one role only.
    #[test]
    fn each_certificate_names_its_role() {
        use portico_backbone::pki::has_role;
        let dir = tempfile::tempdir().unwrap();
        let nodes = roles(
            vec!["origin-iad".into()],
            vec!["pop-fra".into()],
            vec!["edge".into()],
        );
        run(dir.path(), &nodes, false).unwrap();
        let leaf = |id: &str| {
            let pem = std::fs::read(dir.path().join(format!("{id}.pem"))).unwrap();
            rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap()
        };
        let has = |id: &str, role| has_role(&leaf(id), role);
        assert!(has("origin-iad", Role::Origin) && !has("origin-iad", Role::Pop));
        assert!(has("pop-fra", Role::Pop) && !has("pop-fra", Role::Origin));
        assert!(!has("edge", Role::Pop) && !has("edge", Role::Origin));
        let twice = roles(vec!["node-a".into()], vec!["node-a".into()], vec![]);
        let err = run(dir.path(), &twice, false).unwrap_err();
        assert_eq!(err.to_string(), "`node-a` is named twice");
        assert!(!dir.path().join("node-a.pem").exists());
    }

    #[test]
    fn writes_a_ca_and_node_certificates_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = roles(vec!["origin-iad".into()], vec!["pop-fra".into()], vec![]);
        run(dir.path(), &nodes, false).unwrap();
        for f in [
            "ca.pem",
            "ca.key",
            "origin-iad.pem",
            "origin-iad.key",
            "pop-fra.pem",
            "pop-fra.key",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let mode = std::fs::metadata(dir.path().join("pop-fra.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        // Another run adds nodes under the same CA.
        run(dir.path(), &pops(&["pop-new"]), false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        assert!(dir.path().join("pop-new.pem").is_file());
        // A CA key that is not the certificate's is refused, and nothing is written.
        let other = tempfile::tempdir().unwrap();
        run(other.path(), &[], false).unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let err = run(dir.path(), &pops(&["pop-x"]), false).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(!dir.path().join("pop-x.pem").exists());
        run(dir.path(), &nodes, true).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        let err = run(dir.path(), &pops(&["Bad_Name"]), true).unwrap_err();
        assert!(err.to_string().contains("invalid node id"), "{err}");
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A node called `ca` would overwrite the CA's own files.
    #[test]
    fn a_node_may_not_be_called_ca() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(dir.path(), &pops(&["ca"]), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid node id `ca`: expected [a-z0-9][a-z0-9-]{0,62}, not `ca` or `localhost`"
        );
        assert!(!dir.path().join("ca.pem").exists());
    }

    /// Files are replaced whole with their own mode: a read-only key is
    /// replaced, a world-readable one becomes the owner's, and nothing is
    /// left beside them.
    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &pops(&["pop-a"]), false).unwrap();
        let key = dir.path().join("ca.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let node_key = dir.path().join("pop-a.key");
        std::fs::set_permissions(&node_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = std::fs::read(&key).unwrap();
        run(dir.path(), &pops(&["pop-a"]), true).unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), before);
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(mode_of(&node_key), 0o600);
        assert_eq!(mode_of(&dir.path().join("ca.pem")), 0o644);
        // The new CA loads (its key and certificate belong together).
        run(dir.path(), &pops(&["pop-b"]), false).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
