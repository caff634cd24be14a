//! Unauthenticated operational endpoints: liveness, readiness and the API description.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_api::Health;

use crate::AppState;

/// Liveness: the process is serving requests.
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness: the database answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(Health {
            status: "ok".to_owned(),
        })
        .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "unavailable".to_owned(),
                }),
            )
                .into_response()
        }
    }
}

/// The OpenAPI 3.1 document.
pub(crate) async fn openapi_json() -> Response {
    Json(crate::openapi_document()).into_response()
}
