//! A private CA for the backbone and the node certificates it signs.
//!
//! Every node gets one certificate usable both as a TLS server and as a TLS
//! client (extended key usages `serverAuth` and `clientAuth`): a PoP's
//! serves its public listeners in a local topology and dials origins, an
//! origin's serves both. Its subject alternative names are the node id
//! (which the PoP verifies as the origin's `server_name` and the origin
//! checks against the PoP's `Hello`), `localhost` and `127.0.0.1` for local
//! topologies, and the node's backbone role ([`role_name`]), which the other
//! end requires: an origin's certificate cannot dial an origin as a PoP, nor
//! a PoP's answer a PoP as an origin. A certificate issued without a role
//! serves public listeners only.

use portico_proto::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use time::{Duration, OffsetDateTime};

use crate::BackboneError;

/// The common name of CAs made by [`Ca::generate`].
pub const CA_NAME: &str = "Portico backbone CA";

/// How long a node certificate is valid: a leaked node key is trusted this
/// long at most (re-issue with `portico certs`, which keeps the CA).
pub const NODE_VALIDITY: Duration = Duration::days(2 * 365);
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(10 * 365);

/// The subject alternative name saying a certificate's node has `role` on
/// the backbone: a DNS name in the reserved `.invalid` top-level domain
/// (RFC 6761 §6.4), which no public CA issues for and no host answers to,
/// so that rustls-webpki checks it as it checks the node id.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Pop => "pop.role.portico.invalid",
        Role::Origin => "origin.role.portico.invalid",
    }
}

/// Whether the end-entity certificate `leaf` names `role` (its chain is
/// the TLS handshake's to check).
pub fn has_role(leaf: &CertificateDer<'_>, role: Role) -> bool {
    let Ok(name) = ServerName::try_from(role_name(role)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Whether `leaf` chains to `ca` for both of a node's uses, now.
fn verify(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>) -> Result<(), webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(ca)?;
    let ee = webpki::EndEntityCert::try_from(leaf)?;
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
        )?;
    }
    Ok(())
}

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
        let ca = Ca {
            params: Self::params()?,
            key,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        };
        // It issues with this module's CA name: a CA made elsewhere (another
        // name, or no CA at all) would sign certificates that chain to nothing.
        let probe = ca.issue("probe", None)?;
        verify(&ca.cert_der, &probe.cert_der).map_err(|e| {
            BackboneError::Pki(format!(
                "not a CA made by `portico certs` (its certificates would not verify: {e})"
            ))
        })?;
        Ok(ca)
    }

    /// The CA's name and constraints (the same for every CA made here, so a
    /// loaded CA issues exactly as the one that was generated).
    fn params() -> Result<CertificateParams, BackboneError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + CA_VALIDITY;
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
    /// valid for the node id, `localhost` and `127.0.0.1`, and naming the
    /// node's backbone `role` if it has one.
    pub fn issue(&self, node_id: &str, role: Option<Role>) -> Result<NodeCert, BackboneError> {
        let mut names = vec![
            node_id.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        names.extend(role.map(|r| role_name(r).to_owned()));
        let mut params = CertificateParams::new(names).map_err(pki_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        // ECDSA keys sign; RFC 5480 §3 rules out keyEncipherment for them.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // An hour back for clocks a little behind the one that issued it.
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + NODE_VALIDITY;
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
        chains_to(
            &ca,
            &again.issue("pop-new", Some(Role::Pop)).unwrap(),
            "pop-new",
        );
        let other = Ca::generate().unwrap();
        let err = Ca::load(&ca.cert_pem(), &other.key_pem()).err().unwrap();
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(Ca::load("garbage", &ca.key_pem()).is_err());
    }

    /// A CA of another name, or a node's certificate in the CA's place,
    /// would sign certificates that chain to nothing: refused.
    #[test]
    fn a_ca_made_elsewhere_or_no_ca_at_all_is_refused() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Corporate root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let foreign = params.self_signed(&key).unwrap();
        let err = Ca::load(&foreign.pem(), &key.serialize_pem())
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a CA made by"), "{err}");
        let ca = Ca::generate().unwrap();
        let node = ca.issue("ca-like", None).unwrap();
        let err = Ca::load(&node.cert_pem, &node.key_pem).err().unwrap();
        assert!(err.to_string().contains("not a CA made by"), "{err}");
    }

    /// A node certificate ends: a leaked node key is not trusted for ever.
    #[test]
    fn node_certificates_expire() {
        let ca = Ca::generate().unwrap();
        let node = ca.issue("pop-fra", Some(Role::Pop)).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca.cert_der).unwrap();
        let ee = webpki::EndEntityCert::try_from(&node.cert_der).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let at = |secs: u64| {
            ee.verify_for_usage(
                algs.all,
                std::slice::from_ref(&anchor),
                &[],
                rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs)),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
        };
        let now = rustls_pki_types::UnixTime::now().as_secs();
        assert!(at(now).is_ok());
        let later = now + 3 * 365 * 86_400;
        assert!(matches!(
            at(later).err(),
            Some(webpki::Error::CertExpired { .. })
        ));
    }

    #[test]
    fn issued_certificates_chain_to_the_ca_and_name_the_node() {
        let ca = Ca::generate().unwrap();
        let node = ca.issue("pop-fra", Some(Role::Pop)).unwrap();
        chains_to(&ca, &node, "pop-fra");
        let other = rustls_pki_types::ServerName::try_from("pop-ams").unwrap();
        let ee = webpki::EndEntityCert::try_from(&node.cert_der).unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
    }

    /// A certificate names one backbone role, or none.
    #[test]
    fn a_certificate_names_its_role_and_no_other() {
        let ca = Ca::generate().unwrap();
        let pop = ca.issue("pop-fra", Some(Role::Pop)).unwrap();
        let origin = ca.issue("origin-iad", Some(Role::Origin)).unwrap();
        let public = ca.issue("edge", None).unwrap();
        assert!(has_role(&pop.cert_der, Role::Pop));
        assert!(!has_role(&pop.cert_der, Role::Origin));
        assert!(has_role(&origin.cert_der, Role::Origin));
        assert!(!has_role(&origin.cert_der, Role::Pop));
        for role in [Role::Pop, Role::Origin] {
            assert!(!has_role(&public.cert_der, role));
            assert!(!has_role(&ca.cert_der(), role));
            assert!(!has_role(&CertificateDer::from(vec![0x30, 0x03]), role));
        }
    }

    fn chains_to(ca: &Ca, node: &NodeCert, id: &str) {
        assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(node.key_pem.contains("PRIVATE KEY"));
        assert!(!format!("{node:?}").contains("PRIVATE"));
        verify(&ca.cert_der(), &node.cert_der).unwrap();
        let ee = webpki::EndEntityCert::try_from(&node.cert_der).unwrap();
        for name in [id, "localhost", "127.0.0.1"] {
            let name = rustls_pki_types::ServerName::try_from(name).unwrap();
            ee.verify_is_valid_for_subject_name(&name).unwrap();
        }
    }
}
