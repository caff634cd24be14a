//! Backend authentication: a deployment secret key in `Authorization: Bearer` (or `X-API-Key`
//! on `/api/v1/*`) becomes the caller's [`Scope`].

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tessera_domain::secret::SecretHash;
use tessera_domain::{Scope, SecretKeyId, Timestamp};

use crate::error::ApiError;
use crate::AppState;

/// An authenticated backend caller. Taking it as a handler argument is what makes a route
/// require a secret key; the scope it carries is the only one handlers pass to storage.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub scope: Scope,
    /// The key used: the actor of audit events.
    pub key_id: SecretKeyId,
}

/// Longest credential worth hashing; anything longer cannot be a key.
const MAX_CREDENTIAL_LEN: usize = 512;

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = presented_key(parts)?;
        if presented.len() > MAX_CREDENTIAL_LEN {
            return Err(ApiError::unauthorized("invalid secret key"));
        }
        let hash = SecretHash::of(presented);
        match state
            .store
            .authenticate_key(&hash, Timestamp::now())
            .await?
        {
            Some(key) => Ok(Caller {
                scope: key.scope,
                key_id: key.key_id,
            }),
            None => Err(ApiError::unauthorized(
                "invalid secret key (unknown or revoked)",
            )),
        }
    }
}

fn presented_key(parts: &Parts) -> Result<&str, ApiError> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
        let (scheme, token) = value.split_once(' ').ok_or_else(|| {
            ApiError::unauthorized("expected `Authorization: Bearer <secret key>`")
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::unauthorized(
                "expected `Authorization: Bearer <secret key>`",
            ));
        }
        return Ok(token.trim());
    }
    if parts.uri.path().starts_with("/api/v1/") {
        if let Some(value) = parts.headers.get("x-api-key") {
            return value
                .to_str()
                .map(str::trim)
                .map_err(|_| ApiError::unauthorized("malformed X-API-Key header"));
        }
    }
    Err(ApiError::unauthorized(
        "missing credentials: send `Authorization: Bearer <secret key>`",
    ))
}
