//! The one error body and the one table of stable error codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every non-2xx response carries this body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case code from the error table; match on this, not on `message`.
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// The request field (dotted path, `[i]` for list items) or parameter at fault, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Correlates this answer with the server's logs (`X-Request-Id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

macro_rules! error_codes {
    ($($variant:ident => ($status:literal, $code:literal, $doc:literal),)*) => {
        /// Stable error codes. The HTTP status of each is fixed by this table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub const fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            pub const fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => $doc,)* }
            }

            pub fn from_code(code: &str) -> Option<Self> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    MalformedJson => (400, "malformed_json", "The request body is not valid JSON."),
    InvalidParameter => (400, "invalid_parameter", "A query parameter or header has a wrong type or value, or does not decode to UTF-8 (`field` names it)."),
    Unauthorized => (401, "unauthorized", "Credentials are missing, unknown or revoked."),
    InvalidTicket => (401, "invalid_ticket", "The session ticket is unknown, expired or already used (the same answer for all three); ask for a new one."),
    SigninRequired => (401, "signin_required", "This ticket opens a `signin` session and the browser has no signed-in user: sign in, then open the ticket again (it was not used up)."),
    InvalidCredentials => (401, "invalid_credentials", "Sign-in failed: the email or password is wrong, or the user is disabled (the same answer whether or not the email exists)."),
    OriginNotAllowed => (403, "origin_not_allowed", "A browser request that changes state came from another origin (its `Origin` or `Referer` is not one of the deployment's hosts), or named none."),
    RouteNotFound => (404, "route_not_found", "No operation exists at this path."),
    ActorNotFound => (404, "actor_not_found", "No actor with this id exists in the caller's deployment."),
    AgentNotFound => (404, "agent_not_found", "No agent with this id exists in the caller's deployment."),
    ProjectNotFound => (404, "project_not_found", "No actor project with this id exists in the caller's deployment."),
    SecretKeyNotFound => (404, "secret_key_not_found", "No secret key with this id exists in the caller's deployment."),
    ToolNotFound => (404, "tool_not_found", "A referenced tool does not exist in the caller's deployment."),
    ThreadNotFound => (404, "thread_not_found", "No thread with this id exists in the caller's deployment."),
    RunNotFound => (404, "run_not_found", "No run with this id exists on this thread."),
    UserNotFound => (404, "user_not_found", "No user with this id exists in the caller's deployment."),
    OrganizationNotFound => (404, "organization_not_found", "No organization with this id exists in the caller's deployment."),
    AppNotFound => (404, "app_not_found", "No API-auth or webhook app with this slug exists in the deployment."),
    ContextNotFound => (404, "context_not_found", "No conversation with this id exists in the agent session."),
    DeploymentNotFound => (404, "deployment_not_found", "No deployment with this id exists (console API)."),
    MembershipNotFound => (404, "membership_not_found", "The user is not a member of this organization."),
    BoardItemNotFound => (404, "board_item_not_found", "No board item with this id exists in this project of the caller's deployment."),
    FileNotFound => (404, "file_not_found", "No file exists at this path of the workspace."),
    ActionNotFound => (404, "action_not_found", "No pending action with this id exists on this session."),
    ResponseNotFound => (404, "response_not_found", "No pool response with this id exists in the caller's deployment."),
    EndpointNotFound => (404, "endpoint_not_found", "No agent of the caller's deployment serves this pool endpoint slug."),
    ToolkitNotFound => (404, "toolkit_not_found", "No toolkit with this slug is enabled in the caller's deployment."),
    MethodNotAllowed => (405, "method_not_allowed", "The path exists but not with this HTTP method."),
    ActorExists => (409, "actor_exists", "An actor with this (subject_type, external_key) already exists."),
    ToolInUse => (409, "tool_in_use", "The tool is attached to an agent; remove it from the agents' `tool_ids` first."),
    AgentInUse => (409, "agent_in_use", "The agent is still used by an active project; archive the projects first."),
    ProjectArchived => (409, "project_archived", "The project is archived: nothing new can be created in it."),
    RunActive => (409, "run_active", "The thread has a queued or active run and the agent's multitask policy is `reject`."),
    RunNotActive => (409, "run_not_active", "The thread has no queued or active run to cancel."),
    IdempotencyKeyReused => (409, "idempotency_key_reused", "This Idempotency-Key was already used with a different request."),
    LastActiveKey => (409, "last_active_key", "Revoking this key would leave the deployment without an active secret key."),
    ConcurrentUpdate => (409, "concurrent_update", "The object changed while this request was applied; retry it."),
    EmailTaken => (409, "email_taken", "Another user of the deployment has this email."),
    OrganizationSlugTaken => (409, "organization_slug_taken", "Another organization of the deployment has this slug."),
    AlreadyMember => (409, "already_member", "The user is already a member of this organization."),
    UserDisabled => (409, "user_disabled", "The user is disabled: enable them first."),
    SessionClosed => (409, "session_closed", "The session was closed: it takes no more messages or variables."),
    ActionAlreadyDecided => (409, "action_already_decided", "The pending action was already confirmed or cancelled."),
    ActionExpired => (410, "action_expired", "The pending action expired before the decision; it was cancelled."),
    NoBrowserSession => (409, "no_browser_session", "This operation changes the browser session, and the caller authenticated with a user token, which has none."),
    NoCapableAgent => (409, "no_capable_agent", "No agent of the delegation's target lane has every requested capability tag."),
    BoardItemClosed => (409, "board_item_closed", "The board item is archived or cancelled and cannot be changed."),
    PathConflict => (409, "path_conflict", "A workspace path is a file or a directory, never both: files lie below this path, or one of its parents is a file (`field`: `path`)."),
    ToolkitsNotConfigured => (409, "toolkits_not_configured", "This server has no toolkit provider (`[toolkits] base_url`): toolkits cannot be enabled or connected."),
    PayloadTooLarge => (413, "payload_too_large", "The request body exceeds the size limit."),
    UnsupportedMediaType => (415, "unsupported_media_type", "The request names a `Content-Type` other than `application/json` (or `application/*+json`; parameters such as `charset` are ignored). A JSON body without a `Content-Type` is read as JSON."),
    TooManyAttempts => (429, "too_many_attempts", "Too many failed sign-ins for this account or from this address; retry after `Retry-After` seconds."),
    ValidationFailed => (422, "validation_failed", "A field is missing, has the wrong type or an unknown value, or breaks a limit (`field` names it)."),
    Internal => (500, "internal_error", "The server failed; the request id identifies the logged cause."),
    ToolkitProviderFailed => (502, "toolkit_provider_failed", "The toolkit provider could not be reached or answered an error; the message says which."),
    Unavailable => (503, "unavailable", "A dependency (the database) is not reachable, or it aborted the request among concurrent changes; retry shortly (after `Retry-After` seconds when the header is sent)."),
    Busy => (503, "busy", "Too many password checks are in progress; retry after `Retry-After` seconds."),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert!(code
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(*code));
            assert!((400..600).contains(&code.status()));
        }
    }
}
