//! Session tickets and agent sessions: the field rules of a ticket request, the stored records,
//! and the secrets (tickets, agent-session tokens) they are built on.
//!
//! A ticket is a single-use, time-bound bearer secret (`tkt_`, an id body and 256 random bits,
//! an ordered secret: see [`crate::secret`]) minted by a deployment's backend (or a console
//! admin) and redeemed once by a browser. Redeeming an `agent_access` ticket opens an *agent
//! session*: an actor, the agents it may talk to and the context group its conversations live
//! in, with a lifetime of its own.

use serde::{Deserialize, Serialize};

use crate::id::{ActorId, AdminId, AgentId, AgentSessionId, SecretKeyId, TicketId, UserId};
use crate::thread::ContextGroup;
use crate::validate::ValidationError;
use crate::Timestamp;

/// Prefix of session tickets.
pub const TICKET_PREFIX: &str = "tkt";
/// Prefix of agent-session bearer tokens (the exchange's `session_token`).
pub const SESSION_TOKEN_PREFIX: &str = "tas";
/// Prefix of console admin session tokens.
pub const CONSOLE_TOKEN_PREFIX: &str = "tca";
/// Most agents one ticket may name.
pub const MAX_TICKET_AGENTS: usize = 20;

/// The four kinds of ticket, each opening its own vanity page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketType {
    AgentAccess,
    Impersonation,
    ApiAuthAccess,
    WebhookAppAccess,
}

impl TicketType {
    pub const ALL: &'static [TicketType] = &[
        Self::AgentAccess,
        Self::Impersonation,
        Self::ApiAuthAccess,
        Self::WebhookAppAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentAccess => "agent_access",
            Self::Impersonation => "impersonation",
            Self::ApiAuthAccess => "api_auth_access",
            Self::WebhookAppAccess => "webhook_app_access",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| t.as_str() == raw)
    }

    /// The page the ticket URL opens, on the host named by [`TicketType::on_frontend`].
    pub fn page(self) -> &'static str {
        match self {
            Self::AgentAccess => "/vanity/agents",
            Self::Impersonation => "/sign-in",
            Self::ApiAuthAccess => "/vanity/api-auth",
            Self::WebhookAppAccess => "/vanity/webhook",
        }
    }

    /// Impersonation URLs go to the app's own (frontend) host; the others to the backend host.
    pub fn on_frontend(self) -> bool {
        matches!(self, Self::Impersonation)
    }
}

/// Which kind of app an `api_auth_access` / `webhook_app_access` ticket manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    ApiAuth,
    Webhook,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiAuth => "api_auth",
            Self::Webhook => "webhook",
        }
    }
}

/// An app's slug: `[a-z0-9][a-z0-9-]*`, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AppSlug(String);

impl AppSlug {
    pub fn parse(field: &str, raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let bytes = raw.as_bytes();
        let lower = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && lower(&bytes[0])
            && bytes.iter().all(|b| lower(b) || *b == b'-');
        if ok {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                field,
                "must be 1-63 characters of [a-z0-9-], starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How an agent_access ticket picks the conversations it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "name", rename_all = "snake_case")]
pub enum SessionMode {
    /// The ticket's own `context_group`.
    Static,
    /// The signed-in browser user's group, `user:<user_id>`, decided at exchange.
    Signin,
    /// A stored named session, resumed by its name (created on first use).
    Named(SessionName),
}

impl SessionMode {
    /// `static` (and absent), `signin`, or any other string: a named session.
    pub fn parse(field: &str, raw: Option<&str>) -> Result<Self, ValidationError> {
        match raw {
            None | Some("static") => Ok(Self::Static),
            Some("signin") => Ok(Self::Signin),
            Some(name) => SessionName::parse(field, name).map(Self::Named),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Static => "static",
            Self::Signin => "signin",
            Self::Named(name) => name.as_str(),
        }
    }
}

/// A named session's name: 1-256 characters of `[A-Za-z0-9:_.@-]` (as context groups).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionName(String);

impl SessionName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, ValidationError> {
        ContextGroup::parse(field, raw)
            .map(|g| Self(g.as_str().to_owned()))
            .map_err(|_| {
                ValidationError::new(
                    field,
                    "must be `static`, `signin` or a session name of 1-256 characters of [A-Za-z0-9:_.@-]",
                )
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A ticket request as received, before its rules are checked. Strings, not ids, so that each
/// mistake can be reported against its field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TicketRequest {
    pub ticket_type: String,
    pub agent_ids: Option<Vec<String>>,
    pub actor_id: Option<String>,
    pub user_id: Option<String>,
    pub agent_session_identifier: Option<String>,
    pub context_group: Option<String>,
    pub expires_in: Option<i64>,
    pub api_auth_app_slug: Option<String>,
    pub webhook_app_slug: Option<String>,
}

/// Who an agent_access ticket binds the session to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Binding {
    /// Neither user nor actor: the exchange creates a fresh `anonymous` actor.
    Anonymous,
    /// An existing actor (a service, a team…).
    Actor(ActorId),
    /// A user of the deployment: actor `user`/`<user_id>`, found or created.
    User(UserId),
}

/// What the ticket grants, once its rules hold. Stored with the ticket (as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TicketGrant {
    AgentAccess {
        agent_ids: Vec<AgentId>,
        binding: Binding,
        mode: SessionMode,
        /// Required for `static`, absent for `signin`, optional for a named session that
        /// already exists.
        context_group: Option<ContextGroup>,
    },
    Impersonation {
        user_id: UserId,
    },
    App {
        kind: AppKind,
        slug: AppSlug,
    },
}

impl TicketGrant {
    pub fn ticket_type(&self) -> TicketType {
        match self {
            Self::AgentAccess { .. } => TicketType::AgentAccess,
            Self::Impersonation { .. } => TicketType::Impersonation,
            Self::App {
                kind: AppKind::ApiAuth,
                ..
            } => TicketType::ApiAuthAccess,
            Self::App {
                kind: AppKind::Webhook,
                ..
            } => TicketType::WebhookAppAccess,
        }
    }
}

/// A ticket request whose every field rule holds (references are checked by storage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSpec {
    pub grant: TicketGrant,
    /// Seconds until the ticket can no longer be redeemed.
    pub expires_in: u32,
}

/// Bounds of `expires_in`, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketLimits {
    pub default_expires_in: u32,
    pub max_expires_in: u32,
}

impl Default for TicketLimits {
    fn default() -> Self {
        Self {
            default_expires_in: 900,
            max_expires_in: 86_400,
        }
    }
}

fn refuse(field: &str, message: impl Into<String>) -> ValidationError {
    ValidationError::new(field, message)
}

/// `field` may only be sent with `allowed`.
fn only_for(field: &str, present: bool, allowed: &str) -> Result<(), ValidationError> {
    if present {
        Err(refuse(
            field,
            format!("is only accepted for {allowed} tickets"),
        ))
    } else {
        Ok(())
    }
}

fn parse_id<T>(
    field: &str,
    raw: &str,
    parse: fn(&str) -> Result<T, crate::id::IdParseError>,
) -> Result<T, ValidationError> {
    parse(raw).map_err(|e| refuse(field, e.to_string()))
}

impl TicketSpec {
    /// Checks every field rule of SPEC §3 (and nothing that needs storage).
    pub fn parse(req: TicketRequest, limits: TicketLimits) -> Result<Self, ValidationError> {
        let ticket_type = TicketType::parse(&req.ticket_type).ok_or_else(|| {
            refuse(
                "ticket_type",
                "must be one of agent_access, impersonation, api_auth_access, webhook_app_access",
            )
        })?;
        let expires_in = match req.expires_in {
            None => limits.default_expires_in.min(limits.max_expires_in),
            Some(s) if s >= 1 && s <= i64::from(limits.max_expires_in) => s as u32,
            Some(_) => {
                return Err(refuse(
                    "expires_in",
                    format!("must be 1-{} seconds", limits.max_expires_in),
                ))
            }
        };
        let is = |t: TicketType| ticket_type == t;
        only_for(
            "agent_ids",
            req.agent_ids.is_some() && !is(TicketType::AgentAccess),
            "agent_access",
        )?;
        only_for(
            "actor_id",
            req.actor_id.is_some() && !is(TicketType::AgentAccess),
            "agent_access",
        )?;
        only_for(
            "agent_session_identifier",
            req.agent_session_identifier.is_some() && !is(TicketType::AgentAccess),
            "agent_access",
        )?;
        only_for(
            "context_group",
            req.context_group.is_some() && !is(TicketType::AgentAccess),
            "agent_access",
        )?;
        only_for(
            "user_id",
            req.user_id.is_some() && !is(TicketType::AgentAccess) && !is(TicketType::Impersonation),
            "agent_access and impersonation",
        )?;
        only_for(
            "api_auth_app_slug",
            req.api_auth_app_slug.is_some() && !is(TicketType::ApiAuthAccess),
            "api_auth_access",
        )?;
        only_for(
            "webhook_app_slug",
            req.webhook_app_slug.is_some() && !is(TicketType::WebhookAppAccess),
            "webhook_app_access",
        )?;
        let grant = match ticket_type {
            TicketType::AgentAccess => agent_access(req)?,
            TicketType::Impersonation => {
                let raw = req
                    .user_id
                    .ok_or_else(|| refuse("user_id", "is required for impersonation tickets"))?;
                TicketGrant::Impersonation {
                    user_id: parse_id("user_id", &raw, UserId::parse)?,
                }
            }
            TicketType::ApiAuthAccess => TicketGrant::App {
                kind: AppKind::ApiAuth,
                slug: AppSlug::parse(
                    "api_auth_app_slug",
                    req.api_auth_app_slug.ok_or_else(|| {
                        refuse(
                            "api_auth_app_slug",
                            "is required for api_auth_access tickets",
                        )
                    })?,
                )?,
            },
            TicketType::WebhookAppAccess => TicketGrant::App {
                kind: AppKind::Webhook,
                slug: AppSlug::parse(
                    "webhook_app_slug",
                    req.webhook_app_slug.ok_or_else(|| {
                        refuse(
                            "webhook_app_slug",
                            "is required for webhook_app_access tickets",
                        )
                    })?,
                )?,
            },
        };
        Ok(Self { grant, expires_in })
    }
}

fn agent_access(req: TicketRequest) -> Result<TicketGrant, ValidationError> {
    let raw_agents = req.agent_ids.unwrap_or_default();
    if raw_agents.is_empty() {
        return Err(refuse(
            "agent_ids",
            "is required for agent_access tickets: name at least one agent",
        ));
    }
    if raw_agents.len() > MAX_TICKET_AGENTS {
        return Err(refuse(
            "agent_ids",
            format!("may name at most {MAX_TICKET_AGENTS} agents"),
        ));
    }
    let mut agent_ids: Vec<AgentId> = Vec::with_capacity(raw_agents.len());
    for (i, raw) in raw_agents.iter().enumerate() {
        let field = format!("agent_ids[{i}]");
        let id = parse_id(&field, raw, AgentId::parse)?;
        if agent_ids.contains(&id) {
            return Err(refuse(&field, "names the same agent twice"));
        }
        agent_ids.push(id);
    }
    let mode = SessionMode::parse(
        "agent_session_identifier",
        req.agent_session_identifier.as_deref(),
    )?;
    let binding = match (req.actor_id, req.user_id) {
        (Some(_), Some(_)) => {
            return Err(refuse(
                "user_id",
                "send either actor_id or user_id, not both",
            ))
        }
        (Some(actor), None) => Binding::Actor(parse_id("actor_id", &actor, ActorId::parse)?),
        (None, Some(user)) => Binding::User(parse_id("user_id", &user, UserId::parse)?),
        (None, None) => Binding::Anonymous,
    };
    let context_group = req
        .context_group
        .map(|g| ContextGroup::parse("context_group", g))
        .transpose()?;
    match (&mode, &context_group, &binding) {
        (SessionMode::Static, None, _) => {
            return Err(refuse(
                "context_group",
                "is required for static sessions (agent_session_identifier `static` or absent)",
            ))
        }
        (SessionMode::Signin, Some(_), _) => {
            return Err(refuse(
                "context_group",
                "is derived as user:<user_id> in signin sessions; do not send it",
            ))
        }
        (SessionMode::Signin, None, Binding::Actor(_)) => {
            return Err(refuse(
                "actor_id",
                "signin sessions act for the signed-in user; do not send actor_id",
            ))
        }
        (SessionMode::Signin, None, Binding::User(_)) => {
            return Err(refuse(
                "user_id",
                "signin sessions act for the signed-in user; do not send user_id",
            ))
        }
        _ => {}
    }
    Ok(TicketGrant::AgentAccess {
        agent_ids,
        binding,
        mode,
        context_group,
    })
}

/// Who minted a ticket (and so who impersonates, for impersonation tickets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Issuer {
    SecretKey(SecretKeyId),
    ConsoleAdmin(AdminId),
}

impl Issuer {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SecretKey(_) => "secret_key",
            Self::ConsoleAdmin(_) => "console_admin",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::SecretKey(id) => id.as_str(),
            Self::ConsoleAdmin(id) => id.as_str(),
        }
    }
}

/// A stored ticket (never the ticket itself).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTicket {
    pub id: TicketId,
    pub grant: TicketGrant,
    pub issuer: Issuer,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub redeemed_at: Option<Timestamp>,
}

/// An agent session: who the agents work for, which agents, and where conversations live.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSession {
    pub id: AgentSessionId,
    pub ticket_id: TicketId,
    pub actor_id: ActorId,
    pub agent_ids: Vec<AgentId>,
    pub context_group: ContextGroup,
    /// The named session it resumes, if any.
    pub session_name: Option<String>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A console administrator (the password hash stays in storage).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleAdmin {
    pub id: AdminId,
    pub username: String,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TicketLimits {
        TicketLimits::default()
    }

    fn agent() -> String {
        AgentId::generate().into_string()
    }

    fn access() -> TicketRequest {
        TicketRequest {
            ticket_type: "agent_access".into(),
            agent_ids: Some(vec![agent()]),
            context_group: Some("workspace:1".into()),
            ..Default::default()
        }
    }

    fn field_of(req: TicketRequest) -> String {
        TicketSpec::parse(req, limits()).expect_err("refused").field
    }

    #[test]
    fn a_minimal_static_ticket_is_anonymous_for_900_seconds() {
        let spec = TicketSpec::parse(access(), limits()).unwrap();
        assert_eq!(spec.expires_in, 900);
        match spec.grant {
            TicketGrant::AgentAccess {
                binding,
                mode,
                context_group,
                ..
            } => {
                assert_eq!(binding, Binding::Anonymous);
                assert_eq!(mode, SessionMode::Static);
                assert_eq!(context_group.unwrap().as_str(), "workspace:1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_field_rule_names_its_field() {
        let cases: Vec<(TicketRequest, &str)> = vec![
            (
                TicketRequest {
                    ticket_type: "agent".into(),
                    ..access()
                },
                "ticket_type",
            ),
            (
                TicketRequest {
                    agent_ids: None,
                    ..access()
                },
                "agent_ids",
            ),
            (
                TicketRequest {
                    agent_ids: Some(vec![]),
                    ..access()
                },
                "agent_ids",
            ),
            (
                TicketRequest {
                    agent_ids: Some(vec!["x".into()]),
                    ..access()
                },
                "agent_ids[0]",
            ),
            (
                TicketRequest {
                    agent_ids: Some(vec![agent(), "actor_x".into()]),
                    ..access()
                },
                "agent_ids[1]",
            ),
            (
                TicketRequest {
                    agent_ids: Some((0..21).map(|_| agent()).collect()),
                    ..access()
                },
                "agent_ids",
            ),
            (
                TicketRequest {
                    context_group: None,
                    ..access()
                },
                "context_group",
            ),
            (
                TicketRequest {
                    context_group: Some("has space".into()),
                    ..access()
                },
                "context_group",
            ),
            (
                TicketRequest {
                    context_group: Some("x".repeat(257)),
                    ..access()
                },
                "context_group",
            ),
            (
                TicketRequest {
                    agent_session_identifier: Some("signin".into()),
                    ..access()
                },
                "context_group",
            ),
            (
                TicketRequest {
                    agent_session_identifier: Some("bad name!".into()),
                    ..access()
                },
                "agent_session_identifier",
            ),
            (
                TicketRequest {
                    actor_id: Some("nope".into()),
                    ..access()
                },
                "actor_id",
            ),
            (
                TicketRequest {
                    user_id: Some("nope".into()),
                    ..access()
                },
                "user_id",
            ),
            (
                TicketRequest {
                    actor_id: Some(ActorId::generate().into_string()),
                    user_id: Some(UserId::generate().into_string()),
                    ..access()
                },
                "user_id",
            ),
            (
                TicketRequest {
                    expires_in: Some(0),
                    ..access()
                },
                "expires_in",
            ),
            (
                TicketRequest {
                    expires_in: Some(86_401),
                    ..access()
                },
                "expires_in",
            ),
            (
                TicketRequest {
                    expires_in: Some(-5),
                    ..access()
                },
                "expires_in",
            ),
            (
                TicketRequest {
                    api_auth_app_slug: Some("a".into()),
                    ..access()
                },
                "api_auth_app_slug",
            ),
            (
                TicketRequest {
                    webhook_app_slug: Some("a".into()),
                    ..access()
                },
                "webhook_app_slug",
            ),
            (
                TicketRequest {
                    ticket_type: "impersonation".into(),
                    ..Default::default()
                },
                "user_id",
            ),
            (
                TicketRequest {
                    ticket_type: "impersonation".into(),
                    user_id: Some(UserId::generate().into_string()),
                    agent_ids: Some(vec![agent()]),
                    ..Default::default()
                },
                "agent_ids",
            ),
            (
                TicketRequest {
                    ticket_type: "impersonation".into(),
                    user_id: Some(UserId::generate().into_string()),
                    context_group: Some("g".into()),
                    ..Default::default()
                },
                "context_group",
            ),
            (
                TicketRequest {
                    ticket_type: "api_auth_access".into(),
                    ..Default::default()
                },
                "api_auth_app_slug",
            ),
            (
                TicketRequest {
                    ticket_type: "api_auth_access".into(),
                    api_auth_app_slug: Some("Bad".into()),
                    ..Default::default()
                },
                "api_auth_app_slug",
            ),
            (
                TicketRequest {
                    ticket_type: "api_auth_access".into(),
                    api_auth_app_slug: Some("ok".into()),
                    user_id: Some(UserId::generate().into_string()),
                    ..Default::default()
                },
                "user_id",
            ),
            (
                TicketRequest {
                    ticket_type: "webhook_app_access".into(),
                    ..Default::default()
                },
                "webhook_app_slug",
            ),
            (
                TicketRequest {
                    ticket_type: "webhook_app_access".into(),
                    webhook_app_slug: Some("hooks".into()),
                    actor_id: Some(ActorId::generate().into_string()),
                    ..Default::default()
                },
                "actor_id",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(field_of(req.clone()), field, "{req:?}");
        }
    }

    #[test]
    fn agents_must_be_distinct() {
        let a = agent();
        assert_eq!(
            field_of(TicketRequest {
                agent_ids: Some(vec![a.clone(), a]),
                ..access()
            }),
            "agent_ids[1]"
        );
    }

    #[test]
    fn signin_needs_no_group_nor_binding() {
        let signin = TicketRequest {
            agent_session_identifier: Some("signin".into()),
            context_group: None,
            ..access()
        };
        let spec = TicketSpec::parse(signin.clone(), limits()).unwrap();
        assert!(matches!(
            spec.grant,
            TicketGrant::AgentAccess {
                mode: SessionMode::Signin,
                ..
            }
        ));
        assert_eq!(
            field_of(TicketRequest {
                user_id: Some(UserId::generate().into_string()),
                ..signin.clone()
            }),
            "user_id"
        );
        assert_eq!(
            field_of(TicketRequest {
                actor_id: Some(ActorId::generate().into_string()),
                ..signin
            }),
            "actor_id"
        );
    }

    #[test]
    fn named_sessions_may_omit_the_group() {
        let named = TicketRequest {
            agent_session_identifier: Some("support:case-42".into()),
            context_group: None,
            ..access()
        };
        let spec = TicketSpec::parse(named, limits()).unwrap();
        match spec.grant {
            TicketGrant::AgentAccess {
                mode: SessionMode::Named(name),
                context_group: None,
                ..
            } => {
                assert_eq!(name.as_str(), "support:case-42")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_maximum_lifetime_is_configurable() {
        let tight = TicketLimits {
            default_expires_in: 900,
            max_expires_in: 60,
        };
        assert_eq!(TicketSpec::parse(access(), tight).unwrap().expires_in, 60);
        assert!(TicketSpec::parse(
            TicketRequest {
                expires_in: Some(61),
                ..access()
            },
            tight
        )
        .is_err());
        assert_eq!(
            TicketSpec::parse(
                TicketRequest {
                    expires_in: Some(86_400),
                    ..access()
                },
                limits()
            )
            .unwrap()
            .expires_in,
            86_400
        );
    }

    /// Property: for random `expires_in` and random context groups, a ticket is accepted exactly
    /// when each value is within its rule, and the accepted values round-trip unchanged.
    #[test]
    fn random_inputs_are_accepted_exactly_when_valid() {
        const CHARSET: &[u8] = b"abcXYZ019:_.@- !/\xc3";
        let mut bytes = [0u8; 4096];
        crate::id::random_bytes(&mut bytes);
        let mut at = 0usize;
        let mut next = |n: usize| {
            let v = bytes[at % bytes.len()] as usize % n.max(1);
            at += 1;
            v
        };
        for _ in 0..500 {
            let len = next(300);
            let group: String = (0..len)
                .map(|_| CHARSET[next(CHARSET.len())] as char)
                .collect();
            let seconds = next(100_000) as i64 - 10;
            let group_ok = !group.is_empty()
                && group.len() <= 256
                && group
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":_.@-".contains(&b));
            let seconds_ok = (1..=86_400).contains(&seconds);
            let result = TicketSpec::parse(
                TicketRequest {
                    context_group: Some(group.clone()),
                    expires_in: Some(seconds),
                    ..access()
                },
                limits(),
            );
            match result {
                Ok(spec) => {
                    assert!(group_ok && seconds_ok, "{group:?} {seconds}");
                    assert_eq!(i64::from(spec.expires_in), seconds);
                    match spec.grant {
                        TicketGrant::AgentAccess { context_group, .. } => {
                            assert_eq!(context_group.unwrap().as_str(), group)
                        }
                        other => panic!("{other:?}"),
                    }
                }
                Err(err) => {
                    assert!(!(group_ok && seconds_ok), "{group:?} {seconds}: {err}");
                    let expected = if seconds_ok {
                        "context_group"
                    } else {
                        "expires_in"
                    };
                    assert_eq!(err.field, expected);
                }
            }
        }
    }

    #[test]
    fn grants_round_trip_through_json() {
        for req in [
            access(),
            TicketRequest {
                agent_session_identifier: Some("signin".into()),
                context_group: None,
                ..access()
            },
            TicketRequest {
                ticket_type: "impersonation".into(),
                user_id: Some(UserId::generate().into_string()),
                ..Default::default()
            },
            TicketRequest {
                ticket_type: "webhook_app_access".into(),
                webhook_app_slug: Some("hooks".into()),
                ..Default::default()
            },
        ] {
            let spec = TicketSpec::parse(req, limits()).unwrap();
            let json = serde_json::to_string(&spec.grant).unwrap();
            let back: TicketGrant = serde_json::from_str(&json).unwrap();
            assert_eq!(back, spec.grant);
        }
    }
}
