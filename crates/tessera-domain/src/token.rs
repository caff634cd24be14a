//! Signed user tokens: compact JWS (EdDSA over Ed25519) built by hand, the JWKS form of the
//! public keys, and sealing of private keys at rest with ChaCha20-Poly1305.
//!
//! Only what Tessera needs of JOSE is implemented: header `{"alg":"EdDSA","kid","typ":"JWT"}`,
//! a JSON claims object, base64url without padding. Verification refuses every other `alg`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::id::{random_bytes, DeploymentId, SigningKeyId, UserId};
use crate::Timestamp;

/// The `aud` of user tokens: they authenticate a user to Tessera's user-facing API. Tokens
/// for other audiences (apps) cannot be used in their place.
pub const USER_TOKEN_AUDIENCE: &str = "tessera:user";

/// The installation's key for secrets at rest (32 bytes). `Debug` hides it.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

impl SecretsKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        random_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses 64 hexadecimal characters or 43 base64url characters (padding optional).
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let raw = raw.trim();
        if raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut bytes = [0u8; 32];
            for (i, slot) in bytes.iter_mut().enumerate() {
                *slot = u8::from_str_radix(&raw[2 * i..2 * i + 2], 16)
                    .map_err(|_| "is not hexadecimal")?;
            }
            return Ok(Self(bytes));
        }
        let decoded = URL_SAFE_NO_PAD
            .decode(raw.trim_end_matches('='))
            .map_err(|_| "must be 32 bytes as 64 hex characters or 43 base64url characters")?;
        <[u8; 32]>::try_from(decoded.as_slice())
            .map(Self)
            .map_err(|_| "must be 32 bytes as 64 hex characters or 43 base64url characters")
    }

    /// The form written to key files: 64 hex characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

/// A sealed value could not be opened: wrong key, wrong associated data, or tampering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decrypt: the secrets key differs from the one that encrypted it, or the data was altered")]
pub struct OpenError;

/// Encrypts `plaintext` bound to `aad`: a random 96-bit nonce followed by the ciphertext and tag.
pub fn seal(key: &SecretsKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.0));
    let mut nonce = [0u8; 12];
    random_bytes(&mut nonce);
    // Encryption cannot fail for inputs below the cipher's ~256 GiB limit.
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(12 + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Reverses [`seal`].
pub fn open(key: &SecretsKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < 12 + 16 {
        return Err(OpenError);
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    ChaCha20Poly1305::new(Key::from_slice(&key.0))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| OpenError)
}

/// An Ed25519 private key that signs tokens. `Debug` hides it.
pub struct TokenSigner {
    kid: SigningKeyId,
    key: SigningKey,
}

impl TokenSigner {
    /// A new random key with a new id.
    pub fn generate(now: Timestamp) -> Self {
        let mut seed = [0u8; 32];
        random_bytes(&mut seed);
        Self {
            kid: SigningKeyId::generate_at(now),
            key: SigningKey::from_bytes(&seed),
        }
    }

    pub fn kid(&self) -> &SigningKeyId {
        &self.kid
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The private key sealed for storage, bound to its id.
    pub fn seal(&self, secrets: &SecretsKey) -> Vec<u8> {
        seal(secrets, self.key.as_bytes(), self.kid.as_str().as_bytes())
    }

    /// Unseals a stored private key.
    pub fn unseal(
        kid: SigningKeyId,
        sealed: &[u8],
        secrets: &SecretsKey,
    ) -> Result<Self, OpenError> {
        let bytes = open(secrets, sealed, kid.as_str().as_bytes())?;
        let seed = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| OpenError)?;
        Ok(Self {
            kid,
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &UserClaims) -> String {
        self.sign_claims(claims)
    }

    /// A compact JWS of any claims object (user tokens, actor tokens of tools).
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> String {
        let header = serde_json::json!({"alg": "EdDSA", "kid": self.kid.as_str(), "typ": "JWT"});
        // Serializing plain data types to JSON cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let claims = serde_json::to_vec(claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The claims of a user token. `dep` is the deployment the user belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub dep: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token was refused. The HTTP answer is the same for all (401); this is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("unsupported header (alg must be EdDSA, kid required)")]
    Header,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("wrong issuer or audience")]
    Claims,
    #[error("expired")]
    Expired,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedUser {
    pub deployment_id: DeploymentId,
    pub user_id: UserId,
    /// `iat`, epoch seconds.
    pub issued_at: i64,
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// The `kid` of a token's header, before verification (to find the key).
pub fn token_kid(token: &str) -> Result<SigningKeyId, TokenError> {
    let header = token.split('.').next().ok_or(TokenError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Header);
    }
    let kid = header.kid.ok_or(TokenError::Header)?;
    SigningKeyId::parse(&kid).map_err(|_| TokenError::UnknownKey)
}

/// Checks a compact JWS's header (EdDSA with a kid) and signature against `public_key`, and
/// returns its claims as JSON. Claims (issuer, audience, expiry) are the caller's to check.
pub fn verify_signature(
    token: &str,
    public_key: &[u8; 32],
) -> Result<serde_json::Value, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let parsed: Header =
        serde_json::from_slice(&header_bytes).map_err(|_| TokenError::Malformed)?;
    if parsed.alg != "EdDSA" || parsed.kid.is_none() {
        return Err(TokenError::Header);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let signature = <[u8; 64]>::try_from(signature.as_slice())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .map_err(|_| TokenError::Signature)?;
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| TokenError::UnknownKey)?;
    let signing_input = &token[..header.len() + 1 + claims.len()];
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| TokenError::Signature)?;
    let claims = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&claims).map_err(|_| TokenError::Malformed)
}

/// Verifies a user token signed by `public_key` (the key named by its `kid`): signature,
/// algorithm, issuer, audience and expiry (`now_secs`, no leeway).
pub fn verify_user_token(
    token: &str,
    public_key: &[u8; 32],
    issuer: &str,
    now_secs: i64,
) -> Result<VerifiedUser, TokenError> {
    let claims: UserClaims = serde_json::from_value(verify_signature(token, public_key)?)
        .map_err(|_| TokenError::Malformed)?;
    if claims.iss != issuer || claims.aud != USER_TOKEN_AUDIENCE {
        return Err(TokenError::Claims);
    }
    if claims.exp <= now_secs {
        return Err(TokenError::Expired);
    }
    Ok(VerifiedUser {
        deployment_id: DeploymentId::parse(&claims.dep).map_err(|_| TokenError::Claims)?,
        user_id: UserId::parse(&claims.sub).map_err(|_| TokenError::Claims)?,
        issued_at: claims.iat,
        expires_at: claims.exp,
    })
}

/// The public JWK (RFC 8037 OKP) of a key: `{kty, crv, x, kid, alg, use}`.
pub fn public_jwk(kid: &SigningKeyId, public_key: &[u8; 32]) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(public_key),
        "kid": kid.as_str(),
        "alg": "EdDSA",
        "use": "sig",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> UserClaims {
        UserClaims {
            iss: "https://t.example".into(),
            aud: USER_TOKEN_AUDIENCE.into(),
            sub: UserId::generate().into_string(),
            dep: DeploymentId::generate().into_string(),
            iat: 100,
            exp,
        }
    }

    #[test]
    fn tokens_verify_and_refuse_tampering() {
        let signer = TokenSigner::generate(Timestamp::now());
        let c = claims(1_000);
        let token = signer.sign(&c);
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(&token_kid(&token).unwrap(), signer.kid());
        let ok = verify_user_token(&token, &signer.public_key(), "https://t.example", 999).unwrap();
        assert_eq!(ok.user_id.as_str(), c.sub);
        assert_eq!(ok.deployment_id.as_str(), c.dep);
        assert_eq!(
            verify_user_token(&token, &signer.public_key(), "https://t.example", 1_000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_user_token(&token, &signer.public_key(), "https://other", 1),
            Err(TokenError::Claims)
        );
        let other = TokenSigner::generate(Timestamp::now());
        assert_eq!(
            verify_user_token(&token, &other.public_key(), "https://t.example", 1),
            Err(TokenError::Signature)
        );
        // Changing the claims breaks the signature.
        let mut forged = claims(5_000);
        forged.sub = c.sub.clone();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], forged_body, parts[2]);
        assert_eq!(
            verify_user_token(&tampered, &signer.public_key(), "https://t.example", 1),
            Err(TokenError::Signature)
        );
        // `alg: none` and friends are refused before any key is looked up.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"x"}"#),
            parts[1]
        );
        assert_eq!(token_kid(&none), Err(TokenError::Header));
        assert!(verify_user_token(&none, &signer.public_key(), "https://t.example", 1).is_err());
        let mut wrong_aud = claims(5_000);
        wrong_aud.aud = "app_1".into();
        let app_token = signer.sign(&wrong_aud);
        assert_eq!(
            verify_user_token(&app_token, &signer.public_key(), "https://t.example", 1),
            Err(TokenError::Claims)
        );
    }

    #[test]
    fn private_keys_seal_and_unseal_only_with_the_same_key() {
        let secrets = SecretsKey::generate();
        let signer = TokenSigner::generate(Timestamp::now());
        let sealed = signer.seal(&secrets);
        let again = TokenSigner::unseal(signer.kid().clone(), &sealed, &secrets).unwrap();
        assert_eq!(again.public_key(), signer.public_key());
        assert!(
            TokenSigner::unseal(signer.kid().clone(), &sealed, &SecretsKey::generate()).is_err()
        );
        let other_kid = SigningKeyId::generate();
        assert!(TokenSigner::unseal(other_kid, &sealed, &secrets).is_err());
        assert!(!format!("{secrets:?}{signer:?}").contains(&secrets.to_hex()));
    }

    #[test]
    fn secrets_keys_parse_hex_and_base64url() {
        let key = SecretsKey::generate();
        let hex = key.to_hex();
        assert_eq!(SecretsKey::parse(&hex).unwrap().to_hex(), hex);
        let b64 = URL_SAFE_NO_PAD.encode(key.0);
        assert_eq!(SecretsKey::parse(&b64).unwrap().to_hex(), hex);
        assert!(SecretsKey::parse("short").is_err());
        assert!(SecretsKey::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn jwks_entries_are_okp() {
        let signer = TokenSigner::generate(Timestamp::now());
        let jwk = public_jwk(signer.kid(), &signer.public_key());
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
    }
}
