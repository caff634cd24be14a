//! Bearer secrets: generation, hashing and constant-time comparison.
//!
//! A secret is `<prefix>_` + 256 random bits in base32. Only its SHA-256 digest is stored; the
//! plaintext exists once, in the response (or console output) that creates it.
//!
//! Secrets minted by the thousand (session tickets, agent session tokens, session cookies: the
//! prefixes in [`ORDERED_PREFIXES`]) are *ordered*: `<prefix>_` + a fresh id body (creation time
//! in milliseconds and 80 random bits, see [`crate::id`]) + the 256 random bits. Their stored
//! form leads with that body's value: the 16 bytes of the body, then the SHA-256 digest of the
//! whole secret. The unique index over
//! the stored form then grows at its end, like an id index, instead of gaining an entry at a
//! random place (a random page written per secret). The leading part is no secret (it is a
//! creation time and a random tag); the 256 random bits are stored only inside the digest.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Timestamp;
use crate::id::{base32_encode, decode_body, new_body, random_bytes, BODY_LEN};

/// The prefixes of the secrets minted in the ordered form (see the module documentation). A
/// secret with another prefix is stored as its digest alone whatever its shape: an operator's
/// own `tsk_` key may look like an ordered one, and must keep the stored form it always had.
pub const ORDERED_PREFIXES: [&str; 3] = [
    crate::ticket::TICKET_PREFIX,
    crate::ticket::SESSION_TOKEN_PREFIX,
    crate::identity::SESSION_COOKIE_PREFIX,
];

/// Number of leading characters of a secret shown in lists (`tsk_` + 8).
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// Base32 characters of 256 random bits.
const RANDOM_CHARS: usize = 52;
/// Bytes of a SHA-256 digest.
const DIGEST_LEN: usize = 32;
/// Bytes of an ordered secret's leading part (an id body's 128-bit value).
const ORDER_LEN: usize = 16;

/// The stored form of a secret: its SHA-256 digest, led by the secret's ordering part when it
/// has one (see the module documentation). The only form in which secrets are stored. `==`
/// is [`SecretHash::matches`]: constant-time too.
#[derive(Clone)]
pub struct SecretHash {
    bytes: [u8; ORDER_LEN + DIGEST_LEN],
    len: usize,
}

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        let mut bytes = [0u8; ORDER_LEN + DIGEST_LEN];
        let len = match ordering_part(secret) {
            Some(order) => {
                bytes[..ORDER_LEN].copy_from_slice(&order.to_be_bytes());
                bytes[ORDER_LEN..].copy_from_slice(&digest);
                ORDER_LEN + DIGEST_LEN
            }
            None => {
                bytes[..DIGEST_LEN].copy_from_slice(&digest);
                DIGEST_LEN
            }
        };
        Self { bytes, len }
    }

    /// A stored form read back: a digest alone (32 bytes) or led by an ordering part (48).
    pub fn from_bytes(stored: &[u8]) -> Option<Self> {
        if stored.len() != DIGEST_LEN && stored.len() != ORDER_LEN + DIGEST_LEN {
            return None;
        }
        let mut bytes = [0u8; ORDER_LEN + DIGEST_LEN];
        bytes[..stored.len()].copy_from_slice(stored);
        Some(Self {
            bytes,
            len: stored.len(),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Constant-time equality, so comparing a presented secret leaks no timing. (Only the
    /// length, which says whether the secret is of the ordered form, is compared first.)
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other)
    }
}

impl Eq for SecretHash {}

/// The value of an ordered secret's id body: `<prefix>_<26-char id body><52 random chars>`, with
/// one of the [`ORDERED_PREFIXES`].
fn ordering_part(secret: &str) -> Option<u128> {
    let (prefix, rest) = secret.split_once('_')?;
    if !ORDERED_PREFIXES.contains(&prefix) || rest.len() != BODY_LEN + RANDOM_CHARS {
        return None;
    }
    decode_body(rest.get(..BODY_LEN)?)
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A freshly generated secret. `Debug` never prints it.
#[derive(Clone)]
pub struct PlainSecret(String);

/// 256 fresh random bits in base32 ([`RANDOM_CHARS`] characters): every secret's secret part.
fn random_part() -> String {
    let mut bytes = [0u8; 32];
    random_bytes(&mut bytes);
    base32_encode(&bytes)
}

impl PlainSecret {
    /// A new secret `<prefix>_<52 base32 chars>` carrying 256 random bits.
    pub fn generate(prefix: &str) -> Self {
        Self(format!("{prefix}_{}", random_part()))
    }

    /// A new ordered secret `<prefix>_<26-char id body for now><52 base32 chars>` carrying
    /// 256 random bits besides the id body's 80 (see the module documentation). `prefix` is one
    /// of the [`ORDERED_PREFIXES`] (with another, the secret is stored as its digest alone).
    pub fn generate_ordered(prefix: &str, now: Timestamp) -> Self {
        debug_assert!(
            ORDERED_PREFIXES.contains(&prefix),
            "{prefix} is not ordered"
        );
        Self(format!("{prefix}_{}{}", new_body(now), random_part()))
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
        // `==` is the same constant-time comparison.
        assert!(s.hash() == SecretHash::of(s.expose()));
        assert!(s.hash() != SecretHash::of("tsk_other"));
        let ordered = PlainSecret::generate_ordered("tkt", Timestamp::from_millis(1));
        assert!(
            ordered.hash() != SecretHash::of(s.expose()),
            "lengths differ"
        );
        assert_eq!(s.display_prefix().len(), DISPLAY_PREFIX_LEN);
        assert!(!format!("{s:?}").contains(s.expose()));
    }

    #[test]
    fn ordered_secrets_are_stored_led_by_their_creation_order() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        let s = PlainSecret::generate_ordered("tkt", now);
        assert!(s.expose().starts_with("tkt_"));
        assert_eq!(s.expose().len(), 4 + BODY_LEN + RANDOM_CHARS);
        let body = &s.expose()[4..4 + BODY_LEN];
        assert!(crate::id::is_valid_body(body));
        let stored = s.hash();
        assert_eq!(stored.as_bytes().len(), ORDER_LEN + DIGEST_LEN);
        assert_eq!(
            stored.as_bytes()[..ORDER_LEN],
            decode_body(body).unwrap().to_be_bytes()
        );
        assert_eq!(
            stored.as_bytes()[ORDER_LEN..],
            Sha256::digest(s.expose().as_bytes())[..],
            "the rest is the digest of the whole secret"
        );
        assert!(stored.matches(&SecretHash::of(s.expose())));
        assert_eq!(
            SecretHash::from_bytes(stored.as_bytes()),
            Some(stored.clone())
        );

        // Stored forms sort by creation, even within one millisecond.
        let mut previous = stored;
        for at in [now, now, now.plus_millis(1), now.plus_secs(60)] {
            let next = PlainSecret::generate_ordered("tkt", at).hash();
            assert!(next.as_bytes() > previous.as_bytes());
            previous = next;
        }

        // Another secret with the same ordering part, or the same secret with another one, is
        // another stored form: the digest covers the whole secret.
        let random = &s.expose()[4 + BODY_LEN..];
        let other = PlainSecret::generate_ordered("tkt", now);
        let forged = format!("tkt_{body}{}", &other.expose()[4 + BODY_LEN..]);
        assert!(!SecretHash::of(&forged).matches(&s.hash()));
        let moved = format!("tkt_{}{random}", &other.expose()[4..4 + BODY_LEN]);
        assert!(!SecretHash::of(&moved).matches(&s.hash()));
    }

    #[test]
    fn secrets_of_other_shapes_are_stored_as_their_digest_alone() {
        let plain = PlainSecret::generate("tkt");
        for secret in [
            plain.expose().to_owned(),
            "tkt_short".to_owned(),
            "no underscore at all".to_owned(),
            // The right length, but the leading part is not an id body.
            format!("tkt_{}", "u".repeat(BODY_LEN + RANDOM_CHARS)),
            format!("tkt_9{}", "0".repeat(BODY_LEN + RANDOM_CHARS - 1)),
            // The shape of an ordered secret under another prefix: an operator's own key may
            // look like this, and was stored as its digest before ordered secrets existed.
            format!(
                "tsk_{}",
                &PlainSecret::generate_ordered("tkt", Timestamp::now()).expose()[4..]
            ),
            format!(
                "tca_{}",
                &PlainSecret::generate_ordered("tas", Timestamp::now()).expose()[4..]
            ),
        ] {
            let stored = SecretHash::of(&secret);
            assert_eq!(
                stored.as_bytes(),
                &Sha256::digest(secret.as_bytes())[..],
                "{secret}"
            );
        }
        assert!(!plain
            .hash()
            .matches(&PlainSecret::generate_ordered("tkt", Timestamp::now()).hash()));
        assert_eq!(SecretHash::from_bytes(&[0; 31]), None);
        assert_eq!(SecretHash::from_bytes(&[0; 40]), None);
        assert!(SecretHash::from_bytes(&[0; 32]).is_some());
        assert!(SecretHash::from_bytes(&[0; 48]).is_some());
    }

    #[test]
    fn operator_keys_must_be_strong() {
        assert!(validate_operator_secret_key("tsk_short").is_err());
        assert!(validate_operator_secret_key(&"x".repeat(60)).is_err());
        assert!(validate_operator_secret_key(&format!("tsk_{}", "a".repeat(51))).is_err());
        assert!(validate_operator_secret_key(&format!("tsk_{}!", "a".repeat(52))).is_err());
    }
}
