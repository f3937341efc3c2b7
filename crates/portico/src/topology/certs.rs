//! Certificates of a running topology: one private CA, and one certificate per
//! node (PoP or origin) valid for its node id, `localhost` and `127.0.0.1`, used
//! both on its public listeners (clients trust the CA) and on the backbone
//! (mutual TLS: both ends trust the same CA).
//!
//! Layout of the directory: `ca.pem`, and `NODE.pem` / `NODE.key` per node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{UpError, file_error};

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

fn pki(e: rcgen::Error) -> UpError {
    UpError::Certs(e.to_string())
}

/// Creates a CA and a certificate for each of `nodes` in `dir`.
pub fn generate(dir: &Path, nodes: &[String]) -> Result<Certs, UpError> {
    std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    let (ca_params, ca_key, ca_pem) = ca()?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let ca = dir.join("ca.pem");
    write(&ca, &ca_pem)?;
    let mut files = BTreeMap::new();
    for node in nodes {
        let (cert_pem, key_pem) = issue(&issuer, node)?;
        let paths = NodeCerts {
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
        };
        write(&paths.cert, &cert_pem)?;
        write(&paths.key, &key_pem)?;
        files.insert(node.clone(), paths);
    }
    Ok(Certs { ca, nodes: files })
}

fn write(path: &Path, text: &str) -> Result<(), UpError> {
    std::fs::write(path, text).map_err(file_error("writing", path))
}

fn ca() -> Result<(CertificateParams, KeyPair, String), UpError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Portico topology CA");
    dn.push(DnType::OrganizationName, "Portico");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(pki)?;
    let pem = params.self_signed(&key).map_err(pki)?.pem();
    Ok((params, key, pem))
}

fn issue(issuer: &Issuer<'_, &KeyPair>, node: &str) -> Result<(String, String), UpError> {
    let names = vec![
        node.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let mut params = CertificateParams::new(names).map_err(pki)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(pki)?;
    let cert = params.signed_by(&key, issuer).map_err(pki)?;
    Ok((cert.pem(), key.serialize_pem()))
}
