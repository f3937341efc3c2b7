//! A private CA for the backbone and the node certificates it signs.
//!
//! Every node (PoP or origin) gets one certificate usable both as a TLS
//! server and as a TLS client (extended key usages `serverAuth` and
//! `clientAuth`), because both ends authenticate each other. Its subject
//! alternative names are the node id (which the PoP verifies as the origin's
//! `server_name` and the origin checks against the PoP's `Hello`),
//! `localhost` and `127.0.0.1` for local topologies.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;

use crate::BackboneError;

/// The common name of CAs made by [`Ca::generate`].
pub const CA_NAME: &str = "Portico backbone CA";

/// A CA with its private key, able to issue node certificates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A node certificate and its private key, in PEM.
#[derive(Clone)]
pub struct NodeCert {
    pub node_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("NodeCert")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn pki_err(e: rcgen::Error) -> BackboneError {
    BackboneError::Pki(e.to_string())
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256) that may sign end-entity
    /// certificates only (path length 0).
    pub fn generate() -> Result<Ca, BackboneError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_NAME);
        dn.push(DnType::OrganizationName, "Portico");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.self_signed(&key).map_err(pki_err)?;
        Ok(Ca { params, key, cert })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Signs a certificate for `node_id` (a DNS label such as `pop-fra`),
    /// valid for the node id, `localhost` and `127.0.0.1`.
    pub fn issue(&self, node_id: &str) -> Result<NodeCert, BackboneError> {
        let names = vec![
            node_id.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let mut params = CertificateParams::new(names).map_err(pki_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(pki_err)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
        Ok(NodeCert {
            node_id: node_id.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca_and_name_the_node() {
        let ca = Ca::generate().unwrap();
        let node = ca.issue("pop-fra").unwrap();
        assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(node.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{node:?}").contains("PRIVATE"));
        let ca_der = ca.cert_der();
        let anchor = webpki::anchor_from_trusted_cert(&ca_der).unwrap();
        let ee = webpki::EndEntityCert::try_from(&node.cert_der).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let now = rustls_pki_types::UnixTime::now();
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            ee.verify_for_usage(
                algs.all,
                std::slice::from_ref(&anchor),
                &[],
                now,
                usage,
                None,
                None,
            )
            .unwrap();
        }
        for name in ["pop-fra", "localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            ee.verify_is_valid_for_subject_name(&name).unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("pop-ams").unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
    }
}
