//! TLS material for public listeners: PEM loading, SNI selection, self-signed
//! fallback.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::NetError;

/// The ring provider, used explicitly everywhere (no process-wide default needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its private key from PEM files.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, NetError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| NetError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| NetError::Pem {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(NetError::Pem {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| NetError::Pem {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| NetError::Pem {
        path: key.to_owned(),
        reason: e.to_string(),
    })
}

/// A fresh self-signed certificate for `names` (used when none is configured).
pub fn self_signed(names: &[String]) -> Result<CertifiedKey, NetError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| NetError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| NetError::SelfSigned(e.to_string()))?;
    CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider())
        .map_err(|e| NetError::SelfSigned(e.to_string()))
}

/// Picks a certificate by SNI: the first one valid for the name, else the first one.
///
/// Names are matched as webpki matches them (SAN DNS names, case-insensitive;
/// a `*.` wildcard for one leftmost label), so what we pick is what a client
/// will accept. Each certificate's names are read once, when the set is
/// installed: a handshake costs two hash lookups, however many custom domains
/// a listener serves. The set can be replaced while the listener runs (a
/// reload: renewed files, custom domains added); each handshake uses the set
/// in force when it began.
pub struct SniResolver {
    set: std::sync::RwLock<Arc<KeySet>>,
}

/// Certificates and, by name, the first of them valid for it.
struct KeySet {
    keys: Vec<Arc<CertifiedKey>>,
    /// Exact names, lower case.
    exact: HashMap<String, usize>,
    /// `*.example.com` as `example.com`, lower case.
    wildcard: HashMap<String, usize>,
}

impl KeySet {
    fn new(keys: Vec<Arc<CertifiedKey>>) -> Result<Self, NetError> {
        if keys.is_empty() {
            return Err(NetError::NoCertificate);
        }
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (index, key) in keys.iter().enumerate() {
            let Some(ee) = key
                .cert
                .first()
                .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
            else {
                continue;
            };
            for name in ee.valid_dns_names() {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_owned()).or_insert(index),
                    None => exact.entry(name).or_insert(index),
                };
            }
        }
        Ok(KeySet {
            keys,
            exact,
            wildcard,
        })
    }

    /// The first certificate valid for `sni`, else the first of all.
    fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let by_name = sni.and_then(|sni| {
            let name = sni.trim_end_matches('.').to_ascii_lowercase();
            let exact = self.exact.get(&name);
            let wildcard = name
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent));
            exact.into_iter().chain(wildcard).min().copied()
        });
        self.keys.get(by_name.unwrap_or(0))
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certificates", &self.set().keys.len())
            .finish()
    }
}

impl SniResolver {
    /// `keys` must not be empty; the first is the default.
    pub fn new(keys: Vec<Arc<CertifiedKey>>) -> Result<Self, NetError> {
        Ok(Self {
            set: std::sync::RwLock::new(Arc::new(KeySet::new(keys)?)),
        })
    }

    /// Serves `keys` from the next handshake on (`keys` must not be empty;
    /// the first is the default).
    pub fn replace(&self, keys: Vec<Arc<CertifiedKey>>) -> Result<(), NetError> {
        let set = Arc::new(KeySet::new(keys)?);
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        Ok(())
    }

    fn set(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .set
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.set().pick(hello.server_name()).cloned()
    }
}

/// Certificate files for one listener, as configured.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Builds the server config of a public TLS listener: TLS 1.2 and 1.3, ALPN
/// `h2` and `http/1.1`, SNI over `files` (a self-signed certificate for
/// `fallback_names` when `files` is empty).
pub fn server_config(
    files: &[CertFiles],
    fallback_names: &[String],
) -> Result<rustls::ServerConfig, NetError> {
    let keys = if files.is_empty() {
        tracing::warn!(names = ?fallback_names, "no certificate configured: using a self-signed certificate generated at start");
        vec![Arc::new(self_signed(fallback_names)?)]
    } else {
        load_keys(files)?
    };
    server_config_for(Arc::new(SniResolver::new(keys)?))
}

/// Every certificate and key of `files`, or the first that fails to load.
pub fn load_keys(files: &[CertFiles]) -> Result<Vec<Arc<CertifiedKey>>, NetError> {
    files
        .iter()
        .map(|f| load_certified_key(&f.cert, &f.key).map(Arc::new))
        .collect()
}

/// The listeners' server config, its certificates picked by `resolver`.
pub fn server_config_for(resolver: Arc<SniResolver>) -> Result<rustls::ServerConfig, NetError> {
    let mut config = rustls::ServerConfig::builder_with_provider(listener_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(NetError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// The ring provider with the listeners' cipher suite preference, which
/// they apply whatever the client's order: AES-128-GCM first, then
/// AES-256-GCM, then ChaCha20-Poly1305, for TLS 1.3 and 1.2 alike.
///
/// Clients (OpenSSL's, rustls's) list AES-256-GCM-SHA384 first; honouring
/// that made every handshake hash its transcript and derive its keys with
/// SHA-384, which ring runs without the CPU's SHA extensions (SHA-256 has
/// them): the largest user-space cost of a new connection at a PoP.
/// AES-128-GCM is what large CDNs prefer too, at a 128-bit security level.
///
/// Its X25519 key shares come from a pool made ahead of the handshakes
/// ([`crate::kx`]); the other groups are ring's, in ring's order.
fn listener_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let ring = rustls::crypto::ring::default_provider();
    let kx_groups = ring
        .kx_groups
        .iter()
        .map(|&group| {
            if group.name() == rustls::NamedGroup::X25519 {
                crate::kx::Pooled::x25519()
            } else {
                group
            }
        })
        .collect();
    Arc::new(CryptoProvider {
        kx_groups,
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..ring
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite as suite;
    use rustls::{CipherSuite, Connection, SupportedCipherSuite};

    /// Moves every pending TLS record from `from` to `to`.
    fn transfer(from: &mut Connection, to: &mut Connection) {
        let mut records = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut records).unwrap();
        }
        let mut rest = &records[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// The suite a listener picks for a client offering `offered`, in that order.
    fn negotiated(offered: Vec<SupportedCipherSuite>) -> Option<CipherSuite> {
        let key = Arc::new(self_signed(&["localhost".into()]).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(key.cert[0].clone()).unwrap();
        let provider = CryptoProvider {
            cipher_suites: offered,
            ..rustls::crypto::ring::default_provider()
        };
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut c =
            Connection::Client(rustls::ClientConnection::new(Arc::new(client), name).unwrap());
        let server =
            Arc::new(server_config_for(Arc::new(SniResolver::new(vec![key]).unwrap())).unwrap());
        let mut s = Connection::Server(rustls::ServerConnection::new(server).unwrap());
        while c.is_handshaking() || s.is_handshaking() {
            transfer(&mut c, &mut s);
            transfer(&mut s, &mut c);
        }
        s.negotiated_cipher_suite().map(|s| s.suite())
    }

    #[test]
    fn listeners_prefer_aes_128_whatever_the_client_order() {
        // rustls's and OpenSSL's clients list AES-256-GCM-SHA384 first.
        let default_order = rustls::crypto::ring::default_provider().cipher_suites;
        assert_eq!(
            default_order[0].suite(),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        assert_eq!(
            negotiated(default_order),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        // A client without AES-128 still gets what it offers.
        assert_eq!(
            negotiated(vec![suite::TLS13_CHACHA20_POLY1305_SHA256]),
            Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }

    #[test]
    fn listeners_take_x25519_key_shares_from_the_pool() {
        let groups: Vec<String> = listener_provider()
            .kx_groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect();
        assert!(groups[0].starts_with("Pooled"), "{groups:?}");
        assert!(groups[0].contains("X25519"), "{groups:?}");
        // The others stay ring's, in ring's order.
        let ring = rustls::crypto::ring::default_provider().kx_groups;
        assert_eq!(groups.len(), ring.len());
        for (ours, theirs) in listener_provider().kx_groups.iter().zip(ring) {
            assert_eq!(ours.name(), theirs.name());
        }
    }

    /// The certificate picked is the first whose names a client would
    /// accept for the SNI (checked with webpki itself), else the first.
    #[test]
    fn certificates_are_picked_by_name_as_clients_match_them() {
        let key = |names: &[&str]| {
            Arc::new(
                self_signed(&names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap(),
            )
        };
        let keys = vec![
            key(&["default.example"]),
            key(&["*.shop.example"]),
            key(&["a.shop.example", "b.example"]),
        ];
        let set = KeySet::new(keys.clone()).unwrap();
        for (sni, expected) in [
            (Some("b.example"), 2),
            (Some("B.Example."), 2),
            (Some("a.shop.example"), 1),
            (Some("x.shop.example"), 1),
            (Some("y.x.shop.example"), 0),
            (Some("shop.example"), 0),
            (Some("nope.example"), 0),
            (None, 0),
        ] {
            let picked = set.pick(sni).unwrap();
            assert!(Arc::ptr_eq(picked, &keys[expected]), "{sni:?}");
            // What webpki itself says of the pick, for a name it could match.
            if let Some(name) = sni.filter(|_| expected != 0) {
                let name =
                    rustls_pki_types::ServerName::try_from(name.trim_end_matches('.')).unwrap();
                let ee = webpki::EndEntityCert::try_from(&picked.cert[0]).unwrap();
                assert!(
                    ee.verify_is_valid_for_subject_name(&name).is_ok(),
                    "{sni:?}"
                );
            }
        }
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let err = load_certified_key(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("reading /nonexistent/c.pem:"),
            "{err}"
        );
    }
}
