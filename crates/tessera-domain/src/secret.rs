//! Bearer secrets: generation, hashing and constant-time comparison.
//!
//! A secret is `<prefix>_` + 256 random bits in base32. Only its SHA-256 digest is stored; the
//! plaintext exists once, in the response (or console output) that creates it.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::id::{base32_encode, random_bytes};

/// Number of leading characters of a secret shown in lists (`tsk_` + 8).
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// SHA-256 digest of a secret, the only form in which secrets are stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality, so comparing a presented secret leaks no timing.
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A freshly generated secret. `Debug` never prints it.
#[derive(Clone)]
pub struct PlainSecret(String);

impl PlainSecret {
    /// A new secret `<prefix>_<52 base32 chars>` carrying 256 random bits.
    pub fn generate(prefix: &str) -> Self {
        let mut bytes = [0u8; 32];
        random_bytes(&mut bytes);
        Self(format!("{prefix}_{}", base32_encode(&bytes)))
    }

    /// Wraps a secret supplied by an operator (e.g. `TESSERA_BOOTSTRAP_SECRET_KEY`).
    pub fn from_operator(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(&self.0)
    }

    /// The non-secret leading characters shown in lists.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(DISPLAY_PREFIX_LEN).collect()
    }
}

impl fmt::Debug for PlainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainSecret(<redacted>)")
    }
}

/// Prefix of backend secret keys.
pub const SECRET_KEY_PREFIX: &str = "tsk";

/// Checks an operator-supplied secret key: right prefix and at least 256 bits of base32/hex-ish
/// material, so automation cannot configure a guessable key by accident.
pub fn validate_operator_secret_key(value: &str) -> Result<(), &'static str> {
    let Some(body) = value.strip_prefix("tsk_") else {
        return Err("must start with `tsk_`");
    };
    if body.len() < 52 {
        return Err("must carry at least 256 bits (52 base32 characters after `tsk_`)");
    }
    if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("may contain only ASCII letters and digits after `tsk_`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_256_bits_and_hash_stably() {
        let s = PlainSecret::generate(SECRET_KEY_PREFIX);
        assert!(s.expose().starts_with("tsk_"));
        assert_eq!(s.expose().len(), 4 + 52);
        assert!(validate_operator_secret_key(s.expose()).is_ok());
        assert!(s.hash().matches(&SecretHash::of(s.expose())));
        assert!(!s.hash().matches(&SecretHash::of("tsk_other")));
        assert_eq!(s.display_prefix().len(), DISPLAY_PREFIX_LEN);
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    #[test]
    fn operator_keys_must_be_strong() {
        assert!(validate_operator_secret_key("tsk_short").is_err());
        assert!(validate_operator_secret_key(&"x".repeat(60)).is_err());
        assert!(validate_operator_secret_key(&format!("tsk_{}", "a".repeat(51))).is_err());
        assert!(validate_operator_secret_key(&format!("tsk_{}!", "a".repeat(52))).is_err());
    }
}
