//! API keys: generation, the stored form (SHA-256, never the clear key), and
//! checking what a client presents in `x-api-key`.
//!
//! A key is 40 characters from `[A-Za-z0-9]` (about 238 bits), shown once when
//! created. Configuration and the backbone only ever carry `sha256:<hex>`.
//! A presented value that cannot be a key (empty, over 128 bytes, control
//! characters, anything outside `[A-Za-z0-9._~-]`) is refused before any
//! lookup, with the same 403 as an unknown key so probing learns nothing.

use http::HeaderMap;
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// The header clients present keys in (API Gateway's).
pub const HEADER: &str = "x-api-key";
/// Length of generated keys.
pub const GENERATED_LEN: usize = 40;
/// Longest value accepted as a key.
pub const MAX_LEN: usize = 128;
/// Shortest value accepted as a key (API Gateway's minimum).
pub const MIN_LEN: usize = 20;

/// The SHA-256 of a key: what is stored and looked up.
pub type KeyHash = [u8; 32];

/// Why a presented key was refused (all map to 403 `Forbidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no x-api-key header")]
    Missing,
    #[error("more than one x-api-key header")]
    Repeated,
    #[error("x-api-key is not 20 to 128 characters of [A-Za-z0-9._~-]")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("API key is disabled")]
    Disabled,
}

impl KeyError {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyError::Missing => "missing",
            KeyError::Repeated => "repeated",
            KeyError::Malformed => "malformed",
            KeyError::Unknown => "unknown",
            KeyError::Disabled => "disabled",
        }
    }
}

/// A new random key, to be shown once.
pub fn generate() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(GENERATED_LEN)
        .map(char::from)
        .collect()
}

pub fn hash(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// The stored form, `sha256:<64 hex digits>`.
pub fn stored_form(key: &str) -> String {
    format!("sha256:{}", hex::encode(hash(key)))
}

/// Parses a stored form back into a hash.
pub fn parse_stored(stored: &str) -> Option<KeyHash> {
    let digits = stored.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

/// The hash of the key a request presents, if it presents a well-formed one.
pub fn presented(headers: &HeaderMap) -> Result<KeyHash, KeyError> {
    let mut values = headers.get_all(HEADER).iter();
    let value = values.next().ok_or(KeyError::Missing)?;
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    let bytes = value.as_bytes();
    if !is_well_formed(bytes) {
        return Err(KeyError::Malformed);
    }
    Ok(Sha256::digest(bytes).into())
}

/// A key a request can present: [`MIN_LEN`] to [`MAX_LEN`] characters of
/// `A-Z a-z 0-9 . _ ~ -`.
pub fn is_well_formed(key: &[u8]) -> bool {
    (MIN_LEN..=MAX_LEN).contains(&key.len())
        && key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_key(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
        h
    }

    #[test]
    fn generated_keys_round_trip_through_their_stored_form() {
        let key = generate();
        assert_eq!(key.len(), GENERATED_LEN);
        assert_ne!(key, generate());
        let stored = stored_form(&key);
        assert!(stored.starts_with("sha256:") && stored.len() == 71);
        assert_eq!(parse_stored(&stored), Some(hash(&key)));
        assert_eq!(presented(&with_key(key.as_bytes())), Ok(hash(&key)));
    }

    #[test]
    fn bad_presented_keys_are_refused_before_lookup() {
        assert_eq!(presented(&HeaderMap::new()), Err(KeyError::Missing));
        assert_eq!(presented(&with_key(b"short")), Err(KeyError::Malformed));
        assert_eq!(presented(&with_key(&[b'a'; 129])), Err(KeyError::Malformed));
        assert_eq!(
            presented(&with_key(b"abcdefghij\tabcdefghij")),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            presented(&with_key(b"abcdefghij abcdefghij")),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            presented(&with_key("abcdefghijklmnopqrst\u{e9}".as_bytes())),
            Err(KeyError::Malformed)
        );
        let mut twice = with_key(b"abcdefghijklmnopqrstu");
        twice.append(HEADER, HeaderValue::from_static("abcdefghijklmnopqrstv"));
        assert_eq!(presented(&twice), Err(KeyError::Repeated));
    }

    #[test]
    fn stored_forms_are_checked() {
        assert_eq!(parse_stored("md5:00"), None);
        assert_eq!(parse_stored("sha256:zz"), None);
        assert_eq!(parse_stored(&format!("sha256:{}", "0".repeat(63))), None);
    }
}
