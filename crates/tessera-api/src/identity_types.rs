//! Wire shapes of identity: users, organizations, memberships, sign-in, the signed-in user
//! (`/me`), user tokens, the JWKS and the audit log. Re-exported by [`crate::types`].

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

macro_rules! list_type {
    ($(#[$meta:meta])* $name:ident, $item:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            pub data: Vec<$item>,
            /// More items exist beyond this page in the direction of travel.
            pub has_more: bool,
            /// Id of the first item: pass as `before` for the previous page.
            #[serde(default)]
            pub first_id: Option<String>,
            /// Id of the last item: pass as `after` for the next page.
            #[serde(default)]
            pub last_id: Option<String>,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Users

/// An end user of the deployment's app. The password is never returned; `has_password` says
/// whether one is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    #[schema(example = "user_01jdq3z6x2v8m4k0t5r7w9y1bc")]
    pub id: String,
    /// Normalized: trimmed and lower-cased. Unique in the deployment.
    pub email: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub has_password: bool,
    /// A disabled user cannot sign in and has no sessions.
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// An email address, at most 254 characters; stored trimmed and lower-cased.
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// 1-100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// 1-100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// At least 8 characters (at most 1024 bytes). Without one the user cannot sign in with a
    /// password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A JSON object of at most 16 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// Changes to a user: absent fields stay as they are; `null` clears `first_name`,
/// `last_name` or `password`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub first_name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub last_name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, nullable)]
    pub password: Option<Option<String>>,
    /// Replaces the metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListUsersParams {
    /// Only the user with this email (normalized before comparing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

list_type!(
    /// A page of users.
    UserList,
    User
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedUser {
    pub id: String,
    pub deleted: bool,
}

/// Options of a user token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserTokenRequest {
    /// Lifetime in seconds, 60 … the configured maximum (default 900, maximum 3600 unless
    /// configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
}

/// A signed user token (a JWT signed with EdDSA), for `Authorization: Bearer` on the
/// user-authenticated endpoints (`/me`). Shown only in this response.
#[derive(Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserToken {
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds from now until it expires.
    pub expires_in: u32,
    /// When it expires (RFC 3339).
    pub expires_at: String,
}

// ---------------------------------------------------------------------------------------------
// Organizations and memberships

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    #[schema(example = "org_01jdq3z6x2v8m4k0t5r7w9y1bc")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub slug: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganizationRequest {
    /// 1-200 characters.
    #[schema(example = "Acme")]
    pub name: String,
    /// Unique in the deployment: `[a-z0-9][a-z0-9-]*`, at most 63 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
}

list_type!(
    /// A page of organizations.
    OrganizationList,
    Organization
);

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrganizationRole {
    Admin,
    Member,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrganizationMember {
    #[schema(example = "mem_01jdq3z6x2v8m4k0t5r7w9y1bc")]
    pub id: String,
    pub organization_id: String,
    pub user_id: String,
    pub role: OrganizationRole,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddOrganizationMemberRequest {
    pub user_id: String,
    pub role: OrganizationRole,
}

list_type!(
    /// A page of an organization's members.
    OrganizationMemberList,
    OrganizationMember
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RemovedOrganizationMember {
    pub organization_id: String,
    pub user_id: String,
    pub removed: bool,
}

// ---------------------------------------------------------------------------------------------
// Sign-in and the signed-in user

/// `POST /sign-in` as JSON (the page posts the same fields form-encoded).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub password: String,
    /// Where the page goes after signing in: a same-origin path such as `/agents`. Ignored by
    /// JSON callers except that it must be safe when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
}

/// One of the signed-in user's organizations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MeMembership {
    pub organization: Organization,
    pub role: OrganizationRole,
}

/// The signed-in user, their organizations and the session's active organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub user: User,
    pub memberships: Vec<MeMembership>,
    /// The browser session's active organization (`null` with a user token, or before one is
    /// chosen).
    #[serde(default)]
    pub active_organization: Option<Organization>,
    /// How the caller authenticated: `session` (browser cookie) or `token` (user token).
    pub authenticated_by: String,
    /// When the session or token ends (RFC 3339).
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetActiveOrganizationRequest {
    /// An organization the user is a member of.
    pub organization_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignedOut {
    pub signed_out: bool,
}

/// A public key of the token signing keys (RFC 8037 OKP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    /// `OKP`.
    pub kty: String,
    /// `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

/// The keys that verify Tessera's signed tokens; older keys stay until their tokens expired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

// ---------------------------------------------------------------------------------------------
// Audit log

/// Something security-relevant that happened in the deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    #[schema(example = "audit_01jdq3z6x2v8m4k0t5r7w9y1bc")]
    pub id: String,
    /// `user.signed_in`, `user.signed_out`, `user.sign_in_failed`, `secret_key.created`,
    /// `secret_key.revoked`, `user.created`, `user.disabled`, `user.enabled`, `user.deleted`,
    /// `user.token_created`, `user.active_organization_changed`, `session_ticket.created`
    /// (impersonation tickets), `user.impersonation_started` or `session_ticket.replayed`.
    pub kind: String,
    /// `secret_key`, `user`, `anonymous`, `console_admin` or `operator`.
    pub actor_type: String,
    #[serde(default)]
    pub actor_id: Option<String>,
    /// The object acted on (a user or key id).
    #[serde(default)]
    pub subject_id: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAuditEventsParams {
    /// Only events of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Return items that come before this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// Return items that come after this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

list_type!(
    /// A page of audit events, oldest first.
    AuditEventList,
    AuditEvent
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_patch_distinguishes_absent_from_null() {
        let r: UpdateUserRequest = serde_json::from_str(r#"{"password":null}"#).unwrap();
        assert_eq!(r.password, Some(None));
        assert_eq!(r.first_name, None);
        assert!(serde_json::from_str::<CreateUserRequest>(r#"{"email":"a","pw":"x"}"#).is_err());
    }
}

// Passwords and tokens never reach a log through `Debug`.

impl std::fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("email", &self.email)
            .field("first_name", &self.first_name)
            .field("last_name", &self.last_name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl std::fmt::Debug for UpdateUserRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateUserRequest")
            .field("email", &self.email)
            .field("first_name", &self.first_name)
            .field("last_name", &self.last_name)
            .field(
                "password",
                &self
                    .password
                    .as_ref()
                    .map(|p| p.as_ref().map(|_| "<redacted>")),
            )
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SignInRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInRequest")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

impl std::fmt::Debug for UserToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserToken")
            .field("token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn debug_never_shows_passwords_or_tokens() {
        let shown = format!(
            "{:?} {:?} {:?} {:?}",
            CreateUserRequest {
                email: "a@example.com".into(),
                password: Some("hunter2-secret".into()),
                ..Default::default()
            },
            UpdateUserRequest {
                password: Some(Some("hunter2-secret".into())),
                ..Default::default()
            },
            SignInRequest {
                email: "a@example.com".into(),
                password: "hunter2-secret".into(),
                redirect_url: None,
            },
            UserToken {
                token: "eyJ.hunter2-secret.sig".into(),
                token_type: "Bearer".into(),
                expires_in: 60,
                expires_at: "2026-12-01T00:00:00Z".into(),
            },
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("a@example.com"));
    }
}
