//! `portico certs --out DIR --nodes a,b,...`: a private CA for the backbone
//! and one certificate per node, for local topologies.
//!
//! Writes `ca.pem`, `ca.key` and `NODE.pem`/`NODE.key` for every node; keys
//! are readable by the owner only. When `DIR` already holds a CA, the nodes
//! are issued by it (adding nodes to a running deployment); it is replaced
//! only with `--force`, which every node certificate signed by it would not
//! survive.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use portico_backbone::pki::Ca;

use crate::AppError;

pub fn run(out: &Path, nodes: &[String], force: bool) -> Result<(), AppError> {
    if let Some(bad) = nodes.iter().find(|n| !is_node_id(n)) {
        return Err(AppError::Certs(format!(
            "invalid node id `{bad}`: expected [a-z0-9][a-z0-9-]{{0,62}}"
        )));
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
        write(&ca_pem, &ca.cert_pem(), 0o644)?;
        write(&ca_key, &ca.key_pem(), 0o600)?;
        println!("wrote {}", ca_pem.display());
        ca
    };
    for node in nodes {
        let cert = ca.issue(node)?;
        let pem = out.join(format!("{node}.pem"));
        write(&pem, &cert.cert_pem, 0o644)?;
        write(&out.join(format!("{node}.key")), &cert.key_pem, 0o600)?;
        println!("wrote {}", pem.display());
    }
    Ok(())
}

/// Node ids as the configuration accepts them (they become DNS names in SANs).
fn is_node_id(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), AppError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_ca_and_node_certificates_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = vec!["origin-iad".to_owned(), "pop-fra".to_owned()];
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
        run(dir.path(), &["pop-new".to_owned()], false).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        assert!(dir.path().join("pop-new.pem").is_file());
        // A CA key that is not the certificate's is refused, and nothing is written.
        let other = tempfile::tempdir().unwrap();
        run(other.path(), &[], false).unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let err = run(dir.path(), &["pop-x".to_owned()], false).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(!dir.path().join("pop-x.pem").exists());
        run(dir.path(), &nodes, true).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        let err = run(dir.path(), &["Bad_Name".to_owned()], true).unwrap_err();
        assert!(err.to_string().contains("invalid node id"), "{err}");
    }
}
