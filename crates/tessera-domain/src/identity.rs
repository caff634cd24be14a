//! End users of a deployment's app: users, organizations, memberships, browser sessions and the
//! audit log, with the validated values that create them.

use std::fmt;

use crate::id::{
    AuditEventId, DeploymentId, MembershipId, OrganizationId, SessionId, SigningKeyId, UserId,
};
use crate::password::PasswordHash;
use crate::secret::SecretHash;
use crate::validate::{Label, Metadata, ValidationError};
use crate::Timestamp;

/// Prefix of browser session cookie values (an ordered secret, see [`crate::secret`]).
pub const SESSION_COOKIE_PREFIX: &str = "tss";

/// An email address, normalized: surrounding whitespace removed and lower-cased, so that it is
/// unique per deployment however it is typed. The check is deliberately loose (one `@`, a
/// non-empty local part, a domain with a dot, no spaces or control characters, at most 254
/// characters): only a mail actually delivered proves an address.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(field: &str, raw: impl AsRef<str>) -> Result<Self, ValidationError> {
        let value = raw.as_ref().trim().to_lowercase();
        let invalid =
            || ValidationError::new(field, "must be an email address like name@example.com");
        if value.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if value.chars().count() > Self::MAX_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let Some((local, domain)) = value.split_once('@') else {
            return Err(invalid());
        };
        let domain_ok = !domain.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person's first or last name: 1-100 characters, no control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(field: &str, raw: impl Into<String>) -> Result<Self, ValidationError> {
        let value: String = raw.into();
        let len = value.chars().count();
        if value.trim().is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if len > 100 {
            return Err(ValidationError::new(
                field,
                format!("must be at most 100 characters (got {len})"),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A password as typed, before hashing. `Debug` never shows it and it cannot be serialized.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Fewer characters than this are refused (NIST SP 800-63B's floor).
    pub const MIN_CHARS: usize = 8;
    /// Longer inputs are refused so that hashing stays bounded in time and memory.
    pub const MAX_BYTES: usize = 1024;

    /// A new password someone chooses: at least [`Self::MIN_CHARS`] characters.
    pub fn new_choice(field: &str, raw: String) -> Result<Self, ValidationError> {
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(ValidationError::new(
                field,
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        Ok(Self(raw))
    }

    /// A password presented at sign-in. Length rules are not applied (they would tell an
    /// attacker nothing useful either way) beyond the size cap that bounds hashing.
    pub fn presented(field: &str, raw: String) -> Result<Self, ValidationError> {
        if raw.len() > Self::MAX_BYTES {
            return Err(ValidationError::new(
                field,
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A unique, URL-friendly organization handle: `[a-z0-9][a-z0-9-]*`, at most 63 characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OrganizationSlug(String);

impl OrganizationSlug {
    pub fn parse(field: &str, raw: impl Into<String>) -> Result<Self, ValidationError> {
        let value: String = raw.into();
        let b = value.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok {
            Ok(Self(value))
        } else {
            Err(ValidationError::new(
                field,
                "must be 1-63 characters matching [a-z0-9][a-z0-9-]*",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OrganizationSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// An end user. The password hash never leaves storage except for verification.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub metadata: serde_json::Value,
    pub has_password: bool,
    pub disabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A user with their password hash, for sign-in only.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: Option<PasswordHash>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub first_name: Option<PersonName>,
    pub last_name: Option<PersonName>,
    pub password_hash: Option<PasswordHash>,
    pub metadata: Metadata,
}

/// Changes to a user: `None` leaves a field as it is; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub email: Option<Email>,
    pub first_name: Option<Option<PersonName>>,
    pub last_name: Option<Option<PersonName>>,
    pub password_hash: Option<Option<PasswordHash>>,
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    pub id: OrganizationId,
    pub name: String,
    pub slug: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct NewOrganization {
    pub name: Label,
    pub slug: Option<OrganizationSlug>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub id: MembershipId,
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub role: Role,
    pub created_at: Timestamp,
}

/// A browser session. Its cookie value exists only in the browser; storage has its SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub struct BrowserSession {
    pub id: SessionId,
    pub deployment_id: DeploymentId,
    pub user_id: Option<UserId>,
    pub active_organization_id: Option<OrganizationId>,
    /// Set when a console admin or a backend signed the browser in as the user
    /// (an impersonation ticket): who did.
    pub impersonator: Option<crate::ticket::Issuer>,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// The idle limit: the session ends when unused for this long.
    pub idle_expires_at: Timestamp,
    /// The absolute limit, whatever the activity.
    pub expires_at: Timestamp,
}

/// What a new (or rotated) session row holds.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub hash: SecretHash,
    pub user_id: Option<UserId>,
    pub active_organization_id: Option<OrganizationId>,
    /// Who impersonates the user in this session (impersonation tickets), and with which ticket.
    pub impersonation: Option<(crate::ticket::Issuer, crate::TicketId)>,
    pub now: Timestamp,
    pub idle_expires_at: Timestamp,
    pub expires_at: Timestamp,
}

/// Who did something recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditActor {
    /// A backend caller, by the secret key it used.
    SecretKey(crate::SecretKeyId),
    /// A signed-in user.
    User(UserId),
    /// Nobody authenticated (a failed sign-in).
    Anonymous,
    /// An operator command run on the database.
    Operator,
    /// A console administrator of the installation.
    ConsoleAdmin(crate::AdminId),
}

impl AuditActor {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SecretKey(_) => "secret_key",
            Self::User(_) => "user",
            Self::Anonymous => "anonymous",
            Self::Operator => "operator",
            Self::ConsoleAdmin(_) => "console_admin",
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Self::SecretKey(id) => Some(id.as_str()),
            Self::User(id) => Some(id.as_str()),
            Self::ConsoleAdmin(id) => Some(id.as_str()),
            Self::Anonymous | Self::Operator => None,
        }
    }
}

/// The kinds of audited event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    SignedIn,
    SignedOut,
    SignInFailed,
    SecretKeyCreated,
    SecretKeyRevoked,
    UserCreated,
    UserDisabled,
    UserEnabled,
    UserDeleted,
    UserTokenCreated,
    ActiveOrganizationChanged,
    TicketCreated,
    TicketExchanged,
    TicketReplayed,
    ImpersonationStarted,
}

impl AuditKind {
    pub const ALL: &'static [AuditKind] = &[
        Self::SignedIn,
        Self::SignedOut,
        Self::SignInFailed,
        Self::SecretKeyCreated,
        Self::SecretKeyRevoked,
        Self::UserCreated,
        Self::UserDisabled,
        Self::UserEnabled,
        Self::UserDeleted,
        Self::UserTokenCreated,
        Self::ActiveOrganizationChanged,
        Self::TicketCreated,
        Self::TicketExchanged,
        Self::TicketReplayed,
        Self::ImpersonationStarted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignedIn => "user.signed_in",
            Self::SignedOut => "user.signed_out",
            Self::SignInFailed => "user.sign_in_failed",
            Self::SecretKeyCreated => "secret_key.created",
            Self::SecretKeyRevoked => "secret_key.revoked",
            Self::UserCreated => "user.created",
            Self::UserDisabled => "user.disabled",
            Self::UserEnabled => "user.enabled",
            Self::UserDeleted => "user.deleted",
            Self::UserTokenCreated => "user.token_created",
            Self::ActiveOrganizationChanged => "user.active_organization_changed",
            Self::TicketCreated => "session_ticket.created",
            Self::TicketExchanged => "session_ticket.exchanged",
            Self::TicketReplayed => "session_ticket.replayed",
            Self::ImpersonationStarted => "user.impersonation_started",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == raw)
    }
}

/// The client a request came from, as an audit event records it: its address and user agent,
/// when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditClient {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Who did a write whose audit event its own transaction records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBy {
    pub actor: AuditActor,
    pub client: AuditClient,
}

impl AuditBy {
    /// The event of `kind` about `subject` that this actor, from this client, caused.
    pub fn event(
        &self,
        kind: AuditKind,
        subject: Option<String>,
        data: serde_json::Value,
    ) -> NewAuditEvent {
        NewAuditEvent::new(kind, self.actor.clone(), subject, self.client.clone(), data)
    }
}

impl From<&crate::ticket::Issuer> for AuditActor {
    fn from(issuer: &crate::ticket::Issuer) -> Self {
        match issuer {
            crate::ticket::Issuer::SecretKey(id) => Self::SecretKey(id.clone()),
            crate::ticket::Issuer::ConsoleAdmin(id) => Self::ConsoleAdmin(id.clone()),
        }
    }
}

/// An audit log entry to record. `subject_id` names the object acted on (a user, a key).
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub kind: AuditKind,
    pub actor: AuditActor,
    pub subject_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub data: serde_json::Value,
}

impl NewAuditEvent {
    /// An event about `subject` with the client's details.
    pub fn new(
        kind: AuditKind,
        actor: AuditActor,
        subject: Option<String>,
        client: AuditClient,
        data: serde_json::Value,
    ) -> Self {
        Self {
            kind,
            actor,
            subject_id: subject,
            ip: client.ip,
            user_agent: client.user_agent,
            data,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: AuditEventId,
    pub kind: String,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub subject_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub data: serde_json::Value,
    pub created_at: Timestamp,
}

/// A stored token signing key: the public half in clear, the private half sealed.
#[derive(Clone, PartialEq)]
pub struct SigningKeyRecord {
    pub id: SigningKeyId,
    pub public_key: [u8; 32],
    /// The private key sealed with the installation's secrets key (`crypto::seal`).
    pub sealed_private_key: Vec<u8>,
    pub created_at: Timestamp,
    /// When a newer key replaced it; it stays published until tokens it signed expired.
    pub retired_at: Option<Timestamp>,
}

impl fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        let e = Email::parse("email", "  Ada.Lovelace@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "ada.lovelace@example.com");
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "ada@@example.com",
            "a b@example.com",
            "ada@example..com",
            "ada@.example.com",
        ] {
            let err = Email::parse("email", bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse("email", long).is_err());
    }

    #[test]
    fn passwords_have_a_floor_and_never_print() {
        assert!(Password::new_choice("password", "short".into()).is_err());
        let p = Password::new_choice("password", "correct horse".into()).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert!(Password::new_choice("password", "x".repeat(1025)).is_err());
        assert!(Password::presented("password", "x".into()).is_ok());
    }

    #[test]
    fn slugs_roles_and_kinds() {
        assert!(OrganizationSlug::parse("slug", "acme-2").is_ok());
        assert!(OrganizationSlug::parse("slug", "Acme").is_err());
        assert!(OrganizationSlug::parse("slug", "-acme").is_err());
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("owner"), None);
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(*kind));
        }
        assert!(PersonName::parse("first_name", " ").is_err());
        assert!(PersonName::parse("first_name", "Ada").is_ok());
    }
}
