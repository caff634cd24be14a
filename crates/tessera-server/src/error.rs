//! The one API error type: every failure becomes `{"error": {code, message, field?, request_id}}`
//! with the status fixed by the code table. Internal causes are logged (once, by the request
//! middleware) and never sent to the client.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_api::{ErrorBody, ErrorCode, ErrorDetail};
use tessera_domain::ValidationError;
use tessera_store::{Conflict, Entity, StoreError};

use crate::observe;

#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// The underlying cause of a 5xx, for the log.
    pub cause: Option<anyhow::Error>,
    /// Seconds for `Retry-After` (429 answers).
    pub retry_after: Option<u64>,
}

/// Attached to error responses so the logging middleware can record the cause chain.
#[derive(Clone)]
pub(crate) struct LoggedCause(pub Arc<anyhow::Error>);

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            cause: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn invalid_parameter(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParameter, message).with_field(field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self {
            code: ErrorCode::Internal,
            message: "the server failed to handle this request".to_owned(),
            field: None,
            cause: Some(cause.into()),
            retry_after: None,
        }
    }

    /// The not-found error of an entity, as answered for a missing or foreign id (or slug, for
    /// the entities named by one).
    pub fn not_found(entity: Entity) -> Self {
        let (code, what) = entity_code(entity);
        let key = match entity {
            Entity::App | Entity::Endpoint | Entity::Toolkit => "slug",
            _ => "id",
        };
        Self::new(code, format!("no {what} with this {key} exists"))
    }
}

fn entity_code(entity: Entity) -> (ErrorCode, &'static str) {
    match entity {
        Entity::Deployment => (ErrorCode::Unauthorized, "deployment"),
        Entity::SecretKey => (ErrorCode::SecretKeyNotFound, "secret key"),
        Entity::Actor => (ErrorCode::ActorNotFound, "actor"),
        Entity::Agent => (ErrorCode::AgentNotFound, "agent"),
        Entity::Project => (ErrorCode::ProjectNotFound, "actor project"),
        Entity::Tool => (ErrorCode::ToolNotFound, "tool"),
        Entity::Thread => (ErrorCode::ThreadNotFound, "thread"),
        Entity::Run => (ErrorCode::RunNotFound, "run"),
        Entity::User => (ErrorCode::UserNotFound, "user"),
        Entity::Organization => (ErrorCode::OrganizationNotFound, "organization"),
        Entity::Membership => (ErrorCode::MembershipNotFound, "membership"),
        Entity::BoardItem => (ErrorCode::BoardItemNotFound, "board item"),
        Entity::File => (ErrorCode::FileNotFound, "file"),
        Entity::App => (ErrorCode::AppNotFound, "app"),
        Entity::Context => (ErrorCode::ContextNotFound, "conversation"),
        Entity::Action => (ErrorCode::ActionNotFound, "pending action"),
        Entity::Response => (ErrorCode::ResponseNotFound, "pool response"),
        Entity::Endpoint => (ErrorCode::EndpointNotFound, "agent pool"),
        Entity::Toolkit => (ErrorCode::ToolkitNotFound, "enabled toolkit"),
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        Self::new(ErrorCode::ValidationFailed, err.to_string()).with_field(err.field)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound {
                entity,
                field,
                index,
            } => {
                let mut api = Self::not_found(entity);
                if let Some(field) = field {
                    let field = match index {
                        Some(i) => format!("{field}[{i}]"),
                        None => field.to_owned(),
                    };
                    api.message = format!("{field}: {}", api.message);
                    api.field = Some(field);
                }
                api
            }
            StoreError::Conflict(conflict) => match conflict {
                Conflict::NoCapableAgent => Self::new(
                    ErrorCode::NoCapableAgent,
                    "no agent of the target lane has every requested capability tag",
                )
                .with_field("capability_tags"),
                Conflict::BoardItemClosed => Self::new(
                    ErrorCode::BoardItemClosed,
                    "the board item is archived or cancelled",
                ),
                Conflict::PathIsDirectory => Self::new(
                    ErrorCode::PathConflict,
                    "path: a directory of the workspace (files lie below it), not a file",
                )
                .with_field("path"),
                Conflict::PathUnderFile => Self::new(
                    ErrorCode::PathConflict,
                    "path: one of its parent directories is a file of the workspace",
                )
                .with_field("path"),
                Conflict::ActorExists => Self::new(
                    ErrorCode::ActorExists,
                    "an actor with this subject_type and external_key already exists",
                ),
                Conflict::ToolInUse => Self::new(
                    ErrorCode::ToolInUse,
                    "the tool is attached to an agent; remove it from the agents' tool_ids first",
                ),
                Conflict::AgentInUse => Self::new(
                    ErrorCode::AgentInUse,
                    "the agent is used by an active project; archive the project first",
                ),
                Conflict::LastActiveKey => Self::new(
                    ErrorCode::LastActiveKey,
                    "this is the deployment's last active secret key; create another first",
                ),
                Conflict::DeploymentNameTaken => Self::new(
                    ErrorCode::ValidationFailed,
                    "a deployment with this name already exists",
                )
                .with_field("name"),
                Conflict::ProjectArchived => Self::new(
                    ErrorCode::ProjectArchived,
                    "the project is archived; nothing new can be created in it",
                ),
                Conflict::RunActive => Self::new(
                    ErrorCode::RunActive,
                    "the thread already has a run and the agent's multitask policy is `reject`",
                ),
                Conflict::RunNotActive => Self::new(
                    ErrorCode::RunNotActive,
                    "the thread has no queued or active run to cancel",
                ),
                Conflict::IdempotencyKeyReused => Self::new(
                    ErrorCode::IdempotencyKeyReused,
                    "this Idempotency-Key was already used with a different request",
                ),
                Conflict::EmailTaken => Self::new(
                    ErrorCode::EmailTaken,
                    "another user of this deployment has this email",
                )
                .with_field("email"),
                Conflict::OrganizationSlugTaken => Self::new(
                    ErrorCode::OrganizationSlugTaken,
                    "another organization of this deployment has this slug",
                )
                .with_field("slug"),
                Conflict::AlreadyMember => Self::new(
                    ErrorCode::AlreadyMember,
                    "the user is already a member of this organization",
                )
                .with_field("user_id"),
                Conflict::NamedSessionGroupMismatch => Self::new(
                    ErrorCode::ValidationFailed,
                    "context_group: the named session already exists with another context group",
                )
                .with_field("context_group"),
                Conflict::NamedSessionNeedsGroup => Self::new(
                    ErrorCode::ValidationFailed,
                    "context_group: is required to create the named session (it does not exist yet)",
                )
                .with_field("context_group"),
                Conflict::UserDisabled => Self::new(
                    ErrorCode::UserDisabled,
                    "the user is disabled: enable them first",
                )
                .with_field("user_id"),
                Conflict::SessionClosed => Self::new(
                    ErrorCode::SessionClosed,
                    "the session was closed; start a new one",
                ),
                Conflict::ActionDecided => Self::new(
                    ErrorCode::ActionAlreadyDecided,
                    "the action was already confirmed or cancelled",
                ),
                Conflict::ActionExpired => Self::new(
                    ErrorCode::ActionExpired,
                    "the action expired before this decision and was cancelled",
                ),
                Conflict::StaleVersion => Self::new(
                    ErrorCode::ConcurrentUpdate,
                    "the object changed while this request was applied; retry",
                ),
            },
            StoreError::Database(sqlx::Error::PoolTimedOut) => Self {
                code: ErrorCode::Unavailable,
                message: "the database is busy or unreachable; retry shortly".to_owned(),
                field: None,
                cause: Some(anyhow::Error::new(sqlx::Error::PoolTimedOut)),
                retry_after: None,
            },
            // A deadlock or serialization failure the store's own retries did not get past
            // (PostgreSQL): the failed transaction wrote nothing, and the same request may well
            // succeed now.
            err @ StoreError::Database(_) if err.is_transient() => Self {
                code: ErrorCode::Unavailable,
                message: "the database aborted this request among concurrent changes; retry"
                    .to_owned(),
                field: None,
                cause: Some(anyhow::Error::new(err)),
                retry_after: Some(1),
            },
            StoreError::Invalid(err) => err.into(),
            err @ (StoreError::Database(_)
            | StoreError::Corrupt(_)
            | StoreError::Migration(_)
            | StoreError::InvalidUrl(_)
            | StoreError::LeaseLost) => Self::internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                field: self.field,
                request_id: observe::current_request_id(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if self.code == ErrorCode::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tessera\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if let Some(cause) = self.cause {
            response
                .extensions_mut()
                .insert(LoggedCause(Arc::new(cause)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_codes() {
        let e: ApiError = StoreError::not_found_in_list(Entity::Agent, "sub_agent_ids", 2).into();
        assert_eq!(e.code, ErrorCode::AgentNotFound);
        assert_eq!(e.field.as_deref(), Some("sub_agent_ids[2]"));
        let e: ApiError = StoreError::Conflict(Conflict::ActorExists).into();
        assert_eq!(e.code.status(), 409);
        let e: ApiError = StoreError::Corrupt("x".into()).into();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains('x'));
    }

    #[test]
    fn a_deadlock_is_a_retryable_503_and_other_database_errors_are_500() {
        use tessera_store::testing::database_error;
        let response = ApiError::from(database_error("40P01")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let e = ApiError::from(database_error("23505"));
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(e.retry_after, None);
    }
}
