//! Mutual TLS on the backbone: both ends present a certificate from the
//! private CA and trust only that CA.
//!
//! TLS 1.3 only (QUIC requires it), ALPN [`ALPN`], and the ring provider
//! passed explicitly, so no process-wide provider has to be installed.

use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use portico_proto::Role;

use crate::settings::LinkSettings;
use crate::{BackboneError, pki};

/// ALPN of backbone links; its version tracks the framing version.
pub const ALPN: &[u8] = b"portico-bb/1";

/// Bytes quinn buffers for one connection attempt not yet answered,
/// beyond its first packet: a dozen more Initial packets.
const INCOMING_BUFFER: u64 = 16 * 1024;

/// The CA, this node's certificate chain and its private key.
pub struct TlsMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca.len())
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Tls(e.to_string())
}

impl TlsMaterial {
    /// Reads PEM files: the CA certificate(s), this node's chain and key.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, BackboneError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| BackboneError::ReadFile {
                path: path.to_owned(),
                source,
            })
        };
        let pem_err = |path: &Path, reason: String| BackboneError::Pem {
            path: path.to_owned(),
            reason,
        };
        let ca_certs = certs_from_pem(&read(ca)?).map_err(|r| pem_err(ca, r))?;
        let chain = certs_from_pem(&read(cert)?).map_err(|r| pem_err(cert, r))?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| pem_err(key, e.to_string()))?;
        Ok(TlsMaterial {
            ca: ca_certs,
            chain,
            key: key_der,
        })
    }

    /// Builds material from PEM text (tests and in-process topologies).
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<TlsMaterial, BackboneError> {
        let path = |what: &str| Path::new(what).to_owned();
        let pem_err = |what: &str, reason: String| BackboneError::Pem {
            path: path(what),
            reason,
        };
        Ok(TlsMaterial {
            ca: certs_from_pem(ca.as_bytes()).map_err(|r| pem_err("<ca>", r))?,
            chain: certs_from_pem(cert.as_bytes()).map_err(|r| pem_err("<cert>", r))?,
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| pem_err("<key>", e.to_string()))?,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, BackboneError> {
        let mut roots = RootCertStore::empty();
        for cert in &self.ca {
            roots.add(cert.clone()).map_err(tls_err)?;
        }
        Ok(Arc::new(roots))
    }

    /// This node's certificate must name `role` ([`pki::role_name`]): a
    /// node would otherwise start and have every link refused by its peers.
    fn require_role(&self, role: Role) -> Result<(), BackboneError> {
        match self.chain.first() {
            Some(leaf) if pki::has_role(leaf, role) => Ok(()),
            _ => Err(BackboneError::Tls(format!(
                "this node's certificate is not {}'s: it does not name `{}` \
                 (issue one with `portico certs --{}s NODE`)",
                match role {
                    Role::Pop => "a PoP",
                    Role::Origin => "an origin",
                },
                pki::role_name(role),
                role.as_str()
            ))),
        }
    }

    /// The origin's QUIC server config: a client certificate from the CA is
    /// required, so a PoP without one fails the handshake.
    pub fn server_config(&self, link: &LinkSettings) -> Result<quinn::ServerConfig, BackboneError> {
        self.require_role(Role::Origin)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .build()
            .map_err(tls_err)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(link.transport(true));
        // Connection attempts waiting for the accept loop, which answers
        // each at once (a Retry, a refusal, or a handshake task within
        // `max_handshakes`): quinn refuses more, and buffers for each only
        // the rest of its ClientHello (the backbone sends no 0-RTT data),
        // instead of 65 536 attempts and 100 MiB.
        let incoming = u64::from(link.max_handshakes).saturating_mul(4).max(16);
        config
            .max_incoming(usize::try_from(incoming).unwrap_or(usize::MAX))
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER.saturating_mul(incoming));
        Ok(config)
    }

    /// The PoP's QUIC client config: presents the node certificate and
    /// trusts only the CA, so an origin the PoP cannot verify is refused.
    pub fn client_config(&self, link: &LinkSettings) -> Result<quinn::ClientConfig, BackboneError> {
        self.require_role(Role::Pop)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(link.transport(false));
        Ok(config)
    }
}

fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

/// Whether the peer's (already CA-verified) leaf certificate names `node_id`
/// and the backbone `role` it plays on this link.
///
/// Binds the node id a PoP claims in `Hello` to its certificate, so one PoP
/// cannot speak (report usage, take quota leases) in another's name, and
/// each end's role to the CA's word, so an origin's certificate cannot
/// speak as a PoP nor a PoP's as an origin (push definitions, answer a
/// region's requests).
pub(crate) fn peer_is(conn: &quinn::Connection, node_id: &str, role: Role) -> bool {
    // Not `localhost` or `127.0.0.1`, which every node certificate names.
    if !portico_config::is_node_id(node_id) {
        return false;
    }
    let Some(identity) = conn.peer_identity() else {
        return false;
    };
    let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_id) else {
        return false;
    };
    chain.first().is_some_and(|der| {
        pki::has_role(der, role)
            && webpki::EndEntityCert::try_from(der)
                .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// The ALPN a connection negotiated.
pub(crate) fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    #[test]
    fn material_builds_both_configs() {
        let ca = Ca::generate().unwrap();
        let node = ca.issue("origin-a", Some(Role::Origin)).unwrap();
        let m = TlsMaterial::from_pem(&ca.cert_pem(), &node.cert_pem, &node.key_pem).unwrap();
        let link = LinkSettings::default();
        m.server_config(&link).unwrap();
        assert!(TlsMaterial::from_pem("nope", &node.cert_pem, &node.key_pem).is_err());
        let pop = ca.issue("pop-a", Some(Role::Pop)).unwrap();
        let p = TlsMaterial::from_pem(&ca.cert_pem(), &pop.cert_pem, &pop.key_pem).unwrap();
        p.client_config(&link).unwrap();
    }

    /// A node whose certificate is not of its role stops at start, saying
    /// how to get one, instead of having every link refused.
    #[test]
    fn a_node_needs_a_certificate_of_its_role() {
        let ca = Ca::generate().unwrap();
        let link = LinkSettings::default();
        let material = |role| {
            let node = ca.issue("node-a", role).unwrap();
            TlsMaterial::from_pem(&ca.cert_pem(), &node.cert_pem, &node.key_pem).unwrap()
        };
        let as_pop = "backbone TLS configuration: this node's certificate is not a PoP's: it does not name \
                      `pop.role.portico.invalid` (issue one with `portico certs --pops NODE`)";
        let as_origin = "backbone TLS configuration: this node's certificate is not an origin's: it does not name \
                         `origin.role.portico.invalid` (issue one with `portico certs --origins NODE`)";
        for role in [None, Some(Role::Origin)] {
            let err = material(role).client_config(&link).err().unwrap();
            assert_eq!(err.to_string(), as_pop);
        }
        for role in [None, Some(Role::Pop)] {
            let err = material(role).server_config(&link).err().unwrap();
            assert_eq!(err.to_string(), as_origin);
        }
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let p = Path::new("/nonexistent/x.pem");
        let err = TlsMaterial::from_files(p, p, p).unwrap_err();
        assert!(err.to_string().starts_with("reading /nonexistent/x.pem"));
    }
}
