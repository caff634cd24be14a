//! Password hashing with argon2id, and verification that takes the same time whether or not
//! the account exists.

use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::id::random_bytes;
use crate::identity::Password;

/// A stored password hash in PHC string format (`$argon2id$v=19$m=…`). `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a hash read from storage; `None` when it is not a PHC string.
    pub fn from_stored(raw: String) -> Option<Self> {
        argon2::PasswordHash::new(&raw).ok()?;
        Some(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

/// The hashing failed; only possible with invalid parameters, i.e. a bug.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// argon2id with OWASP's recommended minimum: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Result<Argon2<'static>, HashError> {
    let params = Params::new(19 * 1024, 2, 1, None).map_err(|e| HashError(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password with a fresh 128-bit salt.
pub fn hash_password(password: &Password) -> Result<PasswordHash, HashError> {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError(e.to_string()))?;
    let hash = hasher()?
        .hash_password(password.expose().as_bytes(), &salt)
        .map_err(|e| HashError(e.to_string()))?;
    Ok(PasswordHash(hash.to_string()))
}

/// Whether `presented` matches `stored`. With `stored = None` (unknown account, or an account
/// without a password) it verifies against a fixed dummy hash and answers `false`, so the
/// answer takes as long as for a real account.
pub fn verify_password(stored: Option<&PasswordHash>, presented: &Password) -> bool {
    let Ok(argon) = hasher() else {
        return false;
    };
    match stored {
        Some(hash) => match argon2::PasswordHash::new(hash.as_str()) {
            Ok(parsed) => argon
                .verify_password(presented.expose().as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        },
        None => {
            if let Some(dummy) = dummy_hash() {
                if let Ok(parsed) = argon2::PasswordHash::new(dummy.as_str()) {
                    // The result is irrelevant: only the time spent matters.
                    let _ = argon.verify_password(presented.expose().as_bytes(), &parsed);
                }
            }
            false
        }
    }
}

/// A hash of a random password nobody knows, made once per process with the same parameters
/// as real hashes.
fn dummy_hash() -> Option<&'static PasswordHash> {
    static DUMMY: OnceLock<Option<PasswordHash>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut bytes = [0u8; 24];
            random_bytes(&mut bytes);
            let password = Password::presented("", crate::id::base32_encode(&bytes)).ok()?;
            hash_password(&password).ok()
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_the_right_password() {
        let password = Password::new_choice("password", "correct horse battery".into()).unwrap();
        let hash = hash_password(&password).unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!hash.as_str().contains("horse"));
        assert!(verify_password(Some(&hash), &password));
        let wrong = Password::presented("password", "correct horse battery!".into()).unwrap();
        assert!(!verify_password(Some(&hash), &wrong));
        assert!(!verify_password(None, &password));
        // Salted: the same password hashes differently.
        assert_ne!(hash_password(&password).unwrap(), hash);
        assert!(PasswordHash::from_stored(hash.as_str().to_owned()).is_some());
        assert!(PasswordHash::from_stored("plain".into()).is_none());
        assert_eq!(format!("{hash:?}"), "PasswordHash(..)");
    }
}
