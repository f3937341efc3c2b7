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
use rustls_pki_types::pem::PemObject;

use crate::BackboneError;

/// The common name of CAs made by [`Ca::generate`].
pub const CA_NAME: &str = "Portico backbone CA";

/// A CA with its private key, able to issue node certificates.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
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
        let params = Self::params()?;
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.self_signed(&key).map_err(pki_err)?;
        Ok(Ca {
            params,
            key,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
        })
    }

    /// A CA that [`Ca::generate`] made earlier, from its PEM files, to issue
    /// more node certificates. Refused when the key is not the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, BackboneError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| BackboneError::Pki(format!("CA certificate: {e}")))?;
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| BackboneError::Pki(format!("CA key: {e}")))?;
        // The certificate holds its public key verbatim.
        let spki = key.public_key_raw();
        if spki.is_empty() || !cert_der.windows(spki.len()).any(|w| w == spki) {
            return Err(BackboneError::Pki(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(Ca {
            params: Self::params()?,
            key,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// The CA's name and constraints (the same for every CA made here, so a
    /// loaded CA issues exactly as the one that was generated).
    fn params() -> Result<CertificateParams, BackboneError> {
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
        Ok(params)
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
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
    fn a_loaded_ca_issues_certificates_that_chain_to_it() {
        let ca = Ca::generate().unwrap();
        let again = Ca::load(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        chains_to(&ca, &again.issue("pop-new").unwrap(), "pop-new");
        let other = Ca::generate().unwrap();
        let err = Ca::load(&ca.cert_pem(), &other.key_pem()).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(Ca::load("garbage", &ca.key_pem()).is_err());
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_and_name_the_node() {
        let ca = Ca::generate().unwrap();
        let node = ca.issue("pop-fra").unwrap();
        chains_to(&ca, &node, "pop-fra");
        let other = rustls_pki_types::ServerName::try_from("pop-ams").unwrap();
        let ee = webpki::EndEntityCert::try_from(&node.cert_der).unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
    }

    fn chains_to(ca: &Ca, node: &NodeCert, id: &str) {
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
        for name in [id, "localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            ee.verify_is_valid_for_subject_name(&name).unwrap();
        }
    }
}
