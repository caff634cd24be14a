//! Wire shapes of session tickets, their exchange, the browser API of agent sessions
//! (`/agent/…`) and the console admin sign-in. Re-exported by [`crate::types`].

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::types::Actor;

/// `createBackendSessionTicket` / `createSessionTicket`: what the ticket grants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionTicketRequest {
    /// `agent_access`, `impersonation`, `api_auth_access` or `webhook_app_access`.
    #[schema(example = "agent_access")]
    pub ticket_type: String,
    /// agent_access: required, 1-20 distinct agents of the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ids: Option<Vec<String>>,
    /// agent_access: bind the session to this existing actor (not with `user_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// agent_access: act for this user (actor `user`/`<user_id>`, found or created);
    /// impersonation: required, the user to sign the browser in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// agent_access: `static` (default), `signin`, or the name of a session to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_session_identifier: Option<String>,
    /// agent_access: 1-256 characters of `[A-Za-z0-9:_.@-]`. Required for `static`, refused
    /// for `signin`, required for a named session that does not exist yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "workspace:42:user:7")]
    pub context_group: Option<String>,
    /// Seconds the ticket can be redeemed for: 1 to the configured maximum (86 400 by
    /// default); default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    /// api_auth_access: the API-auth app the ticket holder manages (must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_auth_app_slug: Option<String>,
    /// webhook_app_access: the webhook app the ticket holder manages (must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_app_slug: Option<String>,
}

/// A new ticket: shown once, never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionTicket {
    /// The single-use ticket (`tkt_…`, 256 random bits).
    pub ticket: String,
    /// When it stops being redeemable, in seconds since the Unix epoch.
    pub expires_at: i64,
    /// The page that redeems it (`…/vanity/agents?ticket=…`, `…/sign-in?ticket=…`).
    pub url: String,
}

/// `exchangeSessionTicket`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeSessionTicketRequest {
    pub ticket: String,
}

/// An agent the session may talk to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionAgent {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// Who signed the browser in as the user (impersonation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Impersonator {
    /// `secret_key` or `console_admin`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// `getAgentSession`: the browser's active agent session, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentSession {
    pub has_session: bool,
    #[serde(default)]
    pub id: Option<String>,
    /// Who the agents work for.
    #[serde(default)]
    pub actor: Option<Actor>,
    /// The agents this session may talk to (deleted ones are left out).
    pub agents: Vec<SessionAgent>,
    /// The agent new conversations use by default (the ticket's first).
    #[serde(default)]
    pub active_agent: Option<SessionAgent>,
    #[serde(default)]
    pub context_group: Option<String>,
    /// The named session this resumes, if any.
    #[serde(default)]
    pub session_name: Option<String>,
    /// When the agent session ends (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Set when the browser is signed in by impersonation.
    #[serde(default)]
    pub impersonated_by: Option<Impersonator>,
}

/// The user an impersonation ticket signed the browser in as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Impersonation {
    pub user_id: String,
    pub email: String,
    pub impersonated_by: Impersonator,
    /// When the impersonation session ends (at most 30 minutes).
    pub expires_at: String,
}

/// The result of an exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExchangedSessionTicket {
    pub ticket_type: String,
    /// agent_access: a bearer token for the browser API, for clients that cannot use the
    /// cookie (mobile apps, cross-site embeds). Shown once; as powerful as the cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<String>,
    /// agent_access: the session just opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<AgentSession>,
    /// impersonation: who the browser is now signed in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonation: Option<Impersonation>,
    /// Where the page goes next.
    pub redirect_url: String,
}

/// A conversation of the agent session (a thread of its actor × agent × context group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentContext {
    pub id: String,
    pub title: String,
    pub agent_id: String,
    /// `idle`, `running` or `waiting_for_input`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A page of conversations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentContextList {
    pub data: Vec<AgentContext>,
    /// More items exist beyond this page in the direction of travel.
    pub has_more: bool,
    /// Id of the first item: pass as `before` for the previous page.
    #[serde(default)]
    pub first_id: Option<String>,
    /// Id of the last item: pass as `after` for the next page.
    #[serde(default)]
    pub last_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgentContextRequest {
    /// 1-200 characters; default `New chat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// One of the session's agents; default its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgentContextRequest {
    /// 1-200 characters.
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedAgentContext {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendAgentMessageRequest {
    /// The text, 1-100 000 characters.
    pub content: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListAgentContextsParams {
    /// Page size, 1-100 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// `consoleSignIn`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSignInRequest {
    /// Default `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleAdmin {
    pub id: String,
    pub username: String,
}

/// A console session: the cookie `tessera_console` is set too; `token` works as
/// `Authorization: Bearer` (for the CLI). Shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleSession {
    pub admin: ConsoleAdmin,
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleSignedOut {
    pub signed_out: bool,
}
