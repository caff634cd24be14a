//! The deployment's audit log (backend API, secret key).

use axum::extract::State;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::identity::AuditKind;
use tessera_domain::AuditEventId;
use tessera_store::AuditFilter;

use crate::auth::Caller;
use crate::convert;
use crate::convert_identity as convert_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiQuery};
use crate::AppState;

/// Lists audit events, oldest first: sign-ins (and failed ones), sign-outs, secret keys
/// created and revoked, users created, disabled, enabled and deleted, user tokens minted and
/// active-organization changes, each with its actor, client address, user agent and time.
#[utoipa::path(
    get, path = "/audit-events", operation_id = "listAuditEvents", tag = "audit",
    params(api::ListAuditEventsParams),
    responses(
        (status = 200, body = api::AuditEventList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_audit_events(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListAuditEventsParams>,
) -> ApiResult<Json<api::AuditEventList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        AuditEventId::parse(c).map(|_| ())
    })?;
    let kind = match q.kind {
        Some(kind) => match AuditKind::parse(&kind) {
            Some(kind) => Some(kind.as_str().to_owned()),
            None => {
                let known: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(ApiError::invalid_parameter(
                    "kind",
                    format!("kind must be one of {}", known.join(", ")),
                ));
            }
        },
        None => None,
    };
    let events = state
        .store
        .list_audit_events(&caller.scope, &AuditFilter { kind }, &page)
        .await?;
    Ok(Json(
        convert::list(events, convert_id::audit_event, |e| &e.id).into(),
    ))
}
